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

Moderation (kicks, bans, mutes) and administration (connections) are done
as a server operator named after the token (:func:`operator_of`), through
the ``opers`` plugin's functions and the engine's room actions, the same
code as the operators' commands: what users see, the log, the kept bans
and the cluster's forwarding are the same whichever way an action came.

Other plugins' paths: a plugin's ``chatcore_api_routes`` gives path
prefixes outside ``/api/`` and ``/admin/`` (:class:`chatcore.routes.Route`) and their
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
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote

import h11

from chatcore import Client, Config, UsageError, hookimpl
from chatcore.config import secret
from chatcore.engine.history import Mark, Query, select
from chatcore.engine.limits import Network, parse_address, parse_network
from chatcore.engine.rooms import mask_matches, normal_mask
from chatcore.events import Error, Event, parse_msgid
from chatcore.message import Message
from chatcore.names import nick_problem, room_problem
from chatcore.plugins import opers
from chatcore.plugins.web import CONTENT_SECURITY_POLICY
from chatcore.routes import HttpError, HttpRequest, Route
from chatcore.transports import Scheme, Transport
from chatcore.version import __version__
from chatcore.wire import Protocol, WireFormat
from chatcore.wire.http import Deadlines, HttpConnection, raw_answer

if TYPE_CHECKING:
    from chatcore.engine.gate import Refusal
    from chatcore.engine.rooms import RoomState
    from chatcore.engine.server import ChatServer
    from chatcore.events import RoomEvent

log = logging.getLogger("chatcore.api")

NAME = "api"
DEFAULT_PORT = 8081
DEFAULT_TLS_PORT = 8444
#: Every scope a token may have: ``read`` (rooms, members, history, stats),
#: ``post`` (messages), ``moderate`` (a room's kicks and bans, mutes),
#: ``admin`` (everything, and the server's kicks and bans, connections).
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
#: Where a page of history starts: a message ID (``EPOCH:OFFSET``) or a time.
#: The same pattern checks a request here and in the OpenAPI document.
HISTORY_MARK_PATTERN = r"^([A-Za-z0-9._-]{1,64}:[1-9][0-9]{0,17}|[0-9]{1,12}(\.[0-9]{1,6})?)$"
_HISTORY_MARK = {
    "type": "string",
    "pattern": HISTORY_MARK_PATTERN,
    "description": "a message ID (an event's msgid) or a time in seconds since the epoch",
}
#: Events in one page of a room's history, at most.
MAX_HISTORY_PAGE = 500
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


#: The pattern of a text field without control characters (a message, a
#: reason): one line of text.
NO_CONTROLS = "^[^\\u0000-\\u001f\\u007f]*$"

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
                "description": (
                    "The newest events, or a page of them before or after a message ID (an event's msgid) or "
                    "a time in seconds since the epoch, or between the two when both are given: to page back, "
                    "ask again with before= the oldest msgid."
                ),
                "parameters": [
                    _ROOM,
                    {"name": "before", "in": "query", "required": False, "schema": _HISTORY_MARK},
                    {"name": "after", "in": "query", "required": False, "schema": _HISTORY_MARK},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_PAGE},
                    },
                ],
                "responses": {"200": _json("History", "the room's kept events"), **_errors(400, 404)},
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
                        "pattern": NO_CONTROLS,
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
                "required": [
                    "version",
                    "connections",
                    "rooms",
                    "memberships",
                    "accepted",
                    "messages",
                    "deliveries",
                    "disconnects",
                    "refusals",
                ],
                "properties": {
                    "version": {"type": "string"},
                    "connections": {"type": "integer"},
                    "rooms": {"type": "integer"},
                    "memberships": {"type": "integer"},
                    "accepted": {"type": "integer"},
                    "messages": {"type": "integer"},
                    "deliveries": {"type": "integer"},
                    "disconnects": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                        "description": "by cause (slow_consumer, kick, ban, quit ...)",
                    },
                    "refusals": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                        "description": "connections refused, by cause (full, limit, plugin ...)",
                    },
                },
            },
        },
    },
}

# -- moderation and administration: their paths and schemas ----------------------

