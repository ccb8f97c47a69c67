"""Meta-tests: the hook documentation and tests keep up with the hook specs."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest

from chatcore import hookspecs
from chatcore.config import build_parser
from chatcore.configfile import is_restart_only
from chatcore.hooks import hook_names
from chatcore.manager import PluginManager, entry_points, load_plugins

ROOT = Path(__file__).parent.parent
PLUGINS_DOC = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")


def signature_text(name: str) -> str:
    """``name(arg: annotation, ...) -> return``, as the docs write it."""
    spec = getattr(hookspecs, name)
    signature = inspect.signature(spec)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"{name}({params}) -> {signature.return_annotation}"


def test_there_are_hooks():
    assert len(hook_names()) >= 13


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_with_its_exact_signature(name):
    expected = signature_text(name)
    assert f"`{expected}`" in PLUGINS_DOC, f"docs/plugins.md must document {expected}"


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_has_a_docstring_saying_when_and_which_thread(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert "versionadded" in doc
    assert "thread" in doc.lower()


def test_docs_name_no_hook_that_does_not_exist():
    documented = set(re.findall(r"`(chatcore_\w+)\(", PLUGINS_DOC))
    assert documented == set(hook_names())


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_exercised_by_a_test(name):
    sources = [
        path.read_text(encoding="utf-8") for path in (ROOT / "tests").rglob("*.py") if path.name != Path(__file__).name
    ]
    assert any(f"def {name}(" in source for source in sources), f"no test plugin implements {name}"


def test_the_readme_plugin_table_lists_every_bundled_plugin():
    """What `chatcore plugins` lists, the README's table shows (issue 25:
    `opers` was missing)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Plugins", 1)[1].split("\n\n", 3)[2]
    rows = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    bundled = {name for name, ep in entry_points().items() if ep.value.startswith("chatcore.")}
    assert bundled - rows == set()


def test_the_welcome_count_says_how_old_the_other_servers_part_may_be():
    """In a cluster {count} adds the other servers' members as the last
    presence renewal read them (a Redis round trip per connection would
    cost every arrival): say so."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `welcome`"))
    assert "as of a few seconds before" in row
    pm = PluginManager()
    load_plugins(pm, ["welcome"])
    parser = build_parser(pm)
    help_text = next(a.help for a in parser._actions if "--welcome-text" in a.option_strings)
    assert "as of a few seconds before" in help_text
    scaling = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    assert "`{count}` counts the room's people on every server" in scaling


# -- what a reload does with each option -------------------------------------------

OPERATIONS_DOC = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
#: Options a configuration file cannot set: a reload never sees them change.
COMMAND_LINE_ONLY = {"--help", "--version", "--config", "--print-config"}


def reload_table() -> list[tuple[list[str], str]]:
    """The rows of the table in operations.md's "Reloading the
    configuration": the options each names (``--webhook-*`` stands for all
    of a prefix; ``plugins`` is ``--plugins``), and what they apply to."""
    section = OPERATIONS_DOC.split("\n## Reloading the configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            what, applies = line.strip("|").split("|", 1)
            names = re.findall(r"`(--[a-z0-9-]+\*?|plugins)`", what)
            rows.append((["--plugins" if name == "plugins" else name for name in names], applies.strip(" |")))
    return rows


def names_option(name: str, option: str) -> bool:
    return option.startswith(name[:-1]) if name.endswith("*") else option == name


def serve_options() -> dict[str, argparse.Action]:
    """Every long option of ``chatcore serve`` with every bundled plugin
    loaded, but those of the command line alone."""
    pm = PluginManager()
    load_plugins(pm, [name for name, ep in entry_points().items() if ep.value.startswith("chatcore.")])
    options = {}
    for action in build_parser(pm)._actions:
        for name in action.option_strings:
            if name.startswith("--") and name not in COMMAND_LINE_ONLY:
                options[name] = action
    return options


def test_the_reload_table_names_every_option_and_no_other():
    """An option a reload neither applies nor calls "needs a restart" is
    logged as changed while nothing changes: every option must say which.
    (That the table is right about the options it says apply is for
    tests/test_reload.py and each plugin's tests.)"""
    names = [name for row, _ in reload_table() for name in row]
    options = serve_options()
    missing = [option for option in options if not any(names_option(name, option) for name in names)]
    assert missing == [], "say in operations.md's reload table what a reload does with these"
    unknown = [name for name in names if not any(names_option(name, option) for option in options)]
    assert unknown == [], "operations.md's reload table names options that do not exist"


def test_the_options_that_need_a_restart_are_those_marked_restart_only():
    (restart,) = [row for row, applies in reload_table() if applies == "**need a restart**"]
    for option, action in serve_options().items():
        if option == "--plugins":  # restart only, but loaded live when it can be: a row of its own
            continue
        listed = any(names_option(name, option) for name in restart)
        assert listed == is_restart_only(action), f"{option}: restart_only {is_restart_only(action)}, listed {listed}"
