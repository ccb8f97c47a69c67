"""The wire protocol: line framing, sanitising and the line formats.

docs/protocol.md is the reference; this module is its implementation. Every
line is UTF-8 text ended by ``\\n`` (``\\r\\n`` is accepted). Lines from the
server start with:

- ``<nick> `` chat, ``* `` notices and actions, ``! `` errors for one client.
"""

from __future__ import annotations

import re

DEFAULT_MAX_LINE = 4096

NOTICE = "* "
ERROR = "! "

# Escape sequences (CSI, OSC, and two-byte ESC forms) go whole, so that no
# leftover "[31m" is shown; then every other C0/C1 control character, DEL,
# and the Unicode line and paragraph separators go one by one.
_ANSI_ESCAPE = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]          # CSI ... final byte
    | \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?  # OSC ... BEL or ST
    | \x1b[PX^_][^\x1b]*(?:\x1b\\)?  # DCS, SOS, PM, APC ... ST
    | \x1b[ -/]*[0-~]?               # other ESC sequences
    | \x9b[0-?]*[ -/]*[@-~]          # 8-bit CSI
    """,
    re.VERBOSE,
)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def sanitize(text: str) -> str:
    """Return ``text`` without anything that could paint on a terminal.

    Removes ANSI escape sequences, C0 and C1 control characters (NUL,
    backspace, bell, lone carriage returns ...), DEL and Unicode line
    separators. A tab becomes a space. Surrounding white space is stripped.
    """
    # Fast path: printable text (nearly every chat line) needs no regex.
    if text.isprintable():
        return text.strip()
    text = _ANSI_ESCAPE.sub("", text)
    text = _CONTROL.sub("", text.replace("\t", " "))
    return text.strip()


def decode(line: bytes) -> str:
    """Decode a received line; invalid UTF-8 becomes U+FFFD, never an error."""
    return line.decode("utf-8", "replace")


class LineFramer:
    """Splits a byte stream into lines of at most ``max_line`` bytes.

    Feed it what ``recv()`` returned; it returns the complete lines (without
    ``\\n`` or a trailing ``\\r``) and keeps at most ``max_line`` bytes of an
    unfinished line. A line longer than the limit is returned as ``None``
    once, in its place, and the rest of it is discarded up to its newline.
    """

    __slots__ = ("_discarding", "_max_line", "_partial")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._max_line = max_line
        self._partial = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held while waiting for a newline (never above max_line)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes | None]:
        max_line = self._max_line
        lines = data.split(b"\n")
        tail = lines.pop()
        out: list[bytes | None] = []
        if lines:
            if self._discarding:
                del lines[0]  # the end of a line already reported as too long
                self._discarding = False
            elif self._partial:
                lines[0] = self._partial + lines[0]
            self._partial = b""
            lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
            out = [line if len(line) <= max_line else None for line in lines]
        if self._discarding:
            return out
        # A trailing "\r" may be the first half of "\r\n": not counted yet.
        if len(self._partial) + len(tail) > max_line + tail.endswith(b"\r"):
            out.append(None)
            self._partial = b""
            self._discarding = True
        elif tail:
            self._partial += tail
        return out


def chat_line(nick: str, text: str) -> str:
    return f"<{nick}> {text}"


def action_line(nick: str, text: str) -> str:
    return f"* {nick} {text}"
