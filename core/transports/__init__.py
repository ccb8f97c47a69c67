"""Transports: how bytes travel between a client and the server.

A transport is what the engine reads from and writes to for one connection:

- the client's reader thread calls :meth:`Transport.recv_ready` when the
  socket has input (:mod:`chatcore.engine.turns` watches it), or
  :meth:`Transport.recv` (blocking) where there is no epoll;
- the shared writer thread sends what :meth:`Transport.encrypt` returns on
  the raw socket with ``MSG_DONTWAIT``, so it never blocks;
- before the client is registered, :meth:`Transport.handshake` runs (with a
  deadline) and :meth:`Transport.sendall` can answer a refusal.

:class:`Transport` is TCP as it is; :class:`~chatcore.transports.tls.TLSTransport`
runs TLS over memory buffers so that the raw socket I/O stays in chatcore's
threads. A :class:`Scheme` binds a listener URL scheme (``tcp``, ``tls``,
``irc`` ...) to a transport and a wire format; plugins return them from
``chatcore_schemes``. :mod:`chatcore.transports.listener` accepts connections.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.wire import Protocol, WireFormat


class Transport:
    """Plain TCP; the base of every transport.

    :ivar sock: the connected socket. The writer registers it with its
        selector and shuts it down; only the reader thread closes it.
    """

    __slots__ = ("sock",)

    #: True if :meth:`encrypt` must be applied to outgoing bytes.
    encrypts = False
    #: Whether the last :meth:`recv_ready` that gave None had read part of
    #: a message all the same (TLS: part of a record): input came.
    incomplete = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def handshake(self, timeout: float) -> None:
        """Make the connection ready (TLS: the handshake), on the client's
        thread before it is registered; raise ``OSError`` if it fails."""

    def recv(self, size: int) -> bytes:
        """Up to about ``size`` bytes from the client; ``b""`` at the end.
        Blocking; the reader thread only."""
        return self.sock.recv(size)

    def recv_ready(self, size: int) -> bytes | None:
        """Like :meth:`recv` but never blocking: None if nothing can be
        read yet (input that woke the thread was not a whole TLS record, or
        the wake-up was spurious). The reader thread only."""
        try:
            return self.sock.recv(size, _DONTWAIT)
        except BlockingIOError:
            return None

    def buffered(self) -> bool:
        """Whether input is waiting in memory, where polling the socket
        cannot see it (TLS: the rest of a record already decrypted)."""
        return False

    def sendall(self, data: bytes) -> None:
        """Send before the client is registered (a refusal), blocking."""
        self.sock.sendall(data)

    def wait_readable(self, timeout: float) -> bool:
        """Whether the client sends something within ``timeout`` seconds (or
        closes): its first bytes, before the reader thread's first
        ``recv()``; the reader thread only. A poll, so that the socket stays
        blocking for the reader and non-blocking for the writer."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))

    def encrypt(self, data: bytes) -> bytes:
        """The bytes to put on the wire for ``data``; the writer thread only.
        Called only when :attr:`encrypts` is true."""
        return data

    def goodbye(self) -> bytes:
        """The last bytes to send before the socket is shut down (TLS's
        close_notify); the writer thread only."""
        return b""

    def set_output_callback(self, callback: Callable[[], None]) -> None:
        """``callback`` asks the writer to send what the transport produced
        on its own (TLS: a reply to a key update read by the reader thread)."""

    @property
    def description(self) -> str:
        """What the logs say about the connection's security."""
        return "plain"


@dataclass(frozen=True)
class Scheme:
    """A kind of listener: ``--listen NAME://HOST:PORT``.

    :ivar name: the URL scheme (``"tcp"``, ``"tls"``, ``"irc"`` ...).
    :ivar wire: the wire format every connection of this scheme shares.
    :ivar protocol: makes the per-connection protocol for a new client.
    :ivar tls: True if connections are TLS (needs ``--tls-cert`` and
        ``--tls-key``).
    :ivar default_port: the port when the URL gives none.
    :ivar description: one line for ``--help`` and errors.
    """

    name: str
    wire: WireFormat
    protocol: Callable[[Client], Protocol]
    tls: bool = False
    default_port: int = 12000
    description: str = ""
