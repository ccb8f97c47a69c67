"""Read turns (chatcore.engine.turns): at most a few connection threads
handle input at once, however many clients talk; a thread blocked inside its
turn does not hold the others back; the server stops cleanly with threads
waiting; TLS input that is not a whole record waits for the rest."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

import chatcore.engine.serving
from chatcore.engine import turns as turns_module
from chatcore.engine.turns import Turns
from chatcore.testing import LineClient, wait_for
from chatcore.transports.tls import TLSTransport, server_context

TIMEOUT = 10


@pytest.fixture
def turns(monkeypatch) -> Iterator[Turns]:
    monkeypatch.setattr(turns_module, "DIRECT", 0)  # every thread waits in the epoll set
    made = Turns(limit=2)
    made.start()
    yield made
    made.close()


class Handler:
    """Connection threads on socket pairs, reading through the turns as
    chatcore's do; ``handle(number, data)`` is each one's work (by default
    ``work`` seconds of it). Counts how many handle input at once."""

    def __init__(
        self, turns: Turns, count: int, work: float = 0.0, handle: Callable[[int, bytes], None] | None = None
    ) -> None:
        self.turns = turns
        self.work = work
        self.handle = handle or (lambda number, data: time.sleep(self.work))  # computing, as far as turns can tell
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.handled: list[int] = []
        self.data: list[bytes] = []
        self.pairs = [socket.socketpair() for _ in range(count)]
        self.threads = [
            threading.Thread(target=self.serve, args=(number, ours), daemon=True)
            for number, (ours, _) in enumerate(self.pairs)
        ]
        for thread in self.threads:
            thread.start()

    def serve(self, number: int, sock: socket.socket) -> None:
        reader = self.turns.reader(sock.fileno())
        try:
            while reader.wait():
                try:
                    data = sock.recv(256, socket.MSG_DONTWAIT)
                    if not data:
                        return
                    with self.lock:
                        self.inside += 1
                        self.most_inside = max(self.most_inside, self.inside)
                    self.handle(number, data)
                    with self.lock:
                        self.inside -= 1
                        self.handled.append(number)
                        self.data.append(data)
                finally:
                    reader.done()
        finally:
            reader.forget()

    def close(self) -> None:
        for _, theirs in self.pairs:
            theirs.close()
        for thread in self.threads:
            thread.join(TIMEOUT)
        for ours, _ in self.pairs:
            ours.close()


def test_at_most_the_limit_of_threads_handle_input_at_once(turns, monkeypatch):
    monkeypatch.setattr(turns_module, "STALE", 30.0)  # a slow machine's sleep is still work here
    handler = Handler(turns, 8, work=0.02)
    try:
        for _, theirs in handler.pairs:
            theirs.send(b"line\n")
        assert wait_for(lambda: len(handler.handled) == 8, TIMEOUT)
        assert sorted(handler.handled) == list(range(8))
        assert handler.most_inside == 2
        # And again: each socket is watched anew after its turn.
        for _, theirs in handler.pairs:
            theirs.send(b"line\n")
        assert wait_for(lambda: len(handler.handled) == 16, TIMEOUT)
        assert handler.most_inside == 2
    finally:
        handler.close()


def test_a_thread_blocked_in_its_turn_does_not_hold_the_others_back(turns):
    blocked = threading.Event()
    release = threading.Event()

    def handle(number: int, data: bytes) -> None:
        if number < 2:
            blocked.set()
            release.wait(TIMEOUT)  # a plugin waiting on a service that hangs

    # Two blocked threads hold both turns (the limit is 2); the third must
    # still be served once theirs have gone stale.
    handler = Handler(turns, 3, handle=handle)
    try:
        handler.pairs[0][1].send(b"first")
        handler.pairs[1][1].send(b"second")
        assert blocked.wait(TIMEOUT)
        assert wait_for(lambda: len(turns._held) == 2, TIMEOUT)
        handler.pairs[2][1].send(b"third")
        assert wait_for(lambda: handler.data == [b"third"], TIMEOUT)
        release.set()
        assert wait_for(lambda: sorted(handler.data) == [b"first", b"second", b"third"], TIMEOUT)
    finally:
        release.set()
        handler.close()


def test_a_few_threads_wait_for_their_own_input_and_give_their_place_up_when_it_stops(monkeypatch):
    monkeypatch.setattr(turns_module, "DIRECT", 3)
    monkeypatch.setattr(turns_module, "DIRECT_IDLE", 0.2)
    monkeypatch.setattr(turns_module, "STALE", 30.0)
    given_up: list[int] = []
    leave = turns_module.Reader._leave_direct
    monkeypatch.setattr(turns_module.Reader, "_leave_direct", lambda self: (given_up.append(self._fd), leave(self)))
    turns = Turns(limit=1)
    turns.start()
    handler = Handler(turns, 8, work=0.01)
    try:
        # Three threads take the places (no input yet); the others wait in
        # the epoll set.
        assert wait_for(lambda: turns._direct == 3 and len(turns._waiting) == 5, TIMEOUT)
        for _, theirs in handler.pairs:
            theirs.send(b"line\n")
        assert wait_for(lambda: len(handler.handled) == 8, TIMEOUT)
        # Three handled input on their own, the epoll set's one at a time.
        assert handler.most_inside <= 3 + 1
        assert turns._direct <= 3
        # Quiet clients give their places up, and other threads take them.
        assert wait_for(lambda: len(given_up) >= 3, TIMEOUT)
        assert turns._direct <= 3
        for _, theirs in handler.pairs:
            theirs.send(b"again\n")
        assert wait_for(lambda: len(handler.handled) == 16, TIMEOUT)
        assert sorted(handler.handled) == sorted(list(range(8)) * 2)
    finally:
        handler.close()
        turns.close()


def test_closing_lets_every_waiting_thread_go_to_read_without_turns(monkeypatch):
    monkeypatch.setattr(turns_module, "DIRECT", 0)
    turns = Turns(limit=1)
    turns.start()
    pair = socket.socketpair()
    outcome: list[bool] = []

    def wait() -> None:
        reader = turns.reader(pair[0].fileno())
        outcome.append(reader.wait())
        reader.forget()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: pair[0].fileno() in turns._waiting, TIMEOUT)
        turns.close()
        thread.join(TIMEOUT)
        assert outcome == [False]
        # A thread that comes to wait after the close does not wait at all.
        reader = turns.reader(pair[0].fileno())
        assert reader.wait() is False
    finally:
        for sock in pair:
            sock.close()


def test_a_busy_room_of_more_clients_than_turns_hears_every_line(chat_server_factory, monkeypatch):
    # Many clients talking at once, through a limit of one turn: every line
    # arrives, exactly once and in each sender's order.
    monkeypatch.setattr(turns_module, "LIMIT", 1)
    server = chat_server_factory("--line-rate", "0")
    assert server.serving.turns is not None
    assert server.serving.turns.limit == 1
    clients = [LineClient(server.address) for _ in range(12)]
    try:
        for client in clients:
            client.sync()
        for number, client in enumerate(clients):
            client.send_raw("".join(f"{number} says {line}\n" for line in range(50)).encode())
        chat: list[str] = []
        while len(chat) < 11 * 50:
            line = clients[0].readline()
            if " says " in line:
                chat.append(line)
        for number in range(1, 12):
            mine = [line for line in chat if line.startswith(f"<guest-{number + 1}> {number} says ")]
            assert mine == [f"<guest-{number + 1}> {number} says {line}" for line in range(50)]
    finally:
        for client in clients:
            client.close()


def certificate(directory: Path) -> tuple[trustme.CA, Path, Path]:
    """A CA, and a certificate and key for 127.0.0.1 it signed, in files."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return ca, cert, key


