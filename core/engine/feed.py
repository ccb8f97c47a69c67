"""A room's shared log of encoded lines, one per wire format present in it.

Why a shared log and not a copy per member: saying a line to a room of N
used to cost the sender's thread N queue appends, N checks and N flag
updates, about a thousand CPU instructions a member, for every line. Here
the line is encoded once per wire format and appended once to that
format's :class:`RoomFeed`, whatever the room's size; each member keeps
its position in the feed, and the writer (:mod:`chatcore.engine.writer`)
sends each member everything past its position in one ``send()``, leaving
out the member's own lines (no echo). The per-member work is then paid
once per writer visit, for all the lines that arrived since the last one,
which is the coalescing a single-threaded epoll server gets for free.

The rules that keep every line whole, in order and exactly once:

- Everything that changes a feed (appending, trimming, a member's
  position, a member joining or leaving) happens under the feed's lock.
  The lock is held for a few list operations at a time, never across a
  ``send()`` or a call into other code.
- A member's output is its feeds (what each of its rooms says: one
  :class:`Membership` per room) and its own queue (what is said to it
  alone: a welcome, an error, a private message). Before anything goes on
  its queue, the lines of its feeds it has not had yet are moved to the
  queue first (:meth:`RoomFeed.take`), so the member sees both in the order
  they were said. Lines of two rooms have no order between them but the
  order they reach the member in.
- A room's events are numbered (their offset) and appended to its feeds
  in one order, under the room's order lock
  (``ChatServer._room_order``), and a client entering the room attaches
  and takes its Joined's number under the same lock. So the lines it gets
  live are exactly those numbered after its Joined, and its history
  replay (the ``history`` plugin) is exactly those numbered before. It
  attaches *held*: its lines wait in the feed, neither sent nor moved to
  its queue, until it has been told it is in (its own Joined, rendered
  outside the lock: a cluster's names are a Redis round trip), and is
  then released (:meth:`RoomFeed.release`).
- A member leaving a room takes what it has not had yet along (moved to
  its queue) and is detached; one that is disconnected is detached from
  every feed, so nothing said after its last words reaches it.
- A line may leave out more than its sender: a leave or a rename said to
  each of several rooms is told to a member of two of them once, through
  the first, and the others' lines leave out those members (a
  ``frozenset`` of clients in place of the sender).
- A member whose position falls its queue limit behind while its socket is
  full is a slow consumer (the writer checks when it visits the feed and
  when a send leaves it blocked) and is disconnected. The writer forgets
  the lines every member has had: all of them when it leaves every member
  level, else up to the slowest once :data:`TRIM_AFTER` have piled up. So
  the log holds about the queue limit at most, and nothing for a room
  whose members keep up.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.wire import WireFormat

#: Most lines of a feed joined into one ``send()``: bounds the size of one write.
MAX_TAKE = 1024
#: When members are not level after a visit of the writer (a member busy or
#: blocked), the log is trimmed to the slowest once it holds this many lines.
TRIM_AFTER = 256


class Membership:
    """One client's place in one feed: which line of it it has not had yet.

    A client in several rooms has one per room (``client._memberships``);
    the writer walks a feed's memberships. Every field is changed under the
    feed's lock, except ``pos``, which the writer also reads without it.
    """

    __slots__ = ("client", "feed", "own", "pos", "skipped")

    def __init__(self, client: Client, feed: RoomFeed) -> None:
        self.client = client
        #: The feed, or None once detached.
        self.feed: RoomFeed | None = feed
        #: The number of the next line not yet queued or sent to the client.
        self.pos = feed.end
        #: The number of the last line the client is left out of (its own
        #: words: no echo), or -1.
        self.own = -1
        #: The numbers of the lines from ``pos`` on that the client is left
        #: out of, in order (made with the first).
        self.skipped: list[int] | None = None

    def __repr__(self) -> str:
        return f"<Membership {self.client!r} at {self.pos} of {self.feed!r}>"


def left_out(skip: object, client: Client) -> bool:
    """Whether a line whose ``senders`` entry is ``skip`` is not for ``client``."""
    return skip is client or (skip.__class__ is frozenset and client in skip)


def _leave_out(membership: Membership, first: int, last: int) -> None:
    """Lines ``first`` to ``last`` (numbers) are not for the membership's client."""
    membership.own = last
    skipped = membership.skipped
    if skipped is None:
        membership.skipped = list(range(first, last + 1))
    elif first == last:
        skipped.append(first)
    else:
        skipped.extend(range(first, last + 1))


