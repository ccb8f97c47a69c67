"""The redis plugin's entries: room events, private messages (and tags
sent to a nick) and operators' actions as the JSON of a stream entry, and the checks every entry from the
cluster passes before it becomes an event. No I/O (but a debug log line):
the reader, the presence thread and the client threads call it."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing
from typing import Any

from chatcore import events
from chatcore.engine.limits import parse_network
from chatcore.engine.registry import MAX_ROOMS_PER_CLIENT
from chatcore.events import PrivateMessage, PrivateTags, RoomEvent, parse_msgid
from chatcore.names import room_problem, user_problem
from chatcore.wire.native import DEFAULT_MAX_LINE, sanitize

log = logging.getLogger("chatcore.redis")

#: The version of the stream entries' format (docs/scaling.md). A new
#: optional field keeps it (readers ignore fields they do not know); a new
#: required field, or a field whose type or meaning changes, is a new version.
FORMAT_VERSION = "1"


#: Room event types by name: what may travel between servers.
_ROOM_EVENTS: dict[str, type[RoomEvent]] = {
    name: cls
    for name in events.__all__
    if isinstance(cls := getattr(events, name), type) and issubclass(cls, RoomEvent) and cls is not RoomEvent
}
#: Identity fields: the cluster gives its own (the stream's epoch and offset);
#: the message ID travels beside the event (the entry's ``id``).
_IDENTITY = frozenset({"offset", "epoch", "time", "origin"})


def encode_event(event: RoomEvent) -> str:
    """``event`` as the JSON of a stream entry's ``event`` field:
    ``{"type": "Chat", "room": "lobby", "nick": "alice", "text": "hi", "time": 1.5}``.

    Fields at their default are left out: a field added later with a
    default (``Left.kicked_by``) then changes nothing for the events that
    do not use it, and servers that do not know it still read those."""
    record: dict[str, Any] = {"type": type(event).__name__, "time": event.time}
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        if item.name not in _IDENTITY and value != item.default:
            record[item.name] = value
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def decode_event(text: str, max_line: int = DEFAULT_MAX_LINE, origin: str = "") -> RoomEvent:
    """The event :func:`encode_event` wrote; ValueError if it is not one
    (a newer server's event type, or damage). Its fields are checked by
    :func:`checked` (``max_line``: the longest text allowed, in bytes);
    ``origin`` is its message ID (:attr:`RoomEvent.origin`), if known."""
    record = _json_object(text, max_line)
    kind = record.pop("type", None)
    # Any JSON value may be there: one that cannot be a key (a list) is no type either.
    cls = _ROOM_EVENTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError("unknown event type")
    when = record.pop("time", 0.0)
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        raise ValueError("time is not a number")
    try:
        return cls(**checked(_ROOM_EVENT_FIELDS[cls], record, max_line), time=float(when), origin=origin)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def encode_private(message: PrivateMessage | PrivateTags) -> str:
    """A private message, or client-only tags without text (IRC's ``TAGMSG
    nick``), as the JSON of an inbox entry's ``event`` field (and a kept
    private line's), with its tags; its message ID travels beside it, in
    the entry's ``id``."""
    record: dict[str, Any] = {"type": type(message).__name__, "sender": message.sender, "recipient": message.recipient}
    # Each only when set: an entry without them reads as before.
    if message.tags:
        record["tags"] = message.tags
    if isinstance(message, PrivateTags):
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    if message.notice:
        record["notice"] = True
    if message.time:
        record["time"] = message.time
    if message.account:
        record["account"] = message.account
    return json.dumps({**record, "text": message.text}, separators=(",", ":"), ensure_ascii=False)


def decode_private(text: str, max_line: int = DEFAULT_MAX_LINE, msgid: str = "") -> PrivateMessage | PrivateTags:
    """The message or tags :func:`encode_private` wrote, with the message ID
    ``msgid`` (an entry's ``id``, checked: :func:`entry_msgid`); ValueError
    if it is not one."""
    record = _json_object(text, max_line)
    kind = record.pop("type", None)
    if kind not in ("PrivateMessage", "PrivateTags"):
        raise ValueError("not a private message")
    fields = checked(_PRIVATE_FIELDS if kind == "PrivateMessage" else _PRIVATE_TAGS_FIELDS, record, max_line)
    if kind == "PrivateTags":
        if not {"sender", "recipient", "tags"} <= set(fields):
            raise ValueError("private tags need sender, recipient and tags")
        return PrivateTags(**fields, msgid=msgid)
    if not {"sender", "recipient", "text"} <= set(fields):
        raise ValueError("a private message needs sender, recipient and text")
    return PrivateMessage(**fields, msgid=msgid)


#: An operator's action for the other servers (see :func:`moderate`): the
#: fields an entry may have, and those each action needs.
_MODERATION_FIELDS: dict[str, Any] = {
    "action": str, "by": str, "oper": str, "nick": str, "host": str, "target": str, "reason": str,
    "network": str, "until": float, "room": str, "user": str, "passes": bool,
}  # fmt: skip
_MODERATION_NEEDS = {
    "kick": {"nick"}, "mute": {"nick", "until"}, "unmute": {"target"}, "ban": set(), "unban": {"network"},
    "room_kick": {"room", "nick"}, "invite": {"room", "nick"},
}  # fmt: skip
#: A room operator's actions, carried to the server of the user they are
#: for and applied by the engine (``ChatServer.carry_out``), never replayed.
ROOM_ACTIONS = frozenset({"room_kick", "invite"})


def encode_moderation(action: str, details: dict[str, Any]) -> str:
    """An operator's action as the JSON of a moderation entry's ``event`` field."""
    record = {"type": "Moderation", "action": action, **{k: v for k, v in details.items() if v is not None}}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def decode_moderation(text: str, max_line: int = DEFAULT_MAX_LINE) -> dict[str, Any]:
    """The action :func:`encode_moderation` wrote, its ``network`` parsed;
    ValueError if it is not one."""
    record = _json_object(text, max_line)
    if record.pop("type", None) != "Moderation":
        raise ValueError("not an operator's action")
    fields = checked(_MODERATION_FIELDS, record, max_line)
    needs = _MODERATION_NEEDS.get(fields.get("action", ""))
    if needs is None or not needs | {"by"} <= set(fields):
        raise ValueError("not an action with what it needs")
    if fields["action"] == "ban" and not {"network", "nick"} & set(fields):  # an address, or whose
        raise ValueError("a ban of neither a network nor a nick")
    if "network" in fields:
        fields["network"] = parse_network(fields["network"])
    return fields


# What comes from the cluster is input like a client's line: Redis is
# trusted by design, but another server's bug, an older or newer version,
# or anyone who can write to Redis must not be able to crash or wedge the
# delivery path, forge IRC lines or flood members. So every entry is
# checked field by field before it becomes an event (issue 23, item 6).

#: Fields that hold a nickname or a room name. They must follow the name
#: rule as they are (letters, digits, '_', '-': no control characters can
#: pass): sanitising one instead could turn it into someone else's name.
_NAME_FIELDS = frozenset({"room", "nick", "new_nick", "kicked_by", "sender", "recipient", "by", "invited"})


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {item.name: hints[item.name] for item in dataclasses.fields(cls) if item.name not in _IDENTITY}


#: The fields an entry may carry, and their types, by event class.
_ROOM_EVENT_FIELDS = {cls: _field_types(cls) for cls in _ROOM_EVENTS.values()}
_PRIVATE_FIELDS: dict[str, Any] = {
    "sender": str, "recipient": str, "text": str, "notice": bool, "tags": str, "time": float, "account": str,
}  # fmt: skip
_PRIVATE_TAGS_FIELDS: dict[str, Any] = {"sender": str, "recipient": str, "tags": str}


def _json_object(text: str, max_line: int) -> dict[str, Any]:
    """``text`` parsed as a JSON object; ValueError if it is not one.

    A legitimate entry is at most about twice ``max_line`` characters (JSON
    doubles a quote or a backslash): a longer one is refused unparsed, and
    deep nesting (a RecursionError in the parser) is refused too."""
    if len(text) > 2 * max_line + 1024:
        raise ValueError(f"{len(text)} characters long")
    try:
        record = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def checked(kinds: dict[str, Any], record: dict[str, Any], max_line: int) -> dict[str, Any]:
    """``record``'s fields of ``kinds`` (the others are left out:
    :data:`FORMAT_VERSION`) if each is of its type, every name follows the
    name rule and every text, sanitised as a client's line is
    (:func:`chatcore.wire.native.sanitize`), is at most ``max_line`` bytes;
    else ValueError. A ``text`` must not be empty (no chat line is).

    Defends against a number where a nickname goes (it made the IRC encoder
    raise in the publish path, and the room stopped on that server: issue
    23, item 6), CR/LF in a nickname or text (forged IRC lines), terminal
    escapes, and a huge text sent to every member."""
    # A field this version does not know is a newer server's optional one
    # (a rolling upgrade): left out, so the entry reads as it would without
    # it. Only known fields reach the event, so it cannot set anything else.
    unknown = set(record) - set(kinds)
    if unknown:
        log.debug("ignored unknown fields %.200r", sorted(unknown))
    clean: dict[str, Any] = {}
    for name, given in record.items():
        if name in unknown:
            continue
        kind, value = kinds[name], given
        if typing.get_origin(kind) is tuple:  # tuple[str, ...]: a JSON list of strings
            clean[name] = _checked_strings(name, value, max_line)
            continue
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{name} is not a {kind.__name__}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"{name} is not a finite number")
        if kind is str and name == "user":  # a user name goes in IRC prefixes: its own rule
            if user_problem(value) is not None:
                raise ValueError("user is not a valid user name")
        elif kind is str and name in _NAME_FIELDS:
            # Nicknames and room names follow one rule (chatcore.names);
            # kicked_by is empty for a leave that is not a kick.
            if (value or name != "kicked_by") and room_problem(value) is not None:
                raise ValueError(f"{name} is not a valid name")
        elif kind is str:
            value = sanitize(value)
            if len(value.encode("utf-8")) > max_line:
                raise ValueError(f"{name} is longer than {max_line} bytes")
            if name == "text" and not value:
                raise ValueError("text is empty")
        clean[name] = value
    return clean


