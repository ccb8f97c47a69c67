"""Options from a TOML file (--config) and CHATCORE_* variables; --print-config."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatcore import UsageError, hookimpl
from chatcore.config import parse_config
from chatcore.testing import LineClient, ServerProcess

ROOT = Path(__file__).parent.parent
TEST_PLUGINS = Path(__file__).parent / "plugins"
OPTIONS_PLUGIN = "chatcore_testplugins.config_options"
OPTIONS = f'plugins = ["{OPTIONS_PLUGIN}"]\n'  # a file's first line that selects it

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@pytest.fixture(autouse=True)
def _no_chatcore_variables(monkeypatch, tmp_path):
    """The tests' own environment must not leak into the servers they start."""
    for name in list(os.environ):
        if name.startswith("CHATCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # where the default --state-db goes


@pytest.fixture
def test_plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(TEST_PLUGINS))


def write(tmp_path: Path, text: str, name: str = "chatcore.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parse(*args: str, env: dict[str, str] | None = None) -> argparse.Namespace:
    return parse_config(list(args), environ=env or {}).options


def usage_error(*args: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(UsageError) as info:
        parse_config(list(args), environ=env or {})
    return str(info.value)


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``chatcore serve ARGS`` as a process, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", *args],
        check=False,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(TEST_PLUGINS), **(env or {})},
    )


# ---------------------------------------------------------------------------
# What the file and the environment set
# ---------------------------------------------------------------------------


def test_the_file_sets_core_options_through_their_types(tmp_path):
    path = write(tmp_path, 'max-clients = 500\nhost = "::"\nlog-level = "debug"\nmax-line = "64"\n')
    options = parse("--config", str(path))
    assert (options.max_clients, options.host, options.log_level, options.max_line) == (500, "::", "DEBUG", 64)


def test_the_file_selects_plugins_and_sets_their_options(tmp_path):
    path = write(tmp_path, 'plugins = ["welcome", "filters"]\nwelcome-text = "hi {nick}"\nbanned-action = "reject"\n')
    config = parse_config(["--config", str(path)], environ={})
    assert config.plugins == ["welcome", "filters"]
    assert config.pluginmanager.has_plugin("filters")
    assert (config.options.welcome_text, config.options.banned_action) == ("hi {nick}", "reject")


def test_an_empty_plugins_array_selects_none(tmp_path):
    path = write(tmp_path, "plugins = []\n")
    assert parse_config(["--config", str(path)], environ={}).plugins == []


def test_environment_variables_set_options():
    config = parse_config([], environ={"CHATCORE_MAX_CLIENTS": "7", "CHATCORE_PLUGINS": "welcome,filters"})
    assert config.plugins == ["welcome", "filters"]
    assert config.options.max_clients == 7


def test_config_variable_names_the_file_and_the_option_wins(tmp_path):
    from_variable = write(tmp_path, "max-clients = 11\n", "variable.toml")
    from_option = write(tmp_path, "max-clients = 22\n", "option.toml")
    assert parse(env={"CHATCORE_CONFIG": str(from_variable)}).max_clients == 11
    assert parse("--config", str(from_option), env={"CHATCORE_CONFIG": str(from_variable)}).max_clients == 22


@pytest.mark.parametrize(
    ("in_file", "in_env", "on_command_line", "expected"),
    [
        (None, None, None, 1000),
        ("10", None, None, 10),
        ("10", "20", None, 20),
        (None, "20", None, 20),
        ("10", "20", "30", 30),
        ("10", None, "30", 30),
    ],
)
def test_precedence_command_line_environment_file_default(tmp_path, in_file, in_env, on_command_line, expected):
    args = ["--config", str(write(tmp_path, f"max-clients = {in_file}\n" if in_file else ""))]
    if on_command_line:
        args += ["--max-clients", on_command_line]
    env = {"CHATCORE_MAX_CLIENTS": in_env} if in_env else {}
    assert parse(*args, env=env).max_clients == expected


@pytest.mark.parametrize(
    ("in_file", "in_env", "on_command_line", "expected"),
    [
        ('["welcome"]', None, None, ["welcome"]),
        ('["welcome"]', "filters", None, ["filters"]),
        ('["welcome"]', "filters", "welcome,filters", ["welcome", "filters"]),
        ('["welcome"]', None, "", []),
    ],
)
def test_plugin_selection_has_the_same_precedence(tmp_path, in_file, in_env, on_command_line, expected):
    args = ["--config", str(write(tmp_path, f"plugins = {in_file}\n"))]
    if on_command_line is not None:
        args += ["--plugins", on_command_line]
    env = {"CHATCORE_PLUGINS": in_env} if in_env is not None else {}
    assert parse_config(args, environ=env).plugins == expected


