"""The registry: rooms, their members and their feeds."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from chatcore.engine.connection import Client
from chatcore.engine.registry import Registry
from chatcore.engine.writer import Writer
from chatcore.transports import Transport
from chatcore.wire.native import NATIVE


def make_clients(count: int) -> tuple[list[Client], list[socket.socket], Writer]:
    writer = Writer()  # not started: output only queues
    server = SimpleNamespace(writer=writer)
    clients, sockets = [], []
    for _ in range(count):
        ours, peer = socket.socketpair()
        sockets += [ours, peer]
        clients.append(Client(Transport(ours), ("127.0.0.1", 1), server, wire=NATIVE))  # type: ignore[arg-type]
    return clients, sockets, writer


def test_members_keep_their_order_as_others_leave_and_an_empty_room_goes():
    clients, sockets, writer = make_clients(6)
    try:
        registry = Registry()
        for client in clients:
            registry.add(client)
        for gone in (clients[0], clients[3], clients[5]):
            assert registry.remove(gone)
        assert not registry.remove(clients[3])  # only once
        expected = (clients[1], clients[2], clients[4])
        assert registry.members("lobby") == expected
        (feed,) = registry.feeds["lobby"]
        assert tuple(membership.client for membership in feed.members) == expected
        assert feed.wire is NATIVE
        for client in expected:
            registry.remove(client)
        assert registry.rooms() == {}
        assert "lobby" not in registry.feeds
    finally:
        writer.stop()
        for sock in sockets:
            sock.close()


def test_parting_takes_the_lines_of_the_room_not_yet_had_along_first():
    (alice, bob), sockets, writer = make_clients(2)
    try:
        registry = Registry()
        registry.add(alice, nick="alice")
        registry.add(bob, nick="bob")
        (lobby,) = registry.feeds.get("lobby", ())
        with lobby.lock:
            lobby.append(b"<bob> still in the lobby\n", bob)
        assert registry.join(alice, "kitchen")
        assert not registry.join(alice, "kitchen")
        assert alice.rooms == ("lobby", "kitchen")
        assert registry.part(alice, "lobby")
        assert not registry.part(alice, "lobby")
        assert list(alice._queue) == [b"<bob> still in the lobby\n"]
        (kitchen,) = registry.feeds["kitchen"]
        assert [membership.feed for membership in alice._memberships] == [kitchen]
        assert [membership.client for membership in kitchen.members] == [alice]
        assert [membership.client for membership in lobby.members] == [bob]
        assert registry.members("kitchen") == (alice,)
        assert alice.room == "kitchen"
        assert alice.rooms == ("kitchen",)
    finally:
        writer.stop()
        for sock in sockets:
            sock.close()
