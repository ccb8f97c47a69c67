"""Scenario: churn. Some users leave and come back all the time while the
others chat.

A ``--churn-share`` of the users (spread evenly) stay ``--churn-stay``
seconds, then ``/quit`` and connect again as a new sender (new connection,
new nickname, same room), for as long as the run lasts; the others chat
steadily. Every reconnect is one more ``connect``, ``nick`` and ``join``
row, and the loss checks cover both: a sender that leaves is simply no
longer expected, and one that comes back is a new sender.

    locust -f loadtest/churn.py --host tcp://127.0.0.1:12000 --headless -u 100 -r 20 -t 1m

| option | env | default | meaning |
|---|---|---|---|
| ``--churn-share`` | ``CHATCORE_CHURN_SHARE`` | 0.5 | share of users, 0 to 1, that keep leaving and coming back |
| ``--churn-stay`` | ``CHATCORE_CHURN_STAY`` | 2 | seconds a churning user stays connected each time |
"""

from __future__ import annotations

import time
from typing import Any

from _chatuser import BaseChatUser
from _common import OptionGroup
from locust import events


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = OptionGroup(parser, "chatcore churn")
    group.add_argument(
        "--churn-share",
        type=float,
        default=0.5,
        env_var="CHATCORE_CHURN_SHARE",
        help="share of users, 0 to 1, that keep leaving and coming back (default: %(default)s)",
    )
    group.add_argument(
        "--churn-stay",
        type=float,
        default=2.0,
        env_var="CHATCORE_CHURN_STAY",
        help="seconds a churning user stays connected each time (default: %(default)s)",
    )


class ChurnUser(BaseChatUser):
    """Chats; a share of these users leave and reconnect every few seconds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.environment.parsed_options
        self.stay: float = max(0.1, options.churn_stay if options else 2.0)
        self.churning = self.in_share(options.churn_share if options else 0.5)
        self.leave_at = float("inf")

    def joined(self) -> None:
        if self.churning:
            self.leave_at = time.monotonic() + self.stay

    def send(self) -> None:
        if time.monotonic() >= self.leave_at:
            self.leave_at = float("inf")
            self.leave()
            if not self.connect():
                return  # recorded; the next task stops this user
        super().send()
