"""HTTP/1.1 on the engine's listeners, with h11: what the ``web`` and ``api`` plugins share.

A protocol that speaks HTTP makes one :class:`HttpConnection` for its
client and hands it what the reader thread receives. The connection parses
it with h11 (sans-I/O: it only parses the bytes it is given, so the reader
thread drives it), calls the protocol's handler once per whole request,
and queues the answers to the shared writer through the client: the reader
thread never writes, so a client that never reads holds a queue, not a
thread.

What it defends against, so that a thread per connection stays bounded:

- a request head over ``max_header_bytes`` (431), and a body over
  ``max_body`` (413, refused as it arrives, never buffered whole);
- a request that trickles in (slowloris): its head and body must arrive
  within ``request_timeout`` in all (408), and a keep-alive connection that
  sends nothing is closed after ``idle_timeout``; the plugin's deadline
  thread calls :meth:`HttpConnection.check` a few times a second;
- pipelining: the next request is read only once the answers before it
  have gone out, as nginx does, so a client that sends 2,000 requests in
  one write and never reads holds one answer, not 2,000; its other
  requests wait in its socket, and TCP holds it back;
- a connection kept for ever: at most ``max_requests`` requests (0: no
  bound), the last answered with ``Connection: close``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Generic, TypeVar

import h11

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.wire import Protocol

log = logging.getLogger("chatcore.http")

#: Bytes of a request's line and headers, at most (431 beyond).
MAX_HEADER_BYTES = 8192
#: Seconds a request's head and body may take to arrive, from its first byte.
REQUEST_TIMEOUT = 10.0
#: Seconds a keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 30.0

#: How a protocol words an error: its text as (content type, body).
ErrorBody = Callable[[str], tuple[bytes, bytes]]
Headers = list[tuple[bytes, bytes]]


def plain_error(text: str) -> tuple[bytes, bytes]:
    """An error as a line of plain text."""
    return b"text/plain; charset=utf-8", text.encode("utf-8") + b"\n"


def raw_answer(status: int, content_type: bytes, body: bytes) -> bytes:
    """An answer written by hand, that closes the connection: for when h11
    cannot answer (a refusal before any request, a request too broken to
    parse, a deadline)."""
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        HTTPStatus(status).phrase.encode("ascii"),
        content_type,
        len(body),
        body,
    )


class HttpConnection:
    """One client's HTTP/1.1, for its protocol: bytes in with
    :meth:`receive` (on the reader thread), each whole request to
    ``handler(request, body)``, which answers with :meth:`respond` or
    :meth:`error` before it returns; :meth:`check` from a deadline thread.

    :param client: the connection; answers go to its queue.
    :param handler: called on the reader thread once per request, when its
        body is in (``b""`` if it had none).
    :param error_body: how the protocol words an error (plain text, JSON).
    :param headers: added to every answer (security headers).
    :param max_body: bytes of a body, at most.
    :param max_requests: requests one connection may make (0: no bound).
    """

    __slots__ = (
        "_body",
        "_detached",
        "_last_heard",
        "_request",
        "_served",
        "_started",
        "client",
        "error_body",
        "handler",
        "headers",
        "http",
        "idle_timeout",
        "max_body",
        "max_header_bytes",
        "max_requests",
        "request_timeout",
    )

    def __init__(
        self,
        client: Client,
        handler: Callable[[h11.Request, bytes], None],
        *,
        error_body: ErrorBody = plain_error,
        headers: Iterable[tuple[bytes, bytes]] = (),
        max_body: int = 0,
        max_requests: int = 0,
        max_header_bytes: int = MAX_HEADER_BYTES,
        request_timeout: float = REQUEST_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.client = client
        self.handler = handler
        self.error_body = error_body
        self.headers = list(headers)
        self.max_body = max_body
        self.max_requests = max_requests
        self.max_header_bytes = max_header_bytes
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        #: The h11 state machine (a protocol that upgrades reads its
        #: ``trailing_data`` through :meth:`detach`).
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._last_heard = time.monotonic()
        # When the first byte of the request now arriving came (0.0: none).
        self._started = 0.0
        self._served = 0
        self._detached = False

    # -- input ---------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Parse ``data`` and answer every request it completes."""
        self._last_heard = now = time.monotonic()
        if not self._started:
            self._started = now
        http = self.http
        http.receive_data(data)
        client = self.client
        while not client.closed and not self._detached:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                self.error(exc.error_status_hint, f"bad request: {exc}", close=True)
                return
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return
            if event is h11.PAUSED:
                # A request answered but not read to its end, or an upgrade
                # the handler refused: go on if HTTP can, else stop here.
                if http.our_state is h11.DONE and http.their_state is h11.DONE:
                    self._next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                if not self._begin(event):
                    return
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self.max_body:
                    self.error(413, f"the body is larger than {self.max_body} bytes", close=True)
                    return
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._finish()
                if not client.closed and not self._detached and http.our_state is h11.DONE is http.their_state:
                    self._next_cycle()

    def _begin(self, request: h11.Request) -> bool:
        """A request's head: False if it was answered (and the connection closed)."""
        if not self.client.wait_sent(self.idle_timeout):
            self.client.disconnect("slow consumer", tell=False)
            return False
        if self.client.closed:
            return False
        # h11 bounds what it buffers for an unfinished head; this bounds a
        # whole one that arrived in one large read.
        if sum(len(name) + len(value) + 4 for name, value in request.headers) > self.max_header_bytes:
            self.error(431, "the request's headers are too large", close=True)
            return False
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.max_body:
                self.error(413, f"the body is larger than {self.max_body} bytes", close=True)
                return False
        self._request = request
        self._body = bytearray()
        if self.http.they_are_waiting_for_100_continue:
            self.client.send_data(self.http.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        return True

    def _finish(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        self._started = 0.0
        self._served += 1
        self.handler(request, bytes(self._body))

    def _next_cycle(self) -> None:
        self.http.start_next_cycle()
        # A pipelined request already here is timed from now.
        self._started = time.monotonic() if self.http.trailing_data[0] else 0.0

    def detach(self) -> bytes:
        """Stop serving HTTP (the handler upgraded the connection to another
        protocol): the bytes that came after the request, which are that
        protocol's."""
        self._detached = True
        self._started = 0.0
        return self.http.trailing_data[0]

    # -- deadlines -----------------------------------------------------------------

    def check(self, now: float) -> None:
        """From a deadline thread: a request that takes too long to arrive
        is answered 408 and closed; an idle connection is closed."""
        client = self.client
        if client.closed or self._detached:
            return
        if self._started and now - self._started > self.request_timeout:
            text = f"the request did not arrive within {self.request_timeout:g} seconds"
            client.send_data(raw_answer(408, *self.error_body(text)))
            client.disconnect("request too slow", tell=False)
        elif not self._started and now - self._last_heard > self.idle_timeout:
            client.disconnect("idle HTTP connection", tell=False)

    # -- answers -------------------------------------------------------------------

    def error(self, status: int, text: str, *, close: bool = False, extra: Headers | None = None) -> None:
        """Answer an error worded by the protocol (:attr:`error_body`)."""
        kind, body = self.error_body(text)
        self.respond(status, [(b"Content-Type", kind), *(extra or [])], body, close=close)

    def respond(self, status: int, headers: Headers, body: bytes, *, close: bool = False) -> None:
        """Answer the request being handled; close the connection after it
        if asked, if it was the connection's last, or if HTTP says so.
        ``Content-Length`` is added unless ``headers`` have it (a HEAD's)."""
        http = self.http
        close = close or bool(self.max_requests and self._served >= self.max_requests)
        headers = [*headers, *self.headers]
        if not any(name.lower() == b"content-length" for name, _ in headers):
            headers.append((b"Content-Length", b"%d" % len(body)))
        if close:
            headers.append((b"Connection", b"close"))
        try:
            out = http.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)) or b""
            if body:
                out += http.send(h11.Data(data=body)) or b""
            out += http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # A request too broken for h11 to answer: answer by hand, and close.
            kind = next((value for name, value in headers if name == b"Content-Type"), b"text/plain")
            out, close = raw_answer(status, kind, body), True
        self.client.send_data(out)
        if close or http.our_state is h11.MUST_CLOSE:
            self.client.disconnect(f"HTTP {status}", tell=False)


P = TypeVar("P", bound="Protocol")


class Deadlines(Generic[P]):
    """A plugin's connections whose deadlines a thread of its own checks:
    every ``tick`` seconds, ``check(protocol, now)`` for each (which calls
    :meth:`HttpConnection.check`, and may do more: the web plugin's pings).
    Connections are held weakly; one whose check raises is logged, and the
    others are checked all the same."""

    def __init__(self, name: str, tick: float, check: Callable[[P, float], None]) -> None:
        self.tick = tick
        self._check = check
        self._connections: weakref.WeakSet[P] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def add(self, protocol: P) -> None:
        with self._lock:
            self._connections.add(protocol)

    def discard(self, protocol: P) -> None:
        with self._lock:
            self._connections.discard(protocol)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stopping.wait(self.tick):
            now = time.monotonic()
            with self._lock:
                connections = list(self._connections)
            for protocol in connections:
                try:
                    self._check(protocol, now)
                except Exception:  # one broken connection must not stop the others' deadlines
                    log.exception("checking %r failed", protocol.client)
