"""specdec tune without vLLM: a stand-in world whose engine runs vLLM's verify loop.

The world's target decodes greedily a text that copies stretches of its prompt (so
n-gram lookup matches); each speculative run counts its steps with replay's own loop
and the strategy's drafter (ngram's, or a draft model's agreement known at every
position), and its decode time follows a cost law of the cost model's ``linear``
form with a little noise.  Batch items run in this process through a stand-in for
the item's subprocess, so the tune's phases, resume and files are exercised as a
user's run would exercise them.
"""

from __future__ import annotations

import random
import subprocess
import types
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from specdec import cli, run_folder
from specdec.config import load_config
from specdec.engines.requests import prompt_token_ids
from specdec.errors import ConfigError, EngineError, SpecdecError
from specdec.interfaces import EngineRun, SampleRequest, SampleRun, ScoreRequest, ScoreResult
from specdec.metrics import add_stats, decode_steps, request_spec, spec_metrics
from specdec.records import Conversation, ExperimentConfig, RequestRecord, TurnRecord
from specdec.replay import AgreementProposer, NgramProposer, Proposer, replay_turn
from specdec.report import OVERALL
from specdec.runner import run_experiment
from specdec.tune import (
    CALIBRATION_FILE,
    PREDICTION_FILE,
    RANKING_FILE,
    TuneConfig,
    TuneResult,
    choose_confirmations,
    plan_tune,
    ranked,
    read_prediction,
    run_tune,
    schedule_entries,
    tune_from_mapping,
)
from specdec.tune_files import (
    PLOT_FILE,
    PREDICTION_MD,
    confirmed_rows,
    draft_source_lines,
    write_prediction,
)

from .test_replay import CharTokenizer

QUESTIONS = {
    "copy-1": ("c", ["abcdefg abcdefg hij"]),
    "copy-2": ("c", ["the cat sat on the mat, the cat"]),
    "new-1": ("w", ["write a poem"]),
    "two-1": ("w", ["xyz xyz", "again xyz"]),
}


def _seed(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode())


def greedy(prompt: Sequence[int], budget: int) -> tuple[int, ...]:
    """The target's greedy output: stretches copied from the prompt, and new tokens."""
    rng = random.Random(_seed(tuple(prompt)))  # noqa: S311 - a fixed text, not a secret
    out: list[int] = []
    while len(out) < budget:
        if rng.random() < 0.7:
            start = rng.randrange(len(prompt))
            out += prompt[start:start + rng.randint(2, 6)]
        else:
            out.append(rng.randint(200, 260))
    return tuple(out[:budget])


def agreement(prompt: Sequence[int], output: Sequence[int],
              share: float) -> tuple[bool | None, ...]:
    """A draft model's agreement with the target at each output position (known everywhere)."""
    bits: list[bool | None] = [None]
    for position in range(1, len(output)):
        context = (*prompt, *output[:position])
        bits.append(_seed(context) % 100 < share * 100)
    return tuple(bits)


Law = Callable[[str, int, int, float], float]
"""Decode seconds of a turn: (method, k, batch size, steps, draft tokens) -> seconds."""


