"""Operators and bans (the opers plugin, always on), over real sockets."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time

import pytest

from chatcore.engine import auth, gate, store
from chatcore.engine.auth import hash_password, is_hash
from chatcore.plugins import opers
from chatcore.plugins.opers import operator_name, parse_duration
from chatcore.testing import LineClient, ServerProcess, wait_for

PASSWORD = "s3cret-oper"


@pytest.fixture
def opers_file(tmp_path):
    path = tmp_path / "opers"
    path.write_text(f"# the operators\n\nroot {hash_password(PASSWORD)}\nplain {PASSWORD}-plain\n", encoding="utf-8")
    return path


def refusal(address, source: str) -> list[str]:
    """What a new connection from ``source`` is told before it is closed."""
    client = LineClient(address, source=source)
    try:
        return client.wait_closed()
    finally:
        client.close()


@pytest.fixture
def fast_failures(monkeypatch):
    monkeypatch.setattr(gate, "SECRET_DELAY", 0.05)


def test_oper_login_and_what_others_cannot_do(chat_server_factory, connect, opers_file, caplog, fast_failures):
    caplog.set_level(logging.INFO, logger="chatcore")
    server = chat_server_factory("--opers-file", str(opers_file))
    alice, bob = connect(server, "alice"), connect(server, "bob")
    bob.send("/kill alice")
    assert bob.readline() == "! /kill is for operators; log in with /oper NAME PASSWORD"
    bob.send("/oper root wrong")
    assert bob.readline() == "! wrong operator name or password"
    bob.send("/oper nobody wrong")
    assert bob.readline() == "! wrong operator name or password"
    alice.send(f"/oper root {PASSWORD}")
    alice.expect("* you are now an operator (root)")
    alice.send(f"/oper plain {PASSWORD}-plain")
    assert alice.readline() == "* you are now an operator (plain)"
    assert operator_name(server.registry.find("alice")) == "plain"
    assert operator_name(server.registry.find("bob")) is None
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "failed /oper as 'root' by bob from 127.0.0.1:" in logged
    assert "operator root logged in: alice from 127.0.0.1:" in logged
    assert PASSWORD not in logged
    assert "wrong" not in logged
    bob.send("/oper root x")
    assert bob.wait_closed() == ["! disconnected: 3 failed operator logins"]


def test_kick_is_a_leave_with_its_reason_and_is_logged(chat_server_factory, connect, opers_file, caplog):
    caplog.set_level(logging.WARNING, logger="chatcore.opers")
    server = chat_server_factory("--opers-file", str(opers_file))
    alice, bob, carol = connect(server, "alice"), connect(server, "bob"), connect(server, "carol")
    alice.send(f"/oper root {PASSWORD}")
    alice.expect("* you are now an operator (root)")
    alice.send("/kill bob spamming links")
    assert bob.wait_closed()[-1] == "! disconnected: kicked by alice: spamming links"
    carol.expect("* bob left (kicked by alice: spamming links)")
    alice.expect("* kicked bob")
    assert any("operator root (alice) kicked bob" in r.getMessage() for r in caplog.records)


def test_ban_by_nick_on_the_spot_at_connect_and_after_a_restart(tmp_path, opers_file):
    args = ("--opers-file", str(opers_file), "--state-db", str(tmp_path / "state.db"), "--limit-exempt", "")
    with ServerProcess(*args) as proc:
        alice = LineClient(proc.address)
        alice.sync()  # guest-1: welcomed before mallory connects
        mallory = LineClient(proc.address, source="127.0.0.2")
        try:
            mallory.sync()
            mallory.send("/nick mallory")
            alice.expect("* guest-2 is now known as mallory")
            alice.send(f"/oper root {PASSWORD}")
            alice.expect("* you are now an operator (root)")
            alice.send("/ban mallory 1h flooding the lobby")
            assert mallory.wait_closed()[-1] == "! disconnected: banned by guest-1: flooding the lobby"
            alice.expect_all(
                "* mallory left (banned by guest-1: flooding the lobby)",
                "* banned 127.0.0.2/32 for 1h; disconnected mallory",
            )
            assert refusal(proc.address, "127.0.0.2") == ["! you are banned from this server: flooding the lobby"]
            alice.send("/bans")
            alice.expect("* 1 ban:")
            assert alice.readline().startswith("*   127.0.0.2/32 (1h left, by guest-1): flooding the lobby")
        finally:
            alice.close()
            mallory.close()
    assert "operator root (guest-1) banned 127.0.0.2/32 (mallory) for 1h: flooding the lobby" in proc.stderr

    with ServerProcess(*args) as proc:
        assert refusal(proc.address, "127.0.0.2") == ["! you are banned from this server: flooding the lobby"]
        other = LineClient(proc.address, source="127.0.0.3")
        other.sync()  # another address is welcome
        other.send(f"/oper root {PASSWORD}")
        other.expect("* you are now an operator (root)")
        other.send("/unban 127.0.0.2")
        other.expect("* unbanned 127.0.0.2/32")
        welcome = LineClient(proc.address, source="127.0.0.2")
        welcome.sync()
        welcome.close()
        other.close()
    with ServerProcess(*args) as proc:  # the unban was kept too
        welcome = LineClient(proc.address, source="127.0.0.2")
        welcome.sync()
        welcome.close()


@pytest.mark.slow
def test_bans_and_mutes_in_the_state_store_and_a_bans_file_moved_there(tmp_path, opers_file):
    """The bans and mutes live in the state store (issue 28); a --bans-file
    of an older chatcore is copied in once, with a message, and left as it was."""
    bans = tmp_path / "bans.json"
    bans.write_text(
        json.dumps({"bans": [{"network": "127.0.0.2/32", "until": None, "reason": "from the file", "by": "x"}],
                    "mutes": []})
    )  # fmt: skip
    before = bans.read_text()
    db = tmp_path / "state.db"
    common = ("--opers-file", str(opers_file), "--state-db", str(db), "--limit-exempt", "")
    with ServerProcess(*common, "--bans-file", str(bans)) as proc:
        proc.expect_log(re.compile(r"--bans-file .*: its 1 bans and 0 mutes are now kept in the state store"))
        assert refusal(proc.address, "127.0.0.2") == ["! you are banned from this server: from the file"]
        alice = LineClient(proc.address)
        alice.sync()
        alice.send(f"/oper root {PASSWORD}")
        alice.expect("* you are now an operator (root)")
        bob = LineClient(proc.address, source="127.0.0.4")
        bob.sync()
        alice.send("/mute guest-2 1h")
        alice.expect("* muted guest-2 for 1h")
        alice.send("/ban 127.0.0.3 1h from the store")
        alice.expect("* banned 127.0.0.3/32 for 1h")
        alice.close()
        bob.close()
    assert bans.read_text() == before  # no longer written
    with ServerProcess(*common) as proc:  # without the file: all from the store
        assert refusal(proc.address, "127.0.0.2") == ["! you are banned from this server: from the file"]
        assert refusal(proc.address, "127.0.0.3") == ["! you are banned from this server: from the store"]
        alice = LineClient(proc.address)
        alice.sync()
        alice.send(f"/oper root {PASSWORD}")
        alice.expect("* you are now an operator (root)")
        alice.send("/mutes")
        alice.expect("* 1 mute:")
        assert alice.readline().startswith("*   guest-2 and 127.0.0.4 (")
        alice.send("/unban 127.0.0.2")
        alice.expect("* unbanned 127.0.0.2/32")
        alice.close()
    with ServerProcess(*common) as proc:
        welcome = LineClient(proc.address, source="127.0.0.2")
        welcome.sync()
        welcome.close()


def test_a_cidr_ban_expires(chat_server_factory, connect, opers_file):
    server = chat_server_factory("--opers-file", str(opers_file), "--limit-exempt", "")
    alice = connect(server, "alice", source="127.0.0.3")
    alice.send(f"/oper root {PASSWORD}")
    alice.expect("* you are now an operator (root)")
    alice.send("/ban 127.0.0.0/30 1s testing expiry")
    alice.expect("* banned 127.0.0.0/30 for 1s")
    assert refusal(server.address, "127.0.0.2") == ["! you are banned from this server: testing expiry"]
    wait_for(lambda: opers._state(server).banned("127.0.0.2") is None, timeout=3, message="the ban to expire")
    connect(server, "back", source="127.0.0.2")


def test_mute_and_unmute(chat_server_factory, connect, opers_file):
    server = chat_server_factory("--opers-file", str(opers_file))
    alice, bob = connect(server, "alice"), connect(server, "bob")
    alice.send(f"/oper root {PASSWORD}")
    alice.expect("* you are now an operator (root)")
    alice.send("/mute bob 5m")
    alice.expect("* muted bob for 5m")
    bob.expect("* you are muted by an operator for 5m")
    bob.send("can you hear me")
    assert bob.readline() == "! you are muted by an operator for 5m more; nothing was sent"
    bob.send("/msg alice psst")
    assert bob.readline().startswith("! you are muted")
    alice.send("/unmute bob")
    alice.expect("* unmuted bob")
    bob.expect("* you are no longer muted")
    bob.send("back")
    alice.expect("<bob> back")


def test_mutes_and_bans_last_what_they_were_given_for_whatever_the_wall_clock_does(
    chat_server_factory, connect, opers_file, monkeypatch
):
    # Issue 30: they ended on the wall clock, so a clock stepped an hour
    # forward lifted a 10-minute mute at once, and one stepped back made a
    # 1-second mute last an hour (tests/faults/test_fault_clock.py jumps a
    # real server's clock; this is the same in-process, by time.time()).
    server = chat_server_factory("--opers-file", str(opers_file))
    alice, bob = connect(server, "alice"), connect(server, "bob", source="127.0.0.4")
    alice.send(f"/oper root {PASSWORD}")
    alice.expect("* you are now an operator (root)")
    alice.send("/mute bob 10m")
    alice.expect("* muted bob for 10m")
    alice.send("/ban 127.0.0.3 10m not now")
    alice.expect("* banned 127.0.0.3/32 for 10m")

    def muted() -> bool:
        bob.send("am I muted?")
        return any(line.startswith("! you are muted") for line in bob.sync())

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # an hour forward
    assert muted()
    assert refusal(server.address, "127.0.0.3") == ["! you are banned from this server: not now"]
    alice.send("/mute bob 1s")
    alice.expect("* muted bob for 1s")
    monkeypatch.setattr(time, "time", real)  # and back
    assert muted()
    wait_for(lambda: not muted(), timeout=5, message="the 1 s mute over")


def test_operator_mistakes(chat_server_factory, connect, opers_file, tmp_path):
    server = chat_server_factory("--opers-file", str(opers_file))
    alice = connect(server, "alice")
    alice.send(f"/oper root {PASSWORD}")
    alice.expect("* you are now an operator (root)")
    for line, answer in [
        ("/kill nobody", "! no such nick 'nobody'"),
        ("/ban", "! usage: /ban NICK|ADDRESS|CIDR [DURATION] [REASON]"),
        ("/unban 10.0.0.1", "! 10.0.0.1/32 is not banned (see /bans)"),
        ("/unban bob", "! usage: /unban ADDRESS|CIDR (as /bans lists it)"),
        ("/mute alice forever", "! invalid duration 'forever': use a number and s, m, h, d or w (30m)"),
        ("/bans", "* no bans"),
        ("/oper root", "! usage: /oper NAME PASSWORD"),
    ]:
        alice.send(line)
        assert alice.readline() == answer, line
    assert parse_duration("90s") == 90
    assert parse_duration("2w") == 1209600
    assert parse_duration("0m") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [("root\n", "expected NAME HASH"), ("root scrypt$x\n", "a scrypt hash has 6 fields")],
)
def test_a_bad_opers_file_is_a_usage_error(tmp_path, content, message):
    path = tmp_path / "opers"
    path.write_text(content)
    proc = ServerProcess("--opers-file", str(path))
    with pytest.raises(AssertionError, match="did not start"):
        proc.start()
    assert proc.returncode == 2
    assert message in proc.stderr


def test_a_state_db_that_cannot_be_made_is_found_at_start(tmp_path):
    proc = ServerProcess("--state-db", str(tmp_path / "no-such-dir" / "state.db"))
    with pytest.raises(AssertionError, match="did not start"):
        proc.start()
    assert proc.returncode == 2
    assert f"--state-db {tmp_path / 'no-such-dir' / 'state.db'}:" in proc.stderr


def test_a_ban_that_cannot_be_saved_is_in_force_and_says_so(
    chat_server_factory, connect, opers_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(store, "BUSY_TIMEOUT", 0.2)  # how long a write waits for a locked database
    db = tmp_path / "state.db"
    server = chat_server_factory("--opers-file", str(opers_file), "--state-db", str(db))
    alice = connect(server, "alice")
    alice.send(f"/oper root {PASSWORD}")
    alice.expect("* you are now an operator (root)")
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        alice.send("/ban 192.0.2.0/24 1h testing")
        alice.expect("* banned 192.0.2.0/24 for 1h")
        assert re.fullmatch(
            r"! in force, but not saved to the state store \(.*database is locked\): it may not survive a restart",
            alice.readline(),
        )
    finally:
        blocker.close()
    assert opers._state(server).banned("192.0.2.9") is not None


def test_help_lists_operator_commands_to_operators_only(chat_server_factory, connect, opers_file, fast_failures):
    server = chat_server_factory("--opers-file", str(opers_file))
    alice = connect(server, "alice")

    def help_lines() -> list[str]:
        del alice.received[:]
        alice.send("/help")
        alice.send("/ping")  # its answer comes after the whole list
        alice.expect("* pong")
        return alice.received[alice.received.index("* commands:") : -1]

    shown = help_lines()
    assert any("/oper NAME PASSWORD" in line for line in shown), shown
    assert not any(command in line for line in shown for command in ("/kill", "/ban", "/mute")), shown
    alice.send(f"/oper root {PASSWORD}")
    alice.expect("* you are now an operator (root)")
    shown = help_lines()
    for command in ("/oper NAME PASSWORD", "/kill NICK", "/ban NICK", "/bans", "/mute NICK", "/unmute NICK"):
        assert any(command in line for line in shown), (command, shown)


def scheme(stored: str) -> list[str]:
    """A stored password's kind and cost: ``scrypt``, N, r and p, or plain text."""
    return stored.split("$")[:4] if is_hash(stored) else ["plain text"]


