"""A soak: one server (or a cluster of two and a real redis-server) at a steady load for a long time.

    python benchmarks/soak.py                          # 30 minutes, one server, a sample a minute
    python benchmarks/soak.py --minutes 5 --interval 10
    python benchmarks/soak.py --cluster                # two servers sharing the rooms through Redis
    python benchmarks/soak.py --out soak-run --plot-prefix docs/soak

It starts ``chatcore serve --plugins welcome,metrics`` (``,redis`` with
``--cluster``) on free ports, connects ``--clients`` native clients spread
over ``--rooms`` rooms (and over the servers), and has each of them say a
line ``--rate`` times a second, evenly paced, for ``--minutes``. Beside that
steady population a churn loop connects a new client every ``--churn``
seconds, has it join a room, say a line and quit: the reconnections that
would show a leak of threads or descriptors.

Every ``--interval`` seconds it samples each server process (resident
memory, threads and open file descriptors from ``/proc``, CPU), its
``/metrics`` (connected clients, room memberships, deliveries, disconnects
by cause, plugin failures), Redis's memory with ``--cluster``, the
machine's load average (on a shared machine the latency tail follows it), and the
delivery latency measured by the clients themselves (the send time is in
every line), and counts lost lines (a jump in a sender's sequence). Each
sample is a line on standard output and a row of ``OUT/soak.csv``; at the
end ``OUT/soak.png`` (and ``OUT/soak-latency.png``) plot them (matplotlib:
``pip install 'chatcore[soak]'``; without it the CSV is still written).

Everything is bounded: the load loops stop at the deadline by themselves,
every socket operation has a timeout, and the servers are stopped on the way
out. The exit status is 1 if a server died, a line was lost, or a server's
log holds a traceback.

The server's per-client output queues are not among its metrics; the
``queued`` column is what the soak can see of them: the lines sent and not
yet delivered to every member (the deliveries in flight) at the sample.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHAT = re.compile(rb"<([^>]+)> soak (\d+) (\d+) ")
LISTENER = re.compile(r"tcp://[^\s,]+:(\d+)")
METRICS_AT = re.compile(r"metrics at (http://\S+)/metrics")
SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN|[+-]Inf)$", re.MULTILINE)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

COLUMNS = [
    "minute",
    "server",
    "rss_mib",
    "threads",
    "fds",
    "cpu_percent",
    "connected",
    "memberships",
    "deliveries_per_s",
    "disconnects",
    "slow_consumers",
    "plugin_failures",
    "sent",
    "delivered",
    "lost",
    "queued",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "churned",
    "redis_used_mib",
    "load_average",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=100, help="steady clients (default: %(default)s)")
    parser.add_argument("--rooms", type=int, default=10, help="rooms they are spread over (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=0.2, help="lines per second per client (default: %(default)s)")
    parser.add_argument(
        "--churn", type=float, default=2.0, help="seconds between churn clients; 0: none (default: %(default)s)"
    )
    parser.add_argument("--cluster", action="store_true", help="two servers and a real redis-server")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for soak.csv, plots and logs (default: a new temp folder, kept)"
    )
    parser.add_argument(
        "--plot-prefix", type=Path, default=None, help="also write the plots as PREFIX.png, PREFIX-latency.png"
    )
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only")
    parser.add_argument(
        "--from-csv",
        type=Path,
        metavar="CSV",
        help="run nothing: draw the plots of an earlier run's soak.csv (give its load options for the title)",
    )
    options = parser.parse_args(argv)
    if options.from_csv is not None:
        with options.from_csv.open(newline="") as handle:
            rows: list[dict[str, float | str]] = [
                {key: value if key == "server" else float(value) for key, value in row.items() if value != ""}
                for row in csv.DictReader(handle)
            ]
        options.cluster = len({row["server"] for row in rows}) > 1
        plot(rows, options.plot_prefix or options.from_csv.with_suffix(""), options)
        return 0
    if not 0 < options.minutes <= 24 * 60 or not 0.5 <= options.interval <= 3600:
        parser.error("need 0 < --minutes <= 1440 and 0.5 <= --interval <= 3600")
    if not 2 <= options.clients <= 2000 or not 1 <= options.rooms <= options.clients // 2:
        parser.error("need 2 <= --clients <= 2000 and 1 <= --rooms <= clients / 2")
    if not 0 < options.rate <= 100 or options.churn < 0:
        parser.error("need 0 < --rate <= 100 and --churn >= 0")
    if options.cluster and shutil.which("redis-server") is None:
        parser.error("--cluster needs redis-server (apt-get install redis-server)")

    with ExitStack() as stack:
        if options.out is None:  # kept: the CSV and the plots are what a soak is for
            options.out = Path(tempfile.mkdtemp(prefix="chatcore-soak-"))
        options.out.mkdir(parents=True, exist_ok=True)
        return run(options, stack)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    log: Path
    port: int = 0
    metrics: str = ""
    cpu_seconds: float = 0.0
    deliveries: float = 0.0


def start_server(name: str, out: Path, redis_url: str | None) -> Server:
    plugins = "welcome,metrics" + (",redis" if redis_url else "")
    command = [sys.executable, "-m", "chatcore", "serve", "--plugins", plugins, "--log-level", "INFO"]
    command += ["--listen", "tcp://127.0.0.1:0", "--metrics-port", "0"]
    if redis_url:
        command += ["--redis-url", redis_url, "--redis-cluster", "soak"]
    log = out / f"{name}.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True)
    server = Server(name, proc, log)
    assert proc.stdout is not None
    # The start-up line names the port; a server that fails prints nothing and exits.
    first = proc.stdout.readline()
    found = LISTENER.search(first)
    if found is None:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {first!r}; see {log}")
    server.port = int(found.group(1))
    deadline = time.monotonic() + 10
    while not server.metrics and time.monotonic() < deadline:
        match = METRICS_AT.search(log.read_text())
        if match:
            server.metrics = match.group(1) + "/metrics"
        else:
            time.sleep(0.05)
    if not server.metrics:
        raise RuntimeError(f"{name}: no metrics endpoint in {log}")
    return server


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def redis_server(out: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binary = shutil.which("redis-server")
    assert binary is not None
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(out)]
    command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(command, stdin=quiet, stdout=quiet, stderr=quiet, text=True)
    try:
        deadline = time.monotonic() + 10
        while redis_info(port) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


def redis_info(port: int) -> dict[str, str] | None:
    """``INFO memory`` over a plain socket (RESP), or None if Redis does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nmemory\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
            header, _, data = data.partition(b"\r\n")
            size = int(header[1:])
            while len(data) < size:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except (OSError, ValueError):
        return None
    info = {}
    for line in data[:size].decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key] = value
    return info


