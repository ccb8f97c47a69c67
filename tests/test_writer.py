"""The writer: coalescing, no head-of-line blocking, closing."""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from chatcore.engine.connection import DEFAULT_MAX_SENDQ, Client
from chatcore.engine.feed import TRIM_AFTER, RoomFeed
from chatcore.engine.writer import BATCH_DELAY, Writer
from chatcore.testing import wait_for
from chatcore.transports import Transport
from chatcore.wire.native import NATIVE


class RecordingSocket:
    """A real connected socket that records each send() call."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends: list[bytes] = []
        self.send_times: list[float] = []  # time.monotonic() of each

    def send(self, data: Any, flags: int = 0) -> int:
        self.send_times.append(time.monotonic())
        sent = self._sock.send(data, flags)
        self.sends.append(bytes(data[:sent]))
        return sent

    def fileno(self) -> int:
        return self._sock.fileno()

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()


def make_client(
    writer: Writer, max_queue: int = 100, max_sendq: int = DEFAULT_MAX_SENDQ
) -> tuple[Client, RecordingSocket, socket.socket]:
    ours, peer = socket.socketpair()
    recording = RecordingSocket(ours)
    server = SimpleNamespace(writer=writer)
    client = Client(
        Transport(recording),  # type: ignore[arg-type]
        ("127.0.0.1", 1),
        server,  # type: ignore[arg-type]
        wire=NATIVE,
        max_queue=max_queue,
        max_sendq=max_sendq,
    )
    return client, recording, peer


def read_exactly(peer: socket.socket, size: int) -> bytes:
    data = b""
    peer.settimeout(5)
    while len(data) < size:
        data += peer.recv(size - len(data))
    return data


def read_until_closed(peer: socket.socket) -> bytes:
    data = b""
    peer.settimeout(5)
    while chunk := peer.recv(4096):
        data += chunk
    return data


def test_lines_queued_together_go_out_in_one_send():
    writer = Writer()
    client, recording, peer = make_client(writer)
    try:
        lines = [f"<alice> line {n}\n".encode() for n in range(50)]
        for line in lines:  # queued before the writer runs: all waiting at once
            client.send_data(line)
        writer.start()
        expected = b"".join(lines)
        assert read_exactly(peer, len(expected)) == expected
        wait_for(lambda: recording.sends, message="the send to be recorded")
        assert recording.sends == [expected]
    finally:
        writer.stop()
        recording.close()
        peer.close()


def test_a_stalled_client_does_not_hold_up_the_others():
    writer = Writer()
    writer.start()
    stalled, stalled_sock, stalled_peer = make_client(writer, max_queue=10_000, max_sendq=10 << 20)
    healthy, healthy_sock, healthy_peer = make_client(writer)
    try:
        chunk = b"x" * 1000 + b"\n"
        for _ in range(5000):  # 5 MB for a peer that never reads
            stalled.send_data(chunk)
        wait_for(lambda: stalled._blocked, message="the stalled socket to fill up")
        healthy.send_data(b"still flowing\n")
        assert read_exactly(healthy_peer, 14) == b"still flowing\n"
    finally:
        writer.stop()
        for sock in (stalled_sock, stalled_peer, healthy_sock, healthy_peer):
            sock.close()


def test_overflow_disconnects_as_slow_consumer_and_shuts_the_socket():
    writer = Writer()
    writer.start()
    client, sock, peer = make_client(writer, max_queue=5)
    try:
        client._scheduled = True  # as if the writer were busy elsewhere: the queue only fills
        for n in range(6):  # one more than the bound
            client.send_data(f"{n}\n".encode())
        assert client.close_reason == "slow consumer"
        assert client.wait_closed(5)
        received = read_until_closed(peer)
        # What was queued before the overflow still goes out (the socket has
        # room), then the close.
        assert received == b"0\n1\n2\n3\n4\n"
    finally:
        writer.stop()
        sock.close()
        peer.close()


def test_the_queue_is_bounded_in_bytes_too():
    writer = Writer()
    writer.start()
    client, sock, peer = make_client(writer, max_queue=10_000, max_sendq=100_000)
    try:
        client._scheduled = True  # as if the writer were busy elsewhere: the queue only fills
        answer = b"a" * 30_000 + b"\n"  # a few entries, each large (a web resume answer)
        for _ in range(4):
            client.send_data(answer)
        assert client.closed is False
        assert client.queued_bytes == 4 * len(answer)  # over the bound, by the last entry only
        client.send_data(answer)
        assert client.close_reason == "slow consumer"
        assert client.wait_closed(5)
        assert client.queued_bytes == 0
        assert read_until_closed(peer) == answer * 4
    finally:
        writer.stop()
        sock.close()
        peer.close()


def test_the_byte_count_follows_the_writer_and_is_level_when_the_queue_is():
    writer = Writer()
    writer.start()
    client, sock, peer = make_client(writer, max_sendq=4096)
    try:
        for _ in range(200):  # 200 KB through a 4 KB bound, read as it goes
            client.send_data(b"b" * 1023 + b"\n")
            assert read_exactly(peer, 1024)[-1:] == b"\n"
            assert client.wait_sent(5)
        assert client.closed is False
        assert client.queued_bytes == 0
        client._sendq = 3000  # a count that drifted (racing += and -=) ...
        client.send_data(b"last\n")
        assert read_exactly(peer, 5) == b"last\n"
        wait_for(lambda: client.queued_bytes == 0, message="the count to be put right")  # ... is level again
    finally:
        writer.stop()
        sock.close()
        peer.close()


def test_wait_sent_returns_when_the_client_reads_or_is_closed():
    writer = Writer()
    writer.start()
    client, sock, peer = make_client(writer, max_sendq=10 << 20)
    try:
        assert client.wait_sent(0)  # nothing queued
        big = b"c" * (4 << 20)  # more than the socket pair buffers
        client.send_data(big)
        wait_for(lambda: client._blocked, message="the socket to fill up")
        assert client.wait_sent(0.05) is False  # not reading: still queued
        assert read_exactly(peer, len(big)) == big
        assert client.wait_sent(5)
        client.send_data(big)
        wait_for(lambda: client._blocked, message="the socket to fill up again")
        client.disconnect("gone", tell=False)
        assert client.wait_sent(5)  # closed: nothing to wait for
    finally:
        writer.stop()
        sock.close()
        peer.close()


def test_finish_flushes_what_is_queued_then_shuts_down():
    writer = Writer()
    writer.start()
    client, sock, peer = make_client(writer)
    try:
        client.send_data(b"last words\n")
        client.disconnect("done", notice="bye")
        assert client.wait_closed(5)
        received = read_until_closed(peer)
        assert received == b"last words\n* bye\n"
    finally:
        writer.stop()
        sock.close()
        peer.close()


def test_a_client_the_writer_fails_on_is_closed_and_the_others_still_get_their_lines():
    writer = Writer()
    writer.start()
    broken, broken_sock, broken_peer = make_client(writer)
    healthy, healthy_sock, healthy_peer = make_client(writer)

    def fails(data: bytes) -> bytes:
        raise RuntimeError("a bug in a transport")

    broken._encrypt = fails  # as a TLS transport that raises would
    try:
        broken.send_data(b"never sent\n")
        healthy.send_data(b"still flowing\n")
        assert broken.wait_closed(5)
        assert read_until_closed(broken_peer) == b""
        assert read_exactly(healthy_peer, 14) == b"still flowing\n"
        healthy.send_data(b"and after\n")
        assert read_exactly(healthy_peer, 10) == b"and after\n"
    finally:
        writer.stop()
        for sock in (broken_sock, broken_peer, healthy_sock, healthy_peer):
            sock.close()


def in_feed(*clients: Client) -> RoomFeed:
    """A room's feed with ``clients`` attached, as the registry makes it."""
    feed = RoomFeed(NATIVE)
    with feed.lock:
        for client in clients:
            feed.attach(client)
    return feed


