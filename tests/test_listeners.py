"""Listeners and schemes: several --listen URLs, one registry, wire formats
registered by plugins, events rendered once per format, numbering."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Sequence

import pytest

from chatcore import hookimpl
from chatcore.config import parse_config
from chatcore.engine.backplane import Backplane, StreamPosition
from chatcore.engine.server import ChatServer
from chatcore.events import Chat, Event, RoomEvent
from chatcore.hooks import PluginError
from chatcore.testing import LineClient, ServerProcess, wait_for
from chatcore.transports import Scheme
from chatcore.wire import WireFormat
from chatcore.wire.native import NativeProtocol


class JSONLines(WireFormat):
    """A second wire format: every event as one JSON object per line."""

    name = "jsonl"

    def __init__(self) -> None:
        self.encoded: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def encode(self, event: Event) -> bytes:  # type: ignore[override]
        if isinstance(event, RoomEvent):
            with self._lock:
                self.encoded[(event.room, event.offset)] += 1
        fields = {name: getattr(event, name) for name in type(event).__dataclass_fields__}
        return (json.dumps({"type": type(event).__name__, **fields}, default=list) + "\n").encode()


class JSONScheme:
    """A plugin that serves jsonl:// (the native protocol's input, JSON output)."""

    def __init__(self) -> None:
        self.wire = JSONLines()

    @hookimpl
    def chatcore_schemes(self) -> list[Scheme]:
        return [Scheme("jsonl", self.wire, NativeProtocol, default_port=0, description="JSON lines, for tests")]


@pytest.fixture
def connect():
    """``connect(address)``: a LineClient closed at teardown."""
    clients: list[LineClient] = []

    def make(address: tuple[str, int]) -> LineClient:
        client = LineClient(address)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def read_json(client: LineClient, type_name: str) -> dict[str, object]:
    line = client.expect(lambda line: line.startswith("{") and json.loads(line)["type"] == type_name)
    return dict(json.loads(line))


def test_every_listener_shares_one_registry_and_renders_in_its_own_format(chat_server_factory, connect):
    plugin = JSONScheme()
    server = chat_server_factory(
        "--listen", "tcp://127.0.0.1:0", "--listen", "jsonl://127.0.0.1:0", "--listen", "tcp://127.0.0.1:0",
        plugins=[plugin],
    )  # fmt: skip
    assert [listener.url.scheme for listener in server.listeners] == ["tcp", "jsonl", "tcp"]
    assert len({listener.url.port for listener in server.listeners}) == 3
    assert all(listener.url.port for listener in server.listeners)
    alice = connect(server.listeners[0].address)
    alice.sync()
    robot = connect(server.listeners[1].address)
    robot.send("/nick robot")
    read_json(robot, "Welcome")
    carol = connect(server.listeners[2].address)
    carol.sync()
    # In under its name (its first line, docs/protocol.md), or renamed if that came late.
    alice.expect(lambda line: line in ("* robot joined", "* guest-2 is now known as robot"))

    alice.send("hello, formats")
    said = read_json(robot, "Chat")
    assert said["nick"] == "guest-1"
    assert said["text"] == "hello, formats"
    assert said["room"] == "lobby"
    assert isinstance(said["offset"], int)
    assert said["offset"] > 0
    assert said["epoch"]
    assert carol.expect("<guest-1> hello, formats")

    robot.send("beep")
    assert alice.expect("<robot> beep")
    assert carol.expect("<robot> beep")
    alice.send("/who")
    assert alice.expect(re.compile(r"^\* in lobby \(3\): guest-1, guest-[23], robot$"))
    # Encoded once per event for the one JSON client, never per recipient.
    assert set(plugin.wire.encoded.values()) == {1}


def test_a_room_event_is_encoded_once_per_format_whatever_the_members(chat_server_factory, connect):
    plugin = JSONScheme()
    server = chat_server_factory(
        "--plugins", "", "--listen", "tcp://127.0.0.1:0", "--listen", "jsonl://127.0.0.1:0", plugins=[plugin]
    )
    natives = [connect(server.listeners[0].address) for _ in range(3)]
    robots = [connect(server.listeners[1].address) for _ in range(4)]
    for client in natives:
        client.sync()
    for robot in robots:
        robot.send("/ping")
        read_json(robot, "Notice")
    natives[0].send("to everyone")
    for robot in robots:
        assert read_json(robot, "Chat")["text"] == "to everyone"
    for client in natives[1:]:
        client.expect(re.compile(r"^<guest-\d+> to everyone$"))
    # Every event of the room since the first JSON client came rendered
    # exactly once for all of them, and the room's offsets without gaps.
    offsets = sorted(offset for room, offset in plugin.wire.encoded)
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    assert max(plugin.wire.encoded.values()) == 1


