"""Prometheus metrics at /metrics, and health checks at /healthz (alive) and
/readyz (ready to serve).

Nothing here runs per message: the engine counts as it goes anyway
(:mod:`chatcore.engine.stats`, per-thread plain ints), and a custom
collector reads those counts when Prometheus scrapes. The numbers are made
with the official ``prometheus_client`` library (``pip install
'chatcore[metrics]'``), whose own collectors give the ``process_*`` series
(read from /proc/self) and ``python_info``; docs/operations.md lists every
metric. Readiness is the server's (:meth:`ChatServer.readiness_problems`):
accepting connections, and no problem its backplane reports (a cluster link
that is down), so this plugin knows nothing of any cluster plugin.
"""

from __future__ import annotations

import argparse
import http.server
import io
import logging
import platform
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from chatcore import Config, UsageError, hookimpl
from chatcore.config import restart_only, whole_number
from chatcore.engine.connection import DISCONNECT_CAUSES
from chatcore.engine.server import ChatServer
from chatcore.engine.stats import LATENCY_BUCKETS
from chatcore.version import __version__

NAME = "metrics"
#: The port Prometheus exporters of OpenTelemetry use by default.
DEFAULT_PORT = 9464
DEFAULT_HOST = "127.0.0.1"
#: The refusal labels the engine uses (chatcore_refused_connections_total).
REFUSAL_REASONS = ("full", "shutdown", "plugin", "tls_handshake")

log = logging.getLogger("chatcore.plugins.metrics")


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "metrics plugin",
        "Prometheus text format at http://HOST:PORT/metrics; /healthz answers 200 while serving, "
        "/readyz 200 while ready (serving, and the cluster link up with a cluster plugin), else 503 and why.",
    )
    # Restart only: a scraper would not find an endpoint that moved.
    restart_only(
        group.add_argument(
            "--metrics-port",
            type=whole_number(0, 65535),
            default=DEFAULT_PORT,
            metavar="PORT",
            help="port of the metrics endpoint; 0 picks a free one, which is logged (default: %(default)s)",
        )
    )
    restart_only(
        group.add_argument(
            "--metrics-host",
            default=DEFAULT_HOST,
            metavar="HOST",
            help=(
                "address of the metrics endpoint (default: %(default)s, this machine only; the metrics "
                "tell anyone who can reach them how busy the server is)"
            ),
        )
    )


@hookimpl
def chatcore_configure(config: Config) -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError(
            "the metrics plugin needs the prometheus_client library: pip install 'chatcore[metrics]'"
        ) from None


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    options = server.config.options
    endpoint = MetricsEndpoint(server, options.metrics_host, options.metrics_port)
    server.config.data[NAME] = endpoint
    endpoint.start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    endpoint: MetricsEndpoint | None = server.config.data.get(NAME)
    if endpoint is not None:
        endpoint.stop()


