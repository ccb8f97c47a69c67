"""The irc plugin over real sockets: registration, commands, wire rules, and
IRC and native users in one room. Real IRC client software is in
test_irc_clients.py."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import trustme

from chatcore import __version__, events, hookimpl
from chatcore.engine import gate, turns
from chatcore.engine.backplane import Backplane
from chatcore.engine.departed import Departed
from chatcore.engine.rooms import Rooms
from chatcore.engine.server import ChatServer
from chatcore.events import Chat, Left, kick_text
from chatcore.message import Message
from chatcore.plugins.irc import (
    _HANDLERS,
    CAPABILITIES,
    IRC_HELP,
    RENDERING_CAPS,
    IRCFormat,
    IRCProtocol,
    parse,
    text_lines,
)
from chatcore.testing import LineClient, ServerFactory, wait_for
from chatcore.wire.framing import WebSocketFraming, websocket_frame


@pytest.fixture
def certs(tmp_path: Path) -> tuple[ssl.SSLContext, list[str]]:
    """A client context that trusts a throwaway CA, and the server's certificate options."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context, ["--tls-cert", str(cert), "--tls-key", str(key)]


class IRCClient(LineClient):
    """A raw IRC client: lines without their CR, sent with CR LF."""

    def _fill(self, deadline: float) -> bool:
        before = len(self.received)
        filled = super()._fill(deadline)
        for index in range(before, len(self.received)):
            line = self.received[index]
            if not line.endswith("\r"):
                raise AssertionError(f"a line without CR LF from the server: {line!r}")
            self.received[index] = line[:-1]
        self._unread = [line.removesuffix("\r") for line in self._unread]
        return filled

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def expect(self, match, timeout=None) -> str:  # type: ignore[no-untyped-def]
        if isinstance(match, str) and not match.startswith(":"):
            match = re.compile(match)
        return super().expect(match, timeout)

    server_name = "chatcore"

    def sync(self) -> list[str]:
        """Every line before the answer to a PING (lines are handled in order)."""
        self.send("PING :sync")
        before: list[str] = []
        while (line := self.readline()) != f":{self.server_name} PONG {self.server_name} :sync":
            before.append(line)
        return before


@pytest.fixture
def connect() -> Iterator:
    made: list[LineClient] = []

    def make(server: ChatServer, scheme: str = "irc", **kwargs) -> IRCClient:  # type: ignore[no-untyped-def]
        client = IRCClient(server.listener(scheme).address, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def native(server: ChatServer, made: list[LineClient], nick: str | None = None) -> LineClient:
    client = LineClient(server.listener("tcp").address)
    made.append(client)
    client.sync()
    if nick:
        client.send(f"/nick {nick}")
        client.expect(f"* you are now known as {nick}")
    return client


def move(client: LineClient, room: str) -> None:
    """Take a native user from the lobby to ``room`` alone (as in one room, its lines are unlabelled)."""
    client.send(f"/join {room}")
    client.expect(re.compile(f"you are now in {room}"))
    client.send("/part lobby")
    client.expect(re.compile("you left lobby"))


@pytest.fixture
def natives() -> Iterator[list[LineClient]]:
    made: list[LineClient] = []
    yield made
    for client in made:
        client.close()


def start(factory: ServerFactory, *args: str, plugins: str = "") -> ChatServer:
    listen = ["--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0"]
    return factory("--plugins", ",".join(["irc", *filter(None, [plugins])]), *listen, *args)


def register(connect, server: ChatServer, nick: str) -> IRCClient:  # type: ignore[no-untyped-def]
    client = connect(server)
    client.send(f"NICK {nick}")
    client.send(f"USER {nick} 0 * :The real {nick}")
    client.send("JOIN #lobby")  # registering joins no channel (unless --irc-autojoin)
    client.expect(f" 366 {nick} #lobby ")
    return client


# -- registration -------------------------------------------------------------------

#: What CAP LS offers on a server without the accounts plugin (test_irc_caps.py checks each).
# sasl and draft/chathistory come with the accounts and history plugins.
CAP_LS_WITHOUT_ACCOUNTS = ":chatcore CAP * LS :" + " ".join(
    name for name in CAPABILITIES if name not in ("sasl", "draft/chathistory")
)


def test_registration_with_cap_negotiation_as_modern_clients_do_it(chat_server_factory, connect, natives):
    server = start(chat_server_factory, "--welcome-text", "Hello {nick}\\nbe nice", plugins="welcome")
    watcher = native(server, natives)
    irc = connect(server)
    irc.send("CAP LS 302")
    assert irc.readline() == CAP_LS_WITHOUT_ACCOUNTS
    irc.send("JOIN #lobby")
    assert irc.readline() == ":chatcore 451 * :You have not registered"
    irc.send("NICK alice")
    irc.send("USER alice 0 * :Alice Liddell")
    irc.send("CAP REQ :server-time sasl")  # sasl needs accounts: neither is enabled
    assert irc.readline() == ":chatcore CAP * NAK :server-time sasl"
    # Registration waits for CAP END; PING is answered meanwhile.
    assert irc.sync() == []
    irc.send("CAP END")
    lines = irc.sync()
    codes = [line.split()[1] for line in lines]
    assert codes[:6] == ["001", "002", "003", "004", "005", "005"]  # at most 13 tokens a 005 line
    assert all(len(line.split(" :")[0].split()) <= 2 + 14 for line in lines if " 005 " in line)
    assert lines[0] == ":chatcore 001 alice :Welcome to the chatcore IRC network, alice!alice@chatcore"
    isupport = " ".join(line for line in lines if " 005 " in line).split()
    for token in (
        "CHANTYPES=#",
        "PREFIX=(ov)@+",
        "CASEMAPPING=ascii",
        "NICKLEN=32",
        "CHANNELLEN=33",
        "NETWORK=chatcore",
    ):
        assert token in isupport
    for token in (
        "CHANMODES=be,k,l,imnst",
        "CHANLIMIT=#:100",
        "EXCEPTS=e",
        "MODES=20",
        "TOPICLEN=390",
        "MAXLIST=b:100,e:100",
    ):
        assert token in isupport
    assert ":chatcore 372 alice :- Hello alice" in lines
    assert ":chatcore 372 alice :- be nice" in lines
    assert lines[-1] == ":chatcore 376 alice :End of /MOTD command."
    # Registering joins no channel (as on any IRC server): the client joins its own.
    irc.send("JOIN #lobby")
    lines = irc.sync()
    assert lines[0] == ":alice!alice@chatcore JOIN #lobby"
    # No topic: no 332. The native user who made the room first is its operator.
    assert ":chatcore 353 alice = #lobby :alice @guest-1" in lines
    assert lines[-1] == ":chatcore 366 alice #lobby :End of /NAMES list."
    # The native user sees the IRC user arrive under its own name, never a guest name.
    assert watcher.expect(re.compile("joined")) == "* alice joined"


def test_registration_without_cap_and_without_a_welcome_text_gets_422(chat_server_factory, connect):
    server = start(chat_server_factory)
    irc = connect(server)
    irc.send("PING :early")
    assert irc.readline() == ":chatcore PONG chatcore :early"
    irc.send("PASS whatever")  # accepted and ignored: there is no server password
    irc.send("USER bob 0 * :Bob")
    irc.send("NICK bob")
    assert irc.expect(" 422 ") == ":chatcore 422 bob :MOTD File is missing"
    assert not [line for line in irc.sync() if " JOIN " in line]
    irc.send("PASS again")
    assert irc.expect(" 462 ") == ":chatcore 462 bob :You may not reregister"


def test_a_nickname_taken_or_invalid_gets_433_or_432_and_the_client_tries_again(chat_server_factory, connect, natives):
    server = start(chat_server_factory)
    native(server, natives, "Alice")
    irc = connect(server)
    irc.send("USER x 0 * :X")
    irc.send("NICK alice")  # taken by a native user, ignoring case: one registry
    assert irc.readline() == ":chatcore 433 * alice :Nickname is already in use"
    irc.send("NICK [away]")
    assert irc.readline().startswith(":chatcore 432 * [away] :Erroneous nickname: invalid nickname")
    irc.send("NICK admin")
    assert irc.readline().startswith(":chatcore 432 * admin :Erroneous nickname: nickname 'admin' is reserved")
    irc.send("NICK")
    assert irc.readline() == ":chatcore 431 * :No nickname given"
    irc.send("USER x 0 * :")
    assert irc.readline() == ":chatcore 461 * USER :Not enough parameters"
    irc.send("NICK alice2")
    assert irc.expect(" 001 ").startswith(":chatcore 001 alice2 ")
    assert server.registry.find("alice2") is not None


def test_a_connection_that_never_registers_is_closed_after_the_login_timeout(chat_server_factory, connect):
    server = start(chat_server_factory, "--login-timeout", "0.3")
    irc = connect(server)
    irc.send("CAP LS 302")
    irc.send("NICK lazy")
    irc.send("USER lazy 0 * :Lazy")  # but never CAP END
    assert irc.wait_closed() == [
        CAP_LS_WITHOUT_ACCOUNTS,
        "ERROR :Closing Link: disconnected: not logged in within 0.3 seconds; connect and log in again",
    ]
    assert server.registry.find("lazy") is None
    wait_for(lambda: not server.connections, message="the connection forgotten")


def os_threads() -> int:
    """This process's threads, as the kernel counts them (connection threads
    have no threading.Thread: threading.active_count() misses them)."""
    return len(os.listdir("/proc/self/task"))


# CI runs on Linux, which has /proc/self/task: this never skips there (macOS and the BSDs have no /proc).
@pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="counts the process's threads in /proc/self/task (Linux; CI is Linux)"
)
def test_connections_waiting_for_cap_end_hold_no_thread(chat_server_factory, connect, monkeypatch):
    # Each held a timer thread besides its reader: 40 waiting cost 80
    # threads. Now a connection whose client is quiet holds none.
    monkeypatch.setattr(turns, "DIRECT_IDLE", 0.2)
    monkeypatch.setattr(turns, "SPARE_IDLE", 0.2)
    server = start(chat_server_factory)
    before = os_threads()
    waiting = [connect(server) for _ in range(10)]
    for number, irc in enumerate(waiting):
        irc.send("CAP LS 302")
        irc.send(f"NICK waiting{number}")
        irc.send(f"USER waiting{number} 0 * :Waiting")
        irc.sync()  # its thread has handled all three
    assert wait_for(lambda: os_threads() <= before, timeout=10)
    assert not server.registry.find("waiting0")
    waiting[0].send("CAP END")
    assert wait_for(lambda: server.registry.find("waiting0"), timeout=10)


