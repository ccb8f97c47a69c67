"""IRC over WebSocket: the irc plugin's ircws:// and ircwss:// listeners
(IRCv3's text.ircv3.net and binary.ircv3.net), with a WebSocket client
speaking IRC over real sockets, beside native, IRC and web users."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_irc import IRCClient, certs  # noqa: F401 (certs: a fixture)
from test_web import HTTPError, WSClient, http_get
from wsproto.events import (
    Message,
)

from chatcore.engine.server import ChatServer
from chatcore.events import Chat
from chatcore.plugins.irc import (
    BINARY_SUBPROTOCOL,
    MAX_LINE,
    TEXT_SUBPROTOCOL,
    WS_DATA,
    IRCFormat,
    IRCWebSocketProtocol,
)
from chatcore.testing import LineClient, ServerFactory, ServerProcess
from chatcore.wire.framing import (
    OP_BINARY,
    OP_TEXT,
    CRLFLineFraming,
    WebSocketBinaryLines,
    WebSocketTextLines,
    websocket_frame,
)
from chatcore.wire.websocket import MAX_FRAGMENTS

TIMEOUT = 5.0


class IRCWebSocketClient(WSClient):
    """An IRC client over a WebSocket, as web IRC clients are: one line a
    message, no CR LF. Each message is kept as a line (``received``), and
    the kind of frame it came in (``kinds``: "text" or "binary")."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        subprotocols: tuple[str, ...] = (TEXT_SUBPROTOCOL,),
        origin: str | None = None,
        tls: ssl.SSLContext | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.kinds: list[str] = []
        super().__init__(address, origin=origin, tls=tls, path="/", rcvbuf=rcvbuf, subprotocols=subprotocols)

    def _message(self, message: str | bytes) -> None:
        line = message if isinstance(message, str) else message.decode("utf-8", "replace")
        assert not re.search("[\r\n]", line), f"a line with its ending: {line!r}"
        self.kinds.append("text" if isinstance(message, str) else "binary")
        self.received.append(line)
        self._unread.append(line)

    def send(self, line: str) -> None:  # type: ignore[override]
        self.send_message(line, binary=self.subprotocol == BINARY_SUBPROTOCOL)

    def send_message(self, line: str | bytes, *, binary: bool) -> None:
        data = line.encode("utf-8") if isinstance(line, str) else line
        self.sock.sendall(self.ws.send(Message(data=data if binary else data.decode("utf-8"))))

    def expect(self, match: Any, timeout: float = TIMEOUT) -> Any:
        """The first line (unread) in which the regex ``match`` is found."""
        if isinstance(match, str):
            pattern = re.compile(match)
            match = lambda line: pattern.search(line) is not None  # noqa: E731
        return super().expect(match, timeout)

    def sync(self) -> list[Any]:
        """The lines before the answer to a PING."""
        self.send("PING :sync")
        before = []
        while not (line := self.expect(lambda _: True)).endswith(" PONG chatcore :sync"):
            before.append(line)
        return before

    def register(self, nick: str) -> IRCWebSocketClient:
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :{nick} on the web")
        self.expect(f" 001 {nick} ")
        self.send("JOIN #lobby")
        self.expect(f" 366 {nick} #lobby ")
        return self


@pytest.fixture
def ircws(chat_server_factory: ServerFactory) -> Callable[..., ChatServer]:
    """A server with ircws://, irc://, tcp:// and ws:// listeners."""

    def start(*args: str) -> ChatServer:
        listen = [f"--listen={scheme}://127.0.0.1:0" for scheme in ("tcp", "irc", "ircws", "ws")]
        return chat_server_factory("--plugins", "irc,web", *listen, *args)

    return start


