"""Rooms for real over the native protocol: many rooms per connection, topics,
modes, ban masks, invitations, room operators and kicks (issue 24)."""

from __future__ import annotations

import re

import pytest

from chatcore import hookimpl
from chatcore.engine.auth import hash_password
from chatcore.engine.rooms import ModeError, normal_mask, parse_modes
from chatcore.testing import LineClient

PASSWORD = "s3cret-oper"
_NOISE = re.compile(r"^(\[\S+\] )?\* (?!you )\S+ (joined$|left\b|is now known as )")


def reply(client: LineClient, line: str) -> list[str]:
    """What the server answered ``line``, without others' joins and leaves."""
    client.send(line)
    return [answer for answer in client.sync() if not _NOISE.match(answer)]


def in_room(client: LineClient, room: str) -> None:
    client.send(f"/join {room}")
    client.expect(re.compile(rf"^\* you are now in {room} "))


# -- the parts -------------------------------------------------------------------


def test_masks_are_completed_and_folded():
    assert normal_mask("Bob") == "bob!*@*"
    assert normal_mask("*@10.0.0.1") == "*!*@10.0.0.1"
    assert normal_mask("bob!u") == "bob!u@*"
    assert normal_mask("a!b@c") == "a!b@c"
    for bad in ("", "a b", "a!b!c", "a@b@c", "+b", "x" * 201):
        assert normal_mask(bad) is None, bad


def test_mode_strings_parse_with_their_arguments():
    requests = parse_modes("+kl-m+o", ["key", "10", "bob"])
    assert [(r.adding, r.mode, r.argument) for r in requests] == [
        (True, "k", "key"),
        (True, "l", "10"),
        (False, "m", ""),
        (True, "o", "bob"),
    ]
    assert [(r.mode, r.argument) for r in parse_modes("+b", [])] == [("b", "")]  # the list
    for modes, args, code in [
        ("+x", [], "unknown_mode"),
        ("+k", [], "missing_argument"),
        ("+l", ["ten"], "invalid_argument"),
        ("+l", ["0"], "invalid_argument"),
        ("+o", [], "missing_argument"),
        ("+b", ["a b"], "invalid_argument"),
        ("+k", ["has space"], "invalid_argument"),
    ]:
        with pytest.raises(ModeError) as raised:
            parse_modes(modes, args)
        assert raised.value.code == code, (modes, args)


# -- over sockets --------------------------------------------------------------------


def test_the_first_member_runs_the_room_and_sets_its_topic(chat_server_factory, connect):
    server = chat_server_factory()
    alice, bob = connect(server, "alice"), connect(server, "bob")
    in_room(alice, "dev")
    in_room(bob, "dev")
    assert reply(bob, "/topic") == ["* dev has no topic"]
    # +t (every new room has it): only its operators set the topic.
    assert reply(bob, "/topic hello") == ["! only operators of dev set its topic (it is +t)"]
    assert reply(alice, "/topic  Release on Friday ") == ["[dev] * alice set the topic: Release on Friday"]
    bob.expect("[dev] * alice set the topic: Release on Friday")
    assert reply(bob, "/topic") == ["* topic of dev: Release on Friday (set by alice)"]
    carol = connect(server, "carol")
    carol.send("/join dev")
    carol.expect("* you are now in dev (3 here)")
    assert carol.readline() == "* topic: Release on Friday (set by alice)"
    assert reply(alice, "/mode") == ["* modes of dev: +nt"]
    assert reply(alice, "/mode -t") == ["[dev] * alice set mode -t"]
    bob.expect("[dev] * alice set mode -t")
    assert reply(bob, "/topic --clear") == ["[dev] * bob cleared the topic"]
    state = server.rooms.get("dev")
    assert state is not None
    assert (state.topic, state.topic_by) == ("", "bob")


