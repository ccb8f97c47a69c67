"""Fixtures for testing chatcore and chatcore plugins, over real sockets.

An opt-in pytest plugin. In a plugin's ``conftest.py``::

    pytest_plugins = ["chatcore.testing"]

    def test_greets(chat_server_factory, chat_client):
        server = chat_server_factory("--plugins", "myplugin")
        alice = chat_client(server)
        alice.expect("* hello from myplugin")

Servers listen on 127.0.0.1 with a port the OS picks, run in background
threads of the test process, and are always stopped at teardown.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import pytest

from chatcore.config import parse_config
from chatcore.engine.server import ChatServer

DEFAULT_TIMEOUT = 5.0
#: For a server process: starting Python, the imports and the plugins takes
#: 1-3 s on a quiet machine, and was seen to take over 10 s on a busy 2-core
#: one. Only a failing test waits this long.
START_TIMEOUT = 30.0

Match = Union[str, "re.Pattern[str]", Callable[[str], bool]]


def wait_for(condition: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something true; fail after
    ``timeout`` seconds. Returns what the condition returned."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _summary(lines: list[str], last: int = 10) -> str:
    """The last lines, shortened, for failure messages."""
    shown = [line if len(line) <= 120 else line[:117] + "..." for line in lines[-last:]]
    more = f"{len(lines) - last} earlier lines, then " if len(lines) > last else ""
    return f"{more}{shown}"


def _matcher(match: Match) -> Callable[[str], bool]:
    if isinstance(match, str):
        return lambda line: line == match
    if isinstance(match, re.Pattern):
        pattern = match
        return lambda line: pattern.search(line) is not None
    return match


class LineClient:
    """A raw chat client for tests: sends lines, reads lines, with timeouts.

    Every line received is kept in :attr:`received`, in order.
    """

    def __init__(
        self,
        address: tuple[str, int],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        source: str | None = None,
    ) -> None:
        self.timeout = timeout
        # source="127.0.0.2": connect from another loopback address, a second "host".
        sock = socket.create_connection(address, timeout=timeout, source_address=(source, 0) if source else None)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_hostname or address[0])
        self.sock = sock
        self.received: list[str] = []
        self._buffer = b""
        self._unread: list[str] = []
        #: True once the server closed the connection.
        self.eof = False
        #: True if it was closed with a reset (RST) rather than a clean close.
        self.reset = False

    def __repr__(self) -> str:
        return f"<LineClient {self.sock.getsockname()}>"

    def send(self, line: str) -> None:
        """Send one line (the newline is added)."""
        self.sock.sendall(line.encode("utf-8") + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            # A reset right behind the close shows up as a pending socket error.
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.reset = True
            return False
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self.received.append(line)
            self._unread.append(line)
        return True

    def readline(self, timeout: float | None = None) -> str:
        """The next line received; fails on timeout or end of stream."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._unread:
            if not self._fill(deadline):
                raise AssertionError(
                    f"no line within the timeout (eof={self.eof}); received: {_summary(self.received)}"
                )
        return self._unread.pop(0)

    def expect(self, match: Match, timeout: float | None = None) -> str:
        """Read lines until one matches (a string equal to the line, a regex
        searched in it, or a predicate); returns it. Lines before it are
        consumed."""
        matches = _matcher(match)
        skipped: list[str] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while self._unread:
                line = self._unread.pop(0)
                if matches(line):
                    return line
                skipped.append(line)
            if not self._fill(deadline):
                raise AssertionError(f"expected a line matching {match!r}; got {_summary(skipped)} (eof={self.eof})")

    def expect_all(self, *wanted: str, timeout: float | None = None) -> list[str]:
        """Read lines until each of ``wanted`` has arrived, in any order;
        returns every line read. For lines with no order between them: a
        reply to this client's command, and what another client's (or
        another server's) reaction to it made."""
        missing = list(wanted)
        read: list[str] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while missing:
            while self._unread and missing:
                line = self._unread.pop(0)
                read.append(line)
                if line in missing:
                    missing.remove(line)
            if missing and not self._fill(deadline):
                raise AssertionError(f"expected {missing!r} too; got {_summary(read)} (eof={self.eof})")
        return read

    def sync(self) -> list[str]:
        """Round trip through the server: returns every line that arrived
        before the reply to ``/ping``. Since the server handles a client's
        lines in order, anything caused by earlier lines is in the result."""
        self.send("/ping")
        before: list[str] = []
        deadline = time.monotonic() + self.timeout
        while True:
            while self._unread:
                line = self._unread.pop(0)
                if line == "* pong":
                    return before
                before.append(line)
            if not self._fill(deadline):
                raise AssertionError(f"no reply to /ping; got {_summary(before)} (eof={self.eof})")

    def wait_closed(self, timeout: float | None = None) -> list[str]:
        """Wait until the server closes the connection; returns the lines
        that arrived before."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                raise AssertionError(f"connection still open; received: {_summary(self.received)}")
        lines, self._unread = self._unread, []
        return lines

    def close(self) -> None:
        self.sock.close()


class ServerProcess:
    """``chatcore serve`` in a child process, for testing the real program.

    Starts ``python -m chatcore serve --port 0 *args``, waits for the line
    that gives the bound address, and stops the process with a signal::

        with ServerProcess("--plugins", "welcome") as proc:
            client = LineClient(proc.address)
            ...
        assert proc.returncode == 0
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = START_TIMEOUT,
        wrapper: Sequence[str] = (),
    ) -> None:
        """``wrapper``: a command that runs the server, such as ``ip netns exec
        NAME`` (it must exec the server, so that signals reach it)."""
        self.args = _with_free_port(args)
        self.env = env
        self.wrapper = list(wrapper)
        self.timeout = timeout
        #: The first listener's ``(host, port)``.
        self.address: tuple[str, int] = ("", 0)
        #: Every listener's ``(host, port)``, by scheme (the first of each).
        self.addresses: dict[str, tuple[str, int]] = {}
        self.returncode: int | None = None
        self.stdout = ""
        self.stderr = ""
        self.proc: subprocess.Popen[str] | None = None
        self._stderr_buffer = b""

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "chatcore", "serve", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(self.env or {})},
        )
        assert self.proc.stdout is not None
        # The server prints its address once bound; a hung start must fail
        # the test, not hang the run.
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        #: The start-up line: ``chatcore X listening on URL, URL (plugins: ...)``,
        #: or with ``--log-format json`` a JSON object with that ``message``.
        self.banner = line
        text = line
        if line.startswith("{"):
            try:
                text = str(json.loads(line)["message"])
            except (ValueError, KeyError, TypeError):
                pass
        found = _LISTENER.findall(text.partition(" listening on ")[2])
        if not found:
            self.stop()
            raise AssertionError(f"server did not start: {line!r} {self.stderr}")
        for scheme, host, port in reversed(found):
            self.addresses[scheme] = (host, int(port))
        self.address = (found[0][1], int(found[0][2]))
        return self

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` (``signal.SIGHUP`` for a reload) to the server."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def expect_log(self, match: Match, timeout: float | None = None) -> str:
        """Read the server's log (its stderr) until a line matches (a string
        equal to the line, a regex searched in it, or a predicate); returns
        it. Every line read is kept in :attr:`stderr`."""
        assert self.proc is not None
        assert self.proc.stderr is not None
        matches = _matcher(match)
        fd = self.proc.stderr.fileno()  # read raw: the text wrapper would buffer lines select() cannot see
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while b"\n" in self._stderr_buffer:
                raw, self._stderr_buffer = self._stderr_buffer.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                self.stderr += line + "\n"
                if matches(line):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise AssertionError(f"no log line matching {match!r}; the log so far: {self.stderr[-3000:]}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the server exited; no log line matched {match!r}: {self.stderr[-3000:]}")
            self._stderr_buffer += chunk

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.stdout += out
        self.stderr += self._stderr_buffer.decode("utf-8", "replace") + err
        self._stderr_buffer = b""
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.returncode is None:
            self.stop()


# "tcp://127.0.0.1:40001" or "tls://[::1]:40002" in the start-up line.
_LISTENER = re.compile(r"(\w+)://\[?([^\]\s,]+?)\]?:(\d+)")


def _with_free_port(args: Sequence[str]) -> list[str]:
    """``chatcore serve`` arguments with a free port, unless they say where."""
    if any(arg == "--listen" or arg.startswith(("--listen=", "--port")) for arg in args):
        return list(args)
    return ["--port", "0", *args]


ServerFactory = Callable[..., ChatServer]
ClientFactory = Callable[..., LineClient]


@pytest.fixture
def chat_server_factory() -> Iterator[ServerFactory]:
    """Start servers: ``chat_server_factory(*serve_args, plugins=[objects])``.

    Arguments are those of ``chatcore serve`` (``--port 0`` is added);
    ``plugins`` are plugin objects registered before ``--plugins``.
    """
    servers: list[ChatServer] = []

    def start(*args: str, plugins: Sequence[object] = ()) -> ChatServer:
        config = parse_config(_with_free_port(args), extra_plugins=plugins)
        server = ChatServer(config)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(timeout=1.0)


@pytest.fixture
def chat_server(chat_server_factory: ServerFactory) -> ChatServer:
    """A server with the default plugins."""
    return chat_server_factory()


@pytest.fixture
def chat_client() -> Iterator[ClientFactory]:
    """Connect raw clients: ``chat_client(server)``; closed at teardown.

    With ``sync=True`` (the default) it returns once the server has
    answered a ``/ping``, so the client is welcomed and in the registry;
    the welcome lines are then in ``client.received``.
    """
    clients: list[LineClient] = []

    def connect(server: ChatServer, *, sync: bool = True) -> LineClient:
        client = LineClient(server.address)
        clients.append(client)
        if sync:
            client.sync()
        return client

    yield connect
    for client in clients:
        client.close()
