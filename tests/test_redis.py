"""The redis plugin: rooms shared by chatcore server processes through a real
redis-server, with links cut, stalled and Redis restarted in the middle."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis_support import Proxy, RedisServer, free_port
from test_irc import IRCClient
from test_irc_caps import tags_of
from test_web import WSClient

from chatcore.engine.rooms import Rooms, RoomState
from chatcore.events import (
    AccountChanged,
    Action,
    AwayChanged,
    Chat,
    Invitation,
    Joined,
    Left,
    ModeChanged,
    NickChanged,
    OperatorChanged,
    PrivateMessage,
    PrivateTags,
    RealnameChanged,
    RoomEvent,
    RoomNotice,
    TopicChanged,
)
from chatcore.plugins.irc import parse_reference
from chatcore.plugins.redis import (
    Arrivals,
    Cursor,
    Start,
    Target,
    decode_event,
    decode_moderation,
    decode_private,
    encode_event,
    encode_private,
    redacted,
)
from chatcore.plugins.redis.roomstate import state_changes, state_fields, state_from_fields
from chatcore.testing import LineClient, ServerProcess, wait_for
from chatcore.wire.tags import parse_tags

TIMEOUT = 10
_clusters = itertools.count(1)
LINK_DOWN = "* the cluster link is down: you reach only the people on this server until it is back"
LINK_BACK = "* the cluster link is back"
TRIMMED = "Redis trimmed them before this server read them"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def cluster() -> Iterator[object]:
    """``cluster(url, host, *args, env=None)``: a chatcore server process in
    this test's cluster, listening on ``host``; stopped at teardown."""
    name = f"test{next(_clusters)}-{os.getpid()}"  # two test runs may share a Redis port by chance
    processes: list[ServerProcess] = []

    def start(url: str, host: str = "127.0.0.1", *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        plugins = [] if "--plugins" in args else ["--plugins", "redis"]
        process = ServerProcess(
            *plugins,
            "--listen", f"tcp://{host}:0",
            "--redis-url", url,
            "--redis-cluster", name,
            "--redis-timeout", "1",
            *args,
            env=env,
        )  # fmt: skip
        processes.append(process.start())
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.stop()


@pytest.fixture
def connect() -> Iterator[object]:
    """``connect(process, nick, source=None)``: a client with that nickname,
    from the address ``source`` if given; closed at teardown."""
    clients: list[LineClient] = []

    def make(process: ServerProcess, nick: str, source: str | None = None) -> LineClient:
        client = LineClient(process.address, timeout=TIMEOUT, source=source)
        clients.append(client)
        client.send(f"/nick {nick}")
        client.expect(f"* you are now known as {nick}")
        return client

    yield make
    for client in clients:
        client.close()


def linked(sender: LineClient, nick: str, receivers: Sequence[LineClient]) -> None:
    """Wait until what ``sender`` says reaches every receiver on the other
    servers (their servers read the room), then drain the probes."""
    for attempt in range(100):
        sender.send(f"probe {attempt}")
        try:
            receivers[0].expect(lambda line: line.startswith(f"<{nick}> probe "), timeout=0.1)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("the servers never linked up")
    sender.send("probe done")
    for receiver in receivers:
        receiver.expect(f"<{nick}> probe done")


@contextlib.contextmanager
def server_log_on_failure(process: ServerProcess) -> Iterator[None]:
    """A failed assertion inside also shows what the server logged, and
    still points at the line that failed (its traceback is kept)."""
    try:
        yield
    except AssertionError as exc:
        process.stop()
        failed = AssertionError(f"{exc}\n--- the server's log:\n{process.stderr[-4000:]}")
        raise failed.with_traceback(exc.__traceback__) from None


def last_text(redis_server: RedisServer) -> str | None:
    """The text of the last chat entry in the lobby's stream."""
    client = redis_server.client()
    try:
        for stream in client.keys("chatcore:*:room:lobby:stream"):
            for _id, entry in client.xrevrange(stream, count=1):
                return str(json.loads(entry["event"]).get("text"))
        return None
    finally:
        client.close()


def lines_until(client: LineClient, last: str) -> list[str]:
    """Every line up to and including ``last``."""
    lines: list[str] = []
    while True:
        line = client.readline()
        lines.append(line)
        if line == last:
            return lines


def test_events_travel_as_versioned_json() -> None:
    for event in [
        Chat("lobby", nick="alice", text="hi ünïcode"),
        Chat("lobby", nick="alice", text="with a user name", user="al.ice"),
        Action("dev", nick="bob", text="waves"),
        Joined("lobby", nick="carol"),
        Left("lobby", nick="carol", reason="joined dev", disconnected=False),
        NickChanged("lobby", nick="carol", new_nick="caz"),
        RoomNotice("lobby", text="hello"),
        Left("lobby", nick="bob", reason="kicked by alice: spam", kicked_by="alice"),
        OperatorChanged("lobby", nick="alice", operator=False),
        # Lists (issue 24): a quit told in several rooms, a mode change with its arguments.
        Left("dev", nick="carol", reason="bye", told_in=("lobby", "ops")),
        ModeChanged("dev", nick="alice", modes="+ob", arguments=("bob", "*!*@10.0.0.1")),
        TopicChanged("dev", nick="alice", topic="release on Friday"),
        Chat("lobby", nick="bot", text="build passed", notice=True),  # an IRC NOTICE #lobby
        # IRCv3 notifications (issue 29): room events, so they travel as the others do.
        AwayChanged("dev", nick="alice", away="at lunch", told_in=("lobby",)),
        RealnameChanged("dev", nick="alice", realname="Alice Liddell", user="al"),
        AccountChanged("dev", nick="alice", account="alice"),
        Invitation("dev", nick="alice", invited="carol"),
    ]:
        assert decode_event(encode_event(event)) == event
    with pytest.raises(ValueError, match="invited is not a valid name"):
        decode_event('{"type":"Invitation","room":"dev","nick":"alice","invited":"x y"}')
    # Fields at their default are left out: a plain leave reads as it did before kicked_by,
    # plain chat as before notice, and a private message's notice travels only when set.
    assert encode_event(Chat("lobby", "alice", "hi", time=1.5)) == (
        '{"type":"Chat","time":1.5,"room":"lobby","nick":"alice","text":"hi"}'
    )
    for private in [
        PrivateMessage("bot", "bob", "psst"),
        PrivateMessage("bot", "bob", "done", notice=True),
        PrivateMessage("bot", "bob", "re", tags="+draft/reply=e:1"),
        PrivateTags("bot", "bob", "+typing=active"),  # IRC's TAGMSG bob
    ]:
        assert decode_private(encode_private(private)) == private
    # Never the message ID (an older server would drop the entry); tags alone need tags.
    assert "msgid" not in encode_private(PrivateMessage("bot", "bob", "psst", msgid="pm-" + "0" * 32))
    with pytest.raises(ValueError, match="need sender, recipient and tags"):
        decode_private('{"type":"PrivateTags","sender":"a","recipient":"b"}')
    assert "notice" not in encode_private(PrivateMessage("bot", "bob", "psst"))
    # Its time and the sender's account travel in the JSON, its ID beside it (the entry's id).
    signed = PrivateMessage("alice", "bob", "hi", msgid="ab12-pm:3", time=1.5, account="alice")
    assert decode_private(encode_private(signed), msgid="ab12-pm:3") == signed
    assert encode_private(signed) == (
        '{"type":"PrivateMessage","sender":"alice","recipient":"bob","time":1.5,"account":"alice","text":"hi"}'
    )
    assert (
        encode_event(Left("lobby", nick="carol", time=1.5))
        == '{"type":"Left","time":1.5,"room":"lobby","nick":"carol"}'
    )
    for bad, why in [
        ('{"type": "Shout", "room": "x"}', "unknown event type"),
        ('{"type": ["Chat"], "room": "x"}', "unknown event type"),  # was a TypeError (found by fuzzing)
        ('{"type": "Chat", "room": "x"}', "missing"),
        ("[]", "not a JSON object"),
        ('{"type": "Chat", "room": "lobby", "nick": "amy", "x": 1}', "missing"),  # an unknown field is no text
        ("{", "Expecting"),
        # What another server's bug, or anyone who can write to Redis, might put there.
        ('{"type": "Chat", "room": "lobby", "nick": 42, "text": "hi"}', "nick is not a str"),
        ('{"type": "Left", "room": "dev", "nick": "b", "told_in": "lobby"}', "told_in is not a list"),
        ('{"type": "Left", "room": "dev", "nick": "b", "told_in": ["a\\r\\nb"]}', "told_in holds a name"),
        (json.dumps({"type": "Left", "room": "dev", "nick": "b", "told_in": ["x"] * 1001}), "at most 1000"),
        (
            '{"type": "ModeChanged", "room": "dev", "nick": "b", "modes": "+o", "arguments": [1]}',
            "arguments is not a list",
        ),
        ('{"type": "Chat", "room": "lobby", "nick": "a\\r\\nb", "text": "hi"}', "nick is not a valid name"),
        ('{"type": "Chat", "room": "lobby", "nick": "", "text": "hi"}', "nick is not a valid name"),
        ('{"type": "Chat", "room": "lobby", "nick": "amy", "text": "\\r\\n"}', "text is empty"),
        ('{"type": "Chat", "room": "lobby", "nick": "amy", "text": ["hi"]}', "text is not a str"),
        ('{"type": "Left", "room": "lobby", "nick": "amy", "disconnected": 1}', "disconnected is not a bool"),
        ('{"type": "NickChanged", "room": "lobby", "nick": "amy", "new_nick": true}', "new_nick is not a str"),
        ('{"type": "Chat", "room": "lobby", "nick": "amy", "text": "hi", "time": NaN}', "time is not a number"),
        (json.dumps({"type": "Chat", "room": "lobby", "nick": "amy", "text": "x" * 4097}), "longer than 4096"),
        ("[" * 100000 + "]" * 100000, "characters long"),
        # Python 3.13's parser takes this depth (then: not an object); earlier ones raise RecursionError.
        ("[" * 4000 + "]" * 4000, "nested too deeply|not a JSON object"),
        # A user name goes in IRC prefixes: one that would break them is refused.
        ('{"type": "Chat", "room": "lobby", "nick": "amy", "text": "hi", "user": "x PRIVMSG #b :y"}', "user"),
        ('{"type": "Joined", "room": "lobby", "nick": "amy", "user": "a:b"}', "user is not a valid user name"),
    ]:
        with pytest.raises(ValueError, match=why):
            decode_event(bad)
    # Text is sanitised as a client's line is: control characters and escapes go.
    event = decode_event(
        '{"type": "Chat", "room": "lobby", "nick": "amy", "text": "one\\r\\ntwo\\u0000 \\u001b[31mred"}'
    )
    assert event == Chat("lobby", nick="amy", text="onetwo red")


def test_fields_a_newer_server_added_are_ignored() -> None:
    # A rolling upgrade: a newer server's optional field must not make an
    # older one drop the line. Unknown fields are left out, whatever their
    # value; known ones are checked as ever, and a required one still counts.
    newer = {"draft": {"any": ["json", 1, None]}, "priority": "high"}
    assert decode_event(json.dumps({"type": "Chat", "room": "lobby", "nick": "amy", "text": "hi", **newer})) == Chat(
        "lobby", nick="amy", text="hi"
    )
    away = {"type": "AwayChanged", "room": "dev", "nick": "amy", "away": "out", "until": 1.5}
    assert decode_event(json.dumps(away)) == AwayChanged("dev", nick="amy", away="out")
    private = {"type": "PrivateMessage", "sender": "amy", "recipient": "bob", "text": "psst", **newer}
    assert decode_private(json.dumps(private), msgid="ab12-pm:3") == PrivateMessage(
        "amy", "bob", "psst", msgid="ab12-pm:3"
    )
    tags = {"type": "PrivateTags", "sender": "amy", "recipient": "bob", "tags": "+typing=active", **newer}
    assert decode_private(json.dumps(tags)) == PrivateTags("amy", "bob", "+typing=active")
    unban = {"type": "Moderation", "action": "unban", "by": "op", "network": "10.0.0.0/8"}
    assert decode_moderation(json.dumps({**unban, **newer})) == decode_moderation(json.dumps(unban))
    # An identity field is the cluster's to give, never the entry's: left out too.
    assert decode_event(chat_json(nick="amy", text="hi", origin="forged", offset=9), origin="e:1").origin == "e:1"
    for bad, why in [
        ({**private, "sender": 7}, "sender is not a str"),
        ({**private, "text": ""}, "text is empty"),
        ({"type": "PrivateMessage", "sender": "amy", "recipient": "bob", **newer}, "needs sender, recipient and text"),
    ]:
        with pytest.raises(ValueError, match=why):
            decode_private(json.dumps(bad))


def test_a_room_entered_is_read_from_its_first_join_s_place() -> None:
    # The hand-over between the publisher and the reader (no Redis needed).
    here: dict[str, int] = {}
    arrivals = Arrivals(grace=60)
    here["lobby"] = 1  # a client entered: its Joined is queued
    assert arrivals.entered("lobby", 1)
    assert arrivals.plan(lambda: here) == ({}, [])  # on its way: wait
    assert not arrivals.entered("lobby", 2)  # a second member: the first's place counts
    arrivals.placed("lobby", 2, Cursor("9-0", "e", 5))  # not the one asked for: ignored
    place = Cursor("7-0", "e", 3)
    arrivals.placed("lobby", 1, place)
    start, stop = arrivals.plan(lambda: here)
    assert start == {"lobby": Start(place)}
    assert stop == []
    assert arrivals.begin("lobby", start["lobby"])
    assert not arrivals.entered("lobby", 3)  # read already: no place needed
    del here["lobby"]
    assert arrivals.plan(lambda: here) == ({}, ["lobby"])
    # A place that is not known starts at the top, and the members are told.
    here["dev"] = 1
    assert arrivals.entered("dev", 4)
    arrivals.placed("dev", 4, None, "the cluster link dropped as the room was entered")
    start, _ = arrivals.plan(lambda: here)
    assert start == {"dev": Start(None, "the cluster link dropped as the room was entered")}
    # Whoever enters between the plan and the start makes the reader plan again.
    here["lobby"] = 1
    assert arrivals.entered("lobby", 5)
    assert not arrivals.begin("lobby", Start(None))
    # Everyone left before the place was known: forgotten, and asked afresh.
    del here["lobby"]
    arrivals.plan(lambda: here)
    arrivals.placed("lobby", 5, place)
    here["lobby"] = 1
    assert arrivals.entered("lobby", 6)
    # Members with no Joined at all are read from the top after the grace.
    arrivals = Arrivals(grace=0)
    assert arrivals.plan(lambda: {"quiet": 1}) == ({"quiet": Start(None)}, [])


def test_the_password_never_reaches_logs() -> None:
    assert redacted("redis://user:hunter2@db:6380/1") == "redis://user:***@db:6380/1"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    # Nor does it, nor the Sentinels' own, where a Sentinel-managed primary is named.
    target = Target("rediss://:hunter2@db/1", (("10.0.0.1", 26379), ("::1", 26380)), "main", "hunter3")
    assert str(target) == (
        "the primary 'main' of the Sentinels 10.0.0.1:26379,[::1]:26380 (rediss://:***@db/1, host and port unused)"
    )


@pytest.mark.slow
def test_room_events_reach_every_server_once_in_order_never_echoed(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    alice = connect(one, "alice")
    bob, carol = connect(two, "bob"), connect(two, "carol")
    linked(alice, "alice", [bob, carol])
    linked(bob, "bob", [alice])
    carol.sync()

    for i in range(200):
        alice.send(f"a {i}")
        bob.send(f"b {i}")
    alice.send("a end")
    bob.send("b end")
    alice_saw = lines_until(alice, "<bob> b end")
    carol_saw = lines_until(carol, "<alice> a end")
    bob_saw = lines_until(bob, "<alice> a end")
    assert alice_saw == [f"<bob> b {i}" for i in range(200)] + ["<bob> b end"]
    assert bob_saw == [f"<alice> a {i}" for i in range(200)] + ["<alice> a end"]
    # carol (on bob's server) sees both, each sender's lines once and in order.
    carol_saw += lines_until(carol, "<bob> b end") if "<bob> b end" not in carol_saw else []
    assert [line for line in carol_saw if line.startswith("<alice>")] == bob_saw
    assert [line for line in carol_saw if line.startswith("<bob>")] == alice_saw

    alice.send("/me waves")
    alice.expect("* alice waves")
    bob.expect("* alice waves")
    dave = connect(one, "dave")
    # In under its name (its first line, docs/protocol.md), or renamed if that came late.
    bob.expect(lambda line: line == "* dave joined" or line.endswith(" is now known as dave"))
    dave.send("/part lobby")
    bob.expect("* dave left")
    assert "* alice waves" not in alice.sync()  # once, not twice
    assert carol.sync().count("* alice waves") == 1


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_a_server_whose_link_broke_catches_up_in_order(redis_server, cluster, connect, fault) -> None:
    proxy = Proxy(("127.0.0.1", redis_server.port))
    try:
        one = cluster(redis_server.url, "127.0.0.1")
        two = cluster(proxy.url, "127.0.0.2")
        alice = connect(one, "alice")
        bob = connect(two, "bob")
        linked(alice, "alice", [bob])
        mark = len(bob.received)

        for i in range(50):
            alice.send(f"before {i}")
        if fault == "cut":
            proxy.cut()
        else:
            proxy.stall()
            bob.expect(LINK_DOWN)  # noticed within --redis-timeout, without an error
        for i in range(100):
            alice.send(f"during {i}")
        alice.sync()
        proxy.resume()
        alice.send("end")
        lines_until(bob, "<alice> end")
        # From everything bob received: expect(LINK_DOWN) consumes what came
        # before the notice (under load, some "before" lines do).
        received = bob.received[mark : bob.received.index("<alice> end", mark) + 1]
        seen = [line for line in received if line not in (LINK_DOWN, LINK_BACK)]
        expected = [f"<alice> before {i}" for i in range(50)] + [f"<alice> during {i}" for i in range(100)]
        assert seen == [*expected, "<alice> end"]
    finally:
        proxy.close()


@pytest.mark.slow
def test_a_server_whose_link_was_cut_is_heard_again(redis_server, cluster, connect) -> None:
    proxy = Proxy(("127.0.0.1", redis_server.port))
    try:
        one = cluster(redis_server.url, "127.0.0.1")
        two = cluster(proxy.url, "127.0.0.2")
        alice = connect(one, "alice")
        bob = connect(two, "bob")
        linked(alice, "alice", [bob])
        proxy.cut()
        alice.send("while cut")
        proxy.resume()
        lines_until(bob, "<alice> while cut")
        bob.send("back")
        with server_log_on_failure(two):
            alice.expect("<bob> back")
    finally:
        proxy.close()


def _guest_joined(event: dict[str, object]) -> bool:
    return event.get("type") == "Joined" and str(event.get("nick")).startswith("guest-")


def last_event(redis_server: RedisServer, room: str) -> dict[str, object]:
    """The event of the last entry in ``room``'s stream ({} if none)."""
    client = redis_server.client()
    try:
        for stream in client.keys(f"chatcore:*:room:{room}:stream"):
            for _id, entry in client.xrevrange(stream, count=1):
                event: dict[str, object] = json.loads(entry["event"])
                return event
        return {}
    finally:
        client.close()


@pytest.mark.slow
def test_a_client_hears_what_is_said_right_after_it_entered(redis_server, cluster, connect) -> None:
    # Issue 13's bug: a server began reading a room its client had just
    # entered only when its blocking read next returned (up to 250 ms later,
    # when it read no other room), at the stream's top then, so what the
    # other servers said meanwhile was skipped.
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    bob = connect(two, "bob")
    # bob's own entries first, so the next join in the stream is the guest's.
    wait_for(lambda: "bob" in last_event(redis_server, "lobby").values(), timeout=TIMEOUT)
    for i in range(10):
        guest = LineClient(one.address, timeout=TIMEOUT)
        try:
            # In the cluster's order, what follows is said after the guest entered.
            wait_for(lambda: _guest_joined(last_event(redis_server, "lobby")), timeout=TIMEOUT)
            bob.send(f"hello {i}")
            with server_log_on_failure(one):
                guest.expect(f"<bob> hello {i}")
            assert "<bob> hello" not in " ".join(guest.sync())  # once
        finally:
            guest.close()
        wait_for(lambda: last_event(redis_server, "lobby").get("type") == "Left", timeout=TIMEOUT)


@pytest.mark.slow
def test_redis_restarted_empty_tells_members_of_the_gap(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    alice, ann = connect(one, "alice"), connect(one, "ann")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])
    ann.sync()

    redis_server.stop()
    bob.expect(LINK_DOWN)
    alice.send("local chat goes on")
    ann.expect("<alice> local chat goes on")
    # Nicknames are unique per server only during an outage (docs/scaling.md):
    # alice's is free on bob's server, and stays taken on alice's.
    twin = connect(two, "alice")
    ann.send("/nick alice")
    ann.expect("! nickname 'alice' is taken")
    redis_server.start()
    bob.expect("* messages from other servers may be missing here (the cluster's Redis lost them)")
    linked(alice, "alice", [bob])
    bob.send("hello again")
    alice.expect("<bob> hello again")
    twin.send("/me is still alice")  # both keep the name when the link is back
    twin.expect("* alice is still alice")
    alice.expect("* alice is still alice")
    assert bob.received.count(LINK_DOWN) == 1
    assert bob.received.count("<alice> local chat goes on") <= 1


@pytest.mark.slow
def test_publishes_cut_off_midway_are_retried_once_and_in_order(redis_server, cluster, connect) -> None:
    proxy = Proxy(("127.0.0.1", redis_server.port))
    try:
        one = cluster(proxy.url, "127.0.0.1")
        two = cluster(redis_server.url, "127.0.0.2")
        alice = connect(one, "alice")
        bob = connect(two, "bob")
        linked(alice, "alice", [bob])
        for i in range(600):
            alice.send(f"line {i}")
            if i in (150, 300, 450):
                proxy.cut()  # in the middle of the publisher's pipelines
        alice.send("end")
        seen = [line for line in lines_until(bob, "<alice> end") if line.startswith("<alice>")]
        assert seen == [f"<alice> line {i}" for i in range(600)] + ["<alice> end"]
    finally:
        proxy.close()


def stream_events(redis_server: RedisServer, room: str) -> list[dict[str, Any]]:
    """The events in ``room``'s stream, in order, as the codec wrote them."""
    client = redis_server.client()
    try:
        return [
            json.loads(entry["event"])
            for stream in client.keys(f"chatcore:*:room:{room}:stream")
            for _id, entry in client.xrange(stream)
        ]
    finally:
        client.close()


def joined_in_stream(redis_server: RedisServer, room: str, nick: str) -> bool:
    """Whether ``nick``'s Joined is in ``room``'s stream yet."""
    return any(event["type"] == "Joined" and event.get("nick") == nick for event in stream_events(redis_server, room))


def chat_texts(redis_server: RedisServer, room: str) -> list[str]:
    """The texts of the chat entries in ``room``'s stream, in order."""
    return [event["text"] for event in stream_events(redis_server, room) if event["type"] == "Chat"]


@pytest.mark.slow
def test_publishes_refused_by_a_demoted_primary_wait_and_go_out(
    redis_server, chat_server_factory, chat_client, tmp_path
) -> None:
    # A failover can leave a server's link on the old primary, now a replica,
    # which refuses writes (READONLY): a fresh link cures that (to the new
    # primary; here the same Redis promoted back), so the events wait and
    # are retried, where other refusals are given up.
    (tmp_path / "primary").mkdir()
    primary = RedisServer(tmp_path / "primary").start()
    admin = redis_server.client()
    try:
        server = chat_server_factory(
            "--plugins", "redis", "--redis-url", redis_server.url, "--redis-cluster", "demoted", "--redis-timeout", "1"
        )  # fmt: skip
        alice = chat_client(server)
        admin.replicaof("127.0.0.1", str(primary.port))  # read-only from now on
        for i in range(5):
            alice.send(f"line {i}")
        alice.sync()
        wait_for(lambda: "errorstat_READONLY" in admin.info("errorstats"), timeout=TIMEOUT, message="a refusal")
        admin.replicaof("NO", "ONE")
        expected = [f"line {i}" for i in range(5)]
        wait_for(lambda: chat_texts(redis_server, "lobby") == expected, timeout=TIMEOUT, message="the lines in Redis")
        assert server.config.data["redis"].publisher.dropped == 0
    finally:
        admin.close()
        primary.stop()


@pytest.mark.slow
def test_a_stream_trimmed_past_the_cursor_is_told_with_the_count(redis_server, cluster, connect) -> None:
    proxy = Proxy(("127.0.0.1", redis_server.port))
    try:
        one = cluster(redis_server.url, "127.0.0.1", "--redis-stream-length", "100")
        two = cluster(proxy.url, "127.0.0.2", "--redis-stream-length", "100")
        alice = connect(one, "alice")
        bob = connect(two, "bob")
        linked(alice, "alice", [bob])
        proxy.stall()
        bob.expect(LINK_DOWN)
        for i in range(1000):
            alice.send(f"line {i}")
        # Until alice's server has published them all, Redis trims on while
        # bob's catches up, and bob is told of a second gap (rightly).
        wait_for(lambda: last_text(redis_server) == "line 999", timeout=TIMEOUT, message="line 999 in Redis")
        proxy.resume()
        alice.send("end")
        seen = [line for line in lines_until(bob, "<alice> end") if line not in (LINK_DOWN, LINK_BACK)]
        gap = seen.pop(0)
        lost = int(gap.split()[1])
        assert gap == f"* {lost} messages from other servers may be missing here ({TRIMMED})"
        # What Redis still had arrived, in order: the tail of what alice said.
        first = int(seen[0].rsplit(" ", 1)[1])
        assert seen == [f"<alice> line {i}" for i in range(first, 1000)] + ["<alice> end"]
        assert 100 <= len(seen) < 1000
        # The count covers every line that did not arrive. It counts the
        # room's offsets, so it may exceed them by entries of bob's own server
        # that were trimmed too (once, under the whole suite's load, by 2).
        assert first <= lost <= first + 2
    finally:
        proxy.close()


@pytest.mark.slow
def test_a_flushed_redis_is_noticed_without_a_link_drop(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2", "--redis-check-interval", "0.2")
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])
    client = redis_server.client()
    client.flushall()
    client.close()
    bob.expect("* messages from other servers may be missing here (the cluster's Redis lost them)")
    linked(alice, "alice", [bob])
    assert LINK_DOWN not in bob.received


