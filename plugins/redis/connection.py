"""Connections to Redis for the redis plugin: one per thread, or a shared
blocking pool for the client threads; where the primary is (a URL, or the
Sentinels that know it); the reconnection backoff."""

from __future__ import annotations

import threading
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis as redis_py
    from redis.sentinel import Sentinel

#: How long a Redis command may take before the link counts as down
#: (--redis-timeout): what bounds how long a half-open link goes unnoticed.
#: The reader's socket timeout is this plus its blocking wait, so blocking
#: reads never hit it (redis-py 8's default socket timeout of 5 s would break
#: blocking reads longer than that).
DEFAULT_TIMEOUT = 3.0
#: Reconnection backoff: from the first to the last value, doubling.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
#: Connections for the client threads' own requests (nick claims, /who,
#: /msg): a blocking pool waits for a free one (at most --redis-timeout)
#: where redis-py's default pool would open one per thread, or raise once
#: it has max_connections.
SHARED_CONNECTIONS = 8

#: How replies that are not UTF-8 are decoded: bytes written by anyone but a
#: chatcore server must not make every later read fail (redis-py's default,
#: "strict", raises on the whole reply, and the reader would read it again
#: and again); they become U+FFFD, and the entry's check drops it if needed.
ENCODING_ERRORS = "replace"


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    # Defends against leaking the Redis password into logs or error output.
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Target:
    """Where the cluster's Redis primary is: the host and port of
    ``--redis-url``, or, with ``--redis-sentinel``, wherever the Sentinels
    say the primary named ``master`` is now.

    Under Sentinel every new connection asks the Sentinels first, so a link
    made again after a failover (the old primary dead, or demoted: redis-py
    turns its ``READONLY`` refusals and the replica's unblocking of a
    blocking read into a ``ConnectionError``) goes to the promoted replica.
    A link made before the failover stays on a live old primary until it is
    demoted (docs/scaling.md, "A primary demoted while alive":
    ``--redis-min-replicas`` makes that safe).
    The URL's scheme (TLS), user, password and database still apply to the
    primary. Thread-safe: the three threads and the client threads share one.
    """

    def __init__(
        self,
        url: str,
        sentinels: tuple[tuple[str, int], ...] = (),
        master: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.url = url
        self.sentinels = sentinels
        self.master = master
        self.sentinel_password = sentinel_password
        self._sentinel: Sentinel | None = None
        self._lock = threading.Lock()

    def __str__(self) -> str:
        """For logs: never a password."""
        if not self.sentinels:
            return redacted(self.url)
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        return f"the primary {self.master!r} of the Sentinels {hosts} ({redacted(self.url)}, host and port unused)"

    def _manager(self, timeout: float) -> Sentinel:
        """The Sentinels' clients, made once (their own small pools)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        from redis.sentinel import Sentinel

        with self._lock:
            if self._sentinel is None:
                options: dict[str, Any] = {
                    "socket_timeout": timeout,
                    "socket_connect_timeout": timeout,
                    "retry": Retry(NoBackoff(), 0),
                    "protocol": 2,
                }
                if self.sentinel_password is not None:
                    options["password"] = self.sentinel_password
                self._sentinel = Sentinel(list(self.sentinels), sentinel_kwargs=options)
            return self._sentinel

    def _sentinel_pool(self, pool_class: type[Any], ask_timeout: float, /, **options: Any) -> Any:
        """A pool whose connections find the primary through the Sentinels."""
        from redis import connection as redis_connection

        parse_url: Any = redis_connection.parse_url  # untyped in redis-py
        primary: dict[str, Any] = parse_url(self.url)
        for unused in ("host", "port", "path", "connection_class"):
            primary.pop(unused, None)
        if urllib.parse.urlsplit(self.url).scheme == "rediss":
            primary["ssl"] = True  # SentinelConnectionPool picks its TLS connection class
        return pool_class(self.master, self._manager(ask_timeout), is_master=True, **primary, **options)

    def close(self) -> None:
        with self._lock:
            sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                close(client)


def _blocking_sentinel_pool() -> type[Any]:
    """redis-py's Sentinel pool, blocking as :class:`BlockingConnectionPool`
    does (it has no such class of its own): the Sentinel pool's ``__init__``
    passes the rest of its arguments on, and the blocking pool takes them."""
    from redis import BlockingConnectionPool
    from redis.sentinel import SentinelConnectionPool

    return type("SentinelBlockingConnectionPool", (SentinelConnectionPool, BlockingConnectionPool), {})


def _link_options(timeout: float, name: str) -> dict[str, Any]:
    """What every link of the plugin is made with, whichever way it finds
    the primary.

    No redis-py retries: the plugin retries itself, in order and without
    duplicates, and a blind retry of a non-idempotent command could add an
    event twice.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
        "encoding_errors": ENCODING_ERRORS,
        "protocol": 2,  # the replies' shapes the plugin reads are RESP2's
        "client_name": name,
    }


def connect(target: str | Target, *, timeout: float, name: str) -> redis_py.Redis:
    """A client with one connection of its own, for one thread."""
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = _link_options(timeout, name)
    if isinstance(target, Target) and target.sentinels:
        from redis.sentinel import SentinelConnectionPool

        pool = target._sentinel_pool(SentinelConnectionPool, timeout, **options)
        # close() below closes the pool too: this client is its only user.
        return redis_py.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0), single_connection_client=True)
    url = target.url if isinstance(target, Target) else target
    return redis_py.Redis.from_url(url, single_connection_client=True, **options)


def shared_client(target: str | Target, *, timeout: float, name: str) -> redis_py.Redis:
    """A client for many threads: a blocking pool of a few connections."""
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # A blocking pool waits for a free connection (at most ``timeout``).
    options = _link_options(timeout, name) | {"max_connections": SHARED_CONNECTIONS, "timeout": timeout}
    if isinstance(target, Target) and target.sentinels:
        pool = target._sentinel_pool(_blocking_sentinel_pool(), timeout, **options)
    else:
        url = target.url if isinstance(target, Target) else target
        pool = redis_py.BlockingConnectionPool.from_url(url, **options)
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


def close(client: redis_py.Redis | None) -> None:
    """Close ``client`` and its pool's connections (a pool handed to
    ``Redis()`` is not closed with it)."""
    if client is not None:
        try:
            client.close()
            client.connection_pool.disconnect()
        except Exception:
            pass