@pytest.fixture
def tls_pair(tmp_path) -> Iterator[tuple[TLSTransport, ssl.SSLObject, ssl.MemoryBIO, socket.socket]]:
    ca, cert, key = certificate(tmp_path)
    ours, theirs = socket.socketpair()
    transport = TLSTransport(ours, server_context(str(cert), str(key)))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    peer = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    handshake = threading.Thread(target=transport.handshake, daemon=True)
    handshake.start()
    theirs.settimeout(TIMEOUT)
    while True:
        try:
            peer.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                theirs.sendall(outgoing.read())
            incoming.write(theirs.recv(65536))
    theirs.sendall(outgoing.read())
    handshake.join(TIMEOUT)
    assert not handshake.is_alive()
    yield transport, peer, outgoing, theirs
    ours.close()
    theirs.close()


def test_tls_input_short_of_a_whole_record_is_kept_for_the_rest(tls_pair):
    transport, peer, outgoing, theirs = tls_pair
    peer.write(b"hello over TLS\n")
    record = outgoing.read()
    theirs.sendall(record[:10])
    assert wait_for(lambda: _readable(transport.sock), TIMEOUT)
    assert transport.recv_ready(256) is None  # not a whole record: the thread waits again
    assert not transport.buffered()
    theirs.sendall(record[10:])
    assert wait_for(lambda: _readable(transport.sock), TIMEOUT)
    assert transport.recv_ready(256) == b"hello over TLS\n"
    assert transport.recv_ready(256) is None


