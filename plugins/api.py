"""An HTTP API for programs: rooms, members, history, messages from bots, stats.

``chatcore serve --plugins api --listen http://127.0.0.1:8081 --api-token
NAME:SCOPES:HASH`` (``https://`` over TLS with ``--tls-cert``/``--tls-key``).
Every path is under ``/api/``; the OpenAPI document at ``/api/openapi.json``
describes them all, and docs/api.md shows them with curl.

Why h11 on the engine's own listeners, and not a web framework or
``http.server``: an API connection is served like every other connection,
on the listener's thread per connection with its limits (``--max-clients``,
per-address limits, TLS over memory buffers, the login deadline), and
answers go out through the shared non-blocking writer, so a client that
never reads holds a queue, not a thread. h11 (already the web plugin's) only
parses the bytes it is given, so the reader thread drives it; a framework
would bring an event loop or a thread pool of its own beside ours. What a
thread per connection costs is bounded here: a request's head and body
must arrive within :data:`REQUEST_TIMEOUT` in all (slowloris), an idle
keep-alive connection is closed after :data:`IDLE_TIMEOUT`, and one
connection serves at most :data:`MAX_REQUESTS`.

Request bodies are checked against the schemas of the OpenAPI document
itself, with ``jsonschema`` (the reference implementation of JSON Schema,
which OpenAPI 3.1 uses): the document is the one description, so the
checks and what clients are told cannot drift apart.

Tokens (``chatcore hash-token``) are random, so they are stored as their
SHA-256 (a slow password hash would add nothing against guessing 256 random
bits, and would give anyone a way to burn CPU per request); a presented
token is hashed and compared with every configured hash in constant time.
Tokens never appear in logs; each has scopes (``read``, ``post``,
``moderate``, ``admin``) and a rate (a token bucket: 429 and Retry-After).

A bot's message: :func:`bot_sender` makes a :class:`~chatcore.engine.connection.Client`
that no reader serves and that is in no room, named after the token, and
the message goes through ``server.broadcast_message`` or
``server.send_private`` like any other: counted, filtered, delivered to
native, IRC and web users alike, kept by the history plugin.

Other plugins' paths: a plugin's ``chatcore_api_routes`` gives path
prefixes outside ``/api/`` (:class:`chatcore.routes.Route`) and their
handlers; their requests are read here with the same limits, and the
handler's answer is sent as JSON (the webhooks plugin's ``/hooks/``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import h11

from chatcore import Client, Config, UsageError, hookimpl
from chatcore.config import secret
from chatcore.events import Error, Event
from chatcore.message import Message
from chatcore.names import nick_problem, room_problem
from chatcore.routes import HttpError, HttpRequest, Route
from chatcore.transports import Scheme, Transport
from chatcore.version import __version__
from chatcore.wire import Protocol, WireFormat

if TYPE_CHECKING:
    from chatcore.engine.server import ChatServer
    from chatcore.events import RoomEvent

log = logging.getLogger("chatcore.api")

NAME = "api"
DEFAULT_PORT = 8081
DEFAULT_TLS_PORT = 8444
#: Every scope a token may have. ``moderate`` and ``admin`` are accepted
#: for the endpoints still to come (kick, ban, mute; connections).
SCOPES = ("read", "post", "moderate", "admin")
#: Bytes of a request's line and headers, at most (431 beyond).
MAX_HEADER_BYTES = 8192
#: Bytes of a request's body, at most (413 beyond; never buffered).
MAX_BODY_BYTES = 16384
#: Seconds a request may take to arrive, head and body, from its first
#: byte: then it is answered 408 and the connection closed (slowloris).
REQUEST_TIMEOUT = 10.0
#: Seconds a keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 30.0
#: Requests one connection may make; the last answer says ``Connection: close``.
MAX_REQUESTS = 1000
DEFAULT_RATE = 10.0
DEFAULT_BURST = 20
#: The prefix of a stored token hash.
HASH_PREFIX = "sha256$"

# -- tokens ----------------------------------------------------------------------


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of ``token``: ``sha256$HEX``."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class Token:
    """A configured token: its name (the bot's nick), scopes and hash."""

    name: str
    scopes: frozenset[str]
    digest: bytes
    #: The token bucket: requests left, and when it was last filled (0.0:
    #: never used, so full).
    allowance: float = 0.0
    filled: float = 0.0


def parse_token(entry: str) -> Token:
    """``NAME:SCOPES:HASH`` (scopes joined with ``+``: ``read+post``) as a
    :class:`Token`. Not commas: those separate list values in ``CHATCORE_*``.

    :raises UsageError: a malformed entry; the message never shows the hash.
    """
    parts = entry.split(":")
    if len(parts) != 3:
        raise UsageError(
            "--api-token: give NAME:SCOPES:HASH, e.g. mybot:read+post:sha256$... (the hash from 'chatcore hash-token')"
        )
    name, scopes_text, stored = (part.strip() for part in parts)
    problem = nick_problem(name)
    if problem is not None:
        raise UsageError(f"--api-token {name!r}: the name is the bot's nick: {problem}")
    scopes = frozenset(filter(None, (scope.strip() for scope in scopes_text.split("+"))))
    unknown = scopes - set(SCOPES)
    if not scopes or unknown:
        raise UsageError(
            f"--api-token {name}: scopes are one or more of {', '.join(SCOPES)}, joined with + (read+post)"
            + (f" (not {', '.join(sorted(unknown))})" if unknown else "")
        )
    digest = stored[len(HASH_PREFIX) :]
    if not stored.startswith(HASH_PREFIX) or len(digest) != 64:
        raise UsageError(f"--api-token {name}: the hash is sha256$ and 64 hex digits, made by 'chatcore hash-token'")
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raise UsageError(f"--api-token {name}: the hash is sha256$ and 64 hex digits") from None
    return Token(name, scopes, raw)


def parse_tokens(entries: list[str]) -> list[Token]:
    tokens: list[Token] = []
    names: set[str] = set()
    for value in entries:
        for entry in filter(None, (part.strip() for part in value.split(","))):
            token = parse_token(entry)
            if token.name.casefold() in names:
                raise UsageError(f"--api-token {token.name}: two tokens have this name; give each its own")
            names.add(token.name.casefold())
            tokens.append(token)
    return tokens


def find_token(tokens: list[Token], presented: str) -> Token | None:
    """The token whose hash is that of ``presented``, compared with every
    configured one in constant time (no early return)."""
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    found = None
    for token in tokens:
        if hmac.compare_digest(token.digest, digest):
            found = token
    return found


# -- the OpenAPI document: the one description of the endpoints -----------------

_ERROR = {"$ref": "#/components/responses/Error"}
_MESSAGE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageIn"}}},
}
_ROOM = {
    "name": "room",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
}
_NICK = {**_ROOM, "name": "nick"}
_SECURED: dict[str, Any] = {"security": [{"bearer": []}]}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _ERROR for code in (*codes, 401, 403, 429)}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "chatcore API",
        "version": __version__,
        "description": "Rooms, members, history, messages from bots and stats of a chatcore server (docs/api.md).",
    },
    "paths": {
        "/api/rooms": {
            "get": {
                **_SECURED,
                "summary": "Rooms with members, and how many (scope read)",
                "responses": {"200": _json("Rooms", "the rooms"), **_errors()},
            }
        },
        "/api/rooms/{room}/members": {
            "get": {
                **_SECURED,
                "summary": "The nicks in a room (scope read)",
                "parameters": [_ROOM],
                "responses": {"200": _json("Members", "the members"), **_errors(404)},
            }
        },
        "/api/rooms/{room}/history": {
            "get": {
                **_SECURED,
                "summary": "What the history plugin keeps of a room, oldest first (scope read)",
                "parameters": [_ROOM],
                "responses": {"200": _json("History", "the room's kept events"), **_errors(404)},
            }
        },
        "/api/rooms/{room}/messages": {
            "post": {
                **_SECURED,
                "summary": "Say something in a room as the token's bot (scope post)",
                "parameters": [_ROOM],
                "requestBody": _MESSAGE_BODY,
                "responses": {
                    "201": _json("Sent", "said, and delivered to the room's members"),
                    **_errors(400, 404, 409, 413, 415, 422),
                },
            }
        },
        "/api/users/{nick}/messages": {
            "post": {
                **_SECURED,
                "summary": "Send a private message to a person as the token's bot (scope post)",
                "parameters": [_NICK],
                "requestBody": _MESSAGE_BODY,
                "responses": {
                    "201": _json("Sent", "delivered"),
                    **_errors(400, 404, 409, 413, 415, 422),
                },
            }
        },
        "/api/stats": {
            "get": {
                **_SECURED,
                "summary": "Server counts (scope read)",
                "responses": {"200": _json("Stats", "the counts"), **_errors()},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {"Error": _json("Error", "what went wrong and what to do")},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "MessageIn": {
                "type": "object",
                "required": ["text"],
                "additionalProperties": False,
                "properties": {
                    "text": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 4096,
                        "description": "the message; control characters are not allowed",
                        "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
                    },
                    "notice": {"type": "boolean", "description": "said as a notice (IRC's NOTICE)"},
                },
            },
            "Sent": {
                "type": "object",
                "required": ["nick", "text"],
                "properties": {"nick": {"type": "string"}, "text": {"type": "string"}},
            },
            "Rooms": {
                "type": "object",
                "required": ["rooms"],
                "properties": {
                    "rooms": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["room", "members"],
                            "properties": {"room": {"type": "string"}, "members": {"type": "integer"}},
                        },
                    }
                },
            },
            "Members": {
                "type": "object",
                "required": ["room", "members"],
                "properties": {"room": {"type": "string"}, "members": {"type": "array", "items": {"type": "string"}}},
            },
            "History": {
                "type": "object",
                "required": ["room", "events"],
                "properties": {"room": {"type": "string"}, "events": {"type": "array", "items": {"type": "object"}}},
            },
            "Stats": {
                "type": "object",
                "required": ["version", "connections", "rooms", "memberships", "accepted", "messages", "deliveries"],
                "properties": {
                    "version": {"type": "string"},
                    "connections": {"type": "integer"},
                    "rooms": {"type": "integer"},
                    "memberships": {"type": "integer"},
                    "accepted": {"type": "integer"},
                    "messages": {"type": "integer"},
                    "deliveries": {"type": "integer"},
                },
            },
        },
    },
}
_OPENAPI_BYTES = json.dumps(OPENAPI, indent=1).encode("utf-8")


