"""The redis plugin's reader: the other servers' room events, private
messages and operators' actions, from the streams to the members here."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from chatcore.events import Left
from chatcore.plugins.redis.arrivals import Cursor
from chatcore.plugins.redis.codec import (
    FORMAT_VERSION,
    ROOM_ACTIONS,
    decode_event,
    decode_moderation,
    decode_private,
    entry_event,
    entry_msgid,
    entry_place,
)
from chatcore.plugins.redis.connection import Backoff, close, connect
from chatcore.plugins.redis.publisher import BATCH

if TYPE_CHECKING:
    import redis as redis_py

    from chatcore.plugins.redis.backplane import Cluster

log = logging.getLogger("chatcore.redis")

#: How long one blocking XREAD waits, in milliseconds. It bounds how soon a
#: room newly entered is read and how long stopping takes; arriving entries
#: end the wait at once, so it does not add latency.
BLOCK_MS = 250
#: Seconds between checks that each cursor is still where the stream is.
DEFAULT_CHECK_INTERVAL = 5.0
#: Entries looked through, at most, for this server's own Joined whose
#: place the publisher did not learn (newest first: it was added a moment
#: ago, as the room was entered).
FIND_OWN = 1000
#: Entries read, at most, to catch a room's state up (a few milliseconds'
#: worth: between a server reading the state and its Joined entry).
CATCH_UP = 1000
#: How far back a reader reads again after Redis went back in time (a
#: failover to a replica that lacked entries read here): the writes on the
#: new primary since it was promoted, which a reader left on the old
#: primary until its demotion (some 10 s) has not seen.
REWIND_MS = 60_000


class Reader(threading.Thread):
    """Reads the streams of the rooms this server's clients are in and
    publishes what the other servers said, in stream order."""

    def __init__(self, cluster: Cluster, check_interval: float = DEFAULT_CHECK_INTERVAL) -> None:
        super().__init__(name="chatcore-redis-reader", daemon=True)
        self.cluster = cluster
        self.check_interval = check_interval
        self.cursors: dict[str, Cursor] = {}
        #: The last sequence number delivered here of each (room, node): an
        #: event one node published twice (its retry went to another copy of
        #: the stream, in a Sentinel switchover) is delivered once.
        self.heard: dict[tuple[str, str], int] = {}
        #: Where the reader is in this node's inbox (new at every start).
        self.inbox_id = "0-0"
        #: Where the reader is in the moderation stream (None: not started),
        #: and the last entry there at the start: those before it are only
        #: replayed for their bans and unbans.
        self.moderation_id: str | None = None
        self.replayed_until = (0, 0)

    def run(self) -> None:
        import redis as redis_py

        cluster = self.cluster
        client: redis_py.Redis | None = None
        backoff = Backoff()
        next_check = 0.0
        while not cluster.stopping.is_set():
            try:
                if client is None:
                    client = connect(
                        cluster.target, timeout=cluster.timeout + BLOCK_MS / 1000, name=f"chatcore-{cluster.node}-read"
                    )
                    client.ping()
                    if self.moderation_id is None:
                        self._start_moderation(client)
                    self._check(client)
                self._follow_rooms(client)
                if time.monotonic() >= next_check:
                    self._check(client)
                    next_check = time.monotonic() + self.check_interval
                self._read(client)
                cluster.exchanged()
                cluster.link_up()
                backoff.reset()
            except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
                cluster.link_down(f"reading: {exc}")
                close(client)
                client = None
                backoff.wait(cluster.stopping)
            except Exception:
                # Never a dead reader: log, make the link again, read on from
                # the cursors (what was read is not read twice).
                log.exception("reading the cluster's streams failed; reconnecting")
                close(client)
                client = None
                backoff.wait(cluster.stopping)
        close(client)

    def _follow_rooms(self, client: redis_py.Redis) -> None:
        """Start reading rooms that got local members, from this server's
        Joined entry (:class:`Arrivals`); stop reading empty ones."""
        cluster = self.cluster
        assert cluster.server is not None
        start, stop = cluster.arrivals.plan(cluster.server.registry.rooms)
        for room in stop:
            self.cursors.pop(room, None)
        if stop:
            self.heard = {key: seq for key, seq in self.heard.items() if key[0] not in stop}
        for room, where in start.items():
            # The top is read before the room counts as read, so a failure
            # here leaves it to the next plan.
            found = self._own_entry(client, room, where.seq) if where.seq is not None else None
            cursor = where.cursor or found or self._top(client, room)
            self._catch_up_state(client, room, cursor)
            if cluster.arrivals.begin(room, where):
                self.cursors[room] = cursor
                if where.gap and found is None:
                    cluster.gap(room, None, where.gap)

    def _catch_up_state(self, client: redis_py.Redis, room: str, cursor: Cursor) -> None:
        """Apply to the room's state here the other servers' changes said
        between the moment this server read the state (entering the room)
        and where it starts reading: its members are not told them (they
        come before their Joined), but the state must have them (a rename
        that moved an operator role, a mode set a moment before)."""
        cluster = self.cluster
        server = cluster.server
        assert server is not None
        since = cluster.presence.entered_where(room)
        if since is None or _stream_id(cursor.last_id) <= _stream_id(since):
            return
        entries: list[Any] = (
            client.xrange(cluster.keys.stream(room), min="(" + since, max=cursor.last_id, count=CATCH_UP) or []
        )
        for entry_id, entry in entries:
            if entry_id == cursor.last_id or entry.get("node") == cluster.node:
                continue  # this server's own: applied as it said them
            try:
                _, _, event = entry_event(entry, server.max_line)
            except (KeyError, ValueError) as exc:
                cluster.invalid.drop(f"room {room} entry {entry_id}", exc)
                continue
            if event.changes_state and event.room == room:
                server.rooms.apply(event)

    def _own_entry(self, client: redis_py.Redis, room: str, seq: int) -> Cursor | None:
        """A cursor at this server's entry number ``seq`` in the room's
        stream, looked for among the last :data:`FIND_OWN` entries; None if
        it is not there (trimmed, or on a copy of the stream a failover
        left behind). For a Joined whose publish reply was lost: starting at
        the top instead told the members of a gap, although nearly always
        nothing had been said between the Joined and the top (issue 25)."""
        cluster = self.cluster
        entries: list[Any] = client.xrevrange(cluster.keys.stream(room), count=FIND_OWN) or []
        for entry_id, entry in entries:
            if entry.get("node") == cluster.node and entry.get("seq") == str(seq):
                try:
                    epoch, offset = entry_place(entry)
                except (KeyError, ValueError):
                    return None
                return Cursor(str(entry_id), epoch, offset)
        return None

    def _top(self, client: redis_py.Redis, room: str) -> Cursor:
        """A cursor at the end of the room's stream (where this server's
        Joined entry went is not known)."""
        keys = self.cluster.keys
        pipe = client.pipeline(transaction=True)  # one snapshot of both keys
        pipe.hmget(keys.meta(room), ["epoch", "offset"])
        pipe.xrevrange(keys.stream(room), count=1)
        (epoch, offset), last = pipe.execute()
        last_id = last[0][0] if last else "0-0"
        return Cursor(last_id, epoch, int(offset or 0))

    def _rewound(self, client: redis_py.Redis, room: str) -> Cursor:
        """A cursor :data:`REWIND_MS` back in the room's stream, by Redis's
        clock (entry IDs are its milliseconds).

        After a failover to a replica that lacked the newest entries read
        here, what the publishers that moved first wrote there since is
        behind this server's place: it is read again, from before the
        failover, and what was delivered already is dropped by its node's
        number (``heard``), so nothing comes twice and nothing written on
        the new primary is skipped."""
        keys = self.cluster.keys
        seconds, micros = client.time()
        since = int(seconds) * 1000 + int(micros) // 1000 - REWIND_MS
        pipe = client.pipeline(transaction=True)  # one snapshot of both keys
        pipe.hmget(keys.meta(room), ["epoch"])
        pipe.xrevrange(keys.stream(room), max=f"({since}-0", count=1)
        (epoch,), before = pipe.execute()
        try:
            if before:
                entry_id, entry = before[0]
                return Cursor(str(entry_id), epoch, entry_place(entry)[1])
            # The whole stream is younger: all of it, from before its first entry.
            first: list[Any] = client.xrange(keys.stream(room), count=1) or []
            return Cursor("0-0", epoch, entry_place(first[0][1])[1] - 1 if first else 0)
        except (KeyError, ValueError):  # an entry this server cannot read
            return self._top(client, room)

    def _check(self, client: redis_py.Redis) -> None:
        """Compare every cursor with its room in Redis: a changed epoch (Redis
        restarted empty, flushed, failed over to a copy that lacks it) or an
        offset behind ours means entries we would never read: say so and
        start again from the room's new history: all of it after a changed
        epoch; after an offset that went back (a failover to a replica that
        had not received the last entries), from the room's top, since what
        the replica has is what was read here already."""
        keys = self.cluster.keys
        rooms = list(self.cursors)
        if not rooms:
            return
        pipe = client.pipeline(transaction=False)
        for room in rooms:
            pipe.hmget(keys.meta(room), ["epoch", "offset"])
        for room, (epoch, offset) in zip(rooms, pipe.execute(), strict=True):
            cursor = self.cursors[room]
            if cursor.epoch is None or (epoch == cursor.epoch and int(offset or 0) >= cursor.offset):
                continue
            if epoch != cursor.epoch:
                self.cluster.gap(room, None, "the cluster's Redis lost them")
                self.cursors[room] = Cursor("0-0", None, 0)
            else:
                # Not from the start: that would deliver again all it has.
                self.cluster.gap(room, None, "Redis went back in time")
                self.cursors[room] = self._rewound(client, room)

    def _read(self, client: redis_py.Redis) -> None:
        keys = self.cluster.keys
        inbox = keys.inbox(self.cluster.node)
        streams: dict[Any, Any] = {keys.stream(room): cursor.last_id for room, cursor in self.cursors.items()}
        streams[inbox] = self.inbox_id
        moderation = keys.moderation()
        streams[moderation] = self.moderation_id
        replies = client.xread(streams, count=BATCH, block=BLOCK_MS)
        for stream, entries in _stream_replies(replies):
            if stream == inbox:
                for entry_id, entry in entries:
                    self.inbox_id = entry_id
                    self._deliver_private(entry_id, entry)
                continue
            if stream == moderation:
                for entry_id, entry in entries:
                    self.moderation_id = entry_id
                    self._moderate(entry_id, entry)
                continue
            room = stream[len(keys.prefix) + len("room:") : -len(":stream")]
            cursor = self.cursors.get(room)
            if cursor is None:
                continue
            for entry_id, entry in entries:
                self._deliver(room, cursor, entry_id, entry)

    def _start_moderation(self, client: redis_py.Redis) -> None:
        """Read the moderation stream from its start: the bans and unbans
        there are in force on the cluster, this server included."""
        last = client.xrevrange(self.cluster.keys.moderation(), count=1)
        self.replayed_until = _stream_id(str(last[0][0])) if last else (0, 0)
        self.moderation_id = "0-0"

    def _moderate(self, entry_id: str, entry: dict[str, str]) -> None:
        """An operator's action sent by another server, checked, for the
        plugins to apply (``chatcore_moderation``: the opers plugin applies
        it as its own). Entries from before this server started are replayed
        but for kicks (bans and mutes are kept: they are in force)."""
        cluster = self.cluster
        server = cluster.server
        assert server is not None
        if entry.get("node") == cluster.node:
            return  # applied here already
        try:
            if entry.get("v") != FORMAT_VERSION:
                raise ValueError(f"format version {entry.get('v')!r:.20}")
            record = decode_moderation(entry["event"], server.max_line)
        except (KeyError, ValueError) as exc:
            cluster.invalid.drop(f"moderation entry {entry_id}", exc)
            return
        action = record.pop("action")
        until = record.get("until")
        if until is not None and until <= time.time():
            return  # a ban or mute that is over
        if (action in ROOM_ACTIONS or action == "kick") and _stream_id(entry_id) <= self.replayed_until:
            return  # a kick or an invitation is for a user here then, never replayed
        if action in ROOM_ACTIONS:
            server.carry_out(action, record)
        else:
            server.hooks.moderation(server, action, record)

    def _deliver_private(self, entry_id: str, entry: dict[str, str]) -> None:
        server = self.cluster.server
        assert server is not None
        try:
            if entry.get("v") != FORMAT_VERSION:
                raise ValueError(f"format version {entry.get('v')!r:.20}")
            # With the ID and time its server gave it: one of each everywhere.
            message = decode_private(entry["event"], server.max_line, entry_msgid(entry))
        except (KeyError, ValueError) as exc:
            self.cluster.invalid.drop(f"inbox entry {entry_id}", exc)
            return
        if not server.deliver_private(message):
            log.info("private message for %r, who left this server meanwhile, dropped", message.recipient)

    def _deliver(self, room: str, cursor: Cursor, entry_id: str, entry: dict[str, str]) -> None:
        cluster = self.cluster
        server = cluster.server
        assert server is not None
        cursor.last_id = entry_id
        what = f"room {room} entry {entry_id}"
        try:
            epoch, offset = entry_place(entry)
        except (KeyError, ValueError) as exc:
            cluster.invalid.drop(what, exc)
            return
        # The place counts even if the event is dropped below: a dropped
        # entry is not a gap to tell the members of.
        if cursor.epoch is not None and epoch != cursor.epoch:
            cluster.gap(room, None, "the cluster's Redis lost them")
        elif offset > cursor.offset + 1:
            cluster.gap(room, offset - cursor.offset - 1, "Redis trimmed them before this server read them")
        cursor.epoch, cursor.offset = epoch, offset
        node = entry.get("node", "")
        if node == cluster.node:
            return  # said here, and delivered here already
        seq = entry.get("seq", "")
        if seq.isascii() and seq.isdigit():  # entries written before 'seq' have none
            if int(seq) <= self.heard.get((room, node), 0):
                return  # this node's event again: its publisher's retry reached another copy of the stream
            self.heard[(room, node)] = int(seq)
        try:
            # With the message ID its server gave it: one ID on every server.
            event = decode_event(entry["event"], server.max_line, entry_msgid(entry))
            if event.room != room:
                raise ValueError(f"it is for room {event.room}")
        except (KeyError, ValueError) as exc:
            cluster.invalid.drop(what, exc)
            return
        if isinstance(event, Left) and cluster.presence.returned(event):
            return  # a ghost leave: another server timed this one out, and the user is here
        server.publish(event, relay=False)


def _stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``1700000000000-3``) as numbers, to compare two."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _stream_replies(replies: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD's (RESP2) answer as ``[(stream, [(id, fields), ...]), ...]``."""
    return [(stream, entries) for stream, entries in replies or ()]
