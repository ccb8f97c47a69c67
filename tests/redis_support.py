"""A real redis-server for the tests, and the TCP proxy that can cut or stall a link.

Each test starts its own ``redis-server`` on a free loopback port with a
temporary directory (no persistence, so a restart comes back empty) and
stops it at teardown. Without redis-server the tests skip, saying how to
install it, except under CI (``CI=true``), where a missing Redis fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from faultproxy import FaultProxy

from chatcore.testing import wait_for

INSTALL_HINT = "redis-server not found: install it with `apt-get install redis-server` (Debian/Ubuntu)"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT + " (.ci/run installs it; a missing Redis in CI is a failure)")
        pytest.skip(INSTALL_HINT)
    return path


class RedisServer:
    """``redis-server`` on 127.0.0.1 and a free port, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        # No persistence: a restarted Redis comes back empty, as after a crash.
        volatile = ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.proc = subprocess.Popen(
            [self.binary, *where, *volatile],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=10, message=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with status {self.proc.returncode}")
        client = self.client()
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def version(self) -> str:
        info = self.client().info("server")
        return str(info["redis_version"])


class Proxy(FaultProxy):
    """The fault proxy (tests/faultproxy.py) under the names these tests use:
    :meth:`cut` resets every link, :meth:`stall` holds them open and silent
    until :meth:`resume`."""

    def resume(self) -> None:
        self.heal()
