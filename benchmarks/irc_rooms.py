"""IRC room benchmark: chatcore's IRC port beside the IRC servers people run.

    python benchmarks/irc_rooms.py                               # chatcore, ngircd, inspircd (and ergo if found)
    python benchmarks/irc_rooms.py --ergo ~/src/ergo/ergo        # Ergo, built by you (not in Debian 12)
    python benchmarks/irc_rooms.py --servers chatcore --rooms 10,100 --duration 5

Each server is started on a free loopback port with a throwaway
configuration and its flood limits lifted (ngIRCd: ``MaxPenaltyTime = 0``;
InspIRCd: ``fakelag="no"`` and a huge ``commandrate``; Ergo: ``fakelag``
off, no per-address limits), then, for every room size N:

- **connects**: N clients register at once (``NICK``/``USER`` sent on every
  socket, then wait for every 001); the time until the last 001;
- **room**: every client joins ``#bench``; ``--senders`` of them send
  ``PRIVMSG #bench`` lines as fast as a window allows (a sender has at most
  ``--window`` lines that the monitor, a client that does not send, has not
  yet received), for ``--duration`` seconds. Deliveries are the PRIVMSG
  lines all clients receive, per second; latency is sampled from one line per
  ``recv()`` chunk against the microsecond time the sender put in it.

One process, non-blocking sockets on one selector: the driver itself costs
CPU, so the figures compare servers under the same driver; they are not
each server's ceiling. Ergo (the Go IRC server) is not in Debian 12 (its
``ergo`` package is a chemistry program): give a binary you built with
``--ergo PATH``, or have the IRC server's ``ergo`` first on ``PATH``.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHANNEL = b"#bench"
SETUP_TIMEOUT = 120.0
LINE_TEXT = 64  # bytes of text per PRIVMSG, timestamp included


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


# -- the servers ------------------------------------------------------------------------


def chatcore(port: int, directory: Path) -> list[str]:
    return [
        sys.executable, "-m", "chatcore", "serve", "--plugins", "irc", "--log-level", "WARNING",
        "--listen", f"irc://127.0.0.1:{port}", "--max-clients", "5000", "--max-queue", "100000",
    ]  # fmt: skip


def ngircd(port: int, directory: Path) -> list[str]:
    config = directory / "ngircd.conf"
    config.write_text(
        f"""[Global]
Name = bench.ngircd
Info = benchmark
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = benchmark
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 31
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
[Options]
DNS = no
Ident = no
PAM = no
"""
    )
    return ["ngircd", "--nodaemon", "--config", str(config)]


def inspircd(port: int, directory: Path) -> list[str]:
    config = directory / "inspircd.conf"
    config.write_text(
        f"""<server name="bench.inspircd" description="benchmark" network="bench">
<admin name="bench" nick="bench" email="bench@example.org">
<bind address="127.0.0.1" port="{port}" type="clients">
<connect name="bench" allow="127.0.0.1" timeout="60" pingfreq="600" hardsendq="104857600"
    softsendq="104857600" recvq="104857600" threshold="1000000" commandrate="100000000" fakelag="no" localmax="100000"
    globalmax="100000" maxconnwarn="no" resolvehostnames="no" useident="no" limit="100000">
<performance softlimit="100000" somaxconn="4096" netbuffersize="65536" clonesonconnect="no">
<limits maxnick="32" maxchan="64">
<pid file="{directory}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="sparse" target="{directory}/inspircd.log">
"""
    )
    return ["inspircd", "--nofork", "--runasroot", f"--config={config}"]


#: Binaries main() found for servers not on PATH by their own name:
#: ``"ergo"``, from ``--ergo`` or the IRC server's ``ergo`` on PATH.
BINARIES: dict[str, str] = {}


def ergo_version(path: str) -> str | None:
    """``ergo-2.11.1`` if ``path`` is Ergo the IRC server, else None (Debian's
    ``ergo`` is a chemistry program of the same name)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    text = out.stdout.strip()
    return text if text.startswith("ergo-") else None


