"""The built-in commands: /nick, /join, /rooms, /who, /msg, /me, /help, /ping and /quit.

Always on, and an ordinary plugin all the same: every command goes through
``chatcore_command`` exactly as a third-party plugin's would, and the
implementations are ``trylast`` so that a plugin can override any of them.
Every command answers the client (a notice, or an error starting ``!``), so a
client never waits in silence. docs/commands.md is the reference.
"""

from __future__ import annotations

from collections.abc import Callable

from chatcore import Client, Message, hookimpl
from chatcore.events import Members, RoomList
from chatcore.names import nick_problem, room_problem

HELP = [
    ("/nick NAME", "change your nickname"),
    ("/join ROOM", "leave this room and enter ROOM (created if new)"),
    ("/rooms", "list the rooms and how many people are in each"),
    ("/who", "list the people in your room"),
    ("/msg NICK TEXT", "send TEXT to NICK only, in whatever room they are"),
    ("/me TEXT", "say TEXT as an action: * you TEXT"),
    ("/help", "list the commands"),
    ("/ping", "the server answers * pong (to check the connection)"),
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
    room = args.strip()
    if not room:
        client.error("usage: /join ROOM")
        return
    problem = room_problem(room)
    if problem:
        client.error(problem)
        return
    # Room names ignore case, as nicknames do; lower case is the one
    # spelling, so "/join Dev" and "/join dev" meet in the same room.
    room = room.lower()
    if room == client.room:
        client.notice(f"you are already in {room}")
        return
    client.server.change_room(client, room, reason=f"joined {room}")
    count = len(client.server.registry.members(room))
    client.notice(f"you are now in {room} ({count} here)")


def _rooms(client: Client, args: str) -> None:
    client.send(RoomList(tuple(sorted(client.server.room_counts().items()))))


def _who(client: Client, args: str) -> None:
    client.send(Members(client.room, tuple(client.server.nicks_in(client.room))))


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
    client.server.broadcast_message(Message(client, client.room, args, kind="action"))


def _help(client: Client, args: str) -> None:
    entries = sorted(client.server.hooks.command_help(client))
    width = max(len(usage) for usage, _ in entries)
    client.notice("commands:")
    for usage, text in entries:
        client.notice(f"  {usage.ljust(width)}  {text}")


def _ping(client: Client, args: str) -> None:
    client.notice("pong")


def _quit(client: Client, args: str) -> None:
    client.disconnect(client.server.leave_reason(client, args, "quit"), notice="goodbye", cause="quit")


_COMMANDS: dict[str, Callable[[Client, str], None]] = {
    "nick": _nick,
    "join": _join,
    "rooms": _rooms,
    "who": _who,
    "msg": _msg,
    "me": _me,
    "help": _help,
    "ping": _ping,
    "quit": _quit,
}
