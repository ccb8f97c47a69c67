"""The chat server: one registry, one set of rooms, every event numbered and delivered.

Shape::

    ChatServer                         the chat: who is here, what they say
        .registry   clients, nicknames, rooms (chatcore.engine.registry)
        .publish()  every room event, rendered once per wire format and
                    appended to the room's feeds (chatcore.engine.feed)
        .writer     the one thread that sends all output (chatcore.engine.writer)
        .gate       admission, passwords, pacing, deadlines (chatcore.engine.gate)
        .serving    accept -> handshake -> protocol -> leave, a thread per
                    connection, and the deadline sweeper (chatcore.engine.serving)
        .listeners  one accept loop per --listen URL (chatcore.transports.listener)

For the caller: ``start()``, then ``stop()``; on SIGHUP,
:func:`chatcore.reload.reload_configuration` (the configuration layer above
the engine) reads the configuration again and applies it here. For protocols and plugins, the actions:
:meth:`~ChatServer.admit`, :meth:`~ChatServer.run_command`,
:meth:`~ChatServer.broadcast_message`, :meth:`~ChatServer.join_room`,
:meth:`~ChatServer.part_room`, :meth:`~ChatServer.change_nick` and
:meth:`~ChatServer.publish`; and the
gate's :meth:`~ChatServer.check_password` and :meth:`~ChatServer.pace`.

Every event said to a room passes through :meth:`ChatServer.publish`: it
gets its position in the room's stream from the backplane
(:mod:`chatcore.engine.backplane`, which a cluster plugin may replace), is
rendered once per wire format present in the room, and the bytes are
appended once to the room's feed for that format
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

import argparse
import dataclasses
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from chatcore.engine.backplane import Backplane
from chatcore.engine.connection import Client
from chatcore.engine.departed import Departed
from chatcore.engine.feed import left_out
from chatcore.engine.gate import Gate, Refusal
from chatcore.engine.limits import ConnectionLimits, FailureCounter
from chatcore.engine.registry import Registry
from chatcore.engine.rooms import (
    LIST_MODES,
    MAX_LIST,
    MEMBER_MODES,
    TOPIC_LENGTH,
    ModeError,
    ModeRequest,
    Rooms,
    RoomState,
    mask_matches,
    parse_modes,
)
from chatcore.engine.serving import SHUTDOWN_LINGER, Connections
from chatcore.engine.stats import Stats
from chatcore.engine.store import SQLiteStore, Store
from chatcore.engine.writer import Writer
from chatcore.events import (
    Action,
    Chat,
    Invitation,
    Invited,
    Joined,
    Left,
    ModeChanged,
    NickChanged,
    PrivateMessage,
    PrivateTags,
    RoomEvent,
    Tagged,
    TopicChanged,
    Welcome,
)
from chatcore.message import Message
from chatcore.names import nick_problem, room_problem
from chatcore.transports.listener import Listener, format_address

if TYPE_CHECKING:
    from chatcore.config import Config
    from chatcore.engine.accounts import AccountService
    from chatcore.engine.history import HistoryService
    from chatcore.transports import Scheme
    from chatcore.transports.tls import Certificates
    from chatcore.wire import WireFormat

log = logging.getLogger("chatcore.server")

#: Guest names tried on entering the chat when a cluster says they are taken.
GUEST_NAME_TRIES = 100


def _stamp(event: RoomEvent, epoch: str, offset: int, when: float) -> None:
    # An event is immutable once published; publish() gives it its identity
    # first, while only the publishing thread holds it (a copy with
    # dataclasses.replace() would cost ten times as much).
    event.__dict__.update(epoch=epoch, offset=offset, time=when)


#: Locks that order each room's numbering and appends (rooms share them by
#: hash: a bounded number, and no state to drop when a room empties).
ROOM_ORDER_STRIPES = 64


class ChatServer:
    """A chat server configured by a :class:`~chatcore.config.Config`.

    :ivar registry: the connected clients, their nicknames and rooms.
    :ivar gate: who may come in and how fast (:mod:`chatcore.engine.gate`).
    :ivar serving: every connection being served (:mod:`chatcore.engine.serving`).
    :ivar listeners: one :class:`~chatcore.transports.listener.Listener` per
        ``--listen`` URL, bound when the server is made.
    :ivar schemes: every URL scheme the plugins registered.
    :ivar hooks: the plugins (:class:`chatcore.hooks.Hooks`).
    :ivar backplane: what joins the rooms here to the rest of a cluster, and
        numbers room events (:mod:`chatcore.engine.backplane`; a plugin's
        from ``chatcore_backplane``, else the local one).
    :ivar stats: what the engine counts (:mod:`chatcore.engine.stats`),
        for the metrics plugin.
    """

    def __init__(self, config: Config) -> None:
        options = config.options
        self.config = config
        self.hooks = config.pluginmanager.hooks
        # First: a plugin's failure here stops the start before anything is open.
        self.backplane: Backplane = self.hooks.backplane(self) or Backplane()
        self.registry = Registry()
        #: Each room's topic, modes, lists and roles (:mod:`chatcore.engine.rooms`).
        self.rooms = Rooms()
        #: Nicknames given up lately, for IRC's WHOWAS (:mod:`chatcore.engine.departed`).
        self.departed = Departed()
        self.writer = Writer()
        self.stats = Stats()
        #: New connections' limits: a reload applies them to new connections only.
        self.max_line: int = options.max_line
        self.max_queue: int = options.max_queue
        self.max_sendq: int = options.max_sendq
        #: Rooms one client may be in at once.
        self.max_rooms_per_client: int = options.max_rooms_per_client
        #: Events a wire format failed to render (each logged; the rest of
        #: the room's delivery goes on), and calls of the backplane that failed.
        self.render_failures = 0
        self.backplane_failures = 0
        # Whether the backplane carries events anywhere: the local one does
        # not, and publish() then skips the call (it runs for every message).
        self._backplane_publishes = type(self.backplane).published is not Backplane.published
        self.gate = Gate(options, config.password)
        self.serving = Connections(self)
        self.schemes: dict[str, Scheme] = config.schemes
        self.certificates: Certificates | None = config.certificates
        self._stopping = False
        self._stopped = False
        self._accepting = False
        # Opened when a plugin first needs it (a server without accounts
        # never makes a state database in its working directory).
        self._store: Store | None = None
        # Supplied by plugins (chatcore_account_service ...), asked once: _service().
        self._services: dict[str, object] = {}
        self._state_lock = threading.Lock()
        # A room's numbering and its feeds' appends happen in one order, the
        # same one a member's attach and its Joined's number are taken in
        # (_room_order): a client entering a room then has as history exactly
        # the lines numbered before its Joined, and live exactly the rest.
        self._room_orders = [threading.Lock() for _ in range(ROOM_ORDER_STRIPES)]
        # Private lines' message IDs (private_msgid): EPOCH:OFFSET, like a
        # room line's, so history keeps and finds both alike, under an epoch
        # of this process's own that no room's numbering has (theirs end in
        # a number) and that no other server of a cluster draws.
        self._private_epoch = f"{secrets.token_hex(8)}-pm"
        self._private_offsets = itertools.count(1)
        self.listeners: list[Listener] = []
        for url in config.listen:
            try:
                self.listeners.append(Listener(self.serving, url, self.schemes[url.scheme], options.backlog))
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
        """True once :meth:`stop` has begun (new connections are refused,
        and leaves are not published to the rooms here: everyone is going)."""
        return self._stopping

    def listener(self, scheme: str) -> Listener:
        """The first listener of ``scheme``."""
        return next(listener for listener in self.listeners if listener.url.scheme == scheme)

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the plugins, the writer and the accept loops (in threads)."""
        # A log record asks threading for its thread's name, and a thread
        # that threading did not start (each connection's: Connections.
        # start_serving()) gets a _DummyThread made for it, kept for ever
        # before Python 3.13: a leak per connection that logs, and a deeper
        # stack on its reader. No format of chatcore's shows the thread;
        # records have thread and threadName None (for every thread of the
        # process).
        logging.logThreads = False
        self.hooks.server_start(self)
        self.backplane.start(self)
        self.writer.start()
        self.serving.start()
        for listener in self.listeners:
            listener.start()
            host, port = listener.address
            log.info(
                "listening on %s",
                listener.url,
                extra={
                    "event": "listener_started",
                    "listener": str(listener.url),
                    "scheme": listener.url.scheme,
                    "address": host,
                    "port": port,
                },
            )
        self._accepting = True

    @property
    def accepting(self) -> bool:
        """True from the end of :meth:`start` until :meth:`stop` begins:
        while new connections are accepted (what ``/healthz`` reports)."""
        return self._accepting and not self._stopping

    def readiness_problems(self) -> list[str]:
        """Why the server is not ready to serve, one sentence each, or an
        empty list when it is: it is not accepting connections (starting,
        or shutting down), or its backplane reports problems
        (:meth:`Backplane.problems <chatcore.engine.backplane.Backplane.problems>`:
        a cluster link that is down). What ``/readyz`` reports; any thread."""
        if self._stopping:
            return ["shutting down: not accepting connections"]
        if not self._accepting:
            return ["starting: not accepting connections yet"]
        return list(self.backplane.problems())

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
        self.serving.close_all(reason, timeout)
        self.hooks.server_stop(self)
        self.backplane.stop()
        self.server_close()

    def server_close(self) -> None:
        """Close the listening sockets, stop the writer and let go of the
        state store (also after a start that failed: a plugin opened it)."""
        for listener in self.listeners:
            listener.server_close()
        self.serving.close()
        self.writer.stop()
        if self._store is not None:
            self._store.close()

    def apply_options(self, options: argparse.Namespace, password: str | None) -> None:
        """Use reloaded options (:func:`chatcore.reload.reload_configuration`,
        the configuration layer's, calls this): the gate's at once, for every connection;
        ``--max-line``, ``--max-queue`` and ``--max-sendq`` for new connections."""
        self.max_queue = options.max_queue
        self.max_sendq = options.max_sendq
        self.max_line = options.max_line
        self.max_rooms_per_client = options.max_rooms_per_client
        self.gate.reconfigure(options, password, self.all_connections())
        self.serving.start_sweeper()

    # -- what outlives connections -------------------------------------------

    @property
    def store(self) -> Store:
        """The state store (:mod:`chatcore.engine.store`): the cluster's
        (the backplane's :meth:`~chatcore.engine.backplane.Backplane.state_store`),
        else this server's SQLite file (``--state-db``), opened on first use.

        :raises UsageError: the database is refused (damaged, a newer
            chatcore's): a plugin that needs it asks at start
            (``chatcore_server_start``), so the server does not start.
        """
        store = self._store
        if store is None:
            with self._state_lock:
                if self._store is None:
                    shared = self.backplane.state_store()
                    self._store = shared if shared is not None else SQLiteStore.open(self.config.options.state_db)
                    log.info("state store: %s", getattr(self._store, "path", self._store.name))
                store = self._store
        return store

    @property
    def history(self) -> HistoryService | None:
        """The history service a plugin supplies (``chatcore_history_service``),
        or None on a server that keeps no history: how a protocol answers a
        client's questions about the past (:mod:`chatcore.engine.history`)."""
        service: HistoryService | None = self._service("history", self.hooks.history_service)
        return service

    @property
    def accounts(self) -> AccountService | None:
        """The account service a plugin supplies (``chatcore_account_service``),
        or None on a server without accounts: how a protocol logs a
        connection in to an account (:mod:`chatcore.engine.accounts`)."""
        service: AccountService | None = self._service("accounts", self.hooks.account_service)
        return service

    def _service(self, name: str, ask: Callable[[ChatServer], object]) -> Any:
        """What ``ask`` (a hook of the facade) answers for this server: asked
        once, on the first thread that needs it."""
        if name not in self._services:
            with self._state_lock:
                if name not in self._services:
                    self._services[name] = ask(self)
        return self._services[name]

    # -- connections ----------------------------------------------------------

    @property
    def connections(self) -> set[Client]:
        """Every connection being served, registered or not yet (TLS
        handshake done, IRC registration or a password pending)."""
        return self.serving.clients

    def all_connections(self) -> list[Client]:
        """Every connection being served, admitted or not (a snapshot)."""
        return self.serving.snapshot()

    def nicks_in(self, room: str) -> list[str]:
        """Everyone in ``room``, sorted as people read names (ignoring
        case): this server's members and, in a cluster, the other servers'
        (the backplane's). For ``/who`` and IRC's NAMES."""
        nicks = [member.nick for member in self.registry.members(room)]
        nicks += self.backplane.members().get(room, [])
        return sorted(nicks, key=str.casefold)

    def room_counts(self) -> dict[str, int]:
        """Every room that has members, with how many: here and, in a
        cluster, on the other servers (the backplane's). For ``/rooms`` and
        IRC's LIST."""
        counts = self.registry.rooms()
        for room, nicks in self.backplane.members().items():
            counts[room] = counts.get(room, 0) + len(nicks)
        return counts

    def remove_client(self, client: Client) -> None:
        """Take a client that has gone out of the chat: its leave notice to
        its room, ``chatcore_client_left`` and its nickname released. Called
        once its connection has ended (:mod:`chatcore.engine.serving`);
        nothing happens for a client never admitted."""
        reason = client.close_reason or "connection closed"
        rooms = client.rooms
        if self.registry.remove(client):
            if not self._stopping:
                kicked_by = client.kicked_by or ""
                for index, room in enumerate(rooms):
                    left = Left(
                        room,
                        nick=client.nick,
                        reason=reason,
                        kicked_by=kicked_by,
                        user=client.user,
                        told_in=rooms[:index],
                    )
                    self.stats.delivered(self._publish(left))
            log.info(
                "client left: %s from %s (%s)",
                client.nick,
                format_address(*client.address),
                reason,
                extra={
                    "event": "client_left",
                    "nick": client.nick,
                    "address": client.address[0],
                    "port": client.address[1],
                    "rooms": list(rooms),
                    "reason": reason,
                    "cause": client.close_cause or "closed",
                    "client": client.id,
                    "protocol": client.wire.name,
                },
            )
            self.departed.add(client.nick, client.user, client.realname)
            for room in rooms:
                self.hooks.client_left(client, room, reason)
            self._release_nick(client, client.nick)
            self.rooms.forget_invitations(client.nick)
            for room in rooms:
                self._maybe_emptied(room)

    def _release_nick(self, client: Client, nick: str) -> None:
        """The backplane's release of a nickname, whose failure is its own
        (a claim left behind in the cluster), not the leaving client's."""
        try:
            self.backplane.release_nick(client, nick)
        except Exception:
            self._backplane_failed("release_nick")

    def _maybe_emptied(self, room: str) -> None:
        """After a leave: if nobody here is left in ``room``, the backplane
        lets go of what it keeps for it (per-room state must not outlive
        the room: 100,000 rooms visited once leave nothing behind). Under
        the registry's lock, so that nobody enters the room in between."""
        self.registry.if_empty(room, self._room_emptied)

    def _room_emptied(self, room: str) -> None:
        self.rooms.drop(room)
        try:
            self.backplane.room_emptied(room)
        except Exception:
            self._backplane_failed("room_emptied")

    # -- the gate, for protocols and plugins ------------------------------------

    @property
    def password_required(self) -> bool:
        """Whether clients must give the server password before
        :meth:`admit` (``--password-file`` or ``CHATCORE_PASSWORD``)."""
        return self.gate.password_required

    def check_password(self, client: Client, given: str) -> bool:
        """Check a client's server password; every protocol's one way in
        (native ``/pass``, IRC ``PASS``, a web login), on the client's own
        thread, before it calls :meth:`admit`. True if no password is set
        or ``given`` is right; a wrong one slows the guesser and the third
        closes it (:meth:`Gate.failed_secret
        <chatcore.engine.gate.Gate.failed_secret>`)."""
        return self.gate.check_password(client, given)

    def pace(self, client: Client) -> None:
        """Flood control: call once per line or command a client sends, on
        its own thread, before acting on it (:meth:`Gate.pace
        <chatcore.engine.gate.Gate.pace>`)."""
        self.gate.pace(client)

    @property
    def limits(self) -> ConnectionLimits:
        """Per-address connection counts (the gate's)."""
        return self.gate.limits

    @property
    def password(self) -> str | None:
        """The server password (plain text or a hash), or None."""
        return self.gate.password

    @property
    def password_failures(self) -> FailureCounter:
        """Wrong server passwords per address, in the last ten minutes."""
        return self.gate.failures["password"]

    @property
    def max_clients(self) -> int:
        return self.gate.max_clients

    @property
    def line_rate(self) -> float:
        return self.gate.line_rate

    @property
    def line_burst(self) -> int:
        return self.gate.line_burst

    @property
    def idle_timeout(self) -> float:
        return self.gate.idle_timeout

    @property
    def login_timeout(self) -> float:
        return self.gate.login_timeout

    # -- actions: what protocols and plugins make happen -----------------------

    def log_in(
        self, client: Client, *, password: str | None = None, nick: str | None = None, room: str | None = None
    ) -> Refusal | None:
        """Let a connection into the chat with what it offered before
        entering: the phase before login, the same for every protocol.

        A protocol gathers ``password``, ``nick`` and ``room`` its own way
        (native ``/pass``, IRC ``PASS`` and ``NICK``, a web login) and calls
        this; the engine checks the server password (the gate: a wrong one
        slows the guesser, and the third closes the connection), the
        nickname and room rules (:mod:`chatcore.names`), and admits the
        client (:meth:`admit`): the welcome, and the join notice for the
        others. The login deadline is the engine's too (``--login-timeout``).

        :return: None once the client is in, else a :class:`~chatcore.engine.gate.Refusal`
            for the protocol to tell its client; it may call again.
        """
        if client.admitted:
            return Refusal("admitted", "you are in the chat already")
        if self.gate.password_required:
            if password is None:
                return Refusal("password_missing", "password required")
            if not self.gate.check_password(client, password):
                return Refusal("password_wrong", "wrong password")
        if nick is not None and (problem := nick_problem(nick)) is not None:
            return Refusal("nick_invalid", problem)
        if room and (problem := room_problem(room)) is not None:  # "": in no room (IRC joins its own)
            return Refusal("room_invalid", problem)
        if not self.admit(client, room, nick):
            return Refusal("nick_taken", f"nickname {nick!r} is taken")
        return None

    def admit(self, client: Client, room: str | None = None, nick: str | None = None) -> bool:
        """Let a connected client into the chat: ``nick`` or a fresh
        ``guest-N`` nickname, ``room`` or the default room (``""``: no room
        yet), the welcome text, and the join notice for the others.

        A protocol whose clients choose their nickname before they enter
        (IRC's registration) passes it here, so that the others never see a
        guest name first. Returns False, admitting nothing, if ``nick`` is
        taken: the protocol tells its client and may try again. The caller
        checks that ``nick`` is a valid nickname.
        """
        # A chosen nickname is claimed in the cluster first (the backplane's).
        if nick is not None and self.backplane.claim_nick(client, nick) is not None:
            return False
        entering = self.registry.default_room if room is None else room
        # A newcomer passes nothing a /join would not: a room here whose
        # modes keep people out (+b, +i, +k, +l) is entered only once the
        # newcomer, named, has been checked as a join checks; refused, it
        # enters in no room and is told why after its welcome. The other
        # rooms are entered at once, as they always were.
        state = self.rooms.get(entering) if entering else None
        guarded = state is not None and bool(state.bans or state.key or state.limit or "i" in state.flags)
        with self._room_order("" if guarded else entering):
            # Held: the room's lines wait until it has had its welcome.
            added = self.registry.add(client, "" if guarded else room, nick, hold=True)
            # Its Joined's number, taken as it attaches: what was said in
            # the room before is its history, the rest reaches it live.
            position = self.backplane.next_position(entering) if added and entering and not guarded else None
        refusal = None
        if added and state is not None and guarded:
            # Checked outside the room's order lock, as a /join is: in a
            # cluster a limit counts the other servers' members (Redis).
            refusal = self._entry_refusal(client, state, "")
            if refusal is None:
                with self._room_order(entering):
                    self.registry.join(client, entering, hold=True)
                    position = self.backplane.next_position(entering)
            else:
                entering = ""
        if not added:
            if nick is not None:
                self._release_nick(client, nick)
            return False
        client.admitted = True
        try:
            if nick is None:
                self._claim_guest_nick(client)
            client.send(Welcome(tuple(self.hooks.welcome(client))))
            if refusal is not None:
                client.error(refusal.text)
        finally:
            self._release(client, entering)
        log.info(
            "client joined: %s from %s",
            client.nick,
            format_address(*client.address),
            extra={
                "event": "client_joined",
                "nick": client.nick,
                "address": client.address[0],
                "port": client.address[1],
                "room": client.room,
                "client": client.id,
                "protocol": client.wire.name,
            },
        )
        if client.room:
            if self.rooms.get(client.room) is None:  # its state, maybe the cluster's, before the join applies
                self._enter_room(client, client.room)
            joined = Joined(
                client.room, nick=client.nick, user=client.user, account=client.account, realname=client.realname
            )
            if position is not None:
                _stamp(joined, *position, time.time())
            self.stats.delivered(self._publish(joined, exclude=client))
            self.hooks.client_joined(client, client.room, joined)
        return True

    def _claim_guest_nick(self, client: Client) -> None:
        """Make the guest name unique in the cluster too (the backplane's claim):
        a name another server has is replaced by the next guest number."""
        if not self.backplane.shared:
            return
        for _ in range(GUEST_NAME_TRIES):
            if self.backplane.claim_nick(client, client.nick) is None:
                return
            nick = self.registry.guest_nick()
            self.registry.rename(client, nick)
        log.warning("no free guest name for %r after %d tries; keeping %s", client, GUEST_NAME_TRIES, client.nick)

    def leave_reason(self, client: Client, text: str, neutral: str) -> str:
        """What the room is told of ``client``'s own leave reason ``text``
        (``/quit REASON``, IRC ``QUIT`` and ``PART``): the text as the filter
        chain leaves it (a message of kind ``"leave"``), or ``neutral`` if a
        filter rejects it (a muted user, a banned word) or there is none.

        Defends against leave reasons as a way around moderation: a muted
        user (UnrealIRCd drops a part reason of a user who may not speak) or
        words the filters would not let through in a message.
        """
        if not text:
            return neutral
        message = Message(client, client.room, text, "leave")
        self.hooks.message(message)
        return message.text if message.rejected is None and message.text else neutral

    def run_command(self, client: Client, name: str, args: str) -> None:
        """Run ``/name args`` for ``client`` through ``chatcore_command``."""
        if not self.hooks.command(client, name, args):
            client.error(f"unknown command /{name} (try /help)")

    def broadcast_message(self, message: Message) -> None:
        """Run a message through the filters and publish it to its room."""
        sender = message.sender
        counts = self.stats.mine()
        counts.messages += 1
        if (refused := self.speech_refusal(sender, message.room)) is not None:
            sender.error(refused)
            return
        self.hooks.message(message)
        if message.rejected is not None:
            sender.error(message.rejected)
            return
        if not message.text:
            return
        room = message.room
        # Numbered by publish(), in the room's order (_room_order): a number
        # taken here could reach the feeds after a later one.
        epoch, offset = "", 0
        now = time.time()
        # Chat is not echoed to its sender; an action is, as the answer to
        # /me, unless the sender's client shows its own actions (IRC).
        event: RoomEvent
        # The slot behind Client.account: read for every message, where the
        # property's call costs more than the rest of this line together.
        account = sender._account
        if message.kind == "action":
            event = Action(room, sender.nick, message.text, offset, epoch, now, sender.user, account)
            recipients = self._publish(event, exclude=None if sender.wire.echoes_actions else sender)
        else:
            notice = message.kind == "notice"
            if message.tags or account:
                event = Chat(
                    room, sender.nick, message.text, offset, epoch, now, sender.user, notice, message.tags, account
                )
            else:  # nearly every message: the fewer arguments, the cheaper the call
                event = Chat(room, sender.nick, message.text, offset, epoch, now, sender.user, notice)
            recipients = self._publish(event, exclude=sender)
        if sender.wire.echoes_messages:  # its own line back, numbered and timed (IRC's echo-message)
            sender.send(event)
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
        filter_message = self.hooks.message
        # The room's speaking rules, looked up once per room of the run (one
        # sender, one recv()): a mode changed meanwhile holds from the next read.
        checked: str | None = None
        refused: str | None = None
        for message in messages:
            if message.kind != "chat":
                self._publish_together(passed, events, counts)
                self.broadcast_message(message)
                checked = None  # a command may have changed the rules
                continue
            counts.messages += 1
            if message.room != checked:
                checked = message.room
                refused = self.speech_refusal(message.sender, checked)
            if refused is not None:
                message.sender.error(refused)
                continue
            filter_message(message)
            if message.rejected is not None:
                message.sender.error(message.rejected)
                continue
            if not message.text:
                continue
            room = message.room
            if events and room != events[0].room:  # a filter may send it elsewhere
                self._publish_together(passed, events, counts)
            sender = message.sender
            # Numbered by publish() (epoch "", offset 0), as in broadcast_message.
            # Each line its own time, even in one read: history asked "before
            # this time" must not lose the lines said with it.
            if sender._account:  # the property's slot, as in broadcast_message
                chat = Chat(room, sender.nick, message.text, 0, "", time.time(), sender.user, account=sender._account)
            else:
                chat = Chat(room, sender.nick, message.text, 0, "", time.time(), sender.user)
            events.append(chat)
            passed.append(message)
        self._publish_together(passed, events, counts)

    def _publish_together(self, messages: list[Message], events: list[RoomEvent], counts: Any) -> None:
        """Publish the chat ``events`` made from ``messages`` (one sender, one
        room) as one piece, then empty both lists."""
        if not events:
            return
        sender = messages[0].sender
        recipients = self._publish_all(events, exclude=sender)
        if sender.wire.echoes_messages:
            for event in events:
                sender.send(event)
        counts.deliveries += recipients * len(events)
        if sender.arrived:
            counts.observe_latency(time.monotonic() - sender.arrived, len(events))
        for message in messages:
            self.hooks.message_delivered(message, recipients)
        messages.clear()
        events.clear()

    def send_private(
        self, sender: Client, nick: str, text: str, *, tell: bool = True, notice: bool = False, tags: str = ""
    ) -> Refusal | None:
        """Send ``text`` from ``sender`` to the person called ``nick`` alone,
        whichever room they are in and, in a cluster, whichever server: the
        one path of every private message (``/msg``, IRC ``PRIVMSG`` to a
        nick, the web page).

        As a room message: counted, through the filter chain (a message of
        kind ``"private"`` whose ``recipient`` is the client here, or None
        for one elsewhere), timed from its arrival, and told to
        ``chatcore_message_delivered``. The sender gets its copy
        (``echo=True``) once it is delivered. On the sender's thread.

        :param tell: tell the sender why not, as an error; False leaves that
            to the caller (IRC answers with its numerics, and a NOTICE with
            nothing at all).
        :param notice: said as a notice (IRC's ``NOTICE nick``): the
            :class:`~chatcore.events.PrivateMessage` has ``notice`` set.
        :param tags: client-only tags the sender attached (IRC's
            message-tags), carried to a recipient on this server.
        :return: None once delivered, else a :class:`~chatcore.engine.gate.Refusal`:
            ``"self"``, ``"no_such_nick"``, ``"rejected"`` (by a filter),
            ``"empty"`` (after filtering) or ``"unreachable"`` (on a server
            that cannot be reached now).
        """
        refusal = self._send_private(sender, nick, text, notice, tags)
        if refusal is not None and tell:
            sender.error(refusal.text)
        return refusal

    def _send_private(
        self, sender: Client, nick: str, text: str, notice: bool = False, tags: str = ""
    ) -> Refusal | None:
        recipient = self.registry.find(nick)
        if recipient is not None and recipient.closed:
            recipient = None
        if recipient is sender:
            return Refusal("self", "you cannot send a private message to yourself")
        elsewhere = recipient is None
        if elsewhere and not self.backplane.shared:
            return Refusal("no_such_nick", f"no such nick {nick!r}")
        # The room is where it was written, the recipient where it goes.
        message = Message(sender, sender.room, text, "private", recipient=recipient)
        counts = self.stats.mine()
        counts.messages += 1
        self.hooks.message(message)
        if message.rejected is not None:
            return Refusal("rejected", message.rejected)
        if not message.text:
            return Refusal("empty", f"your message to {nick} was empty after filtering; it was not sent")
        # One ID and one time for the line, on every copy, every server and in history.
        event = PrivateMessage(
            sender.nick,
            recipient.nick if recipient is not None else nick,
            message.text,
            notice=notice,
            msgid=self.private_msgid(),
            time=time.time(),
            account=sender.account,
        )
        if recipient is not None:
            self._hand_private(recipient, dataclasses.replace(event, tags=tags))
        else:
            # With its tags, ID and time, for the backplane to carry what it can.
            result = self.backplane.send_private(sender, dataclasses.replace(event, tags=tags))
            if result is None:
                return Refusal("no_such_nick", f"no such nick {nick!r}")
            if isinstance(result, str):
                return Refusal("unreachable", result)
        counts.deliveries += 1
        sender.send(dataclasses.replace(event, echo=True, tags=tags))
        if sender.arrived:
            counts.observe_latency(time.monotonic() - sender.arrived)
        self.hooks.message_delivered(message, 1)
        return None

    def private_msgid(self) -> str:
        """A new private line's message ID, ``EPOCH:OFFSET`` in this server's
        numbering of private lines (:attr:`PrivateMessage.msgid
        <chatcore.events.PrivateMessage.msgid>`), unique in a cluster too.
        Any thread."""
        # next() of an itertools.count is one atomic step under the GIL.
        return f"{self._private_epoch}:{next(self._private_offsets)}"

    def deliver_private(self, event: PrivateMessage | PrivateTags) -> bool:
        """Give ``event``, a private message (or client-only tags without
        text: IRC's ``TAGMSG nick``) said on another server of a cluster, to
        its recipient here, and tell the plugins of a message
        (``chatcore_private_received``): what a backplane's reader calls.
        False if nobody here has the recipient's nick (any more). On the
        backplane's thread."""
        recipient = self.registry.find(event.recipient)
        if recipient is None or recipient.closed:
            return False
        if isinstance(event, PrivateTags):
            recipient.send(dataclasses.replace(event, recipient=recipient.nick))
        else:
            self._hand_private(recipient, dataclasses.replace(event, recipient=recipient.nick, echo=False))
        return True

    def _hand_private(self, recipient: Client, event: PrivateMessage) -> None:
        """The one way a private message reaches its recipient here, from
        whatever server it was said on. The plugins hear of it first: once
        the recipient has it, a plugin that keeps it (history) has it too,
        and a CHATHISTORY sent right after receiving it finds it."""
        self.hooks.private_received(recipient, event)
        recipient.send(event)

    def send_tags(self, sender: Client, room: str, tags: str) -> Refusal | None:
        """Say client-only ``tags`` without text to ``room`` (IRC's ``TAGMSG
        #room``: typing notices, reactions), as a
        :class:`~chatcore.events.Tagged` to its members but the sender (and
        to the sender too if its format echoes messages). No filter chain,
        as there is no text; the room's speaking rules hold, so a muted or
        banned user's typing is not shown. On the sender's thread.

        :return: None once published, else a :class:`~chatcore.engine.gate.Refusal`
            (``"refused"``, with the room's reason).
        """
        refused = self.speech_refusal(sender, room)
        if refused is not None:
            return Refusal("refused", refused)
        event = Tagged(room, nick=sender.nick, tags=tags, user=sender.user, account=sender.account)
        self._publish(event, exclude=sender)
        if sender.wire.echoes_messages:
            sender.send(event)
        return None

    def send_private_tags(self, sender: Client, nick: str, tags: str) -> Refusal | None:
        """Send client-only ``tags`` without text to the person called
        ``nick`` (IRC's ``TAGMSG nick``), as a
        :class:`~chatcore.events.PrivateTags`, here or, in a cluster, on
        another server (the private messages' way: the backplane's
        ``send_private``). No filter chain, as there is no text.

        :return: None once sent, else a :class:`~chatcore.engine.gate.Refusal`:
            ``"no_such_nick"`` or ``"unreachable"``.
        """
        recipient = self.registry.find(nick)
        if recipient is not None and recipient.closed:
            recipient = None
        if recipient is sender or (recipient is None and not self.backplane.shared):
            return Refusal("no_such_nick", f"no such nick {nick!r}")
        event = PrivateTags(sender.nick, nick if recipient is None else recipient.nick, tags, self.private_msgid())
        if recipient is not None:
            recipient.send(event)
        else:
            result = self.backplane.send_private(sender, event)
            if result is None:
                return Refusal("no_such_nick", f"no such nick {nick!r}")
            if isinstance(result, str):
                return Refusal("unreachable", result)
        if sender.wire.echoes_messages:
            sender.send(event)
        return None

    def join_room(self, client: Client, room: str, key: str = "") -> Refusal | None:
        """Put ``client`` in ``room`` too (made on first use) and make it its
        current room, with the join notice to the others and the hook
        (``/join``, IRC's ``JOIN``): the one way into a room after
        admission. A room it is in already only becomes current.

        ``room`` must be lower case (names ignore case; lower case is the
        one spelling). The client gets the :class:`~chatcore.events.Joined`
        too, alone, which its protocol renders as its own join.

        :return: None once it is in, else a :class:`~chatcore.engine.gate.Refusal`:
            ``"room_invalid"``, ``"too_many_rooms"`` (``--max-rooms-per-client``),
            ``"banned"``, ``"invite_only"``, ``"bad_key"`` or ``"full"`` (the
            room's modes, which an invitation or a server operator passes).
        """
        if (problem := room_problem(room)) is not None:
            return Refusal("room_invalid", problem)
        if room in client.rooms:
            self.registry.join(client, room)
            return None
        if len(client.rooms) >= self.max_rooms_per_client:
            return Refusal(
                "too_many_rooms",
                f"you are in {len(client.rooms)} rooms, the most allowed: leave one before joining {room}",
            )
        state = self.rooms.get(room) or self._enter_room(client, room)
        if (refusal := self._entry_refusal(client, state, key)) is not None:
            self._maybe_emptied(room)  # entered for this client alone: let go of the state
            return refusal
        with self._room_order(room):
            # Held, as in admit(): the room's lines wait until it is told it is in.
            entered = self.registry.join(client, room, hold=True)
            position = self.backplane.next_position(room) if entered else None  # as in admit()
        if position is not None:
            joined = Joined(room, nick=client.nick, user=client.user, account=client.account, realname=client.realname)
            _stamp(joined, *position, time.time())
            try:
                # The room's state first (publishing applies it again, which a
                # join allows): the client's own join shows who runs the room.
                self.rooms.apply(joined)
                # The client is told first, alone, with the same event: its
                # protocol shows its own join its way (IRC: JOIN, the topic and
                # the names), before anything the room or a plugin says next.
                client.send(joined)
            finally:
                self._release(client, room)
            self.stats.delivered(self._publish(joined, exclude=client))
            self.hooks.client_joined(client, room, joined)
        return None

    def _enter_room(self, client: Client, room: str) -> RoomState:
        """The state of ``room``, which has nobody here: the backplane's (a
        cluster's, made on another server), else the state a plugin keeps
        for it (a registered room's, ``chatcore_room_state``), else a new one
        that ``client`` runs."""
        kept = self.hooks.room_state(self, room)
        founded = kept if kept is not None else RoomState.founded(room, client.nick)
        try:
            state = self.backplane.enter_room(room, founded)
        except Exception:  # the cluster's loss: this server goes on with the room as new
            self._backplane_failed("enter_room")
            state = founded
        return self.rooms.install(state)

    def _entry_refusal(self, client: Client, state: RoomState, key: str) -> Refusal | None:
        """Why ``state``'s modes keep ``client`` out, or None."""
        if self.hooks.server_operator(client) is not None:
            return None
        room = state.name
        invited = client.nick.casefold() in state.invited
        if state.banned(client) and not invited:
            return Refusal("banned", f"you are banned from {room}")
        if "i" in state.flags and not invited and not any(mask_matches(m, client) for m in state.excepts):
            return Refusal("invite_only", f"{room} is invite only: an operator of it must /invite you")
        if state.key and key != state.key and not invited:
            return Refusal("bad_key", f"{room} needs a key: /join {room} KEY")
        if state.limit and len(self.nicks_in(room)) >= state.limit and not invited:
            members = "member" if state.limit == 1 else "members"
            return Refusal("full", f"{room} is full ({state.limit} {members})")
        return None

    def may_run(self, client: Client, room: str) -> RoomState | Refusal:
        """The state of ``room`` if ``client`` is an operator of it (or a
        server operator), else a Refusal (``"no_such_room"`` or ``"not_operator"``).
        A secret room is no such room to those outside it (:meth:`room_visible`)."""
        state = self.rooms.get(room)
        if state is None or not self.room_visible(client, room):
            return Refusal("no_such_room", f"no such room {room!r}")
        if not state.is_operator(client.nick) and self.hooks.server_operator(client) is None:
            return Refusal("not_operator", f"you are not an operator of {room}")
        return state

    def set_topic(self, client: Client, room: str, topic: str) -> Refusal | None:
        """Set ``room``'s topic (``""`` clears it): its members, or with
        ``+t`` (the default) its operators. Told to the room as a
        :class:`~chatcore.events.TopicChanged`, the setter included. A
        secret room is no such room to those outside it."""
        state = self.rooms.get(room)
        if state is None or not self.room_visible(client, room):
            return Refusal("no_such_room", f"no such room {room!r}")
        if room not in client.rooms and self.hooks.server_operator(client) is None:
            return Refusal("not_in_room", f"you are not in {room}")
        if "t" in state.flags:
            checked = self.may_run(client, room)
            if isinstance(checked, Refusal):
                return Refusal("not_operator", f"only operators of {room} set its topic (it is +t)")
        topic = topic[:TOPIC_LENGTH]
        self.stats.delivered(self._publish(TopicChanged(room, nick=client.nick, topic=topic, user=client.user)))
        return None

    def change_modes(self, client: Client, room: str, modes: str, arguments: list[str]) -> Refusal | None:
        """Apply a mode string (``+kl-m secret 10``, :mod:`chatcore.engine.rooms`)
        to ``room`` as ``client``, an operator of it: the changes that
        change something are told to the room as one
        :class:`~chatcore.events.ModeChanged`, the setter included.
        Requests for a list (``+b`` alone) are the caller's to answer.
        Nothing is applied if any part is invalid."""
        checked = self.may_run(client, room)
        if isinstance(checked, Refusal):
            return checked
        state = checked
        try:
            requests = parse_modes(modes, arguments)
        except ModeError as exc:
            return Refusal(exc.code, str(exc))
        letters, args = self.effective_modes(state, requests)
        if isinstance(letters, Refusal):
            return letters
        if letters:
            event = ModeChanged(room, nick=client.nick, modes=letters, arguments=tuple(args), user=client.user)
            self.stats.delivered(self._publish(event))
        return None

    def effective_modes(self, state: RoomState, requests: list[ModeRequest]) -> tuple[str | Refusal, list[str]]:
        """The mode string and arguments of the requests that change
        something in ``state`` (``+m`` on a ``+m`` room does not; ``""``
        when none does), or a Refusal. Changes nothing: :meth:`change_modes`
        applies them, and a front-end may ask first, to tell its user that
        nothing would change."""
        letters: list[str] = []
        args: list[str] = []
        sign = ""
        flags, key, limit = set(state.flags), state.key, state.limit
        lists = {"b": dict(state.bans), "e": dict(state.excepts)}
        roles = {"o": set(state.operators), "v": set(state.voiced)}
        for request in requests:
            letter, adding, argument = request.mode, request.adding, request.argument
            if letter in LIST_MODES:
                if not argument:
                    continue  # a request for the list: the caller's
                masks = lists[letter]
                if adding == (argument in masks):
                    continue
                if adding and len(masks) >= MAX_LIST:
                    return Refusal("list_full", f"the +{letter} list of {state.name} is full ({MAX_LIST} masks)"), []
                masks[argument] = ("", 0.0) if adding else masks.pop(argument)
            elif letter in MEMBER_MODES:
                target = self.registry.find(argument)
                nick = target.nick if target is not None and state.name in target.rooms else None
                if nick is None and argument.casefold() not in {n.casefold() for n in self.nicks_in(state.name)}:
                    return Refusal("not_in_room", f"{argument} is not in {state.name}"), []
                nick = nick or argument
                if adding == (nick.casefold() in roles[letter]):
                    continue
                (roles[letter].add if adding else roles[letter].discard)(nick.casefold())
                argument = nick
            elif letter == "k":
                if (adding and key == argument) or (not adding and not key):
                    continue
                key = argument if adding else ""
                argument = argument if adding else "*"
            elif letter == "l":
                if (adding and str(limit) == argument) or (not adding and not limit):
                    continue
                limit = int(argument) if adding else 0
            else:
                if adding == (letter in flags):
                    continue
                (flags.add if adding else flags.discard)(letter)
            want = "+" if adding else "-"
            if want != sign:
                letters.append(want)
                sign = want
            letters.append(letter)
            if argument:
                args.append(argument)
        return "".join(letters), args

    def kick_from_room(self, client: Client, room: str, nick: str, reason: str = "") -> Refusal | None:
        """``client``, an operator of ``room``, puts ``nick`` out of it: a
        leave with ``kicked_by`` told to the room and to the kicked, who
        stays connected (``/kick``, IRC's ``KICK``)."""
        checked = self.may_run(client, room)
        if isinstance(checked, Refusal):
            return checked
        reason = reason or client.nick
        target = self.registry.find(nick)
        if target is None and self.backplane.shared:
            # On another server: the kick goes there, and its leave comes back.
            if nick.casefold() not in {member.casefold() for member in self.backplane.members().get(room, [])}:
                return Refusal("not_in_room", f"{nick} is not in {room}")
            return self._carried("room_kick", {"room": room, "nick": nick, "by": client.nick, "reason": reason}, nick)
        if target is None or not self._kick_out(target, room, client.nick, reason):
            return Refusal("not_in_room", f"{nick} is not in {room}")
        return None

    def _kick_out(self, target: Client, room: str, by: str, reason: str) -> bool:
        """Put ``target`` out of ``room`` by ``by``'s kick; False if it is not in it."""
        left = Left(room, nick=target.nick, reason=reason, disconnected=False, kicked_by=by, user=target.user)
        if not self.registry.part(target, room):
            return False
        self.stats.delivered(self._publish(left))
        target.send(left)  # out of the room already: its own copy, after the room's (as part_room)
        self.hooks.client_left(target, room, f"kicked by {by}: {reason}")
        self._maybe_emptied(room)
        return True

    def _carried(self, action: str, details: dict[str, Any], nick: str) -> Refusal | None:
        """Send a room operator's ``action`` to the server ``nick`` is on (the backplane's ``moderate``)."""
        try:
            sent = self.backplane.moderate(action, details)
        except Exception:
            self._backplane_failed("moderate")
            sent = "the cluster failed to carry it; try again later"
        if sent is None:
            return Refusal("no_such_nick", f"no such nick {nick!r}")
        if isinstance(sent, str):
            return Refusal("unreachable", sent)
        return None

    def carry_out(self, action: str, details: dict[str, Any]) -> None:
        """A room operator's action done on another server, for a client
        here: ``room_kick`` (``room``, ``nick``, ``by``, ``reason``) or
        ``invite`` (``room``, ``nick``, ``by``, ``user``, and ``passes``
        if it was an operator's, which lets them in past the room's modes).
        The backplane calls this for what it carried; checked there."""
        room, nick, by = details["room"], details["nick"], details["by"]
        target = self.registry.find(nick)
        if action == "invite" and details.get("passes"):
            self.rooms.invite(room, nick)  # if the room has members here: its state is kept here too
        if target is None or target.closed:
            log.info("%s of %s to %s by %s from another server: not here (any more)", action, nick, room, by)
        elif action == "room_kick":
            self._kick_out(target, room, by, details.get("reason") or by)
        elif action == "invite" and room not in target.rooms:
            target.send(Invited(by, room, details.get("user", "")))

    def invite(self, client: Client, room: str, nick: str) -> Refusal | None:
        """``client`` invites ``nick`` to ``room``. A member may invite to a
        room that is not ``+i``: the invited is told, nothing more. An
        operator's invitation (needed for a ``+i`` room) also lets ``nick`` in
        once past ``+i``, a ban, ``+k`` and ``+l`` (a member's would let them
        pass what the operators set: the review of issue 24 found that). A
        secret room is no such room to those outside it."""
        state = self.rooms.get(room)
        if state is None or not self.room_visible(client, room):
            return Refusal("no_such_room", f"no such room {room!r}")
        if room not in client.rooms and self.hooks.server_operator(client) is None:
            return Refusal("not_in_room", f"you are not in {room}")
        if "i" in state.flags and isinstance(self.may_run(client, room), Refusal):
            return Refusal("not_operator", f"only operators of {room} invite to it (it is +i)")
        passes = not isinstance(self.may_run(client, room), Refusal)
        target = self.registry.find(nick)
        if target is None and self.backplane.shared:  # on another server, or nobody
            if nick.casefold() in {member.casefold() for member in self.backplane.members().get(room, [])}:
                return Refusal("already_in_room", f"{nick} is in {room} already")
            details = {"room": room, "nick": nick, "by": client.nick, "user": client.user, "passes": passes}
            refusal = self._carried("invite", details, nick)
        elif target is None or target.closed:
            return Refusal("no_such_nick", f"no such nick {nick!r}")
        elif room in target.rooms:
            return Refusal("already_in_room", f"{target.nick} is in {room} already")
        else:
            nick, refusal = target.nick, None
            if passes:
                self.rooms.invite(room, nick)
            target.send(Invited(client.nick, room, client.user))
        if refusal is None:  # the room's operators hear of it, wherever they are (IRC's invite-notify)
            invitation = Invitation(room, nick=client.nick, invited=nick, user=client.user)
            self.stats.delivered(self._publish(invitation, exclude=client))
        return refusal

    def room_visible(self, client: Client, room: str) -> bool:
        """Whether ``client`` may learn that ``room`` exists and who is in
        it: a secret (``+s``) room shows only to its members and server
        operators. To anyone else it is answered as a room that does not
        exist (``/rooms``, ``/who``, ``/mode``, ``/invite``; IRC's LIST,
        NAMES, WHO, WHOIS, MODE, TOPIC, PART, KICK, INVITE, PRIVMSG)."""
        state = self.rooms.get(room)
        if state is None or "s" not in state.flags or room in client.rooms:
            return True
        return self.hooks.server_operator(client) is not None

    def speech_refusal(self, client: Client, room: str) -> str | None:
        """Why ``client`` may not speak in ``room`` (``+n`` and not in it,
        ``+m`` and not voiced, banned), or None."""
        state = self.rooms.get(room)
        if state is None:
            return None
        outside = room not in client.rooms
        if not (outside or state.bans or "m" in state.flags):  # nearly every message: no rule to check
            return None
        if outside and "n" in state.flags:
            return f"you are not in {room}: /join {room} to speak there"
        folded = client.nick.casefold()
        if folded in state.operators or self.hooks.server_operator(client) is not None:
            return None
        if "m" in state.flags and folded not in state.voiced:
            return f"{room} is moderated: only its operators and voiced members speak"
        if state.bans and folded not in state.voiced and state.banned(client):
            return f"you are banned from speaking in {room}"
        return None

    def part_room(self, client: Client, room: str, reason: str = "") -> bool:
        """Take ``client`` out of ``room``, with the leave notice to the
        others and the hook (``/part``, IRC's ``PART``); False if it was not
        in it. The client is told with the same event, alone, as with a join."""
        if not self.registry.part(client, room):
            return False
        left = Left(room, nick=client.nick, reason=reason, disconnected=False, user=client.user)
        self.stats.delivered(self._publish(left))
        # Told after the room: whoever the client's answer sets going (a
        # script, a test) finds the room told already.
        client.send(left)
        self.hooks.client_left(client, room, reason or "part")
        self._maybe_emptied(room)
        return True

    def change_nick(self, client: Client, nick: str, *, was: str | None = None) -> bool:
        """Rename ``client`` and tell its room; False if the nickname is
        taken (checked and taken under the registry's lock, so of two
        clients asking for the same name at once exactly one gets it; a
        cluster plugin claims it across servers first, with
        the backplane's ``claim_nick``).

        :param was: rename only if the client is still called this: for a
            rename decided on another thread (an enforcer's), which the
            client's own ``/nick`` meanwhile must win. False if it is not.
        """
        old = client.nick
        if was is not None and old != was:
            return False
        if self.backplane.claim_nick(client, nick) is not None:
            return False
        if not self.registry.rename(client, nick, was):
            self._release_nick(client, nick)
            return False
        self._release_nick(client, old)
        self.rooms.move_invitations(old, nick)
        self.departed.add(old, client.user, client.realname)
        self.publish_about(client, NickChanged("", nick=old, new_nick=nick, user=client.user))
        return True

    def publish_about(self, client: Client, event: RoomEvent) -> None:
        """Say ``event``, about ``client`` (a rename, IRC's ``AWAY`` or
        ``SETNAME`` ...), to everyone who shares a room with it, once each,
        on every server of a cluster: a copy for each of its rooms (the
        ``room`` given is replaced), each leaving out the members of the
        rooms before it (``told_in``), and the client itself."""
        rooms = client.rooms
        for index, room in enumerate(rooms):
            copy = dataclasses.replace(event, room=room, told_in=rooms[:index])
            self.stats.delivered(self._publish(copy, exclude=client))

    # -- delivery -------------------------------------------------------------

    def publish(self, event: RoomEvent, exclude: Client | None = None, *, relay: bool = True) -> int:
        """Say ``event`` to every member of its room in this server but ``exclude``.

        The one path for everything said to a room. An event that has no
        identity yet (``offset == 0``) gets the room's next one from the
        backplane; one that has it (from another server) keeps it. The event
        is rendered once per wire format in the room, and the bytes are
        appended to that format's feed, for every member. Then, unless
        ``relay`` is false (an event from another server), the backplane
        carries it to the other servers; and ``chatcore_room_event`` tells
        the plugins, whatever its origin.

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
        # Numbered and appended in the room's one order (_room_order); the feeds
        # are read under it too, so that a member attached meanwhile gets the line.
        with self._room_order(room):
            feeds = self.registry.feeds.get(room, ())
            if not feeds and not relay:
                # From elsewhere, for a room nobody here is in: numbering it (or
                # recording it) would make per-room state for a room that has
                # none here, and bring an emptied room's back.
                return 0
            for event in events:
                if not event.offset:
                    epoch, offset = self.backplane.next_position(room)
                    # An event from elsewhere keeps the time it was said at.
                    _stamp(event, epoch, offset, event.time or time.time())
                if event.changes_state:  # wherever it was said: one path for the room's state
                    self.rooms.apply(event)
            skip: Client | frozenset[Client] | None = exclude
            if first.told_in or first.operators_only:
                # Members told in another room already are left out, and so are
                # those who are not the room's operators, for an event for them.
                told = {member for name in first.told_in for member in self.registry.members(name)}
                if first.operators_only:
                    state = self.rooms.get(room)
                    told.update(
                        m for m in self.registry.members(room) if state is None or not state.is_operator(m.nick)
                    )
                if exclude is not None:
                    told.add(exclude)
                skip = frozenset(told)
            count = 0
            woken = []  # feeds that were idle: handed to the writer together
            # Presence notices may wait a moment, to leave in one send() with the
            # rest of a burst (chatcore.engine.writer); the rest goes out at once.
            batched = first.batched
            single = len(events) == 1
            try:
                for feed in feeds:
                    # Encoded once per wire format and appended once, whatever the
                    # room's size: the writer sends each member what it has not had
                    # (chatcore.engine.feed).
                    wire = feed.wire
                    lines: list[bytes] | None = None
                    try:
                        if single:
                            data = wire.encode(first)
                        else:
                            data, lines = None, [line for line in [wire.encode(event) for event in events] if line]
                    except Exception:
                        # A format that cannot render an event (a bug, or input from
                        # a cluster it did not expect) costs its members that event
                        # only: raising here would leave the feeds already marked
                        # ready unscheduled, and the room silent for good.
                        data, lines = None, self._render_each(wire, events)
                    if not data and not lines:
                        continue
                    if skip is exclude:
                        count += len(feed.members) - (exclude is not None and feed.membership(exclude) is not None)
                    else:
                        count += sum(1 for membership in feed.members if not left_out(skip, membership.client))
                    with feed.lock:
                        if data:
                            feed.append(data, skip)
                        elif lines:
                            feed.extend(lines, skip)
                        if feed.mark_ready(batched):
                            woken.append(feed)
            finally:
                # Whatever happened, a feed marked ready is handed to the writer:
                # one left out would never be sent again.
                if woken:
                    if batched:
                        self.writer.schedule_batched(woken)
                    else:
                        self.writer.schedule_feeds(woken)
        if relay and self._backplane_publishes:  # said here: the backplane carries it to the other servers
            try:
                self.backplane.published(events)
            except Exception:  # its delivery here is done: a backplane's bug must not cost the sender
                self._backplane_failed("published")
        if self.hooks.room_events_observed:  # what the rooms here heard, from wherever
            for event in events:
                self.hooks.room_event(self, event)
        if first.changes_state and self.hooks.room_changes_observed:  # one kind: the first says for all
            for event in events:
                self.hooks.room_changed(self, event)
        return count

    def _release(self, client: Client, room: str) -> None:
        """Let ``room``'s lines reach ``client``, held since it entered
        (:meth:`Registry.join`'s ``hold``), once it has been told it is in."""
        if room:
            waiting = self.registry.release(client, room)
            if waiting:
                self.writer.schedule_feeds(waiting)

    def _room_order(self, room: str) -> threading.Lock:
        """The lock under which ``room``'s events are numbered and appended,
        and a client attaches to it with its Joined's number (``""``: any)."""
        return self._room_orders[hash(room) % ROOM_ORDER_STRIPES]

    def _backplane_failed(self, method: str) -> None:
        """Log a failure of the backplane's ``method`` (the first five, then
        every thousandth): what it costs is the cluster's, not this server's."""
        self.backplane_failures += 1
        if self.backplane_failures <= 5 or self.backplane_failures % 1000 == 0:
            log.exception(
                "backplane %r failed in %s (%d so far); this server goes on",
                self.backplane.name,
                method,
                self.backplane_failures,
            )

    def _render_each(self, wire: WireFormat, events: Sequence[RoomEvent]) -> list[bytes]:
        """The lines ``wire`` renders for ``events``, one at a time, leaving
        out (and logging) each that it fails to render."""
        lines = []
        for event in events:
            try:
                line = wire.encode(event)
            except Exception:
                self.render_failures += 1
                if self.render_failures <= 5 or self.render_failures % 1000 == 0:
                    log.exception(
                        "wire format %r failed to render %r (%d so far); its members do not get it",
                        wire.name,
                        event,
                        self.render_failures,
                    )
                continue
            if line:
                lines.append(line)
        return lines
