"""IRC software nobody here wrote against a real ``chatcore serve``: the
``irc`` library (jaraco/irc) as a bot, and Debian's ``ii`` client and
WeeChat (``weechat-headless``), each in a room with a native client.

``ii`` and ``weechat-headless`` come from Debian (``apt-get install ii
weechat-headless``; .ci/run installs them): a missing one is a failure,
never a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import irc.client
import pytest

from chatcore.testing import LineClient, ServerProcess, wait_for

pytestmark = pytest.mark.slow

TIMEOUT = 10.0


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    with ServerProcess(
        "--plugins", "welcome,irc", "--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0"
    ) as proc:
        yield proc
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[LineClient]:
    client = LineClient(server.addresses["tcp"])
    client.sync()
    client.send("/nick bob")
    client.expect("* you are now known as bob")
    yield client
    client.close()


class Bot:
    """A jaraco/irc client, its events recorded, pumped until a condition holds."""

    def __init__(self, address: tuple[str, int], nick: str) -> None:
        self.reactor = irc.client.Reactor()
        self.events: list[irc.client.Event] = []
        self.reactor.add_global_handler("all_events", lambda _connection, event: self.events.append(event))
        self.connection = self.reactor.server().connect(address[0], address[1], nick, ircname="A jaraco/irc bot")

    def wait(self, what: str, condition: Callable[[irc.client.Event], bool]) -> irc.client.Event:
        deadline = time.monotonic() + TIMEOUT
        seen = 0
        while time.monotonic() < deadline:
            for event in self.events[seen:]:
                if condition(event):
                    return event
            seen = len(self.events)
            self.reactor.process_once(0.05)
        raise AssertionError(f"the bot did not see {what}; it saw {[(e.type, e.arguments) for e in self.events][-10:]}")

    def wait_type(self, kind: str, **fields: Any) -> irc.client.Event:
        def matches(event: irc.client.Event) -> bool:
            return event.type == kind and all(getattr(event, k) == v for k, v in fields.items())

        return self.wait(f"{kind} {fields}", matches)


def test_the_irc_library_as_a_bot_in_a_room_with_a_native_user(server, bob):
    bot = Bot(server.addresses["irc"], "ircbot")
    try:
        bot.wait_type("welcome")
        assert bot.connection.features.network == "chatcore"
        assert bot.connection.features.chantypes == "#"
        bot.wait_type("endofmotd")
        bot.connection.join("#lobby")  # registering joins no channel: a bot joins its own
        joined = bot.wait_type("join", target="#lobby")
        assert joined.source.nick == "ircbot"
        assert bob.expect(re.compile("joined")) == "* ircbot joined"

        bot.connection.privmsg("#lobby", "hello from the bot")
        assert bob.readline() == "<ircbot> hello from the bot"
        bob.send("hello bot")
        said = bot.wait_type("pubmsg", target="#lobby")
        assert (said.source.nick, said.arguments) == ("bob", ["hello bot"])

        bot.connection.action("#lobby", "beeps")
        assert bob.readline() == "* ircbot beeps"
        bob.send("/me pats the bot")
        assert bob.readline() == "* bob pats the bot"
        action = bot.wait_type("action", target="#lobby")
        assert (action.source.nick, action.arguments) == ("bob", ["pats the bot"])

        bot.connection.privmsg("bob", "a secret")
        assert bob.readline() == "*ircbot* a secret"
        bob.send("/msg ircbot secret back")
        assert bob.readline() == "-> *ircbot* secret back"
        private = bot.wait_type("privmsg", target="ircbot")
        assert (private.source.nick, private.arguments) == ("bob", ["secret back"])

        bot.connection.names(["#lobby"])
        names = bot.wait_type("namreply")
        assert sorted(names.arguments[2].split()) == ["@bob", "ircbot"]  # bob made the room
        bot.connection.who("#lobby")
        bot.wait_type("endofwho")
        bot.connection.whois(["bob"])
        assert bot.wait_type("whoisuser").arguments[0] == "bob"

        bot.connection.nick("robot")
        bot.wait_type("nick", target="robot")
        assert bob.expect(re.compile("known as")) == "* ircbot is now known as robot"
        bob.send("/nick robert")
        renamed = bot.wait_type("nick", target="robert")
        assert renamed.source.nick == "bob"

        # One bot, two channels; bob in both sees which room each line is from.
        bot.connection.join("#dev")
        bot.wait_type("join", target="#dev")
        bob.send("/join dev")
        assert bot.wait_type("join", target="#dev", source="robert!robert@chatcore")
        bot.connection.privmsg("#dev", "in two channels")
        assert bob.expect(re.compile("two channels")) == "[dev] <robot> in two channels"
        bot.connection.part("#dev")
        bot.wait_type("part", target="#dev")
        assert bob.expect(re.compile("robot left")) == "[dev] * robot left"
        bot.connection.privmsg("#lobby", "still here")
        assert bob.expect(re.compile("still here")) == "[lobby] <robot> still here"

        bot.connection.quit("shutting down the bot")
        bot.wait_type("error")
        assert bob.expect(re.compile("robot left [(]shutting")) == "[lobby] * robot left (shutting down the bot)"
    finally:
        bot.reactor.disconnect_all()


def test_the_irc_library_pages_back_with_chathistory():
    """A CHATHISTORY exchange (docs/irc.md): the library as a client that
    asks for the channel's past in chathistory batches, with time and msgid
    tags, and pages back by msgid."""
    with ServerProcess(
        "--plugins", "irc,history", "--history-room-lines", "lobby=50",
        "--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0",
    ) as proc:  # fmt: skip
        native = LineClient(proc.addresses["tcp"])
        bot = Bot(proc.addresses["irc"], "historian")
        try:
            for number in range(8):
                native.send(f"line {number}")
            native.sync()
            bot.connection.cap("REQ", "batch", "draft/chathistory", "message-tags", "server-time")
            bot.wait("the capabilities", lambda event: event.type == "cap" and event.arguments[0] == "ACK")
            bot.wait_type("nomotd")  # registered (no welcome plugin: no MOTD)
            assert bot.connection.features.chathistory == 50

            def page(request: str) -> list[irc.client.Event]:
                """The PRIVMSGs of the chathistory batch that answers ``request``."""
                bot.events.clear()
                bot.connection.send_raw(request)
                closing = bot.wait("the batch's end", lambda event: event.type == "batch" and event.target[0] == "-")
                opening = next(event for event in bot.events if event.type == "batch" and event.target[0] == "+")
                assert opening.arguments == ["chathistory", "#lobby"]
                assert closing.target == "-" + opening.target[1:]
                inner = [event for event in bot.events if event.type == "pubmsg"]
                assert all({"key": "batch", "value": opening.target[1:]} in event.tags for event in inner)
                return inner

            def tag(event: irc.client.Event, key: str) -> str:
                return str(next(item["value"] for item in event.tags if item["key"] == key))

            # Joining, a client with batch and server-time gets the replay as a batch too.
            replayed = page("JOIN #lobby")
            assert [event.arguments[0] for event in replayed] == [f"line {number}" for number in range(8)]
            latest = page("CHATHISTORY LATEST #lobby * 3")
            assert [event.arguments[0] for event in latest] == ["line 5", "line 6", "line 7"]
            assert all(tag(event, "time").endswith("Z") for event in latest)  # when each was said
            older = page(f"CHATHISTORY BEFORE #lobby msgid={tag(latest[0], 'msgid')} 10")
            assert [event.arguments[0] for event in older] == [f"line {number}" for number in range(5)]
            assert {tag(event, "msgid") for event in older}.isdisjoint(tag(event, "msgid") for event in latest)
        finally:
            bot.reactor.disconnect_all()
            native.close()


def test_a_native_users_quit_reaches_the_bot(server, bob):
    bot = Bot(server.addresses["irc"], "watcher")
    try:
        bot.wait("registered", lambda event: event.type in ("endofmotd", "nomotd"))
        bot.connection.join("#lobby")
        bot.wait_type("endofnames")
        bob.send("/quit see you")
        quit_ = bot.wait_type("quit")
        assert (quit_.source.nick, quit_.arguments) == ("bob", ["Quit: see you"])
    finally:
        bot.reactor.disconnect_all()


def test_the_irc_library_as_an_operator_kicks_and_a_bot_sees_the_kick(tmp_path):
    from chatcore.engine.auth import hash_password

    opers_file = tmp_path / "opers"
    opers_file.write_text(f"warden {hash_password('keys')}\n", encoding="utf-8")
    listen = ["--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0"]
    with ServerProcess("--plugins", "irc", "--opers-file", str(opers_file), *listen) as proc:
        spammer = LineClient(proc.addresses["tcp"])  # first in the lobby: its operator
        spammer.sync()
        spammer.send("/nick spammer")
        spammer.expect("* you are now known as spammer")
        op, watcher = Bot(proc.addresses["irc"], "warden"), Bot(proc.addresses["irc"], "watcher")
        try:
            for bot in (op, watcher):
                bot.wait("registered", lambda event: event.type in ("endofmotd", "nomotd"))
                bot.connection.join("#lobby")
                bot.wait_type("endofnames")
            op.connection.kick("#lobby", "spammer", "no spam")
            assert op.wait_type("chanoprivsneeded").arguments[0] == "#lobby"
            op.connection.oper("warden", "keys")
            op.wait_type("youreoper")
            op.events.clear()  # the NAMES of its JOIN are in there
            op.connection.names(["#lobby"])
            assert "@warden" in op.wait_type("namreply").arguments[2].split()
            op.connection.kick("#lobby", "spammer", "no spam")
            kick = watcher.wait_type("kick")
            assert (kick.source.nick, kick.target, kick.arguments) == ("warden", "#lobby", ["spammer", "no spam"])
            # A KICK takes the spammer out of the channel, not off the server.
            assert spammer.expect(re.compile("kicked")) == "* you were kicked out of lobby by warden (no spam)"
            spammer.send("/ping")
            assert spammer.expect("* pong") == "* pong"
        finally:
            spammer.close()
            op.reactor.disconnect_all()
            watcher.reactor.disconnect_all()
    assert proc.returncode == 0, proc.stderr


class ClientProgram:
    """An IRC client program in a child process, read through the files it writes."""

    proc: subprocess.Popen[bytes]

    def wait_in_file(self, where: Path, pattern: str, pick: Callable[[str], str] = str) -> str:
        """``pick`` of the first line of ``where`` matching ``pattern``, once it is there."""
        regex = re.compile(pattern)

        def found() -> str | None:
            text = where.read_text(encoding="utf-8", errors="replace") if where.exists() else ""
            return next((pick(line) for line in text.splitlines() if regex.search(line)), None)

        line: str = wait_for(found, TIMEOUT, f"{pattern!r} in {where}")
        return line

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# -- ii, Debian's file-based IRC client ----------------------------------------------------


class II(ClientProgram):
    """``ii`` in a child process: write commands to its FIFOs, read its out files."""

    def __init__(self, address: tuple[str, int], nick: str, directory: Path) -> None:
        executable = shutil.which("ii")
        assert executable, "ii is not installed: apt-get install ii (.ci/run installs it)"
        self.root = directory / address[0]
        self.proc = subprocess.Popen(
            [executable, "-s", address[0], "-p", str(address[1]), "-n", nick, "-i", str(directory), "-f", "ii user"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # everything is in its out files
            stderr=subprocess.DEVNULL,
        )

    def write(self, fifo: Path, line: str) -> None:
        wait_for(fifo.exists, TIMEOUT, f"{fifo} made by ii")
        # ii keeps its FIFOs open for reading; O_NONBLOCK fails rather than hangs if it is gone.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, line.encode("utf-8") + b"\n")
        finally:
            os.close(fd)

    def say(self, channel: str, line: str) -> None:
        self.write(self.root / channel / "in", line)

    def command(self, line: str) -> None:
        self.write(self.root / "in", line)

    def wait_out(self, where: Path, pattern: str) -> str:
        return self.wait_in_file(where, pattern)


def test_the_ii_client_end_to_end(server, bob, tmp_path):
    ii = II(server.addresses["irc"], "iiuser", tmp_path)
    try:
        lobby = ii.root / "#lobby"
        ii.wait_out(ii.root / "out", r"Welcome to the chatcore IRC network, iiuser!iiuser@chatcore")
        ii.command("/j #lobby")  # registering joins no channel
        ii.wait_out(lobby / "out", r"iiuser\(iiuser@chatcore\) has joined #lobby")
        assert bob.expect(re.compile("joined")) == "* iiuser joined"

        ii.say("#lobby", "hello from ii")
        assert bob.readline() == "<iiuser> hello from ii"
        bob.send("hello ii")
        ii.wait_out(lobby / "out", r"<bob> hello ii$")

        ii.command("/PRIVMSG #lobby :\x01ACTION waves\x01")  # ii has no /me: a raw line
        assert bob.readline() == "* iiuser waves"
        bob.send("/me waves back")
        assert bob.readline() == "* bob waves back"
        ii.wait_out(lobby / "out", r"<bob> .?ACTION waves back")

        bob.send("/msg iiuser private hello")
        assert bob.readline() == "-> *iiuser* private hello"
        ii.wait_out(ii.root / "bob" / "out", r"<bob> private hello$")
        ii.say("bob", "private answer")
        assert bob.readline() == "*iiuser* private answer"

        ii.command("/n iirenamed")
        assert bob.readline() == "* iiuser is now known as iirenamed"
        # ii quits without reading what is left on its socket, and a close
        # with unread input is a reset, which can discard the QUIT before the
        # server reads it: let ii read its NICK first (it shows no line for
        # it; the end of a WHOIS, which comes after, is shown).
        ii.command("/WHOIS iirenamed")
        ii.wait_out(ii.root / "out", r"iirenamed End of /WHOIS list")

        ii.command("/q off to lunch")
        assert bob.readline() == "* iirenamed left (off to lunch)"
        assert ii.proc.wait(TIMEOUT) is not None  # ii exits when the server closes the link
    finally:
        ii.stop()


def test_ii_shows_no_line_forged_by_a_long_quit_reason(server, bob, tmp_path):
    # ii reads lines of at most 512 bytes: what a longer line had from byte
    # 512 on was a line of its own, here a message "from" admin.
    ii = II(server.addresses["irc"], "iiuser", tmp_path)
    carol = LineClient(server.addresses["tcp"])
    try:
        lobby = ii.root / "#lobby"
        ii.wait_out(ii.root / "out", r"Welcome to the chatcore IRC network")
        ii.command("/j #lobby")
        ii.wait_out(lobby / "out", r"iiuser\(iiuser@chatcore\) has joined #lobby")
        carol.sync()
        head = ":bob!bob@chatcore QUIT :Quit: "
        bob.send("/quit " + "x" * (512 - len(head)) + ":admin!admin@chatcore PRIVMSG #lobby :forged by bob")
        carol.send("after the quit")
        ii.wait_out(lobby / "out", r"> after the quit$")
        shown = (lobby / "out").read_text(encoding="utf-8")
        assert "admin" not in shown
        assert "forged" not in shown
    finally:
        carol.close()
        ii.stop()


# -- WeeChat, a terminal IRC client, headless -----------------------------------------------


class WeeChat(ClientProgram):
    """``weechat-headless`` in a child process with a home of its own:
    commands go in through its FIFO plugin, what it shows comes out of its
    logger plugin's files (one per buffer, flushed at once)."""

    def __init__(self, address: tuple[str, int], nick: str, home: Path, capabilities: str = "") -> None:
        executable = shutil.which("weechat-headless")
        assert executable, "weechat-headless is not installed: apt-get install weechat-headless (.ci/run installs it)"
        self.home = home
        self.fifo = home / "fifo"
        self.logs = home / "logs"
        setup = ";".join(
            [
                "/set logger.file.flush_delay 0",
                f"/set logger.file.path {self.logs}",
                f"/set fifo.file.path {self.fifo}",
                f"/server add chatcore {address[0]}/{address[1]} -notls",
                f"/set irc.server.chatcore.nicks {nick}",
                f"/set irc.server.chatcore.username {nick}",
                "/set irc.server.chatcore.autoreconnect off",
                # Registering joins no channel: WeeChat joins its own, two of them.
                '/set irc.server.chatcore.autojoin "#lobby,#dev"',
                # WeeChat's own flood control waits 2 s between lines by default.
                "/set irc.server.chatcore.anti_flood_prio_high 0",
                "/set irc.server.chatcore.anti_flood_prio_low 0",
                # What it asks for beyond its own choice ("*": what both sides support).
                *([f'/set irc.server.chatcore.capabilities "{capabilities}"'] if capabilities else []),
                "/connect chatcore",
            ]
        )
        self.proc = subprocess.Popen(
            # Only the plugins it needs: no scripts, no spelling, no relay.
            [executable, "--dir", str(home), "--plugins", "irc,logger,fifo", "--no-script", "--run-command", setup],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def command(self, buffer: str, line: str) -> None:
        """``line`` typed into ``buffer`` (``irc.chatcore.#lobby``, ``irc.server.chatcore``)."""
        wait_for(
            self.fifo.exists,
            TIMEOUT,
            f"{self.fifo} made by WeeChat's FIFO plugin (Debian's weechat-plugins: apt-get install weechat-plugins)",
        )
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, f"{buffer} *{line}\n".encode())
        finally:
            os.close(fd)

    def wait_log(self, buffer: str, pattern: str) -> str:
        """The first line of ``buffer``'s log (``date time<TAB>prefix<TAB>text``) matching ``pattern``."""
        return self.wait_in_file(self.logs / f"{buffer}.weechatlog", pattern, lambda line: line.split("\t", 1)[1])


