"""The api plugin over real HTTP against a running server: every endpoint,
tokens and scopes, bad input, limits, and schemathesis against the served
OpenAPI document."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
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
from redis_support import RedisServer
from test_redis import linked
from test_tls import issue
from test_web import trickle_headers

from chatcore import UsageError, hookimpl
from chatcore.cli import main
from chatcore.engine.server import ChatServer
from chatcore.hooks import PluginError
from chatcore.plugins import api as api_module
from chatcore.routes import HttpError, HttpRequest, Route
from chatcore.testing import LineClient, ServerFactory, ServerProcess, wait_for

READ = "read-token-0123456789abcdefghij"
POST = "post-token-0123456789abcdefghij"
ADMIN = "admin-token-0123456789abcdefghi"
MODERATE = "mod-token-0123456789abcdefghijk"
TOKENS = [
    f"reader:read:{api_module.hash_token(READ)}",
    f"poster:post:{api_module.hash_token(POST)}",
    f"boss:admin:{api_module.hash_token(ADMIN)}",
    f"mod:moderate:{api_module.hash_token(MODERATE)}",
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
    server: ChatServer | ServerProcess,
    method: str,
    path: str,
    token: str | None = None,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    host, port = server.addresses["http"] if isinstance(server, ServerProcess) else server.listener("http").address
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

    def connect(server: ChatServer, nick: str = "", source: str | None = None) -> LineClient:
        client = LineClient(server.listener("tcp").address, source=source)
        made.append(client)
        if nick:
            client.send(f"/nick {nick}")
            client.expect(f"* you are now known as {nick}")
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
        *api_module.MODERATION_PATHS,
    }
    assert set(api_module.MODERATION_PATHS) == {
        "/api/rooms/{room}/kicks",
        "/api/rooms/{room}/bans",
        "/api/rooms/{room}/bans/{mask}",
        "/api/mutes",
        "/api/mutes/{nick}",
        "/api/kicks",
        "/api/bans",
        "/api/bans/{network}",
        "/api/connections",
        "/api/connections/{id}",
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


def test_a_rooms_history_pages_back_by_message_id(api, native):
    server = api()
    alice = native(server)
    for number in range(7):
        alice.send(f"line {number}")
    alice.sync()
    wait_for(lambda: len(call(server, "GET", "/api/rooms/lobby/history", READ)[1]["events"]) == 7)
    status, page, _ = call(server, "GET", "/api/rooms/lobby/history?limit=3", READ)
    assert status == 200
    assert [e["text"] for e in page["events"]] == ["line 4", "line 5", "line 6"]
    oldest = page["events"][0]["msgid"]
    status, page, _ = call(server, "GET", f"/api/rooms/lobby/history?before={oldest}&limit=3", READ)
    assert [e["text"] for e in page["events"]] == ["line 1", "line 2", "line 3"]
    status, page, _ = call(server, "GET", f"/api/rooms/lobby/history?after={oldest}", READ)
    assert [e["text"] for e in page["events"]] == ["line 5", "line 6"]
    status, page, _ = call(server, "GET", "/api/rooms/lobby/history?after=0&limit=2", READ)  # a time: the oldest
    assert [e["text"] for e in page["events"]] == ["line 0", "line 1"]
    newest = page["events"][-1]["msgid"]
    status, page, _ = call(server, "GET", f"/api/rooms/lobby/history?after={newest}&before={oldest}", READ)
    assert [e["text"] for e in page["events"]] == ["line 2", "line 3"]
    for query, problem in [
        ("before=nonsense", "before= must be a message ID"),
        ("limit=0", "limit= must be a whole number"),
    ]:
        status, error, _ = call(server, "GET", f"/api/rooms/lobby/history?{query}", READ)
        assert status == 400, query
        assert problem in error["error"]


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
        (b'{"text": "a\\nb"}', {}, 422, "text: control characters (a line break, a tab ...) are not allowed"),
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
    apply = api_module.chatcore_reload(
        server, argparse.Namespace(**{**vars(server.config.options), "api_token": [TOKENS[1]]})
    )
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


# -- moderation and administration ------------------------------------------------


def arrived_as(nick: str) -> Callable[[str], bool]:
    """The room's notice of a client that arrived under ``nick`` (its first
    line was ``/nick NICK``), or of a guest renamed to it (a later /nick)."""
    return lambda line: line == f"* {nick} joined" or line.endswith(f" is now known as {nick}")


def alice_and_bob(server: ChatServer, native: Callable[..., LineClient]) -> tuple[LineClient, LineClient]:
    """alice, and bob from an address of his own (127.0.0.2: the API's
    callers come from 127.0.0.1), both in lobby."""
    alice = native(server, "alice")
    bob = native(server, "bob", source="127.0.0.2")
    alice.expect(arrived_as("bob"))
    return alice, bob


def test_a_room_kick_ban_and_mute_reach_native_users(api, native):
    server = api()
    alice, bob = alice_and_bob(server, native)
    assert call(server, "POST", "/api/rooms/lobby/kicks", READ, body={"nick": "bob"})[0] == 403
    status, done, _ = call(server, "POST", "/api/rooms/lobby/kicks", MODERATE, body={"nick": "bob", "reason": "spam"})
    assert (status, done["nick"]) == (200, "bob")
    bob.expect("* you were kicked out of lobby by mod (spam)")
    alice.expect("* bob was kicked out by mod (spam)")
    # Unknown nick or room: 404, and what to do.
    status, error, _ = call(server, "POST", "/api/rooms/lobby/kicks", MODERATE, body={"nick": "nobody"})
    assert status == 404
    assert "GET /api/rooms/lobby/members" in error["error"]
    status, error, _ = call(server, "POST", "/api/rooms/nowhere/kicks", MODERATE, body={"nick": "bob"})
    assert status == 404
    assert "no room nowhere" in error["error"]
    status, error, _ = call(server, "POST", "/api/rooms/lobby/kicks", MODERATE, body={"nick": "a b", "x": 1})
    assert status == 422
    assert "bad request body" in error["error"]

    # A room ban puts out the members it matches; they cannot come back until it is lifted.
    bob.send("/join lobby")
    alice.expect("* bob joined")
    body = {"mask": "bob", "reason": "go away"}
    status, done, _ = call(server, "POST", "/api/rooms/lobby/bans", MODERATE, body=body)
    assert (status, done["mask"], done["kicked"]) == (201, "bob!*@*", ["bob"])
    bob.expect("* you were kicked out of lobby by mod (go away)")
    alice.expect(lambda line: "+b bob!*@*" in line)
    bob.send("/join lobby")
    bob.expect(lambda line: line.startswith("! ") and "banned" in line)
    status, bans, _ = call(server, "GET", "/api/rooms/lobby/bans", MODERATE)
    assert status == 200
    assert [ban["mask"] for ban in bans["bans"]] == ["bob!*@*"]
    assert call(server, "POST", "/api/rooms/lobby/bans", MODERATE, body={"mask": "a b"})[0] == 422
    assert call(server, "DELETE", "/api/rooms/lobby/bans/carol", MODERATE)[0] == 404
    assert call(server, "DELETE", "/api/rooms/lobby/bans/bob!*@*", MODERATE)[0] == 200
    bob.send("/join lobby")
    alice.expect("* bob joined")

    # A mute, with its reason, until it is lifted.
    body = {"nick": "bob", "duration": 60, "reason": "calm down"}
    status, done, _ = call(server, "POST", "/api/mutes", MODERATE, body=body)
    assert (status, done["nick"]) == (201, "bob")
    bob.expect("* you are muted by an operator for 1m: calm down")
    bob.send("still here")
    bob.expect(lambda line: line.startswith("! you are muted by an operator"))
    assert [mute["nick"] for mute in call(server, "GET", "/api/mutes", MODERATE)[1]["mutes"]] == ["bob"]
    assert call(server, "POST", "/api/mutes", MODERATE, body={"nick": "nobody"})[0] == 404
    assert call(server, "DELETE", "/api/mutes/bob", MODERATE)[0] == 200
    bob.expect("* you are no longer muted")
    bob.send("free again")
    alice.expect("<bob> free again")
    assert call(server, "DELETE", "/api/mutes/bob", MODERATE)[0] == 404


def test_an_admin_kicks_and_bans_from_the_server(api, native):
    server = api()
    alice, bob = alice_and_bob(server, native)
    assert call(server, "POST", "/api/kicks", MODERATE, body={"nick": "bob"})[0] == 403
    status, done, _ = call(server, "POST", "/api/kicks", ADMIN, body={"nick": "bob", "reason": "enough"})
    assert (status, done["nick"]) == (200, "bob")
    assert bob.wait_closed()[-1] == "! disconnected: kicked by boss: enough"
    alice.expect("* bob left (kicked by boss: enough)")
    assert call(server, "POST", "/api/kicks", ADMIN, body={"nick": "bob"})[0] == 404

    bob = native(server, "bob", source="127.0.0.2")
    alice.expect(arrived_as("bob"))
    # Never the caller's own address (the admin page would lock itself out).
    status, error, _ = call(server, "POST", "/api/bans", ADMIN, body={"target": "alice"})
    assert status == 409
    assert "your own address" in error["error"]
    body = {"target": "bob", "duration": 600, "reason": "flooding"}
    status, done, _ = call(server, "POST", "/api/bans", ADMIN, body=body)
    assert (status, done["network"], done["disconnected"]) == (201, "127.0.0.2/32", ["bob"])
    assert bob.wait_closed()[-1] == "! disconnected: banned by boss: flooding"
    refused = LineClient(server.listener("tcp").address, source="127.0.0.2")
    try:
        assert refused.wait_closed() == ["! you are banned from this server: flooding"]
    finally:
        refused.close()
    status, bans, _ = call(server, "GET", "/api/bans", ADMIN)
    assert [(ban["network"], ban["reason"], ban["by"]) for ban in bans["bans"]] == [
        ("127.0.0.2/32", "flooding", "boss")
    ]
    assert call(server, "POST", "/api/bans", ADMIN, body={"target": "nobody"})[0] == 404
    assert call(server, "DELETE", "/api/bans/10.0.0.0%2F8", ADMIN)[0] == 404
    assert call(server, "DELETE", "/api/bans/127.0.0.2%2F32", ADMIN)[0] == 200
    native(server, "bob", source="127.0.0.2")
    alice.expect(arrived_as("bob"))


def test_an_admin_lists_and_ends_connections(api, native):
    server = api()
    alice = native(server, "alice")
    alice.send("hello")
    alice.sync()
    assert call(server, "GET", "/api/connections", MODERATE)[0] == 403
    status, listed, _ = call(server, "GET", "/api/connections", ADMIN)
    assert status == 200
    [mine] = [c for c in listed["connections"] if c["nick"] == "alice"]
    assert (mine["protocol"], mine["rooms"], mine["address"], mine["tls"]) == ("native", ["lobby"], "127.0.0.1", False)
    assert mine["bytes_in"] > len("hello")
    assert mine["bytes_out"] > 0
    assert mine["queued"] == 0
    assert any(c["protocol"] == "api" for c in listed["connections"])  # the caller's own
    status, done, _ = call(server, "DELETE", f"/api/connections/{mine['id']}?reason=maintenance", ADMIN)
    assert (status, done["nick"]) == (200, "alice")
    assert alice.wait_closed()[-1] == "! disconnected: kicked by boss: maintenance"
    assert call(server, "DELETE", f"/api/connections/{mine['id']}", ADMIN)[0] == 404
    assert call(server, "DELETE", "/api/connections/x", ADMIN)[0] == 404
    status, error, _ = call(server, "DELETE", "/api/connections/1?reason=%0a", ADMIN)
    assert (status, error["error"]) == (422, "bad reason: control characters are not allowed")


@pytest.mark.slow
def test_moderation_reaches_users_on_another_server_of_a_cluster(tmp_path):
    """The API on one server of a Redis cluster kicks a user on another out
    of a room and out of the server, as the operators' commands do."""
    redis = RedisServer(tmp_path).start()
    common = ("--redis-url", redis.url, "--redis-cluster", f"api-{os.getpid()}", "--redis-timeout", "1")
    tokens = [arg for token in TOKENS for arg in ("--api-token", token)]
    one = ServerProcess(
        "--plugins", "redis,api", "--listen", "tcp://127.0.0.1:0", "--listen", "http://127.0.0.1:0", *common, *tokens
    )  # fmt: skip
    two = ServerProcess("--plugins", "redis", "--listen", "tcp://127.0.0.1:0", *common)
    clients: list[LineClient] = []
    try:
        one.start()
        two.start()
        for process, nick in ((one, "alice"), (two, "bob")):
            client = LineClient(process.addresses["tcp"], timeout=10)
            clients.append(client)
            client.send(f"/nick {nick}")
            client.expect(f"* you are now known as {nick}")
        alice, bob = clients
        linked(bob, "bob", [alice])
        linked(alice, "alice", [bob])

        body = {"nick": "bob", "reason": "off topic"}
        status, done, _ = call(one, "POST", "/api/rooms/lobby/kicks", MODERATE, body=body)
        assert status == 200, done
        bob.expect("* you were kicked out of lobby by mod (off topic)")
        alice.expect("* bob was kicked out by mod (off topic)")

        bob.send("/join lobby")
        alice.expect("* bob joined")
        status, done, _ = call(one, "POST", "/api/kicks", ADMIN, body={"nick": "bob", "reason": "enough"})
        assert (status, done["done"]) == (200, "bob is on another server: the kick went there")
        assert bob.wait_closed()[-1] == "! disconnected: kicked by boss: enough"
        alice.expect("* bob left (kicked by boss: enough)")
        two.expect_log(re.compile(r"operator api:boss \(boss\) kicked bob from 127\.0\.0\.1: enough"))
        assert call(one, "POST", "/api/kicks", ADMIN, body={"nick": "bob"})[0] == 404
    finally:
        for client in clients:
            client.close()
        for process in (one, two):
            if process.proc is not None:
                process.stop()
        redis.stop()


