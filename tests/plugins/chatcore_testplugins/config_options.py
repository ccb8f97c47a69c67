"""A plugin with one option of each kind a configuration file handles, one of them secret."""

import argparse

from chatcore import hookimpl
from chatcore.config import secret, whole_number


def _url(text: str) -> str:
    if not text.startswith("tcp://"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a tcp:// URL")
    return text


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config test plugin")
    secret(group.add_argument("--db-password", metavar="PASSWORD", help="a secret"))
    group.add_argument("--upstream", action="append", type=_url, metavar="URL", help="may be given several times")
    group.add_argument("--quiet-joins", action="store_true", help="a store_true flag")
    group.add_argument("--no-echo", dest="echo", action="store_false", help="a store_false flag")
    group.add_argument("--mode", choices=["fast", "safe"], default="safe", help="a choice")
    group.add_argument("--ratio", type=float, default=0.5, help="a float through type=float")
    group.add_argument("--retries", type=whole_number(0, 9), default=3, help="a bounded whole number")
    group.add_argument("--tags", nargs="+", metavar="TAG", help="several values in one use")