def _validator(name: str) -> Any:
    """A validator of the document's schema ``name``, ``$ref`` resolved in the document."""
    from jsonschema import Draft202012Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    registry: Registry[Any] = Registry().with_resource("urn:chatcore-api", DRAFT202012.create_resource(OPENAPI))
    return Draft202012Validator({"$ref": f"urn:chatcore-api#/components/schemas/{name}"}, registry=registry)


def validation_problem(validator: Any, value: Any) -> str | None:
    """What is wrong with ``value``, in one line naming the field, or None."""
    error = min(validator.iter_errors(value), key=lambda e: (len(e.path), e.message), default=None)
    if error is None:
        return None
    where = "/".join(str(part) for part in error.path)
    return f"{where}: {error.message}" if where else error.message


# -- options and life cycle --------------------------------------------------------


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "api plugin",
        "An HTTP API under /api/ on http:// and https:// listeners, e.g. --listen http://127.0.0.1:8081; "
        "its OpenAPI document is at /api/openapi.json (docs/api.md).",
    )
    secret(
        group.add_argument(
            "--api-token",
            action="append",
            default=[],
            metavar="NAME:SCOPES:HASH",
            help=(
                "a token that may use the API: its name (the nick its messages are said under), scopes "
                f"({', '.join(SCOPES)}, joined with +) and hash from 'chatcore hash-token', e.g. "
                "mybot:read+post:sha256$... (repeat, or separate with commas); best in the configuration file "
                "or CHATCORE_API_TOKEN, not on the command line"
            ),
        )
    )
    group.add_argument(
        "--api-rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="PER_SECOND",
        help="requests per second each token may make on average (default: %(default)s)",
    )
    group.add_argument(
        "--api-burst",
        type=int,
        default=DEFAULT_BURST,
        metavar="REQUESTS",
        help="requests a token may make at once before --api-rate applies (default: %(default)s)",
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        raise UsageError("the api plugin needs the jsonschema library: pip install 'chatcore[api]'") from None
    options = config.options
    if not (0 < options.api_rate <= 1e6) or math.isnan(options.api_rate):
        raise UsageError("--api-rate must be a number of requests per second above 0")
    if options.api_burst < 1:
        raise UsageError("--api-burst must be at least 1")
    config.data[NAME] = ApiState(parse_tokens(options.api_token), options.api_rate, options.api_burst)


@hookimpl
def chatcore_reload(server: ChatServer, new: argparse.Namespace) -> Any:
    tokens = parse_tokens(new.api_token)  # a bad entry keeps the running tokens
    state = _state(server)

    def apply() -> None:
        state.tokens = tokens  # one reference swap; a revoked token stops at once

    return apply


@hookimpl
def chatcore_schemes() -> list[Scheme]:
    return [
        Scheme("http", API, ApiProtocol, default_port=DEFAULT_PORT, description="the HTTP API (/api/)"),
        Scheme("https", API, ApiProtocol, tls=True, default_port=DEFAULT_TLS_PORT, description="the HTTP API over TLS"),
    ]


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    state = _state(server)
    for listener in server.listeners:
        if listener.scheme.wire is API:
            host, port = listener.address
            scheme = "https" if listener.scheme.tls else "http"
            log.info(
                "api: %s://%s:%d/api/ (OpenAPI at /api/openapi.json), %d token(s)",
                scheme,
                f"[{host}]" if ":" in host else host,
                port,
                len(state.tokens),
            )
    # Other plugins' paths beside /api/ (chatcore_api_routes): the webhooks' /hooks/.
    state.routes = server.hooks.api_routes(server)
    for route in state.routes:
        log.info("api: %s... also served: %s", route.prefix, route.description or "a plugin's paths")
    if not state.tokens:
        log.warning("api: no --api-token is configured, so every request under /api/ but openapi.json is refused")
    state.start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    _state(server).stop()


def _state(server: ChatServer) -> ApiState:
    state: ApiState = server.config.data[NAME]
    return state


class ApiState:
    """One server's tokens, their buckets, its open connections and the
    thread that enforces the request and idle deadlines."""

    def __init__(self, tokens: list[Token], rate: float, burst: int) -> None:
        self.tokens = tokens
        self.rate = rate
        self.burst = burst
        self.message_in = _validator("MessageIn")
        #: Other plugins' routes (chatcore_api_routes), set at start.
        self.routes: list[Route] = []
        self._connections: weakref.WeakSet[ApiProtocol] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatcore-api-deadlines", daemon=True)

    def add(self, protocol: ApiProtocol) -> None:
        with self._lock:
            self._connections.add(protocol)

    def discard(self, protocol: ApiProtocol) -> None:
        with self._lock:
            self._connections.discard(protocol)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def wait_before(self, token: Token) -> float:
        """0.0 and one request taken from ``token``'s bucket, or the
        seconds until it may make the next one."""
        with self._lock:
            now = time.monotonic()
            if not token.filled:
                token.allowance = float(self.burst)
            else:
                token.allowance = min(float(self.burst), token.allowance + (now - token.filled) * self.rate)
            token.filled = now
            if token.allowance >= 1.0:
                token.allowance -= 1.0
                return 0.0
            return (1.0 - token.allowance) / self.rate

    def _run(self) -> None:
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            with self._lock:
                connections = list(self._connections)
            for protocol in connections:
                try:
                    protocol.check(now)
                except Exception:  # one broken connection must not stop the others' deadlines
                    log.exception("api: checking %r failed", protocol.client)


# -- the wire format and the bot -------------------------------------------------


class ApiFormat(WireFormat):
    """API connections are in no room: nothing of the chat is rendered for them."""

    name = "api"

    def encode(self, event: RoomEvent) -> bytes:
        return b""


API = ApiFormat()


class _BotVoice(Protocol):
    """What the server says to a bot: its errors are kept, for the answer."""

    __slots__ = ("errors",)

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.errors: list[str] = []

    def data_received(self, data: bytes) -> None:  # never called: no reader serves a bot
        raise AssertionError("a bot has no connection")

    def render(self, event: Event) -> bytes:
        if isinstance(event, Error):
            self.errors.append(event.text)
        return b""


def bot_sender(server: ChatServer, nick: str, via: Client, room: str = "") -> tuple[Client, list[str]]:
    """A sender named ``nick`` for one message said on behalf of ``via`` (the
    API connection): a :class:`Client` no reader serves and the registry
    does not know, whose errors (a filter's refusal, a ban ...) are
    collected in the returned list instead of being sent anywhere.

    It counts as in ``room`` (a room's ``+n`` would refuse a sender from
    outside) but is not one of its members: nobody sees it join, and it
    receives nothing. The room's other rules (``+m``, bans) apply to it as
    to anyone."""
    bot = Client(Transport(via.sock), via.address, server, wire=API)
    bot.nick = nick
    if room:
        bot.rooms = (room,)
        bot.room = room
    bot.user = "api"
    voice = _BotVoice(bot)
    bot.protocol = voice
    return bot, voice.errors


# -- one connection -----------------------------------------------------------------

_SECURITY_HEADERS = [
    (b"Cache-Control", b"no-store"),
    (b"X-Content-Type-Options", b"nosniff"),
]
_SLOW_BODY = json.dumps({"error": f"the request did not arrive within {REQUEST_TIMEOUT:g} seconds"}).encode()
_REQUEST_TOO_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_SLOW_BODY), _SLOW_BODY)
)