@pytest.mark.slow
def test_a_failover_to_a_replica_that_lacks_the_last_entries_is_told_not_replayed(
    redis_server, cluster, connect
) -> None:
    # What a Sentinel failover to a replica that had not received the last
    # entries leaves: the room's offset and its stream's end are back where
    # they were two entries ago. The reader says so, and reads on from
    # there, without delivering again what it has delivered already.
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2", "--redis-check-interval", "0.2")
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])
    for i in range(3):
        alice.send(f"line {i}")
    bob.expect("<alice> line 2")
    mark = len(bob.received)
    client = redis_server.client()
    try:
        [stream] = client.keys("chatcore:*:room:lobby:stream")
        for entry_id, _ in client.xrevrange(stream, count=2):
            client.xdel(stream, entry_id)
        client.hincrby(stream.removesuffix(":stream") + ":meta", "offset", -2)
    finally:
        client.close()
    bob.expect("* messages from other servers may be missing here (Redis went back in time)")
    alice.send("after")
    bob.expect("<alice> after")
    said = [line for line in bob.received[mark:] if line.startswith("<alice> ")]
    assert said == ["<alice> after"]


@pytest.mark.slow
@pytest.mark.slow
def test_a_newer_server_s_lines_with_fields_this_one_does_not_know_are_delivered(redis_server, cluster, connect):
    # A rolling upgrade: server two writes its entries as a newer version
    # might, with an optional field this version has not heard of. Its chat
    # and private messages reach server one's members, and none is counted
    # as invalid.
    one, metrics = watched_server(redis_server, cluster)
    newer = {"PYTHONPATH": str(Path(__file__).parent / "plugins")}
    two = cluster(redis_server.url, "127.0.0.2", "--plugins", "redis,chatcore_testplugins.newer_entries", env=newer)
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    with server_log_on_failure(one):
        bob.send("/msg alice psst")
        bob.expect("-> *alice* psst")
        alice.expect("*bob* psst")
        linked(bob, "bob", [alice])
        assert "from_the_future" in json.dumps(last_event(redis_server, "lobby"))  # as a newer server writes
        assert scrape(metrics, "chatcore_redis_invalid_entries_total") == 0