@dataclass
class Tally:
    """What the clients saw, shared by the load threads and the sampler (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    churned: int = 0
    churn_failures: int = 0
    expected: int = 0
    latencies: list[float] = field(default_factory=list)


class Load:
    """The steady clients: one epoll loop sends every client's lines, evenly
    paced, and reads every delivery; bounded by ``deadline``."""

    def __init__(self, servers: list[Server], options: argparse.Namespace, tally: Tally) -> None:
        self.options = options
        self.tally = tally
        self.clients: list[socket.socket] = []
        self.names: list[str] = []
        self.room_of: list[int] = []
        self.buffers: dict[int, bytes] = {}
        self.last_seq: dict[tuple[int, str], int] = {}
        self.room_size = [0] * options.rooms
        for index in range(options.clients):
            server = servers[index % len(servers)]
            room = (index // len(servers)) % options.rooms
            self.clients.append(self._enter(server.port, f"soak{index}", room))
            self.names.append(f"soak{index}")
            self.room_of.append(room)
            self.room_size[room] += 1

    @staticmethod
    def _enter(port: int, nick: str, room: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"/nick {nick}\n/join room{room}\n/part lobby\n".encode())
        seen = b""
        deadline = time.monotonic() + 10
        while b"* you left lobby" not in seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{nick} could not enter room{room}: {seen[-300:]!r}")
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"{nick}: connection closed while entering: {seen[-300:]!r}")
            seen += chunk
        sock.setblocking(False)
        return sock

    def run(self, deadline: float, stop: threading.Event) -> None:
        selector = selectors.DefaultSelector()
        for index, sock in enumerate(self.clients):
            selector.register(sock, selectors.EVENT_READ, index)
            self.buffers[index] = b""
        count = len(self.clients)
        period = 1.0 / self.options.rate
        start = time.monotonic()
        # Evenly staggered: client i is due at start + i * period / count, then every period.
        due = [start + index * period / count for index in range(count)]
        sequence = [0] * count
        filler = b"x" * 48
        next_index = 0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                while due[next_index] <= now:
                    sequence[next_index] += 1
                    line = b"soak %d %d %s\n" % (sequence[next_index], time.time_ns() // 1000, filler)
                    try:
                        self.clients[next_index].send(line)
                    except OSError as exc:
                        raise RuntimeError(f"{self.names[next_index]} cannot send: {exc}") from exc
                    with self.tally.lock:
                        self.tally.sent += 1
                        self.tally.expected += self.room_size[self.room_of[next_index]] - 1
                    due[next_index] += period
                    next_index = min(range(count), key=due.__getitem__)
                wait = max(0.0, min(due[next_index], deadline) - time.monotonic())
                for key, _ in selector.select(wait):
                    self._read(key.data)
        finally:
            selector.close()

    def _read(self, index: int) -> None:
        try:
            data = self.clients[index].recv(262144)
        except BlockingIOError:
            return
        if not data:
            raise RuntimeError(f"{self.names[index]}: the server closed the connection")
        arrived = time.time_ns() // 1000
        buffer = self.buffers[index] + data
        complete, _, self.buffers[index] = buffer.rpartition(b"\n")
        latencies = []
        lost = 0
        for sender, seq_text, stamp in CHAT.findall(complete):
            seq = int(seq_text)
            key = (index, sender.decode())
            previous = self.last_seq.get(key)
            if previous is not None and seq > previous + 1:
                lost += seq - previous - 1
            self.last_seq[key] = max(seq, previous or 0)
            latencies.append((arrived - int(stamp)) / 1000)
        if latencies:
            with self.tally.lock:
                self.tally.delivered += len(latencies)
                self.tally.lost += lost
                self.tally.latencies.extend(latencies)

    def close(self) -> None:
        for sock in self.clients:
            try:
                sock.setblocking(True)
                sock.settimeout(2)
                sock.sendall(b"/quit\n")
            except OSError:
                pass
            sock.close()


def churn(
    servers: list[Server], options: argparse.Namespace, tally: Tally, deadline: float, stop: threading.Event
) -> None:
    """A new client every ``--churn`` seconds: connect, join a room, say a line, quit."""
    number = 0
    while not stop.wait(options.churn) and time.monotonic() < deadline:
        server = servers[number % len(servers)]
        room = number % options.rooms
        number += 1
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(f"/join room{room}\nchurn line {number}\n/quit\n".encode())
                seen = b""
                while b"* bye" not in seen and len(seen) < 1_000_000:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    seen += chunk
            with tally.lock:
                tally.churned += 1
        except OSError:
            with tally.lock:
                tally.churn_failures += 1


def proc_figures(pid: int) -> tuple[float, int, int, float]:
    """Resident MiB, threads, open descriptors and CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    threads = int(fields[17])
    rss = int(fields[21]) * PAGE / 2**20
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, threads, fds, cpu


