"""The scoring pass: a baseline's top-2 margins where the other settings diverged from it.

Timed runs carry only what the user configured, so a batch's runs have no
log-probabilities for the lossless check to read.  After every timed item of
a batch, :func:`score_batch` (run by ``specdec score BATCH_DIR`` in its own
process, as items are) pairs each setting with its baseline (:func:`baseline_for`,
the report's rule), finds the turns where the setting's first repeat diverged
from the baseline's (:func:`specdec.lossless.divergences`) and, for those only,
prefills the baseline's own prompt and output on an engine built from the
baseline run's own configuration (same dtype, eager or compiled, ...) with
:meth:`~specdec.interfaces.Engine.score`.  The baseline's margin at each
divergence goes to its run folder's ``margins.json``
(:func:`specdec.run_folder.write_margins`).  Rerunning scores only what is
missing; a pass that fails writes its reason there, and the check calls those
divergences unclassified with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog
from attrs import field, frozen

from specdec import run_folder
from specdec.errors import SpecdecError
from specdec.interfaces import EngineFactory, ScoreRequest
from specdec.lossless import MarginKey, ScoredMargin, ScoredMargins, divergences
from specdec.records import ExperimentConfig
from specdec.serialization import unstructure

log = structlog.get_logger("specdec.scoring")

BASELINE = "none"
AA_LABEL = "aa_check"
"""The label of an A/A item: a second baseline, compared with the first like any setting."""
IGNORED_FOR_PAIRING = ("strategy", "name", "sinks")
IGNORED_ENGINE_KEYS = ("url", "port", "served_model_name", "api_key_env")


@frozen
class SettingRun:
    """What pairing reads of a setting: its name, its first repeat's config and its labels."""

    name: str
    config: ExperimentConfig
    labels: Mapping[str, Any] = field(factory=dict)

    @property
    def is_baseline(self) -> bool:
        """A baseline others can be compared with (an A/A item is not one)."""
        return self.config.strategy.name == BASELINE and not self.labels.get(AA_LABEL)

    def engine_labels(self) -> dict[str, Any]:
        """Swept experiment keys (dotted paths), which a baseline must share."""
        return {k: v for k, v in self.labels.items() if "." in k}


def pairing_context(config: ExperimentConfig) -> dict[str, Any]:
    """What a baseline must share with a setting: everything but the strategy (and names)."""
    data: dict[str, Any] = unstructure(config)
    for key in IGNORED_FOR_PAIRING:
        data.pop(key, None)
    # Two servers (with and without speculation) differ in address, not in settings.
    data["engine"] = {k: v for k, v in data["engine"].items() if k not in IGNORED_ENGINE_KEYS}
    return data


def baseline_for(setting: SettingRun, settings: Sequence[SettingRun]) -> SettingRun | None:
    """The baseline run under the same settings, else the model's first baseline.

    A baseline is a setting of strategy ``none`` that is not an A/A item; of
    those with the setting's model and swept engine keys, the first with the
    same context (:func:`pairing_context`), else the first.  A baseline is its
    own; an A/A item's is the baseline it repeats.
    """
    candidates = [
        s for s in settings
        if s.is_baseline and s.config.model == setting.config.model
        and s.engine_labels() == setting.engine_labels()
    ]
    if setting.is_baseline and setting in candidates:
        return setting
    context = pairing_context(setting.config)
    same = [s for s in candidates if pairing_context(s.config) == context]
    chosen = same or candidates
    return chosen[0] if chosen else None


@frozen
class Wanted:
    """One baseline position to score: where candidates diverged from it.

    ``fallback_token`` is the candidate's token there, scored in place of the
    baseline's where the baseline's output ends at the divergence (the
    distribution read is the same whichever token follows).
    """

    id: str
    turn: int
    position: int
    candidates: tuple[str, ...]
    fallback_token: int | None


@frozen
class Job:
    """One baseline run and the positions of it still to score."""

    baseline: str
    folder: Path
    wanted: tuple[Wanted, ...]
    scored: ScoredMargins | None = None


class IndexedItem(Protocol):
    """What the pass reads of a batch index's item (``study.ItemStatus``)."""

    @property
    def name(self) -> str:
        """The item's folder name under the batch folder."""

    @property
    def setting(self) -> str:
        """The setting it is a repeat of."""

    @property
    def repeat(self) -> int:
        """Which repeat."""

    @property
    def labels(self) -> Mapping[str, Any]:
        """Its swept values (and ``aa_check`` for an A/A item)."""

    @property
    def status(self) -> str:
        """``done`` when it finished."""


def _finished_settings(batch: Path, items: Iterable[IndexedItem]
                       ) -> list[tuple[SettingRun, Path]]:
    """Each setting's first finished repeat, in the index's order, with its folder."""
    firsts: dict[str, tuple[int, SettingRun, Path]] = {}
    for item in items:
        folder = batch / item.name
        if item.status != "done" or not run_folder.is_finished(folder):
            continue
        if item.setting in firsts and firsts[item.setting][0] <= item.repeat:
            continue
        firsts[item.setting] = (item.repeat, SettingRun(
            item.setting, run_folder.read_config(folder), dict(item.labels)), folder)
    return [(run, folder) for _, run, folder in firsts.values()]


