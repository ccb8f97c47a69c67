"""Line framing and sanitising, as pure functions."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request

from chatcore.wire.framing import LineFraming, WebSocketBinaryLines, WebSocketTextLines
from chatcore.wire.native import decode, sanitize


def test_framer_joins_partial_lines_and_strips_cr():
    framer = LineFraming(100)
    assert framer.feed(b"hel") == []
    assert framer.feed(b"lo\r\nwor") == [b"hello"]
    assert framer.feed(b"ld\n\n") == [b"world", b""]
    assert framer.pending == 0


def test_framer_reports_an_overlong_line_once_and_recovers():
    framer = LineFraming(10)
    assert framer.feed(b"0123456789") == []  # exactly the limit, unfinished
    assert framer.feed(b"X") == [None]  # one byte over: reported now
    assert framer.pending == 0
    assert framer.feed(b"more and more") == []  # the rest is dropped
    assert framer.feed(b"end\nok\n") == [b"ok"]


def test_framer_complete_overlong_line_in_one_chunk():
    framer = LineFraming(5)
    assert framer.feed(b"short\ntoo long\nfine\n") == [b"short", None, b"fine"]


def test_framer_holds_a_final_cr_past_the_limit_until_its_newline():
    # Found by fuzz/fuzz_native.py: the documented bound said max_line; a
    # line of exactly max_line bytes may wait with its "\r" for the "\n".
    framer = LineFraming(3)
    assert framer.feed(b"abc\r") == []
    assert framer.pending == 4
    assert framer.feed(b"\n") == [b"abc"]
    assert framer.feed(b"abc\rd") == [None]  # the "\r" was not an ending: too long
    assert framer.pending == 0


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_framer_never_holds_more_than_the_limit(chunk):
    framer = LineFraming(1000)
    data = b"y" * 100_000
    results = []
    for i in range(0, len(data), chunk):
        results += framer.feed(data[i : i + chunk])
        assert framer.pending <= 1000
    assert results == [None]


def test_sanitize():
    assert sanitize("plain text") == "plain text"
    assert sanitize("  padded  ") == "padded"
    assert sanitize("\x1b[1;31mbold red\x1b[0m") == "bold red"
    assert sanitize("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "link"
    assert sanitize("a\u2028b\u0085c") == "abc"
    assert sanitize("tab\tstop") == "tab stop"
    assert sanitize("emoji 🎉 and ünïcödé") == "emoji 🎉 and ünïcödé"
    assert sanitize("\x00\x07\x08") == ""


def test_decode_replaces_invalid_utf8():
    assert decode(b"ok \xe2\x82") == "ok \ufffd"


def test_framer_crlf_line_at_the_limit_split_before_the_cr():
    framer = LineFraming(16)
    assert framer.feed(b"x" * 16) == []
    assert framer.feed(b"\r") == []  # may be the first half of \r\n: not counted yet
    assert framer.feed(b"\n") == [b"x" * 16]
    assert framer.feed(b"y" * 16 + b"\r") == []
    assert framer.feed(b"z") == [None]  # a lone \r inside the line does count


def test_line_framings_over_websocket_read_lines_and_say_why_they_drop():
    def opened(framing: type[WebSocketTextLines]) -> tuple[WebSocketTextLines, WSConnection]:
        client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
        server.receive_data(client.send(Request(host="x", target="/")))
        next(server.events())
        client.receive_data(server.send(AcceptConnection()))
        next(client.events())
        return framing(server, 100, 4), client

    text, client = opened(WebSocketTextLines)
    data = client.send(Message(data="NICK caf\u00e9")) + client.send(Message(data=b"\xff raw"))
    data += client.send(Message(data="x" * 101)) + client.send(Message(data="PING a"))
    assert text.feed(data) == [b"NICK caf\xc3\xa9", None, None, b"PING a"]
    assert text.dropped == ["binary messages are not accepted", "message too long (the limit is 100 bytes)"]
    binary, client = opened(WebSocketBinaryLines)
    data = (
        client.send(Message(data=b"\xff raw")) + client.send(Message(data=b"y" * 101)) + client.send(Message(data="t"))
    )
    assert binary.feed(data) == [b"\xff raw", None, b"t"]
    assert binary.dropped == ["message too long (the limit is 100 bytes)"]
