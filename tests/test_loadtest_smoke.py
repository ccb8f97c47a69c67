"""Smoke test of the Locust load test (loadtest/): a real server, Locust
headless against it, checked from Locust's own JSON report.

Both run as subprocesses: importing Locust would monkey-patch this process
with gevent. Locust needs Python 3.11+, so on 3.10 this file is not
collected (tests/conftest.py); on 3.11 and later a missing Locust is a
failure (install ``chatcore[loadtest]``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Any

import pytest
import trustme
from redis_support import RedisServer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from chatcore.testing import LineClient, ServerProcess, wait_for

LOADTEST_DIR = Path(__file__).resolve().parent.parent / "loadtest"
STARTUP_TIMEOUT = 15.0
# Runs are of a known size (--messages): they end when every message has
# arrived, in a few seconds. The -t cap only ends a run that went wrong (its
# counts are then short, and the test fails with the log).
RUN_TIME_CAP = "60s"
LOCUST_TIMEOUT = 90.0

pytestmark = pytest.mark.slow


def _read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@pytest.fixture
def server_port(tmp_path: Path) -> Iterator[int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatcore",
            "serve",
            "--port",
            "0",
            "--plugins",
            "welcome,logger",
            "--log-file",
            str(tmp_path / "events.jsonl"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        output = []
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"server did not say where it listens within {STARTUP_TIMEOUT}s: {''.join(output)}")
            output.append(line)
            match = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line)
            if match:
                break
        yield int(match.group(1))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def test_locust_chat_scenario_delivers_everything(server_port: int, tmp_path: Path) -> None:
    assert importlib.util.find_spec("locust") is not None, "Locust is not installed: pip install 'chatcore[loadtest]'"
    report = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOADTEST_DIR / "chat.py"),
            "--headless",
            "-u",
            "5",
            "-r",
            "5",
            "-t",
            RUN_TIME_CAP,
            "--host",
            f"tcp://127.0.0.1:{server_port}",
            "--message-rate",
            "10",
            "--messages",
            "30",
            # Weighted recording (one latency sample per 3 deliveries) must
            # still count every delivery.
            "--deliver-sample",
            "3",
            "--json-file",
            str(report),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=LOCUST_TIMEOUT,
        check=False,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    entries = {(e["method"], e["name"]): e for e in json.loads(report.with_suffix(".json").read_text())}
    failures = {key: e["num_failures"] for key, e in entries.items() if e["num_failures"]}
    assert failures == {}, log
    assert entries[("connect", "welcome")]["num_requests"] == 5
    assert entries[("join", "/join")]["num_requests"] == 5
    # 30 messages from each of 5 users, each to the 4 others.
    assert entries[("send", "message")]["num_requests"] == 150, log
    assert entries[("deliver", "message")]["num_requests"] == 150 * 4, log
    assert "every user has sent its 30 messages and they arrived: ending the run" in log
    assert not [key for key in entries if key[0] == "loss"], log
    assert re.search(
        r"chatcore: sent \d+ messages, \d+ deliveries .* lost 0, duplicated 0, reordered 0, corrupted 0", log
    )


# -- transports and several servers ------------------------------------------


@dataclass
class Certs:
    cert: Path
    key: Path
    ca_file: Path

    def args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(cert, key, ca_file)


#: Messages each sending user sends in a run_locust run.
MESSAGES = 10


def run_locust(
    tmp_path: Path,
    *args: str,
    users: int = 4,
    spawn_rate: int = 0,
    messages: int = MESSAGES,
    scenario: str = "chat.py",
) -> tuple[int, dict[Any, Any], str]:
    """Run the load test headless, each sending user sending ``messages``
    messages at 5 a second once all ``users`` are in (started
    ``spawn_rate`` a second, all at once by default); return its exit
    status, the JSON report's rows by (type, name) and its output."""
    assert importlib.util.find_spec("locust") is not None, "Locust is not installed: pip install 'chatcore[loadtest]'"
    report = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOADTEST_DIR / scenario),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(spawn_rate or users),
            "-t",
            RUN_TIME_CAP,
            "--message-rate",
            "5",
            "--messages",
            str(messages),
            "--json-file",
            str(report),
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=LOCUST_TIMEOUT,
        check=False,
    )
    path = report.with_suffix(".json")
    entries = {(e["method"], e["name"]): e for e in json.loads(path.read_text())} if path.exists() else {}
    return result.returncode, entries, result.stdout + result.stderr


def url(scheme: str, address: tuple[str, int]) -> str:
    return f"{scheme}://{address[0]}:{address[1]}"


