"""Reloading a running server's configuration (SIGHUP: ``chatcore serve`` calls
:func:`reload_configuration`).

All or nothing: the new options are checked first (the file, the TLS
certificate, every plugin's ``chatcore_reload``), and any problem is logged
and keeps the running configuration. Options marked ``restart_only``
(listeners, plugins ...) are logged as "needs a restart" and keep their
running values. Of the engine's own options, ``--max-clients`` and the
abuse limits apply at once, ``--max-line``, ``--max-queue`` and ``--max-sendq`` to new
connections, the TLS certificate to new connections, ``--log-level`` at once.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import time
from typing import TYPE_CHECKING

from chatcore.config import read_password, reread_options
from chatcore.configfile import is_restart_only
from chatcore.errors import UsageError
from chatcore.hooks import PluginError
from chatcore.transports.tls import server_context

if TYPE_CHECKING:
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
        fresh, parser, _plugins = reread_options(config)
        new, changed, restart = merge_options(old, fresh, parser)
        context = _check_certificate(server, new)
        password = read_password(new, config.environ)
        appliers = server.hooks.reload(server, old, new)
    except (UsageError, PluginError) as exc:
        config.last_reload_successful = False
        log.error(
            "reload failed: %s; the running configuration is kept",
            exc,
            extra={"event": "reload_failed", "error": str(exc)},
        )
        return False
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
    config.last_reload_successful = True
    config.last_reload_success_time = time.time()
    log.info(
        "configuration reloaded: %s",
        ", ".join(changed) + " changed" if changed else "nothing changed",
        extra={"event": "reloaded", "changed": changed},
    )
    return True


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
