"""The server password: --password-file, CHATCORE_PASSWORD, /pass, hashes."""

from __future__ import annotations

import logging
import subprocess
import sys

import pexpect
import pytest

from chatcore.engine import gate
from chatcore.engine.auth import hash_password, verify_password
from chatcore.testing import LineClient, ServerProcess
from chatcore.wire.native import PASSWORD_REQUIRED

SECRET = "correct horse battery"


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "server.password"
    path.write_text(SECRET + "\n", encoding="utf-8")
    return path


@pytest.fixture
def fast_failures(monkeypatch):
    """Wrong passwords cost 50 ms more each, not a second: the tests stay fast."""
    monkeypatch.setattr(gate, "SECRET_DELAY", 0.05)


def test_nothing_but_pass_nick_and_quit_before_the_password(
    chat_server_factory, chat_client, password_file, caplog, fast_failures
):
    caplog.set_level(logging.INFO, logger="chatcore")
    server = chat_server_factory("--password-file", str(password_file))
    stranger = LineClient(server.address)
    try:
        assert stranger.readline() == f"! {PASSWORD_REQUIRED}"
        for line in ("hello everyone", "/who", "//pass"):
            stranger.send(line)
            assert stranger.readline() == f"! {PASSWORD_REQUIRED}"
        # The name to enter under (issue 25: no guest name seen first).
        stranger.send("/nick guest-7")
        assert stranger.readline().startswith("! ")  # a name the server hands out: refused
        stranger.send("/nick mallory")
        assert stranger.readline() == "* you will enter as mallory once the password is given"
        stranger.send("/pass guess")
        assert stranger.readline() == "! wrong password; try /pass PASSWORD again"
        assert not server.registry.find("guest-1")
        stranger.send(f"/PASS {SECRET}")
        assert stranger.expect(lambda line: line.startswith("* Welcome")).startswith("* Welcome to chatcore, mallory!")
        stranger.send("hello now")
        stranger.sync()
    finally:
        stranger.close()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "wrong server password from 127.0.0.1:" in logged
    assert "server password accepted from 127.0.0.1:" in logged
    assert "guess" not in logged
    assert SECRET not in logged


def test_three_wrong_passwords_close_the_connection(chat_server_factory, password_file, fast_failures):
    server = chat_server_factory("--password-file", str(password_file))
    client = LineClient(server.address)
    try:
        client.readline()
        for attempt in ("a", "b", "c"):
            client.send(f"/pass {attempt}")
        lines = client.wait_closed()
        assert lines == ["! wrong password; try /pass PASSWORD again"] * 2 + ["! disconnected: 3 wrong passwords"]
    finally:
        client.close()


def test_quit_before_the_password_and_the_login_deadline(chat_server_factory, password_file):
    server = chat_server_factory("--password-file", str(password_file), "--login-timeout", "0.5")
    leaving, waiting = LineClient(server.address), LineClient(server.address)
    try:
        leaving.readline()
        leaving.send("/quit")
        assert leaving.wait_closed() == ["* goodbye"]
        assert waiting.wait_closed() == [
            f"! {PASSWORD_REQUIRED}",
            "! disconnected: not logged in within 0.5 seconds; connect and log in again",
        ]
    finally:
        leaving.close()
        waiting.close()


def test_a_hashed_password_from_the_environment_and_the_client_sends_it(tmp_path):
    hashed = hash_password(SECRET)
    env = {"CHATCORE_PASSWORD": hashed}
    with ServerProcess(env=env) as proc:
        client = LineClient(proc.address)
        client.readline()
        client.send(f"/pass {SECRET}")
        client.expect(lambda line: line.startswith("* Welcome"))
        # chatcore client, with the plain password in its environment.
        port = str(proc.address[1])
        result = subprocess.run(
            [sys.executable, "-m", "chatcore", "client", "--port", port],
            input=b"hi from the client\n",
            capture_output=True,
            timeout=10,
            env={"CHATCORE_PASSWORD": SECRET, "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        client.expect(re_line("hi from the client"))
        # And with --password-file.
        path = tmp_path / "pw"
        path.write_text(SECRET + "\n")
        result = subprocess.run(
            [sys.executable, "-m", "chatcore", "client", "--port", port, "--password-file", str(path)],
            input=b"hi again\n",
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        client.expect(re_line("hi again"))
        client.close()
    assert SECRET not in proc.stderr
    assert hashed not in proc.stderr


def re_line(text: str):
    return lambda line: line.endswith("> " + text)


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("", {}, "the first line is empty"),
        ("scrypt$1$2$3", {}, "a scrypt hash has 6 fields"),
        ("scrypt$1048576$64$64$AA$AA", {}, "would need more than"),
        (SECRET, {"CHATCORE_PASSWORD": SECRET}, "not both"),
    ],
)
def test_password_mistakes_are_usage_errors(tmp_path, content, env, message):
    path = tmp_path / "pw"
    path.write_text(content + "\n")
    proc = ServerProcess("--password-file", str(path), env=env)
    with pytest.raises(AssertionError, match="did not start"):
        proc.start()
    assert proc.returncode == 2
    assert message in proc.stderr
    assert SECRET not in proc.stderr


def test_hash_password_from_stdin_and_from_a_terminal():
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "hash-password"],
        input=f"{SECRET}\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    hashed = result.stdout.strip()
    assert hashed.startswith("scrypt$16384$8$1$")
    assert verify_password(hashed, SECRET)
    assert not verify_password(hashed, SECRET + "!")
    assert hash_password(SECRET) != hashed  # salted

    child = pexpect.spawn(sys.executable, ["-m", "chatcore", "hash-password"], timeout=10, encoding="utf-8")
    child.expect("password: ")
    child.sendline(SECRET)
    child.expect("again: ")
    child.sendline(SECRET)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert SECRET not in child.before  # not echoed
    assert verify_password(child.before.strip().splitlines()[-1], SECRET)


def test_plain_passwords_compare_exactly():
    assert verify_password("abc", "abc")
    assert not verify_password("abc", "abd")
    assert not verify_password("abc", "ab")
    assert verify_password("pässwörd", "pässwörd")


def test_reconnecting_does_not_reset_the_delay(chat_server_factory, password_file, fast_failures):
    server = chat_server_factory("--password-file", str(password_file))
    for _ in range(2):
        client = LineClient(server.address)
        client.readline()
        client.send("/pass nope")
        client.readline()
        client.close()
    assert server.password_failures.record("127.0.0.1") == 3
