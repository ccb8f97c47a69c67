"""``--help`` for the load test's own options: ``python loadtest/_help.py [SCENARIO]``.

Locust 2.47 prints ``locust -f FILE --help`` before it imports FILE, so the
options a locustfile adds (``init_command_line_parser``) are never listed
there (locustio/locust#2917). This imports the scenario (``chat.py`` by
default), builds Locust's parser as ``locust -f`` would, and prints the
chatcore option groups: the common ones and the scenario's own.

    python loadtest/_help.py
    python loadtest/_help.py loadtest/storm.py
"""

from __future__ import annotations

import runpy
import sys
import textwrap
from pathlib import Path

import locust.argument_parser


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    scenario = Path(argv[0]) if argv else here / "chat.py"
    if argv[1:] or not scenario.is_file():
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    sys.path.insert(0, str(here))  # the scenarios import _chatuser, _common, ...
    runpy.run_path(str(scenario), run_name="locustfile")
    parser = locust.argument_parser.get_parser()
    formatter = parser._get_formatter()
    formatter.add_usage(f"locust -f {scenario.name} [options]", [], [])
    for group in parser._action_groups:
        if group.title and group.title.startswith("chatcore"):
            formatter.start_section(group.title)
            formatter.add_text(group.description and textwrap.fill(group.description, 76))  # Locust's is raw
            formatter.add_arguments(group._group_actions)
            formatter.end_section()
    formatter.add_text("Locust's own options: locust --help. The full guide: loadtest/README.md.")
    print(formatter.format_help(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
