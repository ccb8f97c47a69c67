"""Message filters: flood control, a length limit and banned words.

Built only on the ``chatcore_message`` hook (plus options), as an example of
a filter chain. Three implementations, in this order for every message
(room chat, ``/me`` actions and ``/msg`` private messages alike):

1. flood control (``tryfirst``): a rejected flood costs nothing further;
2. length (no ordering mark): other plugins' plain filters run next to it;
3. banned words (``trylast``): the last word on what is delivered, so the
   words are masked whatever another filter wrote.

Each is off until its option is given, and then costs one attribute lookup
per message. The engine paces every client's input anyway (``--line-rate``,
nothing dropped); ``--flood-rate`` here is the stricter, dropping kind. docs/commands.md states the exact rules.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chatcore import Config, Message, UsageError, hookimpl
from chatcore.config import whole_number
from chatcore.engine import limits
from chatcore.engine.server import ChatServer

#: Loaded and unloaded by a reload (SIGHUP) while the server runs:
#: chatcore_server_stop undoes all that configuring and starting did.
UNLOADABLE = True

NAME = "filters"
#: A client with ``--flood-disconnect`` messages rejected for flooding within
#: this many seconds is disconnected.
FLOOD_WINDOW = 10.0
DEFAULT_FLOOD_BURST = 5
DEFAULT_FLOOD_DISCONNECT = 20


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0")
    return value


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "filters plugin",
        "Run on every message, private ones included, in this order: flood control, length, banned words.",
    )
    group.add_argument(
        "--banned-words",
        metavar="WORDS",
        help=(
            "comma-separated words (or phrases) to mask or reject; whole words, ignoring case "
            "and Unicode compatibility forms, accents significant (see docs/commands.md)"
        ),
    )
    group.add_argument(
        "--banned-words-file",
        metavar="PATH",
        help="UTF-8 file of banned words, one word or phrase a line; blank lines and lines starting with # are skipped",
    )
    group.add_argument(
        "--banned-action",
        choices=["mask", "reject"],
        default="mask",
        help=(
            "mask: replace each banned word with as many * as it has characters; reject: do not deliver "
            "the message and tell only the sender why (default: %(default)s)"
        ),
    )
    group.add_argument(
        "--flood-rate",
        type=_positive_float,
        metavar="PER_SECOND",
        help=(
            "messages per second each client may send on average; over it the client gets "
            "'! slow down' and the message is dropped (default: no flood control)"
        ),
    )
    group.add_argument(
        "--flood-burst",
        type=whole_number(1),
        metavar="N",
        help=f"messages a client may send at once before --flood-rate applies (default: {DEFAULT_FLOOD_BURST})",
    )
    group.add_argument(
        "--flood-disconnect",
        type=whole_number(0),
        metavar="N",
        help=(
            f"disconnect a client whose messages were dropped for flooding N times within "
            f"{FLOOD_WINDOW:g} seconds; 0 never disconnects (default: {DEFAULT_FLOOD_DISCONNECT})"
        ),
    )
    group.add_argument(
        "--max-message-chars",
        type=whole_number(1),
        metavar="N",
        help="longest message in characters, after decoding; longer ones are refused (default: only --max-line)",
    )


@dataclass(frozen=True)
class Settings:
    """The filters' configuration for one server (``config.data["filters"]``)."""

    flood_rate: float | None
    flood_burst: int
    flood_disconnect: int
    max_chars: int | None
    banned: BannedWords | None
    reject_banned: bool


@hookimpl
def chatcore_configure(config: Config) -> None:
    config.data[NAME] = settings_from(config.options)


@hookimpl
def chatcore_reload(server: ChatServer, new: argparse.Namespace) -> Callable[[], None]:
    settings = settings_from(new)  # the words file is read again, and checked, now

    def apply() -> None:
        # One reference swap: every message reads the settings afresh.
        server.config.data[NAME] = settings

    return apply


