"""Command lines: ``specdec-run`` and the ``specdec`` toolbox, thin over the API.

Errors meant for the user (:class:`~specdec.errors.SpecdecError`) print one
message and exit non-zero without a traceback: 2 for bad input, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from specdec.errors import ConfigError, SpecdecError

EXIT_FAILED = 1
EXIT_USAGE = 2

RUN_DESCRIPTION = """\
Run one speculative-decoding experiment on vLLM and write config.yaml,
responses.jsonl and metrics.json into the output folder.

With no arguments: the bundled sample benchmark on the bundled model
(smollm2-135m) with no speculation (the baseline), into results/<time>-none.

Precedence: built-in defaults < --config file < flags < --set overrides.
"""

RUN_EPILOG = """\
examples:
  specdec-run --strategy ngram
  specdec-run --strategy ngram --set strategy.num_speculative_tokens=3 --limit 8
  specdec-run --strategy draft_model --set strategy.model=smollm2-135m-draft
  specdec-run --config configs/smollm2-135m/ngram.yaml --output-dir results/ngram
  specdec-run --benchmark ../shared/data/spec_bench/question.jsonl --categories math,rag
  specdec-run --config results/ngram/config.yaml   # repeat a finished run

strategies: see `specdec plugins`; options of each in QUICK_REFERENCE.md.
"""


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="experiment file (YAML or JSON)")
    parser.add_argument("--benchmark", help="prompt file (JSONL); default: the bundled sample")
    parser.add_argument(
        "--benchmark-format",
        help="prompts | questions | chat (or a plugin's format); default: detected per file",
    )
    parser.add_argument("--model", help="model folder, hub id, or bundled alias (smollm2-135m)")
    parser.add_argument("--strategy", help="speculation strategy: none, ngram, draft_model, ...")
    parser.add_argument("--mode", choices=["batch", "sequential"],
                        help="sequential: one request at a time (latency, as Spec-Bench); "
                             "batch: all at once (throughput). Default: sequential")
    parser.add_argument("--limit", type=int, help="run only the first N prompts")
    parser.add_argument("--categories", help="comma-separated categories to run")
    parser.add_argument("--sinks", help="comma-separated sinks (default: json,jsonl,log)")
    parser.add_argument("--endpoint", metavar="URL",
                        help="send requests to this OpenAI-compatible vLLM server instead of "
                             "the offline engine (engine.backend=server, engine.url=URL)")
    parser.add_argument("--launch", action="store_true",
                        help="start a vLLM server for this run on a free loopback port, run "
                             "against it, and stop it afterwards")
    parser.add_argument("--concurrency", type=int,
                        help="server backend: requests in flight (default: 1 in sequential "
                             "mode, all in batch mode)")
    parser.add_argument("--request-rate", type=float,
                        help="server backend: send requests at this fixed rate per second")
    parser.add_argument("--raw-prompts", action="store_true",
                        help="send prompts as they are, without the chat template")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY.PATH=VALUE",
                        help="override any config value, e.g. generation.max_tokens=64 "
                             "(repeatable; VALUE is read as YAML)")
    parser.add_argument("--output-dir", type=Path,
                        help="where to write; default: results/<UTC time>-<strategy>")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run already in --output-dir")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --output-dir: requests already in "
                             "its responses.jsonl are not run again")
    parser.add_argument("--log-format", choices=["console", "json"],
                        help="structured log lines as console text or JSON")


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _benchmark_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if args.benchmark:
        flags["path"] = args.benchmark
    if args.benchmark_format:
        flags["format"] = args.benchmark_format
    if args.limit is not None:
        flags["limit"] = args.limit
    if args.categories:
        flags["categories"] = _split(args.categories)
    return flags


def _engine_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if args.endpoint:
        flags |= {"backend": "server", "url": args.endpoint}
    if args.launch:
        flags |= {"backend": "server", "launch": True}
    if args.concurrency is not None:
        flags["concurrency"] = args.concurrency
    if args.request_rate is not None:
        flags["request_rate"] = args.request_rate
    return flags


def _top_level_flags(args: argparse.Namespace, current_strategy: Any) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if args.model:
        flags["model"] = args.model
    if args.strategy:
        current = current_strategy
        name = current.get("name") if isinstance(current, dict) else current
        if name != args.strategy:
            # Options belong to the strategy they were written for.
            flags["strategy"] = {"name": args.strategy}
    if args.mode:
        flags["mode"] = args.mode
    if args.raw_prompts:
        flags["chat_template"] = False
    if args.sinks:
        flags["sinks"] = _split(args.sinks)
    return flags


def build_config(args: argparse.Namespace) -> Any:
    """The ExperimentConfig described by a config file, flags and overrides."""
    from specdec.config import apply_overrides, config_from_mapping, read_mapping  # noqa: PLC0415

    data: dict[str, Any] = read_mapping(args.config) if args.config else {}
    source = str(args.config) if args.config else "command line"

    data.update(_top_level_flags(args, data.get("strategy")))
    for name, values in (("engine", _engine_flags(args)), ("benchmark", _benchmark_flags(args))):
        if values:
            section = data.setdefault(name, {})
            if not isinstance(section, dict):
                raise ConfigError(source, [f"expected a mapping @ $.{name}"])
            section.update(values)
    if args.overrides:
        data = apply_overrides(data, args.overrides)
        source += " with --set overrides"
    return config_from_mapping(data, source)


def _run(args: argparse.Namespace) -> int:
    from specdec import logs  # noqa: PLC0415
    from specdec.display import print_summary, progress  # noqa: PLC0415
    from specdec.runner import run_experiment  # noqa: PLC0415

    logs.configure(args.log_format)
    config = build_config(args)
    with progress() as bar:
        result = run_experiment(
            config,
            args.output_dir,
            overwrite=args.overwrite,
            resume=args.resume,
            on_start=bar.start,
            on_record=lambda _record: bar.advance(),
        )
    print_summary(result)
    if result.sink_errors:
        for error in result.sink_errors:
            sys.stderr.write(f"specdec: {error}\n")
        return EXIT_FAILED
    return 0


def _models_list(_args: argparse.Namespace) -> int:
    from specdec.display import print_models  # noqa: PLC0415

    print_models()
    return 0


def _models_prepare(args: argparse.Namespace) -> int:
    from specdec import logs, models  # noqa: PLC0415

    logs.configure()
    for name in args.names or [models.BASE_ALIAS]:
        path = models.prepare(name, force=args.force)
        sys.stdout.write(f"{name}: {path}\n")
    return 0


def _plugins(_args: argparse.Namespace) -> int:
    from specdec import logs  # noqa: PLC0415
    from specdec.display import print_plugins  # noqa: PLC0415

    logs.configure()
    return print_plugins()


def _batch_progress() -> Any:
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from specdec.display import stderr  # noqa: PLC0415

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=stderr)


def _execute_batch(items: Sequence[Any], output_base: Path, name: str, threshold: float) -> int:
    from specdec import logs  # noqa: PLC0415
    from specdec.report import build_report, write_report  # noqa: PLC0415
    from specdec.study import run_batch  # noqa: PLC0415

    logs.configure()
    with _batch_progress() as bar:
        configs = bar.add_task("configurations", total=len(items))
        requests = bar.add_task("requests", total=None)

        def progress(item: str, done: int, total: int) -> None:
            bar.update(requests, description=f"requests ({item})", completed=done, total=total)

        def finished(_status: Any) -> None:
            bar.advance(configs)

        index = run_batch(items, output_base, name=name, near_tie_threshold=threshold,
                          on_item=finished, on_progress=progress)
    failed = [i for i in index.items if i.status != "done"]
    for item in failed:
        sys.stderr.write(f"specdec: {item.name} {item.status}: {item.error}\n")
    if len(failed) < len(index.items):
        report = build_report([output_base])
        write_report(report, output_base / "report")
        from specdec.display import print_report  # noqa: PLC0415

        print_report(report)
        sys.stdout.write(f"report: {output_base / 'report' / 'report.md'}\n")
    return EXIT_FAILED if failed else 0


def _batch(args: argparse.Namespace) -> int:
    from specdec.study import NEAR_TIE_THRESHOLD, items_from_configs  # noqa: PLC0415

    benchmark = _benchmark_flags(args)
    items = items_from_configs(args.configs, benchmark, args.repeats)
    threshold = args.near_tie if args.near_tie is not None else NEAR_TIE_THRESHOLD
    return _execute_batch(items, args.output_base, args.output_base.name, threshold)


def _study(args: argparse.Namespace) -> int:
    import attrs  # noqa: PLC0415

    from specdec.study import expand_study, load_study  # noqa: PLC0415

    study = load_study(args.study)
    if args.repeats is not None:
        study = attrs.evolve(study, repeats=args.repeats)
    output_base = args.output_base or Path("results") / study.name
    items = expand_study(study)
    if args.dry_run:
        for item in items:
            sys.stdout.write(f"{item.name}\n")
        return 0
    return _execute_batch(items, output_base, study.name, study.near_tie_threshold)


def _report(args: argparse.Namespace) -> int:
    from specdec.display import print_report  # noqa: PLC0415
    from specdec.report import build_report, write_report  # noqa: PLC0415

    report = build_report(args.runs, args.near_tie)
    out = args.output or (args.runs[0] / "report" if len(args.runs) == 1
                          else Path("results") / "report")
    files = write_report(report, out)
    print_report(report)
    sys.stdout.write("wrote " + ", ".join(str(f) for f in files) + "\n")
    return 0 if all(r.passed for r in report.lossless.values()) else EXIT_FAILED


def _export(args: argparse.Namespace) -> int:
    from specdec.export import export_spec_bench  # noqa: PLC0415

    count = export_spec_bench(args.run, args.output, model_id=args.model_id)
    sys.stdout.write(f"wrote {count} answers to {args.output}\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    import attrs  # noqa: PLC0415

    from specdec import logs  # noqa: PLC0415
    from specdec.engines.launch import ServerProcess  # noqa: PLC0415
    from specdec.runner import prepare_run  # noqa: PLC0415

    logs.configure(args.log_format)
    config = build_config(args)
    if args.port is not None:
        config = attrs.evolve(config, engine=attrs.evolve(config.engine, port=args.port))
    prepared = prepare_run(config)
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


def _add_study_commands(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="start vLLM's OpenAI-compatible server with a strategy, until Ctrl-C",
        description="Start vLLM's OpenAI-compatible server on the loopback interface with the "
                    "experiment's model, engine settings and the strategy's speculative_config "
                    "on its command line, wait until it is healthy, print its URL, and stop it "
                    "cleanly on Ctrl-C. To launch a server just for one run, use "
                    "`specdec-run --launch` instead.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(serve)
    serve.add_argument("--port", type=int, help="port to listen on (default: a free one)")
    serve.set_defaults(handler=_serve)

    batch = sub.add_parser(
        "batch", help="run several experiment files on one benchmark, each in its own process",
        description="Run each --configs file as its own process on the same prompts, into "
                    "OUTPUT_BASE/<name>/, with OUTPUT_BASE/batch.json as the index and a report "
                    "in OUTPUT_BASE/report/. A baseline (strategy none) is added per model if "
                    "missing. Rerunning the same command resumes: finished configurations are "
                    "skipped, a half-finished one continues. Exit 1 if any configuration failed.",
    )
    batch.add_argument("--configs", type=Path, nargs="+", required=True, metavar="FILE",
                       help="experiment files (YAML or JSON), one configuration each")
    batch.add_argument("--output-base", type=Path, required=True, metavar="DIR",
                       help="batch folder: one subfolder per configuration, batch.json, report/")
    batch.add_argument("--benchmark", help="prompt file for every configuration")
    batch.add_argument("--benchmark-format", help="prompts | questions | chat; default: detected")
    batch.add_argument("--limit", type=int, help="first N prompts (after --categories)")
    batch.add_argument("--categories", help="comma-separated categories to run")
    batch.add_argument("--repeats", type=int, default=1, help="runs of each configuration")
    batch.add_argument("--near-tie", type=float, help="near-tie threshold (nats), default 0.25")
    batch.set_defaults(handler=_batch)

    study = sub.add_parser(
        "study", help="expand a study file (models x strategies x sweeps) and run it as a batch",
        description="Run a study file: every model x strategy x swept setting x repeat as a "
                    "batch (see `specdec batch`), then write the report. See docs/studies.md.",
    )
    study.add_argument("study", type=Path, help="study file (YAML or JSON)")
    study.add_argument("--output-base", type=Path, help="default: results/<study name>")
    study.add_argument("--repeats", type=int, help="override the study's repeats")
    study.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    study.set_defaults(handler=_study)

    report = sub.add_parser(
        "report", help="compare runs with their baseline: tables, report.md, PNG plots",
        description="Read batch folders and run folders; print speedup (Spec-Bench and "
                    "throughput), acceptance, the best setting per category and the lossless "
                    "check; write report.md, report.json and PNG plots. Exit 1 if the lossless "
                    "check finds a real mismatch.",
    )
    report.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    report.add_argument("--output", type=Path, help="default: RUN_DIR/report")
    report.add_argument("--near-tie", type=float, help="near-tie threshold (nats)")
    report.set_defaults(handler=_report)

    export = sub.add_parser(
        "export", help="write a run in Spec-Bench's answer format",
        description="Write one JSONL line per question in Spec-Bench's answer format, which "
                    "Spec-Bench's evaluation/speed.py and equal.py read.",
    )
    export.add_argument("format", choices=["spec-bench"])
    export.add_argument("run", type=Path, metavar="RUN_DIR")
    export.add_argument("--output", "-o", type=Path, required=True)
    export.add_argument("--model-id", help="model_id written into each line")
    export.set_defaults(handler=_export)


def _add_train_command(sub: Any) -> None:
    # The parser is light; the handler imports torch and vLLM when it runs.
    from specdec.training.command import add_train_parser  # noqa: PLC0415

    add_train_parser(sub)


def run_parser(prog: str = "specdec-run") -> argparse.ArgumentParser:
    """The parser of ``specdec-run`` (and ``specdec run``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=RUN_DESCRIPTION, epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(parser)
    parser.set_defaults(handler=_run)
    return parser


def toolbox_parser() -> argparse.ArgumentParser:
    """The parser of ``specdec``."""
    parser = argparse.ArgumentParser(
        prog="specdec",
        description="Study speculative decoding on vLLM: run experiments, manage the "
                    "bundled models, list plugins.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run one experiment (same as specdec-run)",
                         description=RUN_DESCRIPTION, epilog=RUN_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_arguments(run)
    run.set_defaults(handler=_run)

    models = sub.add_parser("models", help="bundled models: list, prepare")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    mlist = msub.add_parser("list", help="show bundled models, whether prepared, and where")
    mlist.set_defaults(handler=_models_list)
    prep = msub.add_parser(
        "prepare", help="build bundled models into $SPECDEC_HOME (default: smollm2-135m)"
    )
    prep.add_argument("names", nargs="*", metavar="NAME", help="bundled model alias")
    prep.add_argument("--force", action="store_true", help="rebuild even if prepared")
    prep.set_defaults(handler=_models_prepare)

    plugins = sub.add_parser(
        "plugins", help="list every strategy, benchmark format and sink, with its package"
    )
    plugins.set_defaults(handler=_plugins)
    _add_study_commands(sub)
    _add_train_command(sub)
    return parser


def _dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        sys.stderr.write(f"specdec: {exc}\n")
        return EXIT_USAGE
    except SpecdecError as exc:
        sys.stderr.write(f"specdec: error: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("specdec: interrupted; finished requests are in responses.jsonl\n")
        return 130


def run_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``specdec-run``."""
    return _dispatch(run_parser(), argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``specdec``."""
    return _dispatch(toolbox_parser(), argv)
