"""The scoring pass, the lossless check's margin sources, A/A items and the interleaved order.

No vLLM engine is started: items run in this process with stand-in engines
whose token ids are made up, and the scoring pass scores with a stand-in that
says what it was asked.
"""

from __future__ import annotations

import subprocess
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from specdec import cli, run_folder
from specdec.config import load_config
from specdec.interfaces import (
    EngineRun,
    SampleRequest,
    SampleRun,
    ScoreRequest,
    ScoreResult,
    TokenScore,
)
from specdec.lossless import (
    DECODE_TIME,
    SCORING_PASS,
    ScoredMargin,
    ScoredMargins,
    check,
    divergences,
)
from specdec.records import Conversation, RequestRecord, TurnRecord
from specdec.report import build_report
from specdec.report_files import render_markdown
from specdec.runner import run_experiment
from specdec.scoring import SettingRun, baseline_for, plan, score_batch
from specdec.study import (
    BatchItem,
    expand_study,
    load_study,
    read_index,
    run_batch,
    run_order,
)

from .test_runner import StandInEngine

BASELINE_IDS = (1, 2, 3, 4)
DIVERGED = {0: (1, 2, 9, 4), 1: (1, 8, 3, 4)}
"""Per request index, the candidate's output: request 0 diverges at 2, request 1 at 1."""
NEAR_TIE_TOKEN = 3
"""The scorer gives the baseline a near-tie where its token is 3, a clear lead elsewhere."""


def _turn(ids: Sequence[int], margins: Sequence[float] = (), prompt: str = "q") -> TurnRecord:
    return TurnRecord(prompt=prompt, output=" ".join(map(str, ids)), prompt_tokens=1,
                      output_tokens=len(ids), ttft_s=0.1, decode_s=0.1,
                      output_token_ids=tuple(ids), logprob_margins=tuple(margins))


class TokenEngine(StandInEngine):
    """Answers with token ids: the baseline's, or (speculating) diverging ones."""

    def run(self, conversations: Sequence[Conversation],
            on_record: Callable[[RequestRecord], None]) -> EngineRun:
        for n, conv in enumerate(conversations):
            first = DIVERGED.get(n, BASELINE_IDS) if self.spec else BASELINE_IDS
            turns = tuple(_turn(first if t == 0 else BASELINE_IDS, prompt=question)
                          for t, question in enumerate(conv.turns))
            on_record(RequestRecord(conv.id, conv.category, turns))
        return EngineRun(1.0, None)


class Scorer(StandInEngine):
    """Scores by rule (see NEAR_TIE_TOKEN) and remembers what it was asked and built from."""

    asked: ClassVar[list[ScoreRequest]] = []
    configs: ClassVar[list[Any]] = []
    fail: ClassVar[str | None] = None

    def __init__(self, config: Any, model: Path | str, spec: Mapping[str, Any] | None) -> None:
        super().__init__(config, model, spec)
        Scorer.configs.append((config, spec))

    def sample(self, requests: Sequence[SampleRequest]) -> SampleRun:
        raise NotImplementedError

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        if Scorer.fail is not None:
            raise RuntimeError(Scorer.fail)
        Scorer.asked += requests
        results = []
        for request in requests:
            (position,) = request.chosen()
            token = request.token_ids[position]
            second = -0.15 if token == NEAR_TIE_TOKEN else -2.0
            results.append(ScoreResult((TokenScore(position, token, -0.1, (token, 0),
                                                   (-0.1, second)),)))
        return results


class _Process:
    """An item's or the scoring pass's process, run in this process with stand-ins."""

    commands: ClassVar[list[list[str]]] = []

    def __init__(self, command: list[str], **_: Any) -> None:
        _Process.commands.append(command)
        self.returncode = 0
        if command[3] == "run":
            config = Path(command[command.index("--config") + 1])
            folder = Path(command[command.index("--output-dir") + 1])
            run_experiment(load_config(config), folder, engine_factory=TokenEngine,
                           resume=True)
        else:
            batch = Path(command[4])
            self.returncode = score_batch(batch, read_index(batch).items, engine_factory=Scorer)

    def poll(self) -> int:
        return self.returncode


