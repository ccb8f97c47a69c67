"""A test plugin that adds a command, /echo, the way a third-party plugin would."""

from __future__ import annotations

from chatcore import Client, hookimpl


@hookimpl
def chatcore_command_help() -> list[tuple[str, str]]:
    return [("/echo TEXT", "the server sends TEXT back to you")]


@hookimpl
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    if name != "echo":
        return None
    client.notice(f"echo: {args}" if args else "echo")
    return True
