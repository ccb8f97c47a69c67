"""Line framing and sanitising: the per-line cost of reading from a client."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from chatcore.wire.framing import LineFraming
from chatcore.wire.native import DEFAULT_MAX_LINE, decode, sanitize

LINE = b"a chat line of about sixty-four bytes, as the other benchmarks use\n"[:63] + b"\n"


@pytest.mark.parametrize("lines_per_chunk", [1, 64, 1024])
def test_framing(benchmark: BenchmarkFixture, lines_per_chunk: int) -> None:
    """LineFraming.feed on recv() chunks of 64-byte lines (one line per chunk
    is a quiet client; 1024 a client sending as fast as it can)."""
    framer = LineFraming(DEFAULT_MAX_LINE)
    chunk = LINE * lines_per_chunk
    benchmark.extra_info["lines_per_call"] = lines_per_chunk
    lines = benchmark(framer.feed, chunk)
    assert len(lines) == lines_per_chunk


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("hello everyone, this is a typical chat line of moderate length", id="printable"),
        pytest.param("\x1b[31mred\x1b[0m text with a bell\x07 and a tab\t", id="escapes"),
    ],
)
def test_decode_and_sanitize(benchmark: BenchmarkFixture, text: str) -> None:
    raw = text.encode()
    result = benchmark(lambda: sanitize(decode(raw)))
    assert "\x1b" not in result
