"""Broadcast benchmark driver: how many deliveries per second, how fast, how
much memory -- for chatcore and, side by side, the naive original design and
a C reference (``c-epoll``: a single-threaded epoll server with coalesced
writes, benchmarks/c_epoll_server.c, compiled with ``cc`` for the run; the
measure of what the machine can do, with ratios to it printed at the end).

    python benchmarks/broadcast.py                      # every scenario, both servers
    python benchmarks/broadcast.py --scenario room100 --duration 10
    python benchmarks/broadcast.py --scenario idle --idle-clients 10000
    python benchmarks/broadcast.py --servers chatcore --scenario rooms400 --duration 10   # many rooms per client
    python benchmarks/broadcast.py --servers chatcore --plugins welcome,logger
    python benchmarks/broadcast.py --servers chatcore --scenario room100 --web   # WebSocket receivers
    python benchmarks/broadcast.py --scenario room100 --servers chatcore,chatcore-tls   # TCP beside TLS
    python benchmarks/broadcast.py --plot results.png   # deliveries/s and p99 per scenario, as a picture
    python benchmarks/broadcast.py --servers chatcore --scenario room100 --scenario steady \
        --plugins welcome,logger,filters --compare-plugins welcome,logger,filters,metrics --rounds 3

**The driver** (``--driver``, issue 27): by default the load comes from
``benchmarks/c_driver.c``, a one-thread epoll program in C built with the
system compiler for the run (as the C reference server is; a clear error if
there is no ``cc``). It parses every delivery: latency of each in a
histogram (p50, p99, p99.9, max), losses, duplicates, reordering and
corrupted lines per sender, the server's CPU (``server_kernel_share``: the
kernel's part of it, which no change to the server's Python can take away)
and memory from ``/proc``, its own CPU per delivery beside the server's
(``driver_us_per_delivery``,
``server_us_per_delivery``: how far the driver is from being the limit). It
speaks the native protocol, IRC (``--protocol irc``: chatcore's ``irc://``
listener) and WebSocket (``--protocol ws`` or ``--web``), and runs issue 27's
scenarios (``rooms1000``, ``rooms5000x5``, ``idle20k``, ``storm2000``),
which the Python driver cannot. ``--driver python`` is the driver described
below, kept for machines without a compiler, for TLS (``chatcore-tls``) and
for the naive server (which the C driver does not speak: it has no ``/ping``);
``--driver c,python`` runs both back to back, each server once per driver,
with ratios to c-epoll per driver. In small rooms the Python driver
measures itself as much as the server (docs/performance.md, "The driver
measures the server").

    python benchmarks/broadcast.py --servers chatcore,c-epoll,asyncio --scenario room10 --driver c,python
    python benchmarks/broadcast.py --servers chatcore,c-epoll,asyncio --scenario rooms1000 --scenario idle20k

``asyncio`` (benchmarks/asyncio_server.py) is a small asyncio server of the
native protocol with rooms, one Python event loop, for comparison.

``--compare-plugins`` runs chatcore again with other plugins, right after
the first, for every scenario and round, and ends with the ratios: on a
shared machine only figures measured back to back compare.
``--baseline-python PATH`` does the same for two versions of chatcore: it
runs the chatcore that PATH (another checkout's virtualenv's python) has
installed first, as ``chatcore/A``, then this one, as ``chatcore/B``.

Locust records about 300k events/s per process, so it cannot measure a
server that delivers millions of lines per second. The Python driver tries:
raw non-blocking sockets on epoll, and nothing per line in Python on the
bulk path; in rooms of 10 it is still the limit (the C driver is not).

Every chat line a receiver gets is exactly ``--line-size`` bytes (64):
``<s00001> xxx... SENDER SEQ SENT_US`` (the sender pads its text to make up
for the ``<nick> `` prefix chatcore adds; to the naive server, which adds
nothing, it sends the whole line). So a receiver

- counts lines with ``bytes.count(b"\\n")``;
- checks that the newlines sit exactly every ``line-size`` bytes with one
  strided slice (``data[phase::size]``); a chunk that does not line up is
  split and each line of the wrong length is counted as corrupted (lines
  starting with ``* `` or ``! `` are notices, counted apart);
- samples latency from one line per ``recv()`` chunk, picked at a random
  place, against the microsecond timestamp the sender put in it.

Two "monitor" clients parse every line: they check each sender's sequence
(gaps, duplicates, reordering) and acknowledge progress for the window.

**Window W**: sender *i* may send message *k* only while ``k - acked_i <= W``,
where ``acked_i`` is the highest sequence number of sender *i* that its
monitor has received (monitor 0 for every sender but client 0, whose monitor
is client 1: chat is not echoed to its sender). So at most W of each
sender's messages are in flight, and a slow server is not buried in backlog.
If a sender's acknowledgements stop for ``WINDOW_TIMEOUT`` seconds (its
in-flight lines were lost, e.g. corrupted by the naive server) its window is
reopened and a stall is counted.

**Losses**: every client but the sender should receive every message, so
``lost = sent * (clients - 1) - received`` after a drain (bounded in time).

Bulk receivers run in ``--procs`` worker processes (default 1; 0 keeps them
in the main process with the senders and monitors); each worker connects
its own clients at ``--connect-rate`` per second. All loops are bounded in
count and time.

**TLS**: the server ``chatcore-tls`` is chatcore with one ``tls://`` listener
(a certificate made for the run with trustme); every client connects over
TLS and verifies it. Flows only: ``connect`` and ``idle`` measure TCP
accepts and memory, and are not run for it.

**rooms400** (issue 24, chatcore only): 2,000 clients, each in 5 of 400
rooms (25 members a room; :func:`rooms_of`), paced at 50,000 deliveries/s
offered; 400 of them talk, one in each room (the room each joined last, its
current one). Every client is in several rooms, so every chat line arrives
after its room's label (``[r042] <s00001> ...``): the senders pad by that
much less, and every line is still ``--line-size`` bytes. The senders are
the monitors, checking each sender's sequence per room. The C reference and
the naive server have one room and no ``/join``: they are not run.

**--web** (chatcore only, flow scenarios): the bulk receivers are WebSocket
clients of the ``web`` plugin's ``/ws`` instead of native clients, in the
same room (senders and monitors stay native). A WebSocket receiver counts
chat frames with ``bytes.count(b'"type":"chat"')`` and samples latency from
the timestamp at the end of a frame's ``text``; it cannot check framing the
way a native receiver checks line lengths, so it reports no corruption.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import select
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LINE_SIZE = 64
TAIL = 34  # " SSSSS QQQQQQQQQQ TTTTTTTTTTTTTTTT": sender, sequence, send time (us)
WINDOW_TIMEOUT = 1.0
RECV_SIZE = 262144
SAMPLE_LIMIT = 200_000
SETUP_TIMEOUT = 30.0
DRAIN_TIMEOUT = 5.0
SERVERS = ("chatcore", "chatcore-tls", "naive", "c-epoll", "asyncio")
DRIVERS = ("c", "python")
PROTOCOLS = ("native", "irc", "ws")


class ClientTLS:
    """The clients' TLS context while a ``chatcore-tls`` server runs, None
    otherwise (worker processes are forked, and inherit it)."""

    context: ssl.SSLContext | None = None


def speaks_native(server: str) -> bool:
    """A server of chatcore's native protocol (``/nick``, ``/ping``, the
    ``<nick> `` prefix): chatcore over TCP or TLS, and the C and asyncio
    references."""
    return server.startswith("chatcore") or server in ("c-epoll", "asyncio")


def now_us() -> int:
    return time.time_ns() // 1000


# -- scenarios ----------------------------------------------------------------


@dataclasses.dataclass
class Scenario:
    name: str
    title: str
    kind: str  # "flow", "rooms", "connect" or "idle"
    clients: int = 0
    senders: int = 0
    window: int = 0  # 0: paced by rate instead
    rate: float = 0.0  # offered deliveries/s (paced flows)
    rooms: int = 0  # "rooms": how many rooms there are
    rooms_per_client: int = 0  # "rooms": how many of them each client is in
    #: Issue 27's scenarios, too big for the Python driver: the C driver only.
    c_only: bool = False


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("room100", "100 clients, 10 senders, window 20", "flow", 100, 10, 20),
        Scenario("room10", "10 clients all sending, window 20", "flow", 10, 10, 20),
        Scenario("room500", "500 clients all sending, window 1", "flow", 500, 500, 1),
        # Issue 16's other two rows: every member sending into a mid-size
        # room, and a big room with few senders.
        Scenario("room100w1", "100 clients all sending, window 1", "flow", 100, 100, 1),
        Scenario("room500w20", "500 clients, 10 senders, window 20", "flow", 500, 10, 20),
        Scenario("steady", "steady 50,000 deliveries/s to 100 clients", "flow", 100, 10, 0, 50_000),
        # Issue 24: many rooms per connection. Every client is in 5 of 400
        # rooms (25 members each); one member of each room talks in it.
        Scenario(
            "rooms400",
            "2,000 clients each in 5 of 400 rooms, steady 50,000 deliveries/s",
            "rooms",
            2000,
            400,
            0,
            50_000,
            rooms=400,
            rooms_per_client=5,
        ),
        Scenario("connect", "500 clients connecting at once", "connect", 500),
        Scenario("idle", "idle clients held, resident memory per client", "idle"),
        # Issue 27: many rooms, many clients (the C driver only). Every
        # client talks, two lines a second: 20,000 lines/s offered to rooms
        # of 10, so 180,000 deliveries/s.
        Scenario(
            "rooms1000",
            "10,000 clients in 1,000 rooms of 10, 20,000 lines/s offered",
            "rooms",
            10_000,
            10_000,
            0,
            180_000,
            rooms=1000,
            rooms_per_client=1,
            c_only=True,
        ),
        # The same clients each in 5 rooms; the rooms stay rooms of 10 (5,000
        # of them), so a line has as many receivers as in rooms1000 and what
        # differs is the cost of being in several rooms (labels, five
        # memberships a connection).
        Scenario(
            "rooms5000x5",
            "10,000 clients each in 5 of 5,000 rooms of 10, 20,000 lines/s offered",
            "rooms",
            10_000,
            10_000,
            0,
            180_000,
            rooms=5000,
            rooms_per_client=5,
            c_only=True,
        ),
        # Idle clients in rooms of 10 (a server with one room, c-epoll, has
        # them all in it): 20,000 in one lobby would make the test one of
        # 200 million join notices, not of idle connections.
        Scenario(
            "idle20k",
            "20,000 idle clients in rooms of 10: memory and start-up per connection",
            "idle",
            20_000,
            rooms=2000,
            rooms_per_client=1,
            c_only=True,
        ),
        Scenario("storm2000", "2,000 clients connecting at once", "connect", 2000, c_only=True),
    )
}


# -- servers ------------------------------------------------------------------


class ServerProcess:
    """A chat server in a subprocess; its port is read from its first line."""

    def __init__(self, name: str, command: list[str], output: Path) -> None:
        self.name = name
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.web_port = 0  # the ws:// listener's, with --web
        self.irc_port = 0  # the irc:// listener's, with --protocol irc
        # A file, not a pipe: nobody reads a pipe during the run, and a
        # server that logs into a full pipe would stall.
        self.output = output

    def __enter__(self) -> ServerProcess:
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SETUP_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            match = re.search(
                r"listening on (?:\w+://)?\[?[0-9a-f.:]+\]?:(\d+)", self.output.read_text(errors="replace")
            )
            if match:
                self.port = int(match.group(1))
                web = re.search(r"ws://[0-9.]+:(\d+)", self.output.read_text(errors="replace"))
                self.web_port = int(web.group(1)) if web else 0
                irc = re.search(r"irc://[0-9.]+:(\d+)", self.output.read_text(errors="replace"))
                self.irc_port = int(irc.group(1)) if irc else 0
                return self
            time.sleep(0.02)
        text = self.output.read_text(errors="replace")
        self.__exit__()
        raise RuntimeError(f"{self.name} server did not start: {' '.join(self.command)}: {text.strip()[-500:]}")

    def rss_kib(self) -> int:
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *_exc: object) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def default_plugins() -> str:
    names = {ep.name for ep in importlib.metadata.entry_points(group="chatcore")}
    return ",".join(name for name in ("welcome", "logger", "filters") if name in names)


#: With the filters plugin loaded, the word filter checks every line against
#: these (none occurs in the benchmark's lines, so nothing is masked); flood
#: control stays off, as issue 7's conditions say.
BANNED_WORDS = "darn,heck,blast,drat,rats,bother,crikey,blimey,crumbs,egad,fiddlesticks,gosh,jeez,shucks,zounds"


def filter_args(plugins: str) -> list[str]:
    """What the benchmarks give the plugins among ``plugins``: the word list
    for filters, a free port for metrics (9464 may be taken)."""
    names = plugins.split(",")
    return [
        *(["--banned-words", BANNED_WORDS] if "filters" in names else []),
        *(["--metrics-port", "0"] if "metrics" in names else []),
    ]


def build_c(source: str, directory: str) -> str:
    """Compile benchmarks/SOURCE.c with the system C compiler (once per run,
    into ``directory``) and return the program's path."""
    program = os.path.join(directory, source)
    if not os.path.exists(program):
        compiler = os.environ.get("CC", "cc")
        command = [compiler, "-O2", "-Wall", "-Wextra", "-o", program, str(HERE / f"{source}.c")]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            raise RuntimeError(
                f"{source}.c needs a C compiler: {compiler} not found (apt-get install gcc, or set CC; "
                "--driver python runs without one)"
            ) from None
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"{source}.c did not compile: {exc.stderr.strip()[-300:]}") from None
    return program


