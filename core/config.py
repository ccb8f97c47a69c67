"""Configuration of ``chatcore serve``, parsed in two phases.

As pytest does with ``-p``: ``--plugins`` is read first, those plugins are
registered, each adds its own options (``chatcore_addoption``), and only then
is the whole command line parsed, so ``--help`` and error messages know every
option of the selected plugins.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

import pluggy

from chatcore import configfile

# Re-exported (the "as" form, for mypy) so plugins write: from chatcore.config import secret
from chatcore.configfile import restart_only as restart_only  # noqa: PLC0414
from chatcore.configfile import secret as secret  # noqa: PLC0414
from chatcore.engine import affinity
from chatcore.engine.connection import DEFAULT_MAX_QUEUE, DEFAULT_MAX_SENDQ
from chatcore.engine.limits import (
    DEFAULT_EXEMPT,
    DEFAULT_LINE_BURST,
    DEFAULT_LINE_RATE,
    DEFAULT_LOGIN_TIMEOUT,
    DEFAULT_MAX_NEW_PER_ADDRESS,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_NEW_WINDOW,
    parse_networks,
)
from chatcore.engine.registry import DEFAULT_MAX_ROOMS_PER_CLIENT, MAX_ROOMS_PER_CLIENT
from chatcore.engine.store import DEFAULT_PATH as DEFAULT_STATE_DB
from chatcore.errors import UsageError
from chatcore.manager import (
    BUILTIN_PLUGINS,
    DEFAULT_PLUGINS,
    PluginLoadError,
    PluginManager,
    entry_points,
    load_plugins,
    parse_plugin_list,
)
from chatcore.transports.listener import ListenURL, format_address, parse_listen_url
from chatcore.version import __version__
from chatcore.wire.native import DEFAULT_MAX_LINE

if TYPE_CHECKING:
    from chatcore.transports import Scheme
    from chatcore.transports.tls import Certificates

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12000
# The original chatroom's listen(10) refused 239 of 500 simultaneous
# connects; 1024 dropped 600 of a storm of 2,000, each retried by its client
# a second later. The kernel caps this at net.core.somaxconn (4096 on Linux
# >= 5.4), and Go's listeners ask for that much too.
DEFAULT_BACKLOG = 4096
DEFAULT_MAX_CLIENTS = 1000
#: The environment variable with the server password (or its hash).
PASSWORD_VARIABLE = "CHATCORE_PASSWORD"


class Config:
    """The parsed configuration a server runs with.

    :ivar options: every option as an :class:`argparse.Namespace`, including
        the ones plugins added (``config.options.welcome_text``).
    :ivar pluginmanager: the plugin manager, with the selected plugins.
    :ivar plugins: the plugin names selected with ``--plugins``.
    :ivar data: plugins' per-server state, keyed by plugin name. Plugin
        modules are shared by every server in a process, so state belongs
        here, not in module globals.
    :ivar schemes: every listener scheme the plugins registered, by name.
    :ivar listen: the listener URLs (``--listen``, or ``--host``/``--port``).
    :ivar certificates: the TLS certificate and key, if a listener needs them.
    :ivar args: the command line it was parsed from, and
    :ivar environ: the environment (``None``: ``os.environ``): what a
        reload parses again, with the file read anew.
    """

    def __init__(self, options: argparse.Namespace, pluginmanager: PluginManager, plugins: Sequence[str]) -> None:
        self.options = options
        self.pluginmanager = pluginmanager
        self.plugins = list(plugins)
        self.data: dict[str, Any] = {}
        self.schemes: dict[str, Scheme] = {}
        self.listen: list[ListenURL] = []
        self.certificates: Certificates | None = None
        self.args: list[str] = []
        self.environ: Mapping[str, str] | None = None
        #: The server password or its hash (``--password-file`` or
        #: ``CHATCORE_PASSWORD``), or None for an open server.
        self.password: str | None = None
        #: Whether the last load of the configuration was applied: the one
        #: at the start, then each reload (SIGHUP; a reload that failed keeps
        #: the running configuration and sets this False until one succeeds).
        self.last_reload_successful = True
        #: When the configuration was last loaded and applied
        #: (``time.time()``): the start, then each successful reload.
        self.last_reload_success_time = time.time()

    def getoption(self, name: str, default: Any = None) -> Any:
        """An option's value by its ``dest`` name, or ``default``."""
        return getattr(self.options, name, default)


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number from ``low`` to ``high``.

    For plugins' options too: ``type=whole_number(1)``. A bad value gets
    argparse's usage error, which says what was wrong and what is allowed.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {bounds})")
        return value

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds above 0")
    return value