def test_moderated_rooms_hear_operators_and_voiced_members_only(chat_server_factory, connect):
    server = chat_server_factory()
    alice, bob, carol = connect(server, "alice"), connect(server, "bob"), connect(server, "carol")
    for client in (alice, bob, carol):
        in_room(client, "dev")
        client.send("/part lobby")
        client.expect(re.compile(r"^\* you left lobby"))
    assert reply(alice, "/mode +m") == ["* alice set mode +m"]
    bob.expect("* alice set mode +m")
    assert reply(bob, "quiet please?") == ["! dev is moderated: only its operators and voiced members speak"]
    assert reply(alice, "/mode +v bob") == ["* alice set mode +v bob"]
    bob.expect("* alice set mode +v bob")
    bob.send("now I may")
    carol.expect("<bob> now I may")
    alice.expect("<bob> now I may")
    assert reply(bob, "/mode +v carol") == ["! you are not an operator of dev"]
    assert reply(alice, "/mode +o carol") == ["* alice set mode +o carol"]
    carol.expect("* alice set mode +o carol")
    assert reply(carol, "/mode -v+m bob") == ["* carol set mode -v bob"]  # +m was on: no change told
    bob.expect("* carol set mode -v bob")
    assert reply(bob, "and now?") == ["! dev is moderated: only its operators and voiced members speak"]


def test_invite_only_keys_and_limits_keep_people_out_until_invited(chat_server_factory, connect):
    server = chat_server_factory()
    alice, bob, carol = connect(server, "alice"), connect(server, "bob"), connect(server, "carol")
    in_room(alice, "ops")
    assert reply(alice, "/mode +ik hunter2") == ["[ops] * alice set mode +ik hunter2"]
    assert reply(bob, "/join ops") == ["! ops is invite only: an operator of it must /invite you"]
    assert reply(bob, "/invite carol ops") == ["! you are not in ops"]
    assert reply(alice, "/invite bob ops") == ["* invited bob to ops"]
    bob.expect("* alice invites you to ops: /join ops")
    assert reply(bob, "/join ops") == ["* you are now in ops (2 here)"]  # the invitation passes +k too, once
    assert reply(alice, "/mode -i") == ["[ops] * alice set mode -i"]
    assert reply(carol, "/join ops") == ["! ops needs a key: /join ops KEY"]
    assert reply(carol, "/join ops wrong") == ["! ops needs a key: /join ops KEY"]
    assert reply(alice, "/mode +l 2") == ["[ops] * alice set mode +l 2"]
    assert reply(carol, "/join ops hunter2") == ["! ops is full (2 members)"]
    assert reply(alice, "/mode -l") == ["[ops] * alice set mode -l"]
    assert reply(carol, "/join ops hunter2") == ["* you are now in ops (3 here)"]
    assert server.registry.rooms()["ops"] == 3


def test_a_limit_of_one_says_one_member(chat_server_factory, connect):
    server = chat_server_factory()
    alice, bob = connect(server, "alice"), connect(server, "bob")
    in_room(alice, "solo")
    assert reply(alice, "/mode +l 1") == ["[solo] * alice set mode +l 1"]
    assert reply(bob, "/join solo") == ["! solo is full (1 member)"]


def test_a_mode_change_that_changes_nothing_is_answered_to_its_sender_alone(chat_server_factory, connect):
    """Every command answers (docs/commands.md): a /mode whose changes are
    all in force already is told so, and the room hears nothing."""
    server = chat_server_factory()
    alice, bob = connect(server, "alice"), connect(server, "bob")
    in_room(alice, "dev")
    in_room(bob, "dev")
    bob.sync()
    for line in ("/mode +t", "/mode -m", "/mode -k", "/mode -l", "/mode -b nobody", "/mode +o alice", "/mode -v bob"):
        assert reply(alice, line) == ["* no change: dev is already as asked (+nt)"], line
    assert reply(alice, "/mode dev +nt-s") == ["* no change: dev is already as asked (+nt)"]
    # Nothing but, now and then, alice's join: its notice may reach the room
    # after bob's own join, though numbered before it.
    assert [line for line in bob.sync() if not _NOISE.match(line)] == []
    # A change of some of it tells the room that part alone, as before.
    assert reply(alice, "/mode +tm") == ["[dev] * alice set mode +m"]
    bob.expect("[dev] * alice set mode +m")
    # Refusals come first: a member who is no operator is told that.
    assert reply(bob, "/mode +t") == ["! you are not an operator of dev"]


