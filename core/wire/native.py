"""The native line protocol: framing, sanitising, and events as text lines.

docs/protocol.md is the reference; this module is its implementation. Every
line is UTF-8 text ended by ``\\n`` (``\\r\\n`` is accepted). Lines from the
server start with:

- ``<nick> `` chat, ``* `` notices and actions, ``! `` errors for one client.

:class:`NativeFormat` renders events (:data:`NATIVE` is the shared instance);
:class:`NativeProtocol` turns a client's lines into commands and messages.
Both are registered for ``tcp://`` and ``tls://`` by the bundled ``native``
plugin.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

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
    Replay,
    RoomEvent,
    RoomList,
    RoomNotice,
    TopicChanged,
    Welcome,
)
from chatcore.message import Message
from chatcore.names import nick_problem
from chatcore.wire import Protocol, WireFormat
from chatcore.wire.framing import LineFraming

if TYPE_CHECKING:
    from chatcore.engine.connection import Client

log = logging.getLogger("chatcore.native")

DEFAULT_MAX_LINE = 4096

NOTICE = "* "
ERROR = "! "

#: What a client that has not given the server password is told.
PASSWORD_REQUIRED = (
    "password required: send /pass PASSWORD first (chatcore client: --password-file FILE or CHATCORE_PASSWORD)"
)
#: What a client in no room is told when it says something.
NO_ROOM = "you are in no room, so nobody hears you: /join ROOM first (/rooms lists them)"
#: What a client that gave a wrong server password is told.
WRONG_PASSWORD = "wrong password; try /pass PASSWORD again"


def logged_in_text(account: str) -> str:
    """What a client is told once it is logged in to ``account`` (``/login``,
    or a first line that logs in: the terminal client waits for it)."""
    return f"you are logged in to {account}"


#: Seconds a connection to a server without a password waits for its first
#: line before it enters the chat under a guest name. A client that knows
#: its name sends ``/nick NAME`` (or ``/login ACCOUNT PASSWORD``) as soon as
#: it is connected (the terminal client does), and its bytes follow its side of the TCP handshake at
#: once, so they are usually here before the server looks; the wait ends
#: as they come. Someone on ``nc`` who says nothing is welcomed this much
#: later, and a connect storm is as much longer (docs/protocol.md).
ARRIVAL_WAIT = 0.05

# Escape sequences (CSI, OSC, and two-byte ESC forms) go whole, so that no
# leftover "[31m" is shown; then every other C0/C1 control character, DEL,
# and the Unicode line and paragraph separators go one by one.
_ANSI_ESCAPE = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]          # CSI ... final byte
    | \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?  # OSC ... BEL or ST
    | \x1b[PX^_][^\x1b]*(?:\x1b\\)?  # DCS, SOS, PM, APC ... ST
    | \x1b[ -/]*[0-~]?               # other ESC sequences
    | \x9b[0-?]*[ -/]*[@-~]          # 8-bit CSI
    """,
    re.VERBOSE,
)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


# Invisible characters that are not format characters (category Cf), so the
# Cf rule below misses them: Hangul fillers, used for "blank" names and text.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
_PRINTABLE_INVISIBLE = re.compile("[\u115f\u1160\u3164\uffa0]")
_ZWNJ, _ZWJ = "\u200c", "\u200d"
_BLACK_FLAG = "\U0001f3f4"


def _is_letter(char: str) -> bool:
    return unicodedata.category(char)[0] in "LM"


def _is_emoji(char: str) -> bool:
    # Close enough for joiners: the pictographic blocks, the emoji
    # presentation selector and the skin-tone modifiers (in U+1F3FB..).
    code = ord(char)
    return code >= 0x1F000 or 0x2300 <= code <= 0x2BFF or char == "\ufe0f"