#: The most items a list field may have (``told_in``: the rooms of one
#: person, up to the most --max-rooms-per-client allows; ``arguments``:
#: those of one mode change, far fewer).
MAX_LIST_ITEMS = MAX_ROOMS_PER_CLIENT

#: List fields that hold room names (the others hold mode arguments: masks, nicks, keys, numbers).
_NAME_LISTS = frozenset({"told_in"})


def _checked_strings(name: str, value: Any, max_line: int) -> tuple[str, ...]:
    """A list field of :func:`checked`: at most :data:`MAX_LIST_ITEMS`
    strings, names by the name rule, the others sanitised and within ``max_line``."""
    if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} is not a list of at most {MAX_LIST_ITEMS} strings")
    if name in _NAME_LISTS:
        if any(room_problem(v) is not None for v in value):
            raise ValueError(f"{name} holds a name that is not valid")
        return tuple(value)
    items = tuple(sanitize(v) for v in value)
    if sum(len(v.encode("utf-8")) for v in items) > max_line:
        raise ValueError(f"{name} is longer than {max_line} bytes")
    return items


def entry_place(entry: dict[str, str]) -> tuple[str, int]:
    """A room stream entry's epoch and offset; KeyError or ValueError if it
    is not an entry this server can read."""
    if entry.get("v") != FORMAT_VERSION:
        raise ValueError(f"format version {entry.get('v')!r:.20}")
    epoch, offset = entry["epoch"], int(entry["offset"])
    if not 0 < len(epoch) <= 64 or offset < 1:
        raise ValueError("not an epoch and offset")
    return epoch, offset


def entry_msgid(entry: dict[str, str]) -> str:
    """The message ID the server that said a stream entry's event gave it
    (its ``id``: a room entry's, an inbox entry's, a kept private line's),
    or ``""`` if the entry has none (written by an older server) or not a
    valid one."""
    msgid = entry.get("id", "")
    return msgid if parse_msgid(msgid) is not None else ""


def entry_event(entry: dict[str, str], max_line: int) -> tuple[str, int, RoomEvent]:
    """A room stream entry's epoch, offset and event (checked: :func:`checked`),
    the event with its message ID (:func:`entry_msgid`)."""
    epoch, offset = entry_place(entry)
    return epoch, offset, decode_event(entry["event"], max_line, entry_msgid(entry))
