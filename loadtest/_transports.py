"""How a simulated user reaches a server and speaks chat there: chosen by
the host URL's scheme.

=========  ===========================================================
scheme     transport and dialect
=========  ===========================================================
tcp://     the native line protocol over TCP
tls://     the native line protocol over TLS
irc://     IRC (the ``irc`` plugin): NICK/USER, JOIN #room, PRIVMSG
ircs://    the same over TLS
ws://      WebSocket (the ``web`` plugin) and its JSON messages
wss://     the same over TLS
=========  ===========================================================

A :class:`Transport` opens a connected, gevent-friendly socket (TCP, then
TLS for the ``tls`` ones, verified with ``--ca`` or not at all with
``--insecure``); its :attr:`Transport.dialect` is what is said over it: how
to enter the chat, take a nickname, join a room, send a line of chat, and
find the load-test messages in what arrives. Every dialect hands the same
load-test payload (``SENDER SEQ SENT_US xxx...``) to :mod:`_chatclient`, so
the loss checks do not care which protocol a message came in by: a native
user counts what an IRC or web user sent, and the other way round.

Adding a scheme is one small class registered in :data:`TRANSPORTS` (and a
:class:`Dialect` if the protocol words chat differently).
"""

from __future__ import annotations

import contextlib
import json
import math
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent.lock
from gevent import socket, ssl
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Pong, RejectConnection, Request, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECV_SIZE = 65536


class ChatError(Exception):
    """The server answered something unexpected, or the connection failed."""


@dataclass(frozen=True)
class Endpoint:
    """One server of the run, as given in ``--host`` or ``--chat-hosts``."""

    url: str
    scheme: str
    host: str
    port: int


# -- dialects: what is said over a connection ----------------------------------


