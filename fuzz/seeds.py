"""Write the seed corpus, fuzz/corpus/NAME/, from real lines of each protocol.

    python fuzz/seeds.py        # rewrites the seeds (the fuzzers' own finds go elsewhere)

Each seed is what a real client, server or operator sends: the lines of
docs/protocol.md, docs/irc.md and docs/web.md, the example configuration
file, and entries the redis plugin writes (made with its own encoder).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

from chatcore.events import Action, Chat, Joined, Left, ModeChanged, NickChanged, PrivateMessage, TopicChanged
from chatcore.plugins.redis.codec import encode_event, encode_moderation, encode_private

HERE = Path(__file__).parent
ROOT = HERE.parent

NATIVE = [
    b"hello everyone\n",
    b"/nick alice\n/join dev\nhi dev\n/me waves\n/msg bob psst\n/who\n/rooms\n/part dev bye\n",
    b"/join dev\n/topic release on friday\n/topic\n/mode +k s3cret\n/mode +l 10\n/mode\n/kick bob spam\n",
    b"/join dev key\n/invite bob\n/mode +b *!*@10.0.0.1\n/mode +e alice\n/mode -b *!*@10.0.0.1\n"
    b"/mode +m\n/mode +v bob\n",
    b"/help\n/help join\n/ping\n/quit see you\n",
    b"//not a command\r\n/NICK Bob\r\n\r\n/oper admin pw\n/ban 10.0.0.0/8 go\n/mute bob 60\n",
    b"/pass wrong\n/pass\n",
    b"\x1b[31mred\x1b[0m \xe2\x80\xae reversed \xe2\x80\x8b zero width\n\xff\xfe invalid utf-8\n",
    b"x" * 300 + b"\nafter a long line\n",
    b"caf\xc3\xa9 \xf0\x9f\x98\x80 \xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7\n",
]

IRC = [
    b"CAP LS 302\r\nNICK alice\r\nUSER alice 0 * :Alice A\r\nCAP REQ :multi-prefix\r\nCAP END\r\n",
    b"PASS secret\r\nNICK bob\r\nUSER bob 0 * :Bob\r\n",
    b"JOIN #dev\r\nPRIVMSG #dev :hello there\r\nNOTICE #dev :note\r\nPRIVMSG #dev :\x01ACTION waves\x01\r\n",
    b"JOIN #dev,#ops key1,key2\r\nTOPIC #dev :new topic\r\nTOPIC #dev\r\nMODE #dev +kl key 5\r\nMODE #dev\r\n",
    b"MODE #dev +b *!*@host\r\nMODE #dev +e alice!*@*\r\nMODE #dev -b *!*@host\r\nMODE #dev b\r\nMODE #dev +o bob\r\n",
    b"KICK #dev bob :bye\r\nINVITE bob #dev\r\nPART #dev :leaving\r\nNAMES #dev\r\nLIST\r\n",
    b"WHO #dev\r\nWHOIS bob\r\nISON alice bob\r\nUSERHOST alice\r\nLUSERS\r\nMOTD\r\nTIME\r\nINFO\r\nHELP\r\n",
    b"AWAY :lunch\r\nAWAY\r\nMODE alice +i\r\nPING :abc\r\nPONG :abc\r\nOPER admin pw\r\nKILL bob :spam\r\n",
    b"@time=2024-01-01T00:00:00Z :alice!a@h PRIVMSG bob :tagged\r\n:prefix NICK carol\r\nQUIT :bye\r\n",
    b"PRIVMSG bob :" + b"y" * 600 + b"\r\nJOIN 0\r\n",
    b"NICK \xe9\xe8\r\nUSER x x x x\r\nNICK\r\nUSER\r\n",
]

KEY = base64.b64encode(b"0123456789abcdef")
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n"
)


def frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def line(text: str) -> bytes:
    return json.dumps({"type": "line", "text": text}).encode()


WEB_RAW = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\nGET /style.css HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    UPGRADE,
    UPGRADE.replace(b"13", b"8"),
    UPGRADE.replace(b"Origin: http://127.0.0.1", b"Origin: http://evil.example"),
    UPGRADE + frame(line("hello")),
]
WEB_FRAMES = [
    frame(line("/nick alice")) + frame(line("hi")),
    frame(b"ping me", opcode=9) + frame(b"", opcode=10),
    frame(b'{"type": "li', fin=False) + frame(b'ne", "text": "split"}', opcode=0),
    frame(b"\x00\x01binary", opcode=2),
    frame(struct.pack("!H", 1000) + b"bye", opcode=8),
    frame(b"\xff\xfe not utf-8"),
]
WEB_JSON = [
    [line("/nick alice"), line("/join dev"), line("hello")],
    [line("/join dev"), json.dumps({"type": "resume", "room": "dev", "epoch": "e1", "offset": 3}).encode()],
    [b'{"type": "resume", "room": 1}', b"[1, 2]", b'{"type": "nope"}', b"not json", b"[[[[[[[[[[[[[["],
    [line("/me waves"), line("//slash"), line("x" * 5000)],
]

EVENTS = [
    Chat("lobby", "alice", "hello", time=1700000000.5),
    Action("dev", "bob", "waves", user="bob"),
    Joined("lobby", "carol"),
    Left("dev", "dave", "spam", False, "alice"),
    NickChanged("lobby", "alice", "alicia"),
    TopicChanged("dev", "alice", "release on friday"),
    ModeChanged("dev", "alice", "+kbo", ("key", "*!*@10.0.0.1", "bob")),
]
MODERATION = [
    ("kick", {"by": "admin", "nick": "bob", "reason": "spam"}),
    ("mute", {"by": "admin", "nick": "bob", "until": 1700000600.0}),
    ("ban", {"by": "admin", "network": "10.0.0.0/8", "reason": "abuse", "until": 1700003600.0}),
    ("unban", {"by": "admin", "network": "::ffff:10.0.0.1"}),
    ("room_kick", {"by": "alice", "room": "dev", "nick": "bob", "reason": "off topic"}),
    ("invite", {"by": "alice", "room": "dev", "nick": "carol"}),
]
STATE = {
    "created": "1700000000.0", "topic": "release", "topic_by": "alice", "topic_at": "1700000100.0",
    "key": "s3cret", "limit": "10", "mode:n": "1", "mode:t": "1", "mode:i": "1",
    "b:*!*@10.0.0.1": "alice 1700000200.0", "e:bob!*@*": "alice 1700000300.0",
    "o:alice": "1", "v:bob": "1", "i:carol": "1",
}  # fmt: skip


def fields(mapping: dict[str, str]) -> bytes:
    return "\0".join(f"{k}\0{v}" for k, v in mapping.items()).encode()


def seeds() -> dict[str, list[bytes]]:
    example = (ROOT / "chatcore.example.toml").read_bytes()
    config = [
        example,
        example + b"\0MAX_CLIENTS=500\nPLUGINS=welcome,logger\nLOG_LEVEL=DEBUG",
        b'plugins = ["welcome", "filters", "history"]\nmax-clients = 50\nflood-rate = 2.5\n'
        b'banned-words = ["spam", "eggs"]\nwelcome-text = "Hello {nick}!"\n',
        b'plugins = ["irc", "web"]\nlisten = ["tcp://127.0.0.1:0", "irc://[::1]:6667", "ws://localhost:8080"]\n'
        b'web-origins = ["http://example.com"]\nirc-autojoin = ["#lobby", "#dev"]\n',
        b"\0LISTEN=tcp://127.0.0.1:12000,irc://127.0.0.1:6667\nPLUGINS=irc\nQUIET=true\nMAX_LINE=512",
        b'limit-exempt = ""\nidle-timeout = 30.5\nlog-format = "json"\nmax-queue = 8192\n',
    ]
    entry = {"v": "1", "node": "n1", "epoch": "e1", "offset": "7", "event": encode_event(EVENTS[0])}
    codec = [b"\x00" + encode_event(event).encode() for event in EVENTS]
    codec.append(b"\x01" + encode_private(PrivateMessage("alice", "bob", "psst")).encode())
    codec += [b"\x02" + encode_moderation(action, details).encode() for action, details in MODERATION]
    codec.append(b"\x03" + fields(entry))
    codec.append(b"\x04" + fields(STATE))
    return {
        "native": [b"\x00" + seed for seed in NATIVE] + [b"\x83" + NATIVE[1], b"\x80" + NATIVE[5]],
        "irc": [b"\x00" + IRC[0], b"\x02" + IRC[1]] + [b"\x01" + seed for seed in IRC[2:]] + [b"\x85" + IRC[0]],
        "web": [b"\x00" + seed for seed in WEB_RAW]
        + [b"\x40" + seed for seed in WEB_FRAMES]
        + [b"\x80" + b"\0".join(messages) for messages in WEB_JSON],
        "config": config,
        "codec": codec,
    }


def main() -> None:
    for name, inputs in seeds().items():
        folder = HERE / "corpus" / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for data in inputs:
            (folder / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
        print(f"{folder}: {len(inputs)} seeds")


if __name__ == "__main__":
    main()
