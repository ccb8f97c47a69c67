"""Accounts (the accounts plugin) over real sockets: registering, logging
in, nick ownership, throttling, operators' tools, and the state database."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chatcore.engine import auth, gate
from chatcore.engine.auth import hash_password
from chatcore.testing import LineClient, ServerProcess, wait_for

PASSWORD = "horse-battery-9"
OPER = "s3cret-oper"


@pytest.fixture
def fast_failures(monkeypatch):
    monkeypatch.setattr(gate, "SECRET_DELAY", 0.02)


@pytest.fixture
def cheap_passwords(monkeypatch):
    """Passwords hashed at a tiny scrypt cost, for tests of what a login
    must do within a grace period: at the real cost a login took up to a
    second on a loaded 2-core machine (CI)."""
    monkeypatch.setattr(auth, "SCRYPT_N", 2**4)


@pytest.fixture
def accounts(chat_server_factory, tmp_path, fast_failures):
    """``accounts(*args)``: a server with the accounts plugin and its own state database."""
    opers = tmp_path / "opers"
    opers.write_text(f"root {hash_password(OPER)}\n", encoding="utf-8")

    def start(*args: str):
        return chat_server_factory(
            "--plugins", "accounts", "--state-db", str(tmp_path / "state.db"), "--opers-file", str(opers), *args
        )

    return start


def register(client: LineClient, nick: str, password: str = PASSWORD) -> None:
    client.send(f"/register {password}")
    client.expect(f"* registered the account {nick}; you are logged in to it (later: /login {nick} PASSWORD)")


def test_register_login_logout_and_shared_accounts(accounts, connect, caplog):
    caplog.set_level(logging.DEBUG, logger="chatcore")
    server = accounts()
    alice = connect(server, "alice")
    alice.send("/register short")
    alice.expect("! a password needs at least 8 characters; nothing was registered")
    register(alice, "alice")
    assert server.registry.find("alice").account == "alice"
    alice.send(f"/register {PASSWORD}")
    assert alice.readline().startswith("! you are logged in to alice already")

    # The name is taken, whoever asks and however they spell it.
    other = connect(server, "someone")
    other.send("/nick ALICE")
    other.expect("! nickname 'ALICE' is taken")
    alice.send("/logout")
    alice.expect("* you are logged out of alice")
    alice.send("/nick alice2")
    alice.expect("* you are now known as alice2")
    other.send("/nick ALICE")
    other.expect("* you are now known as ALICE")
    # Holding alice's nick without her account: warned at the enforcer's
    # next round (within a second), which may come before or after the
    # answer to /register.
    other.expect(lambda line: line.startswith("* the nick ALICE belongs to an account: /login ALICE PASSWORD"))
    other.send(f"/register {PASSWORD}")
    assert other.readline() == (
        "! the account ALICE is taken: /login ALICE PASSWORD if it is yours, or /nick to another name"
    )

    # Several connections share one account; a wrong password changes nothing.
    alice.send("/login alice wrong-password")
    alice.expect("! wrong account name or password")
    alice.send("/login nobody wrong-password")
    alice.expect("! wrong account name or password")
    alice.send(f"/login Alice {PASSWORD}")
    alice.expect("* you are logged in to alice")
    other.send(f"/login {PASSWORD}")  # the current nick's account
    other.expect("* you are logged in to alice")
    assert {c.account for c in server.registry if c.nick in ("alice2", "ALICE")} == {"alice"}

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert PASSWORD not in logged
    assert "wrong-password" not in logged
    assert "failed login to 'alice' (1 to it in 10 minutes) from 127.0.0.1:" in logged


def test_change_the_password_and_drop_the_account(accounts, connect):
    server = accounts()
    alice = connect(server, "alice")
    register(alice, "alice")
    alice.send(f"/password wrong-password {PASSWORD}-new")
    alice.expect("! wrong password; nothing was changed")
    alice.send(f"/password {PASSWORD} tiny")
    alice.expect("! a password needs at least 8 characters; the password was not changed")
    alice.send(f"/password {PASSWORD} {PASSWORD}-new")
    alice.expect("* your password is changed")
    bob = connect(server, "bob")
    bob.send(f"/login alice {PASSWORD}")
    bob.expect("! wrong account name or password")
    bob.send(f"/login alice {PASSWORD}-new")
    bob.expect("* you are logged in to alice")
    alice.send(f"/drop {PASSWORD}-new")
    alice.expect("* the account alice is deleted; its nick is free for anyone")
    bob.expect("* the account alice was deleted; you are logged out")
    assert server.registry.find("bob").account == ""
    assert server.store.get("account", "alice") is None


def test_a_registered_nick_is_renamed_after_the_grace_period_unless_its_owner_logs_in(
    accounts, connect, cheap_passwords
):
    server = accounts("--nick-grace", "0.5")
    alice = connect(server, "alice")
    register(alice, "alice")
    alice.send("/quit")
    alice.wait_closed()
    wait_for(lambda: server.registry.find("alice") is None)

    mallory = connect(server, "alice", source="127.0.0.2")
    mallory.expect(
        "* the nick alice belongs to an account: /login alice PASSWORD within 0.5 seconds, "
        "or /nick to another name, or you will be renamed"
    )
    renamed = mallory.expect(lambda line: line.startswith("* you were renamed to guest-"))
    guest = renamed.split()[5].rstrip(":")
    assert mallory.received[-2] == f"* alice is now known as {guest}"  # its own rename, as every protocol shows it
    assert server.registry.find(guest) is not None
    assert server.registry.find("alice") is None

    bob = connect(server, "bob")
    register(bob, "bob")
    bob.close()
    wait_for(lambda: server.registry.find("bob") is None)
    owner = connect(server, "alice")
    owner.expect(lambda line: line.startswith("* the nick alice belongs to an account"))
    owner.send(f"/login {PASSWORD}")
    owner.expect("* you are logged in to alice")
    # A witness that takes a registered nick now: once it is renamed, the
    # grace period of the owner's warning is over too, and the owner stays.
    witness = connect(server, "bob")
    witness.expect(lambda line: line.startswith("* you were renamed to guest-"))
    owner.send("/ping")
    owner.expect("* pong")
    assert not any(line.startswith("* you were renamed") for line in owner.received), owner.received
    assert server.registry.find("alice").account == "alice"


def alice_about_to_be_renamed(accounts, connect, monkeypatch, most: float):
    """A server whose enforcer is about to rename alice (she logged out of
    her account, and her grace period is over), held until the returned
    event is set (at most ``most`` seconds): (server, alice, event)."""
    server = accounts("--nick-grace", "0.4")
    alice = connect(server, "alice")
    register(alice, "alice")
    renaming, answered = threading.Event(), threading.Event()
    change_nick = server.change_nick

    def held_change_nick(client, nick, **options):
        if threading.current_thread().name == "chatcore-nick-owners":
            renaming.set()
            answered.wait(most)
        return change_nick(client, nick, **options)

    monkeypatch.setattr(server, "change_nick", held_change_nick)
    alice.send("/logout")
    alice.expect(lambda line: line.startswith("* the nick alice belongs to an account"))
    assert renaming.wait(5), "the enforcer did not rename alice"
    return server, alice, answered


def test_a_login_as_the_grace_period_ends_is_never_followed_by_a_rename(
    accounts, connect, cheap_passwords, monkeypatch
):
    """A connection that logs in to its nick's account just as its grace
    period runs out is renamed before its login is answered, or not at
    all. The enforcer read the account, then renamed: a login in between
    was told "you are logged in to alice", then "you were renamed ...
    you are not logged in to". Here the enforcer's rename is held until
    the login is answered (at most a second: a login that waits for the
    enforcer cannot be answered meanwhile)."""
    server, alice, answered = alice_about_to_be_renamed(accounts, connect, monkeypatch, most=1.0)
    alice.send(f"/login {PASSWORD}")
    told = alice.expect(lambda line: line.startswith(("* you are logged in to alice", "* you were renamed to guest-")))
    answered.set()
    assert told.startswith("* you were renamed to guest-"), alice.received
    alice.expect("* you are logged in to alice")
    guest = told.split()[5].rstrip(":")
    assert server.registry.find(guest).account == "alice"


def test_a_nick_changed_as_the_grace_period_ends_is_not_renamed(accounts, connect, cheap_passwords, monkeypatch):
    """The enforcer decided to rename alice (a registered nick); before it
    did, the connection took another name of its own. The enforcer renames
    only a client still called what it checked, so the connection keeps
    the name it chose. Here the enforcer's rename is held until the
    connection's /nick is answered."""
    server, alice, answered = alice_about_to_be_renamed(accounts, connect, monkeypatch, most=5.0)
    alice.send("/nick alicia")
    alice.expect("* you are now known as alicia")
    answered.set()
    alice.send("/ping")
    alice.expect("* pong")
    # The enforcer's later rounds (one renamed the witness) leave alicia alone.
    witness = connect(server, "alice")
    witness.expect(lambda line: line.startswith("* you were renamed to guest-"))
    assert server.registry.find("alicia") is not None
    assert not any(line.startswith("* you were renamed") for line in alice.received), alice.received


