"""Read turns (chatcore.engine.turns): at most a few connections handle
input at once, however many clients talk; a thread blocked inside its turn
does not hold the others back; a quiet connection has no thread, and spare
threads serve the next; the server stops cleanly with connections watched;
TLS input that is not a whole record waits for the rest."""

from __future__ import annotations

import os
import re
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
from chatcore.engine.turns import BLOCK, PARK, TURN, Reader, Turns
from chatcore.testing import LineClient, wait_for
from chatcore.transports.tls import TLSTransport, server_context
from chatcore.wire import native as native_module

TIMEOUT = 10
DIRECT_DEFAULT = turns_module.DIRECT


@pytest.fixture
def turns(monkeypatch) -> Iterator[Turns]:
    monkeypatch.setattr(turns_module, "DIRECT", 0)  # every quiet connection is watched by the epoll set
    made = Turns(limit=2)
    made.start()
    yield made
    made.close()


class Connection:
    """A connection's work on a socket pair, reading through the turns as
    chatcore's does (chatcore.engine.serving.Session)."""

    def __init__(self, handler: Handler, number: int, sock: socket.socket) -> None:
        self.handler = handler
        self.number = number
        self.sock = sock
        self.reader = handler.turns.reader(sock.fileno(), self.run)
        #: What each wait() said, in order.
        self.said: list[str] = []
        #: When to be resumed even with nothing to read (wait()'s deadline):
        #: it is met in ``silent``, and any input calls it off.
        self.deadline: float | None = None
        self.silent: float | None = None

    def run(self) -> Reader | None:
        reader, handler = self.reader, self.handler
        while True:
            how = reader.wait(deadline=self.deadline)
            self.said.append(how)
            if how is PARK:
                return reader
            turn = how is TURN
            try:
                data = self.sock.recv(256, 0 if how is BLOCK else socket.MSG_DONTWAIT)
                self.deadline = None
                if not data:
                    reader.forget()
                    with handler.lock:
                        handler.ended += 1
                    return None
                with handler.lock:
                    handler.inside += 1
                    handler.most_inside = max(handler.most_inside, handler.inside)
                handler.handle(self.number, data)
                with handler.lock:
                    handler.inside -= 1
                    handler.handled.append(self.number)
                    handler.data.append(data)
            except BlockingIOError:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.deadline = None
                    self.silent = time.monotonic()
                continue  # a spurious wake-up, or the deadline
            finally:
                if turn:
                    reader.done()


class Handler:
    """Connections on socket pairs, served by the turns' threads;
    ``handle(number, data)`` is each one's work (by default ``work``
    seconds of it). Counts how many handle input at once."""

    def __init__(
        self, turns: Turns, count: int, work: float = 0.0, handle: Callable[[int, bytes], None] | None = None
    ) -> None:
        self.turns = turns
        self.work = work
        self.handle = handle or (lambda number, data: time.sleep(self.work))  # computing, as far as turns can tell
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.ended = 0
        self.handled: list[int] = []
        self.data: list[bytes] = []
        self.pairs = [socket.socketpair() for _ in range(count)]
        self.connections = [Connection(self, number, ours) for number, (ours, _) in enumerate(self.pairs)]
        for connection in self.connections:
            turns.spawn(connection.run)

    def close(self) -> None:
        for _, theirs in self.pairs:
            theirs.close()
        wait_for(lambda: self.ended == len(self.pairs), TIMEOUT)
        for ours, _ in self.pairs:
            ours.close()


def test_at_most_the_limit_of_connections_handle_input_at_once(turns, monkeypatch):
    monkeypatch.setattr(turns_module, "STALE", 30.0)  # a slow machine's sleep is still work here
    handler = Handler(turns, 8, work=0.02)
    try:
        assert wait_for(lambda: len(turns._waiting) == 8, TIMEOUT)
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


