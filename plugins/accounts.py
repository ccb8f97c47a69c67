"""Accounts: names that belong to people.

``chatcore serve --plugins welcome,accounts``. Native commands: ``/register
PASSWORD`` (your current nick becomes the account), ``/login [ACCOUNT]
PASSWORD``, ``/logout``, ``/password OLD NEW``, ``/drop PASSWORD``;
operators' ``/accounts``, ``/logins``, ``/suspend``, ``/unsuspend`` and
``/dropaccount``. Other protocols log in through the account service this
plugin supplies (``chatcore_account_service``, :mod:`chatcore.engine.accounts`):
IRC's SASL, a web page's form. Several connections may share an account.

Accounts are records of kind ``"account"`` in the state store
(``server.store``: SQLite with ``--state-db``, or the cluster's with the
redis plugin, so that an account registered on one server logs in on all),
keyed by the name folded to lower case::

    {"name": "Alice", "password": "scrypt$...", "registered": 1765000000.0,
     "suspended": "", "suspended_by": "", "certfp": []}

Nick ownership follows Ergo's nick reservation (an account owns the nick
of its name on the whole network), with a grace period as Ergo's former
``timeout`` method and Atheme's NickServ enforcement have it: a connection
that holds a registered nick without being logged in to that account is
told so, and renamed to a guest name after ``--nick-grace`` seconds unless
it logs in. The grace period is what lets people on the native protocol,
who can only log in after connecting, keep their name; IRC clients that log
in with SASL before registering never see the warning.

Defends against (docs/security.md says more):

- a stolen database revealing passwords: scrypt hashes
  (:mod:`chatcore.engine.auth`), never the password;
- passwords read from logs: commands are never logged with their
  arguments; failures are logged with the account and the address only;
- guessing one account from one address: each failure costs the guesser's
  own thread a growing delay, per connection and per address, and the
  third on a connection closes it (the gate's ``failed_secret``);
- guessing one account from many addresses: failures are also counted per
  account, and past ``--account-max-failures`` in ten minutes the account
  refuses password logins until they age out (its owner can still log in
  with a certificate; an operator sees the counts);
- learning which accounts exist from how long a login takes: an unknown
  name is checked against a made-up hash of the same cost;
- someone else wearing your name: nick ownership, above.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatcore import Client, Config, hookimpl
from chatcore.config import whole_number
from chatcore.engine import auth
from chatcore.engine.accounts import AccountService
from chatcore.engine.gate import Refusal
from chatcore.engine.limits import FailureCounter
from chatcore.engine.rooms import FLAG_MODES, RoomState
from chatcore.engine.store import StoreError
from chatcore.events import ModeChanged, NickChanged, RoomEvent, TopicChanged
from chatcore.names import nick_problem, room_problem
from chatcore.transports.listener import format_address
from chatcore.wire.native import logged_in_text

if TYPE_CHECKING:
    from chatcore.engine.server import ChatServer
    from chatcore.engine.store import Record

NAME = "accounts"
KIND = "account"
#: Registered rooms' records in the store.
ROOM_KIND = "room"
#: Who gives a registered room's operators their ``+o`` as they join (the
#: setter of that mode change, as IRC services' ChanServ is).
SERVICE_NICK = "ChanServ"
log = logging.getLogger("chatcore.accounts")

#: Seconds a connection may hold a registered nick before it is renamed.
DEFAULT_NICK_GRACE = 30.0
#: Failed password logins to one account, from anywhere, in
#: FAILURE_WINDOW seconds, before it refuses password logins for a while.
DEFAULT_MAX_FAILURES = 10
FAILURE_WINDOW = 600.0
#: The shortest password /register and /password accept, unless
#: --min-password-length says otherwise.
DEFAULT_MIN_PASSWORD = 8
#: The longest --min-password-length (Ergo takes passphrases up to 300).
MAX_MIN_PASSWORD = 300

HELP = [
    ("/register PASSWORD", "make your current nick an account of yours (see --min-password-length)"),
    ("/login [ACCOUNT] PASSWORD", "log in to ACCOUNT (your current nick if none is given)"),
    ("/logout", "log out of your account (this connection only)"),
    ("/password OLD NEW", "change your account's password"),
    ("/drop PASSWORD", "delete your account; its nick is free for anyone"),
    ("/registerroom [ROOM]", "keep ROOM (your current room) for good: its topic, modes and lists; you its founder"),
    ("/droproom ROOM", "the founder: stop keeping ROOM"),
]
OPERATOR_HELP = [
    ("/accounts", "operators: list the accounts, who is logged in to each, and failed logins"),
    ("/logins", "operators: who is logged in to which account on this server"),
    ("/suspend ACCOUNT [REASON]", "operators: refuse logins to ACCOUNT and log out its connections"),
    ("/unsuspend ACCOUNT", "operators: lift a suspension"),
    ("/dropaccount ACCOUNT", "operators: delete ACCOUNT"),
]


# ---------------------------------------------------------------------------
# Options and state
# ---------------------------------------------------------------------------


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range (must be from 0 to 3600 seconds)")
    return value


_grace.__name__ = "seconds"


@hookimpl
def chatcore_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "accounts plugin", "Accounts in the state store (--state-db, or the cluster's): see docs/accounts.md."
    )
    group.add_argument(
        "--nick-grace",
        type=_grace,
        default=DEFAULT_NICK_GRACE,
        metavar="SECONDS",
        help=(
            "how long a connection may hold a registered nick without logging in to it before it is "
            "renamed to a guest name; 0 renames at once (default: %(default)g)"
        ),
    )
    group.add_argument(
        "--account-max-failures",
        type=whole_number(1),
        default=DEFAULT_MAX_FAILURES,
        metavar="N",
        help=(
            "failed password logins to one account, from anywhere, within ten minutes, after which it "
            "refuses password logins until they age out (default: %(default)s)"
        ),
    )
    group.add_argument(
        "--min-password-length",
        type=whole_number(1, MAX_MIN_PASSWORD),
        default=DEFAULT_MIN_PASSWORD,
        metavar="N",
        help=(
            "the fewest characters a password given to /register or /password may have; "
            "passwords already registered are not checked again (default: %(default)s)"
        ),
    )


@dataclass
class Counts:
    """What operators and the log see: logins, failures, throttled attempts."""

    logins: int = 0
    failures: int = 0
    throttled: int = 0


@dataclass
class State:
    """The plugin's per-server state (``config.data["accounts"]``). Its
    options are read from ``server.config.options`` when they are used, not
    kept here: a reload (SIGHUP) changes them."""

    failures: FailureCounter = field(default_factory=lambda: FailureCounter(FAILURE_WINDOW))
    counts: Counts = field(default_factory=Counts)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Held by the enforcer while it checks a connection and warns or
    #: renames it, and by a login or a registration while it sets the
    #: account: else the enforcer could act on the account it read just
    #: before a login, and rename a connection told it is logged in.
    enforcing: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    enforcer: threading.Thread | None = None
    #: A hash of the same cost as real ones, for unknown names (timing).
    dummy: str = ""


@hookimpl
def chatcore_configure(config: Config) -> None:
    config.data[NAME] = State()


def _state(server: ChatServer) -> State:
    state: State = server.config.data[NAME]
    return state


@hookimpl
def chatcore_server_start(server: ChatServer) -> None:
    # Now, so that a refused state database stops the start with its message.
    _ = server.store
    state = _state(server)
    state.dummy = auth.dummy_for([auth.hash_password("")])
    state.enforcer = threading.Thread(target=_enforce, args=(server,), name="chatcore-nick-owners", daemon=True)
    state.enforcer.start()


@hookimpl
def chatcore_server_stop(server: ChatServer) -> None:
    state = _state(server)
    state.stopping.set()
    if state.enforcer is not None:
        state.enforcer.join(2.0)


@hookimpl
def chatcore_account_service(server: ChatServer) -> AccountService:
    return Accounts(server)


def account_of(client: Client) -> str:
    """The account ``client`` is logged in to, or ``""`` (``client.account``)."""
    return client.account


# ---------------------------------------------------------------------------
# Logging in: the service every protocol uses
# ---------------------------------------------------------------------------


class Accounts(AccountService):
    """This plugin's :class:`~chatcore.engine.accounts.AccountService`."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server

    def log_in(self, client: Client, account: str, password: str) -> Refusal | None:
        """Check ``password`` for ``account`` and log ``client`` in.

        Defends against guessing: an unknown name costs as much as a known
        one (a made-up hash of the same cost), every failure is counted per
        connection, address and account and slows the guesser's own thread,
        and an account guessed at too often refuses password logins for a
        while, whoever asks (distributed guessing from many addresses).
        """
        state = _state(self.server)
        key = account.casefold()
        where = format_address(*client.address)
        try:
            record = self.server.store.get(KIND, key)
        except StoreError as exc:
            log.error("login to %r from %s: %s", account, where, exc)
            return Refusal("unavailable", "accounts cannot be checked now; try again in a minute")
        if _failures(state, key) >= self.server.config.options.account_max_failures:
            with state.lock:
                state.counts.throttled += 1
            log.warning("login to %r from %s refused: too many failed logins to it lately", account, where)
            self.server.gate.failed_secret(client, "account", f"throttled login to {account!r}", "failed logins")
            return Refusal(
                "throttled",
                f"too many failed logins to {account} lately; try again in {FAILURE_WINDOW / 60:g} minutes",
            )
        stored = record["password"] if record is not None else state.dummy
        if not auth.verify_password(stored, password) or record is None:
            with state.lock:
                state.counts.failures += 1
            recent = state.failures.record(key)
            what = f"failed login to {account!r} ({recent} to it in {FAILURE_WINDOW / 60:g} minutes)"
            self.server.gate.failed_secret(client, "account", what, "failed logins")
            return Refusal("login_failed", "wrong account name or password")
        return self._admit(client, record)

    def log_in_certificate(self, client: Client, fingerprint: str, account: str = "") -> Refusal | None:
        """Log in with a TLS client certificate registered with the account
        (``/certfp``). Not guessable (the TLS handshake proved the key), so
        not throttled per account; a wrong one still counts per address."""
        fingerprint = fingerprint.lower()
        try:
            if account:
                record = self.server.store.get(KIND, account.casefold())
            else:
                record = next(
                    (r for r in self.server.store.records(KIND).values() if fingerprint in r.get("certfp", [])), None
                )
        except StoreError as exc:
            log.error("certificate login from %s: %s", format_address(*client.address), exc)
            return Refusal("unavailable", "accounts cannot be checked now; try again in a minute")
        if not fingerprint or record is None or fingerprint not in record.get("certfp", []):
            self.server.gate.failed_secret(
                client, "account", f"certificate login to {account or 'any account'!r} refused", "failed logins"
            )
            return Refusal("login_failed", "no account has your certificate registered (/certfp add)")
        return self._admit(client, record)

    def _admit(self, client: Client, record: Record) -> Refusal | None:
        name = record["name"]
        if record.get("suspended"):
            log.warning("login to suspended account %r from %s refused", name, format_address(*client.address))
            return Refusal("suspended", f"the account {name} is suspended: {record['suspended']}")
        state = _state(self.server)
        with state.lock:
            state.counts.logins += 1
        was = client.account
        with state.enforcing:
            client.account = name
            _forget_owner(client)
        who = client.nick or "a connection entering the chat"  # a login before entering (SASL, a first /login)
        log.info("%s from %s logged in to account %r", who, format_address(*client.address), name)
        if was and was != name:
            log.info("%s logged out of account %r", client.nick, was)
        return None


