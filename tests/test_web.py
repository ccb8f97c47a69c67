"""The web plugin over real sockets: static files, the Origin check, the
WebSocket JSON protocol beside native clients, limits, pings and resume.

The WebSocket client here is wsproto's client side over a plain socket.
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from chatcore import Client, events
from chatcore.engine.server import ChatServer
from chatcore.plugins import web as web_module
from chatcore.plugins.web import CONTENT_SECURITY_POLICY, MAX_FRAGMENTS
from chatcore.testing import LineClient, ServerFactory, wait_for
from chatcore.wire.native import PASSWORD_REQUIRED

TIMEOUT = 5.0
Obj = dict[str, Any]


class HTTPError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class WSClient:
    """A WebSocket client for tests: JSON objects in and out, with timeouts.

    Set ``auto_pong=False`` to play a browser that stopped answering.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        origin: str | None = "auto",
        tls: ssl.SSLContext | None = None,
        path: str = "/ws",
        rcvbuf: int | None = None,
        subprotocols: Sequence[str] = (),
        first: Obj | None = None,
    ) -> None:
        #: A message sent in the same write as the upgrade request (a client
        #: that does not wait for the answer), so it is there before the
        #: server could admit the connection, however busy the machine.
        self._first = first
        sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so the window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=address[0])
        self.sock = sock
        try:
            self._handshake_with(address, origin, tls, path, subprotocols)
        except BaseException:
            sock.close()
            raise

    def _handshake_with(
        self,
        address: tuple[str, int],
        origin: str | None,
        tls: ssl.SSLContext | None,
        path: str,
        subprotocols: Sequence[str],
    ) -> None:
        sock = self.sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.received: list[Any] = []
        self._unread: list[Any] = []
        self._parts: list[str | bytes] = []
        self.closed: CloseConnection | None = None
        self.eof = False
        self.auto_pong = True
        self.pings = 0
        self._handshake: list[object] = []
        scheme = "https" if tls is not None else "http"
        headers = (
            []
            if origin is None
            else [(b"Origin", (f"{scheme}://{address[0]}:{address[1]}" if origin == "auto" else origin).encode())]
        )
        host = f"{address[0]}:{address[1]}"
        request = Request(host=host, target=path, extra_headers=headers, subprotocols=list(subprotocols))
        opening = self.ws.send(request)
        if self._first is not None:
            opening += masked_text_frame(json.dumps(self._first))
        sock.sendall(opening)
        deadline = time.monotonic() + TIMEOUT
        status, body = 0, b""
        while True:
            events, self._handshake = self._handshake, []
            for event in events:
                if isinstance(event, AcceptConnection):
                    #: The subprotocol the server chose (None: none).
                    self.subprotocol = event.subprotocol
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise HTTPError(status, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise HTTPError(status, body)
            if not self._fill(deadline):
                raise AssertionError(f"no WebSocket handshake answer (status {status}, {body!r})")

    def send(self, obj: Obj) -> None:
        self.sock.sendall(self.ws.send(Message(data=json.dumps(obj))))

    def say(self, text: str) -> None:
        self.send({"type": "line", "text": text})

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts = self._parts, []
                    self._message(parts[0][:0].join(parts))  # type: ignore[arg-type]
            elif isinstance(event, Ping):
                self.pings += 1
                if self.auto_pong:
                    self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = self.closed or event  # the close frame, not the EOF after it
            else:
                self._handshake.append(event)
        return True

    def _message(self, message: str | bytes) -> None:
        """A whole message from the server: JSON text."""
        if isinstance(message, bytes):
            raise AssertionError("the server sent a binary message")
        obj = json.loads(message)
        self.received.append(obj)
        self._unread.append(obj)

    def expect(self, match: Callable[[Obj], bool] | Obj, timeout: float = TIMEOUT) -> Obj:
        """Read until an object matches (a predicate, or a dict whose items
        it must contain); earlier objects are consumed."""
        if isinstance(match, dict):
            wanted = match
            match = lambda obj: all(obj.get(key) == value for key, value in wanted.items())  # noqa: E731
        skipped: list[Obj] = []
        deadline = time.monotonic() + timeout
        while True:
            while self._unread:
                obj = self._unread.pop(0)
                if match(obj):
                    return obj
                skipped.append(obj)
            if not self._fill(deadline):
                raise AssertionError(f"expected a match; got {skipped[-8:]} (eof={self.eof}, closed={self.closed})")

    def sync(self) -> list[Obj]:
        """Round trip: the objects before the answer to /ping."""
        self.say("/ping")
        before: list[Obj] = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            while self._unread:
                obj = self._unread.pop(0)
                if obj == {**obj, "type": "notice", "text": "pong"}:
                    return before
                before.append(obj)
            if not self._fill(deadline):
                raise AssertionError(f"no pong; got {before[-8:]}")

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                raise AssertionError(f"still open; received {self.received[-8:]}")

    def close(self) -> None:
        self.sock.close()


def masked_text_frame(text: str) -> bytes:
    """One text message as a client frames it (RFC 6455: masked), for a
    frame wsproto will not make before the handshake's answer."""
    data = text.encode()
    assert len(data) < 126
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))


def http_get(
    address: tuple[str, int], path: str, *, method: str = "GET", headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request, Connection: close; status, headers, body."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        host = f"{address[0]}:{address[1]}"
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), fields, body


