"""Command lines: ``specdec-run`` and the ``specdec`` toolbox, thin over the API.

Each option is declared once, as a typed attribute or parameter whose help is
its docstring; cyclopts builds the parsers and the help pages from those
declarations.  Flags that several commands share live in one attrs class each
(:class:`ExperimentFlags` for ``run`` and ``serve``, :class:`BenchmarkFlags` for
``run`` and ``batch``), flattened into flags by ``Parameter(name="*")``, so
every command takes exactly the flags it uses.  Plugin packages add commands
through :mod:`specdec.commands`.

Errors meant for the user print one message and exit without a traceback: 2 for
bad input (a :class:`~specdec.errors.ConfigError`, a value an option's validator
refuses with :class:`~specdec.errors.InvalidOptionError`, contradictory flags (a
:class:`~specdec.errors.UsageError`), or a command line that does not parse: an
unknown flag, a wrong type), 1 for any other :class:`~specdec.errors.SpecdecError`,
130 on Ctrl-C.

Any other exception is a bug.  A user still sees one line, not a wall of Python:
:func:`invoke` saves the traceback in a file (``$SPECDEC_HOME/crashes/``, else the
system's temporary folder) and prints its path, exit 1.  With ``SPECDEC_TRACEBACK=1``
it re-raises instead; the test suite sets it for every test, so a bug still fails
the test that meets it instead of turning into an exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from attrs import frozen
from cyclopts import App, CycloptsError, Group, Parameter
from cyclopts.validators import Number

from specdec.errors import ConfigError, InvalidOptionError, SpecdecError, UsageError
from specdec.interfaces import Executor, ExecutorOptions
from specdec.logs import LogFormat
from specdec.records import CONTROL_STEP, ExperimentConfig, Mode, SampledCheckSettings

if TYPE_CHECKING:
    from specdec.metrics import Slo
    from specdec.study import BatchItem
    from specdec.study_lossless import PlannedCheck

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
"""``specdec lossless``: the check could not tell (its positive control was not seen)."""
EXIT_INTERRUPTED = 130

TRACEBACK_ENV = "SPECDEC_TRACEBACK"
"""Set (to anything but ``0`` or empty), :func:`invoke` re-raises an unexpected
exception instead of saving its traceback: for developers and the test suite."""

_DEFAULTS = ExperimentConfig()
# The defaults a help page shows come from the config record itself, so they cannot drift.

RUN_EPILOG = """\
examples:
  specdec-run --strategy ngram
  specdec-run --strategy ngram --set strategy.num_speculative_tokens=3 --limit 8
  specdec-run --strategy draft_model --set strategy.model=smollm2-135m-draft
  specdec-run --config configs/smollm2-135m/ngram.yaml \\
      --output-dir results/ngram
  specdec benchmarks fetch spec-bench   # once: the named Spec-Bench questions
  specdec-run --benchmark spec-bench --categories math,rag
  specdec-run --config results/ngram/config.yaml   # repeat a finished run

strategies: see `specdec plugins`; options of each in QUICK_REFERENCE.md.
"""


# Help pages list the flag groups in the order of the data flow, not alphabetically.
EXPERIMENT = Group("Experiment", sort_key=1)
BENCHMARK = Group("Benchmark", sort_key=2)
REQUESTS = Group("Requests", sort_key=3)
SAMPLING = Group("Sampling check", sort_key=3)
OUTPUT = Group("Output", sort_key=4)
EXECUTION = Group("Execution", sort_key=6)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@Parameter(name="*", group=EXPERIMENT)
@frozen(kw_only=True)
class ExperimentFlags:
    """Which experiment: the flags ``run`` and ``serve`` share."""

    config: Path | None = None
    """experiment file (YAML or JSON); a run's config.yaml repeats that run"""

    model: Annotated[str | None, Parameter(show_default=_DEFAULTS.model)] = None
    """model folder, hub id, or bundled alias"""

    strategy: Annotated[str | None, Parameter(show_default=_DEFAULTS.strategy.name)] = None
    """speculation strategy: none, ngram, draft_model, ... (`specdec plugins` lists them)"""

    overrides: Annotated[tuple[str, ...], Parameter(name="--set", metavar="KEY.PATH=VALUE")] = ()
    """override a config value, e.g. generation.max_tokens=64; VALUE is YAML; repeatable"""

    def settings(self, current_strategy: Any) -> dict[str, Any]:
        """The top-level config keys these flags set, over a config file's ``strategy``."""
        flags: dict[str, Any] = {}
        for flag, value in (("--model", self.model), ("--strategy", self.strategy)):
            if value is not None and not value.strip():
                # An empty value (an unset shell variable, say) must not mean the default.
                msg = f"{flag} is empty: give a value, or leave the flag out for the default"
                raise UsageError(msg)
        if self.model:
            flags["model"] = self.model
        if self.strategy:
            name = (current_strategy.get("name") if isinstance(current_strategy, dict)
                    else current_strategy)
            if name != self.strategy:
                # Options belong to the strategy they were written for.
                flags["strategy"] = {"name": self.strategy}
        return flags


