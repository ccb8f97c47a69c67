"""The chat server: listeners in, one registry and one set of rooms, events out.

Shape::

    Listener (socketserver's TCP server), one per --listen URL
        accepts; ChatServer.start_serving() gives each connection a thread
        of its own, which runs
    ChatServer.serve_connection()
        transport handshake (TLS), refusals, then the scheme's Protocol:
        connection_made(), data_received() for every chunk read, and the
        leave when it ends

For the caller: ``start()``, then ``stop()``. For protocols and plugins, the
actions: :meth:`~ChatServer.admit`, :meth:`~ChatServer.run_command`,
:meth:`~ChatServer.broadcast_message`, :meth:`~ChatServer.change_room`,
:meth:`~ChatServer.change_nick` and :meth:`~ChatServer.publish`.

Every event said to a room passes through :meth:`ChatServer.publish`: it
gets its number in the room's stream (from the sequencer, which a cluster
plugin may supply), is rendered once per wire format present in the room,
and the bytes are appended once to the room's feed for that format
(:mod:`chatcore.engine.feed`), from which the writer thread
(:mod:`chatcore.engine.writer`) sends them to each member but the excluded
one.

Offsets are unique and gap-free per room, and each sender's events reach
every member in the order sent. Two events published at the same instant by
different threads may reach members in either order: numbering and
appending are two steps, and only the append takes the feed's lock, for a
few list operations (a per-room lock held across the whole delivery made
concurrent senders convoy, at a third of the speed). A client that resumes therefore asks for everything after the
highest offset below which it has seen every event, and drops offsets it
already has.
"""

from __future__ import annotations

import _thread
import argparse
import itertools
import logging
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from chatcore.engine.auth import verify_password
from chatcore.engine.connection import Client
from chatcore.engine.limits import ConnectionLimits, FailureCounter, TokenBucket, parse_networks
from chatcore.engine.registry import Registry
from chatcore.engine.stats import Stats
from chatcore.engine.writer import Writer
from chatcore.events import Action, Chat, Error, Joined, Left, NickChanged, RoomEvent, Welcome
from chatcore.message import Message
from chatcore.transports import Scheme, Transport
from chatcore.transports.listener import Listener, format_address
from chatcore.transports.tls import HANDSHAKE_TIMEOUT, Certificates, TLSTransport

if TYPE_CHECKING:
    from chatcore.config import Config

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
#: Wrong passwords: each costs its connection this many seconds more than
#: the last (at most PASSWORD_MAX_DELAY), and this many close it.
PASSWORD_DELAY = 1.0
PASSWORD_MAX_DELAY = 5.0
PASSWORD_ATTEMPTS = 3
#: Guest names tried on entering the chat when a cluster says they are taken.
GUEST_NAME_TRIES = 100


class Sequencer(Protocol):
    """What numbers room events: the local one below, or a cluster plugin's
    (``chatcore_sequencer``)."""

    def next(self, room: str) -> tuple[str, int]:
        """``(epoch, offset)`` for the room's next event; thread-safe."""
        ...


class LocalSequencer:
    """Numbers each room's events in this process: offsets 1, 2, 3 ... per
    room, under an epoch drawn at random when the server starts (so a client
    that resumes across a restart sees the numbering changed).

    Thread-safe without a lock: ``next()`` of an ``itertools.count`` is one
    atomic step under the GIL.
    """

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self._counters: dict[str, Iterator[int]] = {}

    def next(self, room: str) -> tuple[str, int]:
        """The identity of the room's next event: ``(epoch, offset)``."""
        counter = self._counters.get(room)
        if counter is None:
            counter = self._counters.setdefault(room, itertools.count(1))
        return self.epoch, next(counter)


def _stamp(event: RoomEvent, epoch: str, offset: int, when: float) -> None:
    # An event is immutable once published; publish() gives it its identity
    # first, while only the publishing thread holds it (a copy with
    # dataclasses.replace() would cost ten times as much).
    event.__dict__.update(epoch=epoch, offset=offset, time=when)


