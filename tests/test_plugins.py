"""The plugin system: hooks, isolation of failing plugins, discovery."""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

import pluggy
import pytest

from chatcore import Client, Message, hookimpl
from chatcore.config import parse_config
from chatcore.engine.server import ChatServer
from chatcore.events import Chat, Event, Joined, Left, PrivateMessage, RoomEvent
from chatcore.hooks import PluginError
from chatcore.testing import LineClient, wait_for

TEST_PLUGINS = Path(__file__).parent / "plugins"


class Upper:
    """A filter that shouts."""

    @hookimpl
    def chatcore_message(self, message: Message) -> None:
        message.text = message.text.upper()


class Broken:
    """Fails in every per-event hook."""

    @hookimpl
    def chatcore_message(self, message: Message) -> None:
        raise ValueError("broken filter")

    @hookimpl
    def chatcore_welcome(self, client: Client) -> list[str]:
        raise ValueError("broken welcome")

    @hookimpl
    def chatcore_client_joined(self, client: Client) -> None:
        raise ValueError("broken join")

    @hookimpl
    def chatcore_client_left(self, client: Client) -> None:
        raise ValueError("broken leave")

    @hookimpl
    def chatcore_message_delivered(self) -> None:
        raise ValueError("broken observer")

    @hookimpl
    def chatcore_command(self, name: str) -> bool:
        raise ValueError("broken command")

    @hookimpl
    def chatcore_connection_arriving(self) -> str | None:
        raise ValueError("broken gate")

    @hookimpl
    def chatcore_command_help(self) -> list[tuple[str, str]]:
        raise ValueError("broken help")

    @hookimpl
    def chatcore_room_event(self) -> None:
        raise ValueError("broken relay")

    @hookimpl
    def chatcore_server_stop(self) -> None:
        raise ValueError("broken stop")


@pytest.mark.parametrize("order", ["broken-first", "broken-last"])
def test_a_failing_plugin_is_logged_and_skipped(chat_server_factory, chat_client, caplog, order):
    plugins = [Broken(), Upper()] if order == "broken-first" else [Upper(), Broken()]
    server = chat_server_factory(plugins=plugins)
    alice, bob = chat_client(server), chat_client(server)
    assert alice.received[0].startswith("* Welcome to chatcore")  # welcome survived
    alice.expect("* guest-2 joined")  # joins survived
    alice.send("hello")
    assert bob.expect(re.compile("^<")) == "<guest-1> HELLO"  # the other filter still ran
    alice.send("/ping")
    alice.expect("* pong")  # commands survived
    alice.send("/help")
    alice.expect(re.compile("/quit"))
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "broken" in str(r.exc_info)]
    assert failures
    assert all("failed in chatcore_" in r.getMessage() for r in failures)
    assert "plugin 'Broken' failed in chatcore_message" in caplog.text


def test_failure_log_names_the_plugin(chat_server_factory, chat_client, caplog):
    server = chat_server_factory(plugins=[])
    server.config.pluginmanager.register(Broken(), name="broken-plugin")
    alice, bob = chat_client(server), chat_client(server)
    alice.send("hi")
    assert bob.expect(re.compile("^<")) == "<guest-1> hi"
    assert "plugin 'broken-plugin' failed in chatcore_message" in caplog.text
    assert server.hooks.failures("broken-plugin") >= 3


def test_a_plugin_can_refuse_a_connection(chat_server_factory):
    class Gate:
        @hookimpl
        def chatcore_connection_arriving(self, address: tuple[str, int]) -> str | None:
            return f"go away, {address[0]}"

    server = chat_server_factory(plugins=[Gate()])
    client = LineClient(server.address)
    try:
        assert client.wait_closed() == ["! go away, 127.0.0.1"]
    finally:
        client.close()
    assert len(server.registry) == 0