def _failures(state: State, key: str) -> int:
    """Failed logins to the account ``key`` in the window."""
    return state.failures.count(key)


def _service(client: Client) -> Accounts:
    service = client.server.accounts
    assert isinstance(service, Accounts)
    return service


# ---------------------------------------------------------------------------
# Nick ownership
# ---------------------------------------------------------------------------


def _forget_owner(client: Client) -> None:
    client.data.get(NAME, {}).pop("checked", None)


def _owner_of(server: ChatServer, client: Client) -> str | None:
    """The account owning ``client``'s nick, or None: looked up once per
    nick the client takes (kept in ``client.data``), so the enforcer's
    round costs a dict lookup per connection."""
    data = client.data.setdefault(NAME, {})
    checked = data.get("checked")
    nick = client.nick
    if checked is not None and checked[0] == nick:
        owner: str | None = checked[1]
        return owner
    try:
        record = server.store.get(KIND, nick.casefold())
    except StoreError:
        return None  # asked again next round
    owner = record["name"] if record is not None else None
    data["checked"] = (nick, owner)
    data.pop("deadline", None)
    return owner


def _enforce(server: ChatServer) -> None:
    """The enforcer's thread: warn, then rename, those holding a nick an
    account owns without being logged in to it."""
    state = _state(server)
    while not state.stopping.wait(min(1.0, max(0.1, server.config.options.nick_grace / 4))):
        for client in list(server.registry):
            try:
                with state.enforcing:
                    _check_nick(server, client)
            except Exception:
                log.exception("nick ownership check of %r failed", client)


