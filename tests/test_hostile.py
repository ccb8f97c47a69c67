"""Hostile input against a real server process: after every attack the
well-behaved clients still chat with nothing lost, and the server's threads,
file descriptors and memory are back where they were.

The attacker connects from 127.0.0.2, a non-exempt address
(``--limit-exempt 127.0.0.1/32``); the well-behaved clients from 127.0.0.1.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcore.testing import LineClient, ServerProcess, wait_for

pytestmark = pytest.mark.slow

ATTACKER = "127.0.0.2"
_pairs = itertools.count(1)
TEST_PLUGINS = Path(__file__).parent / "plugins"


class Server:
    """The server process, and what /proc says about it."""

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        assert proc.proc is not None
        self.pid = proc.proc.pid
        self.address = proc.address

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        """Resident memory in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with ServerProcess(
        "--plugins",
        "chatcore_testplugins.hostile",
        "--limit-exempt",
        "127.0.0.1/32",
        "--max-new-per-address",
        "0",  # the connect/close cycles below are thousands from one address
        "--max-queue",
        "200",
        "--log-level",
        "WARNING",
        env={"PYTHONPATH": str(TEST_PLUGINS)},
    ) as proc:
        yield Server(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The only tracebacks logged are the hostile plugin's own failure.
    for block in proc.stderr.split("Traceback (most recent call last):")[1:]:
        assert "RuntimeError: the hostile plugin failed, as asked" in block, block


@pytest.fixture
def pair(server: Server) -> Iterator[tuple[LineClient, LineClient]]:
    """Two well-behaved clients, alice and bob, and a check afterwards that
    they still chat with nothing lost."""
    alice, bob = LineClient(server.address), LineClient(server.address)
    # Names of their own per test: the last test's pair may still be leaving.
    number = next(_pairs)
    for client, nick in ((alice, f"alice{number}"), (bob, f"bob{number}")):
        client.sync()
        client.send(f"/nick {nick}")
        client.expect(f"* you are now known as {nick}")
    yield alice, bob
    still_chatting(alice, bob)
    alice.close()
    bob.close()


def still_chatting(alice: LineClient, bob: LineClient, count: int = 50) -> None:
    for n in range(count):
        alice.send(f"check {n}")
    for n in range(count):
        bob.expect(lambda line, n=n: line.endswith(f"> check {n}") and line.startswith("<alice"))
    bob.send("and back")
    alice.expect(lambda line: line.startswith("<bob") and line.endswith("> and back"))


def settled(server: Server, threads: int, fds: int) -> None:
    """Threads and descriptors come back to the baseline once the server has
    seen every close."""
    wait_for(lambda: server.threads() <= threads, timeout=10, message=f"threads back to {threads}")
    wait_for(lambda: server.fds() <= fds, timeout=10, message=f"file descriptors back to {fds}")


def attacker(server: Server) -> LineClient:
    return LineClient(server.address, source=ATTACKER)


def test_a_10_mb_line_without_a_newline_keeps_memory_bounded(server, pair):
    _alice, bob = pair
    threads, fds = server.threads(), server.fds()
    before = server.rss()
    evil = attacker(server)
    chunk = b"A" * 65536
    for _ in range(160):  # 10 MB
        evil.send_raw(chunk)
    evil.send_raw(b"\nshort\n")
    evil.expect(lambda line: line.startswith("! line too long"))
    bob.expect(lambda line: line.endswith("> short"))
    assert server.rss() - before < 8 * 1024 * 1024
    evil.close()
    settled(server, threads, fds)


def test_random_binary_invalid_utf8_and_escape_sequences(server, pair):
    _alice, bob = pair
    threads, fds = server.threads(), server.fds()
    evil = attacker(server)
    evil.sync()
    rng = random.Random(11)
    evil.send_raw(bytes(rng.getrandbits(8) for _ in range(2000)).replace(b"\n", b" ") + b"\n")
    evil.send_raw(b"bad \xff\xfe\xc3 utf-8\n")
    evil.send_raw(b"\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x1b[0m \x07\x08 text\n")
    evil.send("end of attack")
    bob.expect(lambda line: line.endswith("> end of attack"), timeout=10)
    received = "\n".join(bob.received)
    assert "\x1b" not in received
    assert "\x07" not in received
    assert "bad \ufffd\ufffd\ufffd utf-8" in received
    assert "> red  text" in received
    evil.close()
    settled(server, threads, fds)


def test_thousands_of_connect_close_cycles_with_resets(server, pair):
    threads, fds = server.threads(), server.fds()
    started = time.monotonic()
    for n in range(2000):
        sock = socket.create_connection(server.address, source_address=(ATTACKER, 0), timeout=5)
        if n % 3 == 0:  # a reset instead of a close
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if n % 3 == 1:
            sock.sendall(b"hello and gone\n")
        sock.close()
    assert time.monotonic() - started < 60
    settled(server, threads, fds)


def test_half_open_connections(server, pair):
    threads, fds = server.threads(), server.fds()
    halves = []
    for _ in range(10):
        client = attacker(server)
        client.sync()
        client.sock.shutdown(socket.SHUT_WR)  # "I am done sending", still reading
        halves.append(client)
    for client in halves:
        client.wait_closed()  # the server takes the end of input as leaving
        client.close()
    settled(server, threads, fds)


def test_a_client_that_never_reads_is_dropped_as_a_slow_consumer(server, pair):
    alice, bob = pair
    threads, fds = server.threads(), server.fds()
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    silent.bind((ATTACKER, 0))
    silent.connect(server.address)
    silent.sendall(b"/nick sleeper\n")
    # In under its name (its first line, docs/protocol.md), or renamed if that came late.
    bob.expect(lambda line: line.endswith(("* sleeper joined", "is now known as sleeper")))
    text = "x" * 4000
    left = "* sleeper left (slow consumer)"
    for n in range(5000):  # 20 MB: past the socket buffers, then --max-queue 200
        alice.send(f"{n} {text}")
        bob.expect(lambda line, n=n: line.endswith(f"> {n} {text}"))  # bob reads as he should
        if left in bob.received:
            break
    assert left in bob.received
    silent.close()
    settled(server, threads, fds)


def test_a_flood_from_one_client_is_paced_and_others_are_not_slowed(server, pair):
    alice, bob = pair
    threads, fds = server.threads(), server.fds()
    flooder = attacker(server)
    flooder.sync()
    flooder.send_raw(b"".join(b"flood %d\n" % n for n in range(300)))
    started = time.monotonic()
    still_chatting(alice, bob, count=20)
    assert time.monotonic() - started < 2
    # Paced, not dropped: the first lines arrive, a few a second.
    bob.expect(lambda line: line.endswith("> flood 7"), timeout=10)
    flooder.close()
    settled(server, threads, fds)  # it stops at once, though 290 lines were still to be paced


def test_a_thousand_idle_connections_from_one_address_do_not_lock_others_out(server, pair):
    _alice, _bob = pair
    threads, fds = server.threads(), server.fds()
    held: list[LineClient] = []
    refused = 0
    try:
        for _ in range(1000):
            client = attacker(server)
            client.send("/ping")
            answer = client.expect(lambda line: line == "* pong" or line.startswith("!"))
            if answer == "* pong":
                held.append(client)  # accepted; now it idles
            else:
                assert answer.startswith("! too many connections from your address")
                refused += 1
                client.close()
        assert len(held) == 16  # Ergo's default, per address
        assert refused == 1000 - 16
        newcomer = LineClient(server.address, source="127.0.0.3")
        newcomer.sync()  # another address gets in at once
        newcomer.close()
    finally:
        for client in held:
            client.close()
    settled(server, threads, fds)


def test_a_plugin_that_raises_and_one_that_blocks(server, pair):
    alice, bob = pair
    alice.send("boom goes the plugin")
    bob.expect(lambda line: line.endswith("> boom goes the plugin"))  # delivered all the same
    stuck = LineClient(server.address)
    try:
        stuck.sync()
        stuck.send("/block")
        still_chatting(alice, bob, count=5)  # the blocked thread is its own
    finally:
        stuck.close()
