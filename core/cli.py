"""The ``chatcore`` command: ``serve``, ``client``, ``plugins``, ``hash-password`` and ``hash-token``."""

from __future__ import annotations

import argparse
import atexit
import datetime
import errno
import json
import logging
import logging.handlers
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

from chatcore.engine import affinity, allocator
from chatcore.errors import UsageError
from chatcore.hooks import PluginError
from chatcore.manager import PluginLoadError, describe_plugins
from chatcore.pidfile import PidFile, PidFileError
from chatcore.version import __version__

if TYPE_CHECKING:
    from chatcore.config import Config
    from chatcore.engine.server import ChatServer

log = logging.getLogger("chatcore")

# Each talking client has a reader thread; Python's default 8 MiB stack
# reservation is far more than a reader needs, and 10,000 of them would
# reserve 80 GiB of address space. The resident cost is what the thread touches either way.
THREAD_STACK_SIZE = 256 * 1024
# How long a thread may keep the GIL while others wait for it (CPython's
# default: 5 ms). Every waiting thread wakes once per interval to ask for
# it; with thousands of reader threads waiting (a server behind under many
# clients) those wake-ups outgrew what a CPU can schedule, every thread
# stayed runnable and the one holding the GIL got a sliver of the CPU: at
# 5,000 clients in rooms of 10, deliveries fell to a trickle and lines
# were lost (docs/performance.md, "The stall at thousands of clients").
# Ten times longer, ten times fewer wake-ups; threads that block on I/O
# (almost every one here) still hand the GIL over at once.
SWITCH_INTERVAL = 0.05
#: How often the main thread looks for a signal that another thread received.
SIGNAL_CHECK_INTERVAL = 0.1


def _error(message: str, status: int) -> int:
    print(f"chatcore: error: {message}", file=sys.stderr)
    return status


def _raise_open_file_limit(max_clients: int) -> None:
    """Raise the soft open-file limit to the hard limit; warn if still low."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, max_clients + 64)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised the open-file limit from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < max_clients + 64:
        log.warning(
            "open-file limit is %d, too low for --max-clients %d; raise it (ulimit -n) or lower --max-clients",
            soft,
            max_clients,
        )


#: What every log record has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JSONFormatter(logging.Formatter):
    """One JSON object a line, for log collectors (``--log-format json``):
    ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, and
    ``traceback`` when there is one; then the fields the call site gave
    with ``extra=`` (``event``, ``nick``, ``address`` ...: docs/operations.md
    lists them). A field never replaces one of the first five."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        entry: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES:
                entry.setdefault(key, value)
        # ensure_ascii (the default) keeps a line a line: no raw separators.
        # default=str: a field that is no JSON type (a path, an address
        # object) is written as its text rather than losing the line.
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _log_through_a_queue() -> logging.Handler:
    """Console logging whose formatting and writing happen on one thread.

    Every client thread logs its join and leave. Writing to stderr from
    thousands of threads makes them queue on the handler's lock deep inside
    the I/O stack, and a thread keeps every stack page it ever touched:
    about 2 KB more per idle client. A queue keeps the client side shallow.

    Returns the handler that writes, whose formatter ``--log-format`` sets.
    """
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(TEXT_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, stream)
    listener.start()
    atexit.register(listener.stop)
    # The listener's handler formats; the queue's side keeps the bare message.
    to_queue = logging.handlers.QueueHandler(records)
    to_queue.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(handlers=[to_queue], force=True)
    # What no format of the server's shows is not gathered for every record
    # (the logging HOWTO's "Optimization"): the calling frame's file, line
    # and function (a walk up the stack), the process and its name. A
    # connection logs two records; this is a quarter of each (21.5 -> 16.5
    # us). Only in the server's own process: a program that embeds
    # ChatServer, or a test, keeps its records' file and line.
    logging._srcfile = None
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return stream


def _announce(server: ChatServer, plugins: list[str], *, json_lines: bool) -> None:
    """Print the start-up line on standard output: what scripts (and
    :class:`chatcore.testing.ServerProcess`) wait for to learn the bound
    ports. With ``--log-format json`` it is a JSON object like every log
    line, with the listeners and plugins as fields."""
    text = f"chatcore {__version__} listening on {server.address_text} (plugins: {', '.join(plugins)})"
    if json_lines:
        fields = {
            "event": "server_started",
            "version": __version__,
            "listeners": [str(listener.url) for listener in server.listeners],
            "plugins": plugins,
            "pid": os.getpid(),
        }
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, (), None, extra=fields)
        text = JSONFormatter().format(record)
    print(text, flush=True)


