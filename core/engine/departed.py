"""Nicknames given up lately: who was called what (IRC's ``WHOWAS``, RFC 2812 3.6.3).

A nickname is given up when its client leaves the server (a quit, a lost
connection, a kill) or takes another one (``/nick``). The record keeps the
last :data:`LIMIT` of them, newest last, whoever gave them up (native, web
or IRC users): a bound in count, as ngIRCd's and Ergo's are (Ergo's
``whowas-entries`` defaults to 100; ngIRCd keeps 255; chatcore 1,000, a
few hundred kilobytes at most), so a flood of short connections costs the
oldest entries and nothing more.

Only this server's departures are kept: a cluster's other servers keep
their own (docs/scaling.md).
"""

from __future__ import annotations

import collections
import fnmatch
import re
import threading
import time
from dataclasses import dataclass

#: How many departures are kept.
LIMIT = 1000


@dataclass(frozen=True)
class Departure:
    """One nickname given up.

    :ivar nick: the nickname, as it was spelt.
    :ivar user: the user name its client gave (IRC's ``USER``), or ``""``.
    :ivar realname: the real name its client gave (IRC's ``USER``), or ``""``.
    :ivar when: when it was given up, in seconds since 1970.
    """

    nick: str
    user: str
    realname: str
    when: float


class Departed:
    """The last :data:`LIMIT` departures (see the module's docstring).

    Added to by the threads of the clients that leave or rename, read by
    those that ask: every call takes the lock, for a copy or one append.
    """

    def __init__(self, limit: int = LIMIT) -> None:
        self._lock = threading.Lock()
        self._entries: collections.deque[Departure] = collections.deque(maxlen=limit)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, nick: str, user: str = "", realname: str = "", when: float | None = None) -> None:
        """``nick`` was given up now (or at ``when``); the oldest entry goes if the record is full."""
        entry = Departure(nick, user, realname, time.time() if when is None else when)
        with self._lock:
            self._entries.append(entry)

    def find(self, nick: str, count: int = 0) -> list[Departure]:
        """The departures of ``nick`` (ignoring case; ``*`` and ``?`` match
        any characters and one), newest first: at most ``count`` of them,
        or all if ``count`` is not positive (as RFC 2812 says)."""
        folded = nick.casefold()
        pattern = re.compile(fnmatch.translate(folded)) if any(char in folded for char in "*?") else None
        with self._lock:
            entries = list(self._entries)
        found = []
        for entry in reversed(entries):
            name = entry.nick.casefold()
            if name == folded if pattern is None else pattern.match(name):
                found.append(entry)
                if len(found) == count:
                    break
        return found
