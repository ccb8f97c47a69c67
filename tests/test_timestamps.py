"""Every line has a time and an ID on every protocol: native ``/timestamps``
(and the web JSON's ``msgid``, in test_web.py)."""

from __future__ import annotations

import re

from chatcore.events import Chat, PrivateMessage, Replay
from chatcore.wire.native import NATIVE, NATIVE_TIMED, NATIVE_TIMED_IN_ROOMS, line_stamp

STAMP = r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\] "


def test_timed_native_lines_carry_the_time_they_were_said():
    said = Chat("lobby", "bob", "hi", 1, "e", 1796601541.9)
    assert line_stamp(1796601541.9) == "[2026-12-06T23:59:01Z] "
    assert NATIVE_TIMED.encode(said) == b"[2026-12-06T23:59:01Z] <bob> hi\n"
    assert NATIVE_TIMED_IN_ROOMS.encode(said) == b"[2026-12-06T23:59:01Z] [lobby] <bob> hi\n"
    assert NATIVE.encode(said) == b"<bob> hi\n"  # the plain format is untouched
    replay = Replay("lobby", (said, Chat("lobby", "amy", "yo", 2, "e", 1796601542.0)))
    assert NATIVE_TIMED.encode(replay) == (
        b"* last 2 messages in lobby:\n[2026-12-06T23:59:01Z] # <bob> hi\n[2026-12-06T23:59:02Z] # <amy> yo\n"
    )
    assert re.fullmatch(rf"{STAMP}\*bob\* psst\n", NATIVE_TIMED.encode(PrivateMessage("bob", "me", "psst")).decode())


def test_timestamps_on_and_off_for_one_connection(chat_server, connect):
    timed = connect(chat_server, "timed")
    bob = connect(chat_server, "bob")
    timed.send("/timestamps")
    timed.expect("* timestamps are off")
    timed.send("/timestamps on")
    timed.expect("* timestamps are on")
    bob.send("hello")
    assert re.fullmatch(rf"{STAMP}<bob> hello", timed.expect(re.compile("<bob> hello")))
    timed.send("/join dev")
    timed.expect(re.compile("you are now in dev"))
    bob.send("in two rooms")
    assert re.fullmatch(rf"{STAMP}\[lobby\] <bob> in two rooms", timed.expect(re.compile("in two rooms")))
    bob.send("/msg timed psst")
    assert re.fullmatch(rf"{STAMP}\*bob\* psst", timed.expect(re.compile("psst")))
    timed.send("/timestamps off")
    timed.expect("* timestamps are off")
    bob.send("plain again")
    timed.expect("[lobby] <bob> plain again")
    timed.send("/timestamps sometimes")
    timed.expect("! usage: /timestamps [on|off]")