def say(writer: Writer, feed: RoomFeed, line: bytes, sender: Client | None = None, *, batched: bool = False) -> None:
    """What publish() does with one encoded line of a room."""
    with feed.lock:
        feed.append(line, sender)
        ready = feed.mark_ready(batched)
    if ready:
        (writer.schedule_batched if batched else writer.schedule_feeds)([feed])


def test_presence_notices_of_a_burst_wait_and_leave_in_one_send():
    writer = Writer()
    writer.start()
    client, recording, peer = make_client(writer)
    feed = in_feed(client)
    try:
        lines = [f"* guest-{n} joined\n".encode() for n in range(20)]
        began = time.monotonic()
        for line in lines:
            say(writer, feed, line, batched=True)
        queued_in = time.monotonic() - began
        expected = b"".join(lines)
        assert read_exactly(peer, len(expected)) == expected
        # Nothing left before the batch was due (without batching, the first
        # notice would have gone at once) ...
        assert recording.send_times[0] - began >= BATCH_DELAY
        # ... and a burst queued within one batch leaves in one send.
        # The peer can read the bytes before send() returns and they are
        # recorded: wait for the record too.
        wait_for(lambda: b"".join(recording.sends) == expected, message="the sends to be recorded")
        if queued_in < BATCH_DELAY:  # not so if this thread was held up that long
            assert recording.sends == [expected]
    finally:
        writer.stop()
        recording.close()
        peer.close()


