"""Health that tells the truth and logs a machine can read (issue 26): the
metrics plugin's /healthz and /readyz, the process, build and reload series,
JSON console logs with fields, and --pid-file; over real HTTP, against real
server processes where the thing under test is the process."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis_support import RedisServer

from chatcore import hookimpl
from chatcore.engine.backplane import Backplane
from chatcore.testing import LineClient, ServerProcess, wait_for

ROOT = Path(__file__).parent.parent
METRICS_AT = re.compile(r"metrics at http://127\.0\.0\.1:(\d+)/metrics")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``url``/metrics, as ``{(name, sorted labels): value}``."""
    status, text = get(url + "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(url: str, name: str, **labels: str) -> float:
    return samples(url)[(name, tuple(sorted(labels.items())))]


def metrics_url(proc: ServerProcess) -> str:
    """The metrics endpoint of a server process started with --metrics-port 0."""
    line = proc.expect_log(METRICS_AT)
    match = METRICS_AT.search(line)
    assert match is not None
    return f"http://127.0.0.1:{match.group(1)}"


class ReadyDuringShutdown:
    """Asks /readyz and /healthz while the server is disconnecting everyone."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str]] = []

    @hookimpl
    def chatcore_client_left(self, client, reason):
        if reason == "server shutting down":
            url = client.server.config.data["metrics"].url
            self.answers += [get(url + "/readyz"), get(url + "/healthz")]


# -- /healthz and /readyz ------------------------------------------------------


def test_a_server_on_its_own_is_ready_while_it_serves(chat_server_factory, chat_client):
    watcher = ReadyDuringShutdown()
    server = chat_server_factory("--plugins", "metrics", "--metrics-port", "0", plugins=[watcher])
    url = server.config.data["metrics"].url
    assert get(url + "/healthz") == (200, "ok\n")
    assert get(url + "/readyz") == (200, "ready\n")
    chat_client(server)
    server.stop(timeout=1.0)
    assert watcher.answers == [
        (503, "not ready: shutting down: not accepting connections\n"),
        (503, "not accepting connections\n"),
    ]


class FlakyLink(Backplane):
    """A cluster plugin's backplane whose link a test turns off and on."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: list[str] = []

    def problems(self) -> list[str]:
        return list(self.broken)


class FlakyCluster:
    def __init__(self) -> None:
        self.backplane = FlakyLink()

    @hookimpl
    def chatcore_backplane(self, server):
        return self.backplane


def test_readyz_reports_whatever_a_backplane_says_without_knowing_the_plugin(chat_server_factory, chat_client):
    cluster = FlakyCluster()
    server = chat_server_factory("--plugins", "metrics", "--metrics-port", "0", plugins=[cluster])
    url = server.config.data["metrics"].url
    assert get(url + "/readyz") == (200, "ready\n")
    cluster.backplane.broken = ["the link to the toy cluster is down", "and so is its twin"]
    assert get(url + "/readyz") == (503, "not ready: the link to the toy cluster is down; and so is its twin\n")
    assert get(url + "/healthz") == (200, "ok\n")
    chat_client(server).sync()  # and the server serves its own clients meanwhile
    cluster.backplane.broken = []
    assert get(url + "/readyz") == (200, "ready\n")


def test_unknown_paths_name_the_three_known_ones(chat_server_factory):
    server = chat_server_factory("--plugins", "metrics", "--metrics-port", "0")
    assert get(server.config.data["metrics"].url + "/ready") == (404, "not found: try /metrics, /healthz or /readyz\n")


def ready_answer(url: str, status: int) -> tuple[int, str] | None:
    answer = get(url + "/readyz")
    return answer if answer[0] == status else None


@pytest.mark.slow
def test_readyz_follows_the_link_to_a_real_redis(tmp_path):
    redis = RedisServer(tmp_path)  # not started: the server comes up before its Redis
    args = ["--plugins", "redis,metrics", "--metrics-port", "0", "--redis-url", redis.url]
    with ServerProcess(*args, "--redis-cluster", "health", "--redis-timeout", "1") as proc:
        try:
            url = metrics_url(proc)
            _, why = wait_for(lambda: ready_answer(url, 503), message="/readyz to say not ready")
            assert re.fullmatch(
                r"not ready: (the cluster link to Redis is down \(.*Connection refused.*\) for \d+ s; reconnecting"
                r"|not linked to the cluster yet: Redis at redis://127\.0\.0\.1:\d+/0 has not answered"
                r" since the start)\n",
                why,
            ), why
            assert get(url + "/healthz") == (200, "ok\n")  # alive all the same
            assert metric(url, "chatcore_redis_link_up") == 0
            assert metric(url, "chatcore_redis_last_exchange_timestamp_seconds") == 0

            redis.start()
            wait_for(lambda: ready_answer(url, 200), timeout=10, message="/readyz ready once Redis answers")
            assert get(url + "/readyz") == (200, "ready\n")
            assert metric(url, "chatcore_redis_link_up") == 1
            # Redis is asked at least every quarter second.
            assert time.time() - metric(url, "chatcore_redis_last_exchange_timestamp_seconds") < 2

            # Redis stops: it closes the link, which is known down at once.
            redis.stop()
            stopped = time.monotonic()
            _, why = wait_for(lambda: ready_answer(url, 503), timeout=10, message="/readyz 503 after Redis stopped")
            assert time.monotonic() - stopped < 5
            assert re.fullmatch(r"not ready: the cluster link to Redis is down \(.+\) for \d+ s; reconnecting\n", why)
            assert metric(url, "chatcore_redis_link_up") == 0
            assert get(url + "/healthz") == (200, "ok\n")
            last = metric(url, "chatcore_redis_last_exchange_timestamp_seconds")
            assert 0 < last < time.time()

            redis.start()  # on the same port, empty
            back = time.monotonic()
            wait_for(lambda: ready_answer(url, 200), timeout=10, message="/readyz ready after Redis came back")
            assert time.monotonic() - back < 5
            assert metric(url, "chatcore_redis_link_up") == 1
            assert metric(url, "chatcore_redis_last_exchange_timestamp_seconds") > last

            # Redis goes silent (stopped, not closed): known within --redis-timeout.
            assert redis.proc is not None
            redis.proc.send_signal(signal.SIGSTOP)
            try:
                silent = time.monotonic()
                wait_for(lambda: ready_answer(url, 503), timeout=10, message="/readyz 503 while Redis is silent")
                assert time.monotonic() - silent < 5
            finally:
                redis.proc.send_signal(signal.SIGCONT)
            wait_for(lambda: ready_answer(url, 200), timeout=10, message="/readyz ready when Redis answers again")
        finally:
            redis.stop()
    assert proc.returncode == 0
    down = [line for line in proc.stderr.splitlines() if "cluster link down" in line]
    assert len(down) >= 2  # the first outage, the stop and the silence: once per outage, not per retry


@pytest.mark.slow
def test_readyz_says_when_redis_takes_no_writes(tmp_path, chat_server_factory, chat_client):
    # A failover that leaves the link on the old primary, now a replica: the
    # reader reads on, but nothing said here reaches the other servers.
    (tmp_path / "redis").mkdir()
    (tmp_path / "primary").mkdir()
    redis, primary = RedisServer(tmp_path / "redis").start(), RedisServer(tmp_path / "primary").start()
    admin = redis.client()
    try:
        server = chat_server_factory(
            "--plugins", "redis,metrics", "--metrics-port", "0", "--redis-url", redis.url,
            "--redis-cluster", "readonly", "--redis-timeout", "1",
        )  # fmt: skip
        url = server.config.data["metrics"].url
        wait_for(lambda: ready_answer(url, 200), timeout=10, message="/readyz ready")
        alice = chat_client(server)
        admin.replicaof("127.0.0.1", str(primary.port))  # read-only from now on
        alice.send("is anyone there?")
        _, why = wait_for(lambda: ready_answer(url, 503), timeout=10, message="/readyz 503 while writes fail")
        refused = r"not ready: publishing to Redis fails \(.*read only replica.*\) for \d+ s; \d+ events wait\n"
        assert re.fullmatch(refused, why), why
        assert get(url + "/healthz") == (200, "ok\n")
        admin.replicaof("NO", "ONE")
        wait_for(lambda: ready_answer(url, 200), timeout=10, message="/readyz ready when writes go through")
    finally:
        admin.close()
        primary.stop()
        redis.stop()


# -- the process, build and reload series ----------------------------------------


def _proc_status(pid: int, field: str) -> int:
    """A ``kB`` or count field of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _max_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])  # the soft limit
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the process series are read from /proc (Linux)")
def test_the_process_and_build_series_describe_the_server_process():
    launched = time.time()
    with ServerProcess("--plugins", "metrics", "--metrics-port", "0") as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        url = metrics_url(proc)
        clients = [LineClient(proc.address) for _ in range(3)]
        for client in clients:
            client.sync()
        found = samples(url)
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
        resident = _proc_status(pid, "VmRSS") * 1024
        virtual = _proc_status(pid, "VmSize") * 1024
        max_fds = _max_open_files(pid)
        for client in clients:
            client.close()

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    # Started after we launched it, and before it answered (clock ticks of 10 ms).
    assert launched - 1 <= value("process_start_time_seconds") <= time.time()
    assert 0 < value("process_cpu_seconds_total") < 60
    # Read a moment apart: the same within a little.
    assert abs(value("process_resident_memory_bytes") - resident) < 0.2 * resident
    assert abs(value("process_virtual_memory_bytes") - virtual) < 0.2 * virtual
    assert abs(value("process_open_fds") - open_fds) <= 3
    assert value("process_open_fds") >= 3 + 3  # the three clients, the listeners, stdio
    assert value("process_max_fds") == max_fds
    python = sys.version_info
    assert (
        value(
            "python_info",
            implementation=platform.python_implementation(),
            major=str(python.major),
            minor=str(python.minor),
            patchlevel=str(python.micro),
            version=f"{python.major}.{python.minor}.{python.micro}",
        )
        == 1
    )
    from chatcore.version import __version__

    assert (
        value(
            "chatcore_build_info", version=__version__, python_version=f"{python.major}.{python.minor}.{python.micro}"
        )
        == 1
    )
    assert [key for key in found if key[0] == "chatcore_build_info"] == [
        (
            "chatcore_build_info",
            (("python_version", f"{python.major}.{python.minor}.{python.micro}"), ("version", __version__)),
        )
    ]
    # Loaded at the start: a success, at about the start.
    assert value("chatcore_config_last_reload_successful") == 1
    assert launched - 1 <= value("chatcore_config_last_reload_success_timestamp_seconds") <= time.time()


@pytest.mark.slow
def test_a_reload_s_success_and_failure_flip_the_gauges(tmp_path):
    config = tmp_path / "chatcore.toml"
    config.write_text('plugins = ["welcome", "metrics"]\nmetrics-port = 0\nwelcome-text = "Hello {nick}"\n')
    with ServerProcess("--config", str(config)) as proc:
        url = metrics_url(proc)
        started = metric(url, "chatcore_config_last_reload_success_timestamp_seconds")
        assert metric(url, "chatcore_config_last_reload_successful") == 1

        config.write_text('plugins = ["welcome", "metrics"]\nmetrics-port = 0\nwelcome-text = "Hello {name}"\n')
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(re.compile(r"reload failed: .*--welcome-text: bad placeholder"))
        assert metric(url, "chatcore_config_last_reload_successful") == 0
        assert metric(url, "chatcore_config_last_reload_success_timestamp_seconds") == started

        before_fix = time.time()
        config.write_text('plugins = ["welcome", "metrics"]\nmetrics-port = 0\nwelcome-text = "Hi {nick}"\n')
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(re.compile(r"configuration reloaded: --welcome-text changed"))
        assert metric(url, "chatcore_config_last_reload_successful") == 1
        assert before_fix <= metric(url, "chatcore_config_last_reload_success_timestamp_seconds") <= time.time()
    assert proc.returncode == 0


# -- JSON logs -----------------------------------------------------------------------


@pytest.mark.slow
def test_json_logs_are_one_object_a_line_with_the_event_s_fields(tmp_path):
    config = tmp_path / "chatcore.toml"
    config.write_text('welcome-text = "Hello {nick}"\n')
    with ServerProcess("--log-format", "json", "--max-clients", "1", "--config", str(config)) as proc:
        banner = json.loads(proc.banner)
        alice = LineClient(proc.address)
        alice_port = alice.sock.getsockname()[1]
        alice.sync()
        refused = LineClient(proc.address)
        refused.expect("! server full, try again later")
        refused.close()
        alice.send("/nick alice")
        alice.expect("* you are now known as alice")
        alice.send("/quit bye")
        alice.wait_closed()
        alice.close()
        proc.expect_log(lambda line: '"client_left"' in line)
        config.write_text('welcome-text = "Hi {nick}"\n')
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(lambda line: '"reloaded"' in line)
    assert proc.returncode == 0

    assert banner["event"] == "server_started"
    assert banner["message"].startswith("chatcore ")
    assert banner["listeners"] == [f"tcp://127.0.0.1:{proc.address[1]}"]
    assert banner["pid"] == proc.proc.pid
    assert "commands" in banner["plugins"]
    assert proc.stdout == ""  # nothing else on standard output

    entries = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is one object
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
    by_event = {}
    for entry in entries:
        by_event.setdefault(entry.get("event"), []).append(entry)

    [listener] = by_event["listener_started"]
    assert listener["listener"] == banner["listeners"][0]
    assert (listener["scheme"], listener["address"], listener["port"]) == ("tcp", *proc.address)

    [joined] = by_event["client_joined"]
    assert joined["message"] == f"client joined: guest-1 from 127.0.0.1:{joined['port']}"
    assert (joined["nick"], joined["address"], joined["room"], joined["protocol"]) == (
        "guest-1",
        "127.0.0.1",
        "lobby",
        "native",
    )
    assert joined["port"] == alice_port

    [refusal] = by_event["connection_refused"]
    assert refusal["level"] == "WARNING"
    assert (refusal["address"], refusal["cause"], refusal["reason"]) == (
        "127.0.0.1",
        "full",
        "server full, try again later",
    )
    assert refusal["listener"] == banner["listeners"][0]

    [left] = by_event["client_left"]
    assert (left["nick"], left["address"], left["port"], left["rooms"]) == (
        "alice",
        "127.0.0.1",
        joined["port"],
        ["lobby"],
    )
    assert (left["reason"], left["cause"], left["client"]) == ("bye", "quit", joined["client"])

    assert by_event["reloading"][0]["signal"] == "SIGHUP"
    assert by_event["reloaded"][0]["changed"] == ["--welcome-text"]
    assert by_event["shutting_down"][0]["signal"] == "SIGTERM"
    assert entries[-1]["event"] == "server_stopped"


def test_the_json_formatter_adds_the_call_site_s_fields_after_its_own():
    from chatcore.cli import JSONFormatter

    record = logging.makeLogRecord(
        {"name": "chatcore.server", "levelname": "ERROR", "msg": "reload failed: %s", "args": ("x: bad",)}
    )
    record.__dict__.update(event="reload_failed", error="x: bad", time="a field may not replace the time")
    entry = json.loads(JSONFormatter().format(record))
    assert list(entry)[:4] == ["time", "level", "logger", "message"]
    assert entry["message"] == "reload failed: x: bad"
    assert (entry["event"], entry["error"]) == ("reload_failed", "x: bad")
    assert entry["time"] != "a field may not replace the time"
    record.__dict__.update(path=Path("/tmp/x"))  # no JSON type: written as its text
    assert json.loads(JSONFormatter().format(record))["path"] == "/tmp/x"


def test_the_text_format_stays_as_it_was():
    with ServerProcess() as proc:
        assert re.fullmatch(r"chatcore \S+ listening on tcp://127\.0\.0\.1:\d+ \(plugins: [^)]*\)\n", proc.banner)
        client = LineClient(proc.address)
        client.sync()
        line = proc.expect_log(re.compile(r"client joined"))
        client.close()
    assert re.fullmatch(r"\S+ \S+ INFO    chatcore\.server: client joined: guest-1 from 127\.0\.0\.1:\d+", line)
    assert "{" not in proc.stderr


# -- --pid-file -----------------------------------------------------------------------


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    """``chatcore serve --port 0 ARGS`` expected to exit at once."""
    return subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def documented_reload_command() -> str:
    """docs/operations.md's reload command."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    match = re.search(r"^    (kill -HUP \"\$\(cat (\S+)\)\")", text, re.M)
    assert match is not None, "docs/operations.md gives no kill -HUP command with the pid file"
    assert "$(pidof" not in text  # the process is python: pidof chatcore finds nothing
    return match.group(1).replace(match.group(2), "{pid_file}")


@pytest.mark.slow
def test_the_pid_file_is_written_once_listening_refuses_a_second_server_and_goes_at_the_stop(tmp_path):
    pid_file = tmp_path / "chatcore.pid"
    with ServerProcess("--pid-file", str(pid_file)) as proc:
        assert proc.proc is not None
        # Written before the start-up line: whoever waits for it finds the file.
        assert pid_file.read_text() == f"{proc.proc.pid}\n"

        # The documented command, as written, reaches this server.
        command = documented_reload_command().format(pid_file=pid_file)
        subprocess.run(["sh", "-c", command], check=True, timeout=10)
        proc.expect_log(re.compile(r"configuration reloaded"))

        second = serve("--pid-file", str(pid_file))
        assert second.returncode == 1
        assert second.stderr == (
            f"chatcore: error: --pid-file {pid_file}: chatcore is already running as process {proc.proc.pid}; "
            f"stop it first (kill {proc.proc.pid}), or give this server another --pid-file\n"
        )
        assert second.stdout == ""  # it never listened
        assert pid_file.read_text() == f"{proc.proc.pid}\n"  # and left the file alone
        client = LineClient(proc.address)
        client.sync()  # the first still serves
        client.close()
    assert proc.returncode == 0
    assert not pid_file.exists()
    assert not list(tmp_path.iterdir())  # nor a temporary file


@pytest.mark.slow
def test_a_stale_pid_file_is_replaced(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    other = subprocess.Popen(["sleep", "60"])  # alive, but no chatcore: a process id handed out again
    stale = [
        (str(gone.pid), f"process {gone.pid} is gone"),
        (str(other.pid), f"process {other.pid} is not a chatcore"),
        ("rubbish", "it held no process id"),
    ]
    pid_file = tmp_path / "chatcore.pid"
    try:
        for content, why in stale:
            pid_file.write_text(f"{content}\n")
            with ServerProcess("--pid-file", str(pid_file)) as proc:
                assert proc.proc is not None
                assert pid_file.read_text() == f"{proc.proc.pid}\n"
                proc.expect_log(re.compile(re.escape(f"replaced the stale pid file {pid_file} ({why})")))
            assert proc.returncode == 0
            assert not pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_a_pid_file_that_cannot_be_written_stops_the_start(tmp_path):
    pid_file = tmp_path / "missing" / "chatcore.pid"
    result = serve("--pid-file", str(pid_file))
    assert result.returncode == 1
    assert result.stderr == (
        f"chatcore: error: --pid-file {pid_file}: cannot write it: No such file or directory; give a path in a "
        "directory this user may write (under systemd, RuntimeDirectory=chatcore gives /run/chatcore/)\n"
    )
    assert not pid_file.parent.exists()


def test_the_pid_file_is_an_option_of_the_file_and_the_environment_and_needs_a_restart(tmp_path):
    from chatcore.config import build_parser
    from chatcore.configfile import is_restart_only

    [action] = [action for action in build_parser()._actions if "--pid-file" in action.option_strings]
    assert is_restart_only(action)
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--print-config"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "CHATCORE_PID_FILE": str(tmp_path / "x.pid")},
    )
    assert f'pid-file = "{tmp_path / "x.pid"}"' in result.stdout
