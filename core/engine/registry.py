"""The registry of connected clients, their nicknames and the rooms each is in."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from chatcore.engine.connection import Client
from chatcore.engine.feed import RoomFeed

if TYPE_CHECKING:
    from chatcore.wire import WireFormat

DEFAULT_ROOM = "lobby"
#: Rooms one connection may be in at once (``--max-rooms-per-client``):
#: Ergo's default ``max-channels-per-client``. InspIRCd's 20 is tighter than
#: the autojoin lists of people who idle in many channels, and a membership
#: costs a few hundred bytes here.
DEFAULT_MAX_ROOMS_PER_CLIENT = 100
#: The most ``--max-rooms-per-client`` may be: a quit names the rooms told
#: already (``told_in``), and a cluster carries lists up to this long.
MAX_ROOMS_PER_CLIENT = 1000


def _key(nick: str) -> str:
    """The registry's key for a nickname: casefolded, and the nickname's own
    string when it is casefolded already (every guest name), so that a
    client does not keep a second copy of it (memory per idle client)."""
    folded = nick.casefold()
    return nick if folded == nick else folded


class Registry:
    """Who is connected, under which nickname, in which rooms.

    Thread-safe. Changes (add, remove, rename, join, part) take a lock;
    reading a room's members does not: each room holds an immutable tuple
    that is replaced on every change (copy-on-write), because members are
    read on every message and change only when someone joins or leaves.
    Each room also has one :class:`~chatcore.engine.feed.RoomFeed` per wire
    format present (:attr:`feeds`), that format's members attached to it:
    an event is rendered once per format and appended once to its feed, not
    once per member.

    A client may be in any number of rooms (the limit is the caller's:
    ``--max-rooms-per-client``), and in none. A wire format may render
    differently for members of several rooms (the native protocol names
    the room of each line then): a client is attached to the feeds of
    ``client.wire.variant(len(client.rooms))``, and moved between variants
    when that changes.
    """

    def __init__(self, default_room: str = DEFAULT_ROOM) -> None:
        self.default_room = default_room
        self._lock = threading.Lock()
        self._by_nick: dict[str, Client] = {}  # keys are casefolded nicks
        self._rooms: dict[str, tuple[Client, ...]] = {}
        # Each room's members again, as a dict: what a leave removes from in
        # O(1) before the tuple is copied from it in C (a Python loop over
        # the members made 10,000 leaves take seconds).
        self._in_room: dict[str, dict[Client, None]] = {}
        #: Each room's feeds, one per wire format present: read without the
        #: lock (each value is an immutable snapshot, replaced on change), on
        #: every message, by ChatServer.publish().
        self.feeds: dict[str, tuple[RoomFeed, ...]] = {}
        self._guest_numbers = itertools.count(1)
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._by_nick)

    def __iter__(self) -> Iterator[Client]:
        return iter(tuple(self._by_nick.values()))

    def next_id(self) -> int:
        return next(self._ids)

    def add(self, client: Client, room: str | None = None, nick: str | None = None, hold: bool = False) -> bool:
        """Register a new client under ``nick``, or a fresh ``guest-N``
        nickname if none is given, in ``room`` (the default room if None;
        in no room if ``""``); False (and nothing changed) if ``nick`` is
        taken, ignoring case. ``hold``: as :meth:`join`'s."""
        with self._lock:
            if nick is None:
                while True:
                    nick = f"guest-{next(self._guest_numbers)}"
                    if nick not in self._by_nick:
                        break
            elif nick.casefold() in self._by_nick:
                return False
            client.nick = nick
            self._by_nick[_key(nick)] = client
            room = self.default_room if room is None else room
            if room:
                self._enter(client, room, hold)
            return True

    def guest_nick(self) -> str:
        """A ``guest-N`` nickname no client here has (for a guest name a
        cluster refused: the numbers go on from there)."""
        with self._lock:
            while True:
                nick = f"guest-{next(self._guest_numbers)}"
                if nick not in self._by_nick:
                    return nick

    def remove(self, client: Client) -> bool:
        """Unregister a client, out of every room; True only for the call
        that removed it. ``client.rooms`` still names the rooms it was in."""
        with self._lock:
            if self._by_nick.get(client.nick.casefold()) is not client:
                return False
            del self._by_nick[client.nick.casefold()]
            wire = client.wire.variant(len(client.rooms))
            for room in client.rooms:
                self._detach(client, room, wire)
                self._drop_member(client, room)
            return True

    def rename(self, client: Client, nick: str, was: str | None = None) -> bool:
        """Give ``client`` a new nickname; False if another client has it
        (nicknames are unique ignoring case), if ``client`` is not here (any
        more), or if ``was`` is given and the client is no longer called
        that."""
        with self._lock:
            if was is not None and client.nick != was:
                return False
            holder = self._by_nick.get(nick.casefold())
            if holder is not None and holder is not client:
                return False
            if self._by_nick.get(client.nick.casefold()) is not client:
                # Removed meanwhile: a rename from another thread (the
                # accounts plugin's enforcer, a cluster's collision) racing
                # the client's leave would otherwise register it again, a
                # ghost holding the name for good.
                return False
            del self._by_nick[client.nick.casefold()]
            client.nick = nick
            self._by_nick[_key(nick)] = client
            return True

    def join(self, client: Client, room: str, hold: bool = False) -> bool:
        """Put ``client`` in ``room`` too (made on first use) and make it the
        client's current room; False if it was in it already (then it only
        becomes current).

        :param hold: the room's lines wait for the client until
            :meth:`release`, so that what it is told first (that it is in)
            comes before them (:meth:`~chatcore.engine.feed.RoomFeed.attach`).
        """
        with self._lock:
            client.room = room
            if room in client.rooms:
                return False
            self._enter(client, room, hold)
            return True

    def release(self, client: Client, room: str) -> list[RoomFeed]:
        """Let ``room``'s lines reach ``client``, held since it entered;
        :return: the feeds whose lines now wait for it (for the writer)."""
        waiting = []
        for feed in self.feeds.get(room, ()):
            with feed.lock:
                if feed.release(client) and feed.mark_ready(False):
                    waiting.append(feed)
        return waiting

    def part(self, client: Client, room: str) -> bool:
        """Take ``client`` out of ``room``; False if it was not in it. If it
        was the current room, the room joined last of those left becomes
        current (``""`` if none)."""
        with self._lock:
            if room not in client.rooms:
                return False
            self._leave(client, room)
            return True

    def change_wire(self, client: Client, wire: WireFormat) -> None:
        """Render room events for ``client`` with ``wire`` from now on: a
        protocol whose client asked for other output (IRC capabilities such
        as ``server-time``: a tagged IRC client is another format). It is
        moved to ``wire``'s feeds in every room it is in; what it had not
        had yet of the old ones goes first."""
        with self._lock:
            before = client.wire.variant(len(client.rooms))
            client.wire = wire
            after = wire.variant(len(client.rooms))
            if after is not before:
                self._rewire(client, before, after, client.rooms)

    def find(self, nick: str) -> Client | None:
        """The client with this nickname (ignoring case), or None."""
        return self._by_nick.get(nick.casefold())

    def members(self, room: str) -> tuple[Client, ...]:
        """The clients in ``room``: a snapshot, safe to iterate."""
        return self._rooms.get(room, ())

    def if_empty(self, room: str, action: Callable[[str], object]) -> bool:
        """Call ``action(room)`` if nobody is in ``room``, under the lock (so
        that nobody enters it meanwhile); True if it was called. ``action``
        must be quick and must not call the registry."""
        with self._lock:
            if room in self._rooms:
                return False
            action(room)
            return True

    def rooms(self) -> dict[str, int]:
        """Every room that has members, with its member count."""
        return {name: len(members) for name, members in list(self._rooms.items())}

    # All called with the lock held.

    def _enter(self, client: Client, room: str, hold: bool = False) -> None:
        before = client.wire.variant(len(client.rooms))
        client.rooms = (*client.rooms, room)
        client.room = room
        members = self._in_room.setdefault(room, {})
        members[client] = None
        self._rooms[room] = tuple(members)
        wire = client.wire.variant(len(client.rooms))
        if wire is not before:
            self._rewire(client, before, wire, client.rooms[:-1])
        self._attach(client, room, wire, hold)

    def _leave(self, client: Client, room: str) -> None:
        before = client.wire.variant(len(client.rooms))
        self._detach(client, room, before)
        client.rooms = tuple(name for name in client.rooms if name != room)
        if client.room == room:
            client.room = client.rooms[-1] if client.rooms else ""
        wire = client.wire.variant(len(client.rooms))
        if wire is not before:
            self._rewire(client, before, wire, client.rooms)
        self._drop_member(client, room)

    def _drop_member(self, client: Client, room: str) -> None:
        in_room = self._in_room.get(room, {})
        in_room.pop(client, None)
        members = tuple(in_room)
        if members:
            self._rooms[room] = members
        else:
            self._rooms.pop(room, None)
            self._in_room.pop(room, None)
            self.feeds.pop(room, None)

    def _rewire(self, client: Client, old: WireFormat, new: WireFormat, rooms: tuple[str, ...]) -> None:
        """Move ``client`` from ``old``'s feeds of ``rooms`` to ``new``'s."""
        for room in rooms:
            self._detach(client, room, old)
            self._attach(client, room, new)

    def _attach(self, client: Client, room: str, wire: WireFormat, hold: bool = False) -> None:
        feeds = self.feeds.get(room, ())
        feed = next((f for f in feeds if f.wire is wire), None)
        if feed is None:
            feed = RoomFeed(wire)
            # Readers may see the new members a moment before the new
            # feed: each is a consistent snapshot on its own.
            self.feeds[room] = (*feeds, feed)
        with feed.lock:
            feed.attach(client, hold)

    def _detach(self, client: Client, room: str, wire: WireFormat) -> None:
        feeds = self.feeds.get(room, ())
        for feed in feeds:
            if feed.wire is wire:
                with feed.lock:
                    pending = feed.detach(client)
                if pending and client.close_reason is None:  # what it had not had yet goes first
                    client.send_data(pending)
                if feed.empty():
                    self.feeds[room] = tuple(f for f in feeds if f is not feed)
                break
