"""Fuzz the IRC front-end: its line parser, registration (PASS, CAP, NICK,
USER) and every command after it, in a real server (fuzz/_engine.py).

Input: the first byte says how the bytes arrive (see ``chunked``); its
lowest bit, when set, puts a valid registration first (``NICK`` and
``USER``), so that the commands of a registered client are reached too.

Documented rejections: none may be an exception. IRC answers bad input
with numerics (``421`` unknown command, ``461`` not enough parameters,
``417`` line too long, ``432`` erroneous nickname ...) and ``ERROR``
lines: output, not errors. ``parse()`` alone must return None or a
command in upper case with its parameters, for any text.
"""

from __future__ import annotations

import _atheris

with _atheris.instrumented():
    from _engine import Engine, chunked

    from chatcore.plugins.irc import decode, parse

REGISTER = b"NICK fuzzer\r\nUSER fuzzer 0 * :Fuzzer\r\n"
engine = Engine()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    for line in data.split(b"\n"):
        parsed = parse(decode(line))
        if parsed is not None:
            command, params = parsed
            if not command or command != command.upper() or not all(isinstance(p, str) for p in params):
                raise AssertionError(f"parse({line!r}) gave {parsed!r}")
    chunks = chunked(data)
    if data[0] & 1:
        chunks.insert(0, REGISTER)
    engine.connection("irc", chunks)


if __name__ == "__main__":
    _atheris.fuzz(test_one_input)