def settings_from(options: argparse.Namespace) -> Settings:
    """The filters' settings from the options.

    :raises UsageError: a bad banned word, an unreadable words file, or a
        flood option without ``--flood-rate``.
    """
    words: list[str] = []
    if options.banned_words:
        words.extend(options.banned_words.split(","))
    if options.banned_words_file:
        words.extend(_read_word_file(options.banned_words_file))
    words = [" ".join(word.split()) for word in words]
    words = [word for word in words if word]
    for word in words:
        if not (_WORD_CHAR.match(word[0]) and (_WORD_CHAR.match(word[-1]) or _is_mark(word[-1]))):
            raise UsageError(
                f"banned word {word!r}: a banned word must start and end with a letter or digit, not punctuation"
            )
    if options.flood_rate is None:
        for name, value in (("--flood-burst", options.flood_burst), ("--flood-disconnect", options.flood_disconnect)):
            if value is not None:
                raise UsageError(f"{name} needs --flood-rate (flood control is off without it)")
    return Settings(
        flood_rate=options.flood_rate,
        flood_burst=DEFAULT_FLOOD_BURST if options.flood_burst is None else options.flood_burst,
        flood_disconnect=DEFAULT_FLOOD_DISCONNECT if options.flood_disconnect is None else options.flood_disconnect,
        max_chars=options.max_message_chars,
        banned=BannedWords(words) if words else None,
        reject_banned=options.banned_action == "reject",
    )


def _read_word_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--banned-words-file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--banned-words-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [line for line in lines if not line.lstrip().startswith("#")]


# ---------------------------------------------------------------------------
# 1. Flood control
# ---------------------------------------------------------------------------


class TokenBucket(limits.TokenBucket):
    """One client's flood-control state: the engine's token bucket
    (:class:`chatcore.engine.limits.TokenBucket`, which also paces every
    client's input), plus the times of its recent rejections."""

    __slots__ = ("_rejections",)

    def __init__(self, rate: float, burst: int, now: float) -> None:
        super().__init__(rate, burst, now)
        self._rejections: collections.deque[float] = collections.deque()

    def rejections_within(self, now: float, window: float) -> int:
        """Record a rejection at ``now``; how many there were in the last
        ``window`` seconds, this one included."""
        rejections = self._rejections
        rejections.append(now)
        while rejections[0] <= now - window:
            rejections.popleft()
        return len(rejections)


# Each filter reads the settings afresh (a reload swaps them), spelled out
# rather than through a helper: the three run on every message.


@hookimpl(specname="chatcore_message", tryfirst=True)
def flood_control(message: Message) -> None:
    settings: Settings = message.sender.server.config.data[NAME]
    if settings.flood_rate is None or message.kind == "leave":  # a leave is the client's last word, not a flood
        return
    client = message.sender
    now = time.monotonic()
    bucket: TokenBucket | None = client.data.get(NAME)
    if bucket is None:
        bucket = client.data[NAME] = TokenBucket(settings.flood_rate, settings.flood_burst, now)
    elif bucket.rate != settings.flood_rate or bucket.burst != settings.flood_burst:  # reloaded
        bucket.rate, bucket.burst = settings.flood_rate, settings.flood_burst
    if bucket.take(now):
        return
    message.reject("slow down")
    limit = settings.flood_disconnect
    if limit and bucket.rejections_within(now, FLOOD_WINDOW) >= limit:
        # The others see "* nick left (flooding)"; the flooder sees
        # "! disconnected: flooding" (and not this message's "slow down":
        # nothing more is sent to a closing client).
        client.disconnect("flooding", cause="flood")


# ---------------------------------------------------------------------------
# 2. Length
# ---------------------------------------------------------------------------


@hookimpl(specname="chatcore_message")
def message_length(message: Message) -> None:
    limit = message.sender.server.config.data[NAME].max_chars
    if limit is not None and len(message.text) > limit:
        message.reject(f"message too long ({len(message.text)} characters; the limit is {limit}); it was not sent")


# ---------------------------------------------------------------------------
# 3. Banned words
# ---------------------------------------------------------------------------

_WORD_CHAR = re.compile(r"\w")
#: A bytes.translate() table: ASCII word characters (as ``\w`` with
#: re.ASCII) lower-cased, every other byte a space.
_ASCII_WORD_BYTES = bytes(
    (byte | 0x20) if chr(byte).isascii() and chr(byte).isalpha() else byte if chr(byte) in "0123456789_" else 0x20
    for byte in range(256)
)


def fold(text: str) -> str:
    """The form words are compared in: NFKC, case-folded, NFKC again (the
    Unicode "NFKC_Casefold" idea): "Straße" and "STRASSE" give "strasse",
    full-width "Bad" and the "fi" ligature give "bad" and "fi", "é" composed
    or not gives "é"."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


_fold_piece = functools.lru_cache(maxsize=4096)(fold)


def _clusters(text: str) -> list[tuple[int, int]]:
    """``text`` cut into characters as shown: a character with the marks
    (accents, vowel signs) after it, as ``(start, end)`` spans."""
    spans = []
    start = 0
    for index in range(1, len(text) + 1):
        if index == len(text) or not _is_mark(text[index]):
            spans.append((start, index))
            start = index
    return spans


def _is_mark(char: str) -> bool:
    return unicodedata.category(char)[0] == "M"


@functools.cache
def _word_char_class() -> str:
    """A regex class of word characters: ``\\w`` (letters, digits, "_") and
    every mark (Mn, Mc, Me), which ``\\w`` leaves out although "नहीं" ends
    with one. Built once, on first use (a few tens of milliseconds)."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x300, 0x20000):
        if _is_mark(chr(code)):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    ranges.append((0xE0100, 0xE01EF))  # variation selectors supplement
    body = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)
    return f"[\\w{body}]"


