"""Finding, loading and describing plugins.

Plugins are found through the ``chatcore`` entry-point group. The bundled
plugins are registered through that same group by chatcore's own
pyproject.toml, so a plugin installed with pip is selected and loaded exactly
like a bundled one. ``--plugins`` also accepts a dotted module name, for a
plugin under development that is importable but not installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from chatcore import hookspecs
from chatcore.errors import UsageError
from chatcore.hooks import Hooks

ENTRY_POINT_GROUP = "chatcore"
#: Always registered, whatever ``--plugins`` says: the commands every chat
#: needs. They are ordinary plugins all the same.
BUILTIN_PLUGINS = ("commands", "native", "opers")
#: What ``chatcore serve`` loads when ``--plugins`` is not given.
DEFAULT_PLUGINS = ("welcome",)


#: The attribute a plugin sets true when it may be loaded and unloaded
#: while the server runs (a reload, SIGHUP, with a changed ``plugins``
#: list): its ``chatcore_configure`` and ``chatcore_server_start`` may then
#: be called on a running server, and its ``chatcore_server_stop`` undoes
#: all they did. A plugin that adds listener schemes, a backplane or an
#: account service never can: those are set up once, at the start.
UNLOADABLE = "UNLOADABLE"


def unloadable(plugin: object) -> bool:
    """Whether ``plugin`` says it may be loaded and unloaded while running."""
    return getattr(plugin, UNLOADABLE, False) is True


def find_plugin(name: str) -> object:
    """The plugin object ``name`` selects (a module, usually), as
    :func:`load_plugins` would register it, without registering it.

    :raises UsageError: no such plugin.
    :raises PluginLoadError: it fails to import.
    """
    available = entry_points()
    try:
        if name in available:
            return available[name].load()
        if "." in name and all(part.isidentifier() for part in name.split(".")):
            return importlib.import_module(name)
    except Exception as exc:
        raise PluginLoadError(f"plugin {name!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
    raise UsageError(f"unknown plugin {name!r}")


class PluginLoadError(Exception):
    """A selected plugin was found but could not be imported."""


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``chatcore`` project, with a typed facade
    (:attr:`hooks`) that is kept in step with registrations."""

    def __init__(self) -> None:
        super().__init__("chatcore")
        self.add_hookspecs(hookspecs)
        self.hooks = Hooks(self)

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        try:
            self._reject_wrappers(plugin)
        except pluggy.PluginValidationError:
            self.unregister(plugin)
            raise
        self.hooks.refresh()
        return registered

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        result = super().unregister(plugin, name)
        self.hooks.refresh()
        return result

    def _reject_wrappers(self, plugin: Any) -> None:
        for caller in self.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                    raise pluggy.PluginValidationError(
                        plugin,
                        f"plugin {impl.plugin_name!r}: {caller.name} is a hook wrapper; "
                        "chatcore calls each implementation on its own and does not support wrappers",
                    )


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed plugins, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def parse_plugin_list(value: str) -> list[str]:
    """``"welcome, logger"`` -> ``["welcome", "logger"]``."""
    return [name.strip() for name in value.split(",") if name.strip()]


def load_plugins(pm: PluginManager, names: Iterable[str]) -> None:
    """Register the built-in plugins and then ``names``, in order.

    :raises UsageError: a name that is neither an installed plugin nor an
        importable module; the message lists the available names.
    :raises PluginLoadError: a plugin that is installed but fails to import.
    """
    available = entry_points()
    for name in (*BUILTIN_PLUGINS, *names):
        if pm.has_plugin(name):
            continue
        if name in available:
            try:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
            except Exception as exc:
                raise PluginLoadError(f"plugin {name!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
        elif "." in name:
            # "." or "./x" is a relative import to importlib (a TypeError), "a..b" no name at all.
            if not all(part.isidentifier() for part in name.split(".")):
                raise UsageError(f"plugin {name!r} is neither an installed plugin nor a module name (like pkg.module)")
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise UsageError(f"plugin module {name!r} could not be imported: {exc}") from exc
            pm.register(module, name=name)
        else:
            choices = ", ".join(sorted(n for n in available if n not in BUILTIN_PLUGINS)) or "none installed"
            raise UsageError(f"unknown plugin {name!r} (available: {choices})")
    pm.check_pending()


@dataclass
class PluginInfo:
    """What ``chatcore plugins`` shows about one plugin."""

    name: str
    version: str
    description: str
    hooks: list[str]
    builtin: bool
    error: str | None = None


def describe_plugins() -> list[PluginInfo]:
    """Load every installed plugin into a scratch manager and describe it."""
    infos = []
    for name, ep in sorted(entry_points().items()):
        version = ep.dist.version if ep.dist is not None else "?"
        pm = PluginManager()
        try:
            plugin = ep.load()
            pm.register(plugin, name=name)
        except Exception as exc:
            infos.append(PluginInfo(name, version, "", [], name in BUILTIN_PLUGINS, f"{type(exc).__name__}: {exc}"))
            continue
        doc = (getattr(plugin, "__doc__", None) or "").strip()
        description = doc.splitlines()[0].rstrip(".") if doc else ""
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        infos.append(PluginInfo(name, version, description, hooks, name in BUILTIN_PLUGINS))
    return infos