@pytest.mark.usefixtures("test_plugins")
@pytest.mark.parametrize(
    ("in_file", "in_env", "on_command_line", "expected"),
    [
        (None, None, [], None),
        ('["tcp://a:1", "tcp://b:2"]', None, [], ["tcp://a:1", "tcp://b:2"]),
        ("[]", None, [], []),
        ('["tcp://a:1"]', "tcp://c:3, tcp://d:4", [], ["tcp://c:3", "tcp://d:4"]),
        # The command line replaces the list; it does not add to it.
        ('["tcp://a:1"]', "tcp://c:3", ["tcp://e:5", "tcp://f:6"], ["tcp://e:5", "tcp://f:6"]),
    ],
)
def test_append_options_take_an_array_or_a_comma_separated_list(tmp_path, in_file, in_env, on_command_line, expected):
    args = ["--plugins", OPTIONS_PLUGIN, "--config", str(write(tmp_path, f"upstream = {in_file}\n" if in_file else ""))]
    for url in on_command_line:
        args += ["--upstream", url]
    env = {"CHATCORE_UPSTREAM": in_env} if in_env else {}
    assert parse(*args, env=env).upstream == expected


@pytest.mark.usefixtures("test_plugins")
def test_flags_and_other_kinds_of_option(tmp_path):
    path = write(
        tmp_path,
        'quiet-joins = true\nno-echo = true\nmode = "fast"\nratio = 2\nretries = 9\ntags = ["a", "b"]\n',
    )
    options = parse("--plugins", OPTIONS_PLUGIN, "--config", str(path))
    assert (options.quiet_joins, options.echo, options.mode, options.ratio, options.retries) == (
        True,
        False,
        "fast",
        2.0,
        9,
    )
    assert options.tags == ["a", "b"]
    path = write(tmp_path, "quiet-joins = false\nno-echo = false\n")
    options = parse("--plugins", OPTIONS_PLUGIN, "--config", str(path))
    assert (options.quiet_joins, options.echo) == (False, True)


@pytest.mark.usefixtures("test_plugins")
@pytest.mark.parametrize(("text", "quiet"), [("1", True), ("yes", True), ("TRUE", True), ("off", False), ("0", False)])
def test_flags_from_the_environment(text, quiet):
    options = parse("--plugins", OPTIONS_PLUGIN, env={"CHATCORE_QUIET_JOINS": text, "CHATCORE_NO_ECHO": text})
    assert (options.quiet_joins, options.echo) == (quiet, not quiet)


def test_a_required_option_may_come_from_the_file(tmp_path):
    class NeedsToken:
        @hookimpl
        def chatcore_addoption(self, parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--token", required=True)

    path = write(tmp_path, 'token = "abc"\n')
    config = parse_config(["--plugins", "", "--config", str(path)], extra_plugins=[NeedsToken()], environ={})
    assert config.options.token == "abc"


def test_unknown_variables_are_ignored_and_near_misses_warned_about(caplog):
    env = {
        "CHATCORE_MAX_CLIENT": "5",
        "CHATCORE_DEPLOY_ID": "42",
        "CHATCORE_HOSTNAME": "box1",
        "CHATCORE_PASSWORD": "x",
    }
    with caplog.at_level("WARNING", logger="chatcore.config"):
        options = parse(env=env)
    assert options.max_clients == 1000
    assert [record.getMessage() for record in caplog.records] == [
        "ignoring CHATCORE_MAX_CLIENT: not an option (did you mean CHATCORE_MAX_CLIENTS?)"
    ]


# ---------------------------------------------------------------------------
# Mistakes: one line naming the file or variable, the key and what is allowed
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("test_plugins")
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('max-clients = "lots"', "max-clients: 'lots' is not a whole number"),
        ("max-clients = 0", "max-clients: 0 is out of range (must be at least 1)"),
        ("max-clients = 1.5", "max-clients: '1.5' is not a whole number"),
        ("max-clients = true", "max-clients: expected a number or a string, not true"),
        ("max-clients = [1]", "max-clients: takes one value, not an array"),
        ("max-clients = {a = 1}", "max-clients: expected a number or a string, not a table"),
        ("host = 5", "host: expected a string, not 5"),
        ("host = 1979-05-27", "host: expected a string, not a date"),
        ('log-level = "loud"', "log-level: invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')"),
        ("max-client = 5", "unknown key 'max-client' (did you mean 'max-clients'?)"),
        (
            'welcome-txt = "hi"',
            "unknown key 'welcome-txt' (did you mean 'welcome-text'?)",
        ),
        (
            "[network]\nport = 1",
            "unknown key 'network' (the keys are the long options of 'chatcore serve --help' without '--', "
            "a plugin's only when it is selected)",
        ),
        (
            'plugins = "welcome"',
            """plugins: expected an array of plugin names, like ["welcome", "logger"], not 'welcome'""",
        ),
        ('config = "other.toml"', "'config' can only be given on the command line"),
        ("print-config = true", "'print-config' can only be given on the command line"),
        (OPTIONS + 'quiet-joins = "yes"', "quiet-joins: expected true or false, not 'yes'"),
        (OPTIONS + 'upstream = "tcp://a:1"', """upstream: expected an array, like ["a", "b"], not 'tcp://a:1'"""),
        (OPTIONS + 'upstream = ["http://a"]', "upstream: 'http://a' is not a tcp:// URL"),
        (OPTIONS + 'ratio = "half"', "ratio: invalid float value: 'half'"),
        (OPTIONS + 'mode = "slow"', "mode: invalid choice: 'slow' (choose from 'fast', 'safe')"),
        (OPTIONS + "tags = []", "tags: expected at least one value"),
    ],
)
def test_a_bad_file_is_a_usage_error_naming_file_and_key(tmp_path, content, message):
    path = write(tmp_path, content + "\n")
    assert usage_error("--config", str(path)) == f"{path}: {message}"


