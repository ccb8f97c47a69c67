"""Faults of the chatcore servers themselves and of their clients: a server
killed in the middle of a fan-out, and clients that stop reading."""

from __future__ import annotations

import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fault_support import LONG, TIMEOUT, linked, read_until, tally
from faultproxy import FaultProxy

from chatcore.testing import LineClient, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_a_server_killed_mid_fan_out_leaves_the_others_agreeing(redis_server, cluster, connect, record) -> None:
    timeout = ("--redis-node-timeout", "1")
    one = cluster(redis_server.url, "127.0.0.1", *timeout)
    two = cluster(redis_server.url, "127.0.0.2", *timeout)
    three = cluster(redis_server.url, "127.0.0.3", *timeout)
    alice = connect(one.address, "alice")
    bob, carol = connect(two.address, "bob"), connect(three.address, "carol")
    linked(alice, "alice", [bob, carol])
    marks = len(bob.received), len(carol.received)

    sent = []
    total = 2000 if LONG else 400
    for i in range(total):
        if i == total // 2:
            # Once the others have heard a quarter: the rest is in flight.
            bob.expect(f"<alice> line {total // 4}", timeout=TIMEOUT)
            one.stop(signal.SIGKILL)  # in the middle of alice's lines and of their fan-out
            killed = time.monotonic()
        try:
            alice.send(f"line {i}")
        except OSError:
            break
        sent.append(f"line {i}")
    bob.expect("* alice left (server lost)", timeout=TIMEOUT)
    carol.expect("* alice left (server lost)", timeout=TIMEOUT)
    announced = time.monotonic() - killed
    # alice's own client learns that its server is gone: her lines past the
    # last one delivered are not lost silently to her.
    alice.wait_closed(timeout=TIMEOUT)

    saw_bob = tally("server SIGKILLed mid-fan-out", sent, bob.received[marks[0] :], "alice", announced)
    saw_carol = tally("server SIGKILLed mid-fan-out", sent, carol.received[marks[1] :], "alice", announced)
    for row in (saw_bob, saw_carol):
        record(row)
        assert row.duplicated == 0
        assert row.reordered == 0
    # The survivors agree on exactly which of alice's lines were said: a prefix of them, without holes.
    said = [line for line in bob.received[marks[0] :] if line.startswith("<alice> ")]
    assert said == [line for line in carol.received[marks[1] :] if line.startswith("<alice> ")]
    assert said == [f"<alice> {text}" for text in sent[: len(said)]]
    assert announced < 1 + 1 / 3 + 2  # the node timeout, a renewal, and slack

    # Her users reconnect elsewhere and are heard again.
    again = connect(two.address, "alice")
    again.send("back")
    carol.expect("<alice> back", timeout=TIMEOUT)
    bob.expect("<alice> back", timeout=TIMEOUT)


def test_clients_that_stop_reading_do_not_stall_the_others(record) -> None:
    lines = 200_000 if LONG else 50_000
    with ServerProcess("--max-queue", "1000") as server:
        readers = [LineClient(server.address, timeout=TIMEOUT) for _ in range(3)]
        alice = LineClient(server.address, timeout=TIMEOUT)
        alice.send("/nick alice")
        alice.expect("* you are now known as alice")
        with FaultProxy(server.address, buffer=4096) as proxy:
            # One client behind a stalled link (its bytes held on the way),
            # one with a tiny receive buffer that never reads.
            stalled = LineClient(proxy.address, timeout=TIMEOUT)
            stalled.send("/nick stalled")
            stalled.expect("* you are now known as stalled")
            idle = socket.socket()
            idle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            idle.connect(server.address)
            idle.sendall(b"/nick idle\n/ping\n")
            for reader in readers:
                reader.sync()
            proxy.stall()

            started = time.monotonic()
            sent = [f"line {i} " + "x" * 150 for i in range(lines)]
            # The readers read as the lines come, each in a thread of its own.
            with ThreadPoolExecutor(len(readers)) as pool:
                done = [pool.submit(read_until, reader, f"<alice> {sent[-1]}") for reader in readers]
                for text in sent:
                    alice.send(text)
                for future in done:
                    future.result()
            took = time.monotonic() - started
            for reader in readers:
                row = record(tally(f"{lines} lines, 2 clients not reading", sent, reader.received, "alice", took))
                row.holds_the_promise()
                assert row.lost == 0
            # The ones that did not read were dropped as slow consumers.
            left = re.compile(r"client left: (stalled|idle) from .* \(slow consumer\)")
            dropped = {left.search(server.expect_log(left)).group(1) for _ in "12"}  # type: ignore[union-attr]
            assert dropped == {"stalled", "idle"}
            proxy.heal()
            stalled.wait_closed()
            stalled.close()
            idle.close()
        assert took < 30
        for client in (*readers, alice):
            client.close()