@pytest.mark.parametrize("not_mine", [None, False, ""])
def test_a_false_or_empty_answer_passes_the_question_on(chat_server_factory, not_mine):
    """The first true answer decides (docs/plugins.md, "When several plugins answer")."""

    class FirstSaysNotMine:
        @hookimpl(tryfirst=True)
        def chatcore_connection_arriving(self) -> object:
            return not_mine

    class ThenRefuse:
        @hookimpl
        def chatcore_connection_arriving(self) -> str:
            return "refused by the second plugin"

    server = chat_server_factory(plugins=[FirstSaysNotMine(), ThenRefuse()])
    client = LineClient(server.address)
    try:
        assert client.wait_closed() == ["! refused by the second plugin"]
    finally:
        client.close()


def test_filter_chain_rejection_goes_to_the_sender_only(chat_server_factory, chat_client):
    class NoShouting:
        @hookimpl(tryfirst=True)
        def chatcore_message(self, message: Message) -> None:
            if message.text.isupper():
                message.reject("please do not shout")

    server = chat_server_factory(plugins=[Upper(), NoShouting()])
    alice, bob = chat_client(server), chat_client(server)
    alice.send("STOP")
    alice.expect("! please do not shout")
    alice.send("quiet")  # Upper runs after NoShouting: its result is not checked
    assert bob.expect(re.compile("^<")) == "<guest-1> QUIET"
    assert "<guest-1> STOP" not in bob.sync()


def test_delivered_observers_see_the_final_text(chat_server_factory, chat_client):
    seen: list[tuple[str, str, int]] = []

    class Observer:
        @hookimpl
        def chatcore_message_delivered(self, message: Message, recipients: int) -> None:
            seen.append((message.sender.nick, message.text, recipients))

    server = chat_server_factory(plugins=[Upper(), Observer()])
    alice, bob, _carol = chat_client(server), chat_client(server), chat_client(server)
    alice.send("hey")
    bob.expect("<guest-1> HEY")
    alice.sync()
    assert seen == [("guest-1", "HEY", 2)]


def test_an_implementation_gets_the_arguments_it_names_in_any_order(chat_server_factory, chat_client):
    # pluggy lets an implementation take any of the specification's
    # arguments, in any order; the hooks call most with all of them, as
    # they are, and these through an adapter that picks by name.
    seen: list[tuple[object, ...]] = []

    class Picky:
        @hookimpl
        def chatcore_message_delivered(self, recipients: int, message: Message) -> None:
            seen.append(("delivered", recipients, message.text))

        @hookimpl
        def chatcore_client_joined(self, room: str) -> None:
            seen.append(("joined", room))

        @hookimpl
        def chatcore_command(self, args: str, client: Client) -> bool | None:
            if args != "picky":
                return None
            client.notice(f"picked {args}")
            return True

        @hookimpl
        def chatcore_client_left(self) -> None:
            seen.append(("left",))

    server = chat_server_factory(plugins=[Picky()])
    alice, bob = chat_client(server), chat_client(server)
    alice.send("/anything picky")
    alice.expect("* picked picky")
    alice.send("hello")
    bob.expect("<guest-1> hello")
    bob.close()
    wait_for(lambda: ("left",) in seen)
    assert seen.count(("joined", "lobby")) == 2
    assert ("delivered", 1, "hello") in seen


def test_the_recipient_s_server_hears_of_a_private_message_with_its_id_and_time(
    chat_server_factory, chat_client, monkeypatch
):
    """chatcore_private_received: the recipient, and the event with the ID
    and time both copies carry; heard before the recipient is given it, so
    that a plugin keeping it (history) has it once the recipient does."""
    received: list[tuple[str, PrivateMessage]] = []
    order: list[str] = []

    class Keeper:
        @hookimpl
        def chatcore_private_received(self, client: Client, event: PrivateMessage) -> None:
            received.append((client.nick, event))
            order.append("heard")

    send = Client.send

    def recorded(client: Client, event: Event) -> None:
        if isinstance(event, PrivateMessage) and not event.echo:
            order.append("given")
        send(client, event)

    monkeypatch.setattr(Client, "send", recorded)

    server = chat_server_factory("--plugins", "commands", plugins=[Upper(), Keeper()])
    alice, bob = chat_client(server), chat_client(server)
    for client, nick in ((alice, "alice"), (bob, "bob")):
        client.send(f"/nick {nick}")
        client.expect(f"* you are now known as {nick}")
    alice.send("/msg bob psst")
    bob.expect("*alice* PSST")
    alice.expect("-> *bob* PSST")
    [(recipient, event)] = received
    assert (recipient, event.sender, event.recipient, event.text, event.echo) == ("bob", "alice", "bob", "PSST", False)
    assert event.msgid.endswith("-pm:1")
    assert abs(event.time - time.time()) < 10
    assert order == ["heard", "given"]


