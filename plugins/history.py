"""Room history: replays a room's last messages to whoever enters it, and
answers questions about the past.

Keeps the last ``--history-lines`` chat and action events of each room (not
joins or leaves; ``--history-room-lines`` for a room that keeps more), as
they were published (``chatcore_room_event``), and replays them to a client
entering the room, on connecting and on ``/join``, as one
:class:`~chatcore.events.Replay` event. The native protocol shows it as a
notice ``* last N messages in ROOM:`` and then each line marked ``# ``
(``# <alice> hi``, ``# * alice waves``), so a client can tell replay from
live chat; other front-ends render it their own way, with each event's
identity.

It also supplies the server's history service
(:mod:`chatcore.engine.history`): the protocols' questions by message ID and
time (IRC's ``CHATHISTORY``, the web page's scroll-back, ``/history``), and
keeps the private lines between two logged-in accounts, for either of them
(``/history @NICK``), as Ergo does for registered users.

With a cluster plugin that keeps rooms (``redis``), the replay is the
cluster's (the backplane's ``history``): the same on every server, whoever said
it where; this server's own record is the fallback while the cluster cannot
be reached.

Retention (defends against memory and disk growing with every room ever
used: issue 23 #7): at most ``--history-lines`` per room, and at most
``--history-max-bytes`` (UTF-8 bytes of nick and text) over all rooms, in
memory and in the database each; past that the least recently active
room's oldest lines go first. A room's history leaves memory when its last
member here leaves (Ergo drops a channel's history with the channel):
without ``--history-db`` it is gone, with it the database keeps the room's
bounded copy and the next client to enter reads it back.

``--history-db FILE`` also keeps them in SQLite, so they survive a restart.
The hot path only appends the event to the room's in-memory deque and puts
a tuple on a queue; a background thread writes to the database in batches. The file is
opened and checked when the server starts: a damaged, locked or unwritable
file stops the start with one clear line, and a write that fails later is
logged and retried, never a crash in the middle of the chat.
"""

from __future__ import annotations

import argparse
import collections
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from chatcore import Client, Config, UsageError, hookimpl
from chatcore.config import restart_only, whole_number
from chatcore.engine.history import (
    CONVERSATION,
    GUEST,
    HistoryService,
    Query,
    conversation,
    guest_conversation,
    private_line,
    select,
)
from chatcore.engine.server import ChatServer
from chatcore.events import Action, Chat, Joined, PrivateMessage, Replay, RoomEvent, parse_msgid
from chatcore.names import nick_problem, room_problem

#: Loaded and unloaded by a reload (SIGHUP) while the server runs:
#: chatcore_server_stop undoes all that configuring and starting did.
UNLOADABLE = True

log = logging.getLogger("chatcore.history")

NAME = "history"
DEFAULT_LINES = 20
MAX_LINES = 10000
#: Bytes of history (nick and text, UTF-8) kept over all rooms, in memory and
#: in the database each: 200 rooms of 20 lines of 1 KB.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
#: Lines /history shows when not told how many.
DEFAULT_SHOWN = 20
#: The most events one question answers (IRC's ``CHATHISTORY`` limit).
MAX_QUERY = 1000
#: How long a client entering a room waits for the database's copy of it.
LOAD_TIMEOUT = 2.0
#: How long the start waits for a database another process has locked.
OPEN_TIMEOUT = 2.0
#: Lines written to the database in one transaction, at most.
BATCH = 1000
#: Lines kept for the database while it cannot be written (they are in
#: memory anyway); beyond this the oldest are given up.
MAX_PENDING = 100000
#: Seconds between retries while the database cannot be written.
RETRY_DELAY = 1.0

