"""The scoring pass on the real engine: one bfloat16 batch of baseline and ngram.

Timed requests carry no log-probabilities; the batch's scoring pass reads the
baseline's margins at every divergence, and a decode-time run of the baseline
(``generation.logprobs: 2``, the only run here that asks for them) classifies
those divergences the same way.  A bfloat16 ngram run rarely diverges in a few
short answers (a float32 candidate did not either, on these prompts), so a
divergence is made on purpose: a second ngram candidate stops after fewer
tokens, so it diverges where it stops, at a position inside the baseline's
answer, which the pass must score like any other (it pairs with the baseline,
the model's only one).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from specdec import run_folder
from specdec.lossless import SCORING_PASS, check, divergences
from specdec.study import NEAR_TIE_THRESHOLD

from .conftest import KV_CACHE_BYTES, ROOT, run_cli

pytestmark = pytest.mark.engine

ENGINE = ("engine: {enforce_eager: true, dtype: bfloat16, "
          f"extra: {{kv_cache_memory_bytes: {KV_CACHE_BYTES}}}}}\n")
NGRAM = ("strategy: {name: ngram, num_speculative_tokens: 3, prompt_lookup_min: 2, "
         "prompt_lookup_max: 4}\n")
CONFIGS = {
    "baseline": ENGINE + "generation: {max_tokens: 32}\nstrategy: {name: none}\n",
    "ngram": ENGINE + "generation: {max_tokens: 32}\n" + NGRAM,
    "ngram_short": ENGINE + "generation: {max_tokens: 20}\n" + NGRAM,
}
PROMPTS = {"code-03", "extract-01", "math-01"}


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The batch (with its scoring pass), then a decode-time run of its baseline."""
    tmp = tmp_path_factory.mktemp("scoring")
    files = []
    for name, text in CONFIGS.items():
        path = tmp / f"{name}.yaml"
        path.write_text(text)
        files.append(str(path))
    lines = [line for line in (ROOT / "data" / "sample_benchmark.jsonl").read_bytes().splitlines()
             if line.strip() and orjson.loads(line)["question_id"] in PROMPTS]
    assert len(lines) == len(PROMPTS)
    bench = tmp / "bench.jsonl"
    bench.write_bytes(b"\n".join(lines) + b"\n")
    base = tmp / "out"
    result = run_cli("specdec", "batch", "--configs", *files, "--output-base", str(base),
                     "--benchmark", str(bench))
    # Its report is not what this module checks: the items and the pass are.
    items = orjson.loads((base / "batch.json").read_bytes())["items"]
    assert [i["status"] for i in items] == ["done"] * len(CONFIGS), result.stderr[-3000:]
    decode = tmp / "decode"
    result = run_cli("specdec-run", "--config", str(base / "baseline" / "config.yaml"),
                     "--set", "generation.logprobs=2", "--output-dir", str(decode))
    assert result.returncode == 0, result.stderr[-3000:]
    return base, decode


def test_timed_requests_carried_no_logprobs(batch: tuple[Path, Path]) -> None:
    """Each item's config and its engine's recorded sampling have none; vLLM returned none."""
    base, decode = batch
    for name in CONFIGS:
        folder = base / name
        assert run_folder.read_config(folder).generation.logprobs is None
        sampling = run_folder.read_provenance(folder)["offline"]["sampling"]
        assert "logprobs" not in sampling, sampling
        assert all(t.logprob_margins == () for r in run_folder.read_records(folder)
                   for t in r.turns)
    # The decode-time run asked, and got them: the check above can fail.
    assert all(t.logprob_margins for r in run_folder.read_records(decode) for t in r.turns)


def test_divergences_are_classified_by_the_scoring_pass(batch: tuple[Path, Path]) -> None:
    """Every divergence has a scoring-pass margin, read on the baseline's engine settings."""
    base, _ = batch
    margins = run_folder.read_margins(base / "baseline")
    assert margins is not None
    assert margins.error is None
    assert (margins.engine["dtype"], margins.engine["enforce_eager"]) == ("bfloat16", True)
    baseline = run_folder.read_outputs(base / "baseline").requests
    found = 0
    for name in ("ngram", "ngram_short"):
        candidate = run_folder.read_outputs(base / name).requests
        result = check(candidate, baseline, NEAR_TIE_THRESHOLD, margins=margins)
        assert result.unclassified == 0, result
        classified = [c for c in result.comparisons if c.position is not None]
        assert all(c.margin_source == SCORING_PASS for c in classified)
        found += len(classified)
    assert found > 0, "no divergence to classify: the shorter candidate should have made one"


def test_scoring_pass_agrees_with_decode_time_margins(batch: tuple[Path, Path]) -> None:
    """At each divergence, prefill and decode margins classify alike (and are close)."""
    base, decode = batch
    margins = run_folder.read_margins(base / "baseline")
    assert margins is not None
    baseline = {r.id: r for r in run_folder.read_records(base / "baseline")}
    decoded = {r.id: r for r in run_folder.read_records(decode)}
    compared = 0
    for name in ("ngram", "ngram_short"):
        candidate = run_folder.read_outputs(base / name).requests
        for request_id, turn, position in divergences(candidate, tuple(baseline.values())):
            ours = decoded[request_id].turns[turn]
            # The decode run repeats the baseline's greedy answer, so its margins are the
            # baseline's own at decode time.
            assert ours.output_token_ids == baseline[request_id].turns[turn].output_token_ids
            if position >= len(ours.logprob_margins):
                continue  # the baseline stopped there: decoding read no margin to compare
            scored = margins.lookup[request_id, turn, position].margin
            at_decode = ours.logprob_margins[position]
            assert (scored <= NEAR_TIE_THRESHOLD) == (at_decode <= NEAR_TIE_THRESHOLD), (
                request_id, turn, position, scored, at_decode)
            assert abs(scored - at_decode) < 0.5, (request_id, position, scored, at_decode)
            compared += 1
    assert compared > 0
