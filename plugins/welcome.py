"""Greets each new client with a configurable welcome text."""

from __future__ import annotations

import argparse
import string

from chatcore import Client, Config, UsageError, hookimpl

#: Loaded and unloaded by a reload (SIGHUP) while the server runs:
#: chatcore_server_stop undoes all that configuring and starting did.
UNLOADABLE = True

PLACEHOLDERS = ("nick", "room", "count")
DEFAULT_TEXT = "Welcome to chatcore, {nick}! You are in {room} ({count} here). Type /help for the commands."
#: The default for a client that arrives in no room (IRC clients join their own).
DEFAULT_TEXT_NO_ROOM = "Welcome to chatcore, {nick}! Type /help for the commands."


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("welcome plugin")
    group.add_argument(
        "--welcome-text",
        default=DEFAULT_TEXT,
        metavar="TEXT",
        help=(
            "text sent to each new client, with placeholders {nick}, {room} and {count} "
            "(people in the room, the newcomer included; in a cluster the other servers' as of a few seconds before); "
            "'\\n' starts a new line "
            f"(default: {DEFAULT_TEXT!r})"
        ),
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    check_text(config.options.welcome_text)


@hookimpl
def chatcore_reload(new: argparse.Namespace) -> None:
    # Nothing to apply: chatcore_welcome reads the running options each time.
    check_text(new.welcome_text)


def check_text(text: str) -> None:
    """:raises UsageError: ``text`` has a placeholder other than ours."""
    usage = "use {nick}, {room} and {count} (double a brace to show it)"
    try:
        parsed = string.Formatter().parse(text)
        fields = [field for _, field, _, _ in parsed if field is not None]
    except ValueError as exc:
        raise UsageError(f"--welcome-text: {exc}; {usage}") from None
    for field in fields:
        # Plain names only: {nick.upper} or {room[0]} would reach into objects.
        if field not in PLACEHOLDERS:
            raise UsageError(f"--welcome-text: bad placeholder {{{field}}}; {usage}")


@hookimpl(trylast=True)
def chatcore_welcome(client: Client) -> list[str]:
    server = client.server
    text: str = server.config.options.welcome_text
    room = client.room
    if not room and text == DEFAULT_TEXT:
        text = DEFAULT_TEXT_NO_ROOM
    # Here, the newcomer included, and on the other servers of a cluster.
    count = len(server.registry.members(room)) + server.backplane.count_elsewhere(room) if room else 0
    return text.replace("\\n", "\n").format(nick=client.nick, room=room or "no room", count=count).split("\n")