#: 1: room, time, kind, nick, text; 2: and each line's message ID (epoch, offset).
_SCHEMA_VERSION = 2
_TABLE = "chatcore_history"


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "history plugin",
        "Replays a room's last chat and action lines, marked '# ', to whoever enters it.",
    )
    group.add_argument(
        "--history-lines",
        type=whole_number(1, MAX_LINES),
        default=DEFAULT_LINES,
        metavar="N",
        help="lines kept and replayed per room (default: %(default)s)",
    )
    group.add_argument(
        "--history-max-bytes",
        type=whole_number(1024, 2**40),
        default=DEFAULT_MAX_BYTES,
        metavar="BYTES",
        help=(
            "history kept over all rooms, in memory and in --history-db each, counted as the UTF-8 bytes "
            "of nick and text; the least recently active room's oldest lines go first (default: %(default)s)"
        ),
    )
    group.add_argument(
        "--history-room-lines",
        action="append",
        type=_room_lines,
        default=[],
        metavar="ROOM=N",
        help=(
            f"lines kept for ROOM instead of --history-lines (1 to {MAX_LINES}), for the history clients ask "
            "for; the replay on entering stays at most --history-lines; repeat for each room"
        ),
    )
    restart_only(
        group.add_argument(
            "--history-db",
            metavar="FILE",
            help="SQLite file that keeps the history across restarts, created if missing (default: memory only)",
        )
    )


def _room_lines(text: str) -> tuple[str, int]:
    """``--history-room-lines ROOM=N`` as ``(room, N)``."""
    room, sep, count = text.partition("=")
    room = room.strip().lower()
    problem = room_problem(room) if room else "no room given"
    if not sep or problem:
        raise argparse.ArgumentTypeError(f"expected ROOM=N, not {text!r}" + (f" ({problem})" if sep else ""))
    return room, whole_number(1, MAX_LINES)(count.strip())


@hookimpl
def chatcore_configure(config: Config) -> None:
    options = config.options
    lines = Retention(options.history_lines, dict(options.history_room_lines))
    store = None
    if options.history_db:
        store = HistoryStore.open(options.history_db, lines, options.history_max_bytes)
    # Nothing is loaded now: a room's lines are read when a client enters it.
    config.data[NAME] = History(lines, store, options.history_max_bytes)


@hookimpl
def chatcore_reload(server: ChatServer, old: argparse.Namespace, new: argparse.Namespace) -> Callable[[], None] | None:
    def settings(options: argparse.Namespace) -> tuple[object, ...]:
        return options.history_lines, options.history_max_bytes, dict(options.history_room_lines)

    if settings(new) == settings(old):
        return None
    history = _history(server)
    retention = Retention(new.history_lines, dict(new.history_room_lines))
    return lambda: history.resize(retention, new.history_max_bytes)


@hookimpl
def chatcore_history_service(server: ChatServer) -> HistoryService:
    return _Service(server, _history(server))


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    _history(server).start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    _history(server).stop()


@hookimpl
def chatcore_room_event(server: ChatServer, event: RoomEvent) -> None:
    history = _history(server)
    if isinstance(event, (Chat, Action)):
        history.add(event)
    history.saw(event)  # after add(): a replay waiting for it then finds it kept


@hookimpl
def chatcore_private_received(client: Client, event: PrivateMessage) -> None:
    # Private lines are kept for logged-in accounts only, as Ergo keeps them
    # for registered users: a guest's name is anyone's next, so a line with
    # a guest is kept for the account's side alone.
    # Kept where the recipient is: its server alone knows both accounts
    # (the sender's travels with the line).
    if event.account and client.account:
        key = conversation(event.account, client.account)
    elif event.account:  # to a guest: kept for the sender's account alone
        key = guest_conversation(event.account, client.nick)
    elif client.account:  # from a guest: kept for the recipient's account alone
        key = guest_conversation(client.account, event.sender)
    else:
        return
    _history(client.server).add_private(client.server, key, event)


@hookimpl
def chatcore_client_joined(client: Client, room: str, event: Joined) -> None:
    history = _history(client.server)
    # The cluster's history of the room, where the backplane keeps one;
    # else what this server saw; up to the client's join, since what was
    # said after it reaches the client live.
    count = history.lines.replayed(room)
    # Everything numbered before the join reached the feeds before the
    # client did (the engine's room order); its record here may lag a moment.
    history.wait_for_all_before(event)
    events = history.events(client.server, room, count, joined=event)[-count:]
    if events:
        client.send(Replay(room, tuple(events)))


@hookimpl
def chatcore_command_help() -> list[tuple[str, str]]:
    return [
        ("/history [ROOM] [N]", "show the last N lines said in ROOM (your current room if none is given)"),
        ("/history @NICK [N]", "show the last N private lines between you and NICK (logged-in accounts)"),
    ]


