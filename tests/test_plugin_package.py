"""A real third-party plugin package, pip-installed into the test environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from specdec import registry

from .conftest import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_plugin"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def plugin_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the plugin's source, so no build artefacts land in the checkout."""
    build = tmp_path_factory.mktemp("tiny_plugin")
    shutil.copytree(FIXTURE, build, dirs_exist_ok=True)
    return build


@pytest.fixture(scope="module")
def installed_plugin(plugin_source: Path) -> Iterator[Path]:
    """Install the tiny plugin package for the tests of this module, then remove it."""
    _pip("install", "--no-deps", "--no-build-isolation", str(plugin_source))
    try:
        yield plugin_source
    finally:
        _pip("uninstall", "-y", "specdec-tiny-plugin")


def test_installed_plugin_is_discovered(installed_plugin: Path) -> None:
    """An installed package's entry point is found with its package and version."""
    infos = {i.name: i for i in registry.strategies.infos()}
    assert infos["tiny"].package == "specdec-tiny-plugin"
    assert infos["tiny"].version == "0.1.0"
    assert not infos["tiny"].builtin
    assert infos["tiny"].error is None
    config = registry.strategies.create("tiny").speculative_config(None, None)
    assert config["num_speculative_tokens"] == 2


def test_plugins_command_shows_it_and_forgets_it(installed_plugin: Path) -> None:
    """`specdec plugins` lists the package; SPECDEC_PLUGINS can leave it out."""
    shown = run_cli("specdec", "plugins", env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    line = next(ln for ln in shown.stdout.splitlines() if " tiny " in ln)
    assert "specdec-tiny-plugin" in line
    assert "0.1.0" in line
    filtered = run_cli("specdec", "plugins", env={"COLUMNS": "200", "SPECDEC_PLUGINS": "other"})
    line = next(ln for ln in filtered.stdout.splitlines() if " tiny " in ln)
    assert "not enabled by SPECDEC_PLUGINS" in line


def test_uninstalled_plugin_is_gone(installed_plugin: Path) -> None:
    """After uninstalling, the plugin no longer appears (then it is reinstalled)."""
    _pip("uninstall", "-y", "specdec-tiny-plugin")
    try:
        shown = run_cli("specdec", "plugins", env={"COLUMNS": "200"})
        assert " tiny " not in shown.stdout
        assert "ngram" in shown.stdout
    finally:
        _pip("install", "--no-deps", "--no-build-isolation", str(installed_plugin))
