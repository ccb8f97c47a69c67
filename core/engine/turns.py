"""Read turns: a bound on the threads that handle input at once, and no
thread at all for a connection with nothing to say.

Each connection's input is read and handled by one thread at a time, in
order (:mod:`chatcore.engine.serving`), and a thread blocked in a plugin
holds back its own client only. But a thread blocked in ``recv()`` wants
the GIL as soon as input arrives, before any Python code of its own runs:
with thousands of clients talking, thousands of threads wait for the GIL
at once, each waking every switch interval to ask for it, and the one that
holds it gets a thousandth of a CPU (docs/performance.md, "The stall at
thousands of clients"). And a thread costs about 13 KiB of memory while its
client says nothing, most of what an idle connection costs.

So connection threads do not wait in ``recv()``, and a quiet connection has
no thread. One epoll thread watches every quiet socket, one-shot (reported
once, then again only when watched anew). When input comes, the socket's
connection is queued, and at most ``limit`` connections have a turn at
once: a turn runs the connection's work (its :class:`Reader`'s ``resume``)
on a spare thread, or on a new one. The work reads without blocking,
handles what it read and ends its turn; when its client has nothing more
to say it hands its socket back to the epoll set (:meth:`Turns.park`) and
its thread takes the next queued connection itself, or waits as a spare
(Apache's event MPM parks keep-alive connections the same way, and keeps
spare threads for the next request). However many clients talk, at most
``limit`` threads want the GIL for their input.

Sixteen threads (:data:`DIRECT`) whose clients talk keep their connection
and wait on its socket themselves with ``poll()``: no hand-off through the
epoll thread, which costs a small room a tenth of its deliveries.

A turn held longer than :data:`STALE` seconds no longer counts against the
limit: its thread is blocked (a plugin waiting on a network service, a
wrong password's delay), not computing, and one slow client or plugin must
not hold everyone's input back. Go's scheduler does the same for a thread
blocked in a system call.

A connection may wait for its client's input with a deadline (a native
client's first line: :meth:`chatcore.engine.connection.Client.on_silence`):
parked with it, it is queued for a turn when input comes or when the
deadline passes, whichever is first, so that a connect storm of silent
clients holds no thread while each waits.

Linux only (epoll); elsewhere :func:`make_turns` returns None and each
connection has a thread of its own that waits in ``recv()``.
"""

from __future__ import annotations

import _thread
import heapq
import itertools
import logging
import math
import os
import select
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    #: A connection's work on a thread: None when the connection is over,
    #: or its Reader, to be watched until its client says more.
    Work = Callable[[], "Reader | None"]

log = logging.getLogger("chatcore.server")

#: How many connections may handle input at once from the epoll set. Two
#: would keep the GIL busy (one runs, one is ready); a few more keep a
#: thread that waits on a lock or a service inside its turn from idling
#: the server.
LIMIT = 4
#: How many threads may wait for their own client's input themselves (a
#: poll on its socket, then the GIL). A thread keeps its place while its
#: client talks at least every DIRECT_IDLE seconds. At most LIMIT + DIRECT
#: threads want the GIL for input at once.
DIRECT = 16
DIRECT_IDLE = 1.0
#: A turn held this long is taken for a blocked thread and stops counting.
#: Above the switch interval (chatcore.cli.SWITCH_INTERVAL, 50 ms): a thread
#: that waits that long for the GIL is still computing.
STALE = 0.1
#: Spare threads, waiting for work: at most MAX_SPARE, each for at most
#: SPARE_IDLE seconds. Starting a thread costs about 50 us, so a spare
#: saves that for a connect storm or a burst of input; past the burst, an
#: idle thread's 13 KiB is given back.
MAX_SPARE = 64
SPARE_IDLE = 2.0

#: What :meth:`Reader.wait` says to do.
TURN = "turn"  #: read without blocking, handle it, then ``done()``
PARK = "park"  #: nothing to read: return the Reader, to be watched
BLOCK = "block"  #: no turns (the server is stopping): read blocking

