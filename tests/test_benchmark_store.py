"""Named benchmarks: add, fetch over real HTTP, verify, resolve, and their commands (no engine).

The pinned files are the real ones: ``add`` and ``fetch`` are tested with the copy
of Spec-Bench's ``question.jsonl`` in ``../shared`` (skipped where it is absent);
``fetch`` downloads it from ``http.server`` on the loopback interface, which also
serves corrupted copies that must be refused.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cyclopts import App

from specdec import benchmark_store, cli
from specdec.benchmark_commands import BenchmarksCommand, describe
from specdec.benchmark_store import (
    BENCHMARKS,
    URL_BASE_ENV,
    add_benchmark,
    fetch_benchmark,
    list_benchmarks,
    named_benchmark,
    resolve_benchmark,
    state,
)
from specdec.benchmarks.loader import default_benchmark_path, load_benchmark
from specdec.commands import CommandPlugin
from specdec.config import load_config
from specdec.errors import BenchmarkError
from specdec.runner import run_experiment
from specdec.study import check_item

from .conftest import ROOT, SPEC_BENCH
from .test_runner import StandInEngine

SPEC = BENCHMARKS["spec-bench"]
MT = BENCHMARKS["mt-bench"]

needs_spec_bench = pytest.mark.skipif(
    not SPEC_BENCH.is_file(), reason=f"{SPEC_BENCH} (the pinned Spec-Bench file) is absent")


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store for each test (only the store moves: the bundled model stays put)."""
    home = tmp_path / "home"
    monkeypatch.setattr(benchmark_store, "home", lambda: home)
    monkeypatch.delenv(URL_BASE_ENV, raising=False)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
        monkeypatch.delenv(proxy.lower(), raising=False)
    return home


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Keep the test output clean."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 (a free port) serving the folder it yields."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _publish(www: Path, bench: benchmark_store.NamedBenchmark, data: bytes) -> None:
    """Put ``data`` where ``bench``'s URL points on the test server."""
    target = www / bench.repository / bench.revision / bench.file
    target.parent.mkdir(parents=True)
    target.write_bytes(data)


def _corrupted() -> bytes:
    """The pinned Spec-Bench file with one question changed (or a made-up file without it)."""
    if SPEC_BENCH.is_file():
        return SPEC_BENCH.read_bytes().replace(b"?", b"!", 1)
    return b'{"question_id": 1, "category": "writing", "turns": ["Write a haiku."]}\n'


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_the_pins_are_the_briefed_files() -> None:
    """Names, revisions, files and checksums as pinned (a typo here breaks every fetch)."""
    assert SPEC.url() == ("https://raw.githubusercontent.com/hemingkx/Spec-Bench/"
                          "66230f10cb0a02aced5ef3ce1e85163c16160454/data/spec_bench/question.jsonl")
    assert SPEC.sha256 == "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04"
    assert MT.url() == ("https://raw.githubusercontent.com/lm-sys/FastChat/"
                        "b494d0c6b4e7935f1764f8439e75da3e66beccc7/"
                        "fastchat/llm_judge/data/mt_bench/question.jsonl")
    assert MT.sha256 == "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"
    assert (SPEC.questions, MT.questions) == (480, 80)


def test_the_store_is_under_specdec_home(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """Without the fixture's patch, the store follows $SPECDEC_HOME like the bundled models."""
    monkeypatch.undo()
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "elsewhere"))
    assert SPEC.path == tmp_path / "elsewhere" / "benchmarks" / "spec-bench" / "question.jsonl"


@needs_spec_bench
def test_add_then_resolve_and_load(store: Path) -> None:
    """An imported copy is verified, stored, resolved by name and loads as 480 conversations."""
    assert state(SPEC) == "missing"
    path = add_benchmark("spec-bench", SPEC_BENCH)
    assert path == store / "benchmarks" / "spec-bench" / "question.jsonl"
    assert path.read_bytes() == SPEC_BENCH.read_bytes()
    assert state(SPEC) == "verified"
    assert resolve_benchmark("spec-bench") == path
    conversations = load_benchmark(resolve_benchmark("spec-bench"))
    assert len(conversations) == 480
    assert sum(len(c.turns) == 2 for c in conversations) == 80


def test_a_wrong_copy_is_refused_and_nothing_stored(tmp_path: Path, store: Path) -> None:
    """add checks the checksum first: the message has both checksums; nothing is written."""
    copy = tmp_path / "question.jsonl"
    copy.write_bytes(_corrupted())
    with pytest.raises(BenchmarkError) as caught:
        add_benchmark("spec-bench", copy)
    message = str(caught.value)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() in message
    assert SPEC.sha256 in message
    assert "nothing was stored" in message
    assert _files(store) == []


def test_add_names_an_unreadable_file(tmp_path: Path) -> None:
    """A missing source file is a BenchmarkError naming it."""
    with pytest.raises(BenchmarkError, match=r"absent\.jsonl: cannot read it"):
        add_benchmark("mt-bench", tmp_path / "absent.jsonl")


