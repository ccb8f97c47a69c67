"""Nicknames, user names and room names: the one place their rules live.

Every front-end checks names here (``/nick``, IRC ``NICK`` and ``JOIN``, the
web page's login), so a name valid on one protocol is valid on all of them.
"""

from __future__ import annotations

import re

#: Nicknames and room names: 1 to 32 ASCII letters, digits, "_" or "-".
#: ASCII only, so that no two names look alike on screen.
NAME_RULES = "1 to 32 letters (a-z, A-Z), digits, '_' or '-'"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
#: Nicknames nobody may take, compared ignoring case; ``guest-<number>`` is
#: kept for the names the server hands out.
RESERVED_NICKS = frozenset({"server", "chatcore", "admin", "system", "you", "nobody"})
_GUEST = re.compile(r"guest-[0-9]+", re.IGNORECASE)


def is_guest_nick(nick: str) -> bool:
    """Whether ``nick`` is a name the server handed out (``guest-<number>``),
    not one its holder chose: nobody may choose one."""
    return _GUEST.fullmatch(nick) is not None


def nick_problem(nick: str) -> str | None:
    """Why ``nick`` cannot be a nickname, or None if it can."""
    if not _NAME.fullmatch(nick):
        return f"invalid nickname {nick!r}: use {NAME_RULES}"
    if nick.casefold() in RESERVED_NICKS or _GUEST.fullmatch(nick):
        return f"nickname {nick!r} is reserved"
    return None


#: User names (IRC's ``USER``, shown in prefixes ``nick!user@host``): what
#: a client gives is cut down to these characters (:func:`user_name`).
USER_RULES = "up to 32 letters, digits, '_', '.' or '-'"
_USER = re.compile(r"[A-Za-z0-9_.-]{0,32}")
_NOT_USER = re.compile(r"[^A-Za-z0-9_.-]")


def user_name(given: str) -> str:
    """The user name a client's ``given`` one makes: only the characters a
    prefix may hold, at most 32 (``""`` if none are left)."""
    return _NOT_USER.sub("", given)[:32]


def user_problem(user: str) -> str | None:
    """Why ``user`` cannot be a user name (it would break a prefix), or None."""
    if not _USER.fullmatch(user):
        return f"invalid user name {user!r}: use {USER_RULES}"
    return None


def room_problem(room: str) -> str | None:
    """Why ``room`` cannot be a room name, or None if it can."""
    if not _NAME.fullmatch(room):
        return f"invalid room name {room!r}: use {NAME_RULES}"
    return None