class _Answer(Exception):
    """An error answer: status, the text for people, extra headers."""

    def __init__(self, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or []


class ApiProtocol(Protocol):
    """One HTTP client of the API: requests read with h11 on the reader
    thread, answers queued to the shared writer."""

    __slots__ = ("__weakref__", "_body", "_http", "_last_heard", "_request", "_served", "_started", "_state")

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._state = _state(client.server)
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._last_heard = time.monotonic()
        # When the first byte of the request now arriving came (0.0: none).
        self._started = 0.0
        self._served = 0

    def connection_made(self) -> None:
        # Never admitted: an API connection is in no room and has no nick.
        self._state.add(self)

    def connection_lost(self) -> None:
        self._state.discard(self)

    def render(self, event: Event) -> bytes:
        """Only a refusal (server full, shutting down) is rendered: as a 503."""
        if not isinstance(event, Error):
            return b""
        body = json.dumps({"error": event.text}).encode("utf-8")
        return (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def check(self, now: float) -> None:
        """From the deadline thread: a request that takes too long to
        arrive is answered 408 and closed; an idle connection is closed."""
        client = self.client
        if client.closed:
            return
        if self._started and now - self._started > REQUEST_TIMEOUT:
            client.send_data(_REQUEST_TOO_SLOW)
            client.disconnect("request too slow", tell=False)
        elif not self._started and now - self._last_heard > IDLE_TIMEOUT:
            client.disconnect("idle HTTP connection", tell=False)

    def data_received(self, data: bytes) -> None:
        self._last_heard = now = time.monotonic()
        if not self._started:
            self._started = now
        http = self._http
        http.receive_data(data)
        client = self.client
        while not client.closed:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                self._send_error(_Answer(exc.error_status_hint, f"bad request: {exc}"), close=True)
                return
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return
            if event is h11.PAUSED:
                return  # an upgrade or CONNECT: answered, and closed
            if isinstance(event, h11.Request):
                if not self._begin(event):
                    return
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > MAX_BODY_BYTES:
                    self._send_error(_Answer(413, f"the body is larger than {MAX_BODY_BYTES} bytes"), close=True)
                    return
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._finish()
                if self.client.closed:  # the answer closed it
                    return
                if http.our_state is h11.DONE and http.their_state is h11.DONE:
                    http.start_next_cycle()
                    self._started = time.monotonic() if http.trailing_data[0] else 0.0

    def _begin(self, request: h11.Request) -> bool:
        """A request's head: False if it was answered (and the connection closed)."""
        # One pipelined request at a time: the next is read once this
        # one's answer went out (a client that never reads holds one answer).
        if not self.client.wait_sent(IDLE_TIMEOUT):
            self.client.disconnect("slow consumer", tell=False)
            return False
        if sum(len(name) + len(value) + 4 for name, value in request.headers) > MAX_HEADER_BYTES:
            self._send_error(_Answer(431, "the request's headers are too large"), close=True)
            return False
        for name, value in request.headers:
            if name == b"content-length" and int(value) > MAX_BODY_BYTES:
                self._send_error(_Answer(413, f"the body is larger than {MAX_BODY_BYTES} bytes"), close=True)
                return False
        self._request = request
        self._body = bytearray()
        if self._http.they_are_waiting_for_100_continue:
            self.client.send_data(self._http.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        return True

    def _finish(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        self._started = 0.0
        self._served += 1
        try:
            status, answer = self._route(request, bytes(self._body))
        except _Answer as error:
            self._send_error(error)
        except Exception:  # a bug here: say so, and keep serving the others
            log.exception("api: %s %r failed", request.method.decode("ascii", "replace"), self._loggable(request))
            self._send_error(_Answer(500, "the server failed to answer this; its log says why"), close=True)
        else:
            self._send(status, json.dumps(answer).encode("utf-8"))

    # -- answers -----------------------------------------------------------------

    def _send_error(self, error: _Answer, *, close: bool = False) -> None:
        body = json.dumps({"error": error.text}).encode("utf-8")
        self._send(error.status, body, error.headers, close=close)

    def _send(
        self, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None, *, close: bool = False
    ) -> None:
        http = self._http
        close = close or self._served >= MAX_REQUESTS
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"%d" % len(body)),
            *_SECURITY_HEADERS,
            *(extra or []),
        ]
        if close:
            headers.append((b"Connection", b"close"))
        try:
            out = http.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)) or b""
            out += http.send(h11.Data(data=body)) or b""
            out += http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # A request too broken for h11 to answer: answer by hand.
            out = b"HTTP/1.1 %d \r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
            close = True
        self.client.send_data(out)
        if close or http.our_state is h11.MUST_CLOSE:
            self.client.disconnect(f"HTTP {status}", tell=False)

    # -- the endpoints ---------------------------------------------------------

    def _route(self, request: h11.Request, body: bytes) -> tuple[int, Any]:
        target = request.target.decode("ascii", "replace").partition("?")[0]
        method = request.method.decode("ascii", "replace")
        parts = [unquote(part, errors="replace") if "%" in part else part for part in target.split("/")]
        route = self._plugin_route(target)
        if route is not None:
            return self._call_route(route, request, target, body)
        if target == "/api/openapi.json":
            self._allow(method, "GET")
            return 200, OPENAPI
        if len(parts) < 3 or parts[:2] != ["", "api"]:
            raise _Answer(404, f"no such endpoint {target}: the paths are in /api/openapi.json")
        path = parts[2:]
        if path == ["rooms"]:
            self._allow(method, "GET")
            self._authorize(request, "read")
            return 200, self._rooms()
        if path == ["stats"]:
            self._allow(method, "GET")
            self._authorize(request, "read")
            return 200, self._stats()
        if len(path) == 3 and path[0] == "rooms" and path[2] in ("members", "history", "messages"):
            room, what = path[1], path[2]
            self._allow(method, "POST" if what == "messages" else "GET")
            token = self._authorize(request, "post" if what == "messages" else "read")
            problem = room_problem(room)
            if problem is not None:
                raise _Answer(404, f"no room {room!r}: {problem}")
            if what == "members":
                return 200, self._members(room)
            if what == "history":
                return 200, self._history(room)
            return 201, self._say(token, room, self._message(request, body))
        if len(path) == 3 and path[0] == "users" and path[2] == "messages":
            self._allow(method, "POST")
            token = self._authorize(request, "post")
            return 201, self._tell(token, path[1], self._message(request, body))
        raise _Answer(404, f"no such endpoint {target}: the paths are in /api/openapi.json")

    def _plugin_route(self, path: str) -> Route | None:
        for route in self._state.routes:
            if path.startswith(route.prefix):
                return route
        return None

    def _loggable(self, request: h11.Request) -> str:
        """The request's target as the log may show it: a secret path
        (a webhook's URL is its credential) as its route's prefix only."""
        target = request.target.decode("ascii", "replace")
        route = self._plugin_route(target.partition("?")[0])
        return f"{route.prefix}..." if route is not None and route.secret_path else target

    def _call_route(self, route: Route, request: h11.Request, path: str, body: bytes) -> tuple[int, Any]:
        query = request.target.decode("ascii", "replace").partition("?")[2]
        method = request.method.decode("ascii", "replace")
        try:
            return route.handler(HttpRequest(method, path, query, tuple(request.headers), body, self.client))
        except HttpError as error:
            raise _Answer(error.status, error.text, error.headers) from None

    @staticmethod
    def _allow(method: str, allowed: str) -> None:
        if method != allowed:
            raise _Answer(405, f"use {allowed} here, not {method}", [(b"Allow", allowed.encode())])

    def _authorize(self, request: h11.Request, scope: str) -> Token:
        state = self._state
        header = b""
        for name, value in request.headers:
            if name == b"authorization":
                header = value
        kind, _, presented = header.decode("latin-1").partition(" ")
        challenge = [(b"WWW-Authenticate", b'Bearer realm="chatcore"')]
        if kind.lower() != "bearer" or not presented.strip():
            raise _Answer(401, "no token: send 'Authorization: Bearer TOKEN'", challenge)
        token = find_token(state.tokens, presented.strip())
        if token is None:
            # Paced like a typed line (--line-rate): guessing is futile
            # against 256 random bits, but each failure is also a log line.
            self.client.server.pace(self.client)
            # Logged without the token, so that a leaked log holds none.
            log.info("api: a request from %s with an unknown token", self.client.address[0])
            raise _Answer(401, "unknown token: check it, or ask for one ('chatcore hash-token')", challenge)
        wait = state.wait_before(token)
        if wait > 0:
            raise _Answer(
                429,
                f"too many requests for token {token.name}: retry in {math.ceil(wait)} s",
                [(b"Retry-After", b"%d" % math.ceil(wait))],
            )
        if scope not in token.scopes and "admin" not in token.scopes:
            raise _Answer(403, f"token {token.name} lacks the scope {scope!r} this needs")
        return token

    def _message(self, request: h11.Request, body: bytes) -> dict[str, Any]:
        kind = b""
        for name, value in request.headers:
            if name == b"content-type":
                kind = value.split(b";")[0].strip().lower()
        if kind != b"application/json":
            raise _Answer(415, "send the body as JSON, with Content-Type: application/json")
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            raise _Answer(400, 'the body is not JSON; send {"text": "..."}') from None
        problem = validation_problem(self._state.message_in, obj)
        if problem is not None:
            raise _Answer(422, f"bad message: {problem}")
        assert isinstance(obj, dict)
        try:
            size = len(obj["text"].encode("utf-8"))
        except UnicodeEncodeError:
            raise _Answer(422, "bad message: text holds a lone surrogate (such as \\ud800), not a character") from None
        max_line = self.client.server.max_line
        if size > max_line:
            raise _Answer(422, f"bad message: text is {size} bytes, and the limit is {max_line} (--max-line)")
        return obj

    def _rooms(self) -> dict[str, Any]:
        counts = self.client.server.room_counts()
        return {"rooms": [{"room": room, "members": count} for room, count in sorted(counts.items())]}

    def _members(self, room: str) -> dict[str, Any]:
        nicks = self.client.server.nicks_in(room)
        if not nicks:
            raise _Answer(404, f"no room {room}: a room exists while someone is in it")
        return {"room": room, "members": nicks}

    def _history(self, room: str) -> dict[str, Any]:
        from chatcore.plugins.web import event_object

        history = self.client.server.config.data.get("history")
        if history is None:
            raise _Answer(404, "this server keeps no history: add the history plugin")
        events = [obj for obj in map(event_object, history.replay(room)) if obj is not None]
        return {"room": room, "events": events}

    def _stats(self) -> dict[str, Any]:
        server = self.client.server
        totals = server.stats.totals()
        rooms = server.room_counts()
        return {
            "version": __version__,
            "connections": len(server.connections),
            "rooms": len(rooms),
            "memberships": sum(rooms.values()),
            "accepted": server.stats.accepted,
            "messages": totals.messages,
            "deliveries": totals.deliveries,
        }

    def _bot(self, token: Token, room: str = "") -> tuple[Client, list[str]]:
        server = self.client.server
        holder = server.registry.find(token.name)
        if holder is not None and not holder.closed:
            # Nobody is impersonated: the bot speaks under its own name only.
            raise _Answer(409, f"{token.name} is a connected person's nick now: the bot cannot speak under it")
        return bot_sender(server, token.name, self.client, room)

    def _say(self, token: Token, room: str, message: dict[str, Any]) -> dict[str, Any]:
        server = self.client.server
        if room not in server.room_counts():
            raise _Answer(404, f"no room {room}: a room exists while someone is in it")
        bot, errors = self._bot(token, room)
        server.broadcast_message(Message(bot, room, message["text"], "notice" if message.get("notice") else "chat"))
        if errors:
            raise _Answer(422, f"not sent: {errors[0]}")
        log.info("api: %s said in %s", token.name, room, extra={"event": "api_message", "room": room})
        return {"nick": token.name, "text": message["text"]}

    def _tell(self, token: Token, nick: str, message: dict[str, Any]) -> dict[str, Any]:
        bot, _errors = self._bot(token)
        refusal = self.client.server.send_private(
            bot, nick, message["text"], tell=False, notice=bool(message.get("notice"))
        )
        if refusal is not None:
            raise _Answer(404 if refusal.reason == "no_such_nick" else 422, f"not sent: {refusal.text}")
        return {"nick": token.name, "text": message["text"]}