def test_presence_who_rooms_and_msg_span_the_cluster(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    # Guest names are unique too: both servers count from guest-1, yet the
    # second server's first guest is not guest-1 again.
    first, second = LineClient(one.address, timeout=TIMEOUT), LineClient(two.address, timeout=TIMEOUT)
    try:
        assert guest_nick(first) != guest_nick(second)
    finally:
        first.close()
        second.close()
    bob.send("/join dev")
    bob.expect("* you are now in dev (1 here)")
    bob.send("/part lobby")
    bob.expect("* you left lobby; you now talk in dev")
    # Presence is renewed right after a change, by a thread of its own: /rooms
    # shows bob's move within moments.
    answered(alice, "/rooms", lambda line: line.startswith("* 2 rooms: dev (1), lobby ("))
    alice.send("/join dev")
    alice.expect("* you are now in dev (2 here)")  # the room's members on every server
    alice.send("/part lobby")
    alice.expect("* you left lobby; you now talk in dev")
    answered(alice, "/who", "* in dev (2): alice, bob")
    alice.send("/msg BOB psst")
    alice.expect("-> *BOB* psst")
    bob.expect("*alice* psst")
    bob.send("/msg alice hi back")
    alice.expect("*bob* hi back")
    alice.send("/msg nobody-at-all hello")
    alice.expect("! no such nick 'nobody-at-all'")
    # A nick held on the other server is refused, and free again once given up.
    alice.send("/nick bob")
    alice.expect("! nickname 'bob' is taken")
    bob.send("/nick robert")
    bob.expect("* you are now known as robert")
    alice.send("/nick bob")
    alice.expect("* you are now known as bob")


def test_the_welcome_counts_the_rooms_members_on_every_server(redis_server, cluster, connect) -> None:
    # Each server writes how many of its clients are in each room when it
    # renews its presence; the others read the counts then, not on every
    # arrival (a connect storm would pay a round trip each).
    one = cluster(redis_server.url, "127.0.0.1", "--plugins", "redis,welcome", "--redis-node-timeout", "1")
    two = cluster(redis_server.url, "127.0.0.2", "--plugins", "redis,welcome", "--redis-node-timeout", "1")
    connect(one, "alice")
    connect(one, "amy")
    welcomes = []

    def welcomed_with_everyone() -> bool:
        newcomer = LineClient(two.address, timeout=TIMEOUT)
        try:
            welcomes.append(newcomer.expect(lambda line: line.startswith("* Welcome to chatcore, ")))
        finally:
            newcomer.close()
        return "(3 here)" in welcomes[-1]  # alice and amy on server one, and the newcomer

    wait_for(welcomed_with_everyone, timeout=TIMEOUT, message="a welcome that counts server one's members")
    # Before that, server one's count as its renewals went: alice alone, or no one yet.
    assert all(re.search(r"\(([123]) here\)", text) for text in welcomes), welcomes


def test_irc_names_and_who_list_the_other_servers_members(redis_server, cluster, connect) -> None:
    # An IRC client's nick list is the channel's, not this server's part of it.
    one = cluster(redis_server.url, "127.0.0.1", "--plugins", "redis,irc", "--listen", "irc://127.0.0.1:0")
    two = cluster(redis_server.url, "127.0.0.2")
    bob = connect(two, "bob")
    # bob made the lobby as guest-1; amy's server names its first guest
    # guest-1 too: wait until bob's rename is in the room's state, or amy's
    # server may read the founder's role under the name amy then takes
    # (docs/scaling.md, "Room state": roles are held by nicknames).
    state_settled(redis_server, "lobby", "o:bob")
    amy = connect(one, "amy")
    answered(amy, "/who", "* in lobby (2): amy, bob")  # bob's server has told the cluster
    irc = LineClient(one.addresses["irc"], timeout=TIMEOUT)
    try:
        irc.sock.sendall(b"NICK wendy\r\nUSER wendy 0 * :Wendy\r\nJOIN #lobby\r\n")
        # The names sent with the JOIN, then NAMES and WHO asked.
        assert irc.expect(re.compile(r" 353 wendy = #lobby ")).rstrip("\r").endswith(":amy @bob wendy")
        irc.sock.sendall(b"NAMES #lobby\r\nWHO #lobby\r\n")
        assert irc.expect(re.compile(r" 353 wendy = #lobby ")).rstrip("\r").endswith(":amy @bob wendy")
        who = [irc.expect(re.compile(r" 352 wendy #lobby ")).split()[7] for _ in range(3)]
        assert who == ["amy", "bob", "wendy"]
        irc.expect(re.compile(r" 315 wendy #lobby "))
        # And the other way: the IRC user is in the other server's /who.
        answered(bob, "/who", "* in lobby (3): amy, bob, wendy")
    finally:
        irc.close()


def numerics(client: IRCClient, command: str) -> list[str]:
    """The numerics ``command`` was answered with, without the server's prefix."""
    client.send(command)
    return [said for line in client.sync() if re.match(r"[0-9]{3} ", said := line.partition(" ")[2])]


def who_flags(client: IRCClient, channel: str) -> dict[str, str]:
    """WHO ``channel``'s answer: each member's flags (``H`` here, ``G`` away ...), by nick."""
    return {fields[6]: fields[7] for line in numerics(client, f"WHO {channel}") if (fields := line.split())[0] == "352"}


@pytest.mark.slow
def test_irc_who_whois_and_privmsg_show_who_is_away_on_another_server(redis_server, cluster) -> None:
    # bob is away before anyone on server one shares a channel with him:
    # WHO and WHOIS there learn it from the cluster's presence, not from an
    # AWAY server one never read.
    one = cluster(redis_server.url, "127.0.0.1", "--plugins", "redis,irc", "--listen", "irc://127.0.0.1:0")
    two = cluster(redis_server.url, "127.0.0.2", "--plugins", "redis,irc", "--listen", "irc://127.0.0.1:0")
    bob = ircv3_user(two, "bob", "message-tags", "#lobby")
    wendy = None
    try:
        bob.send("AWAY :at lunch")
        bob.expect(re.compile(r" 306 bob "))
        wendy = ircv3_user(one, "wendy", "message-tags", "#lobby")
        with server_log_on_failure(one):
            wait_for(lambda: who_flags(wendy, "#lobby").get("bob") == "G", timeout=TIMEOUT, message="bob away")
            assert who_flags(wendy, "#lobby")["wendy"] == "H"
            answer = numerics(wendy, "WHOIS BOB")
            assert "311 wendy bob bob chatcore * :chatcore user on another server" in answer
            assert "319 wendy bob @#lobby" in answer  # he made it
            assert "301 wendy bob :at lunch" in answer
            assert answer[-1].startswith("318 wendy bob ")
            # ISON (clients' notify lists) and USERHOST find him there too.
            assert numerics(wendy, "ISON nobody BOB wendy") == ["303 wendy :bob wendy"]
            assert numerics(wendy, "USERHOST bob nobody") == ["302 wendy bob=-bob@chatcore"]
            # A private message to him is answered 301 too, as the cluster
            # last said at a renewal (no round trip per message).
            wait_for(
                lambda: "301 wendy bob :at lunch" in numerics(wendy, "PRIVMSG bob :are you there?"),
                timeout=TIMEOUT,
                message="301 to a PRIVMSG",
            )
            bob.expect(re.compile(r":wendy!\S+ PRIVMSG bob :are you there\?"))
            # Back: H again, and no 301.
            bob.send("AWAY")
            bob.expect(re.compile(r" 305 bob "))
            wait_for(lambda: who_flags(wendy, "#lobby").get("bob") == "H", timeout=TIMEOUT, message="bob back")
            assert not [line for line in numerics(wendy, "WHOIS bob") if line.startswith("301 ")]
            assert numerics(wendy, "USERHOST bob") == ["302 wendy bob=+bob@chatcore"]
            wait_for(
                lambda: not [line for line in numerics(wendy, "PRIVMSG bob :back?") if line.startswith("301 ")],
                timeout=TIMEOUT,
                message="no 301 once he is back",
            )
            # Nobody by that name anywhere: 401, as before.
            assert numerics(wendy, "WHOIS nobody")[0].startswith("401 wendy nobody ")
    finally:
        bob.close()
        if wendy is not None:
            wendy.close()


def test_room_state_as_redis_fields_changes_as_the_engine_does() -> None:
    """The state hash (roomstate) must follow the same events to the same
    state as :class:`Rooms` here: each event's changes, applied as the
    publish script applies them, then read back."""
    rooms = Rooms()
    rooms.install(RoomState.founded("dev", "Alice"))
    fields = state_fields(rooms.get("dev"))  # type: ignore[arg-type]

    def change(event: RoomEvent) -> None:
        rooms.apply(event)
        triples = state_changes(event)
        for op, a, b in zip(triples[::3], triples[1::3], triples[2::3], strict=True):
            if op == "set":
                fields[a] = b
            elif op == "del":
                fields.pop(a, None)
            else:
                for role in "ovi":
                    if fields.pop(f"{role}:{a}", None) is not None:
                        fields[f"{role}:{b}"] = "1"

    change(TopicChanged("dev", nick="alice", topic="Release on Friday", time=5.0))
    arguments = ("k3y", "9", "*!*@10.*", "bob!*@*", "carol")
    change(ModeChanged("dev", nick="alice", modes="+imkl-t+bev", arguments=arguments, time=6.0))
    rooms.invite("dev", "Dan")
    fields["i:dan"] = "1"  # an invitation is written on its own (Presence.moderate)
    change(Joined("dev", nick="Bob"))
    change(NickChanged("dev", nick="carol", new_nick="Caroline"))
    change(ModeChanged("dev", nick="alice", modes="+o-l", arguments=("caroline",), time=7.0))
    change(Left("dev", nick="alice", reason="quit"))
    dropped: list[str] = []
    assert state_from_fields("dev", fields, dropped.append) == rooms.get("dev")
    assert dropped == []
    state = rooms.get("dev")
    assert state is not None
    assert (state.operators, state.voiced, state.invited) == ({"caroline"}, {"caroline"}, {"dan"})
    assert (state.key, state.limit, state.flags) == ("k3y", 0, {"i", "m", "n"})


def test_room_state_from_redis_drops_what_is_not_valid() -> None:
    good = {**state_fields(RoomState.founded("dev", "alice")), "v:guest-1": "1"}  # a guest holds roles too
    bad = {"limit": "²", "key": "has space", "mode:z": "1", "o:Not Folded": "1", "b:not a mask": "x 1", "nope": "1"}
    dropped: list[str] = []
    state = state_from_fields("dev", {**good, **bad, b"bytes": "1"}, dropped.append)
    assert state == RoomState("dev", created=state.created, operators={"alice"}, voiced={"guest-1"}, flags={"n", "t"})
    assert sorted(dropped) == sorted([*bad, "b'bytes'"])


def state_key(redis_server: RedisServer, room: str) -> bool:
    """Whether the cluster keeps ``room``'s state."""
    client = redis_server.client()
    try:
        return bool(client.keys(f"chatcore:*:room:{room}:state"))
    finally:
        client.close()


def state_settled(redis_server: RedisServer, room: str, field: str, present: bool = True) -> None:
    """Wait until the cluster's state of ``room`` has (or lacks) ``field``:
    a change said on one server holds on the others once Redis has it."""

    def settled() -> bool:
        client = redis_server.client()
        try:
            return any(
                bool(client.hexists(key, field)) == present for key in client.keys(f"chatcore:*:room:{room}:state")
            )
        finally:
            client.close()

    wait_for(settled, timeout=TIMEOUT, message=f"{room}'s state to {'have' if present else 'lose'} {field}")


@pytest.mark.slow
def test_a_rooms_state_is_the_clusters(redis_server, cluster, connect) -> None:
    """Topic, modes, lists and operators hold on every server: the room's
    first member anywhere runs it, a ban or +i set on one server keeps
    people out on the other, and the state goes with the last member."""
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    alice, bob, carol = connect(one, "alice"), connect(two, "bob"), connect(two, "carol")
    linked(alice, "alice", [bob, carol])
    alice.send("/join dev")
    alice.expect("* you are now in dev (1 here)")
    alice.send("/mode +i")
    alice.expect("[dev] * alice set mode +i")
    state_settled(redis_server, "dev", "mode:i")
    bob.send("/join dev")
    bob.expect("! dev is invite only: an operator of it must /invite you")
    alice.send("/mode -i+b carol")
    alice.expect("[dev] * alice set mode -i+b carol!*@*")
    alice.send("/topic Release on Friday")
    alice.expect("[dev] * alice set the topic: Release on Friday")
    state_settled(redis_server, "dev", "b:carol!*@*")
    state_settled(redis_server, "dev", "mode:i", present=False)
    carol.send("/join dev")
    carol.expect("! you are banned from dev")
    bob.send("/join dev")
    bob.expect("* you are now in dev (2 here)")
    bob.expect("* topic: Release on Friday (set by alice)")
    bob.send("/topic mine")  # alice made the room, on the other server: bob does not run it
    bob.expect("! only operators of dev set its topic (it is +t)")
    alice.send("/mode +o bob")
    bob.expect("[dev] * alice set mode +o bob")
    bob.send("/mode -b carol")
    alice.expect("[dev] * bob set mode -b carol!*@*")
    state_settled(redis_server, "dev", "b:carol!*@*", present=False)
    carol.send("/join dev")
    carol.expect("* you are now in dev (3 here)")
    carol.expect("* topic: Release on Friday (set by alice)")
    carol.send("/mode")
    carol.expect("* modes of dev: +nt")
    # An operator's kick and invitation reach a member on the other server.
    alice.send("/kick carol spam")
    carol.expect("* you were kicked out of dev by alice (spam)")
    bob.expect("[dev] * carol was kicked out by alice (spam)")
    alice.expect("[dev] * carol was kicked out by alice (spam)")
    alice.send("/mode +i")
    bob.expect("[dev] * alice set mode +i")
    state_settled(redis_server, "dev", "mode:i")
    alice.send("/invite carol dev")
    alice.expect("* invited carol to dev")
    carol.expect("* alice invites you to dev: /join dev")
    carol.send("/join dev")
    carol.expect("* you are now in dev (3 here)")
    # Also to a server where nobody is in the room yet: it reads the invitation.
    dan = connect(two, "dan")
    alice.send("/join private")
    alice.expect("* you are now in private (1 here)")
    alice.send("/mode +i")
    alice.expect("[private] * alice set mode +i")
    state_settled(redis_server, "private", "mode:i")
    dan.send("/join private")
    dan.expect("! private is invite only: an operator of it must /invite you")
    alice.send("/invite dan private")
    dan.expect("* alice invites you to private: /join private")
    dan.send("/join private")
    dan.expect("* you are now in private (2 here)")
    alice.send("/invite nobody-here private")
    alice.expect("! no such nick 'nobody-here'")
    alice.send("/part private")
    alice.expect(re.compile(r"^\* you left private"))
    alice.send("/join dev")
    alice.expect(re.compile(r"^\* you are (now|already) in dev"))
    # Everyone leaves: the state goes, and the next to come makes the room anew.
    for client in (alice, bob, carol):
        client.send("/part dev")
        client.expect("* you left dev; you now talk in lobby")
    wait_for(lambda: not state_key(redis_server, "dev"), timeout=TIMEOUT, message="dev's state to go")
    carol.send("/join dev")
    carol.expect("* you are now in dev (1 here)")
    carol.send("/topic a new dev")
    carol.expect("[dev] * carol set the topic: a new dev")


@pytest.mark.slow
def test_a_change_said_as_another_server_enters_the_room_is_not_lost(redis_server, cluster, connect) -> None:
    """A server reads a room's state as its first member enters, and reads
    the room's stream from its member's Joined: a mode set on another server
    in between (a few milliseconds) must still reach its state (the reader
    catches the state up). Raced many times; every round must end +m."""
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    carol, amy = connect(two, "carol"), connect(one, "amy")
    linked(carol, "carol", [amy])
    for round_ in range(15):
        room = f"race{round_}"
        carol.send(f"/join {room}")
        carol.expect(f"* you are now in {room} (1 here)")
        carol.send("/mode +m")
        amy.send(f"/join {room}")
        carol.expect(f"[{room}] * carol set mode +m")
        amy.expect(re.compile(rf"^\* you are now in {room} "))

        def moderated(room: str = room) -> bool:
            amy.send(f"/mode {room}")
            return amy.expect(re.compile(r"^\* modes of ")) == f"* modes of {room}: +mnt"

        wait_for(moderated, timeout=TIMEOUT, message=f"{room}'s +m on amy's server")


@pytest.mark.slow
def test_a_killed_servers_rooms_state_goes_with_it(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1", "--redis-node-timeout", "1")
    two = cluster(redis_server.url, "127.0.0.2", "--redis-node-timeout", "1")
    alice, bob = connect(one, "alice"), connect(two, "bob")
    linked(alice, "alice", [bob])
    alice.send("/join solo")
    alice.expect("* you are now in solo (1 here)")
    wait_for(lambda: state_key(redis_server, "solo"), timeout=TIMEOUT, message="solo's state")
    assert state_key(redis_server, "lobby")
    one.stop(signal.SIGKILL)
    bob.expect("* alice left (server lost)", timeout=5)
    wait_for(lambda: not state_key(redis_server, "solo"), timeout=TIMEOUT, message="solo's state to go")
    assert state_key(redis_server, "lobby")  # bob's server still holds it


#: The answer to /who or /rooms.
VIEW = re.compile(r"^\* (in \S+ \(\d+\):|\d+ rooms?:)")


def answered(client: LineClient, command: str, match: str | Callable[[str], bool]) -> str:
    """Ask ``command`` (/who, /rooms) until the answer matches: a view of
    the cluster settles within moments of a change."""
    wanted = match if callable(match) else match.__eq__

    def ask() -> str | None:
        client.send(command)
        line = client.expect(VIEW)
        return line if wanted(line) else None

    found: str = wait_for(ask, timeout=TIMEOUT, message=f"{command} to answer {match!r}")
    return found


def guest_nick(client: LineClient) -> str:
    client.send("/me is here")
    return client.expect(re.compile(r"^\* guest-\d+ is here$")).split()[1]


@pytest.mark.slow
def test_two_servers_asking_for_one_nick_at_once_exactly_one_gets_it(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    left, right = connect(one, "left"), connect(two, "right")
    # Rooms of their own, so neither sees the other's renames (nor, out of
    # the lobby, a late lobby notice where the /nick answer is read).
    right.send("/join elsewhere")
    right.expect("* you are now in elsewhere (1 here)")
    left.send("/join another")
    left.expect("* you are now in another (1 here)")
    for client in (left, right):
        client.send("/part lobby")
        client.expect(re.compile(r"^\* you left lobby"))
        client.sync()
    for round_ in range(20):
        nick = f"race{round_}"
        left.send(f"/nick {nick}")
        right.send(f"/nick {nick}")
        answers = [left.readline(), right.readline()]
        won = [answer for answer in answers if answer == f"* you are now known as {nick}"]
        assert len(won) == 1, answers
        assert f"! nickname '{nick}' is taken" in answers


@pytest.mark.slow
def test_a_killed_server_s_users_leave_the_other_servers_rooms(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1", "--redis-node-timeout", "1")
    two = cluster(redis_server.url, "127.0.0.2", "--redis-node-timeout", "1")
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])
    # (Under heavy load bob's server may already have taken alice's for lost
    # once, when it missed renewing its presence for a second.)
    before_kill = len(bob.received)
    one.stop(signal.SIGKILL)
    started = time.monotonic()
    bob.expect("* alice left (server lost)", timeout=5)
    assert time.monotonic() - started < 1 + 1 / 3 + 1  # the timeout, a renewal, and slack
    bob.send("/who")
    bob.expect("* in lobby (1): bob")
    # The name is free again.
    carol = connect(two, "alice")
    carol.send("/who")
    carol.expect("* in lobby (2): alice, bob")
    assert bob.received[before_kill:].count("* alice left (server lost)") == 1


@pytest.mark.slow
def test_a_server_that_was_only_paused_rejoins_its_users_without_ghost_leaves(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1", "--redis-node-timeout", "1")
    two = cluster(redis_server.url, "127.0.0.2", "--redis-node-timeout", "1")
    alice, amy = connect(one, "alice"), connect(one, "amy")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])
    linked(bob, "bob", [alice, amy])
    with server_log_on_failure(one):
        # Paused past the node timeout: the other server takes it for lost.
        one.send_signal(signal.SIGSTOP)
        try:
            gone = {bob.expect(re.compile(r"^\* (alice|amy) left \(server lost\)$"), timeout=TIMEOUT) for _ in "12"}
            assert gone == {"* alice left (server lost)", "* amy left (server lost)"}
            # Meanwhile someone on the other server takes a returning user's name.
            carol = connect(two, "carol")
            carol.send("/nick amy")
            carol.expect("* you are now known as amy")
        finally:
            one.send_signal(signal.SIGCONT)
        one.expect_log(re.compile(r"this server was timed out by the cluster for [\d.]+ s .*its 2 users rejoin"))
        # The other server hears them join again; amy lost her name to carol
        # and comes back as a guest, told why.
        bob.expect("* alice joined")
        guest = amy.expect(
            re.compile(r"someone on another server took the nickname amy: you are now known as guest-\d+")
        )
        guest_name = re.search(r"guest-\d+", guest)
        assert guest_name is not None
        renamed = guest_name.group()
        bob.expect(f"* {renamed} joined")
        alice.expect(f"* amy is now known as {renamed}")
        assert f"* amy is now known as {renamed}" in amy.received  # her own rename, before the notice
        # Chat flows both ways, and the other server's /who lists them again.
        alice.send("still here")
        bob.expect("<alice> still here")
        carol.expect("<alice> still here")
        bob.send("welcome back")
        alice.expect("<bob> welcome back")
        amy.expect("<bob> welcome back")
        answered(bob, "/who", f"* in lobby (4): alice, amy, bob, {renamed}")
        # Their own server never told them the other had left.
        for client in (alice, amy):
            assert not [line for line in client.received if "left (server lost)" in line], client.received
        # The name stays with the one the cluster gave it to.
        alice.send("/msg amy hello")
        carol.expect("*alice* hello")


@pytest.mark.slow
def test_a_clean_stop_says_goodbye_to_the_other_servers(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])
    alice.send("/join alone")
    alice.expect("* you are now in alone (1 here)")
    wait_for(lambda: state_key(redis_server, "alone"), timeout=TIMEOUT, message="alone's state")
    assert one.stop() == 0
    bob.expect("* alice left (server shutting down)")
    redis = redis_server.client()
    try:
        assert redis.keys("chatcore:*:nick:alice") == []
        [nodes] = redis.keys("chatcore:*:nodes")
        assert redis.scard(nodes) == 1
        # A room only that server held goes with it; one that bob's holds stays.
        assert not state_key(redis_server, "alone")
        assert state_key(redis_server, "lobby")
        assert len(redis.keys("chatcore:*:node:*:rooms")) == 1
    finally:
        redis.close()