def test_urgent_output_behind_presence_notices_takes_them_along_at_once_in_order():
    writer = Writer()
    writer.start()
    client, recording, peer = make_client(writer)
    feed = in_feed(client)
    try:
        say(writer, feed, b"* alice joined\n", batched=True)
        say(writer, feed, b"<alice> hi\n")  # urgent: must not wait for the batch
        expected = b"* alice joined\n<alice> hi\n"
        assert read_exactly(peer, len(expected)) == expected
        wait_for(lambda: b"".join(recording.sends) == expected, message="both in the record of sends")
        # Made ready by the chat line, the feed is idle again afterwards;
        # the batch that comes due later sends nothing twice.
        wait_for(lambda: feed.scheduled is False and not writer._batched, message="the batch to be released")
        say(writer, feed, b"* bob joined\n", batched=True)
        assert read_exactly(peer, 13) == b"* bob joined\n"
        wait_for(lambda: b"".join(recording.sends) == expected + b"* bob joined\n", message="no line sent twice")
    finally:
        writer.stop()
        recording.close()
        peer.close()


def test_what_is_said_to_one_member_comes_after_the_room_lines_before_it():
    writer = Writer()
    alice, alice_sock, alice_peer = make_client(writer)
    bob, bob_sock, bob_peer = make_client(writer)
    feed = in_feed(alice, bob)
    try:
        # All queued before the writer runs: the feed and bob's own queue
        # both have output waiting when it starts.
        say(writer, feed, b"<carol> one\n")
        bob.send_data(b"* a notice to bob alone\n")
        say(writer, feed, b"<carol> two\n")
        writer.start()
        expected = b"<carol> one\n* a notice to bob alone\n<carol> two\n"
        assert read_exactly(bob_peer, len(expected)) == expected
        assert read_exactly(alice_peer, 24) == b"<carol> one\n<carol> two\n"
    finally:
        writer.stop()
        for sock in (alice_sock, alice_peer, bob_sock, bob_peer):
            sock.close()


def test_a_member_gets_every_line_of_the_room_but_its_own_in_order():
    writer = Writer()
    alice, alice_sock, alice_peer = make_client(writer)
    bob, bob_sock, bob_peer = make_client(writer)
    feed = in_feed(alice, bob)
    try:
        said = [(alice if n % 3 else bob, f"<{'alice' if n % 3 else 'bob'}> {n}\n".encode()) for n in range(300)]
        for sender, line in said[:150]:  # half waiting when the writer starts, half while it runs
            say(writer, feed, line, sender)
        writer.start()
        for sender, line in said[150:]:
            say(writer, feed, line, sender)
        for client, peer in ((alice, alice_peer), (bob, bob_peer)):
            expected = b"".join(line for sender, line in said if sender is not client)
            assert read_exactly(peer, len(expected)) == expected
        # Every line was had by both: the writer's next visit trims the log.
        say(writer, feed, b"* the end\n")
        for peer in (alice_peer, bob_peer):
            assert read_exactly(peer, 10) == b"* the end\n"
        wait_for(lambda: len(feed.lines) <= TRIM_AFTER, message="the log to be trimmed")
    finally:
        writer.stop()
        for sock in (alice_sock, alice_peer, bob_sock, bob_peer):
            sock.close()


