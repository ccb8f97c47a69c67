"""A connected client, as the server and the plugins see it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatcore.events import Disconnected, Error, Event, Notice, kick_text

if TYPE_CHECKING:
    from chatcore.engine.feed import Membership
    from chatcore.engine.server import ChatServer
    from chatcore.transports import Transport
    from chatcore.wire import Protocol, WireFormat

DEFAULT_MAX_QUEUE = 8192
#: Bytes queued for one client alone (replies, private messages, a web
#: resume answer) before it is dropped as a slow consumer: InspIRCd's hard
#: sendq for users. Counted beside --max-queue's entries because one entry
#: can be 150 KB. Ergo's 96k is for 512-byte IRC lines; ours reach 4 KB.
DEFAULT_MAX_SENDQ = 1 << 20

#: Why clients are disconnected, as a short label for metrics
#: (``chatcore_disconnects_total{reason=...}``): a fixed set, because the
#: reasons themselves are free text (``/quit see you``).
DISCONNECT_CAUSES = (
    "quit",
    "closed",
    "connection_lost",
    "slow_consumer",
    "flood",
    "kick",
    "ban",
    "idle",
    "shutdown",
    "other",
)
# The engine's own reasons, and the bundled plugins', by their text.
_CAUSE_OF_REASON = {
    "quit": "quit",
    "connection closed": "closed",
    "connection lost": "connection_lost",
    "slow consumer": "slow_consumer",
    "flooding": "flood",
    "server shutting down": "shutdown",
}


#: Held while a thread claims a client's disconnection (a few attribute
#: reads and one write): of two threads disconnecting one client at once (a
#: kick and the idle sweep), one goes on. One lock for every client, taken
#: once per disconnection: a lock each would cost every idle client memory.
_CLAIMS = threading.Lock()


def disconnect_cause(reason: str) -> str:
    """The label of a disconnect reason the engine knows, else ``"other"``."""
    return _CAUSE_OF_REASON.get(reason, "other")


class Client:
    """One connected client.

    Plugins read :attr:`nick`, :attr:`rooms`, :attr:`room` (the current
    one), :attr:`address` and :attr:`id`,
    keep their own per-client state in :attr:`data`, and talk to the client
    with :meth:`send` (any event of :mod:`chatcore.events`), :meth:`notice`,
    :meth:`error` and :meth:`disconnect`. What the client receives is the
    rendering of those events by its :attr:`wire` format. Nick and rooms
    change only through the registry.

    Output is queued, never written by the calling thread: what its rooms
    say is read from each room's shared feed (:mod:`chatcore.engine.feed`),
    what is said to it alone goes to a bounded queue of its own, and the
    server's writer drains both in order (:mod:`chatcore.engine.writer`).
    A client that falls too far behind is disconnected as a slow consumer;
    it never holds up the thread that was sending to it.
    """

    __slots__ = (
        "__weakref__",
        "_account",
        "_blocked",
        "_closing_by",
        "_done",
        "_drained",
        "_encrypt",
        "_finish_deadline",
        "_finishing",
        "_max_queue",
        "_max_sendq",
        "_memberships",
        "_pace",
        "_queue",
        "_scheduled",
        "_sendq",
        "_unsent",
        "_writer_done",
        "address",
        "admitted",
        "arrived",
        "away",
        "bytes_in",
        "bytes_out",
        "close_cause",
        "close_reason",
        "connected_at",
        "data",
        "id",
        "kicked_by",
        "nick",
        "offered_nick",
        "protocol",
        "realname",
        "room",
        "rooms",
        "server",
        "silence",
        "sock",
        "transport",
        "user",
        "wire",
    )

    def __init__(
        self,
        transport: Transport,
        address: tuple[str, int],
        server: ChatServer,
        *,
        wire: WireFormat,
        client_id: int = 0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_sendq: int = DEFAULT_MAX_SENDQ,
    ) -> None:
        #: How bytes travel (:mod:`chatcore.transports`): plain TCP, TLS ...
        self.transport = transport
        self.sock = transport.sock
        #: How room events become bytes for this client (:mod:`chatcore.wire`).
        self.wire = wire
        #: Its side of the wire protocol, which renders what is said to it
        #: alone; set once the connection is served (None for a client a
        #: plugin or a test made: the wire format renders for it).
        self.protocol: Protocol | None = None
        #: The server this client is connected to (its ``registry``,
        #: ``hooks`` and ``publish()`` are what commands need).
        self.server = server
        #: The peer's ``(host, port)``.
        self.address = address
        #: A number unique for this server's lifetime.
        self.id = client_id
        #: The nickname; set by the registry.
        self.nick = ""
        #: The nickname it asked for before it was let in (native ``/nick``
        #: before ``/pass``), to enter under; ``""`` for none.
        self.offered_nick = ""
        #: The user name it gave on connecting (IRC's ``USER``), carried by
        #: the events it causes; ``""`` if it gave none.
        self.user = ""
        #: The real name it gave on connecting (IRC's ``USER``), or ``""``.
        self.realname = ""
        #: Its away message (IRC's ``AWAY``), ``""`` while it is not away;
        #: the other servers of a cluster learn it with its presence.
        self.away = ""
        #: The rooms it is in, in the order it joined them; set by the registry.
        self.rooms: tuple[str, ...] = ()
        #: Its current room, one of :attr:`rooms` (where the native
        #: protocol's plain lines go), or ``""`` in none; set by the registry.
        self.room = ""
        self._account = ""  # see the account property
        #: Free-form per-client state for plugins, keyed by plugin name.
        self.data: dict[str, Any] = {}
        #: Why the client is being disconnected (``None`` while connected).
        self.close_reason: str | None = None
        # The thread disconnecting it (0: none yet): see disconnect().
        self._closing_by = 0
        #: That reason as one of :data:`DISCONNECT_CAUSES` (``None`` while connected).
        self.close_cause: str | None = None
        #: The operator who kicked the client out (``disconnect(kicked_by=...)``), or None.
        self.kicked_by: str | None = None
        #: When the reader last received data (``time.monotonic()``; 0.0
        #: before the first read): where a message's latency starts.
        self.arrived = 0.0
        #: Bytes read from it (by its reader thread; after TLS) and written
        #: to it (by the writer; TLS records as sent): for the admin's view.
        self.bytes_in = 0
        self.bytes_out = 0
        #: When it connected (``time.monotonic()``): what the login deadline
        #: is measured from.
        self.connected_at = time.monotonic()
        #: True once ``server.admit()`` let it into the chat.
        self.admitted = False
        self._pace: Any = None  # the input pacing's token bucket, made on first use
        #: What to do if the client stays silent: ``(deadline, callback)``
        #: (:meth:`on_silence`), or None.
        self.silence: tuple[float, Callable[[], None]] | None = None

        # Output state, shared with the writer thread (see chatcore.engine.writer).
        self._max_queue = max_queue
        # A list, not a deque: an empty deque holds a block of 64 slots (760
        # bytes a client, idle or not), an empty list 56 bytes; the writer
        # takes from the front in batches, which a list does as cheaply.
        self._queue: list[bytes] = []
        # Bytes in _queue: a running count, added to by send_data() and taken
        # from by the writer. Those can race (two threads' += and -=), so the
        # writer sets it to 0 whenever it empties the queue: a count that
        # drifted is put right at the next moment the client is level.
        self._max_sendq = max_sendq
        self._sendq = 0
        # Released by the writer when the queue is empty again (wait_sent()).
        self._drained: threading.Lock | None = None
        # Where it is in each feed it reads, one per room (set by the
        # registry, under the feed's lock; an immutable tuple, replaced).
        self._memberships: tuple[Membership, ...] = ()
        # True: in the writer's ready queue, or blocked; False: idle.
        self._scheduled = False
        self._unsent: bytes | memoryview = b""
        self._blocked = False  # waiting for the socket to become writable
        self._finishing = False
        self._finish_deadline = 0.0
        self._done = False
        # Held until the writer is done with the socket: a bare lock is a
        # latch at a tenth of a threading.Event's memory, which matters with
        # thousands of clients.
        self._writer_done = threading.Lock()
        self._writer_done.acquire()
        # The writer encrypts just before sending (TLS); None for plain TCP.
        self._encrypt: Callable[[bytes], bytes] | None = None
        if transport.encrypts:
            self._encrypt = transport.encrypt
            transport.set_output_callback(self._flush_transport)

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.nick!r} in {self.room!r} from {self.address[0]}:{self.address[1]}>"

    @property
    def last_input(self) -> float:
        """When it last sent anything, or connected (``time.monotonic()``):
        what the idle deadline is measured from."""
        return self.arrived or self.connected_at

    @property
    def closed(self) -> bool:
        """True once the client is being disconnected."""
        return self.close_reason is not None

    @property
    def queued(self) -> int:
        """Pieces waiting to be written to this client: its rooms' lines it
        has not had yet, and what is queued to it alone."""
        behind = 0
        for membership in self._memberships:
            feed = membership.feed
            if feed is not None:
                behind += feed.end - membership.pos
        return len(self._queue) + behind

    # -- output -------------------------------------------------------------

    @property
    def account(self) -> str:
        """The account it is logged in to, or ``""``: set by an accounts
        plugin (the bundled ``accounts``), read by anyone (IRC's WHOIS).
        Setting it to another tells the plugins (``chatcore_account_changed``)."""
        return self._account

    @account.setter
    def account(self, name: str) -> None:
        old, self._account = self._account, name
        hooks = getattr(self.server, "hooks", None)  # a test's stand-in server may have none
        if name != old and hooks is not None:
            hooks.account_changed(self, old)

    def send(self, event: Event) -> None:
        """Send an event to this client alone, rendered by its protocol
        (:meth:`chatcore.wire.Protocol.render`)."""
        protocol = self.protocol
        data = protocol.render(event) if protocol is not None else self.wire.encode_for(self, event)
        if data:
            self.send_data(data)

    def send_data(self, data: bytes) -> None:
        """Queue bytes already in this client's wire format (whole lines or
        messages of it: nothing is split or merged).

        Room lines do not come this way (they are read from the rooms'
        feeds); what does is put behind the room lines this client has not
        had yet, so it sees both in the order they were said. At most one
        wake-up of the writer, when this client goes from idle to busy.
        """
        if self.close_reason is not None:
            return
        queue = self._queue
        for membership in self._memberships:
            feed = membership.feed
            if feed is not None and membership.pos < feed.end:
                with feed.lock:
                    pending = feed.take(membership, feed.end - membership.pos) if membership.feed is feed else b""
                if pending:
                    queue.append(pending)
                    self._sendq += len(pending)
        # Bounded in entries and in bytes: a client that sends requests with
        # large answers (a web resume) and never reads them would otherwise
        # make the server hold hundreds of MB. Over the bytes once, not on
        # the way: one large answer to a client that reads always goes out.
        if len(queue) >= self._max_queue or self._sendq > self._max_sendq:
            self.disconnect("slow consumer", tell=False)
            return
        queue.append(data)
        self._sendq += len(data)
        if not self._scheduled:
            self._scheduled = True
            self.server.writer.schedule(self)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued for this client alone and not yet taken by the writer."""
        return self._sendq

    def wait_sent(self, timeout: float) -> bool:
        """Wait until what is queued for this client alone has gone to the
        kernel, or the client is closed; False if ``timeout`` passed first.

        For the client's own thread, before it reads the next request whose
        answer would join the queue (a pipelined HTTP request, a web
        resume): its input then waits in the socket and TCP holds the client
        back, rather than its answers piling up here (as nginx reads the
        next pipelined request only once the previous answer is written).
        """
        if self._done or not (self._queue or self._unsent):
            return True
        latch = threading.Lock()
        latch.acquire()
        self._drained = latch
        if self._done or not (self._queue or self._unsent):  # drained meanwhile: the writer may not look again
            self._drained = None
            return True
        if latch.acquire(timeout=timeout):
            return True
        self._drained = None
        return False

    def on_silence(self, seconds: float, callback: Callable[[], None]) -> None:
        """Call ``callback()`` if the client sends nothing in the next
        ``seconds``: on the thread that reads its input, in order with it
        (a protocol's own state needs no lock), and with no thread kept
        waiting meanwhile, so that a storm of silent connections costs no
        thread each. Any input first calls it off; a second call replaces
        the first. For a protocol's wait for a first line (the native
        protocol enters a client that says nothing under a guest name);
        from its own methods only (connection_made, data_received)."""
        self.silence = (time.monotonic() + seconds, callback)

    def notice(self, text: str) -> None:
        """Send a server notice to this client (native: ``* <text>``)."""
        self.send(Notice(text))

    def error(self, text: str) -> None:
        """Send an error to this client only (native: ``! <text>``)."""
        self.send(Error(text))

    def _flush_transport(self) -> None:
        # The transport made output of its own (a TLS key-update reply): an
        # empty entry gets the writer to send it, in order with the rest.
        self.send_data(b"")

    # -- disconnecting ------------------------------------------------------

    def disconnect(
        self,
        reason: str,
        *,
        tell: bool = True,
        notice: str | None = None,
        linger: float = 0.0,
        cause: str | None = None,
        kicked_by: str | None = None,
    ) -> None:
        """Disconnect this client, from any thread; idempotent.

        What is already queued is still written (up to ``linger`` seconds if
        the client is not reading), then the connection is closed. The
        client's own thread sees the close, removes the client from the
        registry and reports the departure with ``reason``.

        :param reason: why; shown to the others in the leave notice.
        :param tell: send the client a :class:`~chatcore.events.Disconnected`
            first (native: ``! disconnected: <reason>``).
        :param notice: a notice line to send instead of the error.
        :param linger: seconds to keep trying to write what is queued.
        :param cause: one of :data:`DISCONNECT_CAUSES`, for metrics (default:
            taken from a reason the engine knows, else ``"other"``); a
            plugin that kicks or bans says ``cause="kick"`` or ``"ban"``.
        :param kicked_by: the nickname of the operator kicking the client
            out; ``reason`` is then theirs, told to all as ``kicked by NICK:
            reason`` (:func:`chatcore.events.kick_text`), the cause is
            ``"kick"`` and the leave event says who (IRC shows a ``KICK``).
        """
        # One thread disconnects it, whichever asked first: a second one at
        # the same moment would send last words of its own and set a reason
        # over the first's. The same thread may come again: its last words
        # overflowing the queue disconnect it as a slow consumer, inside.
        me = threading.get_ident()
        with _CLAIMS:
            if self.close_reason is not None or self._closing_by not in (0, me):
                return
            self._closing_by = me
        for membership in self._memberships:  # nothing its rooms say after its last words
            feed = membership.feed
            if feed is None:
                continue
            with feed.lock:
                pending = feed.detach(self)
            if pending:
                self._queue.append(pending)
        kick_words = reason
        if kicked_by is not None:
            reason, cause = kick_text(kicked_by, reason), cause or "kick"
            self.kicked_by = kicked_by  # before the last words: a wire format may show a kick its way
        if notice is not None:
            self.notice(notice)
        elif tell:
            words = "" if kicked_by is None else kick_words
            self.send(Disconnected(reason, kicked_by or "", words))
        # That last line may have overflowed the queue, closing the client as
        # a slow consumer. Checked through the property: mypy assumes the
        # calls above left close_reason None.
        if self.closed:
            return
        self.close_reason = reason
        self.close_cause = cause if cause in DISCONNECT_CAUSES else disconnect_cause(reason)
        self.server.writer.finish(self, linger)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the writer is done with this client's socket."""
        if self._writer_done.acquire(timeout=-1 if timeout is None else timeout):
            self._writer_done.release()
            return True
        return False