@pytest.fixture(autouse=True)
def _in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    _Process.commands = []
    Scorer.asked = []
    Scorer.configs = []
    Scorer.fail = None
    monkeypatch.setattr("specdec.executors.process.subprocess",
                        types.SimpleNamespace(Popen=_Process, STDOUT=subprocess.STDOUT))


def _items() -> list[BatchItem]:
    common = {"benchmark": {"limit": 3}, "sinks": ["log"],
              "engine": {"dtype": "bfloat16", "enforce_eager": True}}
    return [BatchItem("base", "base", {**common, "strategy": {"name": "none"}}),
            BatchItem("ngram", "ngram", {**common, "strategy": {"name": "ngram"}})]


def _scored(commands: list[list[str]]) -> int:
    return sum(1 for c in commands if c[3] == "score")


def test_scoring_pass_scores_only_diverged_turns(tmp_path: Path) -> None:
    """The baseline's own prompt and output up to each divergence, on its own engine settings."""
    base = tmp_path / "batch"
    run_batch(_items(), base, poll_s=0)
    assert _scored(_Process.commands) == 1
    config, spec = Scorer.configs[0]
    assert (config.engine.dtype, config.engine.enforce_eager, spec) == ("bfloat16", True, None)
    assert config.generation.logprobs is None
    conversations = run_folder.read_records(base / "base")
    assert len(Scorer.asked) == 2  # two of three requests diverged, one turn each
    for request, (index, position) in zip(Scorer.asked, [(0, 2), (1, 1)], strict=True):
        conversation = conversations[index]
        prompt = tuple(ord(c) for c in conversation.turns[0].prompt)
        assert request.token_ids == (*prompt, *BASELINE_IDS[:position + 1])
        assert request.positions == (len(prompt) + position,)
    margins = run_folder.read_margins(base / "base")
    assert margins is not None
    assert margins.error is None
    assert margins.engine["dtype"] == "bfloat16"
    assert margins.engine["enforce_eager"] is True
    first = conversations[0].id
    scored = margins.lookup[first, 0, 2]
    assert scored.margin == pytest.approx(0.05)
    assert scored == ScoredMargin(first, 0, 2, scored.margin, (3, 0), (-0.1, -0.15), ("ngram",))


def test_check_uses_the_scored_margins(tmp_path: Path) -> None:
    """Near-tie and mismatch by the scoring pass's margins, which the result names as its source."""
    base = tmp_path / "batch"
    run_batch(_items(), base, poll_s=0)
    margins = run_folder.read_margins(base / "base")
    result = check(run_folder.read_outputs(base / "ngram").requests,
                   run_folder.read_outputs(base / "base").requests, 0.25, margins=margins)
    assert (result.near_tie, result.mismatch, result.unclassified) == (1, 1, 0)
    classified = [c for c in result.comparisons if c.status != "not_compared"]
    assert {c.margin_source for c in classified} == {SCORING_PASS}
    assert result.scoring_engine is not None
    assert result.scoring_engine["dtype"] == "bfloat16"
    without = check(run_folder.read_outputs(base / "ngram").requests,
                    run_folder.read_outputs(base / "base").requests, 0.25)
    assert without.unclassified == 2
    assert without.scoring_engine is None
    assert all("no scoring pass scored it" in (c.reason or "") for c in without.comparisons
               if c.status == "unclassified")


def test_report_classifies_with_the_scored_margins(tmp_path: Path) -> None:
    """specdec report reads the scoring pass's margins and says where they came from."""
    base = tmp_path / "batch"
    run_batch(_items(), base, poll_s=0)
    report = build_report([base])
    result = report.lossless["ngram"]
    assert (result.near_tie, result.mismatch, result.unclassified) == (1, 1, 0)
    text = render_markdown(report, [])
    assert "Margins from a scoring pass after the timed runs" in text
    assert "dtype bfloat16, enforce_eager True" in text
    assert "(scoring pass)" in text