@pytest.mark.slow
def test_history_is_the_cluster_s(redis_server, cluster, connect) -> None:
    one = cluster(redis_server.url, "127.0.0.1", "--plugins", "redis,history", "--history-lines", "3")
    two = cluster(redis_server.url, "127.0.0.2", "--plugins", "redis,history", "--history-lines", "3")
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])  # (older than the three lines kept)
    for line in ["one", "two", "three"]:
        alice.send(line)
    bob.expect("<alice> three")
    bob.send("/me answers")
    bob.expect("* bob answers")
    alice.expect("* bob answers")
    # carol enters on alice's server, dave on bob's: the same last three, in the order said.
    expected = ["* last 3 messages in lobby:", "# <alice> two", "# <alice> three", "# * bob answers"]
    for process in (one, two):
        newcomer = LineClient(process.address, timeout=TIMEOUT)
        try:
            newcomer.expect(expected[0])
            assert [newcomer.readline() for _ in range(3)] == expected[1:]
        finally:
            newcomer.close()


@pytest.mark.slow
def test_a_line_has_one_message_id_on_every_server_live_and_in_history(redis_server, cluster, connect) -> None:
    """Issue 29: the history on server 2 answers by the message IDs and
    with the times of the lines said on server 1, and the lines reach
    server 2's clients with those IDs too."""
    args = ("--plugins", "redis,history,web", "--listen", "ws://127.0.0.1:0", "--history-room-lines", "lobby=50")
    one = cluster(redis_server.url, "127.0.0.1", *args)
    two = cluster(redis_server.url, "127.0.0.2", *args)
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])
    pages = [WSClient(one.addresses["ws"]), WSClient(two.addresses["ws"])]
    try:
        for page in pages:
            page.expect({"type": "welcome"})
        for number in range(5):
            alice.send(f"said on one {number}")
        live = [[page.expect({"type": "chat", "text": f"said on one {n}"}) for n in range(5)] for page in pages]
        said = [(event["text"], event["msgid"], event["time"]) for event in live[0]]
        assert [(event["text"], event["msgid"], event["time"]) for event in live[1]] == said
        assert live[0][0]["epoch"] != live[1][0]["epoch"]  # each server numbers its own (resumes rely on it)
        # Server 2 answers from the room's stream, by server 1's IDs.
        for page in pages:
            page.send({"type": "history", "room": "lobby", "before": said[4][1], "limit": 3})
            answer = page.expect({"type": "history", "before": said[4][1]})
            assert [(event["text"], event["msgid"], event["time"]) for event in answer["events"]] == said[1:4]
    finally:
        for page in pages:
            page.close()


