"""The web front-end: a chat page and a WebSocket endpoint on one port.

``chatcore serve --plugins web --listen ws://127.0.0.1:8080`` (``wss://`` over
TLS with ``--tls-cert``/``--tls-key``). A browser opens ``http://HOST:PORT/``,
gets the page (``index.html``, ``app.js``, ``style.css`` from
``chatcore/plugins/web_static/``), and the page connects to ``/ws``. Over the
WebSocket every event is one JSON object per text message (docs/protocol.md,
"The WebSocket protocol"); the browser sends lines of text exactly as a
native client does, so ``/join``, ``/msg`` and ``/me`` work the same.

Why wsproto (sans-I/O) and not the ``websockets`` library: chatcore reads
each client on its own thread and writes every client from one shared
non-blocking writer. ``websockets``' threaded API runs threads of its own per
connection, and its ``send()`` blocks while a client is not reading, which
would stall the shared writer (everyone's output); its per-message
compression also keeps tens of KB of zlib state per connection. wsproto only
parses bytes we give it and returns bytes to send, so the reader thread
feeds it and the writer sends what it produced like any other output.

Server frames are not masked, so a room event's frame is the same bytes for
every browser: :class:`WebFormat` renders it once per event (no compression
is negotiated, which keeps it that way), and a slow browser fills its queue
and is dropped as a slow consumer like any client.

Per connection: HTTP/1.1 (h11, header size bounded) until a ``GET /ws``
upgrade whose ``Origin`` is allowed, then WebSocket (wsproto). A thread per
server sends pings and closes browsers that stopped answering, and closes
HTTP connections that stay idle.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import h11

from chatcore import Client, Config, hookimpl
from chatcore.config import whole_number
from chatcore.engine.history import Mark, Query
from chatcore.events import (
    Action,
    Chat,
    Disconnected,
    Error,
    Event,
    Invited,
    Joined,
    Left,
    Members,
    ModeChanged,
    NickChanged,
    Notice,
    PrivateMessage,
    PrivateTags,
    Replay,
    RoomEvent,
    RoomList,
    RoomNotice,
    Tagged,
    TopicChanged,
    Welcome,
)
from chatcore.names import is_guest_nick
from chatcore.transports import Scheme
from chatcore.transports.listener import format_address
from chatcore.wire import Protocol, WireFormat
from chatcore.wire.framing import PING_FRAME, WebSocketFraming, websocket_frame
from chatcore.wire.http import HttpConnection, plain_error, raw_answer
from chatcore.wire.native import (
    ARRIVAL_WAIT,
    PASSWORD_REQUIRED,
    arrive,
    handle_text,
    own_room_notice,
    sanitize,
    say_together,
)
from chatcore.wire.tags import client_tags
from chatcore.wire.websocket import (
    MAX_FRAGMENTS,
    MAX_HEADER_BYTES,
    Pinger,
    Refused,
    accept,
    foreign_origin,
    own_origins,
    parse_origins,
)

if TYPE_CHECKING:
    from chatcore.engine.server import ChatServer

log = logging.getLogger("chatcore.web")

NAME = "web"
DEFAULT_PORT = 8080
DEFAULT_TLS_PORT = 8443
#: The WebSocket endpoint's path.
WS_PATH = "/ws"
#: The query of ``/ws`` (``/ws?rooms=after-nick``) that the page opens it
#: with: the connection enters the chat with its first message, however
#: late, in no room, and may join one only once it has a nickname, so that
#: nobody sees a visitor as ``guest-N``. The page asks for the name first
#: and sends it as its first message (``/nick NAME`` or ``/login NAME
#: PASSWORD``), so the welcome greets it by it. A browser can send only once
#: the upgrade's answer has reached it, a round trip later, which over the
#: internet is often longer than :data:`ARRIVAL_WAIT`: hence no time limit
#: (``--login-timeout`` bounds it). Without the query a WebSocket enters the
#: default room as a native client does: under the name of a first message
#: that comes within ARRIVAL_WAIT of the upgrade, else as a guest (bots,
#: load tests).
AFTER_NICK = "after-nick"
#: What a connection opened with ``rooms=after-nick`` is told when it tries
#: to join a room before it has a nickname of its own.
NICK_FIRST = "choose a nickname first (/nick NAME): this page enters rooms only once you have one"
#: Bytes of one message from a browser, at most. Longer ones are refused
#: (and discarded as they arrive, never buffered); the connection goes on.
DEFAULT_MAX_MESSAGE = 16384
DEFAULT_PING_INTERVAL = 20
#: Offsets before the one asked for that a resume answer also includes.
RESUME_OVERLAP = 10
#: Lines a page of scroll-back holds when the page does not say.
HISTORY_PAGE = 50
#: The states of a typing notice (IRCv3's ``+typing`` client tag).
TYPING_STATES = ("active", "paused", "done")
#: Seconds an HTTP connection may stay open without a request.
HTTP_IDLE_TIMEOUT = 30.0
#: Seconds a request may take to arrive, in all (nginx's
#: ``client_header_timeout``); then it is answered 408 and closed.
HTTP_HEADER_TIMEOUT = 10.0
#: Bytes of a request's body, at most: the page's requests have none, and
#: a small one is read and refused rather than left in the stream.
MAX_BODY_BYTES = 1024

# The page's files. Served from memory by name: the request's path is looked
# up in this table and never joined to a file system path, so there is no
# directory traversal to get wrong ("/../", "%2e%2e", "\\" all just 404).
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
# No inline script or style and nothing from elsewhere: chat text that ever
# became markup could still not run script (defence in depth against XSS).
# connect-src 'self' allows the page's own ws:// and wss:// origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode()),
    (b"X-Content-Type-Options", b"nosniff"),  # a script is run only as a script
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Frame-Options", b"DENY"),  # no clickjacking in a frame (older browsers)
    (b"Cache-Control", b"no-cache"),
]


# -- options and life cycle ---------------------------------------------------


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "web plugin",
        "A chat page and a WebSocket endpoint (/ws) on ws:// and wss:// listeners, e.g. --listen ws://127.0.0.1:8080.",
    )
    group.add_argument(
        "--web-origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help=(
            "another origin whose pages may open the WebSocket, e.g. https://chat.example.com (repeat, or "
            "separate with commas); the listener's own address is always allowed. Needed when people reach "
            "the server by a name or through a proxy"
        ),
    )
    group.add_argument(
        "--web-ping-interval",
        type=whole_number(1, 3600),
        default=DEFAULT_PING_INTERVAL,
        metavar="SECONDS",
        help="ping each browser this often; unanswered an interval later, dropped (default: %(default)s)",
    )
    group.add_argument(
        "--web-max-message",
        type=whole_number(256, 1 << 24),
        default=DEFAULT_MAX_MESSAGE,
        metavar="BYTES",
        help="longest WebSocket message a browser may send (default: %(default)s)",
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    options = config.options
    config.data[NAME] = WebState(
        origins=parse_origins(options.web_origins, "--web-origins"),
        ping_interval=float(options.web_ping_interval),
        max_message=options.web_max_message,
    )


@hookimpl
def chatcore_reload(server: ChatServer, new: argparse.Namespace) -> Callable[[], None]:
    origins = parse_origins(new.web_origins, "--web-origins")  # a bad one keeps the running configuration
    state = _state(server)

    def apply() -> None:
        # Read at each use: origins at the next upgrade, the message limit
        # by the WebSockets opened from now on, the interval at the next ping.
        state.origins = origins
        state.max_message = new.web_max_message
        state.connections.set_interval(float(new.web_ping_interval))

    return apply


@hookimpl
def chatcore_schemes() -> list[Scheme]:
    return [
        Scheme("ws", WEB, WebProtocol, default_port=DEFAULT_PORT, description="the web page and its WebSocket"),
        Scheme(
            "wss",
            WEB,
            WebProtocol,
            tls=True,
            default_port=DEFAULT_TLS_PORT,
            description="the web page and its WebSocket over TLS",
        ),
    ]


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    state = _state(server)
    for listener in server.listeners:
        if listener.scheme.wire is WEB:
            scheme = "https" if listener.scheme.tls else "http"
            host, port = listener.address
            where = f"any address of this machine, port {port}" if host in ("0.0.0.0", "::") else None
            page = where or f"{scheme}://{format_address(host, port)}/"
            if state.origins:
                also = f"also allowed: {', '.join(sorted(state.origins))}"
            else:
                also = "reached by a host name or through a proxy, it needs --web-origins"
            log.info("web: the chat page is at %s (%s)", page, also)
    state.connections.start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    _state(server).connections.stop()


def _state(server: ChatServer) -> WebState:
    state: WebState = server.config.data[NAME]
    return state


class WebState:
    """One server's web settings, and the pinger of its open connections
    (which also closes idle HTTP connections soon after their timeout)."""

    def __init__(self, origins: frozenset[str], ping_interval: float, max_message: int) -> None:
        self.origins = origins
        self.max_message = max_message
        self.static = {path: (_read_static(name), kind) for path, (name, kind) in _STATIC.items()}
        #: The open connections, and the thread that pings them and enforces
        #: their deadlines. It wakes a few times per interval, so a dead
        #: browser is found within about two intervals and an idle HTTP
        #: connection soon after its timeout.
        self.connections = Pinger("web", ping_interval)


def _read_static(name: str) -> bytes:
    return resources.files("chatcore.plugins").joinpath("web_static").joinpath(name).read_bytes()


# -- the wire format: events as JSON in WebSocket frames ----------------------


def _identity(event: RoomEvent) -> dict[str, Any]:
    return {"room": event.room, "epoch": event.epoch, "offset": event.offset, "msgid": event.msgid, "time": event.time}


def _typing(event: Tagged) -> dict[str, Any]:
    """A typing notice (IRCv3 ``+typing``: ``active``, ``paused`` or ``done``)
    as ``{"type": "typing", "nick": ..., "state": ...}``; other tags alone
    (reactions) are not shown: ``{}``, which :func:`event_object` drops."""
    state = client_tags(event.tags).get("+typing")
    if state not in TYPING_STATES:
        return {}
    return {"type": "typing", "nick": event.nick, "state": state}


_ROOM_FIELDS: dict[type[Event], Callable[[Any], dict[str, Any]]] = {
    Chat: lambda e: (
        {"type": "chat", "nick": e.nick, "text": e.text, "notice": True}
        if e.notice
        else {"type": "chat", "nick": e.nick, "text": e.text}
    ),
    Action: lambda e: {"type": "action", "nick": e.nick, "text": e.text},
    Joined: lambda e: {"type": "join", "nick": e.nick},
    Left: lambda e: {"type": "leave", "nick": e.nick, "reason": e.reason, "disconnected": e.disconnected},
    NickChanged: lambda e: {"type": "nick", "nick": e.nick, "new_nick": e.new_nick},
    RoomNotice: lambda e: {"type": "room_notice", "text": e.text},
    TopicChanged: lambda e: {"type": "topic", "nick": e.nick, "topic": e.topic},
    ModeChanged: lambda e: {"type": "mode", "nick": e.nick, "modes": e.modes, "arguments": list(e.arguments)},
    Tagged: _typing,
}


def event_object(event: Event) -> dict[str, Any] | None:
    """The JSON object for an event (docs/protocol.md), or None for an
    event type this protocol does not know."""
    render = _ROOM_FIELDS.get(type(event))
    if render is not None:
        assert isinstance(event, RoomEvent)
        fields = render(event)
        return {**fields, **_identity(event)} if fields else None
    if isinstance(event, Notice):
        return {"type": "notice", "text": event.text}
    if isinstance(event, Error):
        return {"type": "error", "text": event.text}
    if isinstance(event, Disconnected):
        return {"type": "error", "text": f"disconnected: {event.reason}"}
    if isinstance(event, Welcome):
        return {"type": "welcome", "lines": list(event.lines)}
    if isinstance(event, PrivateMessage):
        private = {"type": "private", "from": event.sender, "to": event.recipient, "text": event.text}
        # Its ID and time, the same on every copy and in history (as a room line's).
        said = {"msgid": event.msgid, "time": event.time} if event.msgid else {}
        return {**private, "echo": event.echo, **({"notice": True} if event.notice else {}), **said}
    if isinstance(event, Invited):
        return {"type": "invite", "by": event.by, "room": event.room}
    if isinstance(event, PrivateTags):  # typing in a private conversation with this page's user
        state = client_tags(event.tags).get("+typing")
        if state not in TYPING_STATES:
            return None
        return {"type": "typing", "nick": event.sender, "private": True, "state": state}
    if isinstance(event, Members):
        return {"type": "members", "room": event.room, "nicks": list(event.nicks)}
    if isinstance(event, RoomList):
        return {"type": "rooms", "rooms": [{"room": room, "members": count} for room, count in event.rooms]}
    if isinstance(event, Replay):
        return {"type": "history", "room": event.room, "events": _objects(event.events)}
    return None


def _you(client: Client) -> dict[str, Any]:
    """Who and where ``client`` is now, in every message for it alone: its
    nickname, current room, rooms, and whether it is a server operator
    (who may set the topic of every room)."""
    return {
        "nick": client.nick,
        "room": client.room,
        "rooms": list(client.rooms),
        "server_operator": client.server.hooks.server_operator(client) is not None,
    }


def room_state(client: Client, room: str) -> dict[str, Any] | None:
    """The ``room_state`` message for ``room`` (docs/protocol.md): its topic,
    who set it and when, its modes (letters only: no key), and who of its
    members are operators and voiced; None for a room that is gone."""
    server = client.server
    state = server.rooms.get(room)
    if state is None:
        return None
    nicks = server.nicks_in(room)
    return {
        "type": "room_state",
        "room": room,
        "topic": state.topic,
        "topic_by": state.topic_by,
        "topic_at": state.topic_at,
        "modes": state.modes(with_key=False)[0],
        "operators": [nick for nick in nicks if state.is_operator(nick)],
        "voiced": [nick for nick in nicks if state.is_voiced(nick)],
    }


def _objects(events: tuple[RoomEvent, ...] | list[RoomEvent]) -> list[dict[str, Any]]:
    return [obj for obj in map(event_object, events) if obj is not None]


_NOT_UNICODE = "bad message: a string holds a lone surrogate (such as \\ud800), which is not a character"


def _valid_text(text: str) -> bool:
    """False for a string with a lone surrogate: JSON's ``"\\ud800"`` parses
    to one, and it has no UTF-8 form, so it could be neither shown nor sent on."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_join(text: str) -> bool:
    """Whether a typed line is the command ``/join`` (any case)."""
    return text[:5].lower() == "/join" and text[5:6] in ("", " ")


