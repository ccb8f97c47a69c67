"""The ``chatcore`` program as a process: exit codes, signals, discovery."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import chatcore
from chatcore import cli
from chatcore.engine import allocator
from chatcore.testing import LineClient, ServerProcess

ROOT = Path(__file__).parent.parent
TEST_PLUGINS = Path(__file__).parent / "plugins"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatcore", *args],
        check=False,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"chatcore {chatcore.__version__} (pluggy ")


def test_console_script_is_installed():
    script = shutil.which("chatcore", path=str(Path(sys.executable).parent))
    assert script, "the chatcore console script is not installed next to python"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert chatcore.__version__ in result.stdout


def test_no_command_is_a_usage_error():
    result = run()
    assert result.returncode == 2
    assert "serve" in result.stderr
    assert "client" in result.stderr


def test_unknown_plugin_exits_2_and_lists_the_available_ones():
    result = run("serve", "--plugins", "welcome,nosuch")
    assert result.returncode == 2
    assert "unknown plugin 'nosuch'" in result.stderr
    assert "welcome" in result.stderr.split("available:")[1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", [".", "..", "./myplugin", "a..b", "pkg.", "my-plugin.x"])
def test_a_plugin_that_is_no_module_name_exits_2_in_one_line(name):
    # "--plugins ." was a TypeError traceback from importlib.
    result = run("serve", "--plugins", name)
    assert result.returncode == 2
    assert f"plugin {name!r} is neither an installed plugin nor a module name" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_option_value_exits_2():
    result = run("serve", "--port", "70000")
    assert result.returncode == 2
    assert "70000 is out of range" in result.stderr


def test_plugin_usage_error_exits_2_in_one_line():
    env = {"PYTHONPATH": str(TEST_PLUGINS)}
    result = run("serve", "--plugins", "chatcore_testplugins.bad_option", "--colour", "red", env=env)
    assert result.returncode == 2
    assert result.stderr == "chatcore: error: --colour must be blue or green, not 'red'\n"


def test_plugin_failing_at_start_exits_1_in_one_line():
    env = {"PYTHONPATH": str(TEST_PLUGINS)}
    result = run("serve", "--port", "0", "--plugins", "chatcore_testplugins.failing_start", env=env)
    assert result.returncode == 1
    assert result.stderr == (
        "chatcore: error: plugin 'chatcore_testplugins.failing_start' failed in chatcore_server_start: "
        "RuntimeError: the database is on fire\n"
    )


def test_a_backplane_that_cannot_be_made_exits_1_in_one_line():
    env = {"PYTHONPATH": str(TEST_PLUGINS)}
    result = run("serve", "--port", "0", "--plugins", "chatcore_testplugins.failing_backplane", env=env)
    assert result.returncode == 1
    assert result.stderr == (
        "chatcore: error: plugin 'chatcore_testplugins.failing_backplane' failed in chatcore_backplane: "
        "RuntimeError: the cluster is unreachable\n"
    )


def test_port_in_use_exits_1_with_a_hint():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on tcp://127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugins_command_lists_descriptions_and_hooks():
    result = run("plugins")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any(line.startswith("welcome ") and "welcome text" in line for line in lines)
    assert any(line.startswith("commands ") and "built in, always on" in line for line in lines)
    logger_hooks = lines[lines.index(next(x for x in lines if x.startswith("logger "))) + 1]
    assert "chatcore_message_delivered" in logger_hooks


def test_serve_help_shows_the_selected_plugins_options():
    result = run("serve", "--plugins", "welcome,logger", "--help")
    assert result.returncode == 0
    for option in ("--host", "--port", "--backlog", "--max-line", "--log-level", "--welcome-text", "--log-file"):
        assert option in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(sig):
    with ServerProcess("--plugins", "welcome") as server:
        alice = LineClient(server.address)
        alice.sync()
        bob = LineClient(server.address)
        try:
            bob.sync()
            alice.expect("* guest-2 joined")
            started = time.monotonic()
            status = server.stop(sig)
            elapsed = time.monotonic() - started
            assert alice.wait_closed() == ["* server shutting down"]
            assert bob.wait_closed() == ["* server shutting down"]
        finally:
            alice.close()
            bob.close()
    assert status == 0, server.stderr
    assert elapsed < 5
    # The console log reads like the original chatroom's: one line per event.
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    "
    name = signal.Signals(sig).name
    for line in (
        rf"chatcore: received {name}, shutting down",
        r"chatcore\.server: client joined: guest-1 from 127\.0\.0\.1:\d+",
        r"chatcore: server stopped",
    ):
        assert re.search(rf"^{stamp}{line}$", server.stderr, re.M), server.stderr


def test_listening_line_gives_the_bound_address():
    with ServerProcess("--plugins", "") as server:
        assert server.address[0] == "127.0.0.1"
        assert server.address[1] > 0
        client = LineClient(server.address)
        client.sync()
        client.close()


def test_an_installed_plugin_package_is_discovered_through_entry_points(tmp_path):
    """pip-install the example package and use it exactly like a bundled one."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "examples" / "chatcore-shout", source)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True,
        timeout=120,
    )  # fmt: skip
    env = {"PYTHONPATH": str(target)}
    listing = run("plugins", env=env)
    assert "shout 1.0.0: Adds /shout TEXT, which says TEXT in capitals to the room" in listing.stdout

    with ServerProcess("--plugins", "welcome,shout", "--shout-prefix", ">> ", env=env) as server:
        alice = LineClient(server.address)
        alice.sync()  # alice is guest-1: connected and greeted before bob
        bob = LineClient(server.address)
        try:
            bob.sync()
            alice.send("/shout hello")
            alice.expect("* shouted")
            assert bob.expect(lambda line: line.startswith("<")) == "<guest-1> >> HELLO"
            alice.send("/help")
            alice.expect(lambda line: "/shout TEXT" in line)
        finally:
            alice.close()
            bob.close()
    assert server.returncode == 0


