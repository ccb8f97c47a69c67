"""IRC's CHATHISTORY (draft/chathistory) and the replay on JOIN as a
chathistory batch (docs/irc.md, "CHATHISTORY"): the parsing as units, then
the exchange over real sockets beside a native client."""

from __future__ import annotations

import re

import pytest
import test_irc_caps

from chatcore.engine.history import Mark, Query
from chatcore.plugins.irc import ChathistoryError, chathistory_limit, chathistory_query, parse_reference, server_time
from chatcore.testing import ClientFactory
from chatcore.wire.tags import parse_tags

CAPS = "batch draft/chathistory message-tags server-time"

#: ``irc_client(server, nick, caps)``: the capability tests' registered IRC client in #lobby.
irc_client = test_irc_caps.irc


# -- units -----------------------------------------------------------------------------


def test_references_are_message_ids_or_times_to_the_millisecond():
    assert parse_reference("msgid=ab12-1:7") == Mark("ab12-1:7")
    assert parse_reference("timestamp=2026-12-06T23:59:01.123Z") == Mark(time=1796601541.123)
    assert parse_reference("timestamp=2026-12-06T23:59:01Z") == Mark(time=1796601541.0)
    # A range forwards from a time starts past the line sent with it.
    assert parse_reference("timestamp=2026-12-06T23:59:01.123Z", exclusive_start=True) == Mark(time=1796601541.124)
    for bad in ("msgid=", "timestamp=yesterday", "id=5", "*", "msgid=" + "x" * 101):
        assert parse_reference(bad) is None
    assert server_time(1796601541.123) == "2026-12-06T23:59:01.123Z"


def test_each_subcommand_is_a_query():
    assert chathistory_query("LATEST", ["#lobby", "*", "5"], 100) == ("#lobby", Query("latest", 5))
    assert chathistory_query("BEFORE", ["#lobby", "*", "5"], 100) == ("#lobby", Query("latest", 5))  # Kiwi IRC's
    assert chathistory_query("BEFORE", ["bob", "msgid=e:3", "5"], 100) == ("bob", Query("before", 5, Mark("e:3")))
    assert chathistory_query("AROUND", ["#lobby", "msgid=e:3"], 100) == ("#lobby", Query("around", 100, Mark("e:3")))
    assert chathistory_query("BETWEEN", ["#x", "msgid=e:9", "msgid=e:3", "2"], 50) == (
        "#x",
        Query("between", 2, Mark("e:9"), Mark("e:3")),
    )
    with pytest.raises(ChathistoryError) as failed:
        chathistory_query("AFTER", ["#lobby"], 100)
    assert (failed.value.code, failed.value.params) == ("INVALID_PARAMS", ("AFTER",))
    with pytest.raises(ChathistoryError) as failed:
        chathistory_query("AFTER", ["#lobby", "when=now", "5"], 100)
    assert (failed.value.code, failed.value.params) == ("INVALID_PARAMS", ("AFTER", "when=now"))


@pytest.mark.parametrize(
    ("given", "expected"),
    # "³" and "٣" are digits to str.isdigit() but not to int(): found by the fuzzer (fuzz/corpus/irc/).
    [("", 100), ("0", 100), ("7", 7), ("500", 100), ("-3", 100), ("x", 100), ("³", 100), ("٣", 100)],
)
def test_a_limit_missing_zero_or_too_large_is_the_servers_most(given, expected):
    assert chathistory_limit(given, 100) == expected


# -- over sockets ----------------------------------------------------------------------


def start(factory, *args: str, plugins: str = "irc,history"):  # type: ignore[no-untyped-def]
    return factory("--plugins", plugins, "--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0", *args)


def batch(lines: list[str]) -> tuple[str, list[str]]:
    """A chathistory batch's target and its lines, without the tags but time and msgid."""
    opening, *inner, closing = lines
    found = re.fullmatch(r":chatcore BATCH \+(\S+) chathistory (\S+)", opening)
    assert found, opening
    reference, target = found.groups()
    assert closing == f":chatcore BATCH -{reference}"
    body = []
    for line in inner:
        tags, _, rest = line[1:].partition(" ")
        assert parse_tags(tags)["batch"] == reference
        body.append(rest)
    return target, body


