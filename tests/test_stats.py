"""The engine's per-thread counts: nothing lost, and bounded however many
threads come and go."""

from __future__ import annotations

import threading

from chatcore import Client, hookimpl
from chatcore.engine.backplane import Backplane
from chatcore.engine.stats import LATENCY_BUCKETS, Stats
from chatcore.events import PrivateMessage
from chatcore.testing import wait_for


def test_counts_of_ended_threads_are_kept_and_their_entries_dropped():
    stats = Stats()

    def work(n: int) -> None:
        counts = stats.mine()
        counts.messages += 1
        counts.deliveries += n
        counts.observe_latency(3e-6)
        stats.thread_ended()  # as a connection's thread does, last

    for batch in range(10):  # 500 threads, 50 at a time, never scraped in between
        threads = [threading.Thread(target=work, args=(batch,)) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    assert stats._live == set()  # folded as they ended, not one entry per thread ever seen
    totals = stats.totals()
    assert totals.messages == 500
    assert totals.deliveries == 50 * sum(range(10))
    assert totals.latency_buckets[LATENCY_BUCKETS.index(5e-6)] == 500
    assert sum(totals.latency_buckets) == 500
    assert abs(totals.latency_sum - 500 * 3e-6) < 1e-9
    assert stats.totals().messages == 500  # retired once, not again at each reading


def test_a_thread_that_never_says_it_ended_keeps_its_counts():
    stats = Stats()
    thread = threading.Thread(target=lambda: setattr(stats.mine(), "messages", 7))
    thread.start()
    thread.join(5)
    stats.thread_ended()  # this thread never counted: nothing to retire
    assert stats.totals().messages == 7
    assert len(stats._live) == 1


def test_a_thread_that_counts_again_after_it_ended_is_counted_once_more():
    stats = Stats()
    stats.mine().messages += 2
    stats.thread_ended()
    stats.thread_ended()  # twice: retired once
    stats.mine().messages += 1
    assert stats.totals().messages == 3
    assert len(stats._live) == 1


def test_a_latency_on_a_bound_goes_in_that_bucket_and_beyond_the_last_in_inf():
    counts = Stats().mine()
    counts.observe_latency(1e-6)
    counts.observe_latency(5.0)
    assert counts.latency_buckets[0] == 1
    assert counts.latency_buckets[-1] == 1


def test_idle_clients_make_no_per_thread_counts_and_their_joins_are_counted(chat_server_factory, chat_client):
    # Per-thread counts cost a reader thread about 600 bytes: only threads
    # that count messages make them (docs/performance.md, memory per idle client).
    server = chat_server_factory()
    alice, bob, carol = chat_client(server), chat_client(server), chat_client(server)
    carol.send("/nick carol")
    alice.expect("* guest-3 is now known as carol")
    bob.expect("* guest-3 is now known as carol")
    carol.sync()  # the count follows the delivery: wait until carol's rename is done
    assert server.stats._live == set()
    assert server.stats.totals().deliveries == 3 + 2  # joins: 1 + 2; the rename: 2
    alice.send("hello")
    bob.expect("<guest-1> hello")
    carol.expect("<guest-1> hello")
    # Its latency is counted last, after its deliveries.
    wait_for(lambda: sum(server.stats.totals().latency_buckets) == 1, message="the message counted")
    assert len(server.stats._live) == 1  # alice's thread, which counted it
    assert server.stats.totals().deliveries == 5 + 2


def test_lines_read_together_are_each_timed(chat_server_factory, chat_client):
    # The lines of one read are published together and timed in one step:
    # each still counts once in the histogram, with the same latency.
    server = chat_server_factory()
    alice, bob = chat_client(server), chat_client(server)
    alice.sync()
    alice.sock.sendall(b"".join(f"line {number}\n".encode() for number in range(20)))
    for number in range(20):
        bob.expect(f"<guest-1> line {number}")
    wait_for(lambda: sum(server.stats.totals().latency_buckets) == 20, message="the 20 lines timed")
    totals = server.stats.totals()
    assert totals.messages == 20
    assert 0 < totals.latency_sum < 20 * 5.0


def test_a_connection_thread_retires_its_counts_when_it_ends(chat_server_factory, chat_client):
    server = chat_server_factory()
    alice, bob = chat_client(server), chat_client(server)
    alice.send("hello")
    bob.expect("<guest-1> hello")
    wait_for(lambda: len(server.stats._live) == 1, message="alice's thread to count the message")
    alice.send("/quit")
    alice.wait_closed()
    wait_for(lambda: not server.stats._live, message="alice's thread to retire its counts")
    totals = server.stats.totals()
    assert totals.messages == 1
    assert totals.deliveries == 1 + 1 + 1  # bob's join to alice, the message and alice's leave to bob
    assert sum(totals.latency_buckets) == 1


def test_a_private_message_is_counted_and_timed_on_this_server_and_across_a_cluster(chat_server_factory, chat_client):
    """One path for every private message (ChatServer.send_private): one
    sent to a nick on another server (a cluster plugin's) is counted and
    timed as one here is (issue 22, bug 5: it was neither)."""

    class Elsewhere(Backplane):
        """A cluster of one other person, 'faraway'."""

        def __init__(self) -> None:
            super().__init__()
            self.delivered: list[tuple[str, str]] = []

        @property
        def shared(self) -> bool:
            return True

        def send_private(self, sender: Client, message: PrivateMessage) -> bool | None:
            if message.recipient != "faraway":
                return None
            self.delivered.append((message.recipient, message.text))
            return True

    cluster = Elsewhere()

    class Plugin:
        @hookimpl
        def chatcore_backplane(self) -> Backplane:
            return cluster

    server = chat_server_factory(plugins=[Plugin()])
    alice, bob = chat_client(server), chat_client(server)
    baseline = server.stats.totals().deliveries
    alice.send("/msg guest-2 here")
    bob.expect("*guest-1* here")
    alice.expect("-> *guest-2* here")
    alice.send("/msg faraway there")
    alice.expect("-> *faraway* there")
    assert cluster.delivered == [("faraway", "there")]
    # Its latency is counted last, after the sender's copy is queued.
    wait_for(lambda: sum(server.stats.totals().latency_buckets) == 2, message="both timed")
    totals = server.stats.totals()
    assert totals.messages == 2
    assert totals.deliveries - baseline == 2