def test_weechat_end_to_end(server, bob, tmp_path):
    wee = WeeChat(server.addresses["irc"], "weeuser", tmp_path)
    try:
        server_buffer, lobby, dev = "irc.server.chatcore", "irc.chatcore.#lobby", "irc.chatcore.#dev"
        wee.wait_log(server_buffer, r"Welcome to the chatcore IRC network, weeuser!weeuser@chatcore")
        # WeeChat enables extended-join: a JOIN shows the real name too.
        assert (
            wee.wait_log(lobby, r"has joined #lobby") == "-->\tweeuser (weeuser) (weeuser@chatcore) has joined #lobby"
        )
        assert bob.expect(re.compile("joined")) == "* weeuser joined"

        wee.command(lobby, "hello from WeeChat")
        assert bob.readline() == "<weeuser> hello from WeeChat"
        bob.send("hello WeeChat")
        assert wee.wait_log(lobby, r"hello WeeChat$") == "@bob\thello WeeChat"  # bob made the room
        wee.command(lobby, "/me waves")
        assert bob.readline() == "* weeuser waves"
        bob.send("/me waves back")
        assert bob.readline() == "* bob waves back"
        assert wee.wait_log(lobby, r"waves back$") == " *\tbob waves back"

        # WeeChat is in #dev too (its autojoin); bob joins it, and they talk in
        # both channels, each line in its own buffer.
        wee.wait_log(dev, r"weeuser \(weeuser\) \(weeuser@chatcore\) has joined #dev")
        bob.send("/join dev")
        wee.wait_log(dev, r"bob \(bob\) \(bob@chatcore\) has joined #dev")
        wee.command(dev, "in dev now")
        assert bob.expect(re.compile("<weeuser>")) == "[dev] <weeuser> in dev now"
        wee.command(lobby, "and in the lobby")
        assert bob.expect(re.compile("<weeuser>")) == "[lobby] <weeuser> and in the lobby"
        wee.command(dev, "/part done here")
        assert bob.expect(re.compile("weeuser left")) == "[dev] * weeuser left (done here)"

        wee.command(server_buffer, "/quit see you later")
        assert bob.expect(re.compile("weeuser left")) == "[lobby] * weeuser left (see you later)"
        assert wee.proc.wait(TIMEOUT) == 0  # /quit ends WeeChat
    finally:
        wee.stop()