def test_tls_host_verified_with_ca(certs: Certs, tmp_path: Path) -> None:
    with ServerProcess("--listen", "tls://127.0.0.1:0", *certs.args()) as server:
        code, entries, log = run_locust(
            tmp_path, "--host", url("tls", server.addresses["tls"]), "--ca", str(certs.ca_file)
        )
    assert code == 0, log
    assert entries[("connect", "welcome")]["num_requests"] == 4, log
    assert entries[("send", "message")]["num_requests"] == 4 * MESSAGES, log
    assert entries[("deliver", "message")]["num_requests"] == 4 * MESSAGES * 3, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log


def test_tls_unverified_server_is_refused_unless_insecure(certs: Certs, tmp_path: Path) -> None:
    with ServerProcess("--listen", "tls://127.0.0.1:0", *certs.args()) as server:
        host = url("tls", server.addresses["tls"])
        refused_code, refused, refused_log = run_locust(tmp_path, "--host", host, users=1)
        code, entries, log = run_locust(tmp_path, "--host", host, "--insecure", users=2)
    # The test CA is in no system store: every connect fails on verification.
    assert refused_code == 1, refused_log
    assert refused[("connect", "welcome")]["num_failures"] == 1, refused_log
    assert "CERTIFICATE_VERIFY_FAILED" in refused_log
    assert code == 0, log
    assert entries[("connect", "welcome")]["num_failures"] == 0, log
    assert entries[("deliver", "message")]["num_requests"] == 2 * MESSAGES, log


def test_messages_run_ends_when_everything_arrived_with_worker_processes(tmp_path: Path) -> None:
    """--messages over a master and two worker processes, users started
    over two seconds (several spawn messages per worker): the workers'
    users wait for each other through the master, and the master ends the
    run once both workers' messages have all arrived, with their last
    figures. (Started in steps, Locust 2.47's workers used to go missing:
    _common.compute_default_options_once.)"""
    with ServerProcess("--listen", "tcp://127.0.0.1:0") as server:
        code, entries, log = run_locust(
            tmp_path, "--host", url("tcp", server.address), "--processes", "2", "--html", "report.html",
            users=6, spawn_rate=3,
        )  # fmt: skip
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    assert entries[("connect", "welcome")]["num_requests"] == 6, log
    assert entries[("send", "message")]["num_requests"] == 6 * MESSAGES, log
    assert entries[("deliver", "message")]["num_requests"] == 6 * MESSAGES * 5, log
    assert f"every user has sent its {MESSAGES} messages and they arrived: ending the run" in log
    assert "failed to send heartbeat" not in log
    # The master keeps the charts' history, from its workers' figures.
    report = (tmp_path / "report.html").read_text(encoding="utf-8")
    start = report.index("window.chatcoreHistory = ") + len("window.chatcoreHistory = ")
    points = json.JSONDecoder().raw_decode(report, start)[0]["points"]
    assert points, report[start : start + 500]
    assert any(point["rate"] > 0 for point in points), points
    assert any(point["p50"] for point in points), points
    assert all(point["lost"] == point["duplicated"] == point["reordered"] == 0 for point in points), points


def test_chat_hosts_split_deliveries_by_server_pair(certs: Certs, tmp_path: Path) -> None:
    """One server listening on tcp:// and tls:// shares its rooms between
    the two, as a cluster's servers do: every user sees every other user's
    messages, and the rows say which way each delivery went."""
    with ServerProcess("--listen", "tcp://127.0.0.1:0", "--listen", "tls://127.0.0.1:0", *certs.args()) as server:
        tcp, tls = url("tcp", server.addresses["tcp"]), url("tls", server.addresses["tls"])
        code, entries, log = run_locust(tmp_path, "--chat-hosts", f"{tcp},{tls}", "--ca", str(certs.ca_file))
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    # Two users on each listener, all in one room: each message reaches the
    # other user on its own listener and both users on the other one.
    assert_pairs_delivered(entries, {tcp: 2, tls: 2}, log)
    assert ("deliver", "message") not in entries
    assert re.search(
        r"chatcore: sent \d+ messages, \d+ deliveries .* lost 0, duplicated 0, reordered 0, corrupted 0", log
    )


def test_chat_hosts_spread_users_over_separate_servers(tmp_path: Path) -> None:
    """Two servers on two loopback addresses share nothing: each user's
    messages reach only the users of its own server, and nothing is counted
    as lost for the other one."""
    with (
        ServerProcess("--listen", "tcp://127.0.0.1:0") as one,
        ServerProcess("--listen", "tcp://127.0.0.2:0") as two,
    ):
        first, second = url("tcp", one.address), url("tcp", two.address)
        code, entries, log = run_locust(tmp_path, "--chat-hosts", f"{first}, {second}")
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    for server in (first, second):  # two users on each server
        assert entries[("send", f"message {server}")]["num_requests"] == 2 * MESSAGES, log
        assert entries[("deliver", f"message {server} > {server}")]["num_requests"] == 2 * MESSAGES, log
    assert ("deliver", f"message {first} > {second}") not in entries
    assert ("deliver", f"message {second} > {first}") not in entries