def test_a_newcomer_enters_the_default_room_only_as_a_join_would_let_it_in(chat_server_factory, connect):
    """The lobby's +b, +i, +k and +l keep native and web newcomers out as
    they keep out a /join (and IRC's JOIN): they enter in no room, told why."""
    server = chat_server_factory()
    alice = connect(server, "alice")  # the lobby's first member: its operator
    for number, (modes, told) in enumerate(
        [
            ("+b bob0", "! you are banned from lobby"),
            ("+i", "! lobby is invite only: an operator of it must /invite you"),
            ("+k hunter2", "! lobby needs a key: /join lobby KEY"),
            ("+l 1", "! lobby is full (1 member)"),
        ]
    ):
        assert reply(alice, f"/mode {modes}")[0].startswith("* alice set mode +")
        newcomer = LineClient(server.address)
        try:
            newcomer.send(f"/nick bob{number}")  # at once: it enters under that name
            assert newcomer.sync() == [
                f"* Welcome to chatcore, bob{number}! Type /help for the commands.",
                told,
                f"* you are now known as bob{number}",
            ]
            assert reply(newcomer, "/rooms") == ["* 1 room: lobby (1)"]
            assert server.nicks_in("lobby") == ["alice"]
            assert alice.sync() == []  # nobody joined
        finally:
            newcomer.close()
        undo = modes.replace("+", "-").replace(" 1", "")
        assert reply(alice, f"/mode {undo}")[0].startswith("* alice set mode -")
    # With the modes lifted, newcomers enter it as ever.
    carol = connect(server, "carol")
    assert reply(carol, "/rooms") == ["* 1 room: lobby (2, current)"]


def test_an_invitation_goes_with_a_name_given_up_and_follows_a_rename(chat_server_factory, connect):
    server = chat_server_factory()
    alice, bob, carol = connect(server, "alice"), connect(server, "bob"), connect(server, "carol")
    in_room(alice, "ops")
    for number in range(20):  # rooms without invitations, which a quit need not look through
        in_room(alice, f"other{number}")
    assert reply(alice, "/join ops") == ["* you now talk in ops"]
    assert reply(alice, "/mode +i") == ["[ops] * alice set mode +i"]
    assert reply(alice, "/invite bob ops") == ["* invited bob to ops"]
    assert reply(alice, "/invite carol ops") == ["* invited carol to ops"]
    carol.expect("* alice invites you to ops: /join ops")
    bob.send("/quit")
    bob.wait_closed()
    assert reply(carol, "/nick carla") == ["* you are now known as carla"]
    # Whoever takes the names next inherits nothing.
    new_bob, new_carol = connect(server, "bob"), connect(server, "carol")
    assert reply(new_bob, "/join ops") == ["! ops is invite only: an operator of it must /invite you"]
    assert reply(new_carol, "/join ops") == ["! ops is invite only: an operator of it must /invite you"]
    # The renamed one keeps hers (IRC servers keep a user's invitations through NICK), once.
    assert reply(carol, "/join ops") == ["* you are now in ops (2 here)"]
    assert reply(carol, "/part ops") == ["* you left ops; you now talk in lobby"]
    assert reply(carol, "/join ops") == ["! ops is invite only: an operator of it must /invite you"]


def test_ban_masks_and_exceptions(chat_server_factory, connect):
    server = chat_server_factory()
    alice = connect(server, "alice")
    bob = connect(server, "bob", source="127.0.0.2")
    carol = connect(server, "carol", source="127.0.0.2")
    in_room(alice, "dev")
    assert reply(alice, "/mode +b *!*@127.0.0.2") == ["[dev] * alice set mode +b *!*@127.0.0.2"]
    assert reply(alice, "/mode +e Carol") == ["[dev] * alice set mode +e carol!*@*"]
    assert reply(bob, "/join dev") == ["! you are banned from dev"]
    assert reply(carol, "/join dev") == ["* you are now in dev (2 here)"]
    assert reply(alice, "/mode +b") == ["* bans of dev: *!*@127.0.0.2 (by alice)"]
    assert reply(alice, "/mode +e") == ["* ban exceptions of dev: carol!*@* (by alice)"]
    assert reply(alice, "/mode -b *!*@127.0.0.2") == ["[dev] * alice set mode -b *!*@127.0.0.2"]
    assert reply(bob, "/join dev") == ["* you are now in dev (3 here)"]


