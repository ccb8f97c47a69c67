"""Per-address connection limits, and the token bucket that paces input.

Defends against one host taking the server from everyone: a thousand idle
connections from one address would otherwise fill ``--max-clients``, and a
reconnect loop would spin up a thread per attempt. Each address (IPv4) or
/64 network (IPv6: what one customer of an ISP is given) may hold
``--max-per-address`` connections at once and open ``--max-new-per-address``
within ``--new-window`` seconds. Loopback is exempt by default (load tests
and benchmarks on one machine), as in Ergo; ``--limit-exempt`` sets the
exempt networks. Defaults and their sources: docs/security.md.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable

#: Ergo's ip-limits defaults (default.yaml): 16 at once, 32 new per 10 minutes.
DEFAULT_MAX_PER_ADDRESS = 16
DEFAULT_MAX_NEW_PER_ADDRESS = 32
DEFAULT_NEW_WINDOW = 600.0
DEFAULT_EXEMPT = "127.0.0.0/8,::1/128"
#: Ergo's fakelag defaults: a burst of 5, then 2 lines a second.
DEFAULT_LINE_RATE = 2.0
DEFAULT_LINE_BURST = 5
#: How long a connection may take to be admitted. Long enough for a person
#: typing /pass into nc; the chatcore client sends it at once.
DEFAULT_LOGIN_TIMEOUT = 60.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """An address or CIDR network, as the checks compare it: an IPv4-mapped
    IPv6 one (``::ffff:1.2.3.4``, ``::ffff:10.0.0.0/104``) as the IPv4
    network it is. Peers are compared as IPv4 (:func:`parse_address`), so a
    ban or exemption written the mapped way would otherwise match nobody.

    :raises ValueError: not an address or CIDR network.
    """
    network = ipaddress.ip_network(text.strip(), strict=False)
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is not None and network.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"127.0.0.0/8, ::1"`` -> networks (:func:`parse_network`); ``""`` -> none.

    :raises ValueError: a part that is not an address or CIDR network.
    """
    parts = [part.strip() for part in text.split(",")]
    return tuple(parse_network(part) for part in parts if part)


# The prefix of an IPv4-mapped IPv6 address (::ffff:1.2.3.4).
_V4_MAPPED = bytes(10) + b"\xff\xff"


def _packed(host: str) -> bytes:
    """The peer's address as 4 bytes (IPv4, also when IPv4-mapped) or 16.

    Parsed by ``socket.inet_pton`` rather than ``ipaddress.ip_address``,
    whose parser calls back into Python from C (``int.from_bytes(map(...))``)
    inside a class call: on a connection's thread that went one C level
    deeper than anything else it runs, and a reader thread keeps every stack
    page it touches (4 KiB per connected client, docs/performance.md).

    :raises ValueError: not an IP address.
    """
    host = host.partition("%")[0]  # no zone index
    try:
        return socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return packed[12:] if packed[:12] == _V4_MAPPED else packed