def _strip_invisible(text: str) -> str:
    """Remove format characters (Unicode category Cf) and invisible fillers.

    Defends against Trojan Source (CVE-2021-42574): the Bidi_Control
    characters (U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069)
    make text display in another order than it is read, and zero-width
    characters (U+200B, U+2060, U+FEFF, U+00AD ...) hide text or make two
    names look alike. Stripped, not balanced: Arabic and Hebrew are shown
    right-to-left by the bidi algorithm from their letters alone, so they
    read right without the controls, and stripping is idempotent.

    Kept, where they mean something: the zero-width joiner and non-joiner
    between two letters not both ASCII (Persian, Indic scripts) and the joiner between two
    emoji (family and profession sequences), and the tag characters of a
    flag after U+1F3F4 (Scotland, Wales).
    """
    out: list[str] = []
    last = len(text) - 1
    for index, char in enumerate(text):
        if char not in _INVISIBLE_LETTERS and unicodedata.category(char) != "Cf":
            out.append(char)
            continue
        before = out[-1] if out else ""
        after = text[index + 1] if index < last else ""
        if char in (_ZWJ, _ZWNJ) and before and after:
            # Letters: of a script that needs joiners, not "da<ZWJ>mn" in ASCII.
            letters = _is_letter(before) and _is_letter(after) and not (before.isascii() and after.isascii())
            if letters or (char == _ZWJ and _is_emoji(before) and _is_emoji(after)):
                out.append(char)
        elif 0xE0020 <= ord(char) <= 0xE007F and (before == _BLACK_FLAG or 0xE0020 <= ord(before or " ") <= 0xE007E):
            out.append(char)
    return "".join(out)


def sanitize(text: str) -> str:
    """Return ``text`` without anything that could paint on a terminal or
    hide or reorder what others see.

    Removes ANSI escape sequences, C0 and C1 control characters (NUL,
    backspace, bell, lone carriage returns ...), DEL, Unicode line
    separators, and invisible and bidirectional format characters (see
    :func:`_strip_invisible`). A tab becomes a space. Surrounding white
    space is stripped.
    """
    # Fast path: printable text (nearly every chat line) needs no regex.
    # Format characters are not printable, so they take the slow path.
    if text.isprintable() and (text.isascii() or not _PRINTABLE_INVISIBLE.search(text)):
        return text.strip()
    text = _ANSI_ESCAPE.sub("", text)
    text = _CONTROL.sub("", text.replace("\t", " "))
    return _strip_invisible(text).strip()


def decode(line: bytes) -> str:
    """Decode a received line; invalid UTF-8 becomes U+FFFD, never an error."""
    return line.decode("utf-8", "replace")


#: The mark of a replayed (history) line.
REPLAY = "# "


def _left(event: Left) -> str:
    reason = event.shown_reason
    return f"{NOTICE}{event.nick} left" + (f" ({reason})" if reason else "")


def _left_room(event: Left) -> str:
    if event.kicked_by and not event.disconnected:  # out of this room only
        return f"{NOTICE}{event.nick} was kicked out by {event.kicked_by}" + (
            f" ({event.reason})" if event.reason and event.reason != event.kicked_by else ""
        )
    return _left(event)


def _modes(event: ModeChanged) -> str:
    return f"{NOTICE}{event.nick} set mode {' '.join((event.modes, *event.arguments))}"


def _topic(event: TopicChanged) -> str:
    if not event.topic:
        return f"{NOTICE}{event.nick} cleared the topic"
    return f"{NOTICE}{event.nick} set the topic: {event.topic}"


def own_room_notice(client: Client, event: Event) -> list[str] | None:
    """The notices for a client's own join, part or kick out of a room
    (the engine sends it the event alone), or None for any other event:
    ``you are now in dev (3 here)`` and the topic, ``you left dev; you now
    talk in lobby``, ``you were kicked out of dev by alice (spam)``."""
    if isinstance(event, Joined) and event.nick == client.nick:
        room = event.room
        lines = [f"you are now in {room} ({len(client.server.nicks_in(room))} here)"]
        state = client.server.rooms.get(room)
        if state is not None and state.topic:
            lines.append(f"topic: {state.topic} (set by {state.topic_by})")
        return lines
    if isinstance(event, Left) and event.nick == client.nick and not event.disconnected:
        if event.kicked_by:
            why = f" ({event.reason})" if event.reason and event.reason != event.kicked_by else ""
            return [f"you were kicked out of {event.room} by {event.kicked_by}{why}"]
        where = f"you now talk in {client.room}" if client.room else "/join ROOM to enter another"
        return [f"you left {event.room}; {where}"]
    return None