class Dialect:
    """The native line protocol (``chatcore client``'s): the base of every dialect.

    Setup (:meth:`enter`, :meth:`set_nick`, :meth:`join`) runs in the user's
    greenlet and reads the replies itself; then :meth:`received` is given
    what the receive greenlet reads and returns the load-test payloads in it
    (the text after ``~lt``), noting on the way :attr:`farewell` (the server
    said it cut the connection off) and :attr:`corrupt` (frames that cannot
    be read at all, and load-test lines that arrived in another room than
    the one they were sent to). Whatever arrived during setup and was not a
    reply is kept and handed over by the first ``received(b"")``.

    A connection may be in several rooms (``--rooms-per-user``):
    :meth:`join` enters one more, :meth:`part` leaves one, :meth:`chat`
    says a line in a given room. Each payload's sender field ends in
    ``#ROOM``, the room it was sent to; :meth:`routed` checks it against the
    room the line arrived in, as the server said it (the native ``[room] ``
    label, the IRC channel, the WebSocket message's ``room``).
    """

    #: True when :meth:`enter` already gave the connection its nickname
    #: (IRC registers with one): then there is no ``nick`` step.
    names_at_entry: ClassVar[bool] = False
    #: Where a load-test payload starts in a line (after ``<nick> ~lt ``).
    MARK: ClassVar[bytes] = b"> ~lt "

    def __init__(self, sock: Any, endpoint: Endpoint, timeout: float) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.timeout = timeout
        #: The rooms the connection is in, in the order joined, and the one
        #: its plain lines go to (native and web).
        self.rooms: list[str] = []
        self.current = ""
        #: Set when the server said it is closing the connection.
        self.farewell: str | None = None
        #: What could not be read (a frame that is not JSON ...), to report as corrupted.
        self.corrupt: list[str] = []
        self._buffer = b""
        # The receive greenlet answers pings (IRC, WebSocket) while the
        # user's greenlet sends: one whole frame or line at a time.
        self._send_lock = gevent.lock.Semaphore()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def readline(self) -> str:
        """The next line from the server (setup only)."""
        while b"\n" not in self._buffer:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ChatError("connection closed by the server")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    # -- setup ----------------------------------------------------------------

    def enter(self, nick: str) -> str:
        """Wait until the server lets the connection into the chat; return
        its welcome. ``nick`` is for dialects that register with one."""
        first = self.readline()
        if first.startswith("! "):
            raise ChatError(f"refused: {first[2:]}")
        self.rooms, self.current = ["lobby"], "lobby"  # where the server puts a native client
        return first

    def command(self, line: str, reply_prefix: str) -> str:
        """Send a command; return the first reply that starts with
        ``reply_prefix`` (lines in between are skipped). An error reply
        (``! ...``) raises :class:`ChatError`."""
        self.send(line.encode("utf-8") + b"\n")
        while True:
            reply = self.readline()
            if reply.startswith(reply_prefix):
                return reply
            if reply.startswith("! "):
                raise ChatError(f"{line.split(maxsplit=1)[0]}: {reply[2:]}")

    def set_nick(self, nick: str) -> None:
        self.command(f"/nick {nick}", "* you are")

    def join(self, room: str) -> None:
        """Enter ``room`` (staying in the others) and make it current."""
        if room in self.rooms:
            return
        self.command(f"/join {room}", f"* you are now in {room} ")
        self.rooms.append(room)
        self.current = room

    def part(self, room: str) -> None:
        """Leave ``room``; the server makes the room joined last current."""
        if room not in self.rooms:
            return
        self.command(f"/part {room}", f"* you left {room}")
        self.rooms.remove(room)
        self.current = self.rooms[-1] if self.rooms else ""

    def routed(self, room: bytes, payload: bytes) -> bool:
        """Whether ``payload`` arrived in the room it was sent to (its
        sender field ends in ``#ROOM``); if not, it is noted as corrupted.
        A sender field without a room (another version's load) is not checked."""
        sender = payload[: payload.find(b" ")]
        at = sender.rfind(b"#")
        if at < 0 or sender[at + 1 :] == room:
            return True
        self.corrupt.append(
            f"{sender[:at].decode('utf-8', 'replace')}: sent to {sender[at + 1 :].decode('utf-8', 'replace')}, "
            f"arrived in {room.decode('utf-8', 'replace')}"
        )
        return False

    # -- running ----------------------------------------------------------------

    def chat(self, text: str, room: str) -> int:
        """Say ``text`` in ``room`` (one the connection is in); return the
        bytes sent. Plain lines go to the current room: another room is
        made current first (``/join`` of a room one is in), in the same write."""
        data = text.encode("utf-8") + b"\n"
        if room != self.current:
            data = f"/join {room}\n".encode() + data
            self.current = room
        self.send(data)
        return len(data)

    def received(self, data: bytes) -> list[bytes]:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        mark = self.MARK
        # In one room, its lines come unlabelled; in several, after "[room] ".
        only = self.rooms[0].encode() if len(self.rooms) == 1 else b""
        payloads = []
        for line in lines:
            start = line.find(mark)
            if start >= 0:
                payload = line[start + len(mark) :]
                if line[:1] == b"[":
                    room = line[1 : line.find(b"] ")]
                elif only:
                    room = only
                else:  # unlabelled in several rooms: not a room's line (a private message?)
                    payloads.append(payload)
                    continue
                if self.routed(room, payload):
                    payloads.append(payload)
            elif line.startswith(b"! disconnected"):
                self.farewell = line.decode("utf-8", "replace")
        return payloads

    def leave(self) -> None:
        """Say goodbye (the connection may be gone already)."""
        try:
            self.send(b"/quit\n")
        except OSError:
            pass