def build_c_reference(directory: str) -> str:
    """The C reference server, benchmarks/c_epoll_server.c, built for the run."""
    return build_c("c_epoll_server", directory)


def build_c_driver(directory: str) -> str:
    """The C load driver, benchmarks/c_driver.c, built for the run."""
    return build_c("c_driver", directory)


def server_command(
    name: str,
    scenario: Scenario,
    options: argparse.Namespace,
    max_clients: int,
    log_dir: str,
    *,
    plugins: str,
    python: str = sys.executable,
) -> list[str]:
    if name == "c-epoll":
        return [build_c_reference(log_dir), "--port", "0"]
    if name == "asyncio":
        return [sys.executable, str(HERE / "asyncio_server.py"), "--port", "0"]
    if name == "naive":
        # 'idle' measures memory, not the original's listen(10), which would
        # make thousands of paced connects wait for SYN retransmits.
        backlog = ["--backlog", "1024"] if scenario.kind == "idle" else []
        return [sys.executable, str(HERE / "naive_server.py"), "--port", "0", *backlog, *options.naive_args]
    if name == "chatcore-tls":
        cert, key = options.tls_files
        listen = ["--listen", "tls://127.0.0.1:0", "--tls-cert", cert, "--tls-key", key]
    elif options.web:
        listen = ["--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0"]
    elif options.protocol == "irc":
        listen = ["--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0"]
    else:
        listen = ["--port", "0"]
    return [
        python,
        "-m",
        "chatcore",
        "serve",
        *listen,
        "--plugins",
        f"{plugins},web" if options.web else f"{plugins},irc" if options.protocol == "irc" else plugins,
        *(["--log-file", os.path.join(log_dir, "events.jsonl")] if "logger" in plugins.split(",") else []),
        *filter_args(plugins),
        "--max-clients",
        str(max_clients),
        *options.server_args,
    ]


# -- clients ------------------------------------------------------------------


def raise_file_limit(wanted: int = 0) -> int:
    """Raise the open-file limit to its hard limit, or to ``wanted`` when
    that is more and the process may (root may): the servers and the
    drivers started from here inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class Paced:
    """Sleeps so that calls happen at most ``rate`` times per second."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if self.interval:
            self.next += self.interval
            delay = self.next - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ClientTLS.context is not None:
        return ClientTLS.context.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def make_certificates(directory: str) -> tuple[ssl.SSLContext, tuple[str, str]]:
    """A throwaway CA and server certificate for 127.0.0.1: the clients'
    context (verifying against that CA) and the server's (cert, key) files."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context, (cert, key)


def receive(sock: socket.socket) -> bytes | None:
    """What a readable non-blocking socket has: None if nothing after all,
    b"" if it closed.

    A TLS socket's ``recv()`` returns one record (16 KiB at most) at a time,
    and bytes OpenSSL has already decrypted do not wake epoll again, so a
    TLS socket is read until it would block (bounded) and then emptied of
    what is pending."""
    try:
        data = sock.recv(RECV_SIZE)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    except OSError:
        return b""
    if not data or not isinstance(sock, ssl.SSLSocket):
        return data
    chunks = [data]
    try:
        for _ in range(64):
            more = sock.recv(RECV_SIZE)
            if not more:
                break
            chunks.append(more)
        while sock.pending():
            chunks.append(sock.recv(sock.pending()))
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass
    except OSError:
        pass  # the close shows on the next read
    return b"".join(chunks)


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    """Blocking setup read: everything up to and including ``marker``."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {marker!r} within {timeout}s")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {data[-200:]!r}")
        data += chunk
    return data


