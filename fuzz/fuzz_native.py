"""Fuzz the native line protocol: the line framer, then every line as a
command or chat, in a real server (fuzz/_engine.py).

Input: the first byte says how the bytes arrive (one read, or reads of 1 to
128 bytes: framing across reads); the rest is what a ``tcp://`` client sends.

Documented rejections: none may be an exception. Too long a line is
``! line too long ...``, a bad command ``! ...``: output, not errors. The
framer alone must hold at most ``max_line`` bytes of a partial line and
give each line back whole, without its ending.
"""

from __future__ import annotations

import _atheris

with _atheris.instrumented():
    from _engine import Engine, chunked

    import chatcore.plugins.commands
    import chatcore.wire.native  # noqa: F401
    from chatcore.wire.framing import DROPPED, LineFraming

MAX_LINE = 256
engine = Engine()


def framer_invariants(chunks: list[bytes]) -> None:
    """LineFraming against a plain reference: the same lines, whatever the reads."""
    framer = LineFraming(MAX_LINE)
    got: list[bytes | None] = []
    for chunk in chunks:
        got += framer.feed(chunk)
        if framer.pending > MAX_LINE + 1:  # a final "\r" waits for its "\n"
            raise AssertionError(f"the framer holds {framer.pending} bytes, over max_line {MAX_LINE} + 1")
    # The reference: the lines of the whole input, each without its "\r"; one
    # over the limit is DROPPED, and so is an unfinished one already over it
    # (a trailing "\r" may be half of "\r\n": not counted).
    *lines, tail = b"".join(chunks).split(b"\n")
    stripped = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    expected_marked = [line if len(line) <= MAX_LINE else DROPPED for line in stripped]
    if len(tail) > MAX_LINE + tail.endswith(b"\r"):
        expected_marked.append(DROPPED)
    if got != expected_marked:
        raise AssertionError(f"the framer gave {got[:5]!r}..., expected {expected_marked[:5]!r}...")


def test_one_input(data: bytes) -> None:
    chunks = chunked(data)
    framer_invariants(chunks)
    engine.connection("tcp", chunks)


if __name__ == "__main__":
    _atheris.fuzz(test_one_input)