class IrcDialect(Dialect):
    """IRC as the ``irc`` plugin speaks it (docs/irc.md): register with
    NICK and USER and join ``#lobby``, ``JOIN #room`` and ``PART #room``
    (a connection may be in several channels), ``PRIVMSG #room :text``;
    a ``PING`` is answered with ``PONG``, ``ERROR`` is the server's last word.

    Chat longer than fits a 512-byte IRC line reaches IRC users split over
    several ``PRIVMSG`` lines: the first carries the load-test header and is
    counted, the rest (padding only) is not a load-test message.
    """

    names_at_entry = True
    MARK = b" :~lt "

    def enter(self, nick: str) -> str:
        self.send(f"NICK {nick}\r\nUSER {nick} 0 * :chatcore load test\r\nJOIN #lobby\r\n".encode())
        welcome = ""
        # Registered and in #lobby once the names of its JOIN have come (366).
        for command, params in self._replies("NICK/USER"):
            if command == "001":
                welcome = params
            elif command == "366":
                break
        self.rooms, self.current = ["lobby"], "lobby"
        return welcome

    def set_nick(self, nick: str) -> None:
        raise NotImplementedError("IRC registers with its nickname (names_at_entry)")

    def join(self, room: str) -> None:
        if room in self.rooms:
            return  # JOIN of a channel you are in is answered with nothing
        self.send(f"JOIN #{room}\r\n".encode())
        for command, params in self._replies(f"JOIN #{room}"):
            if command == "366" and f" #{room} " in f" {params} ":
                break
        self.rooms.append(room)
        self.current = room

    def part(self, room: str) -> None:
        if room not in self.rooms:
            return
        self.send(f"PART #{room}\r\n".encode())
        for command, params in self._replies(f"PART #{room}"):
            if command == "PART" and params.split()[0] == f"#{room}":
                break
        self.rooms.remove(room)
        self.current = self.rooms[-1] if self.rooms else ""

    def _replies(self, what: str) -> Iterator[tuple[str, str]]:
        """(command, parameters) of each line from the server; a numeric
        error (4xx, 5xx; but 422, no MOTD, is normal) or ``ERROR`` raises
        :class:`ChatError`."""
        while True:
            line = self.readline()
            if line.startswith(":"):
                line = line.partition(" ")[2]
            command, _, params = line.partition(" ")
            if command == "PING":
                self.send(f"PONG {params}\r\n".encode())
            elif command == "ERROR" or (command[:1] in ("4", "5") and command.isdigit() and command != "422"):
                raise ChatError(f"{what}: {line}")
            else:
                yield command, params

    def chat(self, text: str, room: str) -> int:
        data = f"PRIVMSG #{room} :{text}\r\n".encode()
        self.send(data)
        return len(data)

    def received(self, data: bytes) -> list[bytes]:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        mark = self.MARK
        payloads = []
        for line in lines:
            start = line.find(mark)
            if start >= 0:
                payload = line[start + len(mark) :].rstrip(b"\r")
                # ":nick!user@host PRIVMSG #room :~lt ...": the channel is the room.
                channel = line.find(b" #", 0, start)
                if channel < 0 or self.routed(line[channel + 2 : start], payload):
                    payloads.append(payload)
            elif line.startswith(b"PING "):
                self.send(b"PONG " + line[5:].rstrip(b"\r") + b"\r\n")
            elif line.startswith(b"ERROR "):
                self.farewell = line.decode("utf-8", "replace").rstrip("\r")
        return payloads

    def leave(self) -> None:
        try:
            self.send(b"QUIT :load test done\r\n")
        except OSError:
            pass


