"""Scale-out: several chatcore servers share their rooms through Redis.

``chatcore serve --plugins redis --redis-url redis://127.0.0.1:6379/0``

Each room is a Redis Stream. A server appends what its own clients say to
the streams (one background thread, pipelined, deduplicated), and reads the
streams of the rooms its clients are in (another thread, blocking
``XREAD`` from a cursor it keeps), publishing what the other servers said to
its local members. Because a reader resumes from its cursor, a server whose
link to Redis dropped delivers, in order, what the others published
meanwhile; where that cannot be done (Redis lost the room's history, or the
stream was trimmed past the cursor) the room's members are told with a
notice and the loss is counted and logged. docs/scaling.md explains the
design and why.

Threads: the hooks run on client threads and only put events on the
publisher's queue, so a slow or absent Redis never slows local delivery.
The publisher and the reader each own one Redis connection, used by that
thread only (redis-py's connections, pipelines and PubSub objects are not
to be shared between threads).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatcore import Config, UsageError, events, hookimpl
from chatcore.config import secret, whole_number
from chatcore.events import RoomEvent, RoomNotice

if TYPE_CHECKING:
    import redis as redis_py

    from chatcore.engine.server import ChatServer

log = logging.getLogger("chatcore.redis")

NAME = "redis"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CLUSTER = "default"
#: Entries kept per room stream (approximately: MAXLEN ~); a server whose
#: link is down longer than it takes the others to say this much loses the
#: rest, and its members are told.
DEFAULT_STREAM_LENGTH = 10000
#: Events waiting for Redis while it is unreachable, at most; beyond this
#: the oldest are given up (counted, logged).
DEFAULT_MAX_PENDING = 100000
#: Events sent in one pipeline, at most.
BATCH = 500
#: How long one blocking XREAD waits, in milliseconds. It bounds how soon a
#: room newly entered is read and how long stopping takes; arriving entries
#: end the wait at once, so it does not add latency.
BLOCK_MS = 250
#: How long a Redis command may take before the link counts as down
#: (--redis-timeout): what bounds how long a half-open link goes unnoticed.
#: The reader's socket timeout is this plus its blocking wait, so blocking
#: reads never hit it (redis-py 8's default socket timeout of 5 s would break
#: blocking reads longer than that).
DEFAULT_TIMEOUT = 3.0
#: Reconnection backoff: from the first to the last value, doubling.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
#: Seconds between checks that each cursor is still where the stream is.
DEFAULT_CHECK_INTERVAL = 5.0

#: The version of the stream entries' format (docs/scaling.md).
FORMAT_VERSION = "1"

LINK_DOWN_NOTICE = "the cluster link is down: you reach only the people on this server until it is back"
LINK_BACK_NOTICE = "the cluster link is back"

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# ---------------------------------------------------------------------------
# The entry format: one room event as JSON
# ---------------------------------------------------------------------------

#: Room event types by name: what may travel between servers.
_ROOM_EVENTS: dict[str, type[RoomEvent]] = {
    name: cls
    for name in events.__all__
    if isinstance(cls := getattr(events, name), type) and issubclass(cls, RoomEvent) and cls is not RoomEvent
}
#: Identity fields: the cluster gives its own (the stream's epoch and offset).
_IDENTITY = frozenset({"offset", "epoch", "time"})


def encode_event(event: RoomEvent) -> str:
    """``event`` as the JSON of a stream entry's ``event`` field:
    ``{"type": "Chat", "room": "lobby", "nick": "alice", "text": "hi", "time": 1.5}``."""
    record: dict[str, Any] = {"type": type(event).__name__, "time": event.time}
    for item in dataclasses.fields(event):
        if item.name not in _IDENTITY:
            record[item.name] = getattr(event, item.name)
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def decode_event(text: str) -> RoomEvent:
    """The event :func:`encode_event` wrote; ValueError if it is not one
    (a newer server's event type, or damage)."""
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    cls = _ROOM_EVENTS.get(record.pop("type", None))
    if cls is None:
        raise ValueError("unknown event type")
    record.pop("time", None)
    names = {item.name for item in dataclasses.fields(cls)} - _IDENTITY
    if set(record) - names:
        raise ValueError(f"unknown fields {sorted(set(record) - names)}")
    try:
        return cls(**record)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "redis plugin",
        "Shares rooms with the other chatcore servers that use the same Redis and cluster name (see docs/scaling.md).",
    )
    secret(
        group.add_argument(
            "--redis-url",
            default=DEFAULT_URL,
            metavar="URL",
            help=(
                "the Redis to use, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss:// for TLS; "
                "give a password through CHATCORE_REDIS_URL or the config file, not the command line, "
                "where ps shows it (default: %(default)s)"
            ),
        )
    )
    group.add_argument(
        "--redis-cluster",
        default=DEFAULT_CLUSTER,
        metavar="NAME",
        help=(
            "the cluster's name: servers with the same name share rooms; "
            "clusters with different names can share one Redis (default: %(default)s)"
        ),
    )
    group.add_argument(
        "--redis-stream-length",
        type=whole_number(100),
        default=DEFAULT_STREAM_LENGTH,
        metavar="N",
        help=("events kept per room in Redis, for servers catching up after a link drop (default: %(default)s)"),
    )
    group.add_argument(
        "--redis-timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=(
            "how long Redis may take to answer before the link counts as down and is made again; "
            "bounds how long a silently broken link goes unnoticed (default: %(default)s)"
        ),
    )
    group.add_argument(
        "--redis-check-interval",
        type=positive_seconds,
        default=DEFAULT_CHECK_INTERVAL,
        metavar="SECONDS",
        help=(
            "how often this server checks that Redis still has the history it is reading "
            "(a flush or a failover to a copy that lacks it is told to members as a gap) "
            "(default: %(default)s)"
        ),
    )
    group.add_argument(
        "--redis-max-pending",
        type=whole_number(1),
        default=DEFAULT_MAX_PENDING,
        metavar="N",
        help="events kept for Redis while it is unreachable; the oldest beyond are given up (default: %(default)s)",
    )