def _check_nick(server: ChatServer, client: Client) -> None:
    if client.closed or not client.nick:
        return
    owner = _owner_of(server, client)
    if owner is None or client.account.casefold() == owner.casefold():
        return
    data = client.data[NAME]
    now = time.monotonic()
    deadline = data.get("deadline")
    if deadline is None:
        grace: float = server.config.options.nick_grace
        data["deadline"] = now + grace
        if grace:
            client.notice(
                f"the nick {client.nick} belongs to an account: /login {client.nick} PASSWORD within "
                f"{grace:g} seconds, or /nick to another name, or you will be renamed"
            )
            return
    elif now < deadline:
        return
    # Asked afresh: the account may have been dropped on another server.
    try:
        if server.store.get(KIND, client.nick.casefold()) is None:
            _forget_owner(client)
            return
    except StoreError:
        return
    old = client.nick
    for _ in range(10):
        guest = server.registry.guest_nick()
        # Only if it is still called so: its own /nick meanwhile (on its
        # thread, which this lock does not hold) wins, and is checked afresh.
        if server.change_nick(client, guest, was=old):
            break
        if client.nick != old:
            return
    else:
        return
    log.info("renamed %s to %s: the nick belongs to account %r", old, guest, owner)
    client.send(NickChanged("", nick=old, new_nick=guest, user=client.user))
    client.notice(f"you were renamed to {guest}: {old} belongs to an account you are not logged in to")


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _is_operator(client: Client) -> bool:
    return client.server.hooks.server_operator(client) is not None