def test_quit_before_registration_is_answered_with_error(chat_server_factory, connect):
    server = start(chat_server_factory)
    irc = connect(server)
    irc.send("QUIT :changed my mind")
    assert irc.wait_closed() == ["ERROR :Closing Link: *[chatcore] (Quit: changed my mind)"]


# -- IRC and native users in one room ----------------------------------------------------


def test_irc_and_native_users_talk_both_ways(chat_server_factory, connect, natives):
    server = start(chat_server_factory)
    bob = native(server, natives, "bob")
    alice = register(connect, server, "alice")
    bob.expect("* alice joined")

    alice.send("PRIVMSG #lobby :hello from IRC")
    assert bob.readline() == "<alice> hello from IRC"
    bob.send("hello from the native side")
    assert alice.readline() == ":bob!bob@chatcore PRIVMSG #lobby :hello from the native side"

    alice.send("PRIVMSG #lobby :\x01ACTION waves\x01")
    assert bob.readline() == "* alice waves"
    bob.send("/me bows")
    assert alice.readline() == ":bob!bob@chatcore PRIVMSG #lobby :\x01ACTION bows\x01"
    assert bob.readline() == "* bob bows"
    assert alice.sync() == []  # her own action is not echoed: IRC clients show it themselves

    alice.send("PRIVMSG bob :psst")
    assert bob.readline() == "*alice* psst"
    bob.send("/msg alice psst back")
    assert alice.readline() == ":bob!bob@chatcore PRIVMSG alice :psst back"
    assert bob.readline() == "-> *alice* psst back"
    alice.send("NOTICE bob :a notice")
    assert bob.readline() == "*alice* a notice"
    alice.send("NOTICE #lobby :a channel notice")  # chat to native users
    assert bob.readline() == "<alice> a channel notice"

    alice.send("NICK alicia")
    assert alice.readline() == ":alice!alice@chatcore NICK alicia"
    assert bob.readline() == "* alice is now known as alicia"
    bob.send("/nick robert")
    bob.expect("* you are now known as robert")
    assert alice.readline() == ":bob!bob@chatcore NICK robert"

    bob.send("/quit gone fishing")
    assert alice.readline() == ":robert!robert@chatcore QUIT :Quit: gone fishing"
    carol = native(server, natives, "carol")
    alice.expect(re.compile(r"^:guest-\d+!guest-\d+@chatcore NICK carol$"))
    alice.send("QUIT :bye now")
    assert alice.wait_closed() == ["ERROR :Closing Link: alicia[chatcore] (Quit: bye now)"]
    assert carol.readline() == "* alicia left (bye now)"


def test_two_irc_clients_see_each_other_as_irc_users_do(chat_server_factory, connect):
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    bob = register(connect, server, "bob")
    assert alice.readline() == ":bob!bob@chatcore JOIN #lobby"
    bob.send("PRIVMSG #lobby :hi alice")
    assert alice.readline() == ":bob!bob@chatcore PRIVMSG #lobby :hi alice"
    bob.send("PRIVMSG #lobby :\x01ACTION smiles\x01")
    assert alice.readline() == ":bob!bob@chatcore PRIVMSG #lobby :\x01ACTION smiles\x01"
    bob.send("QUIT")
    assert alice.readline() == ":bob!bob@chatcore QUIT :Quit"


def test_a_notice_travels_as_a_notice_to_a_channel_and_to_a_nick(chat_server_factory, connect, natives):
    """irctest's testNotice (RFC 2812 3.3.2): a NOTICE reaches IRC clients as
    NOTICE, so that their bots never answer it; native users see chat."""
    server = start(chat_server_factory)
    dave = native(server, natives, "dave")
    alice = register(connect, server, "alice")
    bob = register(connect, server, "bob")
    alice.expect(":bob!bob@chatcore JOIN #lobby")
    dave.sync()
    alice.send("NOTICE #lobby :build passed")
    assert bob.readline() == ":alice!alice@chatcore NOTICE #lobby :build passed"
    assert dave.readline() == "<alice> build passed"
    alice.send("NOTICE bob :psst")
    assert bob.readline() == ":alice!alice@chatcore NOTICE bob :psst"
    alice.send("PRIVMSG #lobby :and chat")
    assert bob.readline() == ":alice!alice@chatcore PRIVMSG #lobby :and chat"
    assert alice.sync() == []  # no echo, no automatic reply
    assert dave.sync() == ["<alice> and chat"]


def test_join_many_channels_at_once_and_part_them_one_by_one(chat_server_factory, connect, natives):
    server = start(chat_server_factory)
    in_lobby = native(server, natives, "lobbyist")
    in_dev = native(server, natives, "dev")
    move(in_dev, "dev")
    alice = register(connect, server, "alice")
    in_lobby.expect("* alice joined")

    alice.send("JOIN #Dev,#other")
    assert alice.sync() == [
        ":alice!alice@chatcore JOIN #dev",
        ":chatcore 353 alice = #dev :alice @dev",
        ":chatcore 366 alice #dev :End of /NAMES list.",
        ":alice!alice@chatcore JOIN #other",
        ":chatcore 353 alice = #other :@alice",
        ":chatcore 366 alice #other :End of /NAMES list.",
    ]
    assert in_dev.readline() == "* alice joined"
    assert server.registry.find("alice").rooms == ("lobby", "dev", "other")
    alice.send("JOIN #dev")  # already there: nothing happens
    assert alice.sync() == []

    alice.send("PART #dev,#lobby :see you")
    assert alice.sync() == [
        ":alice!alice@chatcore PART #dev :see you",
        ":alice!alice@chatcore PART #lobby :see you",
    ]
    assert in_dev.readline() == "* alice left (see you)"
    assert in_lobby.readline() == "* alice left (see you)"
    assert server.registry.find("alice").rooms == ("other",)

    alice.send("PART #dev")
    assert alice.readline() == ":chatcore 442 alice #dev :You're not on that channel"
    alice.send("PART #nowhere")
    assert alice.readline() == ":chatcore 403 alice #nowhere :No such channel"
    alice.send("PART #other")
    assert alice.readline() == ":alice!alice@chatcore PART #other"
    assert server.registry.find("alice").rooms == ()
    # In no channel at all, the user is still connected and can join again.
    alice.send("JOIN #lobby")
    assert alice.readline() == ":alice!alice@chatcore JOIN #lobby"