class ChatServer:
    """A chat server configured by a :class:`~chatcore.config.Config`.

    :ivar registry: the connected clients, their nicknames and rooms.
    :ivar listeners: one :class:`~chatcore.transports.listener.Listener` per
        ``--listen`` URL, bound when the server is made.
    :ivar schemes: every URL scheme the plugins registered.
    :ivar hooks: the plugins (:class:`chatcore.hooks.Hooks`).
    :ivar sequencer: numbers room events (``chatcore_sequencer``).
    :ivar stats: what the engine counts (:mod:`chatcore.engine.stats`),
        for the metrics plugin.
    """

    def __init__(self, config: Config) -> None:
        options = config.options
        self.config = config
        self.hooks = config.pluginmanager.hooks
        self.registry = Registry()
        self.writer = Writer()
        self.stats = Stats()
        self.max_line: int = options.max_line
        self.max_queue: int = options.max_queue
        self.max_sendq: int = options.max_sendq
        self.max_clients: int = options.max_clients
        self.sequencer: Sequencer = LocalSequencer()
        #: Per-address connection limits (:mod:`chatcore.engine.limits`).
        self.limits = ConnectionLimits(
            options.max_per_address,
            options.max_new_per_address,
            options.new_window,
            parse_networks(options.limit_exempt),
        )
        #: Input pacing (fakelag): lines per second and burst; rate 0 is off.
        self.line_rate: float = options.line_rate
        self.line_burst: int = options.line_burst
        #: Seconds of silence before a connection is closed; 0 is never.
        self.idle_timeout: float = options.idle_timeout
        #: Seconds a connection may take to be admitted (a password, IRC
        #: registration); 0 is no limit.
        self.login_timeout: float = options.login_timeout
        #: The server password (plain text or a hash), or None.
        self.password: str | None = config.password
        #: Wrong passwords per address, in the last ten minutes.
        self.password_failures = FailureCounter(600.0)
        self._sweeper: threading.Thread | None = None
        self._swept = threading.Event()
        self.schemes: dict[str, Scheme] = config.schemes
        self.certificates: Certificates | None = config.certificates
        self._stopping = False
        self._stopped = False
        self._accepting = False
        self._connections_lock = threading.Lock()
        #: Every connection being served, registered or not yet (TLS handshake,
        #: IRC registration): what stop() must disconnect.
        self.connections: set[Client] = set()
        #: The thread of every connection being served, by ident: added by
        #: the accept loop as it starts one, removed by the thread itself as
        #: its last act. stop() waits until it is empty.
        self._serving: set[int] = set()
        self._serving_changed = threading.Condition(self._connections_lock)
        #: Sockets still in their TLS handshake (no Client yet): stop()
        #: shuts them down, or it would wait out each one's handshake timeout.
        self._handshaking: set[socket.socket] = set()
        self.listeners: list[Listener] = []
        for url in config.listen:
            try:
                self.listeners.append(Listener(self, url, self.schemes[url.scheme], options.backlog))
            except OSError as exc:
                for listener in self.listeners:
                    listener.server_close()
                raise OSError(exc.errno, exc.strerror, str(url)) from exc

    @property
    def address(self) -> tuple[str, int]:
        """The first listener's bound ``(host, port)``."""
        return self.listeners[0].address

    @property
    def address_text(self) -> str:
        """Every bound listener, ``tcp://127.0.0.1:12000, tls://...``."""
        return ", ".join(str(listener.url) for listener in self.listeners)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` has begun (leaves are then not published
        to the rooms here: everyone is going)."""
        return self._stopping

    def listener(self, scheme: str) -> Listener:
        """The first listener of ``scheme``."""
        return next(listener for listener in self.listeners if listener.url.scheme == scheme)

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the plugins, the writer and the accept loops (in threads)."""
        # A log record asks threading for its thread's name, and a thread
        # that threading did not start (each connection's: start_serving())
        # gets a _DummyThread made for it, kept for ever before Python
        # 3.13: a leak per connection that logs, and a deeper stack on its
        # reader. No format of chatcore's shows the thread; records have
        # thread and threadName None (for every thread of the process).
        logging.logThreads = False
        self.hooks.server_start(self)
        sequencer = self.hooks.sequencer(self)
        if sequencer is not None:
            self.sequencer = sequencer
        self.writer.start()
        self._start_sweeper()
        for listener in self.listeners:
            listener.start()
        self._accepting = True

    @property
    def accepting(self) -> bool:
        """True from the end of :meth:`start` until :meth:`stop` begins:
        while new connections are accepted (what ``/healthz`` reports)."""
        return self._accepting and not self._stopping

    def stop(self, reason: str = "server shutting down", timeout: float = SHUTDOWN_LINGER) -> None:
        """Stop accepting, tell every client, flush what is queued, close.

        Returns within about ``timeout`` seconds, whatever the clients do.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        for listener in self.listeners:
            listener.stop()
        self._swept.set()
        deadline = time.monotonic() + timeout
        with self._connections_lock:
            clients = list(self.connections)
            handshaking = list(self._handshaking)
        for sock in handshaking:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # ends the handshake's recv()
            except OSError:
                pass  # gone already
        for client in clients:
            client.disconnect(reason, notice=reason, linger=timeout)
        me = threading.get_ident()  # stop() may run on a client's own thread (a plugin's command)
        with self._serving_changed:
            # Then their threads have closed their sockets: none is left
            # writing to a closed descriptor. One that does not end in time
            # is given up (they are daemon threads).
            self._serving_changed.wait_for(
                lambda: len(self._serving) <= (me in self._serving), max(0.0, deadline - time.monotonic()) + 0.5
            )
        self.hooks.server_stop(self)
        self.server_close()

    def server_close(self) -> None:
        """Close the listening sockets and stop the writer."""
        for listener in self.listeners:
            listener.server_close()
        self.writer.stop()

    def reload(self) -> bool:
        """Reload the configuration (SIGHUP): read the file again and apply
        what can change while running.

        All or nothing: the new options are checked first (the file, the
        TLS certificate, every plugin's ``chatcore_reload``), and any
        problem is logged and keeps the running configuration. Options
        marked ``restart_only`` (listeners, plugins ...) are logged as
        "needs a restart" and keep their running values. Of the engine's own
        options, ``--max-clients`` applies at once, ``--max-line`` and
        ``--max-queue`` to new connections, the TLS certificate to new
        connections, ``--log-level`` at once.

        :return: True if the new configuration is in use.
        """
        from chatcore import UsageError
        from chatcore.config import read_password, reread_options
        from chatcore.hooks import PluginError

        old = self.config.options
        try:
            # A new selection of plugins shows as --plugins, restart only.
            fresh, parser, _plugins = reread_options(self.config)
            new, changed, restart = _merge_options(old, fresh, parser)
            context = self._check_certificate(new)
            password = read_password(new, self.config.environ)
            appliers = self.hooks.reload(self, old, new)
        except (UsageError, PluginError) as exc:
            log.error("reload failed: %s; the running configuration is kept", exc)
            return False
        for name in restart:
            log.warning("reload: %s changed: needs a restart; left unchanged", name)
        self.config.options = new
        self.max_clients = new.max_clients
        self.max_queue = new.max_queue
        self.max_sendq = new.max_sendq
        self.max_line = new.max_line
        self._apply_limits(new)
        self.password = password
        if new.log_level != old.log_level:
            logging.getLogger("chatcore").setLevel(new.log_level)
        if context is not None and self.certificates is not None:
            self.certificates.use(new.tls_cert, new.tls_key, context)
        self.hooks.apply_reload(appliers)
        log.info("configuration reloaded: %s", ", ".join(changed) + " changed" if changed else "nothing changed")
        return True

    def _apply_limits(self, options: argparse.Namespace) -> None:
        """The abuse limits of a reload, for connections already open too."""
        self.limits.reconfigure(options.max_per_address, options.max_new_per_address, options.new_window)
        if (options.line_rate, options.line_burst) != (self.line_rate, self.line_burst):
            self.line_rate, self.line_burst = options.line_rate, options.line_burst
            for client in self.all_connections():
                client._pace = None  # made again, with the new rate, at its next line
        self.idle_timeout = options.idle_timeout
        self.login_timeout = options.login_timeout
        self._start_sweeper()

    def _check_certificate(self, options: argparse.Namespace) -> ssl.SSLContext | None:
        """The TLS context of the reloaded files, or None without TLS listeners.

        :raises UsageError: they cannot be loaded.
        """
        from chatcore import UsageError
        from chatcore.transports.tls import server_context

        if self.certificates is None:
            return None
        if not options.tls_cert or not options.tls_key:
            raise UsageError("the TLS listeners need --tls-cert and --tls-key, and the new configuration has none")
        try:
            context: ssl.SSLContext = server_context(options.tls_cert, options.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"TLS certificate reload failed ({getattr(exc, 'strerror', None) or exc}); still using the previous "
                f"certificate. Fix --tls-cert {options.tls_cert} / --tls-key {options.tls_key} and send SIGHUP again"
            ) from None
        return context

    # -- connections ----------------------------------------------------------

    def start_serving(self, listener: Listener, sock: socket.socket, peer: Any) -> None:
        """Serve a connection that ``listener`` accepted, on a new thread
        (called by its accept loop).

        A bare thread, not a ``threading.Thread``, whose ``start()`` waits
        until the new thread has run: it would hold the accept loop for
        each connection's set-up and admission in turn, most of a connect
        storm's time (docs/performance.md, "Connect storm"). So a connection's
        thread has no ``threading.Thread``: no name, and nothing for
        ``threading`` to list or join. stop() waits for ``_serving``
        instead; log records carry no thread name (:meth:`start`); the
        stack size is ``threading.stack_size()``'s, as for any thread.
        """
        with self._connections_lock:  # counted before stop() can look, and before the thread can end
            self._serving.add(_thread.start_new_thread(self._serving_thread, (listener, sock, peer)))

    def _serving_thread(self, listener: Listener, sock: socket.socket, peer: Any) -> None:
        try:
            self.serve_connection(listener, sock, peer)
        except Exception:
            self.connection_error(peer)
        finally:
            listener.shutdown_request(sock)
            # The thread's last acts: its counts retired exactly once, then
            # stop() told (it waits for the socket to be closed).
            self.stats.thread_ended()
            with self._serving_changed:
                self._serving.discard(threading.get_ident())
                self._serving_changed.notify_all()

    def serve_connection(self, listener: Listener, sock: socket.socket, peer: Any) -> None:
        """Serve one connection from ``listener`` on its own thread, from the
        handshake to the leave."""
        address = (str(peer[0]), int(peer[1]))
        # Counted from the first moment, so that a TLS handshake that stalls
        # holds its address's slot too; released exactly once, here, however
        # the connection ends (the limits refuse nothing they did not count).
        over_limit = self.limits.acquire(address[0])
        try:
            self._serve(listener, sock, address, over_limit)
        finally:
            if over_limit is None:
                self.limits.release(address[0])

    def _serve(self, listener: Listener, sock: socket.socket, address: tuple[str, int], over_limit: str | None) -> None:
        scheme = listener.scheme
        # Without this, Nagle's algorithm meets delayed ACKs and small rooms
        # see a steady ~40 ms delay per line.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(sock)
        transport: Transport
        if scheme.tls:
            assert self.certificates is not None  # checked when the configuration was read
            transport = TLSTransport(sock, self.certificates.context)
            with self._connections_lock:
                if self._stopping:
                    return
                self._handshaking.add(sock)
            try:
                transport.handshake(HANDSHAKE_TIMEOUT)
            except (OSError, ValueError) as exc:
                if self.stopping:  # the property: stop() may have begun since the check above
                    return  # cut short by stop()
                # Not the server's problem, and not worth a traceback: a
                # plain-text client on a TLS port, a scanner, a timeout.
                log.info("TLS handshake with %s failed: %s", format_address(*address), _why(exc))
                self.stats.refused("tls_handshake")
                return
            finally:
                with self._connections_lock:
                    self._handshaking.discard(sock)
        else:
            transport = Transport(sock)

        client = Client(
            transport,
            address,
            self,
            client_id=self.registry.next_id(),
            max_queue=self.max_queue,
            max_sendq=self.max_sendq,
            wire=scheme.wire,
        )
        label = "shutdown"
        if self._stopping:
            refusal: str | None = "server shutting down"
        elif len(self.connections) >= self.max_clients:
            refusal, label = "server full, try again later", "full"
        elif over_limit is not None:
            refusal, label = over_limit, "address_limit"
        else:
            refusal, label = self.hooks.connection_arriving(address, self), "plugin"
        if refusal:
            log.warning("refused %s: %s", format_address(*address), refusal)
            self.stats.refused(label)
            self._refuse(client, refusal)
            return
        # Checked again where the connection is counted, under the lock:
        # connections arriving together all passed the first check before
        # any was counted, and --max-clients was exceeded by a few.
        with self._connections_lock:
            full = len(self.connections) >= self.max_clients
            if not full:
                self.connections.add(client)
                listener.connected += 1
        if full:
            log.warning("refused %s: server full", format_address(*address))
            self.stats.refused("full")
            self._refuse(client, "server full, try again later")
            return
        self.stats.accepted_connection()

        protocol = scheme.protocol(client)
        try:
            if self._stopping:
                client.disconnect("server shutting down", notice="server shutting down")
                return
            protocol.connection_made()
            self._read(client, protocol.data_received)
            protocol.connection_lost()
        finally:
            self._leave(client)
            with self._connections_lock:
                self.connections.discard(client)
                listener.connected -= 1

    def all_connections(self) -> list[Client]:
        """Every connection being served, admitted or not (a snapshot)."""
        with self._connections_lock:
            return list(self.connections)

    def nicks_in(self, room: str) -> list[str]:
        """Everyone in ``room``, sorted as people read names (ignoring
        case): this server's members and, in a cluster, the other servers'
        (``chatcore_cluster_members``). For ``/who`` and IRC's NAMES."""
        nicks = [member.nick for member in self.registry.members(room)]
        nicks += self.hooks.cluster_members(self).get(room, [])
        return sorted(nicks, key=str.casefold)

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
            transport.sendall(client.wire.encode_for(client, Error(reason)))
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

    def _read(self, client: Client, data_received: Any) -> None:
        recv = client.transport.recv
        clock = time.monotonic
        size = RECV_IDLE
        # No check of client.closed up here: a disconnect from any other
        # thread shuts the socket down, which ends recv() below.
        while True:
            try:
                data = recv(size)
            except OSError as exc:
                log.debug("read from %r failed: %s", client, exc)
                client.disconnect("connection lost", tell=False)
                return
            if not data:
                return
            size = RECV_BUSY if len(data) >= size else RECV_IDLE
            # When this input arrived: message latency starts here, and idle
            # connections are timed from it.
            client.arrived = clock()
            data_received(data)
            if client.closed:  # disconnected (by what it sent, or another thread)
                return

    def _start_sweeper(self) -> None:
        if (self.idle_timeout or self.login_timeout) and self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep, name="chatcore-deadlines", daemon=True)
            self._sweeper.start()

    def _sweep(self) -> None:
        """Close connections past their deadlines, on a thread of its own:
        the idle timeout, and the login deadline for connections not yet
        admitted (a password not given, an IRC client that never registers).

        Defends against connections that hold a thread and a slot doing
        nothing; a reader's own thread cannot time itself out without a
        socket timeout, which the writer's non-blocking sends share.
        """
        # Timed afresh each round: a reload may change the deadlines.
        while not self._swept.wait(min(t for t in (self.idle_timeout, self.login_timeout, 4.0) if t) / 4):
            now = time.monotonic()
            with self._connections_lock:
                clients = list(self.connections)
            for client in clients:
                if client.closed:
                    continue
                if self.login_timeout and not client.admitted and now - client.connected_at > self.login_timeout:
                    where = format_address(*client.address)
                    log.info("closing %s: not logged in within %gs", where, self.login_timeout)
                    client.disconnect(
                        f"not logged in within {self.login_timeout:g} seconds; connect and log in again", cause="idle"
                    )
                elif self.idle_timeout and now - client.last_input > self.idle_timeout:
                    client.disconnect(
                        f"idle for {self.idle_timeout:g} seconds (this server's --idle-timeout); "
                        "send /ping now and then to stay",
                        cause="idle",
                    )

    def pace(self, client: Client) -> None:
        """Flood control for everyone (Ergo's "fakelag"): call once per line
        or command a client sends, on its own thread, before acting on it.

        Within ``--line-burst`` it returns at once, so pasting a few lines
        works; past it, it sleeps so the client is held to ``--line-rate``
        lines a second. Nothing is dropped: the flooder's input waits in its
        own socket buffer and TCP slows it down, and nobody else waits.
        Clients from ``--limit-exempt`` networks are not paced.
        """
        if not self.line_rate:
            return
        bucket = client._pace
        now = time.monotonic()
        if bucket is None:
            if self.limits.is_exempt(client.address[0]):
                bucket = client._pace = False
            else:
                bucket = client._pace = TokenBucket(self.line_rate, self.line_burst, now)
        if bucket:
            delay = bucket.delay(now)
            if delay > 0:
                _sleep_unless_closed(client, delay)

    def _leave(self, client: Client) -> None:
        if client.close_reason is None:
            client.disconnect("connection closed", tell=False)
        reason = client.close_reason or "connection closed"
        self.stats.disconnected(client.close_cause or "closed")
        room = client.room
        if self.registry.remove(client):
            if not self._stopping:
                left = Left(room, nick=client.nick, reason=reason, kicked_by=client.kicked_by or "")
                self.stats.delivered(self._publish(left))
            log.info("client left: %s from %s (%s)", client.nick, format_address(*client.address), reason)
            self.hooks.client_left(client, room, reason)
            self.hooks.release_nick(client, client.nick)
        # The writer is done by the client's finish deadline (its linger).
        if not client.wait_closed(max(SHUTDOWN_LINGER, client._finish_deadline - time.monotonic()) + 5):
            log.warning("writer did not release %r in time; closing anyway", client)

    def connection_error(self, peer: Any) -> None:
        log.exception("unexpected error with %s", format_address(str(peer[0]), int(peer[1])))

    # -- actions: what protocols and plugins make happen -----------------------

    @property
    def password_required(self) -> bool:
        """Whether clients must give the server password before
        :meth:`admit` (``--password-file`` or ``CHATCORE_PASSWORD``)."""
        return self.password is not None

    def check_password(self, client: Client, given: str) -> bool:
        """Check a client's server password; every protocol's one way in
        (native ``/pass``, IRC ``PASS``, a web login), on the client's own
        thread, before it calls :meth:`admit`.

        True if no password is set or ``given`` is right. A wrong one is
        logged with the address (never the password), costs the connection
        a delay that grows with each failure (it sleeps on this thread only:
        guessing is slowed, nobody else waits), and the third closes it.
        The comparison takes constant time.
        """
        if self.password is None:
            return True
        where = format_address(*client.address)
        if verify_password(self.password, given):
            log.info("server password accepted from %s", where)
            return True
        failures = client.data["chatcore.password_failures"] = client.data.get("chatcore.password_failures", 0) + 1
        # Counted per address too, so reconnecting does not reset the delay.
        recent = self.password_failures.record(client.address[0])
        log.warning(
            "wrong server password from %s (attempt %d on this connection, %d from this address in %g minutes)",
            where,
            failures,
            recent,
            self.password_failures.window / 60,
        )
        time.sleep(min(PASSWORD_DELAY * max(failures, recent), PASSWORD_MAX_DELAY))
        if failures >= PASSWORD_ATTEMPTS:
            client.disconnect(f"{failures} wrong passwords")
        return False

    def admit(self, client: Client, room: str | None = None, nick: str | None = None) -> bool:
        """Let a connected client into the chat: ``nick`` or a fresh
        ``guest-N`` nickname, ``room`` or the default room, the welcome
        text, and the join notice for the others.

        A protocol whose clients choose their nickname before they enter
        (IRC's registration) passes it here, so that the others never see a
        guest name first. Returns False, admitting nothing, if ``nick`` is
        taken: the protocol tells its client and may try again. The caller
        checks that ``nick`` is a valid nickname.
        """
        # A chosen nickname is claimed in the cluster first (chatcore_claim_nick).
        if nick is not None and self.hooks.claim_nick(client, nick) is not None:
            return False
        if not self.registry.add(client, room, nick):
            if nick is not None:
                self.hooks.release_nick(client, nick)
            return False
        client.admitted = True
        if nick is None:
            self._claim_guest_nick(client)
        client.send(Welcome(tuple(self.hooks.welcome(client))))
        log.info("client joined: %s from %s", client.nick, format_address(*client.address))
        self.stats.delivered(self._publish(Joined(client.room, nick=client.nick), exclude=client))
        self.hooks.client_joined(client, client.room)
        return True

    def _claim_guest_nick(self, client: Client) -> None:
        """Make the guest name unique in the cluster too (``chatcore_claim_nick``):
        a name another server has is replaced by the next guest number."""
        if not self.hooks.implemented("claim_nick"):
            return
        for _ in range(GUEST_NAME_TRIES):
            if self.hooks.claim_nick(client, client.nick) is None:
                return
            nick = self.registry.guest_nick()
            self.registry.rename(client, nick)
        log.warning("no free guest name for %r after %d tries; keeping %s", client, GUEST_NAME_TRIES, client.nick)

    def run_command(self, client: Client, name: str, args: str) -> None:
        """Run ``/name args`` for ``client`` through ``chatcore_command``."""
        if not self.hooks.command(client, name, args):
            client.error(f"unknown command /{name} (try /help)")

    def broadcast_message(self, message: Message) -> None:
        """Run a message through the filters and publish it to its room."""
        sender = message.sender
        counts = self.stats.mine()
        counts.messages += 1
        self.hooks.message(message)
        if message.rejected is not None:
            sender.error(message.rejected)
            return
        if not message.text:
            return
        room = message.room
        # Numbered as it is made, which costs less than publish() stamping it
        # afterwards: this runs for every message.
        epoch, offset = self.sequencer.next(room)
        now = time.time()
        # Chat is not echoed to its sender; an action is, as the answer to
        # /me, unless the sender's client shows its own actions (IRC).
        if message.kind == "action":
            action = Action(room, sender.nick, message.text, offset, epoch, now)
            recipients = self._publish(action, exclude=None if sender.wire.echoes_actions else sender)
        else:
            chat = Chat(room, sender.nick, message.text, offset, epoch, now)
            recipients = self._publish(chat, exclude=sender)
        counts.deliveries += recipients
        if sender.arrived:  # 0.0 for a client no reader has read for (a plugin's)
            counts.observe_latency(time.monotonic() - sender.arrived)
        self.hooks.message_delivered(message, recipients)

    def broadcast_messages(self, messages: Sequence[Message]) -> None:
        """Several chat messages from one sender, read together (the lines
        of one ``recv()``): each runs through the filters as with
        :meth:`broadcast_message`, and those to one room are published
        together (encoded in one go and appended to the room's feeds with
        one lock each).
        Actions and private messages go through :meth:`broadcast_message`."""
        counts = self.stats.mine()
        passed: list[Message] = []
        events: list[RoomEvent] = []
        for message in messages:
            if message.kind != "chat":
                self._publish_together(passed, events, counts)
                self.broadcast_message(message)
                continue
            counts.messages += 1
            self.hooks.message(message)
            if message.rejected is not None:
                message.sender.error(message.rejected)
                continue
            if not message.text:
                continue
            if events and message.room != events[0].room:  # a filter may send it elsewhere
                self._publish_together(passed, events, counts)
            room = message.room
            epoch, offset = self.sequencer.next(room)
            events.append(Chat(room, message.sender.nick, message.text, offset, epoch, time.time()))
            passed.append(message)
        self._publish_together(passed, events, counts)

    def _publish_together(self, messages: list[Message], events: list[RoomEvent], counts: Any) -> None:
        """Publish the chat ``events`` made from ``messages`` (one sender, one
        room) as one piece, then empty both lists."""
        if not events:
            return
        sender = messages[0].sender
        recipients = self._publish_all(events, exclude=sender)
        counts.deliveries += recipients * len(events)
        if sender.arrived:
            latency = time.monotonic() - sender.arrived
            for _ in events:
                counts.observe_latency(latency)
        for message in messages:
            self.hooks.message_delivered(message, recipients)
        messages.clear()
        events.clear()

    def change_room(self, client: Client, room: str, reason: str | None = None) -> None:
        """Move a client to ``room``, with the leave and join notices and
        hooks (used by ``/join``)."""
        old = self.registry.move(client, room)
        self.stats.delivered(
            self._publish(Left(old, nick=client.nick, reason=reason or f"joined {room}", disconnected=False))
        )
        self.hooks.client_left(client, old, reason or f"joined {room}")
        self.stats.delivered(self._publish(Joined(room, nick=client.nick), exclude=client))
        self.hooks.client_joined(client, room)

    def change_nick(self, client: Client, nick: str) -> bool:
        """Rename ``client`` and tell its room; False if the nickname is
        taken (checked and taken under the registry's lock, so of two
        clients asking for the same name at once exactly one gets it; a
        cluster plugin claims it across servers first, with
        ``chatcore_claim_nick``)."""
        old = client.nick
        if self.hooks.claim_nick(client, nick) is not None:
            return False
        if not self.registry.rename(client, nick):
            self.hooks.release_nick(client, nick)
            return False
        self.hooks.release_nick(client, old)
        self.stats.delivered(self._publish(NickChanged(client.room, nick=old, new_nick=nick), exclude=client))
        return True

    # -- delivery -------------------------------------------------------------

    def publish(self, event: RoomEvent, exclude: Client | None = None, *, relay: bool = True) -> int:
        """Say ``event`` to every member of its room in this server but ``exclude``.

        The one path for everything said to a room. An event that has no
        identity yet (``offset == 0``) gets the room's next one from the
        sequencer; one that has it (from another server) keeps it. The event
        is rendered once per wire format in the room, and the bytes are
        appended to that format's feed, for every member. Unless ``relay`` is false,
        ``chatcore_room_event`` then tells the plugins, so a cluster plugin
        can carry it to other servers (and publish theirs with
        ``relay=False``).

        :return: how many clients it was queued to.
        """
        count = self._publish(event, exclude, relay)
        self.stats.mine().deliveries += count
        return count

    def _publish(self, event: RoomEvent, exclude: Client | None = None, relay: bool = True) -> int:
        """:meth:`publish`, leaving the count of deliveries to the caller: a
        message adds it to its thread's counts, which it has already; the
        engine's join, leave and rename notices count theirs with
        ``stats.delivered()``, so that a reader thread that never sends a
        message has no per-thread counts (memory per idle client)."""
        return self._publish_all((event,), exclude, relay)

    def _publish_all(self, events: Sequence[RoomEvent], exclude: Client | None = None, relay: bool = True) -> int:
        """:meth:`_publish` for events of one room and one kind, in order,
        appended to each feed of the room together. :return: how many
        clients each was queued to."""
        first = events[0]
        room = first.room
        for event in events:
            if not event.offset:
                epoch, offset = self.sequencer.next(room)
                _stamp(event, epoch, offset, time.time())
        count = 0
        woken = []  # feeds that were idle: handed to the writer together
        # Presence notices may wait a moment, to leave in one send() with the
        # rest of a burst (chatcore.engine.writer); the rest goes out at once.
        batched = first.batched
        single = len(events) == 1
        for feed in self.registry._feeds.get(room, ()):  # feeds(), inline: every message
            # Encoded once per wire format and appended once, whatever the
            # room's size: the writer sends each member what it has not had
            # (chatcore.engine.feed).
            wire = feed.wire
            if single:
                data = wire.encode(first)
                if not data:
                    continue
            else:
                lines = [line for line in [wire.encode(event) for event in events] if line]
                if not lines:
                    continue
            members = feed.members
            count += len(members) - (exclude is not None and exclude._feed is feed)
            with feed.lock:
                if single:
                    feed.append(data, exclude)
                else:
                    feed.extend(lines, exclude)
                if feed.mark_ready(batched):
                    woken.append(feed)
        if woken:
            if batched:
                self.writer.schedule_batched(woken)
            else:
                self.writer.schedule_feeds(woken)
        if relay and self.hooks.room_events_observed:
            for event in events:
                self.hooks.room_event(self, event)
        return count


def _merge_options(
    old: argparse.Namespace, fresh: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[argparse.Namespace, list[str], list[str]]:
    """The running options with what may change taken from ``fresh``.

    :return: the merged options, the options changed, and those that
        changed but need a restart (kept at their running values), by
        their long option names.
    """
    from chatcore.configfile import is_restart_only

    actions = {action.dest: action for action in parser._actions}
    new = argparse.Namespace(**vars(old))
    changed: list[str] = []
    restart: list[str] = []
    for dest, value in vars(fresh).items():
        # An option only the new selection of plugins has is part of
        # "plugins: needs a restart"; one only the old has stays.
        if not hasattr(old, dest) or getattr(old, dest) == value:
            continue
        action = actions.get(dest)
        name = next((o for o in action.option_strings if o.startswith("--")), dest) if action else dest
        if action is not None and is_restart_only(action):
            restart.append(name)
        else:
            setattr(new, dest, value)
            changed.append(name)
    return new, changed, restart


# Linux reports a peer's close while input is still unread; elsewhere only
# a full hang-up is seen, and a flooder that left is found at its next read.
_POLL_RDHUP = getattr(select, "POLLRDHUP", 0)


def _sleep_unless_closed(client: Client, delay: float) -> None:
    """Sleep ``delay`` seconds on the client's thread, but stop early if the
    peer closes: a flooder that sent a thousand lines and left must not go
    on speaking, paced, for minutes after it has gone."""
    closed = _POLL_RDHUP | select.POLLHUP | select.POLLERR
    poller = select.poll()
    poller.register(client.sock, select.POLLIN | _POLL_RDHUP)
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        events = poller.poll(left * 1000)
        if not events:
            return
        if any(mask & closed for _fd, mask in events):
            client.disconnect("connection closed", tell=False)
            return
        # More input waiting (the flood itself): it is read after the delay.
        time.sleep(max(0.0, deadline - time.monotonic()))
        return


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
