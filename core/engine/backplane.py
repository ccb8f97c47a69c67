"""The backplane: what joins this server's rooms to everything beyond it.

Everything the engine needs to know or say beyond its own connections goes
through one object, the server's :attr:`~chatcore.engine.server.ChatServer.backplane`:

- **numbering**: every room event's identity, its position (``epoch``,
  ``offset``: a :class:`StreamPosition`'s fields) in its room's stream
  (:meth:`Backplane.next_position`, and :meth:`Backplane.epoch_of` the
  room's current epoch);
- **publishing**: the events said here, to be carried to the other servers
  (:meth:`Backplane.published`);
- **history**: a room's recent events as the whole cluster said them
  (:meth:`Backplane.history`), and the private lines of logged-in accounts
  kept where every server reads them (:meth:`Backplane.keep_private`);
- **presence**: nicknames claimed across servers, and who is in which room
  elsewhere and away there (:meth:`Backplane.claim_nick`, :meth:`Backplane.release_nick`,
  :meth:`Backplane.members`, :meth:`Backplane.people`, :meth:`Backplane.count_elsewhere`);
- **private messages** (and IRC's ``TAGMSG`` to a nick) to a nickname on
  another server (:meth:`Backplane.send_private`);
- **moderation**: an operator's kick, mute or ban, carried to every server
  (:meth:`Backplane.moderate`);
- **the state store**: accounts, registered rooms and whatever else must
  outlive a restart, shared by every server of a cluster
  (:meth:`Backplane.state_store`);
- **health**: what keeps the server from serving as it should, such as a
  cluster link that is down (:meth:`Backplane.problems`).

:class:`Backplane` itself is the default for one server on its own: rooms
numbered in this process and nothing beyond it. A cluster plugin replaces
it as a whole by returning its own from ``chatcore_backplane`` (the
model is Centrifuge's ``Broker``, with its memory broker as the default, and
python-socketio's ``base_manager``/``pubsub_manager`` split); the bundled
``redis`` plugin's is :class:`chatcore.plugins.redis.RedisBackplane`.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.engine.rooms import RoomState
    from chatcore.engine.server import ChatServer
    from chatcore.engine.store import Store
    from chatcore.events import PrivateMessage, PrivateTags, RoomEvent


class StreamPosition(NamedTuple):
    """Where an event stands in its room's stream.

    :ivar epoch: names one numbering of the room: offsets are comparable
        only within an epoch, and a new epoch (a restart, a room dropped
        and made again) means what came before is not known.
    :ivar offset: 1, 2, 3 ... within the epoch, unique and gap-free.
    """

    epoch: str
    offset: int


class Person(NamedTuple):
    """Someone on another server of the cluster (:meth:`Backplane.people`).

    :ivar rooms: the rooms they are in.
    :ivar away: their away message (:attr:`Client.away
        <chatcore.engine.connection.Client.away>`), ``""`` if they are not away.
    """

    rooms: tuple[str, ...]
    away: str = ""


class Backplane:
    """One server on its own: rooms numbered in this process, nobody elsewhere.

    Thread-safe: every method may be called from any client's thread, and
    calls overlap. A subclass (a cluster plugin's) overrides what it
    supplies; each method says what the engine expects of it.

    Numbering: offsets 1, 2, 3 ... per room, under an epoch made of one
    drawn when the server starts and a count of the rooms numbered since,
    so a client that resumes across a restart, or after the room was
    emptied and made again, sees the numbering changed. A room's counter
    is dropped when the room empties (:meth:`room_emptied`): no two events
    of a room ever share a position, and 100,000 rooms visited once leave
    nothing behind.
    """

    #: A short name for logs and metrics.
    name = "local"

    def __init__(self) -> None:
        self.server: ChatServer | None = None
        #: Drawn at the start: the first part of every room's epoch.
        self.epoch = secrets.token_hex(4)
        self._counters: dict[str, tuple[str, Iterator[int]]] = {}
        self._generations = itertools.count(1)
        self._lock = threading.Lock()

    # -- life cycle -----------------------------------------------------------

    def start(self, server: ChatServer) -> None:
        """The server is starting (after the plugins' ``chatcore_server_start``)."""
        self.server = server

    def stop(self) -> None:
        """The server has stopped serving; let go of everything."""

    # -- health -------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What keeps this server from serving as it should, beyond its own
        connections: one short sentence each (``"the cluster link to Redis
        is down (...)"``), or none. The server is not ready while there are
        any (:meth:`ChatServer.readiness_problems
        <chatcore.engine.server.ChatServer.readiness_problems>`: the
        metrics plugin's ``/readyz`` answers 503 with them). Called on any
        thread, by health checks every few seconds: answer from the state
        at hand, without waiting on the network."""
        return []

    # -- numbering and publishing --------------------------------------------------

    def next_position(self, room: str) -> tuple[str, int]:
        """The position of ``room``'s next event, ``(epoch, offset)``: a
        :class:`StreamPosition`'s fields in a plain tuple, which costs a
        third of the named one. Called for every event, on the publishing
        thread: keep it fast."""
        numbering = self._counters.get(room)
        if numbering is None:
            with self._lock:
                numbering = self._counters.get(room)
                if numbering is None:
                    # Each numbering of a room has an epoch of its own: the
                    # server's, and the how-manieth room numbering this is.
                    epoch = f"{self.epoch}-{next(self._generations)}"
                    numbering = self._counters[room] = (epoch, itertools.count(1))
        # next() of an itertools.count is one atomic step under the GIL.
        return numbering[0], next(numbering[1])

    def epoch_of(self, room: str) -> str | None:
        """The epoch ``room``'s events are numbered in now, or None for a
        room not numbered (nobody has said anything in it since it was made).
        A web page's resume compares it with the epoch it saw: a backplane
        that numbers rooms itself (:meth:`next_position`) answers this too."""
        numbering = self._counters.get(room)
        return None if numbering is None else numbering[0]

    def room_emptied(self, room: str) -> None:
        """The last member here left ``room``: drop what numbering it keeps."""
        with self._lock:
            self._counters.pop(room, None)

    def enter_room(self, room: str, founded: RoomState) -> RoomState:
        """The first member here is entering ``room``: its state as the
        cluster has it (topic, modes, lists, roles), or ``founded`` (the
        entering member its operator) if the room is new everywhere, which
        a cluster then keeps for the other servers. The engine checks the
        entry against the answer (a ban or ``+i`` set on another server
        holds here). On the entering client's thread; for a room it then
        does not enter (refused), :meth:`room_emptied` follows."""
        return founded

    def published(self, events: Sequence[RoomEvent]) -> None:
        """``events`` (of one room, numbered) were said here: a cluster
        carries them to the other servers, which publish them to their
        members with ``server.publish(event, relay=False)``. On the
        publishing thread, after the members here have them queued: keep
        it fast (queue the work)."""

    # -- history ----------------------------------------------------------------------

    def history(self, room: str, limit: int) -> list[RoomEvent] | None:
        """``room``'s last ``limit`` events as the whole cluster said them,
        oldest first, or None if the backplane keeps none (then the history
        plugin answers from what this server saw). ``room`` may be a private
        conversation's name (``@alice,bob``): its lines kept by
        :meth:`keep_private`, as :func:`chatcore.engine.history.private_line`
        makes them."""
        return None

    def keep_private(self, key: str, event: PrivateMessage, lines: int) -> None:
        """Keep ``event``, a private line between two logged-in accounts,
        in the private conversation ``key``
        (:func:`chatcore.engine.history.conversation`), where every server
        of a cluster reads it: :meth:`history` of ``key`` then answers with
        it, and :meth:`conversations` lists ``key`` for both accounts. Keep
        about the last ``lines`` of the conversation. Called by the server
        of the recipient (the one that knows both accounts), on the thread
        that delivered it: keep it fast (queue the work)."""

    def conversations(self, account: str, start: float, end: float) -> list[tuple[str, float]] | None:
        """The private conversations of ``account`` kept by
        :meth:`keep_private` whose latest line was said at or after the time
        ``start`` and before ``end``, with that time; or None if the
        backplane keeps none (then the history plugin answers from what
        this server saw). On the asking client's thread."""
        return None

    # -- presence ---------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """True if there is anyone beyond this server: other servers' nicknames
        and members to ask about, private messages to carry."""
        return False

    def claim_nick(self, client: Client, nick: str) -> str | None:
        """Claim ``nick`` for ``client`` across the cluster, atomically: None
        if it is free (it is then the client's), else why not. The engine
        still checks this server's own clients afterwards, and calls
        :meth:`release_nick` if it refuses. On the client's thread; calls
        overlap, also for one name."""
        return None

    def release_nick(self, client: Client, nick: str) -> None:
        """``client`` no longer uses ``nick``: it renamed, left, or the
        engine refused a name the claim accepted. Another client here may
        hold the same name (a refused rename): check
        ``server.registry.find(nick)`` before giving it up."""

    def members(self) -> dict[str, list[str]]:
        """Who is in which room on the other servers: ``{room: [nick, ...]}``
        (this server's own are the registry's). On the asking client's thread."""
        return {}

    def people(self) -> dict[str, Person]:
        """Who is on the other servers, by nickname, with their rooms and
        away message (IRC's WHO and WHOIS). On the asking client's thread."""
        return {}

    def count_elsewhere(self, room: str) -> int:
        """How many people are in ``room`` on the other servers, as the
        backplane last learned it (it may be a few seconds old): for a figure
        shown on every arrival, such as the welcome's, where asking the
        cluster each time would cost a round trip per arrival. Any thread."""
        return 0

    def away_elsewhere(self, nick: str) -> str:
        """The away message of ``nick`` on another server (``""``: not away,
        or not there), as the backplane last learned it (it may be a few
        seconds old): for IRC's 301 answer to every private message, which
        must not cost a round trip each. Any thread."""
        return ""

    # -- private messages and moderation ----------------------------------------------

    def send_private(self, sender: Client, message: PrivateMessage | PrivateTags) -> bool | str | None:
        """Deliver a filtered private message, or client-only tags without
        text (IRC's ``TAGMSG nick``), to a nickname not on this server, with
        its ``tags`` and ``msgid`` (what the backplane can carry of them):
        True if delivered, a reason if the person exists but could not be
        reached, None if nobody has that nickname. On the sender's thread."""
        return None

    def moderate(self, action: str, details: dict[str, Any]) -> bool | str | None:
        """Carry an operator's ``action`` to the other servers, which apply it
        as the ``opers`` plugin does here: ``kick`` (``nick``, ``reason``),
        ``mute`` (``nick``, ``until``, ``host`` if known), ``unmute``
        (``target``), ``ban`` (``network``, ``until``, ``reason``), ``unban``
        (``network``); each with ``by`` and ``oper``. True if sent, why not,
        or None if there is nobody to send it to (no cluster, or a ``nick``
        given without ``host`` is on no other server)."""
        return None

    # -- the state store ----------------------------------------------------------------

    def state_store(self) -> Store | None:
        """The store every server of the cluster shares
        (:mod:`chatcore.engine.store`), or None: the server then opens its
        own, ``--state-db``. Called once, when a plugin first needs the
        store (``server.store``), on that plugin's thread; the server closes
        it when it stops."""
        return None
