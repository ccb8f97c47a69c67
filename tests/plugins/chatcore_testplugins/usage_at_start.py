"""A plugin that finds a configuration problem only when the server starts."""

from chatcore import UsageError, hookimpl


@hookimpl
def chatcore_server_start() -> None:
    raise UsageError("the room list names no rooms")