#: What precedes a chat message's room in the server's JSON.
ROOM_FIELD = b'"room":"'
#: WebSocket opcodes (RFC 6455 5.2) of the frames a server sends.
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketDialect(Dialect):
    """The web plugin's WebSocket at ``/ws`` (docs/protocol.md, "The
    WebSocket protocol"): lines go as ``{"type": "line", "text": ...}``,
    exactly as a native client's; chat arrives as ``{"type": "chat",
    "nick": ..., "text": ...}``. The server's pings are answered. No
    ``Origin`` is sent: the server accepts clients that are not browsers
    without one.

    wsproto writes the handshake, checks the server's answer and frames
    what the user sends (masked, as a client must). The server's frames are
    read by :meth:`_frames`: they are unmasked and simple, and this is the
    hot path of every web user's deliveries; wsproto's general parser took
    about 12 us a frame, which made a web user cost its Locust process
    twice what a native one does and put the process's own delays into the
    web users' latency.
    """

    #: Where a load-test payload starts in a chat message's JSON.
    CHAT_MARK: ClassVar[bytes] = b'"text":"~lt '

    def __init__(self, sock: Any, endpoint: Endpoint, timeout: float) -> None:
        super().__init__(sock, endpoint, timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._messages: deque[bytes] = deque()  # whole text messages read during setup
        self._parts: list[bytes] = []  # a fragmented message so far

    # -- the server's frames ----------------------------------------------------

    def _frames(self, data: bytes) -> list[tuple[int, bool, bytes]]:
        """``(opcode, final, payload)`` of each whole frame in what arrived."""
        buffer = self._buffer + data if data else self._buffer
        frames = []
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if second & 0x80:  # a server never masks (RFC 6455 5.1): the stream is not to be trusted
                raise ChatError("WebSocket protocol error: a masked frame from the server")
            end = pos + head + length
            if end > size:
                break
            frames.append((first & 0x0F, bool(first & 0x80), buffer[pos + head : end]))
            pos = end
        self._buffer = buffer[pos:]
        return frames

    def _messages_in(self, data: bytes) -> list[bytes]:
        """The whole text messages in what arrived; pings answered, the
        server's close noted in :attr:`farewell` (and answered)."""
        messages = []
        for opcode, final, payload in self._frames(data):
            if opcode in (_TEXT, _CONTINUATION):
                if not final:
                    self._parts.append(payload)
                elif self._parts:
                    messages.append(b"".join([*self._parts, payload]))
                    self._parts = []
                else:
                    messages.append(payload)
            elif opcode == _PING:
                self.send(self.ws.send(Pong(payload=payload)))
            elif opcode == _CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                self.farewell = f"WebSocket closed by the server: {code} {reason}".rstrip()
                with contextlib.suppress(OSError, LocalProtocolError):
                    self.send(self.ws.send(CloseConnection(code=1000)))
            elif opcode == _BINARY:
                self.corrupt.append("a binary WebSocket message")
        return messages

    # -- setup --------------------------------------------------------------------

    def _next_message(self) -> dict[str, Any]:
        """The next JSON message from the server (setup only)."""
        while not self._messages:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ChatError("connection closed by the server")
            self._messages.extend(self._messages_in(data))
            if self.farewell:
                raise ChatError(self.farewell)
        text = self._messages.popleft()
        try:
            message = json.loads(text)
        except ValueError:
            raise ChatError(f"not JSON from the server: {text[:80]!r}") from None
        return message if isinstance(message, dict) else {}

    def enter(self, nick: str) -> str:
        self.send(self.ws.send(Request(host=f"{self.endpoint.host}:{self.endpoint.port}", target="/ws")))
        while b"\r\n\r\n" not in self._buffer:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ChatError("connection closed by the server during the WebSocket handshake")
            self._buffer += data
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        # A 101 has no body: what follows the head is frames, read here.
        self._buffer = rest
        try:
            self.ws.receive_data(head + b"\r\n\r\n")
            answer = next(self.ws.events(), None)
        except (LocalProtocolError, RemoteProtocolError) as exc:
            raise ChatError(f"WebSocket handshake: {exc}") from None
        if isinstance(answer, RejectConnection):
            reason = rest.decode("utf-8", "replace").strip()  # the refusal's body, as far as it came
            raise ChatError(f"WebSocket refused: HTTP {answer.status_code} {reason}".rstrip())
        if not isinstance(answer, AcceptConnection):
            raise ChatError(f"WebSocket handshake: unexpected answer {answer!r}")
        message = self._next_message()
        if message.get("type") == "error":
            raise ChatError(f"refused: {message.get('text')}")
        self.rooms, self.current = ["lobby"], "lobby"
        return " ".join(message.get("lines", [])) or str(message.get("type"))

    def _line(self, line: str) -> int:
        data = self.ws.send(TextMessage(data=json.dumps({"type": "line", "text": line})))
        self.send(data)
        return len(data)

    def _command(self, line: str, notice_prefix: str) -> None:
        self._line(line)
        while True:
            message = self._next_message()
            kind, text = message.get("type"), str(message.get("text", ""))
            if kind == "notice" and text.startswith(notice_prefix):
                return
            if kind == "error":
                raise ChatError(f"{line.split(maxsplit=1)[0]}: {text}")

    def set_nick(self, nick: str) -> None:
        self._command(f"/nick {nick}", "you are")

    def join(self, room: str) -> None:
        if room in self.rooms:
            return
        self._command(f"/join {room}", f"you are now in {room} ")
        self.rooms.append(room)
        self.current = room

    def part(self, room: str) -> None:
        if room not in self.rooms:
            return
        self._command(f"/part {room}", f"you left {room}")
        self.rooms.remove(room)
        self.current = self.rooms[-1] if self.rooms else ""

    # -- running --------------------------------------------------------------------

    def chat(self, text: str, room: str) -> int:
        sent = 0
        if room != self.current:
            sent = self._line(f"/join {room}")  # a room one is in: it becomes current
            self.current = room
        return sent + self._line(text)

    def received(self, data: bytes) -> list[bytes]:
        messages = [*self._messages, *self._messages_in(data)]  # first what came during setup
        self._messages.clear()
        payloads: list[bytes] = []
        mark = self.CHAT_MARK
        for text in messages:
            # The server's own rendering, type first: the load-test text is
            # the "text" string (it has no quote or backslash to escape).
            # Anything else carrying "~lt " is read as JSON: slower, but sure.
            if text.startswith(b'{"type":"chat",'):
                start = text.find(mark)
                end = text.find(b'"', start + len(mark))
                if start >= 0 and end >= 0 and b"\\" not in text[start:end]:
                    payload = text[start + len(mark) : end]
                    # The room follows the text in the server's rendering: ..."text":"~lt ...","room":"dev",...
                    room_at = text.find(ROOM_FIELD, end)
                    room_end = text.find(b'"', room_at + len(ROOM_FIELD))
                    if room_at < 0 or room_end < 0 or self.routed(text[room_at + len(ROOM_FIELD) : room_end], payload):
                        payloads.append(payload)
                    continue
            if b'"~lt ' not in text:
                if text.startswith(b'{"type":"error"') and b"disconnected" in text:
                    self.farewell = text.decode("utf-8", "replace")
                continue
            try:
                message = json.loads(text)
                chat = message["text"] if message["type"] == "chat" else ""
            except (ValueError, KeyError, TypeError):
                self.corrupt.append(text[:80].decode("utf-8", "replace"))
                continue
            if isinstance(chat, str) and chat.startswith("~lt "):
                payload = chat[4:].encode("utf-8")
                if self.routed(str(message.get("room", "")).encode("utf-8"), payload):
                    payloads.append(payload)
        return payloads

    def leave(self) -> None:
        # /quit first, as a native client says it; then the closing handshake's first half.
        with contextlib.suppress(OSError, LocalProtocolError):
            self._line("/quit")
            self.send(self.ws.send(CloseConnection(code=1000, reason="load test done")))


# -- transports: how the bytes travel ---------------------------------------------


class Transport:
    """Opens connections to one kind of endpoint: TCP, then TLS if :attr:`tls`.

    TLS is verified as ``chatcore client`` verifies it: the chain and the
    host name against the system's certificates or ``--ca FILE``;
    ``--insecure`` checks nothing (test certificates only). Defends against
    measuring, or sending load to, a man in the middle instead of the server.
    """

    scheme: ClassVar[str] = ""
    default_port: ClassVar[int] = 0
    tls: ClassVar[bool] = False
    dialect: ClassVar[type[Dialect]] = Dialect

    def __init__(self, options: Any) -> None:
        self.options = options
        self.context: ssl.SSLContext | None = tls_context(options) if self.tls else None

    def connect(self, endpoint: Endpoint, timeout: float) -> Any:
        """A connected socket (TLS handshake done) to ``endpoint``."""
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is None:
            return sock
        try:
            return self.context.wrap_socket(sock, server_hostname=endpoint.host)
        except BaseException:
            sock.close()
            raise


def tls_context(options: Any) -> ssl.SSLContext:
    ca = getattr(options, "ca", None) or None
    context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if getattr(options, "insecure", False):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class TcpTransport(Transport):
    scheme, default_port = "tcp", 12000


class TlsTransport(Transport):
    scheme, default_port, tls = "tls", 12001, True


class IrcTransport(Transport):
    scheme, default_port, dialect = "irc", 6667, IrcDialect


class IrcsTransport(Transport):
    scheme, default_port, tls, dialect = "ircs", 6697, True, IrcDialect


class WsTransport(Transport):
    scheme, default_port, dialect = "ws", 8080, WebSocketDialect


class WssTransport(Transport):
    scheme, default_port, tls, dialect = "wss", 8443, True, WebSocketDialect


#: Scheme -> transport class. One instance per scheme per process (the TLS
#: context is shared by every user).
TRANSPORTS: dict[str, type[Transport]] = {
    cls.scheme: cls for cls in (TcpTransport, TlsTransport, IrcTransport, IrcsTransport, WsTransport, WssTransport)
}


def parse_endpoint(url: str) -> Endpoint:
    """``SCHEME://HOST:PORT`` (``HOST:PORT`` means ``tcp://``) as an Endpoint.

    :raises ValueError: with a message that says what to write instead.
    """
    text = url.strip()
    parts = urllib.parse.urlsplit(text if "://" in text else "tcp://" + text)
    if parts.scheme not in TRANSPORTS:
        raise ValueError(f"{url!r}: unknown scheme {parts.scheme}://; use one of {_scheme_list()}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host; write {parts.scheme}://HOST:PORT")
    port = port or TRANSPORTS[parts.scheme].default_port
    return Endpoint(f"{parts.scheme}://{parts.hostname}:{port}", parts.scheme, parts.hostname, port)


def parse_endpoints(host: str | None, chat_hosts: str | None) -> list[Endpoint]:
    """The run's servers: ``--chat-hosts URL,URL,...`` if given, else ``--host``."""
    text = chat_hosts or host
    if not text:
        raise ValueError("no server: give --host tcp://HOST:PORT or --chat-hosts URL,URL,...")
    endpoints = [parse_endpoint(item) for item in text.split(",") if item.strip()]
    if not endpoints:
        raise ValueError(f"--chat-hosts {chat_hosts!r}: no server in it")
    return endpoints


class Spread:
    """Which of the run's servers each user connects to.

    Without a mix: round robin over the servers, user 0 on the first, user 1
    on the second ... With ``--chat-mix tcp=6,ws=3,irc=1``: users take the
    schemes in a fixed cycle that interleaves them by weight (smooth weighted
    round robin: of every 10 users, 6 are native, 3 web, 1 IRC, spread out
    rather than in blocks), and round robin over that scheme's servers.
    """

    def __init__(self, endpoints: list[Endpoint], weights: dict[str, int] | None = None) -> None:
        self.endpoints = endpoints
        #: Scheme -> weight, as given (empty: plain round robin).
        self.weights = weights or {}
        self.order = _interleave(self.weights)

    @property
    def cycle(self) -> int:
        """Users per round: after this many, the spread starts again."""
        return len(self.order) or len(self.endpoints)

    def index(self, number: int) -> int:
        """The index in :attr:`endpoints` of user ``number``'s server."""
        order = self.order
        if not order:
            return number % len(self.endpoints)
        cycle, slot = divmod(number, len(order))
        scheme = order[slot]
        # How many users of this scheme came before: whole cycles, then this one.
        before = cycle * order.count(scheme) + order[:slot].count(scheme)
        servers = [i for i, endpoint in enumerate(self.endpoints) if endpoint.scheme == scheme]
        return servers[before % len(servers)]


def _interleave(weights: dict[str, int]) -> list[str]:
    """One cycle of schemes, each as often as its weight (reduced by their
    common divisor), spread out: nginx's smooth weighted round robin."""
    divisor = math.gcd(*weights.values()) if weights else 1
    weights = {scheme: weight // divisor for scheme, weight in weights.items() if weight}
    total = sum(weights.values())
    current = dict.fromkeys(weights, 0)
    order = []
    for _ in range(total):
        for scheme, weight in weights.items():
            current[scheme] += weight
        pick = max(current, key=current.__getitem__)  # the first of equals: the order given
        current[pick] -= total
        order.append(pick)
    return order


def parse_spread(endpoints: list[Endpoint], mix: str | None) -> Spread:
    """The users' spread over ``endpoints``; ``mix`` is ``--chat-mix``
    (``SCHEME=WEIGHT,...``; empty: plain round robin).

    :raises ValueError: with a message that says what to write instead.
    """
    if not mix or not mix.strip():
        return Spread(endpoints)
    example = "e.g. --chat-mix tcp=6,ws=3,irc=1"
    weights: dict[str, int] = {}
    for item in (part.strip() for part in mix.split(",")):
        if not item:
            continue
        scheme, equals, weight = item.partition("=")
        scheme = scheme.strip().removesuffix("://")
        if not equals or not weight.strip().isdigit():
            raise ValueError(f"--chat-mix {mix!r}: {item!r} is not SCHEME=WEIGHT ({example})")
        if scheme not in TRANSPORTS:
            raise ValueError(f"--chat-mix {mix!r}: unknown scheme {scheme}://; use one of {_scheme_list()}")
        if scheme in weights:
            raise ValueError(f"--chat-mix {mix!r}: {scheme} is given twice")
        weights[scheme] = int(weight)
    present = list(dict.fromkeys(endpoint.scheme for endpoint in endpoints))
    for scheme, weight in weights.items():
        if scheme not in present:
            raise ValueError(
                f"--chat-mix gives {scheme}:// users a share, but no server URL is {scheme}://: "
                f"add one to --chat-hosts or remove {scheme}={weight}"
            )
    for scheme in present:
        if scheme not in weights:
            raise ValueError(f"--chat-mix gives the {scheme}:// servers no share: add {scheme}=N ({scheme}=0 for none)")
    if not any(weights.values()):
        raise ValueError(f"--chat-mix {mix!r}: every weight is 0; give at least one transport users")
    return Spread(endpoints, weights)


def _scheme_list() -> str:
    return ", ".join(f"{name}://" for name in TRANSPORTS)


_transports: dict[str, Transport] = {}


def transport_for(endpoint: Endpoint, options: Any) -> Transport:
    """The process's transport for this endpoint's scheme."""
    transport = _transports.get(endpoint.scheme)
    if transport is None:
        transport = _transports[endpoint.scheme] = TRANSPORTS[endpoint.scheme](options)
    return transport
