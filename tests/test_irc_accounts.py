"""Accounts over IRC: CAP negotiation, SASL PLAIN and EXTERNAL (trustme
client certificates), PASS account:password, and a real client (the irc
library) logging in with SASL. Over real sockets."""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import irc.client
import pytest
import trustme
from test_irc import IRCClient

from chatcore.engine import gate
from chatcore.engine.server import ChatServer
from chatcore.testing import LineClient, wait_for

PASSWORD = "horse-battery-9"


@pytest.fixture(autouse=True)
def fast_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "SECRET_DELAY", 0.02)


@pytest.fixture
def made() -> Iterator[list[LineClient]]:
    clients: list[LineClient] = []
    yield clients
    for client in clients:
        client.close()


def start(factory, tmp_path: Path, *args: str, plugins: str = "irc,accounts") -> ChatServer:  # type: ignore[no-untyped-def]
    listen = ["--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0"]
    return factory("--plugins", plugins, "--state-db", str(tmp_path / "state.db"), *listen, *args)


def registered_on_native(server: ChatServer, made: list[LineClient], nick: str) -> LineClient:
    """``nick`` registered as an account from the native protocol, and left logged in."""
    client = LineClient(server.listener("tcp").address)
    made.append(client)
    client.sync()
    client.send(f"/nick {nick}")
    client.expect(f"* you are now known as {nick}")
    client.send(f"/register {PASSWORD}")
    client.expect(lambda line: line.startswith(f"* registered the account {nick}"))
    return client


def irc_client(server: ChatServer, made: list[LineClient], scheme: str = "irc", **kwargs) -> IRCClient:  # type: ignore[no-untyped-def]
    client = IRCClient(server.listener(scheme).address, **kwargs)
    made.append(client)
    return client


