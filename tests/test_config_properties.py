"""Property tests of the configuration file and the CHATCORE_* variables
(hypothesis, bounded): whatever a file or the environment holds, loading it
either gives a configuration or refuses it cleanly, and what
``--print-config`` writes of a configuration loads again to the same one.

The clean refusals are the documented ones: ``UsageError`` (one line that
names the file or variable) and argparse's usage error (``SystemExit``
with status 2). fuzz/fuzz_config.py fuzzes the same paths, guided by
coverage, for longer.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatcore import UsageError
from chatcore.config import build_parser, parse_config
from chatcore.configfile import env_name, render, settable_options
from chatcore.manager import PluginManager, load_plugins

#: Bundled plugins whose options the properties draw on (no extra needed).
#: All are selected: an option of a plugin not selected is refused through
#: a slower path (the hint names the plugin), which tests/test_config_file.py
#: covers.
PLUGINS = ["welcome", "logger", "filters", "history", "irc", "web"]
#: CHATCORE_FUZZ_EXAMPLES=N runs N random examples each (tox -e fuzz runs 1,000).
EXAMPLES = int(os.environ.get("CHATCORE_FUZZ_EXAMPLES", "25"))
PROPERTIES = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("CHATCORE_FUZZ_EXAMPLES"),  # the normal suite: the same inputs every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _keys() -> list[str]:
    pm = PluginManager()
    load_plugins(pm, PLUGINS)
    return sorted(settable_options(build_parser(pm)))


KEYS = _keys()
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
scalar = st.one_of(
    text,
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["", "0", "1", "true", "tcp://127.0.0.1:0", "irc://[::1]:6667", "10.0.0.0/8", "json", "INFO"]),
)
toml_value = st.one_of(scalar, st.lists(scalar, max_size=3))
key = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k.replace("-", "_")), text)


def toml(value: object) -> str:
    """``value`` as TOML (JSON's escapes are TOML's, but for DEL and infinities)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(value)


def load(path: Path, environ: dict[str, str]) -> object | None:
    """parse_config with --print-config; None if refused cleanly."""
    refusal: UsageError | SystemExit
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return parse_config(["--config", str(path), "--print-config"], environ=environ)
    except UsageError as exc:
        refusal = exc
    except SystemExit as exc:
        refusal = exc
    if isinstance(refusal, SystemExit):
        assert refusal.code == 2
    else:
        # Its first line says what is wrong (a plugin hint may follow).
        assert str(refusal).split("\n")[0].strip()
    return None


def printed_again(config: object, path: Path) -> None:
    """--print-config's file loads to the configuration it was printed from."""
    printed = render(build_parser(config.pluginmanager), config.options, config.plugins)  # type: ignore[attr-defined]
    path.write_text(printed, encoding="utf-8")
    again = load(path, {})
    assert again is not None, printed
    assert render(build_parser(again.pluginmanager), again.options, again.plugins) == printed  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_chatcore_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CHATCORE_"):
            monkeypatch.delenv(name)


@PROPERTIES
@given(entries=st.dictionaries(key, toml_value, max_size=6))
def test_any_file_loads_or_is_refused_cleanly(tmp_path: Path, entries: dict[str, object]) -> None:
    lines = [f"plugins = {toml(PLUGINS)}"]
    lines += [f"{toml(name)} = {toml(value)}" for name, value in entries.items() if name != "plugins"]
    path = tmp_path / "chatcore.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = load(path, {})
    if config is not None:
        printed_again(config, tmp_path / "printed.toml")


@PROPERTIES
@given(
    variables=st.dictionaries(
        st.one_of(st.sampled_from(KEYS).map(env_name), text.map(lambda name: "CHATCORE_" + name.upper())),
        text.filter(lambda value: "\0" not in value),
        max_size=6,
    ),
)
def test_any_environment_loads_or_is_refused_cleanly(tmp_path: Path, variables: dict[str, str]) -> None:
    variables = {name: value for name, value in variables.items() if "\0" not in name and "=" not in name}
    variables.pop("CHATCORE_CONFIG", None)
    variables["CHATCORE_PLUGINS"] = ",".join(PLUGINS)
    path = tmp_path / "chatcore.toml"
    path.write_text("", encoding="utf-8")
    config = load(path, variables)
    if config is not None:
        printed_again(config, tmp_path / "printed.toml")


@PROPERTIES
@given(
    value=st.integers(-(10**6), 10**6), key=st.sampled_from(["max-clients", "max-line", "max-queue", "history-lines"])
)
def test_a_whole_number_reads_the_same_from_file_and_environment(tmp_path: Path, value: int, key: str) -> None:
    path = tmp_path / "chatcore.toml"
    path.write_text(f'plugins = ["history"]\n{key} = {value}\n', encoding="utf-8")
    from_file = load(path, {})
    path.write_text('plugins = ["history"]\n', encoding="utf-8")
    from_env = load(path, {env_name(key): str(value)})
    assert (from_file is None) == (from_env is None)
    if from_file is not None and from_env is not None:
        dest = key.replace("-", "_")
        assert getattr(from_file.options, dest) == getattr(from_env.options, dest) == value  # type: ignore[attr-defined]
