"""A plugin that rejects its option value as a usage error."""

import argparse

from chatcore import Config, UsageError, hookimpl


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--colour", default="blue")


@hookimpl
def chatcore_configure(config: Config) -> None:
    if config.options.colour not in ("blue", "green"):
        raise UsageError(f"--colour must be blue or green, not {config.options.colour!r}")
