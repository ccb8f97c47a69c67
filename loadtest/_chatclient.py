"""A gevent-friendly chat client for the Locust scenarios in this folder.

Locust skips modules whose names start with ``_`` when it is given the
folder, so this shared code is not mistaken for a scenario. Nothing here
imports Locust: the client reports through a :class:`Recorder` (the
scenarios pass one that writes Locust statistics), which keeps it usable and
readable on its own. It does use gevent sockets, because Locust users are
greenlets. How it is said on the wire (native lines, IRC, WebSocket JSON)
is the transport's :class:`~_transports.Dialect`; this module sees only the
load-test text.

Every load-test message is a chat line whose text is::

    ~lt SENDER@N#ROOM SEQ SENT_US xxxx...

``SENDER`` is unique per simulated user (across processes), ``@N`` names
the index of the server the sender is connected to in the run's list of
servers (``--chat-hosts``), so a receiver can split its deliveries by
(sending server, receiving server), and ``#ROOM`` is the room the message
was sent to; ``SEQ`` counts from 1 per sender and room, ``SENT_US`` is the
send time in microseconds since the epoch (all load generators of one run
share a clock: same host, or NTP) and the ``x`` padding brings the text to
the configured size.

So a user in several rooms (``--rooms-per-user``) is one stream per room,
and every check below holds per room: each member of a room expects each
line said there once, in order, in that room's stream. The dialect checks
that a line arrived in the room its ``#ROOM`` names (the native ``[room] ``
label, the IRC channel, the WebSocket message's ``room``); one that did not
is corrupted. Receivers check each stream's sequence:

- Tracking of a sender starts at the first of its messages a receiver sees,
  so a receiver never reports what was sent before it joined the room, and
  nothing is expected after it stops (it just stops looking).
- After that, a jump from ``n`` to ``n + k`` is ``k - 1`` lost messages, a
  number seen before is a duplicate, and a missing number that turns up late
  is reordered (its loss was already reported: TCP and the server keep order,
  so either is a bug worth a failure).
- A load-test line that does not parse (bad numbers, wrong padding) is
  corrupted: the kind of damage unframed forwarding does under load.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from typing import Any, Protocol

import gevent
from _transports import ChatError, Dialect, Endpoint, Transport

__all__ = ["ChatConnection", "ChatError", "Recorder", "new_sender_id"]

#: Text of a load-test message without its padding: "~lt SENDER SEQ SENT_US ".
HEADER = "~lt {sender} {seq} {sent_us} "
RECV_SIZE = 65536
#: How many missing sequence numbers per sender a receiver remembers, to tell
#: a late (reordered) message from a duplicate.
MISSING_LIMIT = 1024

_process_token = secrets.token_hex(2)
_sender_numbers = itertools.count(1)


def new_sender_id(origin: int = 0) -> str:
    """A sender id unique across the load generator's processes, naming the
    index of the server it sends through."""
    return f"{_process_token}{os.getpid():x}.{next(_sender_numbers)}@{origin}"


def origin_of(sender: bytes) -> int:
    """The server index a sender field (``SENDER@N#ROOM``) names (0 if it names none)."""
    _, _, origin = sender.partition(b"#")[0].rpartition(b"@")
    try:
        return int(origin)
    except ValueError:
        return 0


def now_us() -> int:
    return time.time_ns() // 1000


class Recorder(Protocol):
    """Where a :class:`ChatConnection` reports what it measured."""

    def delivered(self, latency_ms: float, count: int, origin: int) -> None:
        """``count`` deliveries sent through server ``origin`` arrived;
        ``latency_ms`` is one sample of them."""

    def problem(self, kind: str, count: int, detail: str, origin: int) -> None:
        """``count`` messages sent through server ``origin`` were lost,
        duplicated, reordered or corrupted (``kind``; corrupted lines name
        the receiving server's own index, their sender being unknown)."""

    def closed(self, detail: str) -> None:
        """The server closed the connection while the user was running."""


class ChatConnection:
    """One chat client: connect, take a nickname, join, send, and receive in a greenlet.

    Setup (:meth:`connect`, :meth:`set_nick`, :meth:`join`) reads replies in
    the calling greenlet, through the transport's dialect; :meth:`start_receiving` then hands the socket's input to a
    background greenlet that tracks load-test messages. :meth:`close` stops
    that greenlet *before* closing the socket, so the close is not reported
    as a failure.

    Latency is sampled: one delivery in ``sample`` is reported with its
    latency, carrying the count of deliveries since the previous sample, so
    totals stay exact while the number of recorded events stays bounded.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        transport: Transport,
        recorder: Recorder,
        *,
        server_index: int = 0,
        read_rate: float = 0.0,
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.transport = transport
        self.recorder = recorder
        self.server_index = server_index
        self.read_rate = read_rate
        self.timeout = timeout
        self.sock: Any = None
        self.dialect: Dialect | None = None
        self.sender = new_sender_id(server_index)
        #: Messages sent so far, per room.
        self.seq: dict[str, int] = {}
        self.sample = 1
        self._reader: gevent.Greenlet | None = None
        self._stopping = False
        # Per sender and room (the payload's first field): [last sequence
        # seen, set of missing sequence numbers, the server it sends through].
        self._senders: dict[bytes, list[Any]] = {}
        # Per sending server: deliveries since the last sample, and that
        # sample's latency (a sample stands only for its own server's count).
        self._unsampled: dict[int, int] = {}
        self._last_latency: dict[int, float] = {}

    # -- setup, in the calling greenlet --------------------------------------

    def connect(self) -> str:
        """Connect (over TLS, shake hands), enter the chat in the transport's
        dialect and return the server's welcome."""
        self.sock = self.transport.connect(self.endpoint, self.timeout)
        self.dialect = self.transport.dialect(self.sock, self.endpoint, self.timeout)
        return self.dialect.enter(self.nickname())

    @property
    def sets_nick(self) -> bool:
        """Whether a nickname is a step of its own (IRC registers with one)."""
        return not self.transport.dialect.names_at_entry

    def set_nick(self) -> None:
        """Take :meth:`nickname`."""
        assert self.dialect is not None
        self.dialect.set_nick(self.nickname())

    def join(self, room: str) -> None:
        """Enter ``room``, staying in the rooms the connection is in."""
        assert self.dialect is not None
        self.dialect.join(room)

    def keep_only(self, rooms: list[str]) -> None:
        """Leave every room but ``rooms`` (the one it was put in on entering)."""
        assert self.dialect is not None
        for room in [room for room in self.dialect.rooms if room not in rooms]:
            self.dialect.part(room)

    def nickname(self) -> str:
        """A nickname made of the sender id (valid: letters, digits, ``_``)."""
        return "lt_" + self.sender.replace(".", "_").replace("@", "_")

    # -- running --------------------------------------------------------------

    def start_receiving(self) -> None:
        self._reader = gevent.spawn(self._receive)

    def send_message(self, size: int, room: str) -> int:
        """Send the next load-test message of ``size`` bytes of text to
        ``room`` (one the connection is in); return the bytes sent."""
        seq = self.seq[room] = self.seq.get(room, 0) + 1
        text = HEADER.format(sender=f"{self.sender}#{room}", seq=seq, sent_us=now_us())
        assert self.dialect is not None
        return self.dialect.chat(text + "x" * max(1, size - len(text)), room)

    def close(self) -> None:
        """Stop receiving, report what is still counted, say goodbye, close."""
        self._stopping = True
        if self._reader is not None:
            self._reader.kill(block=True, timeout=self.timeout)
            self._reader = None
        self.flush()
        if self.dialect is not None:
            self.dialect.leave()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def flush(self) -> None:
        """Report deliveries counted since the last latency sample."""
        for origin, count in self._unsampled.items():
            if count:
                self.recorder.delivered(self._last_latency.get(origin, 0.0), count, origin)
        self._unsampled.clear()

    # -- the receive greenlet -------------------------------------------------

    def _receive(self) -> None:
        sock = self.sock
        dialect = self.dialect
        assert dialect is not None
        recorder = self.recorder
        # A slow reader takes a tenth of a second's worth at a time, then
        # waits out the rest of that tenth.
        rate = self.read_rate
        size = max(64, int(rate / 10)) if rate else RECV_SIZE
        data = b""  # first what arrived during setup
        while True:
            self._track(dialect.received(data))
            if dialect.corrupt:
                for detail in dialect.corrupt:
                    recorder.problem("corrupted", 1, detail, self.server_index)
                dialect.corrupt.clear()
            if dialect.farewell is not None:
                recorder.closed(dialect.farewell)
                dialect.farewell = None
            if rate:
                gevent.sleep(size / rate)
            try:
                data = sock.recv(size)
            except TimeoutError:
                # A quiet room: the socket's timeout is for setup and sends;
                # receiving waits for as long as the user runs.
                data = b""
                continue
            except OSError as exc:
                if not self._stopping:
                    recorder.closed(f"receive failed: {exc}")
                return
            if not data:
                if not self._stopping:
                    recorder.closed("connection closed by the server")
                return

    def _track(self, payloads: list[bytes]) -> None:
        """Check each load-test payload (``SENDER@N#ROOM SEQ SENT_US xxx...``)."""
        senders = self._senders
        recorder = self.recorder
        sample = self.sample
        unsampled = self._unsampled
        own = self.server_index
        arrived = now_us()
        for payload in payloads:
            fields = payload.split(b" ")
            try:
                sender, seq_text, sent_text, padding = fields
                seq = int(seq_text)
                sent = int(sent_text)
            except ValueError:
                recorder.problem("corrupted", 1, payload[:80].decode("utf-8", "replace"), own)
                continue
            if padding.strip(b"x"):
                recorder.problem("corrupted", 1, payload[:80].decode("utf-8", "replace"), own)
                continue
            track = senders.get(sender)
            if track is None:
                track = senders[sender] = [seq, set(), origin_of(sender)]
            else:
                last = track[0]
                if seq == last + 1:
                    track[0] = seq
                elif seq > last:
                    missing: set[int] = track[1]
                    recorder.problem("lost", seq - last - 1, f"{sender.decode()}: {last + 1}..{seq - 1}", track[2])
                    if len(missing) < MISSING_LIMIT:
                        missing.update(range(last + 1, min(seq, last + 1 + MISSING_LIMIT)))
                    track[0] = seq
                elif seq in track[1]:
                    track[1].discard(seq)
                    recorder.problem("reordered", 1, f"{sender.decode()}: {seq} after {track[0]}", track[2])
                    continue
                else:
                    recorder.problem("duplicated", 1, f"{sender.decode()}: {seq} after {track[0]}", track[2])
                    continue
            origin = track[2]
            count = unsampled.get(origin, 0) + 1
            if count >= sample:
                latency = self._last_latency[origin] = (arrived - sent) / 1000.0
                recorder.delivered(latency, count, origin)
                count = 0
            unsampled[origin] = count
