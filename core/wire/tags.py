"""IRCv3 message tags as text: the form in which events carry the tags a
client attached to what it said (``+typing=active;+draft/reply=e1:7``),
shared by the front-ends that show them (IRC relays them, the web page
shows who is typing). No I/O, no state."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "MAX_CLIENT_TAGS",
    "client_tags",
    "escape_tag_value",
    "parse_tags",
    "tag_text",
    "unescape_tag_value",
]

#: What the tags of one line from a client may take, without the ``@``
#: before them and the space after them (IRCv3 message-tags: 4094 bytes).
MAX_CLIENT_TAGS = 4094

#: How a tag value is written (IRCv3 message-tags, "Escaping values").
_ESCAPES = str.maketrans({"\\": "\\\\", ";": "\\:", " ": "\\s", "\r": "\\r", "\n": "\\n", "\0": ""})
_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
#: A client-only tag's name: ``+``, an optional vendor (``draft/``), a name.
_CLIENT_TAG = re.compile(r"\+(?:[A-Za-z0-9.-]+/)?[A-Za-z0-9-]+")


def escape_tag_value(value: str) -> str:
    """``value`` as a tag value: no space, ``;``, CR, LF or NUL inside, so a
    value (a client's ``+draft/reply``, an epoch from the cluster) cannot
    end the tags or the line."""
    return value.translate(_ESCAPES)


def unescape_tag_value(value: str) -> str:
    """A tag value as its sender meant it (an unknown escape is the
    character itself; a lone backslash at the end is dropped, as the spec says)."""
    if "\\" not in value:
        return value
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            out.append(_UNESCAPES.get(escaped, escaped))
        else:
            out.append(char)
    return "".join(out)


def parse_tags(text: str) -> dict[str, str]:
    """The tags of a line's ``@...`` part (without the ``@``), values
    unescaped; a tag without a value has ``""``; the last of a repeated key wins."""
    tags = {}
    for item in text.split(";"):
        key, _, value = item.partition("=")
        if key:
            tags[key] = unescape_tag_value(value)
    return tags


def tag_text(tags: Iterable[tuple[str, str]]) -> str:
    """``key=value;key2`` (values escaped; an empty one: the key alone)."""
    return ";".join(f"{key}={escape_tag_value(value)}" if value else key for key, value in tags)


def client_tags(tags: str | dict[str, str]) -> dict[str, str]:
    """The client-only tags (``+name``, a vendor's ``+vendor/name``) of tag
    text or of parsed tags: the others are the server's to set, and a name
    with other characters is dropped, whoever wrote it (a client, another
    server of a cluster), so that it can be written into a line safely again."""
    parsed = parse_tags(tags) if isinstance(tags, str) else tags
    return {key: value for key, value in parsed.items() if _CLIENT_TAG.fullmatch(key)}
