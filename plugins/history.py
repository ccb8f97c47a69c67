"""Room history: replays a room's last messages to whoever enters it.

Keeps the last ``--history-lines`` chat and action events of each room (not
joins, leaves or private messages), as they were published
(``chatcore_room_event``), and replays them to a client entering the room,
on connecting and on ``/join``, as one :class:`~chatcore.events.Replay`
event. The native protocol shows it as a notice ``* last N messages in
ROOM:`` and then each line marked ``# `` (``# <alice> hi``, ``# * alice
waves``), so a client can tell replay from live chat; other front-ends
render it their own way, with each event's identity.

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

from chatcore import Client, Config, UsageError, hookimpl
from chatcore.config import restart_only, whole_number
from chatcore.engine.server import ChatServer
from chatcore.events import Action, Chat, Replay, RoomEvent

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

_SCHEMA_VERSION = 1
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
    restart_only(
        group.add_argument(
            "--history-db",
            metavar="FILE",
            help="SQLite file that keeps the history across restarts, created if missing (default: memory only)",
        )
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    options = config.options
    store = None
    if options.history_db:
        store = HistoryStore.open(options.history_db, options.history_lines, options.history_max_bytes)
    # Nothing is loaded now: a room's lines are read when a client enters it.
    config.data[NAME] = History(options.history_lines, store, options.history_max_bytes)


@hookimpl
def chatcore_reload(server: ChatServer, old: argparse.Namespace, new: argparse.Namespace) -> Callable[[], None] | None:
    if (new.history_lines, new.history_max_bytes) == (old.history_lines, old.history_max_bytes):
        return None
    history = _history(server)
    return lambda: history.resize(new.history_lines, new.history_max_bytes)


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    _history(server).start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    _history(server).stop()


@hookimpl
def chatcore_room_event(server: ChatServer, event: RoomEvent) -> None:
    if isinstance(event, (Chat, Action)):
        _history(server).add(event)


@hookimpl
def chatcore_client_joined(client: Client, room: str) -> None:
    history = _history(client.server)
    # The cluster's history of the room, where the backplane keeps one;
    # else what this server saw.
    events = client.server.backplane.history(room, history.lines)
    if events is None:
        events = history.replay(room)
    if events:
        client.send(Replay(room, tuple(events)))


@hookimpl
def chatcore_client_left(client: Client, room: str) -> None:
    if not client.server.registry.members(room):
        _history(client.server).forget(room)


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

    def __init__(self, lines: int, store: HistoryStore | None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.lines = lines
        self.store = store
        self.max_bytes = max_bytes
        self.bytes = 0  # counted by _size(), over every room in memory
        self._rooms: dict[str, collections.deque[Chat | Action]] = {}
        # Per room, the newest (epoch, offset) it no longer keeps: what says
        # whether a resume from an offset can be complete.
        self._dropped: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

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
                events = collections.deque(maxlen=self.lines)
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

    def forget(self, room: str) -> None:
        """The room has no member here any more: free its lines (the
        database, if any, keeps its copy)."""
        with self._lock:
            events = self._rooms.pop(room, None)
            self._dropped.pop(room, None)  # a room made again is numbered anew
            if events:
                self.bytes -= sum(_size(event) for event in events)

    def add(self, event: Chat | Action) -> None:
        """An event was published: keep it, and queue it for the database."""
        self.remember(event)
        if self.store is not None:
            kind = "chat" if type(event) is Chat else "action"
            self.store.put((event.room, event.time, kind, event.nick, event.text))

    def resize(self, lines: int, max_bytes: int | None = None) -> None:
        """Keep ``lines`` per room from now on (the newest, if fewer), and
        ``max_bytes`` in all."""
        with self._lock:
            self.lines = lines
            self.max_bytes = self.max_bytes if max_bytes is None else max_bytes
            for events in self._rooms.values():
                for gone in list(events)[: max(0, len(events) - lines)]:
                    self._dropped_one(gone)
            self._rooms = {room: collections.deque(events, maxlen=lines) for room, events in self._rooms.items()}
            self.bytes = sum(_size(event) for events in self._rooms.values() for event in events)
            self._trim()
        if self.store is not None:
            # Read by the store's thread before each trim.
            self.store.lines, self.store.max_bytes = lines, self.max_bytes

    def replay(self, room: str) -> list[RoomEvent]:
        """The room's kept events, oldest first; read from the database if
        the room is not in memory (nobody was in it here)."""
        with self._lock:
            events = self._rooms.get(room)
            if events is not None or self.store is None:
                return list(events) if events else []
        loaded = [
            _KINDS[kind](room, nick=nick, text=text, time=when) for _, when, kind, nick, text in self.store.read(room)
        ]
        with self._lock:
            events = self._rooms.get(room)
            if events is None:  # else lines were said meanwhile: those are newer
                events = self._rooms[room] = collections.deque(loaded, maxlen=self.lines)
                self.bytes += sum(_size(event) for event in events)
                self._trim()
            return list(events)

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


_Row = tuple[str, float, str, str, str]  # room, time, kind, nick, text
# A row's size against --history-max-bytes, in SQL (as _size() counts it).
_ROW_SIZE = "length(CAST(nick AS BLOB)) + length(CAST(text AS BLOB))"


class _Read:
    """A client's request for a room's lines, answered by the store's
    thread in its turn: after every line queued before it."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.rows: list[_Row] = []
        self.done = threading.Event()