class ChatCollector:
    """Reads the server's counts at scrape time (a ``prometheus_client``
    custom collector)."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        server = self.server
        stats = server.stats
        totals = stats.totals()

        connected = GaugeMetricFamily(
            "chatcore_connected_clients", "Connections being served, by listener scheme.", labels=["scheme"]
        )
        by_scheme: dict[str, int] = {}
        for listener in server.listeners:
            by_scheme[listener.url.scheme] = by_scheme.get(listener.url.scheme, 0) + listener.connected
        for scheme, count in sorted(by_scheme.items()):
            connected.add_metric([scheme], count)
        yield connected
        yield from _build_and_reload(server)
        rooms = server.registry.rooms()
        yield GaugeMetricFamily("chatcore_rooms", "Rooms with at least one member.", value=len(rooms))
        yield GaugeMetricFamily(
            "chatcore_room_memberships",
            "Memberships of rooms: each connection counted once per room it is in.",
            value=sum(rooms.values()),
        )
        yield CounterMetricFamily(
            "chatcore_accepted_connections_total", "Connections accepted (not refused).", value=stats.accepted
        )
        yield CounterMetricFamily(
            "chatcore_messages_received_total",
            "Chat messages, actions and private messages received, before the filters.",
            value=totals.messages,
        )
        yield CounterMetricFamily(
            "chatcore_deliveries_total",
            "Room events (chat, actions, joins, leaves ...) queued to a recipient, one per recipient.",
            value=totals.deliveries,
        )
        yield CounterMetricFamily(
            "chatcore_sent_bytes_total",
            "Bytes written to clients' sockets, TLS included.",
            value=server.writer.sent_bytes,
        )

        disconnects = CounterMetricFamily(
            "chatcore_disconnects_total", "Clients disconnected, by cause.", labels=["reason"]
        )
        counted = stats.disconnects()
        for cause in DISCONNECT_CAUSES:
            disconnects.add_metric([cause], counted.get(cause, 0))
        yield disconnects

        refusals = CounterMetricFamily(
            "chatcore_refused_connections_total", "Connections refused, by reason.", labels=["reason"]
        )
        refused = stats.refusals()
        for reason in sorted({*REFUSAL_REASONS, *refused}):
            refusals.add_metric([reason], refused.get(reason, 0))
        yield refusals

        failures = CounterMetricFamily(
            "chatcore_plugin_failures_total", "Exceptions raised by plugins in per-event hooks.", labels=["plugin"]
        )
        failed = server.hooks.failure_counts()
        for name, _plugin in server.config.pluginmanager.list_name_plugin():
            failed.setdefault(name, 0)
        for name, count in sorted(failed.items()):
            failures.add_metric([name], count)
        yield failures

        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), totals.latency_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "chatcore_message_latency_seconds",
            "Time from a message's arrival to its queueing for every recipient.",
            buckets=buckets,
            sum_value=totals.latency_sum,
        )


def _build_and_reload(server: ChatServer) -> Iterator[Any]:
    """``chatcore_build_info`` and the last reload's outcome, named as
    Prometheus names its own (``prometheus_config_last_reload_successful``)."""
    from prometheus_client.core import GaugeMetricFamily

    build = GaugeMetricFamily(
        "chatcore_build_info",
        "The chatcore version and the Python it runs on; always 1.",
        labels=["version", "python_version"],
    )
    build.add_metric([__version__, platform.python_version()], 1)
    yield build
    config = server.config
    yield GaugeMetricFamily(
        "chatcore_config_last_reload_successful",
        "1 if the last load of the configuration (the start, then each SIGHUP) was applied, 0 if it failed.",
        value=1 if config.last_reload_successful else 0,
    )
    yield GaugeMetricFamily(
        "chatcore_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded and applied (Unix time).",
        value=config.last_reload_success_time,
    )


class MetricsEndpoint:
    """The HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``, on a
    thread of its own (``http.server``'s threading server, one short thread
    per scrape)."""

    def __init__(self, server: ChatServer, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

        # A registry of its own: two servers in one process (tests) must not
        # mix. It has the collectors the library's global registry has: the
        # process (CPU, memory, file descriptors, start time; from
        # /proc/self, nothing off Linux), python_info and the garbage
        # collector's counts, each read at scrape time.
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(ChatCollector(server))
        self.chat = server
        handler = type("Handler", (_Handler,), {"endpoint": self})
        try:
            self.http = _HTTPServer((host, port), handler)
        except OSError as exc:
            hint = " (pick another --metrics-port, or 0 for a free one)" if port else ""
            raise OSError(exc.errno, f"cannot listen on {host}:{port} for metrics: {exc.strerror}{hint}") from None
        bound_host, bound_port = self.http.server_address[:2]
        #: The bound ``(host, port)``.
        self.address = (str(bound_host), int(bound_port))
        self._thread = threading.Thread(target=self.http.serve_forever, name="chatcore-metrics", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        self._thread.start()
        log.info(
            "metrics at %s/metrics, health at %s/healthz and %s/readyz",
            self.url,
            self.url,
            self.url,
            extra={"event": "metrics_started", "url": self.url},
        )

    def stop(self) -> None:
        if self._thread.is_alive():
            self.http.shutdown()
        self.http.server_close()


class _HTTPServer(http.server.ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


#: Seconds a request's line and headers may take to arrive, in all (nginx's
#: ``client_header_timeout``); then it is answered 408 and closed.
HEADER_TIMEOUT = 10.0


class _SlowRequest(Exception):
    """The request head did not arrive within :data:`HEADER_TIMEOUT`."""


class _DeadlineReader(io.RawIOBase):
    """A socket's input that ends at a deadline, however the bytes trickle in.

    A per-read socket timeout alone is renewed by every byte: one header
    byte every few seconds would hold a thread for ever (slowloris), and 30
    such connections held 30 threads.
    """

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout  # for the writes that follow

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _SlowRequest
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise _SlowRequest from None
        finally:
            self._sock.settimeout(self._timeout)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET only; the metrics say how busy the server is and nothing about
    who is in it (no nicknames, rooms or addresses in any label), and the
    endpoint listens on 127.0.0.1 unless told otherwise."""

    endpoint: MetricsEndpoint
    # Defends against a client that stops reading the answer: a write may
    # not hold a thread for ever (the request's head has its own deadline).
    timeout = 10

    def setup(self) -> None:
        super().setup()
        # One request per connection (HTTP/1.0), so the deadline is the head's.
        deadline = time.monotonic() + HEADER_TIMEOUT
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline, self.timeout))

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _SlowRequest:
            self.close_connection = True
            try:
                self.wfile.write(b"HTTP/1.0 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass  # gone already

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._reply(200, generate_latest(self.endpoint.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            # Alive: serving, whatever its cluster link does (restarting a
            # server whose Redis is down would not bring Redis back).
            if self.endpoint.chat.accepting:
                self._reply(200, b"ok\n")
            else:
                self._reply(503, b"not accepting connections\n")
        elif path == "/readyz":
            problems = self.endpoint.chat.readiness_problems()
            if problems:
                self._reply(503, f"not ready: {'; '.join(problems)}\n".encode())
            else:
                self._reply(200, b"ready\n")
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