def test_a_secret_channel_is_no_such_channel_to_those_outside_it(chat_server_factory, connect, natives):
    """MODE, TOPIC and every other command about a ``+s`` channel answer a
    non-member as for a channel that does not exist: 403, never 442, 482
    or 404, its modes, lists or topic (RFC 2812 4.2.3.1's secrecy; the
    answers LIST, NAMES, WHO and WHOIS give already)."""
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    bob = register(connect, server, "bob")  # in #lobby with alice, not in #hidden
    alice.expect(":bob!bob@chatcore JOIN #lobby")  # a join notice may come a moment late (batched)
    alice.send("JOIN #hidden")
    alice.expect(" 366 alice #hidden ")
    alice.send("MODE #hidden +sk hunter2")
    alice.send("TOPIC #hidden :the plans")
    alice.send("MODE #hidden +b mallory")
    alice.sync()
    bob.sync()  # alice's batched JOIN may reach bob a moment after his own: not an answer below
    commands = [
        "MODE {channel}",
        "MODE {channel} +b",
        "MODE {channel} +e",
        "MODE {channel} +m",
        "MODE {channel} +o bob",
        "TOPIC {channel}",
        "TOPIC {channel} :mine now",
        "PART {channel}",
        "KICK {channel} alice",
        "INVITE alice {channel}",
        "PRIVMSG {channel} :hello?",
        "NAMES {channel}",
    ]
    for command in commands:
        bob.send(command.format(channel="#hidden"))
        secret = bob.sync()
        bob.send(command.format(channel="#nowhere"))
        absent = [line.replace("#nowhere", "#hidden") for line in bob.sync()]
        assert secret == absent, command
        assert all("hunter2" not in line and "plans" not in line for line in secret), command
    assert bob.sync() == []
    state = server.rooms.get("hidden")
    assert (state.topic, state.flags, list(state.bans)) == ("the plans", {"n", "s", "t"}, ["mallory!*@*"])
    # Its members see it as ever; so does a channel that is not secret to outsiders.
    alice.send("TOPIC #hidden")
    alice.send("MODE #hidden")
    assert alice.sync()[:3] == [
        ":chatcore 332 alice #hidden :the plans",
        f":chatcore 333 alice #hidden alice {int(state.topic_at)}",
        ":chatcore 324 alice #hidden +knst hunter2",
    ]
    alice.send("MODE #hidden -s")
    alice.sync()
    bob.send("TOPIC #hidden")
    bob.send("MODE #hidden")
    assert bob.sync()[:3] == [
        ":chatcore 332 bob #hidden :the plans",
        f":chatcore 333 bob #hidden alice {int(state.topic_at)}",
        ":chatcore 324 bob #hidden +knt *",
    ]


def test_error_numerics_where_a_native_user_gets_an_error(chat_server_factory, connect, natives):
    server = start(chat_server_factory)
    other = native(server, natives, "other")
    move(other, "elsewhere")
    alice = register(connect, server, "alice")
    cases = {
        "PRIVMSG nobody :hi": ":chatcore 401 alice nobody :No such nick/channel",
        "PRIVMSG #nowhere :hi": ":chatcore 403 alice #nowhere :No such channel",
        "PRIVMSG #elsewhere :hi": ":chatcore 404 alice #elsewhere :Cannot send to channel: "
        "you are not in elsewhere: /join elsewhere to speak there",
        "PRIVMSG": ":chatcore 411 alice :No recipient given (PRIVMSG)",
        "PRIVMSG #lobby": ":chatcore 412 alice :No text to send",
        "JOIN": ":chatcore 461 alice JOIN :Not enough parameters",
        "JOIN lobby": ":chatcore 403 alice lobby :No such channel (channels start with #)",
        "FROBNICATE now": ":chatcore 421 alice FROBNICATE :Unknown command",
        "NICK bad!nick": ":chatcore 432 alice bad!nick :Erroneous nickname: invalid nickname 'bad!nick': "
        "use 1 to 32 letters (a-z, A-Z), digits, '_' or '-'",
        "NICK other": ":chatcore 433 alice other :Nickname is already in use",
        "USER a b c d": ":chatcore 462 alice :You may not reregister",
        "TOPIC #elsewhere :new topic": ":chatcore 442 alice #elsewhere :You're not on that channel",
        "MODE #elsewhere +m": ":chatcore 482 alice #elsewhere :You're not channel operator",
        "MODE #lobby +Z": ":chatcore 472 alice Z :is unknown mode char to me",
        "KICK #lobby other": ":chatcore 441 alice other #lobby :They aren't on that channel",
        "KICK #elsewhere other": ":chatcore 442 alice #elsewhere :You're not on that channel",
        "INVITE other #nowhere": ":chatcore 403 alice #nowhere :No such channel",
        "MODE other": ":chatcore 502 alice :Can't change mode for other users",
        "PRIVMSG other :\x01VERSION\x01": ":chatcore NOTICE alice :CTCP VERSION is not supported here; it was not sent",
    }
    for sent, expected in cases.items():
        alice.send(sent)
        assert alice.readline() == expected, sent
    alice.send("PRIVMSG nobody,ghost,#x :hi")
    assert alice.readline() == (
        ":chatcore 407 alice ghost,#x :Too many recipients: one target per message; the others were skipped"
    )
    assert alice.readline() == ":chatcore 401 alice nobody :No such nick/channel"
    # NOTICE never gets an automatic reply, errors included.
    alice.send("NOTICE nobody :hi")
    assert alice.sync() == []
    assert other.sync() == []  # and nothing leaked to anyone


def test_who_whois_names_list_topic_mode_away_ison_userhost(chat_server_factory, connect, natives):
    server = start(chat_server_factory)
    native(server, natives, "bob")
    alice = register(connect, server, "alice")
    carol = register(connect, server, "carol")
    alice.expect(":carol!carol@chatcore JOIN #lobby")

    alice.send("WHO #lobby")
    assert alice.sync() == [
        ":chatcore 352 alice #lobby alice chatcore chatcore alice H :0 The real alice",
        ":chatcore 352 alice #lobby bob chatcore chatcore bob H@ :0 chatcore native user",
        ":chatcore 352 alice #lobby carol chatcore chatcore carol H :0 The real carol",
        ":chatcore 315 alice #lobby :End of /WHO list.",
    ]
    carol.send("AWAY :lunch")
    assert carol.expect(" 306 ") == ":chatcore 306 carol :You have been marked as being away"
    carol.sync()
    alice.send("WHOIS carol")
    assert alice.sync() == [
        ":chatcore 311 alice carol carol chatcore * :The real carol",
        ":chatcore 319 alice carol #lobby",
        ":chatcore 312 alice carol chatcore :chatcore 0.1.0",
        ":chatcore 301 alice carol lunch",
        ":chatcore 318 alice carol :End of /WHOIS list.",
    ]
    alice.send("PRIVMSG carol :are you there?")
    assert alice.readline() == ":chatcore 301 alice carol lunch"
    assert carol.expect(" PRIVMSG ") == ":alice!alice@chatcore PRIVMSG carol :are you there?"
    alice.send("WHOIS ghost")
    assert alice.sync() == [":chatcore 401 alice ghost :No such nick", ":chatcore 318 alice ghost :End of /WHOIS list."]
    alice.send("NAMES #lobby")
    assert alice.sync() == [
        ":chatcore 353 alice = #lobby :alice @bob carol",
        ":chatcore 366 alice #lobby :End of /NAMES list.",
    ]
    alice.send("NAMES #nothing")
    assert alice.sync() == [":chatcore 366 alice #nothing :End of /NAMES list."]
    alice.send("LIST")
    assert alice.sync() == [
        ":chatcore 321 alice Channel :Users  Name",
        ":chatcore 322 alice #lobby 3 :[+nt] ",
        ":chatcore 323 alice :End of /LIST",
    ]
    alice.send("TOPIC #lobby")
    alice.send("MODE #lobby")
    alice.send("MODE #lobby b")
    alice.send("MODE alice +i")
    alice.send("MODE alice")
    alice.send("ISON bob nobody CAROL")
    alice.send("USERHOST bob carol")
    lines = alice.sync()
    created = int(server.rooms.get("lobby").created)
    assert lines == [
        ":chatcore 331 alice #lobby :No topic is set",
        ":chatcore 324 alice #lobby +nt",
        f":chatcore 329 alice #lobby {created}",
        ":chatcore 368 alice #lobby :End of channel ban list",
        ":alice MODE alice +i",
        ":chatcore 221 alice +i",
        ":chatcore 303 alice :bob carol",
        ":chatcore 302 alice :bob=+bob@chatcore carol=-carol@chatcore",
    ]
    carol.send("AWAY")
    assert carol.expect(" 305 ") == ":chatcore 305 carol :You are no longer marked as being away"


