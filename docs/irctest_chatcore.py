"""A pytest plugin for irctest (https://github.com/progval/irctest) that lets
its tests needing services (accounts) run against chatcore with irctest's
external-server controller (docs/irc.md, "Conformance: irctest").

irctest registers an account through a services package (NickServ), which
the external-server controller does not have; chatcore's accounts are
built in. So, for the run: waiting for services is nothing, and
``registerUser`` connects as the account's nick and sends chatcore's
``REGISTER PASSWORD`` (the accounts plugin's ``/register``). chatcore
answers either way with a NOTICE, ``registered the account NAME; ...`` or
``error: ...``: a refusal fails the test at once with the server's words
(it used to wait for ever). Give it to pytest from irctest's checkout::

    PYTHONPATH=/path/to/chatcore/docs python -m pytest -p irctest_chatcore ...

Not part of chatcore's own tests (irctest is not on PyPI).
"""

from __future__ import annotations

import time
from typing import Any

from irctest.basecontrollers import BaseServerController  # type: ignore[import-not-found]

#: Seconds to wait for chatcore's answer to REGISTER.
ANSWER_TIMEOUT = 10.0


def _no_services(self: Any) -> None:
    """chatcore's accounts are built in: there is nothing to wait for."""


def _register(self: Any, case: Any, username: str, password: str | None = None) -> None:
    """Register ``username`` with ``password`` as chatcore does: ``REGISTER
    PASSWORD`` from a connection holding that nick; fail on a refusal."""
    assert password, "chatcore's accounts need a password"
    client = case.addClient(show_io=True)
    case.sendLine(client, f"NICK {username}")
    case.sendLine(client, "USER r e g :user")
    while case.getRegistrationMessage(client).command != "001":
        pass
    case.getMessages(client)
    case.sendLine(client, f"REGISTER {password}")
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while time.monotonic() < deadline:
        for message in case.getMessages(client):
            if message.command != "NOTICE" or len(message.params) < 2:
                continue
            text = message.params[1]
            if text.startswith("registered the account"):
                case.sendLine(client, "QUIT")
                case.assertDisconnected(client)
                return
            if text.startswith("error:"):
                raise AssertionError(f"chatcore refused to register {username}: {text}")
    raise AssertionError(f"chatcore did not answer REGISTER for {username} within {ANSWER_TIMEOUT:g} s")


def pytest_configure(config: Any) -> None:
    BaseServerController.wait_for_services = _no_services
    BaseServerController.registerUser = _register
