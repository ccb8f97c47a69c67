"""Listeners: ``--listen SCHEME://HOST:PORT``, each an accept loop of its own.

A :class:`Listener` is the standard library's TCP server, one per URL, each
running ``serve_forever()`` on its own thread. It does nothing but accept:
every connection, whichever listener it came from, is served by a
:class:`~chatcore.engine.serving.Session` (started by
:meth:`Connections.start_serving
<chatcore.engine.serving.Connections.start_serving>`), with the listener's
:class:`~chatcore.transports.Scheme`. So there is one
registry and one set of rooms for all of them.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatcore.errors import UsageError

if TYPE_CHECKING:
    from chatcore.engine.serving import Connections
    from chatcore.transports import Scheme

#: How often an accept loop checks for shutdown(): stop() waits up to this.
ACCEPT_POLL_INTERVAL = 0.1


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ListenURL:
    """A parsed ``--listen`` value."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{format_address(self.host, self.port)}"


def parse_listen_url(text: str, schemes: dict[str, Scheme]) -> ListenURL:
    """Parse ``SCHEME://HOST[:PORT]``; IPv6 hosts in brackets (``tcp://[::1]:12000``).

    :raises UsageError: a malformed URL, or a scheme no plugin registered
        (the message lists the known ones).
    """
    known = ", ".join(f"{name}://" for name in sorted(schemes)) or "none"
    if "://" not in text:
        raise UsageError(
            f"--listen {text!r}: expected SCHEME://HOST:PORT, e.g. tcp://127.0.0.1:12000 (schemes: {known})"
        )
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:  # a bracket without its pair ("Invalid IPv6 URL"), or an odd character in the host
        raise UsageError(
            f"--listen {text!r}: not a URL ({exc}); IPv6 hosts go in brackets, e.g. tcp://[::1]:12000"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise UsageError(
            f"--listen {text!r}: unknown scheme {scheme + '://'!r} (known: {known}; plugins add more, see --plugins)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        raise UsageError(f"--listen {text!r}: only SCHEME://HOST:PORT is allowed")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"--listen {text!r}: the port must be a number from 0 to 65535") from None
    host = parts.hostname
    if not host:
        raise UsageError(f"--listen {text!r}: give a host, e.g. {scheme}://127.0.0.1:{schemes[scheme].default_port}")
    return ListenURL(scheme, host, schemes[scheme].default_port if port is None else port)


class Listener(socketserver.TCPServer):
    """Accepts connections for one URL and hands each to the chat server's
    :class:`~chatcore.engine.serving.Connections`, which serves it on a
    thread of its own (and waits for those threads itself, with a deadline,
    when the server stops)."""

    allow_reuse_address = True  # SO_REUSEADDR, as the original chatroom

    def __init__(self, serving: Connections, url: ListenURL, scheme: Scheme, backlog: int) -> None:
        self.serving = serving
        self.scheme = scheme
        self.request_queue_size = backlog
        if ":" in url.host:
            self.address_family = socket.AF_INET6
        self._thread: threading.Thread | None = None
        super().__init__((url.host, url.port), socketserver.BaseRequestHandler)
        host, port = self.server_address[:2]
        #: The URL with the port actually bound (port 0 picks one).
        self.url = ListenURL(url.scheme, str(host), int(port))
        #: Connections being served from this listener (kept by the chat
        #: server under its connections lock; read by metrics).
        self.connected = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.url.host, self.url.port

    def __repr__(self) -> str:
        return f"<Listener {self.url}>"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": ACCEPT_POLL_INTERVAL},
            name=f"chatcore-accept-{self.url.scheme}-{self.url.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting (waits for the accept loop) and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread = None
        self.server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        # Straight to the serving side, which starts the connection's thread:
        # no handler class, whose construction would cost the thread a C
        # stack level (a client's thread keeps every stack page it touches).
        self.serving.start_serving(self, request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.serving.connection_error(client_address)