CHEAP_HASH = "scrypt$1024$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "a2V5" * 10  # a real hash with a lower N


@pytest.mark.usefixtures("fast_failures")
@pytest.mark.parametrize(
    "case",
    [
        (f"root {PASSWORD}\n", PASSWORD),
        (f"root {CHEAP_HASH}\n", CHEAP_HASH),
        (f"root {PASSWORD}\nother {CHEAP_HASH}\n", CHEAP_HASH),  # the costliest of the file's kinds
    ],
    ids=["plain", "hash", "mixed"],
)
def test_an_unknown_operator_name_is_checked_like_a_known_one(
    chat_server_factory, connect, tmp_path, monkeypatch, case
):
    # Timing told names apart: an unknown one cost an scrypt hash where the
    # file's passwords were plain text (46 to 65 ms more). No timing here:
    # which check runs, and against what, is what makes the time.
    entries, like = case
    path = tmp_path / "opers"
    path.write_text(entries, encoding="utf-8")
    server = chat_server_factory("--opers-file", str(path))
    checked: list[str] = []
    verify = auth.verify_password

    def spy(stored: str, given: str) -> bool:
        checked.append(stored)
        return verify(stored, given)

    monkeypatch.setattr(auth, "verify_password", spy)
    bob = connect(server, "bob")
    bob.send("/oper nobody wrong")
    assert bob.readline() == "! wrong operator name or password"
    assert len(checked) == 1
    assert scheme(checked[0]) == scheme(like)
    assert checked[0] not in entries  # made up, never a real operator's


