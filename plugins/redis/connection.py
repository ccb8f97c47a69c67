"""Connections to Redis for the redis plugin: one per thread, or a shared
blocking pool for the client threads; the reconnection backoff."""

from __future__ import annotations

import threading
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis as redis_py

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


def close(client: redis_py.Redis | None) -> None:
    if client is not None:
        try:
            client.close()
        except Exception:
            pass