def test_a_key_of_a_plugin_not_selected_names_the_plugin(tmp_path):
    path = write(tmp_path, 'plugins = ["welcome"]\nlog-file = "events.jsonl"\n')
    assert usage_error("--config", str(path)).endswith(
        "\n--log-file is an option of the logger plugin: add it with --plugins welcome,logger"
    )


@pytest.mark.usefixtures("test_plugins")
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CHATCORE_MAX_CLIENTS", "lots", "'lots' is not a whole number"),
        ("CHATCORE_MAX_CLIENTS", "", "'' is not a whole number"),
        ("CHATCORE_LOG_LEVEL", "loud", "invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')"),
        ("CHATCORE_QUIET_JOINS", "maybe", "'maybe' is not a boolean (use true or false, 1 or 0)"),
        ("CHATCORE_UPSTREAM", "tcp://a:1,ftp://b", "'ftp://b' is not a tcp:// URL"),
    ],
)
def test_a_bad_variable_is_a_usage_error_naming_it(variable, value, message):
    error = usage_error("--plugins", OPTIONS_PLUGIN, env={variable: value})
    assert error == f"environment variable {variable}: {message}"


def test_a_missing_file_is_a_usage_error(tmp_path):
    path = tmp_path / "nope.toml"
    assert (
        usage_error("--config", str(path)) == f"{path}: cannot read the configuration file: No such file or directory"
    )


def test_a_syntax_error_gives_the_line(tmp_path):
    path = write(tmp_path, 'host = "::"\nmax-clients = \n')
    assert usage_error("--config", str(path)) == f"{path}: line 2, column 15: invalid TOML: Invalid value"


# ---------------------------------------------------------------------------
# --print-config, and secrets
# ---------------------------------------------------------------------------


