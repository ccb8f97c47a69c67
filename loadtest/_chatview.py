"""The chat figures in Locust's web UI (a "Chat" tab) and in its HTML report.

Locust's UI shows extra tabs declared in the web UI's ``template_args``
(``extendedTabs``: title and key; ``extendedTables``: the columns) and fills
them from an ``extendedStats`` list in each ``/stats/requests`` answer, which
the page polls every two seconds: so the tab updates live. The figures are
:func:`_common.chat_rows`, computed from Locust's own statistics (on the
master in distributed runs, where the workers' rows are merged).

An extra tab takes a table only, so the charts (deliveries and messages
per second, latency p50 and p99, losses so far, over time) are drawn by
``_chattab.js``, a small script of ours that the index page loads: it puts
SVG charts above the Chat tab's table, from the history that
:class:`History` samples every two seconds and ``/chatcore/history``
serves. Locust's bundle carries echarts but keeps it to itself, and
fetching a chart library from a CDN would make the UI need the internet.
The script also relabels the header's "RPS" as what it counts here,
"Deliveries/s" (:func:`_common.total_counts_deliveries_only`).

The HTML report (``--html``, and the UI's "Download report") is Locust's
page with a static chat table and the same charts (the history written
into the page, the script inline) added before ``</body>``: the report's
own page is a bundled React app that takes no extra tables.
"""

from __future__ import annotations

import html
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import gevent
from _common import PROBLEMS, chat_rows, latencies, percentiles_of, run_endpoints
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW

TAB = "chat"
#: The Chat table's columns: (row key, title). Ten, so that the table fits
#: a 1280-pixel window: the latencies carry their unit in each cell, and
#: the four loss counts share one cell that names only those not 0.
COLUMNS = (
    ("scope", "Scope"),
    ("rate", "Deliveries/s"),
    ("deliveries", "Deliveries"),
    ("mrate", "Messages/s"),
    ("messages", "Messages"),
    ("fanout", "Fan-out"),
    ("p50text", "Latency p50"),
    ("p95text", "p95"),
    ("p99text", "p99"),
    ("losses", "Losses"),
)
SUMMARY_ID = "chatcore-chat-summary"
SCRIPT = Path(__file__).with_name("_chattab.js")


class History:
    """The whole run's chat figures over time, for the Chat tab's charts
    and the HTML report: a point every :attr:`interval` seconds on the
    master (or the only process): ``t`` (Unix time), ``users``, ``rate``
    and ``mrate`` (deliveries and messages per second), ``p50`` and ``p99``
    (ms; ``None`` when there were no deliveries), all four of the last
    :data:`WINDOW` seconds (Locust's window for its own current
    percentiles), and the four loss counts so far. The rates come from the
    counts, not from Locust's current rate, which leaves out the last two
    seconds (a short run's would read 0) and which a master only updates as
    its workers report (every 3 s: over 10 s that evens out). At most
    :attr:`LIMIT` points: when full, every other one is dropped and the
    interval doubles, so a long run keeps its beginning."""

    INTERVAL = 2.0
    LIMIT = 600
    #: Seconds of deliveries and messages each point's rates and latencies are taken over.
    WINDOW = CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []
        self.interval = self.INTERVAL
        #: (time, latency counts, deliveries, messages) since the start.
        self._counts: deque[tuple[float, dict[int, int], int, int]] = deque([(time.time(), {}, 0, 0)])
        self._greenlet: gevent.Greenlet | None = None

    def reset(self) -> None:
        self.points = []
        self.interval = self.INTERVAL
        self._counts = deque([(time.time(), {}, 0, 0)])

    def start(self, environment: Environment) -> None:
        self.stop()
        self.reset()
        self._greenlet = gevent.spawn(self._run, environment)

    @property
    def running(self) -> bool:
        return self._greenlet is not None

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self, environment: Environment) -> None:
        while True:
            gevent.sleep(self.interval)
            self.sample(environment)

    def sample(self, environment: Environment) -> None:
        rows = current_rows(environment)
        if not rows:
            return
        whole = rows[0]
        now = time.time()
        counts = latencies.counts()
        # The oldest kept count is the last one at least WINDOW seconds old.
        self._counts.append((now, counts, whole["deliveries"], whole["messages"]))
        while len(self._counts) > 2 and self._counts[1][0] <= now - self.WINDOW:
            self._counts.popleft()
        since, before, deliveries, messages = self._counts[0]
        recent = {bucket: count - before.get(bucket, 0) for bucket, count in counts.items()}
        recent = {bucket: count for bucket, count in recent.items() if count > 0}
        p50, p99 = percentiles_of(recent, (0.5, 0.99)) if recent else (None, None)
        seconds = max(1e-3, now - since)
        runner = environment.runner
        point = {
            "t": round(now, 3),
            "users": runner.user_count if runner is not None else 0,
            "rate": round((whole["deliveries"] - deliveries) / seconds, 1),
            "mrate": round((whole["messages"] - messages) / seconds, 1),
            "p50": p50,
            "p99": p99,
            **{kind: whole[kind] for kind in PROBLEMS},
        }
        self.points.append(point)
        if len(self.points) > self.LIMIT:
            self.points = self.points[-1::-2][::-1]  # every other one, the newest kept
            self.interval *= 2

    def as_json(self) -> dict[str, Any]:
        return {"interval": self.interval, "window": self.WINDOW, "points": self.points}


