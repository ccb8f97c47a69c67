"""Fuzz the configuration: the TOML file (``--config``), the ``CHATCORE_*``
environment variables, the ``--listen`` URLs they give, and
``--print-config``, whose output must load again to the same
configuration.

Input: the TOML text, then a NUL byte, then the environment, one
``NAME=VALUE`` a line (``CHATCORE_`` is put before each name that lacks it).
Inputs that select plugins other than the bundled ones are skipped: a
plugin is any importable module, and importing arbitrary modules is not
what this harness tests. ``CHATCORE_CONFIG`` is ignored (it names the file:
this harness writes its own).

Documented rejections: ``UsageError`` (one line naming the file or the
variable and what is wrong with it), and argparse's usage error
(``SystemExit`` with status 2) for a value an option's type refuses.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile

import _atheris

with _atheris.instrumented():
    from chatcore.config import build_parser, parse_config
    from chatcore.configfile import render
    from chatcore.errors import UsageError
    from chatcore.manager import parse_plugin_list
    from chatcore.transports.listener import parse_listen_url

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

BUNDLED = {"commands", "native", "opers", "welcome", "logger", "filters", "history", "metrics", "irc", "web", "redis"}
folder = tempfile.mkdtemp(prefix="chatcore-fuzz-config-")
path = os.path.join(folder, "chatcore.toml")


def _environment(text: str) -> dict[str, str]:
    env = {}
    for line in text.split("\n"):
        name, sep, value = line.partition("=")
        if sep and name and "\0" not in name and "\0" not in value:
            env[name if name.startswith("CHATCORE_") else f"CHATCORE_{name}"] = value
    env.pop("CHATCORE_CONFIG", None)
    return env


def _bundled_only(toml_bytes: bytes, env: dict[str, str]) -> bool:
    names: list[object] = []
    if "CHATCORE_PLUGINS" in env:
        names += parse_plugin_list(env["CHATCORE_PLUGINS"])
    try:
        data = tomllib.loads(toml_bytes.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True
    plugins = data.get("plugins")
    if isinstance(plugins, str):
        names += parse_plugin_list(plugins)
    elif isinstance(plugins, list):
        names += [name.strip() if isinstance(name, str) else name for name in plugins]
    return all(isinstance(name, str) and name in BUNDLED for name in names if name != "")


def _load(env: dict[str, str]) -> object:
    """parse_config --print-config, and the --listen URLs; None if rejected."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            config = parse_config(["--config", path, "--print-config"], environ=env)
            schemes = {scheme.name: scheme for scheme in config.pluginmanager.hooks.schemes()}
            for url in config.options.listen or ():
                parse_listen_url(url, schemes)
    except UsageError:
        return None
    except SystemExit as exc:
        if exc.code != 2:
            raise AssertionError(f"exit status {exc.code!r}, not 2") from None
        return None
    return config


def test_one_input(data: bytes) -> None:
    toml_bytes, _, env_bytes = data.partition(b"\0")
    env = _environment(env_bytes.decode("utf-8", "replace"))
    if not _bundled_only(toml_bytes, env):
        return
    with open(path, "wb") as handle:
        handle.write(toml_bytes)
    config = _load(env)
    if config is None:
        return
    printed = render(build_parser(config.pluginmanager), config.options, config.plugins)  # type: ignore[attr-defined]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(printed)
    again = _load({})
    if again is None:
        raise AssertionError(f"--print-config wrote a file that is refused:\n{printed}")
    reprinted = render(build_parser(again.pluginmanager), again.options, again.plugins)  # type: ignore[attr-defined]
    if reprinted != printed:
        raise AssertionError(f"--print-config's file loads to another configuration:\n{printed}\n---\n{reprinted}")


if __name__ == "__main__":
    _atheris.fuzz(test_one_input)
