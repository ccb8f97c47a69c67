"""What the web front-end's abuse cases cost a real server process.

    python benchmarks/web_abuse.py

Starts ``chatcore serve`` with the web and history plugins, runs each attack
of issue 23 (#3, #4) from 127.0.0.2 (outside ``--limit-exempt``), and prints
the server's CPU time and resident memory before and after:

- ``fragments N``: a text frame with FIN=0, then N empty continuation frames;
- ``resume flood``: 1,000 ``resume`` frames for a room whose history answer
  is about 160 KB, from a client that never reads;
- ``pipelined GETs``: 2,000 pipelined ``GET /app.js`` that are never read.

The figures are in docs/security.md. Not a test: it takes about a minute and
its numbers depend on the machine.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request

from chatcore.testing import LineClient, ServerProcess

ATTACKER = "127.0.0.2"
SETTLE = 3.0  # seconds the server gets to work through what it was sent


def usage(pid: int) -> tuple[float, int]:
    """The process's CPU seconds and resident KB."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return cpu, rss


def settle(pid: int) -> tuple[float, int]:
    """Wait until the server's CPU time stops growing, then measure."""
    cpu = usage(pid)[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(SETTLE)
        now = usage(pid)[0]
        if now - cpu < 0.02:
            break
        cpu = now
    return usage(pid)


def websocket(address: tuple[str, int]) -> tuple[socket.socket, WSConnection]:
    """A WebSocket from the attacker's address, with a small receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((ATTACKER, 0))
    sock.connect(address)
    ws = WSConnection(ConnectionType.CLIENT)
    origin = f"http://{address[0]}:{address[1]}".encode()
    sock.sendall(ws.send(Request(host=f"{address[0]}:{address[1]}", target="/ws", extra_headers=[(b"Origin", origin)])))
    while True:
        ws.receive_data(sock.recv(65536))
        if any(isinstance(event, AcceptConnection) for event in ws.events()):
            return sock, ws


def epoch_of(address: tuple[str, int]) -> str:
    """The room's epoch, from the history a reading browser is sent."""
    sock, ws = websocket(address)
    text = ""
    while True:
        ws.receive_data(sock.recv(65536))
        for event in ws.events():
            if isinstance(event, Message):
                text += event.data
                if event.message_finished:
                    obj, text = json.loads(text), ""
                    if obj["type"] == "history":
                        sock.close()
                        return str(obj["events"][0]["epoch"])


def masked(opcode: int, payload: bytes, fin: bool) -> bytes:
    """One client frame (masked with a zero key, which RFC 6455 allows)."""
    assert len(payload) < 126
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, 0x80 | len(payload)) + b"\0\0\0\0" + payload


def measure(name: str, pid: int, attack: object) -> None:
    before = settle(pid)
    keep = attack()  # type: ignore[operator]
    after = settle(pid)
    print(f"{name:>18}: CPU {after[0] - before[0]:6.2f} s, RSS {before[1] / 1024:6.1f} -> {after[1] / 1024:6.1f} MB")
    del keep


def attack_fragments(web: tuple[str, int], count: int) -> socket.socket:
    sock, _ws = websocket(web)
    sock.sendall(masked(0x1, b"", fin=False) + masked(0x0, b"", fin=False) * count + masked(0x0, b"", fin=True))
    return sock


def attack_resumes(web: tuple[str, int]) -> socket.socket:
    epoch = epoch_of(web)
    sock, ws = websocket(web)
    frame = ws.send(Message(data=json.dumps({"type": "resume", "room": "lobby", "epoch": epoch, "offset": 0})))
    sock.setblocking(False)
    sent = 0
    for _ in range(1000):  # what the socket takes; the rest is never sent
        try:
            sock.sendall(frame)
            sent += 1
        except BlockingIOError:
            break
    print(f"{'':>18}  ({sent} resume frames went out)")
    return sock


def attack_pipelined(web: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((ATTACKER, 0))
    sock.connect(web)
    sock.sendall(b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
    return sock


def main() -> None:
    """Each attack against a fresh server: memory once taken is not given back."""
    args = ("--plugins", "web,history", "--listen", "ws://127.0.0.1:0", "--listen", "tcp://127.0.0.1:0")
    attacks = [
        ("fragments 12000", lambda web: attack_fragments(web, 12000)),
        ("fragments 24000", lambda web: attack_fragments(web, 24000)),
        ("resume flood", attack_resumes),
        ("pipelined GETs", attack_pipelined),
    ]
    for name, attack in attacks:
        with ServerProcess(*args, "--limit-exempt", "127.0.0.1/32", "--log-level", "WARNING") as proc:
            assert proc.proc is not None
            web = proc.addresses["ws"]
            talker = LineClient(proc.addresses["tcp"])
            talker.sync()
            for n in range(20):  # a full history: 20 lines that double in JSON
                talker.send(f"{n} " + '"' * 4000)
            talker.sync()
            measure(name, proc.proc.pid, lambda web=web, attack=attack: attack(web))
            talker.close()


if __name__ == "__main__":
    main()
