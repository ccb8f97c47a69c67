"""End-to-end broadcast throughput over loopback, chatcore and naive.

Each server runs in a subprocess (so the benchmark's own threads do not
share its GIL). N clients connect; the senders (all of them for N = 10, ten
for N = 100) send a fixed number of 64-byte lines with a window of 20 in
flight each (see benchmarks/broadcast.py for the definition); one round is
timed from the first send until every client has every line. The figure
that matters, ``deliveries_per_s`` (best round), is in the extra info;
``benchmarks/broadcast.py`` measures the same with more detail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broadcast import (
    LINE_SIZE,
    WINDOW_TIMEOUT,
    Monitor,
    Receiver,
    Samples,
    Sender,
    ServerProcess,
    connect,
    read_until,
    receive_loop,
    sync,
)
from pytest_benchmark.fixture import BenchmarkFixture

HERE = Path(__file__).resolve().parent
WINDOW = 20
#: Deliveries per round: enough to last a fraction of a second.
DELIVERIES_PER_ROUND = 300_000
ROUND_TIMEOUT = 30.0


class Room:
    """N connected clients, the senders among them, ready to transfer."""

    def __init__(self, server: ServerProcess, clients: int, senders: int) -> None:
        socks = []
        for _ in range(clients):
            sock = connect(server.port)
            read_until(sock, b"\n")
            socks.append(sock)
        self.monitors = [
            Monitor(socks[0], LINE_SIZE, Samples(), senders),
            Monitor(socks[1], LINE_SIZE, Samples(), senders),
        ]
        self.senders = []
        for index in range(senders):
            nick = b"s%05d" % index
            if server.name == "chatcore":
                socks[index].sendall(b"/nick " + nick + b"\n")
                read_until(socks[index], b"* you are now known as")
                prefix = b""
            else:
                prefix = b"<" + nick + b"> "
            self.senders.append(Sender(index, socks[index], prefix, self.monitors[1 if index == 0 else 0]))
        self.receivers: list[Receiver] = [*self.monitors, *(Receiver(s, LINE_SIZE, Samples()) for s in socks[2:])]
        for receiver in self.receivers:
            sync(receiver.sock, server.name)
        self.clients = clients
        self.per_sender = max(1, DELIVERIES_PER_ROUND // (clients - 1) // senders)
        self.rates: list[float] = []
        self.lost = 0

    def lines(self) -> int:
        return sum(r.lines for r in self.receivers)

    def transfer(self) -> None:
        goal = self.lines() + self.per_sender * len(self.senders) * (self.clients - 1)
        targets = [s.sent + self.per_sender for s in self.senders]
        started = time.monotonic()
        deadline = started + ROUND_TIMEOUT
        for _ in receive_loop(self.receivers, lambda: self.lines() >= goal or time.monotonic() > deadline, 0.0005):
            now = time.monotonic()
            for sender, target in zip(self.senders, targets, strict=True):
                if sender.sent < target and not sender.out:
                    allowed = min(target - sender.sent, sender.monitor.acked[sender.index] + WINDOW - sender.sent)
                    if allowed > 0:
                        sender.progress_at = now
                        sender.out = sender.make(allowed, LINE_SIZE)
                    elif now - sender.progress_at > WINDOW_TIMEOUT:  # its in-flight lines were lost
                        sender.monitor.acked[sender.index] = sender.sent
                        sender.progress_at = now
                sender.push()
            if all(s.sent >= t and not s.out for s, t in zip(self.senders, targets, strict=True)) and (
                now - max(s.progress_at for s in self.senders) > WINDOW_TIMEOUT
            ):
                break  # everything sent long ago and still short: lost
        elapsed = time.monotonic() - started
        delivered = self.per_sender * len(self.senders) * (self.clients - 1) - max(0, goal - self.lines())
        self.lost += max(0, goal - self.lines())
        self.rates.append(delivered / elapsed)

    def close(self) -> None:
        for receiver in self.receivers:
            receiver.sock.close()


@pytest.fixture(params=["chatcore", "naive"])
def server(request: pytest.FixtureRequest, plugins: str, tmp_path: Path) -> Iterator[ServerProcess]:
    import sys

    if request.param == "naive":
        command = [sys.executable, str(HERE / "naive_server.py"), "--port", "0", "--backlog", "1024"]
    else:
        command = [sys.executable, "-m", "chatcore", "serve", "--port", "0", "--plugins", plugins]
        if "logger" in plugins.split(","):
            command += ["--log-file", str(tmp_path / "events.jsonl")]
    with ServerProcess(request.param, command, tmp_path / "server.out") as server:
        yield server


@pytest.mark.parametrize(("clients", "senders"), [(10, 10), (100, 10)], ids=["10-clients", "100-clients"])
def test_broadcast_throughput(
    benchmark: BenchmarkFixture,
    server: ServerProcess,
    clients: int,
    senders: int,
    report_figure: Callable[[str], None],
) -> None:
    room = Room(server, clients, senders)
    try:
        benchmark.pedantic(room.transfer, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        room.close()
    benchmark.extra_info["deliveries_per_round"] = room.per_sender * senders * (clients - 1)
    benchmark.extra_info["deliveries_per_s"] = round(max(room.rates))
    benchmark.extra_info["lost"] = room.lost
    report_figure(f"{max(room.rates):,.0f} deliveries/s, {room.lost} lost")
    if server.name == "chatcore":
        assert room.lost == 0