@Parameter(name="*", group=BENCHMARK)
@frozen(kw_only=True)
class BenchmarkFlags:
    """Which prompts: the flags ``run`` and ``batch`` share (the ``benchmark`` section)."""

    benchmark: str | None = None
    """prompt file (JSONL) or name: spec-bench, mt-bench; default: the config's, else the sample"""

    benchmark_format: str | None = None
    """prompts | questions | chat (or a plugin's format); default: detected per file"""

    limit: int | None = None
    """run only the first N prompts (after --categories)"""

    categories: str | None = None
    """comma-separated categories to run"""

    per_category: int | None = None
    """run only the first N prompts of each category (before --limit)"""

    def settings(self) -> dict[str, Any]:
        """The ``benchmark`` section keys these flags set."""
        flags: dict[str, Any] = {}
        if self.benchmark:
            flags["path"] = self.benchmark
        if self.benchmark_format:
            flags["format"] = self.benchmark_format
        if self.limit is not None:
            flags["limit"] = self.limit
        if self.categories:
            flags["categories"] = _split(self.categories)
        if self.per_category is not None:
            flags["per_category"] = self.per_category
        return flags


@Parameter(name="*", group=EXECUTION)
@frozen(kw_only=True)
class ExecutorFlags:
    """Where a batch's runs go: the flags ``batch`` and ``study`` share (docs/scaling.md)."""

    executor: Annotated[str, Parameter(metavar="NAME")] = "local"
    """local: one run after another here; ray: each run a task on a Ray cluster"""

    address: Annotated[str | None, Parameter(metavar="ADDR")] = None
    """the Ray cluster (default: RAY_ADDRESS, else Ray started on this machine)"""

    cpus_per_job: Annotated[float | None, Parameter(validator=Number(gt=0))] = None
    """CPUs each run asks Ray for (default 1 with GPUs; without, a whole node's)"""

    def open(self) -> Executor:
        """The executor, connected (close it after the batch)."""
        from specdec import registry  # noqa: PLC0415

        executor: Executor = registry.executors.create(self.executor)
        executor.connect(ExecutorOptions(self.address, self.cpus_per_job))
        return executor


_LOCAL = ExecutorFlags()


@Parameter(name="*", group=REQUESTS)
@frozen(kw_only=True)
class RequestFlags:
    """How the requests are sent: ``run`` only (``serve`` starts a server that ``run`` measures)."""

    mode: Annotated[Mode | None, Parameter(show_default=_DEFAULTS.mode)] = None
    """sequential: one at a time (latency, as Spec-Bench); batch: all at once (throughput)"""

    raw_prompts: bool = False
    """send prompts as they are, without the chat template"""

    endpoint: Annotated[str | None, Parameter(metavar="URL")] = None
    """measure this OpenAI-compatible vLLM server (engine.backend=server, engine.url=URL)"""

    launch: bool = False
    """start a vLLM server for this run on a free loopback port, stop it afterwards"""

    concurrency: int | None = None
    """server backend: requests in flight (default: 1 in sequential mode, all in batch)"""

    request_rate: float | None = None
    """server backend: mean requests per second, a seeded Poisson process (docs/server.md)"""

    def settings(self) -> dict[str, Any]:
        """The top-level config keys these flags set."""
        flags: dict[str, Any] = {}
        if self.mode:
            flags["mode"] = self.mode
        if self.raw_prompts:
            flags["chat_template"] = False
        return flags

    def engine_settings(self) -> dict[str, Any]:
        """The ``engine`` section keys these flags set."""
        flags: dict[str, Any] = {}
        if self.endpoint:
            flags |= {"backend": "server", "url": self.endpoint}
        if self.launch:
            flags |= {"backend": "server", "launch": True}
        if self.concurrency is not None:
            flags["concurrency"] = self.concurrency
        if self.request_rate is not None:
            flags["request_rate"] = self.request_rate
        return flags


@Parameter(name="*", group=OUTPUT)
@frozen(kw_only=True)
class OutputFlags:
    """Where a run's records go: ``run`` only."""

    sinks: Annotated[str | None, Parameter(show_default=",".join(_DEFAULTS.sinks))] = None
    """comma-separated observers of the records (log, plugins); the run folder is always written"""

    output_dir: Annotated[Path | None,
                          Parameter(show_default="results/<UTC time>-<strategy>")] = None
    """where to write"""

    overwrite: bool = False
    """replace a run already in --output-dir"""

    resume: bool = False
    """continue an interrupted run in --output-dir (with its config.yaml unless --config is
    given); requests in its responses.jsonl are kept"""

    retry_failed: bool = False
    """on --resume, run again the requests that failed"""

    def settings(self) -> dict[str, Any]:
        """The top-level config keys these flags set."""
        return {"sinks": _split(self.sinks)} if self.sinks else {}

    def check(self, results: Path = Path("results")) -> None:
        """Refuse flags that contradict each other or miss what they need.

        ``results`` is where runs go by default: ``--resume`` without
        ``--output-dir`` names the latest unfinished run there.

        Raises:
            UsageError: the flags cannot be honoured as given.
        """
        from specdec.run_folder import latest_unfinished  # noqa: PLC0415

        if self.overwrite and self.resume:
            msg = ("--overwrite and --resume contradict each other: --resume continues the run "
                   "in --output-dir and keeps its finished requests, --overwrite deletes them; "
                   "pass one of them")
            raise UsageError(msg)
        if self.retry_failed and not self.resume:
            msg = ("--retry-failed runs again the failed requests of a run being resumed: "
                   "pass it with --resume --output-dir DIR")
            raise UsageError(msg)
        if self.resume and self.output_dir is None:
            latest = latest_unfinished(results)
            hint = (f"the latest unfinished run is {latest}: pass --output-dir {latest} to "
                    "resume it" if latest is not None
                    else f"there is no unfinished run under {results}/")
            msg = f"--resume needs --output-dir, the folder of the run to continue; {hint}"
            raise UsageError(msg)
        if self.output_dir is not None and self.output_dir.exists() \
                and not self.output_dir.is_dir():
            msg = (f"--output-dir {self.output_dir} is a file, not a folder: choose a folder "
                   "(it is created if missing)")
            raise UsageError(msg)


