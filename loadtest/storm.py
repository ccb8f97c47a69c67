"""Scenario: a connect storm. Every user connects at once, then they chat.

Start all users at once (``-r`` as large as ``-u``): each connects, takes a
nickname and joins its room as fast as the server lets it, and sends nothing
until every user of its process is in (or ``--storm-wait`` seconds have
passed), so the storm is not blurred by chat. One ``storm / all in`` row per
process records how long the whole storm took, from the first connect to the
last join; then the users chat as in ``chat.py`` and losses are counted as
usual.

    locust -f loadtest/storm.py --host tcp://127.0.0.1:12000 --headless -u 500 -r 500 -t 30s

| option | env | default | meaning |
|---|---|---|---|
| ``--storm-wait`` | ``CHATCORE_STORM_WAIT`` | 10 | seconds to wait for the whole storm before chatting anyway |
"""

from __future__ import annotations

import time
from typing import Any

import gevent.event
from _chatuser import BaseChatUser
from _common import OptionGroup
from locust import events


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    OptionGroup(parser, "chatcore connect storm").add_argument(
        "--storm-wait",
        type=float,
        default=10.0,
        env_var="CHATCORE_STORM_WAIT",
        help="seconds to wait for every user to be in before chatting anyway (default: %(default)s)",
    )


class _Storm:
    """This process's storm: who is in, and when everyone was."""

    def __init__(self) -> None:
        self.started = 0.0
        self.arrived = 0
        self.recorded = False
        self.everyone_in = gevent.event.Event()


_storm = _Storm()


class StormUser(BaseChatUser):
    """Joins as fast as it can, waits for the others, then chats."""

    def on_start(self) -> None:
        if not _storm.started:
            _storm.started = time.perf_counter()
        self.connect()
        _storm.arrived += 1  # a failed connect counts as arrived: it will not come later
        runner = self.environment.runner
        if runner is not None and _storm.arrived >= runner.target_user_count:
            self._record_storm()
        options = self.environment.parsed_options
        _storm.everyone_in.wait(options.storm_wait if options else 10.0)
        self._next_send = time.monotonic()

    def _record_storm(self) -> None:
        if _storm.recorded:
            return
        _storm.recorded = True
        self.environment.events.request.fire(
            request_type="storm",
            name="all in",
            response_time=(time.perf_counter() - _storm.started) * 1000,
            response_length=_storm.arrived,
            exception=None,
            context={},
        )
        _storm.everyone_in.set()
