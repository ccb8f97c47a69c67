"""How much freed memory the C allocator keeps for reuse (glibc's trim threshold).

glibc gives memory back to the kernel whenever more than
``M_TRIM_THRESHOLD`` (128 KiB by default) is free at the top of a heap,
and each thread that mallocs has heaps of its own. A chat server's load
comes in bursts over hundreds of threads: what one burst frees is given
back, and the next burst faults every page of it in again. Measured with
``benchmarks/broadcast.py`` (docs/performance.md, "The allocator's trim
threshold"): a room of 500 all sending ran 25 to 35 % slower at the default
than with 32 MiB. Until issue 22 the server had 32 MiB by accident: a
scrypt hash computed when the ``opers`` plugin was imported freed 16 MiB,
and glibc raised its thresholds to match.

This is a setting of the process, so ``chatcore serve`` applies it (a
program that embeds the engine keeps its allocator as it is), and an
operator's own ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` wins. Elsewhere
than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

#: What the server keeps: up to this much free at the top of each heap.
TRIM_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h


def keep_freed_memory(environ: Mapping[str, str] | None = None, threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's trim threshold to ``threshold`` bytes, unless the
    environment sets it already; True if it was set."""
    environ = os.environ if environ is None else environ
    if "MALLOC_TRIM_THRESHOLD_" in environ or "malloc.trim_threshold" in environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no mallopt of this meaning)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, threshold))