_CHECK = SampledCheckSettings()
# The sampled check's defaults, shown by its help page, come from its settings record.


@Parameter(name="*", group=SAMPLING)
@frozen(kw_only=True)
class SamplingCheckFlags:
    """What the sampled lossless check draws: ``lossless`` only."""

    samples: Annotated[int, Parameter(validator=Number(gte=2))] = _CHECK.samples
    """samples per prompt in each arm (baseline, strategy, control)"""

    tokens: Annotated[int, Parameter(validator=Number(gte=1))] = _CHECK.tokens
    """tokens per sample: the first 1..TOKENS tokens are compared"""

    temperature: Annotated[float | None, Parameter(
        show_default=f"generation.temperature if above 0, else {_CHECK.temperature}")] = None
    """temperature checked (above 0)"""

    top_p: Annotated[float | None, Parameter(show_default="generation.top_p")] = None
    """top-p of every arm"""

    top_k: Annotated[int | None, Parameter(show_default="generation.top_k")] = None
    """top-k of every arm"""

    control_temperature: Annotated[float | None, Parameter(
        show_default=f"TEMPERATURE + {CONTROL_STEP}")] = None
    """the positive control: the baseline at this temperature must differ detectably"""

    seed: int = _CHECK.seed
    """the samples' seeds derive from it, each arm its own (docs/lossless.md)"""

    def settings(self, config: ExperimentConfig) -> SampledCheckSettings:
        """The check's settings: these flags, else ``config``'s sampling, else the defaults."""
        gen = config.generation
        temperature = (self.temperature if self.temperature is not None
                       else gen.temperature if gen.sampled else _CHECK.temperature)
        return SampledCheckSettings(
            samples=self.samples, tokens=self.tokens, temperature=temperature,
            top_p=self.top_p if self.top_p is not None else gen.top_p,
            top_k=self.top_k if self.top_k is not None else gen.top_k,
            control_temperature=self.control_temperature, seed=self.seed)


LogFormatFlag = Annotated[LogFormat | None, Parameter(
    group=OUTPUT, help="structured log lines as console text or JSON (also SPECDEC_LOG_FORMAT)")]
"""``--log-format`` of ``run`` and ``serve``."""

NearTieFlag = Annotated[float | None, Parameter(metavar="NATS", validator=Number(gte=0))]
"""``--near-tie``: the lossless check's near-tie threshold; each command says its default."""

RepeatsFlag = Annotated[int, Parameter(validator=Number(gte=1))]
"""``--repeats`` of ``batch`` and ``study``: runs of each configuration, at least one."""

# The defaults of the flattened flag classes: frozen, so one shared instance is safe.
_NO_EXPERIMENT = ExperimentFlags()
_NO_BENCHMARK = BenchmarkFlags()
_NO_REQUESTS = RequestFlags()
_NO_OUTPUT = OutputFlags()
_NO_SAMPLING = SamplingCheckFlags()


def build_config(experiment: ExperimentFlags, benchmark: BenchmarkFlags = _NO_BENCHMARK,
                 requests: RequestFlags = _NO_REQUESTS,
                 output: OutputFlags = _NO_OUTPUT) -> ExperimentConfig:
    """The ExperimentConfig described by a config file, flags and ``--set`` overrides.

    Precedence: built-in defaults < the ``--config`` file < flags < ``--set``.
    """
    from specdec.config import apply_overrides, config_from_mapping, read_mapping  # noqa: PLC0415

    data: dict[str, Any] = read_mapping(experiment.config) if experiment.config else {}
    source = str(experiment.config) if experiment.config else "command line"
    data.update(experiment.settings(data.get("strategy")))
    data.update(requests.settings())
    data.update(output.settings())
    for name, values in (("engine", requests.engine_settings()),
                         ("benchmark", benchmark.settings())):
        if values:
            section = data.setdefault(name, {})
            if not isinstance(section, dict):
                raise ConfigError(source, [f"expected a mapping @ $.{name}"])
            section.update(values)
    if experiment.overrides:
        data = apply_overrides(data, experiment.overrides)
        source += " with --set overrides"
    return config_from_mapping(data, source)


