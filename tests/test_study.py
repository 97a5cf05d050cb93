"""Studies without an engine: expansion, baselines, the lossless check and reports."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from specdec import run_folder, scoring
from specdec.config import config_from_mapping, load_config
from specdec.errors import ConfigError, SpecdecError
from specdec.lossless import check, divergences
from specdec.metrics import summarise
from specdec.records import RequestRecord, TurnRecord
from specdec.report import build_report
from specdec.report_files import write_report
from specdec.runner import run_experiment
from specdec.serialization import write_json
from specdec.study import (
    BatchIndex,
    BatchItem,
    ItemStatus,
    _item_error,
    check_item,
    expand_study,
    items_from_configs,
    load_study,
    read_index,
    root_cause,
    run_batch,
)

from .test_runner import StandInEngine


@pytest.fixture(autouse=True)
def _reset_engine() -> None:
    StandInEngine.reset()


def _study(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_study_expands_models_strategies_sweeps_and_repeats(tmp_path: Path) -> None:
    """models x strategies x option sweep x engine sweep x repeats, baseline added first."""
    study = load_study(_study(tmp_path, """
name: s
benchmark: {limit: 2}
models: [smollm2-135m]
base: {generation: {max_tokens: 16}, engine: {enforce_eager: true}}
strategies:
  - name: ngram
    prompt_lookup_max: 6
    sweep: {num_speculative_tokens: [2, 4]}
sweep: {engine.max_num_seqs: [1, 8]}
repeats: 2
"""))
    items = expand_study(study)
    settings = sorted({i.setting for i in items})
    assert settings == [
        "smollm2-135m__ngram__num_speculative_tokens=2__max_num_seqs=1",
        "smollm2-135m__ngram__num_speculative_tokens=2__max_num_seqs=8",
        "smollm2-135m__ngram__num_speculative_tokens=4__max_num_seqs=1",
        "smollm2-135m__ngram__num_speculative_tokens=4__max_num_seqs=8",
        "smollm2-135m__none__max_num_seqs=1",
        "smollm2-135m__none__max_num_seqs=8",
    ]
    assert len(items) == 12
    assert items[0].experiment["strategy"] == {"name": "none"}
    ngram = next(i for i in items if i.setting.endswith("tokens=4__max_num_seqs=8"))
    assert ngram.experiment["strategy"] == {"name": "ngram", "prompt_lookup_max": 6,
                                            "num_speculative_tokens": 4}
    assert ngram.experiment["engine"] == {"enforce_eager": True, "max_num_seqs": 8}
    # Timed runs carry only what the study configured: no log-probabilities added.
    assert ngram.experiment["generation"] == {"max_tokens": 16}
    assert {i.name for i in items if i.setting == ngram.setting} == {
        f"{ngram.setting}__r0", f"{ngram.setting}__r1"}


def test_temperature_sweep_expands_with_labels_seeds_and_repeats(tmp_path: Path) -> None:
    """Sampling settings sweep like any experiment key, with a baseline per value.

    Each item is labelled with its temperature; repeat r runs with repeat: r, and
    sampled items take the study's seed as their run seed (greedy ones get none),
    so every request's seed derives from (study seed, request id, turn, repeat).
    """
    study = load_study(_study(tmp_path, """