def _networks(text: str) -> str:
    try:
        parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (expected CIDR[,CIDR...], e.g. 127.0.0.0/8,::1/128)") from None
    return text


def _seconds_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _positive_seconds(text)


def _positive_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be 0 (off) or a number above 0")
    return value


def _add_address_limits(limits: argparse._ArgumentGroup) -> None:
    limits.add_argument(
        "--max-per-address",
        type=whole_number(0),
        default=DEFAULT_MAX_PER_ADDRESS,
        metavar="N",
        help=(
            "connections one address (IPv6: one /64) may hold at once; more are refused; "
            "0 for no limit (default: %(default)s, as Ergo)"
        ),
    )
    limits.add_argument(
        "--max-new-per-address",
        type=whole_number(0),
        default=DEFAULT_MAX_NEW_PER_ADDRESS,
        metavar="N",
        help=(
            "new connections one address may open within --new-window; more are refused; "
            "0 for no limit (default: %(default)s, as Ergo)"
        ),
    )
    limits.add_argument(
        "--new-window",
        type=_positive_seconds,
        default=DEFAULT_NEW_WINDOW,
        metavar="SECONDS",
        help="the window of --max-new-per-address (default: %(default)g, ten minutes, as Ergo)",
    )
    # Restart only: a connection counted under one exemption must be released
    # under the same one, or an address would stay counted for ever.
    restart_only(
        limits.add_argument(
            "--limit-exempt",
            type=_networks,
            default=DEFAULT_EXEMPT,
            metavar="CIDR[,CIDR...]",
            help=(
                "networks the per-address limits do not apply to; '' exempts nobody "
                "(default: %(default)s, loopback, so local load tests work); they are not paced by --line-rate either"
            ),
        )
    )
    limits.add_argument(
        "--line-rate",
        type=_positive_rate,
        default=DEFAULT_LINE_RATE,
        metavar="PER_SECOND",
        help=(
            "flood control for everyone: past --line-burst, each client's lines are delayed to this many "
            "a second (nothing is dropped); 0 turns it off (default: %(default)g, Ergo's fakelag)"
        ),
    )
    limits.add_argument(
        "--line-burst",
        type=whole_number(1),
        default=DEFAULT_LINE_BURST,
        metavar="N",
        help="lines a client may send at once before --line-rate applies (default: %(default)s, as Ergo)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=_seconds_or_zero,
        default=0.0,
        metavar="SECONDS",
        help=(
            "disconnect a connection that sends nothing for this long; 0 never does (default: 0: people who "
            "only read are welcome, and TCP keepalive finds dead peers)"
        ),
    )
    limits.add_argument(
        "--login-timeout",
        type=_seconds_or_zero,
        default=DEFAULT_LOGIN_TIMEOUT,
        metavar="SECONDS",
        help=(
            "disconnect a connection not let into the chat within this long (a --password-file password "
            "not given); 0 for no limit (default: %(default)g)"
        ),
    )