def test_failed_logins_are_throttled_per_connection_and_per_account(accounts, connect):
    server = accounts("--account-max-failures", "5")
    alice = connect(server, "alice")
    register(alice, "alice")
    # One connection: the third failure closes it.
    guesser = connect(server, "guesser", source="127.0.0.2")
    for _ in range(2):
        guesser.send("/login alice guess-guess")
        guesser.expect("! wrong account name or password")
    guesser.send("/login alice guess-guess")
    assert guesser.wait_closed()[-1] == "! disconnected: 3 failed logins"
    # Many addresses: the account refuses password logins for a while, the right one too.
    for source in ("127.0.0.3", "127.0.0.4"):
        other = connect(server, f"g{source[-1]}", source=source)
        other.send("/login alice guess-again")
        other.expect("! wrong account name or password")
    late = connect(server, "late", source="127.0.0.5")
    late.send(f"/login alice {PASSWORD}")
    late.expect("! too many failed logins to alice lately; try again in 10 minutes")
    assert server.registry.find("late").account == ""


def test_operators_list_suspend_and_drop_accounts(accounts, connect):
    server = accounts()
    alice, bob = connect(server, "alice"), connect(server, "bob")
    register(alice, "alice")
    register(bob, "bob")
    bob.send("/accounts")
    bob.expect("! /accounts is for operators; log in with /oper NAME PASSWORD")
    root = connect(server, "root")
    root.send(f"/oper root {OPER}")
    root.expect("* you are now an operator (root)")
    root.send("/accounts")
    root.expect(lambda line: line.startswith("* 2 accounts; since start: "))
    root.expect(lambda line: line.startswith("*   alice (registered ") and "logged in here as alice" in line)
    root.send("/logins")
    root.expect("* 2 logged in on this server:")
    root.expect(lambda line: line.startswith("*   alice as alice from 127.0.0.1:"))
    root.send("/suspend alice spamming")
    root.expect("* suspended alice; logged out alice")
    alice.expect("* the account alice is suspended by an operator; you are logged out")
    alice.send(f"/login {PASSWORD}")
    alice.expect("! the account alice is suspended: spamming")
    root.send("/unsuspend alice")
    root.expect("* alice is no longer suspended")
    alice.send(f"/login {PASSWORD}")
    alice.expect("* you are logged in to alice")
    root.send("/dropaccount bob")
    root.expect("* deleted the account bob")
    bob.expect("* the account bob was deleted; you are logged out")
    root.send("/dropaccount bob")
    root.expect("! no account 'bob' (see /accounts)")


