"""Named benchmarks: public question files at a pinned revision, kept under ``SPECDEC_HOME``.

``spec-bench`` and ``mt-bench`` name the ``question.jsonl`` files of Spec-Bench and
MT-Bench at one commit of their repositories, each with its sha256.  Wherever a
benchmark path is accepted (``benchmark.path``, ``--benchmark``) one of these names
is too: :func:`resolve_benchmark` turns a name that is not an existing file into
the stored copy, ``$SPECDEC_HOME/benchmarks/<name>/question.jsonl``.

A copy gets there one of two ways, both verified against the pinned checksum
before anything is written (and written atomically, :mod:`specdec.files`):
:func:`fetch_benchmark` downloads it from its public source (the URL base is
``$SPECDEC_BENCHMARK_URL_BASE``, default ``https://raw.githubusercontent.com``);
:func:`add_benchmark` imports a local copy, for machines without internet.  A
stored copy is verified again each time it is resolved, so a file changed since
is refused rather than measured.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Literal

from attrs import frozen

from specdec.benchmarks.loader import default_benchmark_path
from specdec.errors import BenchmarkError
from specdec.files import atomic_write_bytes, sha256_file
from specdec.models import home

URL_BASE_ENV = "SPECDEC_BENCHMARK_URL_BASE"
"""Replaces :data:`DEFAULT_URL_BASE` in download URLs (a mirror, or a test's server)."""
DEFAULT_URL_BASE = "https://raw.githubusercontent.com"
FILE_NAME = "question.jsonl"
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
"""A download larger than this is not the pinned file: it is stopped, not stored."""
_CHUNK = 1 << 16

State = Literal["verified", "missing", "changed"]


@frozen
class NamedBenchmark:
    """A public benchmark file at a pinned revision of its repository."""

    name: str
    title: str
    repository: str
    """GitHub ``owner/name``."""
    revision: str
    """The commit the file is pinned at."""
    file: str
    """The file's path inside the repository."""
    sha256: str
    licence: str
    questions: int

    @property
    def source(self) -> str:
        """Where the file comes from, for people: repository, file and revision."""
        return f"https://github.com/{self.repository}/blob/{self.revision}/{self.file}"

    @property
    def path(self) -> Path:
        """Where the stored copy lives."""
        return home() / "benchmarks" / self.name / FILE_NAME

    def url(self, base: str | None = None) -> str:
        """The download URL: ``base`` (else :data:`URL_BASE_ENV`, else GitHub's raw files)."""
        root = base or os.environ.get(URL_BASE_ENV) or DEFAULT_URL_BASE
        return f"{root.rstrip('/')}/{self.repository}/{self.revision}/{self.file}"


BENCHMARKS: dict[str, NamedBenchmark] = {
    bench.name: bench
    for bench in (
        NamedBenchmark(
            "spec-bench", "Spec-Bench", "hemingkx/Spec-Bench",
            "66230f10cb0a02aced5ef3ce1e85163c16160454", "data/spec_bench/question.jsonl",
            "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04",
            "Apache-2.0", 480,
        ),
        NamedBenchmark(
            "mt-bench", "MT-Bench", "lm-sys/FastChat",
            "b494d0c6b4e7935f1764f8439e75da3e66beccc7",
            "fastchat/llm_judge/data/mt_bench/question.jsonl",
            "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
            "Apache-2.0", 80,
        ),
    )
}
"""Every named benchmark, by name."""


@frozen
class StoredBenchmark:
    """A named benchmark and what is stored of it on this machine."""

    benchmark: NamedBenchmark
    state: State
    path: Path


def named_benchmark(name: str) -> NamedBenchmark:
    """The named benchmark ``name``.

    Raises:
        BenchmarkError: naming the close matches and every name there is.
    """
    try:
        return BENCHMARKS[name]
    except KeyError:
        close = difflib.get_close_matches(name, BENCHMARKS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        msg = f"no named benchmark {name!r}; {hint}the names are {', '.join(BENCHMARKS)}"
        raise BenchmarkError(msg) from None


def _ways_to_get(bench: NamedBenchmark) -> str:
    return (f"run `specdec benchmarks fetch {bench.name}` (downloads it from {bench.source}), "
            f"or, on a machine without internet, `specdec benchmarks add {bench.name} FILE` "
            f"with a copy of that file (its sha256 must be {bench.sha256})")


def state(bench: NamedBenchmark) -> State:
    """Whether ``bench``'s stored copy is there and has the pinned checksum."""
    try:
        digest = sha256_file(bench.path)
    except FileNotFoundError:
        return "missing"
    except OSError:
        # A folder or an unreadable file where the copy belongs: not the pinned file.
        return "changed"
    return "verified" if digest == bench.sha256 else "changed"


def stored(name: str) -> Path:
    """The verified stored copy of named benchmark ``name``.

    Raises:
        BenchmarkError: if it is not stored yet, or was changed since, saying how to get it.
    """
    bench = named_benchmark(name)
    path = bench.path
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        msg = f"benchmark {name!r} is not on this machine yet ({path}): {_ways_to_get(bench)}"
        raise BenchmarkError(msg) from None
    except OSError as exc:
        raise BenchmarkError(f"{path}: cannot read benchmark {name!r} ({exc})") from exc
    if digest != bench.sha256:
        msg = (f"{path}: benchmark {name!r} was changed since it was stored (sha256 {digest}, "
               f"pinned {bench.sha256}); to restore it, {_ways_to_get(bench)}")
        raise BenchmarkError(msg)
    return path


def resolve_benchmark(value: str | None) -> Path:
    """The file a ``benchmark.path`` value means.

    Unset (or empty): the bundled sample benchmark.  An existing file: that file.  A benchmark
    name (:data:`BENCHMARKS`): its verified stored copy (:func:`stored`).  Anything
    else is returned as a path, for the loader to report if it is missing.

    Raises:
        BenchmarkError: for a named benchmark that is not stored or was changed, and
            for a value that is neither a file nor a name but looks like a misspelt name.
    """
    if not value:
        return default_benchmark_path()
    path = Path(value)
    if path.exists():
        return path
    if value in BENCHMARKS:
        return stored(value)
    close = difflib.get_close_matches(value, BENCHMARKS, n=1)
    if close and not path.suffix and len(path.parts) == 1:
        msg = (f"benchmark {value!r} is neither a file nor a named benchmark; did you mean "
               f"{close[0]!r}? (names: {', '.join(BENCHMARKS)})")
        raise BenchmarkError(msg)
    return path


def _store(bench: NamedBenchmark, data: bytes, origin: str) -> Path:
    """Write ``data`` as ``bench``'s stored copy if it has the pinned checksum."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != bench.sha256:
        msg = (f"{origin}: not the pinned {bench.name} file (its sha256 is {digest}, the pinned "
               f"one is {bench.sha256}); nothing was stored. Use the file {bench.file} of "
               f"{bench.repository} at revision {bench.revision}")
        raise BenchmarkError(msg)
    atomic_write_bytes(bench.path, data)
    return bench.path


def add_benchmark(name: str, source: Path) -> Path:
    """Import a local copy of named benchmark ``name``; the stored path.

    Raises:
        BenchmarkError: if ``source`` cannot be read or is not the pinned file (both
            checksums in the message; nothing is stored).
    """
    bench = named_benchmark(name)
    try:
        data = source.read_bytes()
    except OSError as exc:
        msg = (f"{source}: cannot read it ({exc.strerror or exc}); give the path of a copy of "
               f"{bench.file} from {bench.repository} at revision {bench.revision}")
        raise BenchmarkError(msg) from exc
    return _store(bench, data, str(source))


def fetch_benchmark(name: str, *, url_base: str | None = None,
                    timeout_s: float = 60.0) -> Path:
    """Download named benchmark ``name`` from its public source; the stored path.

    A copy already stored and verified is kept as it is.  The download goes to a
    temporary file and replaces nothing until its checksum is the pinned one.

    Raises:
        BenchmarkError: if the download fails or is not the pinned file (nothing is
            stored, a good stored copy stays).
    """
    import httpx  # noqa: PLC0415 - only a download needs it

    bench = named_benchmark(name)
    if state(bench) == "verified":
        return bench.path
    url = bench.url(url_base)
    offline = f"; or, offline, `specdec benchmarks add {name} FILE`"
    with tempfile.TemporaryDirectory(prefix="specdec-benchmark-") as folder:
        download = Path(folder) / FILE_NAME
        try:
            with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
                response.raise_for_status()
                size = 0
                with download.open("wb") as handle:
                    for chunk in response.iter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > MAX_DOWNLOAD_BYTES:
                            msg = (f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes, which the "
                                   f"pinned {name} file is not; nothing was stored{offline}")
                            raise BenchmarkError(msg)
                        handle.write(chunk)
        except httpx.HTTPError as exc:
            msg = (f"could not download {name} from {url} ({type(exc).__name__}: {exc}); "
                   f"check the connection and run `specdec benchmarks fetch {name}` "
                   f"again{offline}")
            raise BenchmarkError(msg) from exc
        return _store(bench, download.read_bytes(), url)


def list_benchmarks() -> list[StoredBenchmark]:
    """Every named benchmark with the state of its stored copy."""
    return [StoredBenchmark(bench, state(bench), bench.path) for bench in BENCHMARKS.values()]
