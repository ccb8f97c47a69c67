"""An IRC front-end: IRC clients and bots in chatcore's rooms (docs/irc.md).

Registers ``irc://`` (default port 6667) and ``ircs://`` (TLS, 6697). A room
is a channel (``lobby`` is ``#lobby``), nicknames are the one registry every
protocol shares, and everything an IRC user says goes through the same
actions as a native user's (``broadcast_message``, ``send_private``), so
every plugin applies to both.

Two parts, as for every front-end (:mod:`chatcore.wire`):

- :class:`IRCFormat` renders events as IRC lines (RFC 1459/2812 with the
  modern registration of the IRCv3 ``CAP`` negotiation);
- :class:`IRCProtocol` reads one client's lines: registration (``CAP``,
  ``PASS``, ``NICK``, ``USER``), then the commands.

An IRC client joins and parts channels as on any IRC server, up to
``--max-rooms-per-client``; it is put in none when it registers unless
``--irc-autojoin`` names some. Channel state (topic, modes, bans,
invitations, operators and voice) is the engine's
(:mod:`chatcore.engine.rooms`), shared with every other protocol.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import dataclasses
import datetime
import fnmatch
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from chatcore import Config, UsageError, __version__, hookimpl
from chatcore.config import restart_only, whole_number
from chatcore.engine.history import CONVERSATION, QUERY_KINDS, HistoryService, Mark, Query
from chatcore.engine.rooms import CHANMODES, LIST_MODES, MAX_LIST, MAX_MODES, TOPIC_LENGTH, ModeError, parse_modes
from chatcore.events import (
    AccountChanged,
    Action,
    AwayChanged,
    Chat,
    Disconnected,
    Error,
    Event,
    Invitation,
    Invited,
    Joined,
    Left,
    Members,
    ModeChanged,
    NickChanged,
    Notice,
    OperatorChanged,
    PrivateMessage,
    PrivateTags,
    RealnameChanged,
    Replay,
    RoomEvent,
    RoomList,
    RoomNotice,
    Tagged,
    TopicChanged,
    Welcome,
)
from chatcore.message import Message
from chatcore.names import nick_problem, room_problem, user_name, user_problem
from chatcore.plugins import opers
from chatcore.plugins.opers import operator_name
from chatcore.transports import Scheme
from chatcore.wire import Protocol, WireFormat
from chatcore.wire.framing import (
    PING_FRAME,
    CRLFLineFraming,
    WebSocketBinaryLines,
    WebSocketTextLines,
    close_frame,
)
from chatcore.wire.native import event_line, sanitize
from chatcore.wire.tags import MAX_CLIENT_TAGS, client_tags, parse_tags, tag_text
from chatcore.wire.websocket import (
    HEADER_TIMEOUT,
    MAX_FRAGMENTS,
    Pinger,
    Refused,
    WebSocketOpening,
    accept,
    foreign_origin,
    http_error,
    own_origins,
    parse_origins,
)

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.engine.server import ChatServer

log = logging.getLogger("chatcore.irc")

DEFAULT_PORT = 6667
DEFAULT_TLS_PORT = 6697

#: The server's name in prefixes and numerics, and the network's (005 NETWORK).
DEFAULT_SERVER_NAME = "chatcore"
DEFAULT_NETWORK = "chatcore"
#: The host part of every ``nick!user@host``. A cloak, not the address:
#: defends against anyone learning a user's IP address from a prefix, WHO
#: or WHOIS (IRC shows them to everybody by default).
HOST = "chatcore"
#: The real name WHO and WHOIS give someone on another server of a cluster (not known here).
ELSEWHERE = "chatcore user on another server"
#: RFC 1459's limit for a whole line, CR LF included.
MAX_LINE = 512
#: What a client may send in one line: tags, then a 512-byte message.
MAX_INPUT = 8191 + MAX_LINE
#: The nickname and room rules are chatcore's (chatcore.plugins.commands).
NICKLEN = 32
CHANNELLEN = 33  # "#" and a room name
#: Reasons and away texts, in UTF-8 bytes (InspIRCd's ``<limits>``
#: defaults); KICKLEN and AWAYLEN are advertised in 005, QUIT and PART have
#: no token. Whatever their source (an IRC client, a native user's 4 KB
#: ``/quit``, the cluster), they are cut to these when shown to IRC clients.
AWAYLEN = 200
KICKLEN = 255
QUITLEN = 255
PARTLEN = 255
#: A real name's length (USER, SETNAME), in characters.
REALNAMELEN = 100
#: The longest label kept (IRCv3 labeled-response: clients send short ones).
MAX_LABEL = 64
#: RPL_ISUPPORT tokens in one 005 line.
ISUPPORT_PER_LINE = 10
#: Targets in one ISON or USERHOST.
MAX_TARGETS = 20
#: People listed by one WHO with a mask.
MAX_WHO = 200
#: Entries one WHOWAS lists, whatever its count.
MAX_WHOWAS = 100
STARTED = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

# mIRC formatting: bold, colour (with its digits), hex colour, reset,
# monospace, reverse, italic, strike-through, underline. Stripped, because
# native users would see the digits of a colour code as text.
_FORMATTING = re.compile(
    r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)


def channel(room: str) -> str:
    return "#" + room


#: Commands whose last parameter is text: always sent as a trailing one.
_TEXT_COMMANDS = frozenset({"PRIVMSG", "NOTICE", "PART", "QUIT", "ERROR", "PONG", "KICK", "TOPIC", "AWAY", "SETNAME"})


def irc_line(prefix: str | None, command: str, *params: str) -> str:
    """One line without CR LF; the last parameter is a trailing one when it
    must be (empty, has a space or starts with ``:``) or is text."""
    parts = [f":{prefix}", command] if prefix else [command]
    if params:
        *middle, last = params
        parts.extend(middle)
        trailing = command in _TEXT_COMMANDS or not last or " " in last or last[0] == ":"
        parts.append(f":{last}" if trailing else last)
    return " ".join(parts)


def _boundary(data: bytes, limit: int) -> int:
    """The longest prefix of UTF-8 ``data`` within ``limit`` bytes that ends
    on a character boundary: its length."""
    if len(data) <= limit:
        return len(data)
    cut = limit
    while cut and (data[cut] & 0xC0) == 0x80:  # a UTF-8 continuation byte: not a boundary
        cut -= 1
    return cut


def truncated(text: str, limit: int) -> str:
    """``text`` within ``limit`` UTF-8 bytes, cut on a character boundary."""
    data = text.encode("utf-8", "replace")
    return data[: _boundary(data, limit)].decode("utf-8")


#: Text room left on a line whose head is absurdly long (a hostile nickname
#: from the cluster): enough to end the split below; _encode cuts the rest.
_MIN_TEXT_BUDGET = 64


def text_lines(head: str, text: str, before: str = "", after: str = "") -> list[str]:
    """``head`` + ``:`` + ``text`` as lines of at most 512 bytes with CR LF,
    ``text`` split on character boundaries (``before``/``after`` wrap each
    part: the CTCP ACTION markers)."""
    head = f"{head} :{before}"
    budget = MAX_LINE - 2 - len(head.encode("utf-8", "replace")) - len(after.encode("utf-8"))
    budget = max(budget, _MIN_TEXT_BUDGET)
    data = text.encode("utf-8", "replace")
    parts: list[str] = []
    while True:
        if len(data) <= budget:
            parts.append(data.decode("utf-8"))
            break
        cut = _boundary(data, budget)
        # A space near the end is a kinder place to split.
        space = data.rfind(b" ", budget * 3 // 4, cut)
        if space > 0:
            cut = space + 1
        parts.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    return [f"{head}{part}{after}" for part in parts]


#: CR, LF and NUL end or cut an IRC line (RFC 1459 2.3.1): never inside one.
_LINE_BREAKERS = re.compile("[\r\n\0]")


def safe_lines(lines: Iterable[str]) -> list[bytes]:
    """Lines as the bytes of the IRC messages sent, without their endings:
    every line the front-end sends passes here.

    Defends against line injection (a forged ``:admin!... PRIVMSG`` that a
    client reads as a line of its own), whatever the text's source: a line
    is at most 512 bytes with its CR LF, cut on a UTF-8 character boundary
    (a client reading 512-byte lines would take the rest as a new line), it
    holds no CR, LF or NUL, and it is valid UTF-8 (a lone surrogate from
    the cluster becomes ``?``).
    """
    out = []
    for line in lines:
        # Three scans in C first: the usual line needs no regex.
        safe = _LINE_BREAKERS.sub(" ", line) if "\r" in line or "\n" in line or "\0" in line else line
        data = safe.encode("utf-8", "replace")
        out.append(data[: _boundary(data, MAX_LINE - 2)])
    return out


# -- IRCv3 message tags ------------------------------------------------------------


def server_time(seconds: float) -> str:
    """The ``time`` tag's form (IRCv3 server-time): ``2026-12-06T23:59:01.123Z``, UTC."""
    millis = int(seconds * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


def with_tags(lines: Iterable[bytes], tags: str) -> list[bytes]:
    """``lines`` (as :func:`safe_lines` makes them) with ``tags`` (as
    :func:`tag_text` writes them) put before the tags they have."""
    if not tags:
        return list(lines)
    data = tags.encode("utf-8", "replace")
    return [b"@" + data + b";" + line[1:] if line[:1] == b"@" else b"@" + data + b" " + line for line in lines]


def batch_lines(
    server: str, ref: str, kind: str, params: Iterable[str], lines: Iterable[bytes], *, tags: str = ""
) -> list[bytes]:
    """``lines`` in one IRCv3 batch: ``BATCH +ref kind params``, each line
    tagged ``batch=ref``, then ``BATCH -ref``. ``tags`` go on the opening
    line (a ``label``, labeled-response). Lines as :func:`safe_lines` makes
    them; :meth:`IRCProtocol.send_batch` picks the reference and sends
    them plainly to a client without the ``batch`` capability."""
    opening = safe_lines([" ".join([f":{server}", "BATCH", f"+{ref}", kind, *params])])
    return [
        *with_tags(opening, tags),
        *with_tags(lines, f"batch={ref}"),
        *safe_lines([f":{server} BATCH -{ref}"]),
    ]


# -- rendering ------------------------------------------------------------------


def _quit_text(reason: str) -> str:
    # What IRC servers say: "Quit: ..." for a user's own words.
    if reason == "quit":
        return "Quit"
    if reason in ("connection closed", "connection lost", "slow consumer", "server shutting down"):
        return reason.capitalize()
    return f"Quit: {truncated(reason, QUITLEN)}"


class IRCFormat(WireFormat):
    """Room events as IRC lines, CR LF ended, at most 512 bytes each.

    Renders from the event alone (the user name of a prefix is the event's
    ``user``): it asks nothing of the server. What a client is told alone
    (the registration burst, NAMES, errors, the closing link) is its
    protocol's to render (:meth:`IRCProtocol.render`).

    :ivar server: the server's name in prefixes and numerics (``--irc-server-name``).
    :ivar network: the network's name (005 ``NETWORK``, ``--irc-network``).
    """

    name = "irc"
    echoes_actions = False  # IRC clients show their own /me
    #: The capabilities this format renders for (:meth:`with_caps`): none.
    caps: frozenset[str] = frozenset()

    def __init__(
        self, server: str = DEFAULT_SERVER_NAME, network: str = DEFAULT_NETWORK, framing: Any = CRLFLineFraming
    ) -> None:
        self.server = server
        self.network = network
        #: How the lines travel, below this codec (chatcore.wire.framing):
        #: CR LF ended over TCP, one a WebSocket message for IRC over WebSocket.
        self.framing = framing
        self._twins: dict[Any, IRCFormat] = {framing: self}
        #: The format without capabilities, which the scheme has.
        self.plain: IRCFormat = self
        self._variants: dict[frozenset[str], IRCFormat] = {}

    def with_caps(self, caps: Iterable[str]) -> IRCFormat:
        """The format for a client that enabled ``caps``: this plain one if
        none of them changes how room events look (:data:`RENDERING_CAPS`),
        else one :class:`TaggedIRCFormat` per set of those, shared by every
        client that has the same set. A room's event is then rendered once
        per set, not once per client, and the plain path is untouched."""
        plain = self.plain
        key = frozenset(caps) & RENDERING_CAPS
        if not key:
            return plain
        variant = plain._variants.get(key)
        if variant is None:  # made at most once per set (setdefault keeps the first of two racing)
            variant = plain._variants.setdefault(key, TaggedIRCFormat(plain, key))
        return variant

    def variants(self) -> list[IRCFormat]:
        """The formats made for sets of capabilities so far."""
        return list(self.plain._variants.values())

    def encode(self, event: RoomEvent) -> bytes:
        return self.frame(self.room_lines(event))

    def framed_by(self, framing: Any) -> IRCFormat:
        """This format with its lines carried by ``framing`` (the same
        names): made once per framing and kept, so that every connection of
        one framing shares one format, and a room's events are rendered once
        for all of them (the engine groups a room's members by format)."""
        twin = self._twins.get(framing)
        if twin is None:
            twin = copy.copy(self)  # shares the family's table of twins
            twin.framing = framing
            # Its own formats per set of capabilities: they frame as it does.
            twin.plain, twin._variants = twin, {}
            # setdefault: of two connections asking at once, both get the first.
            twin = self._twins.setdefault(framing, twin)
        return twin

    def twins(self) -> list[IRCFormat]:
        """This format and its twins of other framings."""
        return list(self._twins.values())

    def event_lines(self, event: RoomEvent) -> list[bytes]:
        """:meth:`encode`'s lines, unframed (as :func:`safe_lines` makes them):
        for a batch of events (CHATHISTORY) or a labeled answer."""
        return safe_lines(self.room_lines(event))

    def line_tags(self, when: float | None = None) -> str:
        """The tags of a line for one client that is not a room event's (a
        private message, a JOIN of its own): none here."""
        return ""

    def frame(self, lines: Iterable[str]) -> bytes:
        """Lines as the bytes sent, made safe (:func:`safe_lines`) and framed."""
        framed: bytes = self.framing.frame(safe_lines(lines))
        return framed

    # -- lines --

    @staticmethod
    def mask(nick: str, user: str = "") -> str:
        """``nick!user@host``: the user name the person gave (IRC's USER),
        else the nickname; the host is the cloak.

        Defends against a ``user`` that would break the prefix (a space, a
        ``:`` or ``!``: from another server's bug, or anyone who can write
        to a cluster's Redis), which could forge a command: it is checked
        here too, whatever its source, and the nickname stands in."""
        if user and user_problem(user) is not None:
            user = ""
        return f"{nick}!{user or nick}@{HOST}"

    def numeric(self, nick: str, code: str, *params: str) -> str:
        return irc_line(self.server, code, nick or "*", *params)

    def notice_lines(self, target: str, text: str) -> list[str]:
        return text_lines(f":{self.server} NOTICE {target}", text)

    def room_lines(self, event: RoomEvent) -> list[str]:
        target = channel(event.room)
        if isinstance(event, Chat):
            command = "NOTICE" if event.notice else "PRIVMSG"
            return text_lines(f":{self.mask(event.nick, event.user)} {command} {target}", event.text)
        if isinstance(event, Action):
            prefix = f":{self.mask(event.nick, event.user)} PRIVMSG {target}"
            return text_lines(prefix, event.text, "\x01ACTION ", "\x01")
        if isinstance(event, Joined):
            return [irc_line(self.mask(event.nick, event.user), "JOIN", target)]
        if isinstance(event, Left):
            if event.kicked_by and event.disconnected:
                # A server operator's KILL: the victim's QUIT, as IRC servers
                # tell it (modern.ircdocs.horse, KILL). One line per client
                # (told_in), which takes the victim out of every channel it
                # shares; a KICK would name one channel and leave it in the others.
                words = truncated(event.kick_reason, KICKLEN)
                return [irc_line(self.mask(event.nick, event.user), "QUIT", f"Killed ({event.kicked_by} ({words}))")]
            if event.kicked_by:  # a channel operator's kick: IRC clients show who and why
                reason = truncated(event.kick_reason, KICKLEN)
                return [irc_line(self.mask(event.kicked_by), "KICK", target, event.nick, reason)]
            if event.disconnected:
                return [irc_line(self.mask(event.nick, event.user), "QUIT", _quit_text(event.reason))]
            mask = self.mask(event.nick, event.user)
            if not event.reason:  # no reason: no empty trailing parameter
                return [f":{mask} PART {target}"]
            return [irc_line(mask, "PART", target, truncated(event.reason, PARTLEN))]
        if isinstance(event, NickChanged):
            return [irc_line(self.mask(event.nick, event.user), "NICK", event.new_nick)]
        if isinstance(event, TopicChanged):
            return [irc_line(self.mask(event.nick, event.user), "TOPIC", target, event.topic)]
        if isinstance(event, ModeChanged):
            # Arguments never as a trailing parameter: a ":" would start one.
            return [" ".join([f":{self.mask(event.nick, event.user)}", "MODE", target, event.modes, *event.arguments])]
        if isinstance(event, RoomNotice):
            return self.notice_lines(target, event.text)
        if isinstance(event, OperatorChanged):  # operators are @ in every channel
            return [irc_line(self.server, "MODE", target, "+o" if event.operator else "-o", event.nick)]
        return []

    def welcome_lines(
        self, nick: str, motd: Iterable[str], user: str = "", max_rooms: int = 100, history_limit: int = 0
    ) -> list[str]:
        """001 to 005 and the MOTD (422 if there is none); ``history_limit``:
        the most lines one CHATHISTORY answers (0: no CHATHISTORY)."""
        version = f"chatcore-{__version__}"
        numeric = self.numeric
        lines = [
            numeric(nick, "001", f"Welcome to the {self.network} IRC network, {self.mask(nick, user)}"),
            numeric(nick, "002", f"Your host is {self.server}, running version {version}"),
            numeric(nick, "003", f"This server was created {STARTED}"),
            numeric(nick, "004", self.server, version, "io", "beiklmnostv", "beklov"),
        ]
        return lines + self.isupport_lines(nick, max_rooms, history_limit) + self.motd_lines(nick, motd)

    def isupport_lines(self, nick: str, max_rooms: int = 100, history_limit: int = 0) -> list[str]:
        """The 005 lines: after 004 at registration, and after 351 (``VERSION``)."""
        numeric = self.numeric
        lines: list[str] = []
        tokens = [
            f"AWAYLEN={AWAYLEN}",
            "CASEMAPPING=ascii",
            f"CHANLIMIT=#:{max_rooms}",
            f"CHANMODES={CHANMODES}",
            f"CHANNELLEN={CHANNELLEN}",
            "CHANTYPES=#",
            "EXCEPTS=e",
            f"KICKLEN={KICKLEN}",
            # Each list its own limit ("be:100" would say they share one).
            "MAXLIST=" + ",".join(f"{letter}:{MAX_LIST}" for letter in LIST_MODES),
            f"MODES={MAX_MODES}",
            f"NETWORK={self.network}",
            f"NICKLEN={NICKLEN}",
            "PREFIX=(ov)@+",
            f"TOPICLEN={TOPIC_LENGTH}",
        ]
        if history_limit:
            tokens += [f"CHATHISTORY={history_limit}", f"MSGREFTYPES={MSGREFTYPES}"]
            tokens.sort()
        # At most 13 tokens a line: with the nick and the trailing text, the
        # 15 parameters a message may have (RFC 2812 2.3; irctest checks it).
        for start in range(0, len(tokens), ISUPPORT_PER_LINE):
            lines.append(
                numeric(nick, "005", *tokens[start : start + ISUPPORT_PER_LINE], "are supported by this server")
            )
        return lines

    def motd_lines(self, nick: str, motd: Iterable[str]) -> list[str]:
        text = [line for line in motd if line.strip()]
        if not text:
            return [self.numeric(nick, "422", "MOTD File is missing")]
        lines = [self.numeric(nick, "375", f"- {self.server} Message of the day - ")]
        for line in text:
            lines.extend(text_lines(f":{self.server} 372 {nick}", f"- {line}"))
        lines.append(self.numeric(nick, "376", "End of /MOTD command."))
        return lines

    def names_lines(self, nick: str, room: str, shown: Iterable[str], secret: bool = False) -> list[str]:
        """353 (as many as the nicknames need) and 366; ``shown`` are the
        nicknames with their prefixes (``@alice``); ``secret``: a ``+s`` room."""
        kind = "@" if secret else "="
        lines = text_lines(f":{self.server} 353 {nick} {kind} {channel(room)}", " ".join(shown))
        return [*lines, self.numeric(nick, "366", channel(room), "End of /NAMES list.")]

    def list_lines(self, nick: str, rooms: Iterable[tuple[str, int, str]]) -> list[str]:
        """321, a 322 for each ``(room, members, topic)``, 323."""
        lines = [self.numeric(nick, "321", "Channel", "Users  Name")]
        lines += [self.numeric(nick, "322", channel(room), str(count), topic) for room, count, topic in rooms]
        return [*lines, self.numeric(nick, "323", "End of /LIST")]


#: The capabilities that change how a room's events look to a client, or
#: whether it gets its own back: a client with any of them gets the
#: :class:`TaggedIRCFormat` for its set.
RENDERING_CAPS = frozenset({
    "account-notify", "account-tag", "away-notify", "echo-message", "extended-join", "invite-notify",
    "message-tags", "server-time", "setname",
})  # fmt: skip


def account_name(account: str) -> str:
    """An account as IRC shows it in a parameter (extended-join, ACCOUNT):
    ``*`` for none, and for one that could break the line (from the cluster)."""
    return account if account and user_problem(account) is None else "*"


#: Room events that IRC clients hear of only with a capability (IRCv3's
#: away-notify, setname, account-notify, invite-notify): the capability and
#: the line, from the person's mask and the event. Whoever they are about,
#: on whichever server of a cluster: they travel as room events.
_NOTIFY: dict[type[RoomEvent], tuple[str, Callable[[str, Any], str]]] = {
    AwayChanged: ("away-notify", lambda mask, e: irc_line(mask, "AWAY", e.away) if e.away else f":{mask} AWAY"),
    RealnameChanged: ("setname", lambda mask, e: irc_line(mask, "SETNAME", e.realname)),
    AccountChanged: ("account-notify", lambda mask, e: irc_line(mask, "ACCOUNT", account_name(e.account))),
    Invitation: ("invite-notify", lambda mask, e: irc_line(mask, "INVITE", e.invited, channel(e.room))),
}


class TaggedIRCFormat(IRCFormat):
    """:class:`IRCFormat` for clients that enabled some of
    :data:`RENDERING_CAPS`: room lines carry the IRCv3 tags they asked for
    (``time`` with ``server-time``, ``msgid`` with ``message-tags``), and
    with ``echo-message`` the client gets its own messages back. One per
    set of capabilities (:meth:`IRCFormat.with_caps`), so the engine keeps
    one feed per set in a room, and renders each event once per set.

    :ivar plain: the format without capabilities it was made from.
    """

    def __init__(self, plain: IRCFormat, caps: frozenset[str]) -> None:
        super().__init__(plain.server, plain.network, plain.framing)
        self.plain = plain
        self.caps = caps
        self.echoes_messages = "echo-message" in caps
        self._time = "server-time" in caps
        self._msgid = "message-tags" in caps
        self._account = "account-tag" in caps
        self._extended_join = "extended-join" in caps

    def room_lines(self, event: RoomEvent) -> list[str]:
        if self._extended_join and isinstance(event, Joined):
            return [self.extended_join(event.nick, event.user, event.room, event.account, event.realname)]
        notice = _NOTIFY.get(type(event))
        if notice is not None:  # what a capability asks to be told (away-notify ...): else nothing
            capability, line = notice
            about: Any = event  # one of _NOTIFY's events: each has a nick and a user
            return [line(self.mask(about.nick, about.user), about)] if capability in self.caps else []
        return super().room_lines(event)

    def extended_join(self, nick: str, user: str, room: str, account: str, realname: str) -> str:
        """A JOIN with the account (``*`` for none) and the real name
        (IRCv3 extended-join)."""
        return irc_line(self.mask(nick, user), "JOIN", channel(room), account_name(account), realname or nick)

    def event_tags(self, event: RoomEvent) -> str:
        """The tags of ``event``'s lines: its time and its ID, the same on
        every server of a cluster (an event delayed by an outage keeps the
        time it was said at)."""
        tags = []
        if self._time:
            tags.append(("time", server_time(event.time or time.time())))
        if self._msgid:
            # Not the offset: a line from the cluster's history has none, but
            # the ID its server gave it.
            if event.msgid:
                tags.append(("msgid", event.msgid))
            if isinstance(event, (Chat, Tagged)) and event.tags:  # a client's own, checked again
                tags.extend(client_tags(event.tags).items())
        if self._account and isinstance(event, (Chat, Action, Tagged)) and event.account:
            tags.append(("account", event.account))
        return tag_text(tags)

    def event_lines(self, event: RoomEvent) -> list[bytes]:
        if isinstance(event, Tagged):  # tags alone: for clients that take tags (message-tags)
            if not self._msgid:
                return []
            tagmsg = [irc_line(self.mask(event.nick, event.user), "TAGMSG", channel(event.room))]
            return with_tags(safe_lines(tagmsg), self.event_tags(event))
        return with_tags(safe_lines(self.room_lines(event)), self.event_tags(event))

    def encode(self, event: RoomEvent) -> bytes:
        framed: bytes = self.framing.frame(self.event_lines(event))
        return framed

    def line_tags(self, when: float | None = None) -> str:
        return tag_text([("time", server_time(time.time() if when is None else when))]) if self._time else ""

    def __repr__(self) -> str:
        return f"<TaggedIRCFormat {self.name!r} {','.join(sorted(self.caps))}>"


# -- reading ----------------------------------------------------------------------


def _paced(client: Client) -> bool:
    """Wait as the engine's flood control says; False if the client went meanwhile."""
    client.server.pace(client)
    return not client.closed


def parse(line: str) -> tuple[str, list[str]] | None:
    """``(COMMAND, params)`` of one line; tags and a prefix are ignored; None if empty."""
    if line.startswith("@"):
        line = line.partition(" ")[2].lstrip(" ")
    if line.startswith(":"):
        line = line.partition(" ")[2].lstrip(" ")
    head, has_trailing, trailing = line.partition(" :")
    if line.startswith(":"):  # no middle parameters, only a trailing one
        head, has_trailing, trailing = "", ":", line[1:]
    params = head.split()
    if not params:
        return None
    if has_trailing:
        params.append(trailing)
    return params[0].upper(), params[1:]


def clean(text: str) -> str:
    """Text from an IRC client as chatcore text: no formatting codes, no
    control characters (what the native protocol's sanitising removes)."""
    return sanitize(_FORMATTING.sub("", text))


def decode(raw: bytes) -> str:
    # Most IRC clients send UTF-8; some old ones Latin-1, which is never an error.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class IRCState:
    """What an IRC client told the server about itself, in ``client.data["irc"]``
    (WHOIS and PRIVMSG read another client's)."""

    __slots__ = ("modes", "username")

    def __init__(self) -> None:
        self.username = ""
        self.modes = ""


def irc_state(client: Client) -> IRCState | None:
    state = client.data.get("irc")
    return state if isinstance(state, IRCState) else None


Handler = Callable[["IRCProtocol", list[str]], None]


# ---------------------------------------------------------------------------
# IRCv3 capabilities (CAP) and SASL
# ---------------------------------------------------------------------------


class Capability(NamedTuple):
    """An IRCv3 capability this server may offer.

    :ivar name: as in ``CAP LS`` (``sasl``).
    :ivar offer: its value for ``CAP LS 302`` (``""`` for none) if it is
        offered to this connection, or None if it is not (SASL without an
        account service).
    """

    name: str
    offer: Callable[[IRCProtocol], str | None]


#: SASL mechanisms, in the order ``CAP LS 302`` and 908 list them.
SASL_MECHANISMS = ("PLAIN", "EXTERNAL")
#: A SASL message (the base64 of all its chunks) longer than this is
#: refused with 905: PLAIN credentials are short, and the buffer is ours.
MAX_SASL = 4096
#: AUTHENTICATE sends base64 in chunks of this size; a shorter one ends it.
SASL_CHUNK = 400


def _sasl_offer(protocol: IRCProtocol) -> str | None:
    return None if protocol.client.server.accounts is None else ",".join(SASL_MECHANISMS)


def _chathistory_offer(protocol: IRCProtocol) -> str | None:
    return None if protocol.client.server.history is None else ""


def _always(protocol: IRCProtocol) -> str:
    return ""


#: Every capability chatcore knows, by name: later IRCv3 work adds its own
#: entry here, and negotiation (LS, REQ, ACK, NAK, LIST, END) is the same for all.
#: Those that change how room events look are also in :data:`RENDERING_CAPS`.
CAPABILITIES: dict[str, Capability] = {
    capability.name: capability
    for capability in (
        Capability("account-notify", _always),
        Capability("account-tag", _always),
        Capability("away-notify", _always),
        Capability("batch", _always),
        Capability("cap-notify", _always),
        Capability("draft/chathistory", _chathistory_offer),
        Capability("echo-message", _always),
        Capability("extended-join", _always),
        Capability("invite-notify", _always),
        Capability("labeled-response", _always),
        Capability("message-tags", _always),
        Capability("multi-prefix", _always),
        Capability("sasl", _sasl_offer),
        Capability("server-time", _always),
        Capability("setname", _always),
        Capability("userhost-in-names", _always),
    )
}

_PASSWORD_FIRST = "Password required: send PASS before NICK and USER"
_NICK_REFUSED = {"nick_taken": "Nickname is already in use", "nick_invalid": "Erroneous nickname"}
#: The numeric and text for each reason the engine refuses a join.
_JOIN_REFUSED = {
    "too_many_rooms": ("405", "You have joined too many channels"),
    "banned": ("474", "Cannot join channel (+b)"),
    "invite_only": ("473", "Cannot join channel (+i)"),
    "bad_key": ("475", "Cannot join channel (+k)"),
    "full": ("471", "Cannot join channel (+l)"),
}


class IRCProtocol(Protocol):
    """One IRC connection: registration, then commands (docs/irc.md)."""

    __slots__ = (
        "_advertised",
        "_answer",
        "_answering",
        "_batches",
        "_cap_negotiating",
        "_framer",
        "_nick",
        "_password",
        "_registered",
        "_sasl",
        "_sasl_data",
        "_tags",
        "caps",
        "state",
        "wire",
    )

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        assert isinstance(client.wire, IRCFormat)  # the schemes of this plugin pair the two
        self.wire: IRCFormat = client.wire
        self._framer = CRLFLineFraming(MAX_INPUT)
        self._registered = False
        self._cap_negotiating = False
        self._nick = ""  # asked for before registration
        self._password: str | None = None
        #: The capabilities this client enabled (``CAP REQ``).
        self.caps: set[str] = set()
        self._batches = 0  # batch references given on this connection
        self._tags: dict[str, str] = {}  # the tags of the line being handled
        self._answer: list[bytes] | None = None  # a labeled answer being made ...
        self._answering = 0  # ... on this thread
        #: What the client was offered last (CAP LS, NEW, DEL), with cap-notify.
        self._advertised: frozenset[str] = frozenset(name for name in CAPABILITIES)
        self._sasl = ""  # the mechanism of a SASL exchange under way
        self._sasl_data = ""
        self.state = IRCState()
        client.data["irc"] = self.state

    # -- the engine's calls --

    def connection_made(self) -> None:
        """Nothing yet: admission waits for NICK, USER (and CAP END). The
        engine's sweeper closes a connection still unregistered after
        ``--login-timeout``, with ``ERROR`` (no thread of our own per
        waiting connection)."""

    def data_received(self, data: bytes) -> None:
        lines = self._framer.feed(data)
        if len(lines) > 1 and self.client._pace is False and self._registered:
            self._chat_together(lines)
        else:
            self.lines_received(lines)

    def _chat_together(self, lines: list[bytes | None]) -> None:
        """Several lines of one read from a registered client that is not
        paced (``--limit-exempt``), as the native protocol reads them: each
        run of plain chat to channels goes to the rooms together
        (:meth:`~chatcore.engine.server.ChatServer.broadcast_messages`), and
        any other line ends the run and is handled alone in its place, so
        everything keeps its order. A busy sender's lines arrive many to a
        read, and a room's members then cost once per read, not per line."""
        client = self.client
        server = client.server
        run: list[Message] = []
        speaking: dict[str, bool] = {}  # may the client speak in a room: asked once a read
        for received in lines:
            if client.closed:
                break
            message = self._plain_chat(received, speaking) if received is not None else None
            if message is not None:
                run.append(message)
                continue
            if run:
                server.broadcast_messages(run)
                run = []
            self.lines_received([received])
        if run:  # read before any close: said, as it would have been line by line
            server.broadcast_messages(run)

    def _plain_chat(self, received: bytes, speaking: dict[str, bool]) -> Message | None:
        """``PRIVMSG #channel :text`` to one channel the client is in and may
        speak in, without tags or CTCP, as a Message; None for any other line
        (which :meth:`privmsg` and the rest answer IRC's way, with their
        numerics)."""
        if received[:1] == b"@" or len(received) > MAX_LINE - 2:
            return None
        parsed = parse(decode(received))
        if parsed is None or parsed[0] != "PRIVMSG" or len(parsed[1]) != 2:
            return None
        target, text = parsed[1]
        if target[:1] != "#" or "," in target or text[:1] == "\x01":
            return None
        room = target[1:].lower()
        if room not in self.client.rooms:
            return None
        allowed = speaking.get(room)
        if allowed is None:
            allowed = speaking[room] = self.client.server.speech_refusal(self.client, room) is None
        text = clean(text)
        return Message(self.client, room, text) if allowed and text else None

    def lines_received(self, lines: Iterable[bytes | None]) -> None:
        """IRC lines (without their endings) from whatever carries them; None
        in place of one that was too long for its framing."""
        client = self.client
        for received in lines:
            if client.closed:
                return
            if received is None:
                self.reply("417", f"Input line was too long (the limit is {MAX_LINE} bytes)")
                continue
            tags, raw = b"", received
            if received.startswith(b"@"):
                tags, _, raw = received.partition(b" ")
                raw = raw.lstrip(b" ")
                if len(tags) - 1 > MAX_CLIENT_TAGS:  # the tags without their "@" (IRCv3 message-tags)
                    self.reply("417", f"Input line was too long (the limit for tags is {MAX_CLIENT_TAGS} bytes)")
                    continue
            # 512 bytes with CR LF, as RFC 1459 says, after the tags.
            if len(raw) > MAX_LINE - 2:
                self.reply("417", f"Input line was too long (the limit is {MAX_LINE} bytes)")
                continue
            parsed = parse(decode(raw))
            if parsed is not None:
                # Flood control for IRC users as for everyone (fakelag, as
                # IRC servers do it); PONG answers the server and is free.
                if parsed[0] != "PONG" and not _paced(client):
                    return
                if not tags:  # nearly every line
                    self.handle(*parsed)
                    continue
                self._tags = parse_tags(decode(tags[1:]))
                try:
                    label = self._tags.get("label") if "labeled-response" in self.caps else None
                    if label and parsed[0] != "QUIT":  # a QUIT's answer is the closing link
                        self._labeled(label, *parsed)
                    else:
                        self.handle(*parsed)
                finally:
                    self._tags = {}

    def _labeled(self, label: str, command: str, params: list[str]) -> None:
        """Handle a line that has a ``label`` (IRCv3 labeled-response): what
        this thread sends the client meanwhile is kept, then sent with the
        label: one line tagged, several in a ``labeled-response`` batch,
        none as ``ACK``. Lines other threads send (what others say) go out
        as usual, unlabeled."""
        if len(label) > MAX_LABEL:
            label = label[:MAX_LABEL]
        self._answer, self._answering = [], threading.get_ident()
        try:
            self.handle(command, params)
        finally:
            answer, self._answer = self._answer, None
        tag = tag_text([("label", label)])
        if not answer:
            lines = with_tags(safe_lines([irc_line(self.wire.server, "ACK")]), tag)
        elif len(answer) == 1:
            lines = with_tags(answer, tag)
        elif "batch" in self.caps:
            lines = batch_lines(self.wire.server, self._batch_ref(), "labeled-response", [], answer, tags=tag)
        else:  # labeled-response asks for batch; without it, the answer plainly
            lines = answer
        self.send_lines(lines)

    # -- output --

    @property
    def nick(self) -> str:
        return self.client.nick if self._registered else "*"

    def send(self, lines: Iterable[str]) -> None:
        self.send_lines(safe_lines(lines))

    def send_lines(self, lines: list[bytes]) -> None:
        """Send lines as :func:`safe_lines` makes them: framed, or kept for
        the labeled answer being made (:meth:`_labeled`) when this is the
        client's own thread answering a line with a ``label``."""
        if self._answer is not None and threading.get_ident() == self._answering:
            self._answer.extend(lines)
        elif lines:
            self.client.send_data(self.wire.framing.frame(lines))

    def send_batch(self, kind: str, params: Iterable[str], lines: list[bytes]) -> None:
        """Send ``lines`` (as :func:`safe_lines` or :meth:`IRCFormat.event_lines`
        make them) as one IRCv3 batch of type ``kind`` (``chathistory``,
        with ``params`` such as the channel), under a reference unique on
        this connection; to a client without the ``batch`` capability, the
        lines alone. For example, history::

            lines = [line for event in events for line in self.wire.event_lines(event)]
            self.send_batch("chathistory", [channel(room)], lines)
        """
        if "batch" in self.caps:
            lines = batch_lines(self.wire.server, self._batch_ref(), kind, params, lines)
        self.send_lines(lines)

    def _batch_ref(self) -> str:
        self._batches += 1
        return f"b{self._batches}"

    def reply(self, code: str, *params: str) -> None:
        self.send([self.wire.numeric(self.nick, code, *params)])

    def render(self, event: Event) -> bytes:
        """What this client is told alone, as IRC lines (:meth:`render_lines`);
        kept for the labeled answer being made, as :meth:`send_lines` does."""
        lines = self.render_lines(event)
        if (
            self._answer is not None
            and threading.get_ident() == self._answering
            and not isinstance(event, Disconnected)
        ):
            self._answer.extend(lines)
            return b""
        if not lines:
            return b""
        framed: bytes = self.wire.framing.frame(lines)
        return framed

    def render_lines(self, event: Event) -> list[bytes]:
        """:meth:`render`'s lines, unframed (as :func:`safe_lines` makes them)."""
        client = self.client
        wire = self.wire
        nick = client.nick or "*"
        if isinstance(event, Joined) and event.nick == client.nick:  # its own join (the engine's join_room)
            join, *rest = self.join_lines(event.room)
            return [*with_tags(safe_lines([join]), wire.line_tags()), *safe_lines(rest)]
        if isinstance(event, RoomEvent):  # its own PART, KICK or echoed message, and what a room says
            return wire.event_lines(event)
        lines: list[str]
        if isinstance(event, Welcome):  # sent by admit(): the registration burst
            history = client.server.history
            limit = history.max_limit if history is not None else 0
            lines = wire.welcome_lines(nick, event.lines, client.user, client.server.max_rooms_per_client, limit)
        elif isinstance(event, Invited):
            lines = [irc_line(self._mask_of(event.by), "INVITE", client.nick, channel(event.room))]
        elif isinstance(event, Notice):
            lines = wire.notice_lines(nick, event.text)
        elif isinstance(event, Disconnected):  # the engine's last word: the link closes
            # A KILL too: ERROR alone, as IRC servers send it (a KICK of one
            # channel would say the victim stays in its others).
            lines = [irc_line(None, "ERROR", f"Closing Link: disconnected: {event.reason}")]
        elif isinstance(event, Error):
            if not client.nick:  # before registration an error is a refusal: the link closes
                lines = [irc_line(None, "ERROR", f"Closing Link: {event.text}")]
            else:
                lines = wire.notice_lines(nick, f"error: {event.text}")
        elif isinstance(event, PrivateMessage):
            # IRC clients show what they sent themselves, unless they asked
            # for it back (echo-message).
            if event.echo and not wire.echoes_messages:
                return []
            command = "NOTICE" if event.notice else "PRIVMSG"
            lines = text_lines(f":{self._mask_of(event.sender)} {command} {event.recipient}", event.text)
            return with_tags(safe_lines(lines), self._private_tags(event))
        elif isinstance(event, PrivateTags):
            if "message-tags" not in self.caps:
                return []
            tagmsg = safe_lines([irc_line(self._mask_of(event.sender), "TAGMSG", event.recipient)])
            return with_tags(tagmsg, self._private_tags(event))
        elif isinstance(event, Members):
            lines = self.names_lines(event.room, event.nicks)
        elif isinstance(event, RoomList):
            lines = wire.list_lines(nick, [(room, count, "") for room, count in event.rooms])
        elif isinstance(event, Replay):
            if {"batch", "server-time"} <= self.caps:
                # As CHATHISTORY answers: the lines as they were said, at their time.
                said = [line for old in event.events for line in wire.event_lines(old)]
                return batch_lines(wire.server, self._batch_ref(), "chathistory", [channel(event.room)], said)
            lines = []
            for line in map(event_line, event.events):
                if line is not None:
                    lines.extend(wire.notice_lines(channel(event.room), f"[history] {line}"))
        else:
            return []
        return safe_lines(lines)

    def _private_tags(self, event: PrivateMessage | PrivateTags) -> str:
        """The tags of a private message or TAGMSG for this client: its time
        (``server-time``), with ``message-tags`` its ID and the sender's
        client-only tags, and the sender's account (``account-tag``)."""
        said = event if isinstance(event, PrivateMessage) else None
        # The time it was said, as its history has it.
        tags = [self.wire.line_tags(said.time if said is not None and said.time else None)]
        if "message-tags" in self.caps:
            if event.msgid:
                tags.append(tag_text([("msgid", event.msgid)]))
            tags.append(tag_text(client_tags(event.tags).items()))
        if "account-tag" in self.caps:
            account = said.account if said is not None else ""
            if not account:
                member = self.client.server.registry.find(event.sender)
                account = member.account if member is not None else ""
            if account and user_problem(account) is None:  # one from the cluster could break the line
                tags.append(tag_text([("account", account)]))
        return ";".join(filter(None, tags))

    def _mask_of(self, nick: str) -> str:
        """The prefix of someone on this server, by nickname (their user name from the registry)."""
        member = self.client.server.registry.find(nick)
        return self.wire.mask(nick, member.user if member is not None else "")

    def prefix_of(self, room: str, nick: str) -> str:
        """``@`` for an operator of ``room`` (or a server operator here),
        ``+`` for a voiced member, else ``""``."""
        server = self.client.server
        state = server.rooms.get(room)
        if state is not None and "multi-prefix" in self.caps:  # every prefix, highest first
            folded = nick.casefold()
            prefix = ("@" if folded in state.operators else "") + ("+" if folded in state.voiced else "")
        else:
            prefix = state.prefix(nick) if state is not None else ""
        if not prefix.startswith("@"):
            member = server.registry.find(nick)
            if member is not None and operator_name(member) is not None and (not prefix or "multi-prefix" in self.caps):
                prefix = "@" + prefix
        return prefix

    def names_lines(self, room: str, nicks: Iterable[str]) -> list[str]:
        """353 and 366 for ``room``, operators marked ``@`` and voiced members
        ``+`` (both, with ``multi-prefix``), as ``nick!user@host`` with
        ``userhost-in-names``."""
        state = self.client.server.rooms.get(room)
        name = self._mask_of if "userhost-in-names" in self.caps else str
        shown = [self.prefix_of(room, nick) + name(nick) for nick in nicks]
        return self.wire.names_lines(self.client.nick, room, shown, secret=state is not None and "s" in state.flags)

    def topic_lines(self, room: str) -> list[str]:
        """332 and 333 for a room with a topic; nothing for one without."""
        state = self.client.server.rooms.get(room)
        if state is None or not state.topic:
            return []
        nick = self.client.nick
        return [
            self.wire.numeric(nick, "332", channel(room), state.topic),
            self.wire.numeric(nick, "333", channel(room), state.topic_by, str(int(state.topic_at))),
        ]

    def join_lines(self, room: str) -> list[str]:
        """What this client sees when it enters ``room``: its JOIN, the topic and the names."""
        client = self.client
        wire = self.wire
        if isinstance(wire, TaggedIRCFormat) and "extended-join" in wire.caps:
            join = wire.extended_join(client.nick, client.user, room, client.account, client.realname)
        else:
            join = irc_line(wire.mask(client.nick, client.user), "JOIN", channel(room))
        return [
            join,
            *self.topic_lines(room),
            *self.names_lines(room, client.server.nicks_in(room)),
        ]

    # -- input --

    def handle(self, command: str, params: list[str]) -> None:
        handler = _HANDLERS.get(command)
        if not self._registered and command not in _BEFORE_REGISTRATION:
            self.reply("451", "You have not registered")
            return
        if handler is not None:
            handler(self, params)
            return
        # A chatcore command of some plugin (irssi sends "/shout hi" as "SHOUT hi").
        if not self.client.server.hooks.command(self.client, command.lower(), " ".join(params)):
            self.reply("421", command, "Unknown command")

    def _need(self, params: list[str], count: int, command: str) -> bool:
        if len(params) < count:
            self.reply("461", command, "Not enough parameters")
            return False
        return True

    # -- registration --

    def _offered(self) -> dict[str, str]:
        """The capabilities offered to this client, with their values."""
        offered = {}
        for capability in CAPABILITIES.values():
            value = capability.offer(self)
            if value is not None:
                offered[capability.name] = value
        return offered

    def _cap_reply(self, sub: str, text: str) -> None:
        # The list always as the trailing parameter, as IRCv3 writes it
        # (clients that split on spaces find it there, even with one name).
        self.send([f":{self.wire.server} CAP {self.nick} {sub} :{text}"])

    def cap(self, params: list[str]) -> None:
        """IRCv3 capability negotiation: LS [302], LIST, REQ (answered ACK
        or NAK, all or nothing), END. A client that starts it is registered
        only at CAP END, so SASL can happen first."""
        if not self._need(params, 1, "CAP"):
            return
        sub = params[0].upper()
        if sub == "LS":
            if not self._registered:
                self._cap_negotiating = True  # registration waits for CAP END
            values = len(params) > 1 and params[1].isascii() and params[1].isdigit() and int(params[1]) >= 302
            offered = self._offered()
            if values:  # 302 implies cap-notify (IRCv3 capability negotiation)
                self.caps.add("cap-notify")
            self._advertised = frozenset(offered)
            self._cap_reply(
                "LS", " ".join(f"{name}={value}" if values and value else name for name, value in offered.items())
            )
        elif sub == "LIST":
            self._cap_reply("LIST", " ".join(sorted(self.caps)))
        elif sub == "REQ":
            if not self._registered:
                self._cap_negotiating = True
            asked = params[1] if len(params) > 1 else ""
            offered = self._offered()
            names = asked.split()
            if not names or any(name.removeprefix("-") not in offered for name in names):
                self._cap_reply("NAK", asked)
                return
            for name in names:
                if name.startswith("-"):
                    self.caps.discard(name[1:])
                else:
                    self.caps.add(name)
            self._rewire()  # before the ACK: the lines after it are in the new format
            self._cap_reply("ACK", asked)
        elif sub == "END":
            if self._cap_negotiating:
                self._cap_negotiating = False
                self._sasl = self._sasl_data = ""  # an exchange left unfinished is over
                self._try_register()
        else:
            self.reply("410", sub, "Invalid CAP command")

    def offer_changed(self) -> None:
        """Tell a client with ``cap-notify`` what is offered now that was
        not (``CAP NEW``) and what is not any more (``CAP DEL``, which also
        disables it), after the server's configuration changed
        (:func:`capabilities_changed`)."""
        if "cap-notify" not in self.caps:
            return
        offered = self._offered()
        gone = sorted(name for name in self._advertised if name not in offered)
        new = [name for name in offered if name not in self._advertised]
        self._advertised = frozenset(offered)
        if gone:
            self.caps.difference_update(gone)
            self._cap_reply("DEL", " ".join(gone))
            self._rewire()
        if new:
            values = {name: value for name, value in offered.items() if name in new}
            self._cap_reply("NEW", " ".join(f"{name}={value}" if value else name for name, value in values.items()))

    def client_tags(self) -> str:
        """The client-only tags of the line being handled, as events carry
        them (``+typing=active``), if this client enabled ``message-tags``:
        without it, a client's tags are not relayed (IRCv3 message-tags)."""
        if not self._tags or "message-tags" not in self.caps:
            return ""
        return tag_text(client_tags(self._tags).items())

    def _rewire(self) -> None:
        """Render room events for this client in the format of its
        capabilities (:meth:`IRCFormat.with_caps`) from the next line on,
        in every channel it is in."""
        wire = self.wire.with_caps(self.caps)
        if wire is not self.wire:
            self.client.server.registry.change_wire(self.client, wire)
            self.wire = wire

    def authenticate(self, params: list[str]) -> None:
        """SASL (IRCv3 ``sasl`` 3.1): ``AUTHENTICATE PLAIN`` or ``EXTERNAL``,
        then the base64 message in chunks of 400, ``*`` to abort."""
        if not self._need(params, 1, "AUTHENTICATE"):
            return
        service = self.client.server.accounts
        if "sasl" not in self.caps or service is None:
            self.reply("904", "SASL authentication failed: request the sasl capability first (CAP REQ :sasl)")
            return
        if self.client.account:
            self.reply("907", "You have already authenticated using SASL")
            return
        argument = params[0]
        if argument == "*":
            if self._sasl:
                self._sasl = self._sasl_data = ""
                self.reply("906", "SASL authentication aborted")
            else:
                self.reply("904", "SASL authentication failed: no exchange to abort")
            return
        if not self._sasl:
            mechanism = argument.upper()
            if mechanism not in SASL_MECHANISMS:
                self.reply("908", ",".join(SASL_MECHANISMS), "are available SASL mechanisms")
                self.reply("904", f"SASL authentication failed: unknown mechanism {argument[:20]}")
                return
            self._sasl = mechanism
            self.send([irc_line(None, "AUTHENTICATE", "+")])
            return
        if argument != "+":
            self._sasl_data += argument
        if len(self._sasl_data) > MAX_SASL:
            self._sasl = self._sasl_data = ""
            self.reply("905", "SASL message too long")
            return
        if len(argument) == SASL_CHUNK:
            return  # more to come
        mechanism, data = self._sasl, self._sasl_data
        self._sasl = self._sasl_data = ""
        try:
            message = base64.b64decode(data, validate=True) if data else b""
        except (binascii.Error, ValueError):
            self.reply("904", "SASL authentication failed: the message is not base64")
            return
        if mechanism == "PLAIN":
            parts = message.split(b"\0")
            if len(parts) != 3:
                self.reply("904", "SASL authentication failed: PLAIN wants authzid NUL authcid NUL password")
                return
            try:
                authzid, account, password = (part.decode("utf-8") for part in parts)
            except UnicodeDecodeError:
                self.reply("904", "SASL authentication failed: not UTF-8")
                return
            if authzid and authzid.casefold() != account.casefold():
                self.reply("904", "SASL authentication failed: logging in as another account is not supported")
                return
            refusal = service.log_in(self.client, account, password)
        else:  # EXTERNAL: the certificate of the TLS handshake, for the account named or the one that has it
            finder: Any = getattr(self.client.transport, "peer_fingerprint", None)
            fingerprint = finder() if callable(finder) else None
            if not fingerprint:
                self.reply("904", "SASL authentication failed: no TLS client certificate was presented")
                return
            refusal = service.log_in_certificate(self.client, fingerprint, message.decode("utf-8", "replace"))
        if refusal is None:
            self._logged_in()
        elif not self.client.closed:
            self.reply("904", f"SASL authentication failed: {refusal.text}")

    def _logged_in(self) -> None:
        """900 and 903: the client is logged in to ``client.account``."""
        client = self.client
        nick = self._nick or client.nick or "*"
        mask = self.wire.mask(nick, self.state.username or "*")
        self.reply("900", mask, client.account, f"You are now logged in as {client.account}")
        self.reply("903", "SASL authentication successful")

    def pass_(self, params: list[str]) -> None:
        if self._registered:
            self.reply("462", "You may not reregister")
        elif self._need(params, 1, "PASS"):
            self._password = params[0]  # a secret: kept for the check below, never logged or echoed

    def user(self, params: list[str]) -> None:
        if self._registered:
            self.reply("462", "You may not reregister")
            return
        if len(params) < 4 or not params[0] or not params[3]:
            self.reply("461", "USER", "Not enough parameters")
            return
        self.state.username = user_name(params[0]) or "user"
        self.client.user = self.state.username  # carried by the events it causes: its prefix everywhere
        self.client.realname = clean(params[3])[:REALNAMELEN]  # the engine's: WHOWAS shows it after the client left
        self._try_register()

    def _try_register(self) -> None:
        """Log in once NICK and USER are in (and CAP END, if CAP began): the
        engine checks the password and the nickname (``ChatServer.log_in``),
        and this says why not in IRC's terms. Without a server password
        (``--password-file``), PASS is accepted and ignored: bouncers and
        some clients always send one."""
        if self._registered or self._cap_negotiating or not self._nick or not self.state.username:
            return
        server = self.client.server
        if (
            self._password
            and ":" in self._password
            and not server.password_required
            and server.accounts is not None
            and not self.client.account
        ):
            # PASS account:password, as Ergo allows, for clients without SASL.
            account, _, secret = self._password.partition(":")
            self._password = None
            refusal = server.accounts.log_in(self.client, account, secret)
            if self.client.closed:
                return
            if refusal is None:
                self._logged_in()
            else:
                self.reply("904", f"SASL authentication failed: {refusal.text}")
        refusal = server.log_in(self.client, password=self._password, nick=self._nick, room="")
        if refusal is None:
            self._registered = True
            autojoin = self.client.server.config.options.irc_autojoin
            if autojoin:
                self.join([autojoin])
        elif refusal.reason in ("password_missing", "password_wrong"):
            why = "Password incorrect" if refusal.reason == "password_wrong" else _PASSWORD_FIRST
            self.reply("464", why)
            self.send([irc_line(None, "ERROR", f"Closing Link: {why}")])
            self.client.disconnect("bad password", tell=False)
        else:  # the nickname: taken since NICK was checked (log_in takes it under the registry's lock)
            self.reply("433" if refusal.reason == "nick_taken" else "432", self._nick, _NICK_REFUSED[refusal.reason])
            self._nick = ""

    # -- nicknames --

    def nick_(self, params: list[str]) -> None:
        if not params or not params[0]:
            self.reply("431", "No nickname given")
            return
        nick = params[0]
        problem = nick_problem(nick)
        if problem is not None:
            self.reply("432", nick, f"Erroneous nickname: {problem}")
            return
        client = self.client
        holder = client.server.registry.find(nick)
        if holder is not None and holder is not client:
            self.reply("433", nick, "Nickname is already in use")
            return
        if not self._registered:
            self._nick = nick
            self._try_register()
            return
        old = client.nick
        if old == nick:
            return
        if not client.server.change_nick(client, nick):
            self.reply("433", nick, "Nickname is already in use")
            return
        self.send([irc_line(self.wire.mask(old, client.user), "NICK", nick)])  # the others got it from change_nick

    # -- rooms --

    def _room_of(self, name: str) -> str | None:
        """The room a channel name means, or None after telling the client why not."""
        if not name.startswith("#"):
            self.reply("403", name, "No such channel (channels start with #)")
            return None
        room = name[1:]
        if room_problem(room) is not None:
            self.reply("479", name, f"Illegal channel name: {room_problem(room)}")
            return None
        return room.lower()

    def _room_shown(self, room: str) -> bool:
        """Whether ``room`` exists and this client may know it: a secret
        (``+s``) channel is answered to those outside it as one that does
        not exist (403), never with 442, 482, 404 or its modes and topic."""
        server = self.client.server
        return server.rooms.get(room) is not None and server.room_visible(self.client, room)

    def join(self, params: list[str]) -> None:
        """``JOIN #a,#b [key1,key2]``; ``JOIN 0`` parts every channel."""
        if not self._need(params, 1, "JOIN"):
            return
        client = self.client
        if params[0] == "0":
            for joined in client.rooms:
                client.server.part_room(client, joined, "left all channels")
            return
        keys = params[1].split(",") if len(params) > 1 else []
        for index, name in enumerate(params[0].split(",")):
            room = self._room_of(name)
            if room is None:
                continue
            if room in client.rooms:
                continue  # already there: answered with nothing, as IRC servers do
            key = keys[index] if index < len(keys) else ""
            refusal = client.server.join_room(client, room, key)
            if refusal is not None:  # else its JOIN, topic and names came as the engine told it
                code, text = _JOIN_REFUSED.get(refusal.reason, ("479", refusal.text))
                self.reply(code, name, text)

    def part(self, params: list[str]) -> None:
        if not self._need(params, 1, "PART"):
            return
        client = self.client
        given = truncated(clean(params[1]), PARTLEN) if len(params) > 1 else ""
        reason = client.server.leave_reason(client, given, "")
        for name in params[0].split(","):
            room = name[1:].lower() if name.startswith("#") else ""
            if room in client.rooms:
                client.server.part_room(client, room, reason)
            elif room and self._room_shown(room):
                self.reply("442", name, "You're not on that channel")
            else:
                self.reply("403", name, "No such channel")

    def names(self, params: list[str]) -> None:
        client = self.client
        if not params:
            self.reply("366", "*", "End of /NAMES list.")
            return
        for name in params[0].split(",")[:MAX_TARGETS]:
            room = name[1:].lower() if name.startswith("#") else ""
            state = client.server.rooms.get(room) if room else None
            nicks = client.server.nicks_in(room) if room else []
            hidden = state is not None and "s" in state.flags and room not in client.rooms
            if nicks and not hidden:
                self.send(self.names_lines(room, nicks))
            else:
                self.reply("366", name, "End of /NAMES list.")

    def list_(self, params: list[str]) -> None:
        """Every room here and, in a cluster, on the other servers (as /rooms
        counts them), with its topic; ``+s`` rooms only to their members."""
        client = self.client
        server = client.server
        wanted = {name[1:].lower() for name in params[0].split(",") if name.startswith("#")} if params else None
        rows = []
        for room, count in sorted(server.room_counts().items()):
            if wanted is not None and room not in wanted:
                continue
            state = server.rooms.get(room)
            if state is not None and "s" in state.flags and room not in client.rooms:
                continue
            modes = f"[{state.modes(with_key=False)[0]}] " if state is not None else ""
            rows.append((room, count, modes + (state.topic if state is not None else "")))
        self.send(self.wire.list_lines(client.nick, rows))

    def topic(self, params: list[str]) -> None:
        if not self._need(params, 1, "TOPIC"):
            return
        client = self.client
        name = params[0]
        room = name[1:].lower() if name.startswith("#") else ""
        state = client.server.rooms.get(room) if room else None
        if state is None or not self._room_shown(room):  # a secret channel is none to outsiders
            self.reply("403", name, "No such channel")
            return
        if len(params) == 1:
            if state.topic:
                self.send(self.topic_lines(room))
            else:
                self.reply("331", name, "No topic is set")
            return
        refusal = client.server.set_topic(client, room, clean(params[1]))
        if refusal is not None:
            if refusal.reason == "not_in_room":
                self.reply("442", name, "You're not on that channel")
            elif refusal.reason == "no_such_room":
                self.reply("403", name, "No such channel")
            else:
                self.reply("482", name, "You're not channel operator")

    def invite(self, params: list[str]) -> None:
        if not self._need(params, 2, "INVITE"):
            return
        client = self.client
        nick, name = params[0], params[1]
        room = name[1:].lower() if name.startswith("#") else ""
        target = client.server.registry.find(nick)
        if target is None and not client.server.backplane.shared:
            self.reply("401", nick, "No such nick/channel")
            return
        nick = nick if target is None else target.nick  # on another server of a cluster: as given
        refusal = client.server.invite(client, room, nick) if room else None
        if not room or (refusal is not None and refusal.reason == "no_such_room"):
            self.reply("403", name, "No such channel")
        elif refusal is None:  # the channel's operators with invite-notify hear of it from the engine
            self.reply("341", nick, name)
        elif refusal.reason == "not_in_room":
            self.reply("442", name, "You're not on that channel")
        elif refusal.reason == "already_in_room":
            self.reply("443", nick, name, "is already on channel")
        elif refusal.reason == "not_operator":
            self.reply("482", name, "You're not channel operator")
        elif refusal.reason == "unreachable":
            self._notice(f"{nick} is on another server, and the invitation could not be sent there: {refusal.text}")
        else:
            self.reply("401", nick, "No such nick/channel")

    # -- messages --

    def privmsg(self, params: list[str], *, command: str = "PRIVMSG") -> None:
        # No automatic replies to a NOTICE (RFC 2812 3.3.2): errors are dropped.
        quiet = command == "NOTICE"
        if not params or not params[0]:
            if not quiet:
                self.reply("411", f"No recipient given ({command})")
            return
        if len(params) < 2 or not params[1]:
            if not quiet:
                self.reply("412", "No text to send")
            return
        target, *extra = params[0].split(",")
        text = params[1]
        if extra and not quiet:
            self.reply("407", ",".join(extra), "Too many recipients: one target per message; the others were skipped")
        # A channel NOTICE travels as a notice (IRC clients get NOTICE; the others chat).
        kind: Any = "notice" if quiet else "chat"
        if text.startswith("\x01"):  # CTCP: only ACTION (/me) to a channel means something here
            ctcp, _, rest = text.strip("\x01").partition(" ")
            ctcp = ctcp.upper()
            if ctcp != "ACTION":
                if not quiet:
                    self._notice(f"CTCP {ctcp} is not supported here; it was not sent")
                return
            if not target.startswith("#"):
                if not quiet:
                    self._notice("/me to a nickname is not supported here; it was not sent")
                return
            kind, text = "action", rest
        text = clean(text)
        if not text:
            if not quiet:
                self.reply("412", "No text to send")
            return
        client = self.client
        server = client.server
        if target.startswith("#"):
            room = target[1:].lower()
            if room not in client.rooms and server.rooms.get(room) is None:
                if not quiet:
                    self.reply("403", target, "No such channel")
            elif (refused := server.speech_refusal(client, room)) is not None:
                if not quiet and not self._room_shown(room):  # a secret channel is none to outsiders
                    self.reply("403", target, "No such channel")
                elif not quiet:
                    self.reply("404", target, f"Cannot send to channel: {refused}")
            else:
                tags = self.client_tags() if kind != "action" else ""
                server.broadcast_message(Message(client, room, text, kind, tags=tags))
            return
        recipient = server.registry.find(target)
        tags = self.client_tags()
        if recipient is client:  # to oneself, as IRC allows: here and back, seen by nobody else
            said = PrivateMessage(
                client.nick,
                client.nick,
                text,
                notice=quiet,
                tags=tags,
                msgid=server.private_msgid(),
                time=time.time(),
                account=client.account,
            )
            self._to_self(said)
            # Received, as any private line (the history keeps an account's notes to itself).
            server.hooks.private_received(client, said)
            return
        if not quiet:
            if recipient is not None:
                away = recipient.away if not recipient.closed else ""
            else:  # on another server, maybe: as the cluster last said (no round trip per message)
                away = server.backplane.away_elsewhere(target)
            if away:
                self.reply("301", recipient.nick if recipient is not None else target, away)
        # Every private message's one path: the filter chain, counted and
        # timed, and across a cluster to a nick on another server. Why not
        # is said IRC's way, and never to a NOTICE (RFC 2812 3.3.2).
        refusal = server.send_private(client, target, text, tell=False, notice=quiet, tags=tags)
        if refusal is None or quiet:
            return
        if refusal.reason == "no_such_nick":
            self.reply("401", target, "No such nick/channel")
        else:
            client.error(refusal.text)

    def _to_self(self, event: PrivateMessage | PrivateTags) -> None:
        """A private message or TAGMSG to its own nick: received, and with
        echo-message its copy back too (IRCv3 echo-message), which alone is
        the answer to a labeled line (IRCv3 labeled-response): the copy
        received is sent past it."""
        self.client.send_data(self.wire.framing.frame(self.render_lines(event)))
        if self.wire.echoes_messages:
            self.client.send(dataclasses.replace(event, echo=True) if isinstance(event, PrivateMessage) else event)

    def notice(self, params: list[str]) -> None:
        self.privmsg(params, command="NOTICE")

    def tagmsg(self, params: list[str]) -> None:
        """``@+typing=active TAGMSG <target>`` (IRCv3 message-tags): client-only
        tags without text, to a channel's members or to a nick (on any
        server of a cluster), who get them if they have ``message-tags``. A client
        without the capability gets 421, as the command is part of it."""
        if "message-tags" not in self.caps:
            self.reply("421", "TAGMSG", "Unknown command (CAP REQ :message-tags first)")
            return
        if not self._need(params, 1, "TAGMSG"):
            return
        target = params[0].split(",")[0]
        tags = self.client_tags()
        server = self.client.server
        if target.startswith("#"):
            room = target[1:].lower()
            if room not in self.client.rooms and (server.rooms.get(room) is None or not self._room_shown(room)):
                self.reply("403", target, "No such channel")
            elif tags and (refusal := server.send_tags(self.client, room, tags)) is not None:
                self.reply("404", target, f"Cannot send to channel: {refusal.text}")
        elif server.registry.find(target) is self.client:
            self._to_self(PrivateTags(target, target, tags, server.private_msgid()))
        elif (refusal := server.send_private_tags(self.client, target, tags)) is None:
            pass
        elif refusal.reason == "no_such_nick":
            self.reply("401", target, "No such nick/channel")
        else:
            self._notice(f"{target} is on another server, and the tags could not be sent there: {refusal.text}")

    def _notice(self, text: str) -> None:
        self.send(self.wire.notice_lines(self.nick, text))

    # -- about people --

    def _userinfo(self, member: Client) -> tuple[str, str]:
        state = irc_state(member)
        if state is None:
            return member.nick, "chatcore native user"
        return state.username or member.nick, member.realname or member.nick

    @staticmethod
    def _visible(member: Client, rooms: set[str]) -> bool:
        """Whether a WHO by mask lists ``member``: one with user mode +i only
        to those who share a room with it (RFC 2812 3.6.1)."""
        state = irc_state(member)
        return state is None or "i" not in state.modes or bool(rooms & set(member.rooms))

    def who(self, params: list[str]) -> None:
        client = self.client
        registry = client.server.registry
        target = params[0] if params else "*"
        in_room = target[1:].lower() if target.startswith("#") else ""
        if in_room:
            room_state = client.server.rooms.get(in_room)
            hidden = room_state is not None and "s" in room_state.flags and in_room not in client.rooms
            members = [] if hidden else list(registry.members(in_room))
        else:
            # A nickname or a mask (* and ?) matched against nicknames: the
            # people who share a room with the asker, and those in none.
            pattern = re.compile(fnmatch.translate(target.casefold()))
            mine = set(client.rooms)
            exact = not any(c in target for c in "*?")  # a nick asked by name is shown, +i or not
            members = [
                m
                for m in registry
                if m.admitted and pattern.match(m.nick.casefold()) and (exact or m is client or self._visible(m, mine))
            ][:MAX_WHO]
        # (nick, room, user, flags, real name) of each: this server's members ...
        rows = []
        for member in members:
            user, realname = self._userinfo(member)
            here = "G" if member.away else "H"
            if operator_name(member) is not None:  # an IRC operator
                here += "*"
            # A secret room of the member's is not named to those outside it.
            shared = [r for r in member.rooms if client.server.room_visible(client, r)]
            room = in_room or (shared[0] if shared else "")
            if room:
                here += self.prefix_of(room, member.nick)
            rows.append((member.nick, room, user, here, realname))
        if in_room and members:  # ... and in a cluster the other servers' (as NAMES lists them)
            for nick, person in client.server.backplane.people().items():
                if in_room in person.rooms:
                    rows.append((nick, in_room, nick, "G" if person.away else "H", ELSEWHERE))
        lines = [
            self.wire.numeric(
                client.nick,
                "352",
                channel(room) if room else "*",
                user,
                HOST,
                self.wire.server,
                nick,
                here,
                f"0 {realname}",
            )
            for nick, room, user, here, realname in sorted(rows, key=lambda row: row[0].casefold())
        ]
        self.send([*lines, self.wire.numeric(client.nick, "315", target, "End of /WHO list.")])

    def whois(self, params: list[str]) -> None:
        if not params:
            self.reply("431", "No nickname given")
            return
        client = self.client
        target = params[-1].split(",")[0]
        member = client.server.registry.find(target)
        if member is None:
            self._whois_elsewhere(target)
            return
        user, realname = self._userinfo(member)
        nick = member.nick
        lines = [
            self.wire.numeric(client.nick, "311", nick, user, HOST, "*", realname),
            *self._whois_rooms(nick, member.rooms),
            self.wire.numeric(client.nick, "312", nick, self.wire.server, f"chatcore {__version__}"),
        ]
        if operator_name(member) is not None:
            lines.append(self.wire.numeric(client.nick, "313", nick, "is an IRC operator"))
        if member.account:  # RPL_WHOISACCOUNT, as Ergo and the services send it
            lines.append(self.wire.numeric(client.nick, "330", nick, member.account, "is logged in as"))
        if member.away:
            lines.append(self.wire.numeric(client.nick, "301", nick, member.away))
        self.send([*lines, self.wire.numeric(client.nick, "318", nick, "End of /WHOIS list.")])

    def _whois_elsewhere(self, target: str) -> None:
        """WHOIS of a nick not on this server: someone on another server of
        the cluster, as the presence knows them (rooms, away), or 401."""
        me = self.client.nick
        folded = target.casefold()
        people = self.client.server.backplane.people().items()
        found = next(((nick, person) for nick, person in people if nick.casefold() == folded), None)
        if found is None:
            self.send(
                [
                    self.wire.numeric(me, "401", target, "No such nick"),
                    self.wire.numeric(me, "318", target, "End of /WHOIS list."),
                ]
            )
            return
        nick, person = found
        lines = [
            self.wire.numeric(me, "311", nick, nick, HOST, "*", ELSEWHERE),
            *self._whois_rooms(nick, person.rooms),
            self.wire.numeric(me, "312", nick, self.wire.server, "another server of the cluster"),
        ]
        if person.away:
            lines.append(self.wire.numeric(me, "301", nick, person.away))
        self.send([*lines, self.wire.numeric(me, "318", nick, "End of /WHOIS list.")])

    def _whois_rooms(self, nick: str, rooms: Sequence[str]) -> list[str]:
        """WHOIS's 319 for ``nick`` in ``rooms``: those this client may see, or no line for none."""
        visible = self._visible_rooms(rooms)
        if not visible:
            return []
        return [
            self.wire.numeric(
                self.client.nick, "319", nick, " ".join(self.prefix_of(r, nick) + channel(r) for r in visible)
            )
        ]

    def whowas(self, params: list[str]) -> None:
        """``WHOWAS nick [count]``: who had ``nick`` lately (the engine's
        record of departures, :mod:`chatcore.engine.departed`), newest
        first: 314 and 312 (the server, and when it was given up) for each,
        up to ``count`` of them (all for none or one not above 0, as RFC 2812
        3.6.3 says; at most :data:`MAX_WHOWAS`), 406 if there are none, then 369."""
        if not params or not params[0]:
            self.reply("431", "No nickname given")
            return
        nick = params[0].split(",")[0]
        count = 0
        if len(params) > 1:
            given = params[1]
            if not re.fullmatch(r"-?[0-9]{1,9}", given):
                self.reply("400", "WHOWAS", f"Invalid count {given!r}: a whole number (none or 0: every entry)")
                return
            count = int(given)
        found = self.client.server.departed.find(nick, count if count > 0 else MAX_WHOWAS)[:MAX_WHOWAS]
        numeric, me = self.wire.numeric, self.client.nick
        lines = []
        for entry in found:
            realname = entry.realname or (entry.nick if entry.user else "chatcore native user")
            when = time.strftime("%a %b %d %H:%M:%S %Y UTC", time.gmtime(entry.when))
            lines += [
                numeric(me, "314", entry.nick, entry.user or entry.nick, HOST, "*", realname),
                numeric(me, "312", entry.nick, self.wire.server, when),
            ]
        if not found:
            lines.append(numeric(me, "406", nick, "There was no such nickname"))
        self.send([*lines, numeric(me, "369", nick, "End of WHOWAS")])

    def _visible_rooms(self, rooms: Sequence[str]) -> list[str]:
        """Those of ``rooms`` (someone's) that this client may see (``+s`` ones only if it is in them too)."""
        states = self.client.server.rooms
        mine = self.client.rooms
        return [room for room in rooms if room in mine or (state := states.get(room)) is None or "s" not in state.flags]

    def help_(self, params: list[str]) -> None:
        """``HELP [subject]``: 704, 705 lines, 706 (modern.ircdocs.horse),
        524 for an unknown subject. ``HELP CHATCORE`` is chatcore's own
        ``/help`` (its commands and plugins', as NOTICE lines)."""
        subject = params[0].upper() if params else ""
        if subject == "CHATCORE":
            self.client.server.hooks.command(self.client, "help", "")
            return
        if subject and subject not in IRC_HELP:
            self.reply("524", subject, "Help not found")
            return
        topic = subject or "index"
        if subject:
            text = [IRC_HELP[subject]]
        else:
            text = [
                "IRC commands (HELP <command> for one):",
                *(" ".join(names) for names in _chunks(sorted(IRC_HELP), 8)),
                "chatcore's own commands (MUTE, BAN ... sent as they are): HELP CHATCORE",
            ]
        numeric, nick = self.wire.numeric, self.client.nick
        lines = [numeric(nick, "704", topic, text[0])]
        lines += [numeric(nick, "705", topic, line) for line in text[1:]]
        lines.append(numeric(nick, "706", topic, "End of /HELP"))
        self.send(lines)

    def lusers(self, params: list[str]) -> None:
        """``LUSERS``: 251 to 255, 265 and 266 (RFC 2812 3.4.2). Counts of
        this server's connections, plus the other servers' members in a
        cluster; no peak counts (265/266 carry text only, as the modern
        spec allows)."""
        server = self.client.server
        registered = [c for c in server.all_connections() if c.admitted]
        invisible = sum(1 for c in registered if (state := irc_state(c)) is not None and "i" in state.modes)
        elsewhere = {nick for nicks in server.backplane.members().values() for nick in nicks}
        total = len(registered) + len(elsewhere)
        operators = sum(1 for c in registered if operator_name(c) is not None)
        unknown = len(server.all_connections()) - len(registered)
        numeric, nick = self.wire.numeric, self.client.nick
        self.send(
            [
                numeric(nick, "251", f"There are {total - invisible} users and {invisible} invisible on 1 servers"),
                numeric(nick, "252", str(operators), "operator(s) online"),
                numeric(nick, "253", str(unknown), "unknown connection(s)"),
                numeric(nick, "254", str(len(server.room_counts())), "channels formed"),
                numeric(nick, "255", f"I have {len(registered)} clients and 0 servers"),
                numeric(nick, "265", f"Current local users: {len(registered)}"),
                numeric(nick, "266", f"Current global users: {total}"),
            ]
        )

    def ison(self, params: list[str]) -> None:
        if not self._need(params, 1, "ISON"):
            return
        nicks = " ".join(params).split()[:MAX_TARGETS]
        self.reply("303", " ".join(nick for nick, _away, _user in self._online(nicks)))

    def userhost(self, params: list[str]) -> None:
        if not self._need(params, 1, "USERHOST"):
            return
        answers = [f"{nick}={'-' if away else '+'}{user}@{HOST}" for nick, away, user in self._online(params[:5])]
        self.reply("302", " ".join(answers))

    def _online(self, nicks: list[str]) -> list[tuple[str, str, str]]:
        """Those of ``nicks`` who are online, here or on another server of
        the cluster (clients' notify lists ask ISON every minute or so):
        ``(nick, away message, user name)`` in the order asked. The cluster
        is asked once, and only for a nick not here (a person elsewhere
        shows their nick as user name, as WHOIS does)."""
        server = self.client.server
        found: list[tuple[str, str, str] | None] = []
        for nick in nicks:
            member = server.registry.find(nick)
            found.append(None if member is None else (member.nick, member.away, self._userinfo(member)[0]))
        if None in found and server.backplane.shared:
            elsewhere = {nick.casefold(): (nick, person.away) for nick, person in server.backplane.people().items()}
            for index, nick in enumerate(nicks):
                if found[index] is None and (person := elsewhere.get(nick.casefold())) is not None:
                    found[index] = (person[0], person[1], person[0])
        return [answer for answer in found if answer is not None]

    def away(self, params: list[str]) -> None:
        """``AWAY :text`` (none: back): 306 or 305, and the clients in its
        channels with away-notify, on every server, are told (IRCv3 away-notify)."""
        text = truncated(clean(params[0]), AWAYLEN) if params else ""
        client = self.client
        client.away = text
        if text:
            self.reply("306", "You have been marked as being away")
        else:
            self.reply("305", "You are no longer marked as being away")
        client.server.publish_about(client, AwayChanged("", nick=client.nick, away=text, user=client.user))

    def setname(self, params: list[str]) -> None:
        """``SETNAME :real name`` (IRCv3 setname): the real name WHOIS and
        WHO show changes; the client (with the capability) and the IRC
        clients in its channels with ``setname``, on every server, are told."""
        realname = clean(params[0]).strip() if params else ""
        if not realname or len(realname) > REALNAMELEN:
            self.send([irc_line(self.wire.server, "FAIL", "SETNAME", "INVALID_REALNAME", "Realname is not valid")])
            return
        client = self.client
        client.realname = realname
        if "setname" in self.caps:
            line = irc_line(self.wire.mask(client.nick, client.user), "SETNAME", realname)
            self.send_lines(with_tags(safe_lines([line]), self.wire.line_tags()))
        client.server.publish_about(client, RealnameChanged("", nick=client.nick, realname=realname, user=client.user))

    def mode(self, params: list[str]) -> None:
        if not self._need(params, 1, "MODE"):
            return
        client = self.client
        target = params[0]
        if target.startswith("#"):
            self._channel_mode(target, params[1:])
            return
        if target.casefold() != client.nick.casefold():
            self.reply("502", "Can't change mode for other users")
            return
        if len(params) == 1:
            self.reply("221", "+" + self.state.modes + ("o" if operator_name(client) is not None else ""))
            return
        adding, changed, unknown = True, "", False
        for letter in params[1]:
            if letter in "+-":
                adding = letter == "+"
            elif letter == "i":  # invisible: every chatcore user is, in effect
                if adding != ("i" in self.state.modes):
                    self.state.modes = "i" if adding else ""
                    changed += ("+" if adding else "-") + "i"
            elif letter == "o":
                # +o is OPER's alone (RFC 2812 3.1.5: "should be ignored"); -o logs out.
                if not adding and operator_name(client) is not None:
                    opers.log_out(client)
                    changed += "-o"
            else:
                unknown = True
        if changed:
            self.send([irc_line(client.nick, "MODE", client.nick, changed)])
        if unknown:
            self.reply("501", "Unknown MODE flag")

    def _channel_mode(self, name: str, params: list[str]) -> None:
        """``MODE #room``: 324 and 329; ``MODE #room +b`` (or ``+e``): the
        list; ``MODE #room +kl-m key 10``: the engine's change_modes."""
        client = self.client
        server = client.server
        room = name[1:].lower()
        state = server.rooms.get(room)
        if state is None or not self._room_shown(room):  # a secret channel is none to outsiders
            self.reply("403", name, "No such channel")
            return
        if not params:
            modes, arguments = state.modes(with_key=room in client.rooms)
            self.send(
                [
                    " ".join([f":{self.wire.server}", "324", client.nick, name, modes, *arguments]),
                    self.wire.numeric(client.nick, "329", name, str(int(state.created))),
                ]
            )
            return
        try:
            requests = parse_modes(params[0], params[1:])
        except ModeError as exc:
            if exc.code == "unknown_mode":
                self.reply("472", exc.mode, "is unknown mode char to me")
            elif exc.code == "missing_argument":
                self.reply("461", "MODE", "Not enough parameters")
            else:
                self.reply("696", name, exc.mode, "*", str(exc))
            return
        for letter in dict.fromkeys(r.mode for r in requests if r.mode in LIST_MODES and not r.argument):
            masks, (item, end) = (state.bans, ("367", "368")) if letter == "b" else (state.excepts, ("348", "349"))
            lines = [
                self.wire.numeric(client.nick, item, name, mask, by or self.wire.server, str(int(when)))
                for mask, (by, when) in masks.items()
            ]
            what = "ban" if letter == "b" else "exception"
            self.send([*lines, self.wire.numeric(client.nick, end, name, f"End of channel {what} list")])
        if all(r.mode in LIST_MODES and not r.argument for r in requests):
            return
        refusal = server.change_modes(client, room, params[0], params[1:])
        if refusal is None:
            return
        if refusal.reason == "not_operator":
            self.reply("482", name, "You're not channel operator")
        elif refusal.reason == "no_such_room":  # emptied meanwhile
            self.reply("403", name, "No such channel")
        elif refusal.reason == "not_in_room":
            here = {member.casefold() for member in server.nicks_in(room)}
            nick = next((r.argument for r in requests if r.mode in "ov" and r.argument.casefold() not in here), "*")
            elsewhere = {n.casefold() for nicks in server.backplane.members().values() for n in nicks}
            if server.registry.find(nick) is None and nick.casefold() not in elsewhere:
                self.reply("401", nick, "No such nick/channel")  # nobody by that name at all
            else:
                self.reply("441", nick, name, "They aren't on that channel")
        elif refusal.reason == "list_full":
            self.reply("478", name, "*", refusal.text)
        else:
            self.reply("696", name, "*", "*", refusal.text)

    # -- operators (the opers plugin's, docs/security.md) --

    def oper(self, params: list[str]) -> None:
        # The password is a secret: given to the opers plugin's check alone,
        # never to a hook, a log or a reply.
        if not self._need(params, 2, "OPER"):
            return
        client = self.client
        if not opers.has_operators(client.server):
            self.reply("491", "No operators are configured on this server (--opers-file)")
        elif opers.log_in(client, params[0], params[1]):
            self.reply("381", "You are now an IRC operator")
            self.send([irc_line(client.nick, "MODE", client.nick, "+o")])
        elif not client.closed:  # the third failure closes the connection
            self.reply("464", "Password incorrect")

    def kick(self, params: list[str]) -> None:
        """``KICK #room nick[,nick] [:reason]``: a channel operator puts
        people out of the channel; they stay connected."""
        if not self._need(params, 2, "KICK"):
            return
        client = self.client
        server = client.server
        name = params[0].split(",")[0]
        room = name[1:].lower() if name.startswith("#") else ""
        if not room or server.rooms.get(room) is None or not self._room_shown(room):
            self.reply("403", name, "No such channel")
            return
        if room not in client.rooms and operator_name(client) is None:
            self.reply("442", name, "You're not on that channel")
            return
        reason = truncated(clean(params[2]), KICKLEN) if len(params) > 2 else ""
        for nick in params[1].split(",")[:MAX_TARGETS]:
            refusal = server.kick_from_room(client, room, nick, reason)
            if refusal is None:
                continue
            if refusal.reason == "not_operator":
                self.reply("482", name, "You're not channel operator")
                return
            if refusal.reason == "unreachable":  # in this channel on another server, out of reach
                self._notice(f"{nick} is on another server, and the kick could not be sent there: {refusal.text}")
            elif server.registry.find(nick) is None and nick.casefold() not in map(str.casefold, server.nicks_in(room)):
                self.reply("401", nick, "No such nick/channel")
            else:
                self.reply("441", nick, name, "They aren't on that channel")

    def kill(self, params: list[str]) -> None:
        """``KILL nick :reason``: an IRC operator disconnects ``nick`` (the
        opers plugin's ``/kill``), here or on another server of a cluster."""
        if not self._need(params, 1, "KILL"):
            return
        client = self.client
        if operator_name(client) is None:
            self.reply("481", "Permission Denied- You're not an IRC operator")
            return
        target = client.server.registry.find(params[0])
        reason = truncated(clean(params[1]), KICKLEN) if len(params) > 1 else ""
        if target is not None and not target.closed:
            self._kick(target, reason)
        else:
            self._kick_elsewhere(params[0], reason)  # a nick of another server of the cluster, if any

    def _kick(self, target: Client, reason: str) -> None:
        client = self.client
        reason = reason.strip() or "no reason given"
        if not set(client.rooms) & set(target.rooms):  # the operator hears of the kill as its rooms would
            self._notice(f"{target.nick} was disconnected: {reason}")
        opers.kick(client, target, reason)

    def _kick_elsewhere(self, nick: str, reason: str) -> None:
        """Kick ``nick`` on the server of the cluster it is on: that server
        disconnects it, and its channel here sees the leave."""
        sent = opers.kick_elsewhere(self.client, nick, reason)
        if sent is None:
            self.reply("401", nick, "No such nick/channel")
        elif sent is not True:
            self._notice(f"{nick} is on another server, and the kick could not be sent there: {sent}")

    # -- the connection --

    def ping(self, params: list[str]) -> None:
        if not params:
            self.reply("409", "No origin specified")
            return
        self.send([irc_line(self.wire.server, "PONG", self.wire.server, params[-1])])

    def pong(self, params: list[str]) -> None:
        """Nothing to do: the server sends no PINGs (TCP keep-alive is the kernel's)."""

    def motd(self, params: list[str]) -> None:
        self.send(self.wire.motd_lines(self.client.nick, self.client.server.hooks.welcome(self.client)))

    def _this_server(self, params: list[str]) -> bool:
        """True if ``params`` name no server or this one; else 402 (one
        server answers for itself: the others of a cluster are not IRC servers)."""
        if params and params[0].casefold() != self.wire.server.casefold():
            self.reply("402", params[0], "No such server")
            return False
        return True

    def time(self, params: list[str]) -> None:
        """``TIME``: 391 with the server's local time, as ircu does: seconds, offset, text."""
        if self._this_server(params):
            now = time.time()
            shown = time.strftime("%A %B %d %Y -- %H:%M:%S UTC", time.gmtime(now))
            self.reply("391", self.wire.server, str(int(now)), "0", shown)

    def version(self, params: list[str]) -> None:
        """``VERSION``: 351 (RFC 2812 3.4.3, in modern.ircdocs.horse's form),
        then the 005 lines again, as Ergo and InspIRCd send them."""
        if not self._this_server(params):
            return
        client = self.client
        history = client.server.history
        limit = history.max_limit if history is not None else 0
        wire = self.wire
        about = "a plugin-extensible chat server in Python"
        self.send(
            [
                wire.numeric(client.nick, "351", f"chatcore-{__version__}", wire.server, about),
                *wire.isupport_lines(client.nick, client.server.max_rooms_per_client, limit),
            ]
        )

    def info(self, params: list[str]) -> None:
        """``INFO``: what this server is (371 lines, then 374)."""
        if not self._this_server(params):
            return
        nick = self.client.nick
        lines = [
            f"chatcore {__version__}: a plugin-extensible chat server in Python",
            "IRC clients, line-based TCP clients and browsers share its rooms",
            f"This server was created {STARTED}",
        ]
        self.send(
            [
                *(self.wire.numeric(nick, "371", text) for text in lines),
                self.wire.numeric(nick, "374", "End of INFO list"),
            ]
        )

    def quit(self, params: list[str]) -> None:
        text = truncated(clean(params[0]), QUITLEN) if params else ""
        client = self.client
        self.send(
            [irc_line(None, "ERROR", f"Closing Link: {client.nick or '*'}[{HOST}] ({_quit_text(text or 'quit')})")]
        )
        client.disconnect(client.server.leave_reason(client, text, "quit"), tell=False)


# ---------------------------------------------------------------------------
# CHATHISTORY (draft/chathistory): the past by message ID and time
# ---------------------------------------------------------------------------
#
# https://ircv3.net/specs/extensions/chathistory, answered from the server's
# history service (chatcore.engine.history: the history plugin's, the
# cluster's Redis streams in a cluster). Ergo's handler was the reference
# for what the spec leaves open: a missing, zero or too large limit is the
# server's most; a timestamp that bounds the start of a range is rounded up
# to the next millisecond, since times are sent to the millisecond and the
# line at that time is excluded; BEFORE * is LATEST * (Kiwi IRC sends it).

#: The subcommands that query one target, and the kind of query each is.
CHATHISTORY_QUERIES = {name.upper(): name for name in QUERY_KINDS}
#: What ISUPPORT's MSGREFTYPES lists: the references CHATHISTORY takes, the preferred first.
MSGREFTYPES = "msgid,timestamp"
#: A client's msgid reference longer than this is no message ID of ours.
MAX_MSGID = 100


class ChathistoryError(Exception):
    """A CHATHISTORY command that cannot be answered: ``FAIL CHATHISTORY
    code *params :text``."""

    def __init__(self, code: str, *params: str, text: str) -> None:
        super().__init__(text)
        self.code, self.params, self.text = code, params, text


def parse_timestamp(text: str) -> float | None:
    """A server-time timestamp (``2019-01-04T14:33:26.123Z``, the fraction
    optional) as seconds since the epoch, or None if it is not one."""
    for form in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            moment = datetime.datetime.strptime(text, form)
        except ValueError:
            continue
        return moment.replace(tzinfo=datetime.timezone.utc).timestamp()
    return None


def parse_reference(text: str, *, exclusive_start: bool = False) -> Mark | None:
    """A CHATHISTORY message reference, ``msgid=ID`` or ``timestamp=TIME``,
    or None if it is neither. ``exclusive_start``: a time that starts a
    range forwards, rounded up past its millisecond (see above)."""
    kind, sep, value = text.partition("=")
    kind = kind.lower()
    if not sep or not value:
        return None
    if kind == "msgid":
        return Mark(value) if len(value) <= MAX_MSGID else None
    if kind == "timestamp":
        when = parse_timestamp(value)
        if when is None:
            return None
        return Mark(time=math.floor(when * 1000 + 1) / 1000 if exclusive_start else when)
    return None


def chathistory_query(subcommand: str, params: list[str], max_limit: int) -> tuple[str, Query]:
    """The target and the query of ``CHATHISTORY subcommand *params``
    (``params`` after the subcommand), for one of
    :data:`CHATHISTORY_QUERIES`. Raises ChathistoryError."""
    kind = CHATHISTORY_QUERIES[subcommand]
    references = 2 if kind == "between" else 1
    if len(params) < 1 + references:
        raise ChathistoryError("INVALID_PARAMS", subcommand, text="Insufficient parameters")
    target, *given = params[: 1 + references]
    limit = chathistory_limit(params[1 + references] if len(params) > 1 + references else "", max_limit)
    if given[0] == "*" and kind in ("latest", "before"):
        return target, Query("latest", limit)
    forwards = kind in ("after", "latest")
    if kind == "between":
        first, second = (parse_reference(reference) for reference in given)
        if first is not None and second is not None and not first.msgid and not second.msgid:
            # Both times: the earlier one is the start of the range, excluded.
            earlier = min(first.time, second.time)
            first, second = (
                Mark(time=math.floor(mark.time * 1000 + 1) / 1000) if mark.time == earlier else mark
                for mark in (first, second)
            )
        marks = [first, second]
    else:
        marks = [parse_reference(given[0], exclusive_start=forwards)]
    for reference, mark in zip(given, marks, strict=True):
        if mark is None:
            raise ChathistoryError("INVALID_PARAMS", subcommand, reference, text="Invalid message reference")
    return target, Query(kind, limit, *marks)


def chathistory_limit(text: str, max_limit: int) -> int:
    """A CHATHISTORY limit: the server's most when missing, zero, not a
    number or above it (as Ergo)."""
    limit = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0
    return limit if 0 < limit <= max_limit else max_limit


def chathistory(protocol: IRCProtocol, params: list[str]) -> None:
    """``CHATHISTORY subcommand ...``: a chathistory batch of the lines asked
    for, or ``FAIL CHATHISTORY``."""
    wire = protocol.wire
    client = protocol.client
    subcommand = params[0].upper() if params else "*"
    service = client.server.history
    try:
        if service is None:
            raise ChathistoryError("MESSAGE_ERROR", subcommand, text="This server keeps no history")
        if subcommand == "TARGETS":
            _chathistory_targets(protocol, service, params[1:])
            return
        if subcommand not in CHATHISTORY_QUERIES:
            raise ChathistoryError("INVALID_PARAMS", subcommand, text="Unknown subcommand")
        target, query = chathistory_query(subcommand, params[1:], service.max_limit)
        # A channel is the room of that name; a nick, the private
        # conversation with that person's account (chatcore.engine.history).
        name = target[1:] if target.startswith("#") else CONVERSATION + target
        found = service.query(client, name, query)
        if isinstance(found, str):
            raise ChathistoryError("INVALID_TARGET", subcommand, target, text="Messages could not be retrieved")
    except ChathistoryError as failure:
        protocol.send([irc_line(wire.server, "FAIL", "CHATHISTORY", failure.code, *failure.params, failure.text)])
        return
    if target.startswith("#"):
        lines = [line for event in found for line in wire.event_lines(event)]
    else:
        lines = _private_history_lines(protocol, target, found)
    protocol.send_batch("chathistory", [target], lines)


def _private_history_lines(protocol: IRCProtocol, peer: str, events: list[RoomEvent]) -> list[bytes]:
    """A private conversation's kept lines as PRIVMSGs between this client
    and ``peer``, with their time and msgid tags as the client takes tags."""
    client = protocol.client
    wire = protocol.wire
    own = {client.nick.casefold(), client.account.casefold()}
    # The peer as its nick is spelt (as the live lines had it), not as asked.
    other = client.server.registry.find(peer)
    peer = other.nick if other is not None else peer
    lines: list[bytes] = []
    for event in events:
        assert isinstance(event, Chat)  # what the history keeps of private lines
        to = peer if event.nick.casefold() in own else client.nick
        tags = [("time", server_time(event.time))] if "server-time" in protocol.caps else []
        if "message-tags" in protocol.caps and event.msgid:
            tags.append(("msgid", event.msgid))
        lines.extend(
            with_tags(safe_lines([irc_line(wire.mask(event.nick), "PRIVMSG", to, event.text)]), tag_text(tags))
        )
    return lines


def _target_name(name: str) -> str:
    """A history target as IRC names it: ``#room``, or the nick of ``@nick``."""
    return name.removeprefix(CONVERSATION) if name.startswith(CONVERSATION) else channel(name)


def _chathistory_targets(protocol: IRCProtocol, service: HistoryService, params: list[str]) -> None:
    """``CHATHISTORY TARGETS timestamp=A timestamp=B [limit]``: the channels
    and nicks with lines between the two times, in a
    ``draft/chathistory-targets`` batch of ``CHATHISTORY TARGETS NAME TIME``."""
    if len(params) < 2:
        raise ChathistoryError("INVALID_PARAMS", "TARGETS", text="Insufficient parameters")
    start, end = (parse_reference(reference) for reference in params[:2])
    for reference, mark in zip(params[:2], (start, end), strict=True):
        if mark is None or mark.msgid:
            raise ChathistoryError("INVALID_PARAMS", "TARGETS", reference, text="Invalid timestamp")
    assert start is not None
    assert end is not None
    # Both ends excluded, to the millisecond a time tag shows (as irctest
    # and Ergo have it): the earlier one rounded up past its millisecond.
    if start.time <= end.time:
        start = parse_reference(params[0], exclusive_start=True) or start
    else:
        end = parse_reference(params[1], exclusive_start=True) or end
    limit = chathistory_limit(params[2] if len(params) > 2 else "", service.max_limit)
    server = protocol.wire.server
    lines = safe_lines(
        irc_line(server, "CHATHISTORY", "TARGETS", _target_name(name), server_time(when))
        for name, when in service.targets(protocol.client, start.time, end.time, limit)
    )
    protocol.send_batch("draft/chathistory-targets", [], lines)


_HANDLERS: dict[str, Handler] = {
    "CAP": IRCProtocol.cap,
    "AUTHENTICATE": IRCProtocol.authenticate,
    "PASS": IRCProtocol.pass_,
    "NICK": IRCProtocol.nick_,
    "USER": IRCProtocol.user,
    "PING": IRCProtocol.ping,
    "PONG": IRCProtocol.pong,
    "QUIT": IRCProtocol.quit,
    "JOIN": IRCProtocol.join,
    "PART": IRCProtocol.part,
    "PRIVMSG": IRCProtocol.privmsg,
    "SETNAME": IRCProtocol.setname,
    "NOTICE": IRCProtocol.notice,
    "TAGMSG": IRCProtocol.tagmsg,
    "NAMES": IRCProtocol.names,
    "LIST": IRCProtocol.list_,
    "TOPIC": IRCProtocol.topic,
    "WHO": IRCProtocol.who,
    "WHOIS": IRCProtocol.whois,
    "WHOWAS": IRCProtocol.whowas,
    "ISON": IRCProtocol.ison,
    "USERHOST": IRCProtocol.userhost,
    "AWAY": IRCProtocol.away,
    "MODE": IRCProtocol.mode,
    "MOTD": IRCProtocol.motd,
    "TIME": IRCProtocol.time,
    "LUSERS": IRCProtocol.lusers,
    "HELP": IRCProtocol.help_,
    "INFO": IRCProtocol.info,
    "VERSION": IRCProtocol.version,
    "OPER": IRCProtocol.oper,
    "KICK": IRCProtocol.kick,
    "INVITE": IRCProtocol.invite,
    "KILL": IRCProtocol.kill,
    "CHATHISTORY": chathistory,
}
#: What ``HELP <command>`` says of each IRC command chatcore answers.
IRC_HELP = {
    "AWAY": "AWAY [:<text>]: mark yourself away (no text: back)",
    "CHATHISTORY": (
        "CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN <target> <msgid=ID|timestamp=T|*> [...] <limit>, "
        "CHATHISTORY TARGETS <timestamp=T> <timestamp=T> <limit>: earlier lines (draft/chathistory)"
    ),
    "HELP": "HELP [<command>]: this help; HELP CHATCORE for chatcore's own commands",
    "INFO": "INFO: what this server is",
    "INVITE": "INVITE <nick> <#channel>: invite someone (an operator's invitation lets them past +i, +k, +l, bans)",
    "ISON": "ISON <nick> ...: which of these nicks are online",
    "JOIN": "JOIN <#channel>[,<#channel>] [<key>[,<key>]]: join channels; JOIN 0 parts them all",
    "KICK": "KICK <#channel> <nick>[,<nick>] [:<reason>]: put people out of a channel you run",
    "KILL": "KILL <nick> [:<reason>]: disconnect someone (IRC operators)",
    "LIST": "LIST [<#channel>,...]: channels with their member counts, modes and topics",
    "LUSERS": "LUSERS: how many users, operators, connections and channels",
    "MODE": "MODE <#channel> [<modes> [<args>]]: channel modes b e i k l m n o s t v; MODE <nick> [+i|-o]",
    "MOTD": "MOTD: the message of the day",
    "NAMES": "NAMES [<#channel>]: who is in a channel (@ operators, + voiced)",
    "NICK": "NICK <nick>: change your nickname",
    "NOTICE": "NOTICE <target> :<text>: a message that gets no automatic reply",
    "OPER": "OPER <name> <password>: become an IRC operator",
    "PART": "PART <#channel>[,<#channel>] [:<reason>]: leave channels",
    "PING": "PING <token>: the server answers PONG <token>",
    "PRIVMSG": "PRIVMSG <target> :<text>: send text to a channel or a user",
    "QUIT": "QUIT [:<reason>]: leave the server",
    "SETNAME": "SETNAME :<real name>: change your real name (WHOIS shows it)",
    "TAGMSG": "TAGMSG <target>: send only tags (+typing, +draft/react ...) to a channel or a user (message-tags)",
    "TIME": "TIME: the server's time",
    "TOPIC": "TOPIC <#channel> [:<topic>]: see or set a channel's topic (empty: clear it)",
    "USERHOST": "USERHOST <nick> ...: user and host of these nicks",
    "VERSION": "VERSION: the server's version and what it supports (005)",
    "WHO": "WHO <#channel>|<mask>: who is in a channel, or whose nick matches",
    "WHOIS": "WHOIS <nick>: who someone is and where",
    "WHOWAS": "WHOWAS <nick> [<count>]: who had a nickname lately (the newest first; * and ? match)",
}


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    return (items[start : start + size] for start in range(0, len(items), size))


_BEFORE_REGISTRATION = frozenset({"CAP", "AUTHENTICATE", "PASS", "NICK", "USER", "PING", "PONG", "QUIT"})


# ---------------------------------------------------------------------------
# IRC over WebSocket (https://ircv3.net/specs/extensions/websocket)
# ---------------------------------------------------------------------------

#: IRC over WebSocket's subprotocols, and how each carries the lines: one a
#: message, binary (the bytes as they are) or text (UTF-8, which the codec's
#: ``safe_lines`` guarantees). A client that offers neither gets text, as
#: Ergo and UnrealIRCd do (browsers' clients read text most easily).
BINARY_SUBPROTOCOL = "binary.ircv3.net"
TEXT_SUBPROTOCOL = "text.ircv3.net"
_WS_FRAMINGS: dict[str | None, type[WebSocketTextLines]] = {
    BINARY_SUBPROTOCOL: WebSocketBinaryLines,
    TEXT_SUBPROTOCOL: WebSocketTextLines,
    None: WebSocketTextLines,
}
DEFAULT_WS_PORT = 8097
DEFAULT_WSS_PORT = 8098
DEFAULT_WS_PING_INTERVAL = 20
#: Where the irc plugin keeps its WebSocket settings in ``config.data``.
WS_DATA = "irc.websocket"


class IRCWebSocketSettings:
    """One server's IRC-over-WebSocket settings, and the pinger of its connections."""

    def __init__(self, origins: frozenset[str], ping_interval: float) -> None:
        self.origins = origins
        self.pinger = Pinger("ircws", ping_interval)


class IRCWebSocketProtocol(IRCProtocol):
    """IRC over WebSocket (``ircws://``, ``ircwss://``): the HTTP request that
    opens the WebSocket, then IRC lines, one a message, which
    :class:`IRCProtocol` reads and answers as it does over TCP.

    Only the carrying is this class's: the subprotocol chosen at the opening
    picks the framing, and with it the format this client's room events are
    rendered in (:meth:`IRCFormat.framed_by`), shared by every connection of
    that subprotocol. The server's pinger pings a quiet client with a
    WebSocket ping and closes one an interval after a ping it did not answer.
    """

    __slots__ = ("__weakref__", "_last_heard", "_opening", "_pinged_at", "_settings", "_websocket")

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._settings: IRCWebSocketSettings = client.server.config.data[WS_DATA]
        self._opening: WebSocketOpening | None = WebSocketOpening("an IRC WebSocket endpoint")
        #: The WebSocket's framing, once it is open.
        self._websocket: WebSocketTextLines | None = None
        self._last_heard = time.monotonic()
        #: When the ping it has not answered yet went out (0.0: none).
        self._pinged_at = 0.0

    def connection_made(self) -> None:
        super().connection_made()
        self._settings.pinger.add(self)

    def connection_lost(self) -> None:
        self._settings.pinger.discard(self)
        super().connection_lost()

    def render(self, event: Event) -> bytes:
        if self._websocket is None:  # no WebSocket yet: only a refusal (server full ...), in HTTP
            return http_error(503, event.text) if isinstance(event, Error) else b""
        data = super().render(event)
        if isinstance(event, Disconnected) or (isinstance(event, Error) and not self.client.nick):
            data += _CLOSE  # the ERROR that closes the link: the WebSocket closes too
        return data

    def send(self, lines: Iterable[str]) -> None:
        lines = list(lines)
        data = self.wire.frame(lines)
        if lines and lines[-1].startswith("ERROR "):  # QUIT's answer, the last word
            data += _CLOSE
        self.client.send_data(data)

    def data_received(self, data: bytes) -> None:
        self._last_heard = time.monotonic()
        self._pinged_at = 0.0
        if self._websocket is None:
            data = self._open(data)
            if not data:
                return
        websocket = self._websocket
        assert websocket is not None
        client = self.client
        lines = websocket.feed(data)
        reasons = iter(websocket.dropped)
        for line in lines:
            if line is None and next(reasons, "").startswith("binary"):
                client.send_data(self.wire.frame(self.wire.notice_lines(self.nick, _BINARY_ON_TEXT)))
            else:
                self.lines_received([line])
        if websocket.closed is not None and websocket.closed != "connection closed":
            # Broken framing, or a text message that is not UTF-8: the
            # stream cannot be trusted any more (RFC 6455 7.1.7). Said once
            # in IRC before the close frame, for the client's log.
            log.info("irc: %s from %r", websocket.closed, client)
            hint = _UTF8_HINT if "utf-8" in websocket.closed.lower() else ""
            error = irc_line(None, "ERROR", f"Closing Link: WebSocket {websocket.closed}{hint}")
            client.send_data(self.wire.frame([error]))  # its close frame is the framing's, below
        if websocket.reply:  # a pong, or the closing handshake
            client.send_data(websocket.reply)
            websocket.reply = b""
        if websocket.closed == "connection closed":  # the client closed, and was answered
            client.disconnect("connection closed", tell=False)
        elif websocket.closed is not None:  # the detail is in the log, and was said to the client
            client.disconnect("protocol error", tell=False)

    def _open(self, data: bytes) -> bytes:
        """Read the opening request; once it is in and accepted, answer it,
        pick the framing and return the bytes after it (WebSocket frames)."""
        opening = self._opening
        assert opening is not None
        client = self.client
        try:
            opened = opening.feed(data)
            if opened is None:
                return b""
            request, trailing = opened
            # Cross-site WebSocket hijacking (chatcore.wire.websocket says
            # how): a page elsewhere must not make its visitors' browsers
            # chat here, from their addresses, as them.
            allowed = own_origins(client.sock, client.transport.encrypts) | self._settings.origins
            origin = foreign_origin(request, allowed)
            if origin is not None:
                log.warning(
                    "irc: refused a WebSocket from %s with Origin %s (allowed: %s; add it with --irc-ws-origins)",
                    client.address[0],
                    origin,
                    ", ".join(sorted(allowed)),
                )
                raise Refused(403, f"origin {origin} may not open this WebSocket")
            ws, answer, subprotocol = accept(request, (BINARY_SUBPROTOCOL, TEXT_SUBPROTOCOL))
        except Refused as refused:
            client.send_data(refused.response())
            client.disconnect(f"HTTP {refused.status}", tell=False)
            return b""
        framing = _WS_FRAMINGS[subprotocol]
        self.wire = client.wire = self.wire.framed_by(framing)  # before the client is in any room
        self._websocket = framing(ws, MAX_INPUT, MAX_FRAGMENTS)
        self._opening = None
        client.send_data(answer)
        return trailing

    def check(self, now: float, interval: float) -> None:
        """From the pinger thread: close an opening that takes too long; ping
        an open WebSocket quiet for an interval, close it an interval after
        an unanswered ping."""
        client = self.client
        if client.closed:
            return
        opening = self._opening
        if opening is not None:
            # The opening request as a whole, not per byte (slowloris); a
            # connection that sends nothing is the login deadline's.
            if opening.started and now - opening.started > HEADER_TIMEOUT:
                client.send_data(http_error(408, "request head too slow"))
                client.disconnect("request head too slow", tell=False)
        elif not self._pinged_at:
            if now - self._last_heard > interval:
                self._pinged_at = now
                client.send_data(PING_FRAME)
        elif now - self._pinged_at > interval:
            # Timed from the ping, never from the silence alone: a client
            # quiet for longer than a shorter interval (a reload's) is asked first.
            client.disconnect("ping timeout")


_BINARY_ON_TEXT = (
    f"a binary WebSocket message was dropped: this connection speaks {TEXT_SUBPROTOCOL} (send text "
    f"messages, or ask for {BINARY_SUBPROTOCOL})"
)
#: The close frame after the last ERROR: a normal closure (RFC 6455 7.4.1),
#: so that a web client does not take it for a lost connection to reconnect.
_CLOSE = close_frame(1000)
_UTF8_HINT = f" (text messages must be UTF-8: other encodings need {BINARY_SUBPROTOCOL})"


#: A server name is a host name (RFC 2812 2.3.1); a network name one word.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_SERVER_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NETWORK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "irc plugin",
        "IRC clients on irc:// and ircs:// listeners, and over WebSocket on ircws:// and ircwss:// (docs/irc.md).",
    )
    # Restart only, as in Ergo and InspIRCd: clients keep the names they
    # were given at registration (prefixes, 005) for the whole connection.
    restart_only(
        group.add_argument(
            "--irc-server-name",
            default=DEFAULT_SERVER_NAME,
            metavar="NAME",
            help="the server's name in IRC prefixes and numerics, a host name (default: %(default)s)",
        )
    )
    group.add_argument(
        "--irc-autojoin",
        default="",
        metavar="#ROOM[,#ROOM]",
        help="channels every IRC client joins on registering (default: none; clients join their own)",
    )
    restart_only(
        group.add_argument(
            "--irc-network",
            default=DEFAULT_NETWORK,
            metavar="NAME",
            help="the network name IRC clients show (005 NETWORK; default: %(default)s)",
        )
    )
    group.add_argument(
        "--irc-ws-origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help=(
            "an origin whose pages may open IRC WebSockets (ircws://, ircwss://), e.g. https://chat.example.com "
            "where a web IRC client such as gamja is served (repeat, or separate with commas); browsers from "
            "other origins are refused"
        ),
    )
    group.add_argument(
        "--irc-ws-ping-interval",
        type=whole_number(1, 3600),
        default=DEFAULT_WS_PING_INTERVAL,
        metavar="SECONDS",
        help="ping each IRC WebSocket this often; unanswered an interval later, disconnected (default: %(default)s)",
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    options = config.options
    if len(options.irc_server_name) > 63 or not _SERVER_NAME.fullmatch(options.irc_server_name):
        raise UsageError(
            f"--irc-server-name {options.irc_server_name!r}: use a host name, e.g. irc.example.org "
            "(letters, digits, '-' and dots, at most 63 characters)"
        )
    if not _NETWORK_NAME.fullmatch(options.irc_network):
        raise UsageError(f"--irc-network {options.irc_network!r}: use 1 to 32 letters, digits, '_', '-' or '.'")
    config.data[WS_DATA] = IRCWebSocketSettings(
        parse_origins(options.irc_ws_origins, "--irc-ws-origins"), float(options.irc_ws_ping_interval)
    )
    for scheme in config.schemes.values():
        if isinstance(scheme.wire, IRCFormat):
            for twin in scheme.wire.twins():
                for wire in (twin, *twin.variants()):
                    wire.server = options.irc_server_name
                    wire.network = options.irc_network


def capabilities_changed(server: ChatServer) -> None:
    """Tell the IRC clients of ``server`` with ``cap-notify`` which
    capabilities came and went (:meth:`IRCProtocol.offer_changed`): after
    a reload, or a plugin that changed what a capability's ``offer``
    says (accounts that came or went change ``sasl``)."""
    for client in server.all_connections():
        protocol = client.protocol
        if isinstance(protocol, IRCProtocol) and not client.closed:
            protocol.offer_changed()


@hookimpl
def chatcore_reload(server: ChatServer, new: argparse.Namespace) -> Callable[[], None]:
    origins = parse_origins(new.irc_ws_origins, "--irc-ws-origins")  # a bad one keeps the running configuration
    settings: IRCWebSocketSettings = server.config.data[WS_DATA]

    def apply() -> None:
        settings.origins = origins  # read at each opening
        settings.pinger.set_interval(float(new.irc_ws_ping_interval))
        capabilities_changed(server)

    return apply


@hookimpl
def chatcore_account_changed(client: Client) -> None:
    """Someone logged in or out (on any protocol): the IRC clients in its
    channels with account-notify hear ``ACCOUNT name`` (``*``: logged out)."""
    client.server.publish_about(client, AccountChanged("", nick=client.nick, account=client.account, user=client.user))


@hookimpl
def chatcore_client_joined(client: Client, room: str) -> None:
    """A client that is away enters a channel: the IRC clients there
    with away-notify hear it after its JOIN (IRCv3 away-notify)."""
    if client.away:
        away = AwayChanged(room, nick=client.nick, away=client.away, user=client.user)
        client.server.publish(away, exclude=client)


@hookimpl
def chatcore_schemes() -> list[Scheme]:
    # One format per server and framing: the engine groups a room's members
    # by format, and renders a room's event once per format.
    wire = IRCFormat()
    websocket = wire.framed_by(WebSocketTextLines)  # binary.ircv3.net's is its twin
    return [
        Scheme("irc", wire, IRCProtocol, default_port=DEFAULT_PORT, description="IRC (RFC 1459/2812) clients and bots"),
        Scheme(
            "ircs",
            wire,
            IRCProtocol,
            tls=True,
            default_port=DEFAULT_TLS_PORT,
            description="IRC over TLS",
        ),
        Scheme(
            "ircws",
            websocket,
            IRCWebSocketProtocol,
            default_port=DEFAULT_WS_PORT,
            description="IRC over WebSocket (web IRC clients: gamja, Kiwi IRC)",
        ),
        Scheme(
            "ircwss",
            websocket,
            IRCWebSocketProtocol,
            tls=True,
            default_port=DEFAULT_WSS_PORT,
            description="IRC over WebSocket over TLS",
        ),
    ]


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    # A thread only for a server with IRC WebSockets to keep alive.
    if any(listener.scheme.protocol is IRCWebSocketProtocol for listener in server.listeners):
        server.config.data[WS_DATA].pinger.start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    server.config.data[WS_DATA].pinger.stop()