def plan(batch: Path, items: Iterable[IndexedItem]) -> list[Job]:
    """What the scoring pass of the batch in ``batch`` has left to do (reads only; no engine).

    ``items`` are its index's items.  One job per baseline that some setting
    diverged from, with the positions its ``margins.json`` lacks (none left:
    nothing to do).  Sampled pairs (either run at temperature above 0) and
    settings of synthetic acceptance are not scored: the report does not compare
    their texts.
    """
    settings = _finished_settings(batch, items)
    runs = [run for run, _ in settings]
    folders = {run.name: folder for run, folder in settings}
    wanted: dict[str, dict[MarginKey, Wanted]] = {}
    for run in runs:
        baseline = baseline_for(run, runs)
        if baseline is None or baseline is run:
            continue
        if run.config.generation.sampled or baseline.config.generation.sampled:
            continue  # sampled texts differ by chance: the report compares them by distribution
        if run.config.synthetic_acceptance:
            continue  # accepted at a set rate: its texts are not the target's, nor compared
        base_requests = run_folder.read_outputs(folders[baseline.name]).requests
        mine = run_folder.read_outputs(folders[run.name]).requests
        by_id = {r.id: r for r in mine}
        found = wanted.setdefault(baseline.name, {})
        for request_id, turn, position in divergences(mine, base_requests):
            tokens = by_id[request_id].turns[turn].output_token_ids
            token = int(tokens[position]) if position < len(tokens) else None
            old = found.get((request_id, turn, position))
            names = (*old.candidates, run.name) if old else (run.name,)
            if old is not None and old.fallback_token is not None:
                token = old.fallback_token
            found[request_id, turn, position] = Wanted(request_id, turn, position, names, token)
    jobs: list[Job] = []
    for name, positions in wanted.items():
        scored = run_folder.read_margins(folders[name])
        have = scored.lookup if scored is not None else {}
        missing = tuple(w for key, w in positions.items() if key not in have)
        if missing:
            jobs.append(Job(name, folders[name], missing, scored))
    return jobs


def _requests(engine: Any, job: Job, config: ExperimentConfig) -> list[ScoreRequest]:
    """The baseline's own prompt and output up to each divergence, to prefill."""
    from specdec.benchmarks.loader import conversation_of, run_conversations  # noqa: PLC0415

    conversations = run_conversations(config.benchmark, job.folder)
    records = {r.id: r for r in run_folder.read_outputs(job.folder).requests}
    requests: list[ScoreRequest] = []
    for want in job.wanted:
        conversation = conversation_of(conversations, want.id, job.folder, config.benchmark)
        turns = records[want.id].turns
        answers = [t.output for t in turns[:want.turn]]
        prompt = tuple(engine.prompt_token_ids(conversation, answers))
        output = tuple(int(t) for t in turns[want.turn].output_token_ids)
        if want.position < len(output):
            tail = output[:want.position + 1]
        elif want.fallback_token is not None:
            tail = (*output[:want.position], want.fallback_token)
        else:  # both outputs end here: lossless.divergences never asks for it
            msg = f"nothing to score at {want} in {job.folder}"
            raise SpecdecError(msg)
        requests.append(ScoreRequest((*prompt, *tail), (len(prompt) + want.position,)))
    return requests


def engine_settings(config: ExperimentConfig, described: Mapping[str, Any]) -> dict[str, Any]:
    """What ``margins.json`` records of the engine a pass ran on (the report shows it)."""
    return {
        "backend": config.engine.backend,
        "dtype": config.engine.dtype,
        "enforce_eager": config.engine.enforce_eager,
        "model": config.model,
        "engine": unstructure(config.engine),
        "described": dict(described),
    }


def score_job(job: Job, engine_factory: EngineFactory) -> ScoredMargins:
    """Score one job's positions on an engine built from the baseline run's own config."""
    from specdec.models import resolve_model  # noqa: PLC0415

    config = run_folder.read_config(job.folder)
    engine = engine_factory(config, resolve_model(config.model), None)
    engine.start()
    try:
        requests = _requests(engine, job, config)
        results = engine.score(requests)
        described = engine.describe()
    finally:
        engine.close()
    new = []
    for want, result in zip(job.wanted, results, strict=True):
        (score,) = result.scores
        new.append(ScoredMargin(want.id, want.turn, want.position,
                                score.top_logprobs[0] - score.top_logprobs[1],
                                score.top_token_ids, score.top_logprobs, want.candidates))
    earlier = job.scored.margins if job.scored is not None else ()
    return ScoredMargins(_run_id(job.folder), (*earlier, *new),
                         engine_settings(config, described))


def _run_id(folder: Path) -> str:
    return str(run_folder.read_provenance(folder).get("run_id") or "")


def record_failure(job: Job, reason: str) -> None:
    """Keep what ``job``'s baseline has scored and say why the rest is not."""
    earlier = job.scored
    run_folder.write_margins(job.folder, ScoredMargins(
        _run_id(job.folder), earlier.margins if earlier else (),
        earlier.engine if earlier else {}, reason))


def score_batch(batch: Path, items: Iterable[IndexedItem],
                engine_factory: EngineFactory | None = None) -> int:
    """Score what the batch in ``batch`` (index ``items``) has left; 0 if all was, else 1.

    A baseline whose pass fails gets the reason in its ``margins.json`` and the
    others are still scored.
    """
    if engine_factory is None:
        from specdec.engines import engine_for  # noqa: PLC0415

        engine_factory = engine_for
    failed = 0
    for job in plan(batch, items):
        log.info("scoring divergences from the baseline", baseline=job.baseline,
                 positions=len(job.wanted))
        try:
            margins = score_job(job, engine_factory)
        except Exception as exc:  # recorded; the batch and its report go on
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("the scoring pass failed", baseline=job.baseline, error=reason)
            record_failure(job, reason)
            failed += 1
            continue
        run_folder.write_margins(job.folder, margins)
        log.info("scored", baseline=job.baseline, positions=len(job.wanted))
    return 1 if failed else 0
