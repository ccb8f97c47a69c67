"""The seam between the protocols and whatever keeps accounts.

A protocol logs a connection in to an account its own way (IRC's SASL and
``PASS account:password``, a web page's form, the native ``/login``), but
never imports the plugin that keeps the accounts: it asks the server for
its :attr:`ChatServer.accounts <chatcore.engine.server.ChatServer.accounts>`,
the :class:`AccountService` a plugin supplied through
``chatcore_account_service`` (the bundled ``accounts`` plugin's), or None
on a server without accounts (then IRC does not offer SASL at all).

The model is Twisted words' portal: the protocols are thin adapters over
one login service, as they are over one chat engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatcore.engine.connection import Client
    from chatcore.engine.gate import Refusal

#: Why a login may be refused (:attr:`Refusal.reason <chatcore.engine.gate.Refusal.reason>`):
#: ``"login_failed"`` (no such account or a wrong password: the two are one
#: answer, so that a guesser does not learn which names exist),
#: ``"suspended"`` (by an operator), ``"throttled"`` (too many failures for
#: the account lately), ``"unavailable"`` (the store cannot answer now).
LOGIN_REFUSALS = ("login_failed", "suspended", "throttled", "unavailable")


class AccountService:
    """What a protocol may ask of the accounts: each method logs ``client``
    in (sets ``client.account`` and tells the plugins' way) or says why not.

    On the client's own thread; calls for different clients overlap. A
    failed login may sleep there (throttling), never anyone else's thread.
    """

    def log_in(self, client: Client, account: str, password: str) -> Refusal | None:
        """Log ``client`` in to ``account`` with ``password``: None once it
        is logged in, else a Refusal whose reason is one of
        :data:`LOGIN_REFUSALS` and whose text says what to do."""
        raise NotImplementedError

    def log_in_certificate(self, client: Client, fingerprint: str, account: str = "") -> Refusal | None:
        """Log ``client`` in with the TLS client certificate whose SHA-256
        ``fingerprint`` (lower-case hex) it presented: to ``account``, or,
        with ``""``, to the account that certificate is registered with
        (SASL EXTERNAL)."""
        raise NotImplementedError
