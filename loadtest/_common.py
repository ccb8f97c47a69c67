"""Options, statistics and the summary shared by the chat scenarios.

What the scenarios record in Locust's statistics (request type / name):

=========  ===============  ===================================================
connect    welcome          connect until in the chat (the welcome line; IRC:
                            registered; web: WebSocket open and welcomed)
join       /join            ``/join ROOM`` until ``* you are now in ROOM``
nick       /nick            ``/nick NAME`` until ``* you are now known as``
send       message          one message written (time of ``sendall``)
deliver    message          one message arriving at one other client;
                            "response time" is the delivery latency
loss       lost, duplicated, reordered, corrupted    failures, one per message
receive    connection       the server closed a running user's connection
=========  ===============  ===================================================

With several servers (``--chat-hosts``) the ``deliver`` and ``loss`` rows are
split by (sending server, receiving server): ``message SENDER_URL > RECEIVER_URL``,
``lost SENDER_URL > RECEIVER_URL``, and ``send`` rows by sending server
(``message URL``); with several transports the set-up rows carry the scheme
(``welcome ws://``). :func:`chat_rows` sums them up again for the summary, the
Chat tab and the HTML report.

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
import sys
import time
from typing import Any

import gevent
import locust.argument_parser
from _transports import Endpoint, Spread, parse_endpoints, parse_spread
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import StatsEntry, bucket_response_time

log = logging.getLogger("chatcore.loadtest")

PROBLEMS = ("lost", "duplicated", "reordered", "corrupted")
#: Seconds without a delivery after which a ``--messages`` run counts every
#: message as arrived (the last ones are still on their way before that).
QUIET_AFTER_MESSAGES = 1.5


class OptionGroup:
    """An argument group whose options Locust's web UI offers too, under
    "Advanced options".

    Locust's own parser marks each option it adds with
    ``include_in_web_ui``, and the UI offers only marked options; an
    argparse group's ``add_argument`` is argparse's, which marks nothing. So
    a group's options were in ``--help`` but missing from the UI. This adds
    the marks Locust's ``add_argument`` would (``is_secret`` and the rest,
    all off): the group keeps ``--help`` tidy and the UI shows them all.
    """

    def __init__(self, parser: Any, title: str, description: str | None = None) -> None:
        self._group = parser.add_argument_group(title, description)

    def add_argument(self, *args: Any, include_in_web_ui: bool = True, **kwargs: Any) -> Any:
        action = self._group.add_argument(*args, **kwargs)
        action.include_in_web_ui = include_in_web_ui
        action.is_secret = action.is_required = action.is_multiple = False
        return action


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = OptionGroup(
        parser,
        "chatcore load test",
        "Also offered in the web UI's start form, under 'Advanced options'. The web UI's Chat tab shows "
        "deliveries, messages, fan-out, latency (to the microsecond, with its unit) and losses per transport "
        "and server, with charts of deliveries/s, latency p50/p99 and losses over time; the header's "
        "'Deliveries/s' (Locust's RPS) counts deliveries only.",
    )
    group.add_argument(
        "--message-rate",
        type=float,
        default=1.0,
        env_var="CHATCORE_MESSAGE_RATE",
        help="messages per second sent by each sending user, to each of its rooms (default: %(default)s)",
    )
    group.add_argument(
        "--message-size",
        type=int,
        default=64,
        env_var="CHATCORE_MESSAGE_SIZE",
        help="bytes of text per message, at least 40 (default: %(default)s)",
    )
    group.add_argument(
        "--messages",
        type=int,
        default=0,
        metavar="N",
        env_var="CHATCORE_MESSAGES",
        help="a run of a known size: each sending user sends N messages (to each of its rooms), starting once "
        "every user (of its Locust process) is in the chat, and the run ends once all have been sent and no "
        "delivery has arrived for "
        f"{QUIET_AFTER_MESSAGES:g} s; -t still caps the run (default: 0, send until -t)",
    )
    group.add_argument(
        "--rooms",
        type=int,
        default=1,
        env_var="CHATCORE_ROOMS",
        help="users are spread over this many rooms, room-0 .. room-N-1 (default: %(default)s)",
    )
    group.add_argument(
        "--rooms-per-user",
        type=int,
        default=1,
        metavar="N",
        env_var="CHATCORE_ROOMS_PER_USER",
        help="each user joins N of the --rooms rooms (its own and the next N-1) and sends --message-rate "
        "messages per second (and --messages N) to each of them; losses are counted per room (default: %(default)s)",
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

    group.add_argument(
        "--chat-hosts",
        default="",
        env_var="CHATCORE_CHAT_HOSTS",
        metavar="URL,URL,...",
        help="spread users over these servers, round robin (instead of --host); deliveries and losses are "
        "then counted per (sending server, receiving server)",
    )
    group.add_argument(
        "--chat-mix",
        default="",
        env_var="CHATCORE_CHAT_MIX",
        metavar="SCHEME=WEIGHT,...",
        help="mixed population: users per transport by weight, e.g. tcp=6,ws=3,irc=1 (60 %% native, 30 %% web, "
        "10 %% IRC), each scheme spread over its servers in --chat-hosts; every scheme there needs a weight "
        "(default: round robin over the servers)",
    )
    group.add_argument(
        "--ca",
        default="",
        env_var="CHATCORE_CA",
        metavar="FILE",
        help="tls://, ircs://, wss://: PEM file of the certificates to trust instead of the system's",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=False,
        env_var="CHATCORE_INSECURE",
        help="tls://, ircs://, wss://: do not check the server's certificate or host name (test certificates only)",
    )


def endpoints_of(environment: Environment, host: str | None) -> list[Endpoint]:
    """The run's servers, from ``--chat-hosts`` or the host (``--host``, or the web UI's field)."""
    options = environment.parsed_options
    return parse_endpoints(host, options.chat_hosts if options else "")


def spread_of(environment: Environment, host: str | None) -> Spread:
    """How users are spread over the run's servers (``--chat-mix``)."""
    options = environment.parsed_options
    return parse_spread(endpoints_of(environment, host), options.chat_mix if options else "")


