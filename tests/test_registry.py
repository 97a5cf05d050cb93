"""The plugin registry, driven by fake entry points."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from structlog.testing import capture_logs

from specdec import registry
from specdec.errors import PluginError, UnknownPluginError
from specdec.registry import PLUGIN_API_VERSION, STRATEGY, Registry


class _Dist:
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version


def _ep(name: str, value: str, package: str = "thirdparty", version: str = "1.0") -> EntryPoint:
    ep = EntryPoint(name, value, STRATEGY.group)
    # EntryPoint is immutable; its distribution is set the way importlib does.
    return ep._for(_Dist(package, version))  # type: ignore[attr-defined, no-any-return]


class GoodStrategy:
    name = "good"
    plugin_api_version = PLUGIN_API_VERSION
    options_type = dict

    def check(self, options: Any, target: Any) -> None:
        return None

    def speculative_config(self, options: Any, target: Any) -> dict[str, Any] | None:
        return None


class IncompleteStrategy:
    name = "incomplete"
    plugin_api_version = PLUGIN_API_VERSION


class FutureStrategy(GoodStrategy):
    plugin_api_version = PLUGIN_API_VERSION + 1


@pytest.fixture
def fake_module() -> Iterator[str]:
    """A module holding the plugin classes, importable by entry points."""
    module = types.ModuleType("fake_specdec_plugins")
    module.GoodStrategy = GoodStrategy  # type: ignore[attr-defined]
    module.IncompleteStrategy = IncompleteStrategy  # type: ignore[attr-defined]
    module.FutureStrategy = FutureStrategy  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module.__name__
    del sys.modules[module.__name__]


def _registry(*eps: EntryPoint) -> Registry:
    return Registry(STRATEGY, lambda _group: list(eps))


def test_discovers_and_creates(fake_module: str) -> None:
    """A plugin named by an entry point is created and checked."""
    reg = _registry(_ep("good", f"{fake_module}:GoodStrategy"))
    assert reg.names() == ["good"]
    assert isinstance(reg.create("good"), GoodStrategy)


def test_loading_is_lazy(fake_module: str) -> None:
    """Listing names imports nothing; only create() imports the named plugin."""
    reg = _registry(_ep("good", f"{fake_module}:GoodStrategy"),
                    _ep("missing", "no_such_module_xyz:Thing"))
    assert reg.names() == ["good", "missing"]
    reg.create("good")  # the broken one is never imported


def test_unknown_name_lists_close_matches(fake_module: str) -> None:
    """An unknown name names the kind, close matches and what exists."""
    reg = _registry(_ep("good", f"{fake_module}:GoodStrategy"))
    with pytest.raises(UnknownPluginError) as info:
        reg.create("goood")
    message = str(info.value)
    assert "unknown strategy 'goood'" in message
    assert "Did you mean 'good'?" in message
    assert "Available: good." in message


def test_broken_plugin_logged_once_and_others_load(fake_module: str) -> None:
    """An import failure is logged once, raised as PluginError, and does not stop others."""
    reg = _registry(_ep("good", f"{fake_module}:GoodStrategy"),
                    _ep("broken", "no_such_module_xyz:Thing"))
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(PluginError, match="failed to load: ModuleNotFoundError"):
                reg.create("broken")
        infos = {i.name: i for i in reg.infos()}
    assert [entry["event"] for entry in logs] == ["plugin failed to load"]
    assert infos["broken"].error is not None
    assert infos["good"].error is None
    assert isinstance(reg.create("good"), GoodStrategy)


def test_duplicate_names_are_an_error_naming_both(fake_module: str) -> None:
    """Two packages registering one name is an error that names both."""
    reg = _registry(_ep("good", f"{fake_module}:GoodStrategy", package="alpha"),
                    _ep("good", f"{fake_module}:GoodStrategy", package="beta", version="2.0"))
    with pytest.raises(PluginError) as info:
        reg.create("good")
    assert "alpha 1.0" in str(info.value)
    assert "beta 2.0" in str(info.value)


def test_same_distribution_twice_is_one_plugin(fake_module: str) -> None:
    """A distribution seen twice on sys.path is not a duplicate."""
    ep = _ep("good", f"{fake_module}:GoodStrategy")
    reg = _registry(ep, ep)
    assert isinstance(reg.create("good"), GoodStrategy)



def test_registering_an_installed_plugin_again_replaces_it() -> None:
    """add() of the class an installed package already registers, under that package's
    name, is that plugin (as a test registering a plugin beside its installed copy does);
    another package's class under the same name is still a duplicate."""
    target = f"{GoodStrategy.__module__}:{GoodStrategy.__qualname__}"
    reg = _registry(_ep("good", target, package="alpha"))
    reg.add("good", GoodStrategy, "alpha")
    assert isinstance(reg.create("good"), GoodStrategy)
    reg.add("good", GoodStrategy, "beta")
    with pytest.raises(PluginError, match="more than one package"):
        reg.create("good")