def message_frame(obj: dict[str, Any]) -> bytes:
    return websocket_frame(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


class WebFormat(WireFormat):
    """Room events as JSON text messages in WebSocket frames. What one
    browser is told alone is its protocol's (:meth:`WebProtocol.render`)."""

    name = "web"

    def encode(self, event: RoomEvent) -> bytes:
        obj = event_object(event)
        return b"" if obj is None else message_frame(obj)


#: The one instance every web connection shares.
WEB = WebFormat()


# -- one connection -------------------------------------------------------------


def _plain_chat(message: str, max_line: int) -> str | None:
    """The text of a ``{"type": "line"}`` message that is plain chat (no
    command, within ``max_line``), sanitised, as :func:`say_together` takes
    it; None for any other message, which is handled alone (with its
    answer, if any)."""
    if '"line"' not in message:  # most other messages, without parsing them
        return None
    try:
        obj = json.loads(message)
    except (ValueError, RecursionError):
        return None
    raw = obj.get("text") if isinstance(obj, dict) and obj.get("type") == "line" else None
    if not isinstance(raw, str):
        return None
    try:
        if len(raw.encode("utf-8")) > max_line:
            return None
    except UnicodeEncodeError:
        return None
    text = sanitize(raw)
    return text if text and (text[0] != "/" or text[:2] == "//") else None  # "//text" says "/text"


class WebProtocol(Protocol):
    """One browser: HTTP requests, then, after the upgrade, its WebSocket."""

    __slots__ = (
        "__weakref__",
        "_after_nick",
        "_arriving",
        "_last_heard",
        "_pinged_at",
        "_state",
        "framing",
        "http",
    )

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._state = _state(client.server)
        #: Its HTTP, until the upgrade to a WebSocket.
        self.http: HttpConnection | None = HttpConnection(
            client,
            self._request,
            headers=_SECURITY_HEADERS,
            max_body=MAX_BODY_BYTES,
            max_header_bytes=MAX_HEADER_BYTES,
            request_timeout=HTTP_HEADER_TIMEOUT,
            idle_timeout=HTTP_IDLE_TIMEOUT,
        )
        #: The WebSocket's framing, once the upgrade is done.
        self.framing: WebSocketFraming | None = None
        self._last_heard = time.monotonic()
        #: When the ping it has not answered yet went out (0.0: none).
        self._pinged_at = 0.0
        #: Opened with ``rooms=after-nick``: in no room until it has a nickname.
        self._after_nick = False
        #: The WebSocket is open and the first message is to decide the
        #: name the connection enters under (:func:`arrive`).
        self._arriving = False

    def connection_made(self) -> None:
        # Not admitted yet: a browser enters the chat when its WebSocket opens.
        self._state.connections.add(self)

    def render(self, event: Event) -> bytes:
        """What this browser is told alone: a JSON message with where it is
        now, or, before its WebSocket is open (plain HTTP), only a refusal
        (``server full`` ...) as an HTTP 503."""
        if self.framing is None:
            return raw_answer(503, *plain_error(event.text)) if isinstance(event, Error) else b""
        client = self.client
        # Who and where the browser is now: set after a /nick or /join has
        # taken effect, so the page learns its nick and room from the answer.
        you = _you(client)
        own = own_room_notice(client, event)  # its own join, part or kick: notices, as for native users
        if own is not None:
            frames = b"".join(message_frame({"type": "notice", "text": line, "you": you}) for line in own)
            if isinstance(event, Joined):
                # Then the room's topic, modes and roles, which the page shows
                # and keeps up to date from the room's topic, mode, nick and
                # leave events (an IRC client's 332, 324 and 353 on JOIN).
                state = room_state(client, event.room)
                if state is not None:
                    frames += message_frame({**state, "you": you})
            return frames
        obj = event_object(event)
        if obj is None:
            return b""
        if isinstance(event, Welcome):
            # The room a page enters first: it joins it itself (WS_AFTER_NICK).
            obj["default_room"] = client.server.registry.default_room
        obj["you"] = you
        return message_frame(obj)

    def connection_lost(self) -> None:
        self._state.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self._last_heard = time.monotonic()
        self._pinged_at = 0.0
        if self.http is not None:
            self.http.receive(data)
        else:
            self._ws_received(data)

    def check(self, now: float, interval: float) -> None:
        """From the pinger thread: ping an open WebSocket that has been quiet
        for an interval, drop it an interval after an unanswered ping; close
        an idle HTTP connection."""
        client = self.client
        if client.closed:
            return
        http = self.http
        if http is not None:
            # A request is timed as a whole, not per byte: a client sending
            # one header byte every few seconds would otherwise hold its
            # connection (and its thread) for ever (slowloris).
            http.check(now)
        elif not self._pinged_at:
            if now - self._last_heard > interval:
                self._pinged_at = now
                client.send_data(PING_FRAME)
        elif now - self._pinged_at > interval:
            # Timed from the ping, never from the silence alone: a browser
            # quiet for longer than a shorter interval (a reload's) is asked first.
            client.disconnect("ping timeout", tell=False)

    # -- HTTP -------------------------------------------------------------------

    def _previous_answers_sent(self) -> bool:
        """Wait until what this connection was answered has gone out; False
        if it was closed meanwhile, or dropped for not reading.

        Called on the reader thread before each request: one that is
        pipelined behind others (2,000 ``GET /app.js`` in one write) is read
        only as the answers before it drain, as nginx does, so a client that
        never reads holds one answer here, not 2,000 (32 MB). Its other
        requests wait in its socket, and TCP holds it back.
        """
        client = self.client
        if not client.wait_sent(HTTP_IDLE_TIMEOUT):
            client.disconnect("slow consumer", tell=False)
        return not client.closed

    def _request(self, request: h11.Request, body: bytes) -> None:
        """Answer one HTTP request (its :class:`HttpConnection` calls this)."""
        http = self.http
        assert http is not None
        path, _, query = request.target.decode("ascii", "replace").partition("?")
        method = request.method
        headers = {name.lower(): value for name, value in request.headers}
        if path == WS_PATH:
            if method != b"GET" or b"websocket" not in headers.get(b"upgrade", b"").lower():
                http.error(426, "this is the WebSocket endpoint: connect with a WebSocket")
                return
            # Cross-site WebSocket hijacking (chatcore.wire.websocket says how):
            # a page elsewhere must not chat as its visitor here.
            origin = foreign_origin(request, self._allowed_origins())
            if origin is not None:
                log.warning(
                    "web: refused a WebSocket from %s with Origin %s (allowed: %s; add it with --web-origins)",
                    self.client.address[0],
                    origin,
                    ", ".join(sorted(self._allowed_origins())),
                )
                http.error(403, f"origin {origin} may not open this WebSocket", close=True)
                return
            rooms = parse_qs(query, keep_blank_values=True).get("rooms", [])
            if set(rooms) - {AFTER_NICK}:
                problem = (
                    f"bad WebSocket request: rooms={min(set(rooms) - {AFTER_NICK})!r}: the only value is {AFTER_NICK}"
                )
                http.error(400, problem, close=True)
                return
            self._after_nick = bool(rooms)
            self._upgrade(http, request, body)
            return
        if method not in (b"GET", b"HEAD"):
            http.error(405, "only GET and HEAD", extra=[(b"Allow", b"GET, HEAD")])
            return
        found = self._state.static.get(path)
        if found is None:
            http.error(404, f"not found: {path}")
            return
        page, kind = found
        http.respond(
            200,
            [(b"Content-Type", kind.encode()), (b"Content-Length", b"%d" % len(page))],
            b"" if method == b"HEAD" else page,
        )

    def _allowed_origins(self) -> set[str]:
        """The listener's own origin, as the browser names it, plus --web-origins."""
        return own_origins(self.client.sock, self.client.transport.encrypts) | self._state.origins

    # -- the WebSocket ----------------------------------------------------------

    def _upgrade(self, http: HttpConnection, request: h11.Request, body: bytes) -> None:
        if body:
            http.error(400, "a WebSocket upgrade request has no body", close=True)
            return
        # h11 stops after an upgrade request; the bytes after it are
        # already WebSocket frames, for wsproto.
        trailing = http.detach()
        try:
            ws, answer, _subprotocol = accept(request)
        except Refused as refused:  # a missing Sec-WebSocket-Key or Host, an unsupported version ...
            http.error(refused.status, refused.text, close=True, extra=refused.headers)
            return
        self.client.send_data(answer)
        self.framing = WebSocketFraming(ws, self._state.max_message, MAX_FRAGMENTS)
        self.http = None
        # In with the first message, whose /nick or /login names the
        # connection (as a native client's first line does), unless the
        # server wants its password first: the page asks for it and sends
        # /pass. The wait for that message is a native client's, but with
        # rooms=after-nick (AFTER_NICK says why).
        client = self.client
        if client.server.gate.password_required:
            client.server.log_in(client, room=self._login_room)  # refused: counts nothing
            client.error(PASSWORD_REQUIRED)
        else:
            self._arriving = True
            if not (trailing or self._after_nick):
                client.on_silence(ARRIVAL_WAIT, self._silent)
        if trailing:
            self._ws_received(trailing)

    def _silent(self) -> None:
        """No message within ARRIVAL_WAIT of the upgrade: in as a guest."""
        client = self.client
        if self._arriving:
            self._arriving = False
            if client.server.log_in(client, room=self._login_room) is not None:
                client.error(PASSWORD_REQUIRED)  # a reload asked for a password meanwhile

    def _ws_received(self, data: bytes) -> None:
        framing = self.framing
        assert framing is not None
        client = self.client
        messages = framing.feed(data)
        if self._arriving and (messages or not self._after_nick):
            # The first bytes (with a whole message, for a page) decide the
            # name the connection enters under.
            self._arriving = False
            if self._arrive(messages[0] if messages else None):
                messages = messages[1:]
        if len(messages) > 1 and client._pace is False and client.admitted:
            say_together(client, self._typed(messages))
        else:
            for text in messages:
                if client.closed:
                    return
                self._message(text)
        if framing.reply:  # a pong, or the closing handshake
            client.send_data(framing.reply)
            framing.reply = b""
        if framing.closed == "connection closed":  # the browser closed, and was answered
            client.disconnect("connection closed", tell=False)
        elif framing.closed is not None:  # broken framing: the stream cannot be trusted
            log.info("web: %s from %r", framing.closed, client)
            client.disconnect("protocol error", tell=False)

    def _message(self, text: str | None) -> None:
        """One WebSocket message (None: one the framing dropped)."""
        framing = self.framing
        assert framing is not None
        if text is not None:
            self._handle(text)
        elif framing.why_dropped.startswith("binary"):
            self.client.error("binary messages are not accepted: send JSON text")
        else:
            self.client.error(f"{framing.why_dropped}; it was not sent")

    def _typed(self, messages: list[str | None]) -> Iterator[str | Callable[[], None]]:
        """Messages of one read for :func:`say_together`: a plain chat
        line's text, or the handling of any other message, in its place."""
        max_line = self.client.server.max_line
        for text in messages:
            line = _plain_chat(text, max_line) if text is not None else None
            yield line if line is not None else functools.partial(self._message, text)

    def _arrive(self, first: str | None) -> bool:
        """Enter the chat with the first message (:func:`arrive`): under the
        name of a ``line`` whose text is ``/nick NAME`` or ``/login NAME
        PASSWORD``; True if that message is answered so."""
        try:
            obj = json.loads(first) if first is not None else None
        except (ValueError, RecursionError):  # handled as any message, once in
            obj = None
        text = obj.get("text") if isinstance(obj, dict) and obj.get("type") == "line" else None
        line = sanitize(text) if isinstance(text, str) and _valid_text(text) else ""
        return arrive(self.client, line, room=self._login_room)

    def _handle(self, text: str) -> None:
        client = self.client
        try:
            obj = json.loads(text)
        except ValueError:  # a number too long to convert is one too
            client.error('bad message: not JSON; send {"type": "line", "text": "..."}')
            return
        except RecursionError:  # "[[[[...": 16 KB of brackets is deeper than Python's stack
            client.error("bad message: nested too deeply")
            return
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "line" and isinstance(obj.get("text"), str):
            self._line(obj["text"])
        elif kind == "resume":
            self._resume(obj)
        elif kind == "history":
            self._history(obj)
        elif kind == "typing":
            self._typing(obj)
        else:
            client.error(
                'bad message: expected {"type": "line", "text": "..."}, '
                '{"type": "resume", ...}, {"type": "history", ...} or {"type": "typing", ...}'
            )

    def _typing(self, request: dict[str, Any]) -> None:
        """The page's user is typing in a room, or to a nick (``to``):
        ``active``, ``paused`` or ``done``. Said as IRCv3's ``+typing``
        client tag: a ``TAGMSG`` to IRC clients with message-tags, a
        ``typing`` message to other pages, across a cluster too. Paced like
        a line. Where it cannot go (a room the page is not in, a person who
        left, a room where the user may not speak) it is dropped without a
        word: a hint that someone types is not worth an error line."""
        client = self.client
        state, room, to = request.get("state"), request.get("room"), request.get("to")
        target = room if to is None else to
        if state not in TYPING_STATES or (room is None) == (to is None) or not isinstance(target, str):
            client.error(
                'bad typing: expected {"type": "typing", "room": ROOM, "state": "active", "paused" or "done"}, '
                'or "to": NICK instead of "room"'
            )
            return
        client.server.pace(client)
        if not client.admitted or client.closed:
            return
        tags = f"+typing={state}"
        if to is None:
            if target in client.rooms:
                client.server.send_tags(client, target, tags)
        elif client.server.registry.find(target) is not client:
            client.server.send_private_tags(client, target, tags)

    def _line(self, raw: str) -> None:
        """A line of text: a command or chat, exactly as from a native client."""
        client = self.client
        max_line = client.server.max_line
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            client.error(_NOT_UNICODE)
            return
        if size > max_line:
            client.error(f"line too long (the limit is {max_line} bytes); it was not sent")
            return
        text = sanitize(raw)
        if not text:
            return
        if self._after_nick and client.admitted and _is_join(text) and is_guest_nick(client.nick):
            client.server.pace(client)  # refused, but paced like any line
            client.error(NICK_FIRST)
            return
        # As a native client's line: pacing, the password, commands.
        handle_text(client, text, login_room=self._login_room)

    @property
    def _login_room(self) -> str | None:
        """Where the connection enters the chat: no room with ``rooms=after-nick``, else the default one."""
        return "" if self._after_nick else None

    def _may_answer(self) -> bool:
        """Whether to answer a question about the past (a resume, a page of
        history) now; paces it either way."""
        client = self.client
        # An answer can be 150 KB for a request of 70 bytes: such requests are
        # paced like lines, and one is answered only once the previous answers
        # have gone out, so a client that asks and never reads cannot make the
        # server hold its answers (1,000 resumes grew it by 150 MB).
        client.server.pace(client)
        if not self._previous_answers_sent():
            return False
        # A room's past is for the people in it: nothing before the server
        # password (a stranger could read any room by guessing its name),
        # and nothing of a room the connection is not in (as Ergo's
        # CHATHISTORY requires membership). The page joins, then asks.
        if not client.admitted:
            client.error(PASSWORD_REQUIRED)
            return False
        return True

    def _history(self, request: dict[str, Any]) -> None:
        """A page of a room's past for the scroll-back: up to ``limit``
        chat lines before ``before`` (a message ID, or a time in seconds),
        or the latest without it; ``complete`` once nothing older is kept."""
        client = self.client
        if not self._may_answer():
            return
        room, before, limit = request.get("room"), request.get("before"), request.get("limit", HISTORY_PAGE)
        valid_before = before is None or (
            isinstance(before, (int, float)) and not isinstance(before, bool) and math.isfinite(before)
        )
        if isinstance(before, str):
            valid_before = _valid_text(before)
        if not isinstance(room, str) or not valid_before or type(limit) is not int or limit < 1:
            client.error('bad history request: expected {"type": "history", "room": ROOM, "before": MSGID, "limit": N}')
            return
        if not _valid_text(room):
            client.error(_NOT_UNICODE)
            return
        service = client.server.history
        answer: dict[str, Any] = {"type": "history", "room": room, "before": before}
        if service is None:
            answer.update(events=[], complete=True, reason="this server keeps no history")
        else:
            limit = min(limit, service.max_limit)
            if before is None:
                query = Query("latest", limit)
            else:
                query = Query("before", limit, Mark(before) if isinstance(before, str) else Mark(time=float(before)))
            found = service.query(client, room, query)
            if isinstance(found, str):
                client.error(f"cannot read the history of {room}: {found}")
                return
            answer.update(events=_objects(found), complete=len(found) < limit)
        answer["you"] = _you(client)
        client.send_data(message_frame(answer))

    def _resume(self, request: dict[str, Any]) -> None:
        """What the browser missed in a room since ``(epoch, offset)``,
        from the history plugin; ``complete`` says whether that is all."""
        client = self.client
        if not self._may_answer():
            return
        room, epoch, offset = request.get("room"), request.get("epoch"), request.get("offset")
        if not isinstance(room, str) or not isinstance(epoch, str) or type(offset) is not int:
            client.error('bad resume: expected {"type": "resume", "room": ROOM, "epoch": EPOCH, "offset": N}')
            return
        if not (_valid_text(room) and _valid_text(epoch)):
            client.error(_NOT_UNICODE)
            return
        if room not in client.rooms:
            client.error(f"cannot resume {room}: you are not in it (/join it first)")
            return
        answer: dict[str, Any] = {"type": "resume", "room": room, "epoch": epoch, "offset": offset}
        history = client.server.config.data.get("history")
        if history is None:
            answer.update(events=[], complete=False, reason="this server keeps no history")
        else:
            # A few before the offset too: lines of two people can arrive in
            # either order, so the browser may have missed one just below
            # the highest it saw. It drops what it already has. Complete if
            # nothing after the offset left the history's memory ...
            newer, reaches = history.since(room, epoch, offset, RESUME_OVERLAP)
            # ... and the numbering is the same: a new epoch means a restart,
            # or the room was emptied and made again (the backplane's epochs).
            current = client.server.backplane.epoch_of(room)
            same_epoch = epoch == current if current is not None else bool(newer)
            answer.update(events=_objects(newer), complete=same_epoch and reaches)
            if not answer["complete"]:
                answer["reason"] = (
                    "the server restarted or the room was made again"
                    if not same_epoch
                    else "more was said than the server keeps"
                )
        answer["you"] = _you(client)
        client.send_data(message_frame(answer))
