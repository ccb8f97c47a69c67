"""Per-address connection limits, over real sockets from 127.0.0.2 and 127.0.0.3."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
import time

import pytest
import trustme

from chatcore import hookimpl
from chatcore.engine import serving
from chatcore.engine.limits import (
    ConnectionLimits,
    FailureCounter,
    TokenBucket,
    address_key,
    parse_address,
    parse_networks,
)
from chatcore.testing import LineClient, ServerProcess, wait_for
from chatcore.transports import Scheme
from chatcore.wire import Protocol
from chatcore.wire.native import NATIVE


class Limbo(Protocol):
    def connection_made(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass


@pytest.fixture
def connect():
    clients: list[LineClient] = []

    def make(server, source: str = "127.0.0.2", *, sync: bool = False) -> LineClient:
        client = LineClient(server.address, source=source)
        clients.append(client)
        if sync:  # welcomed before the next connects: guest names in this order
            client.sync()
        return client

    yield make
    for client in clients:
        client.close()


def test_one_address_may_hold_only_so_many_connections(chat_server_factory, connect):
    server = chat_server_factory("--limit-exempt", "", "--max-per-address", "2")
    first, second = connect(server), connect(server)
    first.sync()
    second.sync()
    third = connect(server)
    assert third.wait_closed() == ["! too many connections from your address (the limit is 2); close one and try again"]
    # Another host is not affected.
    other = connect(server, source="127.0.0.3")
    other.sync()
    # A slot freed is a slot again, as soon as the server has seen the close.
    first.close()
    wait_for(lambda: server.limits.open_count("127.0.0.2") == 1, message="the closed connection released")
    connect(server).sync()


def test_new_connections_per_window_are_limited(chat_server_factory, connect):
    server = chat_server_factory("--limit-exempt", "", "--max-new-per-address", "3", "--new-window", "60")
    for _ in range(3):
        client = connect(server)
        client.sync()
        client.close()
    refused = connect(server)
    lines = refused.wait_closed()
    assert len(lines) == 1
    assert lines[0].startswith("! too many new connections from your address; try again in ")
    connect(server, source="127.0.0.3").sync()


def test_loopback_is_exempt_by_default(chat_server_factory, connect):
    server = chat_server_factory("--max-per-address", "2")
    clients = [connect(server) for _ in range(5)]
    for client in clients:
        client.sync()
    assert server.limits.total_open == 0  # exempt connections are not counted


def test_every_connection_is_released_exactly_once_however_it_ends(chat_server_factory, connect):
    server = chat_server_factory("--limit-exempt", "", "--max-per-address", "4", "--max-new-per-address", "0")
    for round_ in range(30):
        client = connect(server)
        if round_ % 3 == 0:
            client.sync()
            client.send("/quit")
            client.wait_closed()
        elif round_ % 3 == 1:
            # A reset: SO_LINGER 0 makes close() send RST.
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.send("hello")
        client.close()
        # One at a time: under load a server thread may release its count a
        # moment after the client closed, and five at once would hit the limit.
        wait_for(
            lambda n=round_: server.stats.accepted > n and server.limits.total_open == 0,
            message="the connection released",
        )
    wait_for(lambda: server.limits.total_open == 0, message="every connection released")
    held = [connect(server) for _ in range(4)]
    for client in held:
        client.sync()
    for _ in range(2):
        assert connect(server).wait_closed()[0].startswith("! too many connections")
    for client in held:
        client.close()
    wait_for(lambda: server.limits.total_open == 0, message="every connection released")
    assert not server.connections
    connect(server).sync()  # and the address can connect again


def test_a_bad_exempt_network_is_a_usage_error():
    proc = ServerProcess("--limit-exempt", "10.0.0.0/33")
    with pytest.raises(AssertionError, match="did not start"):
        proc.start()
    assert proc.returncode == 2
    assert "--limit-exempt" in proc.stderr


def test_ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    limits = ConnectionLimits(max_per_address=1, exempt=parse_networks("::1/128"))
    assert limits.acquire("2001:db8::1") is None
    assert limits.acquire("2001:db8::2") is not None  # the same /64
    assert limits.acquire("::1") is None
    assert limits.acquire("::1") is None  # exempt
    limits.release("2001:db8::1")
    assert limits.acquire("2001:db8::2") is None


def test_addresses_parse_as_the_ipaddress_module_parses_them():
    # The limits parse with socket.inet_pton (no Python called back from
    # C on every connection's thread); the results must be ipaddress's.
    for host in ("192.0.2.7", "::1", "2001:db8::1", "fe80::1:2", "2001:db8:0:0:1::1", "::", "64:ff9b::192.0.2.1"):
        assert parse_address(host) == ipaddress.ip_address(host)
    assert parse_address("::ffff:192.0.2.7") == ipaddress.IPv4Address("192.0.2.7")
    assert parse_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert address_key("2001:db8:0:1::") == "2001:db8:0:1::/64"
    assert address_key("::2") == "::/64"
    for host in ("", "localhost", "1.2.3", "1.2.3.256", "::g", "01.2.3.4"):
        with pytest.raises(ValueError, match="is not an IP address"):
            parse_address(host)
    limits = ConnectionLimits(exempt=parse_networks("127.0.0.0/8, ::1, 10.1.0.0/16"))
    assert limits.is_exempt("127.200.0.1")
    assert limits.is_exempt("::ffff:127.0.0.1")  # loopback through a dual-stack listener
    assert limits.is_exempt("::1")
    assert limits.is_exempt("10.1.255.255")
    assert not limits.is_exempt("10.2.0.1")
    assert not limits.is_exempt("::2")
    assert not limits.is_exempt("not-an-address")


def test_the_window_forgets_old_attempts():
    limits = ConnectionLimits(max_per_address=0, max_new=2, window=10)
    assert limits.acquire("192.0.2.1", now=0) is None
    assert limits.acquire("192.0.2.1", now=1) is None
    assert limits.acquire("192.0.2.1", now=2) is not None
    assert limits.acquire("192.0.2.1", now=10.5) is None  # the first attempt is 10 s old


def test_token_bucket_delays_only_past_the_burst():
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.delay(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.delay(0) == pytest.approx(0.5)
    assert bucket.delay(0) == pytest.approx(1.0)
    assert bucket.delay(10) == 0


# -- deadlines and flood control ------------------------------------------------


def test_idle_timeout_disconnects_a_silent_connection_and_spares_a_talking_one(chat_server_factory, connect):
    server = chat_server_factory("--idle-timeout", "0.6")
    silent = connect(server)
    started = time.monotonic()  # before its last line, the server's idle clock starts later
    silent.sync()
    talking = connect(server, source="127.0.0.3")
    talking.sync()
    while not silent.eof and time.monotonic() - started < 5:
        talking.sync()  # speaks every 0.1 s, so it stays
        try:
            silent.wait_closed(timeout=0.1)
        except AssertionError:
            pass
    reason = "idle for 0.6 seconds (this server's --idle-timeout); send /ping now and then to stay"
    assert silent.received[-1] == f"! disconnected: {reason}"
    assert time.monotonic() - started > 0.6
    # The others see the leave once silent's thread has noticed the close.
    left = f"* guest-1 left ({reason})"
    wait_for(lambda: talking.sync() is not None and left in talking.received, message="the leave")


def test_idle_timeout_is_off_by_default(chat_server_factory):
    server = chat_server_factory()
    assert server.idle_timeout == 0


def test_a_connection_never_admitted_is_closed_at_the_login_deadline(chat_server_factory, connect):
    class NeverAdmit:
        """A protocol that never lets the client in (as a password not given)."""

        @hookimpl
        def chatcore_schemes(self) -> list[Scheme]:
            return [Scheme("limbo", NATIVE, Limbo, default_port=0, description="never admits")]

    server = chat_server_factory("--listen", "limbo://127.0.0.1:0", "--login-timeout", "0.5", plugins=[NeverAdmit()])
    client = connect(server)
    assert client.wait_closed() == ["! disconnected: not logged in within 0.5 seconds; connect and log in again"]


def test_flood_is_paced_not_dropped_and_others_are_not_slowed(chat_server_factory, connect):
    server = chat_server_factory("--limit-exempt", "", "--line-rate", "20", "--line-burst", "5")
    flooder = connect(server, sync=True)
    reader = connect(server, source="127.0.0.3", sync=True)
    bystander = connect(server, sync=True)
    started = time.monotonic()
    flooder.send_raw(b"".join(b"line %d\n" % n for n in range(25)))
    bystander.send("still here")
    reader.expect("<guest-1> line 24")
    # Not stuck behind the flood: it arrived while the flood was still paced.
    assert reader.received.index("<guest-3> still here") < reader.received.index("<guest-1> line 24")
    flood = [line for line in reader.received if line.startswith("<guest-1>")]
    assert flood == [f"<guest-1> line {n}" for n in range(25)]  # every line, in order
    elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 3, elapsed  # 20 lines past the burst at 20 a second


def test_a_paste_within_the_burst_is_not_delayed(chat_server_factory, connect):
    # A line past the burst would wait 10 s, twice the timeout of expect().
    server = chat_server_factory("--limit-exempt", "", "--line-rate", "0.1", "--line-burst", "5")
    paster, reader = connect(server, sync=True), connect(server, source="127.0.0.3", sync=True)
    paster.send_raw(b"one\ntwo\nthree\n")
    for word in ("one", "two", "three"):
        reader.expect(f"<guest-1> {word}")


def test_a_flooder_that_leaves_stops_speaking_at_once(chat_server_factory, connect):
    server = chat_server_factory("--limit-exempt", "", "--line-rate", "2", "--line-burst", "1")
    flooder, reader = connect(server, sync=True), connect(server, source="127.0.0.3", sync=True)
    flooder.send_raw(b"".join(b"flood %d\n" % n for n in range(100)))  # 50 s of paced lines
    reader.expect("<guest-1> flood 1")
    flooder.close()
    wait_for(lambda: server.limits.open_count("127.0.0.2") == 0, timeout=2, message="the flooder's slot released")
    reader.expect("* guest-1 left")
    assert sum(line.startswith("<guest-1> flood") for line in reader.received) < 10


def test_accepted_sockets_have_tcp_keepalive(chat_server_factory, connect):
    server = chat_server_factory()
    connect(server).sync()
    (client,) = server.all_connections()
    sock = client.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == serving.KEEPALIVE_IDLE
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == serving.KEEPALIVE_INTERVAL
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == serving.KEEPALIVE_COUNT


def test_tls_connections_are_counted_and_refused_in_their_wire_format(chat_server_factory, tmp_path):
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    context = ssl.create_default_context()
    ca.configure_trust(context)
    server = chat_server_factory(
        "--listen", "tls://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
        "--limit-exempt", "", "--max-per-address", "1", "--max-new-per-address", "0",
    )  # fmt: skip
    for _ in range(5):  # plain text on a TLS port: the handshake fails, the slot is freed
        plain = LineClient(server.address, source="127.0.0.2")
        plain.send("hello?")
        plain.wait_closed()
        plain.close()
    wait_for(lambda: server.limits.total_open == 0, message="failed handshakes released")
    held = LineClient(server.address, tls=context, source="127.0.0.2")
    held.sync()
    refused = LineClient(server.address, tls=context, source="127.0.0.2")
    limit = "! too many connections from your address (the limit is 1); close one and try again"
    assert refused.wait_closed() == [limit]
    refused.close()
    held.close()
    wait_for(lambda: server.limits.total_open == 0, message="every TLS connection released")


def test_failures_are_counted_per_address_within_the_window():
    counter = FailureCounter(window=10, max_addresses=2)
    assert counter.record("192.0.2.1", now=0) == 1
    assert counter.record("192.0.2.1", now=1) == 2
    assert counter.record("2001:db8::1", now=1) == 1
    assert counter.record("2001:db8::2", now=2) == 2  # the same /64
    assert counter.record("192.0.2.1", now=10.5) == 2  # the first is 10 s old
    assert counter.record("198.51.100.1", now=11) == 1  # a third address: the oldest (the /64) goes
    assert counter.record("2001:db8::3", now=12) == 1


def test_ipv4_mapped_networks_are_the_ipv4_networks_they_are():
    # Peers are compared as IPv4 (parse_address): an exemption written the
    # IPv4-mapped way must mean the same hosts, or it exempts nobody.
    assert parse_networks("::ffff:10.0.0.0/104, ::ffff:192.0.2.7") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert parse_networks("::ffff:0:0/95") == (ipaddress.ip_network("::fffe:0:0/95"),)  # wider than the mapped range
    limits = ConnectionLimits(exempt=parse_networks("::ffff:10.0.0.0/104"))
    assert limits.is_exempt("10.1.2.3")
    assert limits.is_exempt("::ffff:10.1.2.3")
    assert not limits.is_exempt("11.0.0.1")
