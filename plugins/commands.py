"""The built-in commands: /nick, /join, /part, /rooms, /who, /topic, /mode,
/kick, /invite, /msg, /me, /help, /ping, /timestamps and /quit.

Always on, and an ordinary plugin all the same: every command goes through
``chatcore_command`` exactly as a third-party plugin's would, and the
implementations are ``trylast`` so that a plugin can override any of them.
Every command answers the client (a notice, or an error starting ``!``), so a
client never waits in silence. docs/commands.md is the reference.
"""

from __future__ import annotations

from collections.abc import Callable

from chatcore import Client, Message, hookimpl
from chatcore.engine.rooms import LIST_MODES, ModeError, parse_modes
from chatcore.events import Members, RoomList
from chatcore.names import nick_problem, room_problem
from chatcore.wire.native import NO_ROOM, NativeFormat, TimedNativeFormat

HELP = [
    ("/nick NAME", "change your nickname"),
    ("/join ROOM [KEY]", "enter ROOM too (made if new; KEY if it has one) and talk there; in it already: talk there"),
    ("/part [ROOM] [REASON]", "leave ROOM (your current room if none is given)"),
    ("/rooms", "list the rooms, how many people are in each, and which you are in"),
    ("/who [ROOM]", "list the people in ROOM (your current room if none is given)"),
    ("/topic [TEXT|--clear]", "show or set your current room's topic (+t: its operators)"),
    (
        "/mode [ROOM] [MODES [ARGS]]",
        "show or change the modes of ROOM (your current room if none): +imnst, +k KEY, +l N, +o/+v NICK, +b/+e MASK",
    ),
    ("/kick NICK [REASON]", "room operators: put NICK out of your current room"),
    ("/invite NICK [ROOM]", "invite NICK to ROOM (your current room if none is given), past +i, +k and +l"),
    ("/msg NICK TEXT", "send TEXT to NICK only, in whatever room they are"),
    ("/me TEXT", "say TEXT as an action: * you TEXT"),
    ("/help", "list the commands"),
    ("/ping", "the server answers * pong (to check the connection)"),
    ("/timestamps [on|off]", "put the time each line was said before it: [2026-12-06T23:59:01Z] <bob> hi (UTC)"),
    ("/quit [REASON]", "leave the chat; the others see the reason"),
]


@hookimpl(trylast=True)
def chatcore_command_help() -> list[tuple[str, str]]:
    return HELP


@hookimpl(trylast=True)
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    handler = _COMMANDS.get(name)
    if handler is None:
        return None
    handler(client, args)
    return True


def _nick(client: Client, args: str) -> None:
    nick = args.strip()
    if not nick:
        client.error("usage: /nick NAME")
        return
    problem = nick_problem(nick)
    if problem:
        client.error(problem)
        return
    old = client.nick
    if old == nick:
        client.notice(f"you are already known as {nick}")
        return
    if not client.server.change_nick(client, nick):
        client.error(f"nickname {nick!r} is taken")
        return
    client.notice(f"you are now known as {nick}")


def _join(client: Client, args: str) -> None:
    room, _, key = args.strip().partition(" ")
    if not room:
        client.error("usage: /join ROOM [KEY]")
        return
    # Room names ignore case, as nicknames do; lower case is the one
    # spelling, so "/join Dev" and "/join dev" meet in the same room.
    room = room.lower()
    if room == client.room:
        client.notice(f"you are already in {room}")
        return
    if room in client.rooms:  # switching: plain lines go there from now on
        client.server.registry.join(client, room)
        client.notice(f"you now talk in {room}")
        return
    refusal = client.server.join_room(client, room, key.strip())
    if refusal is not None:  # else the client is told by its protocol (the engine sends it its Joined)
        client.error(refusal.text)


def _part(client: Client, args: str) -> None:
    first, _, rest = args.strip().partition(" ")
    # "/part" leaves the current room; "/part dev bye" names the room, and
    # "/part bye" (not a room of yours) is a reason for leaving the current one.
    if first and first.lower() in client.rooms:
        room, reason = first.lower(), rest.strip()
    else:
        room, reason = client.room, args.strip()
    if not room:
        client.error("you are in no room; /join ROOM to enter one")
        return
    client.server.part_room(client, room, client.server.leave_reason(client, reason, ""))


def _current(client: Client) -> str | None:
    """The client's current room, or None after telling it it has none."""
    if not client.room:
        client.error("you are in no room; /join ROOM first")
        return None
    return client.room


def _topic(client: Client, args: str) -> None:
    room = _current(client)
    if room is None:
        return
    text = args.strip()
    if not text:
        state = client.server.rooms.get(room)
        if state is None or not state.topic:
            client.notice(f"{room} has no topic")
        else:
            client.notice(f"topic of {room}: {state.topic} (set by {state.topic_by})")
        return
    refusal = client.server.set_topic(client, room, "" if text == "--clear" else text)
    if refusal is not None:
        client.error(refusal.text)


