"""The server backend against a local stand-in that misbehaves on purpose (no vLLM)."""

from __future__ import annotations

import itertools
import math
import statistics
import sys
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
from specdec.engines.launch import ServerProcess, free_port, root_cause, server_command
from specdec.engines.openai_server import (
    IDS_BY_TEXT,
    IDS_FROM_LOGPROBS,
    IDS_RETURNED,
    OpenAIServerEngine,
    counter_delta,
    gamma_intervals,
    parse_counters,
    send_offsets,
)
from specdec.engines.requests import request_seed
from specdec.errors import EngineError
from specdec.interfaces import SampleRequest, ScoreRequest, TokenScore
from specdec.records import Conversation, Message, SpecStats
from specdec.runner import run_experiment

STAND_IN_VERSION = "0.32.0+stand-in"
OLD_VERSION = "0.10.1"
"""A vLLM before ``return_token_ids``."""
WORDS = ["Hello", " there", " friend"]

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
    version: ClassVar[str] = STAND_IN_VERSION
    bodies: ClassVar[list[dict[str, Any]]] = []
    """Every generation request's body, as sent."""

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
            self._send(200, orjson.dumps({"version": StandIn.version}))
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
        if self.path == "/tokenize":
            self._tokenize(body)
            return
        if "prompt_logprobs" in body:
            self._prompt_logprobs(body)
            return
        if isinstance(body.get("prompt"), list) and not body.get("stream"):
            self._sample(body)
            return
        StandIn.bodies.append(body)
        chat = "messages" in body
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
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
        if prompt.startswith("wait"):
            time.sleep(0.3)
        for i, word in enumerate(WORDS):
            if prompt.startswith("cut") and i == 2:
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True
                return
            self._chunk({"choices": [self._choice(body, prompt, i, word)]})
        self._chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3},
                     "metrics": {"speculative_decoding": {
                         "acceptance_histogram": [1, 0, 1], "num_draft_tokens": 4,
                         "per_step_accepted": [0, 2], "num_spec_tokens": 2}}})
        self._chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


    @staticmethod
    def _choice(body: dict[str, Any], prompt: str, i: int, word: str) -> dict[str, Any]:
        # As vLLM streams: token_ids only with return_token_ids (a parser may hold some
        # back: prompt "partial"), log-probs only when asked, ids as text unless asked.
        chat = "messages" in body
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if i == 2 else None}
        choice |= {"delta": {"content": word}} if chat else {"text": word}
        if body.get("return_token_ids") and not (prompt.startswith("partial") and i == 2):
            choice["token_ids"] = [i + 1]
        name = (lambda t: f"token_id:{t}") if body.get("return_tokens_as_token_ids") else str
        if chat and body.get("logprobs"):
            top = [{"token": name(7), "logprob": -0.1}, {"token": name(8), "logprob": -2.1}]
            choice["logprobs"] = {"content": [{"token": name(i + 1), "logprob": -0.1,
                                               "top_logprobs": top}]}
        elif not chat and body.get("logprobs") is not None:
            choice["logprobs"] = {"tokens": [name(i + 1)], "token_logprobs": [-0.1],
                                  "top_logprobs": [{name(7): -0.1, name(8): -2.6}]}
        return choice

    def _tokenize(self, body: dict[str, Any]) -> None:
        # Each message is its length, then 0 for the generation prompt; raw text: 1, then
        # its characters (a BOS, then the text).
        if "messages" in body:
            tokens = [len(m["content"]) for m in body["messages"]]
            tokens += [0] if body.get("add_generation_prompt") else []
        else:
            tokens = [1, *(ord(c) for c in body["prompt"])]
        self._send(200, orjson.dumps({"count": len(tokens), "max_model_len": 64,
                                      "tokens": tokens}))

    def _sample(self, body: dict[str, Any]) -> None:
        # A non-streamed completion of a token-id prompt: two tokens from the seed and the
        # prompt's length, as token_ids (return_token_ids) or as log-prob tokens.
        StandIn.bodies.append(body)
        ids = [body["seed"] % 7, len(body["prompt"])]
        choice: dict[str, Any] = {"index": 0, "text": "xy", "finish_reason": "length"}
        if body.get("return_token_ids"):
            choice["token_ids"] = ids
        elif body.get("return_tokens_as_token_ids"):
            choice["logprobs"] = {"tokens": [f"token_id:{t}" for t in ids]}
        self._send(200, orjson.dumps({"choices": [choice], "usage": {}}))

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
    StandIn.version = STAND_IN_VERSION
    StandIn.bodies = []
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
    result = run_experiment(_config(tmp_path, stand_in, ["fine"], "generation.logprobs=2"),
                            tmp_path / "out")
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


