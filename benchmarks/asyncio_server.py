"""An asyncio chat server: the benchmarks' reference for what one Python
event loop does (issue 27), beside chatcore's thread per client and the C
reference (benchmarks/c_epoll_server.c).

It does the work a chat server must, as chatcore's native protocol says,
and nothing more: it frames lines (split at ``\\n``, a trailing ``\\r``
dropped, lines over 4096 bytes refused), prefixes chat with ``<nick> ``,
never echoes a line to its sender, has rooms (every client starts in
``lobby``; ``/join ROOM`` enters a room and makes it current, ``/part ROOM``
leaves one; a client in several rooms gets each room line after
``[room] ``), tells a room who joined and left, and answers ``/nick``,
``/ping`` and ``/quit``. No plugins, no logging, no filters, no flood or
slow-consumer control beyond dropping a client with more than 16 MB unsent.

It is written the way asyncio's documentation shows for speed: a
``Protocol`` per connection (no streams, no task per client), one line
rendered once per room. Output is coalesced as the C reference's is: what a
member gets during one turn of the event loop is joined and handed to its
``transport.write()`` once, at the end of the turn (``call_soon``), so a
burst of lines or join notices costs one ``send()`` per member, not one per
line.

    python benchmarks/asyncio_server.py --port 0   # prints "asyncio listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
import sys

MAX_LINE = 4096
MAX_PENDING = 16 << 20
DEFAULT_ROOM = "lobby"


class Chat:
    """The rooms: name -> the members' protocols, in joining order."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[Client, None]] = {}
        self.guests = itertools.count(1)

    def say(self, room: str, text: bytes, *, but: Client | None = None) -> None:
        """A room line to every member but ``but``: labelled for those in several rooms."""
        members = self.rooms.get(room)
        if not members:
            return
        labelled = b"[" + room.encode() + b"] " + text
        for member in members:
            if member is not but:
                member.write(labelled if len(member.rooms) > 1 else text)


class Client(asyncio.Protocol):
    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.nick = f"guest-{next(chat.guests)}"
        self.rooms: list[str] = []  # the current room last
        self.pending = b""
        self.queued: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.write(f"* welcome, you are {self.nick}\n".encode())
        self.join(DEFAULT_ROOM)

    def write(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one turn of the loop goes
        out in one ``transport.write()`` (one ``send()``) at its end."""
        if not self.queued:
            asyncio.get_running_loop().call_soon(self.flush)
        self.queued.append(data)

    def flush(self) -> None:
        transport = self.transport
        data = b"".join(self.queued)
        self.queued.clear()
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_PENDING:  # a slow consumer
            transport.abort()
            return
        transport.write(data)

    def join(self, room: str) -> None:
        if room in self.rooms:
            self.rooms.remove(room)
            self.rooms.append(room)
            self.write(f"* you now talk in {room}\n".encode())
            return
        members = self.chat.rooms.setdefault(room, {})
        self.chat.say(room, f"* {self.nick} joined\n".encode())
        members[self] = None
        self.rooms.append(room)
        self.write(f"* you are now in {room} ({len(members)} here)\n".encode())

    def part(self, room: str) -> None:
        if room not in self.rooms:
            self.write(f"! you are not in {room}\n".encode())
            return
        self.rooms.remove(room)
        members = self.chat.rooms[room]
        del members[self]
        if not members:
            del self.chat.rooms[room]
        self.chat.say(room, f"* {self.nick} left\n".encode())
        self.write(f"* you left {room}\n".encode())

    def data_received(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        if len(self.pending) > MAX_LINE:
            self.pending = b""
            self.write(b"! line too long; it was not sent\n")
        for line in lines:
            self.line(line[:-1] if line.endswith(b"\r") else line)

    def line(self, line: bytes) -> None:
        if not line:
            return
        if len(line) > MAX_LINE:
            self.write(b"! line too long; it was not sent\n")
            return
        if line[:1] == b"/" and line[:2] != b"//":
            self.command(line.decode(errors="replace"))
            return
        if not self.rooms:
            self.write(b"! you are in no room\n")
            return
        self.chat.say(self.rooms[-1], b"<" + self.nick.encode() + b"> " + line.removeprefix(b"/") + b"\n", but=self)

    def command(self, text: str) -> None:
        name, _, argument = text.partition(" ")
        argument = argument.strip()
        if name == "/nick" and argument:
            old, self.nick = self.nick, argument
            self.write(f"* you are now known as {argument}\n".encode())
            for room in self.rooms:
                self.chat.say(room, f"* {old} is now known as {argument}\n".encode(), but=self)
        elif name == "/join" and argument:
            self.join(argument.lower())
        elif name == "/part":
            self.part(argument.lower() or (self.rooms[-1] if self.rooms else DEFAULT_ROOM))
        elif name == "/ping":
            self.write(b"* pong\n")
        elif name == "/quit":
            assert self.transport is not None
            self.transport.close()
        else:
            self.write(b"! unknown command\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for room in self.rooms:
            members = self.chat.rooms[room]
            del members[self]
            if not members:
                del self.chat.rooms[room]
            self.chat.say(room, f"* {self.nick} left\n".encode())
        self.rooms = []


async def serve(host: str, port: int) -> None:
    chat = Chat()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(chat), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()
    print(f"asyncio listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12000)
    options = parser.parse_args(argv)
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of clients
    asyncio.run(serve(options.host, options.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
