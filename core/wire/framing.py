"""Framing: how whole messages travel in one connection's byte stream.

A layer of its own, below the codec, as Ergo's ``IRCConn`` hides TCP versus
WebSocket below IRC: a protocol reads its client's messages through a
framing, and a wire format frames the messages it renders, so one codec
runs over either kind of stream.

- :class:`LineFraming`: lines ended by LF (CR LF accepted), for the native
  protocol; :class:`CRLFLineFraming` sends CR LF, for IRC.
- :class:`WebSocketFraming`: text messages in WebSocket frames (RFC 6455),
  once the HTTP upgrade is done: the web page's JSON;
  :class:`WebSocketTextLines` and :class:`WebSocketBinaryLines`: one line a
  message, without its ending, for IRC over WebSocket (IRCv3's
  ``text.ircv3.net`` and ``binary.ircv3.net``).

Both sides of a framing:

- **in**, one object per connection (its state is the message half read):
  ``feed(data)`` returns the messages completed by ``data``, in order, and
  :data:`DROPPED` in place of one over the limits, which is dropped whole
  without taking the stream down;
- **out**, stateless and shared: ``frame(messages)`` gives the bytes to send
  for rendered messages (a class method: a wire format calls it once per
  event, for every member).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

#: What ``feed()`` gives in place of a message over the limits.
DROPPED = None


class LineFraming:
    """Lines ended by ``\\n`` (a ``\\r`` before it is dropped), at most
    ``max_line`` bytes each.

    Feed it what ``recv()`` returned; it returns the complete lines and
    keeps at most ``max_line`` bytes of an unfinished one (and a ``\\r``
    after them, which may be the first half of its ending). A line longer
    than the limit is returned as :data:`DROPPED` once, in its place, and
    the rest of it is discarded up to its newline.
    """

    __slots__ = ("_discarding", "_partial", "max_line")

    #: What ends each line sent.
    ending = b"\n"

    def __init__(self, max_line: int) -> None:
        #: The limit, fixed for the connection's life (a reload's new
        #: ``--max-line`` applies to new connections).
        self.max_line = max_line
        self._partial = b""
        self._discarding = False

    @classmethod
    def frame(cls, lines: Iterable[bytes]) -> bytes:
        """``lines`` (without their endings) as the bytes sent."""
        ending = cls.ending
        return b"".join(line + ending for line in lines)

    @property
    def pending(self) -> int:
        """Bytes held while waiting for a newline (never above max_line, and
        max_line + 1 only when the last is a ``\\r``)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes | None]:
        max_line = self.max_line
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
            # A loop, not comprehensions: usually there is one line, and a
            # comprehension is a call of its own before Python 3.12.
            for line in lines:
                whole = line[:-1] if line[-1:] == b"\r" else line
                out.append(whole if len(whole) <= max_line else DROPPED)
        if self._discarding:
            return out
        # A trailing "\r" may be the first half of "\r\n": not counted yet.
        if len(self._partial) + len(tail) > max_line + tail.endswith(b"\r"):
            out.append(DROPPED)
            self._partial = b""
            self._discarding = True
        elif tail:
            self._partial += tail
        return out


class CRLFLineFraming(LineFraming):
    """:class:`LineFraming` that ends the lines it sends with CR LF (IRC)."""

    __slots__ = ()

    ending = b"\r\n"


# -- WebSocket ----------------------------------------------------------------------

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9