def test_tls_input_read_in_part_is_buffered_where_the_socket_cannot_show_it(tls_pair):
    transport, peer, outgoing, theirs = tls_pair
    peer.write(b"a" * 100 + b"\n")
    theirs.sendall(outgoing.read())
    assert wait_for(lambda: _readable(transport.sock), TIMEOUT)
    assert transport.recv_ready(40) == b"a" * 40
    assert not _readable(transport.sock)
    assert transport.buffered()  # the rest of the record, decrypted or not, is in memory
    assert transport.recv_ready(256) == b"a" * 60 + b"\n"
    assert not transport.buffered()


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_a_thread_ending_its_turn_takes_in_input_the_epoll_thread_has_not(monkeypatch):
    # Under load the epoll thread waits for the GIL among every thread with a
    # turn; input must not wait for it. Here it never runs at all.
    monkeypatch.setattr(turns_module, "DIRECT", 0)
    turns = Turns(limit=2)  # not started: no epoll thread
    handler = Handler(turns, 1)
    try:
        assert wait_for(lambda: len(turns._waiting) == 1, TIMEOUT)
        handler.pairs[0][1].send(b"hello")
        other = turns.reader(-1)

        def another_turn_ends() -> bool:
            # Again until the handler's socket is in the epoll set: it goes
            # in the waiting table a moment before.
            assert other.wait(buffered=True)  # a TLS thread with input in memory
            other.done()
            return handler.data == [b"hello"]

        assert wait_for(another_turn_ends, TIMEOUT)
    finally:
        turns.close()
        handler.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_without_epoll_each_thread_waits_in_recv_as_before(chat_server_factory, monkeypatch, tmp_path, tls):
    # Off Linux there is no epoll: make_turns() gives None and threads read
    # blocking. The same chat must work, TLS included.
    monkeypatch.setattr(chatcore.engine.serving, "make_turns", lambda: None)
    args: list[str] = []
    context = None
    if tls:
        ca, cert, key = certificate(tmp_path)
        args = ["--listen", "tls://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
        context = ssl.create_default_context()
        ca.configure_trust(context)
    server = chat_server_factory(*args)
    assert server.serving.turns is None
    alice = LineClient(server.address, tls=context)
    bob = LineClient(server.address, tls=context)
    try:
        alice.sync()
        bob.sync()
        alice.expect("* guest-2 joined")
        alice.send("hello")
        assert bob.expect("<guest-1> hello")
        bob.send("/quit")
        assert alice.expect("* guest-2 left")
    finally:
        alice.close()
        bob.close()