def parse_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The peer's address; an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``,
    from a dual-stack listener) as the IPv4 address it is."""
    packed = _packed(host)
    return ipaddress.IPv4Address(packed) if len(packed) == 4 else ipaddress.IPv6Address(packed)


def address_key(host: str) -> str:
    """What the limits count by: the IPv4 address, or the IPv6 /64."""
    packed = _packed(host)
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


class ConnectionLimits:
    """Counts connections per address; thread-safe (one lock, held for a
    dictionary update: accepting is never slowed by a slow client).

    Every :meth:`acquire` that returns ``None`` must be matched by exactly
    one :meth:`release` with the same host, however the connection ends: the
    server does both in the connection's own thread, the release in a
    ``finally``.
    """

    def __init__(
        self,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        max_new: int = DEFAULT_MAX_NEW_PER_ADDRESS,
        window: float = DEFAULT_NEW_WINDOW,
        exempt: Iterable[Network] = (),
    ) -> None:
        self.max_per_address = max_per_address  # 0: no limit
        self.max_new = max_new  # 0: no limit
        self.window = window
        self.exempt = tuple(exempt)
        # (address length, network, mask) as integers: the check made for
        # every connection stays in C (see _packed()).
        self._exempt_ranges = [
            (network.max_prefixlen // 8, int(network.network_address), int(network.netmask)) for network in self.exempt
        ]
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        # Start times of the recent connections, per key; at most max_new
        # each, and a key goes when its deque empties, so this stays bounded
        # by the addresses actually connecting.
        self._recent: dict[str, collections.deque[float]] = {}

    def reconfigure(self, max_per_address: int, max_new: int, window: float) -> None:
        """New limits (a reload), for the connections that come next; the
        exempt networks stay (connections are released under the exemption
        they were counted under)."""
        with self._lock:
            self.max_per_address, self.max_new, self.window = max_per_address, max_new, window

    def is_exempt(self, host: str) -> bool:
        try:
            packed = _packed(host)
        except ValueError:
            return False  # not an IP address (a Unix socket?): counted by name
        address = int.from_bytes(packed, "big")
        # A loop, not any() over a generator: resuming a generator from C
        # is one C stack level more on every connection's thread.
        for length, network, mask in self._exempt_ranges:  # noqa: SIM110
            if length == len(packed) and address & mask == network:
                return True
        return False

    def _key(self, host: str) -> str | None:
        """The counting key, or None if ``host`` is exempt."""
        if self.is_exempt(host):
            return None
        try:
            return address_key(host)
        except ValueError:
            return host

    def acquire(self, host: str, now: float | None = None) -> str | None:
        """Count a new connection from ``host``; a reason to refuse it, or
        None (then :meth:`release` it when it ends). A refused connection is
        not counted as open, but counts as an attempt in the window: a
        reconnect loop does not get faster by being refused."""
        key = self._key(host)
        if key is None:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = self._recent.get(key)
            if recent is None:
                recent = self._recent[key] = collections.deque()
            while recent and recent[0] <= now - self.window:
                recent.popleft()
            if self.max_new and len(recent) >= self.max_new:
                wait = recent[0] + self.window - now
                return f"too many new connections from your address; try again in {wait:.0f} seconds"
            recent.append(now)
            if self.max_per_address and self._open.get(key, 0) >= self.max_per_address:
                return (
                    f"too many connections from your address (the limit is {self.max_per_address}); "
                    "close one and try again"
                )
            self._open[key] = self._open.get(key, 0) + 1
        return None

    def release(self, host: str) -> None:
        """A connection counted by :meth:`acquire` ended."""
        key = self._key(host)
        if key is None:
            return
        with self._lock:
            count = self._open.get(key, 0) - 1
            if count > 0:
                self._open[key] = count
            else:
                self._open.pop(key, None)
            self._forget_old(time.monotonic())

    def _forget_old(self, now: float) -> None:
        # Drop the windows of addresses that have not connected lately, a
        # few per release, so the table cannot grow without bound.
        for key in list(self._recent)[:4]:
            recent = self._recent[key]
            while recent and recent[0] <= now - self.window:
                recent.popleft()
            if not recent:
                del self._recent[key]

    def open_count(self, host: str) -> int:
        """Connections counted open for ``host``'s key (0 if exempt)."""
        key = self._key(host)
        with self._lock:
            return 0 if key is None else self._open.get(key, 0)

    @property
    def total_open(self) -> int:
        """Every counted open connection (for tests and metrics)."""
        with self._lock:
            return sum(self._open.values())


class FailureCounter:
    """Recent failures (wrong passwords) per address (IPv6: per /64), over a
    sliding window; thread-safe. Memory is bounded: at most ``limit``
    failures are kept per address, and at most ``max_addresses`` addresses
    (the oldest is forgotten first)."""

    def __init__(self, window: float, limit: int = 64, max_addresses: int = 10000) -> None:
        self.window = window
        self._limit = limit
        self._max_addresses = max_addresses
        self._lock = threading.Lock()
        self._times: dict[str, collections.deque[float]] = {}

    def record(self, host: str, now: float | None = None) -> int:
        """Count a failure from ``host``; how many there were in the window."""
        try:
            key = address_key(host)
        except ValueError:
            key = host
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._times.pop(key, None)  # re-inserted last: the dict is oldest first
            if times is None:
                times = collections.deque(maxlen=self._limit)
                if len(self._times) >= self._max_addresses:
                    del self._times[next(iter(self._times))]
            times.append(now)
            while times[0] <= now - self.window:
                times.popleft()
            self._times[key] = times
            return len(times)

    def count(self, host: str, now: float | None = None) -> int:
        """How many failures ``host`` had in the window, counting none."""
        try:
            key = address_key(host)
        except ValueError:
            key = host
        horizon = (time.monotonic() if now is None else now) - self.window
        with self._lock:
            return sum(1 for when in self._times.get(key, ()) if when > horizon)


class TokenBucket:
    """A token bucket: holds up to ``burst`` tokens and gains ``rate`` per
    second; an action takes one.

    Used by the engine to pace every client's input (fakelag) and by the
    filters plugin's optional dropping flood control. Only the client's own
    thread touches a client's bucket, so it needs no lock.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> float:
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return tokens

    def take(self, now: float) -> bool:
        """Take a token for an action at ``now``; False if none is left."""
        tokens = self._refill(now)
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False

    def delay(self, now: float) -> float:
        """Take a token, borrowing one if none is left; how many seconds
        the caller must wait before acting (0 within the burst)."""
        tokens = self._refill(now) - 1.0
        self._tokens = tokens
        return 0.0 if tokens >= 0 else -tokens / self.rate