def _private(event: PrivateMessage) -> str:
    if event.echo:
        return f"-> *{event.recipient}* {event.text}"
    return f"*{event.sender}* {event.text}"


def _rooms(event: RoomList) -> str:
    count = len(event.rooms)

    def entry(name: str, members: int) -> str:
        mark = ", current" if name == event.current else ", joined" if name in event.joined else ""
        return f"{name} ({members}{mark})"

    listing = ", ".join(entry(name, members) for name, members in event.rooms)
    return f"{NOTICE}{count} {'room' if count == 1 else 'rooms'}: {listing}"


# One text line per event type (without its newline).
_LINES: dict[type[Event], Callable[[Any], str]] = {
    Chat: lambda e: f"<{e.nick}> {e.text}",
    Action: lambda e: f"{NOTICE}{e.nick} {e.text}",
    Joined: lambda e: f"{NOTICE}{e.nick} joined",
    Left: _left_room,
    TopicChanged: _topic,
    ModeChanged: _modes,
    Invited: lambda e: f"{NOTICE}{e.by} invites you to {e.room}: /join {e.room}",
    NickChanged: lambda e: f"{NOTICE}{e.nick} is now known as {e.new_nick}",
    RoomNotice: lambda e: NOTICE + e.text,
    Notice: lambda e: NOTICE + e.text,
    Error: lambda e: ERROR + e.text,
    Disconnected: lambda e: f"{ERROR}disconnected: {e.reason}",
    PrivateMessage: _private,
    Members: lambda e: (
        f"{NOTICE}in {e.room} ({len(e.nicks)}): {', '.join(e.nicks)}" if e.nicks else f"{NOTICE}nobody is in {e.room}"
    ),
    RoomList: _rooms,
}


def event_line(event: Event) -> str | None:
    """The native text line for an event (without its newline), or None for
    an event this protocol does not show as one line."""
    render = _LINES.get(type(event))
    return None if render is None else render(event)


class NativeFormat(WireFormat):
    """Events as the native protocol's text lines (docs/protocol.md).

    A client in one room sees the lines as they are; a client in several
    sees each room line after its room's name in brackets (``[dev] <bob>
    hi``): that is the ``labelled`` variant, whose feeds the registry
    attaches such a client to (:meth:`variant`).
    """

    name = "native"

    def __init__(self, *, labelled: bool = False) -> None:
        self.labelled = labelled

    def variant(self, rooms: int) -> NativeFormat:
        return NATIVE_IN_ROOMS if rooms > 1 else NATIVE

    def encode(self, event: Event) -> bytes:  # every event, room or not
        if self.labelled and isinstance(event, RoomEvent):
            line = event_line(event)
            return b"" if line is None else f"[{event.room}] {line}\n".encode()
        if type(event) is Chat:  # nearly every event: skip the table
            return f"<{event.nick}> {event.text}\n".encode()
        render = _LINES.get(type(event))
        if render is not None:
            return (render(event) + "\n").encode("utf-8")
        if isinstance(event, Welcome):
            return "".join(f"{NOTICE}{line}\n" for line in event.lines).encode("utf-8")
        if isinstance(event, Replay):
            return self._replay(event)
        return b""  # an event type this protocol does not show

    def encode_for(self, client: Client, event: Event) -> bytes:
        own = own_room_notice(client, event)
        if own is not None:
            return "".join(f"{NOTICE}{line}\n" for line in own).encode()
        return self.encode(event)

    def _replay(self, event: Replay) -> bytes:
        lines = [self._replayed(old, line) for old in event.events if (line := event_line(old)) is not None]
        if not lines:
            return b""
        header = f"{NOTICE}last {len(lines)} {'message' if len(lines) == 1 else 'messages'} in {event.room}:"
        return "".join(f"{line}\n" for line in (header, *lines)).encode("utf-8")

    @staticmethod
    def _replayed(event: RoomEvent, line: str) -> str:
        """A replayed event's line (``# <alice> hi``)."""
        return REPLAY + line

    def with_timestamps(self, on: bool) -> NativeFormat:
        """The format for a client that asked for timestamps (``/timestamps
        on``), or not: :data:`NATIVE_TIMED` or :data:`NATIVE`."""
        return NATIVE_TIMED if on else NATIVE