class World:
    """The stand-in engine: greedy text, vLLM's verify loop, a cost law.

    ``failing`` names settings (strategy, k) whose run fails before any request;
    ``launched`` lists every item folder a batch started.
    """

    failing: ClassVar[set[tuple[str, int]]] = set()
    launched: ClassVar[list[str]] = []
    texts: ClassVar[dict[tuple[int, ...], tuple[int, ...]]] = {}
    """Every prompt the world answered and its greedy output (the same in every run)."""
    t0 = 0.020
    verify = 0.002
    drafter: ClassVar[dict[str, float]] = {"ngram": 0.0, "draft_model": 0.004, "eagle": 0.002}
    per_batch = 0.25
    """Each request more in the batch makes a step this much slower (relative to t0)."""
    verify_per_batch = 0.008
    """And each draft token checked this much dearer (seconds): speculation pays less."""

    def __init__(self, config: ExperimentConfig, model: Path | str,
                 spec: Mapping[str, Any] | None) -> None:
        self.config = config
        self.spec = dict(spec or {})
        self.method = str(self.spec.get("method", "none"))
        self.k = int(self.spec.get("num_speculative_tokens", 0))
        if (config.strategy.name, self.k) in self.failing:
            msg = f"the stand-in refuses {config.strategy.name} at k={self.k}"
            raise EngineError(msg)

    @classmethod
    def reset(cls) -> None:
        cls.failing = set()
        cls.launched = []
        WorldDraft.failing = False
        WorldDraft.started = 0

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"engine": "world"}

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        raise NotImplementedError  # a tune never samples: it refuses temperature > 0

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        return prompt_token_ids(CharTokenizer(), conversation, answers,
                                chat_template=self.config.chat_template)

    def _proposer(self, prompt: Sequence[int], output: tuple[int, ...]) -> Proposer:
        limit = self.config.engine.max_model_len or 2048
        if self.method == "ngram":
            return NgramProposer(int(self.spec["prompt_lookup_min"]),
                                 int(self.spec["prompt_lookup_max"]), limit)
        share = DRAFT_SHARE if self.method == "draft_model" else 0.6
        return AgreementProposer(len(prompt), output, agreement(prompt, output, share))

    def _decode_s(self, request: str, output_tokens: int, spec: Any) -> float:
        size = self.config.engine.max_num_seqs or 1
        steps = decode_steps(output_tokens, spec)
        tokens = spec.num_draft_tokens if spec else 0
        t0 = self.t0 * (1 + self.per_batch * (size - 1))
        cost = steps * t0 + (self.verify + self.verify_per_batch * (size - 1)) * tokens
        cost += self.drafter.get(self.method, 0.0) * self.k * steps
        noise = (_seed(request, self.method, self.k, size) % 1000) / 1000 - 0.5
        return cost * (1 + 0.01 * noise)

    def run(self, conversations: Sequence[Conversation],
            on_record: Callable[[RequestRecord], None]) -> EngineRun:
        elapsed = 0.0
        counts = []
        limit = self.config.engine.max_model_len or 2048
        for conversation in conversations:
            answers: list[str] = []
            turns = []
            for question in conversation.turns:
                prompt = self.prompt_token_ids(conversation, answers)
                output = greedy(prompt, self.config.generation.max_tokens)
                World.texts[tuple(prompt)] = output
                spec = None
                if self.k:
                    spec = replay_turn(prompt, output, self._proposer(prompt, output),
                                       self.k, limit).spec
                text = "".join(chr(t) for t in output)
                ttft = 0.05 * (1.5 if self.method == "draft_model" else 1.0)
                turns.append(TurnRecord(question, text, len(prompt), len(output), ttft,
                                        self._decode_s(conversation.id, len(output), spec),
                                        finish_reason="length", output_token_ids=output,
                                        spec=spec))
                answers.append(text)
            record = RequestRecord(conversation.id, conversation.category, tuple(turns))
            elapsed += record.walltime_s
            counts += [s for s in [request_spec(record)] if s is not None]
            on_record(record)
        return EngineRun(elapsed, add_stats(counts) if self.k else None)


DRAFT_SHARE = 0.7
"""How often the world's draft model agrees with the target (its agreement's share)."""
DRAFT_MISS = 199
"""The world's draft model's token where it disagrees: one the target never says."""


class WorldDraft:
    """An engine of the world's draft model: Engine.sample continues greedily as it drafts.

    Where the context is a prompt the world answered plus the start of its output, the
    draft says the target's next token where :func:`agreement` says it agrees and
    :data:`DRAFT_MISS` from the first where it does not, as the world's engine drafts.
    ``failing`` makes start fail as an engine that cannot run here does.
    """

    failing: ClassVar[bool] = False
    started: ClassVar[int] = 0

    def __init__(self, config: ExperimentConfig, model: Path | str,
                 spec: Mapping[str, Any] | None) -> None:
        assert spec is None
        assert config.strategy.name == "none"
        self.config = config

    def start(self) -> None:
        if WorldDraft.failing:
            msg = "vLLM is not installed here"
            raise EngineError(msg)
        WorldDraft.started += 1

    def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {}

    def run(self, conversations: Sequence[Conversation],
            on_record: Callable[[RequestRecord], None]) -> EngineRun:
        raise NotImplementedError

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError

    def prompt_token_ids(self, conversation: Conversation,
                         answers: Sequence[str]) -> tuple[int, ...]:
        raise NotImplementedError

    @staticmethod
    def _continue(tokens: tuple[int, ...], count: int) -> tuple[int, ...]:
        for prompt, output in World.texts.items():
            p = len(tokens) - len(prompt)
            if p > 0 and tokens[:len(prompt)] == prompt and tokens[len(prompt):] == output[:p]:
                drawn: list[int] = []
                for position in range(p, p + count):
                    context = (*prompt, *output[:position])
                    right = (position < len(output)
                             and _seed(context) % 100 < DRAFT_SHARE * 100
                             and all(t != DRAFT_MISS for t in drawn))
                    drawn.append(output[position] if right else DRAFT_MISS)
                return tuple(drawn)
        raise AssertionError(f"the world never answered a prefix of {tokens}")

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        assert all(r.temperature == 0 and r.ignore_eos for r in requests)
        return SampleRun(tuple(tuple(self._continue(r.token_ids, r.max_tokens) for _ in r.seeds)
                               for r in requests))


