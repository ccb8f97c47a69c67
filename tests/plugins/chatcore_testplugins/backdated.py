"""A test plugin whose command ``/backdate SECONDS TEXT`` says TEXT in the
sender's room as if said at SECONDS (since 1970): what a line delayed by a
cluster's outage looks like, so a test can tell the server's time of a line
from the time a client received it."""

from __future__ import annotations

from chatcore import Client, hookimpl
from chatcore.events import Chat


@hookimpl
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    if name != "backdate":
        return None
    when, _, text = args.partition(" ")
    client.server.publish(Chat(client.room, client.nick, text, time=float(when), user=client.user))
    return True