def sync(sock: socket.socket, server: str, *, web: bool = False) -> None:
    """Read everything the server sent so far (chatcore: up to ``* pong``)."""
    if web:
        sock.sendall(web_line("/ping"))
        read_until(sock, b'"text":"pong"')
    elif speaks_native(server):
        sock.sendall(b"/ping\n")
        read_until(sock, b"* pong\n")
    sock.setblocking(False)


class Samples(list[float]):
    """Latency samples: a uniform random sample of at most ``SAMPLE_LIMIT``
    of all values added (reservoir sampling), so that a long run is not
    represented by its first seconds only."""

    seen = 0

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self) < SAMPLE_LIMIT:
            self.append(value)
        else:
            slot = random.randrange(self.seen)
            if slot < SAMPLE_LIMIT:
                self[slot] = value


class Receiver:
    """Counts a stream of fixed-size lines in bulk; see the module docstring."""

    __slots__ = ("corrupted", "lines", "notices", "phase", "samples", "size", "sock", "tail")

    def __init__(self, sock: socket.socket, size: int, samples: Samples) -> None:
        self.sock = sock
        self.size = size
        self.phase = size - 1  # where the next newline must be, counted from the next chunk's start
        self.tail = b""  # the unfinished line, kept only after a misaligned chunk
        self.lines = 0
        self.corrupted = 0
        self.notices = 0
        self.samples = samples

    def feed(self, data: bytes) -> None:
        size = self.size
        length = len(data)
        newlines = data.count(b"\n")
        phase = self.phase
        if not self.tail and data[phase::size].count(b"\n") == newlines and newlines == len(data[phase::size]):
            self.lines += newlines
            self.phase = phase + newlines * size - length
        else:
            self._slow(data)
        if newlines:
            start = data.find(b"\n", random.randrange(length)) + 1
            end = data.find(b"\n", start)
            if start and end > 0 and end - start == size - 1:
                try:
                    self.samples.add((now_us() - int(data[end - 16 : end])) / 1000.0)
                except ValueError:
                    pass

    def _slow(self, data: bytes) -> None:
        """A chunk that is not whole lines of the expected size."""
        size = self.size
        if not self.tail and self.phase < size - 1:
            # Re-create the partial line the fast path did not keep.
            self.tail = b"?" * (size - 1 - self.phase)
        lines = (self.tail + data).split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            # A client in several rooms gets each room's lines after "[room] ".
            body = line[line.find(b"] ") + 2 :] if line[:1] == b"[" else line
            if body[:2] in (b"* ", b"! "):
                self.notices += 1
            elif len(line) == size - 1:
                self.lines += 1
            else:
                self.lines += 1
                self.corrupted += 1
        if len(self.tail) < size:
            # Realigned: go back to the fast path.
            self.phase = size - 1 - len(self.tail)
            self.tail = b""


WEB_CHAT = b'"type":"chat"'
WEB_TEXT_END = b'","room":'


class WebReceiver(Receiver):
    """A WebSocket receiver: counts chat frames (see the module docstring)."""

    __slots__ = ()

    def feed(self, data: bytes) -> None:
        # The marker may straddle two chunks: keep its length less one byte.
        chunk = self.tail + data
        self.lines += chunk.count(WEB_CHAT)
        self.tail = chunk[-(len(WEB_CHAT) - 1) :]
        end = chunk.find(WEB_TEXT_END, random.randrange(len(chunk)))
        if end >= 16:
            try:
                self.samples.add((now_us() - int(chunk[end - 16 : end])) / 1000.0)
            except ValueError:
                pass


def web_connect(port: int, timeout: float = 10.0) -> socket.socket:
    """A WebSocket client of ``/ws``, upgraded and welcomed."""
    sock = connect(port, timeout)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key)
    )
    reply = read_until(sock, b"\r\n\r\n", timeout)
    if not reply.startswith(b"HTTP/1.1 101 "):
        raise ConnectionError(f"WebSocket upgrade refused: {reply[:200]!r}")
    if b'"type":"welcome"' not in reply:
        read_until(sock, b'"type":"welcome"', timeout)
    return sock


def web_line(text: str) -> bytes:
    """A masked text frame (clients must mask) carrying a line, as the page sends it."""
    payload = json.dumps({"type": "line", "text": text}).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Monitor(Receiver):
    """A receiver that parses every line: per-sender order, and window acks."""

    __slots__ = ("acked", "buffer", "dirty", "duplicated", "gaps", "last", "reordered")

    def __init__(self, sock: socket.socket, size: int, samples: Samples, senders: int) -> None:
        super().__init__(sock, size, samples)
        self.buffer = b""
        self.acked = [0] * senders
        self.last = [0] * senders
        self.dirty: set[int] = set()
        self.gaps = 0
        self.duplicated = 0
        self.reordered = 0

    def check_order(self, previous: int, seq: int) -> None:
        """Count a sequence number against the last one seen of its stream
        (0: none yet): a gap, a duplicate or a line out of order."""
        if seq > previous + 1 and previous:
            self.gaps += seq - previous - 1
        elif seq == previous:
            self.duplicated += 1
        elif seq < previous:
            self.reordered += 1

    def feed(self, data: bytes) -> None:
        super().feed(data)
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        last = self.last
        acked = self.acked
        for line in lines:
            if len(line) != self.size - 1:
                continue
            try:
                sender = int(line[-33:-28])
                seq = int(line[-27:-17])
            except ValueError:
                continue
            if sender >= len(last):
                continue
            previous = last[sender]
            self.check_order(previous, seq)
            if seq > previous:
                last[sender] = seq
                if seq > acked[sender]:
                    acked[sender] = seq
                    self.dirty.add(sender)


class RoomMonitor(Monitor):
    """A monitor of a client in several rooms: each line comes after its
    room's label (``[r042] <s00001> ...``), and each sender's sequence is
    checked per room. Nothing is acknowledged: the rooms scenario is paced."""

    __slots__ = ("streams",)

    def __init__(self, sock: socket.socket, size: int, samples: Samples) -> None:
        super().__init__(sock, size, samples, 0)
        self.streams: dict[bytes, int] = {}  # label + sender -> last sequence seen

    def feed(self, data: bytes) -> None:
        Receiver.feed(self, data)
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        streams = self.streams
        for line in lines:
            if len(line) != self.size - 1 or line[:1] != b"[":
                continue
            key = line[: line.find(b"]")] + line[-33:-28]
            try:
                seq = int(line[-27:-17])
            except ValueError:
                continue
            previous = streams.get(key, 0)
            self.check_order(previous, seq)
            if seq > previous:
                streams[key] = seq


class Sender:
    __slots__ = ("extra", "index", "monitor", "out", "prefix", "progress_at", "sent", "sock", "stalls")

    def __init__(self, index: int, sock: socket.socket, prefix: bytes, monitor: Monitor, extra: int = 0) -> None:
        self.index = index
        self.sock = sock
        self.prefix = prefix  # what the client itself writes before the padding
        self.extra = extra  # bytes the server adds besides "<s00001> " (a room label)
        self.monitor = monitor
        self.out = b""
        self.sent = 0
        self.progress_at = time.monotonic()
        self.stalls = 0

    def make(self, count: int, size: int) -> bytes:
        """``count`` lines, each ``size`` bytes as the receivers will see them."""
        index = self.index
        pad = b"x" * (size - 9 - self.extra - TAIL - 1)  # "<s00001> " prefix (and label), tail, newline
        stamp = now_us()
        first = self.sent + 1
        self.sent += count
        return b"".join(
            b"%s%s %05d %010d %016d\n" % (self.prefix, pad, index, seq, stamp) for seq in range(first, first + count)
        )

    def push(self) -> None:
        if not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        self.out = self.out[sent:]


def connect_receivers(
    port: int, count: int, *, rate: float, size: int, samples: Samples, web_port: int = 0
) -> list[Receiver]:
    """Bulk receivers: native, or WebSocket clients of ``web_port``."""
    paced = Paced(rate)
    receivers: list[Receiver] = []
    for _ in range(count):
        paced.wait()
        if web_port:
            receivers.append(WebReceiver(web_connect(web_port), size, samples))
            continue
        sock = connect(port)
        read_until(sock, b"\n")
        receivers.append(Receiver(sock, size, samples))
    return receivers