@hookimpl
def chatcore_command_help(client: Client) -> list[tuple[str, str]]:
    return HELP + (OPERATOR_HELP if _is_operator(client) else [])


@hookimpl
def chatcore_command(client: Client, name: str, args: str) -> bool | None:
    handler = _COMMANDS.get(name)
    if handler is not None:
        try:
            handler(client, args.strip())
        except StoreError as exc:
            log.error("/%s by %s: %s", name, client.nick, exc)
            client.error("accounts cannot be reached now; nothing was changed: try again in a minute")
        return True
    handler = _OPERATOR_COMMANDS.get(name)
    if handler is None:
        return None
    if not _is_operator(client):
        client.error(f"/{name} is for operators; log in with /oper NAME PASSWORD")
        return True
    try:
        handler(client, args.strip())
    except StoreError as exc:
        log.error("/%s by %s: %s", name, client.nick, exc)
        client.error("accounts cannot be reached now; nothing was changed: try again in a minute")
    return True


def _password_problem(client: Client, password: str) -> str | None:
    # Read when asked, not kept at start: a reload (SIGHUP) changes it.
    shortest: int = client.server.config.options.min_password_length
    if len(password) < shortest:
        return f"a password needs at least {shortest} characters"
    if " " in password:
        return "a password has no spaces"
    return None


