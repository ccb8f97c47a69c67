"""The native line protocol on tcp:// and tls:// listeners (always on).

An ordinary plugin all the same: it registers its two URL schemes through
``chatcore_schemes`` exactly as the IRC or web front-ends register theirs.
The protocol itself is :mod:`chatcore.wire.native`; TLS is
:mod:`chatcore.transports.tls`.
"""

from __future__ import annotations

from chatcore import hookimpl
from chatcore.transports import Scheme
from chatcore.wire.native import NATIVE, NativeProtocol

DEFAULT_PORT = 12000
DEFAULT_TLS_PORT = 12001


@hookimpl(trylast=True)
def chatcore_schemes() -> list[Scheme]:
    return [
        Scheme("tcp", NATIVE, NativeProtocol, default_port=DEFAULT_PORT, description="the native line protocol"),
        Scheme(
            "tls",
            NATIVE,
            NativeProtocol,
            tls=True,
            default_port=DEFAULT_TLS_PORT,
            description="the native line protocol over TLS",
        ),
    ]
