"""The terminal client: ``chatcore client``.

Design
------
One asyncio event loop on the main thread owns the connection. Three things
feed it, each independent of the others:

- a **server reader** task reads the socket and prints each line it gets;
- an **input source** yields the lines to send:

  - interactive (stdin and stdout are terminals): prompt_toolkit's
    ``prompt_async()``, with line editing and history. Everything printed
    while the prompt is up goes through ``patch_stdout()``, which draws it
    above the prompt and redraws the half-typed line below it;
  - otherwise: a daemon thread that reads stdin with ``os.read()`` and hands
    each line to the loop with ``call_soon_threadsafe()``. Blocking reads in
    a thread work on every platform for terminals, pipes and files alike,
    where ``select()`` on stdin does not work on Windows;

- Ctrl-C outside the prompt (a signal) sets a "leave" event.

The prompt shows the current room. :class:`Rooms` follows it from the
server's notices to the user alone (``* you are now in dev``, ``* you left
dev; you now talk in lobby``, the answer to a ``/rooms`` sent on
connecting), so it never disagrees with the server; the room keys (Ctrl-N,
Ctrl-P, Alt-1..9) send ``/join ROOM``, which only switches to a joined room.

The main coroutine waits for whichever comes first: a line to send, the end
of input, a request to leave, or the server closing the connection.

Right after connecting the client sends ``/pass PASSWORD`` (with
``--password-file`` or ``CHATCORE_PASSWORD``), ``/login ACCOUNT PASSWORD`` (with
``--account``; the password from a file, the environment or a prompt, never
the command line), ``/nick NAME`` (with ``--nick``) and ``/ping``. The first
line names the client, so that the room never sees a guest name: with a
server password, ``/nick`` goes before ``/pass`` and the server lets the
client in under it once the password is right (``/login`` follows);
without one, the server lets a client in under the name of its first line,
``/nick NAME`` or, when the nick is the account's (``--account`` alone),
``/login ACCOUNT PASSWORD`` once the login succeeds (TerminalClient._opening_lines). The server
answers a client's lines in order, so everything before the ``* pong`` is
the welcome or the answer to ``/pass``, ``/login`` and ``/nick``; input
waits until then, and that ``* pong`` is not shown. A server with a password
says ``! password required`` on connecting, before it reads ``/pass``: that
greeting is not shown when a password was sent.

**Honest echo.** After every line it sends (but ``/quit``) the client sends
``/ping`` too (:class:`_Sent`). An error (``! ...``) before that ``* pong``
is the server's answer to the line: the line was refused, and is not shown
as ``<You> text``; the ``<You>`` line is shown only when the pong comes
without one. In scripts the client waits for each pong before it sends the
next line, and the first refusal (of the password, ``--nick``, a line or a
command) ends the run with one error message on stderr and status 1; the
server's ``!`` lines go into that message rather than into the transcript.

Leaving (Ctrl-D, Ctrl-C, end of piped input, ``/quit``) always sends
``/quit``, then reads until the server closes the connection (at most
:data:`LEAVE_TIMEOUT` seconds) before closing the socket. Nothing unread is
left in the socket, so the close is a normal one, never a reset, and the
others see ``* NICK left``.

When the server closes the connection without having been asked to, the
client says the connection was lost (with the server's last error, if it
sent one) and exits with status 1.

The colours come from :func:`classify`, a pure function from a server line
to its :class:`Kind`, and :func:`render`. They are used only when stdout is a
terminal and ``NO_COLOR`` is unset or empty.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import enum
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import FrameType
from typing import Any, TextIO, TypeAlias

from chatcore.wire.native import ERROR, NOTICE, PASSWORD_REQUIRED, WRONG_PASSWORD, sanitize

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12000
DEFAULT_TLS_PORT = 12001
#: How long to wait for the server to close the connection after ``/quit``.
LEAVE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0
#: How long input waits for the server's welcome (the answer to a /ping).
WELCOME_TIMEOUT = 5.0
PROMPT = "> "
RECV_SIZE = 65536

PROG = "chatcore client"
#: The time a line was said, before it, after ``/timestamps on`` (UTC).
_STAMP = re.compile(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\] ")


def split_stamp(line: str) -> tuple[float | None, str]:
    """``(when, rest)`` of a line the server timestamped (``[2026-12-06T23:59:01Z]
    <bob> hi``: seconds since 1970), or ``(None, line)`` for one without."""
    match = _STAMP.match(line)
    if match is None:
        return None, line
    try:
        when = float(calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:  # a date that does not exist: shown as it came
        return None, line
    return when, line[match.end() :]


# What signal.signal() returns: the previous handler.
_SignalHandler: TypeAlias = "Callable[[int, FrameType | None], Any] | int | signal.Handlers | None"


class Kind(enum.Enum):
    """What a line on screen is, for its colour."""

    CHAT = "chat"
    OWN = "own"  # the user's own message, shown as <You> text
    ACTION = "action"
    NOTICE = "notice"
    ERROR = "error"
    PRIVATE = "private"  # *alice* text, to us
    PRIVATE_SENT = "private_sent"  # -> *bob* text, our own private message
    HISTORY = "history"  # # <alice> hi, replayed when joining
    OTHER = "other"


# Looser than the server's rules for nicknames, so that names relayed from
# elsewhere by a plugin are recognised too.
_NAME = r"[^\s<>*]{1,64}"
_CHAT = re.compile(rf"<{_NAME}> ")
_ROOM = r"[A-Za-z0-9_-]{1,32}"
#: A room line of a client in several rooms: ``[dev] <alice> hi``.
_LABEL = re.compile(rf"\[(?P<room>{_ROOM})\] ")
_PRIVATE = re.compile(rf"\*{_NAME}\* ")
_PRIVATE_SENT = re.compile(rf"-> \*{_NAME}\* ")
# "* NICK TEXT" is an action, unless it is one of the server's own notices
# about a person; the protocol writes both with "* " in front.
_ACTION = re.compile(rf"\* (?P<nick>{_NAME}) (?P<text>.+)")
_PERSON_NOTICE = re.compile(
    r"joined|left|left \(.*\)|is now known as \S+"
    # A room's notices about its operators' acts (docs/protocol.md, "Notices").
    r"|set the topic: .*|cleared the topic|set mode .*|was kicked out by .*|invites you to \S+: /join \S+"
)
#: Reserved nicknames that begin the server's notices ("* you are now ...").
_NOTICE_SUBJECTS = frozenset({"you", "server"})


def classify(line: str) -> Kind:
    """The kind of a line from the server (see docs/protocol.md).

    Actions and notices both start with ``* ``: a line is an action when it
    reads ``* NICK TEXT`` and is not one of the notices about a person
    (joined, left, renamed, a room operator's act) or about the user
    (``* you ...``). A room line's ``[room] `` label does not count.
    """
    if label := _LABEL.match(line):
        line = line[label.end() :]
    if line.startswith("# "):
        return Kind.HISTORY
    if line.startswith(ERROR):
        return Kind.ERROR
    if _CHAT.match(line):
        return Kind.CHAT
    if _PRIVATE.match(line):
        return Kind.PRIVATE
    if _PRIVATE_SENT.match(line):
        return Kind.PRIVATE_SENT
    if line.startswith(NOTICE):
        action = _ACTION.fullmatch(line)
        if (
            action
            and action["nick"].casefold() not in _NOTICE_SUBJECTS
            and not _PERSON_NOTICE.fullmatch(action["text"])
        ):
            return Kind.ACTION
        return Kind.NOTICE
    return Kind.OTHER


_RESET = "\x1b[0m"
#: ANSI SGR codes per kind; chat and own lines colour only the nickname.
STYLES: dict[Kind, str] = {
    Kind.CHAT: "1;36",  # bold cyan nick
    Kind.OWN: "1;32",  # bold green nick
    Kind.ACTION: "35",  # magenta
    Kind.NOTICE: "2",  # dim
    Kind.ERROR: "1;31",  # bold red
    Kind.PRIVATE: "1;33",  # bold yellow
    Kind.PRIVATE_SENT: "33",  # yellow
    Kind.HISTORY: "2;3",  # dim italic
}


def render(line: str, kind: Kind, colour: bool) -> str:
    """The text to print for ``line``: with ANSI colours if ``colour``."""
    style = STYLES.get(kind)
    if not colour or style is None:
        return line
    if label := _LABEL.match(line):  # the room's name plain, the line in its colours
        return line[: label.end()] + render(line[label.end() :], kind, colour)
    if kind in (Kind.CHAT, Kind.OWN):
        nick, sep, text = line.partition("> ")
        return f"\x1b[{style}m{nick}{sep.rstrip()}{_RESET} {text}"
    return f"\x1b[{style}m{line}{_RESET}"


def wants_colour(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set
    (to anything but the empty string; see https://no-color.org)."""
    if environ.get("NO_COLOR"):
        return False
    return _isatty(stream)


def own_line(text: str) -> str | None:
    """How the user's own input line is shown: ``<You> text`` for a message,
    ``None`` for a command (the server answers those)."""
    if text.startswith("//"):
        return f"<You> {text[1:]}"
    if text.startswith("/"):
        return None
    return f"<You> {text}"


def is_quit(text: str) -> bool:
    return text.split(maxsplit=1)[0].lower() == "/quit"


# -- rooms ------------------------------------------------------------------

#: Entering a room, or switching to one: it is current.
_NOW_IN = re.compile(
    rf"\* you (?:are now in (?P<room>{_ROOM}) \(\d+ here\)|(?:now talk|are already) in (?P<to>{_ROOM}))"
)
_LEFT = re.compile(
    rf"\* you left (?P<room>{_ROOM}); (?:you now talk in (?P<current>{_ROOM})|/join ROOM to enter another)"
)
_KICKED = re.compile(rf"\* you were kicked out of (?P<room>{_ROOM}) by .*")
_ROOM_LIST = re.compile(r"\* \d+ rooms?: (?P<listing>.*)")
_LISTED = re.compile(rf"(?P<room>{_ROOM}) \(\d+(?P<mark>, current|, joined)?\)")


class Rooms:
    """The rooms the user is in and the current one, as the server's notices
    to the user alone tell them (docs/protocol.md, "What you see of your own
    moves"); the client keeps no state of its own that could disagree.

    :ivar joined: the rooms in the order they were joined (the order the
        room keys number them in).
    :ivar current: the current room, ``""`` in none, or None until known.
    :ivar switching: the room a room key asked for, until the server
        answers (so that Ctrl-N twice goes two rooms on), or None.
    """

    def __init__(self) -> None:
        self.joined: list[str] = []
        self.current: str | None = None
        self.switching: str | None = None

    def update(self, line: str) -> bool:
        """Follow one (sanitised) line from the server; True if it changed
        the rooms or the current room."""
        if not line.startswith(NOTICE):
            return False
        before = (list(self.joined), self.current)
        if match := _NOW_IN.fullmatch(line):
            room = match["room"] or match["to"]
            self._add(room)
            self.current = room
        elif match := _LEFT.fullmatch(line):
            self._remove(match["room"])
            self.current = match["current"] or ""
            if self.current:
                self._add(self.current)
        elif match := _KICKED.fullmatch(line):
            self._remove(match["room"])
            if self.current == match["room"]:
                # The server's rule: the room joined last of those left.
                self.current = self.joined[-1] if self.joined else ""
        elif match := _ROOM_LIST.fullmatch(line):  # the answer to /rooms
            listed = {m["room"]: m["mark"] for m in _LISTED.finditer(match["listing"])}
            mine = [room for room, mark in listed.items() if mark]
            if not mine and self.current is None:
                # Nothing marked, and nothing known yet: a server (or a
                # plugin's /rooms) that does not mark rooms; "no room"
                # would be a guess.
                return False
            self.joined = [room for room in self.joined if room in mine]
            for room in mine:
                self._add(room)
            self.current = next((room for room, mark in listed.items() if mark == ", current"), "")
        return (self.joined, self.current) != before

    def _add(self, room: str) -> None:
        if room not in self.joined:
            self.joined.append(room)

    def _remove(self, room: str) -> None:
        if room in self.joined:
            self.joined.remove(room)

    def step(self, by: int) -> str | None:
        """The room ``by`` places after the current one, or after the one
        a key has asked for (before, if negative), round the joined rooms;
        None if there is no other."""
        if len(self.joined) < 2:
            return None
        base = self.switching if self.switching in self.joined else self.current
        index = self.joined.index(base) if base in self.joined else -1
        return self.joined[(index + by) % len(self.joined)]

    def number(self, number: int) -> str | None:
        """The ``number``th room joined (from 1), or None."""
        return self.joined[number - 1] if 0 < number <= len(self.joined) else None

    def prompt(self) -> str:
        """The prompt: ``[dev] > ``; ``[dev 2/3] > `` in several rooms
        (its number for Alt-2); ``[no room] > ``; ``> `` until known."""
        if self.current is None:
            return PROMPT
        if not self.current:
            return f"[no room] {PROMPT}"
        if len(self.joined) > 1 and self.current in self.joined:
            return f"[{self.current} {self.joined.index(self.current) + 1}/{len(self.joined)}] {PROMPT}"
        return f"[{self.current}] {PROMPT}"


# -- command line -----------------------------------------------------------


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1 to 65535, not {port}")
    return port


def _nick(value: str) -> str:
    # Only what would break the line protocol is checked here; the server
    # judges the name itself and its answer is shown.
    if not value or any(char.isspace() or not char.isprintable() for char in value):
        raise argparse.ArgumentTypeError(f"a nickname is one word without spaces, not {value!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Chat from this terminal: connect to a chatcore server, send what you type, show what arrives.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
In a terminal: type a line and press Enter to send it. What arrives while
you type appears above the prompt; your line stays as it was. Up and Down
recall earlier lines; the usual editing keys work. Lines starting with / are
commands for the server (/help lists them; //text sends "/text"). Your own
messages are shown as <You> text. Ctrl-D on an empty line, Ctrl-C or /quit
leave the chat.

Rooms: the prompt shows the room your lines go to, "[dev] > ", and in
several rooms its number too, "[dev 2/3] > " (/join ROOM enters another).
Ctrl-N and Ctrl-P switch to the next and the previous room you are in,
Alt-1 to Alt-9 to the first to the ninth room you joined; /join ROOM of a
room you are in switches to it too. The line being typed stays as it is.

With stdin a pipe or file, each line is sent and the client leaves when the
input ends (or at a /quit line), after the server has answered everything:
  printf 'hello\\n/me waves\\n' | chatcore client --nick robot
With stdout not a terminal, lines are printed plain, one per line.

Your own message is shown as <You> text once the server has taken it (the
client sends /ping after each line to know): a line the server refuses is
not shown as sent, only the server's "! reason".
With stdin a pipe or file, the first refusal (of the password, of --nick,
of a line or a command) ends the run: the rest of the input is not sent,
stderr says what was refused and why, and the exit status is 1. The server's
"! ..." errors go to stderr, in that one message, not to stdout.

Colours are used when stdout is a terminal, unless NO_COLOR is set.
In a terminal, if --nick is refused (taken or invalid), the client stays
connected under the guest name the server gave it; use /nick NAME to try
another. If the server wants a password you did not give, type /pass PASSWORD.

TLS: give a URL (chatcore client tls://chat.example:12001) or --tls. The
server's certificate chain and host name are checked against the system's
trusted certificates, or --ca FILE; an unverified server is refused unless
--insecure (which says so on every start).

Exit status: 0 after leaving, 1 if the server could not be reached, the
connection was lost, or (with piped input) the server refused the password,
--nick, a line or a command; 2 for a usage error.""",
    )
    parser.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help="tcp://HOST[:PORT] or tls://HOST[:PORT] (instead of --host, --port and --tls)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"the server's host name or address (default: {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=_port, help=f"the server's TCP port (default: {DEFAULT_PORT}, or {DEFAULT_TLS_PORT} with TLS)"
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the default port is then 12001)")
    parser.add_argument(
        "--ca", metavar="FILE", help="PEM file of the certificates to trust instead of the system's (implies --tls)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="TLS without checking the certificate or host name: for test certificates only (implies --tls)",
    )
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help=(
            "send the server password on the first line of FILE (/pass) right after connecting; "
            "or set CHATCORE_PASSWORD (never a bare option: it would show in ps)"
        ),
    )
    parser.add_argument(
        "--nick",
        type=_nick,
        metavar="NAME",
        help="the nickname to take right after connecting (default: the server's guest name, or --account)",
    )
    parser.add_argument(
        "--account",
        type=_nick,
        metavar="NAME",
        help=(
            "log in to this account (/login) right after connecting, and enter under its name (default "
            "--nick: NAME); "
            "its password from --account-password-file, CHATCORE_ACCOUNT_PASSWORD or, in a terminal, "
            "a prompt (never a bare option: it would show in ps)"
        ),
    )
    parser.add_argument(
        "--account-password-file",
        metavar="FILE",
        help="the --account password on the first line of FILE",
    )
    parser.add_argument(
        "--timestamps",
        action="store_true",
        help="show the time each line was said (the server's, in local time: HH:MM) before it (/timestamps on)",
    )
    return parser


def _address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 1


def main(args: Sequence[str]) -> int:
    """Run ``chatcore client`` with its command-line arguments; return the
    exit status."""
    parser = build_parser()
    options = parser.parse_args(list(args))
    try:
        host, port, tls = _target(options)
    except ValueError as exc:
        parser.error(str(exc))
    context: ssl.SSLContext | None = None
    if tls:
        context = _tls_context(options.ca, options.insecure)
        if context is None:
            return 1
    password = os.environ.get("CHATCORE_PASSWORD") or None
    if options.password_file:
        password = _read_password(options.password_file)
        if password is None:
            return 1
    interactive = _isatty(sys.stdin) and _isatty(sys.stdout)
    account = None
    if options.account_password_file and not options.account:
        parser.error("--account-password-file is the password of --account NAME: give --account too")
    if options.account:
        secret = _account_password(options, parser)
        if secret is None:
            return 1
        account = (options.account, secret)
    # Whatever arrives must print, even on an output that cannot encode it.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    client = TerminalClient(
        host,
        port,
        tls=context,
        nick=options.nick or options.account,
        password=password,
        account=account,
        interactive=interactive,
        colour=wants_colour(sys.stdout, os.environ),
        timestamps=options.timestamps,
    )
    try:
        return asyncio.run(client.run())
    except KeyboardInterrupt:  # Ctrl-C while connecting: nothing to leave
        return 0


def _read_password(path: str, option: str = "--password-file") -> str | None:
    """The first line of ``path``; None (after saying why) if there is none."""
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline().rstrip("\r\n")
    except OSError as exc:
        _error(f"{option} {path}: cannot read it ({exc.strerror})")
        return None
    except UnicodeDecodeError:
        _error(f"{option} {path}: not UTF-8 text")
        return None
    if not first:
        _error(f"{option} {path}: the first line is empty; write the password there")
        return None
    return first


def _account_password(options: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """The ``--account`` password: from its file, the environment, or asked
    for in the terminal (not echoed). Never from the command line, where
    ``ps`` would show it to every user of the machine."""
    if options.account_password_file:
        return _read_password(options.account_password_file, "--account-password-file")
    from_environment = os.environ.get("CHATCORE_ACCOUNT_PASSWORD")
    if from_environment:
        return from_environment
    if not _isatty(sys.stdin):
        parser.error(
            f"--account {options.account} needs its password: --account-password-file FILE or "
            "CHATCORE_ACCOUNT_PASSWORD (input is not a terminal to ask in)"
        )
    import getpass

    try:
        typed = getpass.getpass(f"password of the account {options.account}: ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return None
    if not typed:
        _error("no password typed; nothing was sent")
        return None
    return typed


def _target(options: argparse.Namespace) -> tuple[str, int, bool]:
    """``(host, port, tls)`` from the URL or the options."""
    tls = bool(options.tls or options.ca or options.insecure)
    if options.url is None:
        return (
            options.host,
            options.port if options.port is not None else (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
            tls,
        )
    if options.host != DEFAULT_HOST or options.port is not None:
        raise ValueError("give the server either as a URL or with --host and --port, not both")
    parts = urllib.parse.urlsplit(options.url if "://" in options.url else f"tcp://{options.url}")
    if parts.scheme not in ("tcp", "tls"):
        raise ValueError(f"{options.url!r}: the scheme must be tcp:// or tls://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{options.url!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{options.url!r}: no host")
    tls = tls or parts.scheme == "tls"
    return parts.hostname, port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT), tls


def _tls_context(ca: str | None, insecure: bool) -> ssl.SSLContext | None:
    """A client context that verifies the chain and the host name (against
    ``ca`` or the system store), or, with ``insecure``, verifies nothing and
    says so. Defends against a man in the middle posing as the server."""
    context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        print(
            f"{PROG}: warning: --insecure: the server's certificate is not checked; "
            "anyone between you and the server can read and change the chat",
            file=sys.stderr,
            flush=True,
        )
    return context


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except ValueError:  # closed
        return False


# -- input sources ----------------------------------------------------------


class _StdinLines:
    """Lines from stdin, read by a daemon thread (see the module docstring).

    ``os.read`` on the file descriptor, not ``sys.stdin``: a daemon thread
    blocked inside the buffered reader would stop the interpreter from
    shutting down cleanly when we exit before the input ends.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._thread = threading.Thread(target=self._read, name="chatcore-stdin", daemon=True)
        self._thread.start()

    def _put(self, line: str | None) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, line)

    def _read(self) -> None:
        pending = b""
        try:
            fd = sys.stdin.fileno()
            while True:
                data = os.read(fd, RECV_SIZE)
                if not data:
                    break
                *lines, pending = (pending + data).split(b"\n")
                for raw in lines:
                    self._put(raw.decode("utf-8", "replace").rstrip("\r"))
            if pending:
                self._put(pending.decode("utf-8", "replace").rstrip("\r"))
        except (AttributeError, ValueError, OSError):
            pass  # no stdin, or closed under us: that is the end of the input
        except RuntimeError:
            return  # the loop is closed: the client has already finished
        with contextlib.suppress(RuntimeError):
            self._put(None)

    async def next(self) -> str | None:
        """The next line, or ``None`` at the end of the input."""
        return await self._queue.get()


class _PromptLines:
    """Lines typed at a prompt_toolkit prompt that shows the current room,
    with the keys that switch rooms (:func:`_room_keys`)."""

    def __init__(self, client: TerminalClient) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory

        # erase_when_done: the typed line is replaced by "<You> text".
        self._session: PromptSession[str] = PromptSession(
            client.rooms.prompt,
            history=InMemoryHistory(),
            erase_when_done=True,
            key_bindings=_room_keys(client),
        )

    def redraw(self) -> None:
        """Draw the prompt again (the current room changed)."""
        self._session.app.invalidate()

    async def next(self) -> str | None:
        """The next line typed, or ``None`` for Ctrl-D (on an empty line) or
        Ctrl-C."""
        try:
            # Our own SIGINT handler stays in place (see TerminalClient.run);
            # at the prompt, Ctrl-C is a key press, not a signal.
            return await self._session.prompt_async(handle_sigint=False)
        except (EOFError, KeyboardInterrupt):
            return None


def _room_keys(client: TerminalClient) -> Any:
    """Key bindings for switching rooms: each sends ``/join ROOM`` (which
    only makes a joined room current) and leaves the line being typed as it
    is. They replace prompt_toolkit's Ctrl-N and Ctrl-P (history, which Down
    and Up still do)."""
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("c-n")
    def _next(_event: Any) -> None:
        client.switch_to(client.rooms.step(1))

    @bindings.add("c-p")
    def _previous(_event: Any) -> None:
        client.switch_to(client.rooms.step(-1))

    for digit in "123456789":

        @bindings.add("escape", digit)
        def _number(_event: Any, number: int = int(digit)) -> None:
            client.switch_to(client.rooms.number(number))

    return bindings


# -- the client -------------------------------------------------------------


class ConnectionLost(Exception):
    """Sending failed: the connection is gone."""


class _Sent:
    """A line sent after the welcome, until the ``/ping`` sent after it is
    answered: an error before that pong is the server's refusal of it."""

    __slots__ = ("done", "number", "own", "pongs", "refusal", "switching", "text")

    def __init__(self, text: str, number: int, switching: str | None = None) -> None:
        self.text = text
        self.number = number  # the input line's number, for the error message
        self.own = own_line(text)  # "<You> text", shown once the server took it
        # The user's own /ping is answered by a pong that is shown.
        self.pongs = 1 if text.split(maxsplit=1)[0].lower() == "/ping" else 0
        self.refusal: str | None = None
        self.done = asyncio.Event()
        #: The room a room key switches to with this line (see Rooms.switching).
        self.switching = switching


class TerminalClient:
    """One session of ``chatcore client``: connect, chat, leave."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        nick: str | None,
        interactive: bool,
        colour: bool,
        tls: ssl.SSLContext | None = None,
        password: str | None = None,
        account: tuple[str, str] | None = None,
        timestamps: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.address = _address_text(host, port)
        self.nick = nick
        self._password = password
        #: ``(name, password)`` to log in with (/login) before taking the nick.
        self._account = account
        self._login_pending = account is not None
        self.interactive = interactive
        self.colour = colour
        self._writer: asyncio.StreamWriter | None = None
        #: Set once we have sent /quit: the server closing is then expected.
        self._leaving = False
        #: True until the answer to our first /ping: everything before it is
        #: the welcome and the answer to --nick.
        self._welcome = True
        self._nick_pending = nick is not None
        #: The server's answer to --nick when it refused it.
        self._nick_refusal: str | None = None
        #: Whether the "! password required" said on connecting, before the
        #: server read our /pass, is still to come.
        self._greeting_expected = password is not None
        #: Whether the server took our --nick as the name to enter under
        #: (sent before /pass): it is then answered before the password is.
        self._nick_offered = False
        #: After a refused password: how many "! password required" answers
        #: to our /nick and /ping are still to come (not shown).
        self._swallow = 0
        #: Why the server did not let us in (password), or None.
        self.login_refusal: str | None = None
        self._welcomed = asyncio.Event()
        #: Lines sent after the welcome, waiting for their pong (oldest first).
        self._sent: deque[_Sent] = deque()
        #: The server's last error, for the "lost the connection" message.
        self._last_error: str | None = None
        #: Errors nothing we sent explains (piped: reported at the end).
        self._unexplained: list[str] = []
        #: Set by Ctrl-C (as a signal) or when our output is closed.
        self._leave_requested = asyncio.Event()
        self._lost_reason = "the server closed it"
        #: The rooms and the current one, from the server's notices.
        self.rooms = Rooms()
        #: Whether the answer to the /rooms sent on connecting is still to come (not shown).
        self._rooms_asked = True
        #: Draws the prompt again (interactive only).
        self._redraw: Callable[[], None] | None = None
        #: Whether lines are shown with their time (--timestamps), and the
        #: answer to the /timestamps sent on connecting is still to come.
        self.timestamps = timestamps
        self._timestamps_asked = timestamps
        #: When the line being shown was said (the server's stamp), or None.
        self._said_at: float | None = None

    # -- output --

    def show(self, line: str, kind: Kind) -> None:
        shown = render(line, kind, self.colour)
        if self.timestamps:  # the server's time of the line; our own lines: now
            shown = time.strftime("%H:%M ", time.localtime(self._said_at or time.time())) + shown
        try:
            print(shown, flush=True)
        except BrokenPipeError:
            # Whoever read our output is gone (``chatcore client | head``):
            # leave cleanly, and send further output nowhere so that
            # neither it nor the flush at exit fails again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            self._leave_requested.set()

    def note(self, text: str) -> None:
        """A message from the client itself (not from the server)."""
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    def _show_error(self, line: str) -> None:
        """A ``! ...`` line: shown in a terminal; in scripts it goes into
        the one error message instead (see the module docstring)."""
        self._last_error = line[len(ERROR) :]
        if self.interactive:
            self.show(line, Kind.ERROR)

    def show_server_line(self, line: str) -> None:
        line = sanitize(line)  # a rogue server must not paint on the terminal
        self._said_at, line = split_stamp(line) if self.timestamps else (None, line)
        if self.rooms.update(line) and self._redraw is not None:
            self._redraw()
        if self._welcome:
            self._welcome_line(line)
            return
        if line == "* pong" and self._sent:
            sent = self._sent[0]
            if sent.pongs:  # the answer to the user's own /ping
                sent.pongs -= 1
                self.show(line, Kind.NOTICE)
                return
            self._sent.popleft()  # ours: the server has answered the line
            if sent.switching is not None and self.rooms.switching == sent.switching:
                self.rooms.switching = None  # the last key's switch is answered: done, or refused
            if sent.refusal is None and sent.own is not None:
                self.show(sent.own, Kind.OWN)
            sent.done.set()
            return
        if line.startswith(ERROR):
            if self._sent and self._sent[0].refusal is None:
                self._sent[0].refusal = line[len(ERROR) :]
            else:
                self._unexplained.append(line[len(ERROR) :])
            self._show_error(line)
            return
        if line:
            self.show(line, classify(line))

    def _welcome_line(self, line: str) -> None:
        """A line before the answer to our first /ping: the welcome, and the
        answers to /pass and /nick."""
        if line.startswith(ERROR):
            text = line[len(ERROR) :]
            if self._timestamps_asked and text.startswith("unknown command /timestamps"):  # an older server
                self._timestamps_asked = False
                self.note("this server does not send the times lines were said: showing when they arrive")
                return
            if text == PASSWORD_REQUIRED:
                if self._swallow:  # the answer to our /nick or /ping, refused too
                    self._swallow -= 1
                    if not self._swallow:
                        self._end_welcome()
                    return
                if self._greeting_expected:  # said before the server read our /pass
                    self._greeting_expected = False
                    return
                self._refuse_login(
                    "the server requires a password: give it with --password-file FILE or CHATCORE_PASSWORD"
                )
                return
            if text == WRONG_PASSWORD:
                self._greeting_expected = False
                self._refuse_login(
                    "the server refused the password (wrong password); check --password-file or CHATCORE_PASSWORD"
                )
                return
            if self._password is not None and text.startswith("unknown command /pass"):
                return  # the server has no password: ours was not needed
            if self._login_pending:  # the answer to our /login, which comes before the one to /nick
                self._login_pending = False
                assert self._account is not None
                self.login_refusal = (
                    f"the server refused the login to the account {self._account[0]} ({text}); "
                    "check --account-password-file or CHATCORE_ACCOUNT_PASSWORD"
                )
                if self.nick is not None and self.nick.casefold() == self._account[0].casefold():
                    self._nick_pending = False  # the login was to give us the nick: its refusal says it all
                if self.interactive:
                    self.note(f"{self.login_refusal}, or type /login ACCOUNT PASSWORD.")
                self._show_error(line)
                return
            if self._nick_pending and self._nick_refusal is None:
                self._nick_refusal = text
            else:
                self._unexplained.append(text)
            self._show_error(line)
            return
        if self._rooms_asked and _ROOM_LIST.fullmatch(line):  # ours, sent after connecting; not shown
            self._rooms_asked = False
            return
        if self._timestamps_asked and line == "* timestamps are on":  # ours, sent after connecting
            self._timestamps_asked = False
            return
        if line == f"* you will enter as {self.nick} once the password is given":  # our /nick, before /pass
            self._nick_offered = True
            return
        if line == "* pong":  # ours, sent after connecting; not shown
            if self._nick_refusal is None and self.login_refusal is None:
                # Our /nick was not refused: we came in under it (with a
                # password, or as our first line), or were renamed to it.
                self._nick_pending = False
            self._end_welcome()
            if self._nick_pending and self.interactive:
                # No "you are now known as": the error shown was the
                # answer. (Said only now, when we know we are still
                # connected: "! server full" is an error too.)
                self.note(
                    f"the nickname {self.nick!r} was refused; you are connected under your guest name. "
                    "Type /nick NAME to choose another."
                )
            return
        if line.startswith(("* you are now known as ", "* you are already known as ")):
            self._nick_pending = False
        if line.startswith("* you are logged in to "):
            self._login_pending = False
        # Before the first /ping answer, "* " lines are the welcome notices.
        if line:
            self.show(line, Kind.NOTICE if line.startswith(NOTICE) else classify(line))

    def _refuse_login(self, why: str) -> None:
        self.login_refusal = why
        # Our /rooms and /ping (and /nick, if sent after /pass, and /login)
        # are still to be answered, each with "! password required": not shown.
        self._swallow = (self.nick is not None and not self._nick_offered) + (self._account is not None) + 2
        self._rooms_asked = False
        self._nick_pending = False
        self._login_pending = False
        if self.interactive:
            self.note(f"{why}, or type /pass PASSWORD.")

    def _end_welcome(self) -> None:
        self._welcome = False
        self._rooms_asked = False  # a /rooms answered otherwise is not waited for any more
        self._welcomed.set()

    @property
    def nick_refused(self) -> str | None:
        """The message for a refused ``--nick`` (known once welcomed)."""
        if not self._nick_pending or self._welcome:
            return None
        reason = f" ({self._nick_refusal})" if self._nick_refusal else ""
        return f"the nickname {self.nick!r} was refused{reason}; nothing was sent. Choose another with --nick."

    # -- the connection --

    def switch_to(self, room: str | None) -> None:
        """Make ``room``, one the user is in, current (a room key): sends
        ``/join ROOM``, whose answer (``* you now talk in ROOM``) moves the
        prompt; nothing for None or the current room."""
        if room is None or room == self.rooms.current or self._writer is None or self._leaving:
            return
        text = f"/join {room}"
        self.rooms.switching = room
        self._sent.append(_Sent(text, 0, switching=room))
        # Written without waiting for the socket to take it (a key press
        # cannot wait); if the connection is gone, the reader says so.
        self._writer.write(f"{text}\n/ping\n".encode())

    async def _send(self, text: str) -> None:
        assert self._writer is not None
        self._writer.write(text.encode("utf-8") + b"\n")
        try:
            await self._writer.drain()
        except OSError as exc:
            self._lost_reason = exc.strerror or str(exc)
            raise ConnectionLost from None

    async def _read_server(self, reader: asyncio.StreamReader) -> None:
        """Show every line from the server; returns when it closes."""
        pending = b""
        while True:
            try:
                data = await reader.read(RECV_SIZE)
            except OSError as exc:
                self._lost_reason = exc.strerror or str(exc)
                data = b""
            if not data:
                if pending:
                    self.show_server_line(pending.decode("utf-8", "replace"))
                return
            *lines, pending = (pending + data).split(b"\n")
            for raw in lines:
                self.show_server_line(raw.decode("utf-8", "replace").rstrip("\r"))

    async def _connect(self) -> asyncio.StreamReader | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
                ),
                CONNECT_TIMEOUT,
            )
        except ssl.SSLCertVerificationError as exc:
            # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
            if exc.verify_code in (62, 64):
                hint = "connect with a host name the certificate was issued for"
            else:
                hint = "pass the server's CA with --ca FILE"
            _error(
                f"cannot connect to {self.address}: the server's certificate cannot be trusted "
                f"({exc.verify_message}); {hint}, or --insecure to skip the check (test certificates only)."
            )
            return None
        except ssl.SSLError as exc:
            _error(f"cannot connect to {self.address}: TLS failed ({exc.reason or exc}). Is it a TLS port?")
            return None
        except ConnectionRefusedError:
            serve = "chatcore serve" + (f" --port {self.port}" if self.port != DEFAULT_PORT else "")
            _error(
                f"cannot connect to {self.address}: connection refused. "
                f"Is the server running? Start one with '{serve}'."
            )
            return None
        except socket.gaierror as exc:
            _error(f"cannot find the host {self.host!r}: {exc.strerror}. Check --host.")
            return None
        except (asyncio.TimeoutError, TimeoutError):
            _error(
                f"cannot connect to {self.address}: no answer within {CONNECT_TIMEOUT:g} s. Check --host and --port."
            )
            return None
        except OSError as exc:
            _error(f"cannot connect to {self.address}: {exc.strerror or exc}. Check --host and --port.")
            return None
        self._writer = writer
        return reader

    async def run(self) -> int:
        reader = await self._connect()
        if reader is None:
            return 1
        assert self._writer is not None
        loop = asyncio.get_running_loop()
        leave_requested = self._leave_requested
        previous_sigint = _install_sigint(loop, leave_requested)
        failure: str | None
        try:
            for line in self._opening_lines():
                await self._send(line)
            if self.timestamps:
                await self._send("/timestamps on")
            await self._send("/rooms")  # where we are: the prompt shows the current room
            await self._send("/ping")  # the answer marks the end of the welcome
            if self.interactive:
                from prompt_toolkit.patch_stdout import patch_stdout

                with patch_stdout(raw=True):
                    prompt = _PromptLines(self)
                    self._redraw = prompt.redraw
                    failure = await self._chat(reader, prompt.next, leave_requested)
            else:
                failure = await self._chat(reader, _StdinLines(loop).next, leave_requested)
        except ConnectionLost:
            failure = self._lost()
        finally:
            if previous_sigint is not None:
                signal.signal(signal.SIGINT, previous_sigint)
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if failure is None and self._unexplained and not self.interactive:
            failure = f"the server said: {'; '.join(self._unexplained)}."
        if failure is not None:
            return _error(failure)
        return 0

    def _opening_lines(self) -> list[str]:
        """What the client says first: the lines that let it in under its
        name (see the module docstring), before ``/timestamps`` and ``/rooms``.

        The first line names us, so that we enter under the name, once: the
        server takes a first line ``/nick NAME`` or ``/login ACCOUNT
        PASSWORD`` as the name to enter under (``/login`` when the nick is
        the account's, so that it is ours as we take it), or, with a server
        password, the ``/nick`` before ``/pass`` (a ``/login`` then follows
        it: the server takes none before the password)."""
        nick, account = self.nick, self._account
        login = [f"/login {account[0]} {account[1]}"] if account is not None else []
        if self._password is not None:
            return [*([f"/nick {nick}"] if nick is not None else []), f"/pass {self._password}", *login]
        if nick is None:
            return login
        if account is not None and nick.casefold() == account[0].casefold():
            return login  # the server lets us in under the account's name
        return [f"/nick {nick}", *login]

    def _lost(self) -> str:
        said = f" ({self._last_error})" if self._last_error else ""
        return f"lost the connection to {self.address}: {self._lost_reason}{said}."

    async def _chat(
        self,
        reader: asyncio.StreamReader,
        next_line: Callable[[], Coroutine[object, object, str | None]],
        leave_requested: asyncio.Event,
    ) -> str | None:
        """Send lines until the user leaves; return None, or why the session
        failed: the connection was lost, or (piped) something was refused."""
        server_closed = asyncio.create_task(self._read_server(reader))
        leave = asyncio.create_task(leave_requested.wait())
        failure: str | None = None
        try:
            # Input waits for the welcome and the answer to --nick, so that
            # what is shown is in order and lines go out under the new name.
            welcomed = asyncio.create_task(self._welcomed.wait())
            await asyncio.wait(
                {welcomed, server_closed, leave}, timeout=WELCOME_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            welcomed.cancel()
            if server_closed.done():
                server_closed.result()
                return self._lost()
            if not self.interactive:
                failure = f"{self.login_refusal}." if self.login_refusal else self.nick_refused
            number = 0
            while failure is None and not leave.done():
                typed = asyncio.create_task(next_line())
                await asyncio.wait({typed, server_closed, leave}, return_when=asyncio.FIRST_COMPLETED)
                if server_closed.done() or leave.done():
                    typed.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await typed
                    if server_closed.done():
                        server_closed.result()  # a failure in the reader is a bug: let it show
                        return self._lost()
                    break
                text = typed.result()
                if text is None:
                    break
                number += 1
                text = text.strip()  # as the server does, so "/quit " is seen as /quit here too
                if not text:
                    continue
                if is_quit(text):
                    await self._send(text)
                    self._leaving = True
                    break
                sent = _Sent(text, number)
                self._sent.append(sent)
                await self._send(f"{text}\n/ping")
                if self.interactive:
                    continue
                # Scripts wait for the answer: a refusal ends the run here.
                answered = asyncio.create_task(sent.done.wait())
                await asyncio.wait({answered, server_closed, leave}, return_when=asyncio.FIRST_COMPLETED)
                answered.cancel()
                if server_closed.done():
                    server_closed.result()
                    return self._lost()
                if sent.refusal is not None:
                    failure = f"line {number} was refused: {sent.refusal}. The rest of the input was not sent."
            await self._leave(server_closed)
            return failure
        finally:
            leave.cancel()
            server_closed.cancel()

    async def _leave(self, server_closed: asyncio.Task[None]) -> None:
        """Say /quit (unless done already) and read until the server closes."""
        if not self._leaving:
            self._leaving = True
            try:
                await self._send("/quit")
            except ConnectionLost:
                return
        try:
            await asyncio.wait_for(asyncio.shield(server_closed), LEAVE_TIMEOUT)
        except (asyncio.TimeoutError, TimeoutError):
            self.note(f"the server did not close the connection within {LEAVE_TIMEOUT:g} s; closing it.")


def _install_sigint(loop: asyncio.AbstractEventLoop, leave_requested: asyncio.Event) -> _SignalHandler:
    """Ctrl-C (when it arrives as a signal) asks to leave cleanly; returns
    the handler it replaced (None if it could not install one).

    ``signal.signal`` rather than ``loop.add_signal_handler``: the latter is
    not available on Windows.
    """

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(leave_requested.set)

    try:
        return signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        return None