@pytest.mark.slow
def test_local_chat_is_not_slowed_by_a_stalled_redis(redis_server, cluster, connect) -> None:
    proxy = Proxy(("127.0.0.1", redis_server.port))
    try:
        one = cluster(proxy.url, "127.0.0.1")
        two = cluster(redis_server.url, "127.0.0.2")
        alice, ann = connect(one, "alice"), connect(one, "ann")
        bob = connect(two, "bob")
        linked(alice, "alice", [bob])
        ann.sync()
        proxy.stall()
        started = time.monotonic()
        for i in range(50):
            alice.send(f"local {i}")
            ann.expect(f"<alice> local {i}")
        assert time.monotonic() - started < 0.9  # under --redis-timeout: nothing waited for Redis
        ann.expect(LINK_DOWN)
        proxy.resume()
        ann.expect(LINK_BACK)
        # ... and what was said meanwhile reached the other server, in order.
        seen = [line for line in lines_until(bob, "<alice> local 49") if line.startswith("<alice>")]
        assert seen == [f"<alice> local {i}" for i in range(50)]
    finally:
        proxy.close()


def redis_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("chatcore-redis")]


@pytest.mark.slow
def test_link_drops_leak_no_threads_and_stop_ends_them(redis_server, chat_server_factory, chat_client) -> None:
    proxy = Proxy(("127.0.0.1", redis_server.port))
    try:
        server = chat_server_factory(
            "--plugins", "redis", "--redis-url", proxy.url, "--redis-cluster", "threads", "--redis-timeout", "1"
        )  # fmt: skip
        alice = chat_client(server)
        names = sorted(thread.name for thread in redis_threads())
        assert names == ["chatcore-redis-presence", "chatcore-redis-publisher", "chatcore-redis-reader"]
        for i in range(5):
            proxy.cut()
            alice.send(f"line {i}")
            alice.sync()
        assert sorted(thread.name for thread in redis_threads()) == names
        server.stop(timeout=1.0)
        wait_for(lambda: not redis_threads(), timeout=TIMEOUT, message="the plugin's threads to end")
    finally:
        proxy.close()


@pytest.mark.slow
def test_a_quiet_link_is_not_taken_for_a_broken_one(redis_server, cluster, connect) -> None:
    # The reader's blocking reads must not run into its socket timeout (as
    # they would with redis-py 8's default of 5 s and longer blocks).
    one = cluster(redis_server.url, "127.0.0.1")
    bob = connect(one, "bob")
    with pytest.raises(AssertionError, match="expected a line matching"):
        bob.expect(LINK_DOWN, timeout=2.5)  # over twice --redis-timeout, in silence


@pytest.mark.slow
def test_many_clients_asking_the_cluster_at_once_all_get_answers(redis_server, cluster) -> None:
    # Nick claims and /who run on the client threads: a blocking pool of a
    # few connections serves them all, where the default pool would open one
    # connection per thread (or raise once it has max_connections).
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    clients = [LineClient((one if i % 2 else two).address, timeout=TIMEOUT) for i in range(60)]
    try:
        for i, client in enumerate(clients):
            client.send(f"/nick many{i}")
        for i, client in enumerate(clients):
            client.expect(f"* you are now known as many{i}")
        # The view settles moments after the last rename (each server renews
        # its presence on a thread of its own); then everyone asks at once.
        answered(clients[0], "/who", lambda line: line.startswith("* in lobby (60): "))
        answered(clients[1], "/who", lambda line: line.startswith("* in lobby (60): "))
        for client in clients:
            client.send("/who")
        for client in clients:
            client.expect(re.compile(r"^\* in lobby \(60\): "))
        redis = redis_server.client()
        try:
            shared = [c for c in redis.client_list() if c.get("name", "").endswith("-shared")]
        finally:
            redis.close()
        assert len(shared) <= 2 * 8
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--redis-url", "http://user:hunter2@host/"], "--redis-url: 'http://user:***@host/' is not a Redis URL"),
        (["--redis-cluster", "a b"], "--redis-cluster: 'a b' is not a valid name"),
        (["--redis-timeout", "0"], "argument --redis-timeout: 0.0 is out of range (must be from 0.1 to 60)"),
        (["--redis-sentinel", "127.0.0.1:26379"], "--redis-sentinel needs --redis-sentinel-master NAME"),
        (["--redis-sentinel-master", "main"], "--redis-sentinel-master is for a Sentinel-managed primary"),
        (["--redis-sentinel-password", "hunter2"], "--redis-sentinel-password is for a Sentinel-managed primary"),
        (
            ["--redis-sentinel", "127.0.0.1:26379,db:x", "--redis-sentinel-master", "main"],
            "--redis-sentinel: 'db:x' is not HOST:PORT",
        ),
        (["--redis-sentinel", "::1:26379", "--redis-sentinel-master", "m"], "--redis-sentinel: '::1:26379' is not"),
        (
            ["--redis-sentinel", "user:hunter2@db:26379", "--redis-sentinel-master", "main"],
            "--redis-sentinel takes HOST:PORT[,HOST:PORT...] only",
        ),
        (
            ["--redis-sentinel", "db:26379", "--redis-sentinel-master", "a b"],
            "--redis-sentinel-master: 'a b' is not a valid name",
        ),
        (
            ["--redis-sentinel", "db:26379", "--redis-sentinel-master", "m", "--redis-url", "unix:///tmp/r.sock"],
            "a unix:// socket cannot be used with --redis-sentinel",
        ),
    ],
)
def test_bad_options_are_usage_errors_without_the_password(args, error) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--port", "0", "--plugins", "redis", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert error in result.stderr
    assert "hunter2" not in result.stderr


def test_the_sentinel_password_is_a_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--plugins", "redis", "--print-config"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={
            **os.environ,
            "CHATCORE_REDIS_SENTINEL": "127.0.0.1:26379,[::1]:26380",
            "CHATCORE_REDIS_SENTINEL_MASTER": "main",
            "CHATCORE_REDIS_SENTINEL_PASSWORD": "hunter2",
        },
    )
    assert result.returncode == 0, result.stderr
    assert 'redis-sentinel = "127.0.0.1:26379,[::1]:26380"' in result.stdout
    assert "# redis-sentinel-password: secret, set; not shown" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


#: A node id no server has: what a forged or foreign entry claims to come from.
FOREIGN_NODE = "0badc0ffee00"


def forge(redis_server: RedisServer, room: str, fields: dict[str, object], *, place: bool = True) -> None:
    """Append to ``room``'s stream what a broken or hostile writer might:
    ``fields`` over a version 1 entry from :data:`FOREIGN_NODE`, with the
    room's epoch and next offset (so no gap is told) unless ``place`` is false."""
    client = redis_server.client()
    try:
        [stream] = client.keys(f"chatcore:*:room:{room}:stream")
        meta = stream.removesuffix(":stream") + ":meta"
        entry: dict[str, object] = {"v": "1", "node": FOREIGN_NODE}
        if place:
            entry.update(epoch=client.hget(meta, "epoch"), offset=client.hincrby(meta, "offset", 1))
        entry.update(fields)
        client.xadd(stream, entry)
    finally:
        client.close()


def chat_json(**fields: object) -> str:
    return json.dumps({"type": "Chat", "room": "lobby", **fields})


def scrape(port: int, name: str) -> float:
    """The value of the metric ``name`` (without labels) at the metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
        text = response.read().decode()
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def watched_server(redis_server: RedisServer, cluster: Callable[..., ServerProcess]) -> tuple[ServerProcess, int]:
    """A server of the cluster with an IRC listener and metrics; the metrics port."""
    metrics = free_port()
    process = cluster(
        redis_server.url, "127.0.0.1", "--plugins", "redis,irc,metrics",
        "--listen", "irc://127.0.0.1:0", "--metrics-port", str(metrics),
    )  # fmt: skip
    return process, metrics


def irc_user(process: ServerProcess, nick: str) -> LineClient:
    """An IRC client registered as ``nick``, in #lobby."""
    irc = LineClient(process.addresses["irc"], timeout=TIMEOUT)
    irc.sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\nJOIN #lobby\r\n".encode())
    irc.expect(re.compile(rf" 366 {nick} #lobby "))
    return irc