def test_chatcore_commands_of_plugins_work_as_irc_commands(chat_server_factory, connect):
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    alice.send("HELP CHATCORE")  # chatcore's own /help; "/rooms" and plugins' commands alike
    lines = alice.sync()
    assert ":chatcore NOTICE alice :commands:" in lines
    alice.send("ROOMS")
    assert alice.sync() == [
        ":chatcore 321 alice Channel :Users  Name",
        ":chatcore 322 alice #lobby 1 :",
        ":chatcore 323 alice :End of /LIST",
    ]


def test_filters_apply_to_irc_users(chat_server_factory, connect, natives):
    server = start(chat_server_factory, "--banned-words", "spam", "--banned-action", "reject", plugins="filters")
    bob = native(server, natives, "bob")
    alice = register(connect, server, "alice")
    alice.send("PRIVMSG #lobby :buy spam now")
    assert alice.readline().startswith(":chatcore NOTICE alice :error: ")
    alice.send("PRIVMSG bob :spam in private")
    assert alice.readline().startswith(":chatcore NOTICE alice :error: ")
    alice.send("PRIVMSG #lobby :clean")
    assert bob.expect(re.compile("<alice>")) == "<alice> clean"


# -- wire rules ---------------------------------------------------------------------------


def test_long_native_lines_are_split_into_512_byte_lines_on_character_boundaries(chat_server_factory, connect, natives):
    server = start(chat_server_factory)
    bob = native(server, natives, "bob")
    alice = register(connect, server, "alice")
    text = "é€𝄞x" * 300  # 2, 3, 4 and 1 bytes: 3000 bytes, no space to split at
    bob.send(text)
    bob.send("/me " + "ab " * 400)
    bob.send("end")
    parts = []
    while (line := alice.readline()) != ":bob!bob@chatcore PRIVMSG #lobby :end":
        assert len(line.encode("utf-8")) + 2 <= 512, line
        parts.append(line)
    head = ":bob!bob@chatcore PRIVMSG #lobby :"
    chat = [line.removeprefix(head) for line in parts if "\x01" not in line]
    assert len(chat) > 5
    assert "".join(chat) == text
    actions = [line.removeprefix(head) for line in parts if "\x01" in line]
    assert all(action.startswith("\x01ACTION ") and action.endswith("\x01") for action in actions)
    assert "".join(action[8:-1] for action in actions) == ("ab " * 400).strip()


def test_a_native_quit_padded_to_forge_a_line_reaches_irc_clients_as_one_short_line(
    chat_server_factory, connect, natives
):
    # A client that reads 512-byte lines (ii) took byte 512 on as a line of its own.
    server = start(chat_server_factory)
    bob = native(server, natives, "bob")
    carol = native(server, natives, "carol")
    alice = register(connect, server, "alice")
    head = ":bob!bob@chatcore QUIT :Quit: "
    bob.send("/quit " + "x" * (512 - len(head)) + FORGED + " " + "y" * 3000)
    # Bob's leave is published by his thread, carol's line by hers: the
    # marker is sent once the leave is out.
    carol.expect(lambda line: line.startswith("* bob left"))
    carol.send("after the quit")
    seen = []
    while (line := alice.readline()) != ":carol!carol@chatcore PRIVMSG #lobby :after the quit":
        seen.append(line)
    assert seen == [head + "x" * 255]  # QUITLEN: the reason is cut to 255 bytes
    assert len(seen[0].encode()) + 2 <= 512


def test_lf_and_crlf_are_accepted_formatting_is_stripped_and_bad_input_loses_nothing(
    chat_server_factory, connect, natives
):
    server = start(chat_server_factory)
    bob = native(server, natives, "bob")
    alice = connect(server)
    alice.send_raw(b"NICK alice\nUSER alice 0 * :A\r\nJOIN #lobby\n")
    alice.expect(" 366 alice ")
    bob.expect("* alice joined")
    alice.send_raw(b"PRIVMSG #lobby :\x02bold\x02 \x0304,12red\x03 plain\r\n")
    assert bob.readline() == "<alice> bold red plain"
    alice.send_raw(b"\r\n\n   \r\n:ignored!prefix PRIVMSG #lobby :caf\xe9 in latin-1\r\n")
    assert bob.readline() == "<alice> café in latin-1"
    alice.send_raw(b"@time=2020-01-01T00:00:00Z PRIVMSG #lobby :tags ignored\r\n")
    assert bob.readline() == "<alice> tags ignored"
    head = b"PRIVMSG #lobby :"
    alice.send_raw(head + b"x" * (511 - len(head)) + b"\r\n")  # 513 bytes
    assert alice.readline() == ":chatcore 417 alice :Input line was too long (the limit is 512 bytes)"
    alice.send_raw(head + b"y" * 20000 + b"\r\n")
    assert alice.readline() == ":chatcore 417 alice :Input line was too long (the limit is 512 bytes)"
    alice.send_raw(head + b"z" * (510 - len(head)) + b"\r\n")  # 512 bytes: fine
    assert bob.readline() == "<alice> " + "z" * (510 - len(head))
    alice.send_raw(b"PRIVMSG #lobby :\x1b[31mno escapes\x00\r\n")
    assert bob.readline() == "<alice> no escapes"
    alice.send("PRIVMSG #lobby :still here")
    assert bob.expect(re.compile("still here")) == "<alice> still here"


def test_ircs_over_tls(chat_server_factory, connect, natives, certs):
    context, options = certs
    server = chat_server_factory(
        "--plugins",
        "irc",
        "--listen",
        "tcp://127.0.0.1:0",
        "--listen",
        "ircs://127.0.0.1:0",
        "--irc-autojoin",
        "#lobby,#news",
        *options,
    )
    bob = native(server, natives, "bob")
    alice = connect(server, "ircs", tls=context)
    alice.send("NICK alice")
    alice.send("USER alice 0 * :A")
    alice.expect(" 366 alice #lobby ")  # --irc-autojoin: joined on registering
    alice.expect(" 366 alice #news ")
    alice.send("PRIVMSG #lobby :secure hello")
    assert bob.expect(re.compile("secure")) == "<alice> secure hello"
    server.stop()
    assert alice.wait_closed()[-1] == ":chatcore NOTICE alice :server shutting down"


def test_server_shutdown_reaches_irc_clients(chat_server_factory, connect):
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    waiting = connect(server)  # not registered yet
    waiting.send("NICK later")
    waiting.sync()
    server.stop()
    assert alice.wait_closed() == [":chatcore NOTICE alice :server shutting down"]
    assert waiting.wait_closed() == [":chatcore NOTICE * :server shutting down"]


# -- the format on its own ----------------------------------------------------------------


def test_parse():
    assert parse("privmsg #a :hello there") == ("PRIVMSG", ["#a", "hello there"])
    assert parse(":nick!u@h JOIN #a") == ("JOIN", ["#a"])
    assert parse("@a=b;c :p NOTICE x :y z") == ("NOTICE", ["x", "y z"])
    assert parse("USER u 0 *  :Real Name") == ("USER", ["u", "0", "*", "Real Name"])
    assert parse("PRIVMSG #a :") == ("PRIVMSG", ["#a", ""])
    assert parse("   ") is None
    assert parse(":only-a-prefix") is None


def test_text_lines_fit_512_bytes():
    lines = text_lines(":n!n@h PRIVMSG #r", "word " * 300)
    assert all(len(line.encode()) <= 510 for line in lines)
    assert "".join(line.removeprefix(":n!n@h PRIVMSG #r :") for line in lines) == "word " * 300
    assert all(not line.endswith(" :") for line in lines)


def test_the_format_renders_room_events_once_as_irc_lines():
    event = Chat("lobby", nick="bob", text="hi")
    assert IRCFormat().encode(event) == b":bob!bob@chatcore PRIVMSG #lobby :hi\r\n"


FORGED = ":admin!admin@chatcore PRIVMSG #lobby :forged"
#: A field no sane source sends: long, line breaks, NUL, a forged line, every
#: UTF-8 width at the cuts, and a lone surrogate (not encodable as UTF-8).
HOSTILE = "é€𝄞x" * 700 + "\r\n" + FORGED + "\n" + FORGED + "\r" + FORGED + "\x00" + FORGED + "\ud800"