def test_the_admin_page_is_served_with_its_policy_and_stats_have_its_counts(api):
    """The page itself is tested in Chromium (tests/test_admin_page.py)."""
    server = api()
    host, port = server.listener("http").address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        for path, kind in (
            ("/admin/", "text/html"),
            ("/admin", "text/html"),
            ("/admin/admin.js", "text/javascript"),
            ("/admin/admin.css", "text/css"),
        ):
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, path
            assert response.getheader("Content-Type", "").startswith(kind)
            assert "script-src 'self'" in response.getheader("Content-Security-Policy", "")
            assert response.getheader("Referrer-Policy") == "no-referrer"
            assert b"http://" not in body
            assert b"https://" not in body  # nothing from elsewhere
        conn.request("POST", "/admin/", body=b"{}")
        response = conn.getresponse()
        response.read()
        assert (response.status, response.getheader("Allow")) == (405, "GET, HEAD")
        conn.request("GET", "/admin/../api/stats")
        response = conn.getresponse()
        response.read()
        assert response.status == 404
    finally:
        conn.close()
    status, stats, _ = call(server, "GET", "/api/stats", READ)
    assert status == 200
    assert isinstance(stats["disconnects"], dict)
    assert isinstance(stats["refusals"], dict)


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
    with pytest.raises(ValueError, match="the paths under /admin/ are the api plugin's own"):
        Route("/admin/extra/", lambda request: (200, {}))  # the admin page's paths would hide it
    with pytest.raises(ValueError, match="starts and ends"):
        Route("/hooks", lambda request: (200, {}))


def test_two_plugins_serving_one_prefix_stop_the_start(chat_server_factory):
    with pytest.raises(PluginError, match="two plugins serve the HTTP paths under /echo/"):
        chat_server_factory("--plugins", "api", "--listen", "http://127.0.0.1:0", plugins=[EchoRoutes(), EchoRoutes()])