@pytest.mark.slow
def test_an_event_a_node_published_twice_is_delivered_once(redis_server, cluster, connect) -> None:
    # A Sentinel switchover: a publisher's batch that failed on the old
    # primary is sent again to the new one, where it is added again with
    # the same node number ('seq'). The reader delivers each (room, node)
    # number once, in order, whatever the stream holds.
    one = cluster(redis_server.url, "127.0.0.1")
    alice = connect(one, "alice")
    # This server reads the room from alice's arrival on (she arrives under her nick: her first line named her).
    wait_for(lambda: last_event(redis_server, "lobby").get("nick") == "alice", timeout=TIMEOUT)
    for seq, text in [(5, "one"), (5, "one again"), (4, "an older one"), (6, "two"), (6, "two again")]:
        forge(redis_server, "lobby", {"seq": str(seq), "event": chat_json(nick="mallory", text=text)})
    forge(redis_server, "lobby", {"event": chat_json(nick="mallory", text="three, without a number")})
    alice.expect("<mallory> three, without a number")
    assert [line for line in alice.received if line.startswith("<mallory> ")] == [
        "<mallory> one",
        "<mallory> two",
        "<mallory> three, without a number",
    ]


@pytest.mark.slow
def test_malformed_stream_entries_are_dropped_and_counted_and_the_room_flows_on(redis_server, cluster, connect):
    # Issue 23, item 6: an entry whose nick was a number made the IRC encoder
    # raise in the publish path, and the room's native feed on that server
    # was never written again.
    one, metrics = watched_server(redis_server, cluster)
    alice = connect(one, "alice")
    wendy = irc_user(one, "wendy")
    try:
        alice.expect("* wendy joined")
        # This server reads the room from alice's join on: what follows it is read.
        wait_for(
            lambda: last_event(redis_server, "lobby").get("nick") == "wendy", timeout=TIMEOUT, message="wendy's join"
        )
        with server_log_on_failure(one):
            forge(redis_server, "lobby", {"event": chat_json(nick=42, text="a number for a nick")})
            forge(redis_server, "lobby", {})  # no event at all
            forge(redis_server, "lobby", {"event": chat_json(nick="mallory")})  # no text
            forge(
                redis_server,
                "lobby",
                {"event": chat_json(nick="mal\r\n:admin!admin@chatcore PRIVMSG #lobby :x", text="hi")},
            )
            forge(redis_server, "lobby", {"event": chat_json(nick="mallory", text="x" * 100_000)})
            forge(redis_server, "lobby", {"event": b'{"type":"Chat","room":"lobby","nick":"mal\xfflory","text":"hi"}'})
            forge(redis_server, "lobby", {"event": chat_json(nick="mallory", text="no place")}, place=False)
            forge(redis_server, "lobby", {"event": chat_json(nick="mallory", text="one\r\ntwo\x00three\x1b[2J")})
            # Sanitised like a client's own line: no control characters, no forged IRC line.
            alice.expect("<mallory> onetwothree")
            said = wendy.expect(re.compile("PRIVMSG #lobby :")).rstrip("\r")
            assert said.endswith(" PRIVMSG #lobby :onetwothree")
            # Chat goes on, both ways, on both front-ends, and for a newcomer.
            alice.send("still here")
            wendy.expect(re.compile(r"^:alice!\S+ PRIVMSG #lobby :still here"))
            wendy.sock.sendall(b"PRIVMSG #lobby :me too\r\n")
            alice.expect("<wendy> me too")
            carol = connect(one, "carol")
            alice.send("welcome carol")
            carol.expect("<alice> welcome carol")
            wendy.expect(re.compile(r"PRIVMSG #lobby :welcome carol"))
            forge(redis_server, "lobby", {"event": chat_json(nick="mallory", text="the end")})
            for native in (alice, carol):
                native.expect("<mallory> the end")
            wendy.expect(re.compile(r"^:mallory!\S+ PRIVMSG #lobby :the end"))
            # Each dropped entry counted; the log says so once, not once per entry.
            assert scrape(metrics, "chatcore_redis_invalid_entries_total") == 7
            one.expect_log(re.compile(r"dropped room lobby entry \S+ from the cluster: nick is not a str"))
            assert "dropped room lobby entry" not in one.stderr.split("nick is not a str", 1)[1]
    finally:
        wendy.close()


@pytest.mark.slow
def test_malformed_presence_and_private_messages_are_dropped_and_counted(redis_server, cluster, connect):
    one, metrics = watched_server(redis_server, cluster)
    alice = connect(one, "alice")
    redis = redis_server.client()
    try:
        [node] = redis.smembers(next(iter(redis.keys("chatcore:*:nodes"))))
        prefix = f"chatcore:{one.args[one.args.index('--redis-cluster') + 1]}:"
        # A server that says its members are a CR/LF nick and a nick in a CR/LF room.
        redis.set(f"{prefix}node:{FOREIGN_NODE}", "1")
        redis.sadd(f"{prefix}nodes", FOREIGN_NODE, "not\r\na node")
        redis.hset(
            f"{prefix}node:{FOREIGN_NODE}:members",
            mapping={"carl": "lobby", "evil\r\nnick": "lobby", "bob": "lobby\r\nx"},
        )
        # ... and whose away messages forge IRC lines, or are too long for one.
        redis.hset(f"{prefix}node:{FOREIGN_NODE}:away", mapping={"carl": "out\r\nQUIT :x", "alice": "x" * 5000})
        answered(alice, "/who", "* in lobby (2): alice, carl")
        wendy = irc_user(one, "wendy")
        try:
            wendy.sock.sendall(b"NAMES #lobby\r\n")
            names = wendy.expect(re.compile(r" 353 wendy = #lobby ")).rstrip("\r")
            assert names.endswith(":@alice carl wendy")
            wendy.sock.sendall(b"WHOIS carl\r\n")
            assert wendy.expect(re.compile(r" 301 wendy carl ")).endswith(" 301 wendy carl :outQUIT :x\r")
        finally:
            wendy.close()
        inbox = f"{prefix}node:{node}:inbox"
        # Operators' actions that are not what they claim: never applied.
        for action in [
            {"type": "Moderation", "action": "ban", "network": "0.0.0.0/0", "by": 42},
            {"type": "Moderation", "action": "ban", "network": "everyone", "by": "mallory"},
            {"type": "Moderation", "action": "kick", "by": "mallory"},
        ]:
            redis.xadd(f"{prefix}moderation", {"v": "1", "node": FOREIGN_NODE, "event": json.dumps(action)})
        for message in [
            {"type": "PrivateMessage", "sender": "x\r\ny", "recipient": "alice", "text": "forged"},
            {"type": "PrivateMessage", "sender": 7, "recipient": "alice", "text": "a number"},
            {"type": "PrivateMessage", "sender": "mallory", "recipient": "alice"},
            {"type": "PrivateMessage", "sender": "mallory", "recipient": "alice", "text": "psst\r\n\x1b[2J!"},
        ]:
            redis.xadd(inbox, {"v": "1", "node": FOREIGN_NODE, "event": json.dumps(message)})
        alice.expect("*mallory* psst!")
        alice.sync()  # not banned, not kicked
        # Three actions, three private messages; the member lists once per look (/who, NAMES ...).
        wait_for(lambda: scrape(metrics, "chatcore_redis_invalid_entries_total") >= 3 + 3 + 3, timeout=TIMEOUT)
    finally:
        redis.close()


def _refused(address: tuple[str, int], source: str) -> list[str]:
    """What a client from ``source`` is told before the server closes, or
    ``[]`` if it is welcomed (and then closed by us)."""
    client = LineClient(address, source=source)
    try:
        client.sync()
    except AssertionError:
        return client.received
    finally:
        client.close()
    return []


@pytest.mark.slow
def test_a_server_started_while_redis_is_down_takes_the_clusters_bans_when_it_answers(redis_server, cluster, tmp_path):
    """The bans and mutes live in the cluster's state store (issue 28): a
    server that starts while Redis cannot be reached starts all the same,
    and puts the stored bans in force once Redis answers (not through the
    moderation stream: this ban was never said there)."""
    bans = tmp_path / "bans.json"
    ban = {"network": "127.0.0.3/32", "until": None, "reason": "from the store", "by": "x"}
    bans.write_text(json.dumps({"bans": [ban], "mutes": []}))
    two = cluster(redis_server.url, "127.0.0.1", "--bans-file", str(bans))  # copies it into the store
    assert _refused(two.address, "127.0.0.3") == ["! you are banned from this server: from the store"]
    proxy = Proxy(("127.0.0.1", redis_server.port))
    try:
        proxy.partition()  # Redis refuses this server's connections
        one = cluster(proxy.url, "127.0.0.1")
        one.expect_log(re.compile(r"the bans and mutes in the state store cannot be read .*trying again in 1s"))
        assert _refused(one.address, "127.0.0.3") == []  # not known here yet
        proxy.heal()
        one.expect_log(re.compile("the bans and mutes in the state store are read, and in force"), timeout=30)
        assert _refused(one.address, "127.0.0.3") == ["! you are banned from this server: from the store"]
    finally:
        proxy.close()


@pytest.mark.slow
def test_an_operator_kicks_mutes_and_bans_users_on_another_server(redis_server, cluster, connect, tmp_path):
    # Issue 23, item 5: an operator on one server could not touch a user on
    # another ("no such nick", though /who listed them), and a ban left the
    # address connected to and connecting to the other servers.
    opers_file = tmp_path / "opers"
    opers_file.write_text("root hunter2\n")
    one = cluster(redis_server.url, "127.0.0.1", "--opers-file", str(opers_file))
    two = cluster(redis_server.url, "127.0.0.1")
    op = connect(one, "op")
    # bob from an address of his own: a mute holds the address too.
    bob, carol = connect(two, "bob", source="127.0.0.3"), connect(two, "carol")
    with server_log_on_failure(two):
        linked(bob, "bob", [op])
        linked(op, "op", [bob, carol])
        op.send("/oper root hunter2")
        op.expect("* you are now an operator (root)")

        op.send("/mute bob 5m")
        op.expect("* muted bob for 5m")
        bob.expect(re.compile(r"^\* you are muted by an operator for (5m|29\ds)$"))
        bob.send("muted words")
        bob.expect(re.compile(r"^! you are muted by an operator for "))
        carol.send("after the mute")
        assert "<bob> muted words" not in lines_until(op, "<carol> after the mute")
        op.send("to carol")
        assert "<bob> muted words" not in lines_until(carol, "<op> to carol")

        op.send("/kill bob spamming")
        # Two sources, no order between them: op's server says the kick went
        # out once Redis took it, and bob's server may have carried it out and
        # its leave come back before that (op then reads the leave first).
        op.expect_all("* bob is on another server: kick sent there", "* bob left (kicked by op: spamming)")
        assert bob.wait_closed()[-1] == "! disconnected: kicked by op: spamming"
        carol.expect("* bob left (kicked by op: spamming)")
        two.expect_log(re.compile(r"operator root \(op\) kicked bob from 127\.0\.0\.3: spamming"))

        dave = connect(two, "dave", source="127.0.0.2")
        op.expect(lambda line: line == "* dave joined" or line.endswith(" is now known as dave"))
        op.send("/ban 127.0.0.2 flooding")
        op.expect("* banned 127.0.0.2/32 forever")
        assert dave.wait_closed()[-1] == "! disconnected: banned by op: flooding"
        carol.expect("* dave left (banned by op: flooding)")
        refused = LineClient(two.address, timeout=TIMEOUT, source="127.0.0.2")
        try:
            assert refused.wait_closed() == ["! you are banned from this server: flooding"]
        finally:
            refused.close()
        # A server that starts later applies the bans and mutes in force, and replays no kick.
        three = cluster(redis_server.url, "127.0.0.1")
        bob = connect(three, "bob", source="127.0.0.3")
        linked(op, "op", [bob])
        bob.send("back again")
        bob.expect(re.compile(r"^! you are muted by an operator for "))
        op.send("/unmute bob")
        op.expect("* unmuted bob")
        bob.expect("* you are no longer muted")
        linked(bob, "bob", [op])
        refused = LineClient(three.address, timeout=TIMEOUT, source="127.0.0.2")
        try:
            assert refused.wait_closed() == ["! you are banned from this server: flooding"]
        finally:
            refused.close()
        # Lifted everywhere too.
        op.send("/unban 127.0.0.2")
        op.expect("* unbanned 127.0.0.2/32")
        two.expect_log(re.compile(r"operator root \(op\) on another server lifted the ban on 127\.0\.0\.2/32"))
        connect(two, "dave", source="127.0.0.2")
        # A nick on no server is still no such nick.
        op.send("/kill nobody-at-all")
        op.expect("! no such nick 'nobody-at-all'")


