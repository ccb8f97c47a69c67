"""The chat server: socketserver's threading TCP server, one thread per client.

Class layout (socketserver's shape)::

    socketserver.TCPServer
      + socketserver.ThreadingMixIn
        = ChatServer          accepts, owns the registry, the writer, the hooks
    socketserver.BaseRequestHandler
        = ClientHandler       one per connection, on its own thread: reads
                              lines, runs the hooks, delivers to the room

For the caller: ``serve_forever()`` in a thread, then ``stop()`` (which calls
``shutdown()`` and ``server_close()``). May be overridden: ``handle_line()``
and ``deliver()``.

Every line that goes to a room passes through :meth:`ChatServer.deliver`:
encoded once, queued to each member except the sender, written by the
writer thread (:mod:`chatcore.engine.writer`).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from typing import Any

from chatcore.config import Config
from chatcore.engine.connection import Client
from chatcore.message import Message
from chatcore.wire.native import ERROR, NOTICE, LineFramer, action_line, chat_line, decode, sanitize
from chatcore.engine.registry import Registry
from chatcore.engine.writer import Writer

log = logging.getLogger("chatcore.server")

# recv() allocates its whole buffer before it blocks, so a large buffer would
# sit in memory for every idle client. Idle clients wait with a small one;
# a read that fills it is followed by large reads until the data runs out.
RECV_IDLE = 256
RECV_BUSY = 65536
#: How long a refused connection may take to close after its reply.
REFUSE_LINGER = 1.0
#: How often the accept loop checks for shutdown(): stop() waits up to this.
ACCEPT_POLL_INTERVAL = 0.1
#: How long a disconnecting client may take to read what is queued for it.
SHUTDOWN_LINGER = 2.0


def _format_address(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ChatServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A multithreaded chat server configured by a :class:`Config`."""

    allow_reuse_address = True  # SO_REUSEADDR, as the original chatroom
    daemon_threads = True
    block_on_close = False  # stop() waits for clients itself, with a deadline

    def __init__(self, config: Config) -> None:
        options = config.options
        self.config = config
        self.hooks = config.pluginmanager.hooks
        self.registry = Registry()
        self.writer = Writer()
        self.max_line: int = options.max_line
        self.max_queue: int = options.max_queue
        self.max_clients: int = options.max_clients
        self.request_queue_size = options.backlog
        if ":" in options.host:
            self.address_family = socket.AF_INET6
        self._stopping = False
        self._serving = False
        self._stopped = False
        self._threads_lock = threading.Lock()
        self._handlers: set[threading.Thread] = set()
        super().__init__((options.host, options.port), ClientHandler)
        self.address: tuple[str, int] = self.server_address[:2]  # type: ignore[assignment]

    @property
    def address_text(self) -> str:
        """The bound address as ``host:port``."""
        return _format_address(self.address)

    # -- life cycle ---------------------------------------------------------

    def start(self) -> threading.Thread:
        """Start the plugins, the writer and the accept loop (in a thread)."""
        self.hooks.server_start(self)
        self.writer.start()
        self._serving = True
        thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": ACCEPT_POLL_INTERVAL},
            name="chatcore-accept",
            daemon=True,
        )
        thread.start()
        return thread

    def stop(self, reason: str = "server shutting down", timeout: float = SHUTDOWN_LINGER) -> None:
        """Stop accepting, tell every client, flush what is queued, close.

        Returns within about ``timeout`` seconds, whatever the clients do.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        if self._serving:
            self.shutdown()
        deadline = time.monotonic() + timeout
        for client in self.registry:
            client.disconnect(reason, notice=reason, linger=timeout)
        with self._threads_lock:  # stop() may run on a client's own thread (a plugin's command)
            threads = [thread for thread in self._handlers if thread is not threading.current_thread()]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        self.hooks.server_stop(self)
        self.server_close()

    def server_close(self) -> None:
        """Close the listening socket and stop the writer."""
        super().server_close()
        self.writer.stop()

    # -- socketserver overrides ---------------------------------------------

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        thread = threading.current_thread()
        with self._threads_lock:
            self._handlers.add(thread)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._threads_lock:
                self._handlers.discard(thread)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection: make the handler and run it.

        socketserver calls ``RequestHandlerClass(...)``, and a class call
        runs ``__init__`` one C level deeper; calling ``__init__`` ourselves
        lets CPython run it inline. A client's thread keeps every stack page
        it touches, and that one level decides whether it touches two pages
        or three: 4 KB per connected client.
        """
        handler = ClientHandler.__new__(ClientHandler)
        handler.__init__(request, client_address, self)  # type: ignore[misc]  # inline, on purpose (above)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unexpected error with %s", _format_address(client_address))

    # -- delivery -----------------------------------------------------------

    def deliver(self, room: str, line: str, exclude: Client | None = None, *, relay: bool = True) -> int:
        """Send one protocol line to every member of ``room`` but ``exclude``.

        The one path for everything that goes to a room. The line is encoded
        once and the same bytes are queued to every member. Unless ``relay``
        is false, ``chatcore_room_line`` then tells the plugins, so a plugin
        can carry the room to other servers (and put their lines back in with
        ``relay=False``).

        :return: how many clients it was queued to.
        """
        data = line.encode("utf-8") + b"\n"
        count = 0
        for member in self.registry.members(room):
            if member is not exclude and member.close_reason is None:
                member.send_data(data)
                count += 1
        if relay and self.hooks.implemented("room_line"):
            self.hooks.room_line(room, line)
        return count

    def broadcast_message(self, message: Message) -> None:
        """Run a message through the filters and deliver it to its room."""
        sender = message.sender
        self.hooks.message(message)
        if message.rejected is not None:
            sender.error(message.rejected)
            return
        if not message.text:
            return
        # Chat is not echoed to its sender; an action is, as the answer to /me.
        if message.kind == "action":
            line, exclude = action_line(sender.nick, message.text), None
        else:
            line, exclude = chat_line(sender.nick, message.text), sender
        recipients = self.deliver(message.room, line, exclude=exclude)
        self.hooks.message_delivered(message, recipients)

    def change_room(self, client: Client, room: str, reason: str | None = None) -> None:
        """Move a client to ``room``, with the leave and join notices and
        hooks (used by ``/join``)."""
        old = self.registry.move(client, room)
        self.deliver(old, f"{NOTICE}{client.nick} left" + (f" ({reason})" if reason else ""))
        self.hooks.client_left(client, old, reason or f"joined {room}")
        self.deliver(room, f"{NOTICE}{client.nick} joined", exclude=client)
        self.hooks.client_joined(client, room)