class Process:
    """Stands in for a batch item's process: runs the item here with the world's engine."""

    def __init__(self, command: list[str], **_: Any) -> None:
        config_file = Path(command[command.index("--config") + 1])
        folder = Path(command[command.index("--output-dir") + 1])
        World.launched.append(folder.name)
        try:
            run_experiment(load_config(config_file), folder, engine_factory=World, resume=True)
            self.returncode = 0
        except SpecdecError:
            self.returncode = 1

    def poll(self) -> int:
        return self.returncode


@pytest.fixture(autouse=True)
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[World]]:
    World.reset()
    monkeypatch.setattr("specdec.executors.process.subprocess",
                        types.SimpleNamespace(Popen=Process, STDOUT=subprocess.STDOUT))
    yield World
    World.reset()


def _bench(tmp_path: Path) -> Path:
    path = tmp_path / "bench.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"question_id": i, "category": c, "turns": t}) + b"\n"
                              for i, (c, t) in QUESTIONS.items()))
    return path


def _tune(tmp_path: Path, **extra: Any) -> TuneConfig:
    data: dict[str, Any] = {
        "name": "t",
        "benchmark": {"path": str(_bench(tmp_path))},
        "base": {"generation": {"max_tokens": 24}, "sinks": ["log"]},
        "methods": [{"name": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 3},
                    {"name": "draft_model"}, {"name": "eagle"}],
        "k": [1, 2, 3, 4],
        "calibration_k": [1, 2, 4],
        **extra,
    }
    return tune_from_mapping(data)


def _run(tmp_path: Path, tune: TuneConfig, **kwargs: Any) -> TuneResult:
    kwargs.setdefault("draft_engines", WorldDraft)
    return run_tune(tune, tmp_path / "out", tokenizer=CharTokenizer(), **kwargs)


def _measured_acceptance(folder: Path) -> float | None:
    stats = [s for r in run_folder.read_records(folder) if (s := request_spec(r))]
    return spec_metrics(add_stats(stats)).acceptance_rate


# --- the tune file -------------------------------------------------------------------------


def test_a_tune_file_is_checked_strictly(tmp_path: Path) -> None:
    """Unknown keys offer the closest, values are checked, and what a tune cannot run is said
    at its path: keys the tune sets itself in base, a bad experiment key inside base, the
    baseline or k listed among the methods, batch sizes with sequential mode."""
    with pytest.raises(ConfigError, match=r"did you mean 'confirm'\? @ \$"):
        tune_from_mapping({"confrm": 3})
    with pytest.raises(ConfigError, match=r"k lists 2 more than once @ \$\.k"):
        tune_from_mapping({"k": [1, 2, 2]})
    with pytest.raises(ConfigError, match=r"k values must be >= 1, got 0 @ \$\.k"):
        tune_from_mapping({"k": [0, 1]})
    with pytest.raises(ConfigError, match=r"calibration_k must list at least 2 values"):
        tune_from_mapping({"calibration_k": [2]})
    with pytest.raises(ConfigError) as caught:
        tune_from_mapping({
            "base": {"model": "x", "generation": {"max_token": 3}},
            "methods": [{"name": "none"}, {"name": "ngram", "num_speculative_tokens": 2}],
            "batch_sizes": [1, 4]})
    problems = caught.value.problems
    assert problems[0] == "the tune file sets model itself: move it out of base @ $.base.model"
    assert "extra fields found (max_token); did you mean 'max_tokens'? @ $.base.generation" in (
        problems[1])
    assert problems[2:] == [
        "the baseline is always run: list speculative methods only @ $.methods[0]",
        ("num_speculative_tokens is the tune file's k and calibration_k, not a method's option "
         "@ $.methods[1]")]
    with pytest.raises(ConfigError, match=r"leave mode out @ \$\.base\.mode"):
        tune_from_mapping({"base": {"mode": "sequential"}, "batch_sizes": [1, 4]})


