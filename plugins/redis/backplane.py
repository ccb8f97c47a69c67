"""The redis plugin's backplane (what the engine calls) and the
:class:`Cluster`: this server's membership, its link state and its threads."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chatcore import Client
from chatcore.engine.backplane import Backplane, Person
from chatcore.engine.history import CONVERSATION, GUEST
from chatcore.events import AwayChanged, PrivateMessage, PrivateTags, RoomEvent, RoomNotice
from chatcore.plugins.redis.arrivals import Arrivals
from chatcore.plugins.redis.connection import DEFAULT_TIMEOUT, Target
from chatcore.plugins.redis.presence import DEFAULT_NODE_TIMEOUT, Presence
from chatcore.plugins.redis.publisher import Publisher
from chatcore.plugins.redis.reader import DEFAULT_CHECK_INTERVAL, Reader
from chatcore.plugins.redis.scripts import Keys

if TYPE_CHECKING:
    from chatcore.engine.rooms import RoomState
    from chatcore.engine.server import ChatServer
    from chatcore.engine.store import Store

log = logging.getLogger("chatcore.redis")

#: Seconds between two log lines about invalid entries from the cluster.
INVALID_LOG_INTERVAL = 60.0

LINK_DOWN_NOTICE = "the cluster link is down: you reach only the people on this server until it is back"
LINK_BACK_NOTICE = "the cluster link is back"


class RedisBackplane(Backplane):
    """The cluster as the engine sees it (:mod:`chatcore.engine.backplane`):
    events said here go to the room's stream, history and presence come
    from Redis. Rooms keep the local numbering (docs/scaling.md, "The
    numbering users see")."""

    name = "redis"

    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self.cluster = cluster

    def start(self, server: ChatServer) -> None:
        super().start(server)
        self.cluster.start(server)

    def stop(self) -> None:
        self.cluster.stop()

    def enter_room(self, room: str, founded: RoomState) -> RoomState:
        return self.cluster.presence.enter(founded)

    def room_emptied(self, room: str) -> None:
        super().room_emptied(room)
        self.cluster.presence.exit(room)

    def state_store(self) -> Store:
        from chatcore.plugins.redis.store import RedisStore

        cluster = self.cluster
        return RedisStore(cluster.url, cluster.keys, timeout=cluster.timeout, node=cluster.node)

    def published(self, events: Sequence[RoomEvent]) -> None:
        cluster = self.cluster
        for event in events:
            cluster.publisher.put(cluster.presence.relayed(event))
        if any(isinstance(event, AwayChanged) for event in events):
            cluster.presence.changed()  # the other servers' WHO and WHOIS read it from the presence

    def history(self, room: str, limit: int) -> list[RoomEvent] | None:
        if room.startswith(CONVERSATION):
            return self.cluster.presence.private_history(room, limit)
        return self.cluster.presence.history(room, limit)

    def keep_private(self, key: str, event: PrivateMessage, lines: int) -> None:
        if event.msgid:
            # The two accounts, as the conversation's name holds them (one
            # alone, twice, with a guest).
            one, _, other = key.removeprefix(CONVERSATION).partition(",")
            self.cluster.publisher.put_private(key, event, (one, one if other.startswith(GUEST) else other), lines)

    def conversations(self, account: str, start: float, end: float) -> list[tuple[str, float]] | None:
        return self.cluster.presence.conversations(account, start, end)

    @property
    def shared(self) -> bool:
        return True

    def claim_nick(self, client: Client, nick: str) -> str | None:
        return self.cluster.presence.claim(nick)

    def release_nick(self, client: Client, nick: str) -> None:
        holder = client.server.registry.find(nick)
        if holder is None or holder is client:
            self.cluster.presence.release(nick)

    def members(self) -> dict[str, list[str]]:
        return self.cluster.presence.members() or {}

    def people(self) -> dict[str, Person]:
        return self.cluster.presence.people() or {}

    def count_elsewhere(self, room: str) -> int:
        return self.cluster.presence.elsewhere.get(room, 0)

    def away_elsewhere(self, nick: str) -> str:
        return self.cluster.presence.away_elsewhere.get(nick.casefold(), "")

    def send_private(self, sender: Client, message: PrivateMessage | PrivateTags) -> bool | str | None:
        return self.cluster.presence.send_private(message)

    def moderate(self, action: str, details: dict[str, Any]) -> bool | str | None:
        return self.cluster.presence.moderate(action, details)

    def problems(self) -> list[str]:
        return self.cluster.problems()


class Invalid:
    """What came from the cluster and was dropped as invalid (a room entry,
    an inbox entry, another server's member list): counted in :attr:`count`
    (``chatcore_redis_invalid_entries_total`` with the metrics plugin) and
    logged, at most once per :data:`INVALID_LOG_INTERVAL`, so that a flood
    of bad entries does not flood the log too. Called on any thread."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._unlogged = 0
        self._next_log = 0.0

    def drop(self, what: str, why: object) -> None:
        """Count ``what`` (``room lobby entry 1-0``), dropped because ``why``."""
        with self._lock:
            self.count += 1
            self._unlogged += 1
            now = time.monotonic()
            if now < self._next_log:
                return
            self._next_log = now + INVALID_LOG_INTERVAL
            count, self._unlogged = self._unlogged, 0
        more = f" ({count - 1} more since the last report)" if count > 1 else ""
        log.error("dropped %s from the cluster: %s%s", what, why, more)


class Cluster:
    """This server's membership in a cluster: its node id, the link state,
    the publisher and the reader.

    :ivar node: this server's id in the cluster, new at every start.
    :ivar gaps: times members were told that events were lost.
    :ivar lost: events known lost (0 counted when the number is unknown).
    :ivar invalid: what came from the cluster and was dropped as invalid.
    """

    def __init__(
        self,
        target: str | Target,
        name: str,
        *,
        stream_length: int,
        max_pending: int,
        timeout: float = DEFAULT_TIMEOUT,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        node_timeout: float = DEFAULT_NODE_TIMEOUT,
        min_replicas: int = 0,
    ) -> None:
        #: Where the primary is (the URL, or the Sentinels that know it).
        self.target = target if isinstance(target, Target) else Target(target)
        self.url = self.target.url
        self.timeout = timeout
        self.name = name
        self.keys = Keys(name)
        self.stream_length = stream_length
        #: Replicas that must have an event before it counts as shared (--redis-min-replicas).
        self.min_replicas = min_replicas
        self.node = secrets.token_hex(6)
        self.server: ChatServer | None = None
        self.stopping = threading.Event()
        # A client's Joined follows its entry into the room after a nick
        # claim in Redis, which may wait for a pooled connection and then for
        # the reply: up to twice the timeout.
        self.arrivals = Arrivals(grace=3 * timeout)
        self.publisher = Publisher(self, max_pending)
        self.reader = Reader(self, check_interval)
        self.presence = Presence(self, node_timeout)
        self.gaps = 0
        self.lost = 0
        self.invalid = Invalid()
        self._link_lock = threading.Lock()
        self._link_up = True
        #: Why the link is down, and since when (``time.time()``), while it is.
        self._down_reason = ""
        self._down_since = 0.0
        #: When Redis last answered this server's reader, publisher or
        #: presence thread (``time.time()``), or None before its first answer.
        #: The reader asks at least every quarter second, so on a working
        #: link this is never older than that (and --redis-timeout).
        self.last_exchange: float | None = None

    def start(self, server: ChatServer) -> None:
        self.server = server
        log.info("cluster %r on %s as node %s", self.name, self.target, self.node)
        self.presence.open()
        self.publisher.start()
        self.reader.start()
        self.presence.start()

    def stop(self) -> None:
        if not self.publisher.flush(timeout=1.0):
            # The goodbyes (the leaves) among them: the others time this
            # server's users out instead.
            log.warning("stopping with %d events Redis did not take; not shared", self.publisher.waiting())
        self.stopping.set()
        self.publisher.wake()
        self.presence.changed()
        self.publisher.join(self.timeout + 1)
        self.reader.join(self.timeout + 1)
        self.presence.join(self.timeout + 1)
        self.presence.leave()
        self.target.close()

    # -- the link, as users see it -------------------------------------------

    def exchanged(self) -> None:
        """Redis answered one of this server's threads."""
        self.last_exchange = time.time()

    def link_down(self, why: str) -> None:
        """Redis is unreachable: log it and tell everyone, once per outage."""
        with self._link_lock:
            if not self._link_up:
                return
            self._link_up = False
            self._down_reason = why
            self._down_since = time.time()
        log.warning(
            "cluster link down (%s); local chat goes on, reconnecting",
            why,
            extra={"event": "cluster_link_down", "reason": why, "cluster": self.name},
        )
        self._tell_everyone(LINK_DOWN_NOTICE)

    @property
    def linked(self) -> bool:
        """False while an outage is known: requests on client threads then
        answer at once instead of waiting for --redis-timeout."""
        return self._link_up

    def link_up(self) -> None:
        """Redis is back and the reader has caught up."""
        with self._link_lock:
            if self._link_up:
                return
            self._link_up = True
        log.warning("cluster link back", extra={"event": "cluster_link_up", "cluster": self.name})
        self.presence.reenter.set()
        self.presence.changed()
        self._tell_everyone(LINK_BACK_NOTICE)

    @property
    def up(self) -> bool:
        """True while the link works: Redis has answered since the start,
        and no outage is known (``chatcore_redis_link_up``)."""
        return self._link_up and self.last_exchange is not None

    def problems(self) -> list[str]:
        """Why the cluster does not work now, for ``/readyz``; none if it does."""
        with self._link_lock:
            up, why, since = self._link_up, self._down_reason, self._down_since
        if not up:
            return [f"the cluster link to Redis is down ({why}) for {max(time.time() - since, 0):.0f} s; reconnecting"]
        if self.last_exchange is None:
            return [f"not linked to the cluster yet: Redis at {self.target} has not answered since the start"]
        # Reading works, writing does not (a failover left the link on a
        # replica, a full memory ...): this server's users are not heard.
        publisher = self.publisher
        failing_since = publisher.failing_since
        if failing_since is not None:
            return [
                f"publishing to Redis fails ({publisher.failure}) for {max(time.time() - failing_since, 0):.0f} s; "
                f"{publisher.waiting()} events wait"
            ]
        return []

    def _tell_everyone(self, text: str) -> None:
        if self.server is None or self.stopping.is_set():
            return
        for client in self.server.registry:
            client.notice(text)

    def gap(self, room: str, lost: int | None, why: str) -> None:
        """Tell ``room``'s members here that events from other servers were lost."""
        self.gaps += 1
        self.lost += lost or 0
        count = f"{lost} messages" if lost else "messages"
        log.warning("room %s: %s from other servers lost (%s)", room, count, why)
        if self.server is not None:
            text = f"{count} from other servers may be missing here ({why})"
            self.server.publish(RoomNotice(room, text=text), relay=False)