def test_a_missing_named_benchmark_names_both_commands() -> None:
    """Resolving a name not stored yet says how to get it, online and offline."""
    with pytest.raises(BenchmarkError) as caught:
        resolve_benchmark("mt-bench")
    message = str(caught.value)
    assert "'mt-bench' is not on this machine yet" in message
    assert "`specdec benchmarks fetch mt-bench`" in message
    assert "`specdec benchmarks add mt-bench FILE`" in message
    assert MT.sha256 in message


@needs_spec_bench
def test_a_changed_copy_is_refused_until_restored(server: tuple[str, Path]) -> None:
    """A stored copy edited since is refused when resolved; fetch puts the pinned file back."""
    base, www = server
    path = add_benchmark("spec-bench", SPEC_BENCH)
    path.write_bytes(_corrupted())
    assert state(SPEC) == "changed"
    with pytest.raises(BenchmarkError, match="was changed since it was stored") as caught:
        resolve_benchmark("spec-bench")
    assert "`specdec benchmarks fetch spec-bench`" in str(caught.value)
    _publish(www, SPEC, SPEC_BENCH.read_bytes())
    assert fetch_benchmark("spec-bench", url_base=base) == path
    assert resolve_benchmark("spec-bench") == path


def test_other_values_resolve_as_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset is the sample; a file wins over a name; a misspelt name is told so."""
    assert resolve_benchmark(None) == default_benchmark_path()
    assert resolve_benchmark("") == default_benchmark_path()
    assert resolve_benchmark("data/mine.jsonl") == Path("data/mine.jsonl")
    monkeypatch.chdir(tmp_path)
    Path("spec-bench").write_text('{"prompt": "hi"}\n', encoding="utf-8")
    assert resolve_benchmark("spec-bench") == Path("spec-bench")
    with pytest.raises(BenchmarkError, match="did you mean 'spec-bench'"):
        resolve_benchmark("spec_bench")
    with pytest.raises(BenchmarkError, match="no named benchmark 'mtbench'; did you mean"):
        named_benchmark("mtbench")


@needs_spec_bench
def test_fetch_over_http(server: tuple[str, Path], store: Path) -> None:
    """fetch downloads the pinned file over real HTTP, verifies it and stores it."""
    base, www = server
    _publish(www, SPEC, SPEC_BENCH.read_bytes())
    path = fetch_benchmark("spec-bench", url_base=base)
    assert path.read_bytes() == SPEC_BENCH.read_bytes()
    assert _files(store) == [path]
    assert len(load_benchmark(resolve_benchmark("spec-bench"))) == 480


def test_fetch_refuses_a_corrupted_copy(server: tuple[str, Path], store: Path) -> None:
    """A download with the wrong checksum is refused with both checksums; nothing is stored."""
    base, www = server
    _publish(www, SPEC, _corrupted())
    with pytest.raises(BenchmarkError) as caught:
        fetch_benchmark("spec-bench", url_base=base)
    message = str(caught.value)
    assert SPEC.url(base) in message
    assert hashlib.sha256(_corrupted()).hexdigest() in message
    assert SPEC.sha256 in message
    assert _files(store) == []
    assert state(SPEC) == "missing"


def test_fetch_reports_an_http_error(server: tuple[str, Path], store: Path) -> None:
    """A 404 is a BenchmarkError naming the URL and the offline way."""
    base, _www = server
    with pytest.raises(BenchmarkError, match="could not download mt-bench") as caught:
        fetch_benchmark("mt-bench", url_base=base)
    assert "404" in str(caught.value)
    assert "`specdec benchmarks add mt-bench FILE`" in str(caught.value)
    assert _files(store) == []


@needs_spec_bench
def test_fetch_keeps_a_verified_copy_without_downloading() -> None:
    """A stored, verified copy is kept: no request is made (the URL here answers nothing)."""
    path = add_benchmark("spec-bench", SPEC_BENCH)
    assert fetch_benchmark("spec-bench", url_base="http://127.0.0.1:9", timeout_s=1) == path


def test_the_url_base_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """$SPECDEC_BENCHMARK_URL_BASE replaces GitHub's raw host; a parameter beats both."""
    monkeypatch.setenv(URL_BASE_ENV, "http://mirror.example/raw/")
    assert MT.url() == f"http://mirror.example/raw/lm-sys/FastChat/{MT.revision}/{MT.file}"
    assert MT.url("http://other").startswith("http://other/lm-sys/")


def test_a_study_precheck_names_a_missing_benchmark() -> None:
    """study.check_item resolves the benchmark with the same resolver as a run."""
    problems = check_item({"benchmark": {"path": "spec-bench"}})
    assert len(problems) == 1
    assert "specdec benchmarks fetch spec-bench" in problems[0]
    assert check_item({"benchmark": {"path": "anything.jsonl"}}) == []