def test_help_lists_the_account_commands(accounts, connect):
    server = accounts()
    alice = connect(server, "alice")
    alice.send("/help")
    alice.send("/ping")
    alice.expect("* pong")
    shown = "\n".join(alice.received)
    assert "/register PASSWORD" in shown
    assert "/login [ACCOUNT] PASSWORD" in shown
    assert "/suspend" not in shown  # operators' only


@pytest.mark.slow
def test_accounts_survive_a_restart_and_a_damaged_database_stops_the_start(tmp_path: Path):
    db = tmp_path / "state.db"
    args = ("--plugins", "accounts", "--state-db", str(db))
    with ServerProcess(*args) as proc:
        alice = LineClient(proc.address)
        alice.sync()
        alice.send("/nick alice")
        alice.expect("* you are now known as alice")
        register(alice, "alice")
        alice.close()
    assert proc.returncode == 0
    assert PASSWORD not in proc.stderr
    with ServerProcess(*args) as proc:
        bob = LineClient(proc.address)
        bob.sync()
        bob.send(f"/login alice {PASSWORD}")
        bob.expect("* you are logged in to alice")
        bob.close()

    # A newer chatcore's database: refused, untouched, with what to do.
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    before = db.read_bytes()
    run = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2
    assert f"--state-db {db}: was written by a newer chatcore (state schema 99" in run.stderr
    assert "upgrade chatcore, or give another --state-db" in run.stderr
    assert "Traceback" not in run.stderr
    assert db.read_bytes() == before


