"""A real third-party plugin package, pip-installed for these tests only.

It is installed into a temporary folder put on ``sys.path`` and ``PYTHONPATH``
(see :mod:`tests.isolated_install`), so the running environment is never changed,
even if a test fails halfway.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from specdec import registry

from .conftest import run_cli
from .isolated_install import on_path, pip_install, venv_has

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_plugin"
DISTRIBUTION = "specdec-tiny-plugin"

pytestmark = pytest.mark.installs


@pytest.fixture(scope="module")
def plugin_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny plugin built from a copy of its source (no artefacts in the checkout)."""
    build = tmp_path_factory.mktemp("tiny_plugin")
    shutil.copytree(FIXTURE, build, dirs_exist_ok=True)
    target = tmp_path_factory.mktemp("tiny_plugin_installed")
    pip_install(target, build)
    return target


@pytest.fixture
def installed_plugin(plugin_target: Path) -> Iterator[Path]:
    """The tiny plugin installed for one test, and gone after it."""
    with on_path(plugin_target):
        yield plugin_target


def test_installed_plugin_is_discovered(installed_plugin: Path) -> None:
    """An installed package's entry point is found with its package and version."""
    infos = {i.name: i for i in registry.strategies.infos()}
    assert infos["tiny"].package == DISTRIBUTION
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
    assert DISTRIBUTION in line
    assert "0.1.0" in line
    filtered = run_cli("specdec", "plugins", env={"COLUMNS": "200", "SPECDEC_PLUGINS": "other"})
    line = next(ln for ln in filtered.stdout.splitlines() if " tiny " in ln)
    assert "not enabled by SPECDEC_PLUGINS" in line


def test_uninstalled_plugin_is_gone(plugin_target: Path) -> None:
    """Once the package is no longer installed, the plugin no longer appears."""
    with on_path(plugin_target):
        assert "tiny" in {i.name for i in registry.strategies.infos()}
    registry.strategies.reset()
    assert "tiny" not in {i.name for i in registry.strategies.infos()}
    shown = run_cli("specdec", "plugins", env={"COLUMNS": "200"})
    assert " tiny " not in shown.stdout
    assert "ngram" in shown.stdout


def test_the_running_environment_is_untouched(installed_plugin: Path) -> None:
    """While the plugin is installed for the tests, the venv itself does not hold it."""
    assert not venv_has(DISTRIBUTION)