@pytest.fixture
def clients() -> Iterator[Callable[..., IRCWebSocketClient]]:
    made: list[Any] = []

    def connect(server: ChatServer, scheme: str = "ircws", **kwargs: Any) -> IRCWebSocketClient:
        client = IRCWebSocketClient(server.listener(scheme).address, **kwargs)
        made.append(client)
        return client

    def native(server: ChatServer, nick: str) -> LineClient:
        client = LineClient(server.listener("tcp").address)
        made.append(client)
        client.send(f"/nick {nick}")
        client.expect(f"* you are now known as {nick}")
        return client

    connect.native = native  # type: ignore[attr-defined]
    connect.made = made  # type: ignore[attr-defined]
    yield connect
    for client in made:
        client.close()


def _ws_protocols(server: ChatServer) -> list[IRCWebSocketProtocol]:
    return [c.protocol for c in list(server.connections) if isinstance(c.protocol, IRCWebSocketProtocol)]


# -- end to end -------------------------------------------------------------------


def test_both_subprotocols_chat_in_a_mixed_room_with_native_irc_and_web_users(ircws, clients):
    server = ircws()
    nat = clients.native(server, "nat")
    ian = IRCClient(server.listener("irc").address)  # IRC over TCP
    clients.made.append(ian)
    ian.send("NICK ian")
    ian.send("USER ian 0 * :Ian")
    ian.send("JOIN #lobby")
    webby = WSClient(server.listener("ws").address)
    clients.made.append(webby)
    tess = clients(server, subprotocols=(TEXT_SUBPROTOCOL,))
    bina = clients(server, subprotocols=(BINARY_SUBPROTOCOL, TEXT_SUBPROTOCOL))
    assert (tess.subprotocol, bina.subprotocol) == (TEXT_SUBPROTOCOL, BINARY_SUBPROTOCOL)
    tess.register("tess")
    nat.expect("* tess joined")
    bina.register("bina")
    nat.expect("* bina joined")
    tess.expect(r"^:bina!bina@chatcore JOIN #lobby$")
    webby.expect({"type": "join", "nick": "bina"})

    tess.send("PRIVMSG #lobby :hello from text")
    nat.expect("<tess> hello from text")
    assert bina.expect("PRIVMSG #lobby") == ":tess!tess@chatcore PRIVMSG #lobby :hello from text"
    assert webby.expect({"type": "chat", "nick": "tess"})["text"] == "hello from text"
    # Bytes that are not UTF-8 travel in a binary message (Latin-1 here),
    # and reach the text client as valid UTF-8, in a text frame.
    bina.send_message(b"PRIVMSG #lobby :caf\xe9 from binary", binary=True)
    assert tess.expect("PRIVMSG #lobby") == ":bina!bina@chatcore PRIVMSG #lobby :caf\u00e9 from binary"
    nat.expect("<bina> caf\u00e9 from binary")
    nat.send("hi from nc")
    assert tess.expect("PRIVMSG") == ":nat!nat@chatcore PRIVMSG #lobby :hi from nc"
    assert bina.expect("PRIVMSG #lobby :hi from nc").startswith(":nat!")
    webby.say("hi from the web")
    tess.expect("PRIVMSG #lobby :hi from the web")
    bina.expect("PRIVMSG #lobby :hi from the web")
    # A private message across front-ends, and the IRC user over TCP.
    tess.send("PRIVMSG nat :psst")
    nat.expect("*tess* psst")
    ian.expect("PRIVMSG #lobby :hi from the web")
    tess.sync()
    bina.sync()
    # Each connection gets the frames of its subprotocol, and nothing else.
    assert set(tess.kinds) == {"text"}
    assert set(bina.kinds) == {"binary"}
    # Room events rendered once per format: IRC over TCP, over text and
    # over binary WebSocket messages, JSON, native.
    formats = {feed.wire for feed in server.registry.feeds["lobby"]}
    assert len([wire for wire in formats if isinstance(wire, IRCFormat)]) == 3
    bina.send("QUIT :bye now")
    bina.wait_closed()
    assert bina.received[-1].startswith("ERROR :")
    assert bina.closed is not None
    assert bina.closed.code == 1000  # a normal closure: not a lost connection to reconnect
    nat.expect("* bina left (bye now)")
    tess.expect(r"^:bina!bina@chatcore QUIT :Quit: bye now$")