def _register(client: Client, args: str) -> None:
    password = args
    if not password:
        client.error("usage: /register PASSWORD (your current nick becomes the account)")
        return
    if client.account:
        client.error(f"you are logged in to {client.account} already; /logout first to register another account")
        return
    if (problem := _password_problem(client, password)) is not None:
        client.error(f"{problem}; nothing was registered")
        return
    name = client.nick
    if name.casefold().startswith("guest-") or nick_problem(name) is not None:
        client.error(f"{name} cannot be an account: /nick to the name you want, then /register PASSWORD")
        return
    record = {
        "name": name,
        "password": auth.hash_password(password),
        "registered": time.time(),
        "suspended": "",
        "suspended_by": "",
        "certfp": [],
    }
    # The account and its owner's login appear together to the enforcer.
    with _state(client.server).enforcing:
        created = client.server.store.create(KIND, name.casefold(), record)
        if created:
            client.account = name
            _forget_owner(client)
    if not created:
        client.error(f"the account {name} is taken: /login {name} PASSWORD if it is yours, or /nick to another name")
        return
    log.warning("account %r registered by %s", name, format_address(*client.address))
    client.notice(f"registered the account {name}; you are logged in to it (later: /login {name} PASSWORD)")


def _login(client: Client, args: str) -> None:
    words = args.split()
    if len(words) == 1:
        account, password = client.nick, words[0]
    elif len(words) == 2:
        account, password = words
    else:
        client.error("usage: /login [ACCOUNT] PASSWORD")
        return
    refusal = _service(client).log_in(client, account, password)
    if refusal is None:
        client.notice(logged_in_text(client.account))
    elif not client.closed:
        client.error(refusal.text)


def _logout(client: Client, args: str) -> None:
    if not client.account:
        client.error("you are not logged in")
        return
    name, client.account = client.account, ""
    _forget_owner(client)
    log.info("%s logged out of account %r", client.nick, name)
    client.notice(f"you are logged out of {name}")


def _logged_in_record(client: Client) -> Record | None:
    """The record of the account ``client`` is logged in to, after telling
    it if there is none."""
    if not client.account:
        client.error("you are not logged in; /login ACCOUNT PASSWORD first")
        return None
    record = client.server.store.get(KIND, client.account.casefold())
    if record is None:
        client.account = ""
        client.error("your account was dropped")
    return record


def _check_own(client: Client, record: Record, password: str) -> bool:
    """Whether ``password`` is the account's: a wrong one counts as a failed login."""
    if auth.verify_password(record["password"], password):
        return True
    state = _state(client.server)
    state.failures.record(record["name"].casefold())
    what = f"wrong password for account {record['name']!r}"
    client.server.gate.failed_secret(client, "account", what, "failed logins")
    if not client.closed:
        client.error("wrong password; nothing was changed")
    return False


def _password(client: Client, args: str) -> None:
    words = args.split()
    if len(words) != 2:
        client.error("usage: /password OLD NEW")
        return
    old, new = words
    record = _logged_in_record(client)
    if record is None:
        return
    if (problem := _password_problem(client, new)) is not None:
        client.error(f"{problem}; the password was not changed")
        return
    if not _check_own(client, record, old):
        return
    record["password"] = auth.hash_password(new)
    client.server.store.put(KIND, record["name"].casefold(), record)
    log.warning("account %r: password changed by %s", record["name"], format_address(*client.address))
    client.notice("your password is changed")


def _drop(client: Client, args: str) -> None:
    if not args or " " in args:
        client.error("usage: /drop PASSWORD (deletes the account you are logged in to)")
        return
    record = _logged_in_record(client)
    if record is None or not _check_own(client, record, args):
        return
    _delete(client.server, record["name"], f"dropped by its owner from {format_address(*client.address)}")
    client.notice(f"the account {record['name']} is deleted; its nick is free for anyone")


def _delete(server: ChatServer, name: str, why: str) -> bool:
    """Delete the account ``name``; its connections here are logged out."""
    if not server.store.delete(KIND, name.casefold()):
        return False
    log.warning("account %r %s", name, why)
    for other in list(server.registry):
        _forget_owner(other)
        if other.account.casefold() == name.casefold():
            other.account = ""
            other.notice(f"the account {name} was deleted; you are logged out")
    return True


