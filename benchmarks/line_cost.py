"""What one chat line costs the server, in instructions (callgrind), for two
versions of chatcore side by side.

    python benchmarks/line_cost.py                                   # this chatcore
    python benchmarks/line_cost.py --baseline-python /tmp/before-venv/bin/python
    python benchmarks/line_cost.py --members 500 --lines 400 --single

A room of ``--members`` clients on socketpairs in one process; ``--lines``
chat lines go through ``ChatServer.broadcast_messages`` (20 at a time, the
lines of one busy sender's ``recv()``; ``--single``: one at a time through
``broadcast_message``, each from the next member, as in room500), and after
each batch the writer's own steps (``_visit``, ``_flush``) run here, so the
count covers the reading thread's work (filters, hooks, numbering, encoding,
the feeds) and the writer's (one ``send()`` per member), but not the framing
of the bytes ``recv()`` returned, nor the kernel. Each version runs twice
under ``valgrind --tool=callgrind``, with no line and with ``--lines``: the
difference over the lines is the cost of a line, whatever the start-up
costs. Instructions do not move with the machine's load, as times do, so
two versions compare on a shared machine (docs/performance.md). Needs
valgrind (``apt-get install valgrind``); bounded: a fixed number of lines.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

BATCH = 20
TEXT = "x" * 20 + " 00001 0000000001 1765000000000000"
#: Lines of one member's socket that its peer has not read: room for every line.
SO_SNDBUFFORCE = 32


def run_lines(lines: int, members: int, plugins: str, single: bool, log_dir: str) -> int:
    """The measured part, in this process: returns the deliveries, once
    the members' peers got every line whole (exits if they did not)."""
    from chatcore.config import parse_config
    from chatcore.engine.connection import Client
    from chatcore.engine.server import ChatServer
    from chatcore.message import Message
    from chatcore.transports import Transport
    from chatcore.wire.native import NATIVE

    args = ["--port", "0", "--plugins", plugins, "--max-clients", str(members + 100)]
    if "logger" in plugins.split(","):
        args += ["--log-file", os.path.join(log_dir, "events.jsonl")]
    if "filters" in plugins.split(","):
        from broadcast import BANNED_WORDS

        args += ["--banned-words", BANNED_WORDS]
    server = ChatServer(parse_config(args))
    server.hooks.server_start(server)
    writer = server.writer  # not started: its steps run here, after each batch
    clients, peers = [], []
    for _ in range(members):
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 64 << 20)
        theirs.setblocking(False)
        client = Client(Transport(ours), ("127.0.0.1", 1), server, client_id=server.registry.next_id(), wire=NATIVE)
        server.registry.add(client, "bench")
        clients.append(client)
        peers.append((ours, theirs))

    def write() -> None:
        while writer._ready_feeds or writer._ready:
            for _ in range(len(writer._ready_feeds)):
                writer._visit(writer._ready_feeds.popleft())
            for _ in range(len(writer._ready)):
                writer._flush(writer._ready.popleft())

    def drain_lines() -> int:
        got = 0
        for _ours, theirs in peers:
            try:
                while data := theirs.recv(1 << 20):
                    got += data.count(b"\n")
            except BlockingIOError:
                pass
        return got

    def drain_bytes() -> int:
        # The measured lines are checked by their size, not by counting
        # their newlines: bytes.count() over every delivery was about
        # 3,000 instructions a line in a room of 10, the driver's, not the
        # server's.
        got = 0
        buffer = memoryview(bytearray(1 << 20))
        for _ours, theirs in peers:
            try:
                while size := theirs.recv_into(buffer):
                    got += size
            except BlockingIOError:
                pass
        return got

    write()
    drain_lines()  # the join notices
    senders = []
    if single:
        for number in range(lines):
            sender = clients[number % members]
            server.broadcast_message(Message(sender, "bench", TEXT))
            senders.append(sender)
            write()
    else:
        for _ in range(lines // BATCH):
            server.broadcast_messages([Message(clients[0], "bench", TEXT) for _ in range(BATCH)])
            senders.extend([clients[0]] * BATCH)
            write()
    got = drain_bytes()
    line_bytes = {client: len(f"<{client.nick}> {TEXT}\n".encode()) for client in clients}
    if got != sum(line_bytes[sender] for sender in senders) * (members - 1):
        raise SystemExit(f"line_cost.py: {got} bytes delivered, not {len(senders) * (members - 1)} whole lines")
    for client in server.registry:
        server.registry.remove(client)
    server.hooks.server_stop(server)
    server.writer.stop()
    server.server_close()
    for ours, theirs in peers:
        ours.close()
        theirs.close()
    return len(senders) * (members - 1)


def instructions(python: str, lines: int, options: argparse.Namespace) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        python, os.path.abspath(__file__), "--run", str(lines),
        "--members", str(options.members), "--plugins", options.plugins, *(["--single"] if options.single else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"line_cost.py: {python} failed under callgrind: {(done.stdout + done.stderr)[-800:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10, help="clients in the room (default: %(default)s)")
    parser.add_argument("--lines", type=int, default=2000, help="chat lines measured (default: %(default)s)")
    parser.add_argument("--plugins", default="welcome,logger,filters", help="chatcore plugins (default: %(default)s)")
    parser.add_argument("--single", action="store_true", help="one line at a time, each from the next member")
    parser.add_argument("--baseline-python", metavar="PATH", help="also count the chatcore this Python has installed")
    parser.add_argument("--run", type=int, metavar="LINES", help=argparse.SUPPRESS)  # the measured child
    options = parser.parse_args(argv)
    if options.members < 2 or options.lines < BATCH:
        parser.error(f"--members must be at least 2 and --lines at least {BATCH}")
    if options.run is not None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        with tempfile.TemporaryDirectory(prefix="chatcore-line-cost-") as log_dir:
            run_lines(options.run, options.members, options.plugins, options.single, log_dir)
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    lines = options.lines if options.single else options.lines // BATCH * BATCH
    shape = "one at a time" if options.single else f"{BATCH} at a time"
    print(f"line_cost.py: {lines} lines, {shape}, to a room of {options.members}, plugins {options.plugins}")
    counted = {}
    for label, python in (("baseline", options.baseline_python), ("this", sys.executable)):
        if python is None:
            continue
        per_line = (instructions(python, lines, options) - instructions(python, 0, options)) / lines
        counted[label] = per_line
        print(
            f"  {label:8s} {python}: {per_line:,.0f} instructions per line, "
            f"{per_line / (options.members - 1):,.0f} per delivery",
            flush=True,
        )
    if len(counted) == 2:
        print(f"  this / baseline = {counted['this'] / counted['baseline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