def trickle_headers(address: tuple[str, int], timeout: float = 5.0) -> bytes:
    """A request line, then one header byte at a time, 0.1 s apart, until
    the server answers or closes (or ``timeout``): what it said."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                return answer
            try:
                sock.sendall(b"X")
            except ConnectionError:
                return b""
    raise AssertionError(f"still open after {timeout} s of a header trickling in")


@pytest.fixture
def web(chat_server_factory: ServerFactory) -> Callable[..., ChatServer]:
    """A server with a ws:// listener and a tcp:// one."""

    def start(*args: str, plugins: str = "web") -> ChatServer:
        return chat_server_factory(
            "--plugins", plugins, "--listen", "ws://127.0.0.1:0", "--listen", "tcp://127.0.0.1:0", *args
        )

    return start


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    made: list[WSClient | LineClient] = []

    def ws(server: ChatServer, **kwargs: Any) -> WSClient:
        client = WSClient(server.listener("ws").address, **kwargs)
        made.append(client)
        return client

    def native(server: ChatServer) -> LineClient:
        client = LineClient(server.listener("tcp").address)
        made.append(client)
        client.sync()
        return client

    ws.native = native  # type: ignore[attr-defined]
    ws.made = made  # type: ignore[attr-defined]
    yield ws
    for client in made:
        client.close()


# -- HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "needle"),
    [
        ("/", "text/html; charset=utf-8", b'<script type="module" src="app.js">'),
        ("/app.js", "text/javascript; charset=utf-8", b"WebSocket"),
        ("/style.css", "text/css; charset=utf-8", b"@media"),
    ],
)
def test_the_page_is_served_with_its_content_type_and_a_strict_policy(web, path, kind, needle):
    server = web()
    status, headers, body = http_get(server.listener("ws").address, path)
    assert status == 200
    assert headers["content-type"] == kind
    assert needle in body
    assert int(headers["content-length"]) == len(body)
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff"


def test_the_page_has_no_inline_script_or_style(web):
    server = web()
    _, _, body = http_get(server.listener("ws").address, "/")
    page = body.decode()
    assert "<script>" not in page
    assert " on" + "click=" not in page
    assert "style=" not in page