def test_a_take_leaves_out_only_the_lines_not_for_the_member_before_and_after_its_own():
    writer = Writer()
    made = [make_client(writer) for _ in range(3)]
    (alice, bob, carol) = (client for client, _, _ in made)
    feed = in_feed(alice, bob, carol)
    said: list[tuple[bytes, Client | frozenset[Client] | None]] = [
        (b"1\n", alice),
        (b"2\n", frozenset({alice, carol})),  # told to both in another room already
        (b"3\n", bob),
        (b"4\n", None),
    ]
    said += [(f"{n}\n".encode(), bob if n % 2 else None) for n in range(5, 300)]  # a long tail after their own
    together = [(f"carol {n}\n".encode(), carol) for n in range(3)]  # lines read together: one extend()
    try:
        with feed.lock:
            for line, sender in said[:100]:
                feed.append(line, sender)
            feed.extend([line for line, _ in together], carol)
            for line, sender in said[100:]:
                feed.append(line, sender)
        said[100:100] = together
        with feed.lock:
            for client in (alice, bob, carol):
                skipped = {
                    line
                    for line, sender in said
                    if sender is client or (isinstance(sender, frozenset) and client in sender)
                }
                membership = feed.membership(client)
                assert membership is not None
                expected = b"".join(line for line, _ in said if line not in skipped)
                got = feed.take(membership, 7)  # in pieces: a line left out may end one, or begin the next
                while membership.pos < feed.end:
                    got += feed.take(membership, 7 if client is not bob else 1000)
                assert got == expected
    finally:
        writer.stop()
        for _, sock, peer in made:
            sock.close()
            peer.close()


def test_a_member_held_while_it_enters_is_left_out_of_its_own_line():
    writer = Writer()
    (alice, alice_sock, alice_peer), (bob, bob_sock, bob_peer) = make_client(writer), make_client(writer)
    feed = in_feed(alice)
    try:
        with feed.lock:
            feed.attach(bob, hold=True)  # entering: told its welcome first
            feed.append(b"* bob is here\n", bob)  # about bob, from another thread
            feed.append(b"<alice> hi bob\n", alice)
            assert feed.release(bob)
            membership = feed.membership(bob)
            assert membership is not None
            assert feed.take(membership) == b"<alice> hi bob\n"
    finally:
        writer.stop()
        for sock in (alice_sock, alice_peer, bob_sock, bob_peer):
            sock.close()


class SpeakingSocket(RecordingSocket):
    """A RecordingSocket that has the room say something after each send:
    lines that arrive while the writer's visit is still sending."""

    def __init__(self, sock: socket.socket, speak: Callable[[], None]) -> None:
        super().__init__(sock)
        self.speak = speak

    def send(self, data: Any, flags: int = 0) -> int:
        sent = super().send(data, flags)
        self.speak()
        return sent


def test_lines_said_while_a_visit_is_sending_reach_every_member_once_and_in_order():
    writer = Writer()
    lines = [f"* line {n}\n".encode() for n in range(150)]
    unsaid = collections.deque(lines)
    feeds: list[RoomFeed] = []

    def speak() -> None:  # on the writer's thread, between two sends of a visit
        if unsaid:
            say(writer, feeds[0], unsaid.popleft())

    members = []
    for _ in range(3):
        ours, peer = socket.socketpair()
        sock = SpeakingSocket(ours, speak)
        server = SimpleNamespace(writer=writer)
        client = Client(Transport(sock), ("127.0.0.1", 1), server, wire=NATIVE, max_queue=10_000)  # type: ignore[arg-type]
        members.append((client, sock, peer))
    feeds.append(in_feed(*[client for client, _, _ in members]))
    try:
        writer.start()
        speak()
        expected = b"".join(lines)
        for _client, sock, peer in members:
            assert read_exactly(peer, len(expected)) == expected
            wait_for(lambda sock=sock: b"".join(sock.sends) == expected, message="the sends to be recorded")
            assert len(sock.sends) > 10  # many visits, each with lines said during the one before
        assert not unsaid
    finally:
        writer.stop()
        for _client, sock, peer in members:
            sock.close()
            peer.close()