SUMMARY = re.compile(r"chatcore: sent \d+ messages, \d+ deliveries .* lost 0, duplicated 0, reordered 0, corrupted 0")


def assert_pairs_delivered(entries: dict[Any, Any], users: dict[str, int], log: str) -> None:
    """``users[url]`` sending users on each server URL, all in one room, each
    sending MESSAGES messages: each message sent through one server reaches
    every other user, on its own server and on the others, exactly once."""
    for origin, senders in users.items():
        sent = entries[("send", f"message {origin}")]["num_requests"]
        assert sent == senders * MESSAGES, (origin, sent, log)
        for receiver, receivers in users.items():
            expected = sent * (receivers - 1 if origin == receiver else receivers)
            delivered = entries.get(("deliver", f"message {origin} > {receiver}"), {}).get("num_requests", 0)
            assert delivered == expected, (origin, receiver, delivered, expected, log)


@pytest.mark.parametrize("schemes", [("irc", "ircs"), ("ws", "wss")], ids=["irc+ircs", "ws+wss"])
def test_transports_count_across_protocols(certs: Certs, tmp_path: Path, schemes: tuple[str, str]) -> None:
    """Two users on a transport, two on its TLS variant and two native ones,
    in one room: each counts what the others sent, with no loss, and the
    set-up rows say which steps each protocol took."""
    with ServerProcess(
        "--plugins", "irc,web",
        "--listen", "tcp://127.0.0.1:0",
        *(arg for scheme in schemes for arg in ("--listen", f"{scheme}://127.0.0.1:0")),
        *certs.args(),
    ) as server:  # fmt: skip
        urls = [url(scheme, server.addresses[scheme]) for scheme in ("tcp", *schemes)]
        code, entries, log = run_locust(tmp_path, "--chat-hosts", ",".join(urls), "--ca", str(certs.ca_file), users=6)
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    for scheme in schemes:
        assert entries[("connect", f"welcome {scheme}://")]["num_requests"] == 2, log
        assert entries[("join", f"/join {scheme}://")]["num_requests"] == 2, log
        # IRC registers with its nickname: no /nick step of its own.
        assert (("nick", f"/nick {scheme}://") in entries) == scheme.startswith("ws"), log
    assert_pairs_delivered(entries, dict.fromkeys(urls, 2), log)
    assert not [key for key in entries if key[0] == "loss"], log
    assert SUMMARY.search(log), log


def test_chat_mix_spreads_users_by_weight(tmp_path: Path) -> None:
    """--chat-mix tcp=6,ws=3,irc=1 over one server's three listeners: of ten
    users six are native, three web, one IRC, and each transport's figures
    are reported apart."""
    with ServerProcess(
        "--plugins", "irc,web",
        "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0", "--listen", "irc://127.0.0.1:0",
    ) as server:  # fmt: skip
        urls = {scheme: url(scheme, server.addresses[scheme]) for scheme in ("tcp", "ws", "irc")}
        code, entries, log = run_locust(
            tmp_path,
            "--chat-hosts", ",".join(urls.values()),
            "--chat-mix", "tcp=6,ws=3,irc=1",
            users=10,
        )  # fmt: skip
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    users = {scheme: entries.get(("connect", f"welcome {scheme}://"), {}).get("num_requests") for scheme in urls}
    assert users == {"tcp": 6, "ws": 3, "irc": 1}, log
    # Everyone is in one room: every transport's users hear every other's.
    assert_pairs_delivered(entries, {urls[scheme]: count for scheme, count in users.items()}, log)
    assert not [key for key in entries if key[0] == "loss"], log
    for scheme in urls:
        line = rf"chatcore: transport {scheme}:// users received [1-9]\d* deliveries .* lost 0, duplicated 0, reordered"
        assert re.search(line, log), (scheme, log)


def test_rooms_and_listeners_are_spread_over_every_server(tmp_path: Path) -> None:
    """--rooms 2 and --listeners 0.5 over two listeners: each room has a
    user on each listener, and each listener has a sender (by plain user
    number, room-0 would be on one listener and room-1 on the other, nothing
    would cross, and every listening user would be on the second)."""
    with ServerProcess("--plugins", "web", "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0") as server:
        tcp, ws = url("tcp", server.addresses["tcp"]), url("ws", server.addresses["ws"])
        code, entries, log = run_locust(tmp_path, "--chat-hosts", f"{tcp},{ws}", "--rooms", "2", "--listeners", "0.5")
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    # One sender on each listener, the two in one room, the listeners in the other.
    assert entries[("send", f"message {tcp}")]["num_requests"] == MESSAGES, log
    assert entries[("send", f"message {ws}")]["num_requests"] == MESSAGES, log
    for origin, receiver in ((tcp, ws), (ws, tcp)):
        assert entries[("deliver", f"message {origin} > {receiver}")]["num_requests"] == MESSAGES, log
    # Two users per room, one on each listener: no delivery stays on one.
    assert ("deliver", f"message {tcp} > {tcp}") not in entries, log
    assert ("deliver", f"message {ws} > {ws}") not in entries, log