_KICK_BODY = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/KickIn"}}}}
_MASK = {**_ROOM, "name": "mask", "schema": {"type": "string", "minLength": 1, "maxLength": 200}}
_NETWORK = {
    **_ROOM,
    "name": "network",
    "description": "as GET /api/bans lists it, the slash as %2F (10.0.0.0%2F8)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
}
_CONNECTION = {**_ROOM, "name": "id", "schema": {"type": "integer", "minimum": 0}}
#: Characters of a kick's, ban's or mute's reason, at most.
MAX_REASON = 300
_REASON = {
    "type": "string",
    "maxLength": MAX_REASON,
    "description": "why, shown to the people concerned; control characters are not allowed",
    "pattern": NO_CONTROLS,
}
_DURATION = {"type": "integer", "minimum": 1, "maximum": 31536000, "description": "seconds"}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _action(
    summary: str, parameters: list[Any], *codes: int, body: str | None = None, ok: str = "200"
) -> dict[str, Any]:
    operation: dict[str, Any] = {**_SECURED, "summary": summary, "parameters": parameters}
    if body is not None:
        operation["requestBody"] = _body(body)
        codes = (*codes, 400, 413, 415, 422)
    operation["responses"] = {ok: _json("Done", "done"), **_errors(*codes)}
    return operation


#: Every moderation and administration path: scope ``moderate`` for a
#: room's kicks and bans and for mutes, ``admin`` for the server's kicks
#: and bans and the connections.
MODERATION_PATHS: dict[str, Any] = {
    "/api/rooms/{room}/kicks": {
        "post": _action("Put a member out of a room (scope moderate)", [_ROOM], 404, 503, body="KickIn"),
    },
    "/api/rooms/{room}/bans": {
        "get": {
            **_SECURED,
            "summary": "A room's ban masks (scope moderate)",
            "parameters": [_ROOM],
            "responses": {"200": _json("RoomBans", "the masks"), **_errors(404)},
        },
        "post": _action(
            "Ban a mask from a room, and put the members it matches out (scope moderate)",
            [_ROOM],
            404,
            409,
            body="RoomBanIn",
            ok="201",
        ),
    },
    "/api/rooms/{room}/bans/{mask}": {
        "delete": _action("Lift a room's ban mask (scope moderate)", [_ROOM, _MASK], 404),
    },
    "/api/mutes": {
        "get": {
            **_SECURED,
            "summary": "The mutes in force (scope moderate)",
            "responses": {"200": _json("Mutes", "the mutes"), **_errors()},
        },
        "post": _action(
            "Mute a nick on every room, its address too (scope moderate)", [], 404, 503, body="MuteIn", ok="201"
        ),
    },
    "/api/mutes/{nick}": {
        "delete": _action("Lift the mutes of a nick (scope moderate)", [_NICK], 404),
    },
    "/api/kicks": {
        "post": _action("Disconnect a nick from the server (scope admin)", [], 404, 503, body="KickIn"),
    },
    "/api/bans": {
        "get": {
            **_SECURED,
            "summary": "The server bans in force (scope admin)",
            "responses": {"200": _json("Bans", "the bans"), **_errors()},
        },
        "post": _action(
            "Ban an address, a network or a nick's address from the server (scope admin)",
            [],
            404,
            409,
            503,
            body="BanIn",
            ok="201",
        ),
    },
    "/api/bans/{network}": {
        "delete": _action("Lift a server ban (scope admin)", [_NETWORK], 404),
    },
    "/api/connections": {
        "get": {
            **_SECURED,
            "summary": "Every connection (scope admin)",
            "responses": {"200": _json("Connections", "the connections"), **_errors()},
        },
    },
    "/api/connections/{id}": {
        "delete": {
            **_action("End a connection; the user sees the reason (scope admin)", [_CONNECTION], 404, 422),
            "parameters": [
                _CONNECTION,
                {"name": "reason", "in": "query", "required": False, "schema": _REASON},
            ],
        },
    },
}
# Control characters and every character Python's str.isspace() takes
# (normal_mask refuses those), listed: \s differs between JSON Schema's
# ECMA regexes and Python's.
_UNWANTED = "\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_PART = f"[^!@{_UNWANTED}]*"
#: nick!user@host, user@host or nick (chatcore.engine.rooms.normal_mask).
_MASK_PATTERN = f"^[^!@+:\\-{_UNWANTED}]{_PART}(!{_PART})?(@{_PART})?$"


def _listing(key: str, item: dict[str, Any], *, room: bool = False) -> dict[str, Any]:
    """The schema of an answer that lists things: ``{key: [item ...]}``
    (and the ``room`` they are of); every field of an item is always there."""
    properties: dict[str, Any] = {
        key: {"type": "array", "items": {"type": "object", "required": list(item), "properties": item}}
    }
    if room:
        properties["room"] = {"type": "string"}
    return {"type": "object", "required": list(properties), "properties": properties}


