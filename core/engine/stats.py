"""What the engine counts while it runs, for metrics read at scrape time.

Two kinds of counts, by how often they change:

- Per message and per delivery (the hot path): each thread counts into its
  own :class:`ThreadCounts`, plain ints that only that thread writes, so no
  lock and no lost increment. A reader sums every thread's counts
  (:meth:`Stats.totals`). A thread that ends folds its counts into one
  retired total as its last act (:meth:`Stats.thread_ended`; the engine
  does it for every connection's thread), so a server that has served a
  million connections keeps one object per *live* counting thread, scraped
  or not. The fold is the thread's own act rather than a check of
  ``Thread.is_alive()``: connection threads have no ``threading.Thread``
  (docs/performance.md, "Connect storm"). A thread that never calls it (a
  plugin's long-lived thread) keeps its entry; its counts are never lost.
- Per connection (accepted, refused, disconnected, and the deliveries of
  the engine's own join, leave and rename notices): a lock and a dict, once
  per connection, which is nothing next to a thread start. Those
  deliveries go under the lock, not into the thread's counts, so a client
  that never sends a message costs no per-thread counts (about 600 bytes
  each, with the ``threading.local`` entry: issue 16's memory per idle client).

The writer thread keeps its own count of bytes sent (``Writer.sent_bytes``).
A total read while threads count may be a few events behind the others; each
one only ever grows.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

#: Upper bounds, in seconds, of the latency histogram's buckets: from a
#: microsecond (a message queued to a small room) to a second (a stalled
#: server); +Inf is implied. Prometheus' default buckets start at 5 ms,
#: where chatcore's latencies end.
LATENCY_BUCKETS = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
)


class ThreadCounts:
    """One thread's counts; written only by that thread."""

    __slots__ = ("deliveries", "latency_buckets", "latency_sum", "messages")

    def __init__(self) -> None:
        #: Messages (chat, actions, private) that arrived, before any filter.
        self.messages = 0
        #: Events queued to a recipient: a room event, one per recipient;
        #: a private message, one.
        self.deliveries = 0
        #: Per bucket of :data:`LATENCY_BUCKETS`, and one for +Inf: how many
        #: messages took that long from arrival to queueing for every
        #: recipient (not cumulative; the reader adds them up).
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe_latency(self, seconds: float, messages: int = 1) -> None:
        """``messages`` messages (the lines of one read, published
        together) each took ``seconds`` from arrival to queueing."""
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += messages
        self.latency_sum += seconds * messages

    def add(self, other: ThreadCounts) -> None:
        self.messages += other.messages
        self.deliveries += other.deliveries
        self.latency_sum += other.latency_sum
        for index, count in enumerate(other.latency_buckets):
            self.latency_buckets[index] += count


class Stats:
    """The engine's counts for one server.

    For the engine: :meth:`mine` on the hot path, :meth:`connection_event`
    per connection. For metrics: :meth:`totals`, :meth:`disconnects`,
    :meth:`refusals`.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        #: The counts of threads that have not ended (or not said so).
        self._live: set[ThreadCounts] = set()
        self._retired = ThreadCounts()
        self._disconnects: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        #: Connections accepted (past the refusals), since the start.
        self.accepted = 0

    def mine(self) -> ThreadCounts:
        """The calling thread's counts (made on its first call)."""
        try:
            counts: ThreadCounts = self._local.counts
        except AttributeError:
            counts = self._local.counts = ThreadCounts()
            with self._lock:
                self._live.add(counts)
        return counts

    def thread_ended(self) -> None:
        """The calling thread counts no more: its counts go to the retired
        total, exactly once. Its last act; nothing if it never counted."""
        try:
            counts: ThreadCounts = self._local.counts
        except AttributeError:
            return  # it never counted
        del self._local.counts
        with self._lock:
            self._live.discard(counts)
            self._retired.add(counts)

    def totals(self) -> ThreadCounts:
        """Every thread's counts added up, those that ended included."""
        total = ThreadCounts()
        with self._lock:
            live = list(self._live)
            total.add(self._retired)
        # A thread that ends from here on is in ``live`` and not yet in the
        # retired total read above: counted once either way.
        for counts in live:
            total.add(counts)
        return total

    # -- per connection ------------------------------------------------------

    def accepted_connection(self) -> None:
        with self._lock:
            self.accepted += 1

    def delivered(self, count: int) -> None:
        """``count`` deliveries of a once-per-connection event (a join or a
        leave notice); messages count theirs in :meth:`mine`."""
        with self._lock:
            self._retired.deliveries += count

    def refused(self, reason: str) -> None:
        """A connection was refused; ``reason`` is a short label."""
        with self._lock:
            self._refusals[reason] += 1

    def disconnected(self, cause: str) -> None:
        """A client was disconnected; ``cause`` is a short label."""
        with self._lock:
            self._disconnects[cause] += 1

    def disconnects(self) -> dict[str, int]:
        with self._lock:
            return dict(self._disconnects)

    def refusals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._refusals)