def test_the_subprotocol_is_the_clients_first_choice_and_text_without_one(ircws, clients):
    server = ircws()
    cases = {
        (TEXT_SUBPROTOCOL, BINARY_SUBPROTOCOL): TEXT_SUBPROTOCOL,
        (BINARY_SUBPROTOCOL, TEXT_SUBPROTOCOL): BINARY_SUBPROTOCOL,
        ("chat.example", BINARY_SUBPROTOCOL): BINARY_SUBPROTOCOL,
        ("chat.example",): None,
        (): None,
    }
    for offered, chosen in cases.items():
        client = clients(server, subprotocols=offered)
        assert client.subprotocol == chosen, offered
        client.send("PING :x")
        client.expect(" PONG chatcore :x")
        assert client.kinds == ["binary" if chosen == BINARY_SUBPROTOCOL else "text"]


def test_ircwss_over_tls(chat_server_factory, clients, certs):  # noqa: F811
    context, tls_options = certs
    server = chat_server_factory("--plugins", "irc", "--listen", "ircwss://127.0.0.1:0", *tls_options)
    alice = clients(server, "ircwss", tls=context).register("alice")
    bob = clients(server, "ircwss", tls=context, subprotocols=(BINARY_SUBPROTOCOL,)).register("bob")
    alice.send("PRIVMSG #lobby :over TLS")
    assert bob.expect("PRIVMSG") == ":alice!alice@chatcore PRIVMSG #lobby :over TLS"
    assert bob.kinds[-1] == "binary"


# -- the opening ------------------------------------------------------------------


def test_a_foreign_origin_is_refused_and_irc_ws_origins_allows_one(ircws, clients, caplog):
    server = ircws("--irc-ws-origins", "https://gamja.example.org")
    with pytest.raises(HTTPError) as refused:
        clients(server, origin="https://evil.example")
    assert refused.value.status == 403
    assert b"origin https://evil.example may not open this WebSocket" in refused.value.body
    assert "Origin https://evil.example" in caplog.text
    assert "--irc-ws-origins" in caplog.text
    for origin in ("https://gamja.example.org", None):  # a listed page; a client that is not a browser
        clients(server, origin=origin).register("ok" + str(len(clients.made)))
    port = server.listener("ircws").address[1]
    clients(server, origin=f"http://localhost:{port}").sync()  # the listener's own origin