def tags_of(line: str) -> dict[str, str]:
    return parse_tags(line[1:].partition(" ")[0])


def test_chathistory_pages_through_a_channel_by_msgid_and_time(
    chat_server_factory, chat_client: ClientFactory, irc_client
):
    server = start(chat_server_factory, "--history-room-lines", "lobby=50")
    native = chat_client(server)
    native.send("/nick nat")
    native.expect("* you are now known as nat")
    for number in range(10):
        native.send(f"line {number}")
    native.sync()
    alice = irc_client(server, "alice", CAPS)
    isupport = " ".join(line for line in alice.received if " 005 alice " in line).split()
    assert {"CHATHISTORY=50", "MSGREFTYPES=msgid,timestamp"} <= set(isupport)
    alice.sync()
    alice.send("CHATHISTORY LATEST #lobby * 3")
    answer = alice.sync()
    target, body = batch(answer)
    assert target == "#lobby"
    assert [line.partition(" PRIVMSG ")[2] for line in body] == ["#lobby :line 7", "#lobby :line 8", "#lobby :line 9"]
    tags = [tags_of(line) for line in answer[1:-1]]
    first = tags[0]["msgid"]
    alice.send(f"CHATHISTORY BEFORE #lobby msgid={first} 2")
    assert [line.rpartition(":")[2] for line in batch(alice.sync())[1]] == ["line 5", "line 6"]
    alice.send(f"CHATHISTORY AFTER #lobby msgid={first} 1")
    assert [line.rpartition(":")[2] for line in batch(alice.sync())[1]] == ["line 8"]
    alice.send("CHATHISTORY AFTER #lobby timestamp=2000-01-01T00:00:00.000Z 2")
    assert [line.rpartition(":")[2] for line in batch(alice.sync())[1]] == ["line 0", "line 1"]
    alice.send("CHATHISTORY BEFORE #lobby timestamp=2100-01-01T00:00:00Z 1")
    assert [line.rpartition(":")[2] for line in batch(alice.sync())[1]] == ["line 9"]
    alice.send(f"CHATHISTORY AROUND #lobby msgid={first} 3")
    assert [line.rpartition(":")[2] for line in batch(alice.sync())[1]] == ["line 6", "line 7", "line 8"]
    alice.send(f"CHATHISTORY BETWEEN #lobby msgid={tags[2]['msgid']} timestamp=2000-01-01T00:00:00.000Z 2")
    assert [line.rpartition(":")[2] for line in batch(alice.sync())[1]] == ["line 7", "line 8"]
    alice.send("CHATHISTORY BEFORE #lobby msgid=gone:1 5")  # not kept: an empty batch
    assert batch(alice.sync())[1] == []
    # Errors, as the spec's standard replies; the connection goes on.
    lost = ":Messages could not be retrieved"
    for sent, reply in [
        ("LATEST #elsewhere * 5", f"INVALID_TARGET LATEST #elsewhere {lost}"),
        ("SOMETIME #lobby * 5", "INVALID_PARAMS SOMETIME :Unknown subcommand"),
        ("BEFORE #lobby", "INVALID_PARAMS BEFORE :Insufficient parameters"),
        ("AFTER #lobby timestamp=soon 5", "INVALID_PARAMS AFTER timestamp=soon :Invalid message reference"),
        ("LATEST bob * 5", f"INVALID_TARGET LATEST bob {lost}"),  # no account: no private history
    ]:
        alice.send(f"CHATHISTORY {sent}")
        assert alice.sync() == [f":chatcore FAIL CHATHISTORY {reply}"]
    native.send("still here")
    alice.expect(re.compile(r"PRIVMSG #lobby :still here$"))


