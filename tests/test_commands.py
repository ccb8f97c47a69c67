"""The built-in commands, over real sockets: every success and error path."""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path
from types import ModuleType

import pytest

from chatcore.engine.server import ChatServer
from chatcore.names import RESERVED_NICKS
from chatcore.plugins.commands import HELP
from chatcore.plugins.opers import HELP as OPERS_HELP
from chatcore.testing import ClientFactory, LineClient, ServerFactory, wait_for


def load_test_plugin(name: str) -> ModuleType:
    """Import tests/plugins/<name>.py by path (``plugins`` alone would be
    the package at the repository root)."""
    path = Path(__file__).parent / "plugins" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"chatcore_test_plugins.{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def named(chat_client: ClientFactory, server: ChatServer, nick: str) -> LineClient:
    """A connected client that has taken ``nick``."""
    client = chat_client(server)
    client.send(f"/nick {nick}")
    client.expect(f"* you are now known as {nick}")
    return client


#: Notices caused by other clients, which may arrive at any time.
_NOISE = re.compile(r"^(\[\S+\] )?\* (?!you )\S+ (joined$|left\b|is now known as )")


def reply(client: LineClient, line: str) -> list[str]:
    """Send ``line``; return what the server answered, without the join,
    leave and rename notices other clients cause."""
    client.send(line)
    return [answer for answer in client.sync() if not _NOISE.match(answer)]


@pytest.fixture
def server(chat_server_factory: ServerFactory) -> ChatServer:
    return chat_server_factory("--plugins", "")


# -- /nick -------------------------------------------------------------------


def test_nick_is_announced_to_the_rooms_of_the_renamed_only_and_once(server, chat_client):
    alice, bob, carol, dave = (chat_client(server) for _ in range(4))
    carol.send("/join elsewhere")
    carol.expect("* you are now in elsewhere (1 here)")
    carol.send("/part lobby")
    carol.expect("* you left lobby; you now talk in elsewhere")
    for client in (alice, dave):  # both in lobby and dev
        client.send("/join dev")
        client.expect(re.compile(r"^\* you are now in dev"))
    assert reply(alice, "/nick alice") == ["* you are now known as alice"]
    bob.expect("* guest-1 is now known as alice")
    assert not any("known as" in line for line in carol.sync())
    # dave shares two rooms with alice and is told once, in the first.
    assert [line for line in dave.sync() if "known as" in line] == ["[lobby] * guest-1 is now known as alice"]
    assert server.registry.find("ALICE") is not None


def test_nick_may_change_its_own_case(server, chat_client):
    alice = named(chat_client, server, "alice")
    alice.send("/nick Alice")
    alice.expect("* you are now known as Alice")
    alice.send("/nick Alice")
    alice.expect("* you are already known as Alice")


NICK_ERRORS = [
    ("/nick", "! usage: /nick NAME"),
    ("/nick    ", "! usage: /nick NAME"),
    ("/nick " + "a" * 33, f"! invalid nickname '{'a' * 33}': use 1 to 32 letters (a-z, A-Z), digits, '_' or '-'"),
    ("/nick two words", "! invalid nickname 'two words': use 1 to 32 letters (a-z, A-Z), digits, '_' or '-'"),
    ("/nick zoë", "! invalid nickname 'zoë': use 1 to 32 letters (a-z, A-Z), digits, '_' or '-'"),
    ("/nick a.b", "! invalid nickname 'a.b': use 1 to 32 letters (a-z, A-Z), digits, '_' or '-'"),
    ("/nick Admin", "! nickname 'Admin' is reserved"),
    ("/nick GUEST-7", "! nickname 'GUEST-7' is reserved"),
]


def test_nick_errors(server, chat_client):
    alice = chat_client(server)
    for line, error in NICK_ERRORS:
        assert reply(alice, line) == [error], line
    assert server.registry.find("guest-1") is not None