def setup_name(endpoints: list[Endpoint], index: int, name: str) -> str:
    """A ``connect``, ``nick`` or ``join`` row's name: split by transport
    when the run has several (``welcome ws://``), as their steps differ."""
    if len({endpoint.scheme for endpoint in endpoints}) == 1:
        return name
    return f"{name} {endpoints[index].scheme}://"


def send_name(endpoints: list[Endpoint], origin: int) -> str:
    """The ``send`` row of messages sent through server ``origin``."""
    return "message" if len(endpoints) == 1 else f"message {_label(endpoints, origin)}"


def pair_name(kind: str, endpoints: list[Endpoint], origin: int, receiver: int) -> str:
    """A ``deliver`` (kind ``message``) or ``loss`` row's name: split by
    (sending server, receiving server) when there are several."""
    if len(endpoints) == 1:
        return kind
    return f"{kind} {_label(endpoints, origin)} > {_label(endpoints, receiver)}"


def _label(endpoints: list[Endpoint], index: int) -> str:
    # A sender id naming no server of this run (another run's load on the
    # same server) is still counted, under its own label.
    return endpoints[index].url if 0 <= index < len(endpoints) else f"server-{index}"


def split_name(name: str) -> tuple[str, str, str]:
    """``(kind, sending server, receiving server)`` of a row name made by
    :func:`pair_name` (servers empty for a single-server run)."""
    parts = name.split(" ")
    if len(parts) == 4 and parts[2] == ">":
        return parts[0], parts[1], parts[3]
    if len(parts) == 2:
        return parts[0], parts[1], ""
    return name, "", ""