def positive_seconds(text: str) -> float:
    """An argparse ``type``: a number of seconds from 0.1 to 60."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError(f"{value} is out of range (must be from 0.1 to 60)")
    return value


positive_seconds.__name__ = "seconds"  # argparse names the type in its messages


@hookimpl
def chatcore_configure(config: Config) -> None:
    options = config.options
    url = urllib.parse.urlsplit(options.redis_url)
    if url.scheme not in ("redis", "rediss", "unix"):
        raise UsageError(
            f"--redis-url: {redacted(options.redis_url)!r} is not a Redis URL; "
            "use redis://HOST:PORT/DB (or rediss:// for TLS)"
        )
    if not _CLUSTER_NAME.fullmatch(options.redis_cluster):
        raise UsageError(
            f"--redis-cluster: {options.redis_cluster!r} is not a valid name; "
            "use 1 to 64 letters, digits, '_', '-' or '.'"
        )
    config.data[NAME] = Cluster(
        options.redis_url,
        options.redis_cluster,
        stream_length=options.redis_stream_length,
        max_pending=options.redis_max_pending,
        timeout=options.redis_timeout,
        check_interval=options.redis_check_interval,
    )


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    _cluster(server).start(server)


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    _cluster(server).stop()


@hookimpl
def chatcore_room_event(server: ChatServer, event: RoomEvent) -> None:
    # Only events said here (remote ones are published with relay=False).
    _cluster(server).publisher.put(event)


def _cluster(server: ChatServer) -> Cluster:
    cluster: Cluster = server.config.data[NAME]
    return cluster


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    # Defends against leaking the Redis password into logs or error output.
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------------------
# Keys and the publish script
# ---------------------------------------------------------------------------


class Keys:
    """Key names, all under ``chatcore:CLUSTER:`` so clusters share a Redis."""

    def __init__(self, cluster: str) -> None:
        self.prefix = f"chatcore:{cluster}:"

    def stream(self, room: str) -> str:
        """The room's events: entries ``v``, ``node``, ``epoch``, ``offset``, ``event``."""
        return f"{self.prefix}room:{room}:stream"

    def meta(self, room: str) -> str:
        """The room's hash: ``epoch``, ``offset`` (the last one given) and,
        per publishing node, ``node:ID`` = the node's last sequence number."""
        return f"{self.prefix}room:{room}:meta"