def hostile_events(user: str = "") -> list[events.Event]:
    room_events: list[events.RoomEvent] = [
        Chat(HOSTILE, nick=HOSTILE, text=HOSTILE, user=user),
        events.Action("lobby", nick=HOSTILE, text=HOSTILE, user=user),
        events.Joined(HOSTILE, nick=HOSTILE, user=user),
        Left("lobby", nick=HOSTILE, reason=HOSTILE, user=user),
        Left("lobby", nick="bob", reason=HOSTILE, disconnected=False, user=user),
        Left("lobby", nick="bob", reason=kick_text(HOSTILE, HOSTILE), kicked_by=HOSTILE, user=user),
        events.NickChanged("lobby", nick=HOSTILE, new_nick=HOSTILE, user=user),
        events.RoomNotice(HOSTILE, text=HOSTILE),
        events.OperatorChanged(HOSTILE, nick=HOSTILE),
    ]
    return [
        *room_events,
        events.Notice(HOSTILE),
        events.Welcome((HOSTILE, HOSTILE)),
        events.Error(HOSTILE),
        events.Disconnected(kick_text(HOSTILE, HOSTILE), kicked_by=HOSTILE, kick_reason=HOSTILE),
        events.Disconnected(HOSTILE),
        events.PrivateMessage(HOSTILE, HOSTILE, HOSTILE),
        events.Replay(HOSTILE, tuple(room_events)),
        events.Members(HOSTILE, (HOSTILE, "bob", HOSTILE)),
        events.RoomList(((HOSTILE, 3), ("lobby", 1))),
    ]


def assert_safe_irc_lines(data: bytes) -> list[bytes]:
    """Every line at most 512 bytes with its CR LF, valid UTF-8, and no CR,
    LF or NUL inside; the lines."""
    assert data.endswith(b"\r\n")
    lines = data[:-2].split(b"\r\n")
    for line in lines:
        assert len(line) + 2 <= 512, line
        assert not re.search(rb"[\r\n\0]", line), line
        line.decode("utf-8")  # raises if a cut split a character
        assert not line.startswith(b":admin!"), line
    return lines


@pytest.mark.parametrize("named", [False, True])
@pytest.mark.parametrize("user", [False, True])
def test_every_event_renders_as_safe_irc_lines_whatever_its_fields(named, user):
    wire = IRCFormat()
    registry = SimpleNamespace(find=lambda nick: None)
    server = SimpleNamespace(
        nicks_in=lambda room: [HOSTILE, "bob"], registry=registry, rooms=Rooms(), max_rooms_per_client=100, history=None
    )
    client = SimpleNamespace(
        nick=HOSTILE if named else "",
        user=HOSTILE if user else "",
        room=HOSTILE,
        rooms=(HOSTILE,),
        server=server,
        wire=wire,
        data={},
    )
    protocol = IRCProtocol(client)  # type: ignore[arg-type]
    for event in hostile_events(user=client.user):
        data = protocol.render(event)
        if data:
            assert_safe_irc_lines(data)


def test_the_notifications_of_capabilities_render_as_safe_irc_lines_whatever_their_fields():
    """AWAY, SETNAME, ACCOUNT and INVITE (away-notify, setname, account-notify,
    invite-notify) come as room events, from other servers too: hostile
    fields make safe lines, and a client without the capability gets none."""
    every = IRCFormat().with_caps(RENDERING_CAPS)
    notifications = [
        events.AwayChanged(HOSTILE, nick=HOSTILE, away=HOSTILE, user=HOSTILE),
        events.AwayChanged("lobby", nick=HOSTILE),
        events.RealnameChanged(HOSTILE, nick=HOSTILE, realname=HOSTILE, user=HOSTILE),
        events.AccountChanged(HOSTILE, nick=HOSTILE, account=HOSTILE),
        events.Invitation(HOSTILE, nick=HOSTILE, invited=HOSTILE, user=HOSTILE),
    ]
    for event in notifications:
        data = every.encode(event)
        # The 512 bytes are the line's without its tags (IRCv3 message-tags).
        assert_safe_irc_lines(b"".join(line.partition(b" ")[2] for line in data.splitlines(keepends=True)))
        assert IRCFormat().encode(event) == b""
        assert IRCFormat().with_caps({"server-time", "message-tags"}).encode(event) == b""
    assert every.encode(events.AwayChanged("lobby", nick="bob")).endswith(b" :bob!bob@chatcore AWAY\r\n")
    assert every.encode(events.AccountChanged("lobby", nick="bob", account="a b")).endswith(b" ACCOUNT *\r\n")


def test_reasons_are_cut_to_their_limits_whatever_their_source():
    wire = IRCFormat()
    reason = "é" * 1000
    quit_ = wire.encode(Left("lobby", nick="bob", reason=reason))
    assert quit_ == b":bob!bob@chatcore QUIT :Quit: " + ("é" * 127).encode() + b"\r\n"  # 254 of 255 bytes
    part = wire.encode(Left("lobby", nick="bob", reason="p" * 1000, disconnected=False))
    assert part == b":bob!bob@chatcore PART #lobby :" + b"p" * 255 + b"\r\n"
    kicked = kick_text("alice", "k" * 1000)
    kick = wire.encode(Left("lobby", nick="bob", reason=kicked, kicked_by="alice", disconnected=False))
    assert kick == b":alice!alice@chatcore KICK #lobby bob :" + b"k" * 255 + b"\r\n"
    kill = wire.encode(Left("lobby", nick="bob", reason=kicked, kicked_by="alice"))  # a KILL: the victim's QUIT
    assert kill == b":bob!bob@chatcore QUIT :Killed (alice (" + b"k" * 255 + b"))\r\n"


def test_an_unregistered_connection_takes_no_nickname_and_no_room(chat_server_factory, connect):
    server = start(chat_server_factory)
    lurker = connect(server)
    lurker.send("NICK lurker")
    lurker.sync()
    assert server.registry.find("lurker") is None
    assert len(server.registry) == 0
    raw = socket.create_connection(server.listener("irc").address, timeout=5)
    raw.close()  # gone without a word
    wait_for(lambda: len(server.connections) == 1, message="the silent connection forgotten")


def test_history_reaches_an_irc_client_after_its_join(chat_server_factory, connect, natives):
    server = start(chat_server_factory, plugins="history")
    dev = native(server, natives, "dev")
    dev.send("/join dev")
    dev.expect(re.compile("you are now in dev"))
    dev.send("said before alice came")
    dev.sync()
    alice = register(connect, server, "alice")
    alice.send("JOIN #dev")
    lines = alice.sync()
    assert lines[0] == ":alice!alice@chatcore JOIN #dev"
    # The replay follows the names, as the rest of the room's lines do.
    names_end = lines.index(":chatcore 366 alice #dev :End of /NAMES list.")
    assert lines.index(":chatcore NOTICE #dev :[history] <dev> said before alice came") > names_end


def test_the_server_and_network_names_are_options_and_user_names_are_in_prefixes(chat_server_factory, connect, natives):
    server = start(chat_server_factory, "--irc-server-name", "irc.example.org", "--irc-network", "ExampleNet")
    bob = native(server, natives, "bob")
    alice = connect(server)
    alice.server_name = "irc.example.org"
    alice.send("NICK alice")
    alice.send("USER al1ce!* 0 * :Alice")  # the user name loses what a prefix cannot hold
    lines = alice.sync()
    assert lines[0] == ":irc.example.org 001 alice :Welcome to the ExampleNet IRC network, alice!al1ce@chatcore"
    assert "NETWORK=ExampleNet" in " ".join(line for line in lines if " 005 " in line).split()
    alice.send("PING :x")
    assert alice.readline() == ":irc.example.org PONG irc.example.org :x"
    alice.send("JOIN #lobby")
    bob.send("/who")
    bob.sync()
    alice.send("PRIVMSG #lobby :hi")
    bob.expect("<alice> hi")
    carol = register(connect, server, "carol")
    alice.send("PRIVMSG #lobby :again")
    assert carol.expect(re.compile("again")) == ":alice!al1ce@chatcore PRIVMSG #lobby :again"
    alice.send("NICK alicia")
    assert carol.readline() == ":alice!al1ce@chatcore NICK alicia"
    alice.send("WHO alicia")
    who = ":irc.example.org 352 alicia #lobby al1ce chatcore irc.example.org alicia H :0 Alice"
    assert alice.expect(" 352 ") == who


@pytest.mark.parametrize(
    ("option", "value"),
    [("--irc-server-name", "not a host"), ("--irc-server-name", "x" * 64), ("--irc-network", "a b")],
)
def test_bad_server_or_network_names_are_usage_errors(option, value):
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--plugins", "irc", option, value],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{option} {value!r}: use " in result.stderr


def test_the_server_password_is_checked_with_pass(chat_server_factory, connect, tmp_path, caplog):
    secret = tmp_path / "password"
    secret.write_text("open sesame\n")
    server = start(chat_server_factory, "--password-file", str(secret))
    right = connect(server)
    right.send("PASS :open sesame")
    right.send("NICK alice")
    right.send("USER alice 0 * :Alice")
    right.send("JOIN #lobby")
    right.expect(":alice!alice@chatcore JOIN #lobby")

    missing = connect(server)
    missing.send("NICK bob")
    missing.send("USER bob 0 * :Bob")
    assert missing.expect(" 464 ") == ":chatcore 464 * :Password required: send PASS before NICK and USER"
    missing.expect(re.compile("^ERROR :Closing Link"))

    wrong = connect(server)
    wrong.send("PASS guess")
    wrong.send("NICK carol")
    wrong.send("USER carol 0 * :Carol")
    assert wrong.expect(" 464 ", timeout=10) == ":chatcore 464 * :Password incorrect"
    assert not any("guess" in record.getMessage() for record in caplog.records)  # never logged
    assert [member.nick for member in server.registry] == ["alice"]


