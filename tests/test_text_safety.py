"""Invisible and bidirectional Unicode controls, and property tests of the
sanitiser and the line framer (hypothesis)."""

# ruff: noqa: RUF001 (Arabic and Hebrew letters on purpose)

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcore.wire.framing import LineFraming
from chatcore.wire.native import sanitize

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
INVISIBLE = "\u200b\u2060\ufeff\u00ad\u180e\u2061\u2062\u2063\u2064\u3164\u115f\u1160\uffa0"


def test_trojan_source_controls_are_stripped():
    # The display order would be "... admin" while the text says otherwise.
    attack = "access = \u202e } \u2066if (isAdmin)\u2069 \u2066 begin admins only"
    cleaned = sanitize(attack)
    assert not set(cleaned) & set(BIDI_CONTROLS)
    assert cleaned == "access =  } if (isAdmin)  begin admins only"


@pytest.mark.parametrize("char", list(BIDI_CONTROLS + INVISIBLE))
def test_every_control_and_invisible_character_goes(char):
    assert sanitize(f"a{char}b") == "ab"


@pytest.mark.parametrize(
    "text",
    [
        "שלום עולם, מה שלומך?",  # Hebrew
        "مرحبا بالعالم! كيف حالك؟",  # Arabic
        "hello שלום 123 مرحبا",  # mixed directions, no controls needed
        "می\u200cخواهم",  # Persian: the non-joiner between letters stays
        "क्\u200dष",  # Devanagari: the joiner between letters stays
        "👨\u200d👩\u200d👧\u200d👦 family",  # emoji joined sequence
        "👩🏽\u200d💻 coder",  # with a skin tone
        "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f Scotland",  # tag flag
        "❤\ufe0f",  # variation selector (a mark, not a format character)
    ],
)
def test_right_to_left_text_and_joined_sequences_are_kept(text):
    assert sanitize(text) == text


def test_joiners_where_they_join_nothing_go():
    assert sanitize("da\u200dmn") == "damn"  # ASCII letters need no joiner
    assert sanitize("\u200dstart") == "start"
    assert sanitize("end\u200c") == "end"
    assert sanitize("🎉\u200da") == "🎉a"
    assert sanitize("a\U000e0067b") == "ab"  # a tag outside a flag


def test_rtl_text_through_a_real_server(chat_server_factory, chat_client):
    server = chat_server_factory()
    alice, bob = chat_client(server), chat_client(server)
    alice.send("שלום \u202eevil\u202c עולם")
    assert bob.expect(lambda line: line.startswith("<guest-1>")) == "<guest-1> שלום evil עולם"
    alice.send("/nick a\u202eb")  # the control goes before the command is read
    alice.expect("* you are now known as ab")


# -- properties -----------------------------------------------------------------

FORBIDDEN_CATEGORIES = {"Cc"}


def _forbidden(char: str) -> bool:
    return (char in BIDI_CONTROLS or char in INVISIBLE or unicodedata.category(char) in FORBIDDEN_CATEGORIES) and (
        char != " "
    )


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=80))
def test_sanitize_is_idempotent_and_leaves_nothing_forbidden(text):
    once = sanitize(text)
    assert sanitize(once) == once
    assert not any(_forbidden(char) for char in once)
    assert "\x1b" not in once
    assert once == once.strip()


# Lines made of any bytes but the newline, and the ways to split them.
_LINE = st.binary(max_size=40).map(lambda data: data.replace(b"\n", b""))


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=12), st.data())
def test_any_split_of_the_same_bytes_gives_the_same_lines(lines, data):
    stream = b"".join(line + b"\n" for line in lines)
    max_line = 16
    whole = LineFraming(max_line).feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = LineFraming(max_line)
    pieces: list[bytes | None] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        pieces.extend(framer.feed(stream[start:end]))
        assert framer.pending <= max_line + 1  # at most a line and its "\r"
    assert pieces == whole
    expected = [
        (line[:-1] if line.endswith(b"\r") else line) if len(line.removesuffix(b"\r")) <= max_line else None
        for line in lines
    ]
    assert whole == expected
    assert all(line is None or len(line) <= max_line for line in whole)