name: t
benchmark: {limit: 2}
strategies: [{name: ngram, num_speculative_tokens: 3}]
sweep: {generation.temperature: [0, 0.5, 1.0]}
repeats: 2
seed: 7
"""))
    items = expand_study(study)
    assert sorted({i.setting for i in items}) == [
        "smollm2-135m__ngram__temperature=0", "smollm2-135m__ngram__temperature=0.5",
        "smollm2-135m__ngram__temperature=1.0", "smollm2-135m__none__temperature=0",
        "smollm2-135m__none__temperature=0.5", "smollm2-135m__none__temperature=1.0",
    ]
    assert len(items) == 12
    for item in items:
        temperature = item.labels["generation.temperature"]
        assert item.experiment["generation"]["temperature"] == temperature
        assert item.experiment.get("repeat", 0) == item.repeat
        assert item.experiment["generation"].get("seed") == (7 if temperature > 0 else None)
        assert config_from_mapping(item.experiment).repeat == item.repeat


def test_the_shipped_temperature_study_expands() -> None:
    """studies/temperature.yaml: baseline, ngram and draft model at 0, 0.5 and 1.0, 2 repeats."""
    study = load_study(Path(__file__).parents[1] / "studies" / "temperature.yaml")
    items = expand_study(study)
    assert len({i.setting for i in items}) == 9
    assert len(items) == 18
    assert {i.labels["generation.temperature"] for i in items} == {0, 0.5, 1.0}
    assert {i.experiment["strategy"]["name"] for i in items} == {"none", "ngram", "draft_model"}


def test_study_errors_name_the_item(tmp_path: Path) -> None:
    """A bad key in a study names its path; a bad experiment names the item."""
    with pytest.raises(ConfigError,
                       match=r"extra fields found \(repeat\); did you mean 'repeats'\? @ \$"):
        load_study(_study(tmp_path, "repeat: 2\n"))
    study = load_study(_study(tmp_path, "base: {generation: {max_token: 3}}\n"))
    with pytest.raises(ConfigError, match="study item smollm2-135m__none"):
        expand_study(study)


def test_batch_from_configs_adds_a_baseline(tmp_path: Path) -> None:
    """Config files without a baseline get one per model, first."""
    ngram = tmp_path / "ngram.yaml"
    ngram.write_text("strategy: {name: ngram}\n")
    draft = tmp_path / "draft.yaml"
    draft.write_text("strategy: {name: draft_model}\n")
    items = items_from_configs([ngram, draft], {"limit": 3}, repeats=1)
    assert [i.name for i in items] == ["baseline", "ngram", "draft"]
    assert items[0].experiment["strategy"] == {"name": "none"}
    assert all(i.experiment["benchmark"]["limit"] == 3 for i in items)
    assert all(i.experiment["generation"].get("logprobs") is None for i in items)


def _turn(ids: list[int], margins: list[float] | None = None, text: str = "") -> TurnRecord:
    return TurnRecord(prompt="q", output=text or " ".join(map(str, ids)), prompt_tokens=1,
                      output_tokens=len(ids), ttft_s=0.1, decode_s=0.1,
                      output_token_ids=tuple(ids), logprob_margins=tuple(margins or ()))


def test_lossless_classifies_divergences() -> None:
    """Equal, near-tie flip, real mismatch, unclassified, and later turns not compared."""
    baseline = [
        RequestRecord("a", "c", (_turn([1, 2, 3], [1.0, 1.0, 1.0]),)),
        RequestRecord("b", "c", (_turn([1, 2, 3], [2.0, 0.1, 3.0]), _turn([4, 5], [1, 1]))),
        RequestRecord("c", "c", (_turn([1, 2, 3], [2.0, 2.0, 2.0]),)),
        RequestRecord("d", "c", (_turn([1, 2]),)),
        RequestRecord("e", "c", (_turn([1]),)),
    ]
    candidate = [
        RequestRecord("a", "c", (_turn([1, 2, 3]),)),
        RequestRecord("b", "c", (_turn([1, 9, 3]), _turn([4, 6]))),
        RequestRecord("c", "c", (_turn([1, 2, 7]),)),
        RequestRecord("d", "c", (_turn([1, 3]),)),
    ]
    result = check(candidate, baseline, threshold=0.25)
    statuses = [(c.id, c.turn, c.status) for c in result.comparisons]
    assert statuses == [("b", 0, "near_tie"), ("b", 1, "not_compared"), ("c", 0, "mismatch"),
                        ("d", 0, "unclassified"), ("e", 0, "missing")]
    assert (result.equal, result.near_tie, result.mismatch) == (1, 1, 1)
    near = result.comparisons[0]
    assert near.position == 1
    assert near.baseline_margin == 0.1
    assert not result.passed
    assert check(candidate[:2], baseline[:2], threshold=0.25).passed


def test_shorter_candidate_diverges_where_it_stops() -> None:
    """A candidate that stops early diverges at its length."""
    result = check([RequestRecord("a", "c", (_turn([1, 2]),))],
                   [RequestRecord("a", "c", (_turn([1, 2, 3], [5.0, 5.0, 5.0]),))], 0.25)
    assert result.comparisons[0].position == 2
    assert result.comparisons[0].status == "mismatch"


def _fake_batch(tmp_path: Path) -> Path:
    """A batch folder written by the stand-in engine: baseline and ngram, two repeats."""
    base = tmp_path / "batch"
    items = []
    for strategy in ("none", "ngram"):
        for repeat in (0, 1):
            name = f"{strategy}__r{repeat}"
            config = load_config(None, [f"strategy.name={strategy}", "benchmark.limit=6",
                                        "sinks=[json]"])
            run_experiment(config, base / name, engine_factory=StandInEngine)
            items.append(ItemStatus(name, strategy, strategy, "smollm2-135m", repeat, {},
                                    status="done"))
    items.append(ItemStatus("broken", "broken", "ngram", "smollm2-135m", 0, {},
                            status="failed", error="unknown strategy 'ngarm'"))
    write_json(base / "batch.json", BatchIndex("batch", tuple(items)))
    return base


def test_report_compares_with_baseline_and_draws(tmp_path: Path) -> None:
    """The report pairs repeats, computes both speedups, checks losslessness and draws PNGs."""
    base = _fake_batch(tmp_path)
    report = build_report([base])
    assert [s.name for s in report.settings] == ["none", "ngram"]
    assert report.baselines == {"none": "none", "ngram": "none"}
    assert report.failed == ("broken: failed (unknown strategy 'ngarm')",)
    overall = {c.setting: c for c in report.comparisons if c.category == "overall"}
    assert overall["ngram"].speedup_spec_bench == pytest.approx(1.0)
    assert overall["ngram"].tokens_per_s_mean is not None
    assert overall["ngram"].tokens_per_s_mean.n == 2
    assert report.lossless["ngram"].passed
    assert report.best["overall"]["setting"] == "none"
    files = write_report(report, base / "report")
    names = sorted(f.name for f in files)
    assert "report.md" in names
    assert "speedup_by_category.png" in names
    assert "acceptance_by_position.png" in names
    text = (base / "report" / "report.md").read_text()
    assert "## Speedup by category" in text
    assert "| ngram | 8 | 8 | 0 | 0 | 0 | 0 | pass |" in text
    for png in (f for f in files if f.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sampled_runs_are_not_compared_token_by_token(tmp_path: Path) -> None:
    """At temperature > 0 texts differ by chance: the report says so instead of failing.

    A confident divergence that would be a mismatch under greedy decoding is
    not compared; the verdict is "sampled", the report passes, every output
    names the distributional check, and the scoring pass plans nothing.
    """
    base = tmp_path / "batch"
    items = []
    for strategy, ids in (("none", (1, 2, 3)), ("ngram", (1, 9, 3))):
        config = load_config(None, [f"strategy.name={strategy}", "sinks=[log]",
                                    "generation.temperature=0.8"])
        writer = run_folder.RunWriter(base / strategy)
        writer.claim(config)
        writer.start(config, {"test": True})
        records = [RequestRecord("q", "code", (TurnRecord(
            "q", " ".join(map(str, ids)), 3, 3, 0.1, 0.4, output_token_ids=ids,
            logprob_margins=(5.0, 5.0, 5.0)),))]
        writer.append(records[0])
        writer.finish(summarise(records, 1.0, None), records)
        items.append(ItemStatus(strategy, strategy, strategy, "smollm2-135m", 0, {},
                                status="done"))
    index = BatchIndex("batch", tuple(items))
    write_json(base / "batch.json", index)
    report = build_report([base])
    result = report.lossless["ngram"]
    assert (result.verdict, result.passed, result.sampled_temperature) == ("sampled", True, 0.8)
    assert result.mismatch == 0
    write_report(report, base / "report")
    for name in ("report.md", "report.html"):
        assert "specdec lossless" in (base / "report" / name).read_text()
    assert scoring.plan(base, index.items) == []


def test_synthetic_acceptance_is_not_compared_nor_ever_best(tmp_path: Path) -> None:
    """vLLM's synthetic rejection sampler accepts drafts at a set rate, so its outputs are not
    the target's: the report says so instead of failing the lossless check, and a setting
    that is faster only because it accepts everything is never named best."""
    base = tmp_path / "batch"
    items = []
    runs = {
        "baseline": (["strategy.name=none"], (1, 2, 3), 0.40),
        "ngram": (["strategy.name=ngram"], (1, 2, 3), 0.30),
        "synth": (["strategy.name=raw", "strategy.method=ngram",
                   "strategy.num_speculative_tokens=3",
                   "strategy.rejection_sample_method=synthetic",
                   "strategy.synthetic_acceptance_length=4.0"], (1, 9, 3), 0.10),
    }
    for name, (overrides, ids, decode_s) in runs.items():
        config = load_config(None, [*overrides, "sinks=[log]"])
        writer = run_folder.RunWriter(base / name)
        writer.claim(config)
        writer.start(config, {"test": True})
        records = [RequestRecord(f"q{i}", "code", (TurnRecord(
            "q", " ".join(map(str, ids)), 3, 3, 0.1, decode_s + 0.01 * i, output_token_ids=ids,
            logprob_margins=(5.0, 5.0, 5.0)),)) for i in range(4)]
        for record in records:
            writer.append(record)
        writer.finish(summarise(records, 1.0, None), records)
        items.append(ItemStatus(name, name, config.strategy.name, "smollm2-135m", 0, {},
                                status="done"))
    write_json(base / "batch.json", BatchIndex("batch", tuple(items)))
    assert scoring.plan(base, items) == [], "its divergences are not worth scoring"
    report = build_report([base])
    result = report.lossless["synth"]
    assert (result.verdict, result.passed, result.synthetic) == ("synthetic", True, True)
    assert result.mismatch == 0
    assert report.lossless["ngram"].verdict == "pass"
    assert report.best, "nothing was ranked"
    for best in report.best.values():
        assert "synth" not in (best["setting"], best["fastest"]), best
    write_report(report, base / "report")
    for name in ("report.md", "report.html"):
        assert "synthetic acceptance (rejection_sample_method: synthetic)" in (
            base / "report" / name).read_text()


def test_a_comparison_across_machines_is_said(tmp_path: Path) -> None:
    """A Ray study may run a setting and its baseline on different nodes: the report warns,
    naming them; runs on one machine (or without a recorded host) give no warning."""
    base = tmp_path / "batch"
    items = []
    for name, strategy, host in (("baseline", "none", "node-a"), ("ngram", "ngram", "node-b"),
                                 ("draft", "draft_model", "node-a")):
        config = load_config(None, [f"strategy.name={strategy}", "sinks=[log]"])
        writer = run_folder.RunWriter(base / name)
        writer.claim(config)
        writer.start(config, {"host": host})
        records = [RequestRecord("q", "code", (TurnRecord(
            "q", "1 2 3", 3, 3, 0.1, 0.4, output_token_ids=(1, 2, 3)),))]
        writer.append(records[0])
        writer.finish(summarise(records, 1.0, None), records)
        items.append(ItemStatus(name, name, strategy, "smollm2-135m", 0, {}, status="done"))
    write_json(base / "batch.json", BatchIndex("batch", tuple(items)))
    warnings = [w for w in build_report([base]).warnings if "machines" in w]
    assert warnings == [
        ("ngram and its baseline baseline ran on 2 machines (node-a, node-b): differences "
         "between machines enter its speedup, and its interval includes them only as far as "
         "the repeats spread over them (docs/scaling.md)")]


def test_best_setting_by_intervals_prefers_the_smaller_swept_value(tmp_path: Path) -> None:
    """The stand-in's times are exact, so every interval is a point: k=4, 1% faster than
    k=2, beats it, and of its two batch sizes (equally fast) the smaller is named."""
    StandInEngine.speed_by_tokens = {2: 1.50, 4: 1.52}
    base = tmp_path / "sweep"
    items = []
    for k in (0, 2, 4):
        for seqs in (1, 4):
            strategy = "none" if k == 0 else "ngram"
            extra = [] if k == 0 else [f"strategy.num_speculative_tokens={k}"]
            name = f"{strategy}-k{k}-s{seqs}"
            config = load_config(None, [f"strategy.name={strategy}", "benchmark.limit=3",
                                        "sinks=[json]", f"engine.max_num_seqs={seqs}", *extra])
            run_experiment(config, base / name, engine_factory=StandInEngine)
            setting = f"m__{strategy}" + (f"__num_speculative_tokens={k}" if k else "")
            setting += f"__max_num_seqs={seqs}"
            labels = {"engine.max_num_seqs": seqs, **({"num_speculative_tokens": k} if k else {})}
            items.append(ItemStatus(name, setting, strategy, "smollm2-135m", 0, labels,
                                    status="done"))
    write_json(base / "batch.json", BatchIndex("sweep", tuple(items)))
    report = build_report([base])
    assert report.baselines["m__ngram__num_speculative_tokens=4__max_num_seqs=4"] == (
        "m__none__max_num_seqs=4")
    best = report.best["overall"]
    assert best["fastest"].startswith("m__ngram__num_speculative_tokens=4")
    assert best["setting"] == "m__ngram__num_speculative_tokens=4__max_num_seqs=1"
    files = write_report(report, base / "report")
    assert base / "report" / "throughput_vs_batch_size.png" in files


def test_a_temperature_sweep_draws_acceptance_and_speedup_against_temperature(
        tmp_path: Path) -> None:
    """A study sweeping generation.temperature gets a plot of acceptance and speedup per strategy.

    Each setting is paired with the baseline at its own temperature; sampled
    pairs are not compared token by token, the greedy one is.
    """
    StandInEngine.speed_by_tokens = {3: 1.4}
    base = tmp_path / "temperature"
    items = []
    for temperature in (0, 0.5, 1.0):
        for strategy in ("none", "ngram"):
            name = f"{strategy}-t{temperature}"
            config = load_config(None, [f"strategy.name={strategy}", "benchmark.limit=3",
                                        "sinks=[log]", f"generation.temperature={temperature}",
                                        "strategy.num_speculative_tokens=3" if strategy == "ngram"
                                        else "warmup=true"])
            run_experiment(config, base / name, engine_factory=StandInEngine)
            setting = f"m__{strategy}__temperature={temperature}"
            items.append(ItemStatus(name, setting, strategy, "smollm2-135m", 0,
                                    {"generation.temperature": temperature}, status="done"))
    write_json(base / "batch.json", BatchIndex("temperature", tuple(items)))
    report = build_report([base])
    assert report.baselines["m__ngram__temperature=0.5"] == "m__none__temperature=0.5"
    assert report.lossless["m__ngram__temperature=0.5"].verdict == "sampled"
    assert report.lossless["m__ngram__temperature=0"].verdict == "pass"
    files = write_report(report, base / "report")
    plot = base / "report" / "acceptance_and_speedup_vs_temperature.png"
    assert plot in files
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Acceptance and speedup against the temperature" in (
        base / "report" / "report.html").read_text()


ENGINE_START_LOG = """\
# 2026-12-01T09:00:00Z python -m specdec run --config a.yaml --output-dir x --resume
(EngineCore_DP0 pid=11) ERROR 12-01 09:00:01 [core.py:1510] EngineCore failed to start.
Traceback (most recent call last):
  File "core.py", line 1501, in run_engine_core
