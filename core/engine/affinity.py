"""Which CPUs the server process runs on (``--cpu-affinity``).

Why one CPU by default: the engine is a thread per talking client plus a writer,
and only the thread holding CPython's GIL runs Python. Every line read
hands the GIL from one thread to another; when the next thread sleeps on
another CPU, each hand-off is a cross-CPU wake-up, and the waiting thread
may find that CPU busy. On one CPU the next thread simply runs when the
current one blocks. Measured with ``benchmarks/broadcast.py`` on 2 CPUs
(docs/performance.md, "One CPU"): 10 to 70 % more deliveries in the flow
scenarios and a quarter off a connect storm, for a process that cannot
use much more than one core anyway; the latency tail grows where the
writer's visits are long (a room of 500) or the load is light.

This is a setting of the process, so ``chatcore serve`` applies it; a
program that embeds :class:`~chatcore.engine.server.ChatServer` keeps its
process as it is.
"""

from __future__ import annotations

import argparse
import os
import threading

AUTO = "auto"
ALL = "all"
#: Far above any machine's CPU count (Linux builds for at most 8,192): a
#: typo like 0-4000000000 is an error, not a set of four billion numbers.
MAX_CPU = 65535


def cpu_choice(text: str) -> str:
    """An argparse type: ``auto``, ``all``, or CPU numbers like ``0``,
    ``2,3``, ``0-3``; returned in the kernel's form (``0-3``), the way the
    configuration file shows it again."""
    text = text.strip().lower()
    if text in (AUTO, ALL):
        return text
    return _ranges(_cpus(text))


def _cpus(text: str) -> frozenset[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not auto, all, or a list of CPU numbers such as 0 or 0,2 or 0-3"
            ) from None
        if low < 0 or high < low:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a range of CPU numbers (from low to high)")
        if high > MAX_CPU:
            raise argparse.ArgumentTypeError(f"CPU {high} is not a CPU number (at most {MAX_CPU})")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def _ranges(cpus: set[int] | frozenset[int]) -> str:
    """``{0, 1, 2, 5}`` as ``0-2,5``, the way the kernel lists CPUs."""
    out: list[str] = []
    for cpu in sorted(cpus):
        if out and int(out[-1].rpartition("-")[2]) == cpu - 1:
            out[-1] = f"{out[-1].partition('-')[0]}-{cpu}"
        else:
            out.append(str(cpu))
    return ",".join(out)


class AffinityError(Exception):
    """The CPUs asked for cannot be used here."""


def apply(choice: str) -> frozenset[int] | None:
    """Run every thread of this process, and those it starts later, on the
    CPUs of ``choice``. :return: those CPUs, or None if left to the OS.

    ``choice`` is what :func:`cpu_choice` returns. ``auto``: one of the
    CPUs this process may use, the one the kernel is running it on (it
    puts a new process on a CPU that is not busy, so servers started side
    by side tend to spread out); nothing when there is only one, or no way
    to set it on this platform.

    :raises AffinityError: CPUs asked for by number that this process may
        not use, or a platform without ``sched_setaffinity``.
    """
    if choice == ALL:
        return None
    if not hasattr(os, "sched_setaffinity"):
        if choice == AUTO:
            return None
        raise AffinityError("--cpu-affinity with CPU numbers needs Linux (sched_setaffinity); use all")
    allowed = os.sched_getaffinity(0)
    if choice == AUTO:
        if len(allowed) < 2:
            return None
        current = _current_cpu()
        cpus = frozenset([current if current in allowed else min(allowed)])
    else:
        cpus = _cpus(choice)
        if not cpus <= allowed:
            missing = cpus - allowed
            which = f"CPU {_ranges(missing)} is" if len(missing) == 1 else f"CPUs {_ranges(missing)} are"
            raise AffinityError(
                f"--cpu-affinity {_ranges(cpus)}: {which} not available to this process (it may use {_ranges(allowed)})"
            )
    # Threads already running (the console log's) as well as this one; a
    # thread started from now on inherits the setting of the one starting it.
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the threads Python knows of
        threads = [thread.native_id or 0 for thread in threading.enumerate()]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            pass  # ended meanwhile
    return cpus


def _current_cpu() -> int | None:
    """The CPU this thread is running on (field 39 of ``/proc/self/stat``),
    or None where that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # After the command name in parentheses, which may hold spaces.
            fields = stat.read().rpartition(")")[2].split()
        return int(fields[36])
    except (OSError, ValueError, IndexError):
        return None


def describe(cpus: frozenset[int]) -> str:
    """What :func:`apply` did, for the log."""
    which = f"CPU {_ranges(cpus)}" if len(cpus) == 1 else f"CPUs {_ranges(cpus)}"
    return f"running on {which} (--cpu-affinity; 'all' leaves it to the OS)"
