"""The server backend against a local stand-in that misbehaves on purpose (no vLLM)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from structlog.testing import capture_logs

from specdec import registry
from specdec.config import load_config
from specdec.engines.launch import free_port, server_command
from specdec.engines.openai_server import OpenAIServerEngine, counter_delta, parse_counters
from specdec.errors import EngineError
from specdec.interfaces import ScoreRequest, TokenScore
from specdec.records import SpecStats
from specdec.runner import run_experiment

STAND_IN_VERSION = "0.0.1-stand-in"

METRICS = """# TYPE vllm:spec_decode_num_drafts counter
vllm:spec_decode_num_drafts_total{{engine="0",model_name="m"}} {d0}
vllm:spec_decode_num_drafts_total{{engine="1",model_name="m"}} {d1}
# TYPE vllm:spec_decode_num_draft_tokens counter
vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {t0}
vllm:spec_decode_num_draft_tokens_total{{engine="1",model_name="m"}} 0
# TYPE vllm:spec_decode_num_accepted_tokens counter
vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {a0}
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",model_name="m",position="0"}} {p0}
vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",model_name="m",position="1"}} {p1}
"""


class StandIn(BaseHTTPRequestHandler):
    """Answers like vLLM's server; the prompt's first word picks a misbehaviour."""

    requests: ClassVar[int] = 0

    def log_message(self, *args: Any) -> None:
        return None

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(200, orjson.dumps({"data": [{"id": "stand-in", "max_model_len": 64}]}))
        elif self.path == "/version":
            self._send(200, orjson.dumps({"version": STAND_IN_VERSION}))
        elif self.path == "/metrics":
            n = StandIn.requests
            text = METRICS.format(d0=10 * n, d1=n, t0=30 * n, a0=12 * n, p0=8 * n, p1=4 * n)
            self._send(200, text.encode(), "text/plain")
        else:
            self._send(200, b"")

    def _chunk(self, data: dict[str, Any] | str) -> None:
        line = data if isinstance(data, str) else orjson.dumps(data).decode()
        payload = f"data: {line}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "prompt_logprobs" in body:
            self._prompt_logprobs(body)
            return
        prompt = body["messages"][-1]["content"]
        StandIn.requests += 1
        if prompt.startswith("http500"):
            self._send(500, b'{"error": "boom"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if prompt.startswith("slow"):
            time.sleep(3)
        for i, word in enumerate(["Hello", " there", " friend"]):
            if prompt.startswith("cut") and i == 2:
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True
                return
            top = [{"token": "token_id:7", "logprob": -0.1}, {"token": "token_id:8",
                                                              "logprob": -2.1}]
            self._chunk({"choices": [{"index": 0, "delta": {"content": word},
                                      "logprobs": {"content": [{"token": f"token_id:{i + 1}",
                                                                "logprob": -0.1,
                                                                "top_logprobs": top}]},
                                      "finish_reason": "length" if i == 2 else None}]})
        self._chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3},
                     "metrics": {"speculative_decoding": {
                         "acceptance_histogram": [1, 0, 1], "num_draft_tokens": 4,
                         "per_step_accepted": [0, 2], "num_spec_tokens": 2}}})
        self._chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


    def _prompt_logprobs(self, body: dict[str, Any]) -> None:
        # vLLM's shape: null at position 0, then token id (a string) -> {logprob, rank, ...};
        # token t's top-1 here is t + 1 and its top-2 is t + 2, so each own token ranks 3rd
        # unless it follows its predecessor.
        tokens = body["prompt"]
        per_position: list[dict[str, Any] | None] = [None]
        for previous, own in itertools.pairwise(tokens):
            entry = {str(previous + 1): {"logprob": -0.25, "rank": 1, "decoded_token": "a"},
                     str(previous + 2): {"logprob": -1.5, "rank": 2, "decoded_token": "b"}}
            entry.setdefault(str(own), {"logprob": -4.0, "rank": 9, "decoded_token": "c"})
            per_position.append(entry)
        choice = {"index": 0, "text": "x", "prompt_logprobs": per_position}
        self._send(200, orjson.dumps({"choices": [choice], "usage": {}}))


@pytest.fixture
def stand_in() -> Iterator[str]:
    """A stand-in server on a loopback port."""
    StandIn.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _bench(tmp_path: Path, prompts: list[str]) -> Path:
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "prompt": p}) + b"\n"
                              for i, p in enumerate(prompts)))
    return path


def _config(tmp_path: Path, url: str, prompts: list[str], *extra: str) -> Any:
    return load_config(None, [
        "engine.backend=server", f"engine.url={url}", "engine.timeout_s=1",
        f"benchmark.path={_bench(tmp_path, prompts)}", "strategy.name=ngram",
        "sinks=[json, jsonl]", *extra,
    ])


def test_failures_are_recorded_and_the_run_goes_on(stand_in: str, tmp_path: Path) -> None:
    """A 5xx, a cut stream and a timeout each fail one request; the others count."""
    config = _config(tmp_path, stand_in, ["fine", "http500 x", "cut x", "slow x", "fine 2"],
                     "engine.concurrency=2")
    result = run_experiment(config, tmp_path / "out")
    errors = {r.id: r.error for r in result.records}
    assert errors["r0"] is None
    assert errors["r4"] is None
    assert errors["r1"] is not None
    assert "HTTP 500" in errors["r1"]
    assert errors["r2"] is not None
    assert "before [DONE]" in errors["r2"]
    assert errors["r3"] is not None
    assert "timed out" in errors["r3"]
    assert result.summary.failed_requests == 3
    assert result.summary.overall.requests == 2
    lines = (tmp_path / "out" / "responses.jsonl").read_bytes().splitlines()
    assert len(lines) == 5
    metrics = orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())
    assert metrics["provenance"]["server"]["launched"] is False
    assert metrics["provenance"]["server"]["declared"]["strategy"] == "ngram"


def test_turn_fields_from_the_stream(stand_in: str, tmp_path: Path) -> None:
    """Text, token ids, margins, usage and per-request speculative metrics are read."""
    result = run_experiment(_config(tmp_path, stand_in, ["fine"]), tmp_path / "out")
    turn = result.records[0].turns[0]
    assert turn.output == "Hello there friend"
    assert turn.output_token_ids == (1, 2, 3)
    assert turn.logprob_margins == pytest.approx((2.0, 2.0, 2.0))
    assert (turn.prompt_tokens, turn.output_tokens) == (5, 3)
    assert turn.finish_reason == "length"
    assert turn.ttft_s > 0
    assert turn.spec == SpecStats(2, 4, 2, (1, 1), (1, 0, 1), (0, 2))


def test_counters_are_read_around_the_run(stand_in: str, tmp_path: Path) -> None:
    """Engine counters are summed over engines and taken as a difference (warm-up excluded)."""
    result = run_experiment(_config(tmp_path, stand_in, ["fine", "fine"]), tmp_path / "out")
    spec = result.summary.engine_spec
    assert spec is not None
    # two measured requests: drafts 10+1 per request, draft tokens 30, accepted 12
    assert (spec.num_drafts, spec.num_draft_tokens, spec.num_accepted_tokens) == (22, 60, 24)
    assert spec.acceptance_per_position == pytest.approx((16 / 22, 8 / 22))


def test_unreachable_server_fails_every_request(tmp_path: Path) -> None:
    """Nothing listening: each request records the connection error; the run then fails."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineError, match="all 2 requests failed; the first: turn 1: Connect"):
        run_experiment(_config(tmp_path, url, ["a", "b"]), tmp_path / "out")
    lines = (tmp_path / "out" / "responses.jsonl").read_bytes().splitlines()
    assert all(orjson.loads(line)["error"] for line in lines)