def test_a_parked_connection_is_resumed_at_its_deadline_unless_its_client_speaks_first(monkeypatch):
    monkeypatch.setattr(turns_module, "DIRECT", 0)
    monkeypatch.setattr(turns_module, "SPARE_IDLE", 30.0)
    turns = Turns(limit=2)
    turns.start()
    started = time.monotonic()
    handler = Handler(turns, 0)
    pairs = [socket.socketpair() for _ in range(3)]
    handler.pairs = pairs
    connections = [Connection(handler, number, ours) for number, (ours, _) in enumerate(pairs)]
    for connection, wait in zip(connections, (1.5, 1.5, 1.0), strict=True):
        connection.deadline = started + wait
    try:
        pairs[1][1].send(b"hello")  # before its deadline: calls it off
        for connection in connections:
            turns.spawn(connection.run)
        # Waiting for their deadlines, the connections hold no thread (every
        # thread left is a spare), well before the first deadline.
        assert wait_for(
            lambda: handler.data == [b"hello"] and len(turns._waiting) == 3 and turns.threads == len(turns._spares),
            0.8,
        )
        assert wait_for(lambda: connections[0].silent is not None and connections[2].silent is not None, TIMEOUT)
        assert connections[2].silent >= started + 1.0
        assert connections[0].silent >= started + 1.5
        assert connections[1].silent is None
        # Then parked again, with no deadline: watched for input only.
        assert wait_for(lambda: len(turns._waiting) == 3, TIMEOUT)
        for _, theirs in pairs:
            theirs.send(b"more")
        assert wait_for(lambda: len(handler.data) == 4, TIMEOUT)
        assert connections[1].silent is None
    finally:
        handler.close()
        turns.close()


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
        assert wait_for(lambda: len(turns._waiting) == 3, TIMEOUT)
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


def test_a_quiet_connection_has_no_thread_and_a_spare_thread_serves_the_next(turns, monkeypatch):
    monkeypatch.setattr(turns_module, "SPARE_IDLE", 30.0)
    monkeypatch.setattr(turns_module, "MAX_SPARE", 10)
    before = os_threads()
    handler = Handler(turns, 40)
    try:
        # Each connection's first work ran on a thread, then gave it up:
        # ten threads wait as spares, the others ended.
        assert wait_for(lambda: len(turns._waiting) == 40, TIMEOUT)
        assert wait_for(lambda: turns.threads == len(turns._spares) == 10, TIMEOUT)
        assert wait_for(lambda: os_threads() <= before + 10, TIMEOUT)
        # Input on every connection is served by those spare threads: none
        # is started.
        started = 0
        dispatch = turns._dispatch

        def counting(work):
            nonlocal started
            started += not turns._spares
            dispatch(work)

        monkeypatch.setattr(turns, "_dispatch", counting)
        for _, theirs in handler.pairs:
            theirs.send(b"line\n")
        assert wait_for(lambda: len(handler.handled) == 40, TIMEOUT)
        assert started == 0
        assert wait_for(lambda: len(turns._waiting) == 40, TIMEOUT)
    finally:
        handler.close()


def test_spare_threads_end_when_nothing_comes_for_them(turns, monkeypatch):
    monkeypatch.setattr(turns_module, "SPARE_IDLE", 0.2)
    before = os_threads()
    handler = Handler(turns, 20)
    try:
        assert wait_for(lambda: len(turns._waiting) == 20, TIMEOUT)
        assert wait_for(lambda: turns.threads == 0, TIMEOUT)
        assert wait_for(lambda: os_threads() <= before, TIMEOUT)  # 20 quiet connections, no thread
        for _, theirs in handler.pairs:
            theirs.send(b"line\n")
        assert wait_for(lambda: len(handler.handled) == 20, TIMEOUT)
    finally:
        handler.close()


def test_input_waits_for_a_thread_while_the_system_refuses_one(turns, monkeypatch, caplog):
    monkeypatch.setattr(turns_module, "MAX_SPARE", 0)  # a thread ends when its connection goes quiet
    handler = Handler(turns, 2)
    try:
        assert wait_for(lambda: len(turns._waiting) == 2 and turns.threads == 0, TIMEOUT)
        refusals = []
        start = turns_module._start_thread

        def refusing(function, args):
            if len(refusals) < 3:
                refusals.append(args)
                raise RuntimeError("can't start new thread")
            return start(function, args)

        monkeypatch.setattr(turns_module, "_start_thread", refusing)
        handler.pairs[0][1].send(b"hello")
        # Refused three times (the epoll thread tries again while it
        # queues), then served: nothing lost, nothing stuck.
        assert wait_for(lambda: handler.data == [b"hello"], TIMEOUT)
        assert len(refusals) == 3
        assert "no thread for a connection's input (can't start new thread)" in caplog.text
        handler.pairs[1][1].send(b"and the other")
        assert wait_for(lambda: handler.data == [b"hello", b"and the other"], TIMEOUT)
    finally:
        handler.close()


def test_the_epoll_thread_wakes_for_connections_another_thread_queued(turns):
    # A thread that ends its work, or keeps its connection, takes in what
    # the epoll set has ready; if every turn is held it leaves those
    # connections queued, and the epoll thread, asleep without a timeout,
    # must wake to grant them once a turn is free or stale.
    assert wait_for(lambda: turns._asleep, TIMEOUT)
    resumed = threading.Event()
    reader = turns.reader(-1, resumed.set)
    with turns._lock:
        turns._queue.append(reader)  # as _next() or _pass_on() leave it
        turns._mind_queue()
    assert resumed.wait(TIMEOUT)


