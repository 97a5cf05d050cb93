"""The plugin registry: one entry-point group per interface, loaded lazily.

Built-in strategies, benchmark formats, sinks and engines are declared in
specdec's own ``pyproject.toml`` and load through exactly the same path as
third-party ones.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import structlog
from attrs import frozen
from typing_extensions import get_protocol_members

from specdec.errors import ConfigError, PluginError, UnknownPluginError
from specdec.interfaces import (
    Benchmark,
    EngineBackend,
    Executor,
    MetricsSink,
    SpeculationStrategy,
)
from specdec.serialization import problems, structure

PLUGIN_API_VERSION = 1
"""The plugin interface version this specdec offers; plugins declare the one they target."""

DISTRIBUTION = "specdec-study"
"""specdec's own distribution name: its plugins are the built-ins."""

ENV_FILTER = "SPECDEC_PLUGINS"

log = structlog.get_logger("specdec.registry")


@frozen
class PluginKind:
    """One kind of plugin: its name for people, its entry-point group and interface."""

    name: str
    group: str
    protocol: type[Any]


STRATEGY = PluginKind("strategy", "specdec.strategies", SpeculationStrategy)
BENCHMARK = PluginKind("benchmark format", "specdec.benchmarks", Benchmark)
SINK = PluginKind("sink", "specdec.sinks", MetricsSink)
ENGINE = PluginKind("engine", "specdec.engines", EngineBackend)
EXECUTOR = PluginKind("executor", "specdec.executors", Executor)
KINDS = (STRATEGY, BENCHMARK, SINK, ENGINE, EXECUTOR)


@frozen
class PluginInfo:
    """What ``specdec plugins`` shows of one plugin."""

    kind: str
    name: str
    target: str
    package: str
    version: str
    builtin: bool
    enabled: bool
    error: str | None = None


@frozen
class _Candidate:
    name: str
    target: str
    package: str
    version: str
    load: Callable[[], Any]

    @property
    def origin(self) -> str:
        return f"{self.package} {self.version} ({self.target})"


EntryPointSource = Callable[[str], Iterable[EntryPoint]]


def _installed(group: str) -> Iterable[EntryPoint]:
    return entry_points(group=group)


def _candidate(ep: EntryPoint) -> _Candidate:
    dist = ep.dist
    package = dist.name if dist is not None else "<unknown package>"
    version = dist.version if dist is not None else "?"
    return _Candidate(ep.name, ep.value, package, version, ep.load)


def _enabled_names() -> frozenset[str] | None:
    raw = os.environ.get(ENV_FILTER)
    if raw is None:
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


