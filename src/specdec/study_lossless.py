"""A study's sampled lossless checks (``lossless_check:`` in a study file).

Greedy settings are checked token by token by the report (:mod:`specdec.lossless`).
A setting that samples cannot be: its texts differ from the baseline's by chance.
With ``lossless_check:``, after the batch's items (and the scoring pass), every
speculative setting at temperature above 0 is checked against its baseline at the
same sampling settings (its own temperature, top-p and top-k) by the distributional
check of ``specdec lossless`` (:mod:`specdec.sampled_check`).

Each check is that very command, in its own process (so its two engines' memory is
returned, and a crash is recorded, not fatal), on the setting's first repeat's
experiment, writing into ``OUTPUT_BASE/lossless/<setting>/``: the command's own
``lossless.json`` and ``samples.json`` (written and read by
:mod:`specdec.sampled_check`), its ``experiment.yaml`` and ``run.log``.
``batch.json`` records each check's status (:class:`CheckStatus`) as it records an
item's.  A check whose folder holds a ``lossless.json`` of the same settings is
finished and not run again; any other (interrupted, failed, settings changed) runs
again, whole.

This module plans the checks and reads them; :func:`specdec.study.run_batch` runs them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from attrs import frozen

from specdec import scoring
from specdec.config import config_from_mapping
from specdec.errors import ConfigError, InvalidOptionError, SpecdecError
from specdec.lossless import SampledCheckSummary
from specdec.records import LosslessCheckOptions, SampledCheckSettings

if TYPE_CHECKING:
    from specdec.sampled_check import SampledCheckResult

CHECKS_DIR = "lossless"
"""The batch folder's subfolder holding one folder per check, named after its setting."""
EXPERIMENT_FILE = "experiment.yaml"
"""The experiment a check ran (its setting's first repeat), in the check's folder."""
CHECK_EXITS = (0, 1, 3)
"""``specdec lossless``'s exit codes for a check that finished: pass, difference, inconclusive."""

CheckState = Literal["pending", "running", "done", "failed"]


class StudyItem(Protocol):
    """What planning reads of a batch item (:class:`specdec.study.BatchItem`)."""

    @property
    def setting(self) -> str: ...  # noqa: D102 - named in the class docstring
    @property
    def experiment(self) -> Mapping[str, Any]: ...  # noqa: D102
    @property
    def labels(self) -> Mapping[str, Any]: ...  # noqa: D102


@frozen
class PlannedCheck:
    """One sampled check to run: a setting against its baseline, with the check's settings.

    ``experiment`` is the setting's first repeat's experiment, its benchmark cut
    to the check's prompts; its sampling is the one checked.
    """

    setting: str
    baseline: str
    experiment: Mapping[str, Any]
    settings: SampledCheckSettings

    def describe(self) -> str:
        """One line for ``--dry-run``: what is checked against what, and how much is drawn."""
        s = self.settings
        limit = (self.experiment.get("benchmark") or {}).get("limit")
        prompts = f"{limit} prompts" if limit is not None else "every prompt"
        return (f"lossless check: {self.setting} vs {self.baseline} at T={s.temperature:g} "
                f"(top-p {s.top_p:g}, top-k {s.top_k if s.top_k is not None else 'none'}), "
                f"{s.samples} samples x {prompts} x {s.tokens} tokens per arm, "
                f"control T={s.control:g}, seed {s.seed}")


@frozen
class CheckStatus:
    """What ``batch.json`` says of one sampled check; ``outcome`` once it finished."""

    setting: str
    baseline: str
    settings: SampledCheckSettings
    status: CheckState = "pending"
    outcome: str | None = None
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