def test_room_events_are_numbered_per_room_and_a_plugin_can_supply_the_numbers(chat_server_factory, chat_client):
    seen: list[RoomEvent] = []

    class Cluster(Backplane):
        """Numbers events the way a cluster plugin would: its own epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.offsets: Counter[str] = Counter()

        def next_position(self, room: str) -> tuple[str, int]:
            self.offsets[room] += 100
            return StreamPosition("cluster-epoch", self.offsets[room])  # a named one works too

    class Plugin:
        @hookimpl
        def chatcore_backplane(self) -> Backplane:
            return Cluster()

        @hookimpl
        def chatcore_room_event(self, event: RoomEvent) -> None:
            seen.append(event)

    server = chat_server_factory(plugins=[Plugin()])
    assert isinstance(server.backplane, Cluster)
    alice, bob = chat_client(server), chat_client(server)
    alice.send("one")
    bob.expect("<guest-1> one")
    alice.sync()  # alice's thread has told the plugins too (after queueing to bob)
    bob.send("/join dev")
    bob.expect("* you are now in dev (1 here)")
    bob.send("/part lobby")
    bob.send("two")
    bob.sync()
    # Sorted: chatcore_room_event runs after the event is queued, so bob may
    # see alice's chat and publish his leave before her thread records it.
    lobby = sorted((e.offset, type(e).__name__) for e in seen if e.room == "lobby")
    dev = sorted((e.offset, type(e).__name__) for e in seen if e.room == "dev")
    assert lobby == [(100, "Joined"), (200, "Joined"), (300, "Chat"), (400, "Left")]
    assert dev == [(100, "Joined"), (200, "Chat")]
    assert {e.epoch for e in seen} == {"cluster-epoch"}


def test_a_backplane_that_is_not_one_stops_the_start_with_a_clear_error():
    class Wrong:
        @hookimpl
        def chatcore_backplane(self) -> object:
            return object()

    with pytest.raises(PluginError, match=r"is not a chatcore\.engine\.backplane\.Backplane"):
        ChatServer(parse_config(["--port", "0"], extra_plugins=[Wrong()]))


def test_a_room_emptied_leaves_no_numbering_behind_and_a_new_one_has_a_new_epoch(chat_server_factory, chat_client):
    """Per-room state must not outlive the room (issue 22, bug 10): a client
    that visits many rooms leaves one room's numbering, its own; a room made
    again is numbered under a new epoch, so no position is given twice."""
    server = chat_server_factory()
    alice, bob = chat_client(server), chat_client(server)
    bob.send("/join first")
    bob.expect("* you are now in first (1 here)")
    bob.send("hello")
    bob.sync()
    first_epoch = server.backplane.epoch_of("first")
    assert first_epoch is not None
    bob.send("/part")
    for number in range(300):
        bob.send(f"/join room-{number}")
        bob.send("/part")
    bob.expect("* you left room-299; you now talk in lobby")
    bob.sync()  # the room is forgotten after bob is told: wait until the /part is done
    assert set(server.backplane._counters) <= {"lobby", "room-299"}
    bob.send("/join first")
    bob.expect("* you are now in first (1 here)")
    bob.sync()  # the join is numbered as it is published, after bob is told
    assert server.backplane.epoch_of("first") not in (None, first_epoch)
    alice.send("still here")
    alice.sync()
    assert server.backplane.epoch_of("lobby") is not None


def test_the_local_numbering_changes_epoch_at_every_start(chat_server_factory):
    epochs = {chat_server_factory().backplane.epoch for _ in range(3)}
    assert len(epochs) == 3


def test_ipv6_listener(chat_server_factory, connect):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.fail("this machine has no IPv6 loopback; chatcore's IPv6 listener cannot be tested")
    server = chat_server_factory("--listen", "tcp://[::1]:0")
    assert str(server.listeners[0].url).startswith("tcp://[::1]:")
    alice = connect(server.address)
    alice.sync()  # guest-1: welcomed before bob connects
    bob = connect(server.address)
    bob.sync()
    alice.send("over six")
    assert bob.expect("<guest-1> over six")


def test_start_up_line_lists_every_listener_with_its_real_port():
    with ServerProcess("--listen", "tcp://127.0.0.1:0", "--listen", "tcp://127.0.0.1:0") as proc:
        ports = [int(port) for port in re.findall(r"tcp://127\.0\.0\.1:(\d+)", proc.banner)]
        assert len(ports) == 2
        assert len(set(ports)) == 2
        assert 0 not in ports
        for port in ports:
            client = LineClient(("127.0.0.1", port))
            client.sync()
            client.close()
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "ftp://127.0.0.1:21"], "unknown scheme 'ftp://' (known: tcp://, tls://;"),
        (["--listen", "127.0.0.1:12000"], "expected SCHEME://HOST:PORT"),
        (["--listen", "tcp://127.0.0.1:99999"], "the port must be a number from 0 to 65535"),
        (["--listen", "tcp://:12000"], "give a host"),
        # Found by fuzz/fuzz_config.py: urlsplit's ValueError went out as a traceback.
        (["--listen", "tcp://127.0.0.1[:0"], "not a URL (Invalid IPv6 URL); IPv6 hosts go in brackets"),
        (["--listen", 'tcp://127.0.0.1>12000plugins = ["irc"'], "not a URL (Invalid IPv6 URL)"),
        (["--listen", "tcp://::1]:0"], "not a URL (Invalid IPv6 URL)"),
        (["--listen", "tcp://127.0.0.1:0", "--port", "0"], "--listen replaces --host and --port"),
        (["--listen", "tls://127.0.0.1:0"], "needs a certificate and its key: give --tls-cert FILE and --tls-key FILE"),
    ],
)
def test_bad_listen_values_are_usage_errors(args, message):
    from chatcore import UsageError

    with pytest.raises(UsageError) as caught:
        parse_config(args)
    assert message in str(caught.value)


def test_a_bracket_without_its_pair_exits_2_in_one_line():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--listen", "tcp://127.0.0.1[:0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "not a URL (Invalid IPv6 URL)" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_scheme_exits_2_and_lists_the_known_ones():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--listen", "irc://127.0.0.1:6667"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown scheme 'irc://' (known: tcp://, tls://;" in result.stderr
    assert "Traceback" not in result.stderr


class BrokenJSONLines(JSONLines):
    """A wire format with a bug: it raises on one text."""

    def encode(self, event: Event) -> bytes:  # type: ignore[override]
        if getattr(event, "text", None) == "boom":
            raise ValueError("this format cannot render that")
        return super().encode(event)


def test_a_format_that_fails_on_an_event_wedges_no_feed(chat_server_factory, connect, caplog):
    """One event a wire format cannot render costs that format's members that
    event, and nothing else: the other formats' members get it, and the
    room's feeds go on for everyone (issue 23, item 6: a feed marked ready
    and never handed to the writer stopped the room for good)."""
    plugin = JSONScheme()
    plugin.wire = BrokenJSONLines()
    server = chat_server_factory("--listen", "tcp://127.0.0.1:0", "--listen", "jsonl://127.0.0.1:0", plugins=[plugin])
    alice, bob = connect(server.listeners[0].address), connect(server.listeners[0].address)
    carol = connect(server.listeners[1].address)
    alice.send("/nick alice")
    alice.expect("* you are now known as alice")
    bob.sync()
    read_json(carol, "Welcome")
    wait_for(lambda: len(server.registry) == 3, message="three in the lobby")
    alice.send("boom")
    bob.expect("<alice> boom")
    alice.send("after")
    bob.expect("<alice> after")
    assert read_json(carol, "Chat")["text"] == "after"
    dave = connect(server.listeners[0].address)
    dave.sync()
    alice.send("for the newcomer too")
    dave.expect("<alice> for the newcomer too")
    assert "failed to render" in caplog.text


def test_the_backplane_is_told_what_is_said_here_not_what_came_from_elsewhere(chat_server_factory, chat_client):
    said: list[RoomEvent] = []

    class Recording(Backplane):
        def published(self, events: Sequence[RoomEvent]) -> None:
            said.extend(events)

    class Plugin:
        @hookimpl
        def chatcore_backplane(self) -> Backplane:
            return Recording()

    server = chat_server_factory(plugins=[Plugin()])
    alice = chat_client(server)
    alice.send("said here")
    alice.sync()
    server.publish(Chat("lobby", "remote", "said elsewhere", offset=7, epoch="theirs", time=1.0), relay=False)
    alice.expect("<remote> said elsewhere")
    assert [type(e).__name__ for e in said] == ["Joined", "Chat"]
    assert said[1].text == "said here"
    assert said[1].offset > 0


def test_an_event_from_elsewhere_keeps_the_time_it_was_said(chat_server_factory, connect):
    """Numbered here, but not re-timed (issue 22, bug 3: a cluster's event
    took the local arrival time, so lines delayed by an outage looked new)."""
    plugin = JSONScheme()
    server = chat_server_factory("--listen", "jsonl://127.0.0.1:0", plugins=[plugin])
    watcher = connect(server.address)
    read_json(watcher, "Welcome")
    server.publish(Chat("lobby", "remote", "said an hour ago", time=1_000_000.0), relay=False)
    chat = read_json(watcher, "Chat")
    assert chat["time"] == 1_000_000.0
    assert chat["offset"] > 0
    server.publish(Chat("lobby", "remote", "said now"), relay=False)
    assert read_json(watcher, "Chat")["time"] > 1_000_000.0