def ergo(port: int, directory: Path) -> list[str]:
    # Ergo's defaults (default.yaml) with what a benchmark must lift: fakelag
    # (2 lines a second after a burst of 5), the per-address limits (16 at
    # once, 32 per 10 minutes), hostname lookups; no accounts, history or
    # cloaks, so that it does what the others do.
    config = directory / "ircd.yaml"
    config.write_text(
        f"""network:
    name: bench
server:
    name: bench.ergo
    listeners:
        "127.0.0.1:{port}": {{}}
    casemapping: ascii
    enforce-utf8: true
    lookup-hostnames: false
    check-ident: false
    max-sendq: 96M
    ip-cloaking:
        enabled: false
    ip-limits:
        count: false
        throttle: false
accounts:
    registration:
        enabled: false
    authentication-enabled: false
    multiclient:
        enabled: false
    nick-reservation:
        enabled: false
channels:
    default-modes: +nt
    registration:
        enabled: false
logging:
    - method: stderr
      type: "* -userinput -useroutput"
      level: warn
datastore:
    path: {directory}/ircd.db
    autoupgrade: true
limits:
    nicklen: 32
    identlen: 20
    channellen: 64
    awaylen: 390
    kicklen: 390
    topiclen: 390
    monitor-entries: 100
    whowas-entries: 100
    chan-list-modes: 100
    registration-messages: 1024
    multiline:
        max-bytes: 0
        max-lines: 0
fakelag:
    enabled: false
history:
    enabled: false
"""
    )
    return [BINARIES["ergo"], "run", "--conf", str(config)]


SERVERS: dict[str, Callable[[int, Path], list[str]]] = {
    "chatcore": chatcore,
    "ngircd": ngircd,
    "inspircd": inspircd,
    "ergo": ergo,
}


def version(name: str) -> str:
    if name == "chatcore":
        import chatcore

        return f"chatcore {chatcore.__version__} (Python {sys.version.split()[0]})"
    if name == "ergo":
        return f"{ergo_version(BINARIES['ergo'])} ({BINARIES['ergo']})"
    command = {"ngircd": ["ngircd", "--version"], "inspircd": ["inspircd", "--version"]}[name]
    out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0]


@contextlib.contextmanager
def running(name: str, pin: list[str] | None = None) -> Iterator[tuple[int, int]]:
    """The server ``name`` on a free port: yields (port, process id).
    ``pin``: a ``taskset`` prefix for it (``--driver-cpu``)."""
    with tempfile.TemporaryDirectory(prefix=f"irc-bench-{name}-") as tmp:
        port = free_port()
        command = SERVERS[name](port, Path(tmp))
        if shutil.which(command[0]) is None and name not in ("chatcore", "ergo"):
            raise RuntimeError(f"{command[0]} is not installed (apt-get install {name})")
        log = Path(tmp) / "server.log"
        with log.open("wb") as output:
            proc = subprocess.Popen([*(pin or []), *command], stdout=output, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            wait_for_port(port, proc)
            yield port, proc.pid
        except Exception:
            print(f"{name} said:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the clients ----------------------------------------------------------------------------


class Client:
    __slots__ = ("buffer", "index", "lines", "nick", "sock", "welcomed")

    def __init__(self, port: int, index: int) -> None:
        self.index = index
        self.nick = f"b{index:05d}"
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SETUP_TIMEOUT)
        self.sock.setblocking(False)
        self.buffer = b""
        self.lines = 0
        self.welcomed = False

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)

    def read_lines(self) -> list[bytes]:
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return []
        if not data:
            raise ConnectionError(f"{self.nick}: the server closed the connection ({self.buffer[-200:]!r})")
        *lines, self.buffer = (self.buffer + data).split(b"\r\n")
        if lines and lines[-1].startswith(b"ERROR"):
            raise ConnectionError(f"{self.nick}: {lines[-1].decode(errors='replace')}")
        for line in lines:
            if line.startswith(b"PING "):
                self.send(b"PONG " + line[5:] + b"\r\n")
        return lines


def until(clients: list[Client], done: Callable[[Client, bytes], bool], what: str) -> None:
    """Read every client's lines until ``done`` said True once for each."""
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    waiting = len(clients)
    finished: set[int] = set()
    deadline = time.monotonic() + SETUP_TIMEOUT
    try:
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {waiting} clients still waiting after {SETUP_TIMEOUT}s")
            for key, _ in selector.select(1.0):
                client = key.data
                for line in client.read_lines():
                    if client.index not in finished and done(client, line):
                        finished.add(client.index)
                        waiting -= 1
    finally:
        selector.close()


def connect(port: int, count: int) -> tuple[list[Client], float]:
    started = time.perf_counter()
    clients = [Client(port, index) for index in range(count)]
    for client in clients:
        client.send(f"NICK {client.nick}\r\nUSER {client.nick} 0 * :bench\r\n".encode())
    until(clients, lambda client, line: line.split(b" ", 2)[1:2] == [b"001"], "registration")
    return clients, time.perf_counter() - started


