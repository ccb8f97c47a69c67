"""Scenario: slow readers among fast ones.

A ``--slow-share`` of the users (spread evenly) read at most
``--slow-read-rate`` bytes per second; the others read as fast as they can.
The server must not let the slow ones hold the others back: the fast
readers' ``deliver`` rows (latency, losses) are the result. The slow
readers' deliveries are recorded apart (``slow / message``), and when the
server disconnects one as a slow consumer, as it should once its queue is
full (``chatcore serve --max-queue``), that is a ``slow / disconnected``
row, not a failure. Losses are failures for both kinds: the server cuts a
slow reader off, it never drops lines from the middle of its stream.

    locust -f loadtest/slow.py --host tcp://127.0.0.1:12000 --headless -u 50 -r 10 -t 1m

| option | env | default | meaning |
|---|---|---|---|
| ``--slow-share`` | ``CHATCORE_SLOW_SHARE`` | 0.2 | share of users, 0 to 1, that read slowly |
| ``--slow-read-rate`` | ``CHATCORE_SLOW_READ_RATE`` | 2000 | bytes per second a slow reader reads at most |
"""

from __future__ import annotations

from typing import Any

from _chatuser import BaseChatUser
from _common import LocustRecorder, OptionGroup
from locust import events


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = OptionGroup(parser, "chatcore slow readers")
    group.add_argument(
        "--slow-share",
        type=float,
        default=0.2,
        env_var="CHATCORE_SLOW_SHARE",
        help="share of users, 0 to 1, that read slowly (default: %(default)s)",
    )
    group.add_argument(
        "--slow-read-rate",
        type=float,
        default=2000.0,
        env_var="CHATCORE_SLOW_READ_RATE",
        help="bytes per second a slow reader reads at most (default: %(default)s)",
    )


class _SlowRecorder(LocustRecorder):
    """Deliveries under ``slow``; being cut off as a slow consumer is expected."""

    delivery_type = "slow"
    awaited = False  # a --messages run does not wait for a slow reader to catch up

    def closed(self, detail: str) -> None:
        # The server closes a slow consumer without a word (its queue is
        # full): any close of a slow reader counts as that.
        self.fire(
            request_type="slow",
            name="disconnected",
            response_time=0,
            response_length=0,
            exception=None,
            context={},
        )


class SlowReaderUser(BaseChatUser):
    """Reads everything, some of these users slowly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.environment.parsed_options
        if self.in_share(options.slow_share if options else 0.2):
            self.read_rate = max(100.0, options.slow_read_rate if options else 2000.0)
            self.recorder_class = _SlowRecorder
