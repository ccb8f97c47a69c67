"""A plugin that tells, by refusing to start, the GIL switch interval the
server process runs with (read inside that process)."""

import sys

from chatcore import UsageError, hookimpl


@hookimpl
def chatcore_server_start() -> None:
    raise UsageError(f"switch interval {sys.getswitchinterval():g}")
