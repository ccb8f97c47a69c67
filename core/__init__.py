"""chatcore: a plugin-extensible, multithreaded chat server.

How it is built, in four parts:

- **the engine** (:mod:`chatcore.engine`): the registry of clients and
  rooms, :class:`~chatcore.engine.server.ChatServer` which numbers and
  delivers every event, and the one writer thread that sends all output
  without blocking;
- **events** (:mod:`chatcore.events`): everything the server says, typed and
  immutable; plugins see these, never rendered text;
- **wire formats** (:mod:`chatcore.wire`): each renders events to bytes once
  per event, and turns a client's bytes into actions (the native line
  protocol is :mod:`chatcore.wire.native`);
- **transports** (:mod:`chatcore.transports`): listeners per ``--listen``
  URL, plain TCP and TLS over memory buffers.

Behaviour is plugins (:mod:`chatcore.plugins`), the commands and the native
protocol's ``tcp://`` and ``tls://`` schemes included. The terminal client,
:mod:`chatcore.client`, is a separate program that talks to a server.

The public API for plugin authors is small:

- :data:`hookimpl` marks a plugin's hook implementations;
- :mod:`chatcore.hookspecs` documents every hook (the contract);
- :class:`Message`, :class:`Client` and :class:`Config` are what hooks
  receive, and :mod:`chatcore.events` what they send and see;
- :class:`UsageError` reports a user's configuration mistake as one clean line.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations: ``@chatcore.hookimpl``.
hookimpl = pluggy.HookimplMarker("chatcore")
#: Marker for hook specifications (used by :mod:`chatcore.hookspecs`).
hookspec = pluggy.HookspecMarker("chatcore")


class UsageError(Exception):
    """A mistake in how chatcore was invoked or configured.

    Raise it from ``chatcore_configure`` to make ``chatcore serve`` print the
    message as one line and exit with status 2, without a traceback.
    """


# Imported after the markers: these modules import them from here.
from chatcore import events  # noqa: E402
from chatcore.config import Config  # noqa: E402
from chatcore.engine.connection import Client  # noqa: E402
from chatcore.message import Message  # noqa: E402

__all__ = [
    "Client",
    "Config",
    "Message",
    "UsageError",
    "__version__",
    "events",
    "hookimpl",
    "hookspec",
]