def _set_process_title(server: ChatServer) -> None:
    """Show ``chatcore serve URL ...`` in ps and top instead of ``python``,
    if the optional setproctitle package is installed (no dependency of
    chatcore: the pid file is the dependable way to find the process)."""
    try:
        import setproctitle  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    setproctitle.setproctitle(f"chatcore serve {server.address_text}")


def serve(args: Sequence[str]) -> int:
    """``chatcore serve``: run the server until SIGINT or SIGTERM."""
    from chatcore.config import parse_config, unused_front_ends
    from chatcore.engine.server import ChatServer

    console = _log_through_a_queue()
    try:
        config = parse_config(args)
    except UsageError as exc:
        return _error(str(exc), 2)
    except (PluginLoadError, PluginError, pluggy.PluginValidationError) as exc:
        return _error(str(exc), 1)
    options = config.options
    if options.print_config:
        from chatcore.config import build_parser
        from chatcore.configfile import render

        print(render(build_parser(config.pluginmanager), options, config.plugins), end="")
        return 0
    logging.getLogger("chatcore").setLevel(options.log_level)
    if options.log_format == "json":
        console.setFormatter(JSONFormatter())
    for warning in unused_front_ends(config):
        log.warning(warning, extra={"event": "configuration_warning"})
    _raise_open_file_limit(options.max_clients)
    threading.stack_size(THREAD_STACK_SIZE)
    sys.setswitchinterval(SWITCH_INTERVAL)
    allocator.keep_freed_memory()
    try:  # before the server starts its threads: they inherit it
        cpus = affinity.apply(options.cpu_affinity)
    except affinity.AffinityError as exc:
        return _error(str(exc), 2)

    pid_file = PidFile(options.pid_file) if options.pid_file else None
    if pid_file is not None:
        try:  # before anything is bound: a second server must not take the ports
            pid_file.check()
        except PidFileError as exc:
            return _error(str(exc), 1)

    try:
        server = ChatServer(config)
    except PluginError as exc:  # a plugin's backplane that failed, or is not one
        return _error(str(exc), 1)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another server is running there? pick another --port or --listen port, or 0 for a free one)"
        where = getattr(exc, "filename", None) or ", ".join(str(url) for url in config.listen)
        return _error(f"cannot listen on {where}: {exc.strerror or exc}{hint}", 1)

    # Signals only set flags; the main thread acts on them below, outside
    # the signal handler.
    wake = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        wake.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_signal)
    try:
        server.start()
    except (PluginError, UsageError) as exc:
        server.hooks.server_stop(server)  # plugins that did start may need flushing
        server.server_close()
        return _error(str(exc), 2 if isinstance(exc, UsageError) else 1)
    if pid_file is not None:
        try:
            pid_file.write()
        except PidFileError as exc:
            server.stop(timeout=0.5)
            return _error(str(exc), 1)
        if pid_file.stale is not None:
            log.info(
                "replaced the stale pid file %s (%s)",
                pid_file.path,
                pid_file.stale,
                extra={"event": "pid_file_replaced", "path": str(pid_file.path), "why": pid_file.stale},
            )
    try:
        return _serve_until_signalled(server, config, wake, received, cpus)
    finally:
        if pid_file is not None:
            pid_file.remove()


def _serve_until_signalled(
    server: ChatServer, config: Config, wake: threading.Event, received: list[int], cpus: frozenset[int] | None
) -> int:
    """Announce the server, reload on SIGHUP, stop it on SIGINT or SIGTERM;
    the exit status."""
    from chatcore.reload import reload_configuration

    names = [name for name, _ in config.pluginmanager.list_name_plugin()]
    _announce(server, names, json_lines=config.options.log_format == "json")
    _set_process_title(server)
    if cpus is not None:
        log.info(affinity.describe(cpus), extra={"event": "cpu_affinity", "cpus": sorted(cpus)})
    while True:
        # With a timeout: the kernel may deliver a signal to any thread, and
        # then only sets Python's flag; a main thread blocked in an untimed
        # wait never wakes to run the handler (SIGHUP was lost about one time
        # in ten). A timed wait returns, and the handler runs.
        while not wake.wait(SIGNAL_CHECK_INTERVAL):
            pass
        wake.clear()
        signums, received[:] = received[:], []
        if any(signum != getattr(signal, "SIGHUP", None) for signum in signums):
            name = signal.Signals(signums[-1]).name
            log.info("received %s, shutting down", name, extra={"event": "shutting_down", "signal": name})
            break
        log.info("received SIGHUP, reloading", extra={"event": "reloading", "signal": "SIGHUP"})
        reload_configuration(server)
    # A second Ctrl-C while shutting down interrupts at once.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.stop()
    except KeyboardInterrupt:
        print("chatcore: interrupted while shutting down", file=sys.stderr)
        return 130
    log.info("server stopped", extra={"event": "server_stopped"})
    return 0