def test_first_command_plugin_wins_and_shows_in_help(chat_server_factory, chat_client):
    class Dice:
        @hookimpl
        def chatcore_command(self, client: Client, name: str, args: str) -> bool | None:
            if name in ("roll", "ping"):
                client.notice(f"rolled a 4 ({args or 'no args'})")
                return True
            return None

        @hookimpl
        def chatcore_command_help(self) -> list[tuple[str, str]]:
            return [("/roll [WHAT]", "roll a die")]

    server = chat_server_factory(plugins=[Dice()])
    alice = chat_client(server, sync=False)
    alice.send("/roll d6")
    alice.expect("* rolled a 4 (d6)")
    alice.send("/ping")  # the built-in commands run trylast: the plugin wins
    alice.expect("* rolled a 4 (no args)")
    alice.send("/help")
    alice.expect(re.compile(r"^\*   /roll \[WHAT\] +roll a die$"))


def test_room_event_sees_every_room_event_here_those_from_elsewhere_too(chat_server_factory, chat_client):
    """chatcore_room_event records what the rooms here heard, whatever its
    origin (issue 22, bug 1: events from other servers skipped it, so the
    history plugin never stored them and a resume could answer "complete"
    with lines missing)."""
    heard: list[RoomEvent] = []

    class Recorder:
        @hookimpl
        def chatcore_room_event(self, event: RoomEvent) -> None:
            heard.append(event)

    server = chat_server_factory(plugins=[Recorder()])
    alice, bob = chat_client(server), chat_client(server)
    alice.send("said here")
    bob.expect("<guest-1> said here")
    alice.sync()  # the hook runs on alice's thread after the line is queued
    remote = Chat("lobby", nick="remote", text="from afar", epoch="elsewhere", offset=99)
    server.publish(remote, relay=False)
    alice.expect("<remote> from afar")
    bob.expect("<remote> from afar")
    assert remote.offset == 99  # an event from elsewhere keeps its identity
    assert [(type(e), e.room, getattr(e, "nick", "")) for e in heard] == [
        (Joined, "lobby", "guest-1"),
        (Joined, "lobby", "guest-2"),
        (Chat, "lobby", "guest-1"),
        (Chat, "lobby", "remote"),
    ]
    assert heard[2] == Chat(
        "lobby", nick="guest-1", text="said here", epoch=heard[0].epoch, offset=3, time=heard[2].time
    )
    # One numbering per room, without gaps, in one epoch.
    assert [e.offset for e in heard[:3]] == [1, 2, 3]
    assert len({e.epoch for e in heard[:3]}) == 1
    assert heard[0].epoch
    assert all(e.time > 0 for e in heard[:3])


def test_room_changed_sees_joins_leaves_renames_topics_and_modes_but_no_chat(chat_server_factory, chat_client):
    """chatcore_room_changed: what chatcore_room_event sees but the chat, so
    that an audit trail costs nothing per chat line."""
    changed: list[RoomEvent] = []

    class Recorder:
        @hookimpl
        def chatcore_room_changed(self, server: ChatServer, event: RoomEvent) -> None:
            assert server.rooms.get(event.room) is not None or isinstance(event, Left)  # after the state took it
            changed.append(event)

    server = chat_server_factory(plugins=[Recorder()])
    alice, bob = chat_client(server), chat_client(server)
    alice.send("said here")
    alice.send("/me waves")
    alice.send("/topic hello")
    alice.send("/mode +m")
    alice.send("/nick alice")
    alice.sync()
    bob.send("/quit")
    bob.wait_closed()
    alice.expect("* guest-2 left")
    kinds = [type(event).__name__ for event in changed]
    assert kinds == ["Joined", "Joined", "TopicChanged", "ModeChanged", "NickChanged", "Left"]
    assert server.hooks.room_changes_observed


