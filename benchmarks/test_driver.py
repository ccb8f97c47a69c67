"""Checks of the broadcast driver's own counting (a driver that miscounts
would make every figure wrong), and the speed of its receive path."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from broadcast import LINE_SIZE, SCENARIOS, Monitor, Receiver, RoomMonitor, Samples, WebReceiver, main, now_us, rooms_of
from conftest import min_seconds
from pytest_benchmark.fixture import BenchmarkFixture


def line(sender: int, seq: int) -> bytes:
    data = b"<s%05d> %s %05d %010d %016d\n" % (sender, b"x" * 20, sender, seq, now_us())
    assert len(data) == LINE_SIZE
    return data


def test_receiver_counts_lines_split_anywhere() -> None:
    stream = b"".join(line(1, seq) for seq in range(1, 101))
    receiver = Receiver(None, LINE_SIZE, Samples())  # type: ignore[arg-type]
    for start in range(0, len(stream), 777):
        receiver.feed(stream[start : start + 777])
    assert (receiver.lines, receiver.corrupted, receiver.notices) == (100, 0, 0)
    assert receiver.samples


def test_receiver_finds_interleaved_lines_and_recovers() -> None:
    receiver = Receiver(None, LINE_SIZE, Samples())  # type: ignore[arg-type]
    first, second = line(1, 1), line(2, 1)
    receiver.feed(first[:30] + second + first[30:] + b"* guest-7 joined\n")
    assert (receiver.corrupted, receiver.notices) == (2, 1)
    receiver.feed(line(1, 2) + line(2, 2))
    assert (receiver.lines, receiver.corrupted) == (4, 2)


def test_monitor_checks_each_senders_sequence() -> None:
    monitor = Monitor(None, LINE_SIZE, Samples(), 3)  # type: ignore[arg-type]
    monitor.feed(line(1, 1) + line(1, 2) + line(1, 5) + line(1, 4) + line(1, 5) + line(2, 1))
    assert (monitor.gaps, monitor.reordered, monitor.duplicated) == (2, 1, 1)
    assert monitor.acked[1:] == [5, 1]


def labelled(room: int, sender: int, seq: int) -> bytes:
    """A line as a client in several rooms gets it: after its room's label,
    the sender's padding 7 bytes shorter."""
    data = b"[r%03d] <s%05d> %s %05d %010d %016d\n" % (room, sender, b"x" * 13, sender, seq, now_us())
    assert len(data) == LINE_SIZE
    return data


def test_room_monitor_checks_each_senders_sequence_per_room() -> None:
    monitor = RoomMonitor(None, LINE_SIZE, Samples())  # type: ignore[arg-type]
    # Sender 1 talks in rooms 7 and 8, each its own sequence; room 8 loses 2 and 3, room 7 repeats 2.
    stream = [labelled(7, 1, 1), labelled(8, 1, 1), labelled(7, 1, 2), labelled(8, 1, 4), labelled(7, 1, 2)]
    notice = b"[r007] * guest-9 joined\n"
    monitor.feed(b"".join(stream[:3]) + notice + b"".join(stream[3:]))
    assert (monitor.gaps, monitor.duplicated, monitor.reordered) == (2, 1, 0)
    assert (monitor.lines, monitor.notices, monitor.corrupted) == (5, 1, 0)


def test_rooms_spread_every_client_over_distinct_rooms_of_one_size() -> None:
    scenario = SCENARIOS["rooms400"]
    assignment = rooms_of(scenario)
    assert len(assignment) == 2000
    assert all(len(set(rooms)) == 5 for rooms in assignment)
    members: dict[bytes, int] = {}
    for rooms in assignment:
        for room in rooms:
            members[room] = members.get(room, 0) + 1
    assert len(members) == 400
    assert set(members.values()) == {25}
    # The senders' current rooms (the last joined): one talker in each room.
    assert len({rooms[-1] for rooms in assignment[: scenario.senders]}) == 400
    # Not cliques: client 0 shares rooms with more than the 24 others of one room.
    mine = set(assignment[0])
    assert len([rooms for rooms in assignment[1:] if mine & set(rooms)]) > 24


def test_driver_runs_the_rooms_scenario_on_chatcore_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """rooms400, made small: 60 clients each in 3 of 20 rooms, one talker per
    room. The C reference has one room and no /join: it is not run."""
    small = dataclasses.replace(SCENARIOS["rooms400"], clients=60, senders=20, rooms=20, rooms_per_client=3, rate=5000)
    monkeypatch.setitem(SCENARIOS, "rooms400", small)
    results = tmp_path / "results.json"
    argv = ["--servers", "chatcore,c-epoll", "--scenario", "rooms400", "--duration", "0.5", "--procs", "1"]
    assert main([*argv, "--json", str(results)]) == 0
    (row,) = json.loads(results.read_text())
    assert row["server"] == "chatcore"
    assert row["sent"] > 0
    assert row["deliveries"] == row["sent"] * 8  # 9 members a room
    assert row["lost"] == row["corrupted"] == row["gaps"] == row["duplicated"] == row["reordered"] == 0
    assert "c-epoll      (not measured: one room only, no /join)" in capsys.readouterr().out


