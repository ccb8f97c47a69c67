"""Options of ``chatcore serve`` from a TOML file and ``CHATCORE_*`` variables.

Every long option of ``chatcore serve``, the selected plugins' included, can
be set in a file (``--config FILE`` or ``CHATCORE_CONFIG``) under its name
without the dashes, and in an environment variable named ``CHATCORE_`` plus
the name in capitals with ``_`` for ``-``::

    max-clients = 500                 # CHATCORE_MAX_CLIENTS=500
    plugins = ["welcome", "logger"]   # CHATCORE_PLUGINS=welcome,logger

Precedence is command line, then environment, then file, then the option's
default. It falls out of argparse: the values from the file and the
environment are checked and converted here, with the option's own ``type``
and ``choices``, and handed to ``parse_args`` as the namespace it starts
from, so whatever the command line gives replaces them. A mistake is a
:class:`~chatcore.UsageError` that names the file (or variable), the key and
what is allowed.

The file is read in the first phase of parsing, before the plugins are
loaded, because its ``plugins`` selects them; its other keys are checked in
the second phase, once the plugins have added their options. docs/configuration.md
is the user's reference.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import re
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from chatcore.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

log = logging.getLogger("chatcore.config")

ENV_PREFIX = "CHATCORE_"
#: The variable that names the configuration file, as ``--config`` does.
CONFIG_VARIABLE = "CHATCORE_CONFIG"
#: ``CHATCORE_*`` names chatcore keeps for itself: never read as options and
#: never warned about. CHATCORE_PASSWORD is the server password (read by
#: chatcore.config, not an option: there is no --password to show in ps).
RESERVED_VARIABLES = frozenset({CONFIG_VARIABLE, "CHATCORE_PASSWORD"})
#: Options that only make sense on the command line.
_COMMAND_LINE_ONLY = frozenset({"help", "version", "config", "print_config"})

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

_A = TypeVar("_A", bound=argparse.Action)

# Actions marked with secret(). A weak set, so that a parser and its actions
# are freed as usual; the mark is on the action, so a plugin's option is
# secret in every parser its chatcore_addoption builds.
_secret_actions: weakref.WeakSet[argparse.Action] = weakref.WeakSet()


def secret(action: _A) -> _A:
    """Mark an option secret: ``--print-config`` never shows its value.

    Wrap the ``add_argument`` call; plugins mark theirs the same way::

        from chatcore.config import secret

        secret(group.add_argument("--db-password", help="..."))

    Returns the action. Secrets are best kept out of the command line,
    which other users can see in ``ps``: the file or ``CHATCORE_*`` both work.
    """
    _secret_actions.add(action)
    return action


def is_secret(action: argparse.Action) -> bool:
    """Whether ``action`` was marked with :func:`secret`."""
    return action in _secret_actions


# Actions marked with restart_only(), the same way.
_restart_actions: weakref.WeakSet[argparse.Action] = weakref.WeakSet()


def restart_only(action: _A) -> _A:
    """Mark an option that a reload (SIGHUP) cannot change: a new value in
    the file is logged as "needs a restart" and the running one kept.

    For what is bound or opened once (listeners, a database file)::

        from chatcore.config import restart_only

        restart_only(group.add_argument("--history-db", help="..."))

    Returns the action.
    """
    _restart_actions.add(action)
    return action


def is_restart_only(action: argparse.Action) -> bool:
    """Whether ``action`` was marked with :func:`restart_only`."""
    return action in _restart_actions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--print-config``, and describe the environment in the epilog."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=(
            "TOML file of options, named as the long options without '--' "
            f'(plugins = ["welcome"], max-clients = 500); default: ${CONFIG_VARIABLE} if set'
        ),
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML (secrets hidden), loadable with --config, and exit",
    )
    note = (
        "Every long option can also be set in the --config file or in an environment variable: "
        "CHATCORE_ and the name in capitals with _ for - (CHATCORE_MAX_CLIENTS=500, "
        "CHATCORE_PLUGINS=welcome,logger; several values comma-separated). "
        "The command line wins over the environment, which wins over the file. "
        "See docs/configuration.md."
    )
    parser.epilog = f"{parser.epilog} {note}" if parser.epilog else note


def option_key(action: argparse.Action) -> str | None:
    """The name ``action`` has in a file: its first long option without ``--``.

    ``None`` for options that cannot be set in a file or the environment.
    """
    if action.dest in _COMMAND_LINE_ONLY:
        return None
    for option in action.option_strings:
        if option.startswith("--"):
            return option[2:]
    return None


def env_name(key: str) -> str:
    """The environment variable for a key: ``max-clients`` -> ``CHATCORE_MAX_CLIENTS``."""
    return ENV_PREFIX + key.upper().replace("-", "_")


def settable_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option the file and environment may set, by key."""
    options: dict[str, argparse.Action] = {}
    for action in parser._actions:
        key = option_key(action)
        if key is not None:
            options[key] = action
    return options


