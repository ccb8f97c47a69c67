"""A plugin whose start-up hook fails."""

from chatcore import hookimpl


@hookimpl
def chatcore_server_start() -> None:
    raise RuntimeError("the database is on fire")
