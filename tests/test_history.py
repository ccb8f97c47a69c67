"""The history plugin: replay in memory and from SQLite, and bad database files."""

from __future__ import annotations

import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chatcore import UsageError
from chatcore.config import parse_config
from chatcore.engine.server import ChatServer
from chatcore.events import Chat
from chatcore.plugins import history
from chatcore.testing import ClientFactory, LineClient, wait_for

LISTENING = re.compile(r"listening on tcp://127\.0\.0\.1:(\d+) ")


def named(chat_client: ClientFactory, server: ChatServer, nick: str) -> LineClient:
    client = chat_client(server)
    client.send(f"/nick {nick}")
    client.expect(f"* you are now known as {nick}")
    return client


def replayed(client: LineClient) -> list[str]:
    """The history header and replayed lines among what ``client`` got."""
    return [line for line in client.received if line.startswith(("# ", "* last "))]


def stored(path: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT room, kind, nick, text FROM chatcore_history ORDER BY id").fetchall()
    db.close()
    return rows


def test_replay_on_connect_chat_and_actions_only(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "welcome,history")
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    alice.send("hi")
    alice.send("/me waves")
    alice.send("/msg bob a secret")  # private: never kept
    bob.expect("*alice* a secret")
    carol = chat_client(server)
    # After the welcome, before anything live.
    assert carol.received[0].startswith("* Welcome to chatcore")
    assert carol.received[1:] == ["* last 2 messages in lobby:", "# <alice> hi", "# * alice waves", "* pong"]


def test_nothing_to_replay_sends_nothing(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "history")
    alice = chat_client(server)
    assert replayed(alice) == []
    alice.send("/join dev")
    assert alice.sync() == ["* you are now in dev (1 here)"]


def test_keeps_the_last_n_lines_per_room(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "history", "--history-lines", "3")
    alice = named(chat_client, server, "alice")
    for number in range(5):
        alice.send(f"line {number}")
    alice.sync()
    bob = chat_client(server)
    assert replayed(bob) == ["* last 3 messages in lobby:", "# <alice> line 2", "# <alice> line 3", "# <alice> line 4"]


def test_replay_on_join_is_per_room(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "history")
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    named(chat_client, server, "carol")  # stays: a room nobody is in keeps no history in memory
    alice.send("/join dev")
    alice.expect("* you are now in dev (1 here)")
    alice.send("/part lobby")
    alice.expect("* you left lobby; you now talk in dev")
    alice.send("in dev")
    bob.send("in the lobby")
    alice.sync()
    bob.sync()
    bob.send("/join dev")
    assert bob.sync() == ["* you are now in dev (2 here)", "* last 1 message in dev:", "# <alice> in dev"]
    alice.expect("* bob joined")
    alice.send("/join lobby")
    assert alice.sync() == ["* you are now in lobby (3 here)", "* last 1 message in lobby:", "# <bob> in the lobby"]


def test_history_keeps_what_the_filters_delivered(chat_server_factory, chat_client):
    server = chat_server_factory(
        "--plugins", "filters,history", "--banned-words", "darn,heck", "--banned-action", "mask"
    )
    alice = named(chat_client, server, "alice")
    alice.send("darn it")
    alice.sync()
    bob = chat_client(server)
    assert replayed(bob) == ["* last 1 message in lobby:", "# <alice> **** it"]


def test_sqlite_history_survives_a_restart(chat_server_factory, chat_client, tmp_path):
    db = tmp_path / "history.sqlite"
    args = ("--plugins", "history", "--history-lines", "3", "--history-db", str(db))
    first = chat_server_factory(*args)
    alice = named(chat_client, first, "alice")
    bob = named(chat_client, first, "bob")
    for number in range(4):
        alice.send(f"lobby {number}")
    alice.send("/msg bob not for the record")
    bob.send("/join dev")
    bob.expect("* you are now in dev (1 here)")
    bob.send("/me codes")
    bob.sync()
    alice.sync()
    first.stop()  # the writer saves everything before it returns
    # Two clients' threads: the order between the rooms is not fixed.
    rows = stored(db)
    assert [row for row in rows if row[0] == "lobby"] == [
        ("lobby", "chat", "alice", "lobby 1"),
        ("lobby", "chat", "alice", "lobby 2"),
        ("lobby", "chat", "alice", "lobby 3"),
    ]
    assert [row for row in rows if row[0] != "lobby"] == [("dev", "action", "bob", "codes")]

    second = chat_server_factory(*args)
    carol = chat_client(second)
    assert replayed(carol) == [
        "* last 3 messages in lobby:",
        "# <alice> lobby 1",
        "# <alice> lobby 2",
        "# <alice> lobby 3",
    ]
    carol.send("/join dev")
    assert carol.sync() == ["* you are now in dev (1 here)", "* last 1 message in dev:", "# * bob codes"]
    # New lines go on top of the loaded ones, and the trim still holds.
    carol.send("still here")
    carol.sync()
    second.stop()
    assert [row for row in stored(db) if row[0] == "dev"] == [
        ("dev", "action", "bob", "codes"),
        ("dev", "chat", "guest-1", "still here"),
    ]


def _serve(*args: str) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    """``chatcore serve --port 0 ARGS`` as a process; waits for its address."""
    process = subprocess.Popen(
        [sys.executable, "-m", "chatcore", "serve", "--port", "0", "--log-level", "WARNING", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 20)
    line = process.stdout.readline() if ready else ""
    match = LISTENING.search(line)
    if match is None:
        process.kill()
        _, stderr = process.communicate(timeout=10)
        raise AssertionError(f"server did not start: {line!r} {stderr!r}")
    return process, ("127.0.0.1", int(match.group(1)))


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    return stderr


def test_history_survives_a_restart_of_the_process(tmp_path):
    db = tmp_path / "history.sqlite"
    args = ("--plugins", "welcome,logger,filters,history", "--log-file", str(tmp_path / "events.jsonl"))
    args += ("--banned-words", "darn", "--history-db", str(db))
    process, address = _serve(*args)
    try:
        alice, bob = LineClient(address), LineClient(address)
        bob.send("/nick bob")
        bob.expect("* you are now known as bob")
        alice.send("/nick alice")
        alice.send("darn, it works")
        alice.send("/msg bob between us")
        bob.expect("<alice> ****, it works")
        bob.expect("*alice* between us")
        alice.sync()
        alice.close()
        bob.close()
    finally:
        stderr = _stop(process)
    assert "Traceback" not in stderr

    process, address = _serve(*args)
    try:
        carol = LineClient(address)
        carol.sync()
        assert replayed(carol) == ["* last 1 message in lobby:", "# <alice> ****, it works"]
        carol.close()
    finally:
        stderr = _stop(process)
    assert "Traceback" not in stderr


def test_a_locked_database_while_chatting_is_retried(chat_server_factory, chat_client, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(history, "OPEN_TIMEOUT", 0.05)
    monkeypatch.setattr(history, "RETRY_DELAY", 0.05)
    db = tmp_path / "history.sqlite"
    server = chat_server_factory("--plugins", "history", "--history-db", str(db))
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        alice.send("while locked")
        bob.expect("<alice> while locked")  # the chat goes on
        wait_for(lambda: "cannot write" in caplog.text, message="the failed write to be logged")
        carol = chat_client(server)
        assert replayed(carol) == ["* last 1 message in lobby:", "# <alice> while locked"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_for(lambda: "works again" in caplog.text, message="the retried write")
    server.stop()
    assert stored(db) == [("lobby", "chat", "alice", "while locked")]


# -- bad database files: a clear error at start --------------------------------


def _damaged(tmp_path: Path) -> Path:
    path = tmp_path / "damaged.sqlite"
    path.write_bytes(b"this was never a database\n" * 200)
    return path


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE filler (data TEXT)")
        db.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(200).hex(),) for _ in range(200)])
    db.close()
    path.write_bytes(path.read_bytes()[:6000])
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "a-directory"
    path.mkdir()
    return path


def _newer(tmp_path: Path) -> Path:
    path = tmp_path / "newer.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    return path


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (_damaged, "not a usable SQLite database (file is not a database)"),
        (_truncated, "not a usable SQLite database (database disk image is malformed)"),
        (_directory, "cannot open it"),
        (_newer, "written by another version of chatcore (schema 99)"),
    ],
)
def test_bad_database_is_a_usage_error(tmp_path, make, error):
    path = make(tmp_path)
    with pytest.raises(UsageError, match=re.escape(f"--history-db {path}: {error}")):
        parse_config(["--plugins", "history", "--history-db", str(path)])