def run(experiment: ExperimentFlags = _NO_EXPERIMENT, benchmark: BenchmarkFlags = _NO_BENCHMARK,
        requests: RequestFlags = _NO_REQUESTS, output: OutputFlags = _NO_OUTPUT, *,
        log_format: LogFormatFlag = None) -> int:
    """Run one speculative-decoding experiment.

    It runs on vLLM and writes config.yaml, responses.jsonl and metrics.json
    into the output folder. `specdec run` and `specdec-run` are the same
    command.

    With no arguments: the bundled sample benchmark on the bundled model
    (smollm2-135m) with no speculation (the baseline), into results/<time>-none.

    Precedence: built-in defaults < --config file < flags < --set overrides.
    """
    import attrs  # noqa: PLC0415
    import structlog  # noqa: PLC0415

    from specdec import logs  # noqa: PLC0415
    from specdec.display import print_summary, progress  # noqa: PLC0415
    from specdec.run_folder import CONFIG_FILE as RUN_CONFIG_FILE  # noqa: PLC0415
    from specdec.runner import run_experiment  # noqa: PLC0415

    if log_format is not None:
        logs.configure(log_format)
    output.check()
    if output.resume and output.output_dir is not None:
        saved = output.output_dir / RUN_CONFIG_FILE
        if not saved.is_file():
            # A mistyped folder must not pass for a resumed run unnoticed.
            structlog.get_logger("specdec.cli").warning(
                "--resume: no run in this folder yet, so a new one starts",
                folder=str(output.output_dir))
        elif experiment.config is None:
            # The run being continued says what it is: --resume --output-dir DIR is enough.
            experiment = attrs.evolve(experiment, config=saved)
    config = build_config(experiment, benchmark, requests, output)
    with progress() as bar:
        result = run_experiment(
            config,
            output.output_dir,
            overwrite=output.overwrite,
            resume=output.resume,
            retry_failed=output.retry_failed,
            on_start=bar.start,
            on_record=lambda _record: bar.advance(),
        )
    print_summary(result)
    code = 0
    for error in result.sink_errors:
        sys.stderr.write(f"specdec: {error}\n")
        code = EXIT_FAILED
    failed = result.summary.failed_requests
    if failed:
        total = failed + result.summary.overall.requests
        sys.stderr.write(
            f"specdec: {failed} of {total} requests failed; each one's error is recorded in "
            f"{result.output_dir / 'responses.jsonl'} (`--resume --retry-failed --output-dir "
            f"{result.output_dir}` runs them again)\n")
        code = EXIT_FAILED
    return code


def serve(experiment: ExperimentFlags = _NO_EXPERIMENT, *,
          port: Annotated[int | None, Parameter(help="port to listen on (default: a free one)")]
          = None, log_format: LogFormatFlag = None) -> int:
    """Start vLLM's OpenAI-compatible server with a strategy, until Ctrl-C.

    The server listens on the loopback interface with the experiment's model,
    engine settings (engine.* in --config or --set) and the strategy's
    speculative_config on its command line; specdec waits until it is healthy,
    prints its URL, and stops it cleanly on Ctrl-C. Measure it with
    `specdec-run --endpoint URL`. To launch a server just for one run, use
    `specdec-run --launch` instead.
    """
    import time  # noqa: PLC0415

    import attrs  # noqa: PLC0415

    from specdec import logs  # noqa: PLC0415
    from specdec.engines.launch import ServerProcess  # noqa: PLC0415
    from specdec.runner import prepare_run  # noqa: PLC0415

    if log_format is not None:
        logs.configure(log_format)
    config = build_config(experiment)
    # Checked as the launched server that will run it: this process never imports vLLM.
    engine = attrs.evolve(config.engine, backend="server", launch=True,
                          port=config.engine.port if port is None else port)
    prepared = prepare_run(attrs.evolve(config, engine=engine))
    server = ServerProcess(prepared.config, prepared.model_path, prepared.speculative_config)
    try:
        url = server.start()
        sys.stdout.write(
            f"vLLM server ready at {url} ({prepared.config.strategy.name}); Ctrl-C stops it.\n"
            f"measure it: specdec-run --endpoint {url} --strategy "
            f"{prepared.config.strategy.name} ...\n"
        )
        sys.stdout.flush()
        while server.process is not None and server.process.poll() is None:
            time.sleep(1.0)
        sys.stderr.write(f"specdec: the server exited; see {server.log_path}\n")
        return EXIT_FAILED
    finally:
        server.stop()


def models_list() -> int:
    """Show bundled models, whether prepared, and where."""
    from specdec.display import print_models  # noqa: PLC0415

    print_models()
    return 0


def models_prepare(*names: str, force: bool = False) -> int:
    """Build bundled models into $SPECDEC_HOME (default: smollm2-135m).

    Args:
        names: bundled model aliases.
        force: rebuild even if prepared.
    """
    from specdec import models  # noqa: PLC0415

    for name in names or (models.BASE_ALIAS,):
        path = models.prepare(name, force=force)
        sys.stdout.write(f"{name}: {path}\n")
    return 0


def plugins() -> int:
    """List every plugin (strategy, benchmark format, sink, engine, command) and its package."""
    from specdec.display import print_plugins  # noqa: PLC0415

    return print_plugins()


