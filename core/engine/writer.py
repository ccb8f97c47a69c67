"""The writer: one thread that writes every client's queued output.

Why one writer loop and not a writer thread per client: a thread per client
would cost every connection a Python thread (roughly 13 KB resident; a
quiet client holds none for reading, chatcore.engine.turns) for no gain,
since sockets are written without blocking anyway. One loop also coalesces
naturally: by the time it gets to a client, every line queued since its last
visit goes out in a single ``send()``.

How it works:

- What a room says is appended to the room's feed, one per wire format
  (:mod:`chatcore.engine.feed`), which puts itself on the writer's ready
  list when it goes from idle to busy (no lock and no wake-up per line in a
  busy room). The writer visits a ready feed once for everything appended
  since its last visit: every attached member with lines to catch up on is
  flushed, unless it is already on the ready queue (its turn will come) or
  blocked (then it is checked for falling too far behind).
- What is said to one client alone goes to its own queue:
  :meth:`Client.send_data` appends and, only when the client was idle, puts
  it on the writer's ready queue (and wakes the writer only if the writer
  was asleep).
- Flushing a client takes its queue and then the feed lines it has not had
  yet (up to ``MAX_BATCH`` pieces and :data:`~chatcore.engine.feed.MAX_TAKE`
  lines), and sends them with ``MSG_DONTWAIT``, so a full socket never
  blocks it. What the kernel does not take waits, and the client is
  watched with a selector until its socket is writable again. A client
  that stops reading falls behind and is disconnected as a slow consumer;
  nobody else waits for it.
- A client with more output goes to the back of the ready queue, so one busy
  client cannot starve the others.
- Presence notices (joins, leaves, nick changes: the events whose class says
  ``batched``) may wait: a feed with only those puts itself on a second
  list (:meth:`schedule_batched`) that the writer moves to the ready list
  ``BATCH_DELAY`` after the first of them. In a connect storm of N clients
  each member then gets one ``send()`` per ``BATCH_DELAY`` instead of one
  per join (the N * (N - 1) / 2 notices of 500 connects were 30,000 sends,
  most of the storm's time). Nothing is reordered: anything urgent said to
  the room behind a notice makes the feed ready at once, and anything said
  to a member alone takes the room's lines before it along.
- Closing is the writer's business too: :meth:`finish` flushes what is
  queued, then shuts the socket down, which wakes the client's reader thread.
  The reader thread closes the socket after :meth:`Client.wait_closed`, so
  the writer never touches a file descriptor that may have been reused.

The flags (a client's ``_scheduled``, a feed's ``scheduled``, ``_idle``)
are checked and set without a lock: under the GIL each read or write is
atomic, and every race is resolved by re-checking after the flag is cleared
(at worst a client is flushed once more than needed). A free-threaded
CPython would need those checks made atomic; chatcore is tested on GIL
builds only.

``MSG_DONTWAIT`` exists on Linux, the BSDs and macOS; the server is for
POSIX systems (the terminal client is portable).
"""

from __future__ import annotations

import collections
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from chatcore.engine.feed import MAX_TAKE, TRIM_AFTER

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.engine.feed import Membership, RoomFeed

log = logging.getLogger("chatcore.writer")

#: Most lines joined into one send(); bounds the size of one write.
MAX_BATCH = 1024
#: How long a presence notice may wait so that a burst of them goes out in
#: one send() per member: well under what a person notices, and long enough
#: that 500 joins in a row cost each member a handful of sends.
BATCH_DELAY = 0.02
_SEND_FLAGS = getattr(socket, "MSG_DONTWAIT", 0)


def _behind(client: Client) -> int:
    """The most lines of one of its rooms ``client`` has not had yet."""
    most = 0
    for membership in client._memberships:
        feed = membership.feed
        if feed is not None and feed.end - membership.pos > most:
            most = feed.end - membership.pos
    return most


