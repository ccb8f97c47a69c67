"""The original chatroom's design, kept as the baseline for the benchmarks.

One thread per client; the thread that receives a chunk calls ``sendall()``
on every other client's socket in turn, forwarding the raw ``recv()`` chunk
without framing it into lines. That is fast when it works, and it is why the
original corrupted lines under load (two senders' chunks interleave on one
socket) and why one slow reader stalls everyone who talks to it.

Differences from the original, so the drivers can treat both servers alike:
each client is sent ``* welcome`` on connect (the driver waits for a first
line), TCP_NODELAY is left off and the listen backlog is the original's 10
unless ``--backlog`` says otherwise.

Run: ``python benchmarks/naive_server.py --port 0`` prints
``naive listening on 127.0.0.1:PORT``; or use :class:`NaiveServer` in-process.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

ORIGINAL_BACKLOG = 10
WELCOME = b"* welcome\n"


class NaiveServer:
    """Thread-per-client raw-chunk forwarding: the baseline."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, backlog: int = ORIGINAL_BACKLOG) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(backlog)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        self._running = True

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="naive-accept", daemon=True)
        thread.start()
        return thread

    def serve_forever(self) -> None:
        while self._running:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.clients.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.sendall(WELCOME)
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                with self.lock:
                    others = [c for c in self.clients if c is not conn]
                for other in others:
                    try:
                        other.sendall(data)
                    except OSError:
                        pass
        except OSError:
            pass
        finally:
            with self.lock:
                if conn in self.clients:
                    self.clients.remove(conn)
            conn.close()

    def stop(self) -> None:
        self._running = False
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            clients, self.clients = self.clients, []
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description="The naive thread-per-client chat server (benchmark baseline).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=ORIGINAL_BACKLOG, help="listen backlog (default: %(default)s)")
    options = parser.parse_args()
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    threading.stack_size(256 * 1024)  # as chatcore does, so memory per client compares threads, not stacks
    server = NaiveServer(options.host, options.port, options.backlog)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(f"naive listening on {server.address[0]}:{server.address[1]}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
