"""A plugin that tries to wrap a chatcore hook (not supported)."""

from collections.abc import Generator

from chatcore import hookimpl


@hookimpl(wrapper=True)
def chatcore_welcome() -> Generator[None, list[str], list[str]]:
    result = yield
    return result
