"""The state store: what outlives a connection and a restart.

Accounts, registered rooms, and whatever else a plugin keeps for good live
in one store, reached as :attr:`ChatServer.store
<chatcore.engine.server.ChatServer.store>`. It is small on purpose: records
(JSON-able dicts) by *kind* and *key*, with an atomic create-if-absent, so
that two people registering the same name at the same instant, on one
server or on two of a cluster, cannot both get it.

- :class:`Store` is the interface, and an in-memory store (for tests, and
  for a plugin author trying things).
- :class:`SQLiteStore` is the default: one file (``--state-db``), WAL, its
  schema versioned and migrated on opening; a file that is damaged, is not
  chatcore's, or was written by a newer chatcore is refused with a message
  that says what to do, and never written to.
- A cluster plugin gives every server one shared store through
  :meth:`Backplane.state_store <chatcore.engine.backplane.Backplane.state_store>`
  (the bundled ``redis`` plugin's keeps records in Redis hashes).

Keys are exact strings: a caller that wants names to ignore case (accounts
do) folds them itself. Every method is thread-safe and may be called from
any client's thread, concurrently; a store that cannot answer (Redis
unreachable) raises :class:`StoreError`, which the caller turns into a
"try again later" for its client.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from typing import Any

from chatcore.errors import UsageError

log = logging.getLogger("chatcore.store")

#: The default ``--state-db``: in the working directory, beside the event log.
DEFAULT_PATH = "chatcore-state.db"
#: The schema this chatcore writes; :data:`MIGRATIONS` brings older files up to it.
SCHEMA_VERSION = 1
#: Seconds a writer waits for another process's lock before the call fails.
BUSY_TIMEOUT = 5.0

Record = dict[str, Any]


class StoreError(Exception):
    """The store cannot answer now (a cluster's store unreachable, a disk
    full): the change was not made; the caller tells its client to try again."""


class Store:
    """Records by kind and key, in memory: the interface, and the store of
    tests and experiments (gone at a restart).

    Subclasses override every method; each says what it promises.
    """

    #: A short name for logs.
    name = "memory"

    def __init__(self) -> None:
        self._records: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, key: str) -> Record | None:
        """The record of ``kind`` under ``key``, or None."""
        with self._lock:
            text = self._records.get(kind, {}).get(key)
        return None if text is None else _decode(text)

    def put(self, kind: str, key: str, record: Record) -> None:
        """Write ``record`` under ``key``, replacing what was there."""
        text = _encode(record)
        with self._lock:
            self._records.setdefault(kind, {})[key] = text

    def create(self, kind: str, key: str, record: Record) -> bool:
        """Write ``record`` under ``key`` only if there is none yet, as one
        atomic step (across a cluster too): True if written, False if taken."""
        text = _encode(record)
        with self._lock:
            records = self._records.setdefault(kind, {})
            if key in records:
                return False
            records[key] = text
            return True

    def delete(self, kind: str, key: str) -> bool:
        """Remove the record under ``key``: True if there was one."""
        with self._lock:
            return self._records.get(kind, {}).pop(key, None) is not None

    def records(self, kind: str) -> dict[str, Record]:
        """Every record of ``kind``, by key (for operators' lists: not for every message)."""
        with self._lock:
            texts = dict(self._records.get(kind, {}))
        return {key: _decode(text) for key, text in texts.items()}

    def close(self) -> None:
        """Let go of files and connections; the server calls it when it stops."""


def _encode(record: Record) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def _decode(text: str) -> Record:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StoreError(f"a stored record is not an object: {text[:60]!r}")
    return value


# Each migration takes the database from the version before it to its own.
# Version 1: the records table. A later version appends its step here; a
# file is migrated in one transaction, so a crash leaves the old version.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE chatcore_records ("
        " kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
        " PRIMARY KEY (kind, key)) WITHOUT ROWID",
    ],
}
_TABLES = {"chatcore_records"}


