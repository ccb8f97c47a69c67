"""The cluster's state store: accounts and registered rooms in Redis, so
that an account registered on one server logs in on every other.

Each kind of record is one Redis hash (``chatcore:CLUSTER:store:KIND``),
key -> the record as JSON. ``HSETNX`` is the atomic create-if-absent that
makes two servers registering one name at the same instant give it to
exactly one. Nothing here expires: this is what outlives every server.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from chatcore.engine.store import Store, StoreError
from chatcore.plugins.redis.connection import close, redacted, shared_client
from chatcore.plugins.redis.scripts import Keys

if TYPE_CHECKING:
    import redis as redis_py

Record = dict[str, Any]


class RedisStore(Store):
    """:class:`~chatcore.engine.store.Store` on the cluster's Redis, over a
    small pool of its own (client threads call it, concurrently)."""

    name = "redis"

    def __init__(self, url: str, keys: Keys, *, timeout: float, node: str) -> None:
        super().__init__()
        self.url = url
        self.path = f"{redacted(url)} (the cluster's)"
        self.keys = keys
        self._client: redis_py.Redis = shared_client(url, timeout=timeout, name=f"chatcore-{node}-store")

    def _call(self, what: str, *args: Any) -> Any:
        import redis as redis_py

        try:
            # redis-py's execute_command is untyped: called through Any.
            client: Any = self._client
            return client.execute_command(what, *args)
        except redis_py.RedisError as exc:
            raise StoreError(f"the cluster's store is unreachable ({exc}); nothing was changed") from exc

    def get(self, kind: str, key: str) -> Record | None:
        text = self._call("HGET", self.keys.store(kind), key)
        return None if text is None else _decode(text)

    def put(self, kind: str, key: str, record: Record) -> None:
        self._call("HSET", self.keys.store(kind), key, _encode(record))

    def create(self, kind: str, key: str, record: Record) -> bool:
        return bool(self._call("HSETNX", self.keys.store(kind), key, _encode(record)))

    def delete(self, kind: str, key: str) -> bool:
        return bool(self._call("HDEL", self.keys.store(kind), key))

    def records(self, kind: str) -> dict[str, Record]:
        found = self._call("HGETALL", self.keys.store(kind))
        # RESP2: a flat list of field, value, field, value ... (redis-py may give a dict)
        pairs = found.items() if isinstance(found, dict) else zip(found[::2], found[1::2], strict=True)
        return {key: _decode(text) for key, text in pairs}

    def close(self) -> None:
        close(self._client)


def _encode(record: Record) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def _decode(text: str) -> Record:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise StoreError(f"a record in the cluster's store is not chatcore's: {text[:60]!r}")
    return value
