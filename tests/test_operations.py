"""Operations: JSON console logs, and what docs/operations.md promises."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatcore.engine.serving import SHUTDOWN_LINGER
from chatcore.testing import LineClient, ServerProcess

ROOT = Path(__file__).parent.parent
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_log_format_json_writes_one_object_a_line():
    with ServerProcess("--log-format", "json") as proc:
        client = LineClient(proc.address)
        client.sync()
        line = proc.expect_log(lambda line: "client joined" in line)
        client.close()
    assert proc.returncode == 0
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "chatcore.server"
    assert entry["message"].startswith("client joined: guest-1 from 127.0.0.1:")
    assert datetime.datetime.fromisoformat(entry["time"]).tzinfo is not None
    entries = [json.loads(text) for text in proc.stderr.splitlines()]
    assert entries[-1]["message"] == "server stopped"


def test_an_unknown_log_format_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--log-format", "xml"],
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )
    assert result.returncode == 2
    assert "--log-format: invalid choice: 'xml' (choose from" in result.stderr


def test_the_systemd_unit_gives_the_shutdown_linger_time():
    timeout = re.search(r"^TimeoutStopSec=(\d+)s$", OPERATIONS, re.MULTILINE)
    assert timeout is not None
    assert int(timeout.group(1)) >= 2 * SHUTDOWN_LINGER
    assert f"shutdown linger ({SHUTDOWN_LINGER:g} s)" in OPERATIONS
    assert "ExecReload=/bin/kill -HUP $MAINPID" in OPERATIONS