def join_rooms(sock: socket.socket, rooms: list[bytes]) -> None:
    """Enter ``rooms`` (the last one becomes current) and leave lobby,
    without waiting for the answers (a sync later reads them)."""
    sock.sendall(b"".join(b"/join %s\n" % room for room in rooms) + b"/part lobby\n")


def connect_room_receivers(
    port: int, rooms: list[list[bytes]], *, rate: float, size: int, samples: Samples
) -> list[Receiver]:
    """Native receivers, each in its own rooms (``rooms[i]`` for the i-th)."""
    paced = Paced(rate)
    receivers: list[Receiver] = []
    for its_rooms in rooms:
        paced.wait()
        sock = connect(port)
        read_until(sock, b"\n")
        join_rooms(sock, its_rooms)
        receivers.append(Receiver(sock, size, samples))
    return receivers


def receive_loop(
    receivers: Sequence[Receiver], until: Any, poll_timeout: float | Callable[[], float] = 0.05
) -> Iterator[None]:
    """Receive on every socket; yields after each poll so the caller can act.
    Stops when ``until()`` is true. ``poll_timeout`` may be a function, asked
    before each poll (a paced sender sleeps until its next message is due)."""
    timeout = poll_timeout if callable(poll_timeout) else (lambda: poll_timeout)
    poller = select.epoll()
    by_fd = {}
    for receiver in receivers:
        poller.register(receiver.sock.fileno(), select.EPOLLIN)
        by_fd[receiver.sock.fileno()] = receiver
    try:
        while not until():
            for fd, _events in poller.poll(timeout(), 256):
                receiver = by_fd[fd]
                data = receive(receiver.sock)
                if data is None:
                    continue
                if not data:
                    poller.unregister(fd)
                    continue
                receiver.feed(data)
            yield
    finally:
        poller.close()


@dataclasses.dataclass
class WorkerTask:
    port: int
    server: str
    count: int
    rate: float
    size: int
    slot: int
    #: Seconds after which the worker gives up even if never told to stop.
    lifetime: float
    #: The ws:// port with --web (the receivers are WebSocket clients), else 0.
    web_port: int = 0
    #: The rooms scenario: the rooms each receiver joins (it leaves lobby).
    rooms: list[list[bytes]] = dataclasses.field(default_factory=list)


