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
import math
import re
import secrets
import threading
import time
import typing
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatcore import Client, Config, UsageError, events, hookimpl
from chatcore.config import restart_only, secret, whole_number
from chatcore.engine.backplane import Backplane
from chatcore.engine.limits import parse_network
from chatcore.events import Action, Chat, Joined, Left, NickChanged, PrivateMessage, RoomEvent, RoomNotice
from chatcore.names import room_problem
from chatcore.wire.native import DEFAULT_MAX_LINE, sanitize

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

#: Seconds after which a server that stopped renewing its presence counts
#: as gone, and its users leave the rooms (--redis-node-timeout).
DEFAULT_NODE_TIMEOUT = 10.0
#: Private messages kept in a server's inbox stream.
INBOX_LENGTH = 1000
#: Operators' actions kept in the cluster's moderation stream: a server that
#: starts applies the bans and unbans among them.
MODERATION_LENGTH = 1000
#: Connections for the client threads' own requests (nick claims, /who,
#: /msg): a blocking pool waits for a free one (at most --redis-timeout)
#: where redis-py's default pool would open one per thread, or raise once
#: it has max_connections.
SHARED_CONNECTIONS = 8
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

#: How replies that are not UTF-8 are decoded: bytes written by anyone but a
#: chatcore server must not make every later read fail (redis-py's default,
#: "strict", raises on the whole reply, and the reader would read it again
#: and again); they become U+FFFD, and the entry's check drops it if needed.
ENCODING_ERRORS = "replace"
#: Seconds between two log lines about invalid entries from the cluster.
INVALID_LOG_INTERVAL = 60.0

#: The version of the stream entries' format (docs/scaling.md).
FORMAT_VERSION = "1"

