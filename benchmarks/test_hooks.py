"""Hook dispatch cost per message with the bundled plugins loaded.

What the server runs for each chat message besides the delivery itself:
the filter chain (``chatcore_message``) and ``chatcore_message_delivered``
(``chatcore_room_event`` too when a plugin implements it). Loaded: welcome,
logger, and the word filter when it is installed (see the ``plugins``
fixture); the logger's background thread runs, as in a real server.
Target (issue 7): under 10 microseconds per message.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from conftest import min_seconds
from pytest_benchmark.fixture import BenchmarkFixture

from chatcore.engine.connection import Client
from chatcore.engine.server import ChatServer
from chatcore.events import Chat
from chatcore.message import Message
from chatcore.transports import Transport
from chatcore.wire.native import NATIVE


@pytest.fixture
def sender(chat_server: ChatServer) -> Iterator[Client]:
    ours, theirs = socket.socketpair()
    client = Client(
        Transport(ours), ("127.0.0.1", 1), chat_server, client_id=chat_server.registry.next_id(), wire=NATIVE
    )
    chat_server.registry.add(client)
    yield client
    ours.close()
    theirs.close()


def test_hook_dispatch_per_message(
    benchmark: BenchmarkFixture, chat_server: ChatServer, sender: Client, report_figure: Callable[[str], None]
) -> None:
    hooks = chat_server.hooks
    relay = hooks.implemented("room_event")
    text = "hello everyone, this is a typical chat line of moderate length"

    def dispatch() -> None:
        message = Message(sender, sender.room, text)
        hooks.message(message)
        hooks.message_delivered(message, 99)
        if relay:
            hooks.room_event(chat_server, Chat(sender.room, nick=sender.nick, text=text))

    benchmark.extra_info["plugins"] = ",".join(name for name, _ in chat_server.config.pluginmanager.list_name_plugin())
    benchmark(dispatch)
    best = min_seconds(benchmark)
    if best is not None:
        report_figure(f"{best * 1e6:.2f} us per message ({benchmark.extra_info['plugins']})")
