"""The bundled welcome and logger plugins."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatcore.testing import LineClient, ServerProcess, wait_for


def test_welcome_text_placeholders_and_lines(chat_server_factory, chat_client):
    server = chat_server_factory("--welcome-text", "Hi {nick}!\\nRoom {room} has {count}. {{braces}}")
    chat_client(server)
    bob = chat_client(server)
    assert bob.received[:2] == ["* Hi guest-2!", "* Room lobby has 2. {braces}"]


def test_default_welcome_text(chat_server, chat_client):
    alice = chat_client(chat_server)
    assert alice.received[0] == (
        "* Welcome to chatcore, guest-1! You are in lobby (1 here). Type /help for the commands."
    )


def test_no_welcome_without_the_plugin(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "")
    assert chat_client(server).received == ["* pong"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hi {name}", "bad placeholder {name}"),
        ("hi {nick.upper}", "bad placeholder {nick.upper}"),
        ("hi {room[0]}", "bad placeholder {room[0]}"),
        ("hi {0}", "bad placeholder {0}"),
        ("hi {nick", "expected '}' before end of string"),
    ],
)
def test_bad_welcome_placeholder_is_a_usage_error(text, problem):
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--welcome-text", text],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"chatcore: error: --welcome-text: {problem}; use {{nick}}"), result.stderr


def read_events(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_logger_writes_json_lines(chat_server_factory, chat_client, tmp_path):
    log_file = tmp_path / "events.jsonl"
    server = chat_server_factory("--plugins", "welcome,logger", "--log-file", str(log_file))
    alice, bob = chat_client(server), chat_client(server)
    alice.send('héllo "wörld" \\ ok')
    bob.expect('<guest-1> héllo "wörld" \\ ok')
    alice.sync()
    alice.send("/me waves")
    bob.expect("* guest-1 waves")
    alice.sync()  # alice's thread has logged the action too (it logs after delivering)
    bob.send("/quit")
    bob.wait_closed()
    alice.expect("* guest-2 left")
    # The leave notice goes out before the logger hook runs: wait for the line.
    wait_for(lambda: len(read_events(log_file)) == 5, message="five events in the log")
    server.stop()
    events = read_events(log_file)
    assert [(e["event"], e["nick"]) for e in events] == [
        ("join", "guest-1"),
        ("join", "guest-2"),
        ("chat", "guest-1"),
        ("action", "guest-1"),
        ("leave", "guest-2"),
        ("leave", "guest-1"),
    ]
    assert events[2] == {**events[2], "room": "lobby", "text": 'héllo "wörld" \\ ok', "recipients": 1}
    # Each record is written as json.dumps would write it, quotes and backslashes escaped.
    raw = log_file.read_text(encoding="utf-8").splitlines()
    assert raw[2] == json.dumps(events[2], ensure_ascii=False)
    assert events[4]["reason"] == "quit"
    assert events[5]["reason"] == "server shutting down"
    for event in events:
        when = datetime.datetime.fromisoformat(event["time"])
        assert when.tzinfo is not None


def test_logger_appends_and_flushes_while_running(chat_server_factory, chat_client, tmp_path):
    log_file = tmp_path / "events.jsonl"
    log_file.write_text('{"event": "earlier"}\n')
    server = chat_server_factory("--plugins", "logger", "--log-file", str(log_file))
    alice = chat_client(server)
    alice.send("/ping")
    wait_for(lambda: len(read_events(log_file)) == 2, message="the join to be flushed")
    assert read_events(log_file)[0] == {"event": "earlier"}


def test_logger_to_stdout():
    with ServerProcess("--plugins", "logger", "--log-file", "-") as server:
        client = LineClient(server.address)
        client.sync()
        client.close()
    assert server.returncode == 0
    lines = [json.loads(line) for line in server.stdout.splitlines()]  # "listening on" was read already
    assert [e["event"] for e in lines] == ["join", "leave"]


def test_logger_unwritable_file_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--plugins", "logger", "--log-file", str(tmp_path / "no" / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert re.fullmatch(r"chatcore: error: --log-file .*x: cannot open it for writing \(.+\)\n", result.stderr)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_logger_survives_a_file_it_cannot_write(chat_server_factory, chat_client, caplog):
    server = chat_server_factory("--plugins", "logger", "--log-file", "/dev/full")
    alice, bob = chat_client(server), chat_client(server)
    for n in range(3):
        alice.send(f"line {n}")
        bob.expect(f"<guest-1> line {n}")
    event_log = server.config.data["logger"]
    wait_for(lambda: event_log.lost >= 5, message="the events to be counted as lost")
    assert event_log._thread.is_alive()
    assert caplog.text.count("cannot write the event log") == 1


def test_logger_records_nick_changes_and_the_address(chat_server_factory, chat_client, tmp_path):
    """An audit trail: who came from where, under which names (issue 25)."""
    log_file = tmp_path / "events.jsonl"
    server = chat_server_factory("--plugins", "logger", "--log-file", str(log_file))
    alice = chat_client(server)
    bob = chat_client(server)
    alice.send("/nick deploybot")
    alice.expect("* you are now known as deploybot")
    bob.expect("* guest-1 is now known as deploybot")
    alice.send("done")
    bob.expect("<deploybot> done")
    alice.sync()
    wait_for(lambda: len(read_events(log_file)) == 4, message="four events in the log")
    events = read_events(log_file)
    address = alice.sock.getsockname()
    assert [e["event"] for e in events] == ["join", "join", "nick", "chat"]
    assert events[0]["nick"] == "guest-1"
    assert events[0]["address"] == f"{address[0]}:{address[1]}"
    assert events[2] == {**events[2], "nick": "guest-1", "new_nick": "deploybot", "room": "lobby"}
    assert events[2]["address"] == events[0]["address"]
    assert events[3]["nick"] == "deploybot"


def test_logger_records_room_operators_topics_modes_and_kicks(chat_server_factory, chat_client, tmp_path):
    """Who changed a room, and how: the audit trail of room operators (issue 24)."""
    log_file = tmp_path / "events.jsonl"
    server = chat_server_factory("--plugins", "logger", "--log-file", str(log_file))
    alice, bob = chat_client(server), chat_client(server)  # alice made the lobby: she runs it
    for line, answer in (
        ("/topic release on Friday", "* guest-1 set the topic: release on Friday"),
        ("/mode +m", "* guest-1 set mode +m"),
        ("/kick guest-2 off topic", "* guest-2 was kicked out by guest-1 (off topic)"),
    ):
        alice.send(line)
        alice.expect(answer)
    # Two joins, three acts, and the kicked one's leave.
    wait_for(lambda: len(read_events(log_file)) == 6, message="six events in the log")
    events = read_events(log_file)
    assert events[-1] == {**events[-1], "event": "leave", "nick": "guest-2", "room": "lobby"}
    acts = [(e["event"], e["nick"], e["room"], e["text"]) for e in events if e["event"] in ("topic", "mode", "kick")]
    assert acts == [
        ("topic", "guest-1", "lobby", "release on Friday"),
        ("mode", "guest-1", "lobby", "+m"),
        ("kick", "guest-1", "lobby", "guest-2: off topic"),
    ]
    bob.expect("* you were kicked out of lobby by guest-1 (off topic)")