# -- operators ------------------------------------------------------------------


def _logged_in(server: ChatServer) -> dict[str, list[str]]:
    """Nicks here by the account they are logged in to (folded)."""
    found: dict[str, list[str]] = {}
    for client in server.registry:
        if client.account:
            found.setdefault(client.account.casefold(), []).append(client.nick)
    return found


def _accounts(client: Client, args: str) -> None:
    server = client.server
    records = server.store.records(KIND)
    here = _logged_in(server)
    state = _state(server)
    client.notice(
        f"{len(records)} account{'s' if len(records) != 1 else ''}; since start: {state.counts.logins} logins, "
        f"{state.counts.failures} failed, {state.counts.throttled} throttled"
    )
    for key in sorted(records):
        record = records[key]
        when = time.strftime("%Y-%m-%d", time.gmtime(record.get("registered", 0)))
        parts = [f"registered {when}"]
        if record.get("suspended"):
            parts.append(f"SUSPENDED by {record.get('suspended_by') or '?'}: {record['suspended']}")
        if key in here:
            parts.append(f"logged in here as {', '.join(sorted(here[key]))}")
        recent = _failures(state, key)
        if recent:
            parts.append(f"{recent} failed logins in {FAILURE_WINDOW / 60:g} minutes")
        client.notice(f"  {record['name']} ({'; '.join(parts)})")


def _logins(client: Client, args: str) -> None:
    rows = sorted(
        (other.nick, other.account, format_address(*other.address)) for other in client.server.registry if other.account
    )
    if not rows:
        client.notice("nobody is logged in to an account on this server")
        return
    client.notice(f"{len(rows)} logged in on this server:")
    for nick, account, where in rows:
        client.notice(f"  {nick} as {account} from {where}")


def _suspend(client: Client, args: str) -> None:
    name, _, reason = args.partition(" ")
    if not name:
        client.error("usage: /suspend ACCOUNT [REASON]")
        return
    server = client.server
    record = server.store.get(KIND, name.casefold())
    if record is None:
        client.error(f"no account {name!r} (see /accounts)")
        return
    record["suspended"] = reason.strip() or "no reason given"
    record["suspended_by"] = client.nick
    server.store.put(KIND, name.casefold(), record)
    log.warning("account %r suspended by %s: %s", record["name"], client.nick, record["suspended"])
    out = []
    for other in list(server.registry):
        if other.account.casefold() == name.casefold():
            other.account = ""
            _forget_owner(other)
            other.notice(f"the account {record['name']} is suspended by an operator; you are logged out")
            out.append(other.nick)
    client.notice(f"suspended {record['name']}" + (f"; logged out {', '.join(out)}" if out else ""))


def _unsuspend(client: Client, args: str) -> None:
    if not args:
        client.error("usage: /unsuspend ACCOUNT")
        return
    server = client.server
    record = server.store.get(KIND, args.casefold())
    if record is None or not record.get("suspended"):
        client.error(f"{args} is not a suspended account (see /accounts)")
        return
    record["suspended"] = record["suspended_by"] = ""
    server.store.put(KIND, args.casefold(), record)
    log.warning("account %r unsuspended by %s", record["name"], client.nick)
    client.notice(f"{record['name']} is no longer suspended")


def _dropaccount(client: Client, args: str) -> None:
    if not args or " " in args:
        client.error("usage: /dropaccount ACCOUNT")
        return
    if _delete(client.server, args, f"dropped by the operator {client.nick}"):
        client.notice(f"deleted the account {args}")
    else:
        client.error(f"no account {args!r} (see /accounts)")