class HistoryStore:
    """The SQLite side: checked at start, written by one background thread.

    One table (``chatcore_history``) holds the lines; after each batch only
    the last N lines of the rooms it touched are kept, and the oldest lines
    of all past ``max_bytes``. The connection is made on the main thread and
    then used only by the store's thread, which also answers :meth:`read`.
    """

    def __init__(self, path: str, lines: int, connection: sqlite3.Connection, max_bytes: int) -> None:
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
    def open(cls, path: str, lines: int, max_bytes: int = DEFAULT_MAX_BYTES) -> HistoryStore:
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
        store = cls(path, lines, db, max_bytes)
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
            if version not in (0, _SCHEMA_VERSION):
                raise refuse(f"written by another version of chatcore (schema {version}); use another file")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
                "id INTEGER PRIMARY KEY, room TEXT NOT NULL, time REAL NOT NULL, "
                "kind TEXT NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL)"
            )
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
        if not self._thread.is_alive():
            return []
        request = _Read(room)
        self._queue.put(request)
        if not request.done.wait(LOAD_TIMEOUT):
            log.warning("history: reading %s from %s took over %gs; no replay", room, self.path, LOAD_TIMEOUT)
        return request.rows

    def _answer(self, request: _Read, pending: list[_Row]) -> None:
        try:
            rows = self._db.execute(
                f"SELECT room, time, kind, nick, text FROM {_TABLE} WHERE room = ? AND kind IN ('chat', 'action') "
                "ORDER BY id DESC LIMIT ?",
                (request.room, self.lines),
            ).fetchall()
        except sqlite3.Error as exc:
            log.error("history: cannot read %s from %s (%s)", request.room, self.path, exc)
            rows = []
        # Lines not written yet (the write is failing) are newer than the table's.
        unsaved = [row for row in pending if row[0] == request.room]
        saved = [(str(room), float(when), str(kind), str(nick), str(text)) for room, when, kind, nick, text in rows]
        request.rows = (saved[::-1] + unsaved)[-self.lines :]
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
            db.executemany(f"INSERT INTO {_TABLE} (room, time, kind, nick, text) VALUES (?, ?, ?, ?, ?)", pending)
            total = self._bytes + sum(len(row[3].encode()) + len(row[4].encode()) for row in pending)
            for room in {row[0] for row in pending}:
                total -= self._deleted(
                    f"DELETE FROM {_TABLE} WHERE room = ? AND id <= "
                    f"(SELECT id FROM {_TABLE} WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (room, room, self.lines),
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