def test_irc_users_are_paced_like_everyone(chat_server_factory, connect, natives):
    server = start(chat_server_factory, "--limit-exempt", "", "--line-rate", "20", "--line-burst", "5")
    watcher = native(server, natives)
    irc = register(connect, server, "alice")
    started = time.monotonic()
    irc.sock.sendall(b"".join(b"PRIVMSG #lobby :line %d\r\n" % n for n in range(25)))
    watcher.expect("<alice> line 24", timeout=10)
    flood = [line for line in watcher.received if line.startswith("<alice>")]
    assert flood == [f"<alice> line {n}" for n in range(25)]  # paced, not dropped
    assert time.monotonic() - started > 0.8  # 20 lines past the burst at 20 a second


# -- operators (the opers plugin) ---------------------------------------------------------

OPER_PASSWORD = "s3cret-oper"


@pytest.fixture
def opers_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from chatcore.engine.auth import hash_password

    monkeypatch.setattr(gate, "SECRET_DELAY", 0.05)  # failures are slowed: not by a second here
    path = tmp_path / "opers"
    path.write_text(f"root {hash_password(OPER_PASSWORD)}\n", encoding="utf-8")
    return path


def test_oper_makes_an_irc_operator_who_kicks_and_kills(chat_server_factory, connect, natives, opers_file, caplog):
    server = start(chat_server_factory, "--opers-file", str(opers_file))
    dave = native(server, natives, "dave")
    alice = register(connect, server, "alice")
    bob = register(connect, server, "bob")
    carol = register(connect, server, "carol")
    # Joins are told in the order the joining threads publish them: bob's may
    # reach alice after carol's, so wait for both.
    joins = {alice.expect(" JOIN #lobby"), alice.expect(" JOIN #lobby")}
    assert joins == {":bob!bob@chatcore JOIN #lobby", ":carol!carol@chatcore JOIN #lobby"}
    bob.expect(":carol!carol@chatcore JOIN #lobby")

    # Not an operator yet: 482 for KICK, 481 for KILL, a wrong password 464.
    alice.send("KICK #lobby bob :spam")
    alice.send("KILL bob :spam")
    alice.send("KICK #nowhere bob")
    alice.send("KICK #lobby")
    alice.send("OPER root wrong")
    alice.send("OPER nobody " + OPER_PASSWORD)
    assert alice.sync() == [
        ":chatcore 482 alice #lobby :You're not channel operator",
        ":chatcore 481 alice :Permission Denied- You're not an IRC operator",
        ":chatcore 403 alice #nowhere :No such channel",
        ":chatcore 461 alice KICK :Not enough parameters",
        ":chatcore 464 alice :Password incorrect",
        ":chatcore 464 alice :Password incorrect",
    ]
    assert any("failed /oper as 'root' by alice" in record.getMessage() for record in caplog.records)
    assert OPER_PASSWORD not in caplog.text

    dave.expect_all("* bob joined", "* carol joined")  # in either order, as alice's JOINs above
    alice.send(f"OPER root {OPER_PASSWORD}")
    alice.send("MODE alice")
    assert alice.sync() == [
        ":chatcore 381 alice :You are now an IRC operator",
        ":alice MODE alice +o",
        ":chatcore 221 alice +o",
    ]
    assert carol.expect(" MODE ") == ":chatcore MODE #lobby +o alice"  # the others are told in the channel
    assert dave.sync() == []  # native users are shown no operator status
    # Everyone sees the operator: @ in NAMES, * and @ in WHO, 313 in WHOIS.
    carol.send("NAMES #lobby")
    carol.send("WHO alice")
    carol.send("WHOIS alice")
    assert carol.sync() == [
        ":chatcore 353 carol = #lobby :@alice bob carol @dave",  # dave made the room
        ":chatcore 366 carol #lobby :End of /NAMES list.",
        ":chatcore 352 carol #lobby alice chatcore chatcore alice H*@ :0 The real alice",
        ":chatcore 315 carol alice :End of /WHO list.",
        ":chatcore 311 carol alice alice chatcore * :The real alice",
        ":chatcore 319 carol alice @#lobby",
        ":chatcore 312 carol alice chatcore :chatcore 0.1.0",
        ":chatcore 313 carol alice :is an IRC operator",
        ":chatcore 318 carol alice :End of /WHOIS list.",
    ]

    # A KICK takes bob out of the channel (a server operator runs every
    # channel): IRC users see a KICK line, native users the native leave, and
    # bob stays connected.
    alice.send("KICK #lobby nobody")
    assert alice.sync() == [":chatcore 401 alice nobody :No such nick/channel"]
    alice.send("KICK #lobby bob :spamming links")
    assert alice.expect(" KICK ") == ":alice!alice@chatcore KICK #lobby bob :spamming links"
    assert carol.expect(" KICK ") == ":alice!alice@chatcore KICK #lobby bob :spamming links"
    assert dave.expect(re.compile("bob was")) == "* bob was kicked out by alice (spamming links)"
    assert bob.expect(" KICK ") == ":alice!alice@chatcore KICK #lobby bob :spamming links"
    assert bob.sync() == []
    assert server.registry.find("bob").rooms == ()

    # KILL disconnects: the rooms of the killed see it leave, and the
    # operator hears of it even when it shares no channel with them.
    erin = native(server, natives, "erin")
    move(erin, "dev")
    alice.expect(":erin!erin@chatcore PART #lobby")  # told after erin is: wait for it
    alice.send("KILL erin :flooding")
    assert alice.expect(re.compile("erin was")) == ":chatcore NOTICE alice :erin was disconnected: flooding"
    assert erin.wait_closed()[-1] == "! disconnected: kicked by alice: flooding"
    assert any("operator root (alice) kicked erin" in record.getMessage() for record in caplog.records)

    # MODE -o: an operator no more.
    alice.send("MODE alice -o")
    alice.send("KICK #lobby carol")
    assert alice.sync() == [
        ":alice MODE alice -o",
        ":chatcore 482 alice #lobby :You're not channel operator",
    ]


def test_kill_of_a_user_in_several_channels_is_seen_once_by_each_and_in_every_channel(
    chat_server_factory, connect, natives, opers_file
):
    """IRC servers tell a KILL as the victim's QUIT (modern.ircdocs.horse,
    KILL: ``Killed (<killer> (<reason>))``): one line, which takes it out
    of every channel an IRC client shares with it. A KICK would name one
    channel only, and the client would keep the victim in the others."""
    server = start(chat_server_factory, "--opers-file", str(opers_file))
    alice = register(connect, server, "alice")
    carol = register(connect, server, "carol")  # shares #lobby and #dev with erin
    frank = register(connect, server, "frank")  # shares #lobby only
    erin = register(connect, server, "erin")
    dave = native(server, natives, "dave")  # native, in lobby and dev
    for client in (carol, erin):
        client.send("JOIN #dev")
        client.expect(" 366 ")
    dave.send("/join dev")
    dave.expect("* you are now in dev (3 here)")
    alice.send(f"OPER root {OPER_PASSWORD}")
    alice.expect(" 381 ")
    for client in (alice, carol, frank, erin):
        client.sync()
    dave.sync()

    alice.send("KILL erin :flooding")
    quit_line = ":erin!erin@chatcore QUIT :Killed (alice (flooding))"
    assert alice.expect(" QUIT ") == quit_line  # in #lobby with erin: no notice of its own
    assert erin.wait_closed()[-1] == "ERROR :Closing Link: disconnected: kicked by alice: flooding"
    for client in (carol, frank):
        assert client.expect(" QUIT ") == quit_line
        assert [line for line in client.sync() if "erin" in line] == []  # once, not once per channel
    # Native users see the leave once, in the first room they share.
    assert dave.sync() == ["[lobby] * erin left (kicked by alice: flooding)"]
    assert server.registry.find("erin") is None
    # Every channel lost it: NAMES lists it nowhere.
    carol.send("NAMES #lobby,#dev")
    assert not any("erin" in line for line in carol.sync())
    assert alice.sync() == []


