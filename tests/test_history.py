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

from chatcore import UsageError, hookimpl
from chatcore.config import parse_config
from chatcore.engine.history import HistoryService, Mark, Query, conversation
from chatcore.engine.history import select as select_events
from chatcore.engine.server import ChatServer
from chatcore.events import Chat, Joined
from chatcore.names import room_problem
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


def _said(count: int) -> list[Chat]:
    """``count`` lines of one room, one a second from time 100."""
    return [Chat("lobby", "amy", f"line {number}", number, "e1", 100.0 + number) for number in range(1, count + 1)]


def _texts(events) -> list[str]:
    return [event.text for event in events]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (Query("latest", 3), [8, 9, 10]),
        (Query("latest", 50, Mark("e1:7")), [8, 9, 10]),
        (Query("latest", 2, Mark(time=104.5)), [9, 10]),
        (Query("before", 3, Mark("e1:5")), [2, 3, 4]),
        (Query("before", 3, Mark("e1:2")), [1]),
        (Query("before", 2, Mark(time=105.0)), [3, 4]),  # a time's own line is not before it
        (Query("after", 3, Mark("e1:5")), [6, 7, 8]),
        (Query("after", 3, Mark(time=108.0)), [9, 10]),
        (Query("around", 3, Mark("e1:5")), [4, 5, 6]),
        (Query("around", 4, Mark("e1:1")), [1, 2, 3, 4]),
        (Query("around", 2, Mark(time=105.5)), [5, 6]),
        (Query("between", 10, Mark("e1:2"), Mark("e1:6")), [3, 4, 5]),
        (Query("between", 2, Mark("e1:2"), Mark("e1:6")), [3, 4]),  # the nearest the start
        (Query("between", 2, Mark("e1:6"), Mark("e1:2")), [4, 5]),  # backwards: still the nearest the start
        (Query("between", 10, Mark(time=103.0), Mark(time=106.0)), [4, 5]),
        (Query("before", 3, Mark("e1:99")), []),  # not kept: nothing
        (Query("before", 3, Mark("other:5")), []),
        (Query("latest", 0), []),
    ],
)
def test_select_answers_each_kind_of_query(query, expected):
    assert _texts(select_events(_said(10), query)) == [f"line {number}" for number in expected]


def test_conversations_are_named_the_same_whoever_asks():
    assert conversation("Bob", "alice") == conversation("alice", "bob") == "@alice,bob"
    assert room_problem(conversation("alice", "bob")) is not None  # never a room's name