class SQLiteStore(Store):
    """The default store: one SQLite file, shared by the server's threads.

    One connection, used under a lock: the store is read and written when
    people register, log in and change rooms' registrations, never per
    message, and SQLite serialises writers anyway. WAL lets another process
    (a backup, ``sqlite3`` for a look) read while the server writes.
    """

    name = "sqlite"

    def __init__(self, path: str, db: sqlite3.Connection) -> None:
        super().__init__()
        self.path = path
        self._db = db

    @classmethod
    def open(cls, path: str) -> SQLiteStore:
        """Open ``path``, creating it on first start and migrating an older
        schema.

        :raises UsageError: the file cannot be opened, is damaged, is not a
            chatcore state database, or was written by a newer chatcore. The
            file is left as it was: a state database holds people's accounts,
            and no error of ours may cost them.
        """

        def refuse(problem: str) -> UsageError:
            return UsageError(f"--state-db {path}: {problem}")

        if os.path.isdir(path):
            raise refuse("is a folder; give the path of a file (it is created on first start)")
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise refuse(f"cannot open it ({exc}); check the path and its permissions") from None
        try:
            cls._prepare(db, refuse)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise refuse(
                f"is damaged or not a database ({exc}); it was left untouched: restore it from a backup, "
                "or move it away to start with an empty one (every account in it would be lost)"
            ) from None
        except BaseException:
            db.close()
            raise
        return cls(path, db)

    @staticmethod
    def _prepare(db: sqlite3.Connection, refuse: Any) -> None:
        """Check the file, then migrate it: nothing is written to a file
        that fails a check."""
        (status,) = db.execute("PRAGMA quick_check").fetchone()
        if status != "ok":
            raise sqlite3.DatabaseError(f"quick_check says: {status}")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version > SCHEMA_VERSION:
            raise refuse(
                f"was written by a newer chatcore (state schema {version}; this one knows up to "
                f"{SCHEMA_VERSION}); it was left untouched: upgrade chatcore, or give another --state-db"
            )
        if version == 0 and tables:
            raise refuse(
                f"is a SQLite database but not a chatcore state database (it has tables {sorted(tables)}); "
                "it was left untouched: give another --state-db"
            )
        if version > 0 and not tables >= _TABLES:
            raise sqlite3.DatabaseError(f"schema {version} without its tables {sorted(_TABLES - tables)}")
        if version < SCHEMA_VERSION:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step]:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if version:
                log.warning("state database migrated from schema %d to %d", version, SCHEMA_VERSION)
        else:
            db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL: a power cut may lose the last moments, never the file.
        db.execute("PRAGMA synchronous=NORMAL")

    def _run(self, sql: str, arguments: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, arguments)
        except sqlite3.Error as exc:
            raise StoreError(f"the state database {self.path} failed: {exc}") from exc

    def get(self, kind: str, key: str) -> Record | None:
        with self._lock:
            row = self._run("SELECT value FROM chatcore_records WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else _decode(row[0])

    def put(self, kind: str, key: str, record: Record) -> None:
        text = _encode(record)
        with self._lock:
            self._run("INSERT OR REPLACE INTO chatcore_records (kind, key, value) VALUES (?, ?, ?)", (kind, key, text))

    def create(self, kind: str, key: str, record: Record) -> bool:
        text = _encode(record)
        with self._lock:
            cursor = self._run(
                "INSERT OR IGNORE INTO chatcore_records (kind, key, value) VALUES (?, ?, ?)", (kind, key, text)
            )
            return cursor.rowcount == 1

    def delete(self, kind: str, key: str) -> bool:
        with self._lock:
            return self._run("DELETE FROM chatcore_records WHERE kind = ? AND key = ?", (kind, key)).rowcount == 1

    def records(self, kind: str) -> dict[str, Record]:
        with self._lock:
            rows = self._run("SELECT key, value FROM chatcore_records WHERE kind = ?", (kind,)).fetchall()
        return {key: _decode(value) for key, value in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
