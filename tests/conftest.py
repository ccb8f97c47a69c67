import os
import sys

import pytest

pytest_plugins = ["chatcore.testing"]

# Locust needs Python 3.11+. On 3.10 the smoke test is not collected at all
# (rather than skipped); everywhere else a missing Locust fails it.
collect_ignore = ["test_loadtest_smoke.py"] if sys.version_info < (3, 11) else []


@pytest.fixture(scope="session", autouse=True)
def _state_db_of_the_session(tmp_path_factory):
    """Servers that live longer than a test (module fixtures) keep their
    state in the session's folder, not in the working directory."""
    before = os.environ.get("CHATCORE_STATE_DB")
    os.environ["CHATCORE_STATE_DB"] = str(tmp_path_factory.mktemp("state") / "chatcore-state.db")
    yield
    if before is None:
        del os.environ["CHATCORE_STATE_DB"]
    else:
        os.environ["CHATCORE_STATE_DB"] = before


@pytest.fixture(autouse=True)
def _state_db_of_its_own(tmp_path_factory, monkeypatch):
    """Every test's servers keep their state (bans, mutes, accounts) in a
    database of the test's own, not in ./chatcore-state.db where one test's
    ban would refuse the next test's clients. ``--state-db`` still wins."""
    # Not in tmp_path: tests check what their servers leave there.
    monkeypatch.setenv("CHATCORE_STATE_DB", str(tmp_path_factory.mktemp("state") / "chatcore-state.db"))


@pytest.fixture
def connect():
    """``connect(server, nick, source="127.0.0.1")``: a native client, named
    ``nick``, from the loopback address ``source``; all closed at the end."""
    # Imported here: chatcore.testing is a pytest plugin (above), which
    # pytest must import first to rewrite its assertions.
    from chatcore.testing import LineClient

    clients: list[LineClient] = []

    def make(server, nick: str, source: str = "127.0.0.1") -> LineClient:
        client = LineClient(server.address, source=source)
        clients.append(client)
        client.sync()
        client.send(f"/nick {nick}")
        client.expect(f"* you are now known as {nick}")
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def chat_runs():
    """``chat_runs(server)``: a list that gets, from then on, the texts of
    each run of chat ``server`` publishes together (``broadcast_messages``:
    the chat lines of one read from a client that is not paced)."""

    def record(server) -> list[list[str]]:
        runs: list[list[str]] = []
        broadcast_messages = server.broadcast_messages

        def recorded(messages) -> None:
            runs.append([message.text for message in messages])
            broadcast_messages(messages)

        server.broadcast_messages = recorded
        return runs

    return record
