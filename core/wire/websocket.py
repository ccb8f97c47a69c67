"""Opening a WebSocket on the server side, and keeping it alive.

Shared by the front-ends that speak over a WebSocket: the web page's JSON
(``ws://``) and IRC over WebSocket (``ircws://``). Sans-I/O like the framing
(:mod:`chatcore.wire.framing`): what here reads a request is fed bytes and
gives the bytes to answer, and never touches a socket.

- :func:`accept`: the answer to an upgrade request, with the subprotocol
  chosen in the client's order of preference;
- :func:`own_origins`, :func:`parse_origin` and :func:`foreign_origin`: the
  Origin check (cross-site WebSocket hijacking, below);
- :class:`WebSocketOpening`: the one HTTP request of a connection that
  serves nothing but a WebSocket;
- :class:`Pinger`: one thread per server and front-end that pings quiet
  WebSockets and closes the ones that stopped answering.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any, Protocol

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection
from wsproto.events import Request as WSRequest
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from chatcore.errors import UsageError
from chatcore.wire.http import Deadlines

log = logging.getLogger("chatcore.websocket")

#: Bytes of an HTTP request's line and headers, at most (h11 refuses more
#: with 431), so a client cannot make the server buffer without end.
MAX_HEADER_BYTES = 8192
#: Frames of one message from a client, at most (more are refused like a
#: message too long). Browsers send each message in one frame; the bound
#: is for empty continuation frames, which never reach the size limit.
MAX_FRAGMENTS = 128
#: Seconds a request's line and headers may take to arrive, in all (nginx's
#: ``client_header_timeout``).
HEADER_TIMEOUT = 10.0


class Refused(Exception):
    """A request answered with an HTTP error, and the connection closed."""

    def __init__(self, status: int, text: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = list(headers)

    def response(self) -> bytes:
        """The HTTP answer: the status and the text as a plain-text body."""
        return http_error(self.status, self.text, self.headers)


def http_error(status: int, text: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A short plain-text HTTP/1.1 answer that closes the connection."""
    body = text.encode("utf-8") + b"\n"
    head = [
        b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode()),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *(name + b": " + value for name, value in headers),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def accept(request: h11.Request, subprotocols: Sequence[str] = ()) -> tuple[WSConnection, bytes, str | None]:
    """The server side of the WebSocket that ``request`` asks for, the bytes
    that accept it, and the subprotocol chosen: the first the client offers
    (its order is its preference, RFC 6455 4.2.2) that is in
    ``subprotocols``; None if it offers none of them (or none at all).

    Raises :class:`Refused` for a request that cannot open one (a missing
    ``Sec-WebSocket-Key``, an unsupported version ...). No extensions are
    accepted: permessage-deflate would cost each connection its own
    compressor and make each frame different per client, where a room
    event's frame is rendered once for every member.
    """
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection(list(request.headers), request.target)
    except (RemoteProtocolError, LocalProtocolError, h11.ProtocolError, UnicodeError) as exc:
        # UnicodeError: wsproto decodes Connection and Upgrade as ASCII, and
        # h11 lets any byte above 0x7f through in a header's value.
        hint = getattr(exc, "event_hint", None)
        if isinstance(hint, RejectConnection):
            raise Refused(hint.status_code, f"bad WebSocket request: {exc}", list(hint.headers)) from None
        raise Refused(400, f"bad WebSocket request: {exc}") from None
    for event in ws.events():
        if isinstance(event, WSRequest):
            chosen = next((offered for offered in event.subprotocols if offered in subprotocols), None)
            return ws, ws.send(AcceptConnection(subprotocol=chosen)), chosen
    raise Refused(400, "bad WebSocket handshake")


# -- the Origin check -------------------------------------------------------------
#
# Defends against cross-site WebSocket hijacking: a page on another site
# makes the visitor's browser open a WebSocket to this server (browsers allow
# that across origins, with the visitor's cookies, from the visitor's address
# and network: a server on a private network is reachable that way), and
# chats as the visitor or reads what they are sent. The Origin header is set
# by the browser and cannot be forged by the page; a client that is not a
# browser sends none (and could send anything), so only a browser's foreign
# Origin is refused.


def parse_origin(origin: str, option: str) -> str:
    """An origin given with ``option``, lower-cased (browsers send them so);
    :class:`UsageError` if it is not ``SCHEME://HOST[:PORT]``."""
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
        raise UsageError(
            f"{option} {origin!r}: give an origin, SCHEME://HOST[:PORT] with http or https and no path, "
            "e.g. https://chat.example.com"
        )
    return origin.lower()