def test_parse_counters_and_delta() -> None:
    """Prometheus text is summed over engine labels; positions are kept apart."""
    before = parse_counters(METRICS.format(d0=1, d1=1, t0=3, a0=1, p0=1, p1=0))
    after = parse_counters(METRICS.format(d0=5, d1=2, t0=9, a0=4, p0=3, p1=1))
    assert after == SpecStats(7, 9, 4, (3, 1))
    assert counter_delta(after, before) == SpecStats(5, 6, 3, (2, 1))
    assert parse_counters("# nothing\n") is None


def test_server_command_carries_the_strategy() -> None:
    """The launch command has the engine settings and the speculative config as JSON."""
    config = load_config(None, ["engine.enforce_eager=true", "engine.max_num_seqs=4"])
    command = server_command(config, Path("/m"), {"method": "ngram"}, "127.0.0.1", 8123)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in command
    assert command[command.index("--speculative-config") + 1] == '{"method":"ngram"}'
    assert command[command.index("--max-num-seqs") + 1] == "4"
    assert command[command.index("--port") + 1] == "8123"


def test_provenance_is_what_the_server_reported(stand_in: str, tmp_path: Path) -> None:
    """The run records the server's own version and model list, and names what it cannot tell."""
    run_experiment(_config(tmp_path, stand_in, ["fine"]), tmp_path / "out")
    provenance = orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())["provenance"]
    assert provenance["vllm"] == STAND_IN_VERSION
    assert provenance["device"] is None
    engine = provenance["engine"]
    assert engine["backend"] == "server"
    assert engine["local"] is False
    assert engine["reported"] == {"version": STAND_IN_VERSION, "models": [
        {"id": "stand-in", "root": None, "max_model_len": 64}]}
    assert engine["unknown"] == ["speculative_methods", "speculative_config_fields", "device"]
    assert provenance["server"]["url"] == stand_in


def test_an_unreachable_server_leaves_its_version_unknown(tmp_path: Path) -> None:
    """Nothing answers /version: the capabilities say so rather than take the local vLLM's."""
    url = f"http://127.0.0.1:{free_port()}"
    with capture_logs() as logs:
        caps = registry.engines.create("server").capabilities(_config(tmp_path, url, ["a"]))
    assert caps.vllm_version is None
    assert "ConnectError" in caps.reported["version_error"]
    assert "vllm_version" in caps.unknown
    assert logs[0]["event"] == "the server did not tell its vLLM version; recording it as unknown"


def test_score_reads_the_completions_prompt_logprobs(stand_in: str, tmp_path: Path) -> None:
    """Token-id prompts with prompt_logprobs=2; top two by rank and the own token's log-prob."""
    engine = OpenAIServerEngine(_config(tmp_path, stand_in, ["fine"], "warmup=false"), "m", None)
    engine.start()
    results = engine.score([ScoreRequest((5, 6, 9)), ScoreRequest((1, 2, 3, 4), (3,))])
    assert [r.scores for r in results] == [
        (TokenScore(1, 6, -0.25, (6, 7), (-0.25, -1.5)),
         TokenScore(2, 9, -4.0, (7, 8), (-0.25, -1.5))),
        (TokenScore(3, 4, -0.25, (4, 5), (-0.25, -1.5)),),
    ]
