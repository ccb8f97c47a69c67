"""Fuzzing every wire decoder of a real server over real sockets: the native
line protocol, the IRC line parser, the WebSocket handshake, frames and
JSON dialect, and the Redis entry codec (hypothesis).

After each generated input the server must still be running, must have
closed the attacker's connection once the attacker closed its side, and
must still carry chat between two well-behaved clients; at the end its log
must hold no traceback. A clean refusal is fine; a crash, a hang or an
unexpected error is a bug.

Bounded for the normal suite (CHATCORE_FUZZ_EXAMPLES, default 40 per
decoder); ``tox -e fuzz`` runs many more.
"""

from __future__ import annotations

import base64
import errno
import itertools
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_support import RedisServer

from chatcore.plugins.redis import decode_event
from chatcore.testing import LineClient, ServerProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.fuzz,
    # Hypothesis warns when an example it prints is over 30 kB, which a long
    # line of garbage is by design; the suite turns warnings into errors.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

TIMEOUT = 10
EXAMPLES = int(os.environ.get("CHATCORE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("CHATCORE_FUZZ_EXAMPLES"),  # the normal suite: the same inputs every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_witness = itertools.count(1)


class Target:
    """A server under fuzzing and two clients that keep chatting through it."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.alice = LineClient(process.addresses["tcp"], timeout=TIMEOUT)
        self.bob = LineClient(process.addresses["tcp"], timeout=TIMEOUT)
        for client, nick in ((self.alice, "alice"), (self.bob, "bob")):
            client.send(f"/nick {nick}")
            client.expect(f"* you are now known as {nick}")

    def attack(self, scheme: str, data: bytes) -> None:
        """Send ``data`` on a fresh connection, close our side, and wait for
        the server to close its side: it has then read all of it."""
        with socket.create_connection(self.process.addresses[scheme], timeout=TIMEOUT) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except TimeoutError:
                kept = f"the server kept a {scheme} connection open after its end: {data[:200]!r}"
                raise AssertionError(kept) from None
            except OSError as error:
                # Refused mid-way (a reset, or closed before our shutdown): a clean refusal.
                if error.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                    raise

    def still_serves(self) -> None:
        assert self.process.proc is not None
        assert self.process.proc.poll() is None, self.process.stderr[-3000:]
        n = next(_witness)
        self.alice.send(f"witness {n}")
        self.bob.expect(f"<alice> witness {n}")

    def close(self) -> None:
        self.alice.close()
        self.bob.close()
        self.process.stop()
        assert "Traceback" not in self.process.stderr, self.process.stderr[-5000:]
        assert "unexpected error" not in self.process.stderr, self.process.stderr[-5000:]


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    process = ServerProcess(
        "--plugins", "irc,web",
        "--listen", "tcp://127.0.0.1:0",
        "--listen", "irc://127.0.0.1:0",
        "--listen", "ws://127.0.0.1:0",
    ).start()  # fmt: skip
    target = Target(process)
    yield target
    target.close()


# -- the native line protocol -------------------------------------------------------

COMMANDS = ["/nick", "/join", "/msg", "/me", "/who", "/rooms", "/help", "/ping", "/pass", "/kick", "/quit", "//", "/"]
SEPARATORS = [b"\n", b"\r\n", b"\r", b"", b"\x00"]


def _lines(words: list[str]) -> st.SearchStrategy[bytes]:
    text = st.text(max_size=80)
    line = st.one_of(
        st.binary(max_size=300),
        st.builds(lambda verb, rest: f"{verb} {rest}".encode("utf-8", "surrogatepass"), st.sampled_from(words), text),
        st.builds(lambda n: b"x" * n, st.integers(0, 70_000)),  # past --max-line
    )
    return st.lists(st.tuples(line, st.sampled_from(SEPARATORS)), max_size=15).map(
        lambda parts: b"".join(a + b for a, b in parts)
    )


@FUZZ
@given(data=_lines(COMMANDS))
def test_native_protocol_garbage(target: Target, data: bytes) -> None:
    target.attack("tcp", data)
    target.still_serves()


# -- IRC -----------------------------------------------------------------------------

IRC_VERBS = [
    "NICK", "USER", "JOIN", "PART", "PRIVMSG", "NOTICE", "PING", "PONG", "MODE", "WHO", "WHOIS", "NAMES",
    "LIST", "KICK", "TOPIC", "CAP", "PASS", "QUIT", "OPER", "AWAY", ":prefix PRIVMSG", "@tag=x PRIVMSG",
]  # fmt: skip


@FUZZ
@given(
    register=st.booleans(),
    data=_lines(IRC_VERBS),
)
def test_irc_parser_garbage(target: Target, register: bool, data: bytes) -> None:
    # Before and after registration: the two phases have their own handlers.
    head = b"NICK fuzz\r\nUSER fuzz 0 * :fuzz\r\n" if register else b""
    target.attack("irc", head + data)
    target.still_serves()


# -- the web front-end: the handshake, the frames, the JSON ---------------------------

KEY = base64.b64encode(b"0123456789abcdef")
UPGRADE = [
    (b"Host", b"127.0.0.1"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", KEY),
    (b"Sec-WebSocket-Version", b"13"),
]


def _request(headers: list[tuple[bytes, bytes]], target: bytes = b"/ws") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"


header_value = st.one_of(st.binary(max_size=60).filter(lambda v: b"\r" not in v and b"\n" not in v), st.just(b""))


@FUZZ
@given(
    replaced=st.dictionaries(st.sampled_from([name for name, _ in UPGRADE]), header_value, max_size=3),
    extra=st.lists(st.tuples(st.sampled_from([b"Origin", b"Cookie", b"X-F", b"Content-Length"]), header_value)),
    path=st.sampled_from([b"/ws", b"/", b"/ws?x=\xff", b"*", b"/../../etc/passwd", b"/static/%00"]),
)
def test_websocket_handshake_garbage(target: Target, replaced, extra, path) -> None:  # type: ignore[no-untyped-def]
    headers = [(name, replaced.get(name, value)) for name, value in UPGRADE] + extra
    target.attack("ws", _request(headers, path))
    target.still_serves()


def _frame(*, fin: bool, rsv: int, opcode: int, masked: bool, length: int | None, payload: bytes) -> bytes:
    """One frame; ``length`` overrides the real payload length (a lie)."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if masked:
        key = b"\x01\x02\x03\x04"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


json_message = st.one_of(
    st.builds(
        lambda kind, text: json.dumps({"type": kind, "text": text}).encode(),
        st.sampled_from(["line", "resume", "ping", "chat", "", "LINE"]),
        st.one_of(st.text(max_size=100), st.sampled_from(["/nick fuzzer", "/join dev", "/msg bob x"])),
    ),
    st.builds(
        lambda room, epoch, offset: json.dumps(
            {"type": "resume", "room": room, "epoch": epoch, "offset": offset}
        ).encode(),
        st.one_of(st.text(max_size=20), st.integers()),
        st.one_of(st.text(max_size=20), st.none()),
        st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=5)),
    ),
    st.binary(max_size=200),
)
frame = st.builds(
    _frame,
    fin=st.booleans(),
    rsv=st.integers(0, 7),
    opcode=st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11, 15]),
    masked=st.booleans(),
    length=st.one_of(st.none(), st.none(), st.integers(0, 2**63 - 1)),
    payload=json_message,
)
good_frame = st.builds(
    _frame,
    fin=st.just(True),
    rsv=st.just(0),
    opcode=st.just(1),
    masked=st.just(True),
    length=st.none(),
    payload=json_message,
)