def test_weechat_shows_the_servers_time_of_a_line_and_its_own_lines_once(tmp_path, monkeypatch):
    """WeeChat 3.8 (Debian's) enables server-time and message-tags itself
    ("*": what both sides support). It does not know echo-message (WeeChat
    4.0 added it), so it does not ask for it, and shows its own lines once."""
    monkeypatch.setenv("TZ", "UTC")  # WeeChat's log shows times in its local zone
    plugins = str(Path(__file__).parent / "plugins")
    with ServerProcess(
        "--plugins", "irc,chatcore_testplugins.backdated",
        "--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0",
        env={**os.environ, "PYTHONPATH": plugins},
    ) as proc:  # fmt: skip
        bob = LineClient(proc.addresses["tcp"])
        bob.sync()  # in the lobby first: the room is bob's (a client that says nothing waits ARRIVAL_WAIT)
        wee = WeeChat(proc.addresses["irc"], "weeuser", tmp_path)
        try:
            server_buffer, lobby = "irc.server.chatcore", "irc.chatcore.#lobby"
            acked = wee.wait_log(server_buffer, r"client capability, enabled: ")
            assert {"server-time", "message-tags"} <= set(acked.split(": ")[-1].split())
            assert "echo-message" not in acked
            wee.wait_log(lobby, r"has joined #lobby")
            bob.send("/nick bob")
            bob.expect("* you are now known as bob")
            # A line said at 2001-02-03 04:05:06 UTC (as one delayed by an outage would be).
            bob.send("/backdate 981173106.5 from the past")
            logged = wee.wait_in_file(wee.logs / f"{lobby}.weechatlog", r"from the past$")
            assert logged == "2001-02-03 04:05:06\t@bob\tfrom the past"  # bob made the room: @
            wee.command(lobby, "said once")
            bob.expect("<weeuser> said once")
            bob.send("after")
            wee.wait_log(lobby, r"after$")  # everything before it has been shown
            log = (wee.logs / f"{lobby}.weechatlog").read_text(encoding="utf-8")
            assert [line.split("\t", 1)[1] for line in log.splitlines() if line.endswith("said once")] == [
                "weeuser\tsaid once"
            ]
        finally:
            wee.stop()
            bob.close()
    assert proc.returncode == 0, proc.stderr