def _certfp(client: Client, args: str) -> None:
    """``/certfp [add|del FINGERPRINT]``: the TLS client certificates that
    log in to your account (IRC's SASL EXTERNAL)."""
    record = _logged_in_record(client)
    if record is None:
        return
    action, _, given = args.partition(" ")
    prints: list[str] = list(record.get("certfp", []))
    if action in ("", "list"):
        client.notice(f"{len(prints)} certificate{'s' if len(prints) != 1 else ''} log in to {record['name']}")
        for fingerprint in prints:
            client.notice(f"  {fingerprint}")
        return
    if action == "add":
        fingerprint = (given.strip() or certificate_fingerprint(client) or "").lower()
        if not fingerprint:
            client.error("no certificate: connect over TLS with a client certificate, or /certfp add FINGERPRINT")
            return
        if len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
            client.error("a fingerprint is the certificate's SHA-256 in 64 hex digits")
            return
        if fingerprint not in prints:
            prints.append(fingerprint)
    elif action == "del":
        if given.strip().lower() not in prints:
            client.error("that certificate is not registered (see /certfp)")
            return
        prints.remove(given.strip().lower())
    else:
        client.error("usage: /certfp [add [FINGERPRINT] | del FINGERPRINT]")
        return
    record["certfp"] = prints
    client.server.store.put(KIND, record["name"].casefold(), record)
    where = format_address(*client.address)
    log.warning("account %r: certificates changed (%s) from %s", record["name"], action, where)
    client.notice(f"{len(prints)} certificate{'s' if len(prints) != 1 else ''} now log in to {record['name']}")


def certificate_fingerprint(client: Client) -> str | None:
    """The SHA-256 fingerprint (lower-case hex) of the TLS client certificate
    ``client`` presented, or None."""
    finder: Any = getattr(client.transport, "peer_fingerprint", None)
    return finder() if callable(finder) else None


# ---------------------------------------------------------------------------
# Registered rooms
# ---------------------------------------------------------------------------
#
# A record of kind "room", keyed by the room's name:
#
#     {"name": "dev", "founder": "alice", "operators": ["alice", "bob"],
#      "registered": 1765000000.0, "state": {"topic": ..., "flags": "mnt", ...}}
#
# "operators" are accounts (folded): who gets +o on joining. It follows what
# the room's operators do: +o given to a member logged in to an account adds
# that account, -o removes it (never the founder's). "state" is the room's
# topic, modes and lists, saved at every change of them; nicknames' roles are
# not kept (nicks come and go; accounts are what is kept).


def _room_state_record(state: RoomState) -> dict[str, Any]:
    return {
        "created": state.created,
        "topic": state.topic,
        "topic_by": state.topic_by,
        "topic_at": state.topic_at,
        "flags": "".join(sorted(state.flags)),
        "key": state.key,
        "limit": state.limit,
        "bans": {mask: [by, when] for mask, (by, when) in state.bans.items()},
        "excepts": {mask: [by, when] for mask, (by, when) in state.excepts.items()},
    }


def _room_state_from(room: str, record: dict[str, Any]) -> RoomState:
    """A registered room's kept state (roles empty: given as people join)."""
    kept = record.get("state", {})
    state = RoomState(room, created=float(kept.get("created", record.get("registered", time.time()))))
    state.topic = str(kept.get("topic", ""))
    state.topic_by = str(kept.get("topic_by", ""))
    state.topic_at = float(kept.get("topic_at", 0.0))
    state.flags = {flag for flag in str(kept.get("flags", "nt")) if flag in FLAG_MODES}
    state.key = str(kept.get("key", ""))
    state.limit = int(kept.get("limit", 0))
    state.bans = {str(mask): (str(by), float(when)) for mask, (by, when) in kept.get("bans", {}).items()}
    state.excepts = {str(mask): (str(by), float(when)) for mask, (by, when) in kept.get("excepts", {}).items()}
    return state


@hookimpl
def chatcore_room_state(server: ChatServer, room: str) -> RoomState | None:
    try:
        record = server.store.get(ROOM_KIND, room)
    except StoreError as exc:
        log.error("registered room %s: %s; it is made as a new room", room, exc)
        return None
    return None if record is None else _room_state_from(room, record)