def line_stamp(seconds: float) -> str:
    """A timestamped native line's prefix: ``[2026-12-06T23:59:01Z] ``, UTC."""
    return time.strftime("[%Y-%m-%dT%H:%M:%SZ] ", time.gmtime(seconds))


class TimedNativeFormat(NativeFormat):
    """The native lines with the time each was said before it
    (``[2026-12-06T23:59:01Z] <bob> hi``): room events at their own time
    (the same on every server of a cluster, and for replayed or delayed
    lines), a private message at the time it arrives. What a client asked
    for with ``/timestamps on`` (the ``commands`` plugin): a format of its
    own, so a room's event is rendered once for all who want times, and
    the plain format is untouched."""

    def variant(self, rooms: int) -> NativeFormat:
        return NATIVE_TIMED_IN_ROOMS if rooms > 1 else NATIVE_TIMED

    def encode(self, event: Event) -> bytes:
        data = super().encode(event)
        if not data or not isinstance(event, (RoomEvent, PrivateMessage)):
            return data
        stamp = line_stamp(event.time if isinstance(event, RoomEvent) and event.time else time.time()).encode()
        return b"".join(stamp + line for line in data.splitlines(keepends=True))

    @staticmethod
    def _replayed(event: RoomEvent, line: str) -> str:
        return line_stamp(event.time) + REPLAY + line if event.time else REPLAY + line


#: The one instance every native connection shares.
NATIVE = NativeFormat()
#: Its variant for clients in several rooms (:meth:`NativeFormat.variant`).
NATIVE_IN_ROOMS = NativeFormat(labelled=True)
#: The formats for clients that asked for timestamps (:class:`TimedNativeFormat`).
NATIVE_TIMED = TimedNativeFormat()
NATIVE_TIMED_IN_ROOMS = TimedNativeFormat(labelled=True)