def test_a_room_whose_members_keep_up_holds_no_lines():
    writer = Writer()
    writer.start()
    alice, alice_sock, alice_peer = make_client(writer)
    bob, bob_sock, bob_peer = make_client(writer)
    feed = in_feed(alice, bob)
    try:
        say(writer, feed, b"<alice> hi\n", alice)
        say(writer, feed, b"<bob> hello\n", bob)
        assert read_exactly(alice_peer, 12) == b"<bob> hello\n"
        assert read_exactly(bob_peer, 11) == b"<alice> hi\n"
        wait_for(lambda: not feed.lines and feed.start == feed.end == 2, message="the lines to be forgotten")
    finally:
        writer.stop()
        for sock in (alice_sock, alice_peer, bob_sock, bob_peer):
            sock.close()


def test_a_held_member_gets_the_rooms_lines_after_what_it_is_told_first():
    """A client entering a room is attached held (the engine's join): the
    room's lines said meanwhile are kept for it, neither sent nor put before
    what it is told alone (that it is in), and follow that once released;
    the others are not held up."""
    writer = Writer()
    writer.start()
    alice, alice_sock, alice_peer = make_client(writer)
    bob, bob_sock, bob_peer = make_client(writer)
    feed = in_feed(alice)
    try:
        with feed.lock:
            feed.attach(bob, hold=True)
        say(writer, feed, b"<carol> one\n")
        say(writer, feed, b"<carol> two\n")
        assert read_exactly(alice_peer, 24) == b"<carol> one\n<carol> two\n"
        # alice is level, yet the lines bob has not had are kept.
        wait_for(lambda: not feed.scheduled, message="the writer's visit")
        assert feed.lines == [b"<carol> one\n", b"<carol> two\n"]
        bob.send_data(b"* you are now in dev\n")
        with feed.lock:
            assert feed.release(bob)
            ready = feed.mark_ready(False)
        if ready:
            writer.schedule_feeds([feed])
        expected = b"* you are now in dev\n<carol> one\n<carol> two\n"
        assert read_exactly(bob_peer, len(expected)) == expected
        say(writer, feed, b"<carol> three\n")
        assert read_exactly(bob_peer, 14) == b"<carol> three\n"
        # Read like any member's from now on: nothing is kept for it any more.
        assert not feed.release(bob)
        assert {membership.client for membership in feed.members} == {alice, bob}
    finally:
        writer.stop()
        for sock in (alice_sock, alice_peer, bob_sock, bob_peer):
            sock.close()


def test_a_member_that_falls_behind_the_feed_is_a_slow_consumer_and_the_others_go_on():
    writer = Writer()
    writer.start()
    stalled, stalled_sock, stalled_peer = make_client(writer, max_queue=100)
    healthy, healthy_sock, healthy_peer = make_client(writer, max_queue=10_000)  # read only at the end
    feed = in_feed(stalled, healthy)
    try:
        line = b"<carol> " + b"x" * 1000 + b"\n"
        for _ in range(5000):  # 5 MB, far more than the peers' sockets take
            say(writer, feed, line)
        assert stalled.wait_closed(5)
        assert stalled.close_reason == "slow consumer"
        assert read_exactly(healthy_peer, 5000 * len(line)) == line * 5000
        # The stalled member no longer holds the log back: the writer's next
        # visit trims it.
        say(writer, feed, b"<carol> and on\n")
        assert read_exactly(healthy_peer, 15) == b"<carol> and on\n"
        wait_for(lambda: len(feed.lines) <= TRIM_AFTER, message="the log to be trimmed")
    finally:
        writer.stop()
        for sock in (stalled_sock, stalled_peer, healthy_sock, healthy_peer):
            sock.close()


def test_nothing_the_room_says_after_a_members_last_words_reaches_it():
    writer = Writer()
    client, sock, peer = make_client(writer)
    feed = in_feed(client)
    try:
        say(writer, feed, b"<carol> before\n")
        client.disconnect("kicked", notice="bye")
        say(writer, feed, b"<carol> after\n")
        writer.start()
        assert client.wait_closed(5)
        assert read_until_closed(peer) == b"<carol> before\n* bye\n"
        assert feed.members == ()
    finally:
        writer.stop()
        sock.close()
        peer.close()