history = History()


def current_rows(environment: Environment, *, average: bool = False) -> list[dict[str, Any]]:
    endpoints = run_endpoints(environment)
    return chat_rows(environment.stats, endpoints, average=average) if endpoints else []


def summary_html(rows: list[dict[str, Any]]) -> str:
    """The chat table as a self-contained HTML section."""
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[key]))}</td>" for key, _ in COLUMNS) + "</tr>" for row in rows
    )
    # The history and the script go into the page as they are: "</" is the
    # one sequence that could end a <script> early.
    data = json.dumps(history.as_json()).replace("</", "<\\/")
    script = SCRIPT.read_text(encoding="utf-8").replace("</", "<\\/")
    return (
        f'<section id="{SUMMARY_ID}" style="font-family:sans-serif;margin:2em">'
        "<h2>Chat</h2>"
        "<p>Deliveries per scope (where they arrived; A &gt; B: sent through A, received on B); "
        "rates are averages over the run; "
        "fan-out is deliveries per message their senders sent; losses name the checks that found any.</p>"
        '<table border="1" cellpadding="4" style="border-collapse:collapse">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>"
        f"<script>window.chatcoreHistory = {data};</script><script>{script}</script>"
    )


def add_summary(page: str, rows: list[dict[str, Any]]) -> str:
    """``page`` (Locust's HTML report) with the chat table before ``</body>``."""
    section = summary_html(rows)
    index = page.rfind("</body>")
    return page + section if index < 0 else page[:index] + section + page[index:]


@events.init.add_listener
def add_chat_tab(environment: Environment, **_kwargs: Any) -> None:
    web_ui = environment.web_ui
    if web_ui is None:
        return
    from flask import request  # Locust's web UI is Flask; only imported with it

    web_ui.template_args["extendedTabs"] = [{"title": "Chat", "key": TAB}]
    web_ui.template_args["extendedTables"] = [
        {"key": TAB, "structure": [{"key": key, "title": title} for key, title in COLUMNS]}
    ]
    # Beside Locust's own routes, under its --web-base-path and its login.
    base = (getattr(environment.parsed_options, "web_base_path", "") or "").rstrip("/")

    @web_ui.app.route(f"{base}/chatcore/history")
    @web_ui.auth_required_if_enabled
    def chat_history() -> Any:
        return web_ui.app.response_class(json.dumps(history.as_json()), mimetype="application/json")

    @web_ui.app.route(f"{base}/chatcore/chat-tab.js")
    @web_ui.auth_required_if_enabled
    def chat_script() -> Any:
        return web_ui.app.response_class(SCRIPT.read_text(encoding="utf-8"), mimetype="text/javascript")

    @web_ui.app.after_request
    def add_chat_figures(response: Any) -> Any:
        if response.status_code != 200:
            return response
        if request.endpoint == "locust.index" and response.mimetype == "text/html":
            page = response.get_data(as_text=True)
            index = page.rfind("</body>")
            if index >= 0:
                tag = '<script src="./chatcore/chat-tab.js"></script>'
                response.set_data(page[:index] + tag + page[index:])
        elif request.endpoint == "locust.request_stats":  # by endpoint: also under --web-base-path
            answer = response.get_json()
            answer["extendedStats"] = [{"key": TAB, "data": current_rows(environment)}]
            response.set_data(json.dumps(answer))
        elif request.endpoint == "locust.stats_report":
            response.direct_passthrough = False
            page = response.get_data(as_text=True)
            response.set_data(add_summary(page, current_rows(environment, average=True)))
        return response


@events.test_start.add_listener
def start_history(environment: Environment, **_kwargs: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        history.start(environment)


@events.test_stop.add_listener
def stop_history(environment: Environment, **_kwargs: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner) and history.running:
        history.stop()
        history.sample(environment)  # where the run ended


@events.reset_stats.add_listener
def reset_history() -> None:
    history.reset()


@events.quitting.add_listener
def add_chat_to_html_report(environment: Environment, **_kwargs: Any) -> None:
    """Locust has written ``--html`` by the time ``quitting`` fires."""
    options = environment.parsed_options
    if options is None or not options.html_file or isinstance(environment.runner, WorkerRunner):
        return
    try:
        with open(options.html_file, encoding="utf-8") as file:
            page = file.read()
    except OSError:
        return  # not written (stopped by a signal): nothing to add to
    if SUMMARY_ID in page:
        return
    with open(options.html_file, "w", encoding="utf-8") as file:
        file.write(add_summary(page, current_rows(environment, average=True)))