def test_requests_that_open_no_websocket_get_http_errors(ircws, clients):
    server = ircws()
    address = server.listener("ircws").address
    status, _headers, body = http_get(address, "/")
    assert status == 426
    assert b"an IRC WebSocket endpoint" in body
    status, _, body = http_get(address, "/", headers="Upgrade: websocket\r\nConnection: Upgrade\r\n")
    assert status == 400
    assert b"bad WebSocket request" in body
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(b"\x16\x03\x01 not HTTP at all\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    clients(server).register("still")  # and the server goes on


# -- bad input ----------------------------------------------------------------------


def test_bad_messages_get_clear_errors_and_the_connection_goes_on(ircws, clients):
    server = ircws()
    nat = clients.native(server, "nat")
    tess = clients(server).register("tess")
    nat.expect("* tess joined")
    # A line over IRC's 512 bytes: 417, as over TCP.
    tess.send("PRIVMSG #lobby :" + "x" * MAX_LINE)
    tess.expect(" 417 tess :Input line was too long")
    # A binary message on text.ircv3.net: said, and dropped.
    tess.send_message(b"PRIVMSG #lobby :binary", binary=True)
    tess.expect(f"NOTICE tess :a binary WebSocket message was dropped: this connection speaks {TEXT_SUBPROTOCOL}")
    # A message in too many frames: dropped whole.
    frames = [tess.ws.send(Message(data="PRIVMSG #lobby :", message_finished=False))]
    frames += [tess.ws.send(Message(data="", message_finished=False))] * MAX_FRAGMENTS
    frames.append(tess.ws.send(Message(data="pieces", message_finished=True)))
    tess.send_raw(b"".join(frames))
    tess.expect(" 417 tess ")
    tess.send("PRIVMSG #lobby :still here")
    nat.expect("<tess> still here")
    assert not any("pieces" in line or "binary" in line for line in nat.received)


def test_invalid_utf8_in_a_text_message_closes_that_connection_only(ircws, clients):
    server = ircws()
    nat = clients.native(server, "nat")
    tess = clients(server).register("tess")
    nat.expect("* tess joined")
    # A text frame with Latin-1 in it (masked, as a client's must be).
    payload = b"PRIVMSG #lobby :caf\xe9"
    mask = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    tess.send_raw(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
    tess.wait_closed()
    assert any(line.startswith("ERROR :Closing Link: WebSocket protocol error") for line in tess.received)
    assert f"need {BINARY_SUBPROTOCOL}" in tess.received[-1]
    assert tess.closed is not None
    assert tess.closed.code == 1007
    nat.expect("* tess left (protocol error)")
    nat.send("and the others go on")
    clients(server).register("other")
    assert not any("caf" in line for line in nat.received)


@pytest.mark.slow
def test_pings_find_a_dead_irc_websocket(ircws, clients):
    server = ircws("--irc-ws-ping-interval", "1")
    alive = clients(server).register("alive")
    dead = clients(server).register("dead")
    dead.auto_pong = False
    alive.expect(r"^:dead!dead@chatcore QUIT :Quit: ping timeout$", timeout=6)
    dead.wait_closed()
    assert dead.closed is not None  # ERROR and a close frame, for a client that is alive after all
    assert dead.pings >= 1
    assert alive.pings >= 1
    alive.sync()


def test_a_quiet_irc_websocket_is_pinged_before_it_is_dropped(ircws, clients):
    """Dropped an interval after a ping it did not answer, never for its
    silence alone: after a reload shortens --irc-ws-ping-interval, a client
    quiet for longer than two new intervals is asked first."""
    server = ircws()  # pings every 20 seconds: the pinger thread leaves it alone meanwhile
    quiet = clients(server).register("quiet")
    (protocol,) = _ws_protocols(server)
    later = time.monotonic() + 100  # quiet for five intervals
    protocol.check(later, 20.0)
    quiet.sync()
    quiet.sync()  # its pong, sent before this PING, has been read
    assert quiet.pings == 1
    assert not protocol.client.closed
    protocol.check(later, 20.0)  # quiet again: asked again
    quiet.auto_pong = False
    protocol.check(later + 21, 20.0)
    quiet.wait_closed()
    assert quiet.pings == 2


def test_a_websocket_that_stops_reading_is_dropped_as_a_slow_consumer(ircws, clients):
    server = ircws("--max-queue", "64")
    nat = clients.native(server, "nat")
    clients(server, rcvbuf=4096).register("stalled")  # and reads nothing from here on
    nat.expect("* stalled joined")
    talker = clients.native(server, "talker")
    for number in range(3000):
        talker.send(f"flood {number} " + "y" * 3000)
        if nat.expect(re.compile(r"^(\* stalled left|<talker> flood)")).startswith("* stalled left"):
            break
    else:
        raise AssertionError("never dropped")
    talker.send("after it")
    nat.expect("<talker> after it")


# -- the pieces -----------------------------------------------------------------------


def test_formats_of_one_framing_are_one_object_with_the_servers_names(ircws):
    server = ircws("--irc-server-name", "irc.example.org")
    websocket = server.listener("ircws").scheme.wire
    assert websocket is server.listener("irc").scheme.wire.framed_by(WebSocketTextLines)
    binary = websocket.framed_by(WebSocketBinaryLines)
    assert binary is websocket.framed_by(WebSocketBinaryLines)
    assert binary.framed_by(CRLFLineFraming) is server.listener("irc").scheme.wire
    assert {wire.server for wire in websocket.twins()} == {"irc.example.org"}
    chat = Chat("lobby", "alice", "hi")
    line = b":alice!alice@chatcore PRIVMSG #lobby :hi"
    assert binary.encode(chat) == websocket_frame(line, OP_BINARY)
    assert websocket.encode(chat) == websocket_frame(line, OP_TEXT)
    assert server.config.data[WS_DATA].pinger._thread.is_alive()


def test_no_pinger_thread_without_an_irc_websocket_listener(chat_server_factory):
    server = chat_server_factory("--plugins", "irc", "--listen", "irc://127.0.0.1:0")
    assert not server.config.data[WS_DATA].pinger._thread.is_alive()


# -- a real client: irc-framework, Kiwi IRC's IRC library -------------------------

#: The client's files: package.json with its lockfile (npm ci installs
#: exactly those versions), and the script.
JS_CLIENT = Path(__file__).parent / "js" / "ircws"


@pytest.fixture(scope="module")
def irc_framework(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """irc-framework installed from the lockfile in a folder of its own (nothing
    in the repository's tree): the command that runs tests/js/ircws/client.js."""
    for program in ("node", "npm"):
        # Missing is a failure, never a skip: .ci/run installs them.
        assert shutil.which(program), f"this test needs {program}: apt-get install nodejs npm"
    folder = tmp_path_factory.mktemp("ircws-js")
    for name in ("package.json", "package-lock.json", "client.js"):
        shutil.copy(JS_CLIENT / name, folder)
    installed = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    # Node 22 has the browsers' WebSocket (which irc-framework uses); Node 20 behind a flag.
    native = subprocess.run(["node", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False)
    return ["node", *([] if native.returncode == 0 else ["--experimental-websocket"]), str(folder / "client.js")]


@pytest.mark.slow
def test_irc_framework_the_library_of_kiwi_irc_chats_with_native_and_web_users(irc_framework):
    """Kiwi IRC's own IRC library over ircws:// as Kiwi IRC uses it (no
    subprotocol offered: text), against the real program, in a room with a
    native user and a web page's WebSocket."""
    listen = [f"--listen={scheme}://127.0.0.1:0" for scheme in ("tcp", "ircws", "ws")]
    with ServerProcess("--plugins", "welcome,irc,web", *listen) as server:
        nat = LineClient(server.addresses["tcp"], timeout=TIMEOUT)
        webby = WSClient(server.addresses["ws"])
        node = subprocess.Popen(
            [*irc_framework, str(server.addresses["ircws"][1]), "kiwi"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            nat.send("/nick nat")
            nat.expect("* you are now known as nat")
            webby.expect({"type": "welcome"})
            nat.expect("* kiwi joined", timeout=15)  # node's start
            nat.expect("<kiwi> hello from irc-framework")
            assert webby.expect({"type": "chat", "nick": "kiwi"})["text"] == "hello from irc-framework"
            webby.say("hi kiwi")
            nat.expect(lambda line: line.endswith("> hi kiwi"))  # two senders: their order is the server's to pick
            nat.send("bye")
            nat.expect("* kiwi left (done)")
            out, err = node.communicate(timeout=TIMEOUT)
        finally:
            node.kill()
            nat.close()
            webby.close()
        events = [json.loads(line) for line in out.splitlines()]
        assert events[:2] == [{"event": "registered", "nick": "kiwi"}, {"event": "joined", "channel": "#lobby"}], err
        said = [(event["nick"], event["message"]) for event in events if event["event"] == "privmsg"]
        assert [message for _, message in said] == ["hi kiwi", "bye"]
        assert said[0][0].startswith("guest-")  # the web page's visitor
        assert said[1][0] == "nat"
        assert events[-1] == {"event": "close"}