FAILED_START = """\
(Worker pid=7) ERROR 12-03 11:45:51 [multiproc_executor.py:1063] WorkerProc hit an exception.
(Worker pid=7) ERROR 12-03 11:45:51 [multiproc_executor.py:1063] Traceback (most recent call last):
(Worker pid=7) ERROR 12-03 11:45:51 [multiproc_executor.py:1063] ValueError: Available memory \
on node 0 (9.28/11.34 GiB) on kv cache allocation is less than requested memory for kv \
(-0.01/1.13 GiB). Reduce CPU memory used by other processes.
(EngineCore pid=6) ERROR 12-03 11:45:51 [core.py:1510] EngineCore failed to start.
""" + "\n".join(f"  line {n} of a long traceback" for n in range(30)) + """
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
"""The shape of vLLM 0.32's log when its engine fails to start (a real one, shortened)."""


def test_a_server_that_fails_to_start_names_the_cause(tmp_path: Path) -> None:
    """The error leads with the worker's exception, which lies far above the log's end."""
    assert root_cause(FAILED_START.splitlines()) is not None
    config = load_config(None, ["engine.enforce_eager=true"])
    server = ServerProcess(config, Path("/m"), None)
    server.log_path = tmp_path / "server.log"
    script = f"import sys; sys.stdout.write({FAILED_START!r}); sys.exit(1)"
    server.command = [sys.executable, "-c", script]
    with pytest.raises(EngineError) as caught:
        server.start()
    message = str(caught.value)
    first = message.splitlines()[0]
    assert first.startswith("the vLLM server exited with code 1 while starting: ValueError: "
                            "Available memory on node 0")
    assert "RuntimeError: Engine core initialization failed" in message  # the tail still shown
    assert root_cause(["RuntimeError: Engine core initialization failed. See root cause above."]
                      ) is None


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


def _sent(kind: str = "messages") -> list[dict[str, Any]]:
    """The timed generation requests' bodies (the warm-up's is the first)."""
    return [b for b in StandIn.bodies[1:] if kind in b]


UNASKED = ("logprobs", "top_logprobs", "return_tokens_as_token_ids")


def test_timed_requests_carry_no_logprobs_unless_configured(stand_in: str,
                                                            tmp_path: Path) -> None:
    """A server that returns token ids is asked for them, and for nothing else unasked."""
    result = run_experiment(_config(tmp_path, stand_in, ["fine", "fine 2"]), tmp_path / "out")
    bodies = _sent()
    assert len(bodies) == 2
    for body in bodies:
        assert body["return_token_ids"] is True
        assert not set(UNASKED) & set(body), body
    turn = result.records[0].turns[0]
    assert turn.output_token_ids == (1, 2, 3)
    assert turn.logprob_margins == ()
    metrics = orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())
    assert metrics["provenance"]["server"]["token_ids"] == IDS_RETURNED


