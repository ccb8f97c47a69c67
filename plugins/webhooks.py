"""Webhooks: incoming (a secret URL that says a line in a room) and outgoing
(room events POSTed as signed JSON to other programs).

``chatcore serve --plugins api,webhooks --listen http://127.0.0.1:8081
--webhook-in "name=deploys room=lobby nick=deploybot hash=sha256$..."
--webhook-out "name=ci url=https://ci.example/chat secret=... events=message+kick rooms=lobby"``.
docs/webhooks.md is the user's guide; this docstring says how it works.

**Incoming** (Slack's and Mattermost's shape): ``POST /hooks/SECRET`` on
the api plugin's listeners, served through ``chatcore_api_routes``, with
``{"text": ..., "username": ...}`` as JSON or as a form's ``payload=``. The
secret is the credential, so it is kept as its SHA-256 (like the API's
tokens: a leaked configuration file does not give the URL away), each
configured hash is compared with the presented one in constant time, and
the path is never logged. The line goes through the API's
:func:`~chatcore.plugins.api.bot_sender`, so it is filtered, counted,
kept and relayed like anything typed.

**Outgoing**: ``chatcore_room_event`` only files the event in each
matching webhook's :class:`Outbox` (a bounded queue, under a lock held for
an append): the chat path never waits for a network, nor for a disk. Each
outbox has its own delivery thread, so a receiver that hangs delays its
own webhook only. Deliveries are at least once: a failure (no connection,
a timeout, 408, 425, 429 or 5xx) is retried after an exponential backoff
with full jitter (AWS's "Exponential Backoff And Jitter": a random wait
between 0 and ``base * 2**attempt``, capped, so that retries from many
events do not arrive in waves), up to ``--webhook-retries``; then, as when
a queue overflows or the server stops, the delivery goes to the dead-letter
log (JSON lines), written by a thread of its own. Every attempt carries the
event's message ID as ``Idempotency-Key`` (the same on every attempt and on
every server of a cluster), and an HMAC-SHA256 signature over
``TIMESTAMP.BODY`` with the webhook's secret.

Why the standard library's ``http.client`` and no HTTP library: one POST
of a small JSON body per delivery, on a thread that may block, with a
timeout per connection and per read, HTTPS with the system's certificate
checks (``ssl.create_default_context``), and one kept-alive connection per
webhook: all of it is there, and a dependency would bring connection pools
and retry policies of its own that would fight these.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import logging
import math
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from chatcore import UsageError, hookimpl
from chatcore.config import secret, whole_number
from chatcore.engine.limits import TokenBucket
from chatcore.events import Action, Chat, Joined, Left, ModeChanged, NickChanged, RoomEvent, TopicChanged
from chatcore.message import Message
from chatcore.names import nick_problem, room_problem

# An incoming webhook's secret is hashed as the API's tokens are ('chatcore hash-token').
from chatcore.plugins.api import HASH_PREFIX, bot_sender
from chatcore.routes import HttpError, HttpRequest, Route
from chatcore.version import __version__

if TYPE_CHECKING:
    from chatcore import Config
    from chatcore.engine.server import ChatServer

log = logging.getLogger("chatcore.webhooks")

NAME = "webhooks"
#: The path prefix of incoming webhooks on the api plugin's listeners.
PREFIX = "/hooks/"
#: What an outgoing webhook may ask for (``events=message+join``).
EVENT_TYPES = ("message", "join", "leave", "kick", "nick", "topic", "mode")
#: Lines one incoming request may post (its text split at newlines).
MAX_LINES = 20
DEFAULT_DEAD_LETTER = "chatcore-webhooks-dead.jsonl"
#: Bytes of a receiver's answer read, at most (it is only logged).
MAX_ANSWER_BYTES = 4096
#: Seconds the server's stop waits for a delivery in progress.
STOP_WAIT = 2.0

# -- configuration ------------------------------------------------------------------


def _fields(option: str, entry: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, str]:
    """``key=value key=value`` as a dict, every key known and the required ones there."""
    fields: dict[str, str] = {}
    for word in entry.split():
        key, sep, value = word.partition("=")
        if not sep or not value:
            raise UsageError(f"{option}: {word!r} is not KEY=VALUE (the keys: {', '.join(required + optional)})")
        if key not in required + optional:
            raise UsageError(f"{option}: unknown key {key!r} (the keys: {', '.join(required + optional)})")
        if key in fields:
            raise UsageError(f"{option}: {key} is given twice")
        fields[key] = value
    missing = [key for key in required if key not in fields]
    if missing:
        raise UsageError(f"{option}: {', '.join(missing)} missing (give {' '.join(k + '=...' for k in required)})")
    problem = nick_problem(fields["name"])
    if problem is not None:
        raise UsageError(f"{option} name={fields['name']}: a webhook's name follows the rules of a nick: {problem}")
    return fields


@dataclass
class IncomingHook:
    """A configured incoming webhook: what it posts to, as whom, its
    secret's hash, and its rate."""

    name: str
    room: str
    nick: str
    digest: bytes
    #: Whether a request's ``username`` may name the bot (else the configured nick).
    usernames: bool
    bucket: TokenBucket
    lock: threading.Lock = field(default_factory=threading.Lock)