def test_sampling_is_refused_with_where_to_go() -> None:
    """Replay needs the baseline's tokens to be every candidate's: sampling is refused, naming
    the sampling issue and what to do instead."""
    with pytest.raises(ConfigError) as caught:
        tune_from_mapping({"base": {"generation": {"temperature": 0.7}}})
    (problem,) = caught.value.problems
    assert problem.startswith("tune predicts greedy decoding only: at generation.temperature 0.7")
    assert "the sampling issue" in problem
    assert problem.endswith("@ $.base.generation.temperature")


def test_two_methods_making_one_setting_are_refused(tmp_path: Path) -> None:
    """Two draft models listed apart would share a setting name: a sweep tells them apart."""
    tune = _tune(tmp_path, methods=[{"name": "draft_model", "model": "smollm2-135m-draft"},
                                    {"name": "draft_model", "model": "smollm2-135m"}])
    with pytest.raises(ConfigError, match=r"both make setting smollm2-135m__draft_model__num_"):
        plan_tune(tune)


def test_the_plan_calibrates_each_drafter_once(tmp_path: Path) -> None:
    """A grid over ngram's window shares one drafter: only its first point is calibrated,
    at every calibration k; candidates are every method x point x k."""
    tune = _tune(tmp_path, methods=[{"name": "ngram", "prompt_lookup_min": 1,
                                     "sweep": {"prompt_lookup_max": [2, 3]}}])
    plan = plan_tune(tune)
    assert sorted(plan.first) == [
        "smollm2-135m__ngram__prompt_lookup_max=2__num_speculative_tokens=1",
        "smollm2-135m__ngram__prompt_lookup_max=2__num_speculative_tokens=2",
        "smollm2-135m__ngram__prompt_lookup_max=2__num_speculative_tokens=4",
        "smollm2-135m__none", "smollm2-135m__none__aa"]
    assert len(plan.candidates) == 2 * 4
    assert {c.family for c in plan.candidates} == {"ngram prompt_lookup_max=2",
                                                   "ngram prompt_lookup_max=3"}


