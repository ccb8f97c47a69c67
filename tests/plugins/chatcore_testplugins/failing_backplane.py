"""A plugin whose backplane cannot be made."""

from chatcore import hookimpl


@hookimpl
def chatcore_backplane() -> None:
    raise RuntimeError("the cluster is unreachable")
