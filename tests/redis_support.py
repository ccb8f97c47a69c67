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
    """``redis-server`` on ``host`` (127.0.0.1) and a free port, in
    ``directory``; ``args`` are more of its options (``--replicaof HOST
    PORT`` for a replica); it listens on the addresses ``also`` too."""

    def __init__(self, directory: Path, *args: str, host: str = "127.0.0.1", also: tuple[str, ...] = ()) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = free_port(host)
        self.args = args
        self.also = also
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        where = ["--port", str(self.port), "--bind", self.host, *self.also, "--dir", str(self.directory)]
        # No persistence: a restarted Redis comes back empty, as after a crash.
        volatile = ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        if self.also:
            # Bound to a namespace's link as well (tests/netns.py), never to
            # an outside address: let its clients in without a password.
            where += ["--protected-mode", "no"]
        self.proc = subprocess.Popen(
            [self.binary, *where, *volatile, *self.args],
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

        return redis.Redis(host=self.host, port=self.port, decode_responses=True, socket_timeout=5)

    def replicating(self) -> bool:
        """Whether this replica's link to its primary is up (its first sync done)."""
        client = self.client()
        try:
            return client.info("replication").get("master_link_status") == "up"
        except Exception:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing saved, its sockets closed by the kernel."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

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


class SentinelServer:
    """A Redis Sentinel (``redis-server CONFIG --sentinel``) on 127.0.0.1
    and a free port, watching the primary ``primary`` under the name
    ``master``, with a quorum of one and short timeouts so that a failover
    takes a few seconds: the primary is taken for down after
    ``down_after`` ms without an answer. Sentinel rewrites its
    configuration file, so it is written into ``directory``."""

    def __init__(self, directory: Path, master: str, primary: RedisServer, *, down_after: int = 1000) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.master = master
        self.primary = primary
        self.down_after = down_after
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SentinelServer:
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "daemonize no\n"
            f'dir "{self.directory}"\n'
            f"sentinel monitor {self.master} {self.primary.host} {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.master} {self.down_after}\n"
            f"sentinel failover-timeout {self.master} {self.down_after * 3}\n"
            f"sentinel parallel-syncs {self.master} 1\n"
        )
        self.proc = subprocess.Popen(
            [self.binary, str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.primary_address() is not None, timeout=10, message=f"Sentinel on port {self.port}")
        return self

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5)

    def _ask(self, *command: str):  # type: ignore[no-untyped-def]
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server --sentinel exited with status {self.proc.returncode}")
        client = self.client()
        try:
            return client.execute_command(*command)
        except Exception:
            return None
        finally:
            client.close()

    def primary_address(self) -> tuple[str, int] | None:
        """Where the Sentinel says the primary is now."""
        reply = self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
        return (reply[0], int(reply[1])) if reply else None

    def knows_replica(self, replica: RedisServer) -> bool:
        """Whether the Sentinel found ``replica`` (through the primary) and could promote it."""
        for fields in self._ask("SENTINEL", "REPLICAS", self.master) or ():
            info = dict(zip(fields[::2], fields[1::2], strict=True)) if isinstance(fields, list) else fields
            if int(info.get("port", 0)) == replica.port:
                flags = str(info.get("flags", ""))
                return "s_down" not in flags and "disconnected" not in flags
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
