"""Run every fuzzing harness (or those named) for a time budget each.

    python fuzz/run.py                       # every parser, CHATCORE_FUZZ_SECONDS each (default 60)
    python fuzz/run.py native irc --seconds 300
    tox -e atheris                           # the same, in its own environment
    tox -e atheris -- codec --seconds 600

Each harness (fuzz/fuzz_NAME.py) runs in a process of its own under
libFuzzer (atheris), starting from the seed corpus fuzz/corpus/NAME/ and
what earlier runs found (``--work``, default a temporary folder), with a
limit on each input's time (``-timeout``: a hang) and on the process's
memory (``-rss_limit_mb``: an unbounded allocation). A crash leaves its
input in WORK/crashes/; replay it with ``python fuzz/fuzz_NAME.py FILE``.
The summary gives each harness's executions and coverage; the exit status
is 1 if any crashed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESSES = ["native", "irc", "web", "config", "codec"]
DONE = re.compile(r"Done (\d+) runs in (\d+) second")
COVERAGE = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)")
#: Inputs of at most this many bytes: room for lines past the 4,096-byte default --max-line.
MAX_LEN = 16384


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", choices=[[], *HARNESSES], help=f"harnesses (default: all: {HARNESSES})")
    parser.add_argument(
        "--seconds",
        type=int,
        default=int(os.environ.get("CHATCORE_FUZZ_SECONDS", "60")),
        help="budget per harness (default: CHATCORE_FUZZ_SECONDS, else 60)",
    )
    parser.add_argument("--work", type=Path, help="keeps the corpora and crashes between runs (default: a temp folder)")
    options = parser.parse_args(argv)
    names = options.names or HARNESSES
    if options.seconds < 1:
        parser.error("--seconds must be at least 1")
    work = options.work or Path(tempfile.mkdtemp(prefix="chatcore-fuzz-"))
    crashes = work / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)

    print(f"fuzz: {', '.join(names)}: {options.seconds} s each; corpora and crashes in {work}", flush=True)
    results = []
    for name in names:
        results.append(run_one(name, options.seconds, work, crashes))
    print(f"\n{'harness':<8} {'seconds':>8} {'executions':>11} {'per s':>7} {'coverage':>9} {'corpus':>7}  result")
    for name, seconds, runs, cov, corpus, status in results:
        rate = f"{runs / seconds:,.0f}" if seconds else "-"
        print(f"{name:<8} {seconds:>8.0f} {runs:>11,} {rate:>7} {cov:>9} {corpus:>7}  {status}")
    total = sum(r[2] for r in results)
    failed = [r[0] for r in results if r[5] != "ok"]
    print(f"fuzz: {total:,} executions in {sum(r[1] for r in results):.0f} s; {len(failed)} harness(es) failed")
    if failed:
        print(f"fuzz: see {crashes} and the logs in {work}; replay with python fuzz/fuzz_NAME.py FILE", file=sys.stderr)
    return 1 if failed else 0


def run_one(name: str, seconds: int, work: Path, crashes: Path) -> tuple[str, float, int, int, int, str]:
    corpus = work / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    log = work / f"{name}.log"
    command = [
        sys.executable,
        str(HERE / f"fuzz_{name}.py"),
        f"-max_total_time={seconds}",
        f"-max_len={MAX_LEN}",
        "-timeout=20",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={crashes}/{name}-",
        "-print_final_stats=1",
        str(corpus),
        str(HERE / "corpus" / name),
    ]
    started = time.monotonic()
    print(f"fuzz: {name} ...", flush=True)
    with log.open("w") as output:
        # The budget is libFuzzer's; the timeout here only stops a harness that ignores it.
        try:
            status = subprocess.run(
                command, check=False, stdout=output, stderr=subprocess.STDOUT, timeout=seconds + 120
            ).returncode
        except subprocess.TimeoutExpired:
            status = -1
    elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    done = DONE.findall(text)
    runs = int(done[-1][0]) if done else _stat(text, "number_of_executed_units")
    coverage = COVERAGE.findall(text)
    cov, corp = (int(coverage[-1][0]), int(coverage[-1][2])) if coverage else (0, 0)
    if status == 0:
        result = "ok"
    else:
        found = sorted(path.name for path in crashes.glob(f"{name}-*"))
        result = f"FAILED (exit {status}{': ' + ', '.join(found) if found else ''})"
        tail = "\n".join(text.splitlines()[-40:])
        print(f"fuzz: {name} failed; the end of its log ({log}):\n{tail}", flush=True)
    print(f"fuzz: {name}: {runs:,} executions in {elapsed:.0f} s, coverage {cov}: {result}", flush=True)
    return name, elapsed, runs, cov, corp, result


def _stat(text: str, key: str) -> int:
    found = re.findall(rf"stat::{key}:\s+(\d+)", text)
    return int(found[-1]) if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