def plan_checks(items: Sequence[StudyItem], options: LosslessCheckOptions, seed: int,
                source: str = "study") -> list[PlannedCheck]:
    """The checks a study asks for: each speculative setting that samples, in item order.

    A/A items and baselines are not checked, nor greedy settings (the report
    compares those exactly).  Each setting's baseline is the one the report pairs
    it with (:func:`specdec.scoring.baseline_for`).  ``seed`` is the study's, the
    samples' seed unless ``options`` sets one.

    Raises:
        ConfigError: a check's settings are impossible (its control temperature
            equals the temperature checked, or is above 2), naming every such setting.
    """
    first: dict[str, StudyItem] = {}
    for item in items:
        first.setdefault(item.setting, item)
    views = {name: scoring.SettingRun(name, config_from_mapping(item.experiment), item.labels)
             for name, item in first.items()}
    checks: list[PlannedCheck] = []
    found: list[str] = []
    for name, view in views.items():
        generation = view.config.generation
        if (view.config.strategy.name == scoring.BASELINE or view.labels.get(scoring.AA_LABEL)
                or not generation.sampled):
            continue
        baseline = scoring.baseline_for(view, list(views.values()))
        if baseline is None:
            continue
        control = (options.control_temperature if options.control_temperature is not None
                   else round(generation.temperature + options.control_step, 6))
        if control == generation.temperature:
            found.append(f"lossless check of {name}: the control temperature ({control:g}) "
                         "equals the temperature checked; set another control_temperature, "
                         "or control_step instead")
            continue
        try:
            settings = SampledCheckSettings(
                samples=options.samples, tokens=options.tokens,
                temperature=generation.temperature, top_p=generation.top_p,
                top_k=generation.top_k, control_temperature=control,
                seed=seed if options.seed is None else options.seed)
        except InvalidOptionError as exc:
            found.append(f"lossless check of {name}: {exc} (temperature "
                         f"{generation.temperature:g}; lower control_step)")
            continue
        experiment = {k: v for k, v in first[name].experiment.items() if k != "repeat"}
        if options.prompts is not None:
            bench = dict(experiment.get("benchmark") or {})
            limit = bench.get("limit")
            bench["limit"] = options.prompts if limit is None else min(limit, options.prompts)
            experiment["benchmark"] = bench
        checks.append(PlannedCheck(name, baseline.name, experiment, settings))
    if found:
        raise ConfigError(source, found)
    return checks


def check_folder(output_base: Path, setting: str) -> Path:
    """Where the check of ``setting`` writes: ``OUTPUT_BASE/lossless/<setting>/``."""
    return output_base / CHECKS_DIR / setting


def finished(folder: Path, settings: SampledCheckSettings) -> SampledCheckResult | None:
    """The check's result if ``folder`` holds one of these ``settings``; None: run it (again)."""
    # The check's statistics (scipy) load only when a check is read, not with every study.
    from specdec.sampled_check import RESULT_FILE, read_result  # noqa: PLC0415

    if not (folder / RESULT_FILE).is_file():
        return None
    try:
        result = read_result(folder)
    except SpecdecError:
        return None
    return result if result.settings == settings else None


def command(check: PlannedCheck, folder: Path) -> list[str]:
    """The ``specdec lossless`` command line of ``check``, writing into ``folder``."""
    s = check.settings
    top_k = ["--top-k", str(s.top_k)] if s.top_k is not None else []
    return [sys.executable, "-m", "specdec", "lossless", "--config",
            str(folder / EXPERIMENT_FILE), "--samples", str(s.samples), "--tokens",
            str(s.tokens), "--temperature", repr(s.temperature), "--top-p", repr(s.top_p),
            *top_k, "--control-temperature", repr(s.control), "--seed", str(s.seed),
            "--output", str(folder), "--log-format", "json"]


def summaries(output_base: Path, checks: Sequence[CheckStatus]) -> dict[str, SampledCheckSummary]:
    """What the report shows of each recorded check, by setting.

    A finished check gives its outcome and verdict lines (the power statement
    included); a failed one, or one whose result cannot be read, its error.  A
    check not run yet (the batch was interrupted) is left out.
    """
    from specdec.sampled_check import read_result  # noqa: PLC0415

    out: dict[str, SampledCheckSummary] = {}
    for status in checks:
        folder = check_folder(output_base, status.setting)
        if status.status == "failed":
            out[status.setting] = _summary(status, folder, error=status.error or "failed")
        elif status.status == "done":
            try:
                result = read_result(folder)
            except SpecdecError as exc:
                out[status.setting] = _summary(status, folder, error=str(exc))
            else:
                out[status.setting] = _summary(status, folder, result=result)
    return out


def _summary(status: CheckStatus, folder: Path, *, result: SampledCheckResult | None = None,
             error: str | None = None) -> SampledCheckSummary:
    s = status.settings
    return SampledCheckSummary(
        baseline=status.baseline, temperature=s.temperature, control_temperature=s.control,
        samples=s.samples, tokens=s.tokens, folder=str(folder),
        prompts=len(result.prompts) if result is not None else None,
        outcome=result.outcome if result is not None else None,
        lines=result.lines if result is not None else (), error=error)
