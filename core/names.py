"""Nicknames and room names: the one place their rules live.

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


def nick_problem(nick: str) -> str | None:
    """Why ``nick`` cannot be a nickname, or None if it can."""
    if not _NAME.fullmatch(nick):
        return f"invalid nickname {nick!r}: use {NAME_RULES}"
    if nick.casefold() in RESERVED_NICKS or _GUEST.fullmatch(nick):
        return f"nickname {nick!r} is reserved"
    return None


def room_problem(room: str) -> str | None:
    """Why ``room`` cannot be a room name, or None if it can."""
    if not _NAME.fullmatch(room):
        return f"invalid room name {room!r}: use {NAME_RULES}"
    return None