def worker(task: WorkerTask, ready: Any, stop: Any, counts: Any, pipe: Any) -> None:
    """A process of bulk receivers: connect, sync, count until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    samples = Samples()
    try:
        if task.rooms:
            receivers = connect_room_receivers(task.port, task.rooms, rate=task.rate, size=task.size, samples=samples)
        else:
            receivers = connect_receivers(
                task.port, task.count, rate=task.rate, size=task.size, samples=samples, web_port=task.web_port
            )
        for receiver in receivers:
            sync(receiver.sock, task.server, web=isinstance(receiver, WebReceiver))
    except (OSError, TimeoutError, ConnectionError) as exc:
        pipe.send({"error": f"worker could not connect: {exc}"})
        return
    ready.set()
    cpu_start = time.process_time()
    give_up = time.monotonic() + task.lifetime
    for _ in receive_loop(receivers, lambda: stop.is_set() or time.monotonic() > give_up, 0.01):
        counts[task.slot] = sum(r.lines for r in receivers)
    counts[task.slot] = sum(r.lines for r in receivers)
    pipe.send(
        {
            "lines": sum(r.lines for r in receivers),
            "corrupted": sum(r.corrupted for r in receivers),
            "notices": sum(r.notices for r in receivers),
            "samples": list(samples),
            "cpu": time.process_time() - cpu_start,
        }
    )
    for receiver in receivers:
        receiver.sock.close()


# -- measurements -------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_flow(server: ServerProcess, scenario: Scenario, options: argparse.Namespace) -> dict[str, Any]:
    """A room of ``clients`` with ``senders`` of them sending, for ``duration``."""
    size = options.line_size
    clients, senders_count = scenario.clients, scenario.senders
    # Main process: the senders (and the two monitors among them or besides).
    main_count = max(senders_count, 2)
    bulk = clients - main_count
    procs = min(options.procs, bulk)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    counts = ctx.Array("q", max(1, procs), lock=False)
    workers = []
    samples = Samples()
    share = [bulk // procs + (1 if i < bulk % procs else 0) for i in range(procs)] if procs else []
    for slot, count in enumerate(share):
        ready = ctx.Event()
        parent, child = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=worker,
            args=(
                WorkerTask(
                    server.port,
                    server.name,
                    count,
                    options.connect_rate,
                    size,
                    slot,
                    lifetime=2 * SETUP_TIMEOUT + options.duration + DRAIN_TIMEOUT + 30,
                    web_port=server.web_port,
                ),
                ready,
                stop,
                counts,
                child,
            ),
            daemon=True,
        )
        process.start()
        workers.append((process, ready, parent))
    try:
        return _run_flow_main(
            server,
            scenario,
            options,
            main_count=main_count,
            local_bulk=bulk - sum(share),
            workers=workers,
            stop=stop,
            counts=counts,
            samples=samples,
        )
    finally:
        stop.set()
        for process, _ready, _pipe in workers:
            process.join(5)
            if process.is_alive():
                process.kill()


def _run_flow_main(
    server: ServerProcess,
    scenario: Scenario,
    options: argparse.Namespace,
    *,
    main_count: int,
    local_bulk: int,
    workers: list[Any],
    stop: Any,
    counts: Any,
    samples: Samples,
) -> dict[str, Any]:
    size = options.line_size
    clients = scenario.clients
    paced = Paced(options.connect_rate)
    receivers: list[Receiver] = []
    socks = []
    for _ in range(main_count):
        paced.wait()
        sock = connect(server.port)
        read_until(sock, b"\n")
        socks.append(sock)
    monitors = [Monitor(socks[0], size, samples, main_count), Monitor(socks[1], size, samples, main_count)]
    senders = []
    for index in range(scenario.senders):
        nick = b"s%05d" % index
        if speaks_native(server.name):
            socks[index].sendall(b"/nick " + nick + b"\n")
            read_until(socks[index], b"* you are now known as")
            prefix = b""
        else:
            prefix = b"<" + nick + b"> "
        senders.append(Sender(index, socks[index], prefix, monitors[1 if index == 0 else 0]))
    receivers.extend(monitors)
    receivers.extend(Receiver(sock, size, samples) for sock in socks[2:])
    receivers.extend(
        connect_receivers(
            server.port, local_bulk, rate=options.connect_rate, size=size, samples=samples, web_port=server.web_port
        )
    )
    deadline = time.monotonic() + SETUP_TIMEOUT
    for process, ready, pipe in workers:
        while not ready.wait(0.1):
            if pipe.poll() or not process.is_alive() or time.monotonic() > deadline:
                message = pipe.recv() if pipe.poll() else {"error": "worker did not get ready"}
                raise RuntimeError(message.get("error", "worker failed"))
    for receiver in receivers:
        sync(receiver.sock, server.name, web=isinstance(receiver, WebReceiver))
    for sender in senders:
        sender.sock.setblocking(False)

    # Send for the duration; receive until drained.
    def local_lines() -> int:
        return sum(r.lines for r in receivers)

    def total_lines() -> int:
        return local_lines() + int(sum(counts))

    window = scenario.window
    per_sender_rate = scenario.rate / max(1, clients - 1) / max(1, len(senders)) if scenario.rate else 0.0
    started = time.monotonic()
    cpu_start = time.process_time()
    server_cpu_start = server.cpu_seconds()
    send_until = started + options.duration
    lines_at_start = total_lines()
    lines_at_stop: int | None = None
    stopped_at = send_until
    server_cpu = 0.0
    drain_deadline = send_until + DRAIN_TIMEOUT
    expected = 0
    batch = max(1, window)
    last_total = -1
    quiet_since = 0.0

    def until_next_send() -> float:
        # Paced: sleep until the next message is due rather than spin, so
        # the driver does not take CPU from the server it is measuring.
        if window or time.monotonic() >= send_until:
            return 0.0005
        due = min(started + (s.sent + 1 - s.index / len(senders)) / per_sender_rate for s in senders)
        return min(0.005, max(0.0, due - time.monotonic()))

    for _ in receive_loop(receivers, lambda: time.monotonic() > drain_deadline, until_next_send):
        now = time.monotonic()
        if now < send_until:
            if window:
                for sender in senders:
                    allowed = sender.monitor.acked[sender.index] + window - sender.sent
                    if allowed <= 0:
                        if now - sender.progress_at > WINDOW_TIMEOUT:
                            sender.monitor.acked[sender.index] = sender.sent
                            sender.stalls += 1
                            sender.progress_at = now
                        continue
                    sender.progress_at = now
                    if not sender.out:
                        sender.out = sender.make(min(allowed, batch), size)
                    sender.push()
            else:
                # Each sender is offset by a fraction of its interval, so the
                # offered load is evenly spaced rather than 10 messages at once.
                for sender in senders:
                    due = int((now - started) * per_sender_rate + sender.index / len(senders))
                    if due > sender.sent and not sender.out:
                        sender.out = sender.make(min(due - sender.sent, 100), size)
                    sender.push()
        else:
            if lines_at_stop is None:
                for sender in senders:  # finish what was started; bounded by the drain deadline
                    sender.push()
                if any(sender.out for sender in senders):
                    continue
                lines_at_stop = total_lines()
                stopped_at = now
                server_cpu = server.cpu_seconds() - server_cpu_start
                expected = sum(s.sent for s in senders) * (clients - 1)
            total = total_lines()
            if total >= expected:
                break
            if total != last_total:
                last_total, quiet_since = total, now
            elif now - quiet_since > 1.0:
                break  # nothing arrived for a second: the rest is lost
    driver_cpu = time.process_time() - cpu_start
    stop.set()
    results = [pipe.recv() for _process, _ready, pipe in workers if pipe.poll(5)]
    received = local_lines() + sum(r.get("lines", 0) for r in results)
    corrupted = sum(r.corrupted for r in receivers) + sum(r.get("corrupted", 0) for r in results)
    for result in results:
        samples.extend(result.get("samples", []))
    for receiver in receivers:
        receiver.sock.close()
    seconds = stopped_at - started
    sent = sum(s.sent for s in senders)
    if lines_at_stop is None:
        lines_at_stop = total_lines()
        server_cpu = server.cpu_seconds() - server_cpu_start
    return {
        "sent": sent,
        "deliveries": received,
        "deliveries_per_s": (lines_at_stop - lines_at_start) / seconds if seconds > 0 else 0.0,
        "p50_ms": percentile(samples, 0.5),
        "p99_ms": percentile(samples, 0.99),
        "lost": max(0, sent * (clients - 1) - received),
        "corrupted": corrupted,
        "gaps": sum(m.gaps for m in monitors),
        "duplicated": sum(m.duplicated for m in monitors),
        "reordered": sum(m.reordered for m in monitors),
        "window_stalls": sum(s.stalls for s in senders),
        "seconds": round(seconds, 2),
        # Cores busy while sending: is the server or the driver the limit?
        "server_cores": round(server_cpu / seconds, 2) if seconds > 0 else None,
        "driver_cores": round((driver_cpu + sum(r.get("cpu", 0.0) for r in results)) / (time.monotonic() - started), 2),
    }


def room_name(number: int) -> bytes:
    """Room names of one width (``r007``), so that every labelled line,
    ``[r007] <s00001> ...``, is the same size."""
    return b"r%03d" % number


def rooms_of(scenario: Scenario) -> list[list[bytes]]:
    """The rooms of each client: client i is in rooms i, i + 97, i + 2 * 97 ...
    (modulo the number of rooms). 97 is prime to 400, so each client's rooms
    are distinct, every room has clients x rooms-per-client / rooms members
    (25), and two clients share some of their rooms but not all (a stride
    that divides the rooms would make cliques of 25 sharing the same five)."""
    count, each = scenario.rooms, scenario.rooms_per_client
    return [[room_name((client + 97 * step) % count) for step in range(each)] for client in range(scenario.clients)]


def run_rooms(server: ServerProcess, scenario: Scenario, options: argparse.Namespace) -> dict[str, Any]:
    """``clients`` native clients, each in ``rooms_per_client`` of ``rooms``
    rooms; ``senders`` of them talk, each in its current room (the one it
    joined last: clients 0 .. 399 have 400 different ones, so every room has
    one talker), paced so that ``rate`` deliveries per second are offered.

    Every client is in several rooms, so every chat line it gets carries its
    room's label, ``[r042] ``, and the senders pad their lines by that much
    less: every line is still ``--line-size`` bytes, and the receivers count
    them as in the flows. The senders are the monitors (each checks the
    sequence of every sender in each of its rooms). Lost = what each sender
    sent times the other members of its room, less what arrived."""
    size = options.line_size
    assignment = rooms_of(scenario)
    senders_count = min(scenario.senders, scenario.clients)
    members: dict[bytes, int] = {}
    for its_rooms in assignment:
        for room in its_rooms:
            members[room] = members.get(room, 0) + 1
    bulk_rooms = assignment[senders_count:]
    procs = min(options.procs, len(bulk_rooms))
    bulk = len(bulk_rooms)
    share = [bulk // procs + (1 if i < bulk % procs else 0) for i in range(procs)] if procs else []
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    counts = ctx.Array("q", max(1, procs), lock=False)
    workers = []
    start = 0
    for slot, count in enumerate(share):
        ready = ctx.Event()
        parent, child = ctx.Pipe(duplex=False)
        task = WorkerTask(
            server.port,
            server.name,
            count,
            options.connect_rate,
            size,
            slot,
            lifetime=3 * SETUP_TIMEOUT + options.duration + DRAIN_TIMEOUT + 30,
            rooms=bulk_rooms[start : start + count],
        )
        start += count
        process = ctx.Process(target=worker, args=(task, ready, stop, counts, child), daemon=True)
        process.start()
        workers.append((process, ready, parent))
    samples = Samples()
    try:
        paced = Paced(options.connect_rate)
        label = len(b"[] ") + len(room_name(0))
        senders: list[Sender] = []
        monitors: list[RoomMonitor] = []
        for index in range(senders_count):
            paced.wait()
            sock = connect(server.port)
            read_until(sock, b"\n")
            sock.sendall(b"/nick s%05d\n" % index)
            read_until(sock, b"* you are now known as")
            join_rooms(sock, assignment[index])
            monitor = RoomMonitor(sock, size, samples)
            monitors.append(monitor)
            senders.append(Sender(index, sock, b"", monitor, extra=label))
        receivers: list[Receiver] = [
            *monitors,
            *connect_room_receivers(
                server.port,
                bulk_rooms[sum(share) :],
                rate=options.connect_rate,
                size=size,
                samples=samples,
            ),
        ]
        deadline = time.monotonic() + 2 * SETUP_TIMEOUT
        for process, ready, pipe in workers:
            while not ready.wait(0.1):
                if pipe.poll() or not process.is_alive() or time.monotonic() > deadline:
                    message = pipe.recv() if pipe.poll() else {"error": "worker did not get ready"}
                    raise RuntimeError(message.get("error", "worker failed"))
        # Twice: the first pass makes sure every client's joins are done, so
        # that the second leaves no join notice on its way.
        for _ in range(2):
            for receiver in receivers:
                receiver.sock.setblocking(True)
                sync(receiver.sock, server.name)
        # Each sender talks in the room it joined last.
        audience = [members[assignment[index][-1]] - 1 for index in range(senders_count)]
        per_sender_rate = scenario.rate / max(1, sum(audience))

        def total_lines() -> int:
            return sum(r.lines for r in receivers) + int(sum(counts))

        started = time.monotonic()
        cpu_start = time.process_time()
        server_cpu_start = server.cpu_seconds()
        send_until = started + options.duration
        lines_at_start = total_lines()
        lines_at_stop: int | None = None
        stopped_at = send_until
        server_cpu = 0.0
        expected = 0
        last_total, quiet_since = -1, 0.0

        def until_next_send() -> float:
            if time.monotonic() >= send_until:
                return 0.0005
            due = min(started + (s.sent + 1 - s.index / len(senders)) / per_sender_rate for s in senders)
            return min(0.005, max(0.0, due - time.monotonic()))

        for _ in receive_loop(receivers, lambda: time.monotonic() > send_until + DRAIN_TIMEOUT, until_next_send):
            now = time.monotonic()
            if now < send_until:
                for sender in senders:
                    due = int((now - started) * per_sender_rate + sender.index / len(senders))
                    if due > sender.sent and not sender.out:
                        sender.out = sender.make(min(due - sender.sent, 100), size)
                    sender.push()
                continue
            if lines_at_stop is None:
                for sender in senders:
                    sender.push()
                if any(sender.out for sender in senders):
                    continue
                lines_at_stop = total_lines()
                stopped_at = now
                server_cpu = server.cpu_seconds() - server_cpu_start
                expected = sum(s.sent * audience[s.index] for s in senders)
            total = total_lines()
            if total >= expected:
                break
            if total != last_total:
                last_total, quiet_since = total, now
            elif now - quiet_since > 1.0:
                break  # nothing arrived for a second: the rest is lost
        driver_cpu = time.process_time() - cpu_start
        stop.set()
        results = [pipe.recv() for _process, _ready, pipe in workers if pipe.poll(5)]
        received = sum(r.lines for r in receivers) + sum(r.get("lines", 0) for r in results)
        corrupted = sum(r.corrupted for r in receivers) + sum(r.get("corrupted", 0) for r in results)
        for result in results:
            samples.extend(result.get("samples", []))
        for receiver in receivers:
            receiver.sock.close()
        if lines_at_stop is None:
            lines_at_stop = total_lines()
            server_cpu = server.cpu_seconds() - server_cpu_start
        seconds = stopped_at - started
        sent = sum(s.sent for s in senders)
        return {
            "sent": sent,
            "deliveries": received,
            "deliveries_per_s": (lines_at_stop - lines_at_start) / seconds if seconds > 0 else 0.0,
            "p50_ms": percentile(samples, 0.5),
            "p99_ms": percentile(samples, 0.99),
            "lost": max(0, sum(s.sent * audience[s.index] for s in senders) - received),
            "corrupted": corrupted,
            "gaps": sum(m.gaps for m in monitors),
            "duplicated": sum(m.duplicated for m in monitors),
            "reordered": sum(m.reordered for m in monitors),
            "seconds": round(seconds, 2),
            "server_cores": round(server_cpu / seconds, 2) if seconds > 0 else None,
            "driver_cores": round(
                (driver_cpu + sum(r.get("cpu", 0.0) for r in results)) / (time.monotonic() - started), 2
            ),
        }
    finally:
        stop.set()
        for process, _ready, _pipe in workers:
            process.join(5)
            if process.is_alive():
                process.kill()


def run_connect(server: ServerProcess, scenario: Scenario, options: argparse.Namespace) -> dict[str, Any]:
    """``clients`` connects started at once; time until each is welcomed."""
    count = scenario.clients
    poller = select.epoll()
    socks: dict[int, socket.socket] = {}
    started_at: dict[int, float] = {}
    welcomed: list[float] = []
    refused = 0
    begin = time.monotonic()
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", server.port))
        socks[sock.fileno()] = sock
        started_at[sock.fileno()] = time.monotonic()
        poller.register(sock.fileno(), select.EPOLLIN)
    pending = set(socks)
    deadline = begin + options.connect_timeout
    try:
        while pending and time.monotonic() < deadline:
            for fd, _events in poller.poll(0.05):
                if fd not in pending:
                    continue
                try:
                    data = socks[fd].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                pending.discard(fd)
                poller.unregister(fd)
                if data.startswith(b"! ") or not data:
                    refused += 1
                else:
                    welcomed.append(time.monotonic() - started_at[fd])
        last = max(welcomed) if welcomed else None
        return {
            "clients": count,
            "welcomed": len(welcomed),
            "refused_or_closed": refused,
            "still_waiting": len(pending),
            "all_welcomed_s": round(time.monotonic() - begin, 3) if not pending and not refused else None,
            "p50_ms": percentile([w * 1000 for w in welcomed], 0.5),
            "p99_ms": percentile([w * 1000 for w in welcomed], 0.99),
            "last_welcome_s": round(last, 3) if last is not None else None,
        }
    finally:
        poller.close()
        for sock in socks.values():
            sock.close()


def run_idle(server: ServerProcess, scenario: Scenario, options: argparse.Namespace) -> dict[str, Any]:
    """Hold ``--idle-clients`` connections; server RSS per client."""
    count = options.idle_clients
    before = server.rss_kib()
    paced = Paced(options.connect_rate)
    receivers: list[Receiver] = []
    samples = Samples()
    errors = 0
    begin = time.monotonic()
    deadline = begin + count / options.connect_rate + 60
    connected = 0
    # Clients keep reading (join notices fill a busy lobby) while more connect.
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        paced.wait()
        try:
            sock = connect(server.port)
        except OSError:
            errors += 1
            continue
        sock.setblocking(False)
        receivers.append(Receiver(sock, options.line_size, samples))
        connected += 1
        if connected % 100 == 0:
            _drain(receivers)
    # Settle: every client has read what the server queued for it (chatcore
    # broadcasts each join to the lobby: N * (N - 1) / 2 notices in all).
    settle_deadline = time.monotonic() + options.idle_settle
    settled = 0
    for receiver in receivers:
        if time.monotonic() > settle_deadline:
            break
        try:
            receiver.sock.setblocking(True)
            sync(receiver.sock, server.name)
            settled += 1
        except (OSError, TimeoutError, ConnectionError):
            errors += 1
    _drain(receivers)
    time.sleep(0.5)  # let the server's threads park after the last ping
    after = server.rss_kib()
    for receiver in receivers:
        receiver.sock.close()
    return {
        "clients": connected,
        "settled": settled,
        "errors": errors,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_client": round((after - before) / connected, 1) if connected else None,
        "seconds": round(time.monotonic() - begin, 1),
    }


def audience(scenario: Scenario) -> int:
    """The other members of a sender's room: how many deliveries a line makes."""
    if scenario.kind == "rooms":
        return scenario.clients * scenario.rooms_per_client // scenario.rooms - 1
    return scenario.clients - 1


