"""The C load driver (benchmarks/c_driver.c) counts right: every figure in
docs/performance.md comes from it, so a driver that miscounts would make
them all wrong (issue 27).

It is built here with the system C compiler, warnings as errors, and run
for about a second against a real chatcore process in each protocol it
speaks, then against a small server in this file that drops, duplicates,
reorders and corrupts chosen lines on purpose: the driver must count
exactly those.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcore.testing import ServerProcess

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parent.parent / "benchmarks" / "c_driver.c"


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The driver, compiled as broadcast.py compiles it, but with -Werror."""
    compiler = os.environ.get("CC", "cc")
    assert shutil.which(compiler), f"the C driver's tests need a C compiler ({compiler}): apt-get install gcc"
    program = str(tmp_path_factory.mktemp("c_driver") / "c_driver")
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-o", program, str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return program


def run(driver: str, *args: str, timeout: float = 60) -> dict[str, object]:
    done = subprocess.run([driver, *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def chatcore() -> Iterator[ServerProcess]:
    """A server per test: the clients of one test are still leaving (and
    their nicks taken) when the next test's register."""
    listen = ["--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0", "--listen", "ws://127.0.0.1:0"]
    with ServerProcess(*listen, "--plugins", "welcome,irc,web", "--log-level", "WARNING") as server:
        yield server


@pytest.mark.parametrize("protocol", ["native", "irc", "ws"])
def test_every_line_arrives_once_in_order_in_each_protocol(driver: str, chatcore: ServerProcess, protocol: str) -> None:
    scheme = {"native": "tcp", "irc": "irc", "ws": "ws"}[protocol]
    port = chatcore.addresses[scheme][1]
    assert chatcore.proc is not None
    result = run(
        driver,
        *("--port", str(port), "--protocol", protocol, "--clients", "10", "--senders", "3", "--window", "20"),
        *("--duration", "1", "--server-pid", str(chatcore.proc.pid)),
    )
    sent = result["sent"]
    assert isinstance(sent, int)
    assert sent > 100  # a second of a window of 20: thousands on a quiet machine
    assert result["deliveries"] == sent * 9
    for count in ("lost", "corrupted", "duplicated", "reordered", "gaps", "window_stalls", "closed_early"):
        assert result[count] == 0, (count, result)
    assert result["per_sender"] == {}
    p50, p99, p999, most = (result[key] for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))
    assert isinstance(p50, float)
    assert isinstance(most, float)
    assert 0 <= p50 <= p99 <= p999 <= most  # type: ignore[operator]
    assert isinstance(result["server_cores"], float)
    kernel_share = result["server_kernel_share"]  # of the server's CPU, what the kernel spent
    assert isinstance(kernel_share, float)
    assert 0 <= kernel_share <= 1
    assert isinstance(result["driver_us_per_delivery"], float)


def test_rooms_and_labels(driver: str, chatcore: ServerProcess) -> None:
    """12 clients each in 2 of 6 rooms (4 members a room): every line
    arrives labelled ``[r0003] <s00001> ...`` and counts, each sender paced."""
    result = run(
        driver,
        *("--port", str(chatcore.address[1]), "--clients", "12", "--senders", "12", "--rate", "600"),
        *("--rooms", "6", "--rooms-per-client", "2", "--duration", "1"),
    )
    sent = result["sent"]
    assert isinstance(sent, int)
    assert sent > 300  # 600 lines a second offered
    assert result["deliveries"] == sent * 3
    assert result["lost"] == result["corrupted"] == result["duplicated"] == result["reordered"] == 0


def test_connect_storm_and_idle_clients(driver: str, chatcore: ServerProcess) -> None:
    assert chatcore.proc is not None
    common = ("--port", str(chatcore.address[1]), "--server-pid", str(chatcore.proc.pid))
    storm = run(driver, *common, "--mode", "connect", "--clients", "50")
    assert (storm["welcomed"], storm["refused_or_closed"], storm["still_waiting"]) == (50, 0, 0)
    assert isinstance(storm["all_welcomed_s"], float)
    idle = run(driver, *common, "--mode", "idle", "--clients", "50", "--settle", "0.1")
    assert (idle["clients"], idle["settled"], idle["errors"]) == (50, 50, 0)
    rss = idle["rss_after_kib"]
    assert isinstance(rss, int)
    assert rss > 0
    assert isinstance(idle["startup_p50_ms"], float)


class FaultyServer:
    """Enough of the native protocol for the driver (a welcome, ``/nick``,
    ``/ping``, chat relayed as ``<nick> text`` to everyone else), with
    faults on purpose in what the third client (index 2, a receiver, not
    a monitor) gets from the first sender (``s00000``): line 5 dropped,
    line 7 twice, lines 10 and 11 swapped, line 13 corrupted."""

    VICTIM = 2

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()  # one relay at a time: each receiver's order is the senders'
        self.held: bytes | None = None
        self.threads: list[threading.Thread] = []
        accept = threading.Thread(target=self.accept, daemon=True)
        accept.start()
        self.threads.append(accept)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.clients.append(sock)
            sock.sendall(b"* welcome\n")
            thread = threading.Thread(target=self.serve, args=(sock,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def serve(self, sock: socket.socket) -> None:
        nick = b"guest"
        pending = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line.startswith(b"/nick "):
                    nick = line[6:]
                    sock.sendall(b"* you are now known as " + nick + b"\n")
                elif line == b"/ping":
                    sock.sendall(b"* pong\n")
                else:
                    self.relay(sock, b"<" + nick + b"> " + line + b"\n")

    def relay(self, sender: socket.socket, line: bytes) -> None:
        seq = int(line[-28:-18])
        with self.lock:
            for index, sock in enumerate(self.clients):
                if sock is sender:
                    continue
                out = line
                if index == self.VICTIM and line.startswith(b"<s00000> "):
                    if seq == 5:
                        continue
                    if seq == 7:
                        out = line * 2
                    if seq == 10:
                        self.held = line
                        continue
                    if seq == 11:
                        assert self.held is not None
                        out = line + self.held
                    if seq == 13:
                        out = line.replace(b"xxx", b"xyx", 1)
                try:
                    sock.sendall(out)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in self.clients:
                sock.close()


def test_the_driver_counts_exactly_the_faults_it_is_given(driver: str) -> None:
    server = FaultyServer()
    try:
        result = run(
            driver, "--port", str(server.port), "--clients", "4", "--senders", "2", "--window", "5", "--duration", "1"
        )
    finally:
        server.close()
    sent = result["sent"]
    assert isinstance(sent, int)
    assert sent > 26  # both senders went past line 13
    # Lost: line 5, and line 13, which arrived corrupted only.
    assert (result["lost"], result["duplicated"], result["reordered"], result["corrupted"]) == (2, 1, 1, 1)
    per_sender = result["per_sender"]
    assert isinstance(per_sender, dict)
    assert list(per_sender) == ["0"]  # the faults are all the first sender's
    assert {key: per_sender["0"][key] for key in ("lost", "duplicated", "reordered", "corrupted")} == {
        "lost": 2,
        "duplicated": 1,
        "reordered": 1,
        "corrupted": 1,
    }
    # The holes seen on the way: 5 (lost), 10 (late, then filled), 13 (corrupted).
    assert result["gaps"] == 3
    assert result["deliveries"] == sent * 3 - 2 + 1  # the duplicate is a delivery, the two lost are not