def test_a_schema_1_database_is_migrated_and_keeps_its_lines(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE chatcore_history (id INTEGER PRIMARY KEY, room TEXT NOT NULL, time REAL NOT NULL, "
            "kind TEXT NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO chatcore_history (room, time, kind, nick, text) VALUES ('lobby', 5.0, 'chat', 'a', 'old')"
        )
        db.execute("PRAGMA user_version = 1")
    db.close()
    store = history.HistoryStore.open(str(path), 10)
    store.start()
    try:
        store.put(("lobby", 6.0, "chat", "b", "new", "e9", 4))
        assert store.read("lobby") == [
            ("lobby", 5.0, "chat", "a", "old", "", 0),  # from before message IDs: none
            ("lobby", 6.0, "chat", "b", "new", "e9", 4),
        ]
        assert store.latest("lob", 5) == [("lobby", 6.0)]  # the targets and the time of their latest line
        assert store.latest("@", 5) == []
    finally:
        store.stop()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
    db.close()


def test_per_room_retention_and_the_replay_stays_short(chat_server_factory, chat_client, tmp_path):
    db = tmp_path / "history.sqlite"
    server = chat_server_factory(
        "--plugins", "history", "--history-lines", "2", "--history-room-lines", "news=6", "--history-db", str(db)
    )
    alice = named(chat_client, server, "alice")
    alice.send("/join news")
    for number in range(8):
        alice.send(f"news {number}")
    alice.send("/join lobby")
    for number in range(4):
        alice.send(f"lobby {number}")
    alice.sync()
    kept = history._history(server)
    assert _texts(kept.replay("news")) == [f"news {number}" for number in range(2, 8)]
    assert _texts(kept.replay("lobby")) == ["lobby 2", "lobby 3"]
    bob = named(chat_client, server, "bob")
    bob.send("/join news")
    assert bob.sync()[1:] == ["* last 2 messages in news:", "# <alice> news 6", "# <alice> news 7"]
    server.stop()
    assert [row[3] for row in stored(db) if row[0] == "news"] == [f"news {number}" for number in range(2, 8)]


@pytest.mark.parametrize("value", ["news", "news=0", "=5", "bad room=3"])
def test_bad_history_room_lines(value, capsys):
    with pytest.raises(SystemExit):
        parse_config(["--plugins", "history", "--history-room-lines", value])
    assert "--history-room-lines" in capsys.readouterr().err


def test_the_history_command_shows_a_rooms_last_lines(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "history", "--history-lines", "5", "--history-room-lines", "lobby=50")
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    for number in range(30):
        alice.send(f"line {number}")
    alice.sync()  # alice's thread has recorded each of her lines before it answers her ping
    bob.expect("<alice> line 29")
    bob.send("/history 3")
    assert bob.sync() == ["* last 3 messages in lobby:", "# <alice> line 27", "# <alice> line 28", "# <alice> line 29"]
    bob.send("/history lobby")  # 20 unless told
    assert bob.sync()[:2] == ["* last 20 messages in lobby:", "# <alice> line 10"]
    bob.send("/history LOBBY 40")
    assert bob.sync()[0] == "* last 30 messages in lobby:"
    bob.send("/join dev")
    bob.send("/history")
    assert bob.sync() == ["* you are now in dev (1 here)", "* no history kept for dev"]
    carol = named(chat_client, server, "carol")
    carol.send("/part lobby")
    carol.send("/history lobby 2")  # not a member: refused
    assert carol.sync()[-1] == "! you are not in lobby; join it to read its history"
    carol.send("/history lobby dev 2")
    assert carol.sync() == ["! usage: /history [ROOM|@NICK] [N]"]
    carol.send("/history @")  # no nick after the @: how to ask, not "no such nick ''"
    assert carol.sync() == ["! usage: /history [ROOM|@NICK] [N]"]
    bob.send("/history \u00b3")  # a digit to str.isdigit(), not to int(): a room's name here, not a crash
    assert bob.sync()[-1] == "! you are not in \u00b3; join it to read its history"


def test_a_plugin_supplies_the_history_service(chat_server_factory, chat_client):
    class Answers(HistoryService):
        def query(self, client, target, query):  # type: ignore[no-untyped-def]
            return [Chat(target, "oracle", f"{query.kind} {query.limit}", 1, "e", 1.0)]

    class Plugin:
        @hookimpl(tryfirst=True)
        def chatcore_history_service(self, server):  # type: ignore[no-untyped-def]
            return Answers()

    server = chat_server_factory("--plugins", "history", plugins=[Plugin()])
    assert isinstance(server.history, Answers)
    alice = chat_client(server)
    alice.send("/history 5")  # the history plugin's command asks the service, whoever supplies it
    assert alice.sync() == ["* last 1 message in lobby:", "# <oracle> latest 5"]
    assert chat_server_factory().history is None  # no history plugin: no service


def test_private_lines_between_two_accounts_are_kept_for_both(chat_server_factory, chat_client, tmp_path):
    server = chat_server_factory("--plugins", "accounts,history", "--state-db", str(tmp_path / "state.db"))
    alice, bob, carol = (named(chat_client, server, nick) for nick in ("alice", "bob", "carol"))
    for client, nick in ((alice, "alice"), (bob, "bob")):
        client.send("/register correct-horse")
        client.expect(f"* registered the account {nick}; you are logged in to it (later: /login {nick} PASSWORD)")
    alice.send("/msg bob are you there?")
    bob.expect("*alice* are you there?")
    alice.sync()  # kept once alice's thread is done with it (after bob has it)
    bob.send("/msg alice yes")
    alice.expect("*bob* yes")
    bob.send("in the lobby")
    alice.expect("<bob> in the lobby")
    carol.send("/msg bob a guest's line")  # carol has no account: kept for bob alone
    bob.expect("*carol* a guest's line")
    bob.sync()
    bob.send("/history @alice")
    assert bob.sync()[-3:] == ["* last 2 messages in @alice:", "# <alice> are you there?", "# <bob> yes"]
    alice.send("/history @BOB 1")
    assert alice.sync() == ["* last 1 message in @bob:", "# <bob> yes"]
    carol.send("/history @bob")
    assert carol.sync()[-1] == "! private history is kept for logged-in accounts only; log in to read it"
    bob.send("/history @carol")
    assert bob.sync()[-2:] == ["* last 1 message in @carol:", "# <carol> a guest's line"]
    service = server.history
    bob_here = server.registry.find("bob")
    assert [target for target, _ in service.targets(bob_here, 0, 2e9, 10)] == ["@alice", "lobby", "@carol"]
    assert [target for target, _ in service.targets(bob_here, 2e9, 0, 1)] == ["@carol"]  # counted from the start
    assert service.targets(bob_here, 0, 1, 10) == []  # nothing said then
    first, second = service.query(bob_here, "@alice", Query("latest", 5))
    assert first.msgid
    assert first.msgid != second.msgid
    assert [event.text for event in service.query(bob_here, "@alice", Query("after", 5, Mark(first.msgid)))] == ["yes"]


def test_a_replay_from_the_cluster_adds_the_lines_said_here_on_their_way_to_it():
    """A line said on this server a moment ago may not be in the cluster's
    history yet: the replay adds it, once (found by
    tests/faults/test_fault_reconnect.py: a client entering in that moment
    got it neither live nor replayed)."""
    shared = [Chat("dev", "alice", "one", 1, "r", 10.0), Chat("dev", "bob", "two", 2, "r", 11.0)]
    said_here = Chat("dev", "carol", "three", 7, "l", 12.0)
    relayed = Chat("dev", "bob", "two", 5, "l", 11.0, origin="r:2")  # the cluster's "two", kept here too
    old = Chat("dev", "dave", "long ago", 1, "l", 1.0)  # older than what the cluster gives: not added
    merged = history.for_replay(shared, [old, relayed, said_here])
    assert [event.text for event in merged] == ["one", "two", "three"]
    assert history.for_replay(shared, []) == shared
    assert [event.text for event in history.for_replay([], [said_here])] == ["three"]


def test_a_replay_stops_where_the_clients_live_lines_begin():
    """Lines said after the client's Joined reach it live: the replay leaves
    them out, those said here and those of the cluster alike (found by
    tests/faults/test_fault_reconnect.py under load: lines said between the
    join and the replay's read came twice)."""
    joined = Joined("dev", "erin")
    joined.__dict__.update(epoch="l", offset=8, time=12.5)  # numbered as the server numbers it
    shared = [
        Chat("dev", "alice", "one", 1, "r", 10.0),
        Chat("dev", "bob", "two", 2, "r", 11.0),
        Chat("dev", "alice", "after, relayed here", 3, "r", 13.0),  # heard here after the join
        Chat("dev", "bob", "after, not read here yet", 4, "r", 13.5),  # in Redis, not delivered here yet
    ]
    local = [
        Chat("dev", "bob", "two", 5, "l", 11.0, origin="r:2"),
        Chat("dev", "carol", "before, on its way", 7, "l", 12.0),
        Chat("dev", "alice", "after, relayed here", 9, "l", 13.0, origin="r:3"),
        Chat("dev", "carol", "after, on its way", 10, "l", 14.0),
    ]
    merged = history.for_replay(shared, local, joined)
    assert [event.text for event in merged] == ["one", "two", "before, on its way"]
    # A query (CHATHISTORY, /history) has no join to stop at: all the cluster has, and what is on its way.
    assert [event.text for event in history.for_replay(shared, local)] == [
        "one", "two", "after, relayed here", "after, not read here yet", "before, on its way", "after, on its way"
    ]  # fmt: skip
    # A line stamped before the cluster's last one, and still on its way to it, is kept too.
    late = Chat("dev", "carol", "stamped early, sent late", 6, "l", 10.5)
    merged = history.for_replay(shared[:2], [late], joined)
    assert [event.text for event in merged] == ["one", "two", "stamped early, sent late"]
    # Without a cluster: this server's lines before the join.
    previous_run = Chat("dev", "dave", "yesterday", 40, "old", 1.0)
    assert [event.epoch for event in [previous_run, *local] if history.said_before(event, joined)] == ["old", "l", "l"]


def joiners_of_a_busy_room(server: ChatServer, room: str, joins: int) -> tuple[list[LineClient], list[LineClient]]:
    """Three senders talking in ``room`` (the lobby if ``""``) while
    ``joins`` clients enter it one after the other (``/nick jN``, then
    ``/join room``), threads switched every 10 µs (Python's default is
    5 ms, chatcore serve's 50) so that the server is preempted inside
    every window it has; :return: the senders and the joiners, synced."""
    import threading

    senders = [LineClient(server.address) for _ in range(3)]
    for number, sender in enumerate(senders):
        sender.send(f"/nick s{number}")
        sender.expect(f"* you are now known as s{number}")
        if room:
            sender.send(f"/join {room}")
            sender.expect(re.compile(rf"^\* you are now in {room} "))
    stop = threading.Event()

    def talk(sender: LineClient, number: int) -> None:
        count = 0
        while not stop.is_set() and count < 3000:
            sender.send(f"s{number} {count}")
            count += 1
            if count % 50 == 0:
                sender.sync()  # paced by the server, never flooding it

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    talkers = [threading.Thread(target=talk, args=(s, n), daemon=True) for n, s in enumerate(senders)]
    joiners: list[LineClient] = []
    try:
        for talker in talkers:
            talker.start()
        for number in range(joins):
            joiner = LineClient(server.address)
            joiners.append(joiner)
            joiner.send(f"/nick j{number}")
            if room:
                joiner.send(f"/join {room}")
            joiner.sync()
        stop.set()
        for talker in talkers:
            talker.join(30)
    finally:
        sys.setswitchinterval(previous)
    for client in senders + joiners:
        client.sync()
    return senders, joiners


def test_a_joiners_replay_and_live_lines_meet_exactly_under_preemption(chat_server_factory):
    """Every line said in the room reaches a client that enters it once:
    replayed if it was said before the client's join, live if after; never
    both, never neither; under preemption, so that a sender is preempted
    between numbering its line and appending it, and a history hook between
    the feed and the record: the two windows the fault suite's reconnect
    test hit under load."""
    server = chat_server_factory("--plugins", "history", "--history-lines", "5000")
    senders, joiners = joiners_of_a_busy_room(server, "", 15)
    for joiner in joiners:
        got = joiner.received  # every line it was sent, in order
        replayed = [line[2:] for line in got if line.startswith("# <s")]
        live = [line for line in got if line.startswith("<s")]
        assert not set(replayed) & set(live), "a line came replayed and live"
        for number in range(3):
            mine = [int(line.split()[-1]) for line in replayed + live if line.startswith(f"<s{number}> ")]
            if mine:
                assert mine == list(range(mine[0], mine[0] + len(mine))), f"s{number}'s lines with a hole or twice"
    for client in senders + joiners:
        client.close()


def test_a_client_entering_a_room_hears_its_own_join_before_the_rooms_lines(chat_server_factory):
    """A client that enters a busy room is told it is in (native: ``you are
    now in``; IRC: its JOIN) before any line of the room: a line said a
    moment after its join came first, before the client knew it was in the
    room (an IRC client drops a PRIVMSG to a channel it has not joined),
    and a script waiting for the join notice skipped it (the fault suite's
    reconnect test, once)."""
    server = chat_server_factory("--plugins", "history")
    senders, joiners = joiners_of_a_busy_room(server, "dev", 20)
    for joiner in joiners:
        got = joiner.received
        entered = next(i for i, line in enumerate(got) if line.startswith("* you are now in dev "))
        heard = [i for i, line in enumerate(got) if line.startswith("[dev] <s")]
        assert heard, "the joiner heard nothing of the room"
        assert heard[0] > entered, got[: entered + 1]
    for client in senders + joiners:
        client.close()
