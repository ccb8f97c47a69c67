"""The metrics plugin: a real server's /metrics and /healthz over HTTP,
checked against what the clients did."""

from __future__ import annotations

import math
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import trustme
from prometheus_client.parser import text_string_to_metric_families
from test_tls import issue
from test_web import trickle_headers

from chatcore import hookimpl
from chatcore.engine.server import ChatServer
from chatcore.engine.stats import LATENCY_BUCKETS
from chatcore.plugins import metrics as metrics_module
from chatcore.testing import LineClient, wait_for


def fetch(server: ChatServer, path: str) -> tuple[int, str]:
    url = server.config.data["metrics"].url + path
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(server: ChatServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as ``{(name, sorted labels): value}``."""
    status, text = fetch(server, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def received_bytes(client: LineClient) -> int:
    return sum(len(line.encode()) + 1 for line in client.received)


class FailsOnShout:
    """A filter that raises on messages in capitals."""

    @hookimpl
    def chatcore_message(self, message):
        if message.text.isupper():
            raise RuntimeError("too loud")


class HealthDuringShutdown:
    """Asks /healthz while the server is disconnecting everyone."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    @hookimpl
    def chatcore_client_left(self, client, reason):
        if reason == "server shutting down":
            self.statuses.append(fetch(client.server, "/healthz")[0])


def test_metrics_count_what_the_clients_did(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "metrics", "--metrics-port", "0")
    assert fetch(server, "/healthz") == (200, "ok\n")
    before = scrape(server)
    assert value(before, "chatcore_connected_clients", scheme="tcp") == 0
    assert value(before, "chatcore_messages_received_total") == 0

    alice, bob, carol = chat_client(server), chat_client(server), chat_client(server)
    joins = 3  # bob's join reached alice; carol's, alice and bob
    for n in range(5):
        alice.send(f"hello {n}")
        bob.expect(f"<guest-1> hello {n}")
        carol.expect(f"<guest-1> hello {n}")

    def last_message_counted():
        # Counted by alice's thread just after it queued the line, so a
        # recipient can read it a moment before the count is there.
        samples = scrape(server)
        return samples if value(samples, "chatcore_message_latency_seconds_count") == 5 else None

    samples = wait_for(last_message_counted, message="all five messages counted")
    assert value(samples, "chatcore_connected_clients", scheme="tcp") == 3
    assert value(samples, "chatcore_rooms") == 1
    assert value(samples, "chatcore_messages_received_total") == 5
    assert value(samples, "chatcore_deliveries_total") == joins + 5 * 2
    assert value(samples, "chatcore_message_latency_seconds_count") == 5
    assert 0 < value(samples, "chatcore_message_latency_seconds_sum") < 5
    # The buckets resolve microseconds (Prometheus' defaults start at 5 ms)
    # and count cumulatively. A message queued to two clients on loopback
    # takes well under 5 ms on a quiet machine, but a thread of a busy one
    # can wait longer than that for a CPU: only a second is asserted.
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "chatcore_message_latency_seconds_bucket"
    )
    assert [bound for bound, _ in buckets] == [*LATENCY_BUCKETS, math.inf]
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)
    assert value(samples, "chatcore_message_latency_seconds_bucket", le="1.0") == 5

    assert value(samples, "chatcore_room_memberships") == 3
    bob.send("/join other")  # bob is in both rooms
    bob.expect(re.compile(r"^\* you are now in other"))
    samples = scrape(server)
    assert value(samples, "chatcore_rooms") == 2
    assert value(samples, "chatcore_room_memberships") == 4


def test_metrics_disconnects_refusals_failures_and_bytes(chat_server_factory, chat_client):
    health = HealthDuringShutdown()
    server = chat_server_factory(
        "--plugins",
        "filters,metrics",
        "--metrics-port",
        "0",
        "--max-clients",
        "3",
        "--flood-rate",
        "0.001",
        "--flood-burst",
        "1",
        "--flood-disconnect",
        "2",
        plugins=[FailsOnShout(), health],
    )
    alice, bob, flooder = chat_client(server), chat_client(server), chat_client(server)

    # A fourth client is refused: the server is full.
    extra = LineClient(server.address)
    assert extra.expect("! server full, try again later")
    extra.close()

    # A plugin that raises: logged and counted, the message still goes out.
    alice.send("HELLO")
    bob.expect("<guest-1> HELLO")

    # The flooder: one message passes, the next two are dropped, and the
    # second drop disconnects it.
    for n in range(3):
        flooder.send(f"spam {n}")
    flooder.wait_closed()
    bob.expect("* guest-3 left (flooding)")

    bob.send("/quit")
    bob.wait_closed()
    alice.expect("* guest-2 left")
    alice.sync()

    def settled():
        samples = scrape(server)
        # Every byte the writer sent, each client read: alice is still
        # connected and has read up to the pong.
        sent = received_bytes(alice) + received_bytes(bob) + received_bytes(flooder)
        # A connection is counted until its thread ends, a moment after the
        # others were told of the leave.
        connected = value(samples, "chatcore_connected_clients", scheme="tcp")
        return samples if value(samples, "chatcore_sent_bytes_total") == sent and connected == 1 else None

    samples = wait_for(settled, message="sent bytes to match what the clients read, and one client left")
    assert value(samples, "chatcore_disconnects_total", reason="flood") == 1
    assert value(samples, "chatcore_disconnects_total", reason="quit") == 1
    assert value(samples, "chatcore_disconnects_total", reason="slow_consumer") == 0
    assert value(samples, "chatcore_refused_connections_total", reason="full") == 1
    assert value(samples, "chatcore_refused_connections_total", reason="plugin") == 0
    assert value(samples, "chatcore_accepted_connections_total") == 3
    assert value(samples, "chatcore_plugin_failures_total", plugin="FailsOnShout") == 1
    assert value(samples, "chatcore_plugin_failures_total", plugin="filters") == 0
    assert value(samples, "chatcore_connected_clients", scheme="tcp") == 1
    # Alice's HELLO and the flooder's three spams, and bob's /quit is a command.
    assert value(samples, "chatcore_messages_received_total") == 4

    server.stop(timeout=1.0)
    assert health.statuses == [503]  # alice left as the server stopped: no longer accepting
    try:
        fetch(server, "/healthz")
    except urllib.error.URLError:
        pass
    else:
        raise AssertionError("the metrics endpoint is still up after the server stopped")