_NICK_VALUE = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}
MODERATION_SCHEMAS: dict[str, Any] = {
    "KickIn": {
        "type": "object",
        "required": ["nick"],
        "additionalProperties": False,
        "properties": {"nick": _NICK_VALUE, "reason": _REASON},
    },
    "RoomBanIn": {
        "type": "object",
        "required": ["mask"],
        "additionalProperties": False,
        "properties": {
            "mask": {
                "type": "string",
                "minLength": 1,
                "maxLength": 190,
                "pattern": _MASK_PATTERN,
                "description": "nick!user@host with * and ?, or a nick (bob is bob!*@*)",
            },
            "reason": _REASON,
        },
    },
    "MuteIn": {
        "type": "object",
        "required": ["nick"],
        "additionalProperties": False,
        "properties": {"nick": _NICK_VALUE, "duration": {**_DURATION, "default": 600}, "reason": _REASON},
    },
    "BanIn": {
        "type": "object",
        "required": ["target"],
        "additionalProperties": False,
        "properties": {
            "target": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "description": "a nick (its address is banned), an address or a network (10.0.0.0/8)",
            },
            "duration": {**_DURATION, "description": "seconds; forever if not given"},
            "reason": _REASON,
        },
    },
    "Done": {
        "type": "object",
        "required": ["done"],
        "properties": {
            "done": {"type": "string", "description": "what was done, in a sentence"},
            "warning": {"type": "string", "description": "done, but something went wrong (not saved, not sent)"},
        },
    },
    "RoomBans": _listing(
        "bans", {"mask": {"type": "string"}, "by": {"type": "string"}, "at": {"type": "number"}}, room=True
    ),
    "Mutes": _listing("mutes", {"nick": {"type": "string"}, "until": {"type": "number"}, "by": {"type": "string"}}),
    "Bans": _listing(
        "bans",
        {
            "network": {"type": "string"},
            "until": {"type": ["number", "null"]},
            "reason": {"type": "string"},
            "by": {"type": "string"},
        },
    ),
    "Connections": _listing(
        "connections",
        {
            "id": {"type": "integer"},
            "nick": {"type": "string", "description": "empty before it is let in"},
            "address": {"type": "string"},
            "port": {"type": "integer"},
            "protocol": {"type": "string", "description": "native, irc, web or api"},
            "tls": {"type": "boolean"},
            "rooms": {"type": "array", "items": {"type": "string"}},
            "connected": {"type": "number", "description": "when (Unix time)"},
            "idle": {"type": "number", "description": "seconds since it last sent anything"},
            "bytes_in": {"type": "integer"},
            "bytes_out": {"type": "integer"},
            "queued": {"type": "integer", "description": "pieces waiting to be written to it"},
            "queued_bytes": {"type": "integer", "description": "bytes queued to it alone"},
        },
    ),
}
OPENAPI["paths"].update(MODERATION_PATHS)
OPENAPI["components"]["schemas"].update(MODERATION_SCHEMAS)
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
    message = error.message
    if error.validator == "pattern" and error.validator_value == NO_CONTROLS:
        # jsonschema would quote the regular expression: say it in words.
        message = "control characters (a line break, a tab ...) are not allowed: send each line on its own"
    return f"{where}: {message}" if where else message


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
    check_limits(options)
    config.data[NAME] = ApiState(parse_tokens(options.api_token), options.api_rate, options.api_burst)


def check_limits(options: argparse.Namespace) -> None:
    """:raises UsageError: a bad ``--api-rate`` or ``--api-burst``."""
    if not (0 < options.api_rate <= 1e6) or math.isnan(options.api_rate):
        raise UsageError("--api-rate must be a number of requests per second above 0")
    if options.api_burst < 1:
        raise UsageError("--api-burst must be at least 1")


@hookimpl
def chatcore_reload(server: ChatServer, new: argparse.Namespace) -> Any:
    check_limits(new)  # a bad value, or a bad token entry, keeps the running ones
    tokens = parse_tokens(new.api_token)
    state = _state(server)

    def apply() -> None:
        state.set_limits(new.api_rate, new.api_burst)
        state.replace_tokens(tokens)

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
                "api: %s://%s:%d/api/ (OpenAPI at /api/openapi.json, the admin page at /admin/), %d token(s)",
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
    state.connections.start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    _state(server).connections.stop()


def _state(server: ChatServer) -> ApiState:
    state: ApiState = server.config.data[NAME]
    return state