def _mode(client: Client, args: str) -> None:
    words = args.split()
    if words and words[0][0] not in "+-":  # "/mode dev +m": another room than the current one
        room = words.pop(0).lower()
        if (problem := room_problem(room)) is not None:
            client.error(f"{problem} (usage: /mode [ROOM] [+MODES|-MODES [ARGS]])")
            return
    elif (current := _current(client)) is not None:
        room = current
    else:
        return
    server = client.server
    state = server.rooms.get(room)
    # A secret room is no such room to those outside it: not its modes, nor its lists.
    if state is None or not server.room_visible(client, room):
        client.error(f"no such room {room!r}")
        return
    if not words:
        shown, shown_arguments = state.modes(with_key=room in client.rooms)
        client.notice(f"modes of {room}: {' '.join((shown, *shown_arguments))}")
        return
    modes, arguments = words[0], words[1:]
    if modes[0] not in "+-":
        client.error("usage: /mode [ROOM] +MODES [ARGS] or -MODES [ARGS], for example /mode +m or /mode +o bob")
        return
    try:
        requests = parse_modes(modes, arguments)
    except ModeError as exc:
        client.error(str(exc))
        return
    # A list letter without a mask asks for the list (/mode +b).
    for letter in dict.fromkeys(r.mode for r in requests if r.mode in LIST_MODES and not r.argument):
        masks = state.bans if letter == "b" else state.excepts
        what = "bans" if letter == "b" else "ban exceptions"
        listing = ", ".join(f"{mask} (by {by})" for mask, (by, _) in masks.items())
        client.notice(f"{what} of {room}: {listing}" if masks else f"{room} has no {what}")
    if all(r.mode in LIST_MODES and not r.argument for r in requests):
        return
    # Asked before the change: a /mode whose changes are all in force
    # already changes nothing and tells the room nothing, so its sender is
    # told here (every command answers). IRC says nothing then, as its
    # servers do.
    unchanged = server.effective_modes(state, requests)[0] == ""
    refusal = server.change_modes(client, room, modes, arguments)
    if refusal is not None:
        client.error(refusal.text)
    elif unchanged:
        client.notice(f"no change: {room} is already as asked ({state.modes()[0]})")


def _kick(client: Client, args: str) -> None:
    room = _current(client)
    if room is None:
        return
    nick, _, reason = args.strip().partition(" ")
    if not nick:
        client.error("usage: /kick NICK [REASON]")
        return
    refusal = client.server.kick_from_room(client, room, nick, reason.strip())
    if refusal is not None:
        client.error(refusal.text)


def _invite(client: Client, args: str) -> None:
    nick, _, room = args.strip().partition(" ")
    room = room.strip().lower() or client.room
    if not nick or not room:
        client.error("usage: /invite NICK [ROOM]")
        return
    refusal = client.server.invite(client, room, nick)
    if refusal is not None:
        client.error(refusal.text)
        return
    client.notice(f"invited {nick} to {room}")


def _rooms(client: Client, args: str) -> None:
    server = client.server
    shown = [(room, count) for room, count in sorted(server.room_counts().items()) if server.room_visible(client, room)]
    client.send(RoomList(tuple(shown), client.rooms, client.room))


def _who(client: Client, args: str) -> None:
    room = args.strip().lower() or client.room
    if not room:
        client.error("usage: /who ROOM (you are in no room)")
        return
    problem = room_problem(room)
    if problem:
        client.error(problem)
        return
    server = client.server
    # A secret room's members are not shown outside it: as if it were empty.
    client.send(Members(room, tuple(server.nicks_in(room)) if server.room_visible(client, room) else ()))


def _msg(client: Client, args: str) -> None:
    nick, _, text = args.partition(" ")
    text = text.strip()
    if not nick or not text:
        client.error("usage: /msg NICK TEXT")
        return
    client.server.send_private(client, nick, text)


def _me(client: Client, args: str) -> None:
    if not args:
        client.error("usage: /me TEXT")
        return
    if not client.room:
        client.error(NO_ROOM)
        return
    client.server.broadcast_message(Message(client, client.room, args, kind="action"))


def _help(client: Client, args: str) -> None:
    entries = sorted(client.server.hooks.command_help(client))
    width = max(len(usage) for usage, _ in entries)
    client.notice("commands:")
    for usage, text in entries:
        client.notice(f"  {usage.ljust(width)}  {text}")


def _ping(client: Client, args: str) -> None:
    client.notice("pong")


def _timestamps(client: Client, args: str) -> None:
    """``/timestamps on|off``: this connection's room lines and private
    messages with the time they were said before them (a format of their
    own, :class:`~chatcore.wire.native.TimedNativeFormat`)."""
    wanted = args.strip().lower()
    if not isinstance(client.wire, NativeFormat):
        client.error("/timestamps is for native connections (IRC clients: CAP REQ server-time)")
        return
    if wanted not in ("on", "off", ""):
        client.error("usage: /timestamps [on|off]")
        return
    if wanted:
        client.server.registry.change_wire(client, client.wire.with_timestamps(wanted == "on"))
    state = "on" if isinstance(client.wire, TimedNativeFormat) else "off"
    client.notice(f"timestamps are {state}")


def _quit(client: Client, args: str) -> None:
    client.disconnect(client.server.leave_reason(client, args, "quit"), notice="goodbye", cause="quit")


_COMMANDS: dict[str, Callable[[Client, str], None]] = {
    "nick": _nick,
    "join": _join,
    "part": _part,
    "topic": _topic,
    "mode": _mode,
    "kick": _kick,
    "invite": _invite,
    "rooms": _rooms,
    "who": _who,
    "msg": _msg,
    "me": _me,
    "help": _help,
    "ping": _ping,
    "timestamps": _timestamps,
    "quit": _quit,
}
