"""``specdec benchmarks``: fetch, add and list the named benchmarks.

A built-in command plugin: :class:`BenchmarksCommand` is declared in the
``specdec.commands`` entry-point group of specdec's own ``pyproject.toml`` and
loads through the same registry as a third-party package's commands
(:mod:`specdec.commands`).  The work is :mod:`specdec.benchmark_store`'s; these
commands only call it and say what happened.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter

from specdec.benchmark_store import (
    BENCHMARKS,
    StoredBenchmark,
    add_benchmark,
    fetch_benchmark,
    list_benchmarks,
    named_benchmark,
    state,
)
from specdec.registry import PLUGIN_API_VERSION

HELP = f"Named benchmarks ({', '.join(BENCHMARKS)}): fetch, add, list."


def fetch(name: Annotated[str, Parameter(name="NAME")], /) -> int:
    """Download a named benchmark from its public source, checksum verified.

    The file is pinned at one revision and stored under
    $SPECDEC_HOME/benchmarks; a copy already there and verified is kept.
    SPECDEC_BENCHMARK_URL_BASE, when set, replaces
    https://raw.githubusercontent.com in the URL (a mirror, same layout).

    Args:
        name: spec-bench or mt-bench.
    """
    bench = named_benchmark(name)
    was = state(bench)
    path = fetch_benchmark(name)
    if was == "verified":
        sys.stdout.write(f"{name}: already here, sha256 verified: {path}\n")
    else:
        sys.stdout.write(f"{name}: downloaded from {bench.url()}, sha256 verified: {path}\n")
    return 0


def add(name: Annotated[str, Parameter(name="NAME")],
        file: Annotated[Path, Parameter(name="FILE")], /) -> int:
    """Import a local copy of a named benchmark (for machines without internet).

    The copy must be the pinned file: its sha256 is checked before
    anything is stored.

    Args:
        name: spec-bench or mt-bench.
        file: the copy's path, e.g. a question.jsonl brought from another machine.
    """
    path = add_benchmark(name, file)
    sys.stdout.write(f"{name}: imported {file}, sha256 verified: {path}\n")
    return 0


_STATES = {
    "verified": "present, sha256 verified",
    "missing": "not here",
    "changed": "CHANGED since it was stored (its sha256 is not the pinned one)",
}


def describe(stored: StoredBenchmark) -> str:
    """One benchmark as ``list`` shows it: a line per field, none wider than it must be.

    Every line but the path's fits 80 columns; values are never cut, so a path
    stays whole (and can be copied) however narrow the terminal or pipe.
    """
    bench = stored.benchmark
    rows = [
        ("state", _STATES[stored.state]),
        ("repository", f"github.com/{bench.repository}"),
        ("file", bench.file),
        ("revision", bench.revision),
        ("path", str(stored.path)),
    ]
    if stored.state != "verified":
        rows += [("get it", f"specdec benchmarks fetch {bench.name}"),
                 ("offline", f"specdec benchmarks add {bench.name} FILE")]
    head = f"{bench.name}: {bench.title}, {bench.questions} questions, {bench.licence}\n"
    return head + "".join(f"  {key:<10}  {value}\n" for key, value in rows)


def list_() -> int:
    """Show each named benchmark: its source, revision, whether it is here and verified, path."""
    sys.stdout.write("\n".join(describe(stored) for stored in list_benchmarks()))
    return 0


def benchmarks_app() -> App:
    """The ``benchmarks`` application with its ``fetch``, ``add`` and ``list`` commands."""
    app = App(name="benchmarks", help=HELP)
    app.command(fetch)
    app.command(add)
    app.command(list_, name="list")
    return app


class BenchmarksCommand:
    """The built-in ``specdec.commands`` plugin that adds ``specdec benchmarks``."""

    name = "benchmarks"
    plugin_api_version = PLUGIN_API_VERSION

    def register(self, app: App) -> None:
        """Add ``benchmarks`` (with ``fetch``, ``add``, ``list``) to ``app``."""
        app.command(benchmarks_app())