ValueError: an older start, not this one
# 2026-12-01T10:00:00Z python -m specdec run --config a.yaml --output-dir x --resume
{"event": "starting vLLM", "level": "info", "timestamp": "2026-12-01T10:00:01Z"}
(EngineCore_DP0 pid=4242) ERROR 12-01 10:00:05 [core.py:1510] EngineCore failed to start.
(EngineCore_DP0 pid=4242) ERROR 12-01 10:00:05 [core.py:1510] Traceback (most recent call last):
(EngineCore_DP0 pid=4242) ERROR 12-01 10:00:05 [core.py:1510]   File "core.py", line 1501, in x
(EngineCore_DP0 pid=4242) ERROR 12-01 10:00:05 [core.py:1510] KeyError: 'not the last one'
(EngineCore_DP0 pid=4242) ERROR 12-01 10:00:05 [core.py:1510] During handling of the above ...
(EngineCore_DP0 pid=4242) ERROR 12-01 10:00:05 [core.py:1510] pydantic_core._pydantic_core.\
ValidationError: 1 validation error for SpeculativeConfig
  Value error, the draft's num_attention_heads (3) must divide the target's (9)
Traceback (most recent call last):
  File "llm.py", line 300, in __init__
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
specdec: error: vLLM could not start with this configuration: RuntimeError: Engine core \
initialization failed. See root cause above. Failed core proc(s): {}
"""

# The shape of a real item's run.log (vLLM 0.32 on CPU, kv_cache_memory_bytes=4096), trimmed:
# the engine core logs through specdec's JSON handler, multiprocessing prints the traceback
# again, then specdec's own message and a warning at exit.
JSON_ENGINE_LOG = (
    "# 2026-12-02T01:18:57+00:00 python -m specdec run --config kv.yaml --output-dir kv "
    "--resume --log-format json\n"
    '{"event": "EngineCore failed to start.", "level": "error", "process": "EngineCore", '
    '"exception": "Traceback (most recent call last):\\n  File \\"core.py\\", line 1482\\n'
    'ValueError: No available memory for the cache blocks."}\n'
    '{"event": "Worker proc VllmWorker-0 died unexpectedly", "level": "error"}\n'
    "Process EngineCore:\n"
    "Traceback (most recent call last):\n"
    '  File "kv_cache_utils.py", line 1010, in _check_enough_kv_cache_memory\n'
    "    raise ValueError(\n"
    "ValueError: No available memory for the cache blocks. Try increasing "
    "`gpu_memory_utilization`.\n"
    '{"event": "run ended without a summary", "level": "warning"}\n'
    "specdec: error: vLLM could not start with this configuration: RuntimeError: Engine core "
    "initialization failed. See root cause above. Failed core proc(s): {}\n"
    "/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: "
    "There appear to be 1 leaked shared_memory objects\n")


def test_root_cause_is_found_before_the_wrapper() -> None:
    """The last exception line of the last start, before vLLM's 'see root cause above'."""
    assert root_cause(ENGINE_START_LOG) == (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for "
        "SpeculativeConfig")
    assert root_cause(JSON_ENGINE_LOG) == (
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization`.")
    assert root_cause("# start\nnothing failed here\n") is None


def test_failed_item_records_its_root_cause(tmp_path: Path) -> None:
    """An engine that failed to start: the item's error is the cause from run.log."""
    folder = tmp_path / "item"
    folder.mkdir()
    (folder / "run.log").write_text(ENGINE_START_LOG)
    run_folder.write_outcome(folder, run_folder.Outcome(
        "failed", "EngineError", "vLLM could not start with this configuration: RuntimeError: "
        "Engine core initialization failed. See root cause above. Failed core proc(s): {}"))
    error = _item_error(folder, 1)
    assert error.startswith("pydantic_core._pydantic_core.ValidationError: 1 validation error")
    assert f"root cause, from {folder / 'run.log'}" in error
    assert "the run ended with EngineError: vLLM could not start" in error


def test_failed_item_keeps_a_config_error_whole(tmp_path: Path) -> None:
    """A run that failed before writing an outcome: the CLI's whole message, every line."""
    folder = tmp_path / "item"
    folder.mkdir()
    (folder / "run.log").write_text(
        "# 2026-12-01T10:00:00Z python -m specdec run\n"
        "specdec: invalid configuration in strategy 'ngram':\n"
        "  extra fields found (num_speculativ_tokens) @ $.strategy\n"
        "  prompt_lookup_min (6) must be <= prompt_lookup_max (3) @ $.strategy\n")
    assert _item_error(folder, 2) == (
        "invalid configuration in strategy 'ngram':\n"
        "  extra fields found (num_speculativ_tokens) @ $.strategy\n"
        "  prompt_lookup_min (6) must be <= prompt_lookup_max (3) @ $.strategy"
        f" (exit code 2; see {folder / 'run.log'})")
    (tmp_path / "bare").mkdir()
    assert "without recording an outcome" in _item_error(tmp_path / "bare", -9)


def test_sweep_typo_fails_before_any_item(tmp_path: Path) -> None:
    """Every expanded item's strategy options are checked at expansion, all at once."""
    study = load_study(_study(tmp_path, """
strategies:
  - name: ngram
    sweep: {num_speculativ_tokens: [2, 4]}
  - name: draft_model
    num_speculative_tokens: 0
"""))
    with pytest.raises(ConfigError) as caught:
        expand_study(study)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "study item smollm2-135m__ngram__num_speculativ_tokens=2",
        "study item smollm2-135m__ngram__num_speculativ_tokens=4",
        "study item smollm2-135m__draft_model",
    ]
    assert "extra fields found (num_speculativ_tokens)" in problems[0]
    assert check_item({"strategy": {"name": "ngram", "num_speculative_tokens": 3}}) == []
    assert "unknown strategy 'ngarm'" in check_item({"strategy": {"name": "ngarm"}})[0]


def test_concurrency_and_request_rate_sweep_the_server_engine(tmp_path: Path) -> None:
    """``sweep: {concurrency: ...}`` (as vllm bench serve names it) sets engine.concurrency,
    baseline included at every point; sweeping a setting under both names is refused."""
    study = load_study(_study(tmp_path, """
strategies: [{name: ngram}]
repeats: 1
base: {engine: {backend: server, url: "http://127.0.0.1:9/v1"}}
sweep: {concurrency: [1, 4], request_rate: [2.5]}
"""))
    items = expand_study(study)
    assert [(i.setting, i.experiment["engine"]["concurrency"],
             i.experiment["engine"]["request_rate"]) for i in items] == [
        ("smollm2-135m__none__concurrency=1__request_rate=2.5", 1, 2.5),
        ("smollm2-135m__none__concurrency=4__request_rate=2.5", 4, 2.5),
        ("smollm2-135m__ngram__concurrency=1__request_rate=2.5", 1, 2.5),
        ("smollm2-135m__ngram__concurrency=4__request_rate=2.5", 4, 2.5),
    ]
    assert "concurrency" not in items[0].experiment
    assert items[0].labels == {"engine.concurrency": 1, "engine.request_rate": 2.5}
    both = load_study(_study(tmp_path, """
sweep: {concurrency: [1], engine.concurrency: [2]}
"""))
    with pytest.raises(ConfigError) as caught:
        expand_study(both)
    assert caught.value.problems == [
        ("'concurrency' and 'engine.concurrency' both sweep engine.concurrency: "
         "keep one of them @ $.sweep")]


def test_batch_configs_are_checked_with_their_strategy_options(tmp_path: Path) -> None:
    """A config file's strategy option typo fails the batch before its first item."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: {name: ngram, num_speculativ_tokens: 3}\n")
    with pytest.raises(ConfigError, match=r"batch item bad: extra fields found"):
        items_from_configs([bad], {})


def test_damaged_batch_index_says_what_to_do(tmp_path: Path) -> None:
    """A cut batch.json names the file and how to write it again."""
    (tmp_path / "batch.json").write_text('{"name": "b", "items": [')
    with pytest.raises(SpecdecError, match=r"batch\.json is damaged .*run the same"):
        read_index(tmp_path)
    (tmp_path / "batch.json").write_text('{"name": "b", "items": 3}')
    with pytest.raises(SpecdecError, match=r"batch\.json is damaged"):
        read_index(tmp_path)


class _FakeProcess:
    """Stands in for an item's process: records its command, 'exits' with a code."""

    commands: ClassVar[list[list[str]]] = []
    code = 0

    def __init__(self, command: list[str], **_: Any) -> None:
        _FakeProcess.commands.append(command)
        self.returncode = _FakeProcess.code

    def poll(self) -> int:
        return self.returncode


def _subprocess(popen: Any) -> Any:
    # The job processes' view of the subprocess module (git, run by provenance, keeps the real one).
    return types.SimpleNamespace(Popen=popen, STDOUT=subprocess.STDOUT)


def _one_finished_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    """A batch folder whose item ``done`` finished (2 requests), its responses, and items that
    run as fake processes from now on."""
    base = tmp_path / "batch"
    run_experiment(load_config(None, ["benchmark.limit=2", "sinks=[log]"]), base / "done",
                   engine_factory=StandInEngine)
    _FakeProcess.commands = []
    monkeypatch.setattr("specdec.executors.process.subprocess", _subprocess(_FakeProcess))
    return base, (base / "done" / "responses.jsonl").read_bytes()


def test_batch_items_resume_and_never_overwrite(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Items run with --resume, never --overwrite; a finished item is not run at all."""
    base, before = _one_finished_item(tmp_path, monkeypatch)
    items = [BatchItem(name, name, {"strategy": {"name": "none"},
                                    "benchmark": {"limit": 2}}) for name in ("done", "todo")]
    index = run_batch(items, base, poll_s=0)
    assert [c[c.index("--output-dir") + 1] for c in _FakeProcess.commands] == [
        str(base / "todo")]
    assert "--resume" in _FakeProcess.commands[0]
    assert "--overwrite" not in _FakeProcess.commands[0]
    assert (base / "done" / "responses.jsonl").read_bytes() == before
    assert [i.status for i in index.items] == ["done", "done"]


def test_a_batch_resumed_with_other_settings_is_refused(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished item whose settings changed since it ran stops the batch before any item:
    kept as done, it would mix two settings under one name."""
    base, before = _one_finished_item(tmp_path, monkeypatch)
    items = [BatchItem(name, name, {"strategy": {"name": "none"},
                                    "benchmark": {"limit": 3}}) for name in ("done", "todo")]
    with pytest.raises(SpecdecError, match=r"other settings .*done \(benchmark\).*another "
                                           r"--output-base"):
        run_batch(items, base, poll_s=0)
    assert _FakeProcess.commands == []
    assert (base / "done" / "responses.jsonl").read_bytes() == before
    # The strategy's options written out in full by the run are not a change.
    run_experiment(load_config(None, ["benchmark.limit=2", "strategy.name=ngram"]),
                   base / "ngram", engine_factory=StandInEngine)
    same = [BatchItem("ngram", "ngram", {"strategy": {"name": "ngram"},
                                         "benchmark": {"limit": 2}})]
    assert [i.status for i in run_batch(same, base, poll_s=0).items] == ["done"]
    assert _FakeProcess.commands == []


def test_a_resumed_batch_keeps_what_it_recorded_of_finished_items(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run again, a batch keeps its finished items' stamps and notes in batch.json."""
    base = tmp_path / "batch"

    def finished_with_failures(command: list[str], **kwargs: Any) -> _FakeProcess:
        folder = Path(command[command.index("--output-dir") + 1])
        run_experiment(load_config(None, ["benchmark.limit=2"]), folder,
                       engine_factory=StandInEngine, overwrite=True)
        metrics = folder / "metrics.json"
        metrics.write_bytes(metrics.read_bytes().replace(
            b'"failed_requests": 0', b'"failed_requests": 1'))
        process = _FakeProcess(command, **kwargs)
        process.returncode = 1
        return process

    monkeypatch.setattr("specdec.executors.process.subprocess", _subprocess(finished_with_failures))
    items = [BatchItem("a", "a", {"strategy": {"name": "none"}, "benchmark": {"limit": 2}})]
    (first,) = run_batch(items, base, poll_s=0).items
    assert first.started_at is not None
    assert first.finished_at is not None
    assert first.error is not None
    (again,) = run_batch(items, base, poll_s=0).items
    assert again == first
    assert read_index(base).items == (first,)


def test_item_with_failed_requests_is_done_with_a_note(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that finished with failed requests exits 1: the item is done, its note says so."""
    base = tmp_path / "batch"

    def finished_with_failures(command: list[str], **kwargs: Any) -> _FakeProcess:
        folder = Path(command[command.index("--output-dir") + 1])
        result = run_experiment(load_config(None, ["benchmark.limit=2", "sinks=[log]"]),
                                folder, engine_factory=StandInEngine, overwrite=True)
        summary = attrs.evolve(result.summary, failed_requests=1)
        # The stand-in engine never fails a request: give the summary one failure.
        metrics = folder / "metrics.json"
        metrics.write_bytes(metrics.read_bytes().replace(
            b'"failed_requests": 0', b'"failed_requests": 1'))
        assert run_folder.read_summary(folder).failed_requests == summary.failed_requests
        process = _FakeProcess(command, **kwargs)
        process.returncode = 1
        return process

    monkeypatch.setattr("specdec.executors.process.subprocess", _subprocess(finished_with_failures))
    index = run_batch([BatchItem("a", "a", {"strategy": {"name": "none"}})], base, poll_s=0)
    (item,) = index.items
    assert item.status == "done"
    assert item.error == f"1 requests failed; their errors are in {base / 'a' / 'responses.jsonl'}"


def test_turns_without_token_ids_are_compared_by_text() -> None:
    """A server that returned no token ids: equal texts are equal, other texts unclassified."""
    def text_turn(text: str) -> TurnRecord:
        return TurnRecord(prompt="q", output=text, prompt_tokens=1, output_tokens=3,
                          ttft_s=0.1, decode_s=0.1)

    baseline = [RequestRecord("a", "c", (text_turn("same answer"),)),
                RequestRecord("b", "c", (text_turn("one answer"), text_turn("later")))]
    candidate = [RequestRecord("a", "c", (text_turn("same answer"),)),
                 RequestRecord("b", "c", (text_turn("another answer"), text_turn("later")))]
    result = check(candidate, baseline, threshold=0.25)
    assert [(c.id, c.turn, c.status) for c in result.comparisons] == [
        ("b", 0, "unclassified"), ("b", 1, "not_compared")]
    assert result.equal == 1
    assert "compared by text" in (result.comparisons[0].reason or "")
    assert result.comparisons[0].position is None
    assert divergences(candidate, baseline) == []