def test_rerun_scores_only_what_is_missing(tmp_path: Path) -> None:
    """A finished pass is not started again; a lost margin is scored again, alone."""
    base = tmp_path / "batch"
    run_batch(_items(), base, poll_s=0)
    assert plan(base, read_index(base).items) == []
    run_batch(_items(), base, poll_s=0)
    assert _scored(_Process.commands) == 1
    margins = run_folder.read_margins(base / "base")
    assert margins is not None
    kept = ScoredMargins(margins.run_id, margins.margins[:1], margins.engine)
    run_folder.write_margins(base / "base", kept)
    Scorer.asked = []
    run_batch(_items(), base, poll_s=0)
    assert len(Scorer.asked) == 1
    again = run_folder.read_margins(base / "base")
    assert again is not None
    assert sorted(again.lookup) == sorted(margins.lookup)


def test_failed_pass_leaves_divergences_unclassified_with_the_reason(tmp_path: Path) -> None:
    """The batch finishes; the check says why its divergences have no margin."""
    Scorer.fail = "out of memory"
    base = tmp_path / "batch"
    index = run_batch(_items(), base, poll_s=0)
    assert [i.status for i in index.items] == ["done", "done"]
    margins = run_folder.read_margins(base / "base")
    assert margins is not None
    assert margins.error == "RuntimeError: out of memory"
    result = check(run_folder.read_outputs(base / "ngram").requests,
                   run_folder.read_outputs(base / "base").requests, 0.25, margins=margins)
    assert result.unclassified == 2
    assert all(c.reason == "the scoring pass did not finish: RuntimeError: out of memory"
               for c in result.comparisons if c.status == "unclassified")
    Scorer.fail = None
    run_batch(_items(), base, poll_s=0)
    fixed = run_folder.read_margins(base / "base")
    assert fixed is not None
    assert fixed.error is None
    assert len(fixed.margins) == 2


def test_margins_of_an_earlier_run_are_ignored(tmp_path: Path) -> None:
    """A baseline run again (another run_id) is scored again, not matched to old margins."""
    base = tmp_path / "batch"
    run_batch(_items(), base, poll_s=0)
    margins = run_folder.read_margins(base / "base")
    assert margins is not None
    run_folder.write_margins(base / "base", ScoredMargins("another-run", margins.margins))
    assert run_folder.read_margins(base / "base") is None


def test_scored_margins_are_preferred_over_decode_time_ones() -> None:
    """A record's own margins count only where the pass has none; each says its source."""
    baseline = [RequestRecord("a", "c", (_turn((1, 2, 3), (5.0, 5.0, 5.0)),)),
                RequestRecord("b", "c", (_turn((1, 2, 3), (0.1, 0.1, 0.1)),))]
    candidate = [RequestRecord("a", "c", (_turn((1, 9, 3)),)),
                 RequestRecord("b", "c", (_turn((1, 2, 7)),))]
    assert divergences(candidate, baseline) == [("a", 0, 1), ("b", 0, 2)]
    scored = ScoredMargins("r", (ScoredMargin("a", 0, 1, 0.01, (2, 9), (-0.5, -0.51)),),
                           {"dtype": "bfloat16"})
    result = check(candidate, baseline, 0.25, margins=scored)
    by_id = {c.id: c for c in result.comparisons}
    assert (by_id["a"].status, by_id["a"].margin_source) == ("near_tie", SCORING_PASS)
    assert (by_id["b"].status, by_id["b"].margin_source) == ("near_tie", DECODE_TIME)
    assert by_id["a"].baseline_margin == 0.01


def _setting(name: str, strategy: str, labels: Mapping[str, Any] | None = None,
             overrides: Sequence[str] = ()) -> SettingRun:
    return SettingRun(name, load_config(None, [f"strategy.name={strategy}", *overrides]),
                      labels or {})


def test_pairing_rule() -> None:
    """Same settings first; a baseline is its own; an A/A item pairs with the one it repeats."""
    base = _setting("base", "none")
    eager = _setting("base-eager", "none", overrides=["engine.enforce_eager=true"])
    aa = _setting("base__aa", "none", {"aa_check": True})
    ngram = _setting("ngram", "ngram", overrides=["engine.enforce_eager=true"])
    other = _setting("ngram-f32", "ngram", overrides=["engine.dtype=float32"])
    settings = [aa, base, eager, ngram, other]
    assert baseline_for(base, settings) is base
    assert baseline_for(aa, settings) is base
    assert baseline_for(ngram, settings) is eager
    assert baseline_for(other, settings) is base  # none shares float32: the model's first


