"""The hook markers (re-exported as ``chatcore.hookimpl`` and ``chatcore.hookspec``).

In a module of their own, which imports nothing of chatcore's, so that the
hook specifications and the package's face both import them without a circle.
"""

from __future__ import annotations

import pluggy

#: Marker for hook implementations: ``@chatcore.hookimpl``.
hookimpl = pluggy.HookimplMarker("chatcore")
#: Marker for hook specifications (used by :mod:`chatcore.hookspecs`).
hookspec = pluggy.HookspecMarker("chatcore")
