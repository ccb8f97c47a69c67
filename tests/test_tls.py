"""TLS: tls:// listeners beside plain ones, the memory-BIO transport under a
shared writer, certificate reloads, and the terminal client's verification.

Certificates are made by the tests with trustme.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

import chatcore.engine.serving
from chatcore.engine.server import ChatServer
from chatcore.testing import LineClient, ServerFactory, ServerProcess, wait_for

TIMEOUT = 10


@dataclass
class Certs:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def issue(ca: trustme.CA, directory: Path, *names: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(*names)
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    cert, key = issue(ca, tmp_path, "127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(ca, cert, key, ca_file)


@pytest.fixture
def clients() -> Iterator[list[LineClient]]:
    made: list[LineClient] = []
    yield made
    for client in made:
        client.close()


def both_listeners(factory: ServerFactory, certs: Certs, *args: str) -> ChatServer:
    return factory("--listen", "tcp://127.0.0.1:0", "--listen", "tls://127.0.0.1:0", *certs.args(), *args)


def tls_client(server: ChatServer, certs: Certs, made: list[LineClient]) -> LineClient:
    client = LineClient(server.listener("tls").address, tls=certs.client_context())
    made.append(client)
    client.sync()
    return client


def plain_client(server: ChatServer, made: list[LineClient]) -> LineClient:
    client = LineClient(server.listener("tcp").address)
    made.append(client)
    client.sync()
    return client


def test_plain_and_tls_clients_chat_in_one_room(chat_server_factory, certs, clients):
    server = both_listeners(chat_server_factory, certs)
    secure = tls_client(server, certs, clients)
    plain = plain_client(server, clients)
    assert secure.received[0].startswith("* Welcome to chatcore, guest-1!")
    assert isinstance(secure.sock, ssl.SSLSocket)
    assert secure.sock.version() in ("TLSv1.2", "TLSv1.3")
    secure.expect("* guest-2 joined")
    secure.send("over TLS")
    assert plain.expect("<guest-1> over TLS")
    plain.send("in the clear")
    assert secure.expect("<guest-2> in the clear")
    secure.send("/me waves")
    assert secure.expect("* guest-1 waves")
    assert plain.expect("* guest-1 waves")
    # A long burst arrives whole and in order through the TLS records.
    for number in range(500):
        plain.send(f"line {number} " + "x" * 200)
    for number in range(500):
        assert secure.readline().startswith(f"<guest-2> line {number} ")
    secure.send("/quit")
    assert secure.wait_closed() == ["* goodbye"]
    assert plain.expect("* guest-1 left")


def test_tls_is_at_least_1_2(chat_server_factory, certs, clients):
    server = both_listeners(chat_server_factory, certs)
    old = certs.client_context()
    with pytest.warns(DeprecationWarning, match="TLSv1"):  # as it should be
        old.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.warns(DeprecationWarning, match="TLSv1_1"):
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        LineClient(server.listener("tls").address, tls=old)
    assert tls_client(server, certs, clients)  # the listener is fine after it


def test_a_plain_client_on_the_tls_port_is_closed_and_logged_without_a_traceback(
    chat_server_factory, certs, clients, caplog
):
    server = both_listeners(chat_server_factory, certs)
    secure = tls_client(server, certs, clients)
    caplog.set_level(logging.INFO, logger="chatcore")
    confused = LineClient(server.listener("tls").address)
    clients.append(confused)
    confused.send("hello, is this plain text?")
    confused.wait_closed()
    record = wait_for(
        lambda: next((r for r in caplog.records if "TLS handshake with 127.0.0.1:" in r.getMessage()), None),
        message="the failed handshake logged",
    )
    assert "failed" in record.getMessage()
    assert record.exc_info is None
    assert len(server.registry) == 1  # never registered
    other = plain_client(server, clients)
    other.send("still here?")
    assert secure.expect("<guest-2> still here?")


def test_the_handshake_has_a_deadline(chat_server_factory, certs, clients, monkeypatch, caplog):
    monkeypatch.setattr(chatcore.engine.serving, "HANDSHAKE_TIMEOUT", 0.5)
    server = both_listeners(chat_server_factory, certs)
    caplog.set_level(logging.INFO, logger="chatcore")
    silent = socket.create_connection(server.listener("tls").address, timeout=TIMEOUT)
    try:
        silent.settimeout(TIMEOUT)
        assert silent.recv(100) == b""  # closed by the server, not by us
    finally:
        silent.close()
    assert any("timed out" in r.getMessage() for r in caplog.records)
    assert tls_client(server, certs, clients)


def test_a_tls_client_that_never_reads_is_dropped_as_a_slow_consumer(chat_server_factory, certs, clients):
    server = both_listeners(chat_server_factory, certs, "--max-queue", "64")
    listener = tls_client(server, certs, clients)
    talker = plain_client(server, clients)
    stalled_raw = socket.socket()
    stalled_raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled_raw.settimeout(TIMEOUT)
    stalled_raw.connect(server.listener("tls").address)
    stalled = certs.client_context().wrap_socket(stalled_raw, server_hostname="127.0.0.1")
    try:
        stalled.sendall(b"/nick stalled\n")
        # In under its name (its first line), or renamed if that came late.
        listener.expect(lambda line: line.endswith(("* stalled joined", "is now known as stalled")))
        # It reads nothing from here on; the others go on chatting, line by
        # line, until the server gives up on it: far more than its socket
        # buffers and its queue (64 lines) can hold.
        left = False
        for number in range(3000):
            talker.send(f"flood {number} " + "y" * 3000)
            line = listener.readline()
            if line == "* stalled left (slow consumer)":  # may come just before the line that caused it
                left = True
                line = listener.readline()
            assert line.startswith(f"<guest-2> flood {number} ")
            if left:
                break
        assert left
        talker.send("after it")
        assert listener.readline() == "<guest-2> after it"
    finally:
        stalled.close()


def test_shutdown_with_tls_clients_connected_says_goodbye_and_closes_cleanly(chat_server_factory, certs, clients):
    server = both_listeners(chat_server_factory, certs)
    context = certs.client_context()
    raw = socket.create_connection(server.listener("tls").address, timeout=TIMEOUT)
    # suppress_ragged_eofs=False: a close without TLS's close_notify raises.
    secure = context.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False)
    plain = plain_client(server, clients)
    try:
        secure.sendall(b"/ping\n")
        received = b""
        while b"* pong\n" not in received:
            received += secure.recv(65536)
        server.stop(timeout=2)
        tail = b""
        while chunk := secure.recv(65536):  # b"" only after close_notify
            tail += chunk
        assert tail.endswith(b"* server shutting down\n")
        assert plain.wait_closed()[-1] == "* server shutting down"
    finally:
        secure.close()


def peer_serial(address: tuple[str, int], context: ssl.SSLContext) -> int:
    with (
        socket.create_connection(address, timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as secure,
    ):
        der = secure.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one(certs, tmp_path):
    context = certs.client_context()
    with ServerProcess("--listen", "tls://127.0.0.1:0", *certs.args()) as proc:
        address = proc.addresses["tls"]
        first = peer_serial(address, context)
        staying = LineClient(address, tls=context)
        staying.sync()

        new_dir = tmp_path / "new"
        new_dir.mkdir()
        new_cert, new_key = issue(certs.ca, new_dir, "127.0.0.1")
        certs.cert.write_bytes(new_cert.read_bytes())
        certs.key.write_bytes(new_key.read_bytes())
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        second = wait_for(lambda: (serial := peer_serial(address, context)) != first and serial, TIMEOUT)

        certs.cert.write_text("not a certificate\n")
        proc.proc.send_signal(signal.SIGHUP)
        # Waited for in the log: the serial stays the same whether or not
        # the reload has run yet, so it cannot say when it has.
        proc.expect_log(re.compile(r"TLS certificate reload failed"))
        staying.send("/ping")  # the old connection is untouched
        assert staying.expect("* pong")
        assert peer_serial(address, context) == second
        staying.close()
    assert proc.returncode == 0
    assert "TLS certificate reloaded from" in proc.stderr
    assert "TLS certificate reload failed" in proc.stderr
    assert "still using the previous certificate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_certificate_that_cannot_be_loaded_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("nonsense\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatcore",
            "serve",
            "--listen",
            "tls://127.0.0.1:0",
            *("--tls-cert", str(bad)),
            "--tls-key",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"--tls-cert {bad} / --tls-key {bad}: cannot load them" in result.stderr


# -- the terminal client ------------------------------------------------------


def run_client(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatcore", "client", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
        env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )


def test_the_client_chats_over_tls_in_piped_mode(chat_server_factory, certs, clients):
    server = both_listeners(chat_server_factory, certs)
    watcher = plain_client(server, clients)
    _host, port = server.listener("tls").address
    result = run_client(
        f"tls://localhost:{port}", "--ca", str(certs.ca_file), "--nick", "secure", stdin=b"hi from TLS\n"
    )
    assert result.returncode == 0, result.stderr
    assert watcher.expect("<secure> hi from TLS")
    assert "<You> hi from TLS" in result.stdout
    assert "warning" not in result.stderr


def test_the_client_refuses_an_unknown_ca(chat_server_factory, certs):
    server = both_listeners(chat_server_factory, certs)
    port = server.listener("tls").address[1]
    result = run_client("--tls", "--port", str(port), stdin=b"never sent\n")
    assert result.returncode == 1
    assert "the server's certificate cannot be trusted" in result.stderr
    assert "--ca FILE" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_client_refuses_a_wrong_host_name(chat_server_factory, certs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    cert, key = issue(certs.ca, other, "chat.example")
    server = chat_server_factory("--listen", "tls://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key))
    port = server.listener("tls").address[1]
    result = run_client(f"tls://127.0.0.1:{port}", "--ca", str(certs.ca_file), stdin=b"never sent\n")
    assert result.returncode == 1
    assert "cannot be trusted" in result.stderr
    assert "a host name the certificate was issued for" in result.stderr


def test_the_client_connects_with_insecure_and_warns(chat_server_factory, certs, clients):
    server = both_listeners(chat_server_factory, certs)
    watcher = plain_client(server, clients)
    port = server.listener("tls").address[1]
    result = run_client(f"tls://127.0.0.1:{port}", "--insecure", "--nick", "reckless", stdin=b"unchecked\n")
    assert result.returncode == 0, result.stderr
    assert "warning: --insecure" in result.stderr
    assert watcher.expect("<reckless> unchecked")


def test_stop_cuts_handshakes_short(chat_server_factory, certs):
    """Connections that never finish their TLS handshake (a scanner, a
    plain-text client that waits for the server to speak) do not hold up
    stop(): it ends their handshakes instead of waiting out their timeouts."""
    server = chat_server_factory("--listen", "tls://127.0.0.1:0", *certs.args())
    silent = [socket.create_connection(server.listener("tls").address) for _ in range(3)]
    try:
        wait_for(lambda: len(server.serving._serving) == 3, timeout=TIMEOUT, message="three connections served")
        server.stop(timeout=1.0)
        assert server.serving._serving == set()  # each thread's last act: its sockets closed by then
        for sock in silent:
            sock.settimeout(TIMEOUT)
            assert sock.recv(1) == b""  # closed, not left hanging
    finally:
        for sock in silent:
            sock.close()