def _execute_batch(items: Sequence[BatchItem], output_base: Path, name: str,
                   threshold: float, seed: int = 0, *,
                   checks: Sequence[PlannedCheck] = (), slo: Slo | None = None,
                   execution: ExecutorFlags = _LOCAL) -> int:
    from specdec.display import BatchProgress, print_report  # noqa: PLC0415
    from specdec.report import build_report  # noqa: PLC0415
    from specdec.report_files import write_report  # noqa: PLC0415
    from specdec.study import run_batch  # noqa: PLC0415

    executor = execution.open()
    try:
        with BatchProgress([item.name for item in items], output_base) as bar:
            index = run_batch(items, output_base, name=name, near_tie_threshold=threshold,
                              on_item=bar.item_ended, on_progress=bar.update, seed=seed,
                              checks=checks, executor=executor)
    finally:
        executor.close()
    failed = [i for i in index.items if i.status != "done"]
    for item in failed:
        sys.stderr.write(f"specdec: {item.name} {item.status}: {item.error}\n")
    failed_checks = [c for c in index.lossless_checks if c.status != "done"]
    for check in failed_checks:
        sys.stderr.write(f"specdec: lossless check of {check.setting} {check.status}: "
                         f"{check.error}\n")
    if len(failed) < len(index.items):
        report = build_report([output_base])
        write_report(report, output_base / "report", slo)
        print_report(report)
        sys.stdout.write(f"report: {output_base / 'report' / 'report.md'} "
                         f"and {output_base / 'report' / 'report.html'}\n")
    return EXIT_FAILED if failed or failed_checks else 0


def batch(*, configs: Annotated[list[Path], Parameter(consume_multiple=True, metavar="FILE")],
          output_base: Annotated[Path, Parameter(metavar="DIR")],
          benchmark: BenchmarkFlags = _NO_BENCHMARK, repeats: RepeatsFlag = 1,
          near_tie: NearTieFlag = None, execution: ExecutorFlags = _LOCAL) -> int:
    """Run several experiment files on one benchmark, each in its own process.

    Run each --configs file as its own process on the same prompts, into
    OUTPUT_BASE/<name>/, with OUTPUT_BASE/batch.json as the index and a report
    in OUTPUT_BASE/report/. A baseline (strategy none) is added per model if
    missing. Rerunning the same command resumes: finished configurations are
    skipped, a half-finished one continues. Exit 1 if any configuration failed.

    Args:
        configs: experiment files (YAML or JSON), one configuration each.
        output_base: batch folder: one subfolder per configuration, batch.json, report/.
        benchmark: the prompts of every configuration.
        repeats: runs of each configuration.
        near_tie: near-tie threshold of the lossless check, in nats (default 0.5).
        execution: where the runs go.
    """
    from specdec.study import NEAR_TIE_THRESHOLD, items_from_configs  # noqa: PLC0415

    items = items_from_configs(configs, benchmark.settings(), repeats)
    threshold = near_tie if near_tie is not None else NEAR_TIE_THRESHOLD
    return _execute_batch(items, output_base, output_base.name, threshold,
                          execution=execution)


def study(study: Path, /, *, output_base: Annotated[Path | None, Parameter(metavar="DIR")] = None,
          repeats: RepeatsFlag | None = None, dry_run: bool = False,
          execution: ExecutorFlags = _LOCAL) -> int:
    """Expand a study file (models x strategies x sweeps) and run it as a batch.

    Run a study file: every model x strategy x swept setting x repeat as a
    batch (see `specdec batch`), then write the report. See docs/studies.md.

    Args:
        study: study file (YAML or JSON).
        output_base: batch folder (default: results/<study name>).
        repeats: override the study's repeats (default: the study's, else 3).
        dry_run: list the runs (and the sampled lossless checks) and stop.
        execution: where the runs go.
    """
    import attrs  # noqa: PLC0415

    from specdec.study import expand_study, load_study  # noqa: PLC0415
    from specdec.study_lossless import plan_checks  # noqa: PLC0415

    loaded = load_study(study)
    if repeats is not None:
        loaded = attrs.evolve(loaded, repeats=repeats)
    items = expand_study(loaded)
    checks = ([] if loaded.lossless_check is None else
              plan_checks(items, loaded.lossless_check, loaded.seed, f"study {loaded.name!r}"))
    if dry_run:
        for item in items:
            sys.stdout.write(f"{item.name}\n")
        for check in checks:
            sys.stdout.write(f"{check.describe()}\n")
        return 0
    return _execute_batch(items, output_base or Path("results") / loaded.name, loaded.name,
                          loaded.near_tie_threshold, loaded.seed, checks=checks,
                          slo=loaded.slo, execution=execution)


TUNE = Group("Tune", sort_key=5)


def _values(flag: str, text: str) -> list[int]:
    """``1-8`` or ``1,2,4`` as integers, for --k and --batch-sizes."""
    low, dash, high = text.partition("-")
    try:
        if dash:
            return list(range(int(low), int(high) + 1))
        return [int(part) for part in _split(text)]
    except ValueError:
        msg = f"{flag} takes integers as 1-8 or 1,2,4, got {text!r}"
        raise UsageError(msg) from None