@hookimpl
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    if name != "history":
        return None
    words = args.split()
    count = DEFAULT_SHOWN
    if words and words[-1].isascii() and words[-1].isdigit():
        count = int(words.pop())
    if len(words) > 1 or count < 1 or words == [CONVERSATION]:
        client.error("usage: /history [ROOM|@NICK] [N]")
        return True
    room = words[0].lower() if words else client.room
    if not room:
        client.error("you are in no room; /history ROOM")
        return True
    service = client.server.history
    assert service is not None  # this plugin supplies it
    answer = service.query(client, room, Query("latest", min(count, service.max_limit)))
    if isinstance(answer, str):
        client.error(answer)
    elif answer:
        client.send(Replay(room, tuple(answer)))
    else:
        client.notice(f"no history kept for {room}")
    return True


@hookimpl
def chatcore_client_left(client: Client, room: str) -> None:
    if not client.server.registry.members(room):
        _history(client.server).forget(room)


class Retention:
    """How many lines each room keeps: ``default`` (``--history-lines``),
    or the room's own (``--history-room-lines``)."""

    def __init__(self, default: int, rooms: dict[str, int] | None = None) -> None:
        self.default = default
        self.rooms = rooms or {}

    def __call__(self, room: str) -> int:
        """The lines ``room`` keeps."""
        return self.rooms.get(room, self.default)

    def replayed(self, room: str) -> int:
        """The lines replayed to a client entering ``room``: at most the default."""
        return min(self.default, self(room))

    @property
    def most(self) -> int:
        """The most lines any room keeps."""
        return max([self.default, *self.rooms.values()])


#: Seconds a replay waits, at most, for the record to take the lines said
#: before the join (a moment: they are on their way from the feeds).
SEEN_WAIT = 0.5


def said_before(event: RoomEvent, mark: RoomEvent) -> bool:
    """Whether this server numbered ``event`` before ``mark`` (a client's
    Joined): an earlier epoch (a run before this one), or a smaller offset."""
    return event.epoch != mark.epoch or event.offset < mark.offset


def for_replay(shared: list[RoomEvent], local: list[RoomEvent], joined: RoomEvent | None = None) -> list[RoomEvent]:
    """A room's lines to replay to a client entering it: the cluster's
    (``shared``, oldest first) up to where the client's live lines begin,
    then this server's own not in the cluster's history yet.

    ``local`` is what this server's members heard, in order; ``joined`` the
    client's Joined, which marks where its live lines begin. Two ways a
    line could otherwise reach the client twice or not at all:

    - said here a moment before the join, and still on its way to the
      cluster (the publisher sends in batches): not live (said before the
      join), not in the cluster's history: added after it;
    - in the cluster's history but heard here only after the join (said
      meanwhile, or not read from Redis here yet): it comes live, so the
      cluster's lines stop at the last one heard here before the join
      (those before anything heard here are older than this server's
      record, and kept).
    """
    if not local:
        return shared
    before = local if joined is None else [event for event in local if said_before(event, joined)]
    heard = {event.msgid for event in local}
    heard_before = {event.msgid for event in before}
    keep = len(shared)
    positions = [i for i, event in enumerate(shared) if event.msgid in heard]
    if positions and joined is not None:  # a query (no join) has no live lines: all of it
        last_before = max((i for i in positions if shared[i].msgid in heard_before), default=-1)
        keep = max(last_before + 1, positions[0])
    in_shared = {event.msgid for event in shared}
    # Older than the cluster's window: not on its way, only out of it. (Not
    # the last kept line's time: a line stamped before it may be numbered
    # and sent after it, and still be on its way.)
    since = shared[0].time if shared else 0.0
    tail = [event for event in before if event.msgid not in in_shared and event.time >= since]
    return shared[:keep] + tail


def _said_at(event: RoomEvent) -> float:
    return event.time


def _accounts(key: str) -> tuple[str, str]:
    """The two accounts (case-folded) of a private conversation's name."""
    one, _, other = key[len(CONVERSATION) :].partition(",")
    return one, other


def _history(server: ChatServer) -> History:
    history: History = server.config.data[NAME]
    return history


_KINDS: dict[str, type[Chat] | type[Action]] = {"chat": Chat, "action": Action}


def _size(event: Chat | Action) -> int:
    """What an event counts against ``--history-max-bytes``."""
    return len(event.nick.encode()) + len(event.text.encode())


