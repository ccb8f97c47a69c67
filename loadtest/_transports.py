"""How a simulated user reaches a server: chosen by the host URL's scheme.

``tcp://HOST:PORT`` is the native protocol over plain TCP, ``tls://HOST:PORT``
the same over TLS. A transport only opens a connected, gevent-friendly
socket-like object (``sendall``, ``recv``, ``close``); what is said over it
(the native line protocol) is :mod:`_chatclient`'s business.

Adding a scheme (``irc://``, ``ws://`` ... as their server plugins land) is
one small class registered in :data:`TRANSPORTS`: ``connect()`` returns an
object with ``sendall``/``recv``/``close`` carrying native lines, or, for a
protocol that frames or words things differently, the class also brings its
own dialect (see the README, "Adding a transport").
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar

from gevent import socket, ssl


@dataclass(frozen=True)
class Endpoint:
    """One server of the run, as given in ``--host`` or ``--chat-hosts``."""

    url: str
    scheme: str
    host: str
    port: int


class Transport:
    """Opens connections to one kind of endpoint."""

    scheme: ClassVar[str] = ""
    default_port: ClassVar[int] = 0

    def __init__(self, options: Any) -> None:
        self.options = options

    def connect(self, endpoint: Endpoint, timeout: float) -> Any:
        raise NotImplementedError


class TcpTransport(Transport):
    scheme = "tcp"
    default_port = 12000

    def connect(self, endpoint: Endpoint, timeout: float) -> Any:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class TlsTransport(TcpTransport):
    """TLS, verified as ``chatcore client`` verifies: the chain and the host
    name against the system's certificates or ``--ca FILE``; ``--insecure``
    checks nothing (test certificates only). Defends against measuring, or
    sending load to, a man in the middle instead of the server."""

    scheme = "tls"
    default_port = 12001

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        ca = getattr(options, "ca", None) or None
        context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if getattr(options, "insecure", False):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.context = context

    def connect(self, endpoint: Endpoint, timeout: float) -> Any:
        sock = super().connect(endpoint, timeout)
        try:
            return self.context.wrap_socket(sock, server_hostname=endpoint.host)
        except BaseException:
            sock.close()
            raise


#: Scheme -> transport class. One instance per scheme per process (the TLS
#: context is shared by every user).
TRANSPORTS: dict[str, type[Transport]] = {cls.scheme: cls for cls in (TcpTransport, TlsTransport)}


def parse_endpoint(url: str) -> Endpoint:
    """``SCHEME://HOST:PORT`` (``HOST:PORT`` means ``tcp://``) as an Endpoint.

    :raises ValueError: with a message that says what to write instead.
    """
    text = url.strip()
    parts = urllib.parse.urlsplit(text if "://" in text else "tcp://" + text)
    schemes = ", ".join(f"{name}://" for name in TRANSPORTS)
    if parts.scheme not in TRANSPORTS:
        raise ValueError(f"{url!r}: unknown scheme {parts.scheme}://; use one of {schemes}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host; write {parts.scheme}://HOST:PORT")
    port = port or TRANSPORTS[parts.scheme].default_port
    return Endpoint(f"{parts.scheme}://{parts.hostname}:{port}", parts.scheme, parts.hostname, port)


def parse_endpoints(host: str | None, chat_hosts: str | None) -> list[Endpoint]:
    """The run's servers: ``--chat-hosts URL,URL,...`` if given, else ``--host``."""
    text = chat_hosts or host
    if not text:
        raise ValueError("no server: give --host tcp://HOST:PORT or --chat-hosts URL,URL,...")
    endpoints = [parse_endpoint(item) for item in text.split(",") if item.strip()]
    if not endpoints:
        raise ValueError(f"--chat-hosts {chat_hosts!r}: no server in it")
    return endpoints


_transports: dict[str, Transport] = {}


def transport_for(endpoint: Endpoint, options: Any) -> Transport:
    """The process's transport for this endpoint's scheme."""
    transport = _transports.get(endpoint.scheme)
    if transport is None:
        transport = _transports[endpoint.scheme] = TRANSPORTS[endpoint.scheme](options)
    return transport