@Parameter(name="*", group=TUNE)
@frozen(kw_only=True)
class TuneFlags:
    """The flags of ``tune``: each replaces its tune-file key (docs/prediction.md)."""

    output_base: Annotated[Path | None, Parameter(metavar="DIR",
                                                  show_default="results/<tune name>")] = None
    """the tune's folder: its runs, calibration.json, ranking.json, prediction.md"""

    methods: str | None = None
    """comma-separated methods to tune, without options (e.g. ngram,draft_model)"""

    k: str | None = None
    """num_speculative_tokens of the candidates: 1-8 or 1,2,4 (default 1-8)"""

    batch_sizes: str | None = None
    """engine.max_num_seqs values to sweep in batch mode: 1,4,16"""

    confirm: Annotated[int | None, Parameter(validator=Number(gte=0))] = None
    """top settings per batch size confirmed with real runs (default 3)"""

    overrides: Annotated[tuple[str, ...], Parameter(name="--set", metavar="KEY.PATH=VALUE")] = ()
    """override a tune-file value, e.g. base.generation.max_tokens=64; VALUE is YAML"""

    predict_only: bool = False
    """stop after the ranking: no confirmation runs"""

    dry_run: bool = False
    """list what would run and how each candidate is predicted, and stop"""

    def settings(self) -> dict[str, Any]:
        """The tune-file keys these flags set."""
        flags: dict[str, Any] = {}
        if self.methods:
            flags["methods"] = [{"name": name} for name in _split(self.methods)]
        if self.k:
            flags["k"] = _values("--k", self.k)
        if self.batch_sizes:
            flags["batch_sizes"] = _values("--batch-sizes", self.batch_sizes)
        if self.confirm is not None:
            flags["confirm"] = self.confirm
        return flags


_NO_TUNE = TuneFlags()


def tune(tune_file: Annotated[Path | None, Parameter(name="TUNE_FILE")] = None, /, *,
         flags: TuneFlags = _NO_TUNE) -> int:
    """Predict every candidate setting from a greedy baseline, then confirm the best.

    Run (or reuse) the baseline and a few calibration runs per method, fit
    the cost model, replay every candidate (methods x option grid x k x batch
    sizes) over the baseline's tokens, rank them by predicted speedup per
    category and overall, run the top ones for real, and write predicted
    against measured with the residual (measured / predicted - 1) into
    prediction.md and prediction.json. Rerunning the same command resumes at
    the first phase not done. Greedy decoding only. Exit 1 if any run failed.
    See docs/prediction.md, "specdec tune".

    Args:
        tune_file: tune file (YAML or JSON); without one, the defaults and the flags.
        flags: each replaces its tune-file key.
    """
    from specdec.config import apply_overrides, read_mapping  # noqa: PLC0415
    from specdec.display import BatchProgress, print_tune  # noqa: PLC0415
    from specdec.study import BatchIndex, run_batch  # noqa: PLC0415
    from specdec.tune import describe_plan, plan_tune, run_tune, tune_from_mapping  # noqa: PLC0415
    from specdec.tune_files import write_prediction  # noqa: PLC0415

    data: dict[str, Any] = read_mapping(tune_file) if tune_file else {}
    data.update(flags.settings())
    source = str(tune_file) if tune_file else "command line"
    if flags.overrides:
        data = apply_overrides(data, flags.overrides)
        source += " with --set overrides"
    loaded = tune_from_mapping(data, source)
    if flags.dry_run:
        sys.stdout.write("".join(f"{line}\n" for line in describe_plan(plan_tune(loaded, source))))
        return 0
    output = flags.output_base or Path("results") / loaded.name

    def run_items(items: Sequence[BatchItem], folder: Path) -> BatchIndex:
        with BatchProgress([item.name for item in items], folder) as bar:
            return run_batch(items, folder, name=loaded.name,
                             near_tie_threshold=loaded.near_tie_threshold,
                             on_item=bar.item_ended, on_progress=bar.update, seed=loaded.seed)

    def say(line: str) -> None:
        sys.stderr.write(f"specdec tune: {line}\n")

    result = run_tune(loaded, output, predict_only=flags.predict_only, run_items=run_items,
                      say=say)
    written = write_prediction(output, result)
    print_tune(result)
    sys.stdout.write("wrote " + ", ".join(str(f) for f in written) + f" and {output}/report/\n")
    return EXIT_FAILED if result.failed else 0


def score(batch_dir: Annotated[Path, Parameter(name="BATCH_DIR")], /, *,
          log_format: LogFormatFlag = None) -> int:
    """Score a batch's divergences from its baselines (the scoring pass).

    `specdec batch` and `specdec study` run this themselves after their last
    item, in its own process; running it again scores only what is missing.
    Exit 1 if a baseline could not be scored (the reason is in its margins.json).

    Args:
        batch_dir: the batch folder.
        log_format: how log lines look (json for machines).
    """
    from specdec import logs  # noqa: PLC0415
    from specdec.scoring import score_batch  # noqa: PLC0415
    from specdec.study import read_index  # noqa: PLC0415

    if log_format is not None:
        logs.configure(log_format)
    return score_batch(batch_dir, read_index(batch_dir).items)


def report(runs: Annotated[list[Path], Parameter(name="RUN_DIR")], /, *,
           output: Annotated[Path | None, Parameter(metavar="DIR")] = None,
           near_tie: NearTieFlag = None,
           slo: Annotated[str | None, Parameter(metavar="LIMITS")] = None) -> int:
    """Compare runs with their baseline: tables, report.md, report.html, PNG plots.

    Read batch folders and run folders; print speedup (Spec-Bench and
    throughput), acceptance, the best setting per category and the lossless
    check; write report.md, report.json, report.html and PNG plots. Exit 1 if the lossless
    check finds a real mismatch.

    Args:
        runs: batch folders or run folders.
        output: where to write (default: RUN_DIR/report for one folder, results/report for more).
        near_tie: lossless-check near-tie threshold in nats (default: the batch's own, else 0.5).
        slo: where engine.concurrency was swept, also goodput under these limits in
            milliseconds, as vllm bench serve --goodput writes them: 'ttft:200 tpot:50 e2el:2000'.
    """
    from specdec.concurrency import parse_slo  # noqa: PLC0415
    from specdec.display import print_report  # noqa: PLC0415
    from specdec.report import build_report  # noqa: PLC0415
    from specdec.report_files import write_report  # noqa: PLC0415

    limits = parse_slo(slo) if slo is not None else None
    built = build_report(runs, near_tie)
    out = output or (runs[0] / "report" if len(runs) == 1 else Path("results") / "report")
    files = write_report(built, out, limits)
    print_report(built)
    sys.stdout.write("wrote " + ", ".join(str(f) for f in files) + "\n")
    return 0 if all(r.passed for r in built.lossless.values()) else EXIT_FAILED


