"""The chat figures in Locust's web UI (a "Chat" tab) and in its HTML report.

Locust's UI shows extra tabs declared in the web UI's ``template_args``
(``extendedTabs``: title and key; ``extendedTables``: the columns) and fills
them from an ``extendedStats`` list in each ``/stats/requests`` answer, which
the page polls every two seconds: so the tab updates live. The figures are
:func:`_common.chat_rows`, computed from Locust's own statistics (on the
master in distributed runs, where the workers' rows are merged).

The HTML report (``--html``, and the UI's "Download report") is Locust's
page with a static chat table added before ``</body>``: the report's own
page is a bundled React app that takes no extra tables.
"""

from __future__ import annotations

import html
import json
from typing import Any

from _common import PROBLEMS, chat_rows, run_endpoints
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

TAB = "chat"
#: The Chat table's columns: (row key, title).
COLUMNS = (
    ("scope", "Scope"),
    ("rate", "Deliveries/s"),
    ("deliveries", "Deliveries"),
    ("mrate", "Messages/s"),
    ("messages", "Messages"),
    ("fanout", "Fan-out"),
    ("p50", "Latency p50 (ms)"),
    ("p95", "p95 (ms)"),
    ("p99", "p99 (ms)"),
    *((kind, kind.capitalize()) for kind in PROBLEMS),
)
SUMMARY_ID = "chatcore-chat-summary"


def current_rows(environment: Environment, *, average: bool = False) -> list[dict[str, Any]]:
    endpoints = run_endpoints(environment)
    return chat_rows(environment.stats, endpoints, average=average) if endpoints else []


def summary_html(rows: list[dict[str, Any]]) -> str:
    """The chat table as a self-contained HTML section."""
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[key]))}</td>" for key, _ in COLUMNS) + "</tr>" for row in rows
    )
    return (
        f'<section id="{SUMMARY_ID}" style="font-family:sans-serif;margin:2em">'
        "<h2>Chat</h2>"
        "<p>Deliveries per scope (where they arrived; A &gt; B: sent through A, received on B); "
        "rates are averages over the run; "
        "fan-out is deliveries per message their senders sent.</p>"
        '<table border="1" cellpadding="4" style="border-collapse:collapse">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>"
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

    @web_ui.app.after_request
    def add_chat_figures(response: Any) -> Any:
        if response.status_code != 200:
            return response
        if request.path == "/stats/requests":
            answer = response.get_json()
            answer["extendedStats"] = [{"key": TAB, "data": current_rows(environment)}]
            response.set_data(json.dumps(answer))
        elif request.path == "/stats/report":
            response.direct_passthrough = False
            page = response.get_data(as_text=True)
            response.set_data(add_summary(page, current_rows(environment, average=True)))
        return response


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