def away_from_driver(options: argparse.Namespace) -> list[str]:
    """``taskset`` for a server: the CPUs other than --driver-cpu's, so that
    a server never shares the driver's CPU (chatcore's --cpu-affinity auto
    keeps the one of them it starts on; without this it was the driver's
    one run in two, and the rounds of a run differed by a third)."""
    if not options.driver_cpu:
        return []
    others = sorted(os.sched_getaffinity(0) - {int(options.driver_cpu)})
    return ["taskset", "-c", ",".join(map(str, others))] if others else []


def c_driver_command(server: ServerProcess, scenario: Scenario, options: argparse.Namespace) -> list[str]:
    """The C driver's command line for ``scenario`` against ``server``."""
    assert server.process is not None
    port = {"native": server.port, "irc": server.irc_port, "ws": server.web_port}[options.protocol]
    command = [
        *(["taskset", "-c", options.driver_cpu] if options.driver_cpu else []),
        options.c_driver,
        *("--port", str(port), "--protocol", options.protocol, "--server-pid", str(server.process.pid)),
        *("--line-size", str(options.line_size), "--connect-rate", str(options.connect_rate)),
    ]
    clients = scenario.clients or options.idle_clients
    # Thousands of clients connect at --connect-rate; a busy server takes longer.
    setup = options.setup_timeout or SETUP_TIMEOUT + 10 * clients / options.connect_rate
    if scenario.kind in ("flow", "rooms"):
        command += ["--clients", str(clients), "--senders", str(scenario.senders), "--duration", str(options.duration)]
        if scenario.window:
            command += ["--window", str(scenario.window)]
        else:  # the scenario offers deliveries/s; the driver paces lines/s
            command += ["--rate", f"{scenario.rate / audience(scenario):.3f}"]
        if scenario.kind == "rooms":
            command += ["--rooms", str(scenario.rooms), "--rooms-per-client", str(scenario.rooms_per_client)]
    elif scenario.kind == "connect":
        command += ["--mode", "connect", "--clients", str(clients)]
        setup = options.connect_timeout
    else:
        command += ["--mode", "idle", "--clients", str(clients)]
        if scenario.rooms and server.name != "c-epoll":  # c_epoll_server.c has one room
            command += ["--rooms", str(scenario.rooms), "--rooms-per-client", str(scenario.rooms_per_client)]
    # Thousands of clients: a server behind by seconds still delivers (the
    # driver stops draining early when the server has stopped working).
    drain = 6 * DRAIN_TIMEOUT if scenario.c_only else DRAIN_TIMEOUT
    return [*command, "--setup-timeout", f"{setup:g}", "--drain-timeout", f"{drain:g}"]


