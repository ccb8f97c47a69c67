"""One person per protocol in two shared rooms: a native (nc) user, an IRC
user and a browser, on one server and across a cluster of two (issue 24)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import RedisServer
from test_web import WSClient

from chatcore.testing import LineClient, ServerProcess

TIMEOUT = 10


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.stop()


def start(processes: list[ServerProcess], *args: str) -> ServerProcess:
    process = ServerProcess(*args).start()
    processes.append(process)
    return process


class People:
    """nat on nc, ian on IRC and webby in a browser, each in dev and ops."""

    def __init__(self, native_at: ServerProcess, others_at: ServerProcess) -> None:
        self.nat = LineClient(native_at.address, timeout=TIMEOUT)
        self.ian = LineClient(others_at.addresses["irc"], timeout=TIMEOUT)
        self.webby = WSClient(others_at.addresses["ws"])

    def close(self) -> None:
        for client in (self.nat, self.ian, self.webby):
            client.close()


def irc_line(client: LineClient, pattern: str) -> str:
    return client.expect(re.compile(pattern)).rstrip("\r")


def check_two_shared_rooms(people: People) -> None:
    nat, ian, webby = people.nat, people.ian, people.webby
    nat.send("/nick nat")
    nat.expect("* you are now known as nat")
    nat.send("/join dev")
    nat.expect("* you are now in dev (1 here)")
    nat.send("/join ops")
    nat.expect(re.compile(r"^\* you are now in ops "))
    webby.expect({"type": "welcome"})
    webby.say("/nick webby")
    webby.expect(lambda obj: obj.get("you", {}).get("nick") == "webby")
    for room in ("dev", "ops"):
        webby.say(f"/join {room}")
        webby.expect(lambda obj, room=room: obj.get("type") == "notice" and f"you are now in {room}" in obj["text"])
    ian.send("NICK ian")
    ian.send("USER ian 0 * :Ian")
    ian.send("JOIN #dev,#ops")
    assert irc_line(ian, r" 353 ian = #dev ").endswith(":ian @nat webby")  # nat made the room: its operator
    assert irc_line(ian, r" 353 ian = #ops ").endswith(":ian @nat webby")
    nat.expect("[ops] * ian joined")
    # The browser talks in its current room (ops); nc sees which room, IRC the channel.
    webby.say("hello ops")
    nat.expect("[ops] <webby> hello ops")
    assert irc_line(ian, r"PRIVMSG #ops ").endswith(" PRIVMSG #ops :hello ops")
    # IRC talks in each channel by name.
    ian.send("PRIVMSG #dev :hello dev")
    nat.expect("[dev] <ian> hello dev")
    chat = webby.expect({"type": "chat", "nick": "ian"})
    assert (chat["room"], chat["text"]) == ("dev", "hello dev")
    # nc switches to dev with /join and talks there.
    nat.send("/join dev")
    nat.expect("* you now talk in dev")
    nat.send("from nc")
    assert irc_line(ian, r"PRIVMSG #dev ").endswith(":nat!nat@chatcore PRIVMSG #dev :from nc")
    chat = webby.expect({"type": "chat", "nick": "nat"})
    assert (chat["room"], chat["text"]) == ("dev", "from nc")
    # Room state is one for everyone: nat, dev's operator, sets the topic.
    nat.send("/topic Release on Friday")
    nat.expect("[dev] * nat set the topic: Release on Friday")
    assert irc_line(ian, r" TOPIC #dev ").endswith(" TOPIC #dev :Release on Friday")
    ian.send("TOPIC #dev :mine now")  # +t: ian is no operator
    irc_line(ian, r" 482 ian #dev ")
    # Leaving one room leaves the other as it was.
    ian.send("PART #ops :done here")
    nat.expect("[ops] * ian left (done here)")
    left = webby.expect({"type": "leave", "nick": "ian"})
    assert (left["room"], left["disconnected"]) == ("ops", False)
    ian.send("PRIVMSG #dev :still in dev")
    nat.expect("[dev] <ian> still in dev")
    assert webby.expect({"type": "chat", "nick": "ian"})["text"] == "still in dev"
    ian.send("QUIT :bye")
    nat.expect("[dev] * ian left (bye)")
    webby.expect({"type": "leave", "nick": "ian", "disconnected": True})


@pytest.mark.slow
def test_nc_irc_and_a_browser_share_two_rooms(processes: list[ServerProcess]) -> None:
    server = start(
        processes,
        "--plugins", "irc,web",
        "--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0", "--listen", "ws://127.0.0.1:0",
    )  # fmt: skip
    people = People(server, server)
    try:
        check_two_shared_rooms(people)
    finally:
        people.close()


@pytest.mark.slow
def test_nc_irc_and_a_browser_share_two_rooms_across_a_cluster(processes: list[ServerProcess], tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    try:
        cluster = ("--redis-url", redis_server.url, "--redis-cluster", "mixed", "--redis-timeout", "1")
        native_side = start(processes, "--plugins", "redis", "--listen", "tcp://127.0.0.1:0", *cluster)
        others_side = start(
            processes,
            "--plugins", "redis,irc,web",
            "--listen", "irc://127.0.0.2:0", "--listen", "ws://127.0.0.2:0", *cluster,
        )  # fmt: skip
        people = People(native_side, others_side)
        try:
            check_two_shared_rooms(people)
        finally:
            people.close()
    finally:
        for process in processes:
            process.stop()
        redis_server.stop()
