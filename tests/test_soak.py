"""benchmarks/soak.py runs, samples and stops by itself: a few seconds of it,
against one server and against a cluster of two with a real redis-server.

The soak itself (30 minutes and more) is run by hand; its figures are in
docs/reliability.md. Here it runs as a subprocess, as it is used, for about
six seconds, and its CSV (and, where matplotlib is installed, its plots)
are checked.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from redis_support import require_redis_server

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("cluster", [False, True], ids=["one server", "cluster"])
def test_a_short_soak_samples_every_interval_and_stops_by_itself(tmp_path: Path, cluster: bool) -> None:
    if cluster:
        require_redis_server()
    out = tmp_path / "out"
    command = [sys.executable, str(SOAK), "--minutes", "0.1", "--interval", "2", "--clients", "6", "--rooms", "2"]
    command += ["--rate", "2", "--churn", "1", "--out", str(out)] + (["--cluster"] if cluster else [])
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "soak: done after" in result.stdout

    with (out / "soak.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    servers = {"server1", "server2"} if cluster else {"server1"}
    assert {row["server"] for row in rows} == servers
    assert len(rows) >= 3 * len(servers)  # a sample every 2 s for 6 s, on each server
    last = rows[-1]
    assert int(last["sent"]) > 0
    assert int(last["delivered"]) > 0
    assert int(last["lost"]) == 0
    assert int(last["churned"]) > 0
    for row in rows:
        assert float(row["rss_mib"]) > 0
        assert int(row["threads"]) > 0
        assert int(row["fds"]) > 0
        assert float(row["connected"]) > 0
        assert float(row["load_average"]) >= 0
    if cluster:
        assert float(last["redis_used_mib"]) > 0
    assert (out / "server1.log").exists()

    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "soak.png").stat().st_size > 1000
        assert (out / "soak-latency.png").stat().st_size > 1000
        # And again from the CSV alone.
        replot = [
            sys.executable,
            str(SOAK),
            "--from-csv",
            str(out / "soak.csv"),
            "--plot-prefix",
            str(tmp_path / "again"),
        ]
        subprocess.run(replot, cwd=tmp_path, capture_output=True, timeout=60, check=True)
        assert (tmp_path / "again.png").stat().st_size > 1000
    else:
        assert "no matplotlib" in result.stderr