def plain(account: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{account}\0{password}".encode()).decode()


def offered(line: str) -> list[str]:
    """The capabilities of a ``CAP LS`` line."""
    return line.partition(" :")[2].split()


def test_cap_ls_offers_sasl_only_with_accounts(chat_server_factory, tmp_path, made):
    without = start(chat_server_factory, tmp_path, plugins="irc")
    client = irc_client(without, made)
    client.send("CAP LS 302")
    assert "sasl" not in offered(client.expect(re.compile("^:chatcore CAP \\* LS :")))
    client.send("CAP REQ :sasl")
    client.expect(":chatcore CAP * NAK :sasl")

    server = start(chat_server_factory, tmp_path / "..", "--state-db", str(tmp_path / "with.db"))
    client = irc_client(server, made)
    client.send("CAP LS 302")
    assert "sasl=PLAIN,EXTERNAL" in offered(client.expect(re.compile("^:chatcore CAP \\* LS :")))
    client.send("CAP LS")
    assert "sasl" in offered(client.expect(re.compile("^:chatcore CAP \\* LS :")))
    client.send("CAP REQ :sasl unknown-cap")  # all or nothing
    client.expect(":chatcore CAP * NAK :sasl unknown-cap")
    client.send("CAP LIST")
    client.expect(":chatcore CAP * LIST :cap-notify")  # CAP LS 302 enables it
    client.send("CAP REQ :sasl")
    client.expect(":chatcore CAP * ACK :sasl")
    client.send("CAP LIST")
    client.expect(":chatcore CAP * LIST :cap-notify sasl")
    # Registration waits for CAP END.
    client.send("NICK carol")
    client.send("USER carol 0 * :Carol")
    client.send("PING :held")
    client.expect(":chatcore PONG chatcore :held")
    assert not any(" 001 " in line for line in client.received)
    client.send("CAP END")
    client.expect(" 001 carol ")


def test_sasl_plain_logs_in_an_account_registered_on_native(chat_server_factory, tmp_path, made):
    server = start(chat_server_factory, tmp_path, "--nick-grace", "0")
    native = registered_on_native(server, made, "alice")
    native.send("/quit")
    native.wait_closed()
    # The connection closes before the server lets go of the nick.
    wait_for(lambda: server.registry.find("alice") is None, message="alice's nick given up")

    client = irc_client(server, made)
    client.send("CAP LS 302")
    client.send("NICK alice")
    client.send("USER alice 0 * :Alice")
    client.send("CAP REQ :sasl")
    client.expect(":chatcore CAP * ACK :sasl")
    client.send("AUTHENTICATE PLAIN")
    client.expect("AUTHENTICATE +")
    client.send(f"AUTHENTICATE {plain('alice', PASSWORD)}")
    client.expect(":chatcore 900 * alice!alice@chatcore alice :You are now logged in as alice")
    client.expect(":chatcore 903 * :SASL authentication successful")
    client.send("CAP END")
    client.expect(" 001 alice ")
    client.sync()
    assert server.registry.find("alice").account == "alice"
    # Logged in before registering: the nick is its own, never renamed (grace 0).
    client.send("AUTHENTICATE PLAIN")
    client.expect(":chatcore 907 alice :You have already authenticated using SASL")
    client.sync()
    assert not any("renamed" in line or " NICK " in line for line in client.received)


def test_sasl_failures_are_numerics_and_lose_nothing(chat_server_factory, tmp_path, made):
    server = start(chat_server_factory, tmp_path)
    registered_on_native(server, made, "alice")
    client = irc_client(server, made)
    client.send("AUTHENTICATE PLAIN")
    client.expect(":chatcore 904 * :SASL authentication failed: request the sasl capability first (CAP REQ :sasl)")
    client.send("CAP REQ :sasl")
    client.expect("ACK")
    client.send("AUTHENTICATE SCRAM-SHA-256")
    client.expect(":chatcore 908 * PLAIN,EXTERNAL :are available SASL mechanisms")
    client.expect(":chatcore 904 * :SASL authentication failed: unknown mechanism SCRAM-SHA-256")
    client.send("AUTHENTICATE PLAIN")
    client.expect("AUTHENTICATE +")
    client.send("AUTHENTICATE *")
    client.expect(":chatcore 906 * :SASL authentication aborted")
    client.send("AUTHENTICATE PLAIN")
    client.expect("AUTHENTICATE +")
    client.send(f"AUTHENTICATE {plain('alice', 'wrong-password')}")
    client.expect(":chatcore 904 * :SASL authentication failed: wrong account name or password")
    client.send("AUTHENTICATE PLAIN")
    client.expect("AUTHENTICATE +")
    for _ in range(11):
        client.send("AUTHENTICATE " + "A" * 400)
    client.expect(":chatcore 905 * :SASL message too long")
    client.send("AUTHENTICATE PLAIN")
    client.expect("AUTHENTICATE +")
    client.send(f"AUTHENTICATE {plain('alice', PASSWORD, authzid='bob')}")
    client.expect(":chatcore 904 * :SASL authentication failed: logging in as another account is not supported")
    # After all that, the right password still works, and registration goes on.
    client.send("AUTHENTICATE PLAIN")
    client.expect("AUTHENTICATE +")
    client.send(f"AUTHENTICATE {plain('ALICE', PASSWORD)}")
    client.expect(" 903 ")
    client.send("NICK ally")
    client.send("USER ally 0 * :Ally")
    client.send("CAP END")
    client.expect(" 001 ally ")
    assert server.registry.find("ally").account == "alice"


def test_pass_account_password_as_ergo_allows(chat_server_factory, tmp_path, made):
    server = start(chat_server_factory, tmp_path)
    registered_on_native(server, made, "alice")
    client = irc_client(server, made)
    client.send(f"PASS alice:{PASSWORD}")
    client.send("NICK ally")
    client.send("USER ally 0 * :Ally")
    client.expect(":chatcore 900 * ally!ally@chatcore alice :You are now logged in as alice")
    client.expect(" 001 ally ")
    assert server.registry.find("ally").account == "alice"
    client.send("WHOIS ally")
    client.expect(":chatcore 330 ally ally alice :is logged in as")
    wrong = irc_client(server, made)
    wrong.send("PASS alice:wrong-password")
    wrong.send("NICK wrong")
    wrong.send("USER wrong 0 * :Wrong")
    wrong.expect(":chatcore 904 * :SASL authentication failed: wrong account name or password")
    wrong.expect(" 001 wrong ")  # in, as a guest would be: nothing lost
    assert server.registry.find("wrong").account == ""


@pytest.fixture
def tls_setup(tmp_path: Path) -> tuple[trustme.CA, list[str]]:
    """A CA for the server's certificate and for clients' certificates, and the server's TLS options."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, client_ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "clients-ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    client_ca.write_bytes(ca.cert_pem.bytes())
    return ca, ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(client_ca)]


def client_context(ca: trustme.CA, name: str | None) -> tuple[ssl.SSLContext, str]:
    """A context trusting the server, with a client certificate for ``name``
    (None: none), and that certificate's SHA-256 fingerprint."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if name is None:
        return context, ""
    leaf = ca.issue_cert(f"{name}@example.org")
    leaf.configure_cert(context)
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode("ascii"))
    return context, hashlib.sha256(der).hexdigest()