def test_a_kick_puts_a_member_out_of_one_room_and_it_stays_connected(chat_server_factory, connect):
    server = chat_server_factory()
    alice, bob = connect(server, "alice"), connect(server, "bob")
    in_room(alice, "dev")
    in_room(bob, "dev")
    assert reply(bob, "/kick alice") == ["! you are not an operator of dev"]
    assert reply(alice, "/kick bob enough spam") == ["[dev] * bob was kicked out by alice (enough spam)"]
    bob.expect("* you were kicked out of dev by alice (enough spam)")
    assert reply(bob, "/rooms") == ["* 2 rooms: dev (1), lobby (2, current)"]
    assert reply(alice, "/kick bob") == ["! bob is not in dev"]
    assert reply(alice, "/kick nobody") == ["! nobody is not in dev"]


def test_errors_change_nothing(chat_server_factory, connect):
    server = chat_server_factory()
    alice = connect(server, "alice")
    in_room(alice, "dev")
    for line, answer in [
        ("/mode +x", "! unknown mode 'x': rooms have +beklimnstov"),
        ("/mode +l many", "! invalid limit 'many': a whole number from 1"),
        ("/mode +o", "! +o needs a nickname"),
        ("/mode +o nobody", "! nobody is not in dev"),
        ("/mode +b a!b!c", "! invalid mask for +b: use nick!user@host with * and ?"),
        ("/mode dev m", "! usage: /mode [ROOM] +MODES [ARGS] or -MODES [ARGS], for example /mode +m or /mode +o bob"),
        (
            "/mode a.b +m",
            "! invalid room name 'a.b': use 1 to 32 letters (a-z, A-Z), digits, '_' or '-' "
            "(usage: /mode [ROOM] [+MODES|-MODES [ARGS]])",
        ),
        ("/invite nobody", "! no such nick 'nobody'"),
        ("/kick", "! usage: /kick NICK [REASON]"),
    ]:
        assert reply(alice, line) == [answer], line
    state = server.rooms.get("dev")
    assert state is not None
    assert (state.flags, state.limit, state.bans, state.operators) == ({"n", "t"}, 0, {}, {"alice"})


def test_roles_follow_renames_and_go_with_a_part_and_the_room_with_its_last_member(chat_server_factory, connect):
    server = chat_server_factory()
    alice, bob = connect(server, "alice"), connect(server, "bob")
    in_room(alice, "dev")
    in_room(bob, "dev")
    reply(alice, "/nick alicia")
    state = server.rooms.get("dev")
    assert state is not None
    assert state.operators == {"alicia"}
    reply(alice, "/part dev")
    assert state.operators == set()
    reply(bob, "/part dev")
    assert server.rooms.get("dev") is None  # emptied: its state is gone


def test_server_operators_run_every_room(chat_server_factory, connect, tmp_path):
    opers = tmp_path / "opers"
    opers.write_text(f"root {hash_password(PASSWORD)}\n", encoding="utf-8")
    server = chat_server_factory("--opers-file", str(opers))
    alice, root = connect(server, "alice"), connect(server, "root")
    in_room(alice, "dev")
    reply(alice, "/mode +i")
    root.send(f"/oper root {PASSWORD}")
    root.expect("* you are now an operator (root)")
    assert reply(root, "/join dev") == ["* you are now in dev (2 here)"]  # past +i
    assert reply(root, "/mode +m") == ["[dev] * root set mode +m"]
    assert reply(root, "/kick alice") == ["[dev] * alice was kicked out by root"]
    alice.expect("* you were kicked out of dev by root")


