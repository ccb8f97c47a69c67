"""Serving connections: socketserver's "handler" part, for every listener.

A :class:`~chatcore.transports.listener.Listener` only accepts; each
connection it accepts is served here, on a thread of its own:

    :meth:`Connections.start_serving` (the accept loop's thread)
        starts the connection's thread, which runs
    :meth:`Connections.serve_connection`
        the transport's handshake (TLS), the gate's refusals, then the
        scheme's protocol: ``connection_made()``, ``data_received()`` for
        every chunk read, ``connection_lost()``, and the client's removal
        from the chat (:meth:`ChatServer.remove_client
        <chatcore.engine.server.ChatServer.remove_client>`) when it ends.

Beside them, one sweeper thread closes connections past the gate's
deadlines, and :meth:`Connections.close_all` ends every connection when the
server stops. What a connection may do is the gate's to decide
(:mod:`chatcore.engine.gate`); what it says is the chat's
(:mod:`chatcore.engine.server`).
"""

from __future__ import annotations

import _thread
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from chatcore.engine.connection import Client
from chatcore.engine.turns import make_turns
from chatcore.events import Error
from chatcore.transports import Transport
from chatcore.transports.listener import format_address
from chatcore.transports.tls import HANDSHAKE_TIMEOUT, TLSTransport

if TYPE_CHECKING:
    from collections.abc import Callable

    from chatcore.engine.server import ChatServer
    from chatcore.transports.listener import Listener

log = logging.getLogger("chatcore.server")

# recv() allocates its whole buffer before it blocks, so a large buffer would
# sit in memory for every idle client. Idle clients wait with a small one;
# a read that fills it is followed by large reads until the data runs out.
RECV_IDLE = 256
RECV_BUSY = 65536
#: How long a refused connection may take to close after its reply.
REFUSE_LINGER = 1.0
#: How long a disconnecting client may take to read what is queued for it.
SHUTDOWN_LINGER = 2.0