def test_hook_wrappers_are_refused_with_a_clear_message():
    sys.path.insert(0, str(TEST_PLUGINS))
    try:
        with pytest.raises(pluggy.PluginValidationError, match="hook wrapper"):
            parse_config(["--plugins", "chatcore_testplugins.wrapper"])
    finally:
        sys.path.remove(str(TEST_PLUGINS))


def test_a_failing_start_hook_stops_the_start_naming_the_plugin():
    class FailsToStart:
        @hookimpl
        def chatcore_server_start(self) -> None:
            raise RuntimeError("no database")

    config = parse_config(["--port", "0"], extra_plugins=[FailsToStart()])
    server = ChatServer(config)
    try:
        with pytest.raises(
            PluginError, match=r"plugin '.*' failed in chatcore_server_start: RuntimeError: no database"
        ):
            server.start()
    finally:
        server.server_close()


def test_server_stop_runs_every_plugin_even_if_one_fails(chat_server_factory):
    stopped: list[str] = []

    class Stopper:
        @hookimpl
        def chatcore_server_stop(self, server: ChatServer) -> None:
            stopped.append(server.address_text)

    server = chat_server_factory(plugins=[Stopper(), Broken()])
    server.stop()
    assert stopped == [server.address_text]


def test_a_plugin_returning_the_wrong_type_is_skipped_like_a_failing_one(chat_server_factory, chat_client, caplog):
    class Sloppy:
        @hookimpl
        def chatcore_welcome(self) -> int:
            return 42

        @hookimpl
        def chatcore_command_help(self) -> list[str]:
            return ["/oops"]

    server = chat_server_factory(plugins=[Sloppy()])
    alice = chat_client(server)
    assert alice.received[0].startswith("* Welcome to chatcore")  # the welcome plugin still greets
    alice.send("/help")
    alice.expect(re.compile(r"^\*   /quit \[REASON\]"))
    assert "plugin 'Sloppy' failed in chatcore_welcome" in caplog.text
    assert "plugin 'Sloppy' failed in chatcore_command_help" in caplog.text


def test_false_means_not_mine_in_first_result_hooks(chat_server_factory, chat_client):
    class Shy:
        @hookimpl(tryfirst=True)
        def chatcore_connection_arriving(self) -> bool:
            return False

        @hookimpl(tryfirst=True)
        def chatcore_command(self) -> bool:
            return False

    server = chat_server_factory(plugins=[Shy()])
    alice = chat_client(server)  # accepted
    alice.send("/ping")
    alice.expect("* pong")  # the built-in command still answers


def test_lines_after_a_disconnect_are_not_handled(chat_server_factory, chat_client):
    class Moderator:
        @hookimpl
        def chatcore_message(self, message: Message) -> None:
            if message.text == "spam":
                message.reject("no spam")
                message.sender.disconnect("banned")

    server = chat_server_factory(plugins=[Moderator()])
    alice, bob = chat_client(server), chat_client(server)
    alice.send_raw(b"spam\nafter the ban\n/nick sneaky\n")  # one recv() on the server
    bob.expect("* guest-1 left (banned)")
    assert all("after the ban" not in line and "sneaky" not in line for line in bob.sync())
    assert server.registry.find("sneaky") is None


def test_a_plugin_command_can_stop_the_server(chat_server_factory, chat_client):
    class Halt:
        @hookimpl
        def chatcore_command(self, client: Client, name: str) -> bool | None:
            if name != "halt":
                return None
            client.server.stop()  # on this client's own thread
            return True

    server = chat_server_factory(plugins=[Halt()])
    alice, bob = chat_client(server), chat_client(server)
    alice.send("/halt")
    assert bob.wait_closed()[-1] == "* server shutting down"
    assert alice.wait_closed()[-1] == "* server shutting down"
    wait_for(lambda: server.listeners[0].socket.fileno() == -1, message="the listening socket closed")
