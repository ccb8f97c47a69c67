"""Rooms' state: topic, modes, ban lists, invitations and roles, and the rules that read them.

A room exists while it has members (the registry's); its state lives here
beside it, made when the first member enters and dropped when the last one
leaves, memory and all. A room a plugin keeps (a registered room, the
``accounts`` plugin's) gets its state from ``chatcore_room_state`` when its
first member enters, and so outlives its members. The modes are IRC's, because IRC's are what every chat
server's rooms grew from, and so the native protocol and IRC share one set:

=====  ==========================================================  ===========
mode   meaning                                                     argument
=====  ==========================================================  ===========
``i``  invite only: only invited people (or ban exceptions) enter  -
``k``  key: entering needs the key                                 the key
``l``  limit: at most N members                                    N
``m``  moderated: only operators and voiced members speak          -
``n``  no messages from outside: only members speak                -
``s``  secret: not listed to those outside it                      -
``t``  topic lock: only operators set the topic                    -
``b``  ban mask (``nick!user@host``, ``*`` and ``?``)              the mask
``e``  exception to the ban masks                                  the mask
``o``  operator                                                    a member
``v``  voice                                                       a member
=====  ==========================================================  ===========

A new room is ``+nt``, as on Ergo, InspIRCd and UnrealIRCd, and its first
member is its operator. Server operators may do everything in every room.

Every change is an event (:class:`~chatcore.events.TopicChanged`,
:class:`~chatcore.events.ModeChanged`, and the joins, leaves and renames
that move roles), applied here by :meth:`Rooms.apply` as the server
publishes it, whether it was made here or on another server of a cluster:
one path, so that a room's state is the same wherever its events went.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from chatcore.events import Joined, Left, ModeChanged, NickChanged, RoomEvent, TopicChanged

if TYPE_CHECKING:
    from chatcore.engine.connection import Client

#: Modes that are on or off.
FLAG_MODES = "imnst"
#: Modes with an argument when set (``k``, ``l``); ``k`` needs it to unset too, as IRC has it.
VALUE_MODES = "kl"
#: Modes that are lists of masks.
LIST_MODES = "be"
#: Modes given to a member.
MEMBER_MODES = "ov"
#: Every room mode, in the order of IRC's CHANMODES token: lists, always an
#: argument, an argument when set, flags.
CHANMODES = f"{LIST_MODES},k,l,{FLAG_MODES}"
#: The modes of a new room.
DEFAULT_MODES = "nt"
#: Masks in one list (InspIRCd's ``maxbans`` default is 64; Ergo's 100).
MAX_LIST = 100
#: Mode changes in one command (IRC's MODES token; Ergo and InspIRCd: 20).
MAX_MODES = 20
#: The longest topic, in characters (Ergo's default topic length).
TOPIC_LENGTH = 390
#: The longest key.
KEY_LENGTH = 32
#: The host that IRC prefixes show for everyone (``nick!user@chatcore``); a
#: ban mask may name it or the real address.
SHOWN_HOST = "chatcore"


@lru_cache(maxsize=1024)
def _mask_pattern(mask: str) -> re.Pattern[str]:
    return re.compile(".*".join(".".join(map(re.escape, part.split("?"))) for part in mask.split("*")), re.DOTALL)


def normal_mask(text: str) -> str | None:
    """``text`` as a full ``nick!user@host`` mask (``bob`` is ``bob!*@*``,
    ``*@10.0.0.1`` is ``*!*@10.0.0.1``), folded to lower case; None if it
    cannot be one (empty, spaces, control characters, too long)."""
    text = text.strip().casefold()
    if not text or len(text) > 200 or any(char.isspace() or ord(char) < 32 for char in text) or text.count("!") > 1:
        return None
    if text.count("@") > 1 or text.startswith(("+", "-", ":")):
        return None
    nick, bang, rest = text.partition("!")
    if not bang:
        if "@" in nick:  # user@host
            rest, nick = nick, "*"
        else:
            rest = "*"
    user, at, host = rest.partition("@")
    if not at:
        host = "*"
    return f"{nick or '*'}!{user or '*'}@{host or '*'}"


def mask_matches(mask: str, client: Client) -> bool:
    """Whether a normal mask matches ``client``: its nick, user name
    (``*`` if it gave none) and host, the real address or the shown one."""
    pattern = _mask_pattern(mask)
    who = f"{client.nick}!{client.user or client.nick}@".casefold()
    return bool(pattern.fullmatch(who + client.address[0]) or pattern.fullmatch(who + SHOWN_HOST))


@dataclass
class RoomState:
    """One room's topic, modes, lists, invitations and roles.

    Nicknames in :attr:`operators`, :attr:`voiced` and :attr:`invited` are
    casefolded. Read without a lock (each field is replaced or changed in
    one step); changed only by :meth:`Rooms.apply`, under its lock.
    """

    name: str
    created: float = field(default_factory=time.time)
    topic: str = ""
    topic_by: str = ""
    topic_at: float = 0.0
    flags: set[str] = field(default_factory=lambda: set(DEFAULT_MODES))
    key: str = ""
    limit: int = 0
    #: Mask to (who set it, when).
    bans: dict[str, tuple[str, float]] = field(default_factory=dict)
    excepts: dict[str, tuple[str, float]] = field(default_factory=dict)
    invited: set[str] = field(default_factory=set)
    operators: set[str] = field(default_factory=set)
    voiced: set[str] = field(default_factory=set)

    @classmethod
    def founded(cls, room: str, nick: str) -> RoomState:
        """A new room's state: default modes, and ``nick``, who made it, its operator."""
        return cls(room, operators={nick.casefold()})

    def modes(self, *, with_key: bool = True) -> tuple[str, tuple[str, ...]]:
        """The set modes as IRC writes them: ``("+klnt", ("secret", "10"))``
        (the key as ``*`` unless ``with_key``)."""
        letters = "".join(sorted(self.flags))
        args: list[str] = []
        if self.key:
            letters += "k"
            args.append(self.key if with_key else "*")
        if self.limit:
            letters += "l"
            args.append(str(self.limit))
        # Sorted, k comes before l, as their arguments do.
        return "+" + "".join(sorted(letters)), tuple(args)

    def is_operator(self, nick: str) -> bool:
        return nick.casefold() in self.operators

    def is_voiced(self, nick: str) -> bool:
        return nick.casefold() in self.voiced

    def prefix(self, nick: str) -> str:
        """``@`` for an operator, ``+`` for a voiced member, else ``""``."""
        folded = nick.casefold()
        return "@" if folded in self.operators else "+" if folded in self.voiced else ""

    def banned(self, client: Client) -> bool:
        """Whether a ban mask matches ``client`` and no exception does."""
        return any(mask_matches(mask, client) for mask in self.bans) and not any(
            mask_matches(mask, client) for mask in self.excepts
        )