@needs_spec_bench
def test_a_run_reads_the_stored_copy(tmp_path: Path) -> None:
    """benchmark.path=spec-bench runs the stored file and records its path; a study accepts it."""
    StandInEngine.reset()
    path = add_benchmark("spec-bench", SPEC_BENCH)
    assert check_item({"benchmark": {"path": "spec-bench"}}) == []
    config = load_config(None, ["benchmark.path=spec-bench", "benchmark.limit=3",
                                "benchmark.categories=[math]"])
    result = run_experiment(config, tmp_path / "run", engine_factory=StandInEngine)
    assert result.config.benchmark.path == str(path)
    assert len(result.records) == 3
    assert {r.category for r in result.records} == {"math"}


def _app() -> App:
    """A fresh ``specdec`` application with only this plugin's commands added."""
    app = cli._new_app("specdec", None)
    BenchmarksCommand().register(app)
    return app


def test_the_plugin_is_declared_as_a_builtin_command() -> None:
    """pyproject.toml declares it in specdec.commands, and it is a CommandPlugin."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    target = project["project"]["entry-points"]["specdec.commands"]["benchmarks"]
    assert target == "specdec.benchmark_commands:BenchmarksCommand"
    assert isinstance(BenchmarksCommand(), CommandPlugin)


def test_list_when_nothing_is_stored(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    """list shows every name, its source and revision, and how to get it; paths are whole."""
    assert cli.invoke(_app, ["benchmarks", "list"]) == 0
    out = capsys.readouterr().out
    for bench in BENCHMARKS.values():
        assert f"{bench.name}: {bench.title}, {bench.questions} questions" in out
        assert f"  revision    {bench.revision}\n" in out
        assert f"  file        {bench.file}\n" in out
        assert f"  path        {bench.path}\n" in out
        assert f"  get it      specdec benchmarks fetch {bench.name}\n" in out
    assert out.count("not here") == len(BENCHMARKS)
    too_wide = [line for line in out.splitlines()
                if len(line) > 80 and not line.startswith("  path ")]
    assert too_wide == []


@needs_spec_bench
def test_add_and_list_through_the_cli(capsys: pytest.CaptureFixture[str], store: Path,
                                      tmp_path: Path) -> None:
    """add imports a copy (exit 0); a wrong one exits 1 with both checksums; list shows it."""
    assert cli.invoke(_app, ["benchmarks", "add", "spec-bench", str(SPEC_BENCH)]) == 0
    assert capsys.readouterr().out == (
        f"spec-bench: imported {SPEC_BENCH}, sha256 verified: {SPEC.path}\n")
    bad = tmp_path / "mt.jsonl"
    bad.write_bytes(_corrupted())
    assert cli.invoke(_app, ["benchmarks", "add", "mt-bench", str(bad)]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("specdec: error: ")
    assert MT.sha256 in err
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in err
    assert cli.invoke(_app, ["benchmarks", "list"]) == 0
    out = capsys.readouterr().out
    spec_part, mt_part = out.split("\nmt-bench: ")
    assert "  state       present, sha256 verified\n" in spec_part
    assert "get it" not in spec_part
    assert "  state       not here\n" in mt_part


@needs_spec_bench
def test_fetch_through_the_cli(capsys: pytest.CaptureFixture[str], server: tuple[str, Path],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """fetch downloads from $SPECDEC_BENCHMARK_URL_BASE; again, it keeps the verified copy."""
    base, www = server
    _publish(www, SPEC, SPEC_BENCH.read_bytes())
    _publish(www, MT, _corrupted())
    monkeypatch.setenv(URL_BASE_ENV, base)
    assert cli.invoke(_app, ["benchmarks", "fetch", "spec-bench"]) == 0
    assert capsys.readouterr().out == (
        f"spec-bench: downloaded from {SPEC.url()}, sha256 verified: {SPEC.path}\n")
    assert cli.invoke(_app, ["benchmarks", "fetch", "spec-bench"]) == 0
    assert capsys.readouterr().out == f"spec-bench: already here, sha256 verified: {SPEC.path}\n"
    assert cli.invoke(_app, ["benchmarks", "fetch", "mt-bench"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert MT.sha256 in err
    assert "nothing was stored" in err
    assert not MT.path.exists()


def test_cli_errors_for_unknown_names_and_missing_arguments(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown name exits 1 with the names there are; a missing argument is a usage error."""
    assert cli.invoke(_app, ["benchmarks", "fetch", "humaneval"]) == cli.EXIT_FAILED
    assert "no named benchmark 'humaneval'" in capsys.readouterr().err
    assert cli.invoke(_app, ["benchmarks", "add", "spec-bench"]) == cli.EXIT_USAGE
    assert cli.invoke(_app, ["benchmarks", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("fetch", "add", "list", "spec-bench"):
        assert word in out


def test_describe_a_changed_copy(store: Path) -> None:
    """A changed copy is shouted about, with the way to restore it."""
    stored = next(s for s in list_benchmarks() if s.benchmark.name == "mt-bench")
    text = describe(benchmark_store.StoredBenchmark(stored.benchmark, "changed", stored.path))
    assert "CHANGED since it was stored" in text
    assert "  get it      specdec benchmarks fetch mt-bench\n" in text
    assert f"  path        {stored.path}\n" in text
