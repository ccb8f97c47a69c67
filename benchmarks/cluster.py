"""Cross-server delivery through the redis plugin: one room spread over 1 to 3 servers.

    python benchmarks/cluster.py                              # 1, 2 and 3 servers, and one without Redis
    python benchmarks/cluster.py --servers 2 --rate 20000 --clients 40 --duration 5

Starts its own ``redis-server`` (Debian's package) on a free loopback port
with a temporary directory, then for each case N ``chatcore serve --plugins
redis`` processes in one cluster, and ``--clients`` clients spread evenly
over them, all in the lobby. One client on the first server sends at a
steady pace, each line stamped with the time it was sent; every other client
is read from one epoll loop and every delivery is timed. Latencies are
reported apart for clients on the sender's server ("local") and on the
others ("remote", across Redis). ``1 (no redis)`` is one server without the
plugin, for comparison. Everything is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatcore.testing import ServerProcess

LINE = re.compile(rb"<[^>]+> (\d+) ")


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("cluster.py: redis-server not found (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("cluster.py: redis-server did not start")


def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def wait_for_line(sock: socket.socket, wanted: bytes, timeout: float = 10.0) -> None:
    sock.settimeout(timeout)
    data = b""
    while wanted not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("cluster.py: a server closed a connection")
        data += chunk


def linked(sender: socket.socket, receivers: list[socket.socket], limit: float = 10.0) -> None:
    """Until a probe from the sender reaches every receiver (every server reads the room)."""
    deadline = time.monotonic() + limit
    for sock in receivers:
        sock.setblocking(False)
    pending = set(receivers)
    buffers = dict.fromkeys(receivers, b"")
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit("cluster.py: the servers never linked up")
        sender.sendall(b"probe\n")
        time.sleep(0.05)
        for sock in list(pending):
            try:
                buffers[sock] += sock.recv(65536)
            except BlockingIOError:
                continue
            if b"> probe\n" in buffers[sock]:
                pending.discard(sock)
    sender.sendall(b"/ping\n")
    wait_for_line(sender, b"* pong\n")
    # Drain the probes still on their way.
    time.sleep(0.3)
    for sock in receivers:
        try:
            while sock.recv(65536):
                pass
        except BlockingIOError:
            pass


def run_case(servers: int, with_redis: bool, url: str, cluster: str, options: argparse.Namespace) -> dict[str, float]:
    processes: list[ServerProcess] = []
    # Each server on a CPU of its own in turn, as docs/operations.md ("CPUs")
    # advises for several servers on one host (auto could put two on one).
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    try:
        for index in range(servers):
            server_args = ["--plugins", "redis", "--redis-url", url, "--redis-cluster", cluster] if with_redis else []
            if cpus:
                server_args += ["--cpu-affinity", str(cpus[index % len(cpus)])]
            host = f"127.0.0.{index + 1}"
            processes.append(
                ServerProcess("--listen", f"tcp://{host}:0", "--log-level", "WARNING", *server_args).start()
            )
        clients = [connect(processes[i % servers].address) for i in range(options.clients)]
        for sock in clients:
            sock.sendall(b"/ping\n")
            wait_for_line(sock, b"* pong\n")
        sender, receivers = clients[0], clients[1:]
        remote = {sock for i, sock in enumerate(clients) if i % servers != 0}
        if with_redis and servers > 1:
            linked(sender, [sock for sock in receivers if sock in remote])
        return measure(sender, receivers, remote, options)
    finally:
        for process in processes:
            process.stop()


def measure(
    sender: socket.socket, receivers: list[socket.socket], remote: set[socket.socket], options: argparse.Namespace
) -> dict[str, float]:
    poller = select.epoll()
    by_fd = {sock.fileno(): sock for sock in receivers}
    buffers = dict.fromkeys(by_fd, b"")
    for sock in receivers:
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
    interval = len(receivers) / options.rate
    local_ms: list[float] = []
    remote_ms: list[float] = []
    sent = 0
    start = time.monotonic()
    next_send = start
    stop_sending = start + options.duration
    stop_reading = stop_sending + 5.0
    last_arrival = start
    filler = b"x" * 40
    while time.monotonic() < stop_reading:
        now = time.monotonic()
        if next_send <= now < stop_sending:
            sender.send(b"%d %s\n" % (time.perf_counter_ns(), filler))
            sent += 1
            next_send += interval
        wait = max(0.0, min(next_send, stop_reading) - time.monotonic())
        for fd, _event in poller.poll(wait):
            try:
                data = by_fd[fd].recv(65536)
            except BlockingIOError:
                continue
            arrived = time.perf_counter_ns()
            last_arrival = time.monotonic()
            *lines, buffers[fd] = (buffers[fd] + data).split(b"\n")
            into = remote_ms if by_fd[fd] in remote else local_ms
            for line in lines:
                match = LINE.match(line + b" ")
                if match and line.endswith(filler):
                    into.append((arrived - int(match.group(1))) / 1e6)
        if now >= stop_sending and len(local_ms) + len(remote_ms) >= sent * len(receivers):
            break
    poller.close()
    delivered = len(local_ms) + len(remote_ms)
    return {
        "sent": sent,
        "expected": sent * len(receivers),
        "delivered": delivered,
        "per_s": delivered / max(1e-9, last_arrival - start),
        "local_p50": percentile(local_ms, 0.5),
        "local_p99": percentile(local_ms, 0.99),
        "remote_p50": percentile(remote_ms, 0.5),
        "remote_p99": percentile(remote_ms, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, choices=(1, 2, 3), help="only this many servers (default: 1, 2, 3)")
    parser.add_argument("--rate", type=float, default=10_000, help="offered deliveries per second (default: 10000)")
    parser.add_argument("--clients", type=int, default=30, help="clients in the room, the sender included")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of sending (default: 3)")
    options = parser.parse_args()
    if options.clients < 4 or options.rate <= 0 or not 0 < options.duration <= 120:
        parser.error("need --clients >= 4, --rate > 0 and --duration between 0 and 120 s")
    cases = [(1, False), (1, True), (2, True), (3, True)]
    if options.servers:
        cases = [(options.servers, True)]
    failed = False
    with tempfile.TemporaryDirectory() as scratch:
        redis, url = start_redis(str(Path(scratch)))
        try:
            print(
                f"cluster.py: {options.rate:,.0f} deliveries/s offered to {options.clients} clients "
                f"for {options.duration:g} s"
            )
            for number, (servers, with_redis) in enumerate(cases):
                result = run_case(servers, with_redis, url, f"bench{number}", options)
                name = f"{servers} ({'redis' if with_redis else 'no redis'})"
                print(
                    f"  servers={name:<12} delivered={result['delivered']:,}/{result['expected']:,} "
                    f"per_s={result['per_s']:,.0f}  local p50/p99 ms={result['local_p50']:.2f}/"
                    f"{result['local_p99']:.2f}  remote p50/p99 ms={result['remote_p50']:.2f}/"
                    f"{result['remote_p99']:.2f}"
                )
                failed |= result["delivered"] != result["expected"]
        finally:
            redis.terminate()
            redis.wait(10)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