class RoomFeed:
    """One room's lines in one wire format, and where each member is in them.

    ``lines[i]`` and ``senders[i]`` are line number ``start + i``; a
    membership's ``pos`` is the number of the next line it has not had.
    ``end`` is one past the last line.
    """

    __slots__ = ("_attached", "_held", "end", "lines", "lock", "members", "scheduled", "senders", "start", "wire")

    def __init__(self, wire: WireFormat) -> None:
        self.wire = wire
        #: The attached memberships: an immutable tuple, replaced on every
        #: change (read without the lock on every line).
        self.members: tuple[Membership, ...] = ()
        # The same, by client: removing one of 10,000 members is then a
        # C-level copy, not a Python loop (a disconnect storm is N leaves).
        self._attached: dict[Client, Membership] = {}
        # Attached held (attach()'s hold): not read yet, their lines kept.
        self._held: dict[Client, Membership] = {}
        self.lock = threading.Lock()
        self.lines: list[bytes] = []
        # Who each line is not for (its sender: no echo; a frozenset of
        # clients told already), or None.
        self.senders: list[Client | frozenset[Client] | None] = []
        self.start = 0
        self.end = 0
        # True: on the writer's ready list; None: on its batched list only
        # (presence notices may wait, chatcore.engine.writer); False: idle.
        self.scheduled: bool | None = False

    def __repr__(self) -> str:
        return f"<RoomFeed {self.wire.name}: lines {self.start}-{self.end}, {len(self.members)} members>"

    def membership(self, client: Client) -> Membership | None:
        """``client``'s membership of this feed (held or not), or None."""
        membership = self._attached.get(client)
        return membership if membership is not None else self._held.get(client)

    # All of these are called with the lock held.

    def _mark_own(self, skip: Client | frozenset[Client], first: int, last: int) -> None:
        """Lines ``first`` to ``last`` (numbers) are not for ``skip``."""
        if skip.__class__ is frozenset:
            for client in skip:
                membership = self.membership(client)
                if membership is not None:
                    _leave_out(membership, first, last)
        else:  # a line's sender: attached, or held while it enters the room
            membership = self._attached.get(skip)  # type: ignore[arg-type]
            if membership is None:
                membership = self._held.get(skip)  # type: ignore[arg-type]
            if membership is not None:
                _leave_out(membership, first, last)

    def append(self, line: bytes, sender: Client | frozenset[Client] | None) -> None:
        self.lines.append(line)
        self.senders.append(sender)
        if sender is not None:
            self._mark_own(sender, self.end, self.end)
        self.end += 1

    def extend(self, lines: list[bytes], sender: Client | frozenset[Client] | None) -> None:
        self.lines.extend(lines)
        self.senders.extend([sender] * len(lines))
        first = self.end
        self.end += len(lines)
        if sender is not None:
            self._mark_own(sender, first, self.end - 1)

    def mark_ready(self, batched: bool) -> bool:
        """After an append: True if the feed is to be handed to the writer
        now (with :meth:`~chatcore.engine.writer.Writer.schedule_feeds`, or
        ``schedule_batched`` when ``batched``): it was idle, or it waited
        for a batch of presence notices and this line is urgent."""
        state = self.scheduled
        if state is False or (state is None and not batched):
            self.scheduled = None if batched else True
            return True
        return False

    def attach(self, client: Client, hold: bool = False) -> Membership:
        """Make ``client`` a reader of everything appended from now on.

        :param hold: keep its lines here, unread, until :meth:`release`:
            what is said to it alone meanwhile (that it is in the room)
            goes first.
        """
        membership = Membership(client, self)
        if hold:
            self._held[client] = membership
        else:
            self._add(membership)
        return membership

    def release(self, client: Client) -> bool:
        """Let ``client``'s held membership be read; :return: True if
        lines wait for it (the feed then needs a visit of the writer)."""
        membership = self._held.pop(client, None)
        if membership is None:
            return False
        self._add(membership)
        return membership.pos < self.end

    def _add(self, membership: Membership) -> None:
        client = membership.client
        self._attached[client] = membership
        self.members = tuple(self._attached.values())
        client._memberships = (*client._memberships, membership)

    def detach(self, client: Client) -> bytes:
        """Remove ``client``; :return: what it had not had yet."""
        membership = self._held.pop(client, None)
        if membership is None:
            membership = self._attached.pop(client, None)
            if membership is None:
                return b""
            self.members = tuple(self._attached.values())
            client._memberships = tuple(m for m in client._memberships if m is not membership)
        pending = self.take(membership, self.end - membership.pos)
        membership.feed = None
        return pending

    def empty(self) -> bool:
        """Whether no client is attached, held or not."""
        return not self._attached and not self._held

    def for_member(self, membership: Membership, pos: int, stop: int) -> bytes:
        """Lines ``pos`` to ``stop`` (numbers, ``stop`` excluded) joined, but
        for those its client is left out of (``membership.skipped``, which
        forgets them): the slices between them, so the cost is the number of
        lines left out, not of lines (in a room where everyone talks, each
        visit spans every member's latest line)."""
        skipped = membership.skipped
        assert skipped is not None  # own >= pos: one at least
        lines = self.lines
        start = self.start
        kept: list[bytes] = []
        at = pos
        passed = 0
        for line in skipped:
            if line >= stop:
                break
            passed += 1
            if line >= at:  # never below pos, so always; but a line must not come twice
                kept += lines[at - start : line - start]
                at = line + 1
        del skipped[:passed]
        kept += lines[at - start : stop - start]
        return b"".join(kept)

    def take(self, membership: Membership, most: int = MAX_TAKE) -> bytes:
        """The next lines for ``membership`` (up to ``most``, leaving out
        those not for it) as one piece, and its position moved past them."""
        start = self.start
        pos = membership.pos  # never below start: trim() waits for attached members
        stop = pos + most
        if stop > self.end:  # noqa: PLR1730 (the writer's hot path: a compare, not a call)
            stop = self.end
        if pos >= stop:
            return b""
        membership.pos = stop
        first = pos - start
        last = stop - start
        if membership.own >= pos:  # lines not for it may be in the way: its own (no echo)
            return self.for_member(membership, pos, stop)
        if last - first == 1:
            return self.lines[first]
        return b"".join(self.lines[first:last])

    def trim(self) -> None:
        """Forget the lines every attached member has had."""
        low = self.end
        for membership in self.members:
            low = min(low, membership.pos)
        self.forget(low)

    def forget(self, upto: int) -> None:
        """Forget the lines before line number ``upto``, which every
        attached member has had (a held one's are kept)."""
        if self._held:
            upto = min(upto, *(m.pos for m in self._held.values()))
        done = upto - self.start
        if done > 0:
            del self.lines[:done]
            del self.senders[:done]
            self.start = upto