def test_sampled_requests_carry_their_own_seed(stand_in: str, tmp_path: Path) -> None:
    """At temperature > 0 each request sends its request_seed, recorded in its turn.

    A greedy run without generation.seed sends none and records none.
    """
    result = run_experiment(_config(tmp_path, stand_in, ["fine", "fine 2"],
                                    "generation.temperature=0.8"), tmp_path / "sampled")
    bodies = _sent()
    by_prompt = {b["messages"][-1]["content"]: b["seed"] for b in bodies}
    expected = {f"r{i}": request_seed(result.config, f"r{i}", 0) for i in range(2)}
    assert by_prompt == {"fine": expected["r0"], "fine 2": expected["r1"]}
    assert {r.id: r.turns[0].seed for r in result.records} == expected
    StandIn.bodies = []
    greedy = run_experiment(_config(tmp_path, stand_in, ["fine"]), tmp_path / "greedy")
    assert all("seed" not in body for body in StandIn.bodies)
    assert greedy.records[0].turns[0].seed is None


@pytest.mark.parametrize("version", [STAND_IN_VERSION, OLD_VERSION])
def test_sample_sends_one_seeded_completion_per_seed(stand_in: str, tmp_path: Path,
                                                     version: str) -> None:
    """Each seed is one /v1/completions request with the prompt's ids and the sampling asked.

    The ids come back from token_ids, or from an older server's log-prob tokens.
    """
    StandIn.version = version
    engine = OpenAIServerEngine(_config(tmp_path, stand_in, ["fine"]), "m", None)
    engine.start()
    StandIn.bodies = []
    run = engine.sample([SampleRequest((1, 2, 3), (10, 11), 2, 0.7, 0.9, 5),
                         SampleRequest((4,), (12,), 2, 0.7)])
    assert run.samples == (((3, 3), (4, 3)), ((5, 1),))
    assert run.counters is None  # no speculative_config
    bodies = sorted(StandIn.bodies, key=lambda b: b["seed"])
    assert [(b["prompt"], b["seed"]) for b in bodies] == [([1, 2, 3], 10), ([1, 2, 3], 11),
                                                          ([4], 12)]
    first = bodies[0]
    assert (first["max_tokens"], first["temperature"], first["top_p"], first["top_k"]) == (
        2, 0.7, 0.9, 5)
    assert "top_k" not in bodies[2]
    assert ("return_token_ids" in first) == (version == STAND_IN_VERSION)
    assert all("ignore_eos" not in b for b in bodies)


def test_a_greedy_continuation_past_eos_sends_ignore_eos(stand_in: str, tmp_path: Path) -> None:
    """ignore_eos (draft replay's continuations) is vLLM's extra completions field."""
    engine = OpenAIServerEngine(_config(tmp_path, stand_in, ["fine"]), "m", None)
    engine.start()
    StandIn.bodies = []
    engine.sample([SampleRequest((1, 2, 3), (0,), 2, 0.0, ignore_eos=True)])
    [body] = StandIn.bodies
    assert (body["ignore_eos"], body["temperature"], body["max_tokens"]) == (True, 0.0, 2)


def test_logprobs_are_asked_only_when_configured(stand_in: str, tmp_path: Path) -> None:
    """generation.logprobs=2 adds vLLM's log-prob fields; ids still come from token_ids."""
    result = run_experiment(_config(tmp_path, stand_in, ["fine"], "generation.logprobs=2"),
                            tmp_path / "out")
    [body] = _sent()
    assert (body["logprobs"], body["top_logprobs"], body["return_token_ids"]) == (True, 2, True)
    assert "return_tokens_as_token_ids" not in body
    assert result.records[0].turns[0].output_token_ids == (1, 2, 3)


def test_an_older_server_compares_by_text(stand_in: str, tmp_path: Path) -> None:
    """Before vLLM 0.10.2 and without logprobs: nothing extra is sent, and the run says so."""
    StandIn.version = OLD_VERSION
    with capture_logs() as logs:
        result = run_experiment(_config(tmp_path, stand_in, ["fine"]), tmp_path / "out")
    [body] = _sent()
    assert not {*UNASKED, "return_token_ids"} & set(body), body
    turn = result.records[0].turns[0]
    assert (turn.output, turn.output_token_ids, turn.output_tokens) == (
        "Hello there friend", (), 3)
    metrics = orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())
    assert metrics["provenance"]["server"]["token_ids"] == IDS_BY_TEXT
    assert any("outputs compare by text" in entry["event"] for entry in logs)


