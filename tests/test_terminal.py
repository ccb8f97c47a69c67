"""``chatcore client``: real client processes against a real server.

Interactive sessions run in a pseudo-terminal (pexpect); piped sessions with
stdin and stdout as pipes. Every wait has a timeout; none sleeps.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pexpect
import pytest

from chatcore.client.terminal import (
    Kind,
    Rooms,
    build_parser,
    classify,
    own_line,
    render,
    split_stamp,
    wants_colour,
)
from chatcore.engine.server import ChatServer
from chatcore.testing import ClientFactory, LineClient, ServerFactory

# Each test starts a client process: about 0.3 s of CPU for Python and its
# imports, but well over 5 s on a busy 2-core CI machine. A timeout costs
# nothing when the test passes.
TIMEOUT = 20
JOINED = re.compile(r"^\* (guest-\d+) joined$")


def client_command(server: ChatServer, *args: str) -> list[str]:
    return [sys.executable, "-m", "chatcore", "client", "--port", str(server.address[1]), *args]


def run_client(command: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a client with ``stdin`` piped in (or none at all) to the end."""
    return subprocess.run(
        command,
        check=False,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=TIMEOUT,
        env=client_env(),
    )


def client_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    # A pty has no terminal to answer prompt_toolkit's cursor position
    # request; without this it waits for the answer and then warns.
    env.update(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", **extra)
    return env


@pytest.fixture
def spawn() -> Iterator[Any]:
    children: list[pexpect.spawn] = []

    def start(server: ChatServer, *args: str, **env: str) -> pexpect.spawn:
        command = client_command(server, *args)
        child = pexpect.spawn(
            command[0],
            command[1:],
            env=client_env(**env),
            dimensions=(24, 100),
            timeout=TIMEOUT,
            encoding="utf-8",
        )
        children.append(child)
        return child

    yield start
    for child in children:
        child.close(force=True)


def joined_nick(other: LineClient) -> str:
    """The guest name of the client whose arrival ``other`` sees next."""
    match = JOINED.match(other.expect(JOINED, timeout=TIMEOUT))
    assert match is not None
    return match[1]


def expect_prompt(child: pexpect.spawn) -> None:
    """Wait until the prompt is drawn after the last line printed.

    Keys must wait for it: between two prompts, and while a line is printed
    above one, the terminal is in cooked mode, where the tty itself takes
    Ctrl-D as end of file and the client never sees the key. prompt_toolkit
    switches to raw mode before it draws the prompt.
    """
    child.expect(">")


def wait_exit(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    status: int = child.exitstatus
    return status


# -- in a terminal ----------------------------------------------------------


def test_incoming_line_does_not_garble_the_line_being_typed(
    chat_server_factory: ServerFactory, chat_client: ClientFactory, spawn: Any
) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    other.send("/nick bob")
    other.expect("* you are now known as bob")
    child = spawn(server, NO_COLOR="1")
    nick = joined_nick(other)
    child.expect("Welcome")
    expect_prompt(child)

    child.send("hello wor")
    child.expect("hello wor")
    other.send("interrupting")
    child.expect("<bob> interrupting")
    child.expect("hello wor")  # the half-typed line, redrawn below it
    child.send("ld\r")

    assert other.expect(re.compile("^<")) == f"<{nick}> hello world"
    child.expect("<You> hello world")
    expect_prompt(child)  # the next one

    child.sendcontrol("d")
    assert wait_exit(child) == 0
    assert other.expect(re.compile(r"^\* ")) == f"* {nick} left"


def test_refused_nick_ctrl_c_and_colours_in_a_terminal(
    chat_server_factory: ServerFactory, chat_client: ClientFactory, spawn: Any
) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    other.send("/nick bob")
    other.expect("* you are now known as bob")
    child = spawn(server, "--nick", "bob")
    nick = joined_nick(other)
    child.expect(re.escape("\x1b[2m* Welcome"))  # a notice, dim
    child.expect(re.escape("\x1b[1;31m! nickname 'bob' is taken"))  # an error, bold red
    child.expect("the nickname 'bob' was refused; you are connected under your guest name")
    child.expect(">")
    other.send("hi")
    child.expect(re.escape("\x1b[1;36m<bob>\x1b[0m hi"))  # a nickname in chat, bold cyan
    child.send("half typed")
    child.expect("half typed")
    child.sendcontrol("c")
    assert wait_exit(child) == 0
    assert other.expect(re.compile(r"^\* ")) == f"* {nick} left"


def test_server_shutdown_in_a_terminal_says_connection_lost(
    chat_server_factory: ServerFactory, chat_client: ClientFactory, spawn: Any
) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    child = spawn(server, NO_COLOR="1")
    joined_nick(other)
    child.expect(">")
    child.send("unsent")
    child.expect("unsent")
    server.stop()
    child.expect("server shutting down")
    child.expect(f"lost the connection to 127.0.0.1:{server.address[1]}")
    assert wait_exit(child) == 1
    assert "Traceback" not in child.before


# -- piped ------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"hi\n/quit\n", b"hi\n", b"hi", b"\n\nhi\r\n"])
def test_piped_input_is_sent_and_the_client_leaves(
    chat_server_factory: ServerFactory, chat_client: ClientFactory, stdin: bytes
) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    result = run_client(client_command(server), stdin)
    nick = joined_nick(other)
    assert other.readline() == f"<{nick}> hi"
    assert other.readline() == f"* {nick} left"
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "\x1b" not in out  # plain text into a pipe
    lines = out.splitlines()
    assert lines[0].startswith("* Welcome")
    assert "<You> hi" in lines
    assert lines[-1] == "* goodbye"
    assert result.stderr == b""


def test_timestamps_show_when_each_line_was_said(
    chat_server_factory: ServerFactory, chat_client: ClientFactory
) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    env = client_env(TZ="UTC")
    command = [*client_command(server, "--timestamps"), "--nick", "timed"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        other.expect("* timed joined")  # its first line named it (docs/protocol.md)
        other.send("hello there")  # before the client's input: it shows this line before it leaves
        other.sync()
        out, err = proc.communicate(b"hi\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert any(re.fullmatch(r"\d\d:\d\d <guest-1> hello there", line) for line in lines), lines
    assert any(re.fullmatch(r"\d\d:\d\d <You> hi", line) for line in lines), lines
    assert not any("timestamps are on" in line for line in lines)  # the answer to its own /timestamps


def test_split_stamp_reads_the_servers_time() -> None:
    assert split_stamp("[2001-02-03T04:05:06Z] <bob> hi") == (981173106.0, "<bob> hi")
    assert split_stamp("<bob> [2001-02-03T04:05:06Z] hi") == (None, "<bob> [2001-02-03T04:05:06Z] hi")
    assert split_stamp("[2001-02-30T04:05:06Z] x") == (None, "[2001-02-30T04:05:06Z] x")


def test_piped_quit_ends_the_session_and_later_lines_are_not_sent(
    chat_server_factory: ServerFactory, chat_client: ClientFactory
) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    result = run_client(client_command(server), b"one\n/quit done\ntwo\n")
    nick = joined_nick(other)
    assert result.returncode == 0, result.stderr
    assert other.readline() == f"<{nick}> one"
    assert other.readline() == f"* {nick} left (done)"
    assert other.sync() == []


def test_piped_server_shutdown_says_connection_lost(
    chat_server_factory: ServerFactory, chat_client: ClientFactory
) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    with subprocess.Popen(
        client_command(server), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        joined_nick(other)
        server.stop()
        out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 1
    assert out.decode().splitlines()[-1] == "* server shutting down"
    assert err.decode() == (
        f"chatcore client: error: lost the connection to 127.0.0.1:{server.address[1]}: the server closed it.\n"
    )


def test_closed_output_leaves_cleanly(chat_server_factory: ServerFactory, chat_client: ClientFactory) -> None:
    """``chatcore client | head -1``: the reader of the output goes away."""
    server = chat_server_factory()
    other = chat_client(server)
    with subprocess.Popen(
        client_command(server), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        nick = joined_nick(other)
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.readline().startswith(b"* Welcome")
        process.stdout.close()
        other.send("anyone there?")  # the client's next write fails
        assert other.expect(re.compile(r"^\* ")) == f"* {nick} left"
        assert process.wait(timeout=TIMEOUT) == 0
        assert process.stderr.read() == b""


def fake_server_session(reply: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run a client against a stand-in server that reads what the client
    sends on connecting (up to its /ping), sends ``reply`` and closes."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        command = [sys.executable, "-m", "chatcore", "client", "--port", str(listener.getsockname()[1]), *args]
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as process:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(TIMEOUT)
                # Read what the client sent first, so that closing is not a reset.
                received = b""
                while not received.endswith(b"/ping\n"):
                    data = connection.recv(1024)
                    assert data, f"the client closed after sending {received!r}"
                    received += data
                connection.sendall(reply)
            out, err = process.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_escape_sequences_from_the_server_are_not_printed() -> None:
    result = fake_server_session(b"\x1b]0;pwned\x07<eve> \x1b[2Jhi\x1b[31m there\n")
    assert result.stdout == b"<eve> hi there\n"
    assert result.returncode == 1
    assert result.stderr.count(b"\n") == 1
    assert b"lost the connection" in result.stderr


def test_connection_refused_is_one_line_and_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_client([sys.executable, "-m", "chatcore", "client", "--port", str(port)])
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in err
    assert f"chatcore serve --port {port}" in err


def test_piped_nick_refused_ends_the_run_before_anything_is_sent(
    chat_server_factory: ServerFactory, chat_client: ClientFactory
) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    other.send("/nick bob")
    other.expect("* you are now known as bob")
    result = run_client(client_command(server, "--nick", "bob"), b"hi\n")
    nick = joined_nick(other)
    assert other.readline() == f"* {nick} left"  # "hi" never went out under the guest name
    assert result.returncode == 1
    assert "<You> hi" not in result.stdout.decode()
    assert "taken" not in result.stdout.decode()  # the refusal is said once, on stderr
    assert result.stderr.decode() == (
        "chatcore client: error: the nickname 'bob' was refused (nickname 'bob' is taken); "
        "nothing was sent. Choose another with --nick.\n"
    )


def test_server_full_is_not_mistaken_for_a_refused_nick() -> None:
    # A stand-in server: the real one may reset a refused connection before
    # its "! server full" line is read, which makes the outcome a race.
    result = fake_server_session(b"! server full, try again later\n", "--nick", "bob")
    assert result.returncode == 1
    assert result.stdout == b""
    port = re.search(rb"127.0.0.1:(\d+)", result.stderr)
    assert port is not None
    # One message, with the server's reason in it.
    assert result.stderr.decode() == (
        f"chatcore client: error: lost the connection to 127.0.0.1:{port[1].decode()}: "
        "the server closed it (server full, try again later).\n"
    )


def test_without_a_password_the_client_arrives_under_its_nick_once(
    chat_server_factory: ServerFactory, chat_client: ClientFactory
) -> None:
    """Issue 25, item 1: --nick is the first line, so a server without a
    password lets the client in under it: the welcome says carol, the room
    sees one join and no guest name, and the input goes out under it."""
    server = chat_server_factory()
    other = chat_client(server)
    result = run_client(client_command(server, "--nick", "carol"), b"hi\n")
    assert other.readline() == "* carol joined"
    assert other.readline() == "<carol> hi"
    assert result.returncode == 0
    assert result.stderr == b""
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("* Welcome to chatcore, carol! "), lines
    assert "<You> hi" in lines
    assert not any("guest" in line for line in lines)


# -- honest scripting: refusals end a piped run ----------------------------


@pytest.fixture
def password_server(chat_server_factory: ServerFactory, tmp_path: Any) -> ChatServer:
    path = tmp_path / "server-password"
    path.write_text("s3cret\n")
    return chat_server_factory("--password-file", str(path))


def test_piped_without_the_password_sends_nothing_and_exits_1(
    password_server: ChatServer, chat_client: ClientFactory
) -> None:
    result = run_client(client_command(password_server), b"hi\n")
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "<You> hi" not in out
    assert "password required" not in out
    assert result.stderr.decode() == (
        "chatcore client: error: the server requires a password: "
        "give it with --password-file FILE or CHATCORE_PASSWORD.\n"
    )


def test_piped_with_a_wrong_password_exits_1_with_one_message(password_server: ChatServer) -> None:
    command = client_command(password_server)
    result = subprocess.run(
        command,
        input=b"hi\n",
        capture_output=True,
        timeout=TIMEOUT,
        env=client_env(CHATCORE_PASSWORD="wrong"),
        check=False,
    )
    assert result.returncode == 1
    assert "<You> hi" not in result.stdout.decode()
    assert "password" not in result.stdout.decode()
    assert result.stderr.decode() == (
        "chatcore client: error: the server refused the password (wrong password); "
        "check --password-file or CHATCORE_PASSWORD.\n"
    )


def test_piped_with_the_right_password_shows_no_password_required(
    password_server: ChatServer, chat_client: ClientFactory
) -> None:
    result = subprocess.run(
        client_command(password_server),
        input=b"hi\n",
        capture_output=True,
        timeout=TIMEOUT,
        env=client_env(CHATCORE_PASSWORD="s3cret"),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("* Welcome"), lines
    assert "<You> hi" in lines
    assert not any("password" in line for line in lines)
    assert result.stderr == b""


def test_with_a_password_the_client_arrives_under_its_nick_once(password_server: ChatServer) -> None:
    """Issue 25, item 1: --nick is sent before /pass, so the server lets the
    client in under it: no guest name, no rename, one join."""
    other = LineClient(password_server.address, timeout=TIMEOUT)
    try:
        other.send("/pass s3cret")
        other.expect(re.compile(r"^\* Welcome to chatcore, guest-1! "))
        other.sync()
        result = subprocess.run(
            client_command(password_server, "--nick", "alice"),
            input=b"hi\n",
            capture_output=True,
            timeout=TIMEOUT,
            env=client_env(CHATCORE_PASSWORD="s3cret"),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.decode().splitlines()
        assert lines[0].startswith("* Welcome to chatcore, alice! "), lines
        assert "<You> hi" in lines
        assert not any("guest" in line or "known as" in line or "will enter" in line for line in lines)
        assert other.readline() == "* alice joined"
        assert other.readline() == "<alice> hi"
        # A name taken: in under a guest name, and the run ends as refused.
        other.send("/nick bob")
        other.expect("* you are now known as bob")
        taken = subprocess.run(
            client_command(password_server, "--nick", "bob"),
            input=b"hi\n",
            capture_output=True,
            timeout=TIMEOUT,
            env=client_env(CHATCORE_PASSWORD="s3cret"),
            check=False,
        )
        assert taken.returncode == 1
        assert "<You> hi" not in taken.stdout.decode()
        assert "the nickname 'bob' was refused (nickname 'bob' is taken" in taken.stderr.decode()
    finally:
        other.close()


def test_piped_refused_line_is_not_shown_as_sent_and_ends_the_run(
    chat_server_factory: ServerFactory, chat_client: ClientFactory
) -> None:
    server = chat_server_factory("--plugins", "welcome,filters", "--banned-words", "darn", "--banned-action", "reject")
    other = chat_client(server)
    result = run_client(client_command(server), b"fine\n\noh darn\nnever sent\n")
    nick = joined_nick(other)
    assert other.readline() == f"<{nick}> fine"
    assert other.readline() == f"* {nick} left"  # "never sent" was not
    assert result.returncode == 1
    lines = result.stdout.decode().splitlines()
    assert "<You> fine" in lines
    assert not any("darn" in line or "never sent" in line for line in lines), lines
    assert result.stderr.decode() == (
        "chatcore client: error: line 3 was refused: message not sent: it contains the banned word 'darn'. "
        "The rest of the input was not sent.\n"
    )


def test_piped_refused_command_ends_the_run(chat_server_factory: ServerFactory, chat_client: ClientFactory) -> None:
    server = chat_server_factory()
    other = chat_client(server)
    other.send("/nick bob")
    other.expect("* you are now known as bob")
    result = run_client(client_command(server), b"/ping\n/nick bob\nhi\n")
    nick = joined_nick(other)
    assert other.readline() == f"* {nick} left"
    assert result.returncode == 1
    lines = result.stdout.decode().splitlines()
    assert lines.count("* pong") == 1  # the user's own /ping is answered; the client's are not shown
    assert result.stderr.decode() == (
        "chatcore client: error: line 2 was refused: nickname 'bob' is taken. The rest of the input was not sent.\n"
    )


def test_refused_line_is_not_shown_as_sent_in_a_terminal(
    chat_server_factory: ServerFactory, chat_client: ClientFactory, spawn: Any
) -> None:
    server = chat_server_factory("--plugins", "welcome,filters", "--banned-words", "darn", "--banned-action", "reject")
    other = chat_client(server)
    child = spawn(server, NO_COLOR="1")
    nick = joined_nick(other)
    child.expect("Welcome")
    expect_prompt(child)
    child.sendline("oh darn")
    child.expect("banned word")
    expect_prompt(child)
    child.sendline("all good")
    child.expect("<You> all good")
    assert other.readline() == f"<{nick}> all good"
    assert "<You> oh darn" not in child.before
    child.sendcontrol("d")
    assert wait_exit(child) == 0


# -- the pieces -------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("<alice> hello", Kind.CHAT),
        ("<alice@east> hello", Kind.CHAT),
        ("<alice> * bob waves", Kind.CHAT),
        ("* alice waves", Kind.ACTION),
        ("* alice joined the fun", Kind.ACTION),
        ("* alice joined", Kind.NOTICE),
        ("* alice left", Kind.NOTICE),
        ("* alice left (timeout)", Kind.NOTICE),
        ("* alice is now known as bob", Kind.NOTICE),
        ("* you are now known as bob", Kind.NOTICE),
        ("* you are now in games (2 here)", Kind.NOTICE),
        ("* server shutting down", Kind.NOTICE),
        ("* pong", Kind.NOTICE),
        ("* commands:", Kind.NOTICE),
        ("*   /nick NAME  change your nickname", Kind.NOTICE),
        ("! nickname 'bob' is taken", Kind.ERROR),
        ("*alice* psst", Kind.PRIVATE),
        ("-> *bob* psst", Kind.PRIVATE_SENT),
        ("# <alice> hi", Kind.HISTORY),
        ("# * alice waves", Kind.HISTORY),
        ("hello", Kind.OTHER),
        ("", Kind.OTHER),
        # A room's label does not change the kind; its operators' acts are notices.
        ("[dev] <alice> hello", Kind.CHAT),
        ("[dev] * alice waves", Kind.ACTION),
        ("[dev] * alice joined", Kind.NOTICE),
        ("[dev] * alice set the topic: Release on Friday", Kind.NOTICE),
        ("* alice cleared the topic", Kind.NOTICE),
        ("[dev] * alice set mode +o bob", Kind.NOTICE),
        ("* bob was kicked out by alice (spam)", Kind.NOTICE),
        ("* alice invites you to dev: /join dev", Kind.NOTICE),
        ("[not a room!] * alice waves", Kind.OTHER),
    ],
)
def test_classify(line: str, kind: Kind) -> None:
    assert classify(line) is kind


def test_render_is_plain_without_colour() -> None:
    for kind in Kind:
        assert render("<alice> hi", kind, colour=False) == "<alice> hi"


def test_render_colours_the_nick_of_chat_and_whole_other_lines() -> None:
    assert render("<alice> hi", Kind.CHAT, colour=True) == "\x1b[1;36m<alice>\x1b[0m hi"
    assert render("! no", Kind.ERROR, colour=True) == "\x1b[1;31m! no\x1b[0m"
    assert render("hello", Kind.OTHER, colour=True) == "hello"
    assert render("[dev] <alice> hi", Kind.CHAT, colour=True) == "[dev] \x1b[1;36m<alice>\x1b[0m hi"
    assert render("[dev] ! no", Kind.ERROR, colour=True) == "[dev] \x1b[1;31m! no\x1b[0m"


class FakeStream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("tty", "environ", "expected"),
    [
        (True, {}, True),
        (True, {"NO_COLOR": ""}, True),  # set but empty: ignored, as no-color.org says
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": "0"}, False),  # any non-empty value
        (False, {}, False),
    ],
)
def test_wants_colour(tty: bool, environ: dict[str, str], expected: bool) -> None:
    assert wants_colour(FakeStream(tty), environ) is expected  # type: ignore[arg-type]


def test_own_line() -> None:
    assert own_line("hello") == "<You> hello"
    assert own_line("//etc/passwd is public") == "<You> /etc/passwd is public"
    assert own_line("/me waves") is None
    assert own_line("/quit") is None


def test_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "--host",
        "--port",
        "--nick",
        "--timestamps",
        "127.0.0.1",
        "12000",
        "NO_COLOR",
        "Ctrl-D",
        "Exit status",
        "Ctrl-N",
    ):
        assert needle in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "port must be 1 to 65535"),
        (["--port", "x"], "not a port number"),
        (["--nick", "a b"], "a nickname is one word"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    result = run_client([sys.executable, "-m", "chatcore", "client", *args])
    assert result.returncode == 2
    assert message in result.stderr.decode()


# -- rooms ------------------------------------------------------------------


def expect_room_prompt(child: pexpect.spawn, prompt: str) -> None:
    """Wait for the prompt ``prompt`` (its trailing space is drawn as a cursor move)."""
    child.expect(re.escape(prompt))


@pytest.mark.slow  # about 3 s: a client process and some twenty key presses, each paced by pexpect
def test_prompt_shows_the_current_room_and_keys_switch_rooms(
    chat_server_factory: ServerFactory, chat_client: ClientFactory, spawn: Any
) -> None:
    server = chat_server_factory()
    in_lobby = chat_client(server)
    in_dev = chat_client(server)
    in_dev.send("/join dev")
    in_dev.expect("* you are now in dev (1 here)")
    in_dev.send("/part lobby")
    in_dev.expect("* you left lobby; you now talk in dev")
    in_lobby.sync()  # in_dev's join and leave
    child = spawn(server, NO_COLOR="1")
    nick = joined_nick(in_lobby)
    expect_room_prompt(child, "[lobby] >")  # known from the /rooms the client sends on connecting

    child.sendline("/join dev")
    child.expect(re.escape("* you are now in dev (2 here)"))
    expect_room_prompt(child, "[dev 2/2] >")
    assert in_dev.expect(JOINED) == f"* {nick} joined"

    # Ctrl-P: the previous room, while a line is half typed; the line stays
    # and goes to the room switched to.
    child.send("to the lob")
    child.expect("to the lob")
    child.sendcontrol("p")
    child.expect(re.escape("* you now talk in lobby"))
    expect_room_prompt(child, "[lobby 1/2] >")
    child.send("by\r")
    assert in_lobby.expect(re.compile("^<")) == f"<{nick}> to the lobby"

    # Alt-2: the second room joined; Ctrl-N from there wraps round to the first.
    child.send("\x1b2")
    child.expect(re.escape("* you now talk in dev"))
    expect_room_prompt(child, "[dev 2/2] >")
    child.sendline("to dev")
    assert in_dev.expect(re.compile("^<")) == f"<{nick}> to dev"
    # Ctrl-N twice, faster than the server answers: two rooms on (ops, lobby, dev).
    child.sendline("/join ops")
    expect_room_prompt(child, "[ops 3/3] >")
    child.send("\x0e\x0e")
    child.expect(re.escape("* you now talk in lobby"))
    child.expect(re.escape("* you now talk in dev"))
    expect_room_prompt(child, "[dev 2/3] >")
    child.sendline("/part ops")
    child.expect(re.escape("* you left ops; you now talk in dev"))
    child.sendcontrol("n")
    expect_room_prompt(child, "[lobby 1/2] >")
    child.send("\x1b9")  # no ninth room: nothing is sent
    child.sendline("/part lobby")
    child.expect(re.escape("* you left lobby; you now talk in dev"))
    expect_room_prompt(child, "[dev] >")
    child.sendline("/part")
    expect_room_prompt(child, "[no room] >")
    assert in_dev.sync() == [f"* {nick} left"]
    child.sendcontrol("d")
    assert wait_exit(child) == 0


def test_piped_client_is_unchanged_by_the_rooms_query(chat_server_factory: ServerFactory) -> None:
    server = chat_server_factory()
    result = run_client(client_command(server), b"/join dev\n/rooms\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    # The client's own /rooms on connecting is not shown; the user's is.
    assert [line for line in lines if "rooms:" in line] == ["* 2 rooms: dev (1, current), lobby (1, joined)"]


IN_A_AND_B = ["* you are now in a (1 here)", "* you are now in b (1 here)"]


@pytest.mark.parametrize(
    ("lines", "joined", "current", "prompt"),
    [
        ([], [], None, "> "),
        (["* 1 room: lobby (3, current)"], ["lobby"], "lobby", "[lobby] > "),
        (["* 2 rooms: dev (1), lobby (3)"], [], None, "> "),  # nothing marked: not known
        (["* you are now in a (1 here)", "* 1 room: b (1)"], [], "", "[no room] > "),
        (["* 1 room: lobby (3, current)", "* you are now in dev (1 here)"], ["lobby", "dev"], "dev", "[dev 2/2] > "),
        (["* you are now in dev (1 here)", "* you now talk in dev"], ["dev"], "dev", "[dev] > "),
        (["* you are now in a (1 here)", "* you are now in b (1 here)", "* you now talk in a"], ["a", "b"], "a", None),
        (["* you are now in a (1 here)", "* you left a; /join ROOM to enter another"], [], "", "[no room] > "),
        (
            ["* you are now in a (1 here)", "* you are now in b (1 here)", "* you left b; you now talk in a"],
            ["a"],
            "a",
            "[a] > ",
        ),
        (
            [*IN_A_AND_B, "* you were kicked out of b by eve (spam)"],
            ["a"],
            "a",
            None,
        ),
        (
            [*IN_A_AND_B, "* you now talk in a", "* you were kicked out of b by eve"],
            ["a"],
            "a",
            None,
        ),
        # Lines of others, and room lines, change nothing.
        (["<bob> * you are now in dev (1 here)", "[dev] * bob joined", "* bob left"], [], None, "> "),
    ],
)
def test_rooms_follow_the_server_notices(
    lines: list[str], joined: list[str], current: str | None, prompt: str | None
) -> None:
    rooms = Rooms()
    for line in lines:
        rooms.update(line)
    assert rooms.joined == joined
    assert rooms.current == current
    if prompt is not None:
        assert rooms.prompt() == prompt


def test_room_keys_pick_rooms_in_the_order_joined() -> None:
    rooms = Rooms()
    assert rooms.step(1) is None
    for line in ["* you are now in lobby (1 here)", "* you are now in dev (1 here)", "* you are now in ops (1 here)"]:
        rooms.update(line)
    assert (rooms.step(1), rooms.step(-1)) == ("lobby", "dev")  # ops is current: round to the first
    assert [rooms.number(n) for n in (0, 1, 3, 4)] == [None, "lobby", "ops", None]
    # A key pressed again before the server answered goes on from the room asked for.
    rooms.switching = "lobby"
    assert rooms.step(1) == "dev"


# -- accounts (issue 28) -------------------------------------------------------

ACCOUNT_PASSWORD = "horse-battery-9"


@pytest.fixture
def account_server(chat_server_factory: ServerFactory, tmp_path: Any) -> ChatServer:
    """A server with the accounts plugin and the account alice."""
    from chatcore.engine import auth

    server = chat_server_factory("--plugins", "welcome,accounts", "--state-db", str(tmp_path / "state.db"))
    record = {"name": "alice", "password": auth.hash_password(ACCOUNT_PASSWORD), "certfp": [], "suspended": ""}
    assert server.store.create("account", "alice", record)
    return server


def test_piped_account_login_arrives_under_the_account_once(
    account_server: ChatServer, chat_client: ClientFactory, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 25, item 1: ``--account alice`` (the password from a file) is
    the first line, ``/login alice ...``, and the server lets the client in
    under the account's name: the welcome says alice, the room sees one
    join and no guest name or rename."""
    caplog.set_level(logging.DEBUG, logger="chatcore")
    other = chat_client(account_server)
    secret = tmp_path / "account-password"
    secret.write_text(ACCOUNT_PASSWORD + "\n")
    command = client_command(account_server, "--account", "alice", "--account-password-file", str(secret))
    result = run_client(command, b"hi\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("* Welcome to chatcore, alice! "), lines
    assert "* you are logged in to alice" in lines
    assert not any("guest" in line or "known as" in line for line in lines), lines
    assert "<You> hi" in lines
    assert other.readline() == "* alice joined"
    assert other.readline() == "<alice> hi"
    other.sync()
    seen = other.received[other.received.index("* alice joined") :]
    assert not any("guest" in line or "known as" in line for line in seen), seen
    # Never in the output, the command line or the server's log (the password came from a file).
    assert ACCOUNT_PASSWORD not in result.stdout.decode() + result.stderr.decode()
    assert ACCOUNT_PASSWORD not in " ".join(command)
    assert "logged in to account 'alice'" in caplog.text
    assert ACCOUNT_PASSWORD not in caplog.text


def test_piped_account_login_that_fails_arrives_as_a_guest_and_ends_the_run(
    account_server: ChatServer, chat_client: ClientFactory
) -> None:
    other = chat_client(account_server)
    command = client_command(account_server, "--account", "alice")
    result = subprocess.run(
        command,
        input=b"hi\n",
        capture_output=True,
        timeout=TIMEOUT,
        env=client_env(CHATCORE_ACCOUNT_PASSWORD="not-the-password"),
        check=False,
    )
    assert result.returncode == 1
    assert "<You> hi" not in result.stdout.decode()
    assert result.stderr.decode() == (
        "chatcore client: error: the server refused the login to the account alice (wrong account name or "
        "password); check --account-password-file or CHATCORE_ACCOUNT_PASSWORD.\n"
    )
    guest = joined_nick(other)  # in under a guest name; "hi" never went out
    other.expect(f"* {guest} left")
    assert not any("<" in line for line in other.received), other.received


def test_piped_account_login_from_the_environment_and_a_wrong_one_ends_the_run(account_server: ChatServer) -> None:
    command = client_command(account_server, "--account", "alice", "--nick", "ally")
    good = subprocess.run(
        command,
        input=b"hi\n",
        capture_output=True,
        timeout=TIMEOUT,
        env=client_env(CHATCORE_ACCOUNT_PASSWORD=ACCOUNT_PASSWORD),
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "* you are logged in to alice" in good.stdout.decode().splitlines()
    bad = subprocess.run(
        command,
        input=b"hi\n",
        capture_output=True,
        timeout=TIMEOUT,
        env=client_env(CHATCORE_ACCOUNT_PASSWORD="wrong-password"),
        check=False,
    )
    assert bad.returncode == 1
    assert "<You> hi" not in bad.stdout.decode()
    assert bad.stderr.decode() == (
        "chatcore client: error: the server refused the login to the account alice (wrong account name or "
        "password); check --account-password-file or CHATCORE_ACCOUNT_PASSWORD.\n"
    )


def test_account_without_a_password_source_is_a_usage_error(account_server: ChatServer) -> None:
    result = run_client(client_command(account_server, "--account", "alice"), b"hi\n")
    assert result.returncode == 2
    assert "--account alice needs its password: --account-password-file FILE or CHATCORE_ACCOUNT_PASSWORD" in (
        result.stderr.decode()
    )


def test_the_account_password_is_asked_for_in_a_terminal(account_server: ChatServer, spawn: Any) -> None:
    child = spawn(account_server, "--account", "alice")
    child.expect("password of the account alice: ")
    child.sendline(ACCOUNT_PASSWORD)
    child.expect("you are logged in to alice")
    expect_prompt(child)
    assert account_server.registry.find("alice").account == "alice"
    child.sendcontrol("d")
    assert wait_exit(child) == 0
    assert ACCOUNT_PASSWORD not in (child.before or "")