def rooms_of_users(users: int, servers: int, rooms: int, per_user: int) -> list[tuple[int, list[int]]]:
    """(server index, room numbers) of each user, as loadtest/_chatuser.py
    picks them over ``servers`` URLs without --chat-mix: user n on server
    n % servers, in room (n // servers + n % servers) % rooms and the
    ``per_user - 1`` after it."""
    picked = []
    for number in range(users):
        first = (number // servers + number % servers) % rooms
        picked.append((number % servers, [(first + step) % rooms for step in range(per_user)]))
    return picked


def test_rooms_per_user_counts_every_room_apart_on_every_transport(tmp_path: Path) -> None:
    """--rooms-per-user 2 of --rooms 3, two users on each of a native, an
    IRC and a web listener: every user joins two rooms and sends MESSAGES
    to each; every line is expected once by every other member of its room,
    in that room's stream (native users are in several rooms, so their
    lines come labelled "[room-1] "). The counts per (sending server,
    receiving server) are those of the rooms' memberships, not of one room
    of six nor of three rooms of two."""
    with ServerProcess(
        "--plugins", "irc,web",
        "--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0", "--listen", "ws://127.0.0.1:0",
    ) as server:  # fmt: skip
        urls = [url(scheme, server.addresses[scheme]) for scheme in ("tcp", "irc", "ws")]
        code, entries, log = run_locust(
            tmp_path, "--chat-hosts", ",".join(urls), "--rooms", "3", "--rooms-per-user", "2", users=6
        )
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    assert not [key for key in entries if key[0] == "loss"], log
    for scheme in ("tcp", "irc", "ws"):  # two users each, two rooms each
        assert entries[("join", f"/join {scheme}://")]["num_requests"] == 4, log
    users = rooms_of_users(6, 3, 3, 2)
    members: dict[int, list[int]] = {}
    for server_index, rooms in users:
        for room in rooms:
            members.setdefault(room, []).append(server_index)
    assert sorted(len(servers) for servers in members.values()) == [4, 4, 4]
    sent = dict.fromkeys(urls, 0)
    expected = {(origin, receiver): 0 for origin in urls for receiver in urls}
    for servers in members.values():
        for place, origin in enumerate(servers):
            sent[urls[origin]] += MESSAGES
            for other, receiver in enumerate(servers):
                if other != place:
                    expected[(urls[origin], urls[receiver])] += MESSAGES
    for origin in urls:
        assert entries[("send", f"message {origin}")]["num_requests"] == sent[origin], (origin, log)
    delivered = {
        pair: entries.get(("deliver", f"message {pair[0]} > {pair[1]}"), {}).get("num_requests", 0) for pair in expected
    }
    assert delivered == expected, log
    assert SUMMARY.search(log), log


@pytest.mark.parametrize(("rooms", "per_user"), [("2", "3"), ("2", "0")])
def test_rooms_per_user_beyond_the_rooms_is_a_usage_error(tmp_path: Path, rooms: str, per_user: str) -> None:
    code, _, log = run_locust(tmp_path, "--host", "tcp://127.0.0.1:1", "--rooms", rooms, "--rooms-per-user", per_user)
    assert code == 2, log
    assert f"--rooms-per-user {per_user}: give 1 to --rooms (2)" in log


def heard(sender: LineClient, receiver: LineClient) -> bool:
    """Whether a probe ``sender`` says now reaches ``receiver`` (on another server)."""
    sender.send("probe")
    try:
        receiver.expect(lambda line: line.endswith("> probe"), timeout=0.2)
    except AssertionError:
        return False
    return True


def test_redis_cluster_of_two_servers_with_mixed_transports(tmp_path: Path) -> None:
    """Two chatcore servers joined through a real redis-server, on 127.0.0.1
    and 127.0.0.2, each with a native and another listener: users on either
    server, over any of the four, count what everyone sent, with no loss
    (two users on each listener: assert_pairs_delivered checks that too)."""
    redis = RedisServer(tmp_path).start()
    cluster = ["--plugins", "redis,irc,web", "--redis-url", redis.url, "--redis-cluster", "loadtest"]
    try:
        with (
            ServerProcess(*cluster, "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0") as one,
            ServerProcess(*cluster, "--listen", "tcp://127.0.0.2:0", "--listen", "irc://127.0.0.2:0") as two,
        ):
            urls = [
                url("tcp", one.addresses["tcp"]),
                url("ws", one.addresses["ws"]),
                url("tcp", two.addresses["tcp"]),
                url("irc", two.addresses["irc"]),
            ]
            # A server reads room-0 while someone is in it there: one silent
            # watcher on each, in it until the end, and the two servers
            # hearing each other before the users come.
            watchers = [LineClient(server.addresses["tcp"]) for server in (one, two)]
            try:
                for watcher in watchers:
                    watcher.send("/join room-0")
                    watcher.expect(lambda line: line.startswith("* you are now in room-0 "))
                for sender, receiver in (watchers, watchers[::-1]):
                    wait_for(lambda sender=sender, receiver=receiver: heard(sender, receiver), timeout=10)
                # Half the users native, spread over both servers; a quarter each web and IRC.
                code, entries, log = run_locust(
                    tmp_path, "--chat-hosts", ",".join(urls), "--chat-mix", "tcp=2,ws=1,irc=1", users=8
                )
            finally:
                for watcher in watchers:
                    watcher.close()
    finally:
        redis.stop()
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    users = {scheme: entries[("connect", f"welcome {scheme}://")]["num_requests"] for scheme in ("tcp", "ws", "irc")}
    assert users == {"tcp": 4, "ws": 2, "irc": 2}, log
    # Nobody sends before everyone is in: every message reaches all seven others.
    assert_pairs_delivered(entries, dict.fromkeys(urls, 2), log)
    assert not [key for key in entries if key[0] == "loss"], log
    assert SUMMARY.search(log), log


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--host", "ftp://127.0.0.1:1"],
            "unknown scheme ftp://; use one of tcp://, tls://, irc://, ircs://, ws://, wss://",
        ),
        (
            ["--host", "tcp://127.0.0.1:1", "--chat-mix", "tcp=6,ws=3"],
            "no server URL is ws://: add one to --chat-hosts",
        ),
        (["--chat-hosts", "tcp://127.0.0.1:1,irc://127.0.0.1:2", "--chat-mix", "tcp=1"], "add irc=N (irc=0 for none)"),
        (["--host", "tcp://127.0.0.1:1", "--chat-mix", "tcp"], "'tcp' is not SCHEME=WEIGHT"),
        (["--chat-hosts", "tcp://127.0.0.1:1,tcp://127.0.0.1:x"], "the port must be a number"),
        (["--host", "tls://:12001"], "no host"),
    ],
)
def test_bad_server_url_is_a_usage_error(tmp_path: Path, args: list[str], error: str) -> None:
    code, _, log = run_locust(tmp_path, *args, users=1)
    assert code == 2, log
    assert error in log