#: The one request type Locust's total counts (its header "RPS" and its
#: "Aggregated" row): deliveries. See :func:`total_counts_deliveries_only`.
TOTAL_TYPE = "deliver"


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
    entries = [stats.get(name, request_type)]
    if request_type == TOTAL_TYPE:
        entries.append(stats.total)
    for entry in entries:
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


class Latencies:
    """Delivery latencies per ``deliver`` row, to two significant digits of
    a microsecond (Locust keeps whole milliseconds below 100 ms, so on a
    LAN, where most deliveries take well under 1 ms, its percentiles read
    0 or 1). Workers send theirs to the master with each stats report
    (``report_to_master``) and start again; the master adds them up
    (``worker_report``)."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict[int, int]] = {}

    @staticmethod
    def bucket(latency_ms: float) -> int:
        """Microseconds, kept to two significant digits."""
        micros = max(0, round(latency_ms * 1000))
        if micros < 100:
            return micros
        scale = 10 ** (len(str(micros)) - 2)
        return round(micros / scale) * scale

    def add(self, name: str, latency_ms: float, count: int) -> None:
        counts = self.by_name.setdefault(name, {})
        bucket = self.bucket(latency_ms)
        counts[bucket] = counts.get(bucket, 0) + count

    def take(self) -> dict[str, dict[str, int]]:
        """What to send to the master (JSON-friendly keys); forgotten here."""
        taken = {name: {str(k): v for k, v in counts.items()} for name, counts in self.by_name.items()}
        self.by_name = {}
        return taken

    def merge(self, report: dict[str, dict[str, int]]) -> None:
        for name, counts in report.items():
            mine = self.by_name.setdefault(name, {})
            for key, count in counts.items():
                mine[int(key)] = mine.get(int(key), 0) + int(count)

    def counts(self, names: list[str] | None = None) -> dict[int, int]:
        """Deliveries per latency bucket (µs), of ``names`` (default: all)."""
        merged: dict[int, int] = {}
        for name in self.by_name if names is None else names:
            for bucket, count in self.by_name.get(name, {}).items():
                merged[bucket] = merged.get(bucket, 0) + count
        return merged

    def percentiles(self, names: list[str], percents: tuple[float, ...]) -> list[float]:
        """The latency percentiles, in ms, of the deliveries of ``names``."""
        return percentiles_of(self.counts(names), percents)


def percentiles_of(counts: dict[int, int], percents: tuple[float, ...]) -> list[float]:
    """The percentiles, in ms, of deliveries counted per bucket (µs); 0 for none."""
    total = sum(counts.values())
    if not total:
        return [0] * len(percents)
    answers = []
    ordered = sorted(counts.items())
    for percent in percents:
        wanted = max(1, math.ceil(total * percent))
        seen = 0
        for bucket, count in ordered:
            seen += count
            if seen >= wanted:
                answers.append(bucket / 1000)
                break
    return answers


def format_latency(ms: float) -> str:
    """A latency with its unit: ``340 µs`` below a millisecond (what a LAN
    mostly shows), ``1.2 ms`` and ``35 ms`` above."""
    if ms < 1:
        return f"{round(ms * 1000)} µs"
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms:.0f} ms"


def format_losses(row: dict[str, Any]) -> str:
    """The four loss counts in one cell: ``0``, or only those that are not
    (``2 lost, 1 reordered``)."""
    found = [f"{row[kind]} {kind}" for kind in PROBLEMS if row[kind]]
    return ", ".join(found) if found else "0"


#: This process's delivery latencies (on a master: its workers').
latencies = Latencies()


@events.report_to_master.add_listener
def send_latencies(client_id: str, data: dict[str, Any]) -> None:
    data["chatcore_latencies"] = latencies.take()


@events.worker_report.add_listener
def add_latencies(client_id: str, data: dict[str, Any]) -> None:
    latencies.merge(data.get("chatcore_latencies") or {})


@events.reset_stats.add_listener
def reset_latencies() -> None:
    latencies.by_name = {}


class DeliveryCount:
    """Per process: deliveries counted so far that a ``--messages`` run
    waits for (a slow reader's are not: it may never catch up)."""

    awaited = 0


class LocustRecorder:
    """A :class:`~_chatclient.Recorder` that writes Locust statistics for
    one user connected to server ``server_index`` of ``endpoints``.

    Scenarios that count some users' deliveries apart change
    :attr:`delivery_type` (a row type the chat figures leave out) or
    :attr:`delivery_kind` (a ``deliver`` row of its own, with a scope of
    its own in the chat figures).
    """

    delivery_type = "deliver"
    delivery_kind = "message"
    #: Whether a ``--messages`` run waits for these deliveries to stop arriving.
    awaited = True

    def __init__(self, environment: Environment, endpoints: list[Endpoint], server_index: int) -> None:
        self.environment = environment
        self.fire = environment.events.request.fire
        self.endpoints = endpoints
        self.server_index = server_index
        self._deliver_names: dict[int, str] = {}

    def delivered(self, latency_ms: float, count: int, origin: int) -> None:
        sampler.counted += count
        if self.awaited:
            DeliveryCount.awaited += count
        name = self._deliver_names.get(origin)
        if name is None:
            name = self._deliver_names[origin] = pair_name(
                self.delivery_kind, self.endpoints, origin, self.server_index
            )
        record_weighted(self.environment, self.delivery_type, name, latency_ms, length=0, weight=count)
        if self.delivery_type == TOTAL_TYPE:
            latencies.add(name, latency_ms, count)

    def problem(self, kind: str, count: int, detail: str, origin: int) -> None:
        name = pair_name(kind, self.endpoints, origin, self.server_index)
        for _ in range(count):
            self.fire(
                request_type="loss",
                name=name,
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


@events.init.add_listener
def refresh_loop_time(**_kwargs: Any) -> None:
    """Let ``-t`` count from now. gevent's loop (libev) caches its clock
    and timers count from that cache; Locust sets its run-time timer right
    after this event, before the loop has run once, so on a busy machine,
    where importing everything takes seconds, the run ended that many
    seconds early (a 4 s run stopped after 0.7 s)."""
    gevent.get_hub().loop.update_now()


@events.init.add_listener
def total_counts_deliveries_only(environment: Environment, **_kwargs: Any) -> None:
    """Make Locust's total (the header's "RPS", the "Aggregated" row and
    its percentiles) count one thing: deliveries. Locust adds every
    recorded request to it, so its RPS added messages sent, deliveries and
    the set-up steps (connect, /nick, /join) together, and its percentiles
    mixed send times with delivery latencies. The other types keep their
    own rows; failures (losses, failed set-ups) still count in the total's
    failures. Each process's total is its own, and a master adds up its
    workers' totals, so the rule holds in distributed runs too."""
    stats = environment.stats
    log_request = stats.log_request

    def log_deliveries_in_the_total(method: str, name: str, response_time: int, content_length: int) -> None:
        if method == TOTAL_TYPE:
            log_request(method, name, response_time, content_length)
        else:
            stats.get(name, method).log(response_time, content_length)

    stats.log_request = log_deliveries_in_the_total  # type: ignore[method-assign]


@events.init.add_listener
def compute_default_options_once(**_kwargs: Any) -> None:
    """Work around a cost in Locust's worker (2.47): for each spawn message
    it rebuilds its whole argument parser once per option the master sent
    (``k not in default_args_dict()`` inside a comprehension). With this
    load test's options that is about 100 parsers, seconds of CPU per
    message, in which the worker sends no heartbeat: when users ramp up over
    several messages (``-r`` below ``-u``) the master gives its workers up
    as missing and stops the run. The defaults cannot change once Locust
    has started, so they are computed once."""
    defaults = locust.argument_parser.default_args_dict()
    locust.argument_parser.default_args_dict = lambda: defaults


@events.init.add_listener
def check_servers(environment: Environment, **_kwargs: Any) -> None:
    """A bad --host, --chat-hosts, --chat-mix or --rooms-per-user is a usage error before
    anything starts (in the web UI the host may still be typed in later)."""
    options = environment.parsed_options
    if options is None:
        return
    if not 1 <= options.rooms_per_user <= max(1, options.rooms):
        log.error(
            "chatcore load test: --rooms-per-user %d: give 1 to --rooms (%d), or more --rooms",
            options.rooms_per_user,
            max(1, options.rooms),
        )
        sys.exit(2)
    if not (options.chat_hosts or environment.host or options.headless):
        return
    try:
        spread_of(environment, environment.host)
    except ValueError as exc:
        log.error("chatcore load test: %s", exc)
        sys.exit(2)


@events.test_start.add_listener
def on_test_start(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is not None:
        sampler.start(options.deliver_sample, options.deliver_events)


@events.test_stop.add_listener
def on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    sampler.stop()


def chat_rows(stats: Any, endpoints: list[Endpoint], *, average: bool = False) -> list[dict[str, Any]]:
    """The chat figures, per scope: the whole run, each transport (when
    there are several) and each server (when there are several; by where the
    deliveries arrived), and with several servers each (sending server,
    receiving server) pair. A row that could only repeat the whole run's is
    left out.

    Each row: ``scope``, ``deliveries``, ``rate`` (deliveries/s now),
    ``messages`` and ``mrate`` (messages sent through the scope's servers,
    total and per second now), ``fanout`` (deliveries per message their
    senders sent: the receivers in this scope per message that could reach
    them), ``p50``/``p95``/``p99`` delivery latency (ms, to two significant
    digits of a microsecond: :class:`Latencies`), the same as text with
    their unit (``p50text``: ``340 µs``, ``1.2 ms``, with a no-break space; ``-`` without
    deliveries), the four problem counts and ``losses``, those of them that
    are not 0 in one text (``0`` if none). With ``average`` the rates are over the whole run
    (for reports) instead of the last seconds (for the live view).
    """
    seconds = max(1e-9, (stats.last_request_timestamp or time.time()) - stats.total.start_time)
    single = endpoints[0].url if len(endpoints) == 1 else ""
    schemes = {endpoint.url: endpoint.scheme for endpoint in endpoints}
    delivers: list[tuple[str, str, str, Any, str]] = []
    sends: dict[str, Any] = {}
    problems: list[tuple[str, str, str, int]] = []
    for (name, method), entry in list(stats.entries.items()):
        kind, origin, receiver = split_name(name)
        if method == "deliver":
            delivers.append((kind, origin or single, receiver or single, entry, name))
        elif method == "send":
            sends[origin or single] = entry
        elif method == "loss" and kind in PROBLEMS:
            problems.append((kind, origin or single, receiver or single, entry.num_failures))

    def scheme_of(url: str) -> str:
        return schemes.get(url) or url.partition("://")[0]

    scopes: list[tuple[str, Any]] = [("all", lambda _o, _r, _k: True)]
    kinds = sorted({kind for kind, _, _, _, _ in delivers})
    if len(kinds) > 1:  # a scenario counts some deliveries apart (rooms.py)
        for kind in kinds:
            scopes.append((f"deliveries {kind}", lambda _o, _r, k, kind=kind: k == kind))
    # Only rows that say something: one transport's row, or one server's,
    # would repeat the "all" row figure for figure.
    transports = sorted({scheme_of(url) for url in schemes})
    if len(transports) > 1:
        for scheme in transports:
            scopes.append((f"transport {scheme}://", lambda _o, r, _k, scheme=scheme: scheme_of(r) == scheme))
    if len(schemes) > 1:
        for url in schemes:
            scopes.append((f"server {url}", lambda _o, r, _k, url=url: r == url))
    if len(endpoints) > 1:
        for origin_url in schemes:
            for receiver_url in schemes:
                scopes.append(
                    (
                        f"{origin_url} > {receiver_url}",
                        lambda o, r, _k, pair=(origin_url, receiver_url): (o, r) == pair,
                    )
                )
    rows = []
    for scope, selects in scopes:
        merged = StatsEntry(stats, scope, "deliver")
        rate = 0.0
        origins = set()
        names = []
        for kind, origin, receiver, entry, name in delivers:
            if selects(origin, receiver, kind):
                merged.extend(entry)
                names.append(name)
                rate += entry.current_rps
                if entry.num_requests:
                    origins.add(origin)
        if scope.startswith(("transport ", "server ")):
            scope_sends = [entry for url, entry in sends.items() if selects(url, url, "")]
        elif scope == "all":
            scope_sends = list(sends.values())
        else:
            scope_sends = [sends[origin] for origin in origins if origin in sends]
        messages = sum(entry.num_requests for entry in scope_sends)
        reached_by = sum(sends[origin].num_requests for origin in origins if origin in sends)
        row: dict[str, Any] = {
            "scope": scope,
            "deliveries": merged.num_requests,
            "rate": round(merged.num_requests / seconds if average else rate, 1),
            "messages": messages,
            "mrate": round(
                messages / seconds if average else sum(entry.current_rps for entry in scope_sends),
                1,
            ),
            "fanout": round(merged.num_requests / reached_by, 2) if reached_by else 0,
        }
        p50, p95, p99 = latencies.percentiles(names, (0.5, 0.95, 0.99))
        row.update(p50=p50, p95=p95, p99=p99)
        for key, value in (("p50text", p50), ("p95text", p95), ("p99text", p99)):
            # A no-break space: the table never wraps "28" apart from its "ms".
            row[key] = format_latency(value).replace(" ", "\u00a0") if merged.num_requests else "-"
        for kind in PROBLEMS:
            if scope.startswith("deliveries "):
                row[kind] = "-"  # loss rows are not split by delivery kind: see the other rows
            else:
                row[kind] = sum(count for k, o, r, count in problems if k == kind and selects(o, r, ""))
        row["losses"] = "-" if scope.startswith("deliveries ") else format_losses(row)
        rows.append(row)
    return rows


def run_endpoints(environment: Environment) -> list[Endpoint]:
    """The servers of the run as the master (or a local runner) sees them,
    or none if the host is not set or not valid."""
    try:
        return endpoints_of(environment, environment.host)
    except ValueError:
        return []


@events.quitting.add_listener
def print_summary(environment: Environment, **_kwargs: Any) -> None:
    """The broadcast figures in one line, after Locust's own tables."""
    if isinstance(environment.runner, WorkerRunner):
        return
    stats = environment.stats
    endpoints = run_endpoints(environment)
    if not endpoints:
        return
    rows = chat_rows(stats, endpoints)
    total = rows[0]
    seconds = max(1e-9, (stats.last_request_timestamp or time.time()) - stats.total.start_time)
    log.info(
        "chatcore: sent %d messages, %d deliveries (%.0f deliveries/s, %.1f per message), latency p50 %s "
        "p99 %s; lost %d, duplicated %d, reordered %d, corrupted %d",
        total["messages"],
        total["deliveries"],
        total["deliveries"] / seconds,
        total["deliveries"] / max(1, total["messages"]),
        total["p50text"],
        total["p99text"],
        *(total[kind] for kind in PROBLEMS),
    )
    # A mixed population: what each transport's users received and sent.
    transports = [row for row in rows if row["scope"].startswith("transport ")]
    for row in transports if len(transports) > 1 else []:
        log.info(
            "chatcore: %s users received %d deliveries (%.0f/s), latency p50 %s p99 %s, and sent %d messages; "
            "lost %d, duplicated %d, reordered %d, corrupted %d",
            row["scope"],
            row["deliveries"],
            row["deliveries"] / seconds,
            row["p50text"],
            row["p99text"],
            row["messages"],
            *(row[kind] for kind in PROBLEMS),
        )
