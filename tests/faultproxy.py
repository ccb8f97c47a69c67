"""A fault-injecting TCP proxy for the tests, in the manner of Toxiproxy.

Put it between a chatcore server and redis-server (or between a client and
a server): it listens on 127.0.0.1 and a port the OS picks, and forwards
every connection to ``target``, one thread per direction. While it runs a
test can change what the link does:

- :meth:`cut`: reset every open link now (new ones are accepted), what a
  restarted router or a ``CLIENT KILL`` does;
- :meth:`partition`: reset every link and refuse new ones until
  :meth:`heal` (a partition both ends notice at once);
- :meth:`stall`: stop forwarding without closing anything: bytes are held,
  the kernel's buffers fill, nothing errors (a half-open link, a frozen
  peer); new connections are held too;
- :meth:`blackhole`: read and drop everything, both ways, answering
  nothing (a firewall that drops: the bytes are lost, not late);
- :meth:`slow`: delay every chunk by ``delay`` seconds, both ways;
- ``stall("down")``, ``blackhole("up")``: the same on one direction only,
  an asymmetric partition (requests arrive, answers do not);
- :meth:`heal`: forward normally again (held bytes go on, in order).

Tests wait on what the proxy has seen, never for a fixed time:
:meth:`wait` takes a condition over :attr:`stats` (``accepted``, ``open``,
``up``/``down`` bytes forwarded, ``dropped``, ``held`` chunks waiting in a
stall, ``refused``) and returns as soon as it holds.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

FLOW, STALL, BLACKHOLE, SLOW, PARTITION = "flow", "stall", "blackhole", "slow", "partition"


@dataclass
class Stats:
    accepted: int = 0  # connections taken in
    refused: int = 0  # connections reset at once (partition)
    open: int = 0  # links open now
    up: int = 0  # bytes forwarded client -> target
    down: int = 0  # bytes forwarded target -> client
    dropped: int = 0  # bytes read and thrown away (black hole)
    held: int = 0  # chunks read and waiting for the stall to end


def _reset(sock: socket.socket) -> None:
    """Close with a RST, as a dead peer or a middlebox does, not a polite FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, target: tuple[str, int], *, buffer: int | None = None) -> None:
        """``buffer``: the kernel's receive buffer for both ends of each link, in
        bytes (small, a stall backs up into the sender quickly)."""
        self.target = target
        self.buffer = buffer
        self.listener = socket.socket()
        if buffer is not None:  # accepted sockets inherit it
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port: int = self.listener.getsockname()[1]
        self.stats = Stats()
        self.mode = FLOW
        #: A fault on one direction only (``"up"``: towards the target), over :attr:`mode`.
        self.one_way: dict[str, str] = {}
        self.delay = 0.0
        self._changed = threading.Condition()
        self._links: list[tuple[socket.socket, socket.socket | None]] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name=f"faultproxy-{self.port}", daemon=True)
        self._acceptor.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        """A Redis URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    # -- what a test does ------------------------------------------------

    def cut(self) -> None:
        """Reset every open link; new connections are forwarded as before."""
        with self._changed:
            links, self._links = self._links, []
            self.stats.open -= len(links)
            self._changed.notify_all()
        for downstream, upstream in links:
            _reset(downstream)
            if upstream is not None:
                _reset(upstream)

    def partition(self) -> None:
        """Reset every link and refuse (reset) new ones until :meth:`heal`."""
        self._set(PARTITION)
        self.cut()

    def stall(self, direction: str | None = None) -> None:
        """Hold the bytes; ``direction`` ``"up"`` (towards the target) or
        ``"down"`` stalls one way only (an asymmetric partition)."""
        self._set(STALL, direction)

    def blackhole(self, direction: str | None = None) -> None:
        """Drop the bytes; ``direction`` as for :meth:`stall`."""
        self._set(BLACKHOLE, direction)

    def slow(self, delay: float) -> None:
        self.delay = delay
        self._set(SLOW)

    def heal(self) -> None:
        self._set(FLOW)

    def wait(self, condition: Callable[[Stats], bool], timeout: float = 10, what: str = "condition") -> Stats:
        """Return the stats as soon as ``condition(stats)`` holds; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self.stats):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"proxy on port {self.port}: no {what} within {timeout} s ({self.stats})")
                self._changed.wait(left)
            return Stats(**vars(self.stats))

    def close(self) -> None:
        self._closed = True
        self._set(FLOW)
        self.listener.close()
        self.cut()

    # -- the machinery -----------------------------------------------------

    def _set(self, mode: str, direction: str | None = None) -> None:
        with self._changed:
            if direction is None:
                self.mode = mode
                self.one_way.clear()
            else:
                assert direction in ("up", "down"), direction
                self.one_way[direction] = mode
            self._changed.notify_all()

    def _count(self, **deltas: int) -> None:
        with self._changed:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)
            self._changed.notify_all()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            with self._changed:
                mode = self.mode
            if mode == PARTITION:
                self._count(refused=1)
                _reset(downstream)
                continue
            self._count(accepted=1)
            threading.Thread(target=self._connect, args=(downstream,), daemon=True).start()

    def _connect(self, downstream: socket.socket) -> None:
        with self._changed:
            # A stalled link holds a new connection unanswered, as a frozen peer does.
            while self.mode == STALL and not self._closed:
                self._changed.wait()
            mode = self.mode
        upstream: socket.socket | None = None
        if mode != BLACKHOLE:
            try:
                upstream = socket.socket()
                if self.buffer is not None:
                    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer)
                upstream.settimeout(5)
                upstream.connect(self.target)
                upstream.settimeout(None)
            except OSError:
                _reset(downstream)
                return
        with self._changed:
            if self._closed or self.mode == PARTITION:
                refused = True
            else:
                refused = False
                self._links.append((downstream, upstream))
                self.stats.open += 1
                self._changed.notify_all()
        if refused:
            _reset(downstream)
            if upstream is not None:
                _reset(upstream)
            return
        ends = threading.Event()
        threading.Thread(target=self._pump, args=(downstream, upstream, "up", ends), daemon=True).start()
        if upstream is not None:
            threading.Thread(target=self._pump, args=(upstream, downstream, "down", ends), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket | None, direction: str, ends: threading.Event) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self._changed:
                if self.one_way.get(direction, self.mode) == STALL:
                    self.stats.held += 1
                    self._changed.notify_all()
                    while self.one_way.get(direction, self.mode) == STALL and not self._closed:
                        self._changed.wait()
                    self.stats.held -= 1
                mode, delay = self.one_way.get(direction, self.mode), self.delay
            if mode == BLACKHOLE or sink is None:
                self._count(dropped=len(data))
                continue
            if mode == SLOW:
                time.sleep(delay)  # the injected latency itself, not a wait for a condition
            try:
                sink.sendall(data)
            except OSError:
                break
            self._count(**{direction: len(data)})
        # One side closed: close both, once.
        if not ends.is_set():
            ends.set()
            with self._changed:
                for link in self._links:
                    if source in link or (sink is not None and sink in link):
                        self._links.remove(link)
                        self.stats.open -= 1
                        self._changed.notify_all()
                        break
            for sock in (source, sink):
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    sock.close()
