"""The load tester as the fault driver: Locust (loadtest/chat.py, headless)
runs chat through both servers of a cluster while server two is cut off
from Redis (the fault proxy's partition: every link reset, reconnections
refused) and healed; Locust's own counts are the figures.

Locust runs as a subprocess (importing it would monkey-patch this process
with gevent) with ``--messages``, a run of a known size: every user is in
before anyone sends, each sends exactly that many lines, and the run ends
once they have all arrived. Its JSON report is read back: no ``loss`` row
(lost, duplicated, reordered, corrupted: Locust checks every sender's
sequence at every receiver), and every line delivered to every other user
exactly once, within each server and across the two.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_support import LINK_DOWN, LONG, TIMEOUT, Tally, linked
from faultproxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.faults]

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest" / "chat.py"
DURATION = 30.0 if LONG else 2.0  # the partition
USERS = 10 if LONG else 6  # half on each server, all in room-0, all sending
RATE = 5  # lines per second per user
#: Each user's lines: the partition, and two seconds of chat on each side of it.
MESSAGES = int((DURATION + 4) * RATE)
RECOVERY_BOUND = 8.0


def test_locust_through_both_servers_counts_nothing_lost_over_a_partition(
    redis_server, cluster, connect, record, tmp_path
) -> None:
    assert importlib.util.find_spec("locust") is not None, "Locust is not installed: pip install 'chatcore[loadtest]'"
    with FaultProxy(("127.0.0.1", redis_server.port)) as proxy:
        one = cluster(redis_server.url, "127.0.0.1")
        two = cluster(proxy.url, "127.0.0.2")
        # Silent watchers in room-0, one on each server, that the servers
        # read the room before the users come; they also time the recovery.
        here, there = connect(one.address, "watcher1"), connect(two.address, "watcher2")
        linked(here, "watcher1", [there])
        for watcher in (here, there):
            watcher.send("/join room-0")
            watcher.expect(lambda line: line.startswith("* you are now in room-0 "))
        hosts = [f"tcp://{host}:{port}" for host, port in (one.address, two.address)]
        report = tmp_path / "report"
        command = [
            sys.executable, "-m", "locust", "-f", str(LOADTEST), "--headless",
            "-u", str(USERS), "-r", str(USERS), "-t", f"{int(MESSAGES / RATE + 60)}s",
            "--message-rate", str(RATE), "--messages", str(MESSAGES),
            "--chat-hosts", ",".join(hosts), "--json-file", str(report),
        ]  # fmt: skip
        output = subprocess.PIPE
        with subprocess.Popen(command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, text=True) as locust:
            try:
                # Once the load test's lines flow through both servers: two seconds, then the partition.
                there.expect(lambda line: "~lt" in line, timeout=TIMEOUT)
                time.sleep(2.0)  # the chat before the fault: the load, not a wait for a condition
                proxy.partition()
                there.expect(LINK_DOWN, timeout=TIMEOUT)
                time.sleep(DURATION)  # the partition's planned length is the fault
                proxy.heal()
                healed = time.monotonic()
                # Recovery: a line said on server one after the heal reaches
                # server two, behind everything held (order is kept).
                here.send("after the heal")
                there.expect("[room-0] <watcher1> after the heal", timeout=TIMEOUT)
                recovery = time.monotonic() - healed
                log, _ = locust.communicate(timeout=MESSAGES / RATE + 90)
            finally:
                if locust.poll() is None:
                    locust.kill()
                    locust.communicate()
    rows = json.loads(report.with_suffix(".json").read_text())
    entries = {(row["method"], row["name"]): row for row in rows}
    losses = {name: row["num_requests"] for (kind, name), row in entries.items() if kind == "loss"}
    sent = {host: entries[("send", f"message {host}")]["num_requests"] for host in hosts}
    per_server = USERS // 2
    delivered, expected, slowest = 0, 0, 0.0
    for origin in hosts:
        for receiver in hosts:
            row = entries.get(("deliver", f"message {origin} > {receiver}"), {})
            delivered += row.get("num_requests", 0)
            expected += sent[origin] * (per_server - 1 if origin == receiver else per_server)
            if origin != receiver:
                slowest = max(slowest, row.get("max_response_time", 0.0) / 1000)

    def counted(kind: str) -> int:
        return sum(count for name, count in losses.items() if name.startswith(kind))

    row = record(
        Tally(
            fault=f"Locust, {USERS} users over 2 servers, server-Redis partition {DURATION:g} s "
            f"(deliveries; slowest across servers {slowest:.1f} s)",
            sent=expected,
            delivered=delivered,
            lost=counted("lost"),
            duplicated=counted("duplicated"),
            reordered=counted("reordered"),
            gaps=0,
            recovery=round(recovery, 2),
        )
    )
    assert locust.returncode == 0, log
    assert not losses, (losses, log)
    assert sum(sent.values()) == USERS * MESSAGES, log
    assert delivered == expected, log
    row.holds_the_promise()
    assert row.recovery < RECOVERY_BOUND
