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

This module is the plugin's face: its options, its hooks and the names
other code imports from ``chatcore.plugins.redis``. The rest is one concern
per module, each importing only those below it:

- :mod:`.backplane`: :class:`RedisBackplane` (the engine's view) and the
  :class:`Cluster` that owns the link state and the threads;
- :mod:`.publisher`, :mod:`.reader`, :mod:`.presence`: the three threads
  (and, in presence, the client threads' own requests: nick claims,
  ``/who``, ``/msg``, history, operators' actions);
- :mod:`.arrivals`: where the reader starts a room, as the publisher
  learned it;
- :mod:`.codec`: the entries' format, and the checks of what comes from
  the cluster;
- :mod:`.scripts`: the key names and the Lua scripts;
- :mod:`.connection`: making and closing Redis connections, and backoff.
"""

from __future__ import annotations

import argparse
import re
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from chatcore import Client, Config, UsageError, hookimpl
from chatcore.config import restart_only, secret, whole_number
from chatcore.engine.backplane import Backplane
from chatcore.events import Left
from chatcore.plugins.redis.arrivals import Arrivals, Cursor, Start
from chatcore.plugins.redis.backplane import Cluster, Invalid, RedisBackplane
from chatcore.plugins.redis.codec import (
    FORMAT_VERSION,
    checked,
    decode_event,
    decode_moderation,
    decode_private,
    encode_event,
    encode_moderation,
    encode_private,
)
from chatcore.plugins.redis.connection import DEFAULT_TIMEOUT, Target, connect, redacted, shared_client
from chatcore.plugins.redis.presence import DEFAULT_NODE_TIMEOUT, GONE_REASON, Presence
from chatcore.plugins.redis.publisher import Publisher
from chatcore.plugins.redis.reader import DEFAULT_CHECK_INTERVAL, Reader
from chatcore.plugins.redis.scripts import Keys

if TYPE_CHECKING:
    from chatcore.engine.server import ChatServer

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_NODE_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "FORMAT_VERSION",
    "GONE_REASON",
    "Arrivals",
    "Cluster",
    "ClusterCollector",
    "Cursor",
    "Invalid",
    "Keys",
    "Presence",
    "Publisher",
    "Reader",
    "RedisBackplane",
    "Start",
    "Target",
    "checked",
    "connect",
    "decode_event",
    "decode_moderation",
    "decode_private",
    "encode_event",
    "encode_moderation",
    "encode_private",
    "redacted",
    "shared_client",
]

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

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: A primary's name as the Sentinels know it (``sentinel monitor NAME ...``).
_MASTER_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
#: One Sentinel: HOST:PORT, an IPv6 host in brackets.
_SENTINEL = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})")


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
        "--redis-sentinel",
        metavar="HOST:PORT[,HOST:PORT...]",
        help=(
            "follow a Sentinel-managed primary: ask these Sentinels where it is, at every (re)connection, "
            "so the links follow a failover; --redis-url's host and port are then unused, its scheme, "
            "password and database still apply to the primary (default: not used)"
        ),
    )
    add(
        "--redis-sentinel-master",
        metavar="NAME",
        help="the primary's name as the Sentinels know it (sentinel monitor NAME ...); needed with --redis-sentinel",
    )
    secret(
        add(
            "--redis-sentinel-password",
            metavar="PASSWORD",
            help=(
                "the Sentinels' own password (their requirepass), if they have one; give it through "
                "CHATCORE_REDIS_SENTINEL_PASSWORD or the config file, not the command line"
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
        "--redis-min-replicas",
        type=whole_number(0, 16),
        default=0,
        metavar="N",
        help=(
            "count an event as shared only once N replicas of the primary have it (Redis's WAIT): a "
            "switchover (SENTINEL FAILOVER) with the old primary alive then loses nothing; while fewer "
            "than N replicas answer, events wait (up to --redis-max-pending) (default: %(default)s, "
            "shared once the primary has it)"
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
    target = _target(options)
    if not _CLUSTER_NAME.fullmatch(options.redis_cluster):
        raise UsageError(
            f"--redis-cluster: {options.redis_cluster!r} is not a valid name; "
            "use 1 to 64 letters, digits, '_', '-' or '.'"
        )
    config.data[NAME] = Cluster(
        target,
        options.redis_cluster,
        stream_length=options.redis_stream_length,
        max_pending=options.redis_max_pending,
        timeout=options.redis_timeout,
        check_interval=options.redis_check_interval,
        node_timeout=options.redis_node_timeout,
        min_replicas=options.redis_min_replicas,
    )


def _target(options: argparse.Namespace) -> Target:
    """Where the primary is, from --redis-url and the --redis-sentinel options."""
    if options.redis_sentinel is None:
        for name in ("redis_sentinel_master", "redis_sentinel_password"):
            if getattr(options, name) is not None:
                option = "--" + name.replace("_", "-")
                raise UsageError(f"{option} is for a Sentinel-managed primary: give --redis-sentinel too")
        return Target(options.redis_url)
    text = options.redis_sentinel
    if "@" in text:
        # Not echoed: it may hold a password.
        raise UsageError(
            "--redis-sentinel takes HOST:PORT[,HOST:PORT...] only; "
            "give the Sentinels' password with --redis-sentinel-password"
        )
    sentinels = []
    for item in text.split(","):
        match = _SENTINEL.fullmatch(item.strip())
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise UsageError(
                f"--redis-sentinel: {item.strip()!r} is not HOST:PORT (an IPv6 host in brackets: [::1]:26379)"
            )
        sentinels.append((match["v6"] or match["host"], int(match["port"])))
    master = options.redis_sentinel_master
    if master is None:
        raise UsageError(
            "--redis-sentinel needs --redis-sentinel-master NAME, the primary's name as the Sentinels know it"
        )
    if not _MASTER_NAME.fullmatch(master):
        raise UsageError(
            f"--redis-sentinel-master: {master!r:.80} is not a valid name; "
            "use 1 to 128 letters, digits, '_', '-', '.' or ':'"
        )
    if urllib.parse.urlsplit(options.redis_url).scheme == "unix":
        raise UsageError(
            "--redis-url: a unix:// socket cannot be used with --redis-sentinel (Sentinels give TCP addresses)"
        )
    return Target(options.redis_url, tuple(sentinels), master, options.redis_sentinel_password)


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
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cluster = self.cluster
        yield CounterMetricFamily(
            "chatcore_redis_invalid_entries_total",
            "Entries from the cluster (room streams, inboxes, presence) dropped as invalid.",
            value=cluster.invalid.count,
        )
        yield GaugeMetricFamily(
            "chatcore_redis_link_up",
            "1 while the link to the cluster's Redis works, 0 while it is down or not made yet.",
            value=1 if cluster.up else 0,
        )
        # A timestamp, not the time since: Prometheus' advice
        # (time() - chatcore_redis_last_exchange_timestamp_seconds is the age).
        yield GaugeMetricFamily(
            "chatcore_redis_last_exchange_timestamp_seconds",
            "When Redis last answered this server (Unix time; 0 if it never has).",
            value=cluster.last_exchange or 0.0,
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


def _cluster(server: ChatServer) -> Cluster:
    cluster: Cluster = server.config.data[NAME]
    return cluster