def run_c_driver(server: ServerProcess, scenario: Scenario, options: argparse.Namespace) -> dict[str, Any]:
    """Run the C driver (benchmarks/c_driver.c) and return its JSON result;
    it reads the server's CPU time and memory from /proc itself."""
    command = c_driver_command(server, scenario, options)
    setup, drain = (float(command[command.index(option) + 1]) for option in ("--setup-timeout", "--drain-timeout"))
    limit = setup + options.duration + drain + 30
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the C driver did not finish within {limit:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"the C driver said nothing (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        raise RuntimeError(f"the C driver: {result['error']}")
    return result


def _drain(receivers: list[Receiver]) -> None:
    for receiver in receivers:
        try:
            while receiver.sock.recv(RECV_SIZE):
                pass
        except (BlockingIOError, OSError):
            pass


# -- main ---------------------------------------------------------------------


def format_row(server: str, result: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    return f"  {server:12s} " + "  ".join(f"{key}={show(value)}" for key, value in result.items())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Broadcast benchmark: chatcore, the naive original design and a C reference server, side by side.",
        epilog="Scenarios: "
        + "; ".join(f"{s.name}: {s.title}" for s in SCENARIOS.values())
        + ". Output per server: deliveries_per_s while sending, latency p50/p99 (sampled), lost "
        "(sent x (clients - 1) - received), corrupted lines, sequence gaps/duplicates/reorders seen by the "
        "monitors, window stalls, and the CPU cores the server and the driver used. Exit status 1 if a run failed.",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "all"],
        help="scenario to run; repeat for several (default: all)",
    )
    parser.add_argument(
        "--servers",
        default="chatcore,naive,c-epoll",
        metavar="NAMES",
        help=(
            "comma-separated: chatcore, chatcore-tls (chatcore, every client over TLS), naive (the original "
            "design), c-epoll (the C reference: benchmarks/c_epoll_server.c, built with cc) (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="seconds of sending per flow (default: %(default)s)",
    )
    parser.add_argument(
        "--line-size",
        type=int,
        default=LINE_SIZE,
        metavar="BYTES",
        help="bytes per delivered line, newline included (default: 64)",
    )
    parser.add_argument(
        "--procs",
        type=int,
        default=1,
        metavar="N",
        help="worker processes for the bulk receivers; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--connect-rate",
        type=float,
        default=2000.0,
        metavar="PER_S",
        help="client connects per second (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-clients", type=int, default=10000, metavar="N", help="clients for 'idle' (default: %(default)s)"
    )
    parser.add_argument(
        "--idle-settle", type=float, default=60.0, help="seconds at most to let idle clients settle (default: 60)"
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=5.0, help="'connect': seconds to wait for welcomes (default: 5)"
    )
    parser.add_argument(
        "--plugins",
        default=default_plugins(),
        help="chatcore plugins (default: welcome,logger and filters when installed: %(default)s)",
    )
    parser.add_argument(
        "--baseline-python",
        metavar="PATH",
        help=(
            "also run the chatcore installed for this Python (another version's virtualenv), right "
            "before this one in each scenario and round: the rows are chatcore/A (the baseline) and "
            "chatcore/B (this one), and the ratios B / A are printed at the end"
        ),
    )
    parser.add_argument(
        "--compare-plugins",
        action="append",
        default=[],
        metavar="NAMES",
        help=(
            "also run chatcore with these plugins, right after the --plugins run of each scenario "
            "(repeat for several sets); the rows are chatcore/A (--plugins), chatcore/B ..., and the "
            "ratios to A are printed at the end"
        ),
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="run every scenario N times, the servers back to back each time (default: %(default)s)",
    )
    parser.add_argument(
        "--server-arg",
        dest="server_args",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for 'chatcore serve' (repeat; e.g. --server-arg=--flood-rate=0)",
    )
    parser.add_argument(
        "--naive-arg", dest="naive_args", action="append", default=[], metavar="ARG", help="extra naive_server.py arg"
    )
    parser.add_argument(
        "--web",
        action="store_true",
        help=(
            "WebSocket clients of the web plugin (chatcore only): with --driver python the bulk receivers, "
            "flow scenarios only; with --driver c every client (the same as --protocol ws)"
        ),
    )
    parser.add_argument(
        "--driver",
        default="c",
        metavar="NAMES",
        help=(
            "the load driver, comma-separated for several back to back: c (benchmarks/c_driver.c, built with cc; "
            "naive and chatcore-tls always run under the Python driver) or python (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="native",
        help="the C driver's clients: native, irc (chatcore's irc:// listener) or ws (default: %(default)s)",
    )
    parser.add_argument(
        "--setup-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="the C driver's limit for connecting and syncing every client (default: 30 s and 10 s per "
        "--connect-rate's worth of clients)",
    )
    parser.add_argument(
        "--driver-cpu",
        metavar="CPU",
        help="pin the C driver to this CPU with taskset, and start the servers on the other CPUs"
        " (chatcore then pins itself to one of them: --cpu-affinity auto)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw deliveries/s and p99 latency per flow scenario and server into FILE (.png or .svg; "
        "needs matplotlib: pip install 'chatcore[bench]')",
    )
    options = parser.parse_args(argv)
    for name in ("duration", "connect_rate", "idle_clients", "idle_settle", "connect_timeout"):
        if getattr(options, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be more than 0")
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    if options.procs < 0:
        parser.error("--procs must be 0 or more")
    if options.line_size < 9 + TAIL + 2:
        parser.error(f"--line-size must be at least {9 + TAIL + 2}")
    options.servers = [s.strip() for s in options.servers.split(",") if s.strip()]
    for name in options.servers:
        if name not in SERVERS:
            parser.error(f"--servers: unknown server {name!r} (use {', '.join(SERVERS)})")
    if "chatcore-tls" in options.servers and importlib.util.find_spec("trustme") is None:
        parser.error("--servers chatcore-tls makes its certificate with trustme: pip install 'chatcore[bench]'")
    if options.plot:
        if not options.plot.endswith((".png", ".svg")):
            parser.error(f"--plot {options.plot!r}: the file name must end in .png or .svg")
        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib: pip install 'chatcore[bench]'")
    options.drivers = [d.strip() for d in options.driver.split(",") if d.strip()]
    for driver in options.drivers:
        if driver not in DRIVERS:
            parser.error(f"--driver: unknown driver {driver!r} (use {', '.join(DRIVERS)})")
    if options.web:
        options.protocol = "ws"
    if options.protocol != "native" and options.drivers != ["c"]:
        parser.error("--protocol irc and ws need --driver c (the Python driver's --web has its own meaning)")
    options.web = options.web or options.protocol == "ws"
    names = options.scenario or ["all"]
    options.scenarios = list(SCENARIOS) if "all" in names else list(dict.fromkeys(names))
    if options.web and options.servers != ["chatcore"]:
        parser.error("--web and --protocol ws need --servers chatcore")
    if options.web and "python" in options.drivers and any(SCENARIOS[n].kind != "flow" for n in options.scenarios):
        parser.error("--web with the Python driver runs the flow scenarios only (not connect or idle)")
    if options.protocol == "irc" and options.servers != ["chatcore"]:
        parser.error("--protocol irc needs --servers chatcore (benchmarks/irc_rooms.py runs the IRC servers)")
    # What runs, in order, per scenario and round: (label, server, plugins).
    options.variants = []
    #: The Python that runs each chatcore variant (this one's unless named).
    options.python_of = {}
    if options.baseline_python and options.compare_plugins:
        parser.error("--baseline-python and --compare-plugins compare against one chatcore/A each: use one")
    for name in options.servers:
        if name == "chatcore" and options.baseline_python:
            options.variants += [("chatcore/A", name, options.plugins), ("chatcore/B", name, options.plugins)]
            options.python_of["chatcore/A"] = options.baseline_python
        elif name == "chatcore" and options.compare_plugins:
            sets = [options.plugins, *options.compare_plugins]
            options.variants += [(f"chatcore/{chr(65 + i)}", name, plugins) for i, plugins in enumerate(sets)]
        else:
            options.variants.append((name, name, options.plugins))
    return options


def ratios(results: list[dict[str, Any]], variants: list[tuple[str, str, str]]) -> list[str]:
    """Each chatcore/B, C ... against chatcore/A: the median of the
    per-round ratios, and the ratios themselves."""
    labels = [label for label, server, _ in variants if label.startswith("chatcore/")]
    lines = []
    for scenario in dict.fromkeys(row["scenario"] for row in results):
        rows = [row for row in results if row["scenario"] == scenario and "error" not in row]
        for label in labels[1:]:
            for key in ("deliveries_per_s", "p50_ms", "p99_ms", "all_welcomed_s"):
                pairs = [
                    (b.get(key), a.get(key))  # a connect storm has no deliveries, a flow no welcome time
                    for a in rows
                    if a["server"] == labels[0]
                    for b in rows
                    if b["server"] == label and b["round"] == a["round"]
                ]
                each = sorted(x / y for x, y in pairs if x is not None and y)
                if each:
                    median = statistics.median(each)
                    lines.append(
                        f"  {scenario} {key}: {label} / {labels[0]} = {median:.3f} "
                        f"(rounds: {', '.join(f'{r:.3f}' for r in each)})"
                    )
    return lines


def ratios_to_reference(results: list[dict[str, Any]], reference: str) -> list[str]:
    """Every other server's deliveries/s and p99 against ``reference``'s in
    the same round of the same scenario: the median and each round's."""
    lines = []
    for scenario in dict.fromkeys(row["scenario"] for row in results):
        rows = [row for row in results if row["scenario"] == scenario and "error" not in row]
        base = {row["round"]: row for row in rows if row["server"] == reference}
        for label in dict.fromkeys(row["server"] for row in rows if row["server"] != reference):
            for key in ("deliveries_per_s", "p99_ms", "all_welcomed_s"):
                each = sorted(
                    row[key] / base[row["round"]][key]
                    for row in rows
                    if row["server"] == label
                    and row["round"] in base
                    and row.get(key) is not None
                    and base[row["round"]].get(key)
                )
                if each:
                    lines.append(
                        f"  {scenario} {key}: {label} / {reference} = {statistics.median(each):.3f} "
                        f"(rounds: {', '.join(f'{r:.3f}' for r in each)})"
                    )
    return lines


def not_measured(scenario: Scenario, server: str, driver: str, options: argparse.Namespace) -> str | None:
    """Why ``server`` does not run ``scenario`` under ``driver``, or None."""
    if server == "chatcore-tls" and scenario.kind not in ("flow", "rooms"):
        return "TLS runs the flow scenarios only"
    if scenario.kind == "rooms" and server in ("naive", "c-epoll"):
        return "one room only, no /join"  # c_epoll_server.c and naive_server.py
    if scenario.kind == "idle" and scenario.rooms and server in ("naive", "c-epoll"):
        return f"one room only: {scenario.clients:,} clients in it would be a storm of join notices, not idle"
    if scenario.c_only and driver != "c":
        return "a scenario of the C driver only"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    most = max(SCENARIOS[name].clients or options.idle_clients for name in options.scenarios)
    limit = raise_file_limit(most + 1000)
    for name in options.scenarios:
        # The server and the driver each hold a socket per client; under a
        # hard limit (20,000 on some machines) idle20k holds what fits.
        scenario = SCENARIOS[name]
        if scenario.c_only and scenario.clients + 500 > limit:
            print(
                f"broadcast: open-file limit {limit} is too low for {scenario.clients:,} clients in {name}; "
                f"using {limit - 500:,}",
                file=sys.stderr,
            )
            SCENARIOS[name] = dataclasses.replace(scenario, clients=limit - 500)
    if "idle" in options.scenarios and options.idle_clients + 100 > limit:
        print(
            f"broadcast: open-file limit {limit} is too low for {options.idle_clients} idle clients; "
            f"using {limit - 100} (raise it with ulimit -n)",
            file=sys.stderr,
        )
        options.idle_clients = max(1, limit - 100)
    print(
        f"broadcast.py: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, line {options.line_size} bytes, "
        f"{options.duration:g} s per flow, chatcore plugins: {options.plugins or '(none)'}",
        flush=True,
    )
    for label, server_name, plugins in options.variants:
        if label != server_name:
            python = options.python_of.get(label, sys.executable)
            print(f"  {label}: chatcore with plugins {plugins or '(none)'}, run by {python}", flush=True)
    runners = {"flow": run_flow, "rooms": run_rooms, "connect": run_connect, "idle": run_idle}
    results: list[dict[str, Any]] = []
    failed = False
    several = len(options.drivers) > 1
    with tempfile.TemporaryDirectory(prefix="chatcore-bench-") as log_dir:
        if "c" in options.drivers:
            try:
                options.c_driver = build_c_driver(log_dir)
            except RuntimeError as exc:
                print(f"broadcast.py: {exc}", file=sys.stderr)
                return 2
        tls_context = None
        if "chatcore-tls" in options.servers:
            tls_context, options.tls_files = make_certificates(log_dir)
        for name in options.scenarios:
            scenario = SCENARIOS[name]
            max_clients = max(1000, scenario.clients + 100, options.idle_clients + 100 if name == "idle" else 0)
            for round_ in range(1, options.rounds + 1):
                rounds = f" (round {round_} of {options.rounds})" if options.rounds > 1 else ""
                print(f"{scenario.name}: {scenario.title}{rounds}", flush=True)
                for (label, server_name, plugins), asked in (
                    (variant, driver) for variant in options.variants for driver in options.drivers
                ):
                    # The C driver speaks neither TLS nor the naive server's
                    # command-less protocol: those run under the Python driver.
                    driver = "python" if server_name in ("naive", "chatcore-tls") else asked
                    shown = f"{label} [{asked}]" if several else label
                    reason = not_measured(scenario, server_name, driver, options)
                    if driver != asked and "python" in options.drivers:
                        reason = "the Python driver's row measures it"
                    if reason:
                        print(f"  {shown:12s} (not measured: {reason})", flush=True)
                        continue
                    ClientTLS.context = tls_context if server_name == "chatcore-tls" else None
                    try:
                        python = options.python_of.get(label, sys.executable)
                        command = server_command(
                            server_name, scenario, options, max_clients, log_dir, plugins=plugins, python=python
                        )
                        command = [*away_from_driver(options), *command]
                        with ServerProcess(server_name, command, Path(log_dir) / f"{server_name}.out") as server:
                            if driver == "c":
                                result = run_c_driver(server, scenario, options)
                            else:
                                result = runners[scenario.kind](server, scenario, options)
                    except (OSError, RuntimeError, TimeoutError, ConnectionError) as exc:
                        result = {"error": str(exc).splitlines()[0]}
                        failed = True
                    print(format_row(shown, result), flush=True)
                    row = {"scenario": name, "server": label, "driver": asked, "round": round_, **result}
                    results.append({**row, "plugins": plugins} if server_name == "chatcore" else row)
    ClientTLS.context = None
    for driver in options.drivers:
        under = f" under the {driver} driver" if several else ""
        rows = [row for row in results if row["driver"] == driver]
        if len([v for v in options.variants if v[0].startswith("chatcore/")]) > 1:
            print(f"ratios, measured back to back (median of the rounds){under}:", flush=True)
            for line in ratios(rows, options.variants):
                print(line, flush=True)
        if "c-epoll" in options.servers:
            print(f"ratios to the C reference, c-epoll (median of the rounds){under}:", flush=True)
            for line in ratios_to_reference(rows, "c-epoll"):
                print(line, flush=True)
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2) + "\n")
    if options.plot:
        plot(results, options.plot)
        print(f"broadcast.py: plot written to {options.plot}", flush=True)
    return 1 if failed else 0


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Deliveries/s and p99 latency of every flow scenario, one bar per
    server, side by side, into ``path`` (PNG or SVG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    flows = [
        name for name in dict.fromkeys(row["scenario"] for row in results) if SCENARIOS[name].kind in ("flow", "rooms")
    ]
    servers = list(dict.fromkeys(row["server"] for row in results if row["scenario"] in flows))
    found = {(row["scenario"], row["server"]): row for row in results}
    figure, (rates, tails) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(servers))
    for number, server in enumerate(servers):
        offsets = [index + (number - (len(servers) - 1) / 2) * width for index in range(len(flows))]
        rows = [found.get((flow, server), {}) for flow in flows]
        bars = rates.bar(offsets, [(row.get("deliveries_per_s") or 0) / 1e6 for row in rows], width, label=server)
        rates.bar_label(bars, fmt="%.2f", fontsize=7)
        bars = tails.bar(offsets, [row.get("p99_ms") or 0 for row in rows], width, label=server)
        tails.bar_label(bars, fmt="%.0f", fontsize=7)
    for axes, title, unit in (
        (rates, "deliveries per second (higher is better)", "million deliveries/s"),
        (tails, "delivery latency p99 (lower is better)", "ms"),
    ):
        axes.set_title(title)
        axes.set_ylabel(unit)
        axes.set_xticks(range(len(flows)), flows)
        axes.grid(axis="y", alpha=0.3)
    rates.legend()
    figure.suptitle(f"benchmarks/broadcast.py, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