def scrape(url: str) -> dict[str, float]:
    """The /metrics samples summed over their labels (and ``disconnects:REASON`` per cause)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    figures: dict[str, float] = {}
    for name, labels, value in SAMPLE.findall(text):
        figures[name] = figures.get(name, 0.0) + float(value)
        if name == "chatcore_disconnects_total" and labels:
            reason = labels.split('"')[1]
            figures[f"disconnects:{reason}"] = float(value)
    return figures


def load_average() -> float:
    """The machine's one-minute load average: on a shared machine, what the latency tail follows."""
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(options: argparse.Namespace, stack: ExitStack) -> int:
    out: Path = options.out
    redis_port = None
    redis_url = None
    if options.cluster:
        redis_url = stack.enter_context(redis_server(out))
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    servers: list[Server] = []
    for number in range(2 if options.cluster else 1):
        server = start_server(f"server{number + 1}", out, redis_url)
        stack.callback(stop_process, server.proc)
        servers.append(server)
    tally = Tally()
    load = Load(servers, options, tally)
    stack.callback(load.close)
    duration = options.minutes * 60
    started = time.monotonic()
    deadline = started + duration
    stop = threading.Event()
    failure: list[BaseException] = []

    def guarded(target, *args):  # type: ignore[no-untyped-def]
        try:
            target(*args)
        except BaseException as exc:  # reported by the sampler, which stops everything
            failure.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=guarded, args=(load.run, deadline, stop), name="soak-load", daemon=True),
    ]
    if options.churn:
        threads.append(
            threading.Thread(
                target=guarded, args=(churn, servers, options, tally, deadline, stop), name="soak-churn", daemon=True
            )
        )
    for server in servers:
        server.cpu_seconds = proc_figures(server.proc.pid)[3]
        server.deliveries = scrape(server.metrics).get("chatcore_deliveries_total", 0.0)
    print(
        f"soak: {len(servers)} server(s){' and redis-server' if options.cluster else ''}, {options.clients} clients "
        f"in {options.rooms} rooms, {options.rate:g} lines/s each ({options.clients * options.rate:g} lines/s), "
        f"a churn client every {options.churn:g} s, for {options.minutes:g} min; writing {out}",
        flush=True,
    )
    for thread in threads:
        thread.start()

    rows: list[dict[str, float | str]] = []
    csv_path = out / "soak.csv"
    died = False
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        last = started
        while True:
            finished = stop.wait(max(0.0, min(last + options.interval, deadline) - time.monotonic()))
            now = time.monotonic()
            finished = finished or now >= deadline
            with tally.lock:
                latencies, tally.latencies = tally.latencies, []
                totals = (tally.sent, tally.delivered, tally.lost, tally.expected, tally.churned)
            sent, delivered, lost, expected, churned = totals
            redis_mib = float("nan")
            if redis_port is not None:
                info = redis_info(redis_port)
                redis_mib = int(info["used_memory"]) / 2**20 if info else float("nan")
            for server in servers:
                if server.proc.poll() is not None:
                    print(f"soak: {server.name} exited with status {server.proc.returncode}", flush=True)
                    died = True
                    finished = True
                    continue
                rss, threads_now, fds, cpu = proc_figures(server.proc.pid)
                metrics = scrape(server.metrics)
                deliveries = metrics.get("chatcore_deliveries_total", 0.0)
                row: dict[str, float | str] = {
                    "minute": round((now - started) / 60, 3),
                    "server": server.name,
                    "rss_mib": round(rss, 2),
                    "threads": threads_now,
                    "fds": fds,
                    "cpu_percent": round(100 * (cpu - server.cpu_seconds) / max(now - last, 1e-9), 1),
                    "connected": metrics.get("chatcore_connected_clients", 0),
                    "memberships": metrics.get("chatcore_room_memberships", 0),
                    "deliveries_per_s": round((deliveries - server.deliveries) / max(now - last, 1e-9), 1),
                    "disconnects": metrics.get("chatcore_disconnects_total", 0),
                    "slow_consumers": metrics.get("disconnects:slow_consumer", 0),
                    "plugin_failures": metrics.get("chatcore_plugin_failures_total", 0),
                    "sent": sent,
                    "delivered": delivered,
                    "lost": lost,
                    "queued": max(0, expected - delivered - lost),
                    "latency_p50_ms": round(percentile(latencies, 0.5), 3),
                    "latency_p99_ms": round(percentile(latencies, 0.99), 3),
                    "latency_max_ms": round(max(latencies, default=float("nan")), 3),
                    "churned": churned,
                    "redis_used_mib": round(redis_mib, 2),
                    "load_average": load_average(),
                }
                server.cpu_seconds, server.deliveries = cpu, deliveries
                writer.writerow(row)
                rows.append(row)
                print(
                    f"soak: {row['minute']:7.2f} min {server.name}: rss {rss:.1f} MiB, {threads_now} threads, "
                    f"{fds} fds, cpu {row['cpu_percent']}%, {row['connected']:.0f} connected, "
                    f"{row['deliveries_per_s']}/s delivered, latency p50 {row['latency_p50_ms']} ms "
                    f"p99 {row['latency_p99_ms']} ms; sent {sent}, lost {lost}, churned {churned}; "
                    f"load {row['load_average']}",
                    flush=True,
                )
            handle.flush()
            last = now
            if finished:
                break
    stop.set()
    for thread in threads:
        thread.join(15)
    tracebacks = sum(server.log.read_text().count("Traceback") for server in servers)
    print(
        f"soak: done after {(time.monotonic() - started) / 60:.2f} min: sent {tally.sent} lines, "
        f"{tally.delivered} deliveries, lost {tally.lost}, {tally.churned} churn clients "
        f"({tally.churn_failures} failed), {tracebacks} tracebacks in the server logs; {csv_path}",
        flush=True,
    )
    if not options.no_plot:
        plot(rows, out / "soak", options)
        if options.plot_prefix is not None:
            plot(rows, options.plot_prefix, options)
    if failure:
        print(f"soak: the load failed: {failure[0]!r}", file=sys.stderr)
    bad = died or failure or tally.lost or tracebacks or tally.churn_failures
    return 1 if bad else 0