def test_an_older_server_gives_ids_with_configured_logprobs(stand_in: str,
                                                            tmp_path: Path) -> None:
    """Before 0.10.2 with generation.logprobs: the ids come from the log-probs' token_id:N."""
    StandIn.version = OLD_VERSION
    result = run_experiment(_config(tmp_path, stand_in, ["fine"], "generation.logprobs=2"),
                            tmp_path / "out")
    [body] = _sent()
    assert body["return_tokens_as_token_ids"] is True
    assert "return_token_ids" not in body
    turn = result.records[0].turns[0]
    assert turn.output_token_ids == (1, 2, 3)
    assert turn.logprob_margins == pytest.approx((2.0, 2.0, 2.0))
    metrics = orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())
    assert metrics["provenance"]["server"]["token_ids"] == IDS_FROM_LOGPROBS


def test_raw_prompts_read_completions_ids_and_margins(stand_in: str, tmp_path: Path) -> None:
    """/v1/completions: no logprobs unless configured; its top_logprobs maps give margins."""
    plain = run_experiment(_config(tmp_path, stand_in, ["fine"], "chat_template=false"),
                           tmp_path / "plain")
    [body] = _sent("prompt")
    assert body["return_token_ids"] is True
    assert not set(UNASKED) & set(body), body
    assert plain.records[0].turns[0].output_token_ids == (1, 2, 3)
    StandIn.bodies = []
    asked = run_experiment(_config(tmp_path, stand_in, ["fine"], "chat_template=false",
                                   "generation.logprobs=2"), tmp_path / "asked")
    [body] = _sent("prompt")
    assert body["logprobs"] == 2
    assert asked.records[0].turns[0].logprob_margins == pytest.approx((2.5, 2.5, 2.5))


def test_incomplete_token_ids_are_left_empty(stand_in: str, tmp_path: Path) -> None:
    """Fewer ids than the usage's output tokens: the turn keeps none (compares by text)."""
    with capture_logs() as logs:
        result = run_experiment(_config(tmp_path, stand_in, ["partial", "fine"]),
                                tmp_path / "out")
    by_id = {r.id: r.turns[0] for r in result.records}
    assert by_id["r0"].output_token_ids == ()
    assert by_id["r1"].output_token_ids == (1, 2, 3)
    [warning] = [e for e in logs if "fewer token ids" in e["event"]]
    assert warning["turns"] == 1


def test_prompt_token_ids_by_tokenize(stand_in: str, tmp_path: Path) -> None:
    """/tokenize gets the turn's chat messages with the generation prompt, or the raw text."""
    conv = Conversation("c", ("first?", "second question?"),
                        context=(Message("system", "be brief"),))
    chat = OpenAIServerEngine(_config(tmp_path, stand_in, ["fine"], "warmup=false"), "m", None)
    chat.start()
    # system, user 1, the engine's answer, user 2, then the generation prompt
    assert chat.prompt_token_ids(conv, ["an answer"]) == (8, 6, 9, 16, 0)
    raw = OpenAIServerEngine(_config(tmp_path, stand_in, ["fine"], "warmup=false",
                                     "chat_template=false"), "m", None)
    raw.start()
    assert raw.prompt_token_ids(Conversation("r", ("Hi",)), []) == (1, ord("H"), ord("i"))
    with pytest.raises(EngineError, match="not started"):
        OpenAIServerEngine(_config(tmp_path, stand_in, ["fine"]), "m", None).prompt_token_ids(
            conv, [])


