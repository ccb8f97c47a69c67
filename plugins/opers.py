"""Operators and bans: /oper, /kill, /ban, /unban, /bans, /mute and /unmute.

Always on, and an ordinary plugin on the hooks: ``chatcore_command`` for the
commands, ``chatcore_connection_arriving`` to refuse banned addresses at
connect, ``chatcore_message`` to hold back muted users' messages (and leave
reasons, which pass the same chain: ``ChatServer.leave_reason``). Without
``--opers-file`` nobody can become an operator, and the commands answer so.

Defends against: a disruptive user (kick; mute, holding the nick and its
address; ban by nick, address or network, enforced on the spot and at
connect; bans and mutes kept in the state store, so that they survive a
restart and are shared by a cluster's servers);
guessing operator passwords (each failure is logged with the address, never
the password, and slows the guesser's own thread; three close the
connection); a stolen operators file (it holds scrypt hashes).
Everything an operator does is logged at WARNING with who did it.

For plugin authors: :func:`operator_name` says whether a client is an
operator (and which).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatcore import Client, Config, Message, UsageError, hookimpl
from chatcore.config import restart_only
from chatcore.engine import auth
from chatcore.engine.limits import Network, address_key, parse_address, parse_network
from chatcore.engine.store import StoreError
from chatcore.events import OperatorChanged
from chatcore.transports.listener import format_address

if TYPE_CHECKING:
    from chatcore.engine.server import ChatServer
    from chatcore.engine.store import Store

NAME = "opers"
log = logging.getLogger("chatcore.opers")

HELP = [
    ("/oper NAME PASSWORD", "log in as an operator (--opers-file)"),
    ("/kill NICK [REASON]", "operators: disconnect NICK; their rooms see the reason"),
    ("/ban NICK|ADDRESS|CIDR [DURATION] [REASON]", "operators: disconnect and refuse an address (30m, 7d ...)"),
    ("/unban ADDRESS|CIDR", "operators: lift a ban (as /bans lists it)"),
    ("/bans", "operators: list the bans in force"),
    ("/mute NICK [DURATION]", "operators: NICK's messages are not delivered, also from NICK's address (default: 10m)"),
    ("/unmute NICK|ADDRESS", "operators: lift a mute"),
    ("/mutes", "operators: list the mutes in force"),
]

DEFAULT_MUTE = 600.0
_DURATION = re.compile(r"([0-9]+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float | None:
    """``"30m"`` -> 1800.0; None if ``text`` is not a duration."""
    match = _DURATION.fullmatch(text.lower())
    if match is None or int(match[1]) == 0:
        return None
    return float(int(match[1]) * _UNITS[match[2]])


def _for(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


# ---------------------------------------------------------------------------
# Options and state
# ---------------------------------------------------------------------------


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("operators and bans")
    group.add_argument(
        "--opers-file",
        metavar="FILE",
        help=(
            "operators, one a line: NAME HASH (from 'chatcore hash-password'; plain text works too); "
            "blank lines and # comments skipped. They log in with /oper NAME PASSWORD"
        ),
    )
    restart_only(
        group.add_argument(
            "--bans-file",
            metavar="FILE",
            help=(
                "a bans file of an older chatcore: its bans and mutes are copied into the state store "
                "(--state-db, or the cluster's), where they are kept now; the file is left as it was"
            ),
        )
    )


@dataclass
class Ban:
    """One ban: a network (a single address is a /32 or /128)."""

    network: Network
    until: float | None  # time.time(); None: forever
    reason: str
    by: str

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def describe(self, now: float) -> str:
        left = "forever" if self.until is None else f"{_for(max(1.0, round(self.until - now)))} left"
        return f"{self.network} ({left}, by {self.by}): {self.reason}"


@dataclass
class Mute:
    """One mute: it holds the nick and the address it was given to (the
    IPv4 address or IPv6 /64, as bans by nick), so that neither
    reconnecting nor changing nick lifts it."""

    nick: str
    address: str  # address_key(); "" if the client had no IP address
    until: float  # time.time()
    by: str

    def holds(self, nick: str, address: str, now: float) -> bool:
        return now < self.until and (nick.casefold() == self.nick.casefold() or address == self.address != "")

    def describe(self, now: float) -> str:
        where = f" and {self.address}" if self.address else ""
        return f"{self.nick}{where} ({_for(max(1.0, round(self.until - now)))} left, by {self.by})"


def _key_of(host: str) -> str:
    try:
        return address_key(host)
    except ValueError:
        return ""


@dataclass
class State:
    """The plugin's per-server state (``config.data["opers"]``).

    Bans and mutes change only through the methods below, which a cluster
    plugin may call too (to apply another server's /ban or /mute): each
    takes the lock, saves the change in the state store and returns what to
    tell the operator if saving failed (None if it worked).
    """

    operators: dict[str, str]
    bans: list[Ban] = field(default_factory=list)
    mutes: list[Mute] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The state store the bans and mutes are kept in, record by record:
    #: the server's (``--state-db``, or the cluster's), from the start on.
    store: Store | None = None
    #: The next attempt to read them from a store that did not answer.
    retry: threading.Timer | None = None

    def banned(self, host: str) -> Ban | None:
        try:
            address = parse_address(host)
        except ValueError:
            return None
        now = time.time()
        with self.lock:
            return next((ban for ban in self.bans if ban.active(now) and address in ban.network), None)

    def ban(self, network: Network, until: float | None, reason: str, by: str) -> str | None:
        """Ban ``network`` (replacing a ban of the same network)."""
        with self.lock:
            self.bans = [ban for ban in self.bans if ban.network != network]
            self.bans.append(Ban(network, until, reason, by))
            return _in_store(self.store, "put", BAN_KIND, str(network), _ban_record(self.bans[-1]))

    def unban(self, network: Network) -> tuple[bool, str | None]:
        """Lift the ban of exactly ``network``: (whether there was one, unsaved)."""
        with self.lock:
            kept = [ban for ban in self.bans if ban.network != network]
            found = len(kept) != len(self.bans)
            self.bans = kept
            # Deleted whether known here or not: another server may have kept it.
            return found, _in_store(self.store, "delete", BAN_KIND, str(network))

    def muted(self, nick: str, host: str) -> Mute | None:
        """The mute holding ``nick`` or the address ``host``, if any."""
        if not self.mutes:  # nearly always: no lock taken, no address parsed
            return None
        address, now = _key_of(host), time.time()
        with self.lock:
            return next((mute for mute in self.mutes if mute.holds(nick, address, now)), None)

    def mute(self, nick: str, host: str, until: float, by: str) -> str | None:
        """Mute ``nick`` and ``host``'s address until ``until`` (time.time())."""
        with self.lock:
            self.mutes = [mute for mute in self.mutes if mute.nick.casefold() != nick.casefold()]
            self.mutes.append(Mute(nick, _key_of(host), until, by))
            return _in_store(self.store, "put", MUTE_KIND, nick.casefold(), _mute_record(self.mutes[-1]))

    def unmute(self, nick: str, host: str = "") -> tuple[int, str | None]:
        """Lift every mute of ``nick`` or of ``host``'s address: (how many, unsaved)."""
        address = _key_of(host) if host else ""
        with self.lock:
            gone = [mute for mute in self.mutes if mute.holds(nick, address, -1.0)]
            self.mutes = [mute for mute in self.mutes if not mute.holds(nick, address, -1.0)]
            unsaved = None
            for mute in gone:
                unsaved = _in_store(self.store, "delete", MUTE_KIND, mute.nick.casefold()) or unsaved
            return len(gone), unsaved


#: The state store's kinds: a ban by its network, a mute by its nick (folded).
BAN_KIND = "ban"
MUTE_KIND = "mute"


def _ban_record(ban: Ban) -> dict[str, Any]:
    return {"network": str(ban.network), "until": ban.until, "reason": ban.reason, "by": ban.by}


def _mute_record(mute: Mute) -> dict[str, Any]:
    return {"nick": mute.nick, "address": mute.address, "until": mute.until, "by": mute.by}


def _in_store(store: Store | None, change: str, *args: Any) -> str | None:
    """Make one change (``"put"``, ``"delete"``) in the store; what to tell
    the operator if it failed (the change is in force all the same)."""
    if store is None:  # before the start: nothing is said or done yet
        return None
    try:
        getattr(store, change)(*args)
    except StoreError as exc:
        log.error("cannot keep the bans and mutes in the state store: %s", exc)
        return f"in force, but not saved to the state store ({exc}): it may not survive a restart"
    return None


def _from_store(store: Store) -> tuple[list[Ban], list[Mute]]:
    """The bans and mutes in force in the store (expired ones are removed)."""
    now = time.time()
    bans, mutes = [], []
    for key, r in store.records(BAN_KIND).items():
        try:
            ban = Ban(parse_network(r["network"]), r["until"], str(r["reason"]), str(r["by"]))
        except (KeyError, TypeError, ValueError):
            log.error("a ban in the state store is not chatcore's (%s); left out", key[:60])
            continue
        if ban.active(now):
            bans.append(ban)
        else:
            store.delete(BAN_KIND, key)
    for key, r in store.records(MUTE_KIND).items():
        try:
            mute = Mute(str(r["nick"]), str(r["address"]), float(r["until"]), str(r["by"]))
        except (KeyError, TypeError, ValueError):
            log.error("a mute in the state store is not chatcore's (%s); left out", key[:60])
            continue
        if mute.until > now:
            mutes.append(mute)
        else:
            store.delete(MUTE_KIND, key)
    return bans, mutes


def _read_operators(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--opers-file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--opers-file {path}: not UTF-8 text") from None
    operators = {}
    for number, text in enumerate(lines, 1):
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        name, _, password = line.partition(" ")
        password = password.strip()
        if not password or " " in password:
            raise UsageError(f"--opers-file {path} line {number}: expected NAME HASH (one operator a line)")
        operators[name] = auth.checked(password, f"--opers-file {path} line {number}")
    return operators


def _read_bans(path: str) -> tuple[list[Ban], list[Mute]]:
    try:
        with open(path, encoding="utf-8") as file:
            records = json.load(file)
    except FileNotFoundError:
        return [], []
    except (OSError, ValueError) as exc:
        raise UsageError(f"--bans-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if isinstance(records, list):  # written before mutes were kept: bans only
        records = {"bans": records, "mutes": []}
    now = time.time()
    try:
        bans = [
            Ban(parse_network(r["network"]), r["until"], str(r["reason"]), str(r["by"]))
            for r in records["bans"]
            if r["until"] is None or r["until"] > now
        ]
        mutes = [
            Mute(str(r["nick"]), str(r["address"]), float(r["until"]), str(r["by"]))
            for r in records["mutes"]
            if r["until"] > now
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"--bans-file {path}: not a chatcore bans file ({exc})") from None
    return bans, mutes


@hookimpl
def chatcore_configure(config: Config) -> None:
    options = config.options
    operators = _read_operators(options.opers_file) if options.opers_file else {}
    bans, mutes = _read_bans(options.bans_file) if options.bans_file else ([], [])
    # The store is the server's: opened at start (chatcore_server_start).
    config.data[NAME] = State(operators, bans, mutes)


#: Seconds between attempts to read the bans and mutes from a state store
#: that did not answer at start (the cluster's Redis, down), at most.
STORE_RETRY_MAX = 30.0


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    """The bans and mutes are the state store's; a ``--bans-file`` (where an
    older chatcore kept them) is copied into it, and left as it was."""
    options = server.config.options
    state = _state(server)
    if options.bans_file and os.path.exists(options.bans_file):
        log.warning(
            "--bans-file %s: its %d bans and %d mutes are now kept in the state store; "
            "the file is left as it was and no longer written: remove --bans-file from the configuration",
            options.bans_file,
            len(state.bans),
            len(state.mutes),
        )
    elif options.bans_file:
        log.warning(
            "--bans-file %s: no such file, nothing to copy; bans and mutes are kept in the state store: "
            "remove --bans-file from the configuration",
            options.bans_file,
        )
    store = server.store  # a refused database stops the start here, with its message
    with state.lock:
        state.store = store
    _read_store(state, store, 1.0)


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    retry = _state(server).retry
    if retry is not None:
        retry.cancel()


def _read_store(state: State, store: Store, delay: float) -> None:
    """Take the bans and mutes in force from the store, after saving there
    those known here only (a --bans-file's, or given while it did not
    answer). A store that does not answer (the cluster's Redis is down)
    does not stop the server: it starts with what it has, and tries again
    after ``delay`` seconds, doubled each time."""
    with state.lock:
        bans, mutes = list(state.bans), list(state.mutes)
    try:
        for ban in bans:
            store.put(BAN_KIND, str(ban.network), _ban_record(ban))
        for mute in mutes:
            store.put(MUTE_KIND, mute.nick.casefold(), _mute_record(mute))
        kept_bans, kept_mutes = _from_store(store)
    except StoreError as exc:
        log.error(
            "the bans and mutes in the state store cannot be read (%s): in force here are only those given "
            "from now on; trying again in %.0fs",
            exc,
            delay,
        )
        state.retry = threading.Timer(delay, _read_store, (state, store, min(2 * delay, STORE_RETRY_MAX)))
        state.retry.daemon = True
        state.retry.start()
        return
    with state.lock:
        # Given while this read was under way: kept too.
        networks = {ban.network for ban in kept_bans}
        nicks = {mute.nick.casefold() for mute in kept_mutes}
        state.bans = kept_bans + [ban for ban in state.bans if ban.network not in networks]
        state.mutes = kept_mutes + [mute for mute in state.mutes if mute.nick.casefold() not in nicks]
        state.retry = None
    if delay > 1.0:
        log.warning("the bans and mutes in the state store are read, and in force")


@hookimpl
def chatcore_reload(server: ChatServer, new: argparse.Namespace) -> Callable[[], None]:
    # The operators file is read again (a bad one keeps the running list);
    # operators logged in stay logged in until they leave. The bans and
    # mutes are the state store's: not reread.
    operators = _read_operators(new.opers_file) if new.opers_file else {}

    def apply() -> None:
        _state(server).operators = operators

    return apply


def _state(server: ChatServer) -> State:
    state: State = server.config.data[NAME]
    return state


def operator_name(client: Client) -> str | None:
    """The operator name ``client`` logged in with (``/oper``), or None.

    How a plugin checks for an operator::

        from chatcore.plugins.opers import operator_name
        if operator_name(client) is None:
            client.error("operators only")
    """
    data: dict[str, Any] = client.data.get(NAME, {})
    return data.get("oper")


# ---------------------------------------------------------------------------
# Enforcement
# ---------------------------------------------------------------------------


@hookimpl
def chatcore_server_operator(client: Client) -> str | None:
    return operator_name(client)


@hookimpl
def chatcore_connection_arriving(address: tuple[str, int], server: ChatServer) -> str | None:
    ban = _state(server).banned(address[0])
    if ban is None:
        return None
    return f"you are banned from this server: {ban.reason}"


def mute_of(client: Client) -> Mute | None:
    """The mute holding ``client`` (by its nick or its address), or None;
    operators are never held (a mute given from their own address would
    otherwise silence them too)."""
    mute = _state(client.server).muted(client.nick, client.address[0])
    if mute is None or operator_name(client) is not None:
        return None
    return mute


@hookimpl(specname="chatcore_message", tryfirst=True)
def muted(message: Message) -> None:
    # Leave reasons come this way too (kind "leave"): a muted user's /quit
    # or PART reason is dropped like the rest of what it says.
    sender = message.sender
    if not sender.server.config.data[NAME].mutes:  # nearly always: every chat line comes here
        return
    mute = mute_of(sender)
    if mute is not None:
        left = _for(max(1.0, round(mute.until - time.time())))
        message.reject(f"you are muted by an operator for {left} more; nothing was sent")


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@hookimpl
def chatcore_command_help(client: Client) -> list[tuple[str, str]]:
    # Everyone can log in; the rest only to those who can use it.
    return HELP if operator_name(client) is not None else HELP[:1]


@hookimpl
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    if name == "oper":
        _oper(client, args)
        return True
    handler = _OPERATOR_COMMANDS.get(name)
    if handler is None:
        return None
    oper = operator_name(client)
    if oper is None:
        client.error(f"/{name} is for operators; log in with /oper NAME PASSWORD")
        return True
    handler(client, oper, args)
    return True


def _oper(client: Client, args: str) -> None:
    name, _, password = args.partition(" ")
    password = password.strip()
    if not name or not password:
        client.error("usage: /oper NAME PASSWORD")
        return
    if log_in(client, name, password):
        client.notice(f"you are now an operator ({name})")
    elif not client.closed:
        client.error("wrong operator name or password")


def log_in(client: Client, name: str, password: str) -> bool:
    """Make ``client`` the operator ``name`` if ``password`` is theirs; the
    check behind ``/oper`` and IRC's ``OPER``, which tell the client each in
    their own way. On the client's own thread: a failure sleeps there.

    Defends against guessing: an unknown name takes as long as a known one
    (:func:`~chatcore.engine.auth.dummy_for`), each failure is logged with the address (never the
    password) and slows this connection and address more, and the third on a
    connection closes it (:meth:`Gate.failed_secret
    <chatcore.engine.gate.Gate.failed_secret>`).
    """
    state = _state(client.server)
    where = format_address(*client.address)
    stored = state.operators.get(name)
    # An unknown name is checked against a made-up entry as costly as the
    # file's real ones, so that timing does not tell which names exist.
    expected = stored if stored is not None else auth.dummy_for(state.operators.values())
    if auth.verify_password(expected, password) and stored is not None:
        was = operator_name(client)
        client.data.setdefault(NAME, {})["oper"] = name
        log.warning("operator %s logged in: %s from %s", name, client.nick, where)
        if was is None and client.room:
            # To the others: the operator's own client is told its way (IRC: a user MODE +o).
            client.server.publish(OperatorChanged(client.room, nick=client.nick), exclude=client)
        return True
    # The gate's throttle, as for the server password: counted per
    # connection and per address, so reconnecting does not reset the delay.
    client.server.gate.failed_secret(
        client, "oper", f"failed /oper as {name!r} by {client.nick}", "failed operator logins"
    )
    return False


@hookimpl
def chatcore_moderation(server: ChatServer, action: str, details: dict[str, Any]) -> None:
    """An operator on another server did ``action``: apply it here as our
    own is applied (the backplane carried it, ``chatcore_moderation``)."""
    by, oper = details["by"], details.get("oper")
    reason = details.get("reason") or "no reason given"
    until = details.get("until")
    if action == "ban" and "network" in details:
        log.warning("operator %s (%s) on another server banned %s: %s", oper, by, details["network"], reason)
        _state(server).ban(details["network"], until, reason, by)
        enforce_ban(server, details["network"], by, reason)
    elif action == "ban":  # of a nick: who is here, so its address is known here
        target = server.registry.find(details["nick"])
        if target is None or target.closed:
            log.info("ban of %s by %s from another server: not here (any more)", details["nick"], by)
            return
        network = network_of(target)
        log.warning("operator %s (%s) on another server banned %s (%s): %s", oper, by, network, target.nick, reason)
        _state(server).ban(network, until, reason, by)
        enforce_ban(server, network, by, reason)
        # And everywhere, now that its address is known.
        ban = {"by": by, "oper": oper, "network": str(network), "until": until, "reason": reason}
        server.backplane.moderate("ban", ban)
    elif action == "unban":
        if _state(server).unban(details["network"])[0]:
            log.warning("operator %s (%s) on another server lifted the ban on %s", oper, by, details["network"])
    elif action == "mute":
        # The address is known where the user is; the others mute the nick.
        here = server.registry.find(details["nick"])
        host = details.get("host") or (here.address[0] if here is not None else "")
        apply_mute(server, details["nick"], host, details["until"], by=by, oper=oper)
    elif action == "unmute":
        apply_unmute(server, details["target"], by=by, oper=oper)
    elif action == "kick":
        target = server.registry.find(details["nick"])
        if target is None or target.closed:
            log.info("kick of %s by %s from another server: not here (any more)", details["nick"], by)
        else:
            kick_as(by, oper, target, reason)


def has_operators(server: ChatServer) -> bool:
    """Whether anyone can become an operator here (``--opers-file`` lists some)."""
    return bool(_state(server).operators)


def log_out(client: Client) -> None:
    """``client`` is an operator no more (IRC's ``MODE nick -o``)."""
    name = client.data.get(NAME, {}).pop("oper", None)
    if name is not None:
        log.warning("operator %s logged out: %s", name, client.nick)
        if client.room:
            client.server.publish(OperatorChanged(client.room, nick=client.nick, operator=False), exclude=client)


def _target(client: Client, nick: str, action: str | None = None, **details: Any) -> Client | None:
    """The client ``nick`` here. Else None, and in a cluster ``action`` (with
    ``details``) goes to the server ``nick`` is on (see :func:`_to_cluster`)."""
    target = client.server.registry.find(nick)
    if target is not None and not target.closed:
        return target
    sent = None if action is None else _to_cluster(client, action, nick=nick, **details)
    if sent is True:
        client.notice(f"{nick} is on another server: {action} sent there")
    else:
        client.error(sent or f"no such nick {nick!r}")
    return None


def _to_cluster(client: Client, action: str, **details: Any) -> bool | str | None:
    """Send the operator ``client``'s ``action`` to the other servers of a
    cluster, which apply it as this plugin would (:func:`kick_as`,
    :func:`enforce_ban`, :func:`apply_mute`, :func:`apply_unmute` and the
    :class:`State` methods): True if sent, why not, or None (no cluster;
    for a ``nick``: on no other server). The backplane carries it
    (:meth:`Backplane.moderate <chatcore.engine.backplane.Backplane.moderate>`)."""
    oper = operator_name(client) or ""
    return client.server.backplane.moderate(action, {"by": client.nick, "oper": oper, **details})


def _tell_cluster(client: Client, action: str, **details: Any) -> bool | str | None:
    """:func:`_to_cluster` for an action in force here already."""
    sent = _to_cluster(client, action, **details)
    if isinstance(sent, str):
        client.error(f"in force here, but {sent}")
    return sent


def _kill(client: Client, oper: str, args: str) -> None:
    nick, _, reason = args.partition(" ")
    if not nick:
        client.error("usage: /kill NICK [REASON]")
        return
    target = _target(client, nick, "kick", reason=reason)
    if target is None:
        return
    kick(client, target, reason)
    client.notice(f"kicked {target.nick}")


def kick_elsewhere(operator: Client, nick: str, reason: str) -> bool | str | None:
    """``operator`` kicks ``nick``, who is on another server of the cluster
    (IRC's ``KILL``; ``/kill`` finds them itself): True if the
    kick went there, why not, or None if no server has that nick."""
    return _to_cluster(operator, "kick", nick=nick, reason=reason.strip() or "no reason given")


def kick(operator: Client, target: Client, reason: str) -> None:
    """``operator`` kicks ``target`` out of the server (``/kill``, IRC's
    ``KILL``): logged, and its rooms see a leave with the
    reason (IRC users a ``QUIT :Killed (...)``). The caller checked that ``operator`` is one."""
    kick_as(operator.nick, operator_name(operator), target, reason)


def kick_as(by: str, oper: str | None, target: Client, reason: str) -> None:
    """:func:`kick` by the operator ``oper`` whose nick is ``by`` (here or on another server)."""
    reason = reason.strip() or "no reason given"
    log.warning("operator %s (%s) kicked %s from %s: %s", oper, by, target.nick, target.address[0], reason)
    target.disconnect(reason, kicked_by=by)


def _network_of(client: Client, text: str, ban: dict[str, Any]) -> tuple[Network, str] | None:
    """What ``/ban`` targets: a CIDR or address as given (IPv4-mapped as
    IPv4), or a nick's address (IPv6: its /64, as the connection limits
    count it). A nick on another server of a cluster: ``ban`` (its
    ``until`` and ``reason``) goes to that server, which bans the address
    everywhere, and None."""
    try:
        return parse_network(text), text
    except ValueError:
        pass
    target = _target(client, text, "ban", **ban)
    if target is None:
        return None
    return network_of(target), target.nick


def network_of(client: Client) -> Network:
    """The network a ban of ``client`` by nick bans: its address, or its
    IPv6 /64 (as the connection limits count)."""
    return parse_network(address_key(client.address[0]))


def _ban(client: Client, oper: str, args: str) -> None:
    words = args.split(" ", 2)
    if not words[0]:
        client.error("usage: /ban NICK|ADDRESS|CIDR [DURATION] [REASON]")
        return
    duration = parse_duration(words[1]) if len(words) > 1 else None
    rest = words[2:] if duration is not None else words[1:]
    reason = " ".join(rest).strip() or "no reason given"
    until = None if duration is None else time.time() + duration
    found = _network_of(client, words[0], {"until": until, "reason": reason})
    if found is None:
        return
    network, shown = found
    unsaved = _state(client.server).ban(network, until, reason, client.nick)
    span = "forever" if duration is None else f"for {_for(duration)}"
    log.warning("operator %s (%s) banned %s (%s) %s: %s", oper, client.nick, network, shown, span, reason)
    gone = enforce_ban(client.server, network, client.nick, reason, spare=client)
    _done(client, f"banned {network} {span}" + (f"; disconnected {', '.join(gone)}" if gone else ""), unsaved)
    _tell_cluster(client, "ban", network=str(network), until=until, reason=reason)


def enforce_ban(server: ChatServer, network: Network, by: str, reason: str, spare: Client | None = None) -> list[str]:
    """Disconnect everyone connected from ``network``, admitted or not, but
    ``spare`` (a ban on the spot); who it was."""
    gone = []
    for other in server.all_connections():
        try:
            inside = parse_address(other.address[0]) in network
        except ValueError:
            continue
        if inside and other is not spare:
            other.disconnect(f"banned by {by}: {reason}", cause="ban")
            gone.append(other.nick or format_address(*other.address))
    return gone


def _done(client: Client, text: str, unsaved: str | None) -> None:
    """Tell the operator what was done, and if it could not be saved."""
    client.notice(text)
    if unsaved:
        client.error(unsaved)


def _unban(client: Client, oper: str, args: str) -> None:
    try:
        network = parse_network(args)
    except ValueError:
        client.error("usage: /unban ADDRESS|CIDR (as /bans lists it)")
        return
    found, unsaved = _state(client.server).unban(network)
    sent = _tell_cluster(client, "unban", network=str(network))  # even if not banned here
    if not found and sent is not True:
        client.error(f"{network} is not banned (see /bans)")
        return
    log.warning("operator %s (%s) lifted the ban on %s", oper, client.nick, network)
    _done(client, f"unbanned {network}" if found else f"unban of {network} sent to the other servers", unsaved)


def _bans(client: Client, oper: str, args: str) -> None:
    state, now = _state(client.server), time.time()
    with state.lock:
        active = [ban.describe(now) for ban in state.bans if ban.active(now)]
    _list(client, "ban", active)


def _list(client: Client, what: str, active: list[str]) -> None:
    if not active:
        client.notice(f"no {what}s")
        return
    client.notice(f"{len(active)} {what if len(active) == 1 else what + 's'}:")
    for line in active:
        client.notice(f"  {line}")


def _mute(client: Client, oper: str, args: str) -> None:
    nick, _, duration_text = args.partition(" ")
    if not nick:
        client.error("usage: /mute NICK [DURATION]")
        return
    duration = DEFAULT_MUTE
    if duration_text.strip():
        parsed = parse_duration(duration_text.strip())
        if parsed is None:
            client.error(f"invalid duration {duration_text.strip()!r}: use a number and s, m, h, d or w (30m)")
            return
        duration = parsed
    until = time.time() + duration
    target = client.server.registry.find(nick)
    if target is not None and not target.closed:
        nick, host = target.nick, target.address[0]
        _tell_cluster(client, "mute", nick=nick, host=host, until=until)
    else:
        # On another server: muted there, and here by nick (should they come here).
        host = ""
        sent = _to_cluster(client, "mute", nick=nick, until=until)
        if sent is not True:
            client.error(sent or f"no such nick {nick!r}")
            return
    unsaved = apply_mute(client.server, nick, host, until, by=client.nick, oper=oper)
    _done(client, f"muted {nick} for {_for(duration)}", unsaved)


def apply_mute(server: ChatServer, nick: str, host: str, until: float, *, by: str, oper: str | None) -> str | None:
    """Mute ``nick`` and ``host``'s address (if known) until ``until``, by
    the operator ``oper`` whose nick is ``by`` (here or on another server);
    what to tell the operator if it could not be saved."""
    unsaved = _state(server).mute(nick, host, until, by)
    left = _for(max(1.0, round(until - time.time())))
    log.warning("operator %s (%s) muted %s (%s) for %s", oper, by, nick, host, left)
    target = server.registry.find(nick)
    if target is not None:
        target.notice(f"you are muted by an operator for {left}")
    return unsaved


def _unmute(client: Client, oper: str, args: str) -> None:
    """``/unmute NICK`` lifts the mutes of that nick and, if it is here, of
    its address; ``/unmute ADDRESS`` those of an address."""
    text = args.strip()
    if not text:
        client.error("usage: /unmute NICK|ADDRESS")
        return
    lifted, unsaved = apply_unmute(client.server, text, by=client.nick, oper=oper)
    sent = _tell_cluster(client, "unmute", target=text)  # even if not muted here
    if not lifted and sent is not True:
        client.error(f"{text} is not muted (see /mutes)")
        return
    _done(client, f"unmuted {text}" if lifted else f"unmute of {text} sent to the other servers", unsaved)


def apply_unmute(server: ChatServer, text: str, *, by: str, oper: str | None) -> tuple[int, str | None]:
    """Lift the mutes of the nick or address ``text`` (a nick here: its
    address's too), by ``oper`` whose nick is ``by``: (how many, unsaved)."""
    target = server.registry.find(text)
    host = target.address[0] if target is not None else text
    lifted, unsaved = _state(server).unmute(text, host)
    if lifted:
        log.warning("operator %s (%s) unmuted %s", oper, by, text)
        if target is not None:
            target.notice("you are no longer muted")
    return lifted, unsaved


def _mutes(client: Client, oper: str, args: str) -> None:
    state, now = _state(client.server), time.time()
    with state.lock:
        active = [mute.describe(now) for mute in state.mutes if mute.until > now]
    _list(client, "mute", active)


_OPERATOR_COMMANDS = {
    "kill": _kill,
    "ban": _ban,
    "unban": _unban,
    "bans": _bans,
    "mute": _mute,
    "unmute": _unmute,
    "mutes": _mutes,
}