@pytest.mark.slow
def test_an_account_registered_on_one_server_logs_in_on_another(tmp_path: Path):
    from redis_support import RedisServer

    redis_server = RedisServer(tmp_path).start()
    args = ("--plugins", "accounts,redis", "--redis-url", redis_server.url, "--redis-cluster", "accounts-test")
    try:
        with (
            ServerProcess(*args, "--listen", "tcp://127.0.0.1:0") as one,
            ServerProcess(*args, "--listen", "tcp://127.0.0.2:0") as two,
        ):
            alice = LineClient(one.address)
            alice.sync()
            alice.send("/nick alice")
            alice.expect("* you are now known as alice")
            register(alice, "alice")
            bob = LineClient(two.address)
            bob.sync()
            bob.send("/nick bob")
            bob.expect("* you are now known as bob")
            bob.send(f"/register {PASSWORD}")
            bob.expect("* registered the account bob; you are logged in to it (later: /login bob PASSWORD)")
            carol = LineClient(two.address, source="127.0.0.3")
            carol.sync()
            carol.send(f"/login alice {PASSWORD}")
            carol.expect("* you are logged in to alice")

            # A room registered on one server: its state is the same on the other,
            # while it has members and after it had none.
            enter(alice, "dev")
            alice.send("/registerroom")
            alice.expect(lambda line: line.startswith("* registered dev"))
            alice.send("/topic one topic for the cluster")
            alice.expect(said("alice set the topic: one topic for the cluster"))
            alice.send("/mode +m")
            alice.expect(said("alice set mode +m"))
            enter(bob, "dev")
            # The cluster's state is eventually the same: alice's topic may
            # still be on its way to Redis as bob enters (then it reaches
            # server two as an event a moment later).
            wait_for(
                lambda: topic_of(bob, "dev") == "* topic of dev: one topic for the cluster (set by alice)",
                message="the topic on server two",
            )
            for client in (alice, bob):
                client.send("/part dev")
                client.expect(lambda line: line.startswith("* you left dev"))
            dave = LineClient(two.address, source="127.0.0.4")
            dave.sync()
            enter(dave, "dev")
            dave.send("/mode")
            dave.expect("* modes of dev: +mnt")
            dave.send("/topic")
            dave.expect("* topic of dev: one topic for the cluster (set by alice)")
            for client in (alice, bob, carol, dave):
                client.close()
        # The cluster's store, not a file of either server's.
        assert "(the cluster's)" in one.stderr
    finally:
        redis_server.stop()


def said(text: str):  # type: ignore[no-untyped-def]
    """A room's notice, labelled with its room or not (in several rooms it is)."""
    return lambda line: line.endswith(f"* {text}")


def topic_of(client: LineClient, room: str) -> str:
    """The answer to ``/topic`` in ``room`` (the client's current room)."""
    client.send("/topic")
    return client.expect(lambda line: line.startswith((f"* topic of {room}", f"* {room} has no topic")))


def enter(client: LineClient, room: str) -> None:
    client.send(f"/join {room}")
    client.expect(lambda line: line.startswith(f"* you are now in {room}"))