LOSSLESS_EPILOG = """\
examples:
  specdec lossless --strategy ngram --limit 8
  specdec lossless --strategy draft_model \\
      --set strategy.model=smollm2-135m-draft \\
      --temperature 0.7 --samples 400 --tokens 3

exit status: 0 no difference found and the positive control seen;
1 a difference found for the strategy; 3 inconclusive (the control
was not seen, or the strategy drafted nothing while sampling).
See docs/lossless.md.
"""


def lossless(experiment: ExperimentFlags = _NO_EXPERIMENT,
             benchmark: BenchmarkFlags = _NO_BENCHMARK,
             sampling: SamplingCheckFlags = _NO_SAMPLING, *,
             output: Annotated[Path | None, Parameter(
                 group=OUTPUT, metavar="DIR", help="where to write lossless.json and samples.json",
                 show_default="results/lossless-<UTC time>-<strategy>")] = None,
             log_format: LogFormatFlag = None) -> int:
    """Check that a strategy leaves the sampled output distribution unchanged.

    For each prompt (each conversation's first turn), the baseline and the
    strategy each draw SAMPLES seeded continuations of TOKENS tokens at the
    same sampling settings, each arm with its own seeds; the baseline also
    draws them at the control temperature (the positive control). For every
    prefix length 1..TOKENS, a chi-square test per prompt (and over all
    prompts at once) asks whether the two arms' prefixes differ, Holm-corrected
    at a 5% family-wise false-alarm rate. The verdict says what was found and
    at what power: "no difference detected; a total-variation distance above
    D ... would have been detected with probability 0.80". The control must be
    detected, or the check says its pass means little. Writes lossless.json
    (the verdict, every test) and samples.json (every sample and seed).
    Samples are not timed. Greedy runs are checked exactly by `specdec report`.
    """
    from datetime import UTC, datetime  # noqa: PLC0415

    from specdec import logs  # noqa: PLC0415
    from specdec.sampled_check import run_check  # noqa: PLC0415

    if log_format is not None:
        logs.configure(log_format)
    config = build_config(experiment, benchmark)
    settings = sampling.settings(config)
    if output is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        output = Path("results") / f"lossless-{stamp}-{config.name or config.strategy.name}"
    result = run_check(config, settings, output)
    for line in result.lines:
        sys.stdout.write(f"{line}\n")
    sys.stdout.write(f"{result.outcome}: wrote {output / 'lossless.json'} and "
                     f"{output / 'samples.json'}\n")
    return {"pass": 0, "difference": EXIT_FAILED}.get(result.outcome, EXIT_INCONCLUSIVE)


def export(answer_format: Annotated[Literal["spec-bench"], Parameter(name="FORMAT")],
           run_dir: Annotated[Path, Parameter(name="RUN_DIR")], /, *,
           output: Annotated[Path, Parameter(alias="-o", metavar="FILE")],
           model_id: str | None = None) -> int:
    """Write a run in Spec-Bench's answer format.

    Write one JSONL line per question in Spec-Bench's answer format, which
    Spec-Bench's evaluation/speed.py and equal.py read.

    Args:
        answer_format: the answer format.
        run_dir: the run folder.
        output: the JSONL file to write.
        model_id: model_id written into each line.
    """
    from specdec.export import export_spec_bench  # noqa: PLC0415

    del answer_format  # one format today; the argument keeps room for others
    count = export_spec_bench(run_dir, output, model_id=model_id)
    sys.stdout.write(f"wrote {count} answers to {output}\n")
    return 0


def _show_default(value: Any) -> str | None:
    # An off switch or an empty repeatable option says nothing a reader needs.
    return None if value is None or value is False or value == () else str(value)


def _new_app(name: str, description: str | None, **kwargs: Any) -> App:
    return App(
        name=name, help=description, help_format="plaintext", version=_version,
        # argparse's flag set exactly: no generated --no-X / --empty-X twins.
        default_parameter=Parameter(negative=(), show_default=_show_default),
        # invoke() prints a parse error as one plain line and exits 2 itself.
        exit_on_error=False, print_error=False,
        **kwargs,
    )


def _version() -> str:
    from importlib.metadata import version  # noqa: PLC0415

    from specdec.registry import DISTRIBUTION  # noqa: PLC0415

    return version(DISTRIBUTION)