def _print_config(*args: str, env: dict[str, str] | None = None) -> str:
    result = run(*args, "--print-config", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.usefixtures("test_plugins")
def test_print_config_is_toml_that_loads_again_to_the_same_configuration(tmp_path):
    tricky = 'say "hi"\\n\tto {nick} \u00e9\u2603\U0001f600 \\\\ \x7f end'
    path = write(tmp_path, f'plugins = ["welcome", "filters", "{OPTIONS_PLUGIN}"]\nmax-clients = 50\n')
    env = {"CHATCORE_WELCOME_TEXT": tricky, "CHATCORE_UPSTREAM": "tcp://a:1,tcp://b:2", "CHATCORE_QUIET_JOINS": "1"}
    first = _print_config("--config", str(path), "--flood-rate", "2.5", "--no-echo", env=env)
    data = tomllib.loads(first)
    assert data["plugins"] == ["welcome", "filters", OPTIONS_PLUGIN]
    assert data["max-clients"] == 50
    assert data["welcome-text"] == tricky
    assert data["upstream"] == ["tcp://a:1", "tcp://b:2"]
    assert (data["flood-rate"], data["quiet-joins"], data["no-echo"]) == (2.5, True, True)
    assert "# banned-words: not set" in first.splitlines()
    assert "config" not in data
    assert "print-config" not in data

    again = write(tmp_path, first, "printed.toml")
    assert _print_config("--config", str(again)) == first
    options = parse_config(["--config", str(again)], environ={}).options
    assert (options.welcome_text, options.upstream, options.echo) == (tricky, ["tcp://a:1", "tcp://b:2"], False)


@pytest.mark.parametrize("where", ["command line", "environment", "file"])
def test_print_config_never_shows_a_secret(tmp_path, where):
    password = "hunter2-s3cret"
    args = ["--plugins", OPTIONS_PLUGIN]
    env = {}
    if where == "command line":
        args += ["--db-password", password]
    elif where == "environment":
        env["CHATCORE_DB_PASSWORD"] = password
    else:
        args += ["--config", str(write(tmp_path, f'db-password = "{password}"\n'))]
    printed = _print_config(*args, env=env)
    assert password not in printed
    assert "# db-password: secret, set; not shown" in printed.splitlines()
    assert "db-password" not in tomllib.loads(printed)


def test_print_config_says_when_a_secret_is_not_set():
    printed = _print_config("--plugins", OPTIONS_PLUGIN)
    assert "# db-password: secret, not set; not shown" in printed.splitlines()


def test_print_config_starts_nothing(tmp_path):
    """Plugins' chatcore_configure opens files (the log, the history database); --print-config must not."""
    result = run("--plugins", "logger,history", "--history-db", "chat.sqlite", "--print-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_example_file_is_valid_and_means_what_it_says():
    example = ROOT / "chatcore.example.toml"
    printed = tomllib.loads(_print_config("--config", str(example)))
    written = tomllib.loads(example.read_text(encoding="utf-8"))
    assert written["plugins"] == ["welcome", "logger", "filters", "history"]
    assert {key: printed[key] for key in written} == written


# ---------------------------------------------------------------------------
# The real program: exit status and what a running server does
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('max-clients = "lots"\n', "max-clients: 'lots' is not a whole number"),
        ("max-client = 5\n", "unknown key 'max-client' (did you mean 'max-clients'?)"),
        ("max-clients = \n", "line 1, column 15: invalid TOML: Invalid value"),
    ],
)
def test_a_bad_file_exits_2_in_one_line(tmp_path, content, message):
    path = write(tmp_path, content)
    result = run("--port", "0", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == f"chatcore: error: {path}: {message}\n"


def test_a_missing_file_exits_2(tmp_path):
    result = run("--port", "0", env={"CHATCORE_CONFIG": str(tmp_path / "gone.toml")})
    assert result.returncode == 2
    assert (
        result.stderr
        == f"chatcore: error: {tmp_path / 'gone.toml'}: cannot read the configuration file: No such file or directory\n"
    )


def test_a_bad_variable_exits_2_in_one_line():
    result = run("--port", "0", env={"CHATCORE_MAX_CLIENTS": "lots"})
    assert result.returncode == 2
    assert result.stderr == "chatcore: error: environment variable CHATCORE_MAX_CLIENTS: 'lots' is not a whole number\n"


def test_a_misspelt_variable_is_a_warning_not_an_error():
    result = run("--print-config", env={"CHATCORE_MAX_CLIENT": "5"})
    assert result.returncode == 0
    assert (
        "WARNING chatcore.config: ignoring CHATCORE_MAX_CLIENT: not an option (did you mean CHATCORE_MAX_CLIENTS?)"
        in (result.stderr)
    )


@pytest.mark.parametrize(
    ("env_text", "cli_text", "expected"),
    [
        (None, None, "from the file"),
        ("from the environment", None, "from the environment"),
        ("from the environment", "from the command line", "from the command line"),
    ],
)
def test_a_running_server_takes_the_winning_value(tmp_path, env_text, cli_text, expected):
    path = write(tmp_path, 'plugins = ["welcome"]\nwelcome-text = "from the file"\n')
    args = ["--config", str(path)] + (["--welcome-text", cli_text] if cli_text else [])
    env = {"CHATCORE_WELCOME_TEXT": env_text} if env_text else {}
    with ServerProcess(*args, env=env) as server:
        client = LineClient(server.address)
        try:
            assert client.sync() == [f"* {expected}"]
        finally:
            client.close()
    assert server.returncode == 0, server.stderr


def test_max_clients_from_the_file_refuses_the_next_client(tmp_path):
    path = write(tmp_path, "plugins = []\nmax-clients = 1\n")
    with ServerProcess("--config", str(path)) as server:
        first = LineClient(server.address)
        try:
            first.sync()
            second = LineClient(server.address)
            try:
                assert second.wait_closed() == ["! server full, try again later"]
            finally:
                second.close()
        finally:
            first.close()
    assert server.returncode == 0, server.stderr


def test_help_describes_the_file_and_the_environment():
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for words in (
        "--config FILE",
        "--print-config",
        "CHATCORE_CONFIG",
        "CHATCORE_MAX_CLIENTS=500",
        "docs/configuration.md",
    ):
        assert words in text


def test_the_docs_describe_every_reserved_variable_and_the_precedence():
    from chatcore.configfile import RESERVED_VARIABLES

    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in RESERVED_VARIABLES:
        assert f"`{name}`" in doc
    assert "command line, then environment, then file, then defaults" in doc
    assert "docs/configuration.md" in (ROOT / "README.md").read_text(encoding="utf-8")