def join(clients: list[Client]) -> None:
    """Everyone joins; done when each has its names (366) and has seen the
    last client in the names or JOIN, so that no setup traffic is left."""
    nick = clients[-1].nick.encode()
    last = b":" + nick + b"!"
    names: set[int] = set()
    seen: set[int] = set()

    def done(client: Client, line: bytes) -> bool:
        if b" 366 " in line and CHANNEL in line:
            names.add(client.index)
        elif (line.startswith(last) and b" JOIN " in line) or (
            # The first to join is a channel operator on the IRC servers: "@b00009".
            b" 353 " in line and nick in [name.lstrip(b"@+") for name in line.partition(b" :")[2].split()]
        ):
            seen.add(client.index)
        return client.index in names and client.index in seen

    for client in clients:
        client.send(b"JOIN " + CHANNEL + b"\r\n")
    until(clients, done, "JOIN")


def room(clients: list[Client], senders: int, duration: float, window: int) -> tuple[float, list[float]]:
    """Deliveries per second and latency samples (ms)."""
    sending = clients[: min(senders, len(clients) - 1)]
    monitor = clients[-1]
    sent = [0] * len(sending)
    acked = [0] * len(sending)
    samples: list[float] = []
    deliveries = 0
    marker = b" PRIVMSG " + CHANNEL + b" :"
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    start = time.perf_counter()
    end = start + duration
    try:
        while (now := time.perf_counter()) < end:
            for number, client in enumerate(sending):
                room_left = window - (sent[number] - acked[number])
                if room_left > window // 2:
                    stamp = int(time.time() * 1e6)
                    batch = []
                    for _ in range(room_left):
                        sent[number] += 1
                        text = f"{number} {sent[number]} {stamp} "
                        batch.append(b"PRIVMSG " + CHANNEL + b" :" + text.ljust(LINE_TEXT, "x").encode() + b"\r\n")
                    client.send(b"".join(batch))
            for key, _ in selector.select(0.01):
                client = key.data
                try:
                    data = client.sock.recv(262144)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError(f"{client.nick}: closed by the server")
                data = client.buffer + data
                cut = data.rfind(b"\r\n")
                client.buffer, data = data[cut + 2 :], data[:cut]
                deliveries += data.count(marker)
                last = data[data.rfind(marker) + len(marker) :] if marker in data else b""
                if last:
                    samples.append((time.time() * 1e6 - int(last.split(b" ")[2])) / 1000)
                if client is monitor:
                    for line in data.split(b"\r\n"):
                        at = line.find(marker)
                        if at >= 0:
                            number_text, seq_text = line[at + len(marker) :].split(b" ")[:2]
                            number = int(number_text)
                            acked[number] = max(acked[number], int(seq_text))
    finally:
        selector.close()
    return deliveries / (now - start), samples


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers",
        help="comma-separated, of chatcore, ngircd, inspircd, ergo (default: the first three, and ergo if found)",
    )
    parser.add_argument(
        "--ergo", metavar="PATH", help="the Ergo IRC server binary (default: ergo on PATH, if that is the IRC server)"
    )
    parser.add_argument("--rooms", default="10,100,500", help="room sizes (default: %(default)s)")
    parser.add_argument("--senders", type=int, default=10, help="clients that send (default: %(default)s)")
    parser.add_argument("--window", type=int, default=20, help="lines in flight per sender (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per room (default: %(default)s)")
    parser.add_argument("--connects", type=int, default=500, help="clients registering at once (default: %(default)s)")
    parser.add_argument(
        "--driver",
        choices=("python", "c"),
        default="python",
        help=(
            "python: this script's own clients; c: benchmarks/c_driver.c in its IRC mode (built with cc), which "
            "checks every line's order and counts the servers' CPU (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--steady",
        type=int,
        default=50_000,
        metavar="PER_S",
        help="with --driver c: also deliveries offered at this steady rate to a room of 100, for the tail "
        "(0: not; default: %(default)s)",
    )
    parser.add_argument(
        "--driver-cpu",
        metavar="CPU",
        help="with --driver c: pin the C driver to this CPU with taskset, and start the servers on the other CPUs",
    )
    options = parser.parse_args(argv)
    if options.driver_cpu and options.driver != "c":
        parser.error("--driver-cpu needs --driver c")
    found = options.ergo or shutil.which("ergo")
    if found is not None and ergo_version(found) is None:
        if options.ergo:
            parser.error(
                f"--ergo {options.ergo}: not the Ergo IRC server ('{options.ergo} --version' says no ergo-X.Y.Z)"
            )
        found = None  # Debian's chemistry program
    names = (
        options.servers.split(",") if options.servers else ["chatcore", "ngircd", "inspircd"] + ["ergo"] * bool(found)
    )
    unknown = sorted(set(names) - set(SERVERS))
    if unknown:
        parser.error(f"unknown servers {unknown}; known: {sorted(SERVERS)}")
    if "ergo" in names and found is None:
        parser.error("ergo: no Ergo binary; build it (github.com/ergochat/ergo) and give --ergo PATH")
    if found is not None:
        BINARIES["ergo"] = found
    if options.driver == "c":
        return run_c(names, options)
    print("| server | test | deliveries/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for name in names:
        print(f"<!-- {version(name)} -->", file=sys.stderr)
        for size in [int(text) for text in options.rooms.split(",")]:
            with running(name) as (port, _pid):
                clients, _ = connect(port, size)
                try:
                    join(clients)
                    rate, samples = room(clients, options.senders, options.duration, options.window)
                finally:
                    for client in clients:
                        client.sock.close()
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            print(f"| {name} | room of {size} | {rate:,.0f} | {p50:.1f} | {p99:.1f} |", flush=True)
        with running(name) as (port, _pid):
            clients, seconds = connect(port, options.connects)
            for client in clients:
                client.sock.close()
        print(f"| {name} | {options.connects} connects at once | {seconds:.2f} s until the last 001 | | |", flush=True)
    return 0


def run_c(names: list[str], options: argparse.Namespace) -> int:
    """The same rooms and connects through the C driver's IRC mode: every
    client registers, joins #bench, and the senders' PRIVMSG lines are
    checked for order, loss and corruption at every receiver."""
    from broadcast import away_from_driver, build_c_driver

    pin = away_from_driver(options)
    driver_pin = ["taskset", "-c", options.driver_cpu] if options.driver_cpu else []
    print("| server | test | deliveries/s | p50 ms | p99 ms | p99.9 ms | lost, dup, reord, corrupt | server cores |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    failed = False
    with tempfile.TemporaryDirectory(prefix="irc-bench-driver-") as tmp:
        driver = build_c_driver(tmp)
        for name in names:
            print(f"<!-- {version(name)} -->", file=sys.stderr)
            for size in [int(text) for text in options.rooms.split(",")]:
                with running(name, pin) as (port, pid):
                    flow = ["--clients", str(size), "--senders", str(min(options.senders, size))]
                    flow += ["--window", str(options.window), "--duration", str(options.duration)]
                    result = c_driver([*driver_pin, driver], port, pid, flow)
                failed = not flow_row(name, f"room of {size}", result) or failed
            if options.steady:
                # The tail: deliveries offered at a steady rate to a
                # room of 100 (10 senders; the driver paces lines a second).
                with running(name, pin) as (port, pid):
                    flow = ["--clients", "100", "--senders", "10", "--rate", f"{options.steady / 99:.3f}"]
                    result = c_driver([*driver_pin, driver], port, pid, [*flow, "--duration", str(options.duration)])
                failed = not flow_row(name, f"steady {options.steady:,}/s to 100", result) or failed
            with running(name, pin) as (port, pid):
                result = c_driver(
                    [*driver_pin, driver], port, pid, ["--mode", "connect", "--clients", str(options.connects)]
                )
            seconds = result.get("all_welcomed_s")
            failed = failed or seconds is None
            shown = f"{seconds:.3f} s until the last 001" if seconds is not None else f"not all welcomed: {result}"
            print(f"| {name} | {options.connects} connects at once | {shown} | | | | | |", flush=True)
    return 1 if failed else 0


def flow_row(name: str, test: str, result: dict[str, Any]) -> bool:
    """Print a flow's row of the table; False if the driver failed."""
    if "error" in result:
        print(f"| {name} | {test} | {result['error']} | | | | | |", flush=True)
        return False
    faults = ", ".join(str(result[key]) for key in ("lost", "duplicated", "reordered", "corrupted"))
    print(
        f"| {name} | {test} | {result['deliveries_per_s']:,.0f} | {result['p50_ms']:.2f} | "
        f"{result['p99_ms']:.2f} | {result['p999_ms']:.2f} | {faults} | {result['server_cores']:.2f} |",
        flush=True,
    )
    return True


def c_driver(driver: list[str], port: int, pid: int, args: list[str]) -> dict[str, Any]:
    command = [*driver, "--protocol", "irc", "--port", str(port), "--server-pid", str(pid), "--connect-rate", "0"]
    command += ["--setup-timeout", str(SETUP_TIMEOUT), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=2 * SETUP_TIMEOUT + 60, check=False)
    lines = done.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": done.stderr.strip()[-200:]}
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
