"""Greets each new client with a configurable welcome text."""

from __future__ import annotations

import argparse

from chatcore import Client, Config, UsageError, hookimpl

DEFAULT_TEXT = "Welcome to chatcore, {nick}! You are in {room} ({count} here). Type /help for the commands."


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("welcome plugin")
    group.add_argument(
        "--welcome-text",
        default=DEFAULT_TEXT,
        metavar="TEXT",
        help=(
            "text sent to each new client, with placeholders {nick}, {room} and {count} "
            "(people in the room, the newcomer included); '\\n' starts a new line "
            f"(default: {DEFAULT_TEXT!r})"
        ),
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    try:
        config.options.welcome_text.format(nick="", room="", count=0)
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(
            f"--welcome-text: bad placeholder {exc}; use {{nick}}, {{room}} and {{count}} (double a brace to show it)"
        ) from None


@hookimpl(trylast=True)
def chatcore_welcome(client: Client) -> list[str]:
    server = client.server
    text: str = server.config.options.welcome_text
    count = len(server.registry.members(client.room))
    return text.replace("\\n", "\n").format(nick=client.nick, room=client.room, count=count).split("\n")