class History:
    """The last events of the rooms in use, in memory, ready to replay.

    Client threads add and replay concurrently; a lock guards the deques
    (held for an append or a copy, nothing more). The rooms are kept least
    recently active first, so the total budget drops from the front.
    """

    def __init__(self, lines: Retention | int, store: HistoryStore | None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.lines = lines if isinstance(lines, Retention) else Retention(lines)
        self.store = store
        self.max_bytes = max_bytes
        self.bytes = 0  # counted by _size(), over every room in memory
        self._rooms: dict[str, collections.deque[Chat | Action]] = {}
        # Per room, the newest (epoch, offset) it no longer keeps: what says
        # whether a resume from an offset can be complete.
        self._dropped: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        # Per room, how far this record has every event the engine numbered
        # (hooks run after the feeds: a line already out may be recorded a
        # moment later): [epoch, the first offset not seen yet, those seen
        # beyond it]. What a replay waits on (wait_for_all_before).
        self._seen: dict[str, tuple[str, list[int], set[int]]] = {}
        self._seen_changed = threading.Condition()

    def _dropped_one(self, event: Chat | Action) -> None:
        """``event`` leaves memory (the caller holds the lock)."""
        if event.offset:
            newest = self._dropped.get(event.room)
            if newest is None or newest[0] != event.epoch or newest[1] < event.offset:
                self._dropped[event.room] = (event.epoch, event.offset)

    def remember(self, event: Chat | Action) -> None:
        """Keep an event in memory only."""
        with self._lock:
            events = self._rooms.pop(event.room, None)  # re-inserted last: the most recently active
            if events is None:
                events = collections.deque(maxlen=self.lines(event.room))
            self._rooms[event.room] = events
            if len(events) == events.maxlen:
                self.bytes -= _size(events[0])  # pushed out by the append
                self._dropped_one(events[0])
            events.append(event)
            self.bytes += _size(event)
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest lines of the least recently active rooms until
        the total is within budget (the caller holds the lock)."""
        while self.bytes > self.max_bytes and self._rooms:
            room, events = next(iter(self._rooms.items()))
            if events:
                gone = events.popleft()
                self.bytes -= _size(gone)
                self._dropped_one(gone)
            if not events:
                del self._rooms[room]

    def saw(self, event: RoomEvent) -> None:
        """Note that the record has taken ``event``, whatever its kind."""
        if not event.offset:
            return
        with self._seen_changed:
            seen = self._seen.get(event.room)
            if seen is None or seen[0] != event.epoch:
                # A new numbering of the room (made again): from here on.
                self._seen[event.room] = (event.epoch, [event.offset + 1], set())
            else:
                _, first, beyond = seen
                if event.offset >= first[0]:
                    beyond.add(event.offset)
                    while first[0] in beyond:
                        beyond.discard(first[0])
                        first[0] += 1
            self._seen_changed.notify_all()

    def wait_for_all_before(self, joined: RoomEvent, timeout: float = SEEN_WAIT) -> None:
        """Wait until the record has every event of ``joined``'s room
        numbered before it (at most ``timeout``: an event whose publishing
        failed never comes, and is then taken as seen)."""

        def complete() -> bool:
            seen = self._seen.get(joined.room)
            return seen is None or seen[0] != joined.epoch or seen[1][0] >= joined.offset

        with self._seen_changed:
            if not self._seen_changed.wait_for(complete, timeout):
                _, first, beyond = self._seen[joined.room]
                first[0] = joined.offset
                beyond.difference_update(range(min(beyond, default=0), joined.offset))

    def forget(self, room: str) -> None:
        """The room has no member here any more: free its lines (the
        database, if any, keeps its copy)."""
        with self._seen_changed:
            self._seen.pop(room, None)
        with self._lock:
            events = self._rooms.pop(room, None)
            self._dropped.pop(room, None)  # a room made again is numbered anew
            if events:
                self.bytes -= sum(_size(event) for event in events)

    def add_private(self, server: ChatServer, key: str, event: PrivateMessage) -> None:
        """Keep ``event`` in the private conversation ``key``
        (:func:`~chatcore.engine.history.conversation`) as chat with its
        message ID and time, and in a cluster's shared history."""
        self.add(private_line(key, event))
        server.backplane.keep_private(key, event, self.lines(key))

    def add(self, event: Chat | Action) -> None:
        """An event was published: keep it, and queue it for the database."""
        self.remember(event)
        if self.store is not None:
            kind = "chat" if type(event) is Chat else "action"
            # The message ID's parts: an event from another server of a
            # cluster keeps the ID its server gave it.
            epoch, offset = parse_msgid(event.msgid) or ("", 0)
            self.store.put((event.room, event.time, kind, event.nick, event.text, epoch, offset))

    def resize(self, lines: Retention | int, max_bytes: int | None = None) -> None:
        """Keep ``lines`` per room from now on (the newest, if fewer), and
        ``max_bytes`` in all."""
        with self._lock:
            self.lines = lines = lines if isinstance(lines, Retention) else Retention(lines)
            self.max_bytes = self.max_bytes if max_bytes is None else max_bytes
            for room, events in self._rooms.items():
                for gone in list(events)[: max(0, len(events) - lines(room))]:
                    self._dropped_one(gone)
            self._rooms = {room: collections.deque(events, maxlen=lines(room)) for room, events in self._rooms.items()}
            self.bytes = sum(_size(event) for events in self._rooms.values() for event in events)
            self._trim()
        if self.store is not None:
            # Read by the store's thread before each trim.
            self.store.lines, self.store.max_bytes = self.lines, self.max_bytes

    def replay(self, room: str) -> list[RoomEvent]:
        """The room's kept events, oldest first; read from the database if
        the room is not in memory (nobody was in it here)."""
        with self._lock:
            events = self._rooms.get(room)
            if events is not None or self.store is None:
                return list(events) if events else []
        loaded = [
            _KINDS[kind](room, nick, text, offset, epoch, when)
            for _, when, kind, nick, text, epoch, offset in self.store.read(room)
        ]
        with self._lock:
            events = self._rooms.get(room)
            if events is None:  # else lines were said meanwhile: those are newer
                events = self._rooms[room] = collections.deque(loaded, maxlen=self.lines(room))
                self.bytes += sum(_size(event) for event in events)
                self._trim()
            return list(events)

    def events(self, server: ChatServer, room: str, limit: int = 0, joined: RoomEvent | None = None) -> list[RoomEvent]:
        """The room's kept events, oldest first (the last ``limit`` at
        least, if given: a cluster reads no more): the cluster's, where the
        backplane keeps them (the same on every server), else this
        server's; a private conversation's likewise.

        :param joined: for a replay, the entering client's Joined: only
            what was said before it (what came after comes live).
        """
        local = self.replay(room)
        shared = server.backplane.history(room, limit or self.lines(room))
        if shared is not None and room.startswith(CONVERSATION):
            # Each line is kept where its recipient is: this server's record
            # holds its own part alone, not a prefix of the cluster's (as a
            # room's is); add what it has that the cluster has not yet.
            known = {event.msgid for event in shared}
            return sorted(shared + [event for event in local if event.msgid not in known], key=_said_at)
        if shared is not None:
            return for_replay(shared, local, joined)
        return local if joined is None else [event for event in local if said_before(event, joined)]

    def conversations(self, server: ChatServer, account: str, start: float, end: float) -> list[tuple[str, float]]:
        """The private conversations of ``account`` whose latest line was
        said at or after the time ``start`` and before ``end``, with that
        time: the cluster's, where the backplane keeps them, else those in
        memory and those in the database."""
        shared = server.backplane.conversations(account, start, end)
        if shared is not None:
            return shared
        mine = account.casefold()
        return [
            (key, newest) for key, newest in self._conversations() if mine in _accounts(key) and start <= newest < end
        ]

    def _conversations(self) -> list[tuple[str, float]]:
        """Every private conversation here, and the time of its latest line:
        those in memory and those in the database."""
        newest: dict[str, float] = {}
        if self.store is not None:
            newest.update(self.store.latest(CONVERSATION, MAX_QUERY))
        with self._lock:
            for key, events in self._rooms.items():
                if key.startswith(CONVERSATION) and events:
                    newest[key] = max(events[-1].time, newest.get(key, 0.0))
        return list(newest.items())

    def since(self, room: str, epoch: str, offset: int, overlap: int = 0) -> tuple[list[RoomEvent], bool]:
        """The room's kept events of ``epoch`` after ``offset`` (and the
        ``overlap`` before it, as lines of two people can arrive in either
        order), and whether they are all there were: False if one after
        ``offset`` left memory (a room's or the total budget)."""
        kept = self.replay(room)
        with self._lock:
            dropped = self._dropped.get(room)
        newer = [event for event in kept if event.epoch == epoch and event.offset > offset - overlap]
        complete = dropped is None or dropped[0] != epoch or dropped[1] <= offset
        return newer, complete

    def start(self) -> None:
        if self.store is not None:
            self.store.start()

    def stop(self) -> None:
        if self.store is not None:
            self.store.stop()


_Row = tuple[str, float, str, str, str, str, int]  # room, time, kind, nick, text, epoch, offset
_COLUMNS = "room, time, kind, nick, text, epoch, offset"
# A row's size against --history-max-bytes, in SQL (as _size() counts it).
_ROW_SIZE = "length(CAST(nick AS BLOB)) + length(CAST(text AS BLOB))"


class _Read:
    """A client's question to the database, answered by the store's thread
    in its turn (after every line queued before it): ``ask(db, pending)``,
    with the lines not written yet (the write is failing)."""

    def __init__(self, ask: Callable[[sqlite3.Connection, list[_Row]], list[Any]]) -> None:
        self.ask = ask
        self.rows: list[Any] = []
        self.done = threading.Event()


class HistoryStore:
    """The SQLite side: checked at start, written by one background thread.

    One table (``chatcore_history``) holds the lines; after each batch only
    the last N lines of the rooms it touched are kept, and the oldest lines
    of all past ``max_bytes``. The connection is made on the main thread and
    then used only by the store's thread, which also answers :meth:`read`.
    """

    def __init__(self, path: str, lines: Retention, connection: sqlite3.Connection, max_bytes: int) -> None:
        self.path = path
        self.lines = lines
        self.max_bytes = max_bytes
        self._db = connection
        self._bytes = 0  # what the table holds, counted as _ROW_SIZE; set by open()
        self._queue: queue.SimpleQueue[_Row | _Read | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="chatcore-history", daemon=True)
        self.put = self._queue.put
        self._failures = 0

    @classmethod
    def open(cls, path: str, lines: Retention | int, max_bytes: int = DEFAULT_MAX_BYTES) -> HistoryStore:
        """Open and check the database, creating it if needed.

        :raises UsageError: the file cannot be opened, is not a SQLite
            database, is damaged, is locked by another process, cannot be
            written, or holds a different kind of table under our name.
        """

        def refuse(problem: str) -> UsageError:
            return UsageError(f"--history-db {path}: {problem}")

        try:
            db = sqlite3.connect(path, timeout=OPEN_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise refuse(f"cannot open it ({exc}); check the path and its permissions") from None
        try:
            cls._check(db, refuse)
            (total,) = db.execute(f"SELECT coalesce(sum({_ROW_SIZE}), 0) FROM {_TABLE}").fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise refuse(f"cannot read the history ({exc}); move the file away to start a new one") from None
        except BaseException:
            db.close()
            raise
        store = cls(path, lines if isinstance(lines, Retention) else Retention(lines), db, max_bytes)
        store._bytes = int(total)
        return store

    @staticmethod
    def _check(db: sqlite3.Connection, refuse: Callable[[str], UsageError]) -> None:
        try:
            (status,) = db.execute("PRAGMA quick_check").fetchone()
            if status != "ok":
                raise refuse(f"the database is damaged ({status}); move it away to start a new history")
            # A write transaction, at once: fails now if the file is locked
            # or read-only, rather than in the middle of the chat.
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, _SCHEMA_VERSION):
                raise refuse(f"written by another version of chatcore (schema {version}); use another file")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
                "id INTEGER PRIMARY KEY, room TEXT NOT NULL, time REAL NOT NULL, "
                "kind TEXT NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL, "
                "epoch TEXT NOT NULL DEFAULT '', offset INTEGER NOT NULL DEFAULT 0)"
            )
            if version == 1:
                # Lines kept before message IDs have none (epoch '', offset 0).
                db.execute(f"ALTER TABLE {_TABLE} ADD COLUMN epoch TEXT NOT NULL DEFAULT ''")
                db.execute(f"ALTER TABLE {_TABLE} ADD COLUMN offset INTEGER NOT NULL DEFAULT 0")
            db.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_room ON {_TABLE} (room, id)")
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            message = str(exc)
            if "locked" in message or "busy" in message:
                raise refuse(
                    f"the database is locked ({message}); is another chatcore server using it? "
                    "Stop it or use another file"
                ) from None
            if "readonly" in message:
                raise refuse(f"cannot write it ({message}); check its permissions") from None
            raise refuse(f"not a usable SQLite database ({message}); move it away to start a new history") from None

    def read(self, room: str) -> list[_Row]:
        """The room's last N lines, oldest first, those still queued
        included; on a client's thread, which waits for the store's thread
        at most LOAD_TIMEOUT seconds (then: none)."""
        lines = self.lines(room)

        def ask(db: sqlite3.Connection, pending: list[_Row]) -> list[_Row]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM {_TABLE} WHERE room = ? AND kind IN ('chat', 'action') "
                "ORDER BY id DESC LIMIT ?",
                (room, lines),
            ).fetchall()
            saved: list[_Row] = [
                (str(room), float(when), str(kind), str(nick), str(text), str(epoch), int(offset))
                for room, when, kind, nick, text, epoch, offset in rows
            ]
            # Lines not written yet (the write is failing) are newer than the table's.
            return (saved[::-1] + [row for row in pending if row[0] == room])[-lines:]

        return self.ask(ask, f"reading {room}")

    def latest(self, prefix: str, limit: int) -> list[tuple[str, float]]:
        """The rooms whose name starts with ``prefix``, and the time of
        their latest line, the latest first (at most ``limit``)."""

        def ask(db: sqlite3.Connection, pending: list[_Row]) -> list[tuple[str, float]]:
            newest: dict[str, float] = {}
            for room, when in db.execute(
                f"SELECT room, max(time) FROM {_TABLE} WHERE substr(room, 1, ?) = ? GROUP BY room",
                (len(prefix), prefix),
            ):
                newest[str(room)] = float(when)
            for row in pending:
                if row[0].startswith(prefix):
                    newest[row[0]] = max(row[1], newest.get(row[0], row[1]))
            return sorted(newest.items(), key=lambda item: -item[1])[:limit]

        return self.ask(ask, "listing the conversations")

    def ask(self, question: Callable[[sqlite3.Connection, list[_Row]], list[Any]], what: str) -> list[Any]:
        """The store's thread's answer to ``question``; on a client's
        thread, which waits at most LOAD_TIMEOUT seconds (then: none)."""
        if not self._thread.is_alive():
            return []
        request = _Read(question)
        self._queue.put(request)
        if not request.done.wait(LOAD_TIMEOUT):
            log.warning("history: %s from %s took over %gs; no answer", what, self.path, LOAD_TIMEOUT)
        return request.rows

    def _answer(self, request: _Read, pending: list[_Row]) -> None:
        try:
            request.rows = request.ask(self._db, pending)
        except sqlite3.Error as exc:
            log.error("history: cannot read %s (%s)", self.path, exc)
        request.done.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write everything queued, then close the database."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(10)
        if not self._thread.is_alive():
            self._db.close()

    def _run(self) -> None:
        pending: list[_Row] = []
        while True:
            stopping, request = self._collect(pending)
            if pending:
                self._write(pending)
            if request is not None:
                self._answer(request, pending)
            if len(pending) > MAX_PENDING:
                log.error("history: gave up %d unsaved lines (the oldest)", len(pending) - MAX_PENDING)
                del pending[: len(pending) - MAX_PENDING]
            if stopping:
                if pending:
                    log.error("history: %d lines could not be saved to %s", len(pending), self.path)
                return

    def _collect(self, pending: list[_Row]) -> tuple[bool, _Read | None]:
        """Wait for lines, then take what is queued (up to a batch, or up
        to a read request) into ``pending``: (whether the store is stopping,
        the read request to answer once they are written). While a write is
        failing, returns every RETRY_DELAY seconds to retry it."""
        try:
            item = self._queue.get(timeout=RETRY_DELAY if pending else None)
        except queue.Empty:
            return False, None
        taken = 0
        while item is not None:
            if isinstance(item, _Read):
                return False, item
            pending.append(item)
            taken += 1
            if taken >= BATCH:
                return False, None
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False, None
        return True, None

    def _write(self, pending: list[_Row]) -> None:
        """Write ``pending`` in one transaction and trim the rooms it
        touched; on success ``pending`` is emptied, on failure it is kept
        for the next try."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", pending)
            total = self._bytes + sum(len(row[3].encode()) + len(row[4].encode()) for row in pending)
            for room in {row[0] for row in pending}:
                total -= self._deleted(
                    f"DELETE FROM {_TABLE} WHERE room = ? AND id <= "
                    f"(SELECT id FROM {_TABLE} WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (room, room, self.lines(room)),
                )
            while total > self.max_bytes:  # the oldest line of all, one at a time: a lookup by key each
                freed = self._deleted(f"DELETE FROM {_TABLE} WHERE id = (SELECT min(id) FROM {_TABLE})", ())
                if not freed:
                    break
                total -= freed
            db.execute("COMMIT")
            self._bytes = total
        except sqlite3.Error as exc:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._failures += 1
            if self._failures == 1 or self._failures % 100 == 0:
                log.error(
                    "history: cannot write %s (%s); the lines stay in memory and the write is retried (failure %d)",
                    self.path,
                    exc,
                    self._failures,
                )
            return
        if self._failures:
            log.warning("history: writing %s works again", self.path)
            self._failures = 0
        pending.clear()

    def _deleted(self, sql: str, parameters: tuple[object, ...]) -> int:
        """Run a DELETE; the bytes (as _ROW_SIZE) it freed."""
        return sum(size for (size,) in self._db.execute(f"{sql} RETURNING {_ROW_SIZE}", parameters))


class _Service(HistoryService):
    """The history plugin's answers to the protocols
    (:class:`~chatcore.engine.history.HistoryService`)."""

    def __init__(self, server: ChatServer, history: History) -> None:
        self.server = server
        self.history = history

    @property
    def max_limit(self) -> int:
        """As many as any room keeps, up to MAX_QUERY."""
        return min(MAX_QUERY, self.history.lines.most)

    def query(self, client: Client, target: str, query: Query) -> list[RoomEvent] | str:
        keys, refusal = self._readable(client, target)
        if refusal:
            return refusal
        if len(keys) == 1:
            return select(self.history.events(self.server, keys[0]), query)
        # Two conversations read as one, in the order said.
        merged = sorted((event for key in keys for event in self.history.events(self.server, key)), key=_said_at)
        return select(merged, query)

    def _readable(self, client: Client, target: str) -> tuple[list[str], str]:
        """What ``target`` names for ``client`` (a room it is in, or, for
        ``@NICK``, its private conversations with that nick), and ``""``;
        else nothing and why it may not read it."""
        if not target.startswith(CONVERSATION):
            room = target.lower()
            if room in client.rooms:
                return [room], ""
            # Only a member may read a room's past: +s and +i rooms keep theirs to themselves.
            return [], f"you are not in {target}; join it to read its history"
        nick = target[len(CONVERSATION) :]
        if nick_problem(nick) is not None:
            return [], f"no such nick {nick!r}"
        if not client.account:
            return [], "private history is kept for logged-in accounts only; log in to read it"
        # An account owns the nick of its name (the accounts plugin): a nick
        # not here, or not logged in, is taken for the account's name; and
        # what this account said with whoever used the nick as a guest.
        other = self.server.registry.find(nick)
        account = other.account if other is not None and other.account else nick
        return [conversation(client.account, account), guest_conversation(client.account, nick)], ""

    def targets(self, client: Client, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        backwards = start > end
        start, end = min(start, end), max(start, end)
        found = []
        for room in client.rooms:
            # A target counts by its latest line alone (as the spec and Ergo
            # have it): one with older lines in the window but a newer one
            # after it has been listed for that newer one.
            times = [event.time for event in self.history.events(self.server, room)]
            if times and start <= max(times) < end:
                found.append((room, max(times)))
        if client.account:
            mine = client.account.casefold()
            peers: dict[str, float] = {}
            for key, newest in self.history.conversations(self.server, client.account, start, end):
                one, other = _accounts(key)
                # A guest conversation is listed under the guest's nick (merged with that account's).
                peer = (other if one == mine else one).removeprefix(GUEST)
                peers[peer] = max(newest, peers.get(peer, newest))
            found.extend((CONVERSATION + peer, newest) for peer, newest in peers.items())
        found.sort(key=lambda item: item[1])
        return found[-limit:] if backwards else found[:limit]
