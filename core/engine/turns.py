"""Read turns: a bound on the connections' threads that handle input at once.

Each connection has a thread of its own that reads its input and handles it
(:mod:`chatcore.engine.serving`). A thread blocked in ``recv()`` wants the
GIL as soon as its input arrives, before any Python code of its own runs.
With thousands of clients all talking, thousands of threads then wait for
the GIL at once, each waking every switch interval to ask for it, and the
one thread that holds it gets a thousandth of a CPU: the server falls
behind, so more threads have input, so it falls further behind
(docs/performance.md, "The stall at thousands of clients").

So connection threads do not wait in ``recv()``. Each waits on a lock of
its own (a futex: no timer, no GIL); one thread watches every waiting
socket in an epoll set, one-shot (a socket is reported once, then again
only when its thread waits anew), and lets at most ``limit`` threads have
a turn at once. The others queue in the order their input came, and a turn
that ends passes to the first of them. A thread with a turn reads without
blocking, handles what it read, and gives the turn back: however many
clients talk, at most ``limit`` connection threads want the GIL.

A turn held longer than :data:`STALE` seconds no longer counts against
the limit: its thread is blocked (a plugin waiting on a network service, a
wrong password's delay), not computing, and one slow client or plugin must
not hold everyone's input back. Go's scheduler does the same for a thread
blocked in a system call.

Linux only (epoll); elsewhere :func:`make_turns` returns None and each
thread waits in ``recv()`` as before.
"""

from __future__ import annotations

import _thread
import logging
import os
import select
import time
from collections import deque

log = logging.getLogger("chatcore.server")

#: How many connection threads may handle input at once from the epoll set.
#: Two would keep the GIL busy (one runs, one is ready); a few more keep a
#: thread that waits on a lock or a service inside its turn from idling the
#: server.
LIMIT = 4
#: How many threads may wait for their own input themselves (a poll on
#: their socket, then the GIL: no hand-off through the epoll thread, which
#: costs a small room a tenth of its deliveries). A thread keeps its place
#: while its client talks at least every DIRECT_IDLE seconds; the others
#: wait in the epoll set. At most LIMIT + DIRECT connection threads want
#: the GIL at once.
DIRECT = 16
DIRECT_IDLE = 1.0
#: A turn held this long is taken for a blocked thread and stops counting.
#: Above the switch interval (chatcore.cli.SWITCH_INTERVAL, 50 ms): a thread
#: that waits that long for the GIL is still computing.
STALE = 0.1

_EVENTS = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLONESHOT", 0)