def test_a_ban_of_an_ipv4_mapped_address_bans_the_ipv4_address(chat_server_factory, connect, opers_file):
    # A dual-stack listener sees 127.0.0.5 as ::ffff:127.0.0.5: either
    # spelling, in the ban or in the peer, is the same host.
    server = chat_server_factory("--opers-file", str(opers_file), "--limit-exempt", "")
    alice = connect(server, "alice", source="127.0.0.3")
    _oper(alice)
    alice.send("/ban ::ffff:127.0.0.5 1h mapped")
    alice.expect("* banned 127.0.0.5/32 for 1h")
    assert refusal(server.address, "127.0.0.5") == ["! you are banned from this server: mapped"]
    state = opers._state(server)
    assert state.banned("::ffff:127.0.0.5") is not None
    alice.send("/unban ::ffff:127.0.0.5")
    alice.expect("* unbanned 127.0.0.5/32")
    alice.send("/ban ::ffff:127.0.0.0/120")
    alice.expect("* banned 127.0.0.0/24 forever")
    assert state.banned("127.0.0.9") is not None


def _oper(client: LineClient) -> None:
    client.send(f"/oper root {PASSWORD}")
    client.expect("* you are now an operator (root)")


def _is_muted(client: LineClient) -> bool:
    client.send("anyone there")
    client.send("/ping")  # a chat line is not echoed: the pong comes first if it was sent
    answer = client.readline()
    if answer != "* pong":
        client.expect("* pong")
    return answer.startswith("! you are muted by an operator")


