"""The chat user every scenario builds on (an abstract Locust user).

Each user connects to one of the run's servers (``--host``, or round robin
over ``--chat-hosts``, or by transport weights with ``--chat-mix``), in the
dialect of the URL's scheme (native, IRC, WebSocket), sets a nickname (unless ``--no-nick``), joins one of
``--rooms`` rooms (round robin; with ``--rooms-per-user N``, that room and
the N-1 after it), then sends ``--message-rate`` messages per second of
``--message-size`` bytes to each of its rooms, while a background greenlet
receives everything broadcast to it and measures delivery latency and
losses. A ``--listeners`` share of the users only listen.

A run of a known size (``--messages N``): every user waits until all the
users of its Locust process are in the chat, so each message has its whole
audience and the delivery counts can be checked exactly; each sender then
sends N messages to each of its rooms and only listens; the run ends once every user is done and
no delivery has arrived for a moment (:class:`MessagesRun`).

Scenarios subclass :class:`BaseChatUser` in their own file and override
:meth:`BaseChatUser.pick_room`, :meth:`BaseChatUser.chat` and the like.
``abstract = True`` keeps Locust from running this class itself wherever a
scenario imports it.
"""

from __future__ import annotations

import itertools
import logging
import math
import ssl
import time
from typing import Any

import _chatview  # noqa: F401  (the Chat tab and HTML report: listeners registered on import)
import gevent
import gevent.event
from _chatclient import ChatConnection, ChatError
from _common import QUIET_AFTER_MESSAGES, DeliveryCount, LocustRecorder, sampler, send_name, setup_name, spread_of
from _transports import transport_for
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("chatcore.loadtest")
#: Set-up errors already logged by this process (each is logged once).
_logged_errors: set[str] = set()

_user_numbers = itertools.count()


