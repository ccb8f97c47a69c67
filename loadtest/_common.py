"""Options, statistics and the summary shared by the chat scenarios.

What the scenarios record in Locust's statistics (request type / name):

=========  ===============  ===================================================
connect    welcome          TCP connect until the welcome line arrived
join       /join            ``/join ROOM`` until ``* you are now in ROOM``
nick       /nick            ``/nick NAME`` until ``* you are now known as``
send       message          one message written (time of ``sendall``)
deliver    message          one message arriving at one other client;
                            "response time" is the delivery latency
loss       lost, duplicated, reordered, corrupted    failures, one per message
receive    connection       the server closed a running user's connection
=========  ===============  ===================================================

Why deliveries are sampled: one Locust process records roughly 300,000
events per second on a whole core, and its timings go bad well before that
(about 60 % of a core). A room of 100 users each sending one message per
second is already 9,900 deliveries per second, and it grows with the square
of the room size. So each receiver reports one delivery in ``stride`` with
its latency and the number of deliveries it stands for; the ``deliver``
counts, rates and the CSV/JSON totals stay exact, the latency percentiles come
from the samples. ``--deliver-sample 0`` (the default) picks the stride so
that one process records at most ``--deliver-events`` delivery events per
second; ``--deliver-sample 1`` records every delivery.

Locust has no weighted event, so :func:`record_weighted` fires one ordinary
``request`` event and adds the remaining weight to the same counters
``StatsEntry.log`` updates (requests, requests per second, the response-time
histogram, total time and size). Distributed runs merge those counters as
usual.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.parse
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import StatsEntry, bucket_response_time

log = logging.getLogger("chatcore.loadtest")

DEFAULT_PORT = 12000
PROBLEMS = ("lost", "duplicated", "reordered", "corrupted")


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("chatcore load test")
    group.add_argument(
        "--message-rate",
        type=float,
        default=1.0,
        env_var="CHATCORE_MESSAGE_RATE",
        help="messages per second sent by each sending user (default: %(default)s)",
    )
    group.add_argument(
        "--message-size",
        type=int,
        default=64,
        env_var="CHATCORE_MESSAGE_SIZE",
        help="bytes of text per message, at least 40 (default: %(default)s)",
    )
    group.add_argument(
        "--rooms",
        type=int,
        default=1,
        env_var="CHATCORE_ROOMS",
        help="users are spread over this many rooms, room-0 .. room-N-1 (default: %(default)s)",
    )
    group.add_argument(
        "--listeners",
        type=float,
        default=0.0,
        env_var="CHATCORE_LISTENERS",
        help="share of users, 0 to 1, that only listen and never send (default: %(default)s)",
    )
    group.add_argument(
        "--no-nick",
        action="store_true",
        default=False,
        env_var="CHATCORE_NO_NICK",
        help="keep the server's guest-N nicknames instead of setting one with /nick",
    )
    group.add_argument(
        "--deliver-sample",
        type=int,
        default=0,
        env_var="CHATCORE_DELIVER_SAMPLE",
        help="record the latency of one delivery in N (counts stay exact); 0 picks N from --deliver-events "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--deliver-events",
        type=int,
        default=20000,
        env_var="CHATCORE_DELIVER_EVENTS",
        help="with --deliver-sample 0: at most this many delivery events per second per Locust process "
        "(default: %(default)s)",
    )


def parse_host(host: str | None) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (or ``HOST:PORT``, ``HOST``) as ``(host, port)``."""
    if not host:
        raise ValueError("no host: give --host tcp://HOST:PORT")
    parts = urllib.parse.urlsplit(host if "//" in host else "tcp://" + host)
    if parts.scheme != "tcp" or not parts.hostname:
        raise ValueError(f"--host {host!r}: use tcp://HOST:PORT")
    return parts.hostname, parts.port or DEFAULT_PORT


def record_weighted(
    environment: Environment, request_type: str, name: str, response_time: float, *, length: int, weight: int
) -> None:
    """Record ``weight`` requests that all took ``response_time`` ms."""
    environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=response_time,
        response_length=length,
        exception=None,
        context={},
    )
    extra = weight - 1
    if extra <= 0:
        return
    stats = environment.stats
    second = int(time.time())
    bucket = bucket_response_time(response_time)
    for entry in (stats.get(name, request_type), stats.total):
        entry.num_requests += extra
        entry.num_reqs_per_sec[second] += extra
        entry.total_response_time += response_time * extra
        entry.response_times[bucket] += extra
        entry.total_content_length += length * extra


class Sampler:
    """Per process: the delivery sampling stride, re-computed every second
    from the deliveries counted in the last second."""

    def __init__(self) -> None:
        self.stride = 1
        self.counted = 0
        self.fixed = 0
        self.budget = 20000
        self._greenlet: gevent.Greenlet | None = None

    def start(self, fixed: int, budget: int) -> None:
        self.fixed, self.budget = fixed, max(1, budget)
        self.stride = fixed or 1
        if not fixed and self._greenlet is None:
            self._greenlet = gevent.spawn(self._adjust)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _adjust(self) -> None:
        while True:
            gevent.sleep(1.0)
            rate, self.counted = self.counted, 0
            self.stride = max(1, math.ceil(rate / self.budget))


sampler = Sampler()


class LocustRecorder:
    """A :class:`~_chatclient.Recorder` that writes Locust statistics."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.fire = environment.events.request.fire

    def delivered(self, latency_ms: float, count: int) -> None:
        sampler.counted += count
        record_weighted(self.environment, "deliver", "message", latency_ms, length=0, weight=count)

    def problem(self, kind: str, count: int, detail: str) -> None:
        for _ in range(count):
            self.fire(
                request_type="loss",
                name=kind,
                response_time=0,
                response_length=0,
                exception=Exception(f"{kind}: {detail}"),
                context={},
            )

    def closed(self, detail: str) -> None:
        self.fire(
            request_type="receive",
            name="connection",
            response_time=0,
            response_length=0,
            exception=Exception(detail),
            context={},
        )


@events.test_start.add_listener
def on_test_start(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is not None:
        sampler.start(options.deliver_sample, options.deliver_events)


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    sampler.stop()


@events.quitting.add_listener
def print_summary(environment: Environment, **_kwargs: Any) -> None:
    """The broadcast figures in one line, after Locust's own tables."""
    if isinstance(environment.runner, WorkerRunner):
        return
    stats = environment.stats
    # entries.get(), not stats.get(): the latter creates empty rows.
    empty = StatsEntry(stats, "", "")
    sent = stats.entries.get(("message", "send"), empty)
    delivered = stats.entries.get(("message", "deliver"), empty)
    problems = [stats.entries.get((kind, "loss"), empty).num_failures for kind in PROBLEMS]
    seconds = max(1e-9, (delivered.last_request_timestamp or time.time()) - stats.total.start_time)
    log.info(
        "chatcore: sent %d messages, %d deliveries (%.0f deliveries/s, %.1f per message), latency p50 %s ms "
        "p99 %s ms; lost %d, duplicated %d, reordered %d, corrupted %d",
        sent.num_requests,
        delivered.num_requests,
        delivered.num_requests / seconds,
        delivered.num_requests / max(1, sent.num_requests),
        delivered.get_response_time_percentile(0.5) if delivered.num_requests else "-",
        delivered.get_response_time_percentile(0.99) if delivered.num_requests else "-",
        *problems,
    )