def test_oper_without_operators_gets_491_and_the_other_operator_commands_are_irc_commands(
    chat_server_factory, connect, natives, opers_file
):
    plain = start(chat_server_factory)
    alice = register(connect, plain, "alice")
    alice.send(f"OPER root {OPER_PASSWORD}")
    alice.send("OPER root")
    assert alice.sync() == [
        ":chatcore 491 alice :No operators are configured on this server (--opers-file)",
        ":chatcore 461 alice OPER :Not enough parameters",
    ]

    server = start(chat_server_factory, "--opers-file", str(opers_file))
    root = native(server, natives, "root")
    bob = register(connect, server, "bob")
    carol = register(connect, server, "carol")
    bob.expect(":carol!carol@chatcore JOIN #lobby")
    bob.send("MUTE carol")
    assert bob.sync() == [":chatcore NOTICE bob :error: /mute is for operators; log in with /oper NAME PASSWORD"]
    # A native operator is @ for IRC users too.
    root.send(f"/oper root {OPER_PASSWORD}")
    root.expect("* you are now an operator (root)")
    assert bob.expect(" MODE ") == ":chatcore MODE #lobby +o root"
    bob.send("NAMES #lobby")
    assert bob.sync()[0] == ":chatcore 353 bob = #lobby :bob carol @root"
    bob.send(f"OPER root {OPER_PASSWORD}")
    bob.expect(" 381 ")
    # BAN, MUTE ... have no IRC command of their own: they are chatcore commands (/quote MUTE carol 5m).
    bob.send("MUTE carol 5m")
    assert bob.expect(" NOTICE ") == ":chatcore NOTICE bob :muted carol for 5m"
    carol.send("PRIVMSG #lobby :can anyone hear me?")
    assert carol.expect(" NOTICE carol :error") == (
        ":chatcore NOTICE carol :error: you are muted by an operator for 5m more; nothing was sent"
    )
    bob.send("MODE #lobby +b carol!*@*")
    # A server operator runs every channel: its modes and ban lists too.
    assert bob.sync() == [":bob!bob@chatcore MODE #lobby +b carol!*@*"]


def test_list_counts_the_other_servers_members_as_rooms_does(chat_server_factory, connect, natives):
    """IRC's LIST and native /rooms give one answer, the cluster's members
    included (issue 22, bug 4: LIST counted only this server's)."""

    class TwoElsewhere(Backplane):
        def members(self) -> dict[str, list[str]]:
            return {"lobby": ["far1", "far2"], "yonder": ["far3"]}

    class Cluster:
        @hookimpl
        def chatcore_backplane(self) -> Backplane:
            return TwoElsewhere()

    server = chat_server_factory(
        "--plugins", "irc", "--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0", plugins=[Cluster()]
    )  # fmt: skip
    bob = native(server, natives, "bob")
    alice = register(connect, server, "alice")
    alice.send("LIST")
    assert alice.sync() == [
        ":chatcore 321 alice Channel :Users  Name",
        ":chatcore 322 alice #lobby 4 :[+nt] ",
        ":chatcore 322 alice #yonder 1 :",
        ":chatcore 323 alice :End of /LIST",
    ]
    bob.send("/rooms")
    bob.expect("* 2 rooms: lobby (4, current), yonder (1)")


def test_a_users_prefix_is_the_same_in_its_join_messages_and_quit(chat_server_factory, connect):
    """The USER name travels with the events a person causes, so their QUIT,
    rendered after they left the registry, has the prefix of their JOIN
    (issue 25, item 5: it fell back to the nickname)."""
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    watcher = connect(server)
    watcher.send("NICK watcher")
    watcher.send("USER wuser 0 * :The Watcher")
    watcher.send("JOIN #lobby")
    watcher.expect(" 366 watcher #lobby ")
    assert alice.expect(" JOIN ") == ":watcher!wuser@chatcore JOIN #lobby"
    watcher.send("PRIVMSG #lobby :hello")
    assert alice.expect(" PRIVMSG ") == ":watcher!wuser@chatcore PRIVMSG #lobby :hello"
    watcher.send("NICK watcher2")
    assert alice.expect(" NICK ") == ":watcher!wuser@chatcore NICK watcher2"
    watcher.send("QUIT :bye")
    assert alice.expect(" QUIT ") == ":watcher2!wuser@chatcore QUIT :Quit: bye"


def test_the_irc_codec_runs_over_websocket_framing_too():
    """Framing is a layer below the codec (chatcore.wire.framing): the IRC
    codec over WebSocket text messages, one line a message and no CR LF, is
    a composition of the two (IRC over WebSocket, IRCv3's text.ircv3.net:
    tests/test_irc_websocket.py), with every line still made safe."""
    over_tcp, over_websocket = IRCFormat(), IRCFormat(framing=WebSocketFraming)
    chat = Chat("lobby", "alice", "hi\r\n:admin!admin@chatcore PRIVMSG #lobby :forged", user="al")
    line = b":alice!al@chatcore PRIVMSG #lobby :hi  :admin!admin@chatcore PRIVMSG #lobby :forged"
    assert over_tcp.encode(chat) == line + b"\r\n"
    framed = over_websocket.encode(chat)
    assert framed == websocket_frame(line)
    assert framed[:2] == bytes([0x81, len(line)])  # one final text frame, the line alone inside
    assert framed[2:] == line


@pytest.mark.parametrize("user", ["x PRIVMSG #board :forged by", "a:b", "a!b", "u" * 4000, "caf\u00e9"])
def test_a_user_name_that_would_break_a_prefix_is_not_used(user):
    """An event's user name reaches IRC prefixes: one that would break
    the prefix (from another server's bug, or anyone who can write to a
    cluster's Redis) gives way to the nickname (review of issue 22)."""
    line = IRCFormat().encode(Chat("lobby", "alice", "hi", user=user))
    assert line == b":alice!alice@chatcore PRIVMSG #lobby :hi\r\n"


def test_a_private_message_refused_is_said_irc_s_way_and_never_to_a_notice(chat_server_factory, connect):
    """send_private's refusal comes back to IRC as 401 or an error notice,
    and a NOTICE gets no answer at all (RFC 2812 3.3.2: no automatic
    replies to a NOTICE, or two bots answer each other for ever)."""

    class Elsewhere(Backplane):  # a cluster: nicks not here are asked about
        @property
        def shared(self) -> bool:
            return True

    class Cluster:
        @hookimpl
        def chatcore_backplane(self) -> Backplane:
            return Elsewhere()

        @hookimpl
        def chatcore_message(self, message: Message) -> None:
            if "darn" in message.text:
                message.reject("no darn here")

    server = chat_server_factory("--plugins", "irc", "--listen", "irc://127.0.0.1:0", plugins=[Cluster()])
    alice, bob = register(connect, server, "alice"), register(connect, server, "bob")
    alice.send("PRIVMSG ghost :are you there?")
    alice.expect(":chatcore 401 alice ghost :No such nick/channel")
    alice.send("NOTICE ghost :are you there?")
    alice.send("PRIVMSG bob :darn it")
    alice.expect(":chatcore NOTICE alice :error: no darn here")
    alice.send("NOTICE bob :darn it")
    assert not [line for line in alice.sync() if " 401 " in line or "error:" in line]
    bob.send("PING :x")
    assert not [line for line in bob.sync() if "darn" in line]


def test_version_answers_351_and_the_005_lines_again(chat_server_factory, connect):
    """RFC 2812 3.4.3 (irssi's and WeeChat's /version): 351, then the
    ISUPPORT lines of the registration again, as Ergo and InspIRCd send."""
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    alice.send("VERSION")
    lines = alice.sync()
    assert lines[0] == f":chatcore 351 alice chatcore-{__version__} chatcore :a plugin-extensible chat server in Python"
    assert len(lines) == 3
    assert all(line.startswith(":chatcore 005 alice ") for line in lines[1:])
    assert "NICKLEN=32" in " ".join(lines)
    alice.send("VERSION other.server")
    assert alice.readline() == ":chatcore 402 alice other.server :No such server"
    alice.send("HELP VERSION")
    assert " 704 alice VERSION :VERSION" in alice.sync()[0]