def test_a_plugin_names_the_server_operators_who_run_every_room(chat_server_factory, connect):
    """``chatcore_server_operator``: a plugin (here one that trusts a nick,
    where a real one would ask an account or a directory) grants what the
    opers plugin grants a /oper login."""

    class TrustCarol:
        @hookimpl
        def chatcore_server_operator(self, client):
            return "trusted" if client.nick == "carol" else None

    server = chat_server_factory(plugins=[TrustCarol()])
    alice, carol = connect(server, "alice"), connect(server, "carol")
    in_room(alice, "dev")
    assert reply(alice, "/mode +i") == ["[dev] * alice set mode +i"]
    carol.send("/join dev")  # invite only, but carol runs every room
    carol.expect(re.compile(r"^\* you are now in dev "))
    assert reply(carol, "/topic set by the trusted") == ["[dev] * carol set the topic: set by the trusted"]
    bob = connect(server, "bob")
    assert reply(bob, "/join dev") == ["! dev is invite only: an operator of it must /invite you"]


def test_what_the_review_found_a_member_cannot_open_the_room_and_secrets_stay_secret(chat_server_factory, connect):
    server = chat_server_factory()
    alice, bob, mallory = connect(server, "alice"), connect(server, "bob"), connect(server, "mallory")
    in_room(alice, "ops")
    in_room(bob, "ops")
    assert reply(alice, "/mode +kb hunter2 mallory") == ["[ops] * alice set mode +kb hunter2 mallory!*@*"]
    bob.expect("[ops] * alice set mode +kb hunter2 mallory!*@*")
    # A member's invitation tells the invited, and lets them past nothing.
    assert reply(bob, "/invite mallory ops") == ["* invited mallory to ops"]
    mallory.expect("* bob invites you to ops: /join ops")
    assert reply(mallory, "/join ops") == ["! you are banned from ops"]
    # A limit in digits that are not ASCII is an error, not a crash.
    assert reply(alice, "/mode +l ²") == ["! invalid limit '²': a whole number from 1"]
    # An operator's invitation goes with the name: whoever takes it next has none.
    assert reply(alice, "/mode -b+i mallory") == ["[ops] * alice set mode -b+i mallory!*@*"]
    carol = connect(server, "carol")
    assert reply(alice, "/invite carol ops") == ["* invited carol to ops"]
    carol.send("/nick carol2")
    carol.expect("* you are now known as carol2")
    assert reply(mallory, "/nick carol") == ["* you are now known as carol"]
    assert reply(mallory, "/join ops") == ["! ops is invite only: an operator of it must /invite you"]
    # A secret room is not listed, nor its members shown, outside it.
    assert reply(alice, "/mode +s") == ["[ops] * alice set mode +s"]
    bob.expect("[ops] * alice set mode +s")
    assert "ops" not in reply(mallory, "/rooms")[0]
    assert reply(mallory, "/who ops") == ["* nobody is in ops"]
    assert reply(bob, "/who ops") == ["* in ops (2): alice, bob"]


def test_a_secret_room_is_no_such_room_to_those_outside_it(chat_server_factory, connect):
    server = chat_server_factory()
    alice, mallory = connect(server, "alice"), connect(server, "mallory")
    in_room(alice, "ops")
    assert reply(alice, "/mode +sk hunter2") == ["[ops] * alice set mode +sk hunter2"]
    reply(alice, "/topic plans")
    # Asked about by name from outside, the secret room answers as one that
    # does not exist: no modes, no lists, no topic, no invitation.
    for line in ["/mode {room}", "/mode {room} +b", "/mode {room} +m", "/invite alice {room}"]:
        secret, absent = reply(mallory, line.format(room="ops")), reply(mallory, line.format(room="nowhere"))
        assert secret == [text.replace("nowhere", "ops") for text in absent] == ["! no such room 'ops'"], line
    assert server.rooms.get("ops").flags == {"n", "s", "t"}  # nothing changed
    # A room that is not secret shows its modes to anyone, its key to members only.
    assert reply(alice, "/mode -s") == ["[ops] * alice set mode -s"]
    assert reply(mallory, "/mode ops") == ["* modes of ops: +knt *"]
    assert reply(alice, "/mode ops") == ["* modes of ops: +knt hunter2"]
    assert reply(mallory, "/mode ops +m") == ["! you are not an operator of ops"]
