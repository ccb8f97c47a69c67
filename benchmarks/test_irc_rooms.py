"""The IRC room driver against chatcore alone (ngIRCd and InspIRCd are
Debian packages the benchmark run needs, not the test): it connects,
joins, counts deliveries and reports a row per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from irc_rooms import main, percentile


def test_percentile() -> None:
    values = [float(number) for number in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 100.0
    assert percentile([], 0.5) != percentile([], 0.5)  # nan


def test_the_driver_measures_chatcore(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--servers", "chatcore", "--rooms", "5", "--senders", "2", "--duration", "0.5", "--connects", "20"]) == 0
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| chatcore |")]
    assert len(rows) == 2
    deliveries = int(rows[0].split("|")[3].replace(",", ""))
    assert deliveries > 0
    assert "20 connects at once" in rows[1]


def test_ergo_is_told_from_debians_chemistry_program_of_the_same_name(tmp_path: Path) -> None:
    from irc_rooms import ergo_version

    irc_server, chemistry = tmp_path / "ergo-irc", tmp_path / "ergo-chem"
    irc_server.write_text("#!/bin/sh\necho ergo-2.11.1\n")
    chemistry.write_text("#!/bin/sh\necho 'ERGO: a quantum chemistry program'\n")
    for script in (irc_server, chemistry):
        script.chmod(0o755)
    assert ergo_version(str(irc_server)) == "ergo-2.11.1"
    assert ergo_version(str(chemistry)) is None
    assert ergo_version(str(tmp_path / "missing")) is None
    with pytest.raises(SystemExit) as exit_:
        main(["--servers", "ergo", "--ergo", str(chemistry)])
    assert exit_.value.code == 2


def test_the_c_driver_measures_chatcore(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--servers", "chatcore", "--rooms", "5", "--senders", "2", "--duration", "0.5", "--connects", "20"]
    assert main([*argv, "--driver", "c", "--steady", "2000"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| chatcore |")]
    assert len(rows) == 3
    for row, test in zip(rows[:2], ("room of 5", "steady 2,000/s to 100"), strict=True):
        cells = [cell.strip() for cell in row.split("|")]
        assert cells[2] == test
        assert int(cells[3].replace(",", "")) > 0
        assert cells[7] == "0, 0, 0, 0"  # lost, duplicated, reordered, corrupted
    assert "20 connects at once" in rows[2]
    assert "until the last 001" in rows[2]