def build_parser(pm: PluginManager | None = None) -> argparse.ArgumentParser:
    """The ``chatcore serve`` parser, with the options of ``pm``'s plugins."""
    parser = argparse.ArgumentParser(
        prog="chatcore serve",
        description=(
            "Run a chat server. Connect with 'chatcore client' or 'nc HOST PORT'. SIGINT and SIGTERM "
            "stop it gracefully; SIGHUP reloads the configuration file and reopens the logs "
            "(docs/operations.md says what a reload can change)."
        ),
        epilog=(
            "Plugins add their own options; they are listed above for the plugins "
            "selected with --plugins (try: chatcore serve --plugins welcome,logger --help). "
            "'chatcore plugins' lists the installed plugins. An option of a plugin not selected "
            "is an error (exit status 2) that names the plugin to add; a plugin that serves a "
            "listener scheme (web, irc) with no --listen of that scheme is a warning at start."
        ),
    )
    parser.add_argument("--version", action="version", version=f"chatcore {__version__}")
    restart_only(
        parser.add_argument(
            "--plugins",
            metavar="NAMES",
            help=(
                "comma-separated plugins to load, by entry-point name or dotted module "
                f"name (default: {','.join(DEFAULT_PLUGINS)}; '' for none); a reload loads and unloads "
                "welcome, filters, logger and history, and the others need a restart"
            ),
        )
    )
    net = parser.add_argument_group("network")
    schemes = ", ".join(f"{s.name}:// ({s.description})" for s in _schemes(pm).values()) if pm else "tcp://, tls://"
    restart_only(
        net.add_argument(
            "--listen",
            action="append",
            metavar="URL",
            help=(
                "listen on SCHEME://HOST:PORT; repeat for several, e.g. --listen tcp://127.0.0.1:12000 "
                "--listen tls://[::1]:12001; port 0 picks a free port. Schemes of the selected plugins: "
                f"{schemes}. Default: one tcp:// listener on --host and --port"
            ),
        )
    )
    restart_only(
        net.add_argument(
            "--host",
            help=f"address of the default tcp:// listener, without --listen (default: {DEFAULT_HOST}; :: for IPv6)",
        )
    )
    restart_only(
        net.add_argument(
            "--port",
            type=whole_number(0, 65535),
            help=(
                f"port of the default tcp:// listener (default: {DEFAULT_PORT}; 0 picks a free port, "
                "and the bound address is printed)"
            ),
        )
    )
    restart_only(
        net.add_argument(
            "--backlog",
            type=whole_number(1),
            default=DEFAULT_BACKLOG,
            help="listen backlog: connections the kernel holds until accepted (default: %(default)s)",
        )
    )
    tls = parser.add_argument_group("TLS", "For tls:// and the other TLS listeners. SIGHUP re-reads both files.")
    tls.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain, the server's certificate first")
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of that certificate")
    restart_only(
        tls.add_argument(
            "--tls-client-ca",
            metavar="FILE",
            help=(
                "ask TLS clients for a certificate signed by this CA (PEM); an account that registered "
                "its fingerprint logs in with it (IRC's SASL EXTERNAL); default: no client certificates"
            ),
        )
    )
    access = parser.add_argument_group("access")
    access.add_argument(
        "--password-file",
        metavar="FILE",
        help=(
            "require a server password: the first line of FILE, plain or a 'chatcore hash-password' hash; "
            "clients send /pass PASSWORD first. Or set CHATCORE_PASSWORD (never a bare option: it would show in ps)"
        ),
    )
    restart_only(
        parser.add_argument(
            "--state-db",
            default=DEFAULT_STATE_DB,
            metavar="FILE",
            help=(
                "the SQLite database of bans, mutes, accounts, registered rooms and whatever plugins keep "
                "for good; made on first start (the redis plugin shares the cluster's instead) "
                "(default: %(default)s)"
            ),
        )
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-line",
        type=whole_number(16),
        default=DEFAULT_MAX_LINE,
        metavar="BYTES",
        help="longest line a client may send, in bytes (default: %(default)s)",
    )
    limits.add_argument(
        "--max-queue",
        type=whole_number(1),
        default=DEFAULT_MAX_QUEUE,
        metavar="LINES",
        help=(
            "lines queued for a client that is not reading before it is "
            "disconnected as a slow consumer (default: %(default)s)"
        ),
    )
    limits.add_argument(
        "--max-sendq",
        type=whole_number(4096),
        default=DEFAULT_MAX_SENDQ,
        metavar="BYTES",
        help=(
            "bytes queued for one client alone (replies, private messages, history) that is not reading "
            "before it is disconnected as a slow consumer (default: %(default)s)"
        ),
    )
    limits.add_argument(
        "--max-rooms-per-client",
        type=whole_number(1, MAX_ROOMS_PER_CLIENT),
        default=DEFAULT_MAX_ROOMS_PER_CLIENT,
        metavar="N",
        help="rooms one connection may be in at once (default: %(default)s, as Ergo's max-channels-per-client)",
    )
    limits.add_argument(
        "--max-clients",
        type=whole_number(1),
        default=DEFAULT_MAX_CLIENTS,
        metavar="N",
        help="clients connected at once; more are refused (default: %(default)s)",
    )
    _add_address_limits(limits)
    restart_only(
        parser.add_argument(
            "--cpu-affinity",
            type=affinity.cpu_choice,
            default=affinity.AUTO,
            metavar="CPUS",
            help=(
                "CPUs the server runs on: auto, one of those it may use (its threads hand the GIL to "
                "each other, which is faster on one CPU; docs/performance.md); all, wherever the OS "
                "puts them; or CPU numbers such as 2 or 0,2 or 0-3 (default: %(default)s)"
            ),
        )
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="console log level (default: %(default)s)",
    )
    restart_only(
        parser.add_argument(
            "--log-format",
            default="text",
            choices=["text", "json"],
            help=(
                "console log format: text, or json for log collectors: every line one object, the start-up "
                "line on standard output too, with time, level, logger, message and the event's fields "
                "(event, nick, address, room, listener ...) (default: %(default)s)"
            ),
        )
    )
    restart_only(
        parser.add_argument(
            "--pid-file",
            metavar="PATH",
            help=(
                "write the server's process id to PATH once it listens, and remove it at a clean stop, "
                'for kill -HUP "$(cat PATH)"; a PATH naming a chatcore that is still running stops the '
                "start (exit status 1), one left by a server that was killed is replaced (default: none)"
            ),
        )
    )
    configfile.add_arguments(parser)
    if pm is not None:
        pm.hooks.addoption(parser)
    return parser