class BannedWords:
    """A compiled set of banned words or phrases.

    ASCII text (nearly every message) is lower-cased and searched with one
    precompiled regex. Other text is folded whole and searched; only if that
    finds something is it folded again piece by piece (a character with its
    marks), remembering which original characters each folded character
    came from, so a match maps back to exactly the characters to mask, even
    where folding changes the length ("ß" -> "ss").
    """

    def __init__(self, words: Iterable[str]) -> None:
        # Longest first, so a phrase wins over a word it starts with.
        folded = sorted({fold(word) for word in words}, key=lambda w: (-len(w), w))
        self.words = folded

        def alternatives(items: list[str]) -> str:
            # A space in a phrase matches any run of white space.
            return "|".join(re.escape(item).replace(r"\ ", r"\s+") for item in items)

        # Not inside a longer word: no letter, digit, "_" or mark (an accent
        # or vowel sign is part of the word it is in) on either side.
        word_char = _word_char_class()
        self._unicode = re.compile(rf"(?<!{word_char})(?:{alternatives(folded)})(?!{word_char})")
        # Only ASCII words can match ASCII text, whose folding is lower() and
        # which has no marks; words start and end with a word character, so
        # \b says the same there, faster.
        ascii_words = [word for word in folded if word.isascii()]
        self._ascii = re.compile(rf"\b(?:{alternatives(ascii_words)})\b", re.ASCII) if ascii_words else None
        # The first ASCII word of each, as bytes: a line none of whose words
        # is one of these cannot match, and most lines are like that.
        self._ascii_starts = {word.encode().translate(_ASCII_WORD_BYTES).split()[0] for word in ascii_words}

    def find(self, text: str) -> list[tuple[int, int]]:
        """The ``(start, end)`` spans of ``text`` that are banned words."""
        if text.isascii():
            if self._ascii is None:
                return []
            # The words of the line, lower-cased, in one pass over its bytes:
            # a third of the regex's cost, which then runs only on a line
            # that has a word a banned one starts with.
            if self._ascii_starts.isdisjoint(text.encode().translate(_ASCII_WORD_BYTES).split()):
                return []
            return [match.span() for match in self._ascii.finditer(text.lower())]
        if self._unicode.search(fold(text)) is None:
            return []
        return self._find_by_piece(text)

    def _find_by_piece(self, text: str) -> list[tuple[int, int]]:
        clusters = _clusters(text)
        pieces: list[str] = []
        owner: list[int] = []  # folded character -> index in clusters
        for number, (start, end) in enumerate(clusters):
            piece = text[start:end]
            folded = piece.lower() if piece.isascii() else _fold_piece(piece)
            pieces.append(folded)
            owner.extend([number] * len(folded))
        folded_text = "".join(pieces)
        spans = []
        for match in self._unicode.finditer(folded_text):
            start, end = match.span()
            first, last = owner[start], owner[end - 1]
            # A match must take whole characters as shown: "i" must not match
            # the "i" that "İ" folds to ("i" + combining dot).
            if (start > 0 and owner[start - 1] == first) or (end < len(owner) and owner[end] == last):
                continue
            spans.append((clusters[first][0], clusters[last][1]))
        return spans

    def mask(self, text: str, spans: list[tuple[int, int]]) -> str:
        """``text`` with each span replaced by one ``*`` per character shown."""
        out = []
        position = 0
        for start, end in spans:
            out.append(text[position:start])
            out.append("*" * len(_clusters(text[start:end])))
            position = end
        out.append(text[position:])
        return "".join(out)


@hookimpl(specname="chatcore_message", trylast=True)
def banned_words(message: Message) -> None:
    settings: Settings = message.sender.server.config.data[NAME]
    banned = settings.banned
    if banned is None:
        return
    text = message.text
    spans = banned.find(text)
    if not spans:
        return
    if settings.reject_banned:
        start, end = spans[0]
        message.reject(f"message not sent: it contains the banned word {text[start:end]!r}")
    else:
        message.text = banned.mask(text, spans)
