"""The api plugin over real HTTP against a running server: every endpoint,
tokens and scopes, bad input, limits, and schemathesis against the served
OpenAPI document."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from test_tls import issue
from test_web import trickle_headers

from chatcore import UsageError, hookimpl
from chatcore.cli import main
from chatcore.engine.server import ChatServer
from chatcore.hooks import PluginError
from chatcore.plugins import api as api_module
from chatcore.routes import HttpError, HttpRequest, Route
from chatcore.testing import LineClient, ServerFactory, wait_for

READ = "read-token-0123456789abcdefghij"
POST = "post-token-0123456789abcdefghij"
ADMIN = "admin-token-0123456789abcdefghi"
TOKENS = [
    f"reader:read:{api_module.hash_token(READ)}",
    f"poster:post:{api_module.hash_token(POST)}",
    f"boss:admin:{api_module.hash_token(ADMIN)}",
]


class RefusesSecrets:
    """A filter: a message saying "secret" is rejected."""

    @hookimpl
    def chatcore_message(self, message: Any) -> None:
        if "secret" in message.text:
            message.reject("no secrets here")


@pytest.fixture
def api(chat_server_factory: ServerFactory) -> Callable[..., ChatServer]:
    def start(*args: str) -> ChatServer:
        tokens = [arg for token in TOKENS for arg in ("--api-token", token)]
        return chat_server_factory(
            "--plugins",
            "api,history",
            "--listen",
            "http://127.0.0.1:0",
            "--listen",
            "tcp://127.0.0.1:0",
            *tokens,
            *args,
            plugins=[RefusesSecrets()],
        )

    return start


def call(
    server: ChatServer,
    method: str,
    path: str,
    token: str | None = None,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    host, port = server.listener("http").address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    assert response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(payload), response


@pytest.fixture
def native() -> Iterator[Callable[[ChatServer], LineClient]]:
    """Native clients of a server's tcp:// listener, closed at teardown."""
    made: list[LineClient] = []

    def connect(server: ChatServer) -> LineClient:
        client = LineClient(server.listener("tcp").address)
        made.append(client)
        client.sync()
        return client

    yield connect
    for client in made:
        client.close()


def test_the_openapi_document_is_served_and_describes_every_endpoint(api):
    server = api()
    status, document, _ = call(server, "GET", "/api/openapi.json")
    assert status == 200
    assert document == json.loads(json.dumps(api_module.OPENAPI))
    assert set(document["paths"]) == {
        "/api/rooms",
        "/api/rooms/{room}/members",
        "/api/rooms/{room}/history",
        "/api/rooms/{room}/messages",
        "/api/users/{nick}/messages",
        "/api/stats",
    }


def test_rooms_members_and_stats(api, native):
    server = api()
    alice = native(server)
    alice.send("/nick alice")
    alice.expect("* you are now known as alice")
    status, rooms, _ = call(server, "GET", "/api/rooms", READ)
    assert (status, rooms) == (200, {"rooms": [{"room": "lobby", "members": 1}]})
    status, members, _ = call(server, "GET", "/api/rooms/lobby/members", READ)
    assert (status, members) == (200, {"room": "lobby", "members": ["alice"]})
    status, error, _ = call(server, "GET", "/api/rooms/nowhere/members", READ)
    assert status == 404
    assert "no room nowhere" in error["error"]
    status, stats, _ = call(server, "GET", "/api/stats", READ)
    assert status == 200
    assert stats["rooms"] == 1
    assert stats["memberships"] == 1
    assert stats["connections"] >= 2


def test_a_bot_speaks_in_a_room_through_the_filters_and_into_history(api, native):
    server = api()
    alice = native(server)
    status, sent, _ = call(server, "POST", "/api/rooms/lobby/messages", POST, body={"text": "deploy done"})
    assert (status, sent) == (201, {"nick": "poster", "text": "deploy done"})
    alice.expect("<poster> deploy done")
    status, history, _ = call(server, "GET", "/api/rooms/lobby/history", READ)
    assert status == 200
    assert [(e["nick"], e["text"]) for e in history["events"]] == [("poster", "deploy done")]
    # A filter's refusal is the answer, and nobody hears it.
    status, error, _ = call(server, "POST", "/api/rooms/lobby/messages", POST, body={"text": "the secret"})
    assert status == 422
    assert error["error"] == "not sent: no secrets here"
    status, error, _ = call(server, "POST", "/api/rooms/empty/messages", POST, body={"text": "anyone?"})
    assert status == 404
    assert "no room empty" in error["error"]
    alice.send("/ping")
    line = alice.expect(lambda line: "pong" in line or "secret" in line)
    assert "secret" not in line