class NativeProtocol(Protocol):
    """A native client: enters the chat at once (under the name its first
    line gives, if it is ``/nick NAME`` or ``/login ACCOUNT PASSWORD`` and
    comes within :data:`ARRIVAL_WAIT`: :func:`arrive`), then each line is a command (``/name args``) or a
    message to its room (``//text`` sends ``/text``)."""

    __slots__ = ("_arriving", "_framer")

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._framer = LineFraming(client.server.max_line)
        #: Whether the client has not entered yet, and its first bytes
        #: will decide its name (data_received), if they come within
        #: ARRIVAL_WAIT.
        self._arriving = False

    def connection_made(self) -> None:
        # With a password, the client enters once it gives it (/pass), under
        # the name a /nick before it offered. Without one it enters at once:
        # with its first bytes, if they come within ARRIVAL_WAIT, so that a
        # client that knows its name is never seen under a guest name.
        client = self.client
        if client.server.gate.password_required:
            self._enter()
        else:
            self._arriving = True
            client.on_silence(ARRIVAL_WAIT, self._silent)

    def _silent(self) -> None:
        """Nothing came within ARRIVAL_WAIT: in under a guest name."""
        if self._arriving:
            self._arriving = False
            self._enter()

    def _enter(self) -> None:
        client = self.client
        if client.server.log_in(client) is not None:  # a password is wanted (a reload may ask for one)
            client.error(PASSWORD_REQUIRED)

    def data_received(self, data: bytes) -> None:
        client = self.client
        lines = self._framer.feed(data)
        if self._arriving:
            lines = self._arrive(lines)
        if len(lines) > 1 and client._pace is False and client.admitted:
            self._chat_together(lines)
            return
        for line in lines:
            if client.closed:  # disconnected (by this line, or another thread)
                return
            if line is None:
                client.error(self._too_long())
            else:
                self.handle_line(line)

    def _chat_together(self, lines: list[bytes | None]) -> None:
        """Several lines of one read (:func:`say_together`); a line too long
        is answered in its place."""
        client = self.client

        def typed() -> Iterator[str | Callable[[], None]]:
            for line in lines:
                if line is None:
                    yield lambda: client.error(self._too_long())
                elif text := sanitize(line.decode("utf-8", "replace")):
                    yield text

        say_together(client, typed())

    def _arrive(self, lines: list[bytes | None]) -> list[bytes | None]:
        """Enter the chat with the first bytes the client sent (:func:`arrive`
        with their first line, if they hold a whole one); returns the lines
        still to handle."""
        self._arriving = False
        first = sanitize(lines[0].decode("utf-8", "replace")) if lines and lines[0] is not None else ""
        return lines[1:] if arrive(self.client, first) else lines

    def _too_long(self) -> str:
        # The limit this connection's framer has: a reload may have changed
        # the server's since it connected.
        return f"line too long (the limit is {self._framer.max_line} bytes); it was not sent"

    def connection_lost(self) -> None:
        if self._framer.pending:
            log.debug("%r closed the connection in the middle of a line", self.client)

    def handle_line(self, raw: bytes) -> None:
        """One complete line from the client: a command or a message."""
        text = sanitize(raw.decode("utf-8", "replace"))  # decode(), inline: once per line
        if text:
            handle_text(self.client, text)


def arrive(client: Client, first: str, *, room: str | None = None) -> bool:
    """Let a connection that has not entered the chat yet in with its first
    line of text ``first`` (sanitised; ``""`` for none): the one arrival of
    every front-end whose users type lines (the native protocol, the web
    page and the WebSocket's JSON).

    The name it enters under is the one that line gives: ``/nick NAME``, or
    ``/login ACCOUNT PASSWORD`` on a server with accounts (the account's
    name, once the login succeeds; a login as IRC's SASL before
    registration is, through the account service). Anything else, or a
    name that cannot be had, enters under a guest name.

    The line is answered as the command always is, after the welcome (``you
    are now known as NAME``, ``you are logged in to ACCOUNT``, or the
    error, the client then being in under a guest name): a script that waits
    for the answer works the same whether its line came in time or not.
    Only the room sees the difference: one join under the name, and no
    rename. The line is never passed to a plugin (a login holds a password).

    :param room: where the client enters (:func:`handle_text`'s ``login_room``).
    :return: True if ``first`` was the name's line and is answered; False
        if it is still to be handled as an ordinary line (or, if the server
        wants its password now, after a reload, kept for ``/pass``).
    """
    server = client.server
    if server.gate.password_required:  # a reload asked for one since: no login before it
        client.error(PASSWORD_REQUIRED)
        return False
    name, _, args = first.partition(" ")
    command = name.lower()
    if command == "/nick" and (nick := args.strip()):
        problem = nick_problem(nick)
        if problem is None and server.log_in(client, nick=nick, room=room) is None:
            client.notice(f"you are now known as {nick}")
            return True
        server.log_in(client, room=room)
        client.error(problem or f"nickname {nick!r} is taken")
        return True
    words = args.split()
    accounts = server.accounts
    if command == "/login" and len(words) == 2 and accounts is not None:
        refusal = accounts.log_in(client, words[0], words[1])
        if client.closed:  # too many failures
            return True
        account = client.account
        if refusal is None and nick_problem(account) is None and server.log_in(client, nick=account, room=room) is None:
            client.notice(logged_in_text(account))
            return True
        server.log_in(client, room=room)
        if refusal is not None:
            client.error(refusal.text)
        else:
            client.notice(logged_in_text(account))
            client.error(f"nickname {account!r} is taken")
        return True
    server.log_in(client, room=room)
    return False