@FUZZ
@given(frames=st.lists(st.one_of(frame, good_frame), min_size=1, max_size=8))
def test_websocket_frames_and_json_garbage(target: Target, frames: list[bytes]) -> None:
    target.attack("ws", _request(UPGRADE) + b"".join(frames))
    target.still_serves()


# -- the Redis entry codec ----------------------------------------------------------

FIELDS = ["type", "room", "nick", "text", "time", "user", "new_nick", "reason", "disconnected", "kicked_by", "operator"]
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)
event_json = st.one_of(
    st.dictionaries(
        st.sampled_from(FIELDS),
        st.one_of(json_value, st.sampled_from(["Chat", "Joined", "Left", "lobby", "amy", "NickChanged"])),
    ).map(json.dumps),
    st.text(max_size=200),
)


@settings(max_examples=EXAMPLES * 25, deadline=None)
@given(text=event_json)
def test_the_entry_codec_refuses_with_value_error_only(text: str) -> None:
    try:
        decode_event(text)
    except ValueError:
        pass


@pytest.fixture(scope="module")
def cluster_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Target]]:
    redis_server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    process = ServerProcess(
        "--plugins", "redis",
        "--listen", "tcp://127.0.0.1:0",
        "--redis-url", redis_server.url,
        "--redis-cluster", "fuzz",
    ).start()  # fmt: skip
    target = Target(process)
    yield redis_server, target
    target.close()
    redis_server.stop()


def _forge(redis_server: RedisServer, fields: dict[str, object]) -> None:
    """Append ``fields`` to the lobby's stream as the next entry of another node."""
    client = redis_server.client()
    try:
        [stream] = client.keys("chatcore:*:room:lobby:stream")
        meta = stream.removesuffix(":stream") + ":meta"
        entry: dict[str, object] = {"v": "1", "node": "fuzzer-node"}
        entry.update(epoch=client.hget(meta, "epoch"), offset=client.hincrby(meta, "offset", 1))
        entry.update(fields)
        client.xadd(stream, entry)
    finally:
        client.close()


@FUZZ
@given(
    event=st.one_of(event_json, st.binary(max_size=200)),
    extra=st.dictionaries(st.sampled_from(["v", "node"]), st.text(max_size=10)),
)
def test_redis_entries_garbage(cluster_target: tuple[RedisServer, Target], event, extra) -> None:  # type: ignore[no-untyped-def]
    redis_server, target = cluster_target
    _forge(redis_server, {"event": event, **extra})
    n = next(_witness)
    _forge(
        redis_server, {"event": json.dumps({"type": "Chat", "room": "lobby", "nick": "mallory", "text": f"after {n}"})}
    )
    target.bob.expect(f"<mallory> after {n}")  # the reader read past the garbage
    target.still_serves()
