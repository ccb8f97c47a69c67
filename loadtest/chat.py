"""Scenario: users chatting in rooms.

Each user connects, sets a nickname (unless ``--no-nick``), joins one of
``--rooms`` rooms (round robin), then sends ``--message-rate`` messages per
second of ``--message-size`` bytes, while a background greenlet receives
everything broadcast to it and measures delivery latency and losses. A
``--listeners`` share of the users only listen.

    locust -f loadtest/ --host tcp://127.0.0.1:12000
    locust -f loadtest/ --host tcp://127.0.0.1:12000 --headless -u 100 -r 20 -t 1m
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from _chatclient import ChatConnection, ChatError
from _common import LocustRecorder, parse_host, sampler
from locust import User, task
from locust.exception import StopUser

_user_numbers = itertools.count()


class ChatUser(User):
    """A chat client that sends at a steady rate and receives in the background."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.environment.parsed_options
        self.number = next(_user_numbers)
        self.rate: float = options.message_rate if options else 1.0
        self.size: int = max(40, options.message_size if options else 64)
        rooms: int = max(1, options.rooms if options else 1)
        listeners: float = options.listeners if options else 0.0
        self.room = f"room-{self.number % rooms}"
        # Spread listeners evenly: user n listens when the listener count so
        # far falls behind the share.
        self.sending = self.rate > 0 and int((self.number + 1) * listeners) == int(self.number * listeners)
        self.set_nick = not (options and options.no_nick)
        self.connection: ChatConnection | None = None
        self._next_send = 0.0

    def on_start(self) -> None:
        host, port = parse_host(self.host)
        fire = self.environment.events.request.fire
        connection = ChatConnection(host, port, LocustRecorder(self.environment))
        self.connection = connection
        for request_type, name, step in (
            ("connect", "welcome", connection.connect),
            (
                "nick",
                "/nick",
                lambda: connection.command(f"/nick lt_{connection.sender.replace('.', '_')}", "* you are"),
            ),
            ("join", "/join", lambda: connection.command(f"/join {self.room}", f"* you are now in {self.room} ")),
        ):
            if request_type == "nick" and not self.set_nick:
                continue
            started = time.perf_counter()
            try:
                step()
            except (OSError, ChatError) as exc:
                fire(
                    request_type=request_type,
                    name=name,
                    response_time=(time.perf_counter() - started) * 1000,
                    response_length=0,
                    exception=exc,
                    context={},
                )
                connection.close()
                self.connection = None  # the first task stops this user: StopUser here logs a traceback
                return
            fire(
                request_type=request_type,
                name=name,
                response_time=(time.perf_counter() - started) * 1000,
                response_length=0,
                exception=None,
                context={},
            )
        connection.start_receiving()
        self._next_send = time.monotonic()

    def on_stop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def wait_time(self) -> float:
        """Pace sends at ``rate`` per second without bursting to catch up."""
        if not self.sending:
            return 1.0
        now = time.monotonic()
        self._next_send = max(self._next_send + 1.0 / self.rate, now - 1.0)
        return max(0.0, self._next_send - now)

    @task
    def chat(self) -> None:
        connection = self.connection
        if connection is None:
            raise StopUser()
        connection.sample = sampler.stride
        if not self.sending:
            return
        started = time.perf_counter()
        try:
            length = connection.send_message(self.size)
        except OSError as exc:
            self.environment.events.request.fire(
                request_type="send",
                name="message",
                response_time=(time.perf_counter() - started) * 1000,
                response_length=0,
                exception=exc,
                context={},
            )
            raise StopUser() from None
        self.environment.events.request.fire(
            request_type="send",
            name="message",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=None,
            context={},
        )
