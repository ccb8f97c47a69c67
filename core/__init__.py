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

# The face of the package only: every name is defined in a module of its own,
# none of which imports this one, so importing chatcore has no circle.
from chatcore import events
from chatcore.config import Config
from chatcore.engine.connection import Client
from chatcore.errors import UsageError
from chatcore.markers import hookimpl, hookspec
from chatcore.message import Message
from chatcore.version import __version__

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