# Appends one event to a room's stream, atomically: the epoch (created when
# Redis has none: a new room, or Redis lost it), the next offset, and the
# entry. The offset and the entry are made together, so the stream's order
# is the offsets' order and a reader can tell a hole from a late entry.
#
# A retried publish (the link dropped after Redis ran it, before the reply)
# must not add the event twice: each node numbers its events 1, 2, 3 ... and
# sends them in that order from one thread, so an event whose number is not
# above the last one Redis recorded for the node in this room is a repeat.
#
# KEYS: meta, stream. ARGV: node, sequence, event JSON, maxlen, new epoch.
# Returns the offset given, or 0 for a repeat.
_PUBLISH_LUA = """
local field = 'node:' .. ARGV[1]
local last = tonumber(redis.call('HGET', KEYS[1], field) or '0')
if tonumber(ARGV[2]) <= last then
    return 0
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
    epoch = ARGV[5]
    redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('HSET', KEYS[1], field, ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'v', '1', 'node', ARGV[1], 'epoch', epoch, 'offset', offset, 'event', ARGV[3])
return offset
"""


def connect(url: str, *, timeout: float, name: str) -> redis_py.Redis:
    """A client with one connection of its own, for one thread.

    No redis-py retries: the plugin retries itself, in order and without
    duplicates, and a blind retry of a non-idempotent command could add an
    event twice.
    """
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis_py.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        protocol=2,  # the replies' shapes below are RESP2's
        single_connection_client=True,
        client_name=name,
    )


class Backoff:
    """Waits between reconnection attempts: 0.1 s, doubling to 2 s."""

    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST

    def reset(self) -> None:
        self.delay = BACKOFF_FIRST

    def wait(self, stopping: threading.Event) -> None:
        stopping.wait(self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX)


# ---------------------------------------------------------------------------
# The cluster: link state, publisher and reader
# ---------------------------------------------------------------------------


