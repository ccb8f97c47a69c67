"""chatcore: a plugin-extensible, multithreaded TCP chat server.

The public API for plugin authors is small:

- :data:`hookimpl` marks a plugin's hook implementations;
- :mod:`chatcore.hookspecs` documents every hook (the contract);
- :class:`Message`, :class:`Client` and :class:`Config` are what hooks receive;
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
from chatcore.config import Config  # noqa: E402
from chatcore.engine.connection import Client  # noqa: E402
from chatcore.message import Message  # noqa: E402

__all__ = [
    "Client",
    "Config",
    "Message",
    "UsageError",
    "__version__",
    "hookimpl",
    "hookspec",
]
