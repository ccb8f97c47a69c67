"""History you can ask for: the queries, and the seam to whatever keeps it.

A protocol asks for a target's past its own way (IRC's ``CHATHISTORY``, a
web page scrolling up, the native ``/history``) but never imports the plugin
that keeps it: it asks the server for its :attr:`ChatServer.history
<chatcore.engine.server.ChatServer.history>`, the :class:`HistoryService` a
plugin supplied through ``chatcore_history_service`` (the bundled
``history`` plugin's), or None on a server that keeps no history.

A target is a room, or a private conversation (:func:`conversation`).
A :class:`Query` is one of IRC's ``CHATHISTORY`` subcommands (the model:
https://ircv3.net/specs/extensions/chathistory), with each point given as a
:class:`Mark`: a message ID (:attr:`RoomEvent.msgid
<chatcore.events.RoomEvent.msgid>`) or a time. :func:`select` answers one
from a target's kept events, oldest first; every store (memory, SQLite, a
cluster's Redis streams) answers with it, so they agree on what each query
means.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatcore.events import Chat, parse_msgid

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.events import PrivateMessage, RoomEvent

#: The kinds of :class:`Query`, as CHATHISTORY names them (lower case).
QUERY_KINDS = ("latest", "before", "after", "around", "between")
#: The prefix of a private conversation: of its target in a query (``@bob``)
#: and of the name it is kept under (:func:`conversation`); no room name
#: or nick starts with it.
CONVERSATION = "@"


#: Marks the second name of :func:`guest_conversation`: no nick or account has it.
GUEST = "~"


def conversation(first: str, second: str) -> str:
    """The target under which the private messages between the accounts
    ``first`` and ``second`` are kept: the same whoever sent them
    (``@alice,bob``: the two names case-folded, in order)."""
    one, other = sorted((first.casefold(), second.casefold()))
    return f"{CONVERSATION}{one},{other}"


def guest_conversation(account: str, nick: str) -> str:
    """The target under which the private messages between the account
    ``account`` and ``nick``, someone not logged in, are kept for the
    account alone (``@alice,~guest``), as Ergo keeps them for its
    registered side: whoever takes that nick later, even as an account,
    never reads them."""
    return f"{CONVERSATION}{account.casefold()},{GUEST}{nick.casefold()}"


def private_line(key: str, event: PrivateMessage) -> Chat:
    """A private message as its conversation ``key`` keeps it: chat with the
    sender's nick, its time, its account, and its message ID (the epoch and
    offset of the sender's server's numbering of private lines), so that a
    replayed line matches the live one."""
    epoch, offset = parse_msgid(event.msgid) or ("", 0)
    return Chat(key, event.sender, event.text, offset, epoch, event.time, notice=event.notice, account=event.account)


@dataclass(frozen=True)
class Mark:
    """A point in a target's history: a message ID (``EPOCH:OFFSET``), or a
    time in seconds since the epoch when ``msgid`` is ``""``."""

    msgid: str = ""
    time: float = 0.0

    def __str__(self) -> str:
        return f"msgid={self.msgid}" if self.msgid else f"time={self.time}"


@dataclass(frozen=True)
class Query:
    """A question to a target's history.

    :ivar kind: one of :data:`QUERY_KINDS`: ``latest`` (the newest events,
        after ``start`` if given), ``before`` and ``after`` ``start``,
        ``around`` ``start`` (the event itself included if it is one), or
        ``between`` ``start`` and ``end`` (either order: the events nearest
        ``start`` are the ones given when there are more than ``limit``).
    :ivar limit: at most this many events.
    """

    kind: str
    limit: int
    start: Mark | None = None
    end: Mark | None = None


def _position(events: Sequence[RoomEvent], mark: Mark, times: list[float]) -> tuple[int, int] | None:
    """Where ``mark`` falls in ``events``: ``(lo, hi)``, the indexes of the
    events before it (``events[:lo]``) and after it (``events[hi:]``); a
    message ID's own event lies between. None for a message ID not kept."""
    if mark.msgid:
        for index in range(len(events) - 1, -1, -1):  # recent ones are the ones asked for
            if events[index].msgid == mark.msgid:
                return index, index + 1
        return None
    # Times are in publish order nearly always; one relayed late may be a
    # little out of it, and is then placed by its neighbours.
    return bisect.bisect_left(times, mark.time), bisect.bisect_right(times, mark.time)


def select(events: Sequence[RoomEvent], query: Query) -> list[RoomEvent]:
    """The events of ``events`` (a target's history, oldest first) that
    answer ``query``, oldest first; none if a message ID it names is not
    kept (any more)."""
    limit = max(0, query.limit)
    if not limit or not events:
        return []
    times = [event.time for event in events]
    start = None if query.start is None else _position(events, query.start, times)
    if query.start is not None and start is None:
        return []
    if query.kind == "latest":
        found = events[start[1] :] if start else events
        return list(found[-limit:])
    if start is None:
        return []
    lo, hi = start
    if query.kind == "before":
        return list(events[max(0, lo - limit) : lo])
    if query.kind == "after":
        return list(events[hi : hi + limit])
    if query.kind == "around":
        before = (limit - (hi - lo)) // 2
        first = max(0, lo - before)
        return list(events[first : first + limit])
    if query.kind == "between" and query.end is not None:
        end = _position(events, query.end, times)
        if end is None:
            return []
        if hi <= end[0]:  # forwards: the first after start
            return list(events[hi : end[0]][:limit])
        if end[1] <= lo:  # backwards: the last before start
            return list(events[end[1] : lo][-limit:])
        return []
    return []


class HistoryService:
    """What a protocol may ask of the history: each method answers for
    ``client``, who may read only the rooms it is in and its own private
    conversations (those of its account), and says why not otherwise.

    On the client's own thread; calls for different clients overlap. An
    answer may wait briefly for a database or the cluster.
    """

    @property
    def max_limit(self) -> int:
        """The most events one query answers (IRC's ISUPPORT ``CHATHISTORY``)."""
        return 100

    def query(self, client: Client, target: str, query: Query) -> list[RoomEvent] | str:
        """The events of ``target`` that answer ``query``, oldest first, or
        why ``client`` may not read it (one short sentence). ``target`` is a
        room, or ``@NICK`` for the private conversation with that person's
        account, whose events are :class:`~chatcore.events.Chat` with the
        conversation's name (:func:`conversation`) as their room and the
        sender's nick."""
        raise NotImplementedError

    def targets(self, client: Client, start: float, end: float, limit: int) -> list[tuple[str, float]]:
        """The targets ``client`` may read whose latest event was said
        between the times ``start`` and ``end`` (the earlier of the two
        included, the later not): ``(room or @NICK, time of its latest
        event)``, oldest first; at most ``limit``, counted from ``start``
        (so the latest ones when ``start`` is after ``end``)."""
        raise NotImplementedError