def test_a_connection_the_epoll_set_refuses_keeps_a_thread_and_reads_blocking(turns, monkeypatch, caplog):
    class Refusing:  # the system's limit on watches reached
        def __init__(self, epoll):
            self.epoll = epoll

        def register(self, fd, events):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.epoll, name)

    monkeypatch.setattr(turns, "_epoll", Refusing(turns._epoll))
    handler = Handler(turns, 1)
    try:
        (connection,) = handler.connections
        assert wait_for(lambda: connection.said[-1:] == [BLOCK], TIMEOUT)
        assert connection.said == [PARK, BLOCK]  # asked once, not again and again
        assert "a connection cannot be watched ([Errno 28] No space left on device)" in caplog.text
        handler.pairs[0][1].send(b"still heard")
        assert wait_for(lambda: handler.data == [b"still heard"], TIMEOUT)
    finally:
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
        # Three threads take the places (no input yet); the other
        # connections are watched by the epoll set.
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


def test_closing_gives_every_watched_connection_a_thread_to_read_blocking(monkeypatch):
    monkeypatch.setattr(turns_module, "DIRECT", 0)
    turns = Turns(limit=1)
    turns.start()
    handler = Handler(turns, 3)
    try:
        assert wait_for(lambda: len(turns._waiting) == 3, TIMEOUT)
        turns.close()
        assert wait_for(lambda: all(c.said[-1:] == [BLOCK] for c in handler.connections), TIMEOUT)
        for _, theirs in handler.pairs:
            theirs.send(b"after the close\n")
        assert wait_for(lambda: handler.data == [b"after the close\n"] * 3, TIMEOUT)
        # A connection that comes to wait after the close reads blocking.
        assert turns.reader(handler.pairs[0][0].fileno(), lambda: None).wait() is BLOCK
        assert turns.park(handler.connections[0].reader) is False
    finally:
        handler.close()


def os_threads() -> int:
    """This process's threads, as the kernel counts them (the turns'
    threads have no threading.Thread)."""
    return len(os.listdir("/proc/self/task"))


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


def welcomed_as(client: LineClient) -> str:
    """The guest name ``client``'s welcome (its first line) gave it."""
    found = re.match(r"\* Welcome to chatcore, ([^!]+)!", client.received[0])
    assert found is not None, client.received
    return found.group(1)


def test_a_server_s_quiet_clients_hold_no_thread_and_hear_everything(chat_server_factory, monkeypatch):
    monkeypatch.setattr(turns_module, "DIRECT_IDLE", 0.2)
    monkeypatch.setattr(turns_module, "SPARE_IDLE", 0.2)
    server = chat_server_factory()
    turns = server.serving.turns
    assert turns is not None
    clients = [LineClient(server.address) for _ in range(30)]
    try:
        for client in clients:
            client.sync()
        # Guest names go in the order connections are let in, which thirty
        # at once need not keep: each learns its own from its welcome.
        first, last = welcomed_as(clients[0]), welcomed_as(clients[29])
        # Thirty connected clients, every one quiet: no connection thread.
        assert wait_for(lambda: turns.threads == 0 and len(turns._waiting) == 30, TIMEOUT)
        clients[0].send("anyone there?")
        for client in clients[1:]:
            client.expect(f"<{first}> anyone there?")
        clients[29].send("/nick zed")
        clients[0].expect(f"* {last} is now known as zed")
        assert wait_for(lambda: turns.threads == 0, TIMEOUT)
        clients[29].send("/quit")
        clients[0].expect("* zed left")
        assert wait_for(lambda: len(turns._waiting) == 29 and len(server.serving.clients) == 29, TIMEOUT)
    finally:
        for client in clients:
            client.close()


