"""What the server says to clients: a small set of typed, immutable events.

Every byte a client receives is the rendering of one of these by the wire
format of its connection (:mod:`chatcore.wire`): the native line protocol
turns :class:`Chat` into ``<alice> hi``, an IRC front-end into
``:alice!alice@host PRIVMSG #lobby :hi``, a web front-end into JSON. Plugins,
the room relay hook (``chatcore_room_event``) and the history plugin see
events, never rendered lines, so a cluster plugin can carry them to another
server and every front-end renders them its own way.

Two families:

- :class:`RoomEvent`: said to a room (chat, actions, joins, leaves, nick
  changes, room notices). :meth:`ChatServer.publish
  <chatcore.engine.server.ChatServer.publish>` numbers each one in its room's
  stream (:attr:`~RoomEvent.offset` within :attr:`~RoomEvent.epoch`), renders it
  once per wire format present in the room and queues the bytes to every
  member.
- Events for one client (:class:`Welcome`, :class:`Notice`, :class:`Error`,
  :class:`PrivateMessage`, :class:`Replay`, :class:`Members`,
  :class:`RoomList`), sent with :meth:`Client.send
  <chatcore.engine.connection.Client.send>`.

An event's identity is ``(room, epoch, offset)``: offsets count a room's
events from 1 without gaps within one epoch, and the epoch changes whenever
the numbering starts again (the server's backplane numbers rooms,
:mod:`chatcore.engine.backplane`: the local one gives a room a new epoch at
every start and when the room is made again). A client that
reconnects asks for what came after the highest offset below which it saw
every event (events of concurrent senders may arrive slightly out of offset
order; each sender's arrive in order) and drops offsets it already has.
The same identity, written ``EPOCH:OFFSET``, is the event's message ID
(:attr:`RoomEvent.msgid`): IRC's ``msgid`` tag, history queries by ID. An
event from another server of a cluster keeps the message ID its own server
gave it (:attr:`RoomEvent.origin`), so that a line has one ID everywhere,
while its epoch and offset are this server's numbering, which resumes rely
on.

The events a person causes (:class:`Chat`, :class:`Action`, :class:`Joined`,
:class:`Left`, :class:`NickChanged`) carry their ``nick`` and ``user``: the
user name they gave on connecting (IRC's ``USER``; ``""`` for those who gave
none), which IRC shows in prefixes (``nick!user@host``), so that a wire
format needs nothing but the event to render it.

Events are frozen dataclasses: safe to share between threads and to keep
in history. :class:`Chat` and :class:`Action`, made for every message, have
an ``__init__`` that fills the instance in one step: a frozen dataclass's own
sets each field with ``object.__setattr__``, four times the cost, and that
was most of what events added to the delivery path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "AccountChanged",
    "Action",
    "AwayChanged",
    "Chat",
    "Disconnected",
    "Error",
    "Event",
    "Invitation",
    "Invited",
    "Joined",
    "Left",
    "Members",
    "ModeChanged",
    "NickChanged",
    "Notice",
    "OperatorChanged",
    "PrivateMessage",
    "PrivateTags",
    "RealnameChanged",
    "Replay",
    "RoomEvent",
    "RoomList",
    "RoomNotice",
    "Tagged",
    "TopicChanged",
    "Welcome",
    "kick_text",
    "parse_msgid",
]


@dataclass(frozen=True)
class Event:
    """Base of every event."""


@dataclass(frozen=True)
class RoomEvent(Event):
    """Something said to a whole room.

    :ivar room: the room.
    :ivar offset: the event's number in the room's stream, from 1; 0 until
        the server has published it.
    :ivar epoch: the numbering the offset belongs to (see the module's
        docstring); ``""`` until published.
    :ivar time: when it was published, in seconds since the epoch (0.0 until
        then).
    :ivar told_in: rooms whose members were told this already: one person's
        leave or rename is said to each of their rooms, and someone in two
        of them hears it once, through the first (IRC's ``QUIT`` and
        ``NICK``). Their members are left out here, on every server.
    :ivar origin: the message ID the server where it was said gave it, for
        an event from another server of a cluster; ``""`` for one said here
        (its epoch and offset are its ID).
    """

    room: str
    offset: int = field(default=0, kw_only=True)
    epoch: str = field(default="", kw_only=True)
    time: float = field(default=0.0, kw_only=True)
    told_in: tuple[str, ...] = field(default=(), kw_only=True)
    origin: str = field(default="", kw_only=True)

    @property
    def msgid(self) -> str:
        """The event's message ID, the same on every protocol and every server
        of a cluster: the :attr:`origin` of one said elsewhere, else its
        epoch and offset, ``EPOCH:OFFSET`` (``""`` until published).
        :func:`parse_msgid` reads one back."""
        return self.origin or (f"{self.epoch}:{self.offset}" if self.offset else "")

    #: True for presence notices, which may reach members up to
    #: ``chatcore.engine.writer.BATCH_DELAY`` late so that a burst of them
    #: (a connect storm) leaves in one send per member; never reordered
    #: with the events around them. False: sent at once.
    batched: ClassVar[bool] = False
    #: True for events that change the room's state
    #: (:meth:`chatcore.engine.rooms.Rooms.apply`): joins, leaves, renames,
    #: topic and mode changes.
    changes_state: ClassVar[bool] = False
    #: True for events told to the room's operators alone (an
    #: :class:`Invitation`), on every server: the other members are left
    #: out as the ``told_in`` ones are.
    operators_only: ClassVar[bool] = False


@dataclass(frozen=True, init=False)
class Chat(RoomEvent):
    """``nick`` said ``text`` (native: ``<nick> text``). Not sent back to its sender.

    :ivar notice: said as a notice (IRC's ``NOTICE #room``: chat that must
        never get an automatic reply, what bots and services say). IRC
        clients get it as ``NOTICE``; native and web clients see chat (the
        web's ``chat`` has ``"notice": true``).
    :ivar tags: client-only tags the sender attached, as IRCv3 writes them
        (``+draft/reply=e1:7``; :mod:`chatcore.wire.tags`), or ``""``:
        relayed to IRC clients with ``message-tags``.
    :ivar account: the account the sender was logged in to, or ``""`` (IRC's
        ``account-tag``).
    """

    nick: str
    text: str
    user: str = field(default="", kw_only=True)
    notice: bool = field(default=False, kw_only=True)
    tags: str = field(default="", kw_only=True)
    account: str = field(default="", kw_only=True)

    # The identity may be given by position too: the engine makes one of
    # these per message, and keywords cost a fifth of the call.
    def __init__(  # noqa: PLR0917
        self,
        room: str,
        nick: str,
        text: str,
        offset: int = 0,
        epoch: str = "",
        time: float = 0.0,
        user: str = "",
        notice: bool = False,
        tags: str = "",
        account: str = "",
        origin: str = "",
    ) -> None:
        # The fields the dataclass declares, in one step (see the module
        # docstring). Tags and an account are rare: left out, they read as
        # the class's defaults ("").
        self.__dict__.update(
            room=room, offset=offset, epoch=epoch, time=time, nick=nick, text=text, user=user, notice=notice
        )
        if tags or account:
            self.__dict__.update(tags=tags, account=account)
        if origin:  # else the class's default: one entry fewer to set per message
            self.__dict__["origin"] = origin


@dataclass(frozen=True, init=False)
class Action(RoomEvent):
    """``nick`` did ``text`` with ``/me`` (native: ``* nick text``). Sent to
    its sender too, unless the sender's wire format does not echo actions
    (IRC clients show their own). ``account``: as :attr:`Chat.account`."""

    nick: str
    text: str
    user: str = field(default="", kw_only=True)
    account: str = field(default="", kw_only=True)

    def __init__(  # noqa: PLR0917
        self,
        room: str,
        nick: str,
        text: str,
        offset: int = 0,
        epoch: str = "",
        time: float = 0.0,
        user: str = "",
        account: str = "",
        origin: str = "",
    ) -> None:
        self.__dict__.update(
            room=room, offset=offset, epoch=epoch, time=time, nick=nick, text=text, user=user, account=account
        )
        if origin:
            self.__dict__["origin"] = origin


@dataclass(frozen=True)
class Tagged(RoomEvent):
    """``nick`` sent the room client-only ``tags`` without text (IRC's
    ``TAGMSG``: ``+typing=active`` while typing, ``+draft/react`` reactions),
    as IRCv3 writes them (:mod:`chatcore.wire.tags`). Not sent back to its
    sender. IRC clients with ``message-tags`` get the ``TAGMSG``; the web
    page shows ``+typing`` as who is typing; native clients see nothing."""

    nick: str
    tags: str
    user: str = field(default="", kw_only=True)
    account: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class Joined(RoomEvent):
    """``nick`` entered the room (native: ``* nick joined``), logged in to
    ``account`` (or ``""``), with the real name it gave (``realname``, IRC's
    ``USER``; ``""`` for none): IRC's ``extended-join`` shows both."""

    batched: ClassVar[bool] = True
    changes_state: ClassVar[bool] = True

    nick: str
    user: str = field(default="", kw_only=True)
    account: str = field(default="", kw_only=True)
    realname: str = field(default="", kw_only=True)


def parse_msgid(msgid: str) -> tuple[str, int] | None:
    """The epoch and offset a :attr:`RoomEvent.msgid` names, or None if
    ``msgid`` is not one (a client may send anything)."""
    epoch, sep, offset = msgid.rpartition(":")
    if not sep or not epoch or not (offset.isascii() and offset.isdigit()) or len(offset) > 18 or len(epoch) > 64:
        return None
    number = int(offset)
    return (epoch, number) if number > 0 else None


#: Reasons a leave notice does not repeat: an ordinary goodbye.
PLAIN_LEAVE_REASONS = frozenset({"connection closed", "quit"})


def kick_text(kicked_by: str, reason: str) -> str:
    """The reason of a kick as everyone is told it: ``kicked by alice: spam``."""
    return f"kicked by {kicked_by}: {reason}"


@dataclass(frozen=True)
class Left(RoomEvent):
    """``nick`` left the room (native: ``* nick left`` or ``* nick left (reason)``).

    :ivar reason: why: ``"quit"``, ``"connection closed"``, ``"connection
        lost"``, ``"slow consumer"``, ``"joined ROOM"``, the text given to
        ``/quit``, a reason a plugin gave, or a kick's :func:`kick_text`.
    :ivar disconnected: True if the client left the server, False if it moved
        to another room (IRC tells QUIT from PART).
    :ivar kicked_by: the nickname of the operator who kicked the client out
        (``client.disconnect(..., kicked_by=...)``, or a room operator's
        ``/kick`` with ``disconnected`` False), or ``""``: IRC shows a room
        kick as ``KICK`` and a server operator's as ``QUIT :Killed (...)``.
    """

    batched: ClassVar[bool] = True
    changes_state: ClassVar[bool] = True

    nick: str
    reason: str = "connection closed"
    disconnected: bool = True
    kicked_by: str = ""
    user: str = field(default="", kw_only=True)

    @property
    def kick_reason(self) -> str:
        """A kick's reason in the operator's own words (``spam``), else the reason."""
        return self.reason.removeprefix(kick_text(self.kicked_by, "")) if self.kicked_by else self.reason

    @property
    def shown_reason(self) -> str | None:
        """The reason worth showing, or None for a plain quit or close."""
        return None if self.reason in PLAIN_LEAVE_REASONS else self.reason


@dataclass(frozen=True)
class NickChanged(RoomEvent):
    """``nick`` is now known as ``new_nick`` (native: ``* nick is now known as new_nick``)."""

    batched: ClassVar[bool] = True
    changes_state: ClassVar[bool] = True

    nick: str
    new_nick: str
    user: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class AwayChanged(RoomEvent):
    """``nick`` is away, saying ``away`` (``""``: back again). IRC's ``AWAY``,
    which IRC clients with ``away-notify`` get; said to each of the person's
    rooms as a rename is (``told_in``), and to a room it enters while away.
    No native or web form."""

    nick: str
    away: str = ""
    user: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class RealnameChanged(RoomEvent):
    """``nick`` changed its real name to ``realname`` (IRC's ``SETNAME``,
    which IRC clients with ``setname`` get); said to each of the person's
    rooms as a rename is (``told_in``). No native or web form."""

    nick: str
    realname: str
    user: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class AccountChanged(RoomEvent):
    """``nick`` logged in to ``account`` (``""``: logged out), on any
    protocol. IRC's ``ACCOUNT``, which IRC clients with ``account-notify``
    get; said to each of the person's rooms as a rename is (``told_in``).
    No native or web form."""

    nick: str
    account: str = ""
    user: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class Invitation(RoomEvent):
    """``nick`` invited ``invited`` to the room: told to the room's
    operators alone (:attr:`~RoomEvent.operators_only`), the inviter left
    out. IRC's ``INVITE``, which IRC clients with ``invite-notify`` get; the
    invited person's own is :class:`Invited`. No native or web form."""

    operators_only: ClassVar[bool] = True

    nick: str
    invited: str
    user: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class OperatorChanged(RoomEvent):
    """``nick`` became an operator (``/oper``, IRC's ``OPER``), or is one no
    more (``operator=False``), told to the others in its room so that IRC
    clients can mark it ``@`` (``MODE #room +o nick``; the operator's own
    client gets a user ``MODE nick +o``). No native form: native clients
    show no operator status."""

    nick: str
    operator: bool = True


@dataclass(frozen=True)
class TopicChanged(RoomEvent):
    """``nick`` set the room's topic to ``topic`` (``""``: cleared) (native:
    ``* alice set the topic: text``; IRC: ``TOPIC``)."""

    changes_state: ClassVar[bool] = True

    nick: str
    topic: str
    user: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class ModeChanged(RoomEvent):
    """``nick`` changed the room's modes (:mod:`chatcore.engine.rooms`):
    ``modes`` as IRC writes them (``+o-v``) and one argument for each
    letter that has one (``("bob", "carol")``). Native: ``* alice set mode
    +o-v bob carol``; IRC: ``MODE``."""

    changes_state: ClassVar[bool] = True

    nick: str
    modes: str
    arguments: tuple[str, ...] = ()
    user: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class RoomNotice(RoomEvent):
    """A notice from the server or a plugin to the whole room (native: ``* text``)."""

    text: str


@dataclass(frozen=True)
class Notice(Event):
    """A notice for one client (native: ``* text``): answers, welcome lines, ``server shutting down``."""

    text: str


@dataclass(frozen=True)
class Welcome(Event):
    """The welcome text for a client entering the chat, from the
    ``chatcore_welcome`` hooks (native: each line as ``* line``; IRC: the MOTD)."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Error(Event):
    """An error for one client (native: ``! text``)."""

    text: str


@dataclass(frozen=True)
class Disconnected(Event):
    """The server's last word to a client it is disconnecting (native: ``!
    disconnected: reason``; IRC: ``ERROR :Closing Link``).

    :ivar reason: why, as the client is told it (a kick's reads ``kicked
        by NICK: words``).
    :ivar kicked_by: the operator who kicked the client out, or ``""``.
    :ivar kick_reason: that operator's own words, or ``""``.
    """

    reason: str
    kicked_by: str = ""
    kick_reason: str = ""


@dataclass(frozen=True)
class PrivateMessage(Event):
    """``sender`` wrote ``text`` to ``recipient`` with ``/msg``.

    The recipient gets it with ``echo=False`` (native: ``*sender* text``), the
    sender a copy with ``echo=True`` (native: ``-> *recipient* text``).
    ``notice``: said as a notice (IRC's ``NOTICE nick``), which IRC clients
    get as ``NOTICE``. ``tags``: client-only tags the sender attached, as
    :attr:`Chat.tags`. ``msgid``: the message's ID, ``EPOCH:OFFSET`` in the
    sender's server's numbering of private lines
    (:meth:`ChatServer.private_msgid
    <chatcore.engine.server.ChatServer.private_msgid>`): the same on both
    copies, on every server of a cluster and in history (IRC's ``msgid``
    tag). ``time``: when it was sent, in seconds since the epoch, likewise
    the same everywhere (IRC's ``time`` tag; 0.0: not known). ``account``:
    the account the sender was logged in to, or ``""``.
    """

    sender: str
    recipient: str
    text: str
    echo: bool = False
    notice: bool = False
    tags: str = ""
    msgid: str = ""
    time: float = 0.0
    account: str = ""


@dataclass(frozen=True)
class PrivateTags(Event):
    """``sender`` sent ``recipient`` client-only ``tags`` without text (IRC's
    ``TAGMSG nick``); only IRC clients with ``message-tags`` show anything."""

    sender: str
    recipient: str
    tags: str
    msgid: str = ""


@dataclass(frozen=True)
class Invited(Event):
    """``by`` invites this client to ``room`` (native: ``* alice invites you
    to dev: /join dev``; IRC: ``INVITE``)."""

    by: str
    room: str
    user: str = ""


@dataclass(frozen=True)
class Replay(Event):
    """A room's earlier events, replayed to a client entering it (history).

    Native: ``* last N messages in ROOM:`` then each event's line marked
    ``# `` (``# <alice> hi``).
    """

    room: str
    events: tuple[RoomEvent, ...]


@dataclass(frozen=True)
class Members(Event):
    """Who is in ``room`` (native: ``* in ROOM (N): a, b``), the answer to ``/who``."""

    room: str
    nicks: tuple[str, ...]


@dataclass(frozen=True)
class RoomList(Event):
    """Every room with members, and how many (native: ``* 2 rooms: dev (1),
    lobby (3, current)``), with the rooms the client is in marked.

    :ivar joined: the rooms of the list the client is in.
    :ivar current: its current room, or ``""``.
    """

    rooms: tuple[tuple[str, int], ...]
    joined: tuple[str, ...] = ()
    current: str = ""
