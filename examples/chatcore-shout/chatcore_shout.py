"""Adds /shout TEXT, which says TEXT in capitals to the room."""

import argparse

from chatcore import Client, Message, hookimpl


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shout plugin")
    group.add_argument("--shout-prefix", default="", help="put this before every shout")


@hookimpl
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    if name != "shout":
        return None
    if not args:
        client.error("usage: /shout TEXT")
        return True
    prefix = client.server.config.options.shout_prefix
    client.server.broadcast_message(Message(client, client.room, prefix + args.upper()))
    client.notice("shouted")
    return True


@hookimpl
def chatcore_command_help() -> list[tuple[str, str]]:
    return [("/shout TEXT", "say TEXT in capitals")]
