"""Reloading a running server's configuration (SIGHUP: ``chatcore serve`` calls
:func:`reload_configuration`).

All or nothing: the new options are checked first (the file, the TLS
certificate, every plugin's ``chatcore_reload``, the configuration of the
plugins to load), and any problem is logged and keeps the running
configuration. Options marked ``restart_only`` (listeners ...) are logged
as "needs a restart" and keep their running values. A changed ``plugins``
list is applied at once when every plugin it adds or takes away is
unloadable (:data:`chatcore.manager.UNLOADABLE`: it says so); otherwise
each that is not is named in the log as needing a restart, and the running
plugins are kept. Of the engine's own options, ``--max-clients`` and the
abuse limits apply at once, ``--max-line``, ``--max-queue`` and ``--max-sendq`` to new
connections, the TLS certificate to new connections, ``--log-level`` at once.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from chatcore.config import read_password, reread_options
from chatcore.configfile import is_restart_only
from chatcore.errors import UsageError
from chatcore.hooks import Hooks, PluginError
from chatcore.manager import BUILTIN_PLUGINS, PluginLoadError, PluginManager, find_plugin, unloadable
from chatcore.transports.tls import server_context

if TYPE_CHECKING:
    from chatcore.config import Config
    from chatcore.engine.server import ChatServer

log = logging.getLogger("chatcore.server")


def reload_configuration(server: ChatServer) -> bool:
    """Read ``server``'s configuration again and apply what can change
    while running.

    :return: True if the new configuration is in use.
    """
    config = server.config
    old = config.options
    try:
        # A new selection of plugins shows as --plugins, restart only.
        fresh, parser, names = reread_options(config)
        new, changed, restart = merge_options(old, fresh, parser)
        plugins = plan_plugins(config, names)
        if plugins.live:
            plugins.take_options(old, fresh, new, changed, restart)
        context = _check_certificate(server, new)
        password = read_password(new, config.environ)
        appliers = server.hooks.reload(server, old, new)
        plugins.configure(config, new)
    except (UsageError, PluginError) as exc:
        config.last_reload_successful = False
        log.error(
            "reload failed: %s; the running configuration is kept",
            exc,
            extra={"event": "reload_failed", "error": str(exc)},
        )
        return False
    for name in plugins.blocked:
        log.warning(
            "reload: plugin %s cannot be loaded or unloaded while running: the new plugins list needs a restart",
            name,
            extra={"event": "reload_needs_restart", "plugin": name},
        )
    for name in restart:
        log.warning(
            "reload: %s changed: needs a restart; left unchanged",
            name,
            extra={"event": "reload_needs_restart", "option": name},
        )
    config.options = new
    server.apply_options(new, password)
    if new.log_level != old.log_level:
        logging.getLogger("chatcore").setLevel(new.log_level)
    if context is not None and server.certificates is not None:
        server.certificates.use(new.tls_cert, new.tls_key, context)
    server.hooks.apply_reload(appliers)
    plugins.apply(server)
    config.last_reload_successful = True
    config.last_reload_success_time = time.time()
    log.info(
        "configuration reloaded: %s",
        ", ".join(changed) + " changed" if changed else "nothing changed",
        extra={"event": "reloaded", "changed": changed},
    )
    return True


@dataclass
class PluginChange:
    """What a reload does to the running plugins: the new selection
    (``names``), the plugins it loads (``added``, configured by
    :meth:`configure`) and unloads (``removed``), or those of them that
    cannot be (``blocked``: nothing changes then)."""

    names: list[str]
    added: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        """Whether plugins are loaded or unloaded now."""
        return bool(self.added or self.removed) and not self.blocked

    def take_options(
        self,
        old: argparse.Namespace,
        fresh: argparse.Namespace,
        new: argparse.Namespace,
        changed: list[str],
        restart: list[str],
    ) -> None:
        """The added plugins' options (:func:`merge_options` leaves out
        what the running plugins do not have), and ``--plugins`` changed
        rather than waiting for a restart."""
        for dest, value in vars(fresh).items():
            if not hasattr(old, dest):
                setattr(new, dest, value)
        if "--plugins" in restart:
            restart.remove("--plugins")
            changed.append("--plugins")

    def configure(self, config: Config, new: argparse.Namespace) -> None:
        """Configure each plugin to load, with the new options, before it
        is registered (so no client's hook reaches it half made).

        :raises UsageError: a plugin refused its options.
        :raises PluginError: a plugin failed.
        """
        if not self.live:
            return
        running = config.options
        config.options = new  # what the plugins read in chatcore_configure
        try:
            for name, plugin in self.added.items():
                _alone(name, plugin).call_plugin(name, "chatcore_configure", config)
        finally:
            config.options = running

    def apply(self, server: ChatServer) -> None:
        """Unload the plugins taken away (unregistered, then stopped) and
        load the added ones (registered, then started)."""
        if not self.live:
            return
        config = server.config
        pm = config.pluginmanager
        for name in self.removed:
            plugin = pm.unregister(name=name)
            try:
                _alone(name, plugin).call_plugin(name, "chatcore_server_stop", server)
            except Exception as exc:
                log.error("reload: plugin %s failed to stop (%s); it is unloaded all the same", name, exc)
            config.data.pop(name, None)  # no other plugin finds its state (the api reads history's)
        for name, plugin in self.added.items():
            pm.register(plugin, name=name)
            try:
                pm.hooks.call_plugin(name, "chatcore_server_start", server)
            except Exception as exc:
                log.error("reload: plugin %s failed to start (%s); it is unloaded again", name, exc)
                pm.unregister(name=name)
                self.names.remove(name)
        config.plugins = self.names
        log.info(
            "reload: plugins %s",
            "; ".join(
                part
                for part in (
                    f"loaded {', '.join(self.added)}" if self.added else "",
                    f"unloaded {', '.join(self.removed)}" if self.removed else "",
                )
                if part
            ),
            extra={"event": "plugins_reloaded", "loaded": list(self.added), "unloaded": self.removed},
        )


def plan_plugins(config: Config, names: list[str]) -> PluginChange:
    """What a reload with the plugins ``names`` does to the running ones
    (``config.plugins``). The built-in plugins are always loaded; a change
    of order alone is left to :func:`merge_options` ("needs a restart").

    :raises UsageError: a plugin to load cannot be found or imported.
    """
    change = PluginChange(list(names))
    running = config.plugins
    pm = config.pluginmanager
    change.removed = [name for name in running if name not in names and name not in BUILTIN_PLUGINS]
    for name in names:
        if name in running or name in BUILTIN_PLUGINS or pm.has_plugin(name):
            continue
        try:
            change.added[name] = find_plugin(name)
        except PluginLoadError as exc:
            raise UsageError(str(exc)) from None
    change.blocked = [name for name in change.removed if not unloadable(pm.get_plugin(name))]
    change.blocked += [name for name, plugin in change.added.items() if not unloadable(plugin)]
    return change


def _alone(name: str, plugin: object) -> Hooks:
    """Hooks that call ``plugin`` alone: to configure or stop it while it
    is not among the running plugins."""
    pm = PluginManager()
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise UsageError(str(exc)) from None
    return pm.hooks


def _check_certificate(server: ChatServer, options: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context of the reloaded files, or None without TLS listeners.

    :raises UsageError: they cannot be loaded.
    """
    if server.certificates is None:
        return None
    if not options.tls_cert or not options.tls_key:
        raise UsageError("the TLS listeners need --tls-cert and --tls-key, and the new configuration has none")
    try:
        context: ssl.SSLContext = server_context(options.tls_cert, options.tls_key, options.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"TLS certificate reload failed ({getattr(exc, 'strerror', None) or exc}); still using the previous "
            f"certificate. Fix --tls-cert {options.tls_cert} / --tls-key {options.tls_key} and send SIGHUP again"
        ) from None
    return context


def merge_options(
    old: argparse.Namespace, fresh: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[argparse.Namespace, list[str], list[str]]:
    """The running options with what may change taken from ``fresh``.

    :return: the merged options, the options changed, and those that
        changed but need a restart (kept at their running values), by
        their long option names.
    """
    actions = {action.dest: action for action in parser._actions}
    new = argparse.Namespace(**vars(old))
    changed: list[str] = []
    restart: list[str] = []
    for dest, value in vars(fresh).items():
        # An option only the new selection of plugins has is part of
        # "plugins: needs a restart"; one only the old has stays.
        if not hasattr(old, dest) or getattr(old, dest) == value:
            continue
        action = actions.get(dest)
        name = next((o for o in action.option_strings if o.startswith("--")), dest) if action else dest
        if action is not None and is_restart_only(action):
            restart.append(name)
        else:
            setattr(new, dest, value)
            changed.append(name)
    return new, changed, restart
