"""Commands from plugin packages: the ``specdec.commands`` entry-point group.

A package adds sub-commands to ``specdec`` the way llm plugins do with
``register_commands``: it declares a class in the group ``specdec.commands``;
the CLI creates it with no arguments and calls ``register(app)`` with the
``specdec`` cyclopts application, which adds its commands there (for example
``specdec train`` from ``plugins/specdec-train``).  The core package imports
nothing from such a package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import cyclopts


@runtime_checkable
class CommandPlugin(Protocol):
    """A plugin that adds commands to the ``specdec`` command line."""

    name: str
    plugin_api_version: int

    def register(self, app: cyclopts.App) -> None:
        """Add this plugin's commands to ``app`` (the ``specdec`` application)."""