def test_locked_database_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(history, "OPEN_TIMEOUT", 0.05)
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(UsageError, match=r"the database is locked .*another chatcore server"):
            parse_config(["--plugins", "history", "--history-db", str(path)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_damaged_database_through_the_cli(tmp_path):
    path = _damaged(tmp_path)
    before = path.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--port", "0", "--plugins", "history", "--history-db", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"chatcore: error: --history-db {path}: not a usable SQLite database (file is not a database); "
        "move it away to start a new history\n"
    )
    assert path.read_bytes() == before  # nothing lost


@pytest.mark.parametrize("value", ["0", "10001", "many"])
def test_bad_history_lines(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--plugins", "history", "--history-lines", value])
    assert exit_info.value.code == 2
    assert "--history-lines" in capsys.readouterr().err


def test_an_emptied_rooms_history_leaves_memory_and_the_database_keeps_its_copy(
    chat_server_factory, chat_client, tmp_path
):
    memory_only = chat_server_factory("--plugins", "history")
    alice = named(chat_client, memory_only, "alice")
    alice.send("/join dev")
    alice.send("said in dev")
    alice.send("/part dev")
    alice.expect("* you left dev; you now talk in lobby")
    alice.sync()  # the room's history goes after alice is told: wait until the /part is done
    assert history._history(memory_only).bytes == 0  # dev is empty: its lines are gone
    alice.send("/join dev")
    assert alice.sync() == ["* you are now in dev (1 here)"]

    db = tmp_path / "history.sqlite"
    stored_too = chat_server_factory("--plugins", "history", "--history-db", str(db))
    bob = named(chat_client, stored_too, "bob")
    bob.send("/join dev")
    bob.send("said in dev")
    bob.send("/part dev")
    bob.expect("* you left dev; you now talk in lobby")
    bob.sync()
    assert "dev" not in history._history(stored_too)._rooms
    bob.send("/join dev")  # read back from the database, in order after the write
    assert bob.sync() == ["* you are now in dev (1 here)", "* last 1 message in dev:", "# <bob> said in dev"]


def test_history_is_bounded_in_total_in_memory_and_in_the_database(chat_server_factory, chat_client, tmp_path):
    db = tmp_path / "history.sqlite"
    server = chat_server_factory("--plugins", "history", "--history-db", str(db), "--history-max-bytes", "10000")
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")  # stays in the lobby: its history stays in memory
    text = "x" * 995  # 1000 bytes with the nick "alice"
    for room in ("one", "two", "three"):
        alice.send(f"/join {room}")
        for number in range(4):
            alice.send(f"{number}{text}")
        bob.send(f"{room}{text}")  # 1000 bytes with the nick "bob" and the room's name
        alice.sync()
        bob.sync()
    kept = history._history(server)
    assert kept.bytes <= 10000
    assert kept.replay("three")[-1].text.startswith("3")  # the newest stay
    server.stop()
    with sqlite3.connect(db) as connection:
        (total,) = connection.execute(
            "SELECT sum(length(CAST(nick AS BLOB)) + length(CAST(text AS BLOB))) FROM chatcore_history"
        ).fetchone()
        rooms = {room for (room,) in connection.execute("SELECT DISTINCT room FROM chatcore_history")}
    connection.close()
    assert 9000 <= total <= 10000
    assert "one" not in rooms  # the least recently active went first
    assert "three" in rooms


def test_since_says_incomplete_once_a_line_after_the_offset_left_memory():
    """A resume is complete only if nothing after its offset was dropped,
    by a room's limit or by the total budget (the review of issue 22: with
    the byte budget, a room trimmed to one line answered complete)."""
    kept_history = history.History(20, None, max_bytes=1000)
    for offset in range(1, 21):
        kept_history.add(Chat("board", "amy", f"board line {offset:02} " + "x" * 30, offset, "e1", 1.0))
    for offset in range(1, 21):  # the newer room's lines push the older room's out of the budget
        kept_history.add(Chat("lobby", "bob", f"lobby line {offset:02} " + "x" * 30, offset, "e2", 1.0))
    newer, complete = kept_history.since("board", "e1", 2)
    assert complete is False
    assert newer, "what is left is still given"
    assert all(event.offset > 2 for event in newer)
    kept = [event.offset for event in kept_history.replay("board")]
    assert kept_history.since("board", "e1", kept[0] - 1) == (kept_history.replay("board"), True)
    _, complete = kept_history.since("lobby", "e2", 0)
    assert complete is True  # nothing of lobby's left memory
    kept_history.forget("board")
    assert kept_history.since("board", "e1", 0) == ([], True)  # an emptied room is numbered anew