class ClientHandler(socketserver.BaseRequestHandler):
    """Serves one connection on its own thread, from welcome to leave."""

    server: ChatServer
    request: socket.socket

    def handle(self) -> None:
        server = self.server
        sock = self.request
        address = (str(self.client_address[0]), int(self.client_address[1]))
        # Without this, Nagle's algorithm meets delayed ACKs and small rooms
        # see a steady ~40 ms delay per line.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        if server._stopping:
            refusal: str | None = "server shutting down"
        elif len(server.registry) >= server.max_clients:
            refusal = "server full, try again later"
        else:
            refusal = server.hooks.connection_arriving(address)
        if refusal:
            log.warning("refused %s: %s", _format_address(address), refusal)
            self._refuse(refusal)
            return

        client = Client(sock, address, server, client_id=server.registry.next_id(), max_queue=server.max_queue)
        server.registry.add(client)
        try:
            if server._stopping:
                client.disconnect("server shutting down", notice="server shutting down")
                return
            self._join(client)
            self._read_lines(client)
        finally:
            self._leave(client)

    def _refuse(self, reason: str) -> None:
        """Send ``! reason`` and close without losing that line.

        Closing a socket with unread input makes the kernel send a reset,
        which can discard the reply before the client reads it (a client
        usually sends something right after connecting). So: send, shut
        down writing, read what the client sends until it closes (at most
        a second), and only then close.
        """
        sock = self.request
        deadline = time.monotonic() + REFUSE_LINGER  # in all: a trickle cannot hold it
        try:
            sock.sendall(f"{ERROR}{reason}\n".encode())
            sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(4096):
                    break
        except OSError:
            pass  # gone already, or too slow to say goodbye to

    def _join(self, client: Client) -> None:
        server = self.server
        for line in server.hooks.welcome(client):
            client.notice(line)
        log.info("client joined: %s from %s", client.nick, _format_address(client.address))
        server.deliver(client.room, f"{NOTICE}{client.nick} joined", exclude=client)
        server.hooks.client_joined(client, client.room)

    def _read_lines(self, client: Client) -> None:
        framer = LineFramer(self.server.max_line)
        recv = self.request.recv
        handle_line = self.handle_line
        size = RECV_IDLE
        # No check of client.closed up here: a disconnect from any other
        # thread shuts the socket down, which ends recv() below.
        while True:
            try:
                data = recv(size)
            except OSError as exc:
                log.debug("read from %r failed: %s", client, exc)
                client.disconnect("connection lost", tell=False)
                return
            if not data:
                if framer.pending:
                    log.debug("%r closed the connection in the middle of a line", client)
                return
            size = RECV_BUSY if len(data) == size else RECV_IDLE
            for line in framer.feed(data):
                if client.closed:  # disconnected (by this line, or another thread)
                    return
                if line is None:
                    client.error(f"line too long (the limit is {self.server.max_line} bytes); it was not sent")
                else:
                    handle_line(client, line)

    def handle_line(self, client: Client, raw: bytes) -> None:
        """One complete line from the client: a command or a message."""
        text = sanitize(decode(raw))
        if not text:
            return
        if text[0] == "/":
            if text[:2] != "//":
                self._command(client, text)
                return
            text = text[1:]  # "//text" sends "/text" as a message
        self.server.broadcast_message(Message(client, client.room, text))

    def _command(self, client: Client, text: str) -> None:
        name, _, args = text[1:].partition(" ")
        name = name.lower()
        if not self.server.hooks.command(client, name, args.strip()):
            client.error(f"unknown command /{name} (try /help)")

    def _leave(self, client: Client) -> None:
        server = self.server
        if client.close_reason is None:
            client.disconnect("connection closed", tell=False)
        reason = client.close_reason or "connection closed"
        room = client.room
        if server.registry.remove(client):
            if not server._stopping:
                # A plain close or /quit needs no explanation; anything else does.
                said = "" if reason in ("connection closed", "quit") else f" ({reason})"
                server.deliver(room, f"{NOTICE}{client.nick} left{said}")
            log.info("client left: %s from %s (%s)", client.nick, _format_address(client.address), reason)
            server.hooks.client_left(client, room, reason)
        # The writer is done by the client's finish deadline (its linger).
        if not client.wait_closed(max(SHUTDOWN_LINGER, client._finish_deadline - time.monotonic()) + 5):
            log.warning("writer did not release %r in time; closing anyway", client)
