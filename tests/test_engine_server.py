"""Real vLLM servers with the bundled model on loopback ports (eager mode).

Two servers are launched (baseline and n-gram); a batch mixing server runs at
concurrency 1 and 4 with an offline run is measured against them, and the
per-request figures are checked against each server's own counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from specdec import models
from specdec.config import load_config
from specdec.engines.launch import ServerProcess
from specdec.registry import strategies

from .conftest import run_cli

pytestmark = pytest.mark.engine

ENGINE = "engine: {enforce_eager: true, gpu_memory_utilization: 0.1, max_model_len: 1024}\n"
GENERATION = "generation: {max_tokens: 32}\n"
NGRAM = "{name: ngram, num_speculative_tokens: 3, prompt_lookup_min: 2, prompt_lookup_max: 4}"


def _launch(strategy: str) -> ServerProcess:
    config = load_config(None, ["engine.enforce_eager=true", "engine.gpu_memory_utilization=0.1",
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