def test_a_storm_of_silent_clients_holds_no_thread_while_the_server_waits_for_their_first_line(
    chat_server_factory, monkeypatch
):
    monkeypatch.setattr(native_module, "ARRIVAL_WAIT", 2.0)
    monkeypatch.setattr(turns_module, "DIRECT", 0)
    server = chat_server_factory()
    turns = server.serving.turns
    assert turns is not None
    started = time.monotonic()
    silent = [socket.create_connection(server.address, timeout=TIMEOUT) for _ in range(30)]
    named = LineClient(server.address)
    try:
        named.send("/nick amy")  # in time: it enters under its name at once
        assert named.readline().startswith("* Welcome to chatcore, amy! ")
        # Thirty connections wait for a first line, and no thread waits
        # with them: they are watched by the epoll set, with a deadline.
        assert wait_for(lambda: len(turns._waiting) == 31 and turns.threads == len(turns._spares), 1.5)
        assert time.monotonic() - started < 2.0
        assert not select.select(silent, [], [], 0)[0]  # nobody welcomed yet
        # At the deadline each is let in under a guest name.
        for sock in silent:
            with sock.makefile("r", encoding="utf-8") as reading:
                assert reading.readline().startswith("* Welcome to chatcore, guest-")
        assert time.monotonic() - started >= 2.0
        joined = {named.expect(re.compile(r"^\* guest-\d+ joined$")) for _ in silent}  # the room saw each come in
        assert len(joined) == 30
        assert wait_for(lambda: len(server.registry) == 31, TIMEOUT)
    finally:
        named.close()
        for sock in silent:
            sock.close()


def test_a_connection_the_system_has_no_thread_for_is_closed_and_the_server_goes_on(chat_server_factory, monkeypatch):
    monkeypatch.setattr(turns_module, "MAX_SPARE", 0)
    server = chat_server_factory()
    alice = LineClient(server.address)
    alice.sync()
    start = turns_module._start_thread
    monkeypatch.setattr(turns_module, "_start_thread", lambda function, args: _refuse())
    refused = socket.create_connection(server.address, timeout=TIMEOUT)
    try:
        assert refused.recv(100) == b""  # closed, not left hanging
    finally:
        refused.close()
    monkeypatch.setattr(turns_module, "_start_thread", start)
    bob = LineClient(server.address)
    try:
        bob.sync()
        bob.send("hello")
        alice.expect("<guest-2> hello")  # the refused one never had a name
        assert wait_for(lambda: len(server.serving._serving) == 2, TIMEOUT)
    finally:
        alice.close()
        bob.close()


def _refuse() -> None:
    raise RuntimeError("can't start new thread")


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


def test_a_thread_ending_its_work_takes_in_input_the_epoll_thread_has_not(monkeypatch):
    # Under load the epoll thread waits for the GIL among every thread with a
    # turn; input must not wait for it. Here it never runs at all.
    monkeypatch.setattr(turns_module, "DIRECT", 0)
    turns = Turns(limit=2)  # not started: no epoll thread
    handler = Handler(turns, 1)
    try:
        assert wait_for(lambda: len(turns._waiting) == 1, TIMEOUT)
        handler.pairs[0][1].send(b"hello")

        def another_work_ends() -> bool:
            turns.spawn(lambda: None)  # a connection's work that ends at once
            return handler.data == [b"hello"]

        assert wait_for(another_work_ends, TIMEOUT)
    finally:
        turns.close()
        handler.close()


@pytest.mark.parametrize("direct", [DIRECT_DEFAULT, 0], ids=["direct", "parked"])
def test_part_of_a_tls_record_in_time_is_input_and_the_client_enters_under_its_first_line(
    chat_server_factory, monkeypatch, tmp_path, direct
):
    monkeypatch.setattr(turns_module, "DIRECT", direct)
    monkeypatch.setattr(native_module, "ARRIVAL_WAIT", 0.3)
    ca, cert, key = certificate(tmp_path)
    server = chat_server_factory("--listen", "tls://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    sock = socket.create_connection(server.address, timeout=TIMEOUT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    peer = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        while True:
            try:
                peer.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        peer.write(b"/nick amy\n")
        record = outgoing.read()
        sock.sendall(record[:5])  # in time, but not a whole record
        time.sleep(0.6)  # a slow client: the rest comes after ARRIVAL_WAIT
        sock.sendall(record[5:])
        received = b""
        while b"\n" not in received:
            try:
                received += peer.read(65536)
            except ssl.SSLWantReadError:
                incoming.write(sock.recv(65536))
        assert received.decode().startswith("* Welcome to chatcore, amy! ")
    finally:
        sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_without_epoll_each_thread_waits_in_recv_as_before(chat_server_factory, monkeypatch, tmp_path, tls):
    # Off Linux there is no epoll: make_turns() gives None and threads read
    # blocking. The same chat must work, TLS included.
    monkeypatch.setattr(chatcore.engine.serving, "make_turns", lambda thread_ended: None)
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
        # Guest names go in the order connections are let in (two at once need not keep theirs).
        a_name, b_name = (welcomed_as(client) for client in (alice, bob))
        alice.expect(f"* {b_name} joined")
        alice.send("hello")
        assert bob.expect(f"<{a_name}> hello")
        bob.send("/quit")
        assert alice.expect(f"* {b_name} left")
    finally:
        alice.close()
        bob.close()