def test_dry_run_lists_phases_and_how_each_method_is_predicted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line, in-process: nothing runs; ngram is replayed, the draft model from
    its own continuations (else measured agreement), EAGLE only where a calibration run
    measured it."""
    path = tmp_path / "tune.yaml"
    path.write_text(f"name: t\nbenchmark: {{path: {_bench(tmp_path)}}}\n"
                    "methods: [{name: ngram}, {name: draft_model}, {name: eagle}]\n")
    assert cli.main(["tune", str(path), "--dry-run", "--k", "1-3"]) == 0
    out = capsys.readouterr().out
    assert "  smollm2-135m__none__aa\n" in out
    assert "ngram: replayed over the baseline's token ids" in out
    assert ("draft_model: replayed from the draft model's own greedy continuations of every "
            "baseline prefix (one engine of it, in this process), else from the calibration "
            "runs' measured agreement at other k") in out
    assert "eagle: only at calibration_k, from those runs' counts (replay cannot predict" in out
    assert World.launched == []
    assert cli.main(["tune", str(path), "--dry-run", "--set",
                     "base.generation.temperature=1.0"]) == 2
    assert "tune predicts greedy decoding only" in capsys.readouterr().err


# --- the phases ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TuneResult]:
    """One full tune in the world (shared by the tests that read it)."""
    tmp_path = tmp_path_factory.mktemp("tune")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("specdec.executors.process.subprocess",
                        types.SimpleNamespace(Popen=Process, STDOUT=subprocess.STDOUT))
    World.reset()
    try:
        result = _run(tmp_path, _tune(tmp_path))
    finally:
        monkeypatch.undo()
    return tmp_path / "out", result


def test_a_tune_runs_every_phase_into_one_folder(tuned: tuple[Path, TuneResult]) -> None:
    """Baselines, calibration runs and confirmations are batch items of one folder, with
    the study's files; the phases' files are written and prediction.json reads back."""
    out, result = tuned
    for name in ("tune.json", "batch.json", CALIBRATION_FILE, RANKING_FILE, PREDICTION_FILE,
                 "report/report.md"):
        assert (out / name).is_file(), name
    assert read_prediction(out / PREDICTION_FILE) == result
    assert [f.batch_size for f in result.fits] == [1]
    assert result.failed == ()
    files = write_prediction(out, result)
    assert [f.name for f in files] == [PREDICTION_MD, PLOT_FILE]
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ranking_orders_by_predicted_speedup(tuned: tuple[Path, TuneResult]) -> None:
    """Overall and per category, fastest first; the top 3 overall were run to confirm."""
    _, result = tuned
    ranking = result.ranking
    assert ranking.categories == ("c", "w")
    for category in (*ranking.categories, OVERALL):
        speedups = [c.speedup(category) or 0.0 for c in ranked(ranking.candidates, category)]
        assert speedups == sorted(speedups, reverse=True)
        assert speedups
    top = [c.setting for c in choose_confirmations(ranking, [None], 3)]
    confirmed = {c.setting: c for c in result.confirmed}
    assert all("confirmation" in confirmed[s].roles for s in top)
    assert {r.category for r in result.recommendations} == {"c", "w", OVERALL}


def test_replayed_ngram_matches_its_measured_runs(tuned: tuple[Path, TuneResult]) -> None:
    """The world's engine runs replay's loop, so replayed counts equal the measured ones
    exactly; the cost law is the cost model's linear form with 1% noise, so every measured
    ngram setting's speedup is predicted within 3%."""
    out, result = tuned
    by_setting = {c.setting: c for c in result.ranking.candidates}
    ngram = [c for c in result.confirmed if c.family.startswith("ngram")]
    assert ngram
    for confirmed in ngram:
        candidate = by_setting[confirmed.setting]
        assert candidate.source == "replay"
        assert candidate.exact is not None
        measured = _measured_acceptance(out / confirmed.setting)
        assert candidate.acceptance_rate == pytest.approx(measured)
        check = confirmed.speedup[OVERALL]
        assert check.residual is not None
        assert check.measured is not None
        assert check.predicted is not None
        assert abs(check.residual) < 0.03
        assert check.interval is not None
        assert check.residual == pytest.approx(check.measured / check.predicted - 1)


def test_a_draft_model_is_replayed_from_its_own_continuations(
        tuned: tuple[Path, TuneResult]) -> None:
    """Every draft k comes from one pass of the draft's continuations over the baseline (one
    engine), and its replayed acceptance equals what every run of it measured, exactly: the
    calibration runs at k = 1, 2, 4 and any confirmation."""
    out, result = tuned
    draft = {c.k: c for c in result.ranking.candidates if c.family == "draft_model"}
    assert sorted(draft) == [1, 2, 3, 4]
    assert {c.source for c in draft.values()} == {"draft replay"}
    assert "greedy continuations of every baseline prefix" in (draft[1].note or "")
    assert "of 4 tokens, one engine" in (draft[1].note or "")
    assert draft_source_lines(result.ranking) == [f"draft_model (draft replay): {draft[1].note}"]
    runs = [c for c in result.confirmed if c.family == "draft_model"]
    assert {c.k for c in runs} >= {1, 2, 4}
    for confirmed in runs:
        assert confirmed.source == "draft replay"
        measured = _measured_acceptance(out / confirmed.setting)
        assert draft[confirmed.k].acceptance_rate == pytest.approx(measured, abs=0)
        check = confirmed.speedup[OVERALL]
        assert check.residual is not None
        assert abs(check.residual) < 0.03


@pytest.fixture(scope="module")
def tuned_by_agreement(tmp_path_factory: pytest.TempPathFactory) -> TuneResult:
    """A tune where the draft model's engine cannot start here."""
    tmp_path = tmp_path_factory.mktemp("agreement")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("specdec.executors.process.subprocess",
                        types.SimpleNamespace(Popen=Process, STDOUT=subprocess.STDOUT))
    World.reset()
    WorldDraft.failing = True
    try:
        methods = [{"name": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 3},
                   {"name": "draft_model"}]  # ngram's runs pin the target's cost per token
        result = _run(tmp_path, _tune(tmp_path, methods=methods))
    finally:
        monkeypatch.undo()
        World.reset()
    return result


