"""Commands from plugin packages: the ``specdec.commands`` entry-point group.

A package adds sub-commands to ``specdec`` the way llm plugins do with
``register_commands``: it declares a class in the group ``specdec.commands``;
the CLI creates it with no arguments and calls ``register(app)`` with the
``specdec`` cyclopts application, which adds its commands there (for example
``specdec train`` from ``plugins/specdec-train``).  The core package imports
nothing from such a package.

Command plugins load through the same :class:`~specdec.registry.Registry` as
strategies, benchmark formats and sinks, so ``SPECDEC_PLUGINS`` filters them
too, and a broken one is a warning, never the end of the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import structlog

from specdec.errors import PluginError
from specdec.registry import PluginKind, Registry

if TYPE_CHECKING:
    import cyclopts

log = structlog.get_logger("specdec.commands")


@runtime_checkable
class CommandPlugin(Protocol):
    """A plugin that adds commands to the ``specdec`` command line."""

    name: str
    plugin_api_version: int

    def register(self, app: cyclopts.App) -> None:
        """Add this plugin's commands to ``app`` (the ``specdec`` application)."""


COMMAND = PluginKind("command", "specdec.commands", CommandPlugin)
"""The plugin kind of command plugins."""

command_plugins = Registry(COMMAND)
"""The installed command plugins, discovered on first use."""


def register_commands(app: cyclopts.App, plugins: Registry = command_plugins) -> list[str]:
    """Let every enabled command plugin add its commands to ``app``.

    A plugin that fails to load, does not satisfy :class:`CommandPlugin`, or
    raises in ``register`` is skipped with one warning; the others, and the
    core commands, keep working.  Returns the names of the plugins that
    registered.
    """
    registered: list[str] = []
    for name in plugins.names():
        try:
            plugin = plugins.create(name)
        except PluginError as exc:
            # The registry logs a plugin that fails to import (raising from that error);
            # one refused for its interface or API version it only raises: say it once.
            if exc.__cause__ is None:
                log.warning("command plugin skipped: its commands are not available",
                            plugin=name, error=str(exc))
            continue
        try:
            plugin.register(app)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not take the CLI down
            log.warning("command plugin skipped: its register(app) failed, so its commands "
                        "may be missing or incomplete", plugin=name,
                        error=f"{type(exc).__name__}: {exc}")
            continue
        registered.append(name)
    return registered