def test_a_bot_sends_a_private_message_and_never_under_a_connected_persons_nick(api, native):
    server = api()
    alice = native(server)
    alice.send("/nick alice")
    alice.expect("* you are now known as alice")
    status, sent, _ = call(server, "POST", "/api/users/alice/messages", POST, body={"text": "psst"})
    assert (status, sent) == (201, {"nick": "poster", "text": "psst"})
    alice.expect("*poster* psst")
    status, error, _ = call(server, "POST", "/api/users/nobody/messages", POST, body={"text": "psst"})
    assert status == 404
    assert "no such nick" in error["error"]
    alice.send("/nick poster")
    alice.expect("* you are now known as poster")
    status, error, _ = call(server, "POST", "/api/rooms/lobby/messages", POST, body={"text": "it is me"})
    assert status == 409
    assert "connected person's nick" in error["error"]


def test_tokens_and_scopes(api):
    server = api()
    status, error, response = call(server, "GET", "/api/rooms")
    assert status == 401
    assert "Authorization: Bearer" in error["error"]
    assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
    status, error, _ = call(server, "GET", "/api/rooms", "not-a-token-at-all-0123456789")
    assert status == 401
    assert "unknown token" in error["error"]
    status, error, _ = call(server, "GET", "/api/rooms", headers={"Authorization": f"Basic {READ}"})
    assert status == 401
    status, error, _ = call(server, "POST", "/api/rooms/lobby/messages", READ, body={"text": "hi"})
    assert status == 403
    assert "lacks the scope 'post'" in error["error"]
    status, error, _ = call(server, "GET", "/api/stats", POST)
    assert status == 403
    assert "'read'" in error["error"]
    assert call(server, "GET", "/api/stats", ADMIN)[0] == 200  # admin may do everything


def test_unknown_paths_and_methods(api):
    server = api()
    status, error, _ = call(server, "GET", "/api/nothing", READ)
    assert status == 404
    assert "/api/openapi.json" in error["error"]
    status, error, response = call(server, "DELETE", "/api/rooms", READ)
    assert status == 405
    assert response.getheader("Allow") == "GET"
    status, error, _ = call(server, "GET", "/", READ)
    assert status == 404


