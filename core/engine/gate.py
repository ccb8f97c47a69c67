"""The gate: who may come in, and how fast anyone may go.

Every front-end passes its connections through the same gate, so limits
hold whatever protocol a client speaks:

- **admission**: ``--max-clients``, the per-address limits
  (:class:`~chatcore.engine.limits.ConnectionLimits`) and the plugins'
  ``chatcore_connection_arriving`` decide whether a connection is served
  (:meth:`Gate.refusal`);
- **secrets**: the server password, and any other secret a plugin checks
  (operator logins), cost a guesser time that grows with each failure, per
  connection and per address (:meth:`Gate.check_password`,
  :meth:`Gate.failed_secret`);
- **pacing**: flood control on every line a client sends (:meth:`Gate.pace`);
- **deadlines**: the login deadline and the idle timeout
  (:meth:`Gate.overdue`), enforced by the serving side's sweeper.

The gate decides; it starts no thread and owns no socket
(:mod:`chatcore.engine.serving` serves the connections).
"""

from __future__ import annotations

import argparse
import logging
import select
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatcore.engine.auth import verify_password
from chatcore.engine.limits import ConnectionLimits, FailureCounter, TokenBucket, parse_networks
from chatcore.transports.listener import format_address

if TYPE_CHECKING:
    from collections.abc import Iterable

    from chatcore.engine.connection import Client

log = logging.getLogger("chatcore.server")

#: Wrong secrets (the server password, an operator's): each costs its
#: connection this many seconds more than the last (at most
#: SECRET_MAX_DELAY), and this many close it.
SECRET_DELAY = 1.0
SECRET_MAX_DELAY = 5.0
SECRET_ATTEMPTS = 3
#: How long an address's failures are remembered: reconnecting does not
#: reset the delay within this window.
FAILURE_WINDOW = 600.0


@dataclass(frozen=True)
class Refusal:
    """Why :meth:`ChatServer.log_in <chatcore.engine.server.ChatServer.log_in>`
    did not let a connection in: each protocol tells its client in its own
    words (native ``! ...``, IRC 464, 432 or 433, a web error).

    :ivar reason: one of :data:`REFUSALS`.
    :ivar text: the engine's sentence for it, for protocols that show one.
    """

    reason: str
    text: str


#: Why a login may be refused.
REFUSALS = ("password_missing", "password_wrong", "nick_invalid", "nick_taken", "room_invalid", "admitted")


