"""Fixtures for the benchmark suite (``python -m pytest benchmarks/``).

The suite is not part of the default test run (``testpaths`` is ``tests``).
Every figure that has a baseline is measured for chatcore and for the naive
original design in the same run, as parametrized variants of one benchmark,
so pytest-benchmark's table shows them next to each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broadcast import default_plugins, filter_args

from chatcore.config import Config, parse_config
from chatcore.engine.server import ChatServer


@pytest.fixture(scope="session")
def plugins() -> str:
    """welcome and logger, and the word filter when it is installed."""
    return default_plugins()


@pytest.fixture
def chat_config(plugins: str, tmp_path: Path) -> Config:
    args = ["--port", "0", "--plugins", plugins, *filter_args(plugins)]
    if "logger" in plugins.split(","):
        args += ["--log-file", str(tmp_path / "events.jsonl")]
    return parse_config(args)


@pytest.fixture
def chat_server(chat_config: Config) -> Iterator[ChatServer]:
    """A server with its plugins and writer running, but no accept loop:
    benchmarks add Client objects themselves."""
    server = ChatServer(chat_config)
    server.hooks.server_start(server)
    server.writer.start()
    try:
        yield server
    finally:
        for client in server.registry:
            server.registry.remove(client)
        server.hooks.server_stop(server)
        server.writer.stop()
        server.server_close()


_FIGURES: list[str] = []


@pytest.fixture
def report_figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Add a line to the "chatcore figures" section printed at the end."""

    def add(text: str) -> None:
        _FIGURES.append(f"{request.node.name}: {text}")

    return add


def min_seconds(benchmark: Any) -> float | None:
    """The fastest round of a finished benchmark (None when disabled)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.min if stats is not None else None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("chatcore figures (best round)")
        for line in _FIGURES:
            terminalreporter.write_line(line)