class Writer:
    """Writes every client's queued output from one background thread."""

    def __init__(self) -> None:
        self._ready: collections.deque[Client] = collections.deque()
        self._ready_feeds: collections.deque[RoomFeed] = collections.deque()
        # Feeds whose lines may wait until _batch_due (schedule_batched).
        self._batched: collections.deque[RoomFeed] = collections.deque()
        self._batch_due = 0.0  # 0.0: no batch open; the writer thread's own
        self._finishing: collections.deque[Client] = collections.deque()
        self._lingering: set[Client] = set()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._idle = False
        self._running = False
        self._stopped = False
        #: Bytes handed to the kernel, TLS records included; written by the
        #: writer thread only, so a plain int (read by metrics).
        self.sent_bytes = 0
        self._thread = threading.Thread(target=self._run, name="chatcore-writer", daemon=True)

    # -- called from any thread ---------------------------------------------

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; clients still connected are not written to again."""
        if self._stopped:
            return
        self._stopped = True
        if self._running:
            self._running = False
            self._wake()
            self._thread.join(timeout)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def schedule(self, client: Client) -> None:
        """Put a client with new output on the ready queue."""
        self._ready.append(client)
        if self._idle:
            self._idle = False
            self._wake()

    def schedule_feeds(self, feeds: list[RoomFeed]) -> None:
        """Put feeds with new lines (``scheduled`` set to True by the caller)
        on the ready list."""
        self._ready_feeds.extend(feeds)
        if self._idle:
            self._idle = False
            self._wake()

    def schedule_batched(self, feeds: list[RoomFeed]) -> None:
        """Put idle feeds whose new lines may wait up to :data:`BATCH_DELAY`
        (``scheduled`` set to None by the caller) on the batched list; an
        urgent line for one of them moves it to the ready list before then."""
        opens_batch = not self._batched
        self._batched.extend(feeds)
        # The writer times its sleep by the first batched feed: only that
        # one needs to wake it.
        if opens_batch and self._idle:
            self._idle = False
            self._wake()

    def finish(self, client: Client, linger: float = 0.0) -> None:
        """Write what ``client`` has queued (for up to ``linger`` seconds if
        it is not reading), then shut its socket down."""
        client._finish_deadline = time.monotonic() + linger
        self._finishing.append(client)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are shutting down

    # -- the writer thread --------------------------------------------------

    def _run(self) -> None:
        ready = self._ready
        ready_feeds = self._ready_feeds
        finishing = self._finishing
        batched = self._batched
        select = self._selector.select
        flush = self._flush
        visit = self._visit
        clock = time.monotonic
        while self._running:
            # One pass over what was ready when it began, so blocked
            # sockets and closes get their turn under steady load.
            for _ in range(len(ready_feeds)):
                visit(ready_feeds.popleft())
            for _ in range(len(ready)):
                client = ready.popleft()
                try:  # _guarded(), inline: once per client with output
                    flush(client)
                except Exception:
                    self._drop(client)
            while finishing:
                self._guarded(self._begin_finish, finishing.popleft())
            if batched:
                self._release_batch(clock())
            if ready or ready_feeds or finishing:
                if len(self._selector.get_map()) > 1:
                    self._handle_events(select(0))
                if self._lingering:
                    self._expire_lingering()
                continue
            self._idle = True
            if ready or ready_feeds or finishing:  # raced with schedule() or finish()
                self._idle = False
                continue
            timeout = 0.25 if self._lingering else None
            if batched:  # read after _idle is set: schedule_batched() wakes us otherwise
                timeout = max(0.0, min(timeout or BATCH_DELAY, self._batch_due - clock()))
            self._handle_events(select(timeout))
            self._idle = False
            if self._lingering:
                self._expire_lingering()

    def _release_batch(self, now: float) -> None:
        """Open a batch at its first feed; when it is due, move the feeds
        still waiting on it (``scheduled`` None) to the ready list."""
        if not self._batch_due:
            self._batch_due = now + BATCH_DELAY
            return
        if now < self._batch_due:
            return
        self._batch_due = 0.0
        batched = self._batched
        ready = self._ready_feeds
        for _ in range(len(batched)):  # later arrivals open the next batch
            feed = batched.popleft()
            if feed.scheduled is None:  # not made ready by an urgent line meanwhile
                feed.scheduled = True
                ready.append(feed)

    def _visit(self, feed: RoomFeed) -> None:
        """Send every member of ``feed`` the lines of it it has not had.

        The common case, an idle member with nothing of its own queued, is
        done here: every such member's lines are taken under one hold of the
        feed's lock (members that were level share one joined piece), then
        sent. The rest go through :meth:`_flush`, or wait for their turn.
        """
        feed.scheduled = False  # lines appended from here on schedule it again
        taken: list[tuple[Client, bytes, Membership]] = []
        others: list[Client] = []
        behind: list[Client] = []
        with feed.lock:
            end = feed.end
            start = feed.start
            lines = feed.lines
            shared_pos = -1
            shared = b""
            level = True  # every attached member has had every line so far
            for membership in feed.members:
                pos = membership.pos
                if pos >= end:
                    continue
                member = membership.client
                if member._scheduled:  # its turn on the ready queue will come, or it is blocked
                    level = False
                    if member._blocked and end - pos >= member._max_queue:
                        behind.append(member)
                    continue
                member._scheduled = True
                if member._queue or member._done:
                    level = False
                    others.append(member)
                    continue
                stop = pos + MAX_TAKE
                if stop > end:
                    stop = end
                else:
                    level = False
                membership.pos = stop
                if membership.own >= pos:  # lines not for it are in the way: its own (no echo)
                    data = feed.for_member(membership, pos, stop)
                elif pos == shared_pos and stop == end:
                    data = shared
                else:
                    data = lines[pos - start] if stop - pos == 1 else b"".join(lines[pos - start : stop - start])
                    if stop == end:
                        shared_pos, shared = pos, data
                taken.append((member, data, membership))
            if level:  # a quiet room keeps no lines
                feed.forget(end)
        for member in behind:
            member.disconnect("slow consumer", tell=False)
        sent_bytes = 0
        ready = self._ready
        for member, data, membership in taken:
            try:  # _send() and _guarded(), inline: once per member with lines
                if not data:
                    self._sent_all(member)
                    continue
                # TLS: plaintext in, records out (chatcore.transports.tls).
                out = data if member._encrypt is None else member._encrypt(data)
                try:
                    sent = member.sock.send(out, _SEND_FLAGS)
                except BlockingIOError:
                    sent = 0
                sent_bytes += sent
                member.bytes_out += sent
                if sent < len(out):
                    self._wait_writable(member, out, sent)
                elif member._queue or member._finishing or membership.feed is not feed or membership.pos < end:
                    self._sent_all(member)
                else:
                    # Lines appended since this visit began are not chased
                    # member by member: they made the feed ready again, and
                    # its next visit sends them to every member at once.
                    member._scheduled = False
                    if member._queue and not member._scheduled:  # raced with send_data()
                        member._scheduled = True
                        ready.append(member)
            except OSError as exc:
                self._lost(member, exc)
            except Exception:
                self._drop(member)
        self.sent_bytes += sent_bytes
        for member in others:
            self._guarded(self._flush, member)
        if end - feed.start > TRIM_AFTER:  # some were not level: forget what the slowest has had
            with feed.lock:
                feed.trim()

    def _handle_events(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, _mask in events:
            client: Client | None = key.data
            if client is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            self._selector.unregister(key.fileobj)
            client._blocked = False
            self._guarded(self._flush, client)

    def _guarded(self, step: Callable[[Client], None], client: Client) -> None:
        """Run one step for one client; if it fails unexpectedly, that client
        is dropped, not the writer (which every other client depends on)."""
        try:
            step(client)
        except Exception:
            self._drop(client)

    def _drop(self, client: Client) -> None:
        """Called from an ``except`` block: log the failure and close the client."""
        log.exception("writer failed on %r; disconnecting it", client)
        try:
            self._complete(client, clean=False)
        except Exception:
            log.exception("writer could not close %r", client)

    def _flush(self, client: Client) -> None:
        if client._blocked or client._done:
            return
        out = client._unsent
        if not out:
            queue = client._queue
            n = len(queue)
            if n == 1:
                plain = queue.pop(0)
            elif n:
                # Taken, then deleted: what send_data() appends meanwhile
                # goes to the end, after what was taken.
                taken = queue[:MAX_BATCH]
                del queue[: len(taken)]
                plain = b"".join(taken)
            else:
                plain = b""
            # Level again: 0, which also rights a count a race made drift.
            client._sendq = client._sendq - len(plain) if queue else 0
            # The rooms' lines after what was said to it alone: send_data()
            # moved the rooms' earlier lines to the queue before that.
            for membership in client._memberships:
                feed = membership.feed
                if feed is not None and membership.pos < feed.end:
                    with feed.lock:
                        lines = feed.take(membership, MAX_TAKE) if membership.feed is feed else b""
                    plain = plain + lines if plain else lines
            if not plain:
                self._sent_all(client)
                return
            try:  # TLS: plaintext in, records out (chatcore.transports.tls).
                out = plain if client._encrypt is None else client._encrypt(plain)
            except OSError as exc:
                self._lost(client, exc)
                return
        self._send(client, out)

    def _send(self, client: Client, out: bytes | memoryview) -> None:
        """Send ``out`` to ``client`` without blocking; what the socket does
        not take waits for it to become writable."""
        try:
            sent = client.sock.send(out, _SEND_FLAGS)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(client, exc)
            return
        self.sent_bytes += sent
        client.bytes_out += sent
        if sent < len(out):
            self._wait_writable(client, out, sent)
            return
        client._unsent = b""
        self._sent_all(client)

    def _wait_writable(self, client: Client, out: bytes | memoryview, sent: int) -> None:
        """The socket took ``sent`` bytes of ``out``: keep the rest until it
        is writable again, and drop a client that has fallen too far behind."""
        client._unsent = memoryview(out)[sent:]
        client._blocked = True
        self._selector.register(client.sock, selectors.EVENT_WRITE, client)
        if client._finishing:
            self._lingering.add(client)
        elif _behind(client) >= client._max_queue:
            client.disconnect("slow consumer", tell=False)

    def _sent_all(self, client: Client) -> None:
        """After a flush that sent everything it took: go again, close, or idle."""
        queue = client._queue
        if client._drained is not None and not queue:
            self._release_waiter(client)
        if queue or _behind(client):
            self._ready.append(client)  # more to send: back of the line
            return
        if client._finishing:
            self._complete(client)
            return
        client._scheduled = False
        # Raced with send_data(), or with a line appended to the feed after
        # the check above whose visit saw this client still scheduled.
        if (queue or _behind(client)) and not client._scheduled:
            client._scheduled = True
            self._ready.append(client)

    @staticmethod
    def _release_waiter(client: Client) -> None:
        """Wake the client's thread in :meth:`Client.wait_sent`."""
        latch, client._drained = client._drained, None
        if latch is not None:
            latch.release()

    def _lost(self, client: Client, exc: OSError) -> None:
        if client.close_reason is None:
            client.close_reason = "connection lost"
            client.close_cause = "connection_lost"
        log.debug("write to %r failed: %s", client, exc)
        self._complete(client, clean=False)

    def _begin_finish(self, client: Client) -> None:
        if client._done:
            return
        client._finishing = True
        if client._blocked:
            self._lingering.add(client)
            self._expire_lingering()
        else:
            self._flush(client)

    def _expire_lingering(self) -> None:
        now = time.monotonic()
        for client in list(self._lingering):
            if client._done:
                self._lingering.discard(client)
            elif now >= client._finish_deadline:
                self._complete(client)

    def _complete(self, client: Client, *, clean: bool = True) -> None:
        """Done writing to this client: wake its reader and let it close."""
        if client._done:
            return
        client._done = True
        if clean and client._encrypt is not None and not client._unsent:
            try:  # TLS's close_notify, if the socket takes it now
                self.sent_bytes += client.sock.send(client.transport.goodbye(), _SEND_FLAGS)
            except OSError:
                pass
        self._lingering.discard(client)
        if client._blocked:
            self._selector.unregister(client.sock)
            client._blocked = False
        client._queue.clear()
        client._sendq = 0
        client._unsent = b""
        if client._drained is not None:
            self._release_waiter(client)
        if client.close_reason is None:
            client.close_reason = "connection lost"
            client.close_cause = "connection_lost"
        try:
            client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
        client._writer_done.release()
