"""The redis plugin's room state: each room's topic, modes, lists and roles
kept in Redis, so that every server of a cluster runs a room by the same
rules (a ban or ``+i`` set on one server holds on the others).

A live room has two keys (:class:`~chatcore.plugins.redis.scripts.Keys`):

- ``room:NAME:state``, a hash with one field per piece of state, so that
  each change is a few field writes, never a read-modify-write:
  ``created``, ``topic``, ``topic_by``, ``topic_at``, ``key``, ``limit``,
  ``mode:X`` for each flag set, ``b:MASK`` and ``e:MASK`` (``BY TIME``),
  ``o:NICK``, ``v:NICK`` and ``i:NICK`` for operators, voiced members and
  invitations (nicknames casefolded);
- ``room:NAME:holders``, a hash of the servers with members in it (node id
  -> the generation of their entry), and each server's
  ``node:ID:rooms``, the set of the rooms it holds.

The first server to enter a room makes its state (its entering member the
operator); the others read it as their first member enters
(:data:`ENTER_LUA`). A change said on a server goes to the state in the
same script as the event goes to the room's stream (``PUBLISH_LUA``), so
it is made exactly once, in the stream's order. When the last server
holding a room lets go of it (:data:`EXIT_LUA`, after its last member here
left; or the reaper, for a server gone), the state goes, as the room's
state goes with its last member on one server. No I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from chatcore.engine.rooms import (
    FLAG_MODES,
    KEY_LENGTH,
    LIST_MODES,
    MAX_LIST,
    MEMBER_MODES,
    TOPIC_LENGTH,
    RoomState,
    normal_mask,
)
from chatcore.events import Joined, Left, ModeChanged, NickChanged, RoomEvent, TopicChanged
from chatcore.names import room_problem

#: The prefix of each field that holds a role or an invitation.
_ROLES = {"o": "operators", "v": "voiced", "i": "invited"}


def state_fields(state: RoomState) -> dict[str, str]:
    """``state`` as the fields of its Redis hash."""
    fields = {"created": repr(state.created), "topic": state.topic, "topic_by": state.topic_by}
    fields["topic_at"] = repr(state.topic_at)
    if state.key:
        fields["key"] = state.key
    if state.limit:
        fields["limit"] = str(state.limit)
    for flag in state.flags:
        fields[f"mode:{flag}"] = "1"
    for letter, masks in (("b", state.bans), ("e", state.excepts)):
        for mask, (by, when) in masks.items():
            fields[f"{letter}:{mask}"] = f"{by} {when!r}"
    for letter, attribute in _ROLES.items():
        for nick in getattr(state, attribute):
            fields[f"{letter}:{nick}"] = "1"
    return fields


def state_from_fields(room: str, fields: dict[Any, Any], drop: Callable[[str], None]) -> RoomState:
    """The state :func:`state_fields` wrote, read back from Redis (input:
    another server's, or damage): each field that is not valid is left out
    and reported to ``drop`` (the cluster's invalid-entry count)."""
    state = RoomState(room, flags=set())
    for name, value in fields.items():
        if not (isinstance(name, str) and isinstance(value, str)) or not _take(state, name, value):
            drop(str(name)[:40])
    return state


def _take(state: RoomState, name: str, value: str) -> bool:
    """Set the piece of ``state`` that field ``name`` holds; False if it is not valid."""
    if name in ("created", "topic_at"):
        when = _number(value)
        if when is None:
            return False
        setattr(state, name, when)
    elif name == "topic":
        if len(value) > TOPIC_LENGTH or not value.isprintable():
            return False
        state.topic = value
    elif name == "topic_by":
        if value and room_problem(value):
            return False
        state.topic_by = value
    elif name == "key":
        if not value or len(value) > KEY_LENGTH or any(c in value for c in " ,:") or not value.isprintable():
            return False
        state.key = value
    elif name == "limit":
        if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= 1_000_000:
            return False
        state.limit = int(value)
    else:
        letter, colon, rest = name.partition(":")
        if not colon:
            return False
        if letter == "mode":
            if rest not in FLAG_MODES or len(rest) != 1:
                return False
            state.flags.add(rest)
        elif letter in LIST_MODES:
            masks = state.bans if letter == "b" else state.excepts
            by, _, at = value.partition(" ")
            moment = _number(at)
            if normal_mask(rest) != rest or moment is None or len(masks) >= MAX_LIST:
                return False
            masks[rest] = (by[:64], moment)
        elif letter in _ROLES:
            # The name rule, not nick_problem(): a guest name (guest-1), which
            # nobody may choose, holds roles too (a room's founder, until it
            # renames); dropping it lost the role's rename that followed.
            if room_problem(rest) or rest != rest.casefold():
                return False
            getattr(state, _ROLES[letter]).add(rest)
        else:
            return False
    return True


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def state_changes(event: RoomEvent) -> list[str]:
    """What ``event`` changes in its room's state hash, as the arguments of
    ``PUBLISH_LUA``'s state part: triples ``set FIELD VALUE``, ``del FIELD -``
    and ``move OLD NEW`` (a rename: the roles and invitation of ``OLD`` go to
    ``NEW``). The same changes as :meth:`chatcore.engine.rooms.Rooms.apply`
    makes here."""
    changes: list[str] = []
    if isinstance(event, Joined):
        changes += ("del", f"i:{event.nick.casefold()}", "-")
    elif isinstance(event, Left):
        folded = event.nick.casefold()
        changes += ("del", f"o:{folded}", "-", "del", f"v:{folded}", "-")
    elif isinstance(event, NickChanged):
        changes += ("move", event.nick.casefold(), event.new_nick.casefold())
    elif isinstance(event, TopicChanged):
        changes += ("set", "topic", event.topic, "set", "topic_by", event.nick, "set", "topic_at", repr(event.time))
    elif isinstance(event, ModeChanged):
        args = list(event.arguments)
        adding = True
        for letter in event.modes:
            if letter in "+-":
                adding = letter == "+"
                continue
            if letter in FLAG_MODES:
                field = f"mode:{letter}"
                value = "1"
            elif letter in LIST_MODES:
                field = f"{letter}:{args.pop(0) if args else ''}"
                value = f"{event.nick} {event.time!r}"
            elif letter in MEMBER_MODES:
                field = f"{letter}:{(args.pop(0) if args else '').casefold()}"
                value = "1"
            elif letter == "k":
                field, value = "key", args.pop(0) if args else ""
            elif letter == "l":
                field, value = "limit", (args.pop(0) if adding and args else "")
            else:
                continue
            if adding and value:
                changes += ("set", field, value)
            else:
                changes += ("del", field, "-")
    return changes