def test_driver_runs_every_server_by_default(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    assert main(["--scenario", "room10", "--duration", "0.5", "--procs", "0", "--json", str(results)]) == 0
    rows = {row["server"]: row for row in json.loads(results.read_text())}
    assert set(rows) == {"chatcore", "naive", "c-epoll"}
    assert rows["chatcore"]["deliveries"] > 0
    assert rows["chatcore"]["lost"] == rows["chatcore"]["corrupted"] == 0


def test_driver_runs_the_c_reference_and_prints_ratios_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    argv = ["--servers", "chatcore,c-epoll", "--scenario", "room10", "--scenario", "connect"]
    assert main([*argv, "--duration", "0.5", "--procs", "0", "--json", str(results)]) == 0
    rows = {(row["scenario"], row["server"]): row for row in json.loads(results.read_text())}
    reference = rows[("room10", "c-epoll")]
    assert reference["deliveries"] > 0
    assert reference["lost"] == reference["corrupted"] == reference["gaps"] == reference["duplicated"] == 0
    assert rows[("connect", "c-epoll")]["welcomed"] == 500
    assert "room10 deliveries_per_s: chatcore / c-epoll = " in capsys.readouterr().out


def test_driver_runs_tls_beside_tcp_and_plots(tmp_path: Path) -> None:
    results, picture = tmp_path / "results.json", tmp_path / "plot.png"
    argv = ["--scenario", "room10", "--scenario", "connect", "--duration", "0.5", "--procs", "1"]
    argv += ["--servers", "chatcore,chatcore-tls", "--json", str(results), "--plot", str(picture)]
    assert main(argv) == 0
    rows = {(row["scenario"], row["server"]): row for row in json.loads(results.read_text())}
    # TLS runs the flows only; its deliveries are counted and intact.
    assert set(rows) == {("room10", "chatcore"), ("room10", "chatcore-tls"), ("connect", "chatcore")}
    tls = rows[("room10", "chatcore-tls")]
    assert tls["deliveries"] > 0
    assert tls["lost"] == tls["corrupted"] == tls["gaps"] == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_driver_compares_plugin_sets_back_to_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results.json"
    argv = ["--servers", "chatcore", "--scenario", "room10", "--duration", "0.3", "--procs", "0"]
    argv += ["--plugins", "welcome", "--compare-plugins", "welcome,metrics", "--rounds", "2", "--json", str(results)]
    assert main(argv) == 0
    rows = json.loads(results.read_text())
    assert [(row["server"], row["round"], row["plugins"]) for row in rows] == [
        ("chatcore/A", 1, "welcome"),
        ("chatcore/B", 1, "welcome,metrics"),
        ("chatcore/A", 2, "welcome"),
        ("chatcore/B", 2, "welcome,metrics"),
    ]
    assert all(row["deliveries"] > 0 and row["lost"] == 0 for row in rows)
    out = capsys.readouterr().out
    assert "room10 deliveries_per_s: chatcore/B / chatcore/A = " in out


def test_web_receiver_counts_chat_frames_split_anywhere() -> None:
    frames = b"".join(
        b'\x81\x7e{"type":"chat","nick":"s00001","text":"xx %05d %010d %016d","room":"lobby"}' % (1, seq, now_us())
        for seq in range(1, 101)
    )
    notice = b'\x81\x20{"type":"join","nick":"guest-9"}'
    receiver = WebReceiver(None, LINE_SIZE, Samples())  # type: ignore[arg-type]
    stream = notice + frames + notice
    for start in range(0, len(stream), 7):  # the marker straddles chunks again and again
        receiver.feed(stream[start : start + 7])
    assert receiver.lines == 100


def test_driver_runs_with_websocket_receivers(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    # room100: 88 bulk receivers, here WebSocket clients (room10 has none: all ten send).
    argv = ["--servers", "chatcore", "--scenario", "room100", "--duration", "0.5", "--procs", "0", "--web"]
    assert main([*argv, "--json", str(results)]) == 0
    (row,) = json.loads(results.read_text())
    assert row["deliveries"] > 0
    assert row["lost"] == 0


def test_driver_receive_path(benchmark: BenchmarkFixture, report_figure: Callable[[str], None]) -> None:
    """How many lines per second one driver process can count: the bulk
    receive path on 256 KiB chunks (what a busy socket's recv() returns)."""
    chunk = b"".join(line(1, seq) for seq in range(1, 4097))
    receiver = Receiver(None, LINE_SIZE, Samples())  # type: ignore[arg-type]
    benchmark(receiver.feed, chunk)
    assert receiver.corrupted == 0
    best = min_seconds(benchmark)
    if best is not None:
        report_figure(f"{4096 / best:,.0f} lines/s counted per driver process (before recv() costs)")
