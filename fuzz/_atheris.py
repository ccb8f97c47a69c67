"""What every harness shares: atheris's set-up and the modules it instruments.

A harness is run by ``fuzz/run.py`` (``tox -e atheris``) for a time budget,
or by hand: ``python fuzz/fuzz_native.py -max_total_time=60 CORPUS_DIR``
(libFuzzer's flags), or on one input to replay it:
``python fuzz/fuzz_native.py crash-1234``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

#: The code whose branches guide the fuzzer: chatcore, and the libraries
#: its parsers hand bytes to (h11 and wsproto for the web front-end).
INSTRUMENTED = ["chatcore", "h11", "wsproto"]


def instrumented() -> atheris.import_hook.HookManager:
    """``with instrumented(): import ...``: instrument what is imported."""
    return atheris.instrument_imports(include=INSTRUMENTED)


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