def _serve_with_file_limit(soft: int, hard: int, *args: str) -> tuple[int, str]:
    """Run the server under an open-file limit; returns (soft limit it ran with, stderr)."""
    # A small wrapper sets the limit and execs the server (preexec_fn is not
    # safe in a process with threads).
    wrapper = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'chatcore', *sys.argv[1:]])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper, "serve", "--port", "0", "--plugins", "", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        running_soft = int(next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3])
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    return running_soft, err


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    soft, err = _serve_with_file_limit(256, 2048, "--max-clients", "1000")
    assert soft == 2048
    assert "raised the open-file limit from 256 to 2048" in err
    assert "too low" not in err


def test_a_hard_limit_too_low_for_max_clients_is_reported():
    soft, err = _serve_with_file_limit(256, 256, "--max-clients", "1000")
    assert soft == 256
    assert "open-file limit is 256, too low for --max-clients 1000; raise it (ulimit -n)" in err


def test_usage_error_at_start_exits_2_in_one_line():
    env = {"PYTHONPATH": str(TEST_PLUGINS)}
    result = run("serve", "--port", "0", "--plugins", "logger,chatcore_testplugins.usage_at_start", env=env)
    assert result.returncode == 2
    assert result.stderr.endswith("chatcore: error: the room list names no rooms\n")
    assert "Traceback" not in result.stderr


def test_the_server_lets_a_thread_keep_the_gil_longer_than_python_does():
    # Thousands of reader threads waiting for the GIL each wake once per
    # switch interval: at 5 ms a server of 5,000 clients that fell behind
    # spent its CPU on those wake-ups and stalled (docs/performance.md).
    env = {"PYTHONPATH": str(TEST_PLUGINS)}
    result = run("serve", "--port", "0", "--plugins", "chatcore_testplugins.switch_interval", env=env)
    assert result.stderr.endswith(f"chatcore: error: switch interval {cli.SWITCH_INTERVAL:g}\n")
    assert 10 * sys.getswitchinterval() <= cli.SWITCH_INTERVAL  # this process keeps Python's default


