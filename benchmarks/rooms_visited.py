"""What rooms visited once leave behind in a real server process.

    python benchmarks/rooms_visited.py [--rooms 100000]

Starts ``chatcore serve`` with the history plugin, keeps one member in
``lobby``, and has one client ``/join`` a new room, say a line in it and
move on, ``--rooms`` times (issue 22, bug 10: every room name ever used kept
its numbering and its history). Prints the server's resident memory before
and after, per room visited. Run it with the Python of each version to
compare (docs/performance.md, "Rooms visited once"). Not a test: its
figures depend on the machine. Bounded: the client stops after ``--rooms``
rooms or ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import os
import time

from chatcore.testing import LineClient, ServerProcess


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=100_000, help="rooms to visit (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=500, help="joins sent before waiting (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    options = parser.parse_args()
    # Loopback is exempt from pacing and limits by default: nothing slows the visitor.
    server = ServerProcess("--plugins", "history", "--port", "0").start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        stayer = LineClient(server.address)
        visitor = LineClient(server.address)
        visitor.sync()
        time.sleep(1.0)  # let start-up allocations settle before the first figure
        before = rss_kib(pid)
        started = time.monotonic()
        done = 0
        while done < options.rooms and time.monotonic() - started < options.timeout:
            batch = min(options.batch, options.rooms - done)
            for number in range(done, done + batch):
                visitor.send(f"/join room-{number}")
                visitor.send(f"a line in room-{number}")
            done += batch
            visitor.expect(f"* you are now in room-{done - 1} (1 here)", timeout=60)
            visitor.received.clear()
            if done % 10_000 < options.batch:
                print(f"  {done:>7} rooms visited, RSS {rss_kib(pid) / 1024:.1f} MB", flush=True)
        visitor.sync()
        after = rss_kib(pid)
        print(
            f"{done} rooms visited in {time.monotonic() - started:.1f} s: RSS {before / 1024:.1f} -> "
            f"{after / 1024:.1f} MB, {(after - before) * 1024 / max(done, 1):.0f} bytes per room"
        )
        stayer.close()
        visitor.close()
    finally:
        server.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