def test_a_draft_model_that_cannot_run_is_predicted_from_its_runs_at_other_k(
        tuned_by_agreement: TuneResult) -> None:
    """Every draft k is predicted from the calibration runs at the other k (never its own),
    as a band whose ends bound the measured speedup where the setting ran; each note says
    why draft replay did not run."""
    result = tuned_by_agreement
    draft = [c for c in result.ranking.candidates if c.family == "draft_model"]
    assert [c.k for c in draft] == [1, 2, 3, 4]
    assert all(c.source == "agreement" for c in draft)
    one = next(c for c in draft if c.k == 1)
    assert one.note is not None
    assert "agreement measured at k=[2, 4]" in one.note
    assert "draft replay could not run (vLLM is not installed here)" in one.note
    [line] = draft_source_lines(result.ranking)
    assert line.startswith("draft_model (agreement): agreement measured at k=[2, 4]")
    assert all(0 < (c.coverage or 0) <= 1 for c in draft)
    for confirmed in (c for c in result.confirmed if c.family == "draft_model"):
        check = confirmed.speedup[OVERALL]
        assert check.predicted is not None
        assert confirmed.upper is not None
        assert check.measured is not None
        assert check.predicted * 0.98 <= check.measured <= confirmed.upper * 1.02


def test_methods_replay_cannot_draft_are_measured_or_skipped(
        tuned: tuple[Path, TuneResult]) -> None:
    """EAGLE at a calibration k rests on that run's own counts (said so); at other k it is
    skipped with replay's reason, listed apart from the ranking."""
    _, result = tuned
    eagle = {c.k: c for c in result.ranking.candidates if c.family == "eagle"}
    assert {k: c.source for k, c in eagle.items()} == {
        1: "measured counts", 2: "measured counts", 3: "skipped", 4: "measured counts"}
    assert "it does not predict acceptance" in (eagle[1].note or "")
    assert "replay cannot predict speculative method 'eagle'" in (eagle[3].note or "")
    assert "measured only at calibration_k [1, 2, 4]" in (eagle[3].note or "")
    assert eagle[3] not in ranked(result.ranking.candidates)


def test_the_prediction_table_shows_each_residual(tuned: tuple[Path, TuneResult]) -> None:
    """prediction.md's table of predicted against measured: each row's residual is measured
    / predicted - 1 of its columns, and the measured speedup carries its interval."""
    out, result = tuned
    write_prediction(out, result)
    text = (out / PREDICTION_MD).read_text()
    assert "## Predicted against measured" in text
    for row, confirmed in zip(confirmed_rows(result), result.confirmed, strict=True):
        check = confirmed.speedup[OVERALL]
        assert check.residual is not None
        assert row[5] == f"{check.residual:+.1%}"
        assert row[4].startswith(f"{check.measured:.2f}x [")
        assert f"| {' | '.join(row)} |" in text
    assert "## A setting per category" in text
    first = ranked(result.ranking.candidates, "w")[0]
    assert f"| w | {first.setting} {first.speedup('w'):.2f}x" in text