@pytest.mark.slow
def test_the_cluster_s_history_shows_no_stream_numbering(redis_server, chat_server_factory, chat_client) -> None:
    """Replayed lines keep their time but carry no identity from the Redis
    stream (issue 22, bug 2: a web page saw the stream's epoch in the
    replay and its server's in live lines, and told its user the server had
    restarted)."""
    args = ("--plugins", "redis,history", "--redis-url", redis_server.url, "--redis-cluster", "bug2")
    server = chat_server_factory(*args)
    alice = chat_client(server)
    alice.send("/nick alice")
    alice.expect("* you are now known as alice")
    alice.send("kept by the cluster")
    alice.sync()
    wait_for(lambda: server.backplane.history("lobby", 5), message="the line in the room's stream")
    [kept] = server.backplane.history("lobby", 5)
    assert (kept.text, kept.epoch, kept.offset) == ("kept by the cluster", "", 0)
    assert kept.time > 0


@pytest.mark.slow
def test_irc_operators_kick_and_kill_and_a_ban_by_nick_reach_another_server(redis_server, cluster, connect, tmp_path):
    """Moderation across a cluster in every front-end (issue 23, item 5):
    IRC's KICK and KILL of a user on another server, and /ban NICK of one,
    which bans that user's address on every server."""
    opers_file = tmp_path / "opers"
    opers_file.write_text("root hunter2\n")
    one = cluster(redis_server.url, "127.0.0.1", "--plugins", "redis,irc", "--listen", "irc://127.0.0.1:0",
                  "--opers-file", str(opers_file))  # fmt: skip
    two = cluster(redis_server.url, "127.0.0.1")
    carol = connect(two, "carol")
    bob = connect(two, "bob", source="127.0.0.3")
    eve = connect(two, "eve", source="127.0.0.4")
    with server_log_on_failure(two):
        irc_address = one.addresses["irc"]
        op = LineClient(irc_address, timeout=TIMEOUT)
        try:
            op.send("NICK op")
            op.send("USER op 0 * :Operator")
            op.send("JOIN #lobby")
            op.expect(re.compile(r"^:\S+ 366 op #lobby "))
            op.send("OPER root hunter2")
            op.expect(re.compile(r"^:\S+ 381 op "))
            # A channel KICK across servers: bob's server carries it out, and
            # bob stays connected; the operator's channel sees the KICK.
            op.send("KICK #lobby bob :spamming")
            bob.expect("* you were kicked out of lobby by op (spamming)")
            op.expect(re.compile(r"^:op!op@chatcore KICK #lobby bob :spamming"))
            carol.expect("* bob was kicked out by op (spamming)")
            bob.send("/join lobby")
            bob.expect(re.compile(r"^\* you are now in lobby "))
            carol.expect("* bob joined")
            op.send("KILL bob :spamming")
            assert bob.wait_closed()[-1] == "! disconnected: kicked by op: spamming"
            carol.expect(re.compile(r"^\* bob left"))
            op.send("KILL eve :gone")
            assert eve.wait_closed()[-1] == "! disconnected: kicked by op: gone"
            op.send("KICK #lobby nobody-at-all")
            op.expect(re.compile(r"^:\S+ 401 op nobody-at-all "))
        finally:
            op.close()
        # /ban NICK of a user on another server: that server knows the address, and bans it everywhere.
        native_op = connect(one, "nop")
        native_op.send("/oper root hunter2")
        native_op.expect("* you are now an operator (root)")
        dave = connect(two, "dave", source="127.0.0.5")
        linked(native_op, "nop", [dave])
        native_op.send("/ban dave 1h flooding")
        native_op.expect("* dave is on another server: ban sent there")
        assert dave.wait_closed()[-1] == "! disconnected: banned by nop: flooding"
        # The operator's own server has the ban once the other server sent it the address.
        one.expect_log(re.compile(r"on another server banned 127\.0\.0\.5/32: flooding"))
        for server in (one, two):
            refused = LineClient(server.address, timeout=TIMEOUT, source="127.0.0.5")
            try:
                refused.wait_closed()
                assert refused.received == ["! you are banned from this server: flooding"]
            finally:
                refused.close()


@pytest.mark.slow
def test_an_operator_whose_join_is_still_on_its_way_to_redis_hears_its_kick_done_elsewhere(
    redis_server, cluster, connect, chat_server_factory, tmp_path
) -> None:
    """The operator's Joined goes to the room's stream through the
    publisher's queue, and its server reads the room from there on; the kick
    went to the other server at once, so the kicked one's leave could reach
    the stream first and never the operator (the IRC test above, in CI
    under load). Here the operator's Joined is held back until the leave is
    in the stream, or a second: a kick now waits for what was said before it."""
    opers_file = tmp_path / "opers"
    opers_file.write_text("root hunter2\n")
    two = cluster(redis_server.url, "127.0.0.2")
    name = two.args[two.args.index("--redis-cluster") + 1]  # in-process: its publisher is at hand
    one = chat_server_factory(
        "--plugins", "redis", "--redis-url", redis_server.url, "--redis-cluster", name, "--opers-file", str(opers_file)
    )  # fmt: skip
    bob = connect(two, "bob")
    publisher = one.backplane.cluster.publisher  # type: ignore[attr-defined]
    send = publisher._send
    admin = redis_server.client()

    def kicked_in_stream() -> bool:
        return any(
            '"kicked_by":"op"' in entry["event"] for _id, entry in admin.xrange(publisher.cluster.keys.stream("lobby"))
        )

    def held_back(client, script, exit_script, keep_script, batch):  # type: ignore[no-untyped-def]
        if any(item.placing and item.room == "lobby" for item in batch):  # the operator's Joined
            deadline = time.monotonic() + 1.0
            while not kicked_in_stream() and time.monotonic() < deadline:
                time.sleep(0.01)
        return send(client, script, exit_script, keep_script, batch)

    publisher._send = held_back  # this server's alone, stopped after the test
    op = LineClient(one.address, timeout=TIMEOUT)
    try:
        op.send("/nick op")
        op.expect("* you are now known as op")
        op.send("/oper root hunter2")
        op.expect("* you are now an operator (root)")
        op.send("/kick bob spamming")
        bob.expect("* you were kicked out of lobby by op (spamming)")
        op.expect("* bob was kicked out by op (spamming)")
    finally:
        op.close()
        admin.close()


def test_memberships_modes_and_quits_of_many_rooms_span_the_cluster(redis_server, cluster, connect) -> None:
    # Issue 24: a person in several rooms is listed in each on every server,
    # a room's mode change holds on the other servers, and a quit is told to
    # someone who shares two rooms with them once.
    one = cluster(redis_server.url, "127.0.0.1")
    two = cluster(redis_server.url, "127.0.0.2")
    alice = connect(one, "alice")
    bob = connect(two, "bob")
    linked(alice, "alice", [bob])
    alice.send("/join dev")
    alice.expect(re.compile(r"^\* you are now in dev "))
    bob.send("/join dev")
    bob.expect(re.compile(r"^\* you are now in dev "))
    answered(bob, "/who lobby", "* in lobby (2): alice, bob")
    answered(bob, "/who dev", "* in dev (2): alice, bob")
    alice.send("/mode +m")  # alice made dev on her server: she runs it there
    alice.expect("[dev] * alice set mode +m")
    bob.expect("[dev] * alice set mode +m")
    bob.send("/mode")  # the change is applied on bob's server before it is shown there
    bob.expect("* modes of dev: +mnt")
    alice.send("/quit")
    bob.expect(re.compile(r"\* alice left"))
    assert not [line for line in bob.sync() if "alice left" in line]  # once, not once per room


@pytest.mark.slow
def test_a_join_whose_reply_was_lost_is_found_in_the_stream_and_no_gap_is_told(
    redis_server, cluster, connect, chat_server_factory
) -> None:
    """Issue 25, item 6: a room's members were told ``* messages from other
    servers may be missing here`` when nothing was. A server's first member
    in a room is read from its Joined's place in the stream; when the reply
    saying where it went was lost (the link dropped after Redis ran the
    publish), the retry is answered "a repeat" only, and the reader started
    at the stream's top and told of a possible gap, although nothing had
    been said in between. Now the Joined is found in the stream by its
    server and number: no gap, and nothing said after it is skipped.

    The lost reply is made exactly: the Joined the server is about to
    publish is put in Redis first, as its lost attempt did, with its node
    and number, so the publisher's own send is the retry."""
    from chatcore.events import Joined
    from chatcore.plugins.redis.codec import encode_event
    from chatcore.plugins.redis.scripts import PUBLISH_LUA

    two = cluster(redis_server.url, "127.0.0.2")
    name = two.args[two.args.index("--redis-cluster") + 1]  # in-process: its publisher is at hand
    one = chat_server_factory("--plugins", "redis", "--redis-url", redis_server.url, "--redis-cluster", name)
    alice = connect(two, "alice")
    carol = LineClient(one.address, timeout=TIMEOUT)
    try:
        carol.send("/nick carol")
        carol.expect("* you are now known as carol")
        linked(alice, "alice", [carol])
        alice.send("/join dev")
        alice.expect(re.compile(r"^\* you are now in dev "))
        carol.sync()
        cluster_one = one.backplane.cluster  # type: ignore[attr-defined]
        publisher = cluster_one.publisher
        wait_for(lambda: publisher._seq >= 1 and publisher.waiting() == 0, timeout=TIMEOUT)  # carol's join of lobby
        seq = publisher._seq + 1  # the number of carol's Joined in dev, the next event said here
        joined = Joined("dev", nick="carol", user="carol", time=time.time())
        keys = cluster_one.keys
        client = redis_server.client()
        try:
            placed = client.register_script(PUBLISH_LUA)(
                keys=[keys.meta("dev"), keys.stream("dev")],
                args=[cluster_one.node, seq, encode_event(joined), 1000, "unused", joined.msgid],
            )
        finally:
            client.close()
        assert placed != 0
        carol.send("/join dev")
        carol.expect(re.compile(r"^\* you are now in dev "))
        # Its Joined (queued maybe just after the answer) was the retry that Redis called a repeat.
        wait_for(lambda: publisher._seq == seq and publisher.waiting() == 0, timeout=TIMEOUT)
        alice.send("said in dev after carol came")
        carol.expect("[dev] <alice> said in dev after carol came")
        carol.sync()
        assert not [line for line in carol.received if "may be missing" in line], carol.received
    finally:
        carol.close()


# -- IRCv3 notifications across servers ---------------------------------------------

NOTIFY_CAPS = "message-tags server-time away-notify setname invite-notify account-notify"


def ircv3_user(process: ServerProcess, nick: str, caps: str, channels: str) -> IRCClient:
    """An IRC client on ``process`` that enabled ``caps`` and joined ``channels``."""
    client = IRCClient(process.addresses["irc"], timeout=TIMEOUT)
    client.send("CAP LS 302")
    client.send(f"CAP REQ :{caps}")
    client.expect(f":chatcore CAP * ACK :{caps}")
    client.send(f"NICK {nick}")
    client.send(f"USER {nick} 0 * :The real {nick}")
    client.send("CAP END")
    client.expect(re.compile(f" 001 {nick} "))
    for name in channels.split(","):
        client.send(f"JOIN {name}")
        client.expect(re.compile(f" 366 {nick} {name} "))
    return client


def irc_linked(sender: IRCClient, nick: str, channel: str, receivers: Sequence[IRCClient]) -> None:
    """Wait until what ``sender`` says in ``channel`` reaches each receiver on the other server."""
    for receiver in receivers:
        for attempt in range(100):
            sender.send(f"PRIVMSG {channel} :probe {attempt}")
            try:
                receiver.expect(re.compile(rf":{nick}!\S+ PRIVMSG {channel} :probe "), timeout=0.1)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"{channel} never linked up")


def told(client: IRCClient, pattern: str) -> list[str]:
    """The lines ``client`` received so far that match ``pattern``, without their tags."""
    lines = [line.partition(" ")[2] if line[:1] == "@" else line for line in client.received]
    return [line for line in lines if re.search(pattern, line)]