@dataclass(frozen=True)
class ModeRequest:
    """One parsed mode change: ``+o bob`` is ``ModeRequest(True, "o", "bob")``.
    A list mode without an argument (``+b``) asks for the list."""

    adding: bool
    mode: str
    argument: str = ""


class ModeError(ValueError):
    """A mode string that cannot be applied; ``code`` says which problem
    (``unknown_mode``, ``missing_argument``, ``invalid_argument``), ``mode``
    the letter."""

    def __init__(self, code: str, mode: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.mode = mode


def parse_modes(modes: str, arguments: list[str]) -> list[ModeRequest]:
    """``+kl-m secret 10`` as requests, each with its argument; ModeError
    for an unknown letter or a missing or invalid argument. Nothing is
    applied here."""
    requests: list[ModeRequest] = []
    adding = True
    args = list(arguments)
    for letter in modes:
        if letter in "+-":
            adding = letter == "+"
            continue
        if letter in FLAG_MODES:
            requests.append(ModeRequest(adding, letter))
        elif letter in LIST_MODES:
            if not args:
                requests.append(ModeRequest(adding, letter))  # a request for the list
                continue
            mask = normal_mask(args.pop(0))
            if mask is None:
                raise ModeError(
                    "invalid_argument", letter, f"invalid mask for +{letter}: use nick!user@host with * and ?"
                )
            requests.append(ModeRequest(adding, letter, mask))
        elif letter in MEMBER_MODES:
            if not args:
                raise ModeError("missing_argument", letter, f"{'+' if adding else '-'}{letter} needs a nickname")
            requests.append(ModeRequest(adding, letter, args.pop(0)))
        elif letter == "k":
            if not args:
                if adding:
                    raise ModeError("missing_argument", letter, "+k needs a key")
                requests.append(ModeRequest(False, "k"))
                continue
            key = args.pop(0)
            if adding and (not key or len(key) > KEY_LENGTH or any(c in key for c in " ,:") or not key.isprintable()):
                raise ModeError(
                    "invalid_argument",
                    letter,
                    f"invalid key: 1 to {KEY_LENGTH} characters, no spaces, commas or colons",
                )
            requests.append(ModeRequest(adding, "k", key if adding else ""))
        elif letter == "l":
            if not adding:
                requests.append(ModeRequest(False, "l"))
                continue
            if not args:
                raise ModeError("missing_argument", letter, "+l needs a number of members")
            value = args.pop(0)
            # isascii: "²".isdigit() is true, yet int() refuses it.
            if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= 1_000_000:
                raise ModeError("invalid_argument", letter, f"invalid limit {value!r}: a whole number from 1")
            requests.append(ModeRequest(True, "l", str(int(value))))
        else:
            raise ModeError(
                "unknown_mode",
                letter,
                f"unknown mode {letter!r}: rooms have +{CHANMODES.replace(',', '')}{MEMBER_MODES}",
            )
        if len(requests) > MAX_MODES:
            raise ModeError("invalid_argument", letter, f"at most {MAX_MODES} mode changes at once")
    return requests


class Rooms:
    """The state of every room that has members here.

    Applied to by the server as it publishes each event
    (:meth:`~chatcore.engine.server.ChatServer.publish`): joins make a
    room's state (its first member its operator), leaves take roles away,
    renames move them, and topic and mode changes change it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, RoomState] = {}
        #: The rooms that may hold invitations: a nick given up is looked
        #: for there only (every room, for each client that quits, made
        #: 10,000 clients in 5,000 rooms spend half their CPU leaving).
        self._with_invitations: set[str] = set()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, room: str) -> RoomState | None:
        """``room``'s state, or None if nobody is in it here."""
        return self._states.get(room)

    def install(self, state: RoomState) -> RoomState:
        """Take ``state`` as its room's (the backplane's answer when the
        first member here enters: the cluster's state, or the founded one);
        the state already here if another member entered meanwhile."""
        with self._lock:
            installed = self._states.setdefault(state.name, state)
            if installed.invited:
                self._with_invitations.add(installed.name)
            return installed

    def drop(self, room: str) -> None:
        """Forget an emptied room (the registry's ``if_empty`` calls this, under its lock)."""
        self._states.pop(room, None)
        self._with_invitations.discard(room)

    def apply(self, event: RoomEvent) -> None:
        """Change the state of ``event``'s room as the event says."""
        with self._lock:
            room = event.room
            state = self._states.get(room)
            if isinstance(event, Joined):
                if state is None:  # the first member: the room is made, and they run it
                    state = self._states[room] = RoomState(room, created=event.time or time.time())
                    state.operators.add(event.nick.casefold())
                state.invited.discard(event.nick.casefold())
                return
            if state is None:
                return
            if isinstance(event, Left):
                folded = event.nick.casefold()
                state.operators.discard(folded)
                state.voiced.discard(folded)
            elif isinstance(event, NickChanged):
                old, new = event.nick.casefold(), event.new_nick.casefold()
                for roles in (state.operators, state.voiced, state.invited):
                    if old in roles:
                        roles.discard(old)
                        roles.add(new)
            elif isinstance(event, TopicChanged):
                state.topic, state.topic_by, state.topic_at = event.topic, event.nick, event.time
            elif isinstance(event, ModeChanged):
                _apply_modes(state, event)

    def forget_invitations(self, nick: str) -> None:
        """``nick`` was given up (a quit): its invitations go with it, or
        whoever takes the name next would inherit them."""
        self.move_invitations(nick, None)

    def move_invitations(self, old: str, new: str | None) -> None:
        """``old`` is now called ``new``: its invitations follow it, as
        IRC servers keep a user's invitations through a ``NICK``; none left
        under ``old`` for whoever takes that name next. ``new`` None: a
        quit, the invitations go."""
        folded = old.casefold()
        with self._lock:
            for room in list(self._with_invitations):
                state = self._states.get(room)
                if state is not None and folded in state.invited:
                    state.invited.discard(folded)
                    if new is not None:
                        state.invited.add(new.casefold())
                if state is None or not state.invited:
                    self._with_invitations.discard(room)

    def invite(self, room: str, nick: str) -> None:
        """Let ``nick`` into ``room`` past ``+i`` (and ``+k`` and ``+l``), once."""
        with self._lock:
            state = self._states.get(room)
            if state is not None:
                state.invited.add(nick.casefold())
                self._with_invitations.add(room)


def _apply_modes(state: RoomState, event: ModeChanged) -> None:
    args = list(event.arguments)
    adding = True
    for letter in event.modes:
        if letter in "+-":
            adding = letter == "+"
        elif letter in FLAG_MODES:
            (state.flags.add if adding else state.flags.discard)(letter)
        elif letter in LIST_MODES:
            masks = state.bans if letter == "b" else state.excepts
            mask = args.pop(0) if args else ""
            if adding:
                masks[mask] = (event.nick, event.time)
            else:
                masks.pop(mask, None)
        elif letter in MEMBER_MODES:
            nick = (args.pop(0) if args else "").casefold()
            roles = state.operators if letter == "o" else state.voiced
            (roles.add if adding else roles.discard)(nick)
        elif letter == "k":  # with its argument both ways: the key, or "*" to unset
            key = args.pop(0) if args else ""
            state.key = key if adding else ""
        elif letter == "l":
            # From another server too (Redis is input): a limit that is no number is none.
            value = args.pop(0) if adding and args else ""
            state.limit = int(value) if value.isascii() and value.isdigit() else 0
