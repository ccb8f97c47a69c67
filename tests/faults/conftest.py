"""The fault suite's fixtures: real redis-server and chatcore processes, the
fault proxy between them, and a tally of every fault's figures.

Every case counts the lines sent and what each receiver got (delivered,
lost, duplicated, reordered, gap notices) and the time until delivery was
whole again; the table is printed at the end of the run (``tox -e faults``).
CHATCORE_FAULTS=all lengthens the faults (a 30 s partition instead of 2 s,
more lines); the default run stays within a minute or two.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path

import pytest
from fault_support import TIMEOUT, Tally
from redis_support import RedisServer

from chatcore.testing import LineClient, ServerProcess

_clusters = itertools.count(1)
_rows: list[Tally] = []


@pytest.fixture
def record() -> Callable[[Tally], Tally]:
    def add(row: Tally) -> Tally:
        _rows.append(row)
        return row

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _rows:
        return
    names = [field.name for field in fields(Tally)]
    terminalreporter.write_sep("-", "faults: lines sent and delivered per receiver")
    terminalreporter.write_line(" | ".join(names))
    for row in _rows:
        terminalreporter.write_line(" | ".join(str(getattr(row, name)) for name in names))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def cluster() -> Iterator[Callable[..., ServerProcess]]:
    """``cluster(url, host, *args, wrapper=())``: a chatcore server in this
    test's cluster (run under ``wrapper``: ``ip netns exec NAME``)."""
    name = f"faults{next(_clusters)}-{os.getpid()}"  # two test runs may share a Redis port by chance
    processes: list[ServerProcess] = []

    def start(url: str, host: str = "127.0.0.1", *args: str, wrapper: Sequence[str] = ()) -> ServerProcess:
        process = ServerProcess(
            "--plugins", "redis",
            "--listen", f"tcp://{host}:0",
            "--redis-url", url,
            "--redis-cluster", name,
            "--redis-timeout", "1",
            *args,
            wrapper=wrapper,
        )  # fmt: skip
        processes.append(process.start())
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.stop()


@pytest.fixture
def connect() -> Iterator[Callable[..., LineClient]]:
    """``connect(address, nick, source=None)``: a named client (from the
    loopback address ``source``), closed at teardown."""
    clients: list[LineClient] = []

    def make(address: tuple[str, int], nick: str, source: str | None = None) -> LineClient:
        client = LineClient(address, timeout=TIMEOUT, source=source)
        clients.append(client)
        client.send(f"/nick {nick}")
        client.expect(f"* you are now known as {nick}")
        return client

    yield make
    for client in clients:
        client.close()