@hookimpl
def chatcore_client_joined(client: Client, room: str) -> None:
    """The founder and the operator accounts of a registered room get +o on joining."""
    if not client.account:
        return
    server = client.server
    try:
        record = server.store.get(ROOM_KIND, room)
    except StoreError:
        return
    if record is None or client.account.casefold() not in record.get("operators", []):
        return
    state = server.rooms.get(room)
    if state is None or state.is_operator(client.nick):
        return
    server.publish(ModeChanged(room, nick=SERVICE_NICK, modes="+o", arguments=(client.nick,)))


@hookimpl
def chatcore_room_changed(server: ChatServer, event: RoomEvent) -> None:
    """Save a registered room's topic and modes as they change, and follow
    who its operators are (by account). (``chatcore_room_changed``, not
    ``chatcore_room_event``: no hook call per chat line.)"""
    if not isinstance(event, (TopicChanged, ModeChanged)) or event.nick == SERVICE_NICK:
        return
    room = event.room
    try:
        record = server.store.get(ROOM_KIND, room)
        if record is None:
            return
        state = server.rooms.get(room)
        if state is not None:
            record["state"] = _room_state_record(state)
        if isinstance(event, ModeChanged):
            _follow_operators(server, record, event)
        server.store.put(ROOM_KIND, room, record)
    except StoreError as exc:
        log.error("registered room %s: its change was not saved (%s)", room, exc)


def _follow_operators(server: ChatServer, record: dict[str, Any], event: ModeChanged) -> None:
    """+o and -o of members here logged in to accounts: the room's operator accounts."""
    arguments = list(event.arguments)
    adding = True
    operators: list[str] = record.setdefault("operators", [])
    for letter in event.modes:
        if letter in "+-":
            adding = letter == "+"
            continue
        if letter in "bekov" or (letter == "l" and adding):
            argument = arguments.pop(0) if arguments else ""
        else:
            continue
        if letter != "o":
            continue
        member = server.registry.find(argument)
        account = member.account.casefold() if member is not None else ""
        if not account:
            continue
        if adding and account not in operators:
            operators.append(account)
        elif not adding and account in operators and account != record.get("founder"):
            operators.remove(account)


def _registerroom(client: Client, args: str) -> None:
    room = args.lower() or client.room
    if not room:
        client.error("usage: /registerroom [ROOM] (you are in no room)")
        return
    if (problem := room_problem(room)) is not None:
        client.error(problem)
        return
    if not client.account:
        client.error(f"log in to your account first (/login, or /register PASSWORD) to register {room}")
        return
    state = client.server.rooms.get(room)
    if state is None or room not in client.rooms or not state.is_operator(client.nick):
        client.error(f"only an operator of {room}, in it, registers it")
        return
    account = client.account.casefold()
    record = {
        "name": room,
        "founder": account,
        "operators": [account],
        "registered": time.time(),
        "state": _room_state_record(state),
    }
    if not client.server.store.create(ROOM_KIND, room, record):
        client.error(f"{room} is registered already")
        return
    log.warning("room %s registered by account %r (%s)", room, client.account, client.nick)
    client.notice(f"registered {room}: its topic, modes and lists are kept; you get +o in it when logged in")


def _droproom(client: Client, args: str) -> None:
    room = args.lower()
    if not room:
        client.error("usage: /droproom ROOM")
        return
    server = client.server
    record = server.store.get(ROOM_KIND, room)
    if record is None:
        client.error(f"{room} is not registered")
        return
    if client.account.casefold() != record.get("founder") and not _is_operator(client):
        client.error(f"only the founder of {room} ({record.get('founder')}) or a server operator drops it")
        return
    server.store.delete(ROOM_KIND, room)
    log.warning("room %s dropped by %s (account %r)", room, client.nick, client.account)
    client.notice(f"{room} is no longer registered")


_COMMANDS = {
    "registerroom": _registerroom,
    "droproom": _droproom,
    "register": _register,
    "login": _login,
    "logout": _logout,
    "password": _password,
    "drop": _drop,
    "certfp": _certfp,
}
_OPERATOR_COMMANDS = {
    "accounts": _accounts,
    "logins": _logins,
    "suspend": _suspend,
    "unsuspend": _unsuspend,
    "dropaccount": _dropaccount,
}
