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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatcore.events import (
    Action,
    Chat,
    Error,
    Event,
    Joined,
    Left,
    Members,
    NickChanged,
    Notice,
    PrivateMessage,
    Replay,
    RoomList,
    RoomNotice,
    Welcome,
)
from chatcore.message import Message
from chatcore.wire import Protocol, WireFormat

if TYPE_CHECKING:
    from chatcore.engine.connection import Client

log = logging.getLogger("chatcore.native")

DEFAULT_MAX_LINE = 4096

NOTICE = "* "
ERROR = "! "

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


def sanitize(text: str) -> str:
    """Return ``text`` without anything that could paint on a terminal.

    Removes ANSI escape sequences, C0 and C1 control characters (NUL,
    backspace, bell, lone carriage returns ...), DEL and Unicode line
    separators. A tab becomes a space. Surrounding white space is stripped.
    """
    # Fast path: printable text (nearly every chat line) needs no regex.
    if text.isprintable():
        return text.strip()
    text = _ANSI_ESCAPE.sub("", text)
    text = _CONTROL.sub("", text.replace("\t", " "))
    return text.strip()


def decode(line: bytes) -> str:
    """Decode a received line; invalid UTF-8 becomes U+FFFD, never an error."""
    return line.decode("utf-8", "replace")


class LineFramer:
    """Splits a byte stream into lines of at most ``max_line`` bytes.

    Feed it what ``recv()`` returned; it returns the complete lines (without
    ``\\n`` or a trailing ``\\r``) and keeps at most ``max_line`` bytes of an
    unfinished line. A line longer than the limit is returned as ``None``
    once, in its place, and the rest of it is discarded up to its newline.
    """

    __slots__ = ("_discarding", "_max_line", "_partial")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._max_line = max_line
        self._partial = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held while waiting for a newline (never above max_line)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes | None]:
        max_line = self._max_line
        lines = data.split(b"\n")
        tail = lines.pop()
        out: list[bytes | None] = []
        if lines:
            if self._discarding:
                del lines[0]  # the end of a line already reported as too long
                self._discarding = False
            elif self._partial:
                lines[0] = self._partial + lines[0]
            self._partial = b""
            lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
            out = [line if len(line) <= max_line else None for line in lines]
        if self._discarding:
            return out
        # A trailing "\r" may be the first half of "\r\n": not counted yet.
        if len(self._partial) + len(tail) > max_line + tail.endswith(b"\r"):
            out.append(None)
            self._partial = b""
            self._discarding = True
        elif tail:
            self._partial += tail
        return out


#: The mark of a replayed (history) line.
REPLAY = "# "


def _left(event: Left) -> str:
    reason = event.shown_reason
    return f"{NOTICE}{event.nick} left" + (f" ({reason})" if reason else "")


def _private(event: PrivateMessage) -> str:
    if event.echo:
        return f"-> *{event.recipient}* {event.text}"
    return f"*{event.sender}* {event.text}"


def _rooms(event: RoomList) -> str:
    count = len(event.rooms)
    listing = ", ".join(f"{name} ({members})" for name, members in event.rooms)
    return f"{NOTICE}{count} {'room' if count == 1 else 'rooms'}: {listing}"


# One text line per event type (without its newline).
_LINES: dict[type[Event], Callable[[Any], str]] = {
    Chat: lambda e: f"<{e.nick}> {e.text}",
    Action: lambda e: f"{NOTICE}{e.nick} {e.text}",
    Joined: lambda e: f"{NOTICE}{e.nick} joined",
    Left: _left,
    NickChanged: lambda e: f"{NOTICE}{e.nick} is now known as {e.new_nick}",
    RoomNotice: lambda e: NOTICE + e.text,
    Notice: lambda e: NOTICE + e.text,
    Error: lambda e: ERROR + e.text,
    PrivateMessage: _private,
    Members: lambda e: f"{NOTICE}in {e.room} ({len(e.nicks)}): {', '.join(e.nicks)}",
    RoomList: _rooms,
}


def event_line(event: Event) -> str | None:
    """The native text line for an event (without its newline), or None for
    an event this protocol does not show as one line."""
    render = _LINES.get(type(event))
    return None if render is None else render(event)


class NativeFormat(WireFormat):
    """Events as the native protocol's text lines (docs/protocol.md)."""

    name = "native"

    def encode(self, event: Event) -> bytes:  # every event, room or not
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
        return self.encode(event)

    @staticmethod
    def _replay(event: Replay) -> bytes:
        lines = [REPLAY + line for line in map(event_line, event.events) if line is not None]
        if not lines:
            return b""
        header = f"{NOTICE}last {len(lines)} {'message' if len(lines) == 1 else 'messages'} in {event.room}:"
        return "".join(f"{line}\n" for line in (header, *lines)).encode("utf-8")


#: The one instance every native connection shares.
NATIVE = NativeFormat()


class NativeProtocol(Protocol):
    """A native client: enters the chat at once, then each line is a command
    (``/name args``) or a message to its room (``//text`` sends ``/text``)."""

    __slots__ = ("_framer",)

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._framer = LineFramer(client.server.max_line)

    def data_received(self, data: bytes) -> None:
        client = self.client
        for line in self._framer.feed(data):
            if client.closed:  # disconnected (by this line, or another thread)
                return
            if line is None:
                client.error(f"line too long (the limit is {client.server.max_line} bytes); it was not sent")
            else:
                self.handle_line(line)

    def connection_lost(self) -> None:
        if self._framer.pending:
            log.debug("%r closed the connection in the middle of a line", self.client)

    def handle_line(self, raw: bytes) -> None:
        """One complete line from the client: a command or a message."""
        text = sanitize(decode(raw))
        if not text:
            return
        client = self.client
        if text[0] == "/":
            if text[:2] != "//":
                name, _, args = text[1:].partition(" ")
                client.server.run_command(client, name.lower(), args.strip())
                return
            text = text[1:]  # "//text" sends "/text" as a message
        client.server.broadcast_message(Message(client, client.room, text))