class Connections:
    """Every connection of one chat server, from its accept to its close.

    :ivar clients: every connection being served, admitted or not yet (TLS
        handshake done; IRC registration or a password pending): what
        :meth:`close_all` must disconnect.
    """

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self.gate = server.gate
        self.stats = server.stats
        self._lock = threading.Lock()
        self.clients: set[Client] = set()
        #: The thread of every connection being served, by ident: added by
        #: the accept loop as it starts one, removed by the thread itself as
        #: its last act. close_all() waits until it is empty.
        self._serving: set[int] = set()
        self._serving_changed = threading.Condition(self._lock)
        #: Sockets still in their TLS handshake (no Client yet): close_all()
        #: shuts them down, or it would wait out each one's handshake timeout.
        self._handshaking: set[socket.socket] = set()
        self._sweeper: threading.Thread | None = None
        self._swept = threading.Event()
        #: At most a few connection threads handle input at once
        #: (chatcore.engine.turns); None where there is no epoll.
        self.turns = make_turns()

    def snapshot(self) -> list[Client]:
        """Every connection being served, admitted or not (a copy)."""
        with self._lock:
            return list(self.clients)

    # -- a connection's thread --------------------------------------------------

    def start_serving(self, listener: Listener, sock: socket.socket, peer: Any) -> None:
        """Serve a connection that ``listener`` accepted, on a new thread
        (called by its accept loop).

        A bare thread, not a ``threading.Thread``, whose ``start()`` waits
        until the new thread has run: it would hold the accept loop for
        each connection's set-up and admission in turn, most of a connect
        storm's time (docs/performance.md, "Connect storm"). So a connection's
        thread has no ``threading.Thread``: no name, and nothing for
        ``threading`` to list or join. close_all() waits for ``_serving``
        instead; log records carry no thread name (``ChatServer.start``);
        the stack size is ``threading.stack_size()``'s, as for any thread.
        """
        with self._lock:  # counted before close_all() can look, and before the thread can end
            self._serving.add(_thread.start_new_thread(self._serving_thread, (listener, sock, peer)))

    def _serving_thread(self, listener: Listener, sock: socket.socket, peer: Any) -> None:
        try:
            self.serve_connection(listener, sock, peer)
        except Exception:
            self.connection_error(peer)
        finally:
            listener.shutdown_request(sock)
            # The thread's last acts: its counts retired exactly once, then
            # close_all() told (it waits for the socket to be closed).
            self.stats.thread_ended()
            with self._serving_changed:
                self._serving.discard(threading.get_ident())
                self._serving_changed.notify_all()

    def connection_error(self, peer: Any) -> None:
        log.exception("unexpected error with %s", format_address(str(peer[0]), int(peer[1])))

    def serve_connection(self, listener: Listener, sock: socket.socket, peer: Any) -> None:
        """Serve one connection from ``listener`` on its own thread, from the
        handshake to the leave."""
        address = (str(peer[0]), int(peer[1]))
        limits = self.gate.limits
        # Counted from the first moment, so that a TLS handshake that stalls
        # holds its address's slot too; released exactly once, here, however
        # the connection ends (the limits refuse nothing they did not count).
        over_limit = limits.acquire(address[0])
        try:
            self._serve(listener, sock, address, over_limit)
        finally:
            if over_limit is None:
                limits.release(address[0])

    def _serve(self, listener: Listener, sock: socket.socket, address: tuple[str, int], over_limit: str | None) -> None:
        server = self.server
        scheme = listener.scheme
        # Without this, Nagle's algorithm meets delayed ACKs and small rooms
        # see a steady ~40 ms delay per line.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(sock)
        transport = self._handshake(sock, address, listener) if scheme.tls else Transport(sock)
        if transport is None:
            return
        client = Client(
            transport,
            address,
            server,
            client_id=server.registry.next_id(),
            max_queue=server.max_queue,
            max_sendq=server.max_sendq,
            wire=scheme.wire,
        )
        # Made first: it renders the refusal too, in its client's words.
        protocol = client.protocol = scheme.protocol(client)
        if self.server.stopping:
            refused: tuple[str, str] | None = ("server shutting down", "shutdown")
        else:
            refused = self.gate.refusal(len(self.clients), over_limit)
            if refused is None:
                reason = server.hooks.connection_arriving(address, server)
                refused = (reason, "plugin") if reason else None
        if refused is None:
            # Checked again where the connection is counted, under the lock:
            # connections arriving together all passed the first check
            # before any was counted, and --max-clients was exceeded by a few.
            with self._lock:
                refused = self.gate.refusal(len(self.clients), None)
                if refused is None:
                    self.clients.add(client)
                    listener.connected += 1
        if refused is not None:
            reason, label = refused
            log.warning(
                "refused %s: %s",
                format_address(*address),
                reason,
                extra={
                    "event": "connection_refused",
                    "address": address[0],
                    "port": address[1],
                    "reason": reason,
                    "cause": label,
                    "listener": str(listener.url),
                },
            )
            self.stats.refused(label)
            self._refuse(client, reason)
            return
        self.stats.accepted_connection()

        try:
            if self.server.stopping:
                client.disconnect("server shutting down", notice="server shutting down")
                return
            protocol.connection_made()
            self._read(client, protocol.data_received)
            protocol.connection_lost()
        finally:
            try:
                self._leave(client)
            finally:  # whatever happened: the slot is given back
                with self._lock:
                    self.clients.discard(client)
                    listener.connected -= 1

    def _handshake(self, sock: socket.socket, address: tuple[str, int], listener: Listener) -> Transport | None:
        """The TLS transport of ``sock`` once its handshake is done, or None
        (it failed, or the server is stopping)."""
        certificates = self.server.certificates
        assert certificates is not None  # checked when the configuration was read
        transport = TLSTransport(sock, certificates.context)
        with self._lock:
            if self.server.stopping:
                return None
            self._handshaking.add(sock)
        try:
            transport.handshake(HANDSHAKE_TIMEOUT)
        except (OSError, ValueError) as exc:
            if self._stopping():  # stop() may have begun since the check above
                return None  # cut short by close_all()
            # Not the server's problem, and not worth a traceback: a
            # plain-text client on a TLS port, a scanner, a timeout.
            why = _why(exc)
            log.info(
                "TLS handshake with %s failed: %s",
                format_address(*address),
                why,
                extra={
                    "event": "connection_refused",
                    "address": address[0],
                    "port": address[1],
                    "reason": why,
                    "cause": "tls_handshake",
                    "listener": str(listener.url),
                },
            )
            self.stats.refused("tls_handshake")
            return None
        finally:
            with self._lock:
                self._handshaking.discard(sock)
        return transport

    def _stopping(self) -> bool:
        # A call, not the property read again: mypy would take the value
        # read before the handshake for the value after it.
        return self.server.stopping

    def _refuse(self, client: Client, reason: str) -> None:
        """Send the refusal and close without losing it.

        Closing a socket with unread input makes the kernel send a reset,
        which can discard the reply before the client reads it (a client
        usually sends something right after connecting). So: send, shut
        down writing, read what the client sends until it closes (at most
        a second), and only then close.
        """
        transport = client.transport
        sock = transport.sock
        deadline = time.monotonic() + REFUSE_LINGER  # in all: a trickle cannot hold it
        try:
            transport.sendall(client.protocol.render(Error(reason)) if client.protocol else b"")
            # After the reply: goodbye() shuts TLS down (close_notify, already
            # encrypted), and nothing can be written through it after that.
            sock.sendall(transport.goodbye())
            sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(4096):
                    break
        except OSError:
            pass  # gone already, or too slow to say goodbye to

    def _read(self, client: Client, data_received: Callable[[bytes], None]) -> None:
        transport = client.transport
        recv, recv_ready, buffered = transport.recv, transport.recv_ready, transport.buffered
        # Without read turns (no epoll; or the server is stopping, when
        # wait() says False) the thread waits in recv() itself.
        reader = None if self.turns is None else self.turns.reader(transport.sock.fileno())
        clock = time.monotonic
        size = RECV_IDLE
        # No check of client.closed up here: a disconnect from any other
        # thread shuts the socket down, which wakes the thread.
        try:
            while True:
                turn = reader is not None and reader.wait(buffered())
                try:
                    data = recv_ready(size) if turn else recv(size)
                    if data is None:
                        continue  # not a whole TLS record yet, or a spurious wake-up
                    if not data:
                        return
                    size = RECV_BUSY if len(data) >= size else RECV_IDLE
                    # When this input arrived: message latency starts here,
                    # and idle connections are timed from it.
                    client.arrived = clock()
                    client.bytes_in += len(data)
                    data_received(data)
                    if client.closed:  # disconnected (by what it sent, or another thread)
                        return
                except OSError as exc:
                    log.debug("read from %r failed: %s", client, exc)
                    client.disconnect("connection lost", tell=False)
                    return
                finally:
                    if turn:
                        reader.done()  # type: ignore[union-attr]
        finally:
            if reader is not None:
                reader.forget()

    def _leave(self, client: Client) -> None:
        if client.close_reason is None:
            client.disconnect("connection closed", tell=False)
        self.stats.disconnected(client.close_cause or "closed")
        self.server.remove_client(client)
        # The writer is done by the client's finish deadline (its linger).
        if not client.wait_closed(max(SHUTDOWN_LINGER, client._finish_deadline - time.monotonic()) + 5):
            log.warning("writer did not release %r in time; closing anyway", client)

    # -- the deadlines ------------------------------------------------------------

    def start(self) -> None:
        """Start the epoll thread of the read turns, and the sweeper."""
        if self.turns is not None:
            self.turns.start()
        self.start_sweeper()

    def close(self) -> None:
        """Let go of the read turns (the server has stopped, or never
        started)."""
        if self.turns is not None:
            self.turns.close()

    def start_sweeper(self) -> None:
        """Start the sweeper if the gate has deadlines and it is not running."""
        if self.gate.has_deadlines and self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep, name="chatcore-deadlines", daemon=True)
            self._sweeper.start()

    def _sweep(self) -> None:
        """Close connections past the gate's deadlines, on a thread of its
        own: a reader's own thread cannot time itself out without a socket
        timeout, which the writer's non-blocking sends share."""
        # Timed afresh each round: a reload may change the deadlines.
        while not self._swept.wait(self.gate.sweep_interval):
            now = time.monotonic()
            for client in self.snapshot():
                if client.closed:
                    continue
                why = self.gate.overdue(client, now)
                if why is not None:
                    client.disconnect(why, cause="idle")

    # -- the end ------------------------------------------------------------------

    def close_all(self, reason: str, timeout: float) -> None:
        """Disconnect every connection being served, and wait (up to about
        ``timeout`` seconds) for their threads to end. Called once the
        server is stopping, when new connections are refused."""
        self._swept.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            clients = list(self.clients)
            handshaking = list(self._handshaking)
        for sock in handshaking:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # ends the handshake's recv()
            except OSError:
                pass  # gone already
        for client in clients:
            client.disconnect(reason, notice=reason, linger=timeout)
        me = threading.get_ident()  # may run on a client's own thread (a plugin's command)
        with self._serving_changed:
            # Then their threads have closed their sockets: none is left
            # writing to a closed descriptor. One that does not end in time
            # is given up (they are daemon threads).
            self._serving_changed.wait_for(
                lambda: len(self._serving) <= (me in self._serving), max(0.0, deadline - time.monotonic()) + 0.5
            )


#: TCP keepalive: a peer that vanished (power cut, NAT timeout) is found
#: after about KEEPALIVE_IDLE + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL seconds
#: of silence (4 minutes; NATS pings every 2 minutes and gives up after 2
#: unanswered), and its thread and slot are freed.
KEEPALIVE_IDLE = 120
KEEPALIVE_INTERVAL = 30
KEEPALIVE_COUNT = 4


def _keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # Linux and most BSDs; elsewhere the system's defaults (often 2 hours).
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _why(exc: BaseException) -> str:
    """A handshake failure in a few words, for the log."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    reason = getattr(exc, "reason", None)
    if reason:
        return f"{reason} (not a TLS client?)" if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST") else str(reason)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