def say_together(client: Client, typed: Iterable[str | Callable[[], None]]) -> None:
    """What a client in the chat that is not paced (``--limit-exempt``, or
    no flood control) typed, from one read, in order: each run of chat
    goes to the room together
    (:meth:`~chatcore.engine.server.ChatServer.broadcast_messages`), and a
    command, or an item that is not text (a callable: an error to tell, a
    request of another kind), ends the run and is handled in its place, so
    everything keeps its order. A busy sender's lines arrive many to a
    read, and a room's members then cost once per read, not once per line.

    :param typed: texts already sanitised and not empty, as
        :func:`handle_text` takes them, or callables.
    """
    server = client.server
    run: list[Message] = []
    for item in typed:
        if client.closed:  # disconnected (by an item, or another thread)
            break
        if not isinstance(item, str):
            if run:
                server.broadcast_messages(run)
                run = []
            item()
            continue
        text = item
        if text[0] == "/":
            if text[:2] != "//":
                if run:
                    server.broadcast_messages(run)
                    run = []
                handle_text(client, text)
                continue
            text = text[1:]  # "//text" sends "/text" as a message
        if not client.room:
            client.error(NO_ROOM)
            continue
        run.append(Message(client, client.room, text))
    if run:  # read before any close: said, as it would have been line by line
        server.broadcast_messages(run)


def handle_text(client: Client, text: str, *, login_room: str | None = None) -> None:
    """A line of text typed by a user, already sanitised and not empty: a
    command (``/name args``) or chat (``//text`` sends ``/text``).

    The one path for every front-end whose users type lines (the native
    protocol, the web page): flood control, the server password, commands
    and messages behave the same whichever way the line came in.

    :param login_room: where the client enters once ``/pass`` lets it in:
        the default room (None) or no room (``""``, the web page's
        connections that enter rooms only once they have a nickname).
    """
    if client._pace is not False:  # False: exempt from flood control, decided at its first line
        client.server.pace(client)  # flood control: may wait, on this client's thread
    if client.closed:
        return
    if not client.admitted:
        _before_login(client, text, login_room)
        return
    if text[0] == "/":
        if text[:2] != "//":
            name, _, args = text[1:].partition(" ")
            client.server.run_command(client, name.lower(), args.strip())
            return
        text = text[1:]  # "//text" sends "/text" as a message
    if not client.room:
        client.error(NO_ROOM)
        return
    client.server.broadcast_message(Message(client, client.room, text))


def _before_login(client: Client, text: str, room: str | None = None) -> None:
    """Until the server password is given: only /pass, /nick (the name to
    enter under, so that the room never sees a guest name first) and /quit.
    The line is not passed to any plugin (it holds the password)."""
    name, _, args = text[1:].partition(" ") if text[0] == "/" else ("", "", "")
    name = name.lower()
    server = client.server
    if name == "pass":
        password, nick = args.strip(), client.offered_nick or None
        refusal = server.log_in(client, password=password, nick=nick, room=room)
        if refusal is not None and refusal.reason == "nick_taken" and not client.closed:
            client.error(f"nickname {nick!r} is taken: you enter under a guest name (/nick NAME to choose another)")
            refusal = server.log_in(client, password=password, room=room)
        if refusal is not None and not client.closed:
            client.error(WRONG_PASSWORD)
    elif name == "nick":
        nick = args.strip()
        if (problem := nick_problem(nick)) is not None:
            client.error(problem)
        else:
            client.offered_nick = nick
            client.notice(f"you will enter as {nick} once the password is given")
    elif name == "quit":
        client.disconnect(args.strip() or "quit", notice="goodbye")
    else:
        client.error(PASSWORD_REQUIRED)