def test_poisson_gaps_have_the_rate_and_gammas_variance() -> None:
    """Gamma gaps (shape = burstiness, mean 1/R): the mean is 1/R, the variance 1/(R^2 b)."""
    rate = 4.0
    for burstiness in (0.25, 1.0, 4.0):
        for seed in range(3):
            gaps = gamma_intervals(5000, rate, burstiness, seed)
            assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.05 / burstiness**0.5)
            assert statistics.variance(gaps) == pytest.approx(1 / (rate**2 * burstiness),
                                                              rel=0.15)
    # burstiness 1 is exponential: P(gap < mean) = 1 - 1/e
    gaps = gamma_intervals(5000, rate, 1.0, 7)
    below = sum(g < 1 / rate for g in gaps) / len(gaps)
    assert below == pytest.approx(1 - math.exp(-1), abs=0.02)


def test_send_offsets_are_seeded_and_span_the_fixed_schedule() -> None:
    """The same seed gives the same schedule, another seed another; the span is (N-1)/R."""
    first = send_offsets(2000, 5.0, seed=1)
    assert first == send_offsets(2000, 5.0, seed=1)
    assert first != send_offsets(2000, 5.0, seed=2)
    assert first[0] == 0.0
    assert first[-1] == pytest.approx(1999 / 5.0)
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert min(gaps) > 0
    # a Poisson process's gaps vary as much as their mean; a fixed schedule's do not vary
    assert statistics.stdev(gaps) == pytest.approx(0.2, rel=0.1)
    assert send_offsets(4, 2.0, schedule="fixed") == (0.0, 0.5, 1.0, 1.5)
    assert send_offsets(3, None) == (0.0, 0.0, 0.0)
    assert send_offsets(1, 2.0) == (0.0,)
    burst = [b - a for a, b in itertools.pairwise(send_offsets(2000, 5.0, burstiness=0.25))]
    assert statistics.stdev(burst) == pytest.approx(0.4, rel=0.15)


def test_queue_wait_is_recorded_apart_from_latency(stand_in: str, tmp_path: Path) -> None:
    """At concurrency 1, a request due while another runs waits for the slot, not the server."""
    config = _config(tmp_path, stand_in, ["wait a", "wait b", "wait c"], "engine.concurrency=1",
                     "engine.request_rate=100", "engine.request_schedule=fixed")
    result = run_experiment(config, tmp_path / "out")
    records = {r.id: r for r in result.records}
    assert [records[f"r{i}"].scheduled_s for i in range(3)] == pytest.approx([0, 0.01, 0.02])
    assert records["r0"].queue_wait_s == pytest.approx(0, abs=0.1)
    waits = [records[f"r{i}"].queue_wait_s or 0.0 for i in range(3)]
    for later in (1, 2):
        assert waits[later] > waits[later - 1] + 0.25
        assert records[f"r{later}"].walltime_s < waits[later] + 0.25
    line = orjson.loads((tmp_path / "out" / "responses.jsonl").read_bytes().splitlines()[-1])
    assert line["queue_wait_s"] > 0
    server = orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())["provenance"]
    assert server["server"]["arrivals"] == {"request_rate": 100.0, "schedule": "fixed",
                                            "burstiness": 1.0, "seed": 0}


def test_poisson_arrivals_follow_the_seeded_schedule(stand_in: str, tmp_path: Path) -> None:
    """Each request is due when send_offsets says, for engine.request_seed (else engine.seed)."""
    prompts = [f"fine {i}" for i in range(6)]
    config = _config(tmp_path, stand_in, prompts, "engine.request_rate=50",
                     "engine.request_seed=3", "engine.burstiness=2", "mode=batch")
    result = run_experiment(config, tmp_path / "out")
    due = send_offsets(6, 50.0, burstiness=2.0, seed=3)
    assert [r.scheduled_s for r in sorted(result.records, key=lambda r: r.id)] == (
        pytest.approx(list(due)))
    assert all(r.queue_wait_s is not None and r.queue_wait_s < 0.5 for r in result.records)