# ---------------------------------------------------------------------------
# Kinds of options, and converting a value from a file or variable
# ---------------------------------------------------------------------------


class _BadValue(Exception):
    """A value an option does not accept; the message says why."""


def _is_flag(action: argparse.Action) -> bool:
    """store_true, store_false, store_const and --x/--no-x."""
    return isinstance(action, (argparse._StoreConstAction, argparse.BooleanOptionalAction))


def _is_append(action: argparse.Action) -> bool:
    """append and extend: each use on the command line adds to a list."""
    return isinstance(action, argparse._AppendAction) and action.nargs is None


def _is_list(action: argparse.Action) -> bool:
    """Options whose value is a list: append, extend, nargs '*', '+' or N."""
    return _is_append(action) or (
        isinstance(action, argparse._StoreAction) and action.nargs not in (None, argparse.OPTIONAL)
    )


def _is_supported(action: argparse.Action) -> bool:
    # count, append_const, append with nargs and custom actions would each
    # need rules of their own; nothing uses them yet. They stay command line only.
    return _is_flag(action) or _is_append(action) or isinstance(action, argparse._StoreAction)


def _toml_kind(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    return f"a {type(value).__name__}"  # dates and times


def _convert(action: argparse.Action, text: str) -> Any:
    """``text`` through the option's ``type`` and ``choices``, as argparse does."""
    convert = action.type
    if convert is None or not callable(convert):
        value: Any = text
    else:
        try:
            value = convert(text)
        except argparse.ArgumentTypeError as exc:
            raise _BadValue(str(exc)) from None
        except (TypeError, ValueError):
            name = getattr(convert, "__name__", repr(convert))
            raise _BadValue(f"invalid {name} value: {text!r}") from None
    if action.choices is not None and value not in action.choices:
        allowed = ", ".join(repr(choice) for choice in action.choices)
        raise _BadValue(f"invalid choice: {value!r} (choose from {allowed})")
    return value


def _scalar_from_toml(action: argparse.Action, value: object) -> Any:
    """One value from the file: a string, or a number for an option with a ``type``."""
    if isinstance(value, str):
        return _convert(action, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and action.type is not None:
        return _convert(action, str(value))
    expected = "a string" if action.type is None else "a number or a string"
    raise _BadValue(f"expected {expected}, not {_toml_kind(value)}")


def _from_toml(action: argparse.Action, value: object) -> Any:
    """A value from the file, checked and converted for ``action``."""
    if _is_flag(action):
        if not isinstance(value, bool):
            raise _BadValue(f"expected true or false, not {_toml_kind(value)}")
        return _flag_value(action, value)
    if _is_list(action):
        if not isinstance(value, list):
            raise _BadValue(f'expected an array, like ["a", "b"], not {_toml_kind(value)}')
        return _check_count(action, [_scalar_from_toml(action, item) for item in value])
    if isinstance(value, list):
        raise _BadValue("takes one value, not an array")
    return _scalar_from_toml(action, value)


def _from_env(action: argparse.Action, text: str) -> Any:
    """A value from an environment variable, checked and converted for ``action``."""
    if _is_flag(action):
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise _BadValue(f"{text!r} is not a boolean (use true or false, 1 or 0)")
        return _flag_value(action, word in _TRUE)
    if _is_list(action):
        items = [item.strip() for item in text.split(",")]
        return _check_count(action, [_convert(action, item) for item in items if item])
    return _convert(action, text)


def _flag_value(action: argparse.Action, on: bool) -> Any:
    if isinstance(action, argparse.BooleanOptionalAction):
        return on
    return action.const if on else action.default


def _check_count(action: argparse.Action, values: list[Any]) -> list[Any]:
    nargs = action.nargs
    if nargs == argparse.ONE_OR_MORE and not values:
        raise _BadValue("expected at least one value")
    if isinstance(nargs, int) and len(values) != nargs:
        raise _BadValue(f"expected {nargs} values, not {len(values)}")
    return values


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------
# The sources: file and environment
# ---------------------------------------------------------------------------


class Sources:
    """What the configuration file and the environment say, before parsing.

    Made by :func:`load` in the first phase; :meth:`parse_args` applies it
    in the second, once the plugins have added their options.

    :ivar path: the configuration file as given, or ``None``.
    :ivar file: its top-level keys and TOML values.
    :ivar env: the ``CHATCORE_*`` variables (reserved ones excluded).
    """

    def __init__(self, path: str | None, file: Mapping[str, object], env: Mapping[str, str]) -> None:
        self.path = path
        self.file = dict(file)
        self.env = dict(env)

    @property
    def plugins(self) -> str | None:
        """The plugins the environment or the file selects, as ``--plugins`` takes them."""
        if env_name("plugins") in self.env:
            return self.env[env_name("plugins")]
        return self._file_plugins()

    def _file_plugins(self) -> str | None:
        if "plugins" not in self.file:
            return None
        names = self.file["plugins"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise UsageError(
                f'{self.path}: plugins: expected an array of plugin names, like ["welcome", "logger"], '
                f"not {_toml_kind(names)}"
            )
        return ",".join(names)

    def values(self, parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, Any]]:
        """Every option the file or environment sets, by ``dest``: (action, value).

        :raises UsageError: an unknown key or a value the option does not accept.
        """
        options = settable_options(parser)
        found: dict[str, tuple[argparse.Action, Any]] = {}
        for key, raw in self.file.items():
            where = f"{self.path}: {key}"
            action = options.get(key)
            if action is None:
                if key in ("config", "print-config"):
                    raise UsageError(f"{self.path}: {key!r} can only be given on the command line")
                hint = _did_you_mean(key, list(options)) or (
                    " (the keys are the long options of 'chatcore serve --help' without '--', "
                    "a plugin's only when it is selected)"
                )
                raise UsageError(f"{self.path}: unknown key {key!r}{hint}")
            if key == "plugins":  # an array in the file, a comma-separated string for --plugins
                found[action.dest] = (action, self._file_plugins())
                continue
            found[action.dest] = (action, self._value(action, raw, where, _from_toml))
        by_variable = {env_name(key): action for key, action in options.items()}
        for variable, text in self.env.items():
            action = by_variable.get(variable)
            if action is None:
                # 0.9: CHATCORE_MAX_CLIENT and CHATCORE_PORTT, not CHATCORE_HOSTNAME.
                close = difflib.get_close_matches(variable, list(by_variable), n=1, cutoff=0.9)
                if close:
                    log.warning("ignoring %s: not an option (did you mean %s?)", variable, close[0])
                continue
            found[action.dest] = (action, self._value(action, text, f"environment variable {variable}", _from_env))
        return found

    def _value(
        self, action: argparse.Action, raw: Any, where: str, convert: Callable[[argparse.Action, Any], Any]
    ) -> Any:
        if not _is_supported(action):
            raise UsageError(f"{where}: this option can only be given on the command line")
        try:
            return convert(action, raw)
        except _BadValue as exc:
            raise UsageError(f"{where}: {exc}") from None

    def parse_args(self, parser: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace:
        """``parser.parse_args(args)``, starting from the file's and the environment's values.

        The command line replaces what they set, the environment what the
        file sets, and options none of them give keep their defaults.
        """
        start = argparse.Namespace()
        lists: dict[str, tuple[list[Any], Any]] = {}
        for dest, (action, value) in self.values(parser).items():
            action.required = False  # the file or environment gave it
            if _is_append(action):
                # append adds to what the namespace holds: start from an
                # empty marker list, and use the file's list only if the
                # command line did not add (and so copy) anything.
                marker: list[Any] = []
                lists[dest] = (marker, value)
                setattr(start, dest, marker)
            else:
                setattr(start, dest, value)
        options = parser.parse_args(args, namespace=start)
        for dest, (marker, value) in lists.items():
            if getattr(options, dest) is marker:
                setattr(options, dest, value)
        return options


def load(path: str | None, environ: Mapping[str, str] | None = None) -> Sources:
    """Read the configuration file and the ``CHATCORE_*`` variables.

    :param path: ``--config`` from the command line; if ``None``,
        ``CHATCORE_CONFIG`` names the file, and without it there is none.
    :param environ: the environment (default: ``os.environ``).
    :raises UsageError: the file is missing, unreadable or not valid TOML.
    """
    environ = os.environ if environ is None else environ
    env = {
        name: value for name, value in environ.items() if name.startswith(ENV_PREFIX) and name not in RESERVED_VARIABLES
    }
    if path is None:
        path = environ.get(CONFIG_VARIABLE) or None
    if path is None:
        return Sources(None, {}, env)
    try:
        with open(path, "rb") as stream:
            data: dict[str, Any] = tomllib.load(stream)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {_syntax_error(exc)}") from None
    return Sources(path, data, env)


def _syntax_error(exc: ValueError) -> str:
    """``line L, column C: invalid TOML: message`` from the parser's error."""
    # tomllib before 3.14 and older tomli only put the place in the message:
    # "Invalid value (at line 3, column 7)".
    message = str(exc)
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.S)
    if match:
        return f"line {match[2]}, column {match[3]}: invalid TOML: {match[1]}"
    return f"invalid TOML: {message}"  # "(at end of document)"


# ---------------------------------------------------------------------------
# --print-config
# ---------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # inf, -inf and 1e+20 are TOML too
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, os.PathLike):
        return _toml_string(str(os.fspath(value)))
    return _toml_string(str(value))


def _file_value(action: argparse.Action, value: Any) -> Any:
    """The value as the file writes it (the inverse of :func:`_from_toml`)."""
    if _is_flag(action) and not isinstance(action, argparse.BooleanOptionalAction):
        return value == action.const
    return value


def render(parser: argparse.ArgumentParser, options: argparse.Namespace, plugins: Sequence[str]) -> str:
    """The effective configuration as TOML that ``--config`` loads again.

    Every option that a file may set, grouped as in ``--help``; options
    without a value are comments, and so are secrets (:func:`secret`),
    whose values are never shown.
    """
    lines = [
        "# The effective configuration of chatcore serve (command line, environment, file, defaults).",
        "# Load it with: chatcore serve --config FILE",
        "",
        f"plugins = {_toml_value(list(plugins))}",
    ]
    for group in parser._action_groups:
        entries = []
        for action in group._group_actions:
            key = option_key(action)
            if key is None or key == "plugins":
                continue
            value = getattr(options, action.dest, None)
            if not _is_supported(action):
                entries.append(f"# {key}: only on the command line")
            elif is_secret(action):
                state = "not set" if value is None else "set"
                entries.append(f"# {key}: secret, {state}; not shown")
            elif value is None:
                entries.append(f"# {key}: not set")
            else:
                entries.append(f"{key} = {_toml_value(_file_value(action, value))}")
        if entries:
            # argparse's own group for ungrouped options has no useful title.
            title = group.title if group.title not in ("options", "optional arguments") else None
            lines.append("")
            if title:
                lines.append(f"# {title}")
            lines.extend(entries)
    return "\n".join(lines) + "\n"