def parse_config(
    args: Sequence[str], extra_plugins: Sequence[object] = (), environ: Mapping[str, str] | None = None
) -> Config:
    """Parse a ``chatcore serve`` command line into a :class:`Config`.

    Options may also come from ``--config FILE`` and ``CHATCORE_*``
    variables (:mod:`chatcore.configfile`); the command line wins.

    :param args: the arguments after ``serve``.
    :param extra_plugins: plugin objects to register before those named by
        ``--plugins`` (used by tests and by programs embedding chatcore).
    :param environ: the environment to read ``CHATCORE_*`` from (default:
        ``os.environ``).
    :raises UsageError: an unknown plugin, a plugin rejected an option, or a
        mistake in the configuration file or environment.
    :raises SystemExit: argparse's usage error (status 2) or ``--help``.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(args)
    sources = configfile.load(known.config, environ)
    selected = known.plugins if known.plugins is not None else sources.plugins
    names = list(DEFAULT_PLUGINS) if selected is None else parse_plugin_list(selected)

    pm = PluginManager()
    for plugin in extra_plugins:
        # Name object plugins after their class, so log lines can say who failed.
        name = type(plugin).__name__ if not isinstance(plugin, type(argparse)) else plugin.__name__
        pm.register(plugin, name=name if not pm.has_plugin(name) else f"{name}-{id(plugin)}")
    load_plugins(pm, names)
    parser = build_parser(pm)
    usage_error = parser.error

    def error(message: str) -> NoReturn:
        usage_error(message + _plugin_hints(message, names))

    parser.error = error  # type: ignore[method-assign]
    try:
        options = sources.parse_args(parser, args)
    except UsageError as exc:  # the file's unknown key may be a plugin's option too
        key = re.search(r": unknown key '([a-z0-9-]+)'", str(exc))
        hint = _plugin_hints(f"unrecognized arguments: --{key[1]}", names) if key else ""
        if not hint:
            raise
        raise UsageError(f"{exc}{hint}") from None
    config = Config(options, pm, names)
    config.args = list(args)
    config.environ = environ
    if not options.print_config:  # it prints the options and starts nothing: plugins open files here
        _configure_listeners(config)
        _configure_password(config, os.environ if environ is None else environ)
        pm.hooks.configure(config)
    return config


def _plugin_hints(message: str, selected: Sequence[str]) -> str:
    """For argparse's "unrecognized arguments" error: which installed
    plugin, not selected, offers each unknown option (``--log-file`` is the
    logger's), so the fix is one ``--plugins`` away. Empty if none does."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return ""
    unknown = [word.split("=", 1)[0] for word in message[len(prefix) :].split() if word.startswith("--")]
    if not unknown:
        return ""
    offered: dict[str, str] = {}
    for name in sorted(entry_points()):
        if name in selected or name in BUILTIN_PLUGINS:
            continue
        scratch = PluginManager()
        try:
            load_plugins(scratch, [name])
            options = build_parser(scratch)._option_string_actions
        except Exception:  # a broken plugin must not hide the usage error
            continue
        for option in unknown:
            if option in options:
                offered.setdefault(option, name)
    plugins = ",".join(dict.fromkeys([*selected, *offered.values()]))
    return "".join(
        f"\n{option} is an option of the {name} plugin: add it with --plugins {plugins}"
        for option, name in offered.items()
    )


def unused_front_ends(config: Config) -> list[str]:
    """Warnings for plugins that serve listener schemes none of
    ``--listen`` uses (``--plugins web`` without a ``ws://`` listener): the
    plugin is loaded but nobody can reach it."""
    used = {url.scheme for url in config.listen}
    warnings = []
    for impl in config.pluginmanager.hook.chatcore_schemes.get_hookimpls():
        offered = cast("list[Scheme] | None", impl.function())
        schemes = offered or []
        if not schemes or used & {scheme.name for scheme in schemes}:
            continue
        first = schemes[0]
        names = " or ".join(f"{scheme.name}://" for scheme in schemes)
        warnings.append(
            f"the {impl.plugin_name} plugin is loaded but no listener uses its schemes ({names}): "
            f"add --listen {first.name}://127.0.0.1:{first.default_port}"
            + ("" if config.options.listen else " (and --listen tcp://127.0.0.1:12000 to keep the native one)")
        )
    return warnings


def reread_options(config: Config) -> tuple[argparse.Namespace, argparse.ArgumentParser, list[str]]:
    """Parse ``config``'s command line again, with the configuration file as
    it is now: what a reload (SIGHUP) applies.

    :return: the new options, the parser that made them (whose actions say
        which options are :func:`restart_only`), and the plugins the new
        configuration selects. If those differ from the running ones, the
        options are those of the new selection (checked with a scratch
        plugin manager); the running plugins are not changed.
    :raises UsageError: the file is unreadable or not valid TOML, a key is
        unknown or a value bad, or a newly selected plugin does not exist.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(config.args)
    sources = configfile.load(known.config, config.environ)
    selected = known.plugins if known.plugins is not None else sources.plugins
    names = list(DEFAULT_PLUGINS) if selected is None else parse_plugin_list(selected)
    pm = config.pluginmanager
    if names != config.plugins:
        pm = PluginManager()
        try:
            load_plugins(pm, names)
        except (PluginLoadError, pluggy.PluginValidationError) as exc:
            raise UsageError(str(exc)) from None
    parser = build_parser(pm)

    def error(message: str) -> NoReturn:
        # The command line was valid at start; this is for the file's sake.
        raise UsageError(message)

    parser.error = error  # type: ignore[method-assign]
    return sources.parse_args(parser, config.args), parser, names


def _configure_password(config: Config, environ: Mapping[str, str]) -> None:
    config.password = read_password(config.options, environ)


def read_password(options: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """The server password (or its hash) from ``--password-file`` or
    ``CHATCORE_PASSWORD``, or None for an open server; at start and on reload.

    :raises UsageError: both given, an unreadable or empty file, a broken hash.
    """
    from chatcore.engine import auth

    environ = os.environ if environ is None else environ
    path = options.password_file
    from_env = environ.get(PASSWORD_VARIABLE)
    if path and from_env is not None:
        raise UsageError(f"give the server password with --password-file or {PASSWORD_VARIABLE}, not both")
    if path:
        return auth.read_password_file(path)
    if from_env is not None:
        if not from_env:
            raise UsageError(f"{PASSWORD_VARIABLE} is set but empty; unset it for a server without a password")
        return auth.checked(from_env, PASSWORD_VARIABLE)
    return None


def _schemes(pm: PluginManager) -> dict[str, Scheme]:
    schemes: dict[str, Scheme] = {}
    for scheme in pm.hooks.schemes():
        if scheme.name in schemes:
            raise UsageError(f"two plugins register the listener scheme {scheme.name}://; load only one of them")
        schemes[scheme.name] = scheme
    return schemes


def _configure_listeners(config: Config) -> None:
    """Resolve ``--listen`` (or ``--host``/``--port``) and the TLS files.

    :raises UsageError: a bad or unknown URL, ``--listen`` mixed with
        ``--host``/``--port``, a TLS listener without a certificate, or a
        certificate that cannot be loaded.
    """
    options = config.options
    config.schemes = schemes = _schemes(config.pluginmanager)
    if options.listen:
        if options.host is not None or options.port is not None:
            raise UsageError("--listen replaces --host and --port: give the address in the URL instead")
        config.listen = [parse_listen_url(text, schemes) for text in options.listen]
    else:
        host = DEFAULT_HOST if options.host is None else options.host
        port = DEFAULT_PORT if options.port is None else options.port
        config.listen = [parse_listen_url(f"tcp://{format_address(host, port)}", schemes)]
    needs_tls = sorted({str(url) for url in config.listen if schemes[url.scheme].tls})
    if not needs_tls:
        return
    if not options.tls_cert or not options.tls_key:
        raise UsageError(f"{needs_tls[0]} needs a certificate and its key: give --tls-cert FILE and --tls-key FILE")
    from chatcore.transports.tls import Certificates

    try:
        config.certificates = Certificates(options.tls_cert, options.tls_key, options.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        client_ca = options.tls_client_ca
        raise UsageError(
            f"--tls-cert {options.tls_cert} / --tls-key {options.tls_key}: cannot load them "
            f"({getattr(exc, 'strerror', None) or exc}); they must be PEM files of a certificate and its key"
            + (f", and --tls-client-ca {client_ca} a PEM file of CA certificates" if client_ca else "")
        ) from None