def test_aa_check_adds_a_second_baseline(tmp_path: Path) -> None:
    """aa_check: each baseline gets an item of its own, setting <baseline>__aa, label aa_check."""
    path = tmp_path / "study.yaml"
    path.write_text("strategies: [{name: ngram}]\naa_check: true\nrepeats: 2\n")
    items = expand_study(load_study(path))
    assert [(i.name, i.setting, dict(i.labels)) for i in items] == [
        ("smollm2-135m__none__r0", "smollm2-135m__none", {}),
        ("smollm2-135m__none__r1", "smollm2-135m__none", {}),
        ("smollm2-135m__none__aa__r0", "smollm2-135m__none__aa", {"aa_check": True}),
        ("smollm2-135m__none__aa__r1", "smollm2-135m__none__aa", {"aa_check": True}),
        ("smollm2-135m__ngram__r0", "smollm2-135m__ngram", {}),
        ("smollm2-135m__ngram__r1", "smollm2-135m__ngram", {}),
    ]
    assert items[2].experiment == items[0].experiment


def _repeated(settings: Sequence[str], repeats: int) -> list[BatchItem]:
    return [BatchItem(f"{s}__r{r}", s, {"strategy": {"name": "none"}}, {}, r)
            for s in settings for r in range(repeats)]


def test_repeats_run_interleaved_in_a_seeded_order() -> None:
    """Round by round, every setting in each round, shuffled by the seed; one round keeps order."""
    items = _repeated(["a", "b", "c", "d"], 3)
    order = run_order(items, seed=0)
    rounds = [order[i:i + 4] for i in range(0, 12, 4)]
    for repeat, names in enumerate(rounds):
        assert sorted(names) == [f"{s}__r{repeat}" for s in "abcd"]
    assert run_order(items, seed=0) == order
    orders = {tuple(run_order(items, seed=s)) for s in range(10)}
    assert len(orders) > 1
    firsts = {run_order(items, seed=s)[0][0] for s in range(20)}
    assert len(firsts) > 1  # the baseline's place is shuffled too
    single = _repeated(["a", "b"], 1)
    assert run_order(single, seed=3) == ["a__r0", "b__r0"]


def test_batch_records_its_order_and_resume_keeps_it(tmp_path: Path) -> None:
    """batch.json holds the order and seed; a rerun with another seed keeps the recorded order."""
    items = [BatchItem(i.name, i.setting, {**i.experiment, "benchmark": {"limit": 1},
                                           "sinks": ["log"]}, {}, i.repeat)
             for i in _repeated(["a", "b", "c"], 2)]
    base = tmp_path / "batch"
    run_batch(items, base, poll_s=0, seed=7)
    data = orjson.loads((base / "batch.json").read_bytes())
    assert data["seed"] == 7
    assert data["order"] == run_order(items, seed=7)
    ran = [Path(c[c.index("--output-dir") + 1]).name for c in _Process.commands
           if c[3] == "run"]
    assert ran == data["order"]
    assert [i["name"] for i in data["items"]] == [i.name for i in items]
    for name in data["order"][3:]:
        (base / name / "metrics.json").unlink()
    _Process.commands = []
    run_batch(items, base, poll_s=0, seed=8)
    again = orjson.loads((base / "batch.json").read_bytes())
    assert (again["order"], again["seed"]) == (data["order"], 7)
    resumed = [Path(c[c.index("--output-dir") + 1]).name for c in _Process.commands]
    assert resumed == data["order"][3:]


def test_score_command_is_hidden_and_idempotent(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`specdec score` is not on the help page; on a scored batch it has nothing to do."""
    base = tmp_path / "batch"
    run_batch(_items(), base, poll_s=0)
    assert cli.main(["--help"]) == 0
    assert " score " not in capsys.readouterr().out
    Scorer.asked = []
    assert cli.main(["score", str(base)]) == 0
    assert Scorer.asked == []