def test_a_finished_tune_is_not_redone(tuned: tuple[Path, TuneResult],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Run again: no item starts, the calibration and the ranking are read back, not made."""
    out, result = tuned
    before = {name: (out / name).read_bytes() for name in (CALIBRATION_FILE, RANKING_FILE)}

    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("a finished phase was redone")

    monkeypatch.setattr("specdec.tune.replay_run", never)
    monkeypatch.setattr("specdec.tune.replay_draft_run", never)
    monkeypatch.setattr("specdec.tune.calibrate_folders", never)
    again = run_tune(_tune(out.parent), out, tokenizer=CharTokenizer(), draft_engines=never)
    assert World.launched == []
    assert {name: (out / name).read_bytes() for name in before} == before
    assert again.ranking == result.ranking
    assert again.confirmed == result.confirmed


def test_predict_only_stops_after_the_ranking(tmp_path: Path) -> None:
    """No confirmation runs: only the baselines and calibration runs ran; the table has
    their rows; a later full tune resumes with the confirmations only."""
    tune = _tune(tmp_path, methods=[{"name": "ngram", "prompt_lookup_min": 1,
                                     "prompt_lookup_max": 3}], confirm=2)
    result = _run(tmp_path, tune, predict_only=True)
    first = sorted(plan_tune(tune).first)
    assert sorted(World.launched) == first
    assert result.predict_only
    assert {c.roles for c in result.confirmed} == {("calibration",)}
    World.launched.clear()
    full = _run(tmp_path, tune)
    top = {c.setting for c in choose_confirmations(full.ranking, [None], 2)}
    assert set(World.launched) == top - set(first)


def test_a_failed_baseline_stops_the_tune_and_a_failed_run_is_listed(tmp_path: Path) -> None:
    """Everything replays the baseline: without it the tune stops, saying where to look.
    A calibration run that failed is left out of the fit and listed as failed."""
    tune = _tune(tmp_path, methods=[{"name": "ngram", "prompt_lookup_min": 1,
                                     "prompt_lookup_max": 3}], confirm=1)
    World.failing = {("none", 0)}
    with pytest.raises(SpecdecError, match=r"the baseline did not finish \(failed: "):
        _run(tmp_path, tune)
    World.failing = {("ngram", 2)}
    result = _run(tmp_path / "second", tune)
    assert [f.split(":")[0] for f in result.failed] == [
        "smollm2-135m__ngram__num_speculative_tokens=2"]


def test_a_folder_tuned_with_other_runs_is_refused(tmp_path: Path) -> None:
    """Other base settings would mean other runs than the folder's: refused, not mixed."""
    methods = [{"name": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 3}]
    _run(tmp_path, _tune(tmp_path, methods=methods, confirm=0), predict_only=True)
    other = _tune(tmp_path, methods=methods, base={"generation": {"max_tokens": 12}})
    with pytest.raises(SpecdecError, match=r"was tuned with other base"):
        _run(tmp_path, other)


# --- batch sizes and the schedule ----------------------------------------------------------


def test_schedule_entries_have_vllms_shape() -> None:
    """Inclusive ranges from 1, each size up to the next one's start, the last carried on;
    neighbours with one k merged."""
    assert schedule_entries([(1, 4), (4, 2), (16, 0)]) == ((1, 3, 4), (4, 15, 2), (16, 16, 0))
    assert schedule_entries([(8, 1), (1, 3), (4, 3)]) == ((1, 7, 3), (8, 8, 1))
    assert schedule_entries([(2, 5)]) == ((1, 2, 5),)


def test_batch_sizes_give_a_k_per_batch_size(tmp_path: Path) -> None:
    """Swept max_num_seqs 1, 2 and 4 (the world's verify cost grows with the batch, so that
    at 4 no k pays): each size has its own baseline, fit and ranking, and the schedule takes
    each size's fastest k (0 where none beats the baseline), written as the
    speculative_config of the raw strategy with k its largest."""
    tune = _tune(tmp_path, methods=[{"name": "ngram", "prompt_lookup_min": 1,
                                     "prompt_lookup_max": 3}], batch_sizes=[1, 2, 4], confirm=1)
    result = _run(tmp_path, tune)
    assert [f.batch_size for f in result.fits] == [1, 2, 4]
    (schedule,) = result.schedules
    best = {size: ranked(result.ranking.candidates, OVERALL, size)[0] for size in (1, 2, 4)}
    expected = tuple((size, c.k if (c.speedup() or 0) > 1 else 0) for size, c in best.items())
    assert schedule.k_by_batch_size == expected
    assert expected[0][1] > 0
    assert expected[-1] == (4, 0)
    assert schedule.entries == schedule_entries(expected)
    config = schedule.speculative_config
    assert config["method"] == "ngram"
    assert config["num_speculative_tokens"] == max(k for _, k in expected)
    assert config["num_speculative_tokens_per_batch_size"] == [list(e) for e in schedule.entries]


def test_the_shipped_tune_file_plans() -> None:
    """studies/tune.yaml: ngram and the draft, calibrated at 1, 2, 4, predicted at 1..8."""
    from specdec.tune import describe_plan, load_tune

    path = Path(__file__).parents[1] / "studies" / "tune.yaml"
    plan = plan_tune(load_tune(path), str(path))
    text = "\n".join(describe_plan(plan))
    assert "(16: methods x grid x k [1, 2, 3, 4, 5, 6, 7, 8]" in text
    assert "smollm2-135m__draft_model__num_speculative_tokens=4" in text