def test_time_info_and_what_irctest_found_in_who_and_mode(chat_server_factory, connect):
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    before = int(time.time())
    alice.send("TIME")
    reply = alice.readline().split(" ", 5)
    assert reply[:4] == [":chatcore", "391", "alice", "chatcore"]
    assert before <= int(reply[4]) <= time.time()
    alice.send("INFO")
    lines = alice.sync()
    assert lines[-1] == ":chatcore 374 alice :End of INFO list"
    assert len(lines) > 1
    assert all(" 371 alice :" in line for line in lines[:-1])
    for command in ("TIME other.server", "INFO other.server"):
        alice.send(command)
        assert alice.readline() == ":chatcore 402 alice other.server :No such server"
    # MODE +o of a nick nobody has: 401, not 441 (irctest).
    alice.send("MODE #lobby +o nobody")
    assert alice.readline() == ":chatcore 401 alice nobody :No such nick/channel"
    # WHO by mask lists a +i user only to those who share a room with it.
    eva = connect(server)
    eva.send("NICK eva")
    eva.send("USER eva 0 * :Eva")
    eva.send("MODE eva +i")
    eva.expect(":eva MODE eva +i")
    alice.send("WHO eva*")
    assert alice.sync() == [":chatcore 315 alice eva* :End of /WHO list."]
    alice.send("WHO eva")  # asked by name: shown
    assert alice.expect(" 352 ").startswith(":chatcore 352 alice * eva ")
    eva.send("JOIN #lobby")
    eva.expect(" 366 eva #lobby ")
    alice.send("WHO eva*")
    assert alice.expect(" 352 ").startswith(":chatcore 352 alice #lobby eva ")


def test_lusers_counts_users_invisible_operators_unknown_connections_and_channels(chat_server_factory, connect):
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    eva = connect(server)
    eva.send("NICK eva")
    eva.send("USER eva 0 * :Eva")
    eva.send("MODE eva +i")
    eva.expect(":eva MODE eva +i")
    lurker = connect(server)
    lurker.send("NICK lurker")  # not registered: an unknown connection
    lurker.sync()
    alice.send("LUSERS")
    assert alice.sync() == [
        ":chatcore 251 alice :There are 1 users and 1 invisible on 1 servers",
        ":chatcore 252 alice 0 :operator(s) online",
        ":chatcore 253 alice 1 :unknown connection(s)",
        ":chatcore 254 alice 1 :channels formed",
        ":chatcore 255 alice :I have 2 clients and 0 servers",
        ":chatcore 265 alice :Current local users: 2",
        ":chatcore 266 alice :Current global users: 2",
    ]


def test_help_answers_with_the_help_numerics(chat_server_factory, connect):
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    alice.send("HELP")
    lines = alice.sync()
    assert lines[0] == ":chatcore 704 alice index :IRC commands (HELP <command> for one):"
    assert all(line.startswith(":chatcore 705 alice index ") for line in lines[1:-1])
    assert lines[-1] == ":chatcore 706 alice index :End of /HELP"
    alice.send("HELP privmsg")
    assert alice.sync() == [
        ":chatcore 704 alice PRIVMSG :PRIVMSG <target> :<text>: send text to a channel or a user",
        ":chatcore 706 alice PRIVMSG :End of /HELP",
    ]
    alice.send("HELP NOSUCHTHING")
    assert alice.sync() == [":chatcore 524 alice NOSUCHTHING :Help not found"]
    # Every command HELP knows is one the server answers.
    assert set(IRC_HELP) <= set(_HANDLERS)


def test_whowas_answers_from_the_record_of_departed_nicknames(chat_server_factory, connect, natives):
    """RFC 2812 3.6.3: 314 and 312 per entry, the newest first, up to the
    count (all for none, 0 or a negative one), 406 for none, always 369."""
    server = start(chat_server_factory)
    alice = register(connect, server, "alice")
    for ident in ("first", "second"):
        bob = connect(server)
        bob.send("NICK bob")
        bob.send(f"USER {ident} 0 * :Bob the {ident}")
        bob.expect(" 001 ")
        bob.send("QUIT :bye")
        bob.wait_closed()
        wait_for(lambda: server.registry.find("bob") is None)
    carol = native(server, natives, "carol")
    carol.send("/nick caroline")  # a rename gives the old nickname up too
    carol.expect("* you are now known as caroline")
    alice.expect(":carol!carol@chatcore NICK caroline")

    def whowas(line: str) -> list[str]:
        alice.send(line)
        return [re.sub(r"(:chatcore 312 alice \S+ chatcore) :.*", r"\1 :WHEN", reply) for reply in alice.sync()]

    newest = [
        ":chatcore 314 alice bob second chatcore * :Bob the second",
        ":chatcore 312 alice bob chatcore :WHEN",
    ]
    oldest = [":chatcore 314 alice bob first chatcore * :Bob the first", ":chatcore 312 alice bob chatcore :WHEN"]
    end = ":chatcore 369 alice bob :End of WHOWAS"
    for line in ["WHOWAS bob", "WHOWAS BOB 0", "WHOWAS bob -1", "WHOWAS bob 2", "WHOWAS b?b 5"]:
        assert whowas(line) == [*newest, *oldest, end.replace(" bob ", f" {line.split()[1]} ")], line
    assert whowas("WHOWAS bob 1") == [*newest, end]
    assert whowas("WHOWAS carol") == [
        ":chatcore 314 alice carol carol chatcore * :chatcore native user",
        ":chatcore 312 alice carol chatcore :WHEN",
        ":chatcore 369 alice carol :End of WHOWAS",
    ]
    assert whowas("WHOWAS nobody") == [
        ":chatcore 406 alice nobody :There was no such nickname",
        ":chatcore 369 alice nobody :End of WHOWAS",
    ]
    assert whowas("WHOWAS") == [":chatcore 431 alice :No nickname given"]
    assert whowas("WHOWAS bob many") == [
        ":chatcore 400 alice WHOWAS :Invalid count 'many': a whole number (none or 0: every entry)"
    ]
    alice.send("WHOWAS bob")
    assert re.fullmatch(r":chatcore 312 alice bob chatcore :\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4} UTC", alice.sync()[1])


def test_the_record_of_departures_is_bounded_and_searched_newest_first():
    departed = Departed(limit=3)
    for number, nick in enumerate(["bob", "Bob", "carol", "bob"]):
        departed.add(nick, f"u{number}", when=float(number))
    assert len(departed) == 3  # the oldest went
    assert [(entry.nick, entry.user) for entry in departed.find("BOB")] == [("bob", "u3"), ("Bob", "u1")]
    assert [entry.user for entry in departed.find("bob", 1)] == ["u3"]
    assert [entry.nick for entry in departed.find("*")] == ["bob", "carol", "Bob"]
    assert departed.find("dave") == []


@pytest.mark.parametrize("pacing", [[], ["--line-rate", "0", "--limit-exempt", ""]], ids=["exempt", "no-flood-control"])
def test_irc_lines_read_together_keep_their_order_and_their_answers(
    chat_server_factory, connect, natives, chat_runs, pacing
):
    """An unpaced IRC client's lines of one read (a bot's burst) go to the
    channels in runs of chat, as the native protocol's do: anything else
    (a private message, an action, a NOTICE, a NICK, a line refused with a
    numeric) ends the run and is answered in its place, IRC's way. Either
    exempt from flood control (loopback), or with flood control off."""
    server = start(chat_server_factory, *pacing)
    runs = chat_runs(server)
    bob = native(server, natives, "bob")
    alice = register(connect, server, "alice")
    alice.send("JOIN #quiet")
    alice.expect(" 366 alice #quiet ")
    alice.send("MODE #quiet +m")
    alice.send("MODE #quiet -o alice")  # no longer allowed to speak in #quiet
    alice.send("PRIVMSG #lobby :warm-up")  # the first line decides her pacing
    bob.expect("<alice> warm-up")
    alice.sync()
    runs.clear()
    burst = [
        "PRIVMSG #lobby :one",
        "PRIVMSG #lobby :two",
        "PRIVMSG bob :psst",
        "PRIVMSG #lobby :\x01ACTION waves\x01",
        "PRIVMSG #nowhere :lost",
        "PRIVMSG #quiet :hush",
        "PRIVMSG #lobby :",
        "NOTICE #lobby :note",
        "PRIVMSG #lobby :three",
        "NICK zed",
        "PRIVMSG #lobby :four",
        "PRIVMSG #lobby :five",
    ]
    alice.sock.sendall("".join(f"{line}\r\n" for line in burst).encode())
    expected = [
        "<alice> one",
        "<alice> two",
        "*alice* psst",
        "* alice waves",
        "<alice> note",
        "<alice> three",
        "* alice is now known as zed",
        "<zed> four",
        "<zed> five",
    ]
    bob.expect("<zed> five")
    assert bob.received[-len(expected) :] == expected
    assert [line.split(" ", 1)[1] for line in alice.sync()] == [
        "403 alice #nowhere :No such channel",
        "404 alice #quiet :Cannot send to channel: quiet is moderated: only its operators and voiced members speak",
        "412 alice :No text to send",
        "NICK zed",
    ]
    # The chat went in runs: one, two; three; four, five.
    assert runs == [["one", "two"], ["three"], ["four", "five"]]
