"""The line-cost driver's measured part delivers every line (valgrind, which
counts the instructions, is the benchmark run's, not the test's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from line_cost import run_lines


@pytest.mark.parametrize("single", [False, True], ids=["batched", "single"])
def test_every_line_reaches_every_other_member(tmp_path: Path, single: bool) -> None:
    assert run_lines(40, 5, "welcome,logger,filters", single, str(tmp_path)) == 40 * 4