def parse_incoming(entry: str, rate: float, burst: int) -> IncomingHook:
    """``name=N room=R nick=BOT hash=sha256$HEX [usernames=yes]`` as an
    :class:`IncomingHook`. Errors never show the hash."""
    fields = _fields("--webhook-in", entry, ("name", "room", "hash"), ("nick", "usernames"))
    name = fields["name"]
    where = f"--webhook-in name={name}"
    problem = room_problem(fields["room"])
    if problem is not None:
        raise UsageError(f"{where}: room: {problem}")
    nick = fields.get("nick", name)
    problem = nick_problem(nick)
    if problem is not None:
        raise UsageError(f"{where}: nick: {problem}")
    stored = fields["hash"]
    digest = stored[len(HASH_PREFIX) :]
    try:
        raw = bytes.fromhex(digest) if stored.startswith(HASH_PREFIX) and len(digest) == 64 else b""
    except ValueError:
        raw = b""
    if not raw:
        raise UsageError(f"{where}: hash is sha256$ and 64 hex digits, made by 'chatcore hash-token'")
    usernames = fields.get("usernames", "no")
    if usernames not in ("yes", "no"):
        raise UsageError(f"{where}: usernames is yes or no")
    return IncomingHook(
        name, fields["room"].lower(), nick, raw, usernames == "yes", TokenBucket(rate, burst, time.monotonic())
    )