#: Starts a bare thread (the tests make it refuse).
_start_thread = _thread.start_new_thread

_EVENTS = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLONESHOT", 0)


class _Spare:
    """A thread waiting for work."""

    __slots__ = ("latch", "work")

    def __init__(self) -> None:
        self.latch = _thread.allocate_lock()
        self.latch.acquire()  # held: acquiring it again waits for a release
        self.work: Work | None = None


class Turns:
    """The epoll thread, the turns and the threads of one server's
    connections.

    :param thread_ended: called by each thread as its last act (the
        server's per-thread counts are folded then).
    """

    def __init__(self, limit: int = LIMIT, thread_ended: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self._thread_ended = thread_ended
        #: True once :meth:`close` has begun: connections read blocking.
        self.closed = False
        self._epoll = select.epoll()
        self._lock = _thread.allocate_lock()
        #: The Reader of each socket in the epoll set, by descriptor.
        self._waiting: dict[int, Reader] = {}
        #: Connections whose input came, waiting for a turn.
        self._queue: deque[Reader] = deque()
        #: Every turn being held: when it began.
        self._held: dict[Reader, float] = {}
        #: Threads waiting for work, the one that waited least last.
        self._spares: list[_Spare] = []
        #: How many threads wait for their client's input themselves.
        self._direct = 0
        #: Threads running (for the tests and the stats).
        self.threads = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        #: The epoll thread sleeps without a timeout (nothing was queued).
        self._asleep = False
        #: The deadlines of parked connections (Reader.wait's), soonest first.
        self._timers: list[tuple[float, int, Reader]] = []
        self._timer_order = itertools.count()  # equal deadlines never compare Readers
        #: When the epoll thread wakes by itself: -inf while it is awake
        #: (it looks at the timers before it sleeps again), inf while it
        #: sleeps until input comes.
        self._wake_at = -math.inf
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._running = False
        self._no_thread_logged = -10.0

    def start(self) -> None:
        if not self._running:
            self._running = True
            _thread.start_new_thread(self._run, ())

    def close(self) -> None:
        """Stop watching: every connection in the epoll set or queued is
        given a thread, and from now on reads blocking (the server is
        stopping)."""
        if self.closed:
            return
        self.closed = True
        if self._running:
            os.write(self._wake_w, b"x")  # the epoll thread lets go of the epoll set
        else:
            self._let_go()

    def reader(self, fd: int, resume: Work) -> Reader:
        """The turns of the connection on socket ``fd``; ``resume`` is its
        work, run on a thread with a turn when its client says more."""
        return Reader(self, fd, resume)

    def spawn(self, work: Work) -> None:
        """Run ``work`` (a new connection's) on a spare thread, or a new
        one: outside the turns, as a TLS handshake may block."""
        with self._lock:
            self._dispatch(work)

    def park(self, reader: Reader) -> bool:
        """Watch the reader's socket until its client says more; then its
        work is resumed with a turn. False if it cannot be watched (the
        turns are closed, or the epoll set refuses it): the caller runs the
        work again at once, and it reads blocking."""
        fd = reader._fd
        with self._lock:  # against close(), which gives every watched connection a thread
            if self.closed:
                return False
            try:
                if reader._registered:
                    self._epoll.modify(fd, _EVENTS)
                else:
                    self._epoll.register(fd, _EVENTS)
                    reader._registered = True
            except OSError as exc:
                # The system's limit on watches (fs.epoll.max_user_watches),
                # or memory: this connection keeps a thread and reads
                # blocking, rather than asking to be watched again forever.
                reader._blocking = True
                log.warning("a connection cannot be watched (%s); it keeps a thread of its own", exc)
                return False
            self._waiting[fd] = reader
            deadline = reader._deadline
            if deadline is not None:
                heapq.heappush(self._timers, (deadline, next(self._timer_order), reader))
                if deadline < self._wake_at:  # the epoll thread sleeps past it
                    self._wake_at = -math.inf
                    os.write(self._wake_w, b"t")
        return True

    # -- threads ------------------------------------------------------------------

    def _dispatch(self, work: Work) -> None:
        """Give ``work`` to a spare thread, or start one (under the lock)."""
        if self._spares:
            spare = self._spares.pop()
            spare.work = work
            spare.latch.release()
        else:
            _start_thread(self._thread, (work,))  # RuntimeError: the system refused a thread
            self.threads += 1

    def _thread(self, work: Work | None) -> None:
        """A thread of the turns: runs connections' work, then takes the
        next queued connection, or waits as a spare, or ends."""
        spare: _Spare | None = None
        try:
            while work is not None:
                try:
                    reader = work()
                except Exception:  # the work's own errors are its own to log
                    log.exception("a connection's work failed")
                    reader = None
                if reader is not None and not self.park(reader):
                    work = reader.resume  # closed: it reads blocking, here
                    continue
                work = self._next()
                if work is None:
                    if spare is None:
                        spare = _Spare()
                    work = self._wait_as_spare(spare)
        finally:
            with self._lock:
                self.threads -= 1
            if self._thread_ended is not None:
                self._thread_ended()

    def _next(self) -> Work | None:
        """The next queued connection's work, with its turn, if a turn is
        free: the thread that ends a turn goes on with the next itself (no
        hand-off to another thread). It holds the GIL already, so it also
        takes in what the epoll set has ready: under load, input need not
        wait for the epoll thread to win the GIL."""
        events = self._ready()
        with self._lock:
            if self.closed:
                return None
            if events:
                self._take(events)
            timers = self._timers
            if timers and timers[0][0] <= (now := time.monotonic()):
                self._expire(now)
            queue = self._queue
            if not queue:
                return None
            now = time.monotonic()
            if self._fresh(now) >= self.limit:
                self._mind_queue()
                return None
            reader = queue.popleft()
            self._held[reader] = now
            reader._granted = True
            self._grant(now)  # any other free turns
            self._mind_queue()
            return reader.resume

    def _wait_as_spare(self, spare: _Spare) -> Work | None:
        """Wait for work as a spare thread; None: end the thread."""
        with self._lock:
            if self.closed or len(self._spares) >= MAX_SPARE:
                return None
            self._spares.append(spare)
        if not spare.latch.acquire(timeout=SPARE_IDLE):
            with self._lock:
                if spare in self._spares:  # nobody gave it work (or let it go) meanwhile: it ends
                    self._spares.remove(spare)
                    return None
            spare.latch.acquire()  # it was given work as it timed out: released already
        work, spare.work = spare.work, None
        return work

    # -- the epoll thread ---------------------------------------------------------

    def _run(self) -> None:
        epoll = self._epoll
        queue = self._queue
        try:
            while True:
                # Asleep until input comes, or, while connections queue,
                # until a held turn may have gone stale, or until a parked
                # connection's deadline. Another thread that queues
                # connections meanwhile wakes it (_mind_queue), as one that
                # parks a connection with a sooner deadline does (park).
                with self._lock:
                    self._asleep = not queue
                    timeout = -1.0 if self._asleep else STALE
                    now = time.monotonic()
                    if self._timers:
                        until = max(0.0, self._timers[0][0] - now)
                        timeout = until if timeout < 0 else min(timeout, until)
                    self._wake_at = math.inf if timeout < 0 else now + timeout
                events = epoll.poll(timeout)
                with self._lock:
                    self._asleep = False
                    self._wake_at = -math.inf
                    if self.closed:
                        break
                    if any(fd == self._wake_r for fd, _ in events):
                        os.read(self._wake_r, 64)
                    self._take(events)
                    now = time.monotonic()
                    if self._timers and self._timers[0][0] <= now:
                        self._expire(now)
                    if queue:
                        self._grant(now)
        except Exception:  # never expected: without this thread, nobody would read
            log.exception("the read turns' epoll thread failed; connections read without turns")
            self.closed = True
        self._let_go()

    def _mind_queue(self) -> None:
        """Connections left queued (every turn held) while the epoll thread
        sleeps without a timeout: wake it, to grant them once a held turn
        goes stale (under the lock). Otherwise a plugin blocked in each of
        the turns would hold the queue until one of them returned."""
        if self._queue and self._asleep:
            self._asleep = False
            os.write(self._wake_w, b"q")

    def _ready(self) -> list[tuple[int, int]]:
        """What the epoll set has ready now, without waiting. Nothing to ask
        while no socket is watched: no system call then."""
        if not self._waiting:
            return []
        try:
            return self._epoll.poll(0)
        except (OSError, ValueError):
            return []  # closed: the server is stopping

    def _pass_on(self) -> None:
        """Queue what the epoll set has ready, and give free turns to other
        threads: called by a thread that keeps its own connection (it holds
        the GIL already, so under load input need not wait for the epoll
        thread to win it)."""
        events = self._ready()
        if events or self._queue:
            with self._lock:
                if not self.closed:
                    self._take(events)
                    self._grant(time.monotonic())
                    self._mind_queue()

    def _take(self, events: list[tuple[int, int]]) -> None:
        """Queue the connections of sockets the epoll set reported (under
        the lock)."""
        waiting = self._waiting
        queue = self._queue
        for fd, _ in events:
            reader = waiting.pop(fd, None)
            if reader is not None:
                queue.append(reader)

    def _expire(self, now: float) -> None:
        """Queue the parked connections whose deadline has passed (under
        the lock). A timer whose connection was resumed meanwhile (its
        input came), or parked again with another deadline, or forgotten,
        is dropped. The socket stays in the epoll set: should it report
        input later, nobody waits for it there (_take), and parking the
        connection again arms it anew."""
        timers = self._timers
        waiting = self._waiting
        while timers and timers[0][0] <= now:
            deadline, _, reader = heapq.heappop(timers)
            if reader._deadline == deadline and waiting.get(reader._fd) is reader:
                del waiting[reader._fd]
                self._queue.append(reader)

    def _fresh(self, now: float) -> int:
        """How many turns held count against the limit (under the lock)."""
        fresh = 0
        for began in self._held.values():
            if now - began < STALE:
                fresh += 1
        return fresh

    def _grant(self, now: float) -> None:
        """Give turns to queued connections while fewer than ``limit``
        fresh turns are held, each on a thread (under the lock)."""
        queue = self._queue
        if not queue:
            return
        fresh = self._fresh(now)
        held = self._held
        while queue and fresh < self.limit:
            reader = queue.popleft()
            held[reader] = now
            reader._granted = True
            try:
                self._dispatch(reader.resume)
            except RuntimeError as exc:
                # No thread to be had (the process's limit on threads, or
                # memory): the connection keeps its place at the head of the
                # queue, for a thread that ends its work (_next) or the next
                # grant, and the other clients' connections go on.
                del held[reader]
                reader._granted = False
                queue.appendleft(reader)
                self._no_thread(exc, now)
                return
            fresh += 1

    def _no_thread(self, exc: BaseException, now: float) -> None:
        if now - self._no_thread_logged >= 10.0:  # once in a while: the condition may last
            self._no_thread_logged = now
            log.error(
                "no thread for a connection's input (%s): it waits for a thread to come free; "
                "raise the process's limit on threads (ulimit -u) or its memory",
                exc,
            )

    def _let_go(self) -> None:
        """Closed: every watched or queued connection's work runs on a
        thread, to read blocking; spare threads end."""
        with self._lock:
            readers = [*self._waiting.values(), *self._queue]
            self._waiting.clear()
            self._queue.clear()
            for reader in readers:
                try:
                    self._dispatch(reader.resume)
                except RuntimeError as exc:  # stopping: close_all() gives it up after its timeout
                    self._no_thread(exc, time.monotonic())
            for spare in self._spares:
                spare.work = None
                spare.latch.release()
            self._spares.clear()
        self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


class Reader:
    """One connection's side of :class:`Turns`: its work reads in a loop of
    ``wait()``, a read, and ``done()`` after a turn."""

    __slots__ = ("_blocking", "_counted", "_deadline", "_fd", "_granted", "_poll", "_registered", "_turns", "resume")

    def __init__(self, turns: Turns, fd: int, resume: Work) -> None:
        self._turns = turns
        self._fd = fd
        #: The connection's work, run on a thread with a turn when its
        #: client says more.
        self.resume = resume
        self._registered = False
        #: The epoll set refused the socket: it reads blocking, on its thread.
        self._blocking = False
        #: A turn was given while the socket was watched: the work's next
        #: wait() takes it.
        self._granted = False
        #: While the thread waits for its client's input itself (one of DIRECT).
        self._poll: select.poll | None = None
        #: Whether the turn being held counts against the limit.
        self._counted = False
        #: When a parked connection is resumed even if its client says
        #: nothing (time.monotonic()), or None.
        self._deadline: float | None = None

    def wait(self, buffered: bool = False, deadline: float | None = None) -> str:
        """What to do next: :data:`TURN` (the socket has input and a turn
        is held: read without blocking, then :meth:`done`), :data:`PARK`
        (nothing to read: return this Reader from the work, and give the
        thread up) or :data:`BLOCK` (the turns are closed: read blocking).
        ``buffered``: input is in memory already (TLS), so take a turn now.
        ``deadline`` (``time.monotonic()``): a TURN comes then at the
        latest, input or not (the read finds nothing)."""
        turns = self._turns
        if self._granted:
            self._granted = False
            self._counted = True
            return TURN
        if turns.closed or self._blocking:
            return BLOCK
        if buffered:
            turns._pass_on()
            with turns._lock:
                turns._held[self] = time.monotonic()  # over the limit, briefly: a rare case
            self._counted = True
            return TURN
        poller = self._poll
        if poller is None and turns._direct < DIRECT:
            with turns._lock:
                if turns._direct < DIRECT:
                    turns._direct += 1
                    poller = self._poll = select.poll()
                    poller.register(self._fd, select.POLLIN)
        if poller is not None:
            turns._pass_on()
            timeout = DIRECT_IDLE if deadline is None else min(DIRECT_IDLE, deadline - time.monotonic())
            if poller.poll(max(0.0, timeout) * 1000) or (deadline is not None and time.monotonic() >= deadline):
                return TURN  # uncounted, as any direct read
            self._leave_direct()  # its client went quiet: the place is another's
        self._deadline = deadline
        return PARK

    def done(self) -> None:
        """End the turn (the thread's next act, wait() or its next
        connection, passes any free turn on)."""
        if self._counted:
            self._counted = False
            with self._turns._lock:
                self._turns._held.pop(self, None)

    def forget(self) -> None:
        """Stop watching the socket (the connection is over, and its
        descriptor's number may be a new connection's next)."""
        turns = self._turns
        if self._poll is not None:
            self._leave_direct()
        self._counted = self._granted = False
        with turns._lock:
            turns._held.pop(self, None)
            if turns._waiting.get(self._fd) is self:
                del turns._waiting[self._fd]
            if self._registered:
                self._registered = False
                try:
                    turns._epoll.unregister(self._fd)
                except (OSError, ValueError):
                    pass  # the epoll set is closed
            if not turns.closed:
                # Its thread goes on to the connection's end, which may wait
                # (the client's last output): its turn goes to the next now.
                turns._grant(time.monotonic())

    def _leave_direct(self) -> None:
        self._poll = None
        with self._turns._lock:
            self._turns._direct -= 1


def make_turns(thread_ended: Callable[[], None] | None = None) -> Turns | None:
    """The server's read turns, or None where there is no epoll."""
    if not hasattr(select, "epoll"):
        return None
    return Turns(LIMIT, thread_ended)