class Cluster:
    """This server's membership in a cluster: its node id, the link state,
    the publisher and the reader.

    :ivar node: this server's id in the cluster, new at every start.
    :ivar gaps: times members were told that events were lost.
    :ivar lost: events known lost (0 counted when the number is unknown).
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        stream_length: int,
        max_pending: int,
        timeout: float = DEFAULT_TIMEOUT,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.name = name
        self.keys = Keys(name)
        self.stream_length = stream_length
        self.node = secrets.token_hex(6)
        self.server: ChatServer | None = None
        self.stopping = threading.Event()
        self.publisher = Publisher(self, max_pending)
        self.reader = Reader(self, check_interval)
        self.gaps = 0
        self.lost = 0
        self._link_lock = threading.Lock()
        self._link_up = True

    def start(self, server: ChatServer) -> None:
        self.server = server
        log.info("cluster %r on %s as node %s", self.name, redacted(self.url), self.node)
        self.publisher.start()
        self.reader.start()

    def stop(self) -> None:
        self.publisher.flush(timeout=1.0)
        self.stopping.set()
        self.publisher.wake()
        self.publisher.join(self.timeout + 1)
        self.reader.join(self.timeout + 1)

    # -- the link, as users see it -------------------------------------------

    def link_down(self, why: str) -> None:
        """Redis is unreachable: log it and tell everyone, once per outage."""
        with self._link_lock:
            if not self._link_up:
                return
            self._link_up = False
        log.warning("cluster link down (%s); local chat goes on, reconnecting", why)
        self._tell_everyone(LINK_DOWN_NOTICE)

    def link_up(self) -> None:
        """Redis is back and the reader has caught up."""
        with self._link_lock:
            if self._link_up:
                return
            self._link_up = True
        log.warning("cluster link back")
        self._tell_everyone(LINK_BACK_NOTICE)

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


@dataclass(slots=True)
class _Pending:
    seq: int
    room: str
    event: str


class Publisher(threading.Thread):
    """Appends this server's room events to the streams, in order, from one thread.

    Client threads only append to a queue (:meth:`put`); the thread sends
    what is queued in pipelines of up to :data:`BATCH`. A batch that fails is
    sent again after a reconnection; the publish script drops the ones
    Redis already has, so nothing is added twice and each sender's order
    holds.
    """

    def __init__(self, cluster: Cluster, max_pending: int) -> None:
        super().__init__(name="chatcore-redis-publisher", daemon=True)
        self.cluster = cluster
        self.max_pending = max_pending
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._seq = 0
        #: Events given up while Redis was unreachable.
        self.dropped = 0
        #: The last sequence number Redis has confirmed.
        self.confirmed = 0

    def put(self, event: RoomEvent) -> None:
        """Queue ``event`` for Redis (called on the publishing thread)."""
        text = encode_event(event)
        with self._cond:
            self._seq += 1
            self._queue.append(_Pending(self._seq, event.room, text))
            if len(self._queue) > self.max_pending:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error("Redis unreachable: %d events not shared with the cluster so far", self.dropped)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is in Redis; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._seq
        while self.confirmed < target:
            if time.monotonic() > deadline or not self.is_alive():
                return False
            time.sleep(0.01)
        return True

    def _batch(self) -> list[_Pending]:
        with self._cond:
            while not self._queue and not self.cluster.stopping.is_set():
                self._cond.wait()
            return list(self._queue)[:BATCH] if len(self._queue) > BATCH else list(self._queue)

    def _confirm(self, last: int) -> None:
        with self._cond:
            while self._queue and self._queue[0].seq <= last:
                self._queue.popleft()
            self.confirmed = max(self.confirmed, last)

    def run(self) -> None:
        import redis as redis_py

        cluster = self.cluster
        keys = cluster.keys
        client: redis_py.Redis | None = None
        script: Any = None
        backoff = Backoff()
        while not cluster.stopping.is_set():
            batch = self._batch()
            if not batch:
                continue
            try:
                if client is None:
                    client = connect(cluster.url, timeout=cluster.timeout, name=f"chatcore-{cluster.node}-pub")
                    script = client.register_script(_PUBLISH_LUA)
                pipe = client.pipeline(transaction=False)
                for item in batch:
                    script(
                        keys=[keys.meta(item.room), keys.stream(item.room)],
                        args=[cluster.node, item.seq, item.event, cluster.stream_length, secrets.token_hex(4)],
                        client=pipe,
                    )
                pipe.execute()
            except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
                cluster.link_down(f"publishing: {exc}")
                _close(client)
                client = None
                backoff.wait(cluster.stopping)
                continue
            except redis_py.RedisError as exc:
                # Not the link: Redis refused (out of memory, a wrong type at
                # a key, a script error). Retrying would block every later
                # event behind this batch: give it up, loudly.
                log.error("Redis refused %d events (%s); they are not shared with the cluster", len(batch), exc)
                self.dropped += len(batch)
            backoff.reset()
            self._confirm(batch[-1].seq)
        _close(client)


@dataclass(slots=True)
class _Cursor:
    """Where the reader is in one room's stream."""

    #: The last entry read (a stream id, never ``$``: re-reading from ``$``
    #: after a drop would skip whatever was added meanwhile).
    last_id: str
    #: The epoch and offset of the last entry read (None, 0 before any).
    epoch: str | None
    offset: int