class Turns:
    """The epoll thread and the turns of one server's connections."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        #: True once :meth:`close` has begun: threads read blocking again.
        self.closed = False
        self._epoll = select.epoll()
        self._lock = _thread.allocate_lock()
        #: The latch of each thread whose socket is watched, by descriptor.
        self._waiting: dict[int, _thread.LockType] = {}
        #: Threads whose input came, waiting for a turn.
        self._queue: deque[_thread.LockType] = deque()
        #: Every turn being held, by its thread's latch: when it began.
        self._held: dict[_thread.LockType, float] = {}
        #: How many threads wait for their input themselves (DIRECT at most).
        self._direct = 0
        self._wake_r, self._wake_w = os.pipe()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._running = False

    def start(self) -> None:
        if not self._running:
            self._running = True
            _thread.start_new_thread(self._run, ())

    def close(self) -> None:
        """Stop watching, and let every waiting thread go: from now on they
        read blocking, without turns (the server is stopping)."""
        if self.closed:
            return
        self.closed = True
        if self._running:
            os.write(self._wake_w, b"x")  # the epoll thread lets go of the epoll set
        else:
            self._let_go()

    def reader(self, fd: int) -> Reader:
        """The turns of the connection thread reading socket ``fd``."""
        return Reader(self, fd)

    # -- the epoll thread ------------------------------------------------------

    def _run(self) -> None:
        epoll = self._epoll
        queue = self._queue
        clock = time.monotonic
        try:
            while True:
                # Asleep until input comes, or, while threads queue, until a
                # held turn may have gone stale.
                events = epoll.poll(STALE if queue else -1)
                with self._lock:
                    if self.closed:
                        break
                    self._take(events, clock())
        except Exception:  # never expected: without this thread, nobody would read
            log.exception("the read turns' epoll thread failed; connections read without turns")
            self.closed = True
        self._let_go()

    def harvest(self) -> None:
        """Queue, and give turns to, the threads whose input is in, without
        waiting: called as a thread's turn ends. It holds the GIL already,
        so under load input is found without a hand-off to the epoll
        thread, which must wait for the GIL among every thread with a turn.
        Nothing to ask while no thread waits in the set (every talker has a
        direct place): no system call then."""
        if not self._waiting:
            return
        try:
            events = self._epoll.poll(0)
        except (OSError, ValueError):
            return  # closed: the server is stopping
        if events:
            with self._lock:
                if not self.closed:
                    self._take(events, time.monotonic())

    def _take(self, events: list[tuple[int, int]], now: float) -> None:
        """Queue the threads of sockets the epoll set reported (under the lock)."""
        waiting = self._waiting
        queue = self._queue
        for fd, _ in events:
            latch = waiting.pop(fd, None)
            if latch is not None:
                queue.append(latch)
        if queue:
            self._grant(now)

    def _grant(self, now: float) -> None:
        """Give turns to queued threads while fewer than ``limit`` fresh
        turns are held (under the lock)."""
        fresh = 0
        for began in self._held.values():
            if now - began < STALE:
                fresh += 1
        queue = self._queue
        held = self._held
        while queue and fresh < self.limit:
            latch = queue.popleft()
            held[latch] = now
            latch.release()
            fresh += 1

    def _let_go(self) -> None:
        with self._lock:
            latches = [*self._waiting.values(), *self._queue]
            self._waiting.clear()
            self._queue.clear()
        for latch in latches:
            latch.release()
        self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


class Reader:
    """One connection thread's side of :class:`Turns`."""

    __slots__ = ("_counted", "_fd", "_latch", "_poll", "_registered", "_turns")

    def __init__(self, turns: Turns, fd: int) -> None:
        self._turns = turns
        self._fd = fd
        self._latch = _thread.allocate_lock()
        self._latch.acquire()  # held: acquiring it again waits for a release
        self._registered = False
        #: While the thread waits for its input itself (one of DIRECT).
        self._poll: select.poll | None = None
        #: Whether the turn being held counts against the limit.
        self._counted = False

    def wait(self, buffered: bool = False) -> bool:
        """Wait until the socket has input and this thread may handle it;
        True then (:meth:`done` ends the turn). False if the turns are
        closed: read blocking, without them. ``buffered``: input is in
        memory already (TLS), so take a turn now."""
        turns = self._turns
        latch = self._latch
        if buffered:
            with turns._lock:
                if turns.closed:
                    return False
                turns._held[latch] = time.monotonic()  # over the limit, briefly: a rare case
            self._counted = True
            return True
        poller = self._poll
        if poller is None and turns._direct < DIRECT:
            with turns._lock:
                if turns._direct < DIRECT:
                    turns._direct += 1
                    poller = self._poll = select.poll()
                    poller.register(self._fd, select.POLLIN)
        if poller is not None:
            if poller.poll(DIRECT_IDLE * 1000):
                return True
            self._leave_direct()  # its client went quiet: the place is another's
        fd = self._fd
        turns._waiting[fd] = latch  # before the epoll set can report it
        if turns.closed:  # close() lets go of what it finds waiting: this may not be there yet
            turns._waiting.pop(fd, None)
            return False
        try:
            if self._registered:
                turns._epoll.modify(fd, _EVENTS)
            else:
                turns._epoll.register(fd, _EVENTS)
                self._registered = True
        except (OSError, ValueError):  # the epoll set is closed: the server is stopping
            turns._waiting.pop(fd, None)
            return False
        latch.acquire()
        self._counted = latch in turns._held
        return self._counted or not turns.closed

    def done(self) -> None:
        """End the turn: a counted one passes to the first queued thread;
        and whatever input the epoll set has is taken in."""
        turns = self._turns
        if self._counted:
            self._counted = False
            with turns._lock:
                turns._held.pop(self._latch, None)
                if turns._queue:
                    latch = turns._queue.popleft()
                    turns._held[latch] = time.monotonic()
                    latch.release()
        turns.harvest()

    def forget(self) -> None:
        """Stop watching the socket (before it is closed: its descriptor's
        number may be a new connection's next)."""
        turns = self._turns
        if self._poll is not None:
            self._leave_direct()
        turns._waiting.pop(self._fd, None)
        if self._registered:
            self._registered = False
            try:
                turns._epoll.unregister(self._fd)
            except (OSError, ValueError):
                pass  # the epoll set is closed

    def _leave_direct(self) -> None:
        self._poll = None
        with self._turns._lock:
            self._turns._direct -= 1


def make_turns() -> Turns | None:
    """The server's read turns, or None where there is no epoll."""
    if not hasattr(select, "epoll"):
        return None
    return Turns(LIMIT)