class MessagesRun:
    """This process's part of a ``--messages N`` run.

    Counted where the whole run is known: by the local runner, or by the
    master from its workers' messages. Users wait in
    :meth:`BaseChatUser.on_start` until every user of the run has arrived
    (connected, or failed to). Once every user is done (sent its N
    messages, only listens, or failed), each process waits until no
    delivery has arrived for :data:`~_common.QUIET_AFTER_MESSAGES` seconds
    (a worker then sends its last figures and says so), and the run ends.
    """

    ARRIVED = "chatcore_messages_arrived"  # worker -> master: one user arrived
    EVERYONE_IN = "chatcore_messages_everyone_in"  # master -> workers
    DONE = "chatcore_messages_done"  # worker -> master: one user done
    SETTLE = "chatcore_messages_settle"  # master -> workers: wait for the last deliveries
    SETTLED = "chatcore_messages_settled"  # worker -> master: its last figures are sent

    def __init__(self) -> None:
        self.environment: Environment | None = None
        self.everyone_in = gevent.event.Event()
        self.arrived = 0
        self.users_done = 0
        self.workers_settled: set[str] = set()
        self._settling: gevent.Greenlet | None = None

    def init(self, environment: Environment) -> None:
        self.environment = environment
        runner = environment.runner
        if isinstance(runner, MasterRunner):
            runner.register_message(self.ARRIVED, lambda **_kwargs: self.arrive())
            runner.register_message(self.DONE, lambda **_kwargs: self.user_done())
            runner.register_message(self.SETTLED, self._worker_settled)
        elif isinstance(runner, WorkerRunner):
            runner.register_message(self.EVERYONE_IN, lambda **_kwargs: self.everyone_in.set())
            runner.register_message(self.SETTLE, lambda **_kwargs: self._settle())

    def reset(self) -> None:
        self.everyone_in.clear()
        self.arrived = self.users_done = 0
        self.workers_settled.clear()
        self.stop_settling()

    def _whole_run(self) -> int:
        """Users in the whole run (on the local runner or the master)."""
        runner = self.environment.runner if self.environment else None
        return runner.target_user_count if runner is not None else 0

    def arrive(self) -> None:
        """A user has arrived (on a worker: tell the master)."""
        runner = self.environment.runner if self.environment else None
        if isinstance(runner, WorkerRunner):
            runner.send_message(self.ARRIVED)
            return
        self.arrived += 1
        if self.arrived >= self._whole_run():
            if isinstance(runner, MasterRunner):
                runner.send_message(self.EVERYONE_IN)
            self.everyone_in.set()

    def user_done(self) -> None:
        """A user has done its part (on a worker: tell the master)."""
        runner = self.environment.runner if self.environment else None
        if isinstance(runner, WorkerRunner):
            runner.send_message(self.DONE)
            return
        self.users_done += 1
        if self.users_done >= self._whole_run():
            if isinstance(runner, MasterRunner):
                runner.send_message(self.SETTLE)
            else:
                self._settle()

    def _settle(self) -> None:
        if self._settling is None and self.environment is not None:
            self._settling = gevent.spawn(self._wait_for_the_last, self.environment)

    def stop_settling(self) -> None:
        if self._settling is not None and self._settling is not gevent.getcurrent():
            self._settling.kill(block=False)
        self._settling = None

    def _wait_for_the_last(self, environment: Environment) -> None:
        seen, since = DeliveryCount.awaited, time.monotonic()
        while time.monotonic() - since < QUIET_AFTER_MESSAGES:
            gevent.sleep(0.1)
            if DeliveryCount.awaited != seen:
                seen, since = DeliveryCount.awaited, time.monotonic()
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            # This worker's last figures first, as Locust's own report does
            # it (the master may quit before the next regular report, and
            # waits only half a second for a final one).
            figures: dict[str, Any] = {}
            environment.events.report_to_master.fire(client_id=runner.client_id, data=figures)
            runner.send_message("stats", figures)
            runner.send_message(self.SETTLED)
        else:
            self._end(environment)

    def _worker_settled(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        self.workers_settled.add(msg.node_id)
        runner = environment.runner
        if runner is not None and len(self.workers_settled) >= runner.worker_count:
            # Not on the master's receiving greenlet: stopping waits for the workers' answers.
            gevent.spawn(self._end, environment)

    def _end(self, environment: Environment) -> None:
        runner = environment.runner
        options = environment.parsed_options
        if runner is None or options is None:
            return
        log.info("chatcore: every user has sent its %d messages and they arrived: ending the run", options.messages)
        runner.stop()
        if options.headless:
            runner.quit()
        # With the web UI, the stopped run's figures stay up.


messages_run = MessagesRun()


@events.init.add_listener
def _messages_init(environment: Environment, **_kwargs: Any) -> None:
    messages_run.init(environment)


@events.test_start.add_listener
def _messages_start(**_kwargs: Any) -> None:
    messages_run.reset()


@events.test_stop.add_listener
def _messages_stop(**_kwargs: Any) -> None:
    messages_run.stop_settling()


class BaseChatUser(User):
    """A chat client that sends at a steady rate and receives in the background."""

    abstract = True
    #: How this user's measurements are recorded.
    recorder_class: type[LocustRecorder] = LocustRecorder
    #: Bytes per second this user reads at most (0: as fast as it can).
    read_rate = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.environment.parsed_options
        self.number = next(_user_numbers)
        self.rate: float = options.message_rate if options else 1.0
        self.size: int = max(40, options.message_size if options else 64)
        rooms: int = max(1, options.rooms if options else 1)
        listeners: float = options.listeners if options else 0.0
        self.rooms = rooms
        self.rooms_per_user: int = min(rooms, max(1, options.rooms_per_user if options else 1))
        try:
            servers_round = spread_of(self.environment, self.host).cycle
        except ValueError:  # no server yet (the web UI's form): checked again at connect
            servers_round = 1
        #: Which round of the servers (or of the --chat-mix cycle) this user
        #: is in, and its place in it: rooms and shares of users are picked
        #: by these, so that they fall on every server and transport (by
        #: the plain number, 2 servers and 2 rooms would put all of room-0
        #: on the first server, and a share of 0.5 would all be on the second).
        self.spread_round, self.spread_place = divmod(self.number, servers_round)
        self.spread_places = servers_round
        self.room = self.pick_room()
        #: Every room this user is in and sends to (in turn), ``room`` first.
        self.user_rooms = self.pick_rooms()
        self.sending = self.rate > 0 and not self.in_share(listeners)
        self.set_nick = not (options and options.no_nick)
        self.connection: ChatConnection | None = None
        self.send_name = "message"
        self._next_send = 0.0
        #: ``--messages``: how many this user sends, N to each of its rooms
        #: (0: until the run ends), how many it has sent, and whether it has
        #: done its part.
        self.messages_to_send: int = max(0, options.messages) * len(self.user_rooms) if options else 0
        self.sent = 0
        self.done = False

    def _done(self) -> None:
        """This user has done its part of a ``--messages`` run (once)."""
        if self.messages_to_send and not self.done:
            self.done = True
            messages_run.user_done()

    def pick_room(self) -> str:
        """The room this user joins: round robin over ``--rooms``, one room
        further on after each round of servers (so each room gets users of
        every server: one round's users are in consecutive rooms)."""
        return f"room-{(self.spread_round + self.spread_place) % self.rooms}"

    def pick_rooms(self) -> list[str]:
        """Every room this user joins: :meth:`pick_room`'s, and with
        ``--rooms-per-user N`` the N-1 rooms after it (``room-5``,
        ``room-6`` ...; round the end of ``--rooms``), so that each room has
        as many members as the others, and neighbours share some of their rooms."""
        if self.rooms_per_user <= 1:
            return [self.room]
        first = (self.spread_round + self.spread_place) % self.rooms
        return [f"room-{(first + step) % self.rooms}" for step in range(self.rooms_per_user)]

    def in_share(self, share: float) -> bool:
        """Whether this user is one of a ``share`` (0 to 1) of the users:
        spread evenly over the users of each place in the round of servers
        (it is when their count so far falls behind the share), the places
        staggered so that the first ones chosen are on different servers."""
        phase = self.spread_place / self.spread_places
        return math.floor((self.spread_round + 1) * share + phase) != math.floor(self.spread_round * share + phase)

    def on_start(self) -> None:
        self.connect()
        if self.messages_to_send:
            messages_run.arrive()
            messages_run.everyone_in.wait()  # every message has its whole audience
            self._next_send = time.monotonic()

    def connect(self) -> bool:
        """Connect, take a nickname, join the room and start receiving;
        each step is recorded. False (and the failure recorded) if a step
        failed."""
        spread = spread_of(self.environment, self.host)
        endpoints = spread.endpoints
        # Round robin over --chat-hosts (or the --chat-mix cycle), each
        # worker process starting one place further on, so that several
        # processes spread evenly too.
        offset: int = getattr(self.environment.runner, "worker_index", 0) or 0
        index = spread.index(self.number + offset)
        endpoint = endpoints[index]
        fire = self.environment.events.request.fire
        connection = ChatConnection(
            endpoint,
            transport_for(endpoint, self.environment.parsed_options),
            self.recorder_class(self.environment, endpoints, index),
            server_index=index,
            read_rate=self.read_rate,
        )
        self.connection = connection
        self.send_name = send_name(endpoints, index)
        steps: list[tuple[str, str, Any]] = [
            ("connect", "welcome", connection.connect),
            ("nick", "/nick", connection.set_nick),
        ]
        # One join row per room; the last one also leaves the room the
        # server put the user in (lobby), unless that is one of its own.
        steps += [("join", "/join", lambda room=room: connection.join(room)) for room in self.user_rooms[:-1]]
        steps.append(("join", "/join", lambda: self._join_last(connection)))
        for request_type, step_name, step in steps:
            if request_type == "nick" and not (self.set_nick and connection.sets_nick):
                continue
            name = setup_name(endpoints, index, step_name)
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
                self._log_once(request_type, exc)
                self._done()
                connection.close()
                self.connection = None  # the first task stops this user: StopUser here logs a traceback
                return False
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
        if not self.sending:
            self._done()
        self.joined()
        return True

    def _join_last(self, connection: ChatConnection) -> None:
        connection.join(self.user_rooms[-1])
        connection.keep_only(self.user_rooms)

    def joined(self) -> None:
        """Called when the user is in its room and receiving (for scenarios)."""

    def leave(self) -> None:
        """Stop receiving and close the connection (``/quit``)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _log_once(self, step: str, exc: BaseException) -> None:
        message = f"{step} to {self.connection.endpoint.url if self.connection else self.host} failed: {exc}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            message += " (trust the server's CA with --ca FILE, or use --insecure for a test certificate)"
        if message not in _logged_errors:
            _logged_errors.add(message)
            log.error("chatcore load test: %s", message)

    def on_stop(self) -> None:
        self.leave()

    def wait_time(self) -> float:
        """Pace sends at ``rate`` per second to each room (in turn) without
        bursting to catch up."""
        if not self.sending:
            return 1.0
        now = time.monotonic()
        self._next_send = max(self._next_send + 1.0 / (self.rate * len(self.user_rooms)), now - 1.0)
        return max(0.0, self._next_send - now)

    @task
    def chat(self) -> None:
        connection = self.connection
        if connection is None:
            raise StopUser()
        connection.sample = sampler.stride
        if self.sending:
            self.send()

    def send(self) -> None:
        """Send one message and record it."""
        connection = self.connection
        assert connection is not None
        started = time.perf_counter()
        try:
            length = connection.send_message(self.size, self.user_rooms[self.sent % len(self.user_rooms)])
        except OSError as exc:
            self.environment.events.request.fire(
                request_type="send",
                name=self.send_name,
                response_time=(time.perf_counter() - started) * 1000,
                response_length=0,
                exception=exc,
                context={},
            )
            self._done()
            raise StopUser() from None
        self.environment.events.request.fire(
            request_type="send",
            name=self.send_name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=None,
            context={},
        )
        self.sent += 1
        if self.sent == self.messages_to_send:
            self.sending = False  # only listens from now on
            self._done()