class Gate:
    """The admission, pacing and deadline rules of one server.

    :ivar limits: per-address connection counts (``--max-per-address`` ...).
    :ivar max_clients: connections served at once (``--max-clients``).
    :ivar line_rate: lines a second a client may send past its burst; 0 is
        no pacing (``--line-rate``).
    :ivar line_burst: lines a client may send at once (``--line-burst``).
    :ivar idle_timeout: seconds of silence before a connection is closed;
        0 is never (``--idle-timeout``).
    :ivar login_timeout: seconds a connection may take to be admitted (a
        password, IRC registration); 0 is no limit (``--login-timeout``).
    :ivar password: the server password (plain text or a hash), or None.
    """

    def __init__(self, options: argparse.Namespace, password: str | None) -> None:
        self.limits = ConnectionLimits(
            options.max_per_address,
            options.max_new_per_address,
            options.new_window,
            parse_networks(options.limit_exempt),
        )
        self.max_clients: int = options.max_clients
        self.line_rate: float = options.line_rate
        self.line_burst: int = options.line_burst
        self.idle_timeout: float = options.idle_timeout
        self.login_timeout: float = options.login_timeout
        self.password = password
        #: Wrong secrets per address and kind (``"password"``, ``"oper"``),
        #: in the last FAILURE_WINDOW seconds.
        self.failures: dict[str, FailureCounter] = {"password": FailureCounter(FAILURE_WINDOW)}

    def reconfigure(self, options: argparse.Namespace, password: str | None, clients: Iterable[Client]) -> None:
        """Apply a reload's rules, to the connections already open too."""
        self.limits.reconfigure(options.max_per_address, options.max_new_per_address, options.new_window)
        self.max_clients = options.max_clients
        if (options.line_rate, options.line_burst) != (self.line_rate, self.line_burst):
            self.line_rate, self.line_burst = options.line_rate, options.line_burst
            for client in clients:
                client._pace = None  # made again, with the new rate, at its next line
        self.idle_timeout = options.idle_timeout
        self.login_timeout = options.login_timeout
        self.password = password

    # -- admission ------------------------------------------------------------

    def refusal(self, served: int, over_limit: str | None) -> tuple[str, str] | None:
        """Why a new connection is refused, and the label metrics count it
        under, or None to serve it. ``served``: connections served now;
        ``over_limit``: what :meth:`ConnectionLimits.acquire` said."""
        if served >= self.max_clients:
            return "server full, try again later", "full"
        if over_limit is not None:
            return over_limit, "address_limit"
        return None

    # -- secrets --------------------------------------------------------------

    @property
    def password_required(self) -> bool:
        """Whether clients must give the server password before they are admitted."""
        return self.password is not None

    def check_password(self, client: Client, given: str) -> bool:
        """Check a client's server password, on the client's own thread.

        True if no password is set or ``given`` is right (compared in
        constant time). A wrong one is :meth:`failed_secret`.
        """
        if self.password is None:
            return True
        if verify_password(self.password, given):
            log.info("server password accepted from %s", format_address(*client.address))
            return True
        self.failed_secret(client, "password", "wrong server password", "wrong passwords")
        return False

    def failed_secret(self, client: Client, kind: str, what: str, closing: str) -> None:
        """A wrong secret of ``kind`` from ``client`` (``"password"``,
        ``"oper"``): logged as ``what`` with the address (never the secret),
        it costs the connection a delay that grows with each failure on this
        connection and from this address, and the third on the connection
        closes it with the reason ``"3 " + closing``.

        Defends against guessing: the delay sleeps on the guesser's own
        thread, so nobody else waits; counting per address too means that
        reconnecting after each guess does not reset the delay.
        """
        counts = client.data.setdefault("chatcore.failures", {})
        failures = counts[kind] = counts.get(kind, 0) + 1
        counter = self.failures.get(kind)
        if counter is None:
            counter = self.failures.setdefault(kind, FailureCounter(FAILURE_WINDOW))
        recent = counter.record(client.address[0])
        log.warning(
            "%s from %s (attempt %d on this connection, %d from this address in %g minutes)",
            what,
            format_address(*client.address),
            failures,
            recent,
            counter.window / 60,
            extra={
                "event": f"{kind}_refused",
                "address": client.address[0],
                "port": client.address[1],
                "attempt": failures,
                "attempts_from_address": recent,
            },
        )
        time.sleep(min(SECRET_DELAY * max(failures, recent), SECRET_MAX_DELAY))
        if failures >= SECRET_ATTEMPTS:
            client.disconnect(f"{failures} {closing}")

    # -- pacing ---------------------------------------------------------------

    def pace(self, client: Client) -> None:
        """Flood control for everyone (Ergo's "fakelag"): call once per line
        or command a client sends, on its own thread, before acting on it.

        Within ``--line-burst`` it returns at once, so pasting a few lines
        works; past it, it sleeps so the client is held to ``--line-rate``
        lines a second. Nothing is dropped: the flooder's input waits in its
        own socket buffer and TCP slows it down, and nobody else waits.
        Clients from ``--limit-exempt`` networks are not paced.
        """
        if not self.line_rate:
            # Nobody is paced: the client is as an exempt one, whose lines
            # of one read go to the room together (chatcore.wire.native).
            client._pace = False
            return
        bucket = client._pace
        now = time.monotonic()
        if bucket is None:
            if self.limits.is_exempt(client.address[0]):
                bucket = client._pace = False
            else:
                bucket = client._pace = TokenBucket(self.line_rate, self.line_burst, now)
        if bucket:
            delay = bucket.delay(now)
            if delay > 0:
                _sleep_unless_closed(client, delay)

    # -- deadlines ------------------------------------------------------------

    @property
    def has_deadlines(self) -> bool:
        return bool(self.idle_timeout or self.login_timeout)

    @property
    def sweep_interval(self) -> float:
        """How often the deadlines are checked: a quarter of the shortest."""
        return min(t for t in (self.idle_timeout, self.login_timeout, 4.0) if t) / 4

    def overdue(self, client: Client, now: float) -> str | None:
        """Why ``client`` must be closed now, or None: not admitted within
        the login deadline, or idle too long.

        Defends against connections that hold a thread and a slot doing
        nothing (a password never given, an IRC client that never registers).
        """
        if self.login_timeout and not client.admitted and now - client.connected_at > self.login_timeout:
            log.info(
                "closing %s: not logged in within %gs",
                format_address(*client.address),
                self.login_timeout,
                extra={"event": "login_timeout", "address": client.address[0], "port": client.address[1]},
            )
            return f"not logged in within {self.login_timeout:g} seconds; connect and log in again"
        if self.idle_timeout and now - client.last_input > self.idle_timeout:
            limit = f"{self.idle_timeout:g} seconds (this server's --idle-timeout)"
            return f"idle for {limit}; send /ping now and then to stay"
        return None


# Linux reports a peer's close while input is still unread; elsewhere only
# a full hang-up is seen, and a flooder that left is found at its next read.
_POLL_RDHUP = getattr(select, "POLLRDHUP", 0)


def _sleep_unless_closed(client: Client, delay: float) -> None:
    """Sleep ``delay`` seconds on the client's thread, but stop early if the
    peer closes: a flooder that sent a thousand lines and left must not go
    on speaking, paced, for minutes after it has gone."""
    closed = _POLL_RDHUP | select.POLLHUP | select.POLLERR
    poller = select.poll()
    poller.register(client.sock, select.POLLIN | _POLL_RDHUP)
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        events = poller.poll(left * 1000)
        if not events:
            return
        if any(mask & closed for _fd, mask in events):
            client.disconnect("connection closed", tell=False)
            return
        # More input waiting (the flood itself): it is read after the delay.
        time.sleep(max(0.0, deadline - time.monotonic()))
        return
