"""Events' identity: message IDs."""

import pytest

from chatcore.events import Chat, parse_msgid


def test_a_message_id_names_its_event_and_reads_back():
    event = Chat("lobby", "alice", "hi", 7, "a1b2c3d4-2", 1.5)
    assert event.msgid == "a1b2c3d4-2:7"
    assert parse_msgid(event.msgid) == ("a1b2c3d4-2", 7)
    assert Chat("lobby", "alice", "hi").msgid == ""  # not published yet


@pytest.mark.parametrize(
    "text", ["", "7", ":7", "abc:", "abc:0", "abc:-1", "abc:x1", "abc:1 ", "a:" + "9" * 19, "abc:\u00b3", "abc:1\u0663"]
)
def test_what_is_not_a_message_id_reads_as_none(text):
    assert parse_msgid(text) is None
