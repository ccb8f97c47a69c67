"""Smoke test of the Locust load test (loadtest/): a real server, Locust
headless against it, checked from Locust's own JSON report.

Both run as subprocesses: importing Locust would monkey-patch this process
with gevent. Locust needs Python 3.11+, so on 3.10 this file is not
collected (tests/conftest.py); on 3.11 and later a missing Locust is a
failure (install ``chatcore[loadtest]``).
"""

from __future__ import annotations

import importlib.util
import json
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

LOADTEST_DIR = Path(__file__).resolve().parent.parent / "loadtest"
STARTUP_TIMEOUT = 15.0
LOCUST_TIMEOUT = 90.0


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
            str(LOADTEST_DIR),
            "--headless",
            "-u",
            "5",
            "-r",
            "5",
            "-t",
            "5s",
            "--host",
            f"tcp://127.0.0.1:{server_port}",
            "--message-rate",
            "10",
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
    sent = entries[("send", "message")]["num_requests"]
    delivered = entries[("deliver", "message")]["num_requests"]
    # About 10 messages/s for ~4 s from each of 5 users, each to 4 others.
    assert sent >= 50, log
    assert delivered >= 2 * sent, log
    assert not [key for key in entries if key[0] == "loss"], log
    assert re.search(
        r"chatcore: sent \d+ messages, \d+ deliveries .* lost 0, duplicated 0, reordered 0, corrupted 0", log
    )