def weechat_version() -> tuple[int, ...]:
    executable = shutil.which("weechat-headless")
    assert executable, "weechat-headless is not installed: apt-get install weechat-headless (.ci/run installs it)"
    found = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=TIMEOUT, check=True
    ).stdout
    return tuple(int(part) for part in re.findall(r"\d+", found)[:2])


def test_weechat_asked_for_echo_message_shows_its_lines_as_its_version_handles_them(server, bob, tmp_path):
    """echo-message asked for by name (``capabilities "*,echo-message"``):
    the server echoes each line once, with its msgid. WeeChat handles echoed
    lines from 4.0 on (it then shows its own line once); 3.8, Debian 12's,
    requests the capability when told to but still shows what it sent at
    once, so the echo shows the line a second time (docs/irc.md)."""
    version = weechat_version()
    wee = WeeChat(server.addresses["irc"], "weeuser", tmp_path, capabilities="*,echo-message")
    try:
        server_buffer, lobby = "irc.server.chatcore", "irc.chatcore.#lobby"
        acked = wee.wait_log(server_buffer, r"client capability, enabled: ")
        assert "echo-message" in acked.split(": ")[-1].split()
        wee.wait_log(lobby, r"has joined #lobby")
        bob.expect(re.compile("weeuser joined"))
        wee.command(lobby, "said with an echo")
        assert bob.expect(re.compile("<weeuser>")) == "<weeuser> said with an echo"
        bob.send("after")
        wee.wait_log(lobby, r"after$")  # the echo came before bob's line
        log = (wee.logs / f"{lobby}.weechatlog").read_text(encoding="utf-8")
        shown = [line.split("\t", 1)[1] for line in log.splitlines() if line.endswith("said with an echo")]
        assert shown == ["weeuser\tsaid with an echo"] * (1 if version >= (4, 0) else 2), (version, shown)
    finally:
        wee.stop()
