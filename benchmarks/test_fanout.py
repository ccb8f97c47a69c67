"""Fan-out of one message to N clients through the real broadcast code.

chatcore: ``ChatServer.publish()`` of a chat event to a room of N real :class:`Client`
objects on socketpairs, timed until the writer thread has written the line
to the last of them (their order in the room is the order the writer goes
through them, so a blocking read on the last peer marks the end).

naive: the original design, the sending thread calling ``sendall()`` on
every other socket in turn, on the same kind of sockets.

Per delivery: divide the time by N (``recipients`` in the extra info).
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
from chatcore.transports import Transport
from chatcore.wire.native import NATIVE

TEXT = "x" * 55
LINE = "<alice> " + TEXT
ROUNDS = {10: 1000, 100: 300, 1000: 60}


@pytest.fixture(params=[10, 100, 1000])
def room(request: pytest.FixtureRequest, chat_server: ChatServer) -> Iterator[tuple[list[Client], list[socket.socket]]]:
    clients: list[Client] = []
    peers: list[socket.socket] = []
    pairs = []
    for _ in range(request.param):
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        pairs.append((ours, theirs))
        client = Client(
            Transport(ours), ("127.0.0.1", 1), chat_server, client_id=chat_server.registry.next_id(), wire=NATIVE
        )
        chat_server.registry.add(client, "bench")
        clients.append(client)
        peers.append(theirs)
    yield clients, peers
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def _drain(peers: list[socket.socket]) -> Callable[[], None]:
    def drain() -> None:
        for peer in peers:
            try:
                while peer.recv(65536):
                    pass
            except BlockingIOError:
                pass

    return drain


@pytest.mark.parametrize("design", ["chatcore", "naive"])
def test_fanout(
    benchmark: BenchmarkFixture,
    chat_server: ChatServer,
    room: tuple[list[Client], list[socket.socket]],
    design: str,
    report_figure: Callable[[str], None],
) -> None:
    clients, peers = room
    n = len(clients)
    data = LINE.encode() + b"\n"
    last = peers[-1]

    if design == "chatcore":

        def fan_out() -> None:
            chat_server.publish(Chat("bench", nick="alice", text=TEXT))
            last.setblocking(True)
            last.recv(len(data))
            last.setblocking(False)
    else:
        socks = [client.sock for client in clients]

        def fan_out() -> None:
            for sock in socks:
                sock.sendall(data)

    benchmark.extra_info["recipients"] = n
    benchmark.pedantic(fan_out, setup=_drain(peers), rounds=ROUNDS[n], iterations=1, warmup_rounds=3)
    assert not [client for client in clients if client.closed]
    best = min_seconds(benchmark)
    if best is not None:
        report_figure(f"{best / n * 1e9:.0f} ns per delivery, {n / best:,.0f} deliveries/s")