LINK_DOWN_NOTICE = "the cluster link is down: you reach only the people on this server until it is back"
LINK_BACK_NOTICE = "the cluster link is back"

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: A node id, as :class:`Cluster` makes them (``secrets.token_hex(6)``).
_NODE_ID = re.compile(r"[0-9a-f]{12}")


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
    ``{"type": "Chat", "room": "lobby", "nick": "alice", "text": "hi", "time": 1.5}``.

    Fields at their default are left out: a field added later with a
    default (``Left.kicked_by``) then changes nothing for the events that
    do not use it, and servers that do not know it still read those."""
    record: dict[str, Any] = {"type": type(event).__name__, "time": event.time}
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        if item.name not in _IDENTITY and value != item.default:
            record[item.name] = value
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def decode_event(text: str, max_line: int = DEFAULT_MAX_LINE) -> RoomEvent:
    """The event :func:`encode_event` wrote; ValueError if it is not one
    (a newer server's event type, or damage). Its fields are checked by
    :func:`checked` (``max_line``: the longest text allowed, in bytes)."""
    record = _json_object(text, max_line)
    cls = _ROOM_EVENTS.get(record.pop("type", None))
    if cls is None:
        raise ValueError("unknown event type")
    when = record.pop("time", 0.0)
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        raise ValueError("time is not a number")
    try:
        return cls(**checked(_ROOM_EVENT_FIELDS[cls], record, max_line), time=float(when))
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def encode_private(message: PrivateMessage) -> str:
    """A private message as the JSON of an inbox entry's ``event`` field."""
    record = {"type": "PrivateMessage", "sender": message.sender, "recipient": message.recipient}
    return json.dumps({**record, "text": message.text}, separators=(",", ":"), ensure_ascii=False)


def decode_private(text: str, max_line: int = DEFAULT_MAX_LINE) -> PrivateMessage:
    """The message :func:`encode_private` wrote; ValueError if it is not one."""
    record = _json_object(text, max_line)
    if record.pop("type", None) != "PrivateMessage":
        raise ValueError("not a private message")
    fields = checked(_PRIVATE_FIELDS, record, max_line)
    if len(fields) != len(_PRIVATE_FIELDS):
        raise ValueError("a private message needs sender, recipient and text")
    return PrivateMessage(**fields)


#: An operator's action for the other servers (see :func:`moderate`): the
#: fields an entry may have, and those each action needs.
_MODERATION_FIELDS: dict[str, Any] = {
    "action": str, "by": str, "oper": str, "nick": str, "host": str, "target": str, "reason": str,
    "network": str, "until": float,
}  # fmt: skip
_MODERATION_NEEDS = {
    "kick": {"nick"}, "mute": {"nick", "until"}, "unmute": {"target"}, "ban": {"network"}, "unban": {"network"},
}  # fmt: skip


def encode_moderation(action: str, details: dict[str, Any]) -> str:
    """An operator's action as the JSON of a moderation entry's ``event`` field."""
    record = {"type": "Moderation", "action": action, **{k: v for k, v in details.items() if v is not None}}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def decode_moderation(text: str, max_line: int = DEFAULT_MAX_LINE) -> dict[str, Any]:
    """The action :func:`encode_moderation` wrote, its ``network`` parsed;
    ValueError if it is not one."""
    record = _json_object(text, max_line)
    if record.pop("type", None) != "Moderation":
        raise ValueError("not an operator's action")
    fields = checked(_MODERATION_FIELDS, record, max_line)
    needs = _MODERATION_NEEDS.get(fields.get("action", ""))
    if needs is None or not needs | {"by"} <= set(fields):
        raise ValueError("not an action with what it needs")
    if "network" in fields:
        fields["network"] = parse_network(fields["network"])
    return fields


# What comes from the cluster is input like a client's line: Redis is
# trusted by design, but another server's bug, an older or newer version,
# or anyone who can write to Redis must not be able to crash or wedge the
# delivery path, forge IRC lines or flood members. So every entry is
# checked field by field before it becomes an event (issue 23, item 6).

#: Fields that hold a nickname or a room name. They must follow the name
#: rule as they are (letters, digits, '_', '-': no control characters can
#: pass): sanitising one instead could turn it into someone else's name.
_NAME_FIELDS = frozenset({"room", "nick", "new_nick", "kicked_by", "sender", "recipient", "by"})


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {item.name: hints[item.name] for item in dataclasses.fields(cls) if item.name not in _IDENTITY}


#: The fields an entry may carry, and their types, by event class.
_ROOM_EVENT_FIELDS = {cls: _field_types(cls) for cls in _ROOM_EVENTS.values()}
_PRIVATE_FIELDS: dict[str, Any] = {"sender": str, "recipient": str, "text": str}


def _json_object(text: str, max_line: int) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ValueError if it is not one.

    A legitimate entry is at most about twice ``max_line`` characters (JSON
    doubles a quote or a backslash): a longer one is refused unparsed, and
    deep nesting (a RecursionError in the parser) is refused too."""
    if len(text) > 2 * max_line + 1024:
        raise ValueError(f"{len(text)} characters long")
    try:
        record = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def checked(kinds: dict[str, Any], record: dict[str, Any], max_line: int) -> dict[str, Any]:
    """``record``'s fields if each is one of ``kinds`` and of its type, every
    name follows the name rule, and every text, sanitised as a client's line
    is (:func:`chatcore.wire.native.sanitize`), is at most ``max_line`` bytes;
    else ValueError. A ``text`` must not be empty (no chat line is).

    Defends against a number where a nickname goes (it made the IRC encoder
    raise in the publish path, and the room stopped on that server: issue
    23, item 6), CR/LF in a nickname or text (forged IRC lines), terminal
    escapes, and a huge text sent to every member."""
    unknown = set(record) - set(kinds)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)!r:.200}")
    clean: dict[str, Any] = {}
    for name, given in record.items():
        kind, value = kinds[name], given
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{name} is not a {kind.__name__}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"{name} is not a finite number")
        if kind is str and name in _NAME_FIELDS:
            # Nicknames and room names follow one rule (chatcore.names);
            # kicked_by is empty for a leave that is not a kick.
            if (value or name != "kicked_by") and room_problem(value) is not None:
                raise ValueError(f"{name} is not a valid name")
        elif kind is str:
            value = sanitize(value)
            if len(value.encode("utf-8")) > max_line:
                raise ValueError(f"{name} is longer than {max_line} bytes")
            if name == "text" and not value:
                raise ValueError("text is empty")
        clean[name] = value
    return clean


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "redis plugin",
        "Shares rooms with the other chatcore servers that use the same Redis and cluster name (see docs/scaling.md).",
    )

    def add(*args: Any, **kwargs: Any) -> argparse.Action:
        # Read once, when the server starts (the links, the threads, the node id).
        return restart_only(group.add_argument(*args, **kwargs))

    secret(
        add(
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
    add(
        "--redis-cluster",
        default=DEFAULT_CLUSTER,
        metavar="NAME",
        help=(
            "the cluster's name: servers with the same name share rooms; "
            "clusters with different names can share one Redis (default: %(default)s)"
        ),
    )
    add(
        "--redis-stream-length",
        type=whole_number(100),
        default=DEFAULT_STREAM_LENGTH,
        metavar="N",
        help=("events kept per room in Redis, for servers catching up after a link drop (default: %(default)s)"),
    )
    add(
        "--redis-timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=(
            "how long Redis may take to answer before the link counts as down and is made again; "
            "bounds how long a silently broken link goes unnoticed (default: %(default)s)"
        ),
    )
    add(
        "--redis-node-timeout",
        type=positive_seconds,
        default=DEFAULT_NODE_TIMEOUT,
        metavar="SECONDS",
        help=(
            "a server that stops answering (killed, cut off) has its users leave everyone else's rooms "
            "after this long, and at most a third longer; servers renew their presence three times "
            "as often (default: %(default)s)"
        ),
    )
    add(
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
    add(
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
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        raise UsageError("the redis plugin needs the redis package (redis-py): pip install 'chatcore[redis]'")
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
        node_timeout=options.redis_node_timeout,
    )


@hookimpl
def chatcore_backplane(server: ChatServer) -> Backplane:
    return RedisBackplane(_cluster(server))


@hookimpl(trylast=True)
def chatcore_server_start(server: ChatServer) -> None:
    cluster = _cluster(server)
    # The metrics plugin's endpoint, started before this one (trylast), also
    # gives the cluster's counts.
    metrics = server.config.data.get("metrics")
    if metrics is not None:
        metrics.registry.register(ClusterCollector(cluster))


class ClusterCollector:
    """The cluster's counts for the metrics plugin (a ``prometheus_client``
    custom collector, read at scrape time)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "chatcore_redis_invalid_entries_total",
            "Entries from the cluster (room streams, inboxes, presence) dropped as invalid.",
            value=self.cluster.invalid.count,
        )


