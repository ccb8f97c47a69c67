"""Delivery latency at a steady offered load, with as light a driver as can be.

    python benchmarks/steady_latency.py                  # 50,000 deliveries/s to 100 clients
    python benchmarks/steady_latency.py --rate 100000 --clients 200 --duration 10
    python benchmarks/steady_latency.py --web            # the receivers are WebSocket clients (the web plugin)

``broadcast.py``'s ``steady`` scenario answers the same question, but its
driver (ten senders, two monitors parsing every line, a worker process) uses
about one of this machine's two cores, and on two cores that shows up in
the tail. This probe is one process: one sender paced evenly, every other
client read from one epoll loop, the loop sleeping until the next send is
due, and every delivery timed (no sampling). The server runs as in
``broadcast.py``: welcome, logger and the word filter (with its word list).
Everything is bounded by ``--duration``; it stops by itself.

With ``--web`` the server also runs the ``web`` plugin, the sender stays a
native client and every receiver is a WebSocket client of ``/ws``: the same
room, the same lines, rendered as JSON frames instead of text lines.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from broadcast import default_plugins, filter_args, percentile

LINE = re.compile(rb"<[^>]+> (\d+) ")
WEB_CHAT = re.compile(rb'"text":"(\d+) ')
LISTENER = re.compile(r"(\w+)://[^\s,]+:(\d+)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50_000, help="offered deliveries per second (default: 50000)")
    parser.add_argument("--clients", type=int, default=100, help="clients in the room, the sender included")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of sending (default: 5)")
    parser.add_argument("--plugins", default=default_plugins(), help="chatcore plugins (default: %(default)s)")
    parser.add_argument("--web", action="store_true", help="receivers are WebSocket clients (adds the web plugin)")
    options = parser.parse_args()
    if options.clients < 2 or options.rate <= 0 or not 0 < options.duration <= 600:
        parser.error("need --clients >= 2, --rate > 0 and --duration between 0 and 600 s")

    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "chatcore", "serve", "--log-level", "WARNING"]
        plugins = f"{options.plugins},web" if options.web else options.plugins
        command += ["--plugins", plugins, *filter_args(options.plugins)]
        command += ["--listen", "tcp://127.0.0.1:0"] + (["--listen", "ws://127.0.0.1:0"] if options.web else [])
        command += ["--log-file", str(Path(scratch) / "events.jsonl")]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            ports = {scheme: int(port) for scheme, port in LISTENER.findall(server.stdout.readline())}
            if "tcp" not in ports or (options.web and "ws" not in ports):
                print("steady_latency.py: the server did not start", file=sys.stderr)
                return 1
            latencies, sent = measure(ports["tcp"], ports.get("ws"), options)
        finally:
            server.terminate()
            server.wait(10)

    expected = sent * (options.clients - 1)
    print(
        f"steady_latency.py: {options.rate:,.0f} deliveries/s offered to {options.clients} "
        f"{'WebSocket ' if options.web else ''}clients for "
        f"{options.duration:g} s, plugins {options.plugins}\n"
        f"  deliveries={len(latencies):,} (expected {expected:,})  "
        f"p50_ms={percentile(latencies, 0.5):.2f}  p90_ms={percentile(latencies, 0.9):.2f}  "
        f"p99_ms={percentile(latencies, 0.99):.2f}  max_ms={max(latencies):.2f}"
    )
    return 0 if len(latencies) == expected else 1


def measure(port: int, web_port: int | None, options: argparse.Namespace) -> tuple[list[float], int]:
    """Returns every delivery's latency in ms, and how many messages were sent."""
    clients = [socket.create_connection(("127.0.0.1", port))]
    if web_port is None:
        clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(options.clients - 1)]
    else:
        clients += [web_connect(web_port) for _ in range(options.clients - 1)]
    for index, sock in enumerate(clients):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Welcomed and registered once the pong is back.
        sock.sendall(b"/ping\n" if web_port is None or index == 0 else web_line("/ping"))
    for index, sock in enumerate(clients):
        sock.settimeout(10)
        pong = b"* pong\n" if web_port is None or index == 0 else b'"text":"pong"'
        reply = b""
        while pong not in reply:
            reply += sock.recv(65536)
        sock.setblocking(False)
    sender, receivers = clients[0], clients[1:]
    poller = select.epoll()
    by_fd = {sock.fileno(): sock for sock in receivers}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)

    interval = (len(receivers)) / options.rate  # one message reaches every receiver
    latencies: list[float] = []
    sent = 0
    start = time.monotonic()
    next_send = start
    stop_sending = start + options.duration
    stop_reading = stop_sending + 2.0
    filler = b"x" * 40
    pattern = LINE if web_port is None else WEB_CHAT
    while time.monotonic() < stop_reading:
        now = time.monotonic()
        if now >= next_send and now < stop_sending:
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
            for stamp in pattern.findall(data):
                latencies.append((arrived - int(stamp)) / 1e6)
        if now >= stop_sending and len(latencies) >= sent * len(receivers):
            break
    for sock in clients:
        sock.close()
    return latencies, sent


def web_connect(port: int) -> socket.socket:
    """A WebSocket client of the web plugin, upgraded (RFC 6455 opening handshake)."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key)
    )
    sock.settimeout(10)
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    if not reply.startswith(b"HTTP/1.1 101 "):
        raise ConnectionError(f"WebSocket upgrade refused: {reply[:200]!r}")
    return sock


def web_line(text: str) -> bytes:
    """A masked text frame (clients must mask) carrying a line, as the page sends it."""
    payload = json.dumps({"type": "line", "text": text}).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


if __name__ == "__main__":
    raise SystemExit(main())
