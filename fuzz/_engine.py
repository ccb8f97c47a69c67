"""A real chat server in the fuzzing process, and connections fed straight
to its protocols: the harness of every front-end (native, IRC, web).

The server is the engine as ``chatcore serve`` runs it (its writer, its
plugins, its registry and rooms), started once per fuzzing process. Each
input becomes one connection over real sockets on 127.0.0.1: a socket pair
made through a listening socket of our own, whose server side becomes a
:class:`~chatcore.engine.connection.Client` with the scheme's protocol,
exactly as ``Connections._serve`` makes it; the input is then handed to the
protocol's ``data_received`` in the chunks the input says, on this thread,
instead of through ``recv()``, so that a run is deterministic and an
exception reaches the fuzzer. The client side is read by a drain thread, as a
well-behaved client reads, so the server's output never stalls it.

Nothing may escape ``data_received``: the engine would log it as an
unexpected error and drop the connection. A protocol answers bad input
with an error line, a numeric or an HTTP status: those are its documented
rejections, and they are output, not exceptions. Anything the server logs
at ERROR (a plugin failure, an exception on the writer thread) fails the
input too.

The server's state lives on from input to input (nicknames and rooms come
and go, bans stay), as in a long-running server: a crash that needs what an
earlier input left may not replay alone, and the log of the run has it.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterable

from chatcore.config import parse_config
from chatcore.engine import gate
from chatcore.engine.connection import Client
from chatcore.engine.server import ChatServer
from chatcore.transports import Transport

#: Bytes of client-side output read at a time by the drain.
_READ = 1 << 16


class _Errors(logging.Handler):
    """Keeps every record at ERROR or above, and every one with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


class _Drain(threading.Thread):
    """Reads and discards what the server sends to the fuzzing clients."""

    def __init__(self) -> None:
        super().__init__(name="fuzz-drain", daemon=True)
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.waker, self._wake = socket.socketpair()
        self.selector.register(self.waker, selectors.EVENT_READ)

    def add(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with self.lock:
            self.selector.register(sock, selectors.EVENT_READ)
        self._wake.send(b"x")

    def run(self) -> None:
        while True:
            with self.lock:
                ready = self.selector.select(0)
            if not ready:
                ready = self.selector.select(0.5)
            for key, _ in ready:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(_READ)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if sock is self.waker:
                    continue
                if not data:
                    with self.lock:
                        self.selector.unregister(sock)
                    sock.close()


class Engine:
    """One server with the native, IRC and web front-ends (and history, for
    the web page's resume), and connections made to order."""

    def __init__(self) -> None:
        # A wrong password or /oper sleeps 1 to 5 s on the guesser's thread,
        # by design (chatcore.engine.gate): here that would be the fuzzer's
        # thread, a second per input that guesses. The rest of the path runs.
        gate.SECRET_DELAY = 0.0
        self.errors = _Errors()
        logging.getLogger().addHandler(self.errors)
        args = ["--plugins", "welcome,irc,web,history", "--log-level", "ERROR"]
        args += ["--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0", "--listen", "ws://127.0.0.1:0"]
        self.server = ChatServer(parse_config(args, environ={}))
        self.server.start()
        logging.getLogger("chatcore").setLevel(logging.WARNING)
        self.accepting = socket.create_server(("127.0.0.1", 0))
        self.drain = _Drain()
        self.drain.start()

    def connection(self, scheme: str, chunks: Iterable[bytes]) -> Client:
        """Serve one connection of ``scheme`` that sends ``chunks``, then closes."""
        server = self.server
        listener = server.listener(scheme)
        outside = socket.create_connection(self.accepting.getsockname())
        sock, peer = self.accepting.accept()
        self.drain.add(outside)
        # From here on, what Connections._serve does, minus the reads.
        serving = server.serving
        client = Client(
            Transport(sock),
            (str(peer[0]), int(peer[1])),
            server,
            client_id=server.registry.next_id(),
            max_queue=server.max_queue,
            max_sendq=server.max_sendq,
            wire=listener.scheme.wire,
        )
        protocol = client.protocol = listener.scheme.protocol(client)
        with serving._lock:
            serving.clients.add(client)
            listener.connected += 1
        try:
            protocol.connection_made()
            for chunk in chunks:
                if client.closed:
                    break
                client.arrived = time.monotonic()
                protocol.data_received(chunk)
            protocol.connection_lost()
        finally:
            try:
                serving._leave(client)
            finally:
                with serving._lock:
                    serving.clients.discard(client)
                    listener.connected -= 1
                listener.shutdown_request(sock)
        self.check()
        return client

    def check(self) -> None:
        """Raise if the server logged an error (a crash on another thread)."""
        if self.errors.records:
            record = self.errors.records[0]
            self.errors.records.clear()
            text = logging.Formatter().format(record)
            raise AssertionError(f"the server logged an error:\n{text}")


def chunked(data: bytes) -> list[bytes]:
    """The input in the reads it arrives in: the first byte below 0x80 means
    one read; else reads of (first byte - 0x7f) bytes, 1 to 128 each."""
    if not data:
        return []
    head, rest = data[0], data[1:]
    if head < 0x80:
        return [rest]
    size = head - 0x7F
    return [rest[i : i + size] for i in range(0, len(rest), size)]
