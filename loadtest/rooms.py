"""Scenario: a few very large rooms next to many small ones.

A ``--big-share`` of the users (spread evenly) are in ``--big-rooms`` large
rooms, the others in small rooms of ``--small-room-size`` users each. The
large rooms dominate the deliveries (they grow with the square of the room
size); the question is whether the small rooms' latency stays low beside
them, so the small rooms' deliveries are counted apart: their ``deliver``
rows carry ``small`` (``message-small``), the large rooms' ``message``.

    locust -f loadtest/rooms.py --host tcp://127.0.0.1:12000 --headless -u 200 -r 50 -t 1m

| option | env | default | meaning |
|---|---|---|---|
| ``--big-rooms`` | ``CHATCORE_BIG_ROOMS`` | 1 | number of large rooms (``big-0`` ...) |
| ``--big-share`` | ``CHATCORE_BIG_SHARE`` | 0.5 | share of users, 0 to 1, in the large rooms |
| ``--small-room-size`` | ``CHATCORE_SMALL_ROOM_SIZE`` | 3 | users per small room (``small-0`` ...) |
"""

from __future__ import annotations

from typing import Any

from _chatuser import BaseChatUser
from _common import LocustRecorder, OptionGroup
from locust import events


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = OptionGroup(parser, "chatcore large and small rooms")
    group.add_argument(
        "--big-rooms",
        type=int,
        default=1,
        env_var="CHATCORE_BIG_ROOMS",
        help="number of large rooms (default: %(default)s)",
    )
    group.add_argument(
        "--big-share",
        type=float,
        default=0.5,
        env_var="CHATCORE_BIG_SHARE",
        help="share of users, 0 to 1, in the large rooms (default: %(default)s)",
    )
    group.add_argument(
        "--small-room-size",
        type=int,
        default=3,
        env_var="CHATCORE_SMALL_ROOM_SIZE",
        help="users per small room (default: %(default)s)",
    )


class _SmallRoomRecorder(LocustRecorder):
    delivery_kind = "message-small"


class RoomsUser(BaseChatUser):
    """In one of a few large rooms, or one of many small ones."""

    def pick_rooms(self) -> list[str]:
        # One room each: the scenario is about the sizes of rooms, and its
        # rooms are its own (--rooms and --rooms-per-user do not apply).
        return [self.room]

    def pick_room(self) -> str:
        options = self.environment.parsed_options
        share: float = options.big_share if options else 0.5
        big_rooms: int = max(1, options.big_rooms if options else 1)
        size: int = max(2, options.small_room_size if options else 3)
        # Users numbered in turn: user n is in a large room when the
        # large-room count so far falls behind the share.
        big_before = int(self.number * share)
        if int((self.number + 1) * share) != big_before:
            return f"big-{big_before % big_rooms}"
        small_before = self.number - big_before
        self.recorder_class = _SmallRoomRecorder
        return f"small-{small_before // size}"