def test_targets_and_private_history_between_accounts(chat_server_factory, irc_client, tmp_path):
    server = start(chat_server_factory, "--state-db", str(tmp_path / "state.db"), plugins="irc,history,accounts")
    alice, bob, carol = (
        irc_client(server, "alice", CAPS),
        irc_client(server, "bob", CAPS),
        irc_client(server, "carol", CAPS),
    )
    for client, nick in ((alice, "alice"), (bob, "bob")):
        client.send("REGISTER correct-horse")  # the accounts plugin's /register, through IRC
        client.expect(re.compile(f"NOTICE {nick} :registered the account {nick};"))
    alice.send("PRIVMSG bob :are you there?")
    bob.expect(re.compile(r"PRIVMSG bob :are you there\?$"))
    alice.sync()  # kept once alice's thread is done with it (after bob has it)
    bob.send("PRIVMSG alice :yes")
    alice.expect(re.compile(r"PRIVMSG alice :yes$"))
    carol.send("PRIVMSG bob :a guest's line")  # carol has no account: not kept
    bob.expect(re.compile(r"PRIVMSG bob :a guest's line$"))
    bob.sync()
    alice.send("CHATHISTORY LATEST bob * 10")
    target, body = batch(alice.sync())
    assert target == "bob"
    assert [re.sub(r"^:(\S+?)!\S+", r"\1", line) for line in body] == [
        "alice PRIVMSG bob :are you there?",
        "bob PRIVMSG alice :yes",
    ]
    alice.send("CHATHISTORY TARGETS timestamp=2000-01-01T00:00:00.000Z timestamp=2100-01-01T00:00:00.000Z 10")
    opening, *listed, closing = alice.sync()
    assert re.fullmatch(r":chatcore BATCH \+\S+ draft/chathistory-targets", opening)
    assert closing == ":chatcore BATCH -" + opening.split()[2][1:]
    assert [line.partition(" ")[2].rpartition(" ")[0] for line in listed] == [":chatcore CHATHISTORY TARGETS bob"]
    carol.send("CHATHISTORY LATEST bob * 10")
    assert carol.sync() == [":chatcore FAIL CHATHISTORY INVALID_TARGET LATEST bob :Messages could not be retrieved"]


def test_a_client_with_batch_and_server_time_gets_the_join_replay_as_a_batch(
    chat_server_factory, chat_client, irc_client
):
    server = start(chat_server_factory)
    native = chat_client(server)
    native.send("/nick nat")
    native.expect("* you are now known as nat")
    native.send("said before")
    native.send("/me waves")
    native.sync()
    modern = irc_client(server, "modern", caps="batch server-time")
    replay = [modern.expect(re.compile(r" BATCH \+\S+ chathistory #lobby$")), *modern.sync()]
    target, body = batch(replay)
    assert target == "#lobby"
    assert body == [
        ":nat!nat@chatcore PRIVMSG #lobby :said before",
        ":nat!nat@chatcore PRIVMSG #lobby :\x01ACTION waves\x01",
    ]
    assert all("time" in tags_of(line) for line in replay[1:-1])  # when they were said
    plain = irc_client(server, "plain", caps="")
    assert [line for line in plain.sync() if "[history]" in line]  # as before


def test_without_the_history_plugin_chathistory_is_not_offered(chat_server_factory, irc_client):
    server = start(chat_server_factory, plugins="irc")
    alice = irc_client(server, "alice", caps="batch")
    alice.send("CAP LS")
    assert "draft/chathistory" not in alice.expect(re.compile(" CAP alice LS "))
    assert not [line for line in alice.received if "CHATHISTORY=" in line]
    alice.send("CHATHISTORY LATEST #lobby * 5")
    assert alice.sync() == [":chatcore FAIL CHATHISTORY MESSAGE_ERROR LATEST :This server keeps no history"]


def test_a_private_line_has_one_id_and_time_live_echoed_and_in_history(chat_server_factory, irc_client, tmp_path):
    """Issue 29: what irctest's testMessagesToSelf compares: the recipient's
    copy, the sender's echo and the history's line carry one msgid and one
    time, to another account and to oneself."""
    server = start(chat_server_factory, "--state-db", str(tmp_path / "state.db"), plugins="irc,history,accounts")
    alice = irc_client(server, "alice", CAPS + " echo-message")
    bob = irc_client(server, "bob", CAPS)
    for client, nick in ((alice, "alice"), (bob, "bob")):
        client.send("REGISTER correct-horse")
        client.expect(re.compile(f"NOTICE {nick} :registered the account {nick};"))

    def said(line: str) -> tuple[str, str]:
        tags = tags_of(line)
        return tags["msgid"], tags["time"]

    alice.send("PRIVMSG bob :one id")
    received = said(bob.expect(re.compile(r"PRIVMSG bob :one id$")))
    echoed = said(alice.expect(re.compile(r"PRIVMSG bob :one id$")))
    assert received == echoed
    alice.send("PRIVMSG alice :a note to myself")
    to_self = [said(alice.expect(re.compile(r"PRIVMSG alice :a note to myself$"))) for _ in range(2)]
    assert to_self[0] == to_self[1]  # the copy received and the echo
    alice.sync()
    alice.send("CHATHISTORY LATEST bob * 10")
    assert [said(line) for line in alice.sync()[1:-1]] == [received]
    alice.send("CHATHISTORY LATEST alice * 10")
    assert [said(line) for line in alice.sync()[1:-1]] == [to_self[0]]
    bob.send(f"CHATHISTORY AROUND alice msgid={received[0]} 1")  # found by its live ID
    assert [said(line) for line in bob.sync()[1:-1]] == [received]
    alice.send("CHATHISTORY LATEST BOB * 1")  # asked in capitals: the lines name bob as he spells it
    assert [line.partition(" PRIVMSG ")[2] for line in alice.sync()[1:-1]] == ["bob :one id"]


