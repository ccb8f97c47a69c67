"""The registry: rooms, their members and their feeds."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from chatcore.engine.connection import Client
from chatcore.engine.registry import Registry
from chatcore.engine.writer import Writer
from chatcore.transports import Transport
from chatcore.wire.native import NATIVE


@pytest.fixture
def make_clients() -> Iterator[Callable[[int], list[Client]]]:
    """Clients on socket pairs, with a writer that is not started (output
    only queues); all closed after the test."""
    writer = Writer()
    server = SimpleNamespace(writer=writer)
    sockets: list[socket.socket] = []

    def make(count: int) -> list[Client]:
        clients = []
        for _ in range(count):
            ours, peer = socket.socketpair()
            sockets.extend((ours, peer))
            clients.append(Client(Transport(ours), ("127.0.0.1", 1), server, wire=NATIVE))  # type: ignore[arg-type]
        return clients

    yield make
    writer.stop()
    for sock in sockets:
        sock.close()


def test_members_keep_their_order_as_others_leave_and_an_empty_room_goes(make_clients):
    clients = make_clients(6)
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


def test_a_client_renamed_after_it_left_is_not_registered_again(make_clients):
    # The accounts plugin's enforcer and a cluster's name collision rename
    # clients from other threads: one that left meanwhile must not come back
    # as a ghost holding the new name.
    alice, bob = make_clients(2)
    registry = Registry()
    registry.add(alice, nick="alice")
    registry.add(bob, nick="bob")
    assert not registry.rename(alice, "BOB")  # taken, ignoring case
    assert registry.rename(alice, "guest-9")
    assert registry.find("alice") is None
    assert registry.find("GUEST-9") is alice
    assert registry.remove(alice)
    assert not registry.rename(alice, "guest-10")
    assert registry.find("guest-10") is None
    assert registry.find("guest-9") is None
    assert list(registry) == [bob]


def test_parting_takes_the_lines_of_the_room_not_yet_had_along_first(make_clients):
    alice, bob = make_clients(2)
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