def test_a_registered_room_keeps_its_state_when_empty_and_its_founder_gets_operator(accounts, connect):
    server = accounts()
    alice = connect(server, "alice")
    alice.send("/registerroom")  # lobby, not logged in
    alice.expect("! log in to your account first (/login, or /register PASSWORD) to register lobby")
    register(alice, "alice")
    enter(alice, "dev")
    alice.send("/topic kept across emptiness")
    alice.expect(said("alice set the topic: kept across emptiness"))
    alice.send("/registerroom")
    alice.expect("* registered dev: its topic, modes and lists are kept; you get +o in it when logged in")
    alice.send("/mode +m")
    alice.expect(said("alice set mode +m"))
    alice.send("/mode +b mallory!*@*")
    alice.expect(said("alice set mode +b mallory!*@*"))
    bob = connect(server, "bob")
    bob.send("/registerroom dev")
    bob.expect("! log in to your account first (/login, or /register PASSWORD) to register dev")
    register(bob, "bob")
    bob.send("/registerroom dev")
    bob.expect("! only an operator of dev, in it, registers it")
    alice.send("/part dev")
    alice.expect(lambda line: line.startswith("* you left dev"))
    wait_for(lambda: server.rooms.get("dev") is None)  # empty: the engine let go of its state

    enter(bob, "dev")
    state = server.rooms.get("dev")
    assert state.topic == "kept across emptiness"
    assert state.flags == {"m", "n", "t"}
    assert "mallory!*@*" in state.bans
    assert not state.is_operator("bob")  # a registered room's first member is not its operator
    enter(alice, "dev")
    bob.expect(said("ChanServ set mode +o alice"))
    wait_for(lambda: server.rooms.get("dev").is_operator("alice"))
    # Operator accounts follow the room's operators.
    alice.send("/mode +o bob")
    bob.expect(said("alice set mode +o bob"))
    wait_for(lambda: "bob" in server.store.get("room", "dev")["operators"])
    bob.send("/droproom dev")
    bob.expect("! only the founder of dev (alice) or a server operator drops it")
    alice.send("/droproom dev")
    alice.expect("* dev is no longer registered")


@pytest.mark.slow
def test_a_registered_room_s_topic_and_modes_survive_a_restart(tmp_path: Path):
    args = ("--plugins", "accounts", "--state-db", str(tmp_path / "state.db"))
    with ServerProcess(*args) as proc:
        alice = LineClient(proc.address)
        alice.sync()
        alice.send("/nick alice")
        alice.expect("* you are now known as alice")
        register(alice, "alice")
        enter(alice, "dev")
        alice.send("/registerroom")
        alice.expect(lambda line: line.startswith("* registered dev"))
        alice.send("/topic survives restarts")
        alice.expect(said("alice set the topic: survives restarts"))
        alice.send("/mode +mk secret")
        alice.expect(said("alice set mode +mk secret"))
        alice.close()
    with ServerProcess(*args) as proc:
        bob = LineClient(proc.address)
        bob.sync()
        bob.send("/join dev")
        bob.expect("! dev needs a key: /join dev KEY")
        bob.send("/join dev secret")
        bob.expect(lambda line: line.startswith("* you are now in dev"))
        bob.send("/topic")
        bob.expect("* topic of dev: survives restarts (set by alice)")
        bob.send("/mode")
        bob.expect("* modes of dev: +kmnt secret")
        bob.send("hello")
        bob.expect("! dev is moderated: only its operators and voiced members speak")
        alice = LineClient(proc.address)
        alice.sync()
        alice.send(f"/login alice {PASSWORD}")
        alice.expect("* you are logged in to alice")
        alice.send("/join dev secret")
        bob.expect(lambda line: line.startswith("[dev] * guest-") and line.endswith(" joined"))
        bob.expect(lambda line: line.startswith("[dev] * ChanServ set mode +o guest-"))
        alice.close()
        bob.close()


def test_the_shortest_password_is_an_option(accounts, connect):
    """--min-password-length (irctest registers with 7 characters); a
    refusal is said to the client, never silence."""
    server = accounts("--min-password-length", "7")
    alice = connect(server, "alice")
    alice.send("/register sixsix")
    alice.expect("! a password needs at least 7 characters; nothing was registered")
    register(alice, "alice", "sesame1")
    alice.send("/password sesame1 short")
    alice.expect("! a password needs at least 7 characters; the password was not changed")


@pytest.mark.parametrize("given", ["0", "301", "seven"])
def test_a_minimum_password_length_out_of_range_exits_2_in_one_line(given):
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--plugins", "accounts", "--min-password-length", given],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--min-password-length" in result.stderr
    assert "Traceback" not in result.stderr
