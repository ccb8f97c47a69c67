"""Meta-tests: the hook documentation and tests keep up with the hook specs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from chatcore import hookspecs
from chatcore.hooks import hook_names

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