@pytest.mark.parametrize(
    "case",
    [
        (b'{"text": ', {}, 400, "not JSON"),
        (b"[" * 50000, {}, 413, "larger than"),
        (b'"just a string"', {}, 422, "is not of type 'object'"),
        (b'{"text": 5}', {}, 422, "text: 5 is not of type 'string'"),
        (b"{}", {}, 422, "'text' is a required property"),
        (b'{"text": "hi", "extra": 1}', {}, 422, "'extra' was unexpected"),
        (b'{"text": ""}', {}, 422, "should be non-empty"),
        (b'{"text": "a\\nb"}', {}, 422, "does not match"),
        (b'{"text": "\\ud800"}', {}, 422, "lone surrogate"),
        (('{"text": "' + "\u00e9" * 3000 + '"}').encode(), {}, 422, "6000 bytes, and the limit is 4096"),
        (b'{"text": "hi"}', {"Content-Type": "text/plain"}, 415, "application/json"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message_and_nothing_is_said(api, native, case):
    body, headers, status, says = case
    server = api()
    alice = native(server)
    got, error, _ = call(server, "POST", "/api/rooms/lobby/messages", POST, body=body, headers=headers)
    assert got == status
    assert says in error["error"]
    alice.send("/ping")
    assert "poster" not in alice.expect(lambda line: "pong" in line or "poster" in line)


def test_a_huge_chunked_body_is_refused_as_it_arrives(api):
    server = api()
    with socket.create_connection(server.listener("http").address, timeout=5) as sock:
        sock.sendall(
            b"POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + POST.encode() + b"\r\n\r\n"
        )
        answer = b""
        try:
            for _ in range(100):
                sock.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
        except OSError:
            pass  # closed on us, as it should
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_rate_limit_answers_429_with_retry_after(api):
    server = api("--api-rate", "0.5", "--api-burst", "2")
    assert call(server, "GET", "/api/rooms", READ)[0] == 200
    assert call(server, "GET", "/api/rooms", READ)[0] == 200
    status, error, response = call(server, "GET", "/api/rooms", READ)
    assert status == 429
    assert "too many requests" in error["error"]
    assert response.getheader("Retry-After") in ("1", "2")
    assert call(server, "GET", "/api/rooms", POST)[0] == 403  # another token's bucket is its own


def test_keep_alive_serves_several_requests_on_one_connection(api):
    server = api()
    host, port = server.listener("http").address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", "/api/rooms", headers={"Authorization": f"Bearer {READ}"})
            response = conn.getresponse()
            assert response.status == 200
            response.read()
    finally:
        conn.close()


def test_a_slow_request_is_answered_408_and_an_idle_connection_closed(api, monkeypatch):
    monkeypatch.setattr(api_module, "REQUEST_TIMEOUT", 0.5)
    monkeypatch.setattr(api_module, "IDLE_TIMEOUT", 0.5)
    server = api()
    address = server.listener("http").address
    assert trickle_headers(address).startswith(b"HTTP/1.1 408 ")
    with socket.create_connection(address, timeout=5) as sock:
        assert sock.recv(100) == b""  # idle: closed without a word
    wait_for(lambda: len(server.connections) == 0, message="API connections closed")


def test_token_entries_are_checked():
    digest = api_module.hash_token(READ)
    with pytest.raises(UsageError, match="NAME:SCOPES:HASH"):
        api_module.parse_tokens(["nohash"])
    with pytest.raises(UsageError, match="scopes are one or more of"):
        api_module.parse_tokens([f"bot:write:{digest}"])
    with pytest.raises(UsageError, match="64 hex digits"):
        api_module.parse_tokens(["bot:read:sha256$abc"])
    with pytest.raises(UsageError, match="two tokens have this name"):
        api_module.parse_tokens([f"bot:read:{digest}", f"BOT:post:{digest}"])
    with pytest.raises(UsageError, match="nick"):
        api_module.parse_tokens([f"a bot:read:{digest}"])
    (token,) = api_module.parse_tokens([f"bot:read+post:{digest}"])
    assert token.scopes == {"read", "post"}
    assert api_module.find_token([token], READ) is token
    assert api_module.find_token([token], POST) is None


def test_a_reload_replaces_the_tokens(api):
    server = api()
    assert call(server, "GET", "/api/rooms", READ)[0] == 200
    apply = api_module.chatcore_reload(server, argparse.Namespace(api_token=[TOKENS[1]]))
    apply()
    assert call(server, "GET", "/api/rooms", READ)[0] == 401  # revoked


def test_hash_token_makes_a_token_and_its_hash(capsys, monkeypatch):
    assert main(["hash-token"]) == 0
    token_line, hash_line = capsys.readouterr().out.splitlines()
    token = token_line.removeprefix("token: ")
    assert hash_line.split()[-1] == api_module.hash_token(token)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(token + "\n"))
    assert main(["hash-token", "--stdin"]) == 0
    assert capsys.readouterr().out.strip() == api_module.hash_token(token)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("short\n"))
    assert main(["hash-token", "--stdin"]) == 1
    assert "at least 20 characters" in capsys.readouterr().err


def test_the_token_is_never_logged(api, caplog):
    server = api()
    with caplog.at_level("DEBUG"):
        call(server, "GET", "/api/rooms", "wrong-token-0123456789abcdefg")
        call(server, "POST", "/api/rooms/lobby/messages", POST, body={"text": "hi"})
    assert "unknown token" in caplog.text
    assert "wrong-token" not in caplog.text
    assert POST not in caplog.text


def test_schemathesis_finds_no_failure_against_the_served_document(api, native, tmp_path):
    """schemathesis generates requests from /api/openapi.json (valid and not)
    and checks every answer against the document: no 5xx, documented
    status codes and content types, bodies that match their schemas."""
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis is not None, "pip install 'chatcore[test]' installs schemathesis"
    server = api("--api-rate", "10000", "--api-burst", "10000")
    native(server)
    host, port = server.listener("http").address
    run = subprocess.run(
        [
            schemathesis,
            "run",
            f"http://{host}:{port}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {ADMIN}",
            "--max-examples",
            "10",
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # its .schemathesis/ folder goes there
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_the_api_over_tls(chat_server_factory, tmp_path):
    ca = trustme.CA()
    cert, key = issue(ca, tmp_path, "127.0.0.1")
    server = chat_server_factory(
        "--plugins", "api", "--listen", "https://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
        "--api-token", TOKENS[0],
    )  # fmt: skip
    context = ssl.create_default_context()
    ca.configure_trust(context)
    host, port = server.listener("https").address
    conn = http.client.HTTPSConnection(host, port, timeout=5, context=context)
    try:
        conn.request("GET", "/api/rooms", headers={"Authorization": f"Bearer {READ}"})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"rooms": []}
    finally:
        conn.close()


def test_a_failing_endpoint_answers_500_and_the_server_goes_on(api, monkeypatch):
    server = api()

    def broken(self: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api_module.ApiProtocol, "_stats", broken)
    status, error, _ = call(server, "GET", "/api/stats", READ)
    assert status == 500
    assert "log says why" in error["error"]
    assert call(server, "GET", "/api/rooms", READ)[0] == 200


class EchoRoutes:
    """Two routes of a plugin beside /api/: one echoes the request, one
    (a secret path) fails."""

    @hookimpl
    def chatcore_api_routes(self, server: ChatServer) -> list[Route]:
        def echo(request: HttpRequest) -> tuple[int, Any]:
            if request.method != "POST":
                raise HttpError(405, "POST only", [(b"Allow", b"POST")])
            return 202, {
                "path": request.path,
                "query": request.query,
                "type": request.content_type,
                "body": request.body.decode(),
                "from": request.client.address[0],
            }

        def broken(request: HttpRequest) -> tuple[int, Any]:
            raise RuntimeError("a bug")

        return [Route("/echo/", echo, "echoes"), Route("/private/", broken, secret_path=True)]


def test_a_plugin_serves_paths_beside_the_api(chat_server_factory, caplog):
    server = chat_server_factory(
        "--plugins", "api", "--listen", "http://127.0.0.1:0", "--api-token", TOKENS[0], plugins=[EchoRoutes()]
    )
    body = {"a": 1}
    status, answer, _ = call(server, "POST", "/echo/x%20y?k=v", body=body)
    assert status == 202
    assert answer == {
        "path": "/echo/x%20y",
        "query": "k=v",
        "type": "application/json",
        "body": json.dumps(body),
        "from": "127.0.0.1",
    }
    status, error, response = call(server, "GET", "/echo/x")
    assert (status, error, response.getheader("Allow")) == (405, {"error": "POST only"}, "POST")
    # The API's own paths are unchanged, and its limits hold for the plugin's too.
    assert call(server, "GET", "/api/rooms", READ)[0] == 200
    assert call(server, "POST", "/echo/x", body=b"x" * (api_module.MAX_BODY_BYTES + 1))[0] == 413
    with caplog.at_level("DEBUG"):
        status, error, _ = call(server, "POST", "/private/the-secret-part", body={})
    assert status == 500
    assert "/private/..." in caplog.text
    assert "the-secret-part" not in caplog.text


def test_routes_are_checked():
    with pytest.raises(ValueError, match="api plugin's own"):
        Route("/api/mine/", lambda request: (200, {}))
    with pytest.raises(ValueError, match="starts and ends"):
        Route("/hooks", lambda request: (200, {}))


def test_two_plugins_serving_one_prefix_stop_the_start(chat_server_factory):
    with pytest.raises(PluginError, match="two plugins serve the HTTP paths under /echo/"):
        chat_server_factory("--plugins", "api", "--listen", "http://127.0.0.1:0", plugins=[EchoRoutes(), EchoRoutes()])