@hookimpl
def chatcore_client_joined(client: Client, room: str) -> None:
    _cluster(client.server).presence.changed()


@hookimpl
def chatcore_client_left(client: Client, room: str, reason: str) -> None:
    cluster = _cluster(client.server)
    if client.server.stopping:
        # The server does not tell its own rooms about leaves while it stops
        # (everyone is going); the other servers' members must still hear them.
        cluster.publisher.put(Left(room, nick=client.nick, reason=reason))
    cluster.presence.changed()


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

    def published(self, events: Sequence[RoomEvent]) -> None:
        cluster = self.cluster
        for event in events:
            cluster.publisher.put(cluster.presence.relayed(event))

    def history(self, room: str, limit: int) -> list[RoomEvent] | None:
        return self.cluster.presence.history(room, limit)

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

    def send_private(self, sender: Client, message: PrivateMessage) -> bool | str | None:
        return self.cluster.presence.send_private(message)

    def moderate(self, action: str, details: dict[str, Any]) -> bool | str | None:
        return self.cluster.presence.moderate(action, details)


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

    def nodes(self) -> str:
        """The set of the cluster's servers (node ids)."""
        return f"{self.prefix}nodes"

    def alive(self, node: str) -> str:
        """Exists while the node renews it (expires after --redis-node-timeout)."""
        return f"{self.prefix}node:{node}"

    def members(self, node: str) -> str:
        """The node's clients: a hash nick -> room."""
        return f"{self.prefix}node:{node}:members"

    def inbox(self, node: str) -> str:
        """Private messages for the node's clients: a stream."""
        return f"{self.prefix}node:{node}:inbox"

    def nick(self, nick: str) -> str:
        """Who holds a nickname (ignoring case): the node id."""
        return f"{self.prefix}nick:{nick.casefold()}"

    def moderation(self) -> str:
        """Operators' actions for every server (kick, mute, ban ...): a stream."""
        return f"{self.prefix}moderation"

    def reaping(self, node: str) -> str:
        """Held by the one server that announces a gone node's leaves."""
        return f"{self.prefix}reap:{node}"

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
# Returns {offset, entry id, epoch} (where the entry went: the reader starts
# a room its clients entered there), or 0 for a repeat.
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
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'v', '1', 'node', ARGV[1], 'epoch', epoch, 'offset', offset, 'event', ARGV[3])
return {offset, id, epoch}
"""


# Claims a nickname for a node, atomically: free, already the node's, or
# held by a node that stopped renewing its presence (it is being reaped).
# KEYS: nick, ARGV: node, the prefix of presence keys. Returns 1 or 0.
_CLAIM_LUA = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# Gives a nickname up if the node holds it. KEYS: nick, ARGV: node.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
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
        encoding_errors=ENCODING_ERRORS,
        protocol=2,  # the replies' shapes below are RESP2's
        single_connection_client=True,
        client_name=name,
    )


def shared_client(url: str, *, timeout: float, name: str) -> redis_py.Redis:
    """A client for many threads: a blocking pool of a few connections."""
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = redis_py.BlockingConnectionPool.from_url(
        url,
        max_connections=SHARED_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        encoding_errors=ENCODING_ERRORS,
        protocol=2,
        client_name=name,
    )
    return redis_py.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


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
        url: str,
        name: str,
        *,
        stream_length: int,
        max_pending: int,
        timeout: float = DEFAULT_TIMEOUT,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        node_timeout: float = DEFAULT_NODE_TIMEOUT,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.name = name
        self.keys = Keys(name)
        self.stream_length = stream_length
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

    def start(self, server: ChatServer) -> None:
        self.server = server
        log.info("cluster %r on %s as node %s", self.name, redacted(self.url), self.node)
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

    # -- the link, as users see it -------------------------------------------

    def link_down(self, why: str) -> None:
        """Redis is unreachable: log it and tell everyone, once per outage."""
        with self._link_lock:
            if not self._link_up:
                return
            self._link_up = False
        log.warning("cluster link down (%s); local chat goes on, reconnecting", why)
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
    #: Whether the reader waits to learn where this entry goes: the Joined of
    #: a room it does not read yet (see :class:`Arrivals`).
    placing: bool = False


def _cured_by_retry(reply: object) -> bool:
    """A refusal that a retry on a fresh connection cures: the script cache
    was flushed between SCRIPT EXISTS and EVALSHA, or a failover left this
    link on a replica. Retrying is safe: the script drops what Redis has."""
    from redis.exceptions import NoScriptError, ReadOnlyError

    return isinstance(reply, (NoScriptError, ReadOnlyError))


class Publisher(threading.Thread):
    """Appends this server's room events to the streams, in order, from one thread.

    Client threads only append to a queue (:meth:`put`); the thread sends
    what is queued in pipelines of up to :data:`BATCH`. A batch that fails is
    sent again after a reconnection; the publish script drops the ones
    Redis already has, so nothing is added twice and each sender's order
    holds. An event is only ever given up loudly: refused by Redis (logged,
    counted in :attr:`dropped`) or pushed out of a full queue during an outage
    (logged, counted).
    """

    def __init__(self, cluster: Cluster, max_pending: int) -> None:
        super().__init__(name="chatcore-redis-publisher", daemon=True)
        self.cluster = cluster
        self.max_pending = max_pending
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._seq = 0
        #: Events given up: refused by Redis, or beyond --redis-max-pending.
        self.dropped = 0
        #: The last sequence number Redis has confirmed.
        self.confirmed = 0

    def put(self, event: RoomEvent) -> None:
        """Queue ``event`` for Redis (called on the publishing thread)."""
        text = encode_event(event)
        arrivals = self.cluster.arrivals
        with self._cond:
            self._seq += 1
            # Asked under this lock, so the entry the reader waits for is the
            # first of the room in queue order.
            placing = isinstance(event, Joined) and arrivals.entered(event.room, self._seq)
            self._queue.append(_Pending(self._seq, event.room, text, placing))
            if len(self._queue) > self.max_pending:
                lost = self._queue.popleft()
                if lost.placing:
                    arrivals.placed(lost.room, lost.seq, None, "Redis was unreachable for too long")
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

    def waiting(self) -> int:
        """Events queued and not yet confirmed by Redis."""
        with self._cond:
            return len(self._queue)

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

    def _send(self, client: redis_py.Redis, script: Any, batch: list[_Pending]) -> list[Any]:
        """One pipeline of ``batch``; the replies, one per event (a refusal
        as its ResponseError). Raises what calls for a retry of the batch."""
        cluster = self.cluster
        keys = cluster.keys
        pipe = client.pipeline(transaction=False)
        for item in batch:
            script(
                keys=[keys.meta(item.room), keys.stream(item.room)],
                args=[cluster.node, item.seq, item.event, cluster.stream_length, secrets.token_hex(4)],
                client=pipe,
            )
        # Replies item by item: a pipeline is not atomic, so one refusal does
        # not mean the others were not added.
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for reply in replies:
            if _cured_by_retry(reply):
                raise reply
        return replies

    def _settle(self, batch: list[_Pending], replies: list[Any]) -> None:
        """Tell the reader where the entries it waits for went; give up
        (loudly) the events Redis refused."""
        import redis as redis_py

        arrivals = self.cluster.arrivals
        refused: list[Exception] = []
        for item, reply in zip(batch, replies, strict=True):
            if isinstance(reply, redis_py.ResponseError):
                refused.append(reply)
                if item.placing:
                    arrivals.placed(item.room, item.seq, None, "Redis refused this server's events")
            elif item.placing:
                if isinstance(reply, list):
                    offset, entry_id, epoch = reply
                    arrivals.placed(item.room, item.seq, _Cursor(str(entry_id), str(epoch), int(offset)))
                else:
                    # A repeat: Redis had it from a batch whose reply the link
                    # lost, and where it went is not known any more.
                    arrivals.placed(item.room, item.seq, None, "the cluster link dropped as the room was entered")
        if refused:
            # Not the link: out of memory, a wrong type at a key, a script
            # error. Retrying would block every later event behind these.
            with self._cond:
                self.dropped += len(refused)
            log.error(
                "Redis refused %d of %d events (%s); they are not shared with the cluster",
                len(refused),
                len(batch),
                refused[0],
            )

    def run(self) -> None:
        import redis as redis_py

        cluster = self.cluster
        client: redis_py.Redis | None = None
        script: Any = None
        failing = False
        backoff = Backoff()
        while not cluster.stopping.is_set():
            batch = self._batch()
            if not batch:
                continue
            try:
                if client is None:
                    client = connect(cluster.url, timeout=cluster.timeout, name=f"chatcore-{cluster.node}-pub")
                    script = client.register_script(_PUBLISH_LUA)
                replies = self._send(client, script, batch)
            except Exception as exc:
                if isinstance(exc, redis_py.ResponseError) and not _cured_by_retry(exc):
                    # The batch as a whole refused (loading the script): as above.
                    self._settle(batch, [exc] * len(batch))
                    self._confirm(batch[-1].seq)
                    continue
                # The link (dropped, timed out, a reply cut in the middle), a
                # refusal a fresh link cures, or anything unexpected: the
                # batch waits and is sent again (the script drops what Redis
                # already has); the thread never dies. Users hear of outages
                # from the reader alone (one voice, no flapping notices).
                if not failing:
                    expected = (redis_py.ConnectionError, redis_py.TimeoutError, redis_py.ResponseError)
                    log.warning(
                        "publishing to Redis failed (%s); %d events wait, retrying",
                        exc,
                        len(batch),
                        exc_info=not isinstance(exc, expected),
                    )
                failing = True
                _close(client)
                client = None
                backoff.wait(cluster.stopping)
                continue
            if failing:
                log.warning("publishing to Redis works again")
            failing = False
            backoff.reset()
            self._settle(batch, replies)
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


@dataclass(slots=True)
class _Start:
    """Where the reader is to start reading a room (see :class:`Arrivals`)."""

    #: This server's Joined entry in the room; None: the stream's top, now.
    cursor: _Cursor | None
    #: Why starting at the top may have skipped something (told as a gap).
    gap: str | None = None


class Arrivals:
    """Where the reader starts reading a room that this server's clients enter.

    Members must hear what the other servers say in the room after they
    entered it, that is after this server's Joined entry in the room's
    stream. The reader cannot simply start at the stream's top when it
    notices the room: it notices only when its blocking read returns, up to
    :data:`BLOCK_MS` later, and whatever was said in between would be
    skipped without a trace (issue 13's bug). So the publisher reports where
    the Joined of a room's first member went (the publish script returns
    it), and the reader starts there.

    When that is not known, the reader starts at the top: if the Joined was
    refused, given up or its reply lost (the members are told of a possible
    gap), or if a room got members here without a Joined within
    ``grace`` seconds (logged).

    One lock; :meth:`entered` runs on client threads (with the publisher's
    queue lock held), :meth:`placed` on the publisher's, and
    :meth:`plan` and :meth:`begin` on the reader's thread.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._lock = threading.Lock()
        #: Rooms the reader reads.
        self._followed: set[str] = set()
        #: Rooms whose first Joined is on its way to Redis: its sequence number.
        self._asked: dict[str, int] = {}
        #: Where those went.
        self._placed: dict[str, _Start] = {}
        #: Rooms with members here and no Joined seen yet: since when.
        self._unannounced: dict[str, float] = {}

    def entered(self, room: str, seq: int) -> bool:
        """A Joined (number ``seq``) is queued for ``room``: True if the
        reader is to learn where it goes (it does not read the room, nor
        waits for an earlier Joined's place)."""
        with self._lock:
            if room in self._followed or room in self._asked or room in self._placed:
                return False
            self._asked[room] = seq
            self._unannounced.pop(room, None)
            return True

    def placed(self, room: str, seq: int, cursor: _Cursor | None, gap: str | None = None) -> None:
        """Where the Joined number ``seq`` went (None: not known, and why)."""
        with self._lock:
            if self._asked.get(room) == seq:
                del self._asked[room]
                self._placed[room] = _Start(cursor, None if cursor else gap)

    def plan(self, rooms: Callable[[], Collection[str]]) -> tuple[dict[str, _Start], list[str]]:
        """The rooms to start reading and where, and the rooms to stop
        reading (done: they count as not read from now on).

        ``rooms`` gives the rooms with members here; it is read under the
        lock, so a client entering a room after this finds it not read and
        has its Joined placed.
        """
        now = time.monotonic()
        with self._lock:
            here = set(rooms())
            stop = [room for room in self._followed if room not in here]
            self._followed.difference_update(stop)
            for table in (self._asked, self._placed, self._unannounced):
                for room in [room for room in table if room not in here]:
                    del table[room]  # everyone left before the reader began
            start: dict[str, _Start] = {}
            for room in here - self._followed:
                if room in self._placed:
                    start[room] = self._placed[room]
                elif room not in self._asked:
                    since = self._unannounced.setdefault(room, now)
                    if now - since >= self.grace:
                        start[room] = _Start(None)
            return start, stop

    def begin(self, room: str, start: _Start) -> bool:
        """The reader reads ``room`` from now on, as :meth:`plan` said; False
        if things changed meanwhile (plan again)."""
        with self._lock:
            if room in self._followed or room in self._asked:
                return False
            if room in self._placed:
                if self._placed[room] is not start:
                    return False
                del self._placed[room]
            elif room not in self._unannounced:
                return False
            else:
                del self._unannounced[room]
                log.warning("room %s has members here but no join was published; reading it from now on", room)
            self._followed.add(room)
            return True