class Registry:
    """The plugins of one kind, discovered from entry points on first use.

    ``create(name)`` returns a fresh, checked instance of the named plugin.
    """

    def __init__(self, kind: PluginKind, source: EntryPointSource = _installed) -> None:
        """Make a registry for ``kind`` that reads entry points from ``source``."""
        self.kind = kind
        self._source = source
        self._candidates: dict[str, list[_Candidate]] | None = None
        self._loaded: dict[str, type[Any]] = {}
        self._errors: dict[str, str] = {}

    def reset(self) -> None:
        """Forget what was discovered, so the next call looks again."""
        self._candidates = None
        self._loaded.clear()
        self._errors.clear()

    def add(self, name: str, factory: type[Any], package: str = "<in-process>") -> None:
        """Register ``factory`` under ``name`` from Python code (tests, scripts).

        The same class from the same package, installed too, is one plugin: this
        registration takes its place rather than making the name ambiguous.
        """
        target = f"{factory.__module__}:{factory.__qualname__}"
        cands = self._discover().setdefault(name, [])
        cands[:] = [c for c in cands if (c.package, c.target) != (package, target)]
        cands.append(_Candidate(name, target, package, "-", lambda: factory))
        self._loaded.pop(name, None)

    def _discover(self) -> dict[str, list[_Candidate]]:
        if self._candidates is None:
            found: dict[str, list[_Candidate]] = {}
            seen: set[tuple[str, str, str]] = set()
            for ep in self._source(self.kind.group):
                cand = _candidate(ep)
                key = (cand.name, cand.package, cand.target)
                if key in seen:
                    # The same distribution seen twice on sys.path is one plugin.
                    continue
                seen.add(key)
                found.setdefault(cand.name, []).append(cand)
            self._candidates = found
        return self._candidates

    @staticmethod
    def _is_enabled(cand: _Candidate) -> bool:
        allowed = _enabled_names()
        if allowed is None or cand.package == DISTRIBUTION:
            return True
        return cand.name in allowed or cand.package in allowed

    def names(self) -> list[str]:
        """Names of every enabled plugin of this kind, sorted."""
        return sorted(
            name
            for name, cands in self._discover().items()
            if any(self._is_enabled(c) for c in cands)
        )

    def _unknown(self, name: str) -> UnknownPluginError:
        available = self.names()
        close = difflib.get_close_matches(name, available, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        disabled = [
            c.origin for c in self._discover().get(name, []) if not self._is_enabled(c)
        ]
        if disabled:
            hint += f" It is installed but not enabled by {ENV_FILTER}: {', '.join(disabled)}."
        return UnknownPluginError(
            f"unknown {self.kind.name} {name!r}.{hint} Available: "
            f"{', '.join(available) or 'none'}. Install a package that provides it "
            f"(entry-point group {self.kind.group!r}); `specdec plugins` lists what is installed."
        )

    def _resolve(self, name: str) -> _Candidate:
        cands = [c for c in self._discover().get(name, []) if self._is_enabled(c)]
        if not cands:
            raise self._unknown(name)
        if len(cands) > 1:
            origins = " and ".join(c.origin for c in cands)
            msg = (
                f"{self.kind.name} {name!r} is registered by more than one package: "
                f"{origins}. Uninstall one, or choose with {ENV_FILTER}."
            )
            raise PluginError(msg)
        return cands[0]

    def load(self, name: str) -> type[Any]:
        """Import and check the plugin class registered as ``name``."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self._errors:
            raise PluginError(self._errors[name])
        cand = self._resolve(name)
        try:
            factory: type[Any] = cand.load()
            instance = factory()
        except Exception as exc:
            message = (
                f"{self.kind.name} {name!r} from {cand.origin} failed to load: "
                f"{type(exc).__name__}: {exc}"
            )
            self._errors[name] = message
            log.warning("plugin failed to load", kind=self.kind.name, plugin=name,
                        package=cand.package, error=f"{type(exc).__name__}: {exc}")
            raise PluginError(message) from exc
        problem = self._check(instance)
        if problem is not None:
            message = f"{self.kind.name} {name!r} from {cand.origin} {problem}"
            self._errors[name] = message
            raise PluginError(message)
        self._loaded[name] = factory
        return factory

    def _check(self, instance: Any) -> str | None:
        members = sorted(get_protocol_members(self.kind.protocol))
        missing = [m for m in members if not hasattr(instance, m)]
        if missing:
            return (
                f"does not satisfy the {self.kind.protocol.__name__} interface: "
                f"missing {', '.join(missing)} (see docs/plugins.md)."
            )
        version = instance.plugin_api_version
        if version != PLUGIN_API_VERSION:
            return (
                f"targets plugin API version {version!r}, but this specdec offers "
                f"version {PLUGIN_API_VERSION}: install a release of the plugin made for "
                f"API {PLUGIN_API_VERSION}, or a specdec that offers API {version!r}."
            )
        return None

    def create(self, name: str) -> Any:
        """Return a fresh instance of the plugin registered as ``name``."""
        return self.load(name)()

    def infos(self) -> list[PluginInfo]:
        """Every discovered plugin with its package, version and any load error."""
        out: list[PluginInfo] = []
        for name, cands in sorted(self._discover().items()):
            enabled = [c for c in cands if self._is_enabled(c)]
            error: str | None = None
            if enabled:
                try:
                    self.load(name)
                except PluginError as exc:
                    error = str(exc)
            out.extend(
                PluginInfo(
                    kind=self.kind.name,
                    name=name,
                    target=c.target,
                    package=c.package,
                    version=c.version,
                    builtin=c.package == DISTRIBUTION,
                    enabled=c in enabled,
                    error=error if c in enabled else f"not enabled by {ENV_FILTER}",
                )
                for c in cands
            )
        return out


strategies = Registry(STRATEGY)
benchmarks = Registry(BENCHMARK)
sinks = Registry(SINK)
engines = Registry(ENGINE)
executors = Registry(EXECUTOR)


def all_registries() -> tuple[Registry, ...]:
    """The registry of every plugin kind."""
    return (strategies, benchmarks, sinks, engines, executors)


def unmatched_filter(registries: Iterable[Registry]) -> list[tuple[str, list[str]]]:
    """The names in ``SPECDEC_PLUGINS`` that match no installed plugin or package.

    Each comes with its close matches among the plugin and package names of
    ``registries``.  Empty when the variable is not set.
    """
    allowed = _enabled_names()
    if not allowed:
        return []
    known: set[str] = set()
    for reg in registries:
        for name, cands in reg._discover().items():  # noqa: SLF001 - one module's registries
            known.add(name)
            known.update(c.package for c in cands)
    return [(name, difflib.get_close_matches(name, sorted(known), n=3))
            for name in sorted(allowed - known)]


def warn_unmatched_filter(registries: Iterable[Registry]) -> None:
    """Warn once per name of ``SPECDEC_PLUGINS`` that enables nothing (a typo, say).

    Such a name would silently leave the plugin it meant disabled.
    """
    for name, close in unmatched_filter(registries):
        log.warning("SPECDEC_PLUGINS names no installed plugin or package: it enables "
                    "nothing (`specdec plugins` lists what is installed)", name=name,
                    did_you_mean=close or None)


def strategy_options(name: str, options: Mapping[str, Any],
                     path: str = "$.strategy") -> tuple[Any, Any]:
    """The strategy plugin called ``name`` and ``options`` structured as its ``options_type``.

    Strict, as a run structures them (unknown keys and values its validators refuse
    are errors), and without starting anything: a study checks every item's
    options this way before the first runs.

    Raises:
        UnknownPluginError: no strategy is called ``name``.
        ConfigError: the options do not fit (one ``message @ path`` per problem).
    """
    strategy = strategies.create(name)
    try:
        structured = structure(dict(options), strategy.options_type)
    except Exception as exc:  # every structuring failure is a config problem
        raise ConfigError(f"strategy {name!r}", problems(exc, path)) from exc
    return strategy, structured
