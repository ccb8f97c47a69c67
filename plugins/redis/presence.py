"""The redis plugin's presence: who is on which server, the leaves of
servers gone, and the client threads' requests to the cluster."""

from __future__ import annotations

import collections
import itertools
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from chatcore.engine.backplane import Person
from chatcore.engine.history import private_line
from chatcore.events import Action, Chat, Joined, Left, NickChanged, PrivateMessage, PrivateTags, RoomEvent
from chatcore.names import room_problem
from chatcore.plugins.redis.codec import (
    FORMAT_VERSION,
    checked,
    decode_private,
    encode_moderation,
    encode_private,
    entry_event,
    entry_msgid,
)
from chatcore.plugins.redis.connection import close, shared_client
from chatcore.plugins.redis.roomstate import state_fields, state_from_fields
from chatcore.plugins.redis.scripts import CLAIM_LUA, ENTER_LUA, EXIT_LUA, RELEASE_LUA

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis as redis_py

    from chatcore import Client
    from chatcore.engine.rooms import RoomState
    from chatcore.plugins.redis.backplane import Cluster

log = logging.getLogger("chatcore.redis")

#: Seconds after which a server that stopped renewing its presence counts
#: as gone, and its users leave the rooms (--redis-node-timeout).
DEFAULT_NODE_TIMEOUT = 10.0
#: Private messages kept in a server's inbox stream.
INBOX_LENGTH = 1000
#: Operators' actions kept in the cluster's moderation stream: a server that
#: starts applies the bans and unbans among them.
MODERATION_LENGTH = 1000
#: Stream entries read at a time for a history replay.
HISTORY_PAGE = 200
#: Why the users of a server that stopped answering left.
GONE_REASON = "server lost"
#: Seconds the reap lock of a node is kept after its users were announced
#: gone: if the node was only slow, it finds the mark when it comes back,
#: and deletes it.
REAPED_MARK = 3600.0
#: Guest names tried for a returning user whose nickname was taken meanwhile.
GUEST_TRIES = 20

#: A node id, as :class:`Cluster` makes them (``secrets.token_hex(6)``).
_NODE_ID = re.compile(r"[0-9a-f]{12}")


class NotAnswering(Exception):
    """The server that holds a nickname stopped renewing its presence."""