def test_sasl_external_with_a_registered_client_certificate(chat_server_factory, tmp_path, made, tls_setup):
    ca, tls_args = tls_setup
    server = start(chat_server_factory, tmp_path, "--listen", "ircs://127.0.0.1:0", *tls_args)
    native = registered_on_native(server, made, "alice")
    context, fingerprint = client_context(ca, "alice")
    native.send(f"/certfp add {fingerprint}")
    native.expect("* 1 certificate now log in to alice")

    client = irc_client(server, made, "ircs", tls=context)
    client.send("CAP REQ :sasl")
    client.expect("ACK")
    client.send("AUTHENTICATE EXTERNAL")
    client.expect("AUTHENTICATE +")
    client.send("AUTHENTICATE +")
    client.expect(":chatcore 900 * *!*@chatcore alice :You are now logged in as alice")
    client.expect(" 903 ")
    client.send("NICK alice2")
    client.send("USER alice 0 * :Alice")
    client.send("CAP END")
    client.expect(" 001 alice2 ")
    assert server.registry.find("alice2").account == "alice"

    # Another certificate from the same CA logs in to nobody; no certificate neither.
    for name in ("mallory", None):
        other_context, _ = client_context(ca, name)
        other = irc_client(server, made, "ircs", tls=other_context)
        other.send("CAP REQ :sasl")
        other.expect("ACK")
        other.send("AUTHENTICATE EXTERNAL")
        other.expect("AUTHENTICATE +")
        other.send("AUTHENTICATE +")
        other.expect(re.compile(" 904 \\* :SASL authentication failed: "))


@pytest.mark.slow
def test_the_irc_library_logs_in_with_sasl(chat_server_factory, tmp_path, made):
    server = start(chat_server_factory, tmp_path, "--nick-grace", "0")
    registered_on_native(server, made, "alice").close()
    reactor = irc.client.Reactor()
    events: list[irc.client.Event] = []
    reactor.add_global_handler("all_events", lambda _connection, event: events.append(event))
    host, port = server.listener("irc").address
    connection = reactor.server().connect(host, port, "bot", password=PASSWORD, sasl_login="alice")
    try:
        deadline = time.monotonic() + 10
        while not any(event.type == "welcome" for event in events):
            assert time.monotonic() < deadline, [(e.type, e.arguments) for e in events]
            reactor.process_once(0.05)
        kinds = [event.type for event in events]
        assert "saslsuccess" in kinds
        assert kinds.index("saslsuccess") < kinds.index("welcome")
        assert server.registry.find("bot").account == "alice"
    finally:
        connection.close()


def test_a_registration_refused_over_irc_is_answered(chat_server_factory, tmp_path, made):
    """What irctest waited for in vain: REGISTER with a password shorter than
    --min-password-length gets a NOTICE saying why, and one long enough
    registers (irctest's 7-character passwords with the option at 7)."""
    server = start(chat_server_factory, tmp_path, "--min-password-length", "7")
    client = irc_client(server, made)
    client.send("NICK foo")
    client.send("USER foo 0 * :Foo")
    client.expect(" 001 foo ")
    client.send("REGISTER sesame")
    client.expect(":chatcore NOTICE foo :error: a password needs at least 7 characters; nothing was registered")
    client.send("REGISTER sesame1")
    client.expect(re.compile(r"NOTICE foo :registered the account foo;"))