def websocket_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, unmasked WebSocket frame (RFC 6455 5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and a reason of at most 120 bytes."""
    return websocket_frame(struct.pack("!H", code) + reason.encode("utf-8")[:120], OP_CLOSE)


#: The ping a server sends a quiet client.
PING_FRAME = websocket_frame(b"chatcore", OP_PING)


class WebSocketFraming:
    """Text messages in WebSocket frames, once the HTTP upgrade is done
    (``ws``: the server side of a ``wsproto`` connection that accepted it).

    ``feed()`` returns each whole text message, decoded; :data:`DROPPED` in
    place of one over ``max_message`` characters or in more than
    ``max_fragments`` frames (counted as they arrive, in linear time, empty
    frames too), and :attr:`why_dropped` says which (:attr:`dropped`: for
    each message dropped by the last ``feed()``). What the framing
    itself must answer (a pong, the closing handshake) collects in
    :attr:`reply`, for the protocol to send; :attr:`closed` says why the
    stream has ended (the client closed it, or broke the framing), after
    which nothing more is read. Binary messages are dropped (``why_dropped``
    says so) unless :attr:`accepts_binary`: every message here is text.
    """

    #: The frames sent: text.
    opcode = OP_TEXT
    #: Whether binary messages are read (as ``bytes``), or dropped.
    accepts_binary = False

    __slots__ = (
        "_held",
        "_held_size",
        "_refused",
        "closed",
        "dropped",
        "max_fragments",
        "max_message",
        "reply",
        "why_dropped",
        "ws",
    )

    def __init__(self, ws: WSConnection, max_message: int, max_fragments: int) -> None:
        self.ws = ws
        self.max_message = max_message
        self.max_fragments = max_fragments
        self.reply = b""
        self.closed: str | None = None
        self.why_dropped = ""
        #: Why each message :meth:`feed` last dropped was, in order.
        self.dropped: list[str] = []
        # The message arriving in pieces, their length in characters (bytes
        # for a binary one), and why it will be dropped when its last piece
        # comes (None: it won't).
        self._held: list[Any] = []
        self._held_size = 0
        self._refused: str | None = None

    @classmethod
    def frame(cls, messages: Iterable[bytes]) -> bytes:
        """Each message (UTF-8 text) in a frame of its own."""
        opcode = cls.opcode
        return b"".join(websocket_frame(message, opcode) for message in messages)

    def feed(self, data: bytes) -> list[Any]:
        """Text messages as ``str`` (binary ones as ``bytes``, where accepted)."""
        out: list[Any] = []
        self.dropped = []
        if self.closed is not None:
            return out
        ws = self.ws
        ws.receive_data(data)
        try:
            for event in ws.events():
                if isinstance(event, TextMessage):
                    self._put(out, self._piece(event.data, event.message_finished))
                elif isinstance(event, BytesMessage):
                    if not self.accepts_binary:
                        if event.message_finished:
                            self.why_dropped = "binary messages are not accepted"
                            self._put(out, DROPPED)
                    else:
                        self._put(out, self._piece(event.data, event.message_finished))
                elif isinstance(event, Ping):
                    self.reply += ws.send(event.response())
                elif isinstance(event, Pong):
                    pass  # an answer to our ping: that the client spoke is what counts
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:  # the client closed: answer it
                        self.reply += ws.send(event.response())
                        self.closed = "connection closed"
                    else:
                        # Bad framing or invalid UTF-8 (wsproto reports it as
                        # a close): the stream cannot be trusted any more, so
                        # fail the connection (RFC 6455 7.1.7).
                        self.reply += close_frame(event.code, "protocol error")
                        self.closed = f"protocol error: {event.reason}"
                    return out
                else:  # a handshake event: cannot happen once the upgrade is done
                    self.closed = "protocol error"
                    return out
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.reply += close_frame(1002, "protocol error")
            self.closed = f"protocol error: {exc}"
        return out

    def _put(self, out: list[Any], message: Any) -> None:
        """A message completed (None: dropped, or not complete yet)."""
        if message is not None:
            out.append(message)
        elif self.why_dropped:
            out.append(DROPPED)
            self.dropped.append(self.why_dropped)

    def _piece(self, part: Any, finished: bool) -> Any:
        """A piece of a message (``str`` for text, ``bytes`` for binary):
        the whole message once its last piece has come and it is within the
        limits; else None (``why_dropped`` set if it was dropped)."""
        self.why_dropped = ""
        limit = self.max_message
        if self._refused is None:
            self._held.append(part)
            # Characters, counted as they arrive (a running count: summing
            # the held pieces on each new one made thousands of empty
            # fragments cost quadratic CPU): at most the limit is held.
            self._held_size += len(part)
            if self._held_size > limit:
                self._refused = f"message too long (the limit is {limit} bytes)"
            elif len(self._held) > self.max_fragments:  # empty pieces count too
                self._refused = f"message in too many frames (the limit is {self.max_fragments})"
            if self._refused is not None:
                self._held = []
        if not finished:
            return None
        refused, self._refused = self._refused, None
        text, self._held, self._held_size = part[:0].join(self._held), [], 0
        size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
        if refused is None and size > limit:
            refused = f"message too long (the limit is {limit} bytes)"
        if refused is not None:
            self.why_dropped = refused
            return None
        return text


class WebSocketTextLines(WebSocketFraming):
    """Lines, one a WebSocket text message, without their endings: IRC over
    WebSocket's ``text.ircv3.net``.

    ``feed()`` gives each line as UTF-8 bytes, as a line framing does, and
    drops binary messages (``why_dropped`` says so). What is framed must be
    UTF-8: text frames may hold nothing else (the IRC codec's
    ``safe_lines`` replaces what is not).
    """

    __slots__ = ()

    def feed(self, data: bytes) -> list[bytes | None]:
        return [message.encode("utf-8") if isinstance(message, str) else message for message in super().feed(data)]


class WebSocketBinaryLines(WebSocketTextLines):
    """Lines, one a WebSocket binary message: ``binary.ircv3.net``, where a
    line's bytes are sent as they are. Text messages are read too."""

    __slots__ = ()

    opcode = OP_BINARY
    accepts_binary = True