class Presence(threading.Thread):
    """Who is on which server, cluster-wide, and the leaves of servers gone.

    The thread renews this server's presence every third of the node
    timeout, and at once after a join, leave or rename: its ``alive`` key
    (with the timeout as expiry), its members (rewritten whole, so a Redis
    that restarted empty is resynced within one renewal) and its nick claims.
    Then it looks for servers whose ``alive`` key expired: the first server
    to take the reap lock announces their users' leaves in every room
    (published here, so they travel like any leave) and clears their keys.

    Nick claims, ``/who``, ``/rooms`` and ``/msg`` to another server run on
    the asking client's thread, with the shared blocking pool.
    """

    def __init__(self, cluster: Cluster, node_timeout: float) -> None:
        super().__init__(name="chatcore-redis-presence", daemon=True)
        self.cluster = cluster
        self.node_timeout = node_timeout
        self.interval = node_timeout / 3
        self._wake = threading.Event()
        self.client: redis_py.Redis | None = None
        #: This server's clients at the last renewal: nick -> room.
        self.snapshot: dict[str, str] = {}
        #: Users of gone servers whose leaves this server announced.
        self.reaped = 0
        #: When the last renewal went through (time.monotonic()), or None.
        self.renewed: float | None = None
        #: Times this server came back after the cluster had timed it out.
        self.timeouts = 0
        #: This server's users announced gone by another server while they
        #: were here (it was only slow), to be announced again: (client,
        #: nick, room) as the leave named them.
        self._returning: list[tuple[Client, str, str]] = []
        self._returning_lock = threading.Lock()
        #: Renames of returning users whose nickname was taken meanwhile:
        #: (old, new). The other servers never knew the old one as this
        #: server's user, so they are told of a join, not of a rename.
        self._collided: set[tuple[str, str]] = set()
        #: The rooms this server holds in the cluster: room -> the
        #: generation of its entry (see ENTER_LUA).
        self.held: dict[str, str] = {}
        self._generations = itertools.count(1)
        self._held_lock = threading.Lock()
        #: Set when the link comes back: the renewal enters every room here
        #: again (what was entered during the outage, or lost by Redis).
        self.reenter = threading.Event()
        #: How many people are in each room on the other live servers, as
        #: the last renewal read it (every ``interval``): the welcome's count,
        #: which must not cost a round trip per arrival in a connect storm.
        self.elsewhere: dict[str, int] = {}
        #: The away messages of the people on the other live servers, by
        #: casefolded nick, read with :attr:`elsewhere`: IRC's 301 to every
        #: private message to one of them.
        self.away_elsewhere: dict[str, str] = {}
        #: Where each room's stream stood when this server read its state
        #: (ENTER_LUA): room -> entry id, for the reader's catch-up.
        self.entered_at: dict[str, str] = {}

    def open(self) -> None:
        cluster = self.cluster
        self.client = shared_client(cluster.target, timeout=cluster.timeout, name=f"chatcore-{cluster.node}-shared")
        self._claim = self.client.register_script(CLAIM_LUA)
        self._release = self.client.register_script(RELEASE_LUA)
        self._enter = self.client.register_script(ENTER_LUA)
        self._exit = self.client.register_script(EXIT_LUA)

    def changed(self) -> None:
        """Renew now (a join, leave or rename; or stopping)."""
        self._wake.set()

    def run(self) -> None:
        import redis as redis_py

        cluster = self.cluster
        while not cluster.stopping.is_set():
            self._wake.clear()
            try:
                self._renew()
                if self._rejoin():
                    self._renew()  # the reaper cleared this server's members
                if self.reenter.is_set():
                    self.reenter.clear()
                    self._enter_all()
                self._reap()
            except redis_py.RedisError as exc:
                log.debug("renewing presence failed: %s", exc)  # the reader tells the outage
            except Exception:
                log.exception("renewing presence failed")  # and again at the next renewal
            self._wake.wait(self.interval)

    def _renew(self) -> None:
        server = self.cluster.server
        assert server is not None
        assert self.client is not None
        keys, node = self.cluster.keys, self.cluster.node
        # Each nick's rooms, comma-separated (room names have no comma); "" for none.
        snapshot: dict[Any, Any] = {client.nick: ",".join(client.rooms) for client in server.registry}
        counts: dict[Any, Any] = collections.Counter(room for client in server.registry for room in client.rooms)
        away: dict[Any, Any] = {client.nick: client.away for client in server.registry if client.away}
        pipe = self.client.pipeline(transaction=True)
        # The old value (Redis >= 6.2) says whether the key expired meanwhile,
        # and the reap lock whether another server announced this one gone.
        pipe.set(keys.alive(node), "1", px=int(self.node_timeout * 1000), get=True)
        pipe.getdel(keys.reaping(node))
        pipe.sadd(keys.nodes(), node)
        pipe.delete(keys.members(node))
        pipe.delete(keys.member_counts(node))
        pipe.delete(keys.away(node))
        if snapshot:
            pipe.hset(keys.members(node), mapping=snapshot)
        if away:
            pipe.hset(keys.away(node), mapping=away)
        if counts:
            pipe.hset(keys.member_counts(node), mapping=counts)
            for nick in snapshot:  # back after Redis lost them (a restart)
                pipe.set(keys.nick(nick), node, nx=True)
        for nick in set(self.snapshot) - set(snapshot):  # given up while the link was down
            self._release(keys=[keys.nick(nick)], args=[node], client=pipe)
        was_alive, reaper = pipe.execute()[:2]
        self.cluster.exchanged()
        now = time.monotonic()
        if was_alive is None and self.renewed is not None:
            self._timed_out(now - self.renewed, reaper, len(snapshot))
        self.renewed = now
        self.snapshot = snapshot

    def _timed_out(self, silent: float, reaper: str | None, users: int) -> None:
        """This server's ``alive`` key had expired: it was paused, starved
        or cut off for ``silent`` seconds. If another server announced its
        users gone (``reaper``), the reader rejoins them as it reads those
        leaves (:meth:`returned`)."""
        if reaper is None:
            # Not announced gone (or Redis lost its keys): nothing to undo.
            log.info("this server's presence in the cluster had expired (no renewal for %.1f s); renewed", silent)
            return
        log.warning(
            "this server was timed out by the cluster for %.1f s (no presence renewal for %.1f s, "
            "--redis-node-timeout is %g s; paused, starved or cut off?); its %d users rejoin",
            max(silent - self.node_timeout, 0.0),
            silent,
            self.node_timeout,
            users,
        )
        self.timeouts += 1

    # -- coming back after a timeout ----------------------------------------

    def returned(self, left: Left) -> bool:
        """``left`` (read from the stream, said by another server) announces
        gone a user who is here, in that room: this server was only slow and
        another one timed it out. True if so; the user is then announced
        again (on this thread: :meth:`_rejoin`), and their own room is not
        told of a leave that did not happen. Called on the reader's thread."""
        assert self.cluster.server is not None
        client = self.cluster.server.registry.find(left.nick)
        if left.reason != GONE_REASON or client is None or left.room not in client.rooms:
            return False
        with self._returning_lock:
            self._returning.append((client, left.nick, left.room))
        self.changed()
        return True

    def _rejoin(self) -> bool:
        """Announce again the users :meth:`returned` found, each joining their
        room as after a healed netsplit; one whose nickname someone elsewhere
        took meanwhile gets a guest name. True if there were any."""
        with self._returning_lock:
            returning, self._returning = self._returning, []
        assert self.client is not None
        keys, node = self.cluster.keys, self.cluster.node
        for index, (client, nick, room) in enumerate(returning):
            if client.nick != nick or room not in client.rooms or client.close_reason is not None:
                continue  # renamed, parted or gone since: their own events told the others
            try:
                claimed = self._claim(keys=[keys.nick(nick)], args=[node, keys.prefix + "node:"])
            except Exception:
                with self._returning_lock:  # tried again at the next renewal
                    self._returning[:0] = returning[index:]
                raise
            if claimed:
                # To the others only: the members here never saw them leave.
                self.cluster.publisher.put(Joined(room, nick=nick, time=time.time()))
            else:
                self._rename_collided(client, nick)
        return bool(returning)

    def _rename_collided(self, client: Client, nick: str) -> None:
        """``nick`` was taken on another server while this one was timed out:
        the name's holder in Redis keeps it (the cluster gave it to them
        fairly, and the others know them by it), ours becomes a guest."""
        server = self.cluster.server
        assert server is not None
        for _ in range(GUEST_TRIES):
            guest = server.registry.guest_nick()
            self._collided.add((nick, guest))
            # Only if still called so: a /nick of its own meanwhile ended the collision.
            renamed = server.change_nick(client, guest, was=nick)
            self._collided.discard((nick, guest))
            if not renamed and client.nick != nick:
                return
            if renamed:
                log.warning(
                    "returning user %r: the nickname was taken on another server meanwhile; now %s", nick, guest
                )
                # change_nick() tells the others only; the client's own
                # rename is what an IRC client needs to follow it (NICK).
                client.send(NickChanged(client.room, nick=nick, new_nick=guest))
                client.notice(
                    f"while this server was cut off from the cluster, someone on another server took the "
                    f"nickname {nick}: you are now known as {guest} (/nick to choose another)"
                )
                return
        log.warning("returning user %r: the nickname was taken meanwhile and no guest name was free", nick)

    def relayed(self, event: RoomEvent) -> RoomEvent:
        """What the other servers are told of ``event``, said here: a
        returning user's rename after a nick collision is a join to them."""
        if isinstance(event, NickChanged) and (event.nick, event.new_nick) in self._collided:
            return Joined(event.room, nick=event.new_nick, time=event.time)
        return event

    def _reap(self) -> None:
        """Announce the users of the servers that stopped renewing gone, and
        count the people in each room on those that live (:attr:`elsewhere`)
        and note who is away there (:attr:`away_elsewhere`)."""
        assert self.client is not None
        cluster = self.cluster
        keys = cluster.keys
        others = self._other_nodes()
        pipe = self.client.pipeline(transaction=False)
        for node in others:
            pipe.exists(keys.alive(node))
            pipe.hgetall(keys.member_counts(node))
            pipe.hgetall(keys.away(node))
        replies = pipe.execute() if others else []
        gone = []
        elsewhere: collections.Counter[str] = collections.Counter()
        away_elsewhere: dict[str, str] = {}
        for node, alive, counts, away in zip(others, replies[::3], replies[1::3], replies[2::3], strict=True):
            if not alive:
                gone.append(node)
                continue
            away_elsewhere.update((nick.casefold(), message) for nick, message in self._valid_away(node, away).items())
            for room, count in counts.items():
                if isinstance(room, str) and not room_problem(room) and str(count).isascii() and str(count).isdigit():
                    elsewhere[room] += int(count)
                else:
                    cluster.invalid.drop(f"a room count of node {node}", "not a room's name and a number")
        self.elsewhere = dict(elsewhere)
        self.away_elsewhere = away_elsewhere
        for node in gone:
            if self.client.set(keys.reaping(node), cluster.node, nx=True, px=int(self.node_timeout * 3000)):
                self._announce_gone(node)

    def _announce_gone(self, node: str) -> None:
        assert self.client is not None
        assert self.cluster.server is not None
        keys = self.cluster.keys
        members = self._valid_members(node, self.client.hgetall(keys.members(node)))
        log.warning("node %s stopped answering; its %d users leave the rooms", node, len(members))
        # Its keys are cleared before the leaves go out: a node that was only
        # slow rejoins its users when it reads these leaves, and what it
        # claims then must not be cleared after it.
        pipe = self.client.pipeline(transaction=False)
        for nick in members:
            self._release(keys=[keys.nick(nick)], args=[node], client=pipe)
        pipe.delete(keys.members(node), keys.member_counts(node), keys.away(node), keys.inbox(node))
        pipe.srem(keys.nodes(), node)
        self._let_go_of_rooms(node, pipe)  # their state goes with the last server holding them
        # The lock stays, for longer, as the mark that tells the node, should
        # it come back, that it was timed out (it deletes it then).
        pipe.pexpire(keys.reaping(node), int(REAPED_MARK * 1000))
        pipe.execute()
        for nick, rooms in members.items():
            for index, room in enumerate(rooms):  # a member of several of them hears it once
                self.cluster.server.publish(Left(room, nick=nick, reason=GONE_REASON, told_in=rooms[:index]))
        self.reaped += len(members)

    def _other_nodes(self) -> list[str]:
        assert self.client is not None
        nodes = []
        for node in map(str, self.client.smembers(self.cluster.keys.nodes())):
            if not _NODE_ID.fullmatch(node):
                # Node ids go into key names and the log: only ours are read.
                self.cluster.invalid.drop("a node id", "not one a server makes")
            elif node != self.cluster.node:
                nodes.append(node)
        return nodes

    def _valid_members(self, node: str, members: dict[Any, Any]) -> dict[str, tuple[str, ...]]:
        """``node``'s members (nick -> their rooms), but those whose nick or a
        room is not a valid name (they would reach /who and IRC's NAMES), counted."""
        valid: dict[str, tuple[str, ...]] = {}
        for nick, joined in members.items():
            rooms = tuple(joined.split(",")) if isinstance(joined, str) and joined else ()
            if (
                isinstance(nick, str)
                and isinstance(joined, str)
                and not room_problem(nick)
                and not any(map(room_problem, rooms))
            ):
                valid[nick] = rooms
            else:
                self.cluster.invalid.drop(f"a member of node {node}", "a nick or room that is not a valid name")
        return valid

    def _valid_away(self, node: str, away: dict[Any, Any]) -> dict[str, str]:
        """``node``'s away messages (nick -> message), checked as an entry's
        text is (:func:`checked`: they reach WHO and WHOIS); those that fail, counted."""
        server = self.cluster.server
        assert server is not None
        valid: dict[str, str] = {}
        for nick, message in away.items():
            try:
                valid[nick] = checked({"away": str}, {"away": message}, server.max_line)["away"]
            except ValueError as exc:
                self.cluster.invalid.drop(f"an away message of node {node}", exc)
        return valid

    # -- room state ---------------------------------------------------------

    def enter(self, founded: RoomState) -> RoomState:
        """The first member here enters ``founded.name``: the room's state
        in the cluster, or ``founded`` (then the cluster's) if it is new.
        During an outage the room is this server's alone until the link is
        back (:meth:`_enter_all`). On the entering client's thread."""
        import redis as redis_py

        assert self.client is not None
        cluster = self.cluster
        room = founded.name
        if not cluster.linked:
            return founded
        with self._held_lock:
            generation = str(next(self._generations))
            self.held[room] = generation
        keys = cluster.keys
        fields = [item for pair in state_fields(founded).items() for item in pair]
        try:
            found, top_id = self._enter(
                keys=[keys.room_state(room), keys.room_holders(room), keys.node_rooms(cluster.node), keys.stream(room)],
                args=[cluster.node, generation, room, *fields],
            )
        except redis_py.RedisError as exc:
            log.info("could not read room %s's state from the cluster (%s); entered as new here", room, exc)
            self.reenter.set()
            return founded
        with self._held_lock:
            self.entered_at[room] = str(top_id)
        if not found:
            return founded
        pairs = dict(zip(found[::2], found[1::2], strict=True))
        return state_from_fields(room, pairs, lambda field: cluster.invalid.drop(f"room {room} state", field))

    def entered_where(self, room: str) -> str | None:
        """Where ``room``'s stream stood when its state was read here (once:
        the reader's catch-up takes it), or None."""
        with self._held_lock:
            return self.entered_at.pop(room, None)

    def exit(self, room: str) -> None:
        """Nobody here is in ``room`` any more: let go of it in the cluster,
        in order after the events said in it (on the publisher's thread)."""
        with self._held_lock:
            generation = self.held.pop(room, None)
        if generation is not None:
            self.cluster.publisher.put_exit(room, generation)

    def _let_go_of_rooms(self, node: str, pipe: Any) -> None:
        """Queue on ``pipe`` ``node``'s exit from every room it holds (it stops, or is gone)."""
        assert self.client is not None
        keys = self.cluster.keys
        for room in map(str, self.client.smembers(keys.node_rooms(node))):
            if not room_problem(room):
                self._exit(
                    keys=[keys.room_state(room), keys.room_holders(room), keys.node_rooms(node)],
                    args=[node, "*", room],
                    client=pipe,
                )
        pipe.delete(keys.node_rooms(node))

    def _enter_all(self) -> None:
        """Enter every room that has members here again, with the state here
        for a room Redis does not have (it restarted empty, or the room was
        entered during an outage); a room it has keeps the cluster's."""
        server = self.cluster.server
        assert server is not None
        assert self.client is not None
        keys, node = self.cluster.keys, self.cluster.node
        pipe = self.client.pipeline(transaction=False)
        for room in server.registry.rooms():
            state = server.rooms.get(room)
            if state is None:
                continue
            with self._held_lock:
                generation = self.held[room] = str(next(self._generations))
            fields = [item for pair in state_fields(state).items() for item in pair]
            self._enter(
                keys=[keys.room_state(room), keys.room_holders(room), keys.node_rooms(node), keys.stream(room)],
                args=[node, generation, room, *fields],
                client=pipe,
            )
        pipe.execute()

    def leave(self) -> None:
        """Say goodbye (a clean stop): the leaves went out already; clear the keys."""
        import redis as redis_py

        if self.client is None:
            return
        keys, node = self.cluster.keys, self.cluster.node
        try:
            pipe = self.client.pipeline(transaction=False)
            for nick in self.snapshot:
                self._release(keys=[keys.nick(nick)], args=[node], client=pipe)
            self._let_go_of_rooms(node, pipe)  # done with the last leaves, unless the flush timed out
            pipe.delete(keys.alive(node), keys.members(node), keys.away(node), keys.inbox(node))
            pipe.srem(keys.nodes(), node)
            pipe.execute()
        except redis_py.RedisError as exc:
            log.warning("could not leave the cluster cleanly (%s); the others will time this server out", exc)
        close(self.client)

    # -- on client threads ------------------------------------------------

    def claim(self, nick: str) -> str | None:
        """None if this server may use ``nick``, or why not."""
        import redis as redis_py

        assert self.client is not None
        cluster = self.cluster
        if not cluster.linked:
            return None  # unique per server during an outage (docs/scaling.md)
        try:
            claimed = self._claim(keys=[cluster.keys.nick(nick)], args=[cluster.node, cluster.keys.prefix + "node:"])
        except redis_py.RedisError as exc:
            # During an outage names are unique per server only; the renewal
            # claims them when Redis is back (docs/scaling.md).
            log.info("could not claim nick %r in the cluster (%s); allowed here", nick, exc)
            return None
        return None if claimed else "taken on another server"

    def release(self, nick: str) -> None:
        import redis as redis_py

        assert self.client is not None
        if not self.cluster.linked:
            self.changed()  # the renewal gives it up when the link is back
            return
        try:
            self._release(keys=[self.cluster.keys.nick(nick)], args=[self.cluster.node])
        except redis_py.RedisError as exc:
            log.info("could not release nick %r in the cluster (%s)", nick, exc)
        self.changed()

    def members(self) -> dict[str, list[str]] | None:
        """Members of the other live servers, by room (None if Redis cannot say)."""
        people = self.people()
        if people is None:
            return None
        rooms: dict[str, list[str]] = {}
        for nick, person in people.items():
            for room in person.rooms:
                rooms.setdefault(room, []).append(nick)
        return rooms

    def people(self) -> dict[str, Person] | None:
        """The people on the other live servers, by nick, with their rooms
        and away messages (None if Redis cannot say)."""
        import redis as redis_py

        assert self.client is not None
        keys = self.cluster.keys
        if not self.cluster.linked:
            return None
        try:
            others = self._other_nodes()
            pipe = self.client.pipeline(transaction=False)
            for node in others:
                pipe.exists(keys.alive(node))
                pipe.hgetall(keys.members(node))
                pipe.hgetall(keys.away(node))
            replies = pipe.execute()
        except redis_py.RedisError as exc:
            log.info("could not ask the cluster who is where (%s)", exc)
            return None
        people: dict[str, Person] = {}
        for node, alive, members, away in zip(others, replies[::3], replies[1::3], replies[2::3], strict=True):
            if alive:
                messages = self._valid_away(node, away)
                for nick, joined in self._valid_members(node, members).items():
                    people[nick] = Person(joined, messages.get(nick, ""))
        return people

    def history(self, room: str, limit: int) -> list[RoomEvent] | None:
        """The room's last ``limit`` chat and action events in its stream,
        oldest first, with the time they were said and the message ID their
        server gave them (:attr:`RoomEvent.origin`), but no epoch and offset
        (``""``, 0: the stream's numbering is the cluster's, not what users
        see); None if Redis cannot say."""
        assert self.cluster.server is not None
        max_line = self.cluster.server.max_line

        def line(entry: dict[str, Any]) -> RoomEvent | None:
            _, _, event = entry_event(entry, max_line)
            # With its time and message ID, but not the stream's epoch and
            # offset: users see each server's own numbering
            # (docs/scaling.md), and a page that saw a stream's epoch beside
            # its server's thought the server had restarted.
            return event if isinstance(event, (Chat, Action)) and event.room == room else None

        return self._newest(self.cluster.keys.stream(room), limit, line, f"room {room}")

    def private_history(self, key: str, limit: int) -> list[RoomEvent] | None:
        """The last ``limit`` lines kept in the private conversation
        ``key`` (``Backplane.keep_private``), oldest first, as the history
        plugin keeps them (:func:`~chatcore.engine.history.private_line`:
        with their time and message ID); None if Redis cannot say."""
        assert self.cluster.server is not None
        max_line = self.cluster.server.max_line
        seen: set[str] = set()

        def line(entry: dict[str, Any]) -> RoomEvent | None:
            if entry.get("v") != FORMAT_VERSION:
                raise ValueError(f"format version {entry.get('v')!r:.20}")
            message = decode_private(entry["event"], max_line, entry_msgid(entry))
            if not isinstance(message, PrivateMessage):
                raise ValueError("not a private line")
            if message.msgid in seen:
                return None  # kept twice: a retry whose first reply the link lost
            seen.add(message.msgid)
            return private_line(key, message)

        return self._newest(self.cluster.keys.conversation(key), limit, line, f"conversation {key}")

    def _newest(
        self, stream: str, limit: int, line: Callable[[dict[str, Any]], RoomEvent | None], what: str
    ) -> list[RoomEvent] | None:
        """The last ``limit`` lines of ``stream`` (``line`` makes each
        entry's, or None to pass it over), oldest first; read newest first,
        a page at a time, until enough or the start. An entry ``line``
        cannot read (KeyError, ValueError) is dropped and counted. None if
        Redis cannot say."""
        import redis as redis_py

        assert self.client is not None
        if not self.cluster.linked:
            return None
        found: list[RoomEvent] = []
        newest = "+"
        try:
            while len(found) < limit:
                page: list[Any] = self.client.xrevrange(stream, max=newest, count=HISTORY_PAGE) or []
                for entry_id, entry in page:
                    try:
                        event = line(entry)
                    except (KeyError, ValueError) as exc:
                        self.cluster.invalid.drop(f"{what} entry {entry_id}", exc)
                        continue
                    if event is not None:
                        found.append(event)
                if len(page) < HISTORY_PAGE:
                    break
                newest = "(" + str(page[-1][0])
        except redis_py.RedisError as exc:
            log.info("could not read %s's history from the cluster (%s)", what, exc)
            return None
        return found[:limit][::-1]

    def conversations(self, account: str, start: float, end: float) -> list[tuple[str, float]] | None:
        """The conversations of ``account`` whose latest kept line was said
        at or after ``start`` and before ``end``, with that time; None if
        Redis cannot say."""
        import redis as redis_py

        assert self.client is not None
        if not self.cluster.linked:
            return None
        try:
            found: list[Any] = self.client.zrangebyscore(
                self.cluster.keys.conversations(account), start, f"({end!r}", withscores=True
            )
        except redis_py.RedisError as exc:
            log.info("could not list %s's private conversations in the cluster (%s)", account, exc)
            return None
        return [(str(name), float(score)) for name, score in found]

    def _holder(self, nick: str) -> str | None:
        """The other server that holds ``nick`` (its node id), or None if none
        does (or this one does). ``NotAnswering`` if it stopped renewing."""
        assert self.client is not None
        keys = self.cluster.keys
        found = self.client.get(keys.nick(nick))
        owner = None if found is None else str(found)
        if owner is None or owner == self.cluster.node:
            return None
        if not self.client.exists(keys.alive(owner)):
            raise NotAnswering(f"{nick}'s server is not answering; try again later")
        return owner

    def moderate(self, action: str, details: dict[str, Any]) -> bool | str | None:
        """Send an operator's action to every server (see :func:`moderate`);
        a kick or mute of a nick not here only if another server holds it."""
        import redis as redis_py

        assert self.client is not None
        cluster = self.cluster
        nick = details.get("nick")
        down = "the cluster link is down: not sent to the other servers; try again later"
        if not cluster.linked:
            return down
        try:
            # A user not here (no address known): sent only if another server has them.
            if nick is not None and "host" not in details and self._holder(nick) is None:
                return None
            if action == "invite" and details.get("passes"):
                # For the invited's server, should it enter the room later.
                room = details["room"]
                if self.client.exists(cluster.keys.room_holders(room)):
                    self.client.hset(cluster.keys.room_state(room), f"i:{details['nick'].casefold()}", "1")
            # Only once the events said here before it are in Redis: else the
            # other server could carry out a kick and put the leave in the
            # room's stream before the operator's own Joined, where this
            # server's reader starts, and the operator never heard its kick.
            cluster.publisher.flush(cluster.timeout)
            self.client.xadd(
                cluster.keys.moderation(),
                {"v": FORMAT_VERSION, "node": cluster.node, "event": encode_moderation(action, details)},
                maxlen=MODERATION_LENGTH,
                approximate=True,
            )
        except NotAnswering as exc:
            return str(exc)
        except redis_py.RedisError as exc:
            log.info("could not send an operator's %s through the cluster (%s)", action, exc)
            return down
        return True

    def send_private(self, message: PrivateMessage | PrivateTags) -> bool | str | None:
        """Deliver ``message`` (or tags without text) to the server its recipient is on."""
        import redis as redis_py

        assert self.client is not None
        keys, cluster = self.cluster.keys, self.cluster
        if not cluster.linked:
            return f"the cluster link is down: your message to {message.recipient} was not sent; try again later"
        try:
            owner = self._holder(message.recipient)
            if owner is None:
                return None
        except NotAnswering as exc:
            return str(exc)
        except redis_py.RedisError as exc:
            log.info("could not send a private message through the cluster (%s)", exc)
            return f"the cluster link is down: your message to {message.recipient} was not sent; try again later"
        try:
            # Not retried, so never sent twice; a failure is told to the sender.
            self.client.xadd(
                keys.inbox(owner),
                {"v": FORMAT_VERSION, "node": cluster.node, "id": message.msgid, "event": encode_private(message)},
                maxlen=INBOX_LENGTH,
                approximate=True,
            )
        except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
            # Sent, but the link dropped before the reply: Redis may have it.
            log.info("the link dropped while sending a private message through the cluster (%s)", exc)
            return f"the cluster link dropped: your message to {message.recipient} may not have arrived"
        except redis_py.RedisError as exc:
            log.info("Redis refused a private message (%s)", exc)
            return f"the cluster refused your message to {message.recipient}; it was not sent"
        return True
