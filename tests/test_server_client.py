"""The server backend against a local stand-in that misbehaves on purpose (no vLLM)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from specdec.config import load_config
from specdec.engines.launch import free_port, server_command
from specdec.engines.openai_server import counter_delta, parse_counters
from specdec.errors import EngineError
from specdec.records import SpecStats
from specdec.runner import run_experiment

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
            self._send(200, orjson.dumps({"data": [{"id": "stand-in"}]}))
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