class ApiState:
    """One server's tokens, their buckets, its open connections and the
    thread that enforces their request and idle deadlines."""

    def __init__(self, tokens: list[Token], rate: float, burst: int) -> None:
        self.tokens = tokens
        self.rate = rate
        self.burst = burst
        self.message_in = _validator("MessageIn")
        #: The request bodies' validators, by schema name.
        self.validators = {route.body: _validator(route.body) for route in _ROUTES if route.body is not None}
        #: The admin page's files, by path: (content, type).
        self.admin_page = {path: (_read_admin_file(name), kind) for path, (name, kind) in ADMIN_PAGE.items()}
        #: The open connections, and the thread that enforces their deadlines.
        self.connections: Deadlines[ApiProtocol] = Deadlines("chatcore-api-deadlines", 0.5, ApiProtocol.check)
        #: Other plugins' routes (chatcore_api_routes), set at start.
        self.routes: list[Route] = []
        self._lock = threading.Lock()

    def set_limits(self, rate: float, burst: int) -> None:
        """A reload's ``--api-rate`` and ``--api-burst``, from each token's next request."""
        with self._lock:
            self.rate, self.burst = rate, burst

    def replace_tokens(self, tokens: list[Token]) -> None:
        """A reload's tokens, in one reference swap (a revoked token stops
        at once). A token kept (the same hash) keeps its bucket: a reload,
        such as logrotate's every night, is no way around the rate."""
        with self._lock:
            kept = {token.digest: token for token in self.tokens}
            for token in tokens:
                old = kept.get(token.digest)
                if old is not None:
                    token.allowance, token.filled = old.allowance, old.filled
            self.tokens = tokens

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


def _json_error(text: str) -> tuple[bytes, bytes]:
    """An error as the API words it: ``{"error": text}``."""
    return b"application/json", json.dumps({"error": text}).encode("utf-8")


