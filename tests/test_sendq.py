"""--max-sendq: what is queued for one client alone is bounded in bytes,
over real sockets, whatever front-end it uses."""

from __future__ import annotations

import socket

import pytest

from chatcore.config import parse_config
from chatcore.engine.connection import DEFAULT_MAX_SENDQ
from chatcore.testing import LineClient, wait_for


def test_private_messages_to_a_client_that_never_reads_are_bounded_in_bytes(chat_server_factory, chat_client):
    # --max-queue is far away (8192 entries of 4 KB: 32 MB); --max-sendq is not.
    server = chat_server_factory("--max-sendq", "65536", "--plugins", "commands")
    stalled = LineClient(server.address)
    try:
        stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.send("/ping")  # it sends, but never reads again
        wait_for(lambda: len(server.registry) == 1, message="the stalled client admitted first: guest-1")
        alice = chat_client(server)
        (stalled_client,) = [c for c in server.registry if c.nick == "guest-1"]
        highest = 0
        payload = "z" * 4000
        # Bounded: the kernel takes a few MB on loopback before the queue fills.
        for n in range(5000):
            alice.send(f"/msg guest-1 {n} {payload}")
            if stalled_client.closed:
                break
            alice.expect(f"-> *guest-1* {n} {payload}")
            highest = max(highest, stalled_client.queued_bytes)
        assert stalled_client.close_reason == "slow consumer"
        assert highest <= 65536 + len(payload) + 100  # over the bound by one message at most
        # The leave may come before the answer to the message that caused
        # it, and expect() above skipped it then: look in what came.
        left = "* guest-1 left (slow consumer)"
        if left not in alice.received:
            alice.expect(left)
        alice.send("/ping")
        alice.expect("* pong")
    finally:
        stalled.close()


def test_max_sendq_is_an_option_with_a_floor():
    assert parse_config([], environ={}).options.max_sendq == DEFAULT_MAX_SENDQ == 1 << 20
    assert parse_config(["--max-sendq", "96000"], environ={}).options.max_sendq == 96000
    assert parse_config([], environ={"CHATCORE_MAX_SENDQ": "200000"}).options.max_sendq == 200000
    with pytest.raises(SystemExit):
        parse_config(["--max-sendq", "100"], environ={})
