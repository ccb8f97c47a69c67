"""The fault suite's measures: what a receiver got of what was sent, and the
helpers the cases share. (A module of its own: two conftest.py files cannot
both be imported as ``conftest``.)"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from chatcore.testing import LineClient

LONG = os.environ.get("CHATCORE_FAULTS") == "all"
TIMEOUT = 30
GAP = "may be missing here"
LINK_DOWN = "* the cluster link is down: you reach only the people on this server until it is back"
LINK_BACK = "* the cluster link is back"


@dataclass
class Tally:
    """What one receiver got of one sender's lines under one fault."""

    fault: str
    sent: int
    delivered: int
    lost: int
    duplicated: int
    reordered: int
    gaps: int  # gap notices received
    recovery: float  # seconds from the end of the fault until delivery was whole

    def holds_the_promise(self) -> None:
        """No duplicates, order kept, and any loss announced."""
        assert self.duplicated == 0, self
        assert self.reordered == 0, self
        assert self.lost == 0 or self.gaps > 0, f"silent loss: {self}"


def tally(fault: str, sent: list[str], received: list[str], nick: str, recovery: float) -> Tally:
    """Count ``nick``'s lines ``sent`` in what a client ``received``."""
    place = {text: i for i, text in enumerate(sent)}
    prefix = f"<{nick}> "
    got = [place[line[len(prefix) :]] for line in received if line.startswith(prefix) and line[len(prefix) :] in place]
    delivered = len(set(got))
    return Tally(
        fault=fault,
        sent=len(sent),
        delivered=delivered,
        lost=len(sent) - delivered,
        duplicated=len(got) - delivered,
        reordered=sum(1 for a, b in itertools.pairwise(got) if b < a),
        gaps=sum(1 for line in received if GAP in line),
        recovery=round(recovery, 2),
    )


def linked(sender: LineClient, nick: str, receivers: list[LineClient]) -> None:
    """Wait until what ``sender`` says reaches every receiver, then drain."""
    for attempt in range(200):
        sender.send(f"probe {attempt}")
        try:
            receivers[0].expect(lambda line: line.startswith(f"<{nick}> probe "), timeout=0.1)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("the servers never linked up")
    sender.send("probe done")
    for receiver in receivers:
        receiver.expect(f"<{nick}> probe done")


def read_until(client: LineClient, last: str, timeout: float = TIMEOUT) -> list[str]:
    """Every line up to and including ``last``."""
    lines = []
    while True:
        line = client.readline(timeout=timeout)
        lines.append(line)
        if line == last:
            return lines
