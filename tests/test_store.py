"""The state store (chatcore.engine.store): SQLite by default, a cluster's
through the backplane, and the account service seam protocols log in through."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from redis_support import RedisServer

from chatcore import hookimpl
from chatcore.engine import store as store_module
from chatcore.engine.accounts import AccountService
from chatcore.engine.store import SQLiteStore, Store
from chatcore.errors import UsageError
from chatcore.plugins.redis.scripts import Keys
from chatcore.plugins.redis.store import RedisStore


def exercise(store: Store) -> None:
    """What every store promises."""
    assert store.get("account", "alice") is None
    assert store.create("account", "alice", {"name": "Alice", "n": 1})
    assert not store.create("account", "alice", {"name": "Mallory"})
    assert store.get("account", "alice") == {"name": "Alice", "n": 1}
    assert store.get("room", "alice") is None  # kinds are apart
    store.put("account", "alice", {"name": "Alice", "n": 2})
    store.put("account", "bob", {"name": "Bob"})
    assert store.records("account") == {"alice": {"name": "Alice", "n": 2}, "bob": {"name": "Bob"}}
    assert store.delete("account", "bob")
    assert not store.delete("account", "bob")
    assert store.records("account") == {"alice": {"name": "Alice", "n": 2}}


def race_for_one_name(store: Store) -> None:
    """Of many threads creating one key at once, exactly one gets it."""
    barrier = threading.Barrier(16)
    won: list[int] = []

    def attempt(number: int) -> None:
        barrier.wait()
        if store.create("account", "contested", {"by": number}):
            won.append(number)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert store.get("account", "contested") == {"by": won[0]}


def test_the_memory_store() -> None:
    exercise(Store())
    race_for_one_name(Store())


def test_sqlite_is_made_on_first_open_and_keeps_records_across_opens(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = SQLiteStore.open(path)
    exercise(store)
    race_for_one_name(store)
    store.close()
    again = SQLiteStore.open(path)
    assert again.get("account", "alice") == {"name": "Alice", "n": 2}
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA user_version").fetchone() == (store_module.SCHEMA_VERSION,)
    db.close()


def test_a_damaged_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database at all, but it is somebody's file\n" * 50)
    before = path.read_bytes()
    with pytest.raises(UsageError) as refused:
        SQLiteStore.open(str(path))
    message = str(refused.value)
    assert message.startswith(f"--state-db {path}: is damaged or not a database")
    assert "left untouched: restore it from a backup, or move it away" in message
    assert path.read_bytes() == before


def test_a_newer_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore.open(str(path)).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {store_module.SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(UsageError, match=r"written by a newer chatcore \(state schema 2; this one knows up to 1\)"):
        SQLiteStore.open(str(path))
    assert path.read_bytes() == before


def test_another_program_s_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(UsageError, match="not a chatcore state database"):
        SQLiteStore.open(str(path))
    with pytest.raises(UsageError, match="is a folder"):
        SQLiteStore.open(str(tmp_path))


def test_an_older_schema_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "state.db")
    SQLiteStore.open(path).close()
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(store_module.MIGRATIONS, 2, ["CREATE TABLE chatcore_extra (x TEXT)"])
    SQLiteStore.open(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM chatcore_extra").fetchone() == (0,)
    db.close()


def test_the_server_opens_its_store_at_start_once(chat_server_factory, tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    server = chat_server_factory("--state-db", str(path))
    assert path.exists()  # the opers plugin, always loaded, keeps the bans and mutes there
    server.store.put("note", "k", {"v": 1})
    assert server.store is server.store
    assert server.accounts is None  # no plugin keeps accounts


class FakeAccounts(AccountService):
    def log_in(self, client, account, password):  # type: ignore[no-untyped-def]
        client.account = account


def test_a_plugin_supplies_the_account_service(chat_server_factory, chat_client) -> None:
    service = FakeAccounts()

    class Plugin:
        @hookimpl
        def chatcore_account_service(self, server):  # type: ignore[no-untyped-def]
            return service

    server = chat_server_factory(plugins=[Plugin()])
    assert server.accounts is service
    client = chat_client(server)
    here = server.registry.find("guest-1")
    assert here.account == ""
    assert server.accounts.log_in(here, "alice", "x") is None
    assert here.account == "alice"
    client.send("/ping")
    client.expect("* pong")


@pytest.mark.slow
def test_the_redis_store_is_one_for_every_server(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    try:
        one = RedisStore(redis_server.url, Keys("store-test"), timeout=2, node="one")
        two = RedisStore(redis_server.url, Keys("store-test"), timeout=2, node="two")
        exercise(one)
        assert two.get("account", "alice") == {"name": "Alice", "n": 2}
        race_for_one_name(two)
        assert not one.create("account", "contested", {"by": -1})
        one.close()
        two.close()
    finally:
        redis_server.stop()


def test_a_plugin_keeps_a_room_s_state_for_its_first_member(chat_server_factory, chat_client) -> None:
    from chatcore.engine.rooms import RoomState

    class Plugin:
        @hookimpl
        def chatcore_room_state(self, server, room):  # type: ignore[no-untyped-def]
            if room != "kept":
                return None
            return RoomState("kept", topic="from the plugin", flags={"n", "t", "m"})

    server = chat_server_factory(plugins=[Plugin()])
    client = chat_client(server)
    client.send("/join kept")
    client.expect(lambda line: line.startswith("* you are now in kept"))
    state = server.rooms.get("kept")
    assert state.topic == "from the plugin"
    assert state.flags == {"n", "t", "m"}
    assert not state.is_operator("guest-1")  # a kept room's first member is not made its operator
    client.send("/join fresh")
    client.expect(lambda line: line.startswith("* you are now in fresh"))
    assert server.rooms.get("fresh").is_operator("guest-1")