def test_unknown_path_is_404(chat_server_factory):
    server = chat_server_factory("--plugins", "metrics", "--metrics-port", "0")
    status, text = fetch(server, "/nope")
    assert status == 404
    assert "/metrics" in text


def test_without_prometheus_client_the_plugin_says_what_to_install():
    hide = "import sys; sys.modules['prometheus_client'] = None; from chatcore.cli import main; "
    result = subprocess.run(
        [sys.executable, "-c", hide + "sys.exit(main(['serve', '--port', '0', '--plugins', 'metrics']))"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "chatcore: error: the metrics plugin needs the prometheus_client library: pip install 'chatcore[metrics]'\n"
    )


def test_metrics_port_in_use_fails_the_start_clearly():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = [sys.executable, "-m", "chatcore", "serve", "--port", "0"]
        result = subprocess.run(
            [*serve, "--plugins", "metrics", "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for metrics" in result.stderr
    assert "pick another --metrics-port" in result.stderr


def test_connected_clients_by_scheme_and_failed_tls_handshakes(chat_server_factory, tmp_path):
    ca = trustme.CA()
    cert, key = issue(ca, tmp_path, "127.0.0.1")
    server = chat_server_factory(
        "--plugins",
        "metrics",
        "--metrics-port",
        "0",
        "--listen",
        "tcp://127.0.0.1:0",
        "--listen",
        "tls://127.0.0.1:0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    plain = LineClient(server.listener("tcp").address)
    secure = LineClient(server.listener("tls").address, tls=context)
    for client in (plain, secure):
        client.sync()
    # A plain-text client on the TLS port fails the handshake.
    with socket.create_connection(server.listener("tls").address, timeout=5) as wrong:
        wrong.sendall(b"hello\n")
        wrong.settimeout(5)
        while wrong.recv(4096):
            pass

    def handshake_counted():
        samples = scrape(server)
        return samples if value(samples, "chatcore_refused_connections_total", reason="tls_handshake") else None

    samples = wait_for(handshake_counted, message="the failed handshake counted")
    assert value(samples, "chatcore_connected_clients", scheme="tcp") == 1
    assert value(samples, "chatcore_connected_clients", scheme="tls") == 1
    assert value(samples, "chatcore_refused_connections_total", reason="tls_handshake") == 1
    # TLS records are bytes sent too: more than the plain text the client read.
    secure_text = sum(len(line.encode()) + 1 for line in secure.received)
    assert value(samples, "chatcore_sent_bytes_total") > received_bytes(plain) + secure_text
    plain.close()
    secure.close()


def test_kicks_bans_and_idle_connections_are_counted_by_cause(chat_server_factory, chat_client, tmp_path):
    opers = tmp_path / "opers"
    opers.write_text("boss hunter2\n")
    server = chat_server_factory("--plugins", "metrics", "--metrics-port", "0", "--opers-file", str(opers))
    boss, kicked, banned = (chat_client(server) for _ in range(3))
    boss.send("/oper boss hunter2")
    boss.expect("* you are now an operator (boss)")
    boss.send("/kill guest-2 enough")
    kicked.wait_closed()
    boss.send("/ban guest-3 1m spam")  # its address: here every client's but the operator's
    banned.wait_closed()

    def kick_and_ban_counted():
        # Counted when each client's thread reports its leave, a moment after the close.
        samples = scrape(server)
        counts = [value(samples, "chatcore_disconnects_total", reason=cause) for cause in ("kick", "ban")]
        return counts if counts == [1, 1] else None

    wait_for(kick_and_ban_counted, message="the kick and the ban counted, once each")

    # A state database of its own: the first server's ban of 127.0.0.1 is kept in its database.
    quiet = chat_server_factory(
        "--plugins", "metrics", "--metrics-port", "0", "--idle-timeout", "1", "--state-db", str(tmp_path / "quiet.db")
    )  # fmt: skip
    idler = chat_client(quiet)
    assert idler.wait_closed(timeout=10)[-1].startswith("! disconnected: idle for 1 seconds")

    def idle_counted():
        samples = scrape(quiet)
        return samples if value(samples, "chatcore_disconnects_total", reason="idle") == 1 else None

    wait_for(idle_counted, message="the idle disconnect counted")


def test_a_request_head_that_trickles_in_gets_408_and_frees_its_thread(chat_server_factory, monkeypatch):
    monkeypatch.setattr(metrics_module, "HEADER_TIMEOUT", 0.5, raising=False)
    server = chat_server_factory("--plugins", "metrics", "--metrics-port", "0")
    address = server.config.data["metrics"].address
    started = time.monotonic()
    assert trickle_headers(address).startswith(b"HTTP/1.0 408 ")
    assert time.monotonic() - started < 3
    wait_for(lambda: not [t for t in threading.enumerate() if "process_request_thread" in t.name])
    assert fetch(server, "/healthz") == (200, "ok\n")
