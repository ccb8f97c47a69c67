"""TLS over memory buffers, for a reader thread and a shared writer.

Why not ``ssl.SSLSocket``: chatcore reads each client on its own thread and
writes every client from one writer thread. One OpenSSL connection would
then be used by two threads at once. CPython releases the GIL inside
``SSL_read``/``SSL_write``, OpenSSL objects are not safe for concurrent use,
and TLS 1.3 reads can produce writes (key-update replies), so concurrent
``recv()`` and ``send()`` on one ``SSLSocket`` are a data race; and
``SSLSocket.send()`` refuses ``MSG_DONTWAIT``, which the writer needs so a
full socket never blocks it.

So, as asyncio's ``sslproto`` does, the TLS state machine is an
``ssl.SSLObject`` over two ``ssl.MemoryBIO`` buffers, and chatcore keeps the
raw socket:

- the reader thread ``recv()``\\s ciphertext from the socket *without the
  lock*, then, under the lock, feeds it to the incoming buffer and reads
  plaintext out;
- the writer thread, under the lock, writes plaintext in and takes the
  ciphertext out of the outgoing buffer, then sends it on the raw socket
  with ``MSG_DONTWAIT`` *without the lock*, exactly as for plain TCP. What
  the kernel does not take waits in the writer, and the client's bounded
  queue makes a TLS client that stops reading a slow consumer like any
  other;
- the per-connection lock guards only the in-memory OpenSSL calls and is
  never held across socket I/O, so neither thread can block the other for
  longer than a memory copy;
- when a read produces output of its own, the reader asks the writer to send
  it (an empty write to the client's queue); only the writer takes from the
  outgoing buffer, so records leave in the order OpenSSL made them.

The handshake runs on the client's thread before the client is registered,
with a deadline, so a slow or silent peer holds only its own thread. A clean
close sends close_notify.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

from chatcore.transports import _DONTWAIT, Transport

log = logging.getLogger("chatcore.tls")

#: Seconds a new connection has to complete the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla's "intermediate"
# list). TLS 1.3's suites are all modern and are not affected by this.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(certfile: str, keyfile: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, modern ciphers, no renegotiation.

    Defends against protocol downgrade (no SSLv3, TLS 1.0 or 1.1), weak or
    non-forward-secret ciphers, and client-initiated renegotiation (a cheap
    way to make the server do expensive handshakes, CVE-2011-1473).

    :raises OSError, ssl.SSLError: a file is missing, unreadable or does not
        hold a matching certificate and key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(_TLS12_CIPHERS)
    context.load_cert_chain(certfile, keyfile)
    if client_ca:
        # Client certificates (IRC's SASL EXTERNAL): asked for, not required,
        # and checked against this CA. Python's ssl cannot accept a
        # certificate it does not verify, so a self-signed one cannot be
        # asked for; what logs in is the fingerprint registered with an
        # account, never the CA's signature alone.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(client_ca)
    return context


class Certificates:
    """The certificate and key of the ``tls://`` (and other TLS) listeners,
    reloadable while the server runs.

    New connections use :attr:`context`; :meth:`reload` replaces it, so a
    rotated certificate is used from the next connection on, and connections
    already open keep theirs.
    """

    def __init__(self, certfile: str, keyfile: str, client_ca: str | None = None) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self.client_ca = client_ca
        self.context = server_context(certfile, keyfile, client_ca)

    def reload(self) -> bool:
        """Read the files again; on any error keep the current context.

        :return: True if the new certificate is in use.
        """
        try:
            context = server_context(self.certfile, self.keyfile, self.client_ca)
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "TLS certificate reload failed (%s); still using the previous certificate. "
                "Fix --tls-cert %s / --tls-key %s and send SIGHUP again",
                getattr(exc, "strerror", None) or exc,
                self.certfile,
                self.keyfile,
            )
            return False
        self.context = context  # one reference swap: atomic for other threads
        log.info("TLS certificate reloaded from %s", self.certfile)
        return True

    def use(self, certfile: str, keyfile: str, context: ssl.SSLContext) -> None:
        """Use ``context``, already loaded from these files (a reload that
        checked it first), for new connections."""
        self.certfile, self.keyfile = certfile, keyfile
        self.context = context  # one reference swap: atomic for other threads
        log.info("TLS certificate reloaded from %s", certfile)


class TLSTransport(Transport):
    """The native or any other protocol over TLS (see the module docstring)."""

    __slots__ = ("_incoming", "_lock", "_on_output", "_outgoing", "_ssl", "_version", "incomplete")

    encrypts = True

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        super().__init__(sock)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._lock = threading.Lock()
        self._on_output: Callable[[], None] = lambda: None
        self._version = ""
        self.incomplete = False

    @property
    def description(self) -> str:
        return self._version or "TLS"

    def set_output_callback(self, callback: Callable[[], None]) -> None:
        self._on_output = callback

    # -- before registration: the client's thread alone ----------------------

    def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Run the handshake with blocking I/O and a deadline in all.

        :raises ssl.SSLError: the peer does not speak TLS (a plain-text client
            on a TLS port) or the handshake failed.
        :raises TimeoutError: the deadline passed.
        :raises ConnectionError: the peer closed the connection.
        """
        deadline = time.monotonic() + timeout
        sock = self.sock
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            self._send_pending(deadline)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(16384)
            if not data:
                raise ConnectionResetError("the peer closed the connection during the TLS handshake")
            self._incoming.write(data)
        self._send_pending(deadline)  # the last flight (and TLS 1.3 session tickets)
        sock.settimeout(None)
        self._version = f"{self._ssl.version()} {(self._ssl.cipher() or ('?',))[0]}"

    def _send_pending(self, deadline: float) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            self.sock.sendall(data)

    def sendall(self, data: bytes) -> None:
        self._ssl.write(data)
        self.sock.settimeout(5.0)
        self.sock.sendall(self._outgoing.read())

    def peer_fingerprint(self) -> str | None:
        """The SHA-256 of the client certificate the peer presented (DER,
        lower-case hex), or None: what an account registers to log in with
        it. Only with ``--tls-client-ca`` are certificates asked for."""
        with self._lock:
            der = self._ssl.getpeercert(binary_form=True)
        return hashlib.sha256(der).hexdigest() if der else None

    # -- the reader thread ----------------------------------------------------

    def wait_readable(self, timeout: float) -> bool:
        # What came with the handshake's last flight is in memory already.
        return self.buffered() or super().wait_readable(timeout)

    def recv(self, size: int) -> bytes:
        data = self._read(size, block=True)
        assert data is not None  # a blocking read waits for a whole record
        return data

    def recv_ready(self, size: int) -> bytes | None:
        return self._read(size, block=False)

    def buffered(self) -> bool:
        with self._lock:
            return bool(self._incoming.pending or self._ssl.pending())

    def _read(self, size: int, *, block: bool) -> bytes | None:
        incoming = self._incoming
        lock = self._lock
        flags = 0 if block else _DONTWAIT
        eof = False
        got = False
        while True:
            with lock:
                try:
                    data = self._ssl.read(size)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""  # close_notify, or the peer closed without one
                produced = self._outgoing.pending
            if produced:
                self._on_output()
            if data:
                return data
            if eof:
                return b""
            try:
                raw = self.sock.recv(size, flags)  # without the lock
            except BlockingIOError:
                self.incomplete = got
                return None  # part of a record (or nothing): the rest wakes the thread again
            with lock:
                if raw:
                    incoming.write(raw)
                    got = True
                else:
                    incoming.write_eof()
                    eof = True

    # -- the writer thread ----------------------------------------------------

    def encrypt(self, data: bytes) -> bytes:
        with self._lock:
            if data:
                self._ssl.write(data)  # into memory: takes it all
            return self._outgoing.read()

    def goodbye(self) -> bytes:
        with self._lock:
            try:
                self._ssl.unwrap()  # puts close_notify in the outgoing buffer
            except (ssl.SSLError, ValueError):
                pass  # it wants the peer's close_notify too; we do not wait for it
            return self._outgoing.read()
