"""A misbehaving plugin for the hostile-input suite: it raises on any
message containing "boom" and blocks the sender's thread for a minute on
"/block" (a plugin stuck on a dead database, say)."""

from __future__ import annotations

import threading

from chatcore import Client, Message, hookimpl

_never = threading.Event()


@hookimpl
def chatcore_message(message: Message) -> None:
    if "boom" in message.text:
        raise RuntimeError("the hostile plugin failed, as asked")


@hookimpl
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    if name != "block":
        return None
    _never.wait(60)  # bounded, so a broken test cannot hang the run
    return True