@pytest.mark.slow
def test_ircv3_notifications_reach_the_other_servers_once(redis_server, cluster) -> None:
    """TAGMSG to a nick, AWAY (away-notify, also after a JOIN), SETNAME,
    ACCOUNT and INVITE (invite-notify, to the channel's operators) cross the cluster
    (issue 29): as room events and private messages do, each once to someone
    who shares two channels with the person."""
    one = cluster(redis_server.url, "127.0.0.1", "--plugins", "redis,irc,accounts", "--listen", "irc://127.0.0.1:0")
    two = cluster(redis_server.url, "127.0.0.2", "--plugins", "redis,irc,accounts", "--listen", "irc://127.0.0.1:0")
    clients: list[IRCClient] = []
    try:
        alice = ircv3_user(one, "alice", NOTIFY_CAPS, "#lobby,#dev")  # she makes both: their operator
        clients.append(alice)
        bob = ircv3_user(two, "bob", NOTIFY_CAPS, "#lobby,#dev")
        clients.append(bob)
        plain = ircv3_user(two, "plain", "message-tags", "#lobby,#dev")  # asked for none of the notifications
        clients.append(plain)
        for channel in ("#lobby", "#dev"):
            irc_linked(alice, "alice", channel, [bob, plain])
        with server_log_on_failure(two):
            # TAGMSG to a nick on another server, and a PRIVMSG's tags.
            alice.send("@+typing=active TAGMSG bob")
            typing = bob.expect(re.compile(r":alice!alice@chatcore TAGMSG bob$"))
            assert tags_of(typing)["+typing"] == "active"
            alice.send("@+draft/reply=x PRIVMSG bob :hello")
            hello = bob.expect(re.compile(r":alice!alice@chatcore PRIVMSG bob :hello$"))
            assert tags_of(hello)["+draft/reply"] == "x"
            # AWAY and back, SETNAME: bob shares two channels with alice.
            alice.send("AWAY :at lunch")
            alice.expect(re.compile(r" 306 alice "))
            bob.expect(re.compile(r":alice!alice@chatcore AWAY :at lunch$"))
            alice.send("SETNAME :Alice Liddell")
            bob.expect(re.compile(r":alice!alice@chatcore SETNAME :Alice Liddell$"))
            alice.send("AWAY")
            bob.expect(re.compile(r":alice!alice@chatcore AWAY$"))
            # INVITE: alice makes bob an operator of #dev; the invitation is
            # told to him, not to the member who is none.
            alice.send("MODE #dev +o bob")
            bob.expect(re.compile(r":alice!alice@chatcore MODE #dev \+o bob$"))
            carol = ircv3_user(two, "carol", "message-tags", "#elsewhere")
            clients.append(carol)
            alice.send("INVITE carol #dev")
            alice.expect(re.compile(r" 341 alice carol #dev"))
            carol.expect(re.compile(r":alice!alice@chatcore INVITE carol #dev$"))
            bob.expect(re.compile(r":alice!alice@chatcore INVITE carol #dev$"))
            # A native user on alice's server logs in to an account: ACCOUNT (account-notify).
            dana = LineClient(one.address, timeout=TIMEOUT)
            dana.send("/nick dana")
            dana.expect("* you are now known as dana")
            bob.expect(re.compile(r":dana!dana@chatcore JOIN #lobby$"))
            dana.send("/register correct-horse")
            dana.expect(re.compile(r"^\* .*registered"))
            bob.expect(re.compile(r":dana!dana@chatcore ACCOUNT dana$"))
            dana.close()
            # An away user entering a channel: JOIN, then AWAY.
            bob.send("JOIN #third")
            bob.expect(re.compile(r" 366 bob #third "))
            # bob hears of the joins after his own in the cluster's order, and
            # his own reaches Redis just after he is told it (the publisher's
            # queue): alice enters once it has, or hers may come before it.
            assert wait_for(lambda: joined_in_stream(redis_server, "third", "bob"), TIMEOUT)
            alice.send("AWAY :back soon")
            alice.send("JOIN #third")
            alice.expect(re.compile(r" 366 alice #third "))
            irc_linked(alice, "alice", "#third", [bob])
            joined = told(bob, r"^:alice!alice@chatcore (JOIN #third|AWAY :back soon)$")
            # Once each: what alice says in each channel now comes after any second copy.
            for channel in ("#lobby", "#dev", "#third"):
                alice.send(f"PRIVMSG {channel} :last")
                bob.expect(re.compile(rf":alice!\S+ PRIVMSG {channel} :last$"))
            plain.expect(re.compile(r":alice!\S+ PRIVMSG #dev :last$"))
            assert len(told(bob, r"TAGMSG bob$")) == 1
            assert len(told(bob, r"AWAY :at lunch$")) == 1
            assert len(told(bob, r"SETNAME :Alice Liddell$")) == 1
            assert len(told(bob, r"AWAY$")) == 1
            assert len(told(bob, r"INVITE carol #dev$")) == 1
            # The AWAY (through #lobby), and again after the JOIN of #third.
            assert joined[-2:] == [":alice!alice@chatcore JOIN #third", ":alice!alice@chatcore AWAY :back soon"]
            assert len(told(bob, r"AWAY :back soon$")) == 2
            assert len(told(bob, r"ACCOUNT dana$")) == 1
            assert not told(plain, r" (AWAY|SETNAME|INVITE|ACCOUNT)\b")
    finally:
        for client in clients:
            client.close()


# -- CHATHISTORY across the cluster (issue 29) ------------------------------------------

CHATHISTORY_CAPS = "batch draft/chathistory echo-message message-tags server-time"


@pytest.fixture
def irc_in() -> Iterator[Callable[..., IRCClient]]:
    """``irc_in(process, nick, join="#lobby")``: a registered IRC client on
    ``process`` with CHATHISTORY_CAPS, in ``join``; closed at teardown."""
    clients: list[IRCClient] = []

    def make(process: ServerProcess, nick: str, join: str = "#lobby") -> IRCClient:
        client = IRCClient(process.addresses["irc"], timeout=TIMEOUT)
        clients.append(client)
        client.send(f"CAP REQ :{CHATHISTORY_CAPS}")
        client.send(f"NICK {nick}")
        client.send(f"USER {nick} 0 * :{nick}")
        client.send("CAP END")
        client.expect(re.compile(f" 001 {nick} "))
        if join:
            client.send(f"JOIN {join}")
            client.expect(re.compile(f" 366 {nick} {join} "))
            client.sync()  # past the channel's replay: what is said from now on comes live alone
        return client

    yield make
    for client in clients:
        client.close()


def said(line: str) -> tuple[str, str, str]:
    """An IRC line's text, msgid and time tags."""
    tags = parse_tags(line[1:].partition(" ")[0])
    return line.rpartition(" :")[2], tags["msgid"], tags["time"]


def history_of(client: IRCClient, request: str) -> list[tuple[str, str, str]]:
    """The lines of the chathistory batch answering ``CHATHISTORY request``."""
    return [said(line) for line in batch_of(client, f"CHATHISTORY {request}")]


def batch_of(client: IRCClient, request: str) -> list[str]:
    """The lines inside the batch that answers ``request`` (what came
    before it, such as a late JOIN notice, left out)."""
    client.send(request)
    answer = client.sync()
    start = next(index for index, line in enumerate(answer) if " BATCH +" in line)
    _opening, *lines, closing = answer[start:]
    assert " BATCH -" in closing, answer
    return lines


@pytest.mark.slow
def test_chathistory_on_server_2_answers_with_server_1_s_lines_and_ids(redis_server, cluster, connect, irc_in) -> None:
    """Issue 29: an IRC client on server 2 asks CHATHISTORY for a channel and
    gets the lines said on server 1, with the msgids and times server 1's
    users saw live."""
    args = ("--plugins", "redis,history,irc", "--listen", "irc://127.0.0.1:0", "--history-room-lines", "lobby=50")
    one = cluster(redis_server.url, "127.0.0.1", *args)
    two = cluster(redis_server.url, "127.0.0.2", *args)
    nat, dan = connect(one, "nat"), connect(two, "dan")
    linked(nat, "nat", [dan])  # server 2 reads the room
    alice, bob, carol = irc_in(one, "alice"), irc_in(one, "bob"), irc_in(two, "carol")
    for number in range(5):
        alice.send(f"PRIVMSG #lobby :said on one {number}")
    pattern = re.compile(r"PRIVMSG #lobby :said on one \d$")
    live_one = [said(bob.expect(pattern)) for _ in range(5)]
    assert [said(alice.expect(pattern)) for _ in range(5)] == live_one  # echo-message
    assert [said(carol.expect(pattern)) for _ in range(5)] == live_one  # relayed with its ID and time
    assert history_of(carol, "LATEST #lobby * 5") == live_one
    assert history_of(carol, f"BEFORE #lobby msgid={live_one[4][1]} 3") == live_one[1:4]
    assert history_of(carol, f"AROUND #lobby msgid={live_one[2][1]} 1") == [live_one[2]]
    assert history_of(bob, f"AFTER #lobby msgid={live_one[0][1]} 2") == live_one[1:3]


@pytest.mark.slow
def test_private_history_between_accounts_is_the_cluster_s(redis_server, cluster, irc_in) -> None:
    """Issue 29: the private lines of logged-in accounts are kept in Redis,
    so CHATHISTORY and TARGETS on server 2 return those said through server
    1 (and across the two), with the IDs and times their live copies had."""
    args = ("--plugins", "redis,history,irc,accounts", "--listen", "irc://127.0.0.1:0")
    one = cluster(redis_server.url, "127.0.0.1", *args)
    two = cluster(redis_server.url, "127.0.0.2", *args)
    alice, erin = irc_in(one, "alice", join=""), irc_in(one, "erin", join="")
    bob = irc_in(two, "bob", join="")
    for client, nick in ((alice, "alice"), (erin, "erin"), (bob, "bob")):
        client.send("REGISTER correct-horse")
        client.expect(re.compile(f"NOTICE {nick} :registered the account {nick};"))
    # Across the servers, both ways, and between two people on server 1.
    alice.send("PRIVMSG bob :from one to two")
    to_bob = said(bob.expect(re.compile(r"PRIVMSG bob :from one to two$")))
    assert said(alice.expect(re.compile(r"PRIVMSG bob :from one to two$"))) == to_bob  # the echo
    bob.send("PRIVMSG alice :from two to one")
    to_alice = said(alice.expect(re.compile(r"PRIVMSG alice :from two to one$")))
    assert said(bob.expect(re.compile(r"PRIVMSG alice :from two to one$"))) == to_alice
    alice.send("PRIVMSG erin :within one")
    to_erin = said(erin.expect(re.compile(r"PRIVMSG erin :within one$")))
    # Another connection of alice's account, on server 2.
    again = irc_in(two, "alice2", join="")
    again.send("LOGIN alice correct-horse")
    again.expect(re.compile("NOTICE alice2 :you are logged in to alice$"))

    def kept(client: IRCClient, peer: str, lines: list[tuple[str, str, str]]) -> bool:
        return history_of(client, f"LATEST {peer} * 10") == lines

    for client in (again, alice):  # kept by the recipients' servers, read by both
        wait_for(lambda client=client: kept(client, "bob", [to_bob, to_alice]), message="alice's lines with bob")
        wait_for(lambda client=client: kept(client, "erin", [to_erin]), message="alice's line to erin")
    assert kept(bob, "alice", [to_bob, to_alice])
    assert history_of(again, f"BEFORE bob msgid={to_alice[1]} 5") == [to_bob]
    targets = "CHATHISTORY TARGETS timestamp=2000-01-01T00:00:00.000Z timestamp=2100-01-01T00:00:00.000Z 10"
    assert sorted(line.split()[-2] for line in batch_of(again, targets)) == ["bob", "erin"]
    assert history_of(erin, "LATEST bob * 10") == []  # not erin's conversation: nothing of it


@pytest.mark.slow
def test_lines_delayed_by_a_redis_outage_keep_their_original_time(redis_server, cluster, connect, irc_in) -> None:
    """Issue 29: the lines said on server 1 while its link to Redis is cut
    reach server 2 after the outage with the time they were said (IRC's
    server-time tag), the time server 1's users saw, not the delivery time."""
    proxy = Proxy(("127.0.0.1", redis_server.port))
    try:
        args = ("--plugins", "redis,irc,history", "--listen", "irc://127.0.0.1:0")  # (history: draft/chathistory)
        one = cluster(proxy.url, "127.0.0.1", *args)
        two = cluster(redis_server.url, "127.0.0.2", *args)
        nat, dan = connect(one, "nat"), connect(two, "dan")
        linked(nat, "nat", [dan])
        alice, bob = irc_in(one, "alice"), irc_in(two, "bob")
        proxy.partition()  # until heal(): reconnecting fails too
        nat.expect(LINK_DOWN)  # server 1 knows: what it hears now waits for Redis
        for number in range(3):
            alice.send(f"PRIVMSG #lobby :during the outage {number}")
        pattern = re.compile(r"PRIVMSG #lobby :during the outage \d$")
        seen_on_one = [said(alice.expect(pattern)) for _ in range(3)]  # the echo, at once
        assert not [line for line in bob.sync() if pattern.search(line)]  # held back by the outage
        outage_ended = time.time()
        proxy.heal()
        delivered = [said(bob.expect(pattern)) for _ in range(3)]
        assert delivered == seen_on_one
        times = [parse_reference(f"timestamp={when}") for _, _, when in delivered]
        assert all(mark is not None and mark.time < outage_ended for mark in times), (times, outage_ended)
    finally:
        proxy.close()