def plugins(args: Sequence[str]) -> int:
    """``chatcore plugins``: list the installed plugins."""
    parser = argparse.ArgumentParser(
        prog="chatcore plugins",
        description="List the installed chatcore plugins: name, version, description and the hooks each implements.",
    )
    parser.parse_args(args)
    for info in describe_plugins():
        tag = " (built in, always on)" if info.builtin else ""
        if info.error:
            print(f"{info.name} {info.version}{tag}: failed to load: {info.error}")
            continue
        print(f"{info.name} {info.version}{tag}: {info.description}")
        print(f"    hooks: {', '.join(info.hooks) or 'none'}")
    return 0


def client(args: Sequence[str]) -> int:
    """``chatcore client``: the interactive terminal client."""
    from chatcore.client.terminal import main as client_main

    return client_main(args)


def hash_password(args: Sequence[str]) -> int:
    """``chatcore hash-password``: read a password, print its scrypt hash."""
    import getpass

    from chatcore.engine.auth import hash_password as make_hash

    parser = argparse.ArgumentParser(
        prog="chatcore hash-password",
        description=(
            "Read a password from the terminal (not echoed, asked twice) or from the first line of stdin, "
            "and print its scrypt hash, for --password-file, CHATCORE_PASSWORD or an --opers-file line."
        ),
        epilog="Example: chatcore hash-password > pw.txt, then chatcore serve --password-file pw.txt",
    )
    parser.parse_args(args)
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                return _error("the two passwords differ; nothing printed", 1)
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return _error("no password read; nothing printed", 1)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        return _error("the password is empty; nothing printed", 1)
    print(make_hash(password))
    return 0


def hash_token(args: Sequence[str]) -> int:
    """``chatcore hash-token``: make an API token, or read one, and print its hash."""
    from chatcore.plugins.api import hash_token as make_hash
    from chatcore.plugins.api import new_token

    parser = argparse.ArgumentParser(
        prog="chatcore hash-token",
        description=(
            "Make a new random token for the api plugin and print it and its hash; with --stdin, read a "
            "token from the first line of stdin and print only its hash. The hash goes in --api-token "
            "NAME:SCOPES:HASH (configuration file or CHATCORE_API_TOKEN); the token goes to the program "
            "that uses the API, and is stored nowhere. An incoming webhook's secret is made the same way: "
            "its hash goes in --webhook-in hash=..., and the token ends its URL, /hooks/TOKEN (docs/webhooks.md)."
        ),
        epilog="Example: chatcore hash-token, then api-token = ['mybot:read+post:sha256$...'] in chatcore.toml",
    )
    parser.add_argument("--stdin", action="store_true", help="hash the token on stdin's first line instead")
    options = parser.parse_args(args)
    if options.stdin:
        token = sys.stdin.readline().rstrip("\r\n")
        if len(token) < 20:
            return _error("the token must be at least 20 characters (a random one: chatcore hash-token)", 1)
        print(make_hash(token))
        return 0
    token = new_token()
    print(f"token: {token}")
    print(f"hash:  {make_hash(token)}")
    return 0


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "serve": (serve, "run a chat server"),
    "client": (client, "chat from this terminal"),
    "plugins": (plugins, "list the installed plugins and the hooks they implement"),
    "hash-password": (hash_password, "read a password and print its hash for the password and operator files"),
    "hash-token": (hash_token, "make a token for the api plugin or a webhook's secret, and print it and its hash"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        command, _ = COMMANDS[args[0]]
        return command(args[1:])
    parser = argparse.ArgumentParser(
        prog="chatcore",
        description="A plugin-extensible, multithreaded chat server.",
        epilog="Run 'chatcore COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"chatcore {__version__} (pluggy {pluggy.__version__})")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    parser.parse_args(args)
    parser.print_help(sys.stderr)
    return 2
