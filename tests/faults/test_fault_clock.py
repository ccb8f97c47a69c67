"""A server's wall clock jumped an hour forward, then back, under chat.

Server two runs with tests/faults/clockshift.c preloaded (built here with
cc): its CLOCK_REALTIME, and only its, moves by what the test writes in a
file, while its monotonic clock, its sleeps and its timeouts go on as a
real jump (an NTP step, ``date -s``) leaves them. alice (server one) and
bob (server two) talk meanwhile.

The promise: nothing lost, no duplicates, order kept, both ways; the link
and the presence live on (nobody is taken for gone, the link is never
down); and a mute given on server two lasts what it was given for, however
its clock jumps: not lifted by the hour forward, not made an hour longer
by the hour back. What a jump does to message times is in
docs/reliability.md: the times server two gives its users' lines jump
with its clock.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fault_support import LINK_DOWN, LONG, TIMEOUT, linked, read_until, tally

from chatcore.engine.auth import hash_password
from chatcore.testing import LineClient, ServerProcess, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.faults]

PACE = 0.02
STEP = 10.0 if LONG else 1.0  # seconds of chat at each clock setting
HOUR = 3600
PASSWORD = "clock-test-password"
SOURCE = Path(__file__).with_name("clockshift.c")


class Clock:
    """A wall-clock shift for one process: ``wrapper`` runs it with
    clockshift preloaded; :meth:`set` moves its clock to ``offset`` seconds
    from the real time."""

    def __init__(self, library: Path, control: Path) -> None:
        self.control = control
        self.offset = 0
        control.write_text("0\n")
        self.wrapper = ("env", f"LD_PRELOAD={library}", f"CLOCKSHIFT_FILE={control}")

    def set(self, offset: int, server: ServerProcess) -> None:
        """Move the clock and wait until ``server`` shows it (in its log's times)."""
        self.offset = offset
        self.control.write_text(f"{offset}\n")
        wait_for(lambda: self._shows(server), timeout=TIMEOUT, message=f"the server's clock at {offset:+d} s")

    def _shows(self, server: ServerProcess) -> bool:
        # A connection makes a log line once it is in; its time is the server's clock.
        probe = LineClient(server.address, timeout=TIMEOUT)
        probe.sync()  # in: a client that closes before its first line never enters (ARRIVAL_WAIT)
        probe.close()
        logged = server.expect_log(re.compile(r"^\S+ \S+ INFO +chatcore.server: client (joined|left)"))
        shown = time.mktime(time.strptime(logged[:19], "%Y-%m-%d %H:%M:%S"))  # the log's times are local
        return abs(shown - (time.time() + self.offset)) < 60


@pytest.fixture
def clock(tmp_path: Path) -> Clock:
    compiler = shutil.which("cc")
    if compiler is None:
        if os.environ.get("CI"):
            pytest.fail("no C compiler (cc) to build tests/faults/clockshift.c; .ci/run installs gcc")
        pytest.skip("no C compiler (cc) to build tests/faults/clockshift.c")
    library = tmp_path / "clockshift.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(SOURCE), "-ldl"], check=True)
    return Clock(library, tmp_path / "clockshift")


@pytest.fixture
def opers_file(tmp_path: Path) -> Path:
    path = tmp_path / "opers"
    path.write_text(f"root {hash_password(PASSWORD)}\n", encoding="utf-8")
    return path


def talk(pairs, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Each ``(client, prefix, sent)`` says a numbered line every PACE seconds."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for client, prefix, sent in pairs:
            text = f"{prefix} {len(sent)}"
            client.send(text)
            sent.append(text)
        time.sleep(PACE)


def muted(client: LineClient) -> bool:
    """Whether what ``client`` says is held back as muted."""
    client.send("am I muted?")
    return any(line.startswith("! you are muted") for line in client.sync())


def test_a_servers_clock_jumped_loses_nothing_and_keeps_mutes(
    redis_server, cluster, connect, record, *, clock, opers_file
) -> None:
    args = ("--opers-file", str(opers_file), "--redis-node-timeout", "2")
    one = cluster(redis_server.url, "127.0.0.1", *args)
    two = cluster(redis_server.url, "127.0.0.2", *args, wrapper=clock.wrapper)
    alice = connect(one.address, "alice")
    bob = connect(two.address, "bob")
    oper = connect(two.address, "oper")
    # From an address of her own: a mute holds the muted user's address too.
    mallory = connect(two.address, "mallory", source="127.0.0.5")
    linked(alice, "alice", [bob])
    linked(bob, "bob", [alice])
    marks = len(alice.received), len(bob.received)
    oper.send(f"/oper root {PASSWORD}")
    oper.expect(lambda line: line.startswith("* you are now an operator"))
    oper.send("/mute mallory 10m")
    oper.expect(lambda line: line.startswith("* muted mallory"))
    assert muted(mallory)

    by_alice: list[str] = []
    by_bob: list[str] = []
    chat = [(alice, "alice says", by_alice), (bob, "bob says", by_bob)]
    talk(chat, STEP)
    clock.set(HOUR, two)  # an hour forward
    talk(chat, STEP)
    # The 10-minute mute given an hour "ago" still holds.
    assert muted(mallory), "an hour's jump forward lifted a 10-minute mute"
    oper.send("/mute mallory 2s")
    oper.expect(lambda line: line.startswith("* muted mallory"))
    assert muted(mallory)
    clock.set(0, two)  # and back
    talk(chat, STEP)
    clock.set(-HOUR, two)  # and back again
    talk(chat, STEP)
    # The 2-second mute given before the hour back ends after 2 s, not 1 h 2 s.
    wait_for(lambda: not muted(mallory), timeout=TIMEOUT, message="the 2 s mute over")
    clock.set(0, two)
    talk(chat, STEP)
    alice.send("end")
    bob.send("end")
    read_until(bob, "<alice> end")
    read_until(alice, "<bob> end")

    fault = f"server two's wall clock +1 h, back, -1 h, back ({STEP:g} s of chat each)"
    rows = (
        record(tally(fault + ": alice's lines at bob", by_alice, bob.received[marks[1] :], "alice", 0.0)),
        record(tally(fault + ": bob's lines at alice", by_bob, alice.received[marks[0] :], "bob", 0.0)),
    )
    for row in rows:
        row.holds_the_promise()
        assert row.lost == 0
    # Liveness: the link never went down, and nobody was taken for gone.
    for client in (alice, bob):
        assert LINK_DOWN not in client.received
        assert not [line for line in client.received if "(server lost)" in line]