# -- the Chat tab and the HTML report ------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class _Tables(HTMLParser):
    """The text of every table row's cells (header and body)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def chat_table(page: str) -> dict[str, dict[str, str]]:
    """The chat table in a page: rows by scope, cells by column title."""
    parser = _Tables()
    parser.feed(page)
    header = next(row for row in parser.rows if row[:2] == ["Scope", "Deliveries/s"])
    return {
        row[0]: dict(zip(header, row, strict=True)) for row in parser.rows if len(row) == len(header) and row != header
    }


def fetch(web_port: int, path: str) -> bytes | None:
    """``path`` from Locust's web UI, or None while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}", timeout=2) as answer:
            body: bytes = answer.read()
            return body
    except OSError:
        return None


def locust_with_web_ui(tmp_path: Path, web_port: int, *args: str) -> subprocess.Popen[str]:
    """Locust on chat.py with its web UI on 127.0.0.1:``web_port``."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "locust", "-f", str(LOADTEST_DIR / "chat.py"),
            "--web-host", "127.0.0.1", "--web-port", str(web_port), *args,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def chromium(tmp_path: Path, width: int, height: int) -> Iterator[WebDriver]:
    """Debian's headless Chromium through its chromedriver (as in
    tests/test_web_browser.py: nothing is downloaded), quit at the end."""
    for program in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(program), f"this test needs {program}: apt-get install chromium chromium-driver"
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (*CHROMIUM_FLAGS, "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(STARTUP_TIMEOUT)
        yield driver
    finally:
        driver.quit()


#: What the Chat tab shows, read in one script at one moment (React draws
#: the page anew every two seconds): the table's text, whether anything is
#: wider than its box, the header's labels and the charts' lines.
CHAT_TAB_STATE = """
const head = document.querySelector('th[data-sortkey="scope"]');
const table = head && head.closest('.MuiTableContainer-root');
const page = document.scrollingElement;
return {
  table: table ? table.outerHTML : '',
  overflow: table ? [table.scrollWidth, table.clientWidth, page.scrollWidth, page.clientWidth] : null,
  labels: [...document.querySelectorAll('.MuiTypography-root')].map((e) => e.textContent),
  charts: [...document.querySelectorAll('#chatcore-charts figure')].map((f) => [
    f.querySelector('figcaption').textContent,
    Object.fromEntries([...f.querySelectorAll('path[data-series]')].map((p) => [p.dataset.series, +p.dataset.points])),
  ]),
};
"""


def test_chat_tab_charts_fit_1280_pixels_in_chromium(certs: Certs, tmp_path: Path) -> None:
    """The Chat tab (issue 25, item 7) in headless Chromium at 1280 x 900,
    during a run over a server's tcp:// and tls:// listeners (the longest
    scopes: listener pairs): the table fits without horizontal scrolling
    (the fourteen columns of before scrolled by 66 px), latencies carry their
    unit, the four loss counts share one cell, SVG charts of deliveries/s,
    latency p50/p99 and losses over time are drawn above it from
    /chatcore/history, and the header says "Deliveries/s" where Locust
    says "RPS". The HTML report has the table and draws the same charts."""
    web_port = free_port()
    html_report = tmp_path / "report.html"
    screenshot = tmp_path / "chat-tab.png"
    with ServerProcess("--listen", "tcp://127.0.0.1:0", "--listen", "tls://127.0.0.1:0", *certs.args()) as server:
        tcp, tls = url("tcp", server.addresses["tcp"]), url("tls", server.addresses["tls"])
        locust = locust_with_web_ui(
            tmp_path, web_port,
            "--autostart", "--autoquit", "0", "-u", "4", "-r", "4", "-t", "20s",
            "--chat-hosts", f"{tcp},{tls}", "--ca", str(certs.ca_file),
            "--message-rate", "5", "--html", str(html_report),
        )  # fmt: skip
        try:
            # The page loads the charts' script; its history fills every 2 s.
            page = wait_for(lambda: fetch(web_port, "/"), timeout=STARTUP_TIMEOUT, message="Locust's web UI").decode()
            assert '<script src="./chatcore/chat-tab.js"></script>' in page
            assert b"function chart(" in (fetch(web_port, "/chatcore/chat-tab.js") or b"")

            def history() -> list[dict[str, Any]] | None:
                body = fetch(web_port, "/chatcore/history")
                points: list[dict[str, Any]] = json.loads(body)["points"] if body else []
                drawn = [point for point in points if point["rate"] > 0 and point["p50"]]
                return points if len(drawn) >= 2 else None

            points = wait_for(history, timeout=20, message="two points with deliveries in /chatcore/history")
            assert all(point[kind] == 0 for point in points for kind in ("lost", "duplicated", "reordered")), points
            assert all(point["p50"] is None or 0 < point["p50"] <= point["p99"] for point in points), points
            # For the README's picture, lines long enough to read as trends.
            want = 7 if os.environ.get("CHATCORE_CHAT_TAB_SCREENSHOT") else 2
            with chromium(tmp_path, 1280, 900) as driver:
                driver.get(f"http://127.0.0.1:{web_port}/?tab=chat")

                def drawn(driver: WebDriver) -> dict[str, Any] | None:
                    state: dict[str, Any] = driver.execute_script(CHAT_TAB_STATE)
                    lines = {key: n for _, series in state["charts"] for key, n in series.items()}
                    rows = chat_table(state["table"]) if "<td" in state["table"] else {}
                    ready = lines.get("rate", 0) >= want and lines.get("p50", 0) >= 2 and f"{tcp} > {tls}" in rows
                    return state | {"rows": rows} if ready else None

                state = WebDriverWait(driver, 20, poll_frequency=0.2).until(drawn, "charts and table drawn")
                driver.save_screenshot(str(screenshot))
            output, _ = locust.communicate(timeout=LOCUST_TIMEOUT)
        finally:
            if locust.poll() is None:
                locust.kill()
                locust.communicate()
    assert locust.returncode == 0, output
    if os.environ.get("CHATCORE_CHAT_TAB_SCREENSHOT"):  # to refresh loadtest/README.md's picture
        shutil.copyfile(screenshot, os.environ["CHATCORE_CHAT_TAB_SCREENSHOT"])
    table_scroll, table_box, page_scroll, page_box = state["overflow"]
    assert table_scroll <= table_box, state["overflow"]  # no horizontal scroll bar under the table
    assert page_scroll <= page_box, state["overflow"]  # nor under the page
    assert [title for title, _ in state["charts"]] == [
        "Deliveries per second (last 10 s)",
        "Delivery latency (last 10 s)",
        "Losses so far",
    ]
    assert {key for _, series in state["charts"] for key in series} >= {"rate", "mrate", "p50", "p99", "lost"}
    assert "Deliveries/s" in state["labels"], state["labels"]
    assert "RPS" not in state["labels"], state["labels"]
    shown = state["rows"]
    assert set(shown) >= {"all", "transport tcp://", "transport tls://", f"server {tcp}", f"{tcp} > {tls}"}, shown
    latency = re.compile(r"^\d+(\.\d+)?\u00a0(µs|ms)$")  # a no-break space: the unit stays beside its number
    for scope in ("all", "transport tls://", f"{tls} > {tcp}"):
        assert int(shown[scope]["Deliveries"]) > 0, shown[scope]
        assert float(shown[scope]["Deliveries/s"]) > 0, shown[scope]
        assert float(shown[scope]["Fan-out"]) > 0, shown[scope]
        assert all(latency.match(shown[scope][column]) for column in ("Latency p50", "p95", "p99")), shown[scope]
        assert shown[scope]["Losses"] == "0", shown[scope]
    # The HTML report carries the same table, with the run's final figures,
    # and the history its charts are drawn from.
    report = html_report.read_text(encoding="utf-8")
    reported = chat_table(report)
    assert int(reported["all"]["Deliveries"]) >= int(shown["all"]["Deliveries"])
    assert int(reported[f"{tcp} > {tls}"]["Deliveries"]) > 0
    assert reported["all"]["Losses"] == "0"
    start = report.index("window.chatcoreHistory = ") + len("window.chatcoreHistory = ")
    reported_history, _ = json.JSONDecoder().raw_decode(report, start)
    assert len(reported_history["points"]) >= len(points), reported_history
    with chromium(tmp_path, 1280, 900) as driver:
        driver.get(html_report.as_uri())
        state = driver.execute_script(CHAT_TAB_STATE)
    lines = {key: n for _, series in state["charts"] for key, n in series.items()}
    assert lines["rate"] == lines["lost"] == len(reported_history["points"]), state["charts"]


# -- the scenarios ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "args", "rows"),
    [
        ("storm.py", ["--storm-wait", "3"], [("storm", "all in")]),
        ("churn.py", ["--churn-share", "0.5", "--churn-stay", "1"], []),
        ("rooms.py", ["--big-share", "0.5", "--small-room-size", "2"], [("deliver", "message-small")]),
        ("slow.py", ["--slow-share", "0.25", "--slow-read-rate", "500"], [("slow", "message")]),
    ],
)
def test_scenario_runs_without_losses(tmp_path: Path, scenario: str, args: list[str], rows: list[Any]) -> None:
    with ServerProcess("--listen", "tcp://127.0.0.1:0") as server:
        code, entries, log = run_locust(
            tmp_path, "--host", url("tcp", server.address), *args, scenario=scenario, users=8, messages=20
        )
    assert code == 0, log
    assert not [key for key, e in entries.items() if e["num_failures"]], log
    assert entries[("deliver", "message")]["num_requests"] >= 50, log
    for row in rows:
        assert entries[row]["num_requests"] > 0, (row, log)
    assert "lost 0, duplicated 0, reordered 0, corrupted 0" in log
    if scenario == "churn.py":
        # Four of the eight users left and came back at least twice.
        assert entries[("connect", "welcome")]["num_requests"] >= 8 + 4 * 2, log
    if scenario == "storm.py":
        assert entries[("storm", "all in")]["num_requests"] == 1, log


def test_chatcore_options_are_in_the_web_ui_advanced_options(tmp_path: Path) -> None:
    """Locust's web UI offers chatcore's options under "Advanced options"
    (issue 25): an option added through an argument group is offered only
    when marked ``include_in_web_ui`` (Locust's parser marks only its own)."""
    web_port = free_port()
    locust = locust_with_web_ui(tmp_path, web_port)
    try:
        html = wait_for(lambda: fetch(web_port, "/"), timeout=STARTUP_TIMEOUT, message="Locust's web UI").decode()
    finally:
        locust.terminate()
        output, _ = locust.communicate(timeout=LOCUST_TIMEOUT)
    assert locust.returncode is not None
    start = html.index("templateArgs = ") + len("templateArgs = ")
    template, _ = json.JSONDecoder().raw_decode(html, start)
    offered = template["extra_options"]
    options = (
        "message_rate",
        "message_size",
        "messages",
        "rooms",
        "rooms_per_user",
        "listeners",
        "chat_hosts",
        "chat_mix",
    )
    for option in options:
        assert option in offered, (option, sorted(offered), output)
    assert offered["message_rate"]["default_value"] == 1.0
    assert "messages per second" in offered["message_rate"]["help_text"]


def test_chat_tab_works_under_a_web_base_path(tmp_path: Path) -> None:
    """Behind ``--web-base-path`` (Locust's UI under a proxy's path) the
    page still loads the charts' script and gets the chat figures: they
    follow Locust's routes, not fixed paths."""
    web_port = free_port()
    locust = locust_with_web_ui(tmp_path, web_port, "--web-base-path", "/load", "--host", "tcp://127.0.0.1:1")
    try:
        page = wait_for(lambda: fetch(web_port, "/load/"), timeout=STARTUP_TIMEOUT, message="Locust's web UI")
        stats = json.loads(fetch(web_port, "/load/stats/requests") or b"{}")
        history = json.loads(fetch(web_port, "/load/chatcore/history") or b"{}")
        script = fetch(web_port, "/load/chatcore/chat-tab.js") or b""
    finally:
        locust.terminate()
        output, _ = locust.communicate(timeout=LOCUST_TIMEOUT)
    assert b'<script src="./chatcore/chat-tab.js"></script>' in page, output
    assert [row["scope"] for row in stats["extendedStats"][0]["data"]] == ["all"], stats
    assert history == {"interval": 2.0, "window": 10, "points": []}
    assert b"function chart(" in script


def test_help_says_where_the_options_and_figures_are_in_the_web_ui(tmp_path: Path) -> None:
    """``locust -f FILE --help`` prints before it imports FILE (Locust 2.47),
    so the load test's options have their own ``--help``: loadtest/_help.py."""
    result = subprocess.run(
        [sys.executable, str(LOADTEST_DIR / "_help.py"), str(LOADTEST_DIR / "storm.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=LOCUST_TIMEOUT,
        check=True,
    )
    text = " ".join(result.stdout.split())
    assert "--message-rate MESSAGE_RATE messages per second" in text, text
    assert "chatcore connect storm: --storm-wait" in text, text
    assert "under 'Advanced options'" in text, text
    assert "charts of deliveries/s, latency p50/p99 and losses over time" in text, text
    assert "'Deliveries/s' (Locust's RPS) counts deliveries only" in text, text


def test_chat_tab_leaves_out_rows_that_repeat_the_whole_run(tmp_path: Path) -> None:
    """One server on one transport: the "transport" and "server" rows would
    repeat the "all" row figure for figure (issue 25), so the Chat tab's
    /stats/requests data has the "all" row only. And Locust's header RPS
    (its "Aggregated" row) counts one thing, deliveries, not deliveries,
    sends and set-up steps together."""
    web_port = free_port()
    with ServerProcess("--listen", "tcp://127.0.0.1:0") as server:
        locust = locust_with_web_ui(
            tmp_path, web_port,
            "--autostart", "-u", "3", "-r", "3", "-t", "30s", "--message-rate", "5",
            "--host", url("tcp", server.address),
        )  # fmt: skip
        try:

            def chat_stats() -> dict[str, Any] | None:
                body = fetch(web_port, "/stats/requests")
                if body is None:
                    return None
                stats: dict[str, Any] = json.loads(body)
                rows = stats["extendedStats"][0]["data"]
                # Locust's own list may be a moment older than the chat rows.
                listed = sum(entry["num_requests"] for entry in stats["stats"] if entry["method"] == "deliver")
                return stats if rows and rows[0]["deliveries"] > 10 and listed > 10 else None

            stats = wait_for(chat_stats, timeout=20, message="deliveries in /stats/requests")
        finally:
            locust.terminate()
            output, _ = locust.communicate(timeout=LOCUST_TIMEOUT)
    rows = stats["extendedStats"][0]["data"]
    assert [row["scope"] for row in rows] == ["all"], (rows, output)
    # Latency to the microsecond (two significant digits), not Locust's whole
    # milliseconds: on loopback most deliveries take well under 1 ms, which
    # Locust's own percentiles round to 0.
    p50, p99 = rows[0]["p50"], rows[0]["p99"]
    assert 0 < p50 <= p99, rows[0]
    # The table shows them with their unit: "340 µs" below a millisecond.
    for key, value in (("p50text", p50), ("p99text", p99)):
        assert rows[0][key] == (f"{round(value * 1000)}\u00a0µs" if value < 1 else f"{value:.3g}\u00a0ms"), rows[0]
    assert rows[0]["losses"] == "0", rows[0]
    entries = {(entry["method"], entry["name"]): entry for entry in stats["stats"]}
    aggregated = entries.pop(("", "Aggregated"))
    assert {method for method, _ in entries} >= {"send", "deliver"}
    delivered = sum(entry["num_requests"] for (method, _), entry in entries.items() if method == "deliver")
    assert aggregated["num_requests"] == delivered, [(key, entry["num_requests"]) for key, entry in entries.items()]