def test_interface_is_checked(fake_module: str) -> None:
    """An object missing interface members is refused, naming them."""
    reg = _registry(_ep("incomplete", f"{fake_module}:IncompleteStrategy"))
    with pytest.raises(PluginError) as info:
        reg.create("incomplete")
    message = str(info.value)
    assert "does not satisfy the SpeculationStrategy interface" in message
    assert "missing check, options_type, speculative_config" in message


def test_api_version_is_checked(fake_module: str) -> None:
    """A plugin made for another plugin API version is refused with both versions."""
    reg = _registry(_ep("future", f"{fake_module}:FutureStrategy"))
    with pytest.raises(PluginError, match=f"targets plugin API version {PLUGIN_API_VERSION + 1}"):
        reg.create("future")


def test_env_filter_restricts_third_party(fake_module: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SPECDEC_PLUGINS restricts third-party plugins; built-ins always load."""
    reg = _registry(
        _ep("good", f"{fake_module}:GoodStrategy", package="alpha"),
        _ep("other", f"{fake_module}:GoodStrategy", package="beta"),
        _ep("builtin", f"{fake_module}:GoodStrategy", package=registry.DISTRIBUTION),
    )
    monkeypatch.setenv("SPECDEC_PLUGINS", "good")
    assert reg.names() == ["builtin", "good"]
    with pytest.raises(UnknownPluginError, match="not enabled by SPECDEC_PLUGINS"):
        reg.create("other")
    monkeypatch.setenv("SPECDEC_PLUGINS", "beta")
    assert reg.names() == ["builtin", "other"]


def test_env_filter_resolves_duplicates(fake_module: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """SPECDEC_PLUGINS can pick one of two packages registering one name."""
    reg = _registry(_ep("good", f"{fake_module}:GoodStrategy", package="alpha"),
                    _ep("good", f"{fake_module}:GoodStrategy", package="beta"))
    monkeypatch.setenv("SPECDEC_PLUGINS", "beta")
    infos = reg.infos()
    assert [(i.package, i.enabled) for i in infos] == [("alpha", False), ("beta", True)]
    assert isinstance(reg.create("good"), GoodStrategy)


def test_env_filter_names_that_match_nothing_warn(fake_module: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A name in SPECDEC_PLUGINS that is no plugin or package: a warning, with close matches."""
    strategies = _registry(_ep("good", f"{fake_module}:GoodStrategy", package="alpha-sink"))
    sinks = Registry(registry.SINK, lambda _group: [])
    monkeypatch.delenv("SPECDEC_PLUGINS", raising=False)
    assert registry.unmatched_filter([strategies, sinks]) == []
    monkeypatch.setenv("SPECDEC_PLUGINS", "good, alpha-snik ,nothing")
    assert registry.unmatched_filter([strategies, sinks]) == [
        ("alpha-snik", ["alpha-sink"]), ("nothing", [])]
    with capture_logs() as logs:
        registry.warn_unmatched_filter([strategies, sinks])
    assert [(e["log_level"], e["name"], e["did_you_mean"]) for e in logs] == [
        ("warning", "alpha-snik", ["alpha-sink"]), ("warning", "nothing", None)]
    assert "SPECDEC_PLUGINS names no installed plugin or package" in logs[0]["event"]


def test_strategy_options_are_structured_strictly() -> None:
    """The options check a study runs before any item: its options_type, strictly."""
    from specdec.errors import ConfigError

    _strategy, options = registry.strategy_options("ngram", {"num_speculative_tokens": 3})
    assert options.num_speculative_tokens == 3
    with pytest.raises(ConfigError, match=r"extra fields found \(k\).*@ \$\.strategy"):
        registry.strategy_options("ngram", {"k": 3})
    with pytest.raises(UnknownPluginError):
        registry.strategy_options("ngarm", {})


def test_builtins_load_through_entry_points() -> None:
    """Every built-in is declared as an entry point of specdec-study and loads."""
    expected = {
        "strategy": {"none", "ngram", "draft_model", "eagle", "eagle3", "mtp", "suffix", "raw",
                     "ngram_gpu", "dflash", "dspark"},
        "benchmark format": {"prompts", "questions", "chat"},
        # The run folder's files are always written, not sinks (issue 11).
        "sink": {"log"},
        "engine": {"offline", "server"},
        "executor": {"local", "ray"},
    }
    for reg in registry.all_registries():
        infos = [i for i in reg.infos() if i.builtin]
        assert {i.name for i in infos} == expected[reg.kind.name]
        assert all(i.error is None and i.package == "specdec-study" for i in infos)