@dataclass(frozen=True)
class OutgoingHook:
    """A configured outgoing webhook: where to, its signing secret, and
    which events of which rooms (None: all)."""

    name: str
    url: str
    secret: bytes
    events: frozenset[str] | None
    rooms: frozenset[str] | None

    def wants(self, kind: str, room: str) -> bool:
        return (self.events is None or kind in self.events) and (self.rooms is None or room in self.rooms)

    @property
    def address(self) -> tuple[bool, str, int, str]:
        """TLS or not, host, port, and the path with its query."""
        parts = urlsplit(self.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        tls = parts.scheme == "https"
        return tls, parts.hostname or "", parts.port or (443 if tls else 80), path


def _set_of(where: str, text: str, allowed: tuple[str, ...] | None) -> frozenset[str] | None:
    if text == "*":
        return None
    items = frozenset(item.strip().lower() for item in text.split("+") if item.strip())
    if not items:
        raise UsageError(f"{where}: give names joined with +, or * for all")
    if allowed is not None and not items <= set(allowed):
        unknown = ", ".join(sorted(items - set(allowed)))
        raise UsageError(f"{where}: {unknown} is not an event type ({'+'.join(allowed)}, or *)")
    if allowed is None:
        for room in items:
            problem = room_problem(room)
            if problem is not None:
                raise UsageError(f"{where}: {room!r}: {problem}")
    return items


def parse_outgoing(entry: str) -> OutgoingHook:
    """``name=N url=URL secret=S [events=a+b|*] [rooms=a+b|*]`` as an
    :class:`OutgoingHook`. Errors never show the secret, nor the URL (which
    may hold a credential of its receiver's, as Slack's do)."""
    fields = _fields("--webhook-out", entry, ("name", "url", "secret"), ("events", "rooms"))
    name = fields["name"]
    where = f"--webhook-out name={name}"
    parts = urlsplit(fields["url"])
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise UsageError(f"{where}: url has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{where}: url is http://HOST[:PORT]/PATH or https://...")
    if len(fields["secret"]) < 16:
        raise UsageError(f"{where}: secret is at least 16 characters ('chatcore hash-token' makes a good one)")
    events = _set_of(f"{where}: events", fields.get("events", "*"), EVENT_TYPES)
    rooms = _set_of(f"{where}: rooms", fields.get("rooms", "*"), None)
    return OutgoingHook(name, fields["url"], fields["secret"].encode("utf-8"), events, rooms)


def _entries(values: list[str]) -> list[str]:
    # One entry per list item; commas separate items in CHATCORE_* variables.
    return [entry for value in values for entry in (part.strip() for part in value.split(",")) if entry]


def _unique(option: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name.casefold() in seen:
            raise UsageError(f"{option} name={name}: two webhooks have this name; give each its own")
        seen.add(name.casefold())


@dataclass(frozen=True)
class Settings:
    """Everything the options say, checked: made anew at each reload."""

    incoming: tuple[IncomingHook, ...]
    outgoing: tuple[OutgoingHook, ...]
    timeout: float
    retries: int
    backoff: float
    max_backoff: float
    queue: int
    dead_letter: str


def read_settings(options: argparse.Namespace) -> Settings:
    """The webhooks the options configure.

    :raises UsageError: a bad entry or value, named.
    """
    for option, value in (
        ("--webhook-timeout", options.webhook_timeout),
        ("--webhook-backoff", options.webhook_backoff),
        ("--webhook-max-backoff", options.webhook_max_backoff),
        ("--webhook-rate", options.webhook_rate),
    ):
        if not (0 < value < math.inf):
            raise UsageError(f"{option} must be a number above 0")
    incoming = [
        parse_incoming(entry, options.webhook_rate, options.webhook_burst) for entry in _entries(options.webhook_in)
    ]
    outgoing = [parse_outgoing(entry) for entry in _entries(options.webhook_out)]
    _unique("--webhook-in", [hook.name for hook in incoming])
    _unique("--webhook-out", [hook.name for hook in outgoing])
    return Settings(
        tuple(incoming),
        tuple(outgoing),
        options.webhook_timeout,
        options.webhook_retries,
        options.webhook_backoff,
        max(options.webhook_max_backoff, options.webhook_backoff),
        options.webhook_queue,
        options.webhook_dead_letter,
    )


# -- options and life cycle -----------------------------------------------------------


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "webhooks plugin",
        "Incoming webhooks (POST /hooks/SECRET on the api plugin's http:// listener posts a line in a room) "
        "and outgoing ones (room events POSTed as signed JSON, retried, dead-lettered); docs/webhooks.md.",
    )
    secret(
        group.add_argument(
            "--webhook-in",
            action="append",
            default=[],
            metavar="'name=N room=R hash=sha256$... [nick=BOT] [usernames=yes]'",
            help=(
                "an incoming webhook: POST /hooks/SECRET says the request's text in room R as BOT (default: "
                "its name); the hash of SECRET from 'chatcore hash-token'; usernames=yes lets a request's "
                "username name the bot. Repeat, or separate with commas"
            ),
        )
    )
    # Secret: the URL of a receiver may hold its credential (Slack's do).
    secret(
        group.add_argument(
            "--webhook-out",
            action="append",
            default=[],
            metavar="'name=N url=URL secret=S [events=E+E|*] [rooms=R+R|*]'",
            help=(
                f"an outgoing webhook: POST each event of the rooms (default: all) and types ({'+'.join(EVENT_TYPES)}; "
                "default: all) to URL, signed with S (HMAC-SHA256). Repeat, or separate with commas"
            ),
        )
    )
    group.add_argument(
        "--webhook-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds to connect to a receiver, and to wait for each part of its answer (default: %(default)s)",
    )
    group.add_argument(
        "--webhook-retries",
        type=whole_number(0, 100),
        default=8,
        metavar="N",
        help="retries of a failed delivery before it goes to the dead-letter log (default: %(default)s)",
    )
    group.add_argument(
        "--webhook-backoff",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help=(
            "the first retry waits up to this, each next one up to twice as long (a random part of it: "
            "full jitter) (default: %(default)s)"
        ),
    )
    group.add_argument(
        "--webhook-max-backoff",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="the longest wait before a retry (default: %(default)s)",
    )
    group.add_argument(
        "--webhook-queue",
        type=whole_number(1),
        default=1000,
        metavar="EVENTS",
        help=(
            "events each outgoing webhook may hold undelivered; beyond, new ones go to the dead-letter log "
            "(default: %(default)s)"
        ),
    )
    group.add_argument(
        "--webhook-dead-letter",
        default=DEFAULT_DEAD_LETTER,
        metavar="PATH",
        help="JSON-lines file of the deliveries given up on, appended to (default: ./%(default)s)",
    )
    group.add_argument(
        "--webhook-rate",
        type=float,
        default=1.0,
        metavar="PER_SECOND",
        help="requests per second each incoming webhook may make on average (default: %(default)s)",
    )
    group.add_argument(
        "--webhook-burst",
        type=whole_number(1),
        default=10,
        metavar="REQUESTS",
        help="requests an incoming webhook may make at once before --webhook-rate applies (default: %(default)s)",
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    settings = read_settings(config.options)
    if settings.incoming and "api" not in config.plugins:
        raise UsageError("--webhook-in: incoming webhooks are served by the api plugin: add it (plugins api,webhooks)")
    config.data[NAME] = Webhooks(settings)


@hookimpl
def chatcore_reload(server: ChatServer, new: argparse.Namespace) -> Any:
    settings = read_settings(new)  # a bad entry keeps the running webhooks
    webhooks = _webhooks(server)
    return lambda: webhooks.apply(settings)


# trylast: after the metrics plugin's, whose endpoint then takes our counts.
@hookimpl(trylast=True)
def chatcore_server_start(server: ChatServer) -> None:
    webhooks = _webhooks(server)
    webhooks.start()
    metrics = server.config.data.get("metrics")
    if metrics is not None:  # the metrics plugin's registry (prometheus_client), as the redis plugin does
        metrics.registry.register(WebhooksCollector(webhooks))
    settings = webhooks.settings
    if settings.incoming and not any(listener.url.scheme in ("http", "https") for listener in server.listeners):
        log.warning("webhooks: incoming webhooks need an http:// or https:// listener (--listen http://HOST:PORT)")
    log.info("webhooks: %d incoming, %d outgoing", len(settings.incoming), len(settings.outgoing))


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    _webhooks(server).stop()


@hookimpl
def chatcore_api_routes(server: ChatServer) -> list[Route]:
    return [Route(PREFIX, lambda request: _receive(server, request), "incoming webhooks", secret_path=True)]


@hookimpl
def chatcore_room_event(server: ChatServer, event: RoomEvent) -> None:
    # The chat path: find the kind, and file the event; nothing else.
    kind = event_kind(event)
    if kind is None:
        return
    for outbox in _webhooks(server).outboxes:
        if outbox.hook.wants(kind, event.room):
            outbox.put(event, kind)


def _webhooks(server: ChatServer) -> Webhooks:
    webhooks: Webhooks = server.config.data[NAME]
    return webhooks


# -- incoming ------------------------------------------------------------------------------


def find_incoming(hooks: tuple[IncomingHook, ...], presented: str) -> IncomingHook | None:
    """The hook whose secret is ``presented``. Its hash is compared with
    every configured one, in constant time and without stopping at a match,
    so that the time taken says nothing about how close a guess was, nor
    which hook matched."""
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    found = None
    for hook in hooks:
        if hmac.compare_digest(hook.digest, digest):
            found = hook
    return found


def _receive(server: ChatServer, request: HttpRequest) -> tuple[int, Any]:
    """``POST /hooks/SECRET``: post the request's text in the hook's room."""
    webhooks = _webhooks(server)
    if request.method != "POST":
        raise HttpError(405, f"use POST here, not {request.method}", [(b"Allow", b"POST")])
    hook = find_incoming(webhooks.settings.incoming, request.path[len(PREFIX) :])
    if hook is None:
        # Paced like a typed line: a guesser is slowed, and each miss logged,
        # without the path: it may be a real secret with a typo.
        server.pace(request.client)
        log.info("webhooks: a request from %s to an unknown webhook", request.client.address[0])
        raise HttpError(404, "no such webhook: check the URL")
    with hook.lock:
        allowed = hook.bucket.take(time.monotonic())
    if not allowed:
        wait = math.ceil(1 / hook.bucket.rate)
        raise HttpError(
            429, f"too many requests for webhook {hook.name}: retry in {wait} s", [(b"Retry-After", b"%d" % wait)]
        )
    body = _payload(request)
    lines = _lines(body.get("text"), server.max_line)
    nick = hook.nick
    username = body.get("username")
    if hook.usernames and username not in (None, ""):
        if not isinstance(username, str) or nick_problem(username) is not None:
            raise HttpError(422, f"bad username: {nick_problem(str(username)) or 'a string'}")
        nick = username
    if not server.nicks_in(hook.room):
        raise HttpError(404, f"nobody is in {hook.room} now: the message was not posted")
    holder = server.registry.find(nick)
    if holder is not None and not holder.closed:
        raise HttpError(409, f"{nick} is a connected person's nick now: the webhook cannot speak under it")
    for number, line in enumerate(lines):
        bot, errors = bot_sender(server, nick, request.client, hook.room)
        server.broadcast_message(Message(bot, hook.room, line, "chat"))
        if errors:  # a filter's refusal, a ban, +m: what a typing user would be told
            before = f" (the {number} line(s) before it were)" if number else ""
            raise HttpError(422, f"not posted: {errors[0]}{before}")
    webhooks.posted(hook.name)
    log.info("webhooks: %s posted in %s", hook.name, hook.room, extra={"event": "webhook_in", "room": hook.room})
    return 200, {"ok": True, "room": hook.room, "nick": nick, "lines": len(lines)}


def _payload(request: HttpRequest) -> dict[str, Any]:
    """The request's object: a JSON body, or a form's ``payload`` field (Slack's)."""
    kind = request.content_type
    if kind == "application/json":
        text = request.body
    elif kind == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(request.body.decode("utf-8"), strict_parsing=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "the form is not URL-encoded UTF-8") from None
        if len(form.get("payload", ())) != 1:
            raise HttpError(400, "send the JSON in one form field named payload (payload={...})")
        text = form["payload"][0].encode("utf-8", "surrogateescape")
    else:
        raise HttpError(415, "send JSON (Content-Type: application/json), or a form with a payload= field")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise HttpError(400, 'the body is not JSON; send {"text": "..."}') from None
    if not isinstance(obj, dict):
        raise HttpError(422, 'send a JSON object: {"text": "..."}')
    return obj


def _lines(text: Any, max_line: int) -> list[str]:
    """The lines to post: the text split at its newlines, empty ones left out."""
    if not isinstance(text, str) or not text.strip():
        raise HttpError(422, "text: a string that is not empty is required")
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_LINES:
        raise HttpError(422, f"text: {len(lines)} lines, and a webhook may post {MAX_LINES} at once")
    for number, line in enumerate(lines, 1):
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in line):
            raise HttpError(422, f"text: line {number} holds a control character")
        try:
            size = len(line.encode("utf-8"))
        except UnicodeEncodeError:
            raise HttpError(422, "text holds a lone surrogate (such as \\ud800), not a character") from None
        if size > max_line:
            raise HttpError(422, f"text: line {number} is {size} bytes, and the limit is {max_line} (--max-line)")
    return lines


# -- outgoing ------------------------------------------------------------------------------


def event_kind(event: RoomEvent) -> str | None:
    """The webhook event type of ``event`` (:data:`EVENT_TYPES`), or None
    for one webhooks do not carry (room notices, operator marks)."""
    kind = _KINDS.get(type(event))
    if kind == "leave" and isinstance(event, Left) and event.kicked_by:  # a room's /kick, or an operator's kill
        return "kick"
    return kind


_KINDS: dict[type[RoomEvent], str] = {
    Chat: "message",
    Action: "message",
    Joined: "join",
    Left: "leave",
    NickChanged: "nick",
    TopicChanged: "topic",
    ModeChanged: "mode",
}


def payload(hook_name: str, event: RoomEvent, kind: str) -> dict[str, Any]:
    """What is POSTed for ``event``: its ID, type and room, and the event as
    the WebSocket protocol gives it (docs/protocol.md)."""
    from chatcore.plugins.web import event_object

    detail = event_object(event) or {}
    if kind == "kick" and isinstance(event, Left):
        detail = {**detail, "kicked_by": event.kicked_by, "reason": event.kick_reason}
    return {
        "id": event.msgid,
        "webhook": hook_name,
        "type": kind,
        "room": event.room,
        "time": event.time,
        "event": detail,
    }


def _body(hook_name: str, delivery: Delivery) -> dict[str, Any]:
    return payload(hook_name, delivery.event, delivery.kind)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``v1=`` and the hex HMAC-SHA256 of ``TIMESTAMP.BODY`` under ``secret``."""
    return "v1=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    """One event on its way to one webhook."""

    event: RoomEvent
    kind: str
    body: bytes = b""
    attempts: int = 0
    last_error: str = ""


@dataclass
class Counts:
    """One webhook's deliveries so far (read by the metrics)."""

    delivered: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    overflowed: int = 0


class Outbox:
    """One outgoing webhook's queue, its retries and its delivery thread.

    :meth:`put` is called on the chat path: it only appends under a lock
    (or, when the webhook holds ``--webhook-queue`` events already, hands
    the event to the dead-letter log, which does not block either).
    """

    def __init__(self, hook: OutgoingHook, settings: Settings, dead_letters: DeadLetters) -> None:
        self.hook = hook
        self.settings = settings
        self.dead_letters = dead_letters
        self.counts = Counts()
        self._fresh: deque[Delivery] = deque()
        # Retries by when they are due: (due, sequence, delivery).
        self._retries: list[tuple[float, int, Delivery]] = []
        self._sequence = itertools.count()
        self._in_flight = 0
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._connection: http.client.HTTPConnection | None = None
        # Whether the connection was used before (kept alive), and where it goes.
        self._reused = False
        self._target: tuple[bool, str, int, float] | None = None
        self._thread = threading.Thread(target=self._run, name=f"chatcore-webhook-{hook.name}", daemon=True)

    @property
    def depth(self) -> int:
        """Events held: waiting, waiting to be retried, and in flight."""
        return len(self._fresh) + len(self._retries) + self._in_flight

    def start(self) -> None:
        self._thread.start()

    def put(self, event: RoomEvent, kind: str) -> None:
        delivery = Delivery(event, kind)
        with self._cond:
            if not self._stopping and self.depth < self.settings.queue:
                self._fresh.append(delivery)
                self._cond.notify()
                return
            stopping = self._stopping  # a reload took the webhook out as this event came
            if not stopping:
                self.counts.overflowed += 1
            self.counts.dead_lettered += 1
        why = "the webhook was stopping" if stopping else f"the queue was full ({self.settings.queue} events)"
        self.dead_letters.add(self.hook, delivery, why)

    def stopping(self) -> None:
        """Tell the thread to stop after its delivery in progress (then
        :meth:`stopped`; several webhooks stop together, so a hung
        receiver's wait is paid once)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def stopped(self) -> None:
        """After :meth:`stopping`: wait for the thread (a delivery in progress
        gets :data:`STOP_WAIT`), and dead-letter what is left undelivered."""
        self._thread.join(STOP_WAIT)
        with self._cond:
            left = [*self._fresh, *(delivery for _due, _n, delivery in sorted(self._retries))]
            self._fresh.clear()
            self._retries.clear()
            self.counts.dead_lettered += len(left)
        for delivery in left:
            self.dead_letters.add(self.hook, delivery, "not delivered before the server stopped or the webhook went")

    def _next(self) -> Delivery | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._retries and self._retries[0][0] <= now:
                    delivery = heapq.heappop(self._retries)[2]
                elif self._fresh:
                    delivery = self._fresh.popleft()
                else:
                    self._cond.wait(self._retries[0][0] - now if self._retries else None)
                    continue
                self._in_flight = 1
                return delivery
        return None

    def _run(self) -> None:
        while (delivery := self._next()) is not None:
            try:
                self._attempt(delivery)
            except Exception:  # a bug: this delivery is dead-lettered, the others go on
                log.exception("webhooks: %s: delivering %s failed", self.hook.name, delivery.event.msgid)
                self._give_up(delivery, "an error in chatcore (its log says which)")
            finally:
                with self._cond:
                    self._in_flight = 0
        self._close()

    def _attempt(self, delivery: Delivery) -> None:
        hook = self.hook  # a reload may swap it: one attempt uses one
        if not delivery.body:  # made once: every attempt sends the same bytes
            delivery.body = json.dumps(_body(hook.name, delivery), separators=(",", ":")).encode("utf-8")
        delivery.attempts += 1
        status, retry_after, error = self._post(hook, delivery)
        if error is None:
            self.counts.delivered += 1
            return
        self.counts.failed += 1
        delivery.last_error = error
        retryable = status is None or status in (408, 425, 429) or status >= 500
        if not retryable:
            self._give_up(delivery, error)
        elif delivery.attempts > self.settings.retries:
            self._give_up(delivery, f"{error}, after {delivery.attempts} attempts")
        else:
            self.counts.retried += 1
            self._retry_later(delivery, retry_after)

    def _retry_later(self, delivery: Delivery, retry_after: float) -> None:
        settings = self.settings
        # Full jitter: anywhere from 0 to the exponential ceiling.
        ceiling = min(settings.max_backoff, settings.backoff * 2 ** (delivery.attempts - 1))
        wait = max(random.uniform(0, ceiling), min(retry_after, settings.max_backoff))
        with self._cond:
            if not self._stopping:
                heapq.heappush(self._retries, (time.monotonic() + wait, next(self._sequence), delivery))
                return
        # Stopped while this attempt was out: what stop() took is dead-lettered, and this too.
        self._give_up(delivery, f"{delivery.last_error}; the server stopped or the webhook went before a retry")

    def _give_up(self, delivery: Delivery, reason: str) -> None:
        with self._cond:  # put() counts overflows under it too
            self.counts.dead_lettered += 1
        log.warning(
            "webhooks: %s: gave up on %s: %s",
            self.hook.name,
            delivery.event.msgid,
            reason,
            extra={"event": "webhook_dead_letter", "webhook": self.hook.name},
        )
        self.dead_letters.add(self.hook, delivery, reason)

    def _post(self, hook: OutgoingHook, delivery: Delivery) -> tuple[int | None, float, str | None]:
        """One attempt: (status or None, Retry-After seconds, None or what went wrong)."""
        tls, host, port, path = hook.address
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"chatcore-webhooks/{__version__}",
            "Idempotency-Key": delivery.event.msgid,
            "X-Chatcore-Webhook": hook.name,
            "X-Chatcore-Event": delivery.kind,
            "X-Chatcore-Attempt": str(delivery.attempts),
            "X-Chatcore-Timestamp": timestamp,
            "X-Chatcore-Signature": signature(hook.secret, timestamp, delivery.body),
        }
        for fresh in (False, True):
            connection = self._connect(tls, host, port, fresh)
            try:
                connection.request("POST", path, body=delivery.body, headers=headers)
                response = connection.getresponse()
                answer = response.read(MAX_ANSWER_BYTES)
                if not response.isclosed():  # more than we read: the connection cannot be reused
                    self._close()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._close()
                if not fresh and self._reused:
                    continue  # a kept-alive connection the receiver had closed: once more, anew
                return None, 0.0, f"no answer: {exc.__class__.__name__}"
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                what = "timed out" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
                return None, 0.0, f"no answer: {what}"
            if response.will_close and self._connection is not None:
                self._close()
            status = response.status
            if 200 <= status < 300:
                return status, 0.0, None
            retry_after = response.getheader("Retry-After", "")
            wait = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else 0.0
            # The receiver's words go to the log: no line breaks or escapes of theirs.
            excerpt = "".join(c if c.isprintable() else " " for c in answer[:200].decode("utf-8", "replace")).strip()
            return status, wait, f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self, tls: bool, host: str, port: int, fresh: bool) -> http.client.HTTPConnection:
        timeout = self.settings.timeout
        if fresh or self._target != (tls, host, port, timeout):  # a reload may have moved the webhook
            self._close()
        if self._connection is not None:
            self._reused = True
            return self._connection
        if tls:
            self._connection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            self._connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self._reused = False
        self._target = (tls, host, port, timeout)
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# -- the dead-letter log -------------------------------------------------------------------


class DeadLetters:
    """The deliveries given up on, appended to a JSON-lines file by a
    thread of its own: :meth:`add` only appends to a bounded list, so the
    chat path and the delivery threads never wait for the disk.

    The file is opened for each batch, so a reload's new path and log
    rotation need nothing more.
    """

    #: Records held for the writer, at most; beyond, they are counted as lost.
    LIMIT = 10000

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self.lost = 0
        self._records: deque[tuple[OutgoingHook, Delivery, str, float]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="chatcore-webhook-dead-letters", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, hook: OutgoingHook, delivery: Delivery, reason: str) -> None:
        record = (hook, delivery, reason, time.time())
        with self._cond:
            if not self._stopping:
                if len(self._records) >= self.LIMIT:
                    self.lost += 1
                else:
                    self._records.append(record)
                    self._cond.notify()
                return
        # After the stop (a delivery that outlived it): no writer thread is left.
        self._write([record])

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(5)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record so far is written (for tests and the stop)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._records and time.monotonic() < deadline:
                self._cond.wait(0.01)
            return not self._records

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._records and not self._stopping:
                    self._cond.wait()
                if not self._records:
                    return
                batch = list(self._records)
            self._write(batch)
            with self._cond:
                for _ in batch:
                    self._records.popleft()
                self._cond.notify_all()

    def _write(self, batch: list[tuple[OutgoingHook, Delivery, str, float]]) -> None:
        lines = []
        for hook, delivery, reason, when in batch:
            record = {
                "time": when,
                "webhook": hook.name,
                "id": delivery.event.msgid,
                "type": delivery.kind,
                "attempts": delivery.attempts,
                "reason": reason,
                # What would have been POSTed; the secret and the URL are not kept.
                "payload": json.loads(delivery.body) if delivery.body else _body(hook.name, delivery),
            }
            lines.append(json.dumps(record, separators=(",", ":")) + "\n")
        try:
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.writelines(lines)
            self.written += len(lines)
        except OSError as exc:
            self.lost += len(lines)
            log.error(
                "webhooks: cannot write the dead-letter log %s: %s; %d record(s) lost", self.path, exc, len(lines)
            )


# -- one server's webhooks -----------------------------------------------------------------


class Webhooks:
    """One server's webhooks: the settings, an outbox per outgoing webhook,
    the dead-letter log."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dead_letters = DeadLetters(settings.dead_letter)
        #: Read on the chat path without a lock: replaced whole, never changed.
        self.outboxes: tuple[Outbox, ...] = ()
        #: Requests each incoming webhook posted, by name (kept across reloads).
        self.incoming_posts: dict[str, int] = {}
        self._started = False
        self._lock = threading.Lock()

    def posted(self, name: str) -> None:
        with self._lock:
            self.incoming_posts[name] = self.incoming_posts.get(name, 0) + 1

    def start(self) -> None:
        with self._lock:
            self.dead_letters.start()
            self._started = True
            self.outboxes = tuple(self._open(hook) for hook in self.settings.outgoing)

    def _open(self, hook: OutgoingHook) -> Outbox:
        outbox = Outbox(hook, self.settings, self.dead_letters)
        outbox.start()
        return outbox

    def apply(self, settings: Settings) -> None:
        """A reload: a webhook kept by name keeps its queue and takes its
        new settings; a new one starts; one taken out stops, and what it
        held goes to the dead-letter log."""
        with self._lock:
            # A reload is no way around a webhook's rate: its bucket carries
            # over, with the new rate and burst (its tokens up to that burst).
            buckets = {old.name.casefold(): old.bucket for old in self.settings.incoming}
            for new in settings.incoming:
                bucket = buckets.get(new.name.casefold())
                if bucket is not None:
                    bucket.rate, bucket.burst = new.bucket.rate, new.bucket.burst
                    new.bucket = bucket
            self.settings = settings
            self.dead_letters.path = settings.dead_letter
            running = {outbox.hook.name.casefold(): outbox for outbox in self.outboxes}
            kept: list[Outbox] = []
            for hook in settings.outgoing:
                outbox = running.pop(hook.name.casefold(), None)
                if outbox is None:
                    kept.append(self._open(hook))
                else:
                    outbox.hook, outbox.settings = hook, settings
                    kept.append(outbox)
            self.outboxes = tuple(kept)
        self._stop_all(list(running.values()))
        log.info("webhooks: %d incoming, %d outgoing", len(settings.incoming), len(settings.outgoing))

    def stop(self) -> None:
        with self._lock:
            outboxes, self.outboxes = self.outboxes, ()
        self._stop_all(list(outboxes))
        if self._started:
            self.dead_letters.stop()

    @staticmethod
    def _stop_all(outboxes: list[Outbox]) -> None:
        for outbox in outboxes:
            outbox.stopping()
        for outbox in outboxes:
            outbox.stopped()


class WebhooksCollector:
    """The webhooks' counts for the metrics plugin (a ``prometheus_client``
    custom collector, read at scrape time)."""

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        outboxes = self.webhooks.outboxes
        deliveries = CounterMetricFamily(
            "chatcore_webhook_deliveries_total",
            "Events an outgoing webhook delivered (a 2xx answer) or gave up on (to the dead-letter log).",
            labels=["webhook", "result"],
        )
        failed = CounterMetricFamily(
            "chatcore_webhook_failed_attempts_total",
            "Attempts that failed: no answer in time, no connection, or a status other than 2xx.",
            labels=["webhook"],
        )
        retried = CounterMetricFamily(
            "chatcore_webhook_retries_total", "Failed attempts that were retried later.", labels=["webhook"]
        )
        overflowed = CounterMetricFamily(
            "chatcore_webhook_queue_overflows_total",
            "Events dead-lettered at once because the webhook's queue was full.",
            labels=["webhook"],
        )
        depth = GaugeMetricFamily(
            "chatcore_webhook_queue_depth", "Events waiting, waiting for a retry, or in flight.", labels=["webhook"]
        )
        for outbox in outboxes:
            name, counts = outbox.hook.name, outbox.counts
            deliveries.add_metric([name, "delivered"], counts.delivered)
            deliveries.add_metric([name, "dead_lettered"], counts.dead_lettered)
            failed.add_metric([name], counts.failed)
            retried.add_metric([name], counts.retried)
            overflowed.add_metric([name], counts.overflowed)
            depth.add_metric([name], outbox.depth)
        yield from (deliveries, failed, retried, overflowed, depth)
        yield CounterMetricFamily(
            "chatcore_webhook_dead_letters_lost_total",
            "Dead letters that could not be written (the file failed, or too many waited).",
            value=self.webhooks.dead_letters.lost,
        )
        posts = CounterMetricFamily(
            "chatcore_webhook_incoming_posts_total", "Requests an incoming webhook posted.", labels=["webhook"]
        )
        for name, count in sorted(self.webhooks.incoming_posts.items()):
            posts.add_metric([name], count)
        yield posts
