"""Serving connections: socketserver's "handler" part, for every listener.

A :class:`~chatcore.transports.listener.Listener` only accepts; each
connection it accepts is served here, by a :class:`Session`:

    :meth:`Connections.start_serving` (the accept loop's thread)
        gives the connection's :meth:`Session.run` a thread, which runs
    :meth:`Connections.admit`
        the transport's handshake (TLS) and the gate's refusals, then the
        scheme's protocol: ``connection_made()``, ``data_received()`` for
        every chunk read, ``connection_lost()``, and the client's removal
        from the chat (:meth:`Connections.dismiss`, then
        :meth:`ChatServer.remove_client
        <chatcore.engine.server.ChatServer.remove_client>`) when it ends.

A connection has a thread while it has something to do: when its client
goes quiet the thread is given up, and the read turns
(:mod:`chatcore.engine.turns`) give it one again when the client says more;
one at a time, so its input is handled in order.

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
from chatcore.engine.turns import BLOCK, PARK, TURN, make_turns
from chatcore.events import Error
from chatcore.transports import Transport
from chatcore.transports.listener import format_address
from chatcore.transports.tls import HANDSHAKE_TIMEOUT, TLSTransport

if TYPE_CHECKING:
    from chatcore.engine.server import ChatServer
    from chatcore.engine.turns import Reader
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
        #: Every connection being served: added by the accept loop as it
        #: starts one, removed by its work's last act, once its socket is
        #: closed. close_all() waits until it is empty.
        self._serving: set[Session] = set()
        self._serving_changed = threading.Condition(self._lock)
        #: Sockets still in their TLS handshake (no Client yet): close_all()
        #: shuts them down, or it would wait out each one's handshake timeout.
        self._handshaking: set[socket.socket] = set()
        self._sweeper: threading.Thread | None = None
        self._swept = threading.Event()
        #: At most a few connection threads handle input at once
        #: (chatcore.engine.turns); None where there is no epoll.
        self.turns = make_turns(self.stats.thread_ended)

    def snapshot(self) -> list[Client]:
        """Every connection being served, admitted or not (a copy)."""
        with self._lock:
            return list(self.clients)

    # -- a connection's work --------------------------------------------------

    def start_serving(self, listener: Listener, sock: socket.socket, peer: Any) -> None:
        """Serve a connection that ``listener`` accepted, on a thread of
        the read turns (a spare one, or a new one), or, without them, on a
        thread of its own (called by its accept loop).

        Bare threads, not ``threading.Thread``, whose ``start()`` waits
        until the new thread has run: it would hold the accept loop for
        each connection's set-up and admission in turn, most of a connect
        storm's time (docs/performance.md, "Connect storm"). So connection
        threads have no ``threading.Thread``: no name, and nothing for
        ``threading`` to list or join. close_all() waits for ``_serving``
        instead; log records carry no thread name (``ChatServer.start``);
        the stack size is ``threading.stack_size()``'s, as for any thread.
        """
        session = Session(self, listener, sock, peer)
        with self._lock:  # counted before close_all() can look, and before it can end
            self._serving.add(session)
        try:
            if self.turns is not None:
                self.turns.spawn(session.run)
            else:
                _thread.start_new_thread(self._own_thread, (session,))
        except RuntimeError:  # no thread to be had: the accept loop logs it and closes the socket
            self.served(session)
            raise

    def _own_thread(self, session: Session) -> None:
        """A connection's thread where there are no read turns."""
        try:
            session.run()
        finally:
            self.stats.thread_ended()

    def connection_error(self, peer: Any) -> None:
        log.exception("unexpected error with %s", format_address(str(peer[0]), int(peer[1])))

    def served(self, session: Session) -> None:
        """``session`` is over, its socket closed: close_all() is told."""
        with self._serving_changed:
            self._serving.discard(session)
            self._serving_changed.notify_all()

    def admit(
        self, listener: Listener, sock: socket.socket, address: tuple[str, int], over_limit: str | None
    ) -> Client | None:
        """Set a connection up, from the handshake to ``connection_made()``:
        its Client, admitted and counted in :attr:`clients`, or None if it
        was refused (and told so) or its TLS handshake failed."""
        server = self.server
        scheme = listener.scheme
        # Without this, Nagle's algorithm meets delayed ACKs and small rooms
        # see a steady ~40 ms delay per line.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(sock)
        transport = self._handshake(sock, address, listener) if scheme.tls else Transport(sock)
        if transport is None:
            return None
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
        client.protocol = scheme.protocol(client)
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
            return None
        self.stats.accepted_connection()
        return client

    def dismiss(self, listener: Listener, client: Client) -> None:
        """An admitted connection is over: the client leaves the chat and
        its slot is given back."""
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
        me = threading.get_ident()  # may run on a client's thread (a plugin's command)
        with self._serving_changed:
            # Then their threads have closed their sockets: none is left
            # writing to a closed descriptor. One that does not end in time
            # is given up (they are daemon threads).
            self._serving_changed.wait_for(
                lambda: len(self._serving) <= any(session.thread == me for session in self._serving),
                max(0.0, deadline - time.monotonic()) + 0.5,
            )
            own = next((session.client for session in self._serving if session.thread == me), None)
        # The client whose thread this is (it asked for the stop) cannot end
        # its session while it is here: wait for the writer to have sent it
        # its notice and closed its socket, as the others' ended sessions
        # say of theirs, or the writer stopped next leaves it open.
        if own is not None:
            own.wait_closed(max(0.0, deadline - time.monotonic()) + 0.5)


