"""Passwords: the server password, operator passwords, and their hashes.

A stored password is either plain text or a hash made by ``chatcore
hash-password``: ``scrypt$N$r$p$SALT$KEY`` (salt and key in URL-safe base64
without padding), with scrypt's cost parameters in the string so that they
can be raised later without breaking old hashes.

Defends against: a password read from ``ps`` (passwords come from a file or
the environment, never the command line); timing attacks on the comparison
(:func:`hmac.compare_digest`); a stolen configuration file revealing the
password (store the hash); guessing (the server slows and logs failures, see
:meth:`ChatServer.check_password <chatcore.engine.server.ChatServer.check_password>`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable

from chatcore.errors import UsageError

PREFIX = "scrypt"
#: scrypt costs: 2**14 and r=8 is the interactive-login setting of the
#: scrypt paper and Python's documentation (16 MB, tens of milliseconds).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
#: Refuse hashes whose costs would take the server's memory: a bad line in
#: a file must not become a denial of service on every login.
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A hash of ``password`` for the password and operator files."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_BYTES, maxmem=2**26
    )
    return f"{PREFIX}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def is_hash(stored: str) -> bool:
    return stored.startswith(PREFIX + "$")


def check_hash(stored: str) -> None:
    """:raises ValueError: ``stored`` looks like a hash but is not a usable one."""
    parts = stored.split("$")
    if len(parts) != 6:
        raise ValueError("a scrypt hash has 6 fields separated by $ (made by 'chatcore hash-password')")
    try:
        n, r, p = (int(part) for part in parts[1:4])
        _unb64(parts[4])
        key = _unb64(parts[5])
    except ValueError:
        raise ValueError("a scrypt hash's N, r and p are numbers and its salt and key base64") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not key:
        raise ValueError("scrypt's N must be a power of 2 above 1, r and p at least 1")
    if 128 * n * r * p > MAX_SCRYPT_MEMORY:
        raise ValueError(f"scrypt costs N={n} r={r} p={p} would need more than {MAX_SCRYPT_MEMORY >> 20} MB")


def verify_password(stored: str, given: str) -> bool:
    """Whether ``given`` matches ``stored`` (plain text or a hash), compared
    in constant time."""
    if not is_hash(stored):
        return hmac.compare_digest(stored.encode("utf-8"), given.encode("utf-8"))
    _, n, r, p, salt, key = stored.split("$")
    expected = _unb64(key)
    actual = hashlib.scrypt(
        given.encode("utf-8"),
        salt=_unb64(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=len(expected),
        maxmem=MAX_SCRYPT_MEMORY + 2**20,
    )
    return hmac.compare_digest(expected, actual)


def _cost(stored: str) -> int:
    """How much work checking a password against ``stored`` takes, roughly:
    scrypt's N*r*p for a hash, 0 for plain text."""
    if not is_hash(stored):
        return 0
    n, r, p = (int(part) for part in stored.split("$")[1:4])
    return n * r * p


def dummy_for(stored: Iterable[str]) -> str:
    """A stored password nobody knows, of the same kind and cost as the
    costliest of ``stored`` (plain text if all are): what a login under an
    unknown name is checked against.

    Defends against learning which names exist from how long a failed login
    takes (an unknown name answered at once, or checked with scrypt where
    the real entries are plain text, would stand out).
    """
    costliest = max(stored, key=_cost, default="")
    if not is_hash(costliest):  # compare_digest's time follows the given password's length alone
        return _b64(os.urandom(SALT_BYTES))
    _, n, r, p, salt, key = costliest.split("$")
    # A random key: no password hashes to it, and none need be computed here.
    return f"{PREFIX}${n}${r}${p}${_b64(os.urandom(len(_unb64(salt))))}${_b64(os.urandom(len(_unb64(key))))}"


def read_password_file(path: str, option: str = "--password-file") -> str:
    """The password (or hash) in a file: its first line, without the newline.

    :raises UsageError: the file cannot be read, is empty, or holds a broken hash.
    """
    try:
        with open(path, encoding="utf-8") as file:
            first = file.readline()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not UTF-8 text") from None
    password = first.rstrip("\r\n")
    if not password:
        raise UsageError(f"{option} {path}: the first line is empty; write the password (or its hash) there")
    return checked(password, f"{option} {path}")


def checked(password: str, where: str) -> str:
    """``password``, after checking that a hash in it is usable.

    :raises UsageError: a broken hash (the message never shows the value).
    """
    if is_hash(password):
        try:
            check_hash(password)
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None
    return password