# -- --cpu-affinity -------------------------------------------------------------

# CI runs on Linux, so these never skip there; macOS and the BSDs have no
# sched_setaffinity, and --cpu-affinity auto does nothing on them.
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux only: sched_setaffinity, read back from /proc (CI is Linux)"
)


@linux_only  # glibc
def test_the_allocator_keeps_freed_memory_unless_the_operator_said_otherwise():
    assert allocator.keep_freed_memory({}) is True  # glibc: Linux, as CI
    assert allocator.keep_freed_memory({"MALLOC_TRIM_THRESHOLD_": "131072"}) is False
    assert allocator.keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}) is False


def _thread_cpus(pid: int) -> list[str]:
    """Each thread's allowed CPUs, as the kernel lists them ("0-1")."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        found.append(re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M).group(1))  # type: ignore[union-attr]
    return found


def _threads_with_clients(*args: str) -> tuple[list[str], str]:
    """Every thread's CPUs in a server with two clients connected, and its log."""
    with ServerProcess("--plugins", "welcome", *args) as server:
        clients = [LineClient(server.address) for _ in range(2)]
        for client in clients:
            client.sync()
        assert server.proc is not None
        cpus = _thread_cpus(server.proc.pid)
        for client in clients:
            client.close()
    return cpus, server.stderr


@linux_only
def test_by_default_every_thread_of_the_server_runs_on_one_cpu():
    cpus, log = _threads_with_clients()
    assert len(cpus) >= 6  # main, console log, accept loop, writer, two clients
    assert len(set(cpus)) == 1, cpus
    (only,) = set(cpus)
    assert only.isdigit()
    assert int(only) in os.sched_getaffinity(0)
    if len(os.sched_getaffinity(0)) > 1:
        assert f"running on CPU {only} (--cpu-affinity" in log


@linux_only
def test_cpu_affinity_by_number_and_all():
    first = str(min(os.sched_getaffinity(0)))  # CI may run in a cpuset without CPU 0
    cpus, log = _threads_with_clients("--cpu-affinity", first)
    assert set(cpus) == {first}
    assert f"running on CPU {first} (--cpu-affinity" in log
    cpus, log = _threads_with_clients("--cpu-affinity", "all")
    allowed = os.sched_getaffinity(0)
    assert {len(list(_expand(cpu))) for cpu in cpus} == {len(allowed)}
    assert "running on CPU" not in log


def _expand(listed: str) -> list[int]:
    out: list[int] = []
    for part in listed.split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


@linux_only
def test_cpu_affinity_outside_what_the_process_may_use_exits_2():
    first = min(os.sched_getaffinity(0))
    result = run("serve", "--port", "0", "--cpu-affinity", f"{first},4095")
    assert result.returncode == 2
    assert f"--cpu-affinity {first},4095: CPU 4095 is not available to this process (it may use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("bad", ["x", "1-", "3-1", "-1", "1,,2"])
def test_cpu_affinity_that_is_not_a_cpu_list_exits_2(bad):
    result = run("serve", "--port", "0", f"--cpu-affinity={bad}")
    assert result.returncode == 2
    assert "--cpu-affinity" in result.stderr
    assert "Traceback" not in result.stderr


def test_cpu_lists_parse_and_print_as_the_kernel_writes_them():
    from chatcore.engine.affinity import cpu_choice

    assert cpu_choice("auto") == "auto"
    assert cpu_choice(" ALL ") == "all"
    assert cpu_choice("5,0-2") == "0-2,5"
    assert cpu_choice("8,7,0,1,2,5") == "0-2,5,7-8"