class Session:
    """One connection's work, from its accept to its close, on whichever
    thread has it: the one the accept loop gave it, then, after each quiet
    spell (when its client has nothing to say, it has no thread), one of
    the read turns' (:mod:`chatcore.engine.turns`). One thread at a time,
    so its input is read and handled in order; a thread blocked in its
    work (a plugin waiting on a service) holds back this client only.

    :meth:`run` is the work: it returns the connection's Reader when its
    client goes quiet (the turns watch the socket, and run it again when
    the client says more), or None once the connection is over.
    """

    __slots__ = ("_begun", "_connections", "_counted", "_listener", "_peer", "_reader", "_sock", "client", "thread")

    def __init__(self, connections: Connections, listener: Listener, sock: socket.socket, peer: Any) -> None:
        self._connections = connections
        self._listener = listener
        self._sock = sock
        self._peer = peer
        self._begun = False
        #: Whether the connection holds its address's slot in the limits.
        self._counted = False
        self._reader: Reader | None = None
        #: The chat's side of it, once it is admitted.
        self.client: Client | None = None
        #: The thread running it (0 while its client is quiet): close_all()
        #: may run on it.
        self.thread = 0

    def run(self) -> Reader | None:
        self.thread = _thread.get_ident()
        lost = False
        try:
            if not self._begun:
                self._begun = True
                if not self._begin():
                    self._end(lost=False)
                    return None
            if self._read():
                self.thread = 0
                return self._reader
            lost = True
        except Exception:
            self._connections.connection_error(self._peer)
        self._end(lost)
        return None

    def _begin(self) -> bool:
        """Set the connection up: True once ``connection_made()`` has run."""
        connections = self._connections
        peer = self._peer
        address = (str(peer[0]), int(peer[1]))
        # Counted from the first moment, so that a TLS handshake that stalls
        # holds its address's slot too; released exactly once, in _end(),
        # however the connection ends (the limits refuse nothing they did
        # not count).
        over_limit = connections.gate.limits.acquire(address[0])
        self._counted = over_limit is None
        client = self.client = connections.admit(self._listener, self._sock, address, over_limit)
        if client is None:
            return False
        if connections.server.stopping:
            client.disconnect("server shutting down", notice="server shutting down")
            return False
        assert client.protocol is not None
        client.protocol.connection_made()
        turns = connections.turns
        if turns is not None:
            self._reader = turns.reader(client.transport.sock.fileno(), self.run)
        return True

    def _read(self) -> bool:
        """Read and handle the client's input until the connection ends
        (False) or the client goes quiet (True: its thread is given up)."""
        client = self.client
        assert client is not None
        assert client.protocol is not None
        data_received = client.protocol.data_received
        transport = client.transport
        recv, recv_ready, buffered = transport.recv, transport.recv_ready, transport.buffered
        reader = self._reader
        clock = time.monotonic
        size = RECV_IDLE
        # No check of client.closed up here: a disconnect from any other
        # thread shuts the socket down, which wakes the thread (or, with the
        # client quiet, the epoll set).
        while True:
            silence = client.silence  # (deadline, callback): Client.on_silence
            if reader is None:
                how = BLOCK
            else:
                how = reader.wait(buffered(), None if silence is None else silence[0])
                if how is PARK:
                    return True
            turn = how is TURN
            try:
                if silence is not None and not turn and not transport.wait_readable(max(0.0, silence[0] - clock())):
                    data = None  # reading blocking: the deadline came first
                else:
                    # With a turn the socket has input (or TLS has it in
                    # memory), or the deadline came: never a wait. Without
                    # read turns, recv() waits for it.
                    data = recv_ready(size) if turn else recv(size)
                if data is None:
                    # Not a whole TLS record yet, or a spurious wake-up, or
                    # the deadline came.
                    if silence is None:
                        continue
                    came = turn and transport.incomplete  # part of a TLS record: input, which calls it off
                    if clock() < silence[0]:
                        if came:
                            client.silence = None
                        continue
                    # The client said nothing in time: unless it has sent
                    # something since, the callback runs, in this turn.
                    client.silence = None
                    if not came and not transport.wait_readable(0):
                        silence[1]()
                        if client.closed:
                            return False
                    continue
                if not data:
                    return False
                if silence is not None:
                    client.silence = None  # it said something: the callback is off
                size = RECV_BUSY if len(data) >= size else RECV_IDLE
                # When this input arrived: message latency starts here,
                # and idle connections are timed from it.
                client.arrived = clock()
                client.bytes_in += len(data)
                data_received(data)
                if client.closed:  # disconnected (by what it sent, or another thread)
                    return False
            except OSError as exc:
                log.debug("read from %r failed: %s", client, exc)
                client.disconnect("connection lost", tell=False)
                return False
            finally:
                if turn:
                    reader.done()  # type: ignore[union-attr]

    def _end(self, lost: bool) -> None:
        """The connection is over: ``connection_lost()`` if its reading
        ended (not on an error), the client's leave, its slots given back,
        the socket closed; each exactly once."""
        connections = self._connections
        client = self.client
        try:
            try:
                if self._reader is not None:
                    self._reader.forget()  # before the close: the number may be a new socket's next
                if client is not None:
                    try:
                        if lost:
                            assert client.protocol is not None
                            client.protocol.connection_lost()
                    finally:
                        connections.dismiss(self._listener, client)
            finally:
                if self._counted:
                    self._counted = False
                    connections.gate.limits.release(str(self._peer[0]))
        except Exception:
            connections.connection_error(self._peer)
        finally:
            self._listener.shutdown_request(self._sock)
            connections.served(self)


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