class Reader(threading.Thread):
    """Reads the streams of the rooms this server's clients are in and
    publishes what the other servers said, in stream order."""

    def __init__(self, cluster: Cluster, check_interval: float = DEFAULT_CHECK_INTERVAL) -> None:
        super().__init__(name="chatcore-redis-reader", daemon=True)
        self.cluster = cluster
        self.check_interval = check_interval
        self.cursors: dict[str, _Cursor] = {}
        #: Entries that could not be read as events (a newer server's, damage).
        self.bad_entries = 0

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
                        cluster.url, timeout=cluster.timeout + BLOCK_MS / 1000, name=f"chatcore-{cluster.node}-read"
                    )
                    client.ping()
                    self._check(client)
                self._follow_rooms(client)
                if time.monotonic() >= next_check:
                    self._check(client)
                    next_check = time.monotonic() + self.check_interval
                self._read(client)
                cluster.link_up()
                backoff.reset()
            except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
                cluster.link_down(f"reading: {exc}")
                _close(client)
                client = None
                backoff.wait(cluster.stopping)
            except redis_py.RedisError as exc:
                log.error("reading the cluster's streams failed: %s", exc)
                backoff.wait(cluster.stopping)
        _close(client)

    def _follow_rooms(self, client: redis_py.Redis) -> None:
        """Start reading rooms that got local members; stop reading empty ones."""
        server = self.cluster.server
        assert server is not None
        rooms = server.registry.rooms()
        for room in [room for room in self.cursors if room not in rooms]:
            del self.cursors[room]
        for room in rooms:
            if room not in self.cursors:
                self.cursors[room] = self._top(client, room)

    def _top(self, client: redis_py.Redis, room: str) -> _Cursor:
        """A cursor at the end of the room's stream: a room entered now
        starts with what is said from now on."""
        keys = self.cluster.keys
        pipe = client.pipeline(transaction=True)  # one snapshot of both keys
        pipe.hmget(keys.meta(room), ["epoch", "offset"])
        pipe.xrevrange(keys.stream(room), count=1)
        (epoch, offset), last = pipe.execute()
        last_id = last[0][0] if last else "0-0"
        return _Cursor(last_id, epoch, int(offset or 0))

    def _check(self, client: redis_py.Redis) -> None:
        """Compare every cursor with its room in Redis: a changed epoch (Redis
        restarted empty, flushed, failed over to a copy that lacks it) or an
        offset behind ours means entries we would never read: say so and
        start again from the room's new history."""
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
            why = "the cluster's Redis lost them" if epoch != cursor.epoch else "Redis went back in time"
            self.cluster.gap(room, None, why)
            self.cursors[room] = _Cursor("0-0", None, 0)

    def _read(self, client: redis_py.Redis) -> None:
        if not self.cursors:
            self.cluster.stopping.wait(BLOCK_MS / 1000)
            return
        keys = self.cluster.keys
        streams: dict[Any, Any] = {keys.stream(room): cursor.last_id for room, cursor in self.cursors.items()}
        replies = client.xread(streams, count=BATCH, block=BLOCK_MS)
        for stream, entries in _stream_replies(replies):
            room = stream[len(keys.prefix) + len("room:") : -len(":stream")]
            cursor = self.cursors.get(room)
            if cursor is None:
                continue
            for entry_id, entry in entries:
                self._deliver(room, cursor, entry_id, entry)

    def _deliver(self, room: str, cursor: _Cursor, entry_id: str, entry: dict[str, str]) -> None:
        cluster = self.cluster
        server = cluster.server
        assert server is not None
        cursor.last_id = entry_id
        try:
            if entry.get("v") != FORMAT_VERSION:
                raise ValueError(f"format version {entry.get('v')!r}")
            epoch, offset = entry["epoch"], int(entry["offset"])
            event = decode_event(entry["event"])
        except (KeyError, ValueError) as exc:
            self.bad_entries += 1
            log.error("room %s: entry %s is not an event this server can read (%s); skipped", room, entry_id, exc)
            return
        if cursor.epoch is not None and epoch != cursor.epoch:
            cluster.gap(room, None, "the cluster's Redis lost them")
        elif offset > cursor.offset + 1:
            cluster.gap(room, offset - cursor.offset - 1, "Redis trimmed them before this server read them")
        cursor.epoch, cursor.offset = epoch, offset
        if entry.get("node") == cluster.node:
            return  # said here, and delivered here already
        if event.room != room:
            log.error("room %s: entry %s is for room %r; skipped", room, entry_id, event.room)
            return
        server.publish(event, relay=False)


def _stream_replies(replies: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD's (RESP2) answer as ``[(stream, [(id, fields), ...]), ...]``."""
    return [(stream, entries) for stream, entries in replies or ()]


def _close(client: redis_py.Redis | None) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:
            pass
