"""examples/chatcore-hello, the toy protocol docs/plugins.md walks through,
over real sockets: the front-end contract holds for a protocol of 60 lines
(the engine runs the password, the nickname rules, pacing, the login
deadline and the limits; the protocol only says it its way)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from chatcore.engine import gate
from chatcore.testing import LineClient, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chatcore-hello" / "chatcore_hello.py"
SECRET = "open-sesame-42"


@pytest.fixture(scope="module")
def hello() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chatcore_hello", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clients():
    made: list[LineClient] = []

    def connect(address: tuple[str, int]) -> LineClient:
        client = LineClient(address)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def start(factory, hello: ModuleType, *args: str):  # type: ignore[no-untyped-def]
    listen = ["--listen", "hello://127.0.0.1:0", "--listen", "tcp://127.0.0.1:0"]
    server = factory(*listen, *args, plugins=[hello])
    return server, server.listener("hello").address, server.listener("tcp").address


def test_hello_clients_chat_with_native_ones(chat_server_factory, hello, clients):
    server, hello_address, tcp_address = start(chat_server_factory, hello)
    native = clients(tcp_address)
    native.sync()
    alice = clients(hello_address)
    assert alice.readline() == "# say HELLO NICK [PASSWORD]"
    alice.send("hi")  # before HELLO: nothing is said
    assert alice.readline() == "! say HELLO NICK [PASSWORD] first"
    alice.send("HELLO alice")
    native.expect("* alice joined")
    alice.send("hello, nc")
    native.expect("<alice> hello, nc")
    native.send("hello, alice")
    alice.expect("guest-1: hello, alice")
    native.send("/quit bye")
    alice.expect("- guest-1")
    assert [client.nick for client in server.registry] == ["alice"]


def test_the_engine_checks_the_password_and_the_nickname(chat_server_factory, hello, clients, tmp_path, monkeypatch):
    monkeypatch.setattr(gate, "SECRET_DELAY", 0.01)
    password = tmp_path / "password"
    password.write_text(SECRET + "\n", encoding="utf-8")
    server, hello_address, tcp_address = start(chat_server_factory, hello, "--password-file", str(password))
    bob = clients(tcp_address)
    bob.readline()
    bob.send(f"/pass {SECRET}")
    bob.send("/nick bob")
    bob.expect("* you are now known as bob")
    alice = clients(hello_address)
    alice.readline()
    alice.send("HELLO alice")
    assert alice.readline() == "! password required"
    alice.send("HELLO alice wrong")
    assert alice.readline() == "! wrong password"
    alice.send(f"HELLO bob {SECRET}")
    assert alice.readline() == "! nickname 'bob' is taken"
    alice.send(f"HELLO no/good {SECRET}")
    assert alice.readline().startswith("! invalid nickname 'no/good'")
    alice.send(f"HELLO alice {SECRET}")
    bob.expect("* alice joined")
    assert server.gate.failures["password"].record("127.0.0.1") == 2  # the wrong one, counted by the gate


def test_the_engine_closes_a_connection_that_never_says_hello(chat_server_factory, hello, clients):
    server, hello_address, _ = start(chat_server_factory, hello, "--login-timeout", "0.5")
    silent = clients(hello_address)
    assert silent.readline() == "# say HELLO NICK [PASSWORD]"
    lines = silent.wait_closed(timeout=10)
    assert any(line.startswith("! bye: not logged in within 0.5 seconds") for line in lines)
    wait_for(lambda: not server.connections, message="the connection forgotten")