@pytest.mark.parametrize("where", ["option", "environment", "file"])
def test_cpu_affinity_shows_in_the_configuration_file_as_given(where, tmp_path):
    args, env = ["serve", "--plugins", "", "--print-config"], {}
    if where == "option":
        args += ["--cpu-affinity", "1,0"]
    elif where == "environment":
        env["CHATCORE_CPU_AFFINITY"] = "1,0"
    else:
        (tmp_path / "chatcore.toml").write_text('cpu-affinity = "1,0"\n', encoding="utf-8")
        args += ["--config", str(tmp_path / "chatcore.toml")]
    result = run(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert 'cpu-affinity = "0-1"' in result.stdout


class _FakeScheduler:
    """os.sched_getaffinity and os.sched_setaffinity, as if the process may
    use ``allowed``; records what was set, per thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, allowed: set[int], current: int | None) -> None:
        from chatcore.engine import affinity

        self.set: dict[int, frozenset[int]] = {}
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed), raising=False)
        monkeypatch.setattr(os, "sched_setaffinity", self._set, raising=False)
        monkeypatch.setattr(affinity, "_current_cpu", lambda: current)

    def _set(self, tid: int, cpus: frozenset[int]) -> None:
        self.set[tid] = frozenset(cpus)


@pytest.mark.parametrize(
    ("allowed", "current", "choice", "expected"),
    [
        ({2, 3}, 3, "auto", {3}),  # where the kernel put it
        ({2, 3}, 7, "auto", {2}),  # running outside its set (it just changed): the first allowed
        ({2, 3}, None, "auto", {2}),  # no /proc/self/stat
        ({5}, 5, "auto", None),  # one CPU: nothing to do
        ({2, 3}, 3, "all", None),
        ({2, 3}, 3, "2", {2}),
        ({0, 1, 2, 3}, 0, "1-3", {1, 2, 3}),
    ],
)
def test_apply_pins_every_thread_to_what_it_chose(monkeypatch, allowed, current, choice, expected):
    from chatcore.engine import affinity

    scheduler = _FakeScheduler(monkeypatch, allowed, current)
    assert affinity.apply(affinity.cpu_choice(choice)) == (None if expected is None else frozenset(expected))
    if expected is None:
        assert scheduler.set == {}
    else:
        assert scheduler.set, "no thread was pinned"
        assert set(scheduler.set.values()) == {frozenset(expected)}
        assert threading.get_native_id() in scheduler.set  # this thread, and the others of the process


def test_apply_refuses_cpus_the_process_may_not_use(monkeypatch):
    from chatcore.engine import affinity

    scheduler = _FakeScheduler(monkeypatch, {2, 3}, 2)
    with pytest.raises(affinity.AffinityError, match=r"CPUs 0-1 are not available to this process \(it may use 2-3\)"):
        affinity.apply(affinity.cpu_choice("0-2"))
    assert scheduler.set == {}


@pytest.mark.parametrize(
    ("args", "plugin"),
    [
        (["--log-file", "x.jsonl"], "logger"),
        (["--plugins", "welcome", "--history-lines=5"], "history"),
    ],
)
def test_an_option_of_a_plugin_not_loaded_names_the_plugin(args, plugin, tmp_path):
    result = run("serve", *args, cwd=tmp_path)
    assert result.returncode == 2
    option = args[-2] if "=" not in args[-1] else args[-1].split("=")[0]
    assert f"{option} is an option of the {plugin} plugin: add it with --plugins welcome,{plugin}" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_an_unknown_option_no_plugin_offers_has_no_plugin_hint():
    result = run("serve", "--no-such-option")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "chatcore serve: error: unrecognized arguments: --no-such-option"


@pytest.mark.parametrize(
    ("plugin", "listen"),
    [("web", "--listen ws://127.0.0.1:8080"), ("irc", "--listen irc://127.0.0.1:6667")],
)
def test_a_front_end_plugin_without_its_listener_warns(plugin, listen):
    with ServerProcess("--plugins", f"welcome,{plugin}") as server:
        pass
    assert f"the {plugin} plugin is loaded but no listener uses its schemes" in server.stderr
    assert f"add {listen}" in server.stderr


def test_a_front_end_plugin_with_its_listener_does_not_warn():
    with ServerProcess(
        "--plugins", "welcome,web", "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0"
    ) as server:
        pass
    assert "no listener uses" not in server.stderr