def test_a_mute_holds_the_nick_and_the_address_across_reconnects_and_a_restart(
    chat_server_factory, connect, opers_file, tmp_path
):
    args = ("--opers-file", str(opers_file), "--state-db", str(tmp_path / "state.db"), "--limit-exempt", "")
    server = chat_server_factory(*args)
    alice = connect(server, "alice", source="127.0.0.3")
    _oper(alice)
    bob = connect(server, "bob", source="127.0.0.2")
    alice.send("/mute bob 1h")
    alice.expect("* muted bob for 1h")
    bob.close()
    wait_for(lambda: server.registry.find("bob") is None, message="bob to leave")
    again = connect(server, "bob", source="127.0.0.2")  # same address and nick
    assert _is_muted(again)
    again.send("/nick robert")  # another nick, same address
    again.expect("* you are now known as robert")
    assert _is_muted(again)
    again.close()
    wait_for(lambda: server.registry.find("robert") is None, message="robert to leave")
    elsewhere = connect(server, "bob", source="127.0.0.4")  # the nick, from another address
    assert _is_muted(elsewhere)
    assert not _is_muted(connect(server, "carol", source="127.0.0.5"))
    assert not _is_muted(alice)  # an operator, though muted addresses could include theirs
    alice.send("/mutes")
    alice.expect("* 1 mute:")
    assert re.fullmatch(r"\*   bob and 127\.0\.0\.2 \([0-9]+[smh] left, by alice\)", alice.readline())

    restarted = chat_server_factory(*args)  # reads the same database, as after a restart
    back = connect(restarted, "bob", source="127.0.0.2")
    assert _is_muted(back)
    operator = connect(restarted, "dave", source="127.0.0.3")
    _oper(operator)
    operator.send("/unmute bob")
    operator.expect_all("* unmuted bob")
    back.expect("* you are no longer muted")
    assert not _is_muted(connect(restarted, "robert", source="127.0.0.2"))
    operator.send("/unmute bob")
    operator.expect("! bob is not muted (see /mutes)")


