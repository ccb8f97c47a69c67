"""How many events per second one Locust process can record.

    python benchmarks/locust_recording.py

Run as a script, never from pytest: importing Locust monkey-patches the
process with gevent. Prints the cost of Locust's own ``request`` event (one
event per delivery) and of the load test's weighted recording (one event
standing for N deliveries, see loadtest/_common.py), on one core with
nothing else running in the process. The load test's ``--deliver-events``
default is chosen from this: a process must also receive and parse the
lines, and Locust's timings go bad above about 60 % of a core.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "loadtest"))
from _common import record_weighted


def rate(fire: object, seconds: float = 1.0) -> float:
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            fire()  # type: ignore[operator]
        count += 1000
    return count / seconds


def main() -> int:
    environment = Environment()
    environment.create_local_runner()  # registers the listener that writes the statistics
    request = environment.events.request.fire

    def one_event() -> None:
        request(
            request_type="deliver",
            name="message",
            response_time=1.5,
            response_length=0,
            exception=None,
            context={},
        )

    def weighted() -> None:
        record_weighted(environment, "deliver", "message", 1.5, length=0, weight=50)

    events = rate(one_event)
    print(f"Locust request events recorded: {events:,.0f}/s on one core ({1e6 / events:.2f} us each)")
    samples = rate(weighted)
    assert environment.stats.total.num_requests > 0, "the events were not recorded"
    print(
        f"weighted records (1 event standing for 50 deliveries): {samples:,.0f}/s "
        f"({1e6 / samples:.2f} us each, {samples * 50:,.0f} deliveries/s counted)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