def test_nick_longest_and_every_allowed_character(server, chat_client):
    alice = chat_client(server)
    nick = "Az09_-" + "x" * 26
    assert reply(alice, f"/nick {nick}") == [f"* you are now known as {nick}"]


def test_every_reserved_nick_is_refused(server, chat_client):
    alice = chat_client(server)
    for nick in sorted(RESERVED_NICKS):
        assert reply(alice, f"/nick {nick.upper()}") == [f"! nickname '{nick.upper()}' is reserved"]


def test_nick_taken_ignoring_case(server, chat_client):
    named(chat_client, server, "alice")
    bob = chat_client(server)
    assert reply(bob, "/nick ALICE") == ["! nickname 'ALICE' is taken"]


def test_nick_collision_raced_from_two_threads_exactly_one_wins(server, chat_client):
    racers = [chat_client(server), chat_client(server)]

    def race(client: LineClient, nick: str, barrier: threading.Barrier, answers: dict[int, str]) -> None:
        barrier.wait(timeout=5)
        client.send(f"/nick {nick}")
        answers[id(client)] = client.expect(re.compile(rf"^(\* you are now known as |! nickname '){nick}\b"))

    for round_number in range(25):
        nick = f"racer{round_number}"
        barrier = threading.Barrier(len(racers))
        answers: dict[int, str] = {}
        threads = [threading.Thread(target=race, args=(c, nick, barrier, answers)) for c in racers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(answers.values()) == [f"! nickname '{nick}' is taken", f"* you are now known as {nick}"]
        holder = server.registry.find(nick)
        assert holder is not None
        assert len({client.nick.casefold() for client in server.registry}) == 2
        for racer in racers:
            racer.sync()  # the loser also saw "* old is now known as racerN"


# -- /join, rooms and /who ---------------------------------------------------


def test_join_enters_a_second_room_and_lines_name_their_room(server, chat_client):
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    carol = named(chat_client, server, "carol")
    carol.send("/join dev")
    carol.expect("* you are now in dev (1 here)")
    # carol is in lobby and dev: every room line names its room.
    alice.send("in the lobby")
    carol.expect("[lobby] <alice> in the lobby")
    alice.send("/join dev")
    alice.expect("* you are now in dev (2 here)")
    carol.expect("[dev] * alice joined")
    # A plain line goes to the current room: the one joined last.
    alice.send("in dev")
    carol.expect("[dev] <alice> in dev")
    assert not any("in dev" in line for line in bob.sync())
    # Bob, in one room, sees today's lines, unlabelled; alice did not leave it.
    carol.send("/join lobby")
    carol.expect("* you now talk in lobby")
    carol.send("back in the lobby")
    bob.expect("<carol> back in the lobby")
    alice.expect("[lobby] <carol> back in the lobby")


def test_part_leaves_one_room_and_lines_lose_their_label(server, chat_client):
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    alice.send("/join dev")
    alice.expect("* you are now in dev (1 here)")
    assert reply(alice, "/part lobby see you") == ["* you left lobby; you now talk in dev"]
    bob.expect("* alice left (see you)")
    bob.send("/join dev")
    bob.expect("* you are now in dev (2 here)")
    bob.send("hi dev")
    alice.expect("<bob> hi dev")  # one room again: no label
    assert reply(alice, "/part") == ["* you left dev; /join ROOM to enter another"]
    bob.expect("[dev] * alice left")
    in_no_room = server.registry.find("alice")
    assert in_no_room is not None
    assert (in_no_room.room, in_no_room.rooms) == ("", ())


def test_a_client_in_no_room_is_told_that_nobody_hears_it(server, chat_client):
    alice = chat_client(server)
    assert reply(alice, "/part") == ["* you left lobby; /join ROOM to enter another"]
    assert reply(alice, "hello?") == ["! you are in no room, so nobody hears you: /join ROOM first (/rooms lists them)"]
    assert reply(alice, "/me waves") == [
        "! you are in no room, so nobody hears you: /join ROOM first (/rooms lists them)"
    ]
    assert reply(alice, "/part") == ["! you are in no room; /join ROOM to enter one"]
    assert reply(alice, "/who") == ["! usage: /who ROOM (you are in no room)"]
    assert reply(alice, "/join lobby") == ["* you are now in lobby (1 here)"]


def test_too_many_rooms_is_refused_and_changes_nothing(chat_server_factory, chat_client):
    server = chat_server_factory("--max-rooms-per-client", "2")
    alice = chat_client(server)
    assert reply(alice, "/join dev") == ["* you are now in dev (1 here)"]
    assert reply(alice, "/join ops") == ["! you are in 2 rooms, the most allowed: leave one before joining ops"]
    assert server.registry.rooms() == {"lobby": 1, "dev": 1}
    assert reply(alice, "/join lobby") == ["* you now talk in lobby"]  # switching is not joining


JOIN_ERRORS = [
    ("/join", "! usage: /join ROOM [KEY]"),
    ("/join #dev", "! invalid room name '#dev': use 1 to 32 letters (a-z, A-Z), digits, '_' or '-'"),
    ("/join " + "r" * 33, f"! invalid room name '{'r' * 33}': use 1 to 32 letters (a-z, A-Z), digits, '_' or '-'"),
    ("/join lobby", "* you are already in lobby"),
    ("/join LOBBY", "* you are already in lobby"),
]


def test_join_errors(server, chat_client):
    alice = chat_client(server)
    for line, error in JOIN_ERRORS:
        assert reply(alice, line) == [error], line
    assert server.registry.rooms() == {"lobby": 1}


def test_room_names_ignore_case(server, chat_client):
    alice, bob = chat_client(server), chat_client(server)
    alice.send("/join Dev")
    alice.expect("* you are now in dev (1 here)")
    bob.send("/join DEV")
    bob.expect("* you are now in dev (2 here)")


def test_rooms_isolate_traffic(server, chat_client):
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    carol = named(chat_client, server, "carol")
    dave = named(chat_client, server, "dave")
    for client in (carol, dave):
        client.send("/join dev")
        client.expect(re.compile(r"^\* you are now in dev"))
        assert reply(client, "/part lobby") == ["* you left lobby; you now talk in dev"]
    alice.send("hello lobby")
    carol.send("hello dev")
    carol.send("/me waves")
    bob.expect("<alice> hello lobby")
    dave.expect("<carol> hello dev")
    dave.expect("* carol waves")
    assert not any("dev" in line or "waves" in line for line in bob.sync())
    assert not any("lobby" in line for line in dave.sync())
    assert not any("hello" in line for line in alice.sync())


def test_rooms_lists_every_room_with_counts(server, chat_client):
    alice = named(chat_client, server, "alice")
    named(chat_client, server, "bob")
    carol = named(chat_client, server, "carol")
    carol.send("/join dev")
    carol.expect(re.compile(r"^\* you are now in dev"))
    assert reply(alice, "/rooms") == ["* 2 rooms: dev (1), lobby (3, current)"]
    assert reply(carol, "/rooms") == ["* 2 rooms: dev (1, current), lobby (3, joined)"]
    carol.send("/part dev")
    carol.expect(re.compile(r"^\* you left dev"))
    assert reply(alice, "/rooms") == ["* 1 room: lobby (3, current)"]


def test_who_lists_your_room_only(server, chat_client):
    alice = named(chat_client, server, "alice")
    named(chat_client, server, "Bob")
    carol = named(chat_client, server, "carol")
    carol.send("/join dev")
    carol.expect(re.compile(r"^\* you are now in dev"))
    assert reply(alice, "/who") == ["* in lobby (3): alice, Bob, carol"]
    assert reply(carol, "/who") == ["* in dev (1): carol"]
    assert reply(alice, "/who DEV") == ["* in dev (1): carol"]
    assert reply(alice, "/who #dev") == [
        "! invalid room name '#dev': use 1 to 32 letters (a-z, A-Z), digits, '_' or '-'"
    ]


# -- /msg ----------------------------------------------------------------------


def test_private_message_reaches_another_room_and_nobody_else(server, chat_client):
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    carol = named(chat_client, server, "carol")
    bob.send("/join dev")
    bob.expect(re.compile(r"^\* you are now in dev"))
    bob.send("/part lobby")
    bob.expect(re.compile(r"^\* you left lobby"))
    assert reply(alice, "/msg BOB  meet me at   noon ") == ["-> *bob* meet me at   noon"]
    bob.expect("*alice* meet me at   noon")
    assert not any("noon" in line for line in carol.sync())


MSG_ERRORS = [
    ("/msg", "! usage: /msg NICK TEXT"),
    ("/msg bob", "! usage: /msg NICK TEXT"),
    ("/msg bob    ", "! usage: /msg NICK TEXT"),
    ("/msg nobody-here hi", "! no such nick 'nobody-here'"),
    ("/msg alice hi", "! you cannot send a private message to yourself"),
    ("/msg ALICE hi", "! you cannot send a private message to yourself"),
]


def test_private_message_errors(server, chat_client):
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    for line, error in MSG_ERRORS:
        assert reply(alice, line) == [error], line
    assert not any("alice*" in line for line in bob.sync())


# -- /me, /help, /ping, /quit, unknown commands and // --------------------------


def test_me_is_an_action_echoed_to_the_sender(server, chat_client):
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    assert reply(alice, "/me waves") == ["* alice waves"]
    bob.expect("* alice waves")
    assert reply(alice, "/me") == ["! usage: /me TEXT"]


def test_help_lists_builtin_and_plugin_commands(chat_server_factory, chat_client):
    echo = load_test_plugin("echo")
    server = chat_server_factory("--plugins", "", plugins=[echo])
    alice = chat_client(server)
    alice.send("/help")
    lines = alice.sync()
    assert lines[0] == "* commands:"
    # Operator commands are listed to operators only (test_opers).
    usages = [usage for usage, _ in HELP + OPERS_HELP[:1]] + ["/echo TEXT"]
    assert len(lines) == 1 + len(usages)
    for usage in usages:
        assert any(re.fullmatch(rf"\*   {re.escape(usage)} +\S.*", line) for line in lines), usage
    assert any(line.endswith("the server sends TEXT back to you") for line in lines)
    assert reply(alice, "/echo hi there") == ["* echo: hi there"]


def test_ping(server, chat_client):
    alice = chat_client(server)
    alice.send("/PING")
    assert alice.expect(re.compile("pong")) == "* pong"


def test_quit_with_and_without_a_reason(server, chat_client):
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    carol = named(chat_client, server, "carol")
    alice.send("/quit off to lunch")
    assert alice.wait_closed()[-1] == "* goodbye"
    carol.expect("* alice left (off to lunch)")
    bob.send("/quit")
    assert bob.wait_closed()[-1] == "* goodbye"
    carol.expect("* bob left")
    wait_for(lambda: len(server.registry) == 1, message="alice and bob gone")


def test_unknown_command_and_double_slash(server, chat_client):
    alice, bob = chat_client(server), chat_client(server)
    assert reply(alice, "/frobnicate now") == ["! unknown command /frobnicate (try /help)"]
    alice.send("//frobnicate is not a command")
    bob.expect("<guest-1> /frobnicate is not a command")


EVERY_COMMAND = [
    "/nick",
    "/nick bob",
    "/join",
    "/join dev",
    "/rooms",
    "/who",
    "/msg",
    "/msg bob hi",
    "/me",
    "/me waves",
    "/help",
    "/nosuchcommand",
]


def test_every_command_answers(server, chat_client):
    """No command leaves the client waiting in silence."""
    alice = chat_client(server)
    chat_client(server)
    for line in EVERY_COMMAND:
        assert reply(alice, line), f"{line!r} got no answer"