def test_a_bans_file_from_before_mutes_is_read(tmp_path, opers_file, chat_server_factory, connect):
    bans = tmp_path / "bans.json"
    bans.write_text(json.dumps([{"network": "127.0.0.2/32", "until": None, "reason": "old", "by": "x"}]))
    server = chat_server_factory("--opers-file", str(opers_file), "--bans-file", str(bans), "--limit-exempt", "")
    assert refusal(server.address, "127.0.0.2") == ["! you are banned from this server: old"]


def test_a_muted_users_leave_reasons_do_not_reach_the_room(chat_server_factory, connect, opers_file):
    server = chat_server_factory(
        "--opers-file", str(opers_file), "--plugins", "irc",
        "--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0", "--limit-exempt", "",
    )  # fmt: skip
    alice = connect(server, "alice", source="127.0.0.3")
    _oper(alice)
    bob = connect(server, "bob", source="127.0.0.2")
    alice.send("/mute bob 1h")
    alice.expect("* muted bob for 1h")
    bob.send("/quit buy cheap pills at spam.example")
    alice.expect("* bob left")

    irc = LineClient(server.listener("irc").address, source="127.0.0.2")  # the muted address
    try:
        irc.send("NICK mallory")
        irc.send("USER mallory 0 * :M")
        irc.send("JOIN #lobby")
        irc.expect(lambda line: " 366 mallory #lobby " in line)
        alice.expect("* mallory joined")
        irc.send("PART #lobby :spam.example is great")
        irc.expect(lambda line: " PART #lobby" in line)
        alice.expect("* mallory left")  # without the reason
        irc.send("JOIN #lobby")
        irc.expect(lambda line: " 366 mallory #lobby " in line)
        alice.expect("* mallory joined")  # and nothing else in between
        irc.send("QUIT :spam.example forever")
        irc.wait_closed()
    finally:
        irc.close()
    carol = connect(server, "carol", source="127.0.0.4")
    carol.send("/join other")
    carol.expect("* you are now in other (1 here)")
    seen = "\n".join(alice.received + carol.received)
    assert "spam.example" not in seen
    assert "cheap pills" not in seen


def test_reconnecting_does_not_reset_the_operator_login_delay(chat_server_factory, connect, opers_file, fast_failures):
    """Wrong /oper passwords are throttled per address, as the server
    password is (issue 22, bug 6: a new connection started from nothing)."""
    server = chat_server_factory("--opers-file", str(opers_file))
    for nick in ("bob", "carol"):
        guesser = connect(server, nick)
        guesser.send("/oper root wrong")
        guesser.expect("! wrong operator name or password")  # carol may hear bob leave first
        guesser.close()
    assert server.gate.failures["oper"].record("127.0.0.1") == 3