def test_the_script_never_turns_text_into_markup():
    """A guard beside the browser tests: none of the DOM calls that parse HTML."""
    from importlib import resources

    script = resources.files("chatcore.plugins").joinpath("web_static").joinpath("app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert 'rel = "noopener noreferrer"' in script


def _luminance(colour: str) -> float:
    """WCAG 2's relative luminance of ``#rrggbb``."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(one: str, other: str) -> float:
    light, dark = sorted((_luminance(one), _luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_every_nick_colour_is_readable_on_the_page_in_both_schemes():
    """WCAG AA (4.5:1) for every nick colour on the background and on one's
    own lines, in the light scheme and the dark one; as many colours as the
    script hashes nicks into."""
    from importlib import resources

    static = resources.files("chatcore.plugins").joinpath("web_static")
    css = static.joinpath("style.css").read_text()
    script = static.joinpath("app.js").read_text()
    light, dark = css.split("@media (prefers-color-scheme: dark)", 1)
    dark = dark.split("}", 1)[0]
    count = int(re.search(r"const NICK_COLORS = (\d+);", script)[1])  # type: ignore[index]
    for scheme in (light, dark):
        variables = dict(re.findall(r"--([a-z0-9-]+): (#[0-9a-f]{6});", scheme))
        colours = [variables[f"nick-{n}"] for n in range(count)]
        assert len(set(colours)) == count
        for colour in colours:
            for background in (variables["bg"], variables["own"]):
                assert _contrast(colour, background) >= 4.5, (colour, background)
    for n in range(count):
        assert f".nick-color-{n} {{ color: var(--nick-{n}); }}" in css


@pytest.mark.parametrize(
    "path", ["/../pyproject.toml", "/web_static/app.js", "/%2e%2e/web.py", "/..%2fweb.py", "/app.js/..", "//etc/passwd"]
)
def test_nothing_but_the_page_files_is_served(web, path):
    server = web()
    status, _, body = http_get(server.listener("ws").address, path)
    assert status == 404, body


def test_head_other_methods_and_keep_alive(web):
    server = web()
    address = server.listener("ws").address
    status, headers, body = http_get(address, "/", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 40
    assert http_get(address, "/", method="POST")[0] == 405
    assert http_get(address, "/ws")[0] == 426
    # Two requests on one connection, both answered.
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(
            b"GET /style.css HTTP/1.1\r\nHost: x\r\n\r\nGET /app.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 2


def test_oversized_headers_are_refused_and_the_server_goes_on(web, clients):
    server = web()
    address = server.listener("ws").address
    status, _, _ = http_get(address, "/", headers=f"X-Big: {'a' * 20000}\r\n")
    assert status == 431
    status, _, _ = http_get(address, "/")
    assert status == 200


def test_a_request_head_that_trickles_in_gets_408(web, clients, monkeypatch):
    monkeypatch.setattr(web_module, "HTTP_HEADER_TIMEOUT", 0.5, raising=False)
    server = web("--web-ping-interval", "1")  # the checks run four times a second
    started = time.monotonic()
    # Each byte keeps the connection from being idle; only the head as a whole is timed.
    assert trickle_headers(server.listener("ws").address).startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3
    browser = clients(server)
    browser.sync()


def test_garbage_gets_400(web):
    server = web()
    with socket.create_connection(server.listener("ws").address, timeout=TIMEOUT) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (UPGRADE + b"\r\n", b"400 Bad Request"),  # no key, no version
        (UPGRADE + b"Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 8\r\n\r\n", b"426 Upgrade Required"),
        (b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n", b"400 Bad Request"),  # no Host
        (
            UPGRADE + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Content-Length: 5\r\n\r\nhello",
            b"400 Bad Request",
        ),
        # wsproto decodes Connection as ASCII: a byte above 0x7f raised from it (found by fuzzing).
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\xc3\xa9\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"400 Bad Request",
        ),
    ],
)
def test_a_broken_upgrade_gets_an_http_error_and_the_server_goes_on(web, clients, request_bytes, status, caplog):
    server = web()
    with socket.create_connection(server.listener("ws").address, timeout=TIMEOUT) as sock:
        sock.sendall(request_bytes)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 " + status + b"\r\n"), data
    assert b"bad WebSocket request" in data or b"has no body" in data
    assert "unexpected error" not in caplog.text
    clients(server).expect({"type": "welcome"})


# -- the Origin check -----------------------------------------------------------


def test_a_cross_origin_websocket_is_refused_with_403(web, clients, caplog):
    server = web()
    with pytest.raises(HTTPError) as refused:
        clients(server, origin="http://evil.example")
    assert refused.value.status == 403
    assert b"origin http://evil.example may not open this WebSocket" in refused.value.body
    assert "Origin http://evil.example" in caplog.text
    assert "--web-origins" in caplog.text
    assert len(server.registry) == 0


def test_the_own_origin_localhost_and_web_origins_are_allowed(web, clients):
    server = web("--web-origins", "https://chat.example.com,http://other.example:8000")
    port = server.listener("ws").address[1]
    for origin in ("auto", f"http://localhost:{port}", "https://chat.example.com", "http://other.example:8000", None):
        clients(server, origin=origin).expect({"type": "welcome"})
    with pytest.raises(HTTPError):
        clients(server, origin=f"http://localhost:{port + 1}")
    with pytest.raises(HTTPError):
        clients(server, origin="https://chat.example.com.evil.example")


def test_a_bad_web_origins_value_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--plugins", "web", "--web-origins", "chat.example.com"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--web-origins 'chat.example.com': give an origin" in result.stderr


# -- chat ---------------------------------------------------------------------


def test_web_and_native_clients_chat_both_ways(web, clients):
    server = web()
    browser = clients(server)
    welcome = browser.expect({"type": "welcome"})
    assert welcome["you"]["room"] == "lobby"
    assert welcome["you"]["nick"].startswith("guest-")
    native = clients.native(server)
    browser.say("/nick webby")
    assert browser.expect({"type": "notice"})["you"]["nick"] == "webby"
    native.send("/nick nat")
    native.sync()
    browser.say("hello from the browser <b>")
    native.expect("<webby> hello from the browser <b>")
    native.send("hello from nc")
    chat = browser.expect({"type": "chat"})
    assert chat["nick"] == "nat"
    assert chat["text"] == "hello from nc"
    assert chat["room"] == "lobby"
    assert chat["epoch"] == server.backplane.epoch_of("lobby")
    assert chat["offset"] > 0
    assert chat["msgid"] == f"{chat['epoch']}:{chat['offset']}"
    assert chat["time"] > 0
    browser.say("/me waves")
    native.expect("* webby waves")
    assert browser.expect({"type": "action"})["text"] == "waves"
    native.send("/msg webby psst")
    private = browser.expect({"type": "private"})
    assert private == {**private, "from": "nat", "to": "webby", "text": "psst", "echo": False}
    assert private["msgid"].endswith("-pm:1")  # a private line's ID and time, as in history
    assert private["time"] > 0
    browser.say("/msg nat back")
    native.expect("*webby* back")
    echo = browser.expect({"type": "private"})
    assert echo["echo"] is True
    assert echo["msgid"].endswith("-pm:2")
    browser.say("/who")
    assert sorted(browser.expect({"type": "members"})["nicks"]) == ["nat", "webby"]
    browser.say("/join dev")
    joined = browser.expect({"type": "notice"})
    assert joined["text"] == "you are now in dev (1 here)"
    assert joined["you"] == {"nick": "webby", "room": "dev", "rooms": ["lobby", "dev"], "server_operator": False}
    browser.say("/part lobby")
    assert browser.expect({"type": "notice"})["text"] == "you left lobby; you now talk in dev"
    native.expect("* webby left")
    browser.say("/rooms")
    rooms = browser.expect({"type": "rooms"})["rooms"]
    assert {"room": "dev", "members": 1} in rooms
    assert {"room": "lobby", "members": 1} in rooms
    browser.say("/nosuch")
    assert browser.expect({"type": "error"})["text"] == "unknown command /nosuch (try /help)"
    browser.say("//slash")
    native.send("/join dev")
    native.sync()
    browser.say("in dev")
    native.expect("[dev] <webby> in dev")
    browser.say("/quit")
    native.expect("[dev] * webby left")


def test_web_messages_read_together_keep_their_order_and_their_answers(web, clients, chat_runs):
    """A page's (or a bot's) messages of one read go to the room in runs of
    chat, as a native client's lines do: a command, a message of another
    kind, one refused or broken ends the run and is answered in its place."""
    server = web("--max-line", "100")
    runs = chat_runs(server)
    browser = clients(server)
    browser.expect({"type": "welcome"})
    native = clients.native(server)
    browser.say("warm-up")  # the first line decides the page's pacing (exempt: loopback)
    native.expect(re.compile(r"^<guest-\d+> warm-up$"))
    runs.clear()
    burst = [
        {"type": "line", "text": "first"},
        {"type": "line", "text": "second"},
        {"type": "line", "text": "/nick webby"},
        {"type": "typing", "room": "lobby", "state": "active"},
        {"type": "line", "text": "third"},
        {"type": "line", "text": "x" * 200},
        {"type": "nonsense"},
        {"type": "line", "text": "//not a command"},
        {"type": "line", "text": "fourth"},
    ]
    browser.send_raw(b"".join(browser.ws.send(Message(data=json.dumps(obj))) for obj in burst))
    native.expect("<webby> fourth")
    assert native.received[-6:] == [
        "<guest-1> first",
        "<guest-1> second",
        "* guest-1 is now known as webby",
        "<webby> third",
        "<webby> /not a command",
        "<webby> fourth",
    ]
    assert browser.expect({"type": "error"})["text"] == "line too long (the limit is 100 bytes); it was not sent"
    assert browser.expect({"type": "error"})["text"].startswith("bad message: expected")
    assert runs == [["first", "second"], ["third"], ["/not a command", "fourth"]]


def test_joins_leaves_and_nick_changes_reach_the_browser(web, clients):
    server = web()
    browser = clients(server)
    browser.sync()
    native = clients.native(server)
    joined = browser.expect({"type": "join"})
    native.send("/nick nat")
    assert browser.expect({"type": "nick"}) == {**browser.received[-1], "nick": joined["nick"], "new_nick": "nat"}
    native.send("/quit bye now")
    left = browser.expect({"type": "leave"})
    assert left["nick"] == "nat"
    assert left["reason"] == "bye now"
    assert left["disconnected"] is True


def test_topics_modes_and_invitations_reach_the_browser_as_they_change(web, clients, tmp_path):
    from chatcore.engine.auth import hash_password

    opers = tmp_path / "opers"
    opers.write_text(f"root {hash_password('oper-secret')}\n", encoding="utf-8")
    server = web("--opers-file", str(opers), "--listen", "irc://127.0.0.1:0", plugins="web,irc")
    server_address = server.listener("irc").address
    browser = clients(server)
    browser.say("/nick webby")
    browser.expect({"type": "notice", "text": "you are now known as webby"})
    native = clients.native(server)
    native.send("/nick nat")
    native.sync()

    # Its own join: the notices, then the room's state (a new room: no
    # topic, +nt, and the first member runs it).
    browser.say("/join dev")
    browser.expect({"type": "notice", "text": "you are now in dev (1 here)"})
    state = browser.expect({"type": "room_state"})
    assert state == {
        "type": "room_state", "room": "dev", "topic": "", "topic_by": "", "topic_at": 0.0, "modes": "+nt",
        "operators": ["webby"], "voiced": [], "you": {**state["you"], "room": "dev"},
    }  # fmt: skip
    assert state["you"]["server_operator"] is False
    native.send("/join dev")
    native.sync()

    # Set from the page: the room hears it, the setter too, with its identity.
    browser.say("/topic Release on Friday")
    topic = browser.expect({"type": "topic"})
    assert topic == {
        **topic, "nick": "webby", "topic": "Release on Friday", "room": "dev",
        "epoch": server.backplane.epoch_of("dev"),
    }  # fmt: skip
    assert topic["offset"] > 0
    assert topic["time"] > 0
    native.expect("[dev] * webby set the topic: Release on Friday")
    # Not an operator of a +t room: refused, and nothing changes.
    native.send("/topic mine now")
    native.expect("! only operators of dev set its topic (it is +t)")
    # Modes, with their arguments; an operator made by the page sets the topic from nc.
    browser.say("/mode +o-t nat")
    mode = browser.expect({"type": "mode"})
    assert mode == {**mode, "nick": "webby", "modes": "+o-t", "arguments": ["nat"], "room": "dev"}
    assert mode["offset"] > topic["offset"]
    native.send("/topic from nc")
    assert browser.expect({"type": "topic"})["nick"] == "nat"
    native.send("/topic --clear")
    cleared = browser.expect({"type": "topic"})
    assert (cleared["nick"], cleared["topic"]) == ("nat", "")
    # From IRC, the same event.
    irc = LineClient(server_address)
    clients.made.append(irc)
    irc.send("NICK ircy")
    irc.send("USER ircy 0 * :IRC user")
    irc.send("JOIN #dev")
    irc.expect(re.compile(" 366 ircy #dev "))
    irc.send("TOPIC #dev :set over IRC")
    irc.expect(re.compile("TOPIC #dev :set over IRC"))
    topic = browser.expect({"type": "topic"})
    assert (topic["nick"], topic["topic"]) == ("ircy", "set over IRC")
    browser.say("/mode +kv sesame ircy")
    assert browser.expect({"type": "mode"})["arguments"] == ["sesame", "ircy"]

    # A browser joining later gets the state as it is now.
    second = clients(server)
    second.say("/nick second")
    second.sync()
    second.say("/join dev sesame")
    state = second.expect({"type": "room_state"})
    assert state == {
        **state, "room": "dev", "topic": "set over IRC", "topic_by": "ircy", "modes": "+kn",
        "operators": ["nat", "webby"], "voiced": ["ircy"],
    }  # fmt: skip
    assert state["topic_at"] > 0

    # An invitation, to a browser in another room.
    third = clients(server)
    third.say("/nick third")
    third.sync()
    native.send("/invite third dev")
    native.expect("* invited third to dev")
    invite = third.expect({"type": "invite"})
    assert invite == {"type": "invite", "by": "nat", "room": "dev", "you": {**invite["you"], "nick": "third"}}

    # A server operator runs every room: the page is told with "you".
    third.say("/oper root oper-secret")
    assert third.expect({"type": "notice"})["you"]["server_operator"] is True


def test_a_page_arrives_under_the_nick_of_its_first_message_however_late(web, clients):
    """Issue 25, item 1: the page asks for the nick, then sends it as its
    first message; the connection enters the chat with it, whenever it
    comes (a browser's first message is a round trip behind the upgrade),
    and the welcome greets the nick: never a guest renamed."""
    server = web(plugins="welcome,web")
    native = clients.native(server)
    page = clients(server, path="/ws?rooms=after-nick")
    # Later than a native client's wait (ARRIVAL_WAIT): still not in, still nameless.
    time.sleep(web_module.ARRIVAL_WAIT * 4)
    assert len(server.registry) == 1
    page.say("/nick webby")
    welcome = page.expect({"type": "welcome"})
    assert welcome["lines"][0].startswith("Welcome to chatcore, webby! ")
    assert welcome["you"] == {**welcome["you"], "nick": "webby", "room": "", "rooms": []}
    page.expect({"type": "notice", "text": "you are now known as webby"})
    page.say("/join lobby")
    native.expect("* webby joined")
    native.sync()
    assert not [line for line in native.received if "guest-2" in line or "known as" in line], native.received
    assert not [obj for obj in page.received if "guest-" in json.dumps(obj)], page.received


def test_a_bots_first_message_names_it_as_a_native_clients_first_line(web, clients, tmp_path):
    """The JSON dialect without the page's query: a first message within
    ARRIVAL_WAIT of the upgrade (here in the upgrade's own write) names the
    connection, ``/login`` too; a WebSocket that says nothing enters as a
    guest once the wait is over."""
    from chatcore.engine import auth

    server = web("--state-db", str(tmp_path / "state.db"), plugins="welcome,web,accounts")
    record = {"name": "Robo", "password": auth.hash_password("robo-secret-1"), "certfp": [], "suspended": ""}
    assert server.store.create("account", "robo", record)
    native = clients.native(server)
    bot = clients(server, first={"type": "line", "text": "/nick bot"})
    assert bot.expect({"type": "welcome"})["you"] == {**bot.received[0]["you"], "nick": "bot", "room": "lobby"}
    bot.expect({"type": "notice", "text": "you are now known as bot"})
    native.expect("* bot joined")
    robo = clients(server, first={"type": "line", "text": "/login robo robo-secret-1"})
    assert robo.expect({"type": "welcome"})["lines"][0].startswith("Welcome to chatcore, Robo! ")
    assert robo.expect({"type": "notice"})["text"] == "you are logged in to Robo"
    native.expect("* Robo joined")
    wrong = clients(server, first={"type": "line", "text": "/login robo wrong-password"})
    assert wrong.expect({"type": "welcome"})["you"]["nick"].startswith("guest-")
    assert wrong.expect({"type": "error"})["text"] == "wrong account name or password"
    quiet = clients(server)
    assert quiet.expect({"type": "welcome"})["you"]["nick"].startswith("guest-")
    native.sync()
    assert not [line for line in native.received if "known as" in line], native.received


def test_a_page_that_waits_for_its_nickname_is_in_no_room_until_then(web, clients):
    server = web()
    native = clients.native(server)
    native.send("/nick nat")
    native.sync()
    page = clients(server, path="/ws?rooms=after-nick")
    # A first message that names nobody: in under a guest name, in no room.
    page.say("/rooms")
    welcome = page.expect({"type": "welcome"})
    assert welcome["default_room"] == "lobby"
    assert welcome["you"] == {**welcome["you"], "room": "", "rooms": []}
    assert welcome["you"]["nick"].startswith("guest-")
    # Under a guest name: no room, neither by chat nor by /join.
    page.say("/join lobby")
    assert page.expect({"type": "error"})["text"] == web_module.NICK_FIRST
    page.say("/JOIN dev")
    assert page.expect({"type": "error"})["text"] == web_module.NICK_FIRST
    page.say("hello?")
    assert page.expect({"type": "error"})["text"].startswith("you are in no room")
    page.say("/nick webby")
    assert page.expect({"type": "notice", "text": "you are now known as webby"})["you"]["rooms"] == []
    page.sync()
    assert server.nicks_in("lobby") == ["nat"]
    # The others never saw the guest: the first they hear is the chosen name.
    page.say("/join lobby")
    assert page.expect({"type": "room_state"})["you"]["rooms"] == ["lobby"]
    native.expect("* webby joined")
    assert not [line for line in native.received if "guest-" in line]
    # /joiner is not /join: an unknown command, as ever.
    page.say("/joiner")
    assert page.expect({"type": "error"})["text"] == "unknown command /joiner (try /help)"
    # Without the query a WebSocket enters the default room at once (bots, load tests).
    bot = clients(server)
    assert bot.expect({"type": "welcome"})["you"]["room"] == "lobby"


def test_after_the_password_a_page_that_waits_for_its_nickname_is_in_no_room(web, clients, tmp_path):
    password = tmp_path / "password"
    password.write_text("door\n", encoding="utf-8")
    server = web("--password-file", str(password))
    page = clients(server, path="/ws?rooms=after-nick")
    page.expect({"type": "error", "text": PASSWORD_REQUIRED})
    page.say("/pass door")
    assert page.expect({"type": "welcome"})["you"]["rooms"] == []
    page.say("/join lobby")
    assert page.expect({"type": "error"})["text"] == web_module.NICK_FIRST


@pytest.mark.parametrize("query", ["rooms=now", "rooms=", "rooms=after-nick&rooms=later"])
def test_a_bad_rooms_query_gets_400(web, clients, query):
    server = web()
    with pytest.raises(HTTPError) as refused:
        clients(server, path=f"/ws?{query}")
    assert refused.value.status == 400
    assert b"the only value is after-nick" in refused.value.body


def test_history_is_replayed_and_resume_finds_what_was_missed(web, clients):
    server = web("--history-lines", "5", plugins="web,history")
    native = clients.native(server)
    native.send("first")
    native.sync()
    browser = clients(server)
    history = browser.expect({"type": "history"})
    assert [event["text"] for event in history["events"]] == ["first"]
    last = history["events"][-1]
    native.send("second")
    native.send("third")
    native.sync()
    browser.send({"type": "resume", "room": "lobby", "epoch": last["epoch"], "offset": last["offset"]})
    answer = browser.expect({"type": "resume"})
    assert answer["complete"] is True
    # What came after the offset, and (for lines that crossed) what came just before it.
    assert [event["text"] for event in answer["events"]] == ["first", "second", "third"]
    assert [event["offset"] > last["offset"] for event in answer["events"]] == [False, True, True]
    # Too far back: the history keeps 5 lines.
    for n in range(6):
        native.send(f"more {n}")
    native.sync()
    browser.send({"type": "resume", "room": "lobby", "epoch": last["epoch"], "offset": last["offset"]})
    answer = browser.expect({"type": "resume"})
    assert answer["complete"] is False
    assert answer["reason"] == "more was said than the server keeps"
    assert len(answer["events"]) == 5
    browser.send({"type": "resume", "room": "lobby", "epoch": "elsewhen", "offset": 1})
    answer = browser.expect({"type": "resume"})
    assert answer["complete"] is False
    assert answer["reason"] == "the server restarted or the room was made again"


def test_a_history_request_pages_back_by_message_id(web, clients):
    server = web("--history-lines", "5", "--history-room-lines", "lobby=100", plugins="web,history")
    native = clients.native(server)
    for number in range(30):
        native.send(f"line {number}")
    native.sync()
    browser = clients(server)
    replay = browser.expect({"type": "history"})
    assert "before" not in replay  # the replay on entering: the last 5
    assert [event["text"] for event in replay["events"]] == [f"line {number}" for number in range(25, 30)]
    first = replay["events"][0]
    browser.send({"type": "history", "room": "lobby", "before": f"{first['epoch']}:{first['offset']}", "limit": 20})
    page = browser.expect({"type": "history", "before": f"{first['epoch']}:{first['offset']}"})
    assert [event["text"] for event in page["events"]] == [f"line {number}" for number in range(5, 25)]
    assert page["complete"] is False
    oldest = page["events"][0]
    browser.send({"type": "history", "room": "lobby", "before": f"{oldest['epoch']}:{oldest['offset']}"})
    page = browser.expect({"type": "history", "before": f"{oldest['epoch']}:{oldest['offset']}"})
    assert [event["text"] for event in page["events"]] == [f"line {number}" for number in range(5)]
    assert page["complete"] is True  # nothing older is kept
    # By time too, and the latest without "before".
    browser.send({"type": "history", "room": "lobby", "before": first["time"], "limit": 2})
    assert [event["text"] for event in browser.expect({"type": "history", "before": first["time"]})["events"]] == [
        "line 23",
        "line 24",
    ]
    browser.send({"type": "history", "room": "lobby", "limit": 1})
    assert [event["text"] for event in browser.expect({"type": "history", "before": None})["events"]] == ["line 29"]
    # Bad requests and rooms one is not in get an error, and lose nothing.
    for bad in (
        {"room": "lobby", "limit": 0},
        {"room": 5},
        {"room": "lobby", "before": True},
        {"room": "lobby", "before": []},
    ):
        browser.send({"type": "history", **bad})
        assert browser.expect({"type": "error"})["text"].startswith("bad history request")
    browser.send({"type": "history", "room": "board"})
    assert browser.expect({"type": "error"})["text"] == (
        "cannot read the history of board: you are not in board; join it to read its history"
    )
    browser.say("still here")
    native.expect("<guest-2> still here")


def test_resume_without_the_history_plugin_says_so(web, clients):
    server = web()
    browser = clients(server)
    browser.send({"type": "resume", "room": "lobby", "epoch": "any", "offset": 0})
    answer = browser.expect({"type": "resume"})
    assert answer["complete"] is False
    assert answer["reason"] == "this server keeps no history"


def test_resume_reads_nothing_before_the_password_or_of_a_room_one_is_not_in(web, clients, tmp_path):
    secret = "open sesame"
    password = tmp_path / "password"
    password.write_text(secret + "\n", encoding="utf-8")
    server = web("--password-file", str(password), "--history-lines", "50", plugins="web,history")
    talker, stayer = LineClient(server.listener("tcp").address), LineClient(server.listener("tcp").address)
    clients.made += [talker, stayer]
    for native in (talker, stayer):  # stayer keeps lobby, and so its history (an emptied room's is dropped)
        native.send(f"/pass {secret}")
        native.sync()
    talker.send("lobby secret")
    talker.send("/join board")
    talker.send("board secret")
    talker.sync()
    epochs = {room: server.backplane.epoch_of(room) for room in ("lobby", "board")}

    def said(browser: WSClient) -> str:
        return json.dumps(browser.received)

    # Not logged in: no room's past, whatever the room.
    stranger = clients(server)
    stranger.expect({"type": "error", "text": PASSWORD_REQUIRED})
    for room in ("lobby", "board"):
        stranger.send({"type": "resume", "room": room, "epoch": epochs[room], "offset": 0})
        assert stranger.expect({"type": "error"})["text"] == PASSWORD_REQUIRED
    stranger.say("/ping")  # before the password, answered with an error: all the above has come
    stranger.expect({"type": "error", "text": PASSWORD_REQUIRED})
    assert not [obj for obj in stranger.received if obj["type"] in ("resume", "history")]
    assert "secret" not in said(stranger)

    # Logged in, in lobby: board's past stays closed, lobby's is open.
    stranger.say(f"/pass {secret}")
    stranger.expect({"type": "welcome"})
    stranger.sync()
    stranger.send({"type": "resume", "room": "board", "epoch": epochs["board"], "offset": 0})
    assert stranger.expect({"type": "error"})["text"] == "cannot resume board: you are not in it (/join it first)"
    stranger.sync()
    assert "board secret" not in said(stranger)
    stranger.send({"type": "resume", "room": "lobby", "epoch": epochs["lobby"], "offset": 0})
    answer = stranger.expect({"type": "resume"})
    assert [event["text"] for event in answer["events"]] == ["lobby secret"]

    # Once in board (as the page does after a reconnect: join, then resume).
    stranger.say("/join board")
    stranger.send({"type": "resume", "room": "board", "epoch": epochs["board"], "offset": 0})
    answer = stranger.expect({"type": "resume"})
    assert answer["complete"] is True
    assert [event["text"] for event in answer["events"]] == ["board secret"]
    # The lobby is not the current room now, but the connection is in it: it resumes too.
    stranger.send({"type": "resume", "room": "lobby", "epoch": epochs["lobby"], "offset": 0})
    answer = stranger.expect({"type": "resume"})
    assert [event["text"] for event in answer["events"]] == ["lobby secret"]
    assert answer["you"]["rooms"] == ["lobby", "board"]


# -- bad input and limits -----------------------------------------------------


def test_bad_messages_get_errors_and_the_connection_goes_on(web, clients):
    server = web()
    browser = clients(server)
    browser.sync()
    browser.sock.sendall(browser.ws.send(Message(data="not json")))
    assert browser.expect({"type": "error"})["text"].startswith("bad message: not JSON")
    browser.send({"type": "dance"})
    assert browser.expect({"type": "error"})["text"].startswith("bad message: expected")
    browser.sock.sendall(browser.ws.send(Message(data=b"\x00binary")))
    assert "binary messages are not accepted" in browser.expect({"type": "error"})["text"]
    browser.send({"type": "resume", "room": "lobby"})
    assert browser.expect({"type": "error"})["text"].startswith("bad resume")
    browser.sync()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("[" * 16000 + "]" * 16000, "bad message: nested too deeply"),
        ('{"type": "line", "text": "\\ud800"}', "bad message: a string holds a lone surrogate"),
        ('{"type": "resume", "room": "lobby\\udfff", "epoch": "x", "offset": 1}', "bad message: a string holds"),
        ('{"type": "resume", "room": "lobby", "epoch": "\\ud800", "offset": 1}', "bad message: a string holds"),
    ],
)
def test_json_python_cannot_use_gets_an_error_and_the_connection_goes_on(web, clients, caplog, message, error):
    server = web("--web-max-message", "40000")
    browser = clients(server)
    browser.sync()
    browser.sock.sendall(browser.ws.send(Message(data=message)))
    assert browser.expect({"type": "error"})["text"].startswith(error)
    browser.sync()
    assert "Traceback" not in caplog.text


def test_an_oversized_message_is_refused_and_nothing_else_is_lost(web, clients):
    server = web("--web-max-message", "1000")
    browser = clients(server)
    browser.sync()
    native = clients.native(server)
    browser.say("x" * 2000)
    assert browser.expect({"type": "error"})["text"] == "message too long (the limit is 1000 bytes); it was not sent"
    # Sent in many small frames of one message: refused the same way.
    for n in range(30):
        browser.sock.sendall(browser.ws.send(Message(data="y" * 100, message_finished=n == 29)))
    assert browser.expect({"type": "error"})["text"].startswith("message too long")
    browser.say("still here")
    native.expect("<" + browser.received[0]["you"]["nick"] + "> still here")
    # A line within the message limit but over --max-line (4096) is refused like a native one.
    big = web("--web-max-message", "10000")
    other = clients(big)
    other.say("z" * 5000)
    assert other.expect({"type": "error"})["text"] == "line too long (the limit is 4096 bytes); it was not sent"


def test_a_message_in_too_many_frames_is_refused_in_linear_time(web, clients):
    server = web()
    browser = clients(server)
    browser.sync()
    # Empty continuation frames never reach --web-max-message; they were
    # held and re-summed on each new one (24,000 took 4.7 s of CPU).
    pieces = [browser.ws.send(Message(data="", message_finished=False)) for _ in range(20000)]
    started = time.process_time()
    browser.send_raw(b"".join(pieces) + browser.ws.send(Message(data="", message_finished=True)))
    assert browser.expect({"type": "error"})["text"] == (
        f"message in too many frames (the limit is {MAX_FRAGMENTS}); it was not sent"
    )
    browser.sync()
    assert time.process_time() - started < 1.0  # the test and the server share this process
    # A message in a few frames is still fine.
    for n in range(3):
        browser.send_raw(
            browser.ws.send(Message(data=['{"type": "line", ', '"text": ', '"/ping"}'][n], message_finished=n == 2))
        )
    browser.expect({"type": "notice", "text": "pong"})


def test_a_protocol_error_closes_only_that_browser(web, clients):
    server = web()
    bad = clients(server)
    bad.sync()
    good = clients(server)
    good.sync()
    bad.send_raw(b"\x81\x05hello")  # unmasked client frame: forbidden (RFC 6455 5.1)
    bad.wait_closed()
    assert bad.closed is not None
    assert bad.closed.code == 1002
    good.sync()


# -- pings, slow consumers ------------------------------------------------------


def test_pings_find_a_dead_browser(web, clients):
    server = web("--web-ping-interval", "1")
    alive = clients(server)
    alive.sync()
    dead = clients(server)
    dead.auto_pong = False
    dead.sync()
    dead_nick = dead.received[0]["you"]["nick"]
    alive.expect({"type": "leave", "nick": dead_nick, "reason": "ping timeout"}, timeout=6)
    dead.wait_closed()
    assert dead.pings >= 1
    assert alive.pings >= 1
    alive.sync()


def test_a_browser_quiet_for_long_is_pinged_before_it_is_dropped(web, clients):
    """Dropped an interval after a ping it did not answer, never for its
    silence alone: after a reload shortens --web-ping-interval, a browser
    quiet for longer than two new intervals is asked first."""
    server = web()  # pings every 20 seconds: the pinger thread leaves it alone meanwhile
    browser = clients(server)
    browser.sync()
    client = _server_side(server, lambda c: isinstance(c.protocol, web_module.WebProtocol))
    later = time.monotonic() + 100  # quiet for five intervals
    client.protocol.check(later, 20.0)
    browser.sync()
    browser.sync()  # its pong, sent before this /ping, has been read
    assert browser.pings == 1
    assert not client.closed
    client.protocol.check(later, 20.0)  # quiet again: asked again
    browser.auto_pong = False
    client.protocol.check(later + 21, 20.0)
    browser.wait_closed()
    assert browser.pings == 2


def test_a_browser_that_stops_reading_is_dropped_as_a_slow_consumer(web, clients):
    server = web("--max-queue", "64")
    listener = clients.native(server)
    stalled = clients(server, rcvbuf=4096)
    stalled.sync()
    nick = stalled.received[0]["you"]["nick"]
    listener.expect(f"* {nick} joined")
    talker = clients.native(server)
    listener.expect(lambda line: line.endswith(" joined") and nick not in line)
    # It reads nothing from here on; the others chat until the server gives
    # up on it: far more than its socket buffers and queue can hold.
    left = False
    for number in range(3000):
        talker.send(f"flood {number} " + "y" * 3000)
        line = listener.readline()
        if line == f"* {nick} left (slow consumer)":  # may come just before the line that caused it
            left = True
            line = listener.readline()
        assert line.endswith(f"> flood {number} " + "y" * 3000)
        if left:
            break
    assert left
    talker.send("after it")
    assert listener.readline().endswith("> after it")


def _server_side(server: ChatServer, match: Callable[[Client], bool]) -> Client:
    return wait_for(lambda: next((c for c in list(server.connections) if match(c)), None), message="the connection")


def _waits_for_its_answers_to_drain(client: Client) -> bool:
    return getattr(client, "_drained", None) is not None  # its reader thread is in wait_sent()


def test_resumes_from_a_browser_that_never_reads_are_answered_one_at_a_time(web, clients):
    server = web("--history-lines", "20", plugins="web,history")
    native = clients.native(server)
    for n in range(20):  # each line is twice as long in JSON: an answer is about 160 KB
        native.send(f"{n} " + '"' * 4000)
    native.sync()
    stalled = clients(server, rcvbuf=4096)
    history = stalled.expect({"type": "history"})
    nick = stalled.received[0]["you"]["nick"]
    ask = {"type": "resume", "room": "lobby", "epoch": history["events"][0]["epoch"], "offset": 0}
    # 300 resumes (24 KB) that it never reads the answers of: 48 MB of answers.
    stalled.send_raw(b"".join(stalled.ws.send(Message(data=json.dumps(ask))) for _ in range(300)))
    client = _server_side(server, lambda c: c.nick == nick)
    wait_for(lambda: _waits_for_its_answers_to_drain(client), message="the reader to wait for the answers to go out")
    assert client.queued_bytes < 200_000  # one answer at most, not all of them
    assert not client.closed
    native.send("/ping")  # the others are not held up
    native.expect("* pong")
    stalled.close()  # and the waiting reader lets go when it leaves
    native.expect(lambda line: line.startswith(f"* {nick} left (connection "))


def test_pipelined_requests_are_read_only_as_their_answers_drain(web, clients):
    server = web()
    page = http_get(server.listener("ws").address, "/app.js")[2]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.listener("ws").address)
        port = sock.getsockname()[1]
        sock.sendall(b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)  # 35 MB of answers, never read
        client = _server_side(server, lambda c: c.address[1] == port)
        wait_for(lambda: _waits_for_its_answers_to_drain(client), message="the reader to wait for the answers")
        assert client.queued_bytes < 2 * len(page)
        assert not client.closed
        assert http_get(server.listener("ws").address, "/")[0] == 200  # the others are served
    wait_for(lambda: client.closed, message="the connection to close")


# -- wss:// -------------------------------------------------------------------


def test_wss_serves_the_page_and_the_websocket(chat_server_factory, clients, tmp_path):
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    server = chat_server_factory(
        "--plugins", "web", "--listen", "wss://127.0.0.1:0", "--listen", "tcp://127.0.0.1:0",
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    context = ssl.create_default_context()
    ca.configure_trust(context)
    address = server.listener("wss").address
    browser = WSClient(address, tls=context)
    try:
        browser.expect({"type": "welcome"})
        native = clients.native(server)
        browser.say("secure hello")
        native.expect(lambda line: line.endswith("> secure hello"))
        with pytest.raises(HTTPError) as refused:
            WSClient(address, tls=context, origin=f"http://127.0.0.1:{address[1]}")  # http, not https
        assert refused.value.status == 403
    finally:
        browser.close()


# -- the wire format on its own -------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_frames_of_every_length_form_parse_as_one_message(size):
    from wsproto.frame_protocol import FrameProtocol, Opcode

    from chatcore.wire.framing import websocket_frame as frame

    parser = FrameProtocol(client=True, extensions=[])
    parser.receive_bytes(frame(b"a" * size))
    (received,) = list(parser.received_frames())
    assert received.opcode is Opcode.TEXT
    assert (received.message_finished, len(received.payload)) == (True, size)


def test_room_events_render_once_as_json_with_their_identity():
    from chatcore.events import Chat, Left
    from chatcore.plugins.web import WEB

    chat = Chat("lobby", nick="al", text='<b>"hi"</b>', epoch="e1", offset=7, time=1.5)
    data = WEB.encode(chat)
    assert data[0] == 0x81  # one final text frame
    assert json.loads(data[2:]) == {
        "type": "chat", "nick": "al", "text": '<b>"hi"</b>', "room": "lobby", "epoch": "e1", "offset": 7,
        "msgid": "e1:7", "time": 1.5,
    }  # fmt: skip
    frame = WEB.encode(Left("dev", nick="al", reason="slow consumer"))
    left = json.loads(frame[4:] if frame[1] == 126 else frame[2:])  # over 125 bytes: a 16-bit length first
    assert left == {**left, "type": "leave", "reason": "slow consumer", "disconnected": True, "offset": 0}


def test_a_full_server_answers_a_browser_with_503(web, clients):
    server = web("--max-clients", "1")
    clients.native(server)
    status, _, body = http_get(server.listener("ws").address, "/")
    assert status == 503
    assert body == b"server full, try again later\n"


def test_a_notice_is_chat_marked_notice_for_the_page() -> None:
    """An IRC user's NOTICE (to a channel, or to a nick) reaches the page as
    chat or a private message with ``"notice": true``; plain ones have no such field."""
    chat = web_module.event_object(events.Chat("lobby", "bot", "build passed", notice=True))
    assert chat is not None
    assert (chat["type"], chat["text"], chat["notice"]) == ("chat", "build passed", True)
    plain = web_module.event_object(events.Chat("lobby", "bob", "hi"))
    assert plain is not None
    assert "notice" not in plain
    private = web_module.event_object(events.PrivateMessage("bot", "bob", "done", notice=True))
    assert private == {"type": "private", "from": "bot", "to": "bob", "text": "done", "echo": False, "notice": True}