def plot(rows: list[dict[str, float | str]], prefix: Path, options: argparse.Namespace) -> None:
    try:
        import matplotlib
    except ImportError:
        print("soak: no matplotlib, no plots (pip install 'chatcore[soak]')", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted({str(row["server"]) for row in rows})
    title = (
        f"{'cluster of 2 + Redis' if options.cluster else '1 server'}, {options.clients} clients, "
        f"{options.clients * options.rate:g} lines/s, churn every {options.churn:g} s"
    )
    panels = [
        ("rss_mib", "resident memory (MiB)"),
        ("threads", "threads"),
        ("fds", "file descriptors"),
        ("cpu_percent", "CPU (% of a core)"),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(8, 5), sharex=True)
    for axis, (column, label) in zip(axes.flat, panels, strict=True):
        top = 1.0
        for name in names:
            mine = [row for row in rows if row["server"] == name]
            values = [float(row[column]) for row in mine]
            axis.plot([row["minute"] for row in mine], values, marker=".", label=name)
            top = max(top, *values)
        if column == "rss_mib" and options.cluster:  # Redis's own memory beside the servers'
            mine = [row for row in rows if row["server"] == names[0]]
            values = [float(row["redis_used_mib"]) for row in mine]
            axis.plot([row["minute"] for row in mine], values, marker=".", label="redis (used_memory)")
            top = max(top, *values)
        axis.set_ylabel(label)
        axis.set_ylim(0, top * 1.25)
        axis.grid(alpha=0.3)
    for axis in axes[-1]:
        axis.set_xlabel("minutes")
    if len(names) > 1:
        axes.flat[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(f"{prefix}.png", dpi=72)
    plt.close(figure)

    first = [row for row in rows if row["server"] == names[0]]
    figure, axis = plt.subplots(figsize=(8, 3))
    minutes = [row["minute"] for row in first]
    for column, label in (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99"), ("latency_max_ms", "max")):
        axis.plot(minutes, [row[column] for row in first], marker=".", label=label)
    axis.set_yscale("log")
    axis.set_xlabel("minutes")
    axis.set_ylabel("delivery latency (ms)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="upper left")
    if all("load_average" in row for row in first):
        load = axis.twinx()
        load.plot(minutes, [row["load_average"] for row in first], color="grey", linestyle=":", label="load average")
        load.set_ylabel("machine load average (2 cores)", color="grey")
        load.set_ylim(bottom=0)
        load.legend(loc="upper right")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(f"{prefix}-latency.png", dpi=72)
    plt.close(figure)
    print(f"soak: plots {prefix}.png, {prefix}-latency.png", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