class Reader(threading.Thread):
    """Reads the streams of the rooms this server's clients are in and
    publishes what the other servers said, in stream order."""

    def __init__(self, cluster: Cluster, check_interval: float = DEFAULT_CHECK_INTERVAL) -> None:
        super().__init__(name="chatcore-redis-reader", daemon=True)
        self.cluster = cluster
        self.check_interval = check_interval
        self.cursors: dict[str, _Cursor] = {}
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
                        cluster.url, timeout=cluster.timeout + BLOCK_MS / 1000, name=f"chatcore-{cluster.node}-read"
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
                cluster.link_up()
                backoff.reset()
            except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
                cluster.link_down(f"reading: {exc}")
                _close(client)
                client = None
                backoff.wait(cluster.stopping)
            except Exception:
                # Never a dead reader: log, make the link again, read on from
                # the cursors (what was read is not read twice).
                log.exception("reading the cluster's streams failed; reconnecting")
                _close(client)
                client = None
                backoff.wait(cluster.stopping)
        _close(client)

    def _follow_rooms(self, client: redis_py.Redis) -> None:
        """Start reading rooms that got local members, from this server's
        Joined entry (:class:`Arrivals`); stop reading empty ones."""
        cluster = self.cluster
        assert cluster.server is not None
        start, stop = cluster.arrivals.plan(cluster.server.registry.rooms)
        for room in stop:
            self.cursors.pop(room, None)
        for room, where in start.items():
            # The top is read before the room counts as read, so a failure
            # here leaves it to the next plan.
            cursor = where.cursor or self._top(client, room)
            if cluster.arrivals.begin(room, where):
                self.cursors[room] = cursor
                if where.gap:
                    cluster.gap(room, None, where.gap)

    def _top(self, client: redis_py.Redis, room: str) -> _Cursor:
        """A cursor at the end of the room's stream (where this server's
        Joined entry went is not known)."""
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
        """Apply an operator's action sent by another server as plugins/opers.py
        applies its own. Entries from before this server started are
        replayed but for kicks (bans and mutes are kept: they are in force)."""
        from chatcore.plugins import opers

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
        action, by, oper, until = record["action"], record["by"], record.get("oper"), record.get("until")
        reason = record.get("reason") or "no reason given"
        state: opers.State = server.config.data[opers.NAME]  # its methods are for cluster plugins too
        if until is not None and until <= time.time():
            return  # a ban or mute that is over
        if action == "ban":
            log.warning("operator %s (%s) on another server banned %s: %s", oper, by, record["network"], reason)
            state.ban(record["network"], until, reason, by)
            opers.enforce_ban(server, record["network"], by, reason)
        elif action == "unban":
            if state.unban(record["network"])[0]:
                log.warning("operator %s (%s) on another server lifted the ban on %s", oper, by, record["network"])
        elif action == "mute":
            # The address is known where the user is; the others mute the nick.
            here = server.registry.find(record["nick"])
            host = record.get("host") or (here.address[0] if here is not None else "")
            opers.apply_mute(server, record["nick"], host, record["until"], by=by, oper=oper)
        elif action == "unmute":
            opers.apply_unmute(server, record["target"], by=by, oper=oper)
        elif _stream_id(entry_id) > self.replayed_until:  # a kick: of a user here now, never replayed
            target = server.registry.find(record["nick"])
            if target is None or target.closed:
                log.info("kick of %s by %s from another server: not here (any more)", record["nick"], by)
            else:
                opers.kick_as(by, oper, target, reason)

    def _deliver_private(self, entry_id: str, entry: dict[str, str]) -> None:
        server = self.cluster.server
        assert server is not None
        try:
            if entry.get("v") != FORMAT_VERSION:
                raise ValueError(f"format version {entry.get('v')!r:.20}")
            message = decode_private(entry["event"], server.max_line)
        except (KeyError, ValueError) as exc:
            self.cluster.invalid.drop(f"inbox entry {entry_id}", exc)
            return
        recipient = server.registry.find(message.recipient)
        if recipient is None:
            log.info("private message for %r, who left this server meanwhile, dropped", message.recipient)
            return
        recipient.send(PrivateMessage(message.sender, recipient.nick, message.text))

    def _deliver(self, room: str, cursor: _Cursor, entry_id: str, entry: dict[str, str]) -> None:
        cluster = self.cluster
        server = cluster.server
        assert server is not None
        cursor.last_id = entry_id
        what = f"room {room} entry {entry_id}"
        try:
            epoch, offset = _entry_place(entry)
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
        if entry.get("node") == cluster.node:
            return  # said here, and delivered here already
        try:
            event = decode_event(entry["event"], server.max_line)
            if event.room != room:
                raise ValueError(f"it is for room {event.room}")
        except (KeyError, ValueError) as exc:
            cluster.invalid.drop(what, exc)
            return
        if isinstance(event, Left) and cluster.presence.returned(event):
            return  # a ghost leave: another server timed this one out, and the user is here
        server.publish(event, relay=False)


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

    def open(self) -> None:
        cluster = self.cluster
        self.client = shared_client(cluster.url, timeout=cluster.timeout, name=f"chatcore-{cluster.node}-shared")
        self._claim = self.client.register_script(_CLAIM_LUA)
        self._release = self.client.register_script(_RELEASE_LUA)

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
        snapshot: dict[Any, Any] = {client.nick: client.room for client in server.registry}
        pipe = self.client.pipeline(transaction=True)
        # The old value (Redis >= 6.2) says whether the key expired meanwhile,
        # and the reap lock whether another server announced this one gone.
        pipe.set(keys.alive(node), "1", px=int(self.node_timeout * 1000), get=True)
        pipe.getdel(keys.reaping(node))
        pipe.sadd(keys.nodes(), node)
        pipe.delete(keys.members(node))
        if snapshot:
            pipe.hset(keys.members(node), mapping=snapshot)
            for nick in snapshot:  # back after Redis lost them (a restart)
                pipe.set(keys.nick(nick), node, nx=True)
        for nick in set(self.snapshot) - set(snapshot):  # given up while the link was down
            self._release(keys=[keys.nick(nick)], args=[node], client=pipe)
        was_alive, reaper = pipe.execute()[:2]
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
        if left.reason != GONE_REASON or client is None or client.room != left.room:
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
            if client.nick != nick or client.room != room or client.close_reason is not None:
                continue  # renamed, moved or gone since: their own events told the others
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
            renamed = server.change_nick(client, guest)
            self._collided.discard((nick, guest))
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
        assert self.client is not None
        cluster = self.cluster
        keys = cluster.keys
        others = self._other_nodes()
        if not others:
            return
        pipe = self.client.pipeline(transaction=False)
        for node in others:
            pipe.exists(keys.alive(node))
        gone = [node for node, alive in zip(others, pipe.execute(), strict=True) if not alive]
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
        pipe.delete(keys.members(node), keys.inbox(node))
        pipe.srem(keys.nodes(), node)
        # The lock stays, for longer, as the mark that tells the node, should
        # it come back, that it was timed out (it deletes it then).
        pipe.pexpire(keys.reaping(node), int(REAPED_MARK * 1000))
        pipe.execute()
        for nick, room in members.items():
            self.cluster.server.publish(Left(room, nick=nick, reason=GONE_REASON))
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

    def _valid_members(self, node: str, members: dict[Any, Any]) -> dict[str, str]:
        """``node``'s members (nick -> room), but those whose nick or room is
        not a valid name (they would reach /who and IRC's NAMES), counted."""
        valid: dict[str, str] = {}
        for nick, room in members.items():
            if isinstance(nick, str) and isinstance(room, str) and not room_problem(nick) and not room_problem(room):
                valid[nick] = room
            else:
                self.cluster.invalid.drop(f"a member of node {node}", "a nick or room that is not a valid name")
        return valid

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
            pipe.delete(keys.alive(node), keys.members(node), keys.inbox(node))
            pipe.srem(keys.nodes(), node)
            pipe.execute()
        except redis_py.RedisError as exc:
            log.warning("could not leave the cluster cleanly (%s); the others will time this server out", exc)
        self.client.close()

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
            replies = pipe.execute()
        except redis_py.RedisError as exc:
            log.info("could not ask the cluster who is where (%s)", exc)
            return None
        rooms: dict[str, list[str]] = {}
        for node, alive, members in zip(others, replies[::2], replies[1::2], strict=True):
            if alive:
                for nick, room in self._valid_members(node, members).items():
                    rooms.setdefault(room, []).append(nick)
        return rooms

    def history(self, room: str, limit: int) -> list[RoomEvent] | None:
        """The room's last ``limit`` chat and action events in its stream,
        oldest first, with the time they were said and no identity (epoch
        ``""``, offset 0: the stream's numbering is the cluster's, not what
        users see); None if Redis cannot say."""
        import redis as redis_py

        assert self.client is not None
        assert self.cluster.server is not None
        if not self.cluster.linked:
            return None
        max_line = self.cluster.server.max_line
        found: list[RoomEvent] = []
        newest = "+"
        try:
            # Newest first, a page at a time, until enough or the start.
            while len(found) < limit:
                page: list[Any] = (
                    self.client.xrevrange(self.cluster.keys.stream(room), max=newest, count=HISTORY_PAGE) or []
                )
                for entry_id, entry in page:
                    try:
                        _, _, event = _entry_event(entry, max_line)
                    except (KeyError, ValueError) as exc:
                        self.cluster.invalid.drop(f"room {room} entry {entry_id}", exc)
                        continue
                    if isinstance(event, (Chat, Action)) and event.room == room:
                        # With its time, but not the stream's identity: users
                        # see each server's own numbering (docs/scaling.md),
                        # and a page that saw a stream's epoch beside its
                        # server's thought the server had restarted.
                        found.append(event)
                if len(page) < HISTORY_PAGE:
                    break
                newest = "(" + str(page[-1][0])
        except redis_py.RedisError as exc:
            log.info("could not read room %s's history from the cluster (%s)", room, exc)
            return None
        return found[:limit][::-1]

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

    def send_private(self, message: PrivateMessage) -> bool | str | None:
        """Deliver ``message`` to the server its recipient is on."""
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
                {"v": FORMAT_VERSION, "node": cluster.node, "event": encode_private(message)},
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


def _entry_place(entry: dict[str, str]) -> tuple[str, int]:
    """A room stream entry's epoch and offset; KeyError or ValueError if it
    is not an entry this server can read."""
    if entry.get("v") != FORMAT_VERSION:
        raise ValueError(f"format version {entry.get('v')!r:.20}")
    epoch, offset = entry["epoch"], int(entry["offset"])
    if not 0 < len(epoch) <= 64 or offset < 1:
        raise ValueError("not an epoch and offset")
    return epoch, offset


def _entry_event(entry: dict[str, str], max_line: int) -> tuple[str, int, RoomEvent]:
    """A room stream entry's epoch, offset and event (checked: :func:`checked`)."""
    epoch, offset = _entry_place(entry)
    return epoch, offset, decode_event(entry["event"], max_line)


def _stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``1700000000000-3``) as numbers, to compare two."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _stream_replies(replies: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD's (RESP2) answer as ``[(stream, [(id, fields), ...]), ...]``."""
    return [(stream, entries) for stream, entries in replies or ()]


def _close(client: redis_py.Redis | None) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:
            pass
