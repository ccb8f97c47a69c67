"""Where the redis plugin's reader starts reading a room: the publisher
reports where a room's first Joined went (:class:`Arrivals`), the reader
starts there. The one piece the two threads share."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

log = logging.getLogger("chatcore.redis")


@dataclass(slots=True)
class Cursor:
    """Where the reader is in one room's stream."""

    #: The last entry read (a stream id, never ``$``: re-reading from ``$``
    #: after a drop would skip whatever was added meanwhile).
    last_id: str
    #: The epoch and offset of the last entry read (None, 0 before any).
    epoch: str | None
    offset: int


@dataclass(slots=True)
class Start:
    """Where the reader is to start reading a room (see :class:`Arrivals`)."""

    #: This server's Joined entry in the room; None: the stream's top, now.
    cursor: Cursor | None
    #: Why starting at the top may have skipped something (told as a gap).
    gap: str | None = None
    #: This server's number of the Joined, when Redis has it but where it
    #: went is not known (a retried publish whose reply was lost): the
    #: reader looks for it in the stream, and tells no gap if it is there.
    seq: int | None = None


class Arrivals:
    """Where the reader starts reading a room that this server's clients enter.

    Members must hear what the other servers say in the room after they
    entered it, that is after this server's Joined entry in the room's
    stream. The reader cannot simply start at the stream's top when it
    notices the room: it notices only when its blocking read returns, up to
    :data:`.reader.BLOCK_MS` later, and whatever was said in between would be
    skipped without a trace (issue 13's bug). So the publisher reports where
    the Joined of a room's first member went (the publish script returns
    it), and the reader starts there.

    When that is not known, the reader starts at the top: if the Joined was
    refused, given up or its reply lost (the members are told of a possible
    gap), or if a room got members here without a Joined within
    ``grace`` seconds (logged).

    One lock; :meth:`entered` runs on client threads (with the publisher's
    queue lock held), :meth:`placed` on the publisher's, and
    :meth:`plan` and :meth:`begin` on the reader's thread.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._lock = threading.Lock()
        #: Rooms the reader reads.
        self._followed: set[str] = set()
        #: Rooms whose first Joined is on its way to Redis: its sequence number.
        self._asked: dict[str, int] = {}
        #: Where those went.
        self._placed: dict[str, Start] = {}
        #: Rooms with members here and no Joined seen yet: since when.
        self._unannounced: dict[str, float] = {}

    def entered(self, room: str, seq: int) -> bool:
        """A Joined (number ``seq``) is queued for ``room``: True if the
        reader is to learn where it goes (it does not read the room, nor
        waits for an earlier Joined's place)."""
        with self._lock:
            if room in self._followed or room in self._asked or room in self._placed:
                return False
            self._asked[room] = seq
            self._unannounced.pop(room, None)
            return True

    def placed(
        self, room: str, seq: int, cursor: Cursor | None, gap: str | None = None, *, in_stream: bool = False
    ) -> None:
        """Where the Joined number ``seq`` went (None: not known, and why;
        ``in_stream``: Redis has it, somewhere in the room's stream)."""
        with self._lock:
            if self._asked.get(room) == seq:
                del self._asked[room]
                self._placed[room] = Start(cursor, None if cursor else gap, seq if in_stream and not cursor else None)

    def plan(self, rooms: Callable[[], Collection[str]]) -> tuple[dict[str, Start], list[str]]:
        """The rooms to start reading and where, and the rooms to stop
        reading (done: they count as not read from now on).

        ``rooms`` gives the rooms with members here; it is read under the
        lock, so a client entering a room after this finds it not read and
        has its Joined placed.
        """
        now = time.monotonic()
        with self._lock:
            here = set(rooms())
            stop = [room for room in self._followed if room not in here]
            self._followed.difference_update(stop)
            for table in (self._asked, self._placed, self._unannounced):
                for room in [room for room in table if room not in here]:
                    del table[room]  # everyone left before the reader began
            start: dict[str, Start] = {}
            for room in here - self._followed:
                if room in self._placed:
                    start[room] = self._placed[room]
                elif room not in self._asked:
                    since = self._unannounced.setdefault(room, now)
                    if now - since >= self.grace:
                        start[room] = Start(None)
            return start, stop

    def begin(self, room: str, start: Start) -> bool:
        """The reader reads ``room`` from now on, as :meth:`plan` said; False
        if things changed meanwhile (plan again)."""
        with self._lock:
            if room in self._followed or room in self._asked:
                return False
            if room in self._placed:
                if self._placed[room] is not start:
                    return False
                del self._placed[room]
            elif room not in self._unannounced:
                return False
            else:
                del self._unannounced[room]
                log.warning("room %s has members here but no join was published; reading it from now on", room)
            self._followed.add(room)
            return True