def build_app() -> App:
    """The ``specdec`` application: the core commands plus those of command plugins."""
    from specdec.commands import register_commands  # noqa: PLC0415

    app = _new_app("specdec", "Study speculative decoding on vLLM: run experiments, manage "
                              "the bundled models, list plugins.")
    app.command(run, help_epilogue=RUN_EPILOG)
    models = App(name="models", help="Bundled models: list, prepare.")
    models.command(models_list, name="list")
    models.command(models_prepare, name="prepare")
    app.command(models)
    for command in (plugins, serve, batch, study, tune, report, export):
        app.command(command)
    app.command(lossless, help_epilogue=LOSSLESS_EPILOG)
    # Run by batches themselves; hidden from --help so users are not asked to.
    app.command(score, show=False)
    register_commands(app)
    return app


def build_run_app() -> App:
    """The ``specdec-run`` application: the ``run`` command on its own."""
    return _new_app("specdec-run", None, default_command=run, help_epilogue=RUN_EPILOG)


def _is_help(command: Callable[..., Any]) -> bool:
    return getattr(command, "__func__", None) is App.help_print


def _call(app: App, tokens: list[str]) -> int:
    command, bound, _ = app.parse_args(tokens)
    if _is_help(command) and not set(tokens) & set(app.help_flags):
        # A command group called alone (`specdec`, `specdec models`) is a usage error,
        # as argparse's required sub-command was.
        app.help_print(tokens, console=app.error_console)
        sys.stderr.write(f"{' '.join((*app.name, *tokens))}: error: choose a command\n")
        return EXIT_USAGE
    result = command(*bound.args, **bound.kwargs)
    return result if isinstance(result, int) else 0


_Failure = CycloptsError | InvalidOptionError | SpecdecError | KeyboardInterrupt


def _failure(program: str, exc: _Failure) -> tuple[str, int]:
    """The one message and the exit code of an error meant for the user."""
    # Messages are written as they are, not through rich: unwrapped, so a long path in
    # one stays in one piece.
    if isinstance(exc, CycloptsError):
        command = " ".join((program, *(exc.command_chain or ())))
        return f"{command}: error: {exc}\nsee `{command} --help` for its usage\n", EXIT_USAGE
    if isinstance(exc, InvalidOptionError):
        # An options class's validator (a plugin's, say) refused a value while cyclopts
        # built the class from the flags: bad input, with a message written for the user.
        return f"{program}: error: {exc}\n", EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):
        return "specdec: interrupted; finished requests are in responses.jsonl\n", EXIT_INTERRUPTED
    if isinstance(exc, ConfigError):
        return f"specdec: {exc}\n", EXIT_USAGE
    if isinstance(exc, UsageError):
        return f"{program}: error: {exc}\n", EXIT_USAGE
    return f"specdec: error: {exc}\n", EXIT_FAILED


def _reraise() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def save_traceback(exc: BaseException, argv: Sequence[str]) -> Path:
    """Write ``exc``'s traceback (and the command line) to a new file; its path.

    Under ``$SPECDEC_HOME/crashes/`` (where specdec keeps its other files), else,
    if that cannot be written, the system's temporary folder.
    """
    import tempfile  # noqa: PLC0415
    import traceback  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415

    from specdec.models import home  # noqa: PLC0415

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    try:
        version = _version()
    except Exception:  # noqa: BLE001 - a crash report must not crash
        version = "?"
    text = (f"specdec {version}, Python {sys.version.split()[0]}\n"
            f"command: {' '.join(argv)}\n\n"
            + "".join(traceback.format_exception(exc)))
    for folder in (home() / "crashes", Path(tempfile.gettempdir())):
        path = folder / f"specdec-crash-{stamp}-{os.getpid()}.txt"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError:
            continue
        return path
    msg = "no folder to save the traceback in"
    raise OSError(msg) from exc


def _crash(exc: Exception, argv: Sequence[str]) -> str:
    """The one line a user sees for a bug, after its traceback is saved."""
    message = " ".join(str(exc).split())
    try:
        where = f"the traceback is saved in {save_traceback(exc, argv)}"
    except OSError as error:
        where = f"the traceback could not be saved ({error})"
    return (f"specdec: unexpected error: {type(exc).__name__}: {message}; {where}; "
            "please report it\n")


def _warn_plugin_filter() -> None:
    from specdec.commands import command_plugins  # noqa: PLC0415
    from specdec.registry import all_registries, warn_unmatched_filter  # noqa: PLC0415

    warn_unmatched_filter((*all_registries(), command_plugins))


def invoke(build: Callable[[], App], argv: Sequence[str] | None = None) -> int:
    """Build an application, run it on ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    from specdec import logs  # noqa: PLC0415

    # Before anything can log (a command plugin that fails to load while the app is built),
    # so log lines go to stderr and never into a command's output on stdout.
    logs.configure()
    tokens = sys.argv[1:] if argv is None else list(argv)
    program = "specdec"
    try:
        _warn_plugin_filter()
        app = build()
        program = app.name[0]
        return _call(app, tokens)
    except (CycloptsError, InvalidOptionError, SpecdecError, KeyboardInterrupt) as exc:
        message, code = _failure(program, exc)
        sys.stderr.write(message)
        return code
    except Exception as exc:
        # The last resort, for users: a bug is one line and a saved traceback. Developers
        # and the tests (tests/conftest.py sets SPECDEC_TRACEBACK) get the exception itself.
        if _reraise():
            raise
        sys.stderr.write(_crash(exc, [program, *tokens]))
        return EXIT_FAILED


def run_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``specdec-run``."""
    return invoke(build_run_app, argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``specdec``."""
    return invoke(build_app, argv)
