"""Real vLLM servers with the bundled model on loopback ports (eager mode).

Two servers are launched (baseline and n-gram); a batch mixing server runs at
concurrency 1 and 4 with an offline run is measured against them, and the
per-request figures are checked against each server's own counters.  Scoring is
checked on the baseline server and on one offline engine in this process, so are
token ids returned without log-probabilities and /tokenize's prompt ids, and a
server run is made from an environment where ``import vllm`` fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest

from specdec import models
from specdec.config import load_config
from specdec.engines.device import installed_vllm
from specdec.engines.launch import ServerProcess
from specdec.engines.openai_server import IDS_RETURNED, OpenAIServerEngine
from specdec.engines.vllm_offline import VllmOfflineEngine
from specdec.interfaces import ScoreRequest, ScoreResult
from specdec.records import Conversation, RequestRecord
from specdec.registry import strategies
from specdec.serialization import write_json
from specdec.study import BatchIndex, ItemStatus

from .conftest import BIN, KV_CACHE, KV_CACHE_BYTES, run_cli

pytestmark = pytest.mark.engine

ENGINE = ("engine: {enforce_eager: true, max_model_len: 1024,"
          f" extra: {{kv_cache_memory_bytes: {KV_CACHE_BYTES}}}}}\n")
GENERATION = "generation: {max_tokens: 32}\n"
NGRAM = "{name: ngram, num_speculative_tokens: 3, prompt_lookup_min: 2, prompt_lookup_max: 4}"


def _launch(strategy: str) -> ServerProcess:
    config = load_config(None, ["engine.enforce_eager=true", KV_CACHE[1],
                                "engine.max_model_len=1024", "engine.backend=server",
                                "engine.launch=true"])
    spec = None
    if strategy == "ngram":
        plugin = strategies.create("ngram")
        options = plugin.options_type(num_speculative_tokens=3, prompt_lookup_min=2,
                                      prompt_lookup_max=4)
        spec = plugin.speculative_config(options, None)
    return ServerProcess(config, models.prepare(models.BASE_ALIAS), spec)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """A baseline server and an n-gram server, stopped at the end."""
    launched = {name: _launch(name) for name in ("none", "ngram")}
    try:
        yield {name: server.start() for name, server in launched.items()}
    finally:
        for server in launched.values():
            server.stop()


@pytest.fixture(scope="module")
def batch(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch of server runs at concurrency 1 and 4, plus one offline run."""
    tmp = tmp_path_factory.mktemp("serve")
    files = []
    for strategy, concurrency in (("none", 1), ("none", 4), ("ngram", 1), ("ngram", 4)):
        strategy_yaml = NGRAM if strategy == "ngram" else "{name: none}"
        path = tmp / f"{strategy}-c{concurrency}.yaml"
        path.write_text(
            GENERATION + f"strategy: {strategy_yaml}\nmode: batch\n"
            f"engine: {{backend: server, url: '{servers[strategy]}', concurrency: {concurrency},"
            " timeout_s: 120}\n"
        )
        files.append(str(path))
    offline = tmp / "offline-ngram.yaml"
    offline.write_text(GENERATION + ENGINE + f"strategy: {NGRAM}\n")
    files.append(str(offline))
    out = tmp / "out"
    result = run_cli("specdec", "batch", "--configs", *files, "--output-base", str(out),
                     "--categories", "code_editing,summarization", "--limit", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _metrics(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((folder / "metrics.json").read_bytes())
    return data


def test_server_runs_answer_every_request(batch: Path) -> None:
    """Every request succeeded, with client-side timings and server token counts."""
    for name in ("none-c1", "none-c4", "ngram-c1", "ngram-c4"):
        metrics = _metrics(batch / name)
        assert metrics["summary"]["failed_requests"] == 0
        assert metrics["summary"]["overall"]["requests"] == 4
        for request in metrics["requests"]:
            for turn in request["turns"]:
                assert turn["output_tokens"] > 0
                assert turn["ttft_s"] > 0
                assert len(turn["output_token_ids"]) == turn["output_tokens"]
        assert metrics["provenance"]["server"]["declared"]["strategy"] in ("none", "ngram")


def test_acceptance_equals_the_servers_counters(batch: Path) -> None:
    """Per-request speculative figures summed equal the server's /metrics deltas."""
    for name in ("ngram-c1", "ngram-c4"):
        summary = _metrics(batch / name)["summary"]
        engine, requests = summary["engine_spec"], summary["overall"]["spec"]
        assert engine["num_drafts"] > 0
        for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens",
                    "acceptance_per_position"):
            assert requests[key] == engine[key], (name, key)


def test_concurrency_changes_overlap(batch: Path) -> None:
    """At concurrency 4 requests overlap: their summed time exceeds the wall clock."""
    c1 = _metrics(batch / "none-c1")["summary"]
    c4 = _metrics(batch / "none-c4")["summary"]
    assert c4["overall"]["walltime_total_s"] > c4["elapsed_s"]
    assert c1["overall"]["walltime_total_s"] <= c1["elapsed_s"] * 1.05


def test_report_and_lossless_cover_server_runs(batch: Path) -> None:
    """The batch's report compares server runs and the offline run with the baseline."""
    report = orjson.loads((batch / "report" / "report.json").read_bytes())
    assert report["baselines"] == {"none-c1": "none-c1", "none-c4": "none-c4",
                                   "ngram-c1": "none-c1", "ngram-c4": "none-c4",
                                   "offline-ngram": "none-c1"}
    assert set(report["lossless"]) == {"ngram-c1", "ngram-c4", "offline-ngram"}
    for name in ("ngram-c1", "ngram-c4"):
        assert report["lossless"][name]["mismatch"] == 0, report["lossless"][name]


PROMPT = "The capital of France is"
SCORED_TOKENS = 6
BF16_TOLERANCE = 0.25
"""Log-probabilities in bfloat16 differ by up to this much between two computations of the
same sequence (batch shapes, prefill against decode); ties within it may flip."""


@pytest.fixture(scope="module")
def offline() -> Iterator[VllmOfflineEngine]:
    """The offline engine in this process, with the servers' settings (bfloat16, eager).

    Every engine here has an explicit KV cache (``KV_CACHE``): a share of RAM
    (``gpu_memory_utilization``) has the process's own memory taken from it, and
    0.1 of a machine whose vLLM counted 11.3 GiB left nothing for the cache.
    """
    config = load_config(None, ["engine.enforce_eager=true", KV_CACHE[1],
                                "engine.max_model_len=1024", "warmup=false"])
    engine = VllmOfflineEngine(config, models.prepare(models.BASE_ALIAS), None)
    engine.start()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def prompt_ids(offline: VllmOfflineEngine) -> list[int]:
    """The prompt's token ids, by the model's tokenizer."""
    ids: list[int] = offline._tokenizer.encode(PROMPT)
    return ids


def _server_engine(url: str) -> OpenAIServerEngine:
    config = load_config(None, ["engine.backend=server", f"engine.url={url}", "warmup=false"])
    engine = OpenAIServerEngine(config, "m", None)
    engine.start()
    return engine


def _server_greedy(url: str, prompt: list[int]) -> list[int]:
    response = httpx.post(f"{url}/v1/completions", timeout=120, json={
        "model": httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"],
        "prompt": prompt, "max_tokens": SCORED_TOKENS, "temperature": 0.0,
        "ignore_eos": True, "return_token_ids": True,
    })
    response.raise_for_status()
    tokens: list[int] = response.json()["choices"][0]["token_ids"]
    return tokens


def _offline_greedy(engine: VllmOfflineEngine, prompt: list[int]) -> list[int]:
    from vllm import SamplingParams  # only once an engine runs: collecting needs no vLLM

    params = SamplingParams(max_tokens=SCORED_TOKENS, temperature=0.0, ignore_eos=True)
    output = engine._llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    return [int(t) for t in output.outputs[0].token_ids]


def _assert_greedy_is_top1(result: ScoreResult, greedy: list[int]) -> None:
    """Each generated token is the top-1 there, or the top-2 of a near-tie."""
    assert [s.token_id for s in result.scores] == greedy
    for score in result.scores:
        assert len(score.top_token_ids) == 2
        assert score.top_logprobs[0] >= score.top_logprobs[1]
        if score.top_token_ids[0] == score.token_id:
            assert score.logprob == score.top_logprobs[0]
        else:
            assert score.top_token_ids[1] == score.token_id, score
            assert score.top_logprobs[0] - score.logprob <= BF16_TOLERANCE, score


def test_offline_score_top1_is_the_greedy_token(offline: VllmOfflineEngine,
                                                prompt_ids: list[int]) -> None:
    """Scoring prompt + greedy answer gives the answer's tokens as the top-1 (prefill only)."""
    greedy = _offline_greedy(offline, prompt_ids)
    sequence = (*prompt_ids, *greedy)
    positions = tuple(range(len(prompt_ids), len(sequence)))
    [result] = offline.score([ScoreRequest(sequence, positions)])
    _assert_greedy_is_top1(result, greedy)


def test_server_score_top1_is_the_greedy_token_and_agrees_with_offline(
    servers: dict[str, str], offline: VllmOfflineEngine, prompt_ids: list[int],
) -> None:
    """The server's scores give its greedy answer, and match the offline engine's."""
    greedy = _server_greedy(servers["none"], prompt_ids)
    sequence = (*prompt_ids, *greedy)
    request = ScoreRequest(sequence)
    [remote] = _server_engine(servers["none"]).score([request])
    [local] = offline.score([request])
    answer = ScoreResult(remote.scores[len(prompt_ids) - 1:])
    _assert_greedy_is_top1(answer, greedy)
    assert [s.position for s in remote.scores] == list(range(1, len(sequence)))
    for ours, theirs in zip(local.scores, remote.scores, strict=True):
        assert ours.token_id == theirs.token_id
        assert ours.logprob == pytest.approx(theirs.logprob, abs=BF16_TOLERANCE)
        assert ours.top_logprobs[0] == pytest.approx(theirs.top_logprobs[0], abs=BF16_TOLERANCE)
        if theirs.top_logprobs[0] - theirs.top_logprobs[1] > BF16_TOLERANCE:
            assert ours.top_token_ids[0] == theirs.top_token_ids[0]


def test_a_server_run_works_without_vllm_installed(servers: dict[str, str],
                                                   tmp_path: Path) -> None:
    """specdec-run --endpoint where `import vllm` fails: the run finishes with the server's word.

    The provenance's vLLM version is the one the server reported, and what the
    server cannot tell (methods, fields, device) is recorded as unknown.
    """
    blocked = tmp_path / "no-vllm"
    (blocked / "vllm").mkdir(parents=True)
    (blocked / "vllm" / "__init__.py").write_text(
        'raise ImportError("vLLM is blocked here: the server backend must not import it")\n'
    )
    env = {"PYTHONPATH": str(blocked)}
    probe = subprocess.run([str(BIN / "python"), "-c", "import vllm"], capture_output=True,
                           text=True, env={**os.environ, **env}, check=False)
    assert probe.returncode != 0
    assert "vLLM is blocked here" in probe.stderr
    out = tmp_path / "run"
    result = run_cli(
        "specdec-run", "--endpoint", servers["ngram"], "--strategy", "ngram",
        "--set", "strategy.num_speculative_tokens=3", "--set", "strategy.prompt_lookup_min=2",
        "--set", "strategy.prompt_lookup_max=4", "--set", "generation.max_tokens=16",
        "--categories", "code_editing", "--limit", "2", "--output-dir", str(out), env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vLLM is blocked here" not in result.stderr
    metrics = _metrics(out)
    assert metrics["summary"]["failed_requests"] == 0
    assert metrics["summary"]["overall"]["requests"] == 2
    assert metrics["summary"]["engine_spec"]["num_drafts"] > 0
    installed = installed_vllm()
    assert installed is not None
    provenance = metrics["provenance"]
    assert provenance["vllm"] == installed.version
    assert provenance["engine"]["reported"]["version"] == installed.version
    assert provenance["engine"]["unknown"] == ["speculative_methods",
                                               "speculative_config_fields", "device"]
    assert provenance["device"] is None


def test_server_token_ids_without_logprobs(servers: dict[str, str],
                                           offline: VllmOfflineEngine) -> None:
    """A timed turn gets its ids from return_token_ids alone; /tokenize gives its prompt.

    The ids are those the server and the offline engine give the same prompt
    (greedy), decode to the turn's text, and /tokenize's prompt ids are the
    prompt_token_ids the server reports for that chat request and for a raw one.
    """
    url = servers["none"]
    config = load_config(None, ["engine.backend=server", f"engine.url={url}", "warmup=false",
                                "generation.max_tokens=12", "generation.ignore_eos=true"])
    engine = OpenAIServerEngine(config, "m", None)
    engine.start()
    assert engine.describe()["token_ids"] == IDS_RETURNED
    conv = Conversation("c", (PROMPT,))
    records: list[RequestRecord] = []
    engine.run([conv], records.append)
    [turn] = records[0].turns
    assert records[0].error is None
    assert len(turn.output_token_ids) == turn.output_tokens == 12
    assert turn.logprob_margins == ()
    assert offline._tokenizer.decode(list(turn.output_token_ids),
                                     skip_special_tokens=True) == turn.output
    prompt = engine.prompt_token_ids(conv, [])
    assert len(prompt) == turn.prompt_tokens
    body = {"model": engine.model_name, "max_tokens": 12, "temperature": 0.0,
            "ignore_eos": True, "return_token_ids": True}
    chat = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                      json={**body, "messages": [{"role": "user", "content": PROMPT}]}).json()
    assert tuple(chat["prompt_token_ids"]) == prompt
    assert tuple(chat["choices"][0]["token_ids"]) == turn.output_token_ids
    assert _offline_greedy(offline, list(prompt)) == list(turn.output_token_ids[:SCORED_TOKENS])
    raw = OpenAIServerEngine(attrs.evolve(config, chat_template=False), "m", None)
    raw.start()
    completion = httpx.post(f"{url}/v1/completions", timeout=120,
                            json={**body, "prompt": PROMPT}).json()
    assert tuple(completion["choices"][0]["prompt_token_ids"]) == raw.prompt_token_ids(conv, [])


@pytest.fixture(scope="module")
def sweep(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Baseline and ngram on the two servers at concurrency 1, 2, 4 and 8, labelled as a study
    sweeping ``concurrency`` labels its items, then reported with an SLO."""
    base = tmp_path_factory.mktemp("sweep")
    items = []
    for strategy in ("none", "ngram"):
        for level in (1, 2, 4, 8):
            name = f"{strategy}-c{level}"
            path = base / f"{name}.yaml"
            strategy_yaml = NGRAM if strategy == "ngram" else "{name: none}"
            path.write_text(
                GENERATION + f"strategy: {strategy_yaml}\nmode: batch\n"
                "benchmark: {categories: [code_editing, summarization], limit: 8}\n"
                f"engine: {{backend: server, url: '{servers[strategy]}', concurrency: {level},"
                " timeout_s: 120}\n")
            result = run_cli("specdec", "run", "--config", str(path),
                             "--output-dir", str(base / name))
            assert result.returncode == 0, result.stderr[-3000:]
            items.append(ItemStatus(name, f"m__{strategy}__concurrency={level}", strategy,
                                    "smollm2-135m", 0, {"engine.concurrency": level},
                                    status="done"))
    write_json(base / "batch.json", BatchIndex("sweep", tuple(items)))
    result = run_cli("specdec", "report", str(base), "--slo", "ttft:60000 tpot:2000")
    assert result.returncode == 0, result.stderr[-3000:]
    return base


def test_a_concurrency_sweep_isolates_each_point_and_finds_its_crossover(sweep: Path) -> None:
    """Real servers at concurrency 1 to 8: each point's acceptance is its own run's counter
    delta, each point has its baseline, goodput lies within the throughput, and the report
    states a crossover."""
    drafts = []
    for level in (1, 2, 4, 8):
        summary = _metrics(sweep / f"ngram-c{level}")["summary"]
        engine, requests = summary["engine_spec"], summary["overall"]["spec"]
        assert engine["num_drafts"] > 0
        for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
            assert requests[key] == engine[key], (level, key)
        drafts.append(engine["num_drafts"])
        assert _metrics(sweep / f"none-c{level}")["summary"]["overall"]["requests"] == 8
    # One figure for the whole sweep would have grown with every point; these are per run.
    assert max(drafts) < sum(drafts)
    report = orjson.loads((sweep / "report" / "report.json").read_bytes())
    (line,) = report["concurrency_sweep"]
    points = line["points"]
    assert [p["concurrency"] for p in points] == [1, 2, 4, 8]
    assert [p["baseline"] for p in points] == [f"m__none__concurrency={c}" for c in (1, 2, 4, 8)]
    for point in points:
        assert point["speedup_interval"] is not None
        for which, strategy in (("goodput", "ngram"), ("baseline_goodput", "none")):
            good = point[which]
            elapsed = _metrics(sweep / f"{strategy}-c{point['concurrency']}")["summary"][
                "elapsed_s"]
            assert good["requests"] == 8
            assert 0 <= good["share"] <= 1
            assert good["rate_per_s"] == pytest.approx(good["good"] / elapsed)
    assert line["crossover"]["outcome"] in ("crossed", "above at every point",
                                            "not above at the first point")
    text = (sweep / "report" / "report.md").read_text()
    assert "## Concurrency sweep" in text
    assert "crossover:" in text