def test_targets_counts_a_target_by_its_latest_line_with_both_ends_excluded(chat_server_factory, irc_client):
    """As irctest's testChathistoryTargets* and Ergo have it: a channel is
    listed when its latest line falls strictly between the two times (to
    the millisecond its time tag shows), not for an older line in between."""
    server = start(chat_server_factory)
    alice = irc_client(server, "alice", CAPS + " echo-message")
    times = []
    for text in ("first", "second"):
        alice.send(f"PRIVMSG #lobby :{text}")
        times.append(tags_of(alice.expect(re.compile(f"PRIVMSG #lobby :{text}$")))["time"])
    alice.sync()

    def targets(start: str, end: str) -> list[str]:
        alice.send(f"CHATHISTORY TARGETS timestamp={start} timestamp={end} 10")
        return [line.split(" ", 4)[4] for line in alice.sync()[1:-1]]

    everything = ("2000-01-01T00:00:00.000Z", "2100-01-01T00:00:00.000Z")
    assert targets(*everything) == [f"#lobby {times[1]}"]
    assert targets(everything[1], everything[0]) == [f"#lobby {times[1]}"]  # backwards
    assert targets(times[1], everything[1]) == []  # the start excluded
    assert targets(everything[0], times[1]) == []  # the end excluded, and "first" does not count


def test_a_line_with_a_guest_is_kept_for_the_account_alone(chat_server_factory, irc_client, tmp_path):
    """As Ergo (irctest's testChathistoryDMs): the lines between an account
    and a guest are kept for the account; the guest reads nothing, nor does
    whoever registers the guest's nick later."""
    server = start(chat_server_factory, "--state-db", str(tmp_path / "state.db"), plugins="irc,history,accounts")
    alice = irc_client(server, "alice", CAPS + " echo-message")
    guest = irc_client(server, "visitor", CAPS)
    alice.send("REGISTER correct-horse")
    alice.expect(re.compile("NOTICE alice :registered the account alice;"))
    alice.send("PRIVMSG visitor :hello stranger")
    guest.expect(re.compile(r"PRIVMSG visitor :hello stranger$"))
    guest.send("PRIVMSG alice :hello alice")
    alice.expect(re.compile(r"PRIVMSG alice :hello alice$"))
    alice.sync()
    alice.send("CHATHISTORY LATEST visitor * 10")
    assert [line.rpartition(" :")[2] for line in batch(alice.sync())[1]] == ["hello stranger", "hello alice"]
    alice.send("CHATHISTORY TARGETS timestamp=2000-01-01T00:00:00.000Z timestamp=2100-01-01T00:00:00.000Z 10")
    assert [line.split()[-2] for line in alice.sync()[1:-1]] == ["visitor"]
    guest.send("CHATHISTORY LATEST alice * 10")  # a guest has no private history
    assert guest.sync() == [":chatcore FAIL CHATHISTORY INVALID_TARGET LATEST alice :Messages could not be retrieved"]
    guest.send("REGISTER correct-horse")  # the nick an account now: still not its past
    guest.expect(re.compile("NOTICE visitor :registered the account visitor;"))
    guest.send("CHATHISTORY LATEST alice * 10")
    assert batch(guest.sync())[1] == []