def parse_origins(values: Iterable[str], option: str) -> frozenset[str]:
    """The origins of a repeatable option whose values may also be lists separated by commas."""
    return frozenset(
        parse_origin(origin, option) for value in values for origin in filter(None, map(str.strip, value.split(",")))
    )


def own_origins(sock: socket.socket, tls: bool) -> set[str]:
    """The listener's own origin, as a browser names it (``localhost`` too
    for a loopback address): what a page served from it sends."""
    host, port = sock.getsockname()[:2]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]  # IPv4 on a dual-stack listener: the browser says http://127.0.0.1:...
    scheme = "https" if tls else "http"
    hosts = {f"[{host}]" if ":" in host else host}
    if host in ("127.0.0.1", "::1"):
        hosts.add("localhost")
    default = 443 if tls else 80
    return {f"{scheme}://{name}" + ("" if port == default else f":{port}") for name in hosts}


def foreign_origin(request: h11.Request, allowed: set[str] | frozenset[str]) -> str | None:
    """The request's Origin if it has one that is not in ``allowed``; None
    if it may open the WebSocket (an allowed Origin, or none)."""
    for name, value in request.headers:
        if name.lower() == b"origin":
            origin = value.decode("ascii", "replace").lower()
            return origin if origin and origin not in allowed else None
    return None


# -- a listener that serves only WebSockets ---------------------------------------


class WebSocketOpening:
    """The one HTTP request of a connection that serves nothing but a
    WebSocket (IRC over WebSocket), read from the bytes it is fed.

    :meth:`feed` returns the upgrade request and the bytes that came after
    it (already WebSocket frames) once it is in, None until then, and raises
    :class:`Refused` for anything else: a request that is no upgrade, one
    with a body, headers over :data:`MAX_HEADER_BYTES`, bytes that are not
    HTTP. :attr:`started` is when its first byte came, for the caller's
    deadline (:data:`HEADER_TIMEOUT`).
    """

    __slots__ = ("_http", "endpoint", "started")

    def __init__(self, endpoint: str) -> None:
        #: What the endpoint is, for the answer to a request that is no upgrade.
        self.endpoint = endpoint
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.started = 0.0

    def feed(self, data: bytes) -> tuple[h11.Request, bytes] | None:
        if not self.started:
            self.started = time.monotonic()
        http = self._http
        http.receive_data(data)
        try:
            event = http.next_event()
            if event is h11.NEED_DATA:
                return None
            if not isinstance(event, h11.Request):
                raise Refused(400, "bad request")
            # h11 bounds what it buffers for an unfinished request; this
            # bounds a whole one that arrived in one large read.
            if sum(len(name) + len(value) + 4 for name, value in event.headers) > MAX_HEADER_BYTES:
                raise Refused(431, "request headers too large")
            upgrade = next((value for name, value in event.headers if name == b"upgrade"), b"")
            if event.method != b"GET" or b"websocket" not in upgrade.lower():
                raise Refused(426, f"this is {self.endpoint}: connect with a WebSocket", [(b"Upgrade", b"websocket")])
            # h11 stops after an upgrade request (PAUSED); a GET has no body,
            # so its end is in the same bytes as its headers.
            following = http.next_event()
            if isinstance(following, h11.EndOfMessage):
                following = http.next_event()
            if following is not h11.PAUSED:
                raise Refused(400, "a WebSocket upgrade request has no body")
        except h11.RemoteProtocolError as exc:
            raise Refused(exc.error_status_hint, f"bad request: {exc}") from None
        return event, http.trailing_data[0]


# -- keeping WebSockets alive -----------------------------------------------------


class Pinged(Protocol):
    """What the :class:`Pinger` checks: a front-end's connection."""

    def check(self, now: float, interval: float) -> None:
        """Ping the client if it has been quiet for ``interval`` seconds,
        close it after two, close it if its opening is overdue."""


class Pinger(Deadlines[Any]):
    """One thread that checks a front-end's open connections a few times per
    ping interval (:meth:`Pinged.check`), so that a dead client is found
    within about two intervals, with no thread per connection: the
    :class:`~chatcore.wire.http.Deadlines` the HTTP front-ends use, at the
    pace of the pings."""

    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        super().__init__(f"chatcore-{name}-pinger", self._tick(interval), self._ping)

    def set_interval(self, interval: float) -> None:
        """A new interval (a reload's), from the next round of checks."""
        self.interval = interval
        self.tick = self._tick(interval)

    @staticmethod
    def _tick(interval: float) -> float:
        return min(interval / 4, 1.0)

    def _ping(self, connection: Pinged, now: float) -> None:
        connection.check(now, self.interval)
