"""The built-in commands: /help, /ping and /quit."""

from __future__ import annotations

from chatcore import Client, hookimpl

HELP = [
    ("/help", "list the commands"),
    ("/ping", "the server answers * pong (to check the connection)"),
    ("/quit [REASON]", "leave the chat; the others see the reason"),
]


@hookimpl(trylast=True)
def chatcore_command_help() -> list[tuple[str, str]]:
    return HELP


@hookimpl(trylast=True)
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    if name == "quit":
        client.disconnect(args or "quit", notice="goodbye")
        return True
    if name == "ping":
        client.notice("pong")
        return True
    if name == "help":
        entries = client.server.hooks.command_help()
        width = max(len(usage) for usage, _ in entries)
        client.notice("commands:")
        for usage, text in sorted(entries):
            client.notice(f"  {usage.ljust(width)}  {text}")
        return True
    return None