class _Answer(Exception):
    """An error answer: status, the text for people, extra headers."""

    def __init__(self, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or []


class ApiProtocol(Protocol):
    """One HTTP client of the API: requests read with h11 on the reader
    thread (:class:`~chatcore.wire.http.HttpConnection`, which bounds them),
    answers queued to the shared writer."""

    __slots__ = ("__weakref__", "_state", "http")

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._state = _state(client.server)
        self.http = HttpConnection(
            client,
            self._handle,
            error_body=_json_error,
            headers=_SECURITY_HEADERS,
            max_body=MAX_BODY_BYTES,
            max_requests=MAX_REQUESTS,
            max_header_bytes=MAX_HEADER_BYTES,
            request_timeout=REQUEST_TIMEOUT,
            idle_timeout=IDLE_TIMEOUT,
        )

    def connection_made(self) -> None:
        # Never admitted: an API connection is in no room and has no nick.
        self._state.connections.add(self)

    def connection_lost(self) -> None:
        self._state.connections.discard(self)

    def render(self, event: Event) -> bytes:
        """Only a refusal (server full, shutting down) is rendered: as a 503."""
        if not isinstance(event, Error):
            return b""
        return raw_answer(503, *_json_error(event.text))

    def check(self, now: float) -> None:
        """From the deadline thread: the request and idle deadlines."""
        self.http.check(now)

    def data_received(self, data: bytes) -> None:
        self.http.receive(data)

    def _handle(self, request: h11.Request, body: bytes) -> None:
        if serve_admin_page(self, request):
            return
        try:
            status, answer = self._route(request, body)
        except _Answer as error:
            self._send_error(error)
        except Exception:  # a bug here: say so, and keep serving the others
            log.exception("api: %s %r failed", request.method.decode("ascii", "replace"), self._loggable(request))
            self._send_error(_Answer(500, "the server failed to answer this; its log says why"), close=True)
        else:
            self.http.respond(status, [(b"Content-Type", b"application/json")], json.dumps(answer).encode("utf-8"))

    def _send_error(self, error: _Answer, *, close: bool = False) -> None:
        self.http.error(error.status, error.text, close=close, extra=error.headers)

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
                return 200, self._history(room, _query(request))
            return 201, self._say(token, room, self._message(request, body))
        if len(path) == 3 and path[0] == "users" and path[2] == "messages":
            self._allow(method, "POST")
            token = self._authorize(request, "post")
            return 201, self._tell(token, path[1], self._message(request, body))
        routed = route_moderation(self, request, method, path, body)
        if routed is not None:
            return routed
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
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _Answer(
                405, f"use {' or '.join(allowed)} here, not {method}", [(b"Allow", ", ".join(allowed).encode())]
            )

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

    def _json_body(
        self, request: h11.Request, body: bytes, validator: Any, example: str, bad: str = "bad request body"
    ) -> dict[str, Any]:
        """The request's JSON body, checked by ``validator``; 415, 400 or
        422 (``bad``: the problem) if it is not right."""
        kind = b""
        for name, value in request.headers:
            if name == b"content-type":
                kind = value.split(b";")[0].strip().lower()
        if kind != b"application/json":
            raise _Answer(415, "send the body as JSON, with Content-Type: application/json")
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            raise _Answer(400, f"the body is not JSON; send {example}") from None
        problem = validation_problem(validator, obj)
        if problem is not None:
            raise _Answer(422, f"{bad}: {problem}")
        assert isinstance(obj, dict)
        return obj

    def _message(self, request: h11.Request, body: bytes) -> dict[str, Any]:
        obj = self._json_body(request, body, self._state.message_in, '{"text": "..."}', "bad message")
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

    def _history(self, room: str, given: dict[str, str]) -> dict[str, Any]:
        """A page of the room's history: the newest events, or those before
        or after a message ID or a time (the history service's selection,
        which IRC's CHATHISTORY and the web page's scroll-back use too)."""
        from chatcore.plugins.web import event_object

        history = self.client.server.config.data.get("history")
        if history is None:
            raise _Answer(404, "this server keeps no history: add the history plugin")
        try:
            limit = int(given.get("limit", MAX_HISTORY_PAGE))
        except ValueError:
            raise _Answer(400, f"limit= must be a whole number from 1 to {MAX_HISTORY_PAGE}") from None
        if not 1 <= limit <= MAX_HISTORY_PAGE:
            raise _Answer(400, f"limit= must be a whole number from 1 to {MAX_HISTORY_PAGE}")
        marks = {}
        for name in ("before", "after"):
            if name in given:
                marks[name] = _history_mark(given[name])
                if marks[name] is None:
                    raise _Answer(400, f"{name}= must be a message ID (an event's msgid) or a time in seconds")
        if len(marks) == 2:  # the events between the two, the oldest first
            query = Query("between", limit, marks["after"], marks["before"])
        elif marks:
            ((kind, start),) = marks.items()
            query = Query(kind, limit, start)
        else:
            query = Query("latest", limit)
        selected = select(history.events(self.client.server, room.lower()), query)
        events = [obj for obj in map(event_object, selected) if obj is not None]
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
            "disconnects": server.stats.disconnects(),
            "refusals": server.stats.refusals(),
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


# -- moderation and administration ------------------------------------------------
#
# Done as a server operator named after the token (``api:NAME``), through
# the same functions as the operators' commands (the ``opers`` plugin's and
# the engine's room actions), so that logs, cluster forwarding, the bans
# file and what users see are the same whichever way an action came.


def _moderator(server: ChatServer, token: Token, via: Client) -> Client:
    """The client a token's moderation is done as: a bot (see
    :func:`bot_sender`) that is a server operator, named after the token."""
    moderator, _errors = bot_sender(server, token.name, via)
    moderator.data[NAME] = {"operator": operator_of(token)}
    return moderator


def operator_of(token: Token) -> str:
    """The operator name a token's moderation is logged under."""
    return f"api:{token.name}"


@hookimpl
def chatcore_server_operator(client: Client) -> str | None:
    data: dict[str, Any] = client.data.get(NAME, {})
    return data.get("operator")


def _refused(refusal: Refusal, room: str) -> _Answer:
    """The answer for a room action the engine refused."""
    if refusal.reason == "unreachable":
        return _Answer(503, refusal.text)
    if refusal.reason == "no_such_room":
        return _Answer(404, f"no room {room} here: a room exists while someone is in it (GET /api/rooms)")
    if refusal.reason in ("not_in_room", "no_such_nick"):
        return _Answer(404, f"{refusal.text}: see GET /api/rooms/{room}/members")
    return _Answer(422, refusal.text)


def _done(text: str, warning: str | None = None, **fields: Any) -> dict[str, Any]:
    answer = {"done": text, **fields}
    if warning:
        answer["warning"] = warning
    return answer


def route_moderation(
    api: ApiProtocol, request: h11.Request, method: str, path: list[str], body: bytes
) -> tuple[int, Any] | None:
    """Answer a path of :data:`MODERATION_PATHS` (from :data:`_ROUTES`), or
    None if it is none of them."""
    matching = [route for route in _ROUTES if _matches(route.path, path)]
    if not matching:
        return None
    api._allow(method, *(route.method for route in matching))
    route = next(route for route in matching if route.method == method)
    token = api._authorize(request, route.scope)
    args = [part for want, part in zip(route.path, path, strict=True) if want == "*"]
    if route.body is not None:
        given = api._json_body(request, body, api._state.validators[route.body], route.example)
        if "reason" in given:
            given["reason"] = _reason(given["reason"])
    else:  # a DELETE's reason is in its query
        given = {"reason": _query(request).get("reason", "")}
    return route.status, route.handler(api, token, args, given)


def _reason(text: str) -> str:
    """A reason as given, stripped; 422 if it holds control characters
    (the schema's pattern lets a trailing newline through: Python's ``$``)."""
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise _Answer(422, "bad reason: control characters are not allowed")
    return text.strip()


# -- rooms (scope moderate) ------------------------------------------------------


def _room_kick(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    room = args[0]
    server, nick = api.client.server, given["nick"]
    refusal = server.kick_from_room(_moderator(server, token, api.client), room, nick, given.get("reason", ""))
    if refusal is not None:
        raise _refused(refusal, room)
    return _done(f"{nick} was put out of {room}", room=room, nick=nick)


def _room_state(api: ApiProtocol, room: str) -> RoomState:
    state = api.client.server.rooms.get(room) if room_problem(room) is None else None
    if state is None:
        raise _Answer(404, f"no room {room} here: a room exists while someone is in it (GET /api/rooms)")
    return state


def _room_bans(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    room = args[0]
    bans = _room_state(api, room).bans
    return {"room": room, "bans": [{"mask": mask, "by": by, "at": at} for mask, (by, at) in sorted(bans.items())]}


def _room_ban(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    """``+b`` the mask, and put out the members here it matches (those on
    other servers stay, but cannot speak there, nor come back)."""
    room = args[0]
    _room_state(api, room)
    mask = normal_mask(given["mask"])
    if mask is None:
        raise _Answer(422, "bad mask: give nick!user@host with * and ?, or a nick")
    server = api.client.server
    moderator = _moderator(server, token, api.client)
    refusal = server.change_modes(moderator, room, "+b", [mask])
    if refusal is not None:
        raise _Answer(409, refusal.text) if refusal.reason == "list_full" else _refused(refusal, room)
    reason = given.get("reason") or "banned"
    kicked = []
    for member in server.registry.members(room):
        if mask_matches(mask, member) and server.kick_from_room(moderator, room, member.nick, reason) is None:
            kicked.append(member.nick)
    log.warning("api: %s banned %s from %s: %s", token.name, mask, room, reason)
    return _done(f"{mask} is banned from {room}", room=room, mask=mask, kicked=kicked)


def _room_unban(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    room, mask_text = args
    state = _room_state(api, room)
    mask = normal_mask(mask_text)
    if mask is None or mask not in state.bans:
        raise _Answer(404, f"{mask_text!r} is not banned from {room}: see GET /api/rooms/{room}/bans")
    server = api.client.server
    refusal = server.change_modes(_moderator(server, token, api.client), room, "-b", [mask])
    if refusal is not None:
        raise _refused(refusal, room)
    return _done(f"{mask} is no longer banned from {room}", room=room, mask=mask)


# -- mutes (scope moderate) ----------------------------------------------------


def _mutes(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    mutes = opers.mutes_in_force(api.client.server)
    return {"mutes": [{"nick": mute.nick, "until": mute.until, "by": mute.by} for mute in mutes]}


def _mute(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    nick, duration = given["nick"], given.get("duration", opers.DEFAULT_MUTE)
    until = time.time() + duration
    muted, sent, unsaved = opers.mute_nick(
        api.client.server, nick, until, by=token.name, oper=operator_of(token), reason=given.get("reason", "")
    )
    if muted is None:
        if isinstance(sent, str):
            raise _Answer(503, sent)
        raise _Answer(404, f"no such nick {nick!r}: see GET /api/rooms/ROOM/members")
    warning = unsaved or (f"muted here, but {sent}" if isinstance(sent, str) else None)
    return _done(f"{muted} is muted for {duration} s", warning, nick=muted, until=until)


def _unmute(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    nick = args[0]
    server = api.client.server
    lifted, unsaved = opers.apply_unmute(server, nick, by=token.name, oper=operator_of(token))
    sent = server.backplane.moderate("unmute", {"by": token.name, "oper": operator_of(token), "target": nick})
    if not lifted and sent is not True:
        raise _Answer(404, f"{nick} is not muted: see GET /api/mutes")
    return _done(f"{nick} is no longer muted" if lifted else f"the unmute of {nick} went to the other servers", unsaved)


# -- the server (scope admin) ------------------------------------------------------


def _kick(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    server, nick = api.client.server, given["nick"]
    reason = given.get("reason") or "no reason given"
    target = server.registry.find(nick)
    if target is not None and not target.closed:
        opers.kick_as(token.name, operator_of(token), target, reason)
        return _done(f"{target.nick} was disconnected", nick=target.nick)
    details = {"by": token.name, "oper": operator_of(token), "nick": nick, "reason": reason}
    sent = server.backplane.moderate("kick", details)
    if sent is None:
        raise _Answer(404, f"no such nick {nick!r}: see GET /api/connections")
    if isinstance(sent, str):
        raise _Answer(503, sent)
    return _done(f"{nick} is on another server: the kick went there", nick=nick)


def _bans(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    bans = opers.bans_in_force(api.client.server)
    return {
        "bans": [{"network": str(ban.network), "until": ban.until, "reason": ban.reason, "by": ban.by} for ban in bans]
    }


def _ban(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    server, text = api.client.server, given["target"].strip()
    duration = given.get("duration")
    until = None if duration is None else time.time() + duration
    reason = given.get("reason") or "no reason given"
    network, shown = _network(text), text
    if network is None:
        target = server.registry.find(text)
        if target is None or target.closed:
            # On another server, which bans the address it knows everywhere.
            details = {"by": token.name, "oper": operator_of(token), "nick": text, "until": until, "reason": reason}
            sent = server.backplane.moderate("ban", details) if nick_problem(text) is None else None
            if sent is None:
                raise _Answer(404, f"{text!r} is no address, network or nick here: see GET /api/connections")
            if isinstance(sent, str):
                raise _Answer(503, sent)
            return _done(f"{text} is on another server: the ban went there", target=text)
        network, shown = opers.network_of(target), target.nick
    # Defends against an admin locking themselves (or the admin page)
    # out: the address this request comes from is never banned here.
    try:
        own = parse_address(api.client.address[0]) in network
    except ValueError:
        own = False
    if own:
        raise _Answer(409, f"{network} holds your own address: ban it from somewhere else")
    gone, unsaved, unsent = opers.ban_network(
        server, network, until, reason, by=token.name, oper=operator_of(token), shown=shown, spare=api.client
    )
    warning = unsaved or (f"banned here, but {unsent}" if unsent else None)
    return _done(f"{network} is banned", warning, network=str(network), until=until, disconnected=gone)


def _unban(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    text = args[0]
    network = _network(text)
    if network is None:
        raise _Answer(404, f"{text!r} is no address or network: see GET /api/bans")
    found, sent, unsaved = opers.unban_network(api.client.server, network, by=token.name, oper=operator_of(token))
    if not found and sent is not True:
        raise _Answer(404, f"{network} is not banned: see GET /api/bans")
    warning = unsaved or (f"lifted here, but {sent}" if isinstance(sent, str) else None)
    return _done(f"{network} is no longer banned", warning, network=str(network))


def _connections(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    now, wall = time.monotonic(), time.time()
    return {
        "connections": [
            {
                "id": client.id,
                "nick": client.nick,
                "address": client.address[0],
                "port": client.address[1],
                "protocol": client.wire.name,
                "tls": client.transport.encrypts,
                "rooms": list(client.rooms),
                "connected": round(wall - (now - client.connected_at), 3),
                "idle": round(now - client.last_input, 3),
                "bytes_in": client.bytes_in,
                "bytes_out": client.bytes_out,
                "queued": client.queued,
                "queued_bytes": client.queued_bytes,
            }
            for client in sorted(api.client.server.all_connections(), key=lambda client: client.id)
        ]
    }


def _end_connection(api: ApiProtocol, token: Token, args: list[str], given: dict[str, Any]) -> dict[str, Any]:
    text, reason = args[0], given["reason"]
    if len(reason) > MAX_REASON:
        raise _Answer(422, f"bad reason: longer than {MAX_REASON} characters")
    reason = _reason(reason)
    number = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else -1
    target = next((c for c in api.client.server.all_connections() if c.id == number and not c.closed), None)
    if target is None:
        raise _Answer(404, f"no connection {text}: see GET /api/connections")
    opers.kick_as(token.name, operator_of(token), target, reason or "no reason given")
    return _done(f"connection {number} was ended", id=number, nick=target.nick)


class _Route(NamedTuple):
    """One moderation or administration endpoint: its path (``*`` for a
    part that is an argument), method, scope, success status, the schema
    of its body (None: no body) and what answers it."""

    path: tuple[str, ...]
    method: str
    scope: str
    status: int
    body: str | None
    handler: Callable[[ApiProtocol, Token, list[str], dict[str, Any]], dict[str, Any]]
    example: str = ""


_ROUTES = [
    _Route(("rooms", "*", "kicks"), "POST", "moderate", 200, "KickIn", _room_kick, '{"nick": "..."}'),
    _Route(("rooms", "*", "bans"), "GET", "moderate", 200, None, _room_bans),
    _Route(("rooms", "*", "bans"), "POST", "moderate", 201, "RoomBanIn", _room_ban, '{"mask": "..."}'),
    _Route(("rooms", "*", "bans", "*"), "DELETE", "moderate", 200, None, _room_unban),
    _Route(("mutes",), "GET", "moderate", 200, None, _mutes),
    _Route(("mutes",), "POST", "moderate", 201, "MuteIn", _mute, '{"nick": "..."}'),
    _Route(("mutes", "*"), "DELETE", "moderate", 200, None, _unmute),
    _Route(("kicks",), "POST", "admin", 200, "KickIn", _kick, '{"nick": "..."}'),
    _Route(("bans",), "GET", "admin", 200, None, _bans),
    _Route(("bans",), "POST", "admin", 201, "BanIn", _ban, '{"target": "..."}'),
    _Route(("bans", "*"), "DELETE", "admin", 200, None, _unban),
    _Route(("connections",), "GET", "admin", 200, None, _connections),
    _Route(("connections", "*"), "DELETE", "admin", 200, None, _end_connection),
]


def _matches(pattern: tuple[str, ...], path: list[str]) -> bool:
    return len(pattern) == len(path) and all(want in ("*", part) for want, part in zip(pattern, path, strict=True))


# -- the admin page ------------------------------------------------------------------

#: The admin page's files, served from the package by path: looked up in
#: this table, never joined to a file system path (no directory traversal).
ADMIN_PAGE = {
    "/admin": ("index.html", b"text/html; charset=utf-8"),
    "/admin/": ("index.html", b"text/html; charset=utf-8"),
    "/admin/admin.js": ("admin.js", b"text/javascript; charset=utf-8"),
    "/admin/admin.css": ("admin.css", b"text/css; charset=utf-8"),
}
# The web page's policy: no inline script or style, nothing from elsewhere
# (no CDN), requests to this server alone, no frames (clickjacking).
_PAGE_HEADERS = [
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode()),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Frame-Options", b"DENY"),
]


def _read_admin_file(name: str) -> bytes:
    return resources.files("chatcore.plugins").joinpath("admin_static").joinpath(name).read_bytes()


def serve_admin_page(api: ApiProtocol, request: h11.Request) -> bool:
    """Answer a request for a file of the admin page; False if it is for none.
    The files are public: what the page shows comes from the API, with the
    token the person gives it."""
    found = api._state.admin_page.get(request.target.decode("ascii", "replace").partition("?")[0])
    if found is None:
        return False
    if request.method not in (b"GET", b"HEAD"):
        api.http.error(405, "only GET and HEAD", extra=[(b"Allow", b"GET, HEAD")])
        return True
    page, kind = found
    headers = [(b"Content-Type", kind), (b"Content-Length", b"%d" % len(page)), *_PAGE_HEADERS]
    api.http.respond(200, headers, b"" if request.method == b"HEAD" else page)
    return True


def _network(text: str) -> Network | None:
    try:
        return parse_network(text)
    except ValueError:
        return None


def _history_mark(text: str) -> Mark | None:
    """A message ID or a time (seconds since the epoch), or None for neither."""
    if re.fullmatch(HISTORY_MARK_PATTERN, text) is None:
        return None
    return Mark(text) if parse_msgid(text) is not None else Mark(time=float(text))


def _query(request: h11.Request) -> dict[str, str]:
    """The request's query parameters (the last of each name)."""
    query = request.target.decode("ascii", "replace").partition("?")[2]
    return dict(parse_qsl(query, keep_blank_values=True, errors="replace"))
