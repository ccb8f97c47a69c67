"""Fuzz the web front-end: the HTTP request and WebSocket upgrade (h11,
wsproto), the frames, and the page's JSON dialect, in a real server
(fuzz/_engine.py).

Input: the first byte chooses what the rest is:

- ``0x00``-``0x3f``: the raw bytes of the connection (requests, upgrades,
  and what follows them), in one read;
- ``0x40``-``0x7f``: WebSocket frames, after a valid upgrade;
- ``0x80``-``0xff``: JSON messages separated by NUL bytes, each sent in a
  masked text frame after a valid upgrade (the dialect: ``line``,
  ``resume``).

Documented rejections: none may be an exception. Bad HTTP is a 4xx
status and a close; bad framing a close frame (1002, 1007); an unknown or
malformed message ``{"type": "error", ...}``: output, not errors.
"""

from __future__ import annotations

import base64
import struct

import _atheris

with _atheris.instrumented():
    from _engine import Engine

    import chatcore.plugins.web  # noqa: F401

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + base64.b64encode(b"0123456789abcdef") + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MASK = b"\x37\xfa\x21\x3d"
engine = Engine()


def text_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    if mode < 0x40:
        chunks = [rest]
    elif mode < 0x80:
        chunks = [UPGRADE, rest]
    else:
        chunks = [UPGRADE, b"".join(text_frame(message) for message in rest.split(b"\0"))]
    engine.connection("ws", chunks)


if __name__ == "__main__":
    _atheris.fuzz(test_one_input)
