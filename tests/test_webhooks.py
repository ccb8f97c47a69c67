"""The webhooks plugin: incoming webhooks over real HTTP into a running
server, outgoing ones to a real local HTTP receiver that fails, hangs and
recovers (nothing lost, each event under one idempotency key, the
signature verifies, the chat goes on), the dead-letter log, and reloads."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import http.server
import json
import re
import signal
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_metrics import scrape, value

from chatcore import UsageError
from chatcore.engine.server import ChatServer
from chatcore.events import Chat, Joined, Left, ModeChanged, RoomNotice, TopicChanged
from chatcore.plugins import webhooks
from chatcore.plugins.api import hash_token
from chatcore.reload import reload_configuration
from chatcore.testing import LineClient, ServerFactory, ServerProcess, wait_for

SECRET = "incoming-secret-0123456789abcdef"
SIGNING = "signing-secret-0123456789abcdef"
INCOMING = f"name=deploys room=lobby nick=deploybot hash={hash_token(SECRET)}"


# -- a real HTTP receiver ------------------------------------------------------------------


class Receiver:
    """A ``ThreadingHTTPServer`` on 127.0.0.1:0 that records every POST and
    answers as scripted: a status, or ``"hang"`` (no answer until
    :meth:`release`, or 10 s)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, str]] = []  # headers, body, what it was answered
        self.script: deque[int | str] = deque()
        self.default: int | str = 200
        #: A Retry-After header for the answers that are not 2xx, if any.
        self.retry_after: str | None = None
        self.released = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # kept alive, as most receivers do

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    action = receiver.script.popleft() if receiver.script else receiver.default
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, str(action)))
                if action == "hang":
                    receiver.released.wait(10)
                    self.close_connection = True
                    return
                assert isinstance(action, int)
                self.send_response(action)
                if receiver.retry_after is not None and not 200 <= action < 300:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def release(self) -> None:
        self.released.set()

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies answered 2xx, in order of arrival."""
        with self._lock:
            return [json.loads(body) for _headers, body, answer in self.requests if answer.startswith("2")]

    def attempts(self) -> list[tuple[dict[str, str], bytes, str]]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture
def native() -> Iterator[Callable[..., LineClient]]:
    made: list[LineClient] = []

    def connect(server: ChatServer, nick: str) -> LineClient:
        client = LineClient(server.listener("tcp").address)
        made.append(client)
        client.sync()
        client.send(f"/nick {nick}")
        client.sync()
        return client

    yield connect
    for client in made:
        client.close()


def outgoing(url: str, extra: str = "") -> str:
    return f"name=out url={url} secret={SIGNING} {extra}".strip()


@pytest.fixture
def serve(chat_server_factory: ServerFactory, tmp_path: Path) -> Callable[..., ChatServer]:
    """A server with the api and webhooks plugins, tcp:// and http://
    listeners, and timings in milliseconds."""

    def start(*args: str, plugins: str = "api,webhooks") -> ChatServer:
        return chat_server_factory(
            "--plugins", plugins, *(["--metrics-port", "0"] if "metrics" in plugins else []),
            "--listen", "tcp://127.0.0.1:0", "--listen", "http://127.0.0.1:0",
            "--webhook-timeout", "0.5", "--webhook-backoff", "0.01", "--webhook-max-backoff", "0.05",
            "--webhook-dead-letter", str(tmp_path / "dead.jsonl"),
            *args,
        )  # fmt: skip

    return start


def post(server: ChatServer, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
    host, port = server.listener("http").address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def dead_letters(server: ChatServer) -> list[dict[str, Any]]:
    state = server.config.data["webhooks"]
    assert state.dead_letters.flush()
    path = Path(state.dead_letters.path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- incoming ---------------------------------------------------------------------------------


def test_an_incoming_webhook_posts_lines_a_native_user_sees(serve, native):
    other = f"name=ci room=lobby usernames=yes hash={hash_token(SECRET + 'x')}"
    server = serve("--webhook-in", INCOMING, "--webhook-in", other)
    alice = native(server, "alice")

    status, answer = post(server, f"/hooks/{SECRET}", json.dumps({"text": "build 41 passed"}).encode())
    assert (status, answer) == (200, {"ok": True, "room": "lobby", "nick": "deploybot", "lines": 1})
    assert alice.expect("<deploybot> build 41 passed")

    # Slack's form encoding, several lines, and a username the hook allows.
    form = urllib.parse.urlencode({"payload": json.dumps({"text": "one\n\ntwo", "username": "jenkins"})})
    status, answer = post(server, f"/hooks/{SECRET}x", form.encode(), "application/x-www-form-urlencoded")
    assert (status, answer["nick"], answer["lines"]) == (200, "jenkins", 2)
    assert alice.expect("<jenkins> one")
    assert alice.expect("<jenkins> two")
    # The first hook does not allow usernames: its own nick is used.
    body = json.dumps({"text": "hi", "username": "alice2"}).encode()
    assert post(server, f"/hooks/{SECRET}", body)[1]["nick"] == "deploybot"
    assert alice.expect("<deploybot> hi")


def test_bad_input_to_an_incoming_webhook_gets_a_clear_4xx_and_posts_nothing(serve, native, caplog):
    server = serve("--webhook-in", INCOMING, "--webhook-burst", "10", "--webhook-rate", "0.01")
    alice = native(server, "alice")
    url = f"/hooks/{SECRET}"
    with caplog.at_level("DEBUG"):
        assert post(server, "/hooks/wrong-secret-guess", b'{"text": "x"}')[0] == 404
    assert "wrong-secret-guess" not in caplog.text
    cases = [
        (b"{", "application/json", 400, "not JSON"),
        (b"text=x", "text/plain", 415, "Content-Type"),
        (b"[1]", "application/json", 422, "object"),
        (b'{"text": ""}', "application/json", 422, "text"),
        (b'{"text": 5}', "application/json", 422, "text"),
        (b'{"text": "a\\u0007b"}', "application/json", 422, "control character"),
        (json.dumps({"text": "x" * 5000}).encode(), "application/json", 422, "--max-line"),
        (json.dumps({"text": "x\n" * 30}).encode(), "application/json", 422, "lines"),
        (b"payload=%7B", "application/x-www-form-urlencoded", 400, "not JSON"),
        (b"nothing=1", "application/x-www-form-urlencoded", 400, "payload"),
    ]
    for body, kind, status, words in cases:
        got, answer = post(server, url, body, kind)
        assert (got, words in answer["error"]) == (status, True), (body, answer)
    # The burst is spent: the next is 429 with Retry-After.
    assert post(server, url, b'{"text": "late"}')[0] == 429
    assert post(server, url, b"x" * 20000)[0] == 413
    assert alice.sync() == []  # nothing was posted
    assert SECRET not in caplog.text


def test_an_incoming_webhook_into_an_empty_room_or_under_a_person_s_nick_is_refused(serve, native):
    server = serve("--webhook-in", INCOMING.replace("room=lobby", "room=dev"), "--webhook-in",
                   f"name=n2 room=lobby nick=alice hash={hash_token(SECRET + '2')}")  # fmt: skip
    alice = native(server, "alice")
    status, answer = post(server, f"/hooks/{SECRET}", b'{"text": "x"}')
    assert (status, "nobody is in dev" in answer["error"]) == (404, True)
    status, answer = post(server, f"/hooks/{SECRET}2", b'{"text": "x"}')
    assert (status, "connected person" in answer["error"]) == (409, True)
    assert alice.sync() == []


def test_incoming_webhooks_need_the_api_plugin(chat_server_factory):
    with pytest.raises(UsageError, match="api plugin"):
        chat_server_factory("--plugins", "webhooks", "--webhook-in", INCOMING)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("name=x room=lobby", "hash missing"),
        ("name=x room=lobby hash=sha256$abc", "64 hex digits"),
        ("name=x room=lobby hash=md5$" + "0" * 64, "64 hex digits"),
        ("name=x room=no/good hash=" + hash_token(SECRET), "room"),
        ("name=x room=lobby colour=red hash=" + hash_token(SECRET), "unknown key 'colour'"),
        ("name=x room=lobby usernames=maybe hash=" + hash_token(SECRET), "yes or no"),
        ("room=lobby", "name"),
    ],
)
def test_bad_incoming_entries_are_named(entry, words):
    with pytest.raises(UsageError, match=words.replace("$", r"\$")):
        webhooks.parse_incoming(entry, 1.0, 1)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("name=x url=ftp://h/p secret=" + SIGNING, "http://"),
        ("name=x url=http://h:port/p secret=" + SIGNING, "bad port"),
        ("name=x url=http://h/p secret=short", "16 characters"),
        ("name=x url=http://h/p events=message+shout secret=" + SIGNING, "shout is not an event type"),
        ("name=x url=http://h/p rooms=a/b secret=" + SIGNING, "rooms"),
        ("name=x url=http://h/p", "secret missing"),
    ],
)
def test_bad_outgoing_entries_are_named_without_their_secret(entry, words):
    with pytest.raises(UsageError, match=words) as caught:
        webhooks.parse_outgoing(entry)
    assert SIGNING not in str(caught.value)


def test_two_webhooks_of_one_name_are_refused(serve, receiver):
    with pytest.raises(UsageError, match="two webhooks have this name"):
        serve("--webhook-out", outgoing(receiver.url), "--webhook-out", outgoing(receiver.url))


def test_event_kinds_and_filters():
    kinds = {
        webhooks.event_kind(Chat("lobby", "a", "hi")),
        webhooks.event_kind(Joined("lobby", nick="a")),
        webhooks.event_kind(Left("lobby", nick="a")),
        webhooks.event_kind(Left("lobby", nick="a", reason="x", disconnected=False, kicked_by="op")),
        webhooks.event_kind(TopicChanged("lobby", nick="a", topic="t")),
        webhooks.event_kind(ModeChanged("lobby", nick="a", modes="+m")),
    }
    assert kinds == {"message", "join", "leave", "kick", "topic", "mode"}
    assert webhooks.event_kind(RoomNotice("lobby", text="x")) is None
    hook = webhooks.parse_outgoing(outgoing("http://h/p", "events=message+kick rooms=lobby+Dev"))
    assert hook.wants("message", "dev")
    assert not hook.wants("join", "dev")
    assert not hook.wants("message", "other")


def test_the_signature_is_hmac_sha256_over_the_timestamp_and_the_body():
    expected = hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert webhooks.signature(b"key", "1700000000", b"{}") == f"v1={expected}"


# -- outgoing ---------------------------------------------------------------------------------


def verify(headers: dict[str, str], body: bytes, secret: str = SIGNING) -> bool:
    """What docs/webhooks.md tells a receiver to do."""
    signed = headers["x-chatcore-timestamp"].encode() + b"." + body
    expected = "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(headers["x-chatcore-timestamp"])) < 300
    return fresh and hmac.compare_digest(expected, headers["x-chatcore-signature"])


def test_room_events_are_posted_signed_and_filtered(serve, native, receiver):
    server = serve("--webhook-out", outgoing(receiver.url, "events=message+join+kick+topic rooms=lobby"))
    alice = native(server, "alice")  # the lobby's operator
    bob = native(server, "bob")
    alice.send("hello")
    bob.expect("<alice> hello")
    alice.send("/topic deploys at noon")
    bob.expect("* alice set the topic: deploys at noon")
    alice.send("/kick bob spam")
    bob.expect("* you were kicked out of lobby by alice (spam)")
    alice.send("/join dev")
    alice.send("not for the webhook")  # dev is filtered out
    alice.send("/join lobby")
    alice.send("back")
    wait_for(lambda: len(receiver.delivered()) >= 6, message="six deliveries")

    delivered = receiver.delivered()
    # Both joins (as guests: the nick changes are not asked for), and no leave.
    assert [body["type"] for body in delivered] == ["join", "join", "message", "topic", "kick", "message"]
    assert {body["room"] for body in delivered} == {"lobby"}
    chat = next(body for body in delivered if body["type"] == "message")
    assert chat["event"] == {**chat["event"], "type": "chat", "nick": "alice", "text": "hello"}
    kick = next(body for body in delivered if body["type"] == "kick")
    assert (kick["event"]["nick"], kick["event"]["kicked_by"], kick["event"]["reason"]) == ("bob", "alice", "spam")
    for headers, body, _answer in receiver.attempts():
        obj = json.loads(body)
        assert verify(headers, body)
        assert headers["idempotency-key"] == obj["id"] == f"{obj['event']['epoch']}:{obj['event']['offset']}"
        assert headers["x-chatcore-event"] == obj["type"]
        assert headers["content-type"] == "application/json"
        assert not verify(headers, body.replace(b"lobby", b"l0bby"))  # a changed body fails


def test_failures_and_timeouts_are_retried_under_one_key_and_nothing_is_lost(serve, native, receiver):
    receiver.script.extend([500, "hang", 503, 429, 500])
    server = serve("--webhook-out", outgoing(receiver.url, "events=message"), "--webhook-timeout", "0.3",
                   "--webhook-retries", "20", plugins="api,webhooks,metrics")  # fmt: skip
    alice = native(server, "alice")
    bob = native(server, "bob")
    texts = [f"line {n}" for n in range(12)]
    for text in texts:
        alice.send(text)
    bob.expect("<alice> line 11")
    wait_for(lambda: len(receiver.delivered()) >= len(texts), timeout=15, message="every line delivered")

    delivered = receiver.delivered()
    # Nothing lost, and nothing delivered twice.
    assert sorted(body["event"]["text"] for body in delivered) == sorted(texts)
    # Every attempt of an event carried the same key and the same bytes.
    by_key: dict[str, set[bytes]] = {}
    for headers, body, _answer in receiver.attempts():
        by_key.setdefault(headers["idempotency-key"], set()).add(body)
        assert verify(headers, body)
    assert len(by_key) == len(texts)
    assert all(len(bodies) == 1 for bodies in by_key.values())
    counts = server.config.data["webhooks"].outboxes[0].counts
    wait_for(lambda: counts.delivered == 12, message="the last answer read")  # it counts after the receiver
    assert (counts.delivered, counts.failed, counts.retried, counts.dead_lettered) == (12, 5, 5, 0)
    samples = scrape(server)
    assert value(samples, "chatcore_webhook_deliveries_total", webhook="out", result="delivered") == 12
    assert value(samples, "chatcore_webhook_deliveries_total", webhook="out", result="dead_lettered") == 0
    assert value(samples, "chatcore_webhook_failed_attempts_total", webhook="out") == 5
    assert value(samples, "chatcore_webhook_retries_total", webhook="out") == 5
    assert value(samples, "chatcore_webhook_queue_depth", webhook="out") == 0
    assert dead_letters(server) == []


def test_a_retry_after_of_non_ascii_digits_is_no_wait_and_no_crash(serve, native, receiver):
    # "³" is a digit to str.isdigit() and not to float(): it once raised on the delivery thread.
    receiver.retry_after = "\u00b3"
    receiver.script.extend([429])
    server = serve("--webhook-out", outgoing(receiver.url, "events=message"))
    alice = native(server, "alice")
    alice.send("after a 429")
    wait_for(lambda: len(receiver.delivered()) == 1, message="the line delivered on the second attempt")
    assert [answer for _headers, _body, answer in receiver.attempts()] == ["429", "200"]


def test_the_chat_goes_on_while_the_receiver_hangs(serve, native, receiver):
    receiver.default = "hang"
    server = serve("--webhook-out", outgoing(receiver.url), "--webhook-timeout", "5", "--webhook-queue", "5")
    alice = native(server, "alice")
    bob = native(server, "bob")
    wait_for(receiver.attempts, message="a delivery stuck in the receiver")
    started = time.monotonic()
    for n in range(30):
        alice.send(f"still here {n}")
    bob.expect("<alice> still here 29", timeout=2)
    assert time.monotonic() - started < 2
    alice.sync()  # her lines' hooks have all run (bob may hear a line before its hook runs)
    # The queue holds 5; the rest went to the dead-letter log, counted.
    outbox = server.config.data["webhooks"].outboxes[0]
    assert outbox.depth == 5
    assert outbox.counts.overflowed >= 25
    letters = dead_letters(server)
    assert len(letters) == outbox.counts.overflowed
    assert all("queue was full" in letter["reason"] for letter in letters)

    # Recovered: what was held is delivered.
    receiver.default = 200
    receiver.release()
    wait_for(lambda: outbox.depth == 0, timeout=10, message="the queue drained")
    assert outbox.counts.delivered >= 4


def test_a_delivery_goes_to_the_dead_letter_log_when_its_retries_run_out(serve, native, receiver):
    receiver.default = 500
    server = serve("--webhook-out", outgoing(receiver.url, "events=message"), "--webhook-retries", "2")
    alice = native(server, "alice")
    alice.send("doomed")
    alice.sync()
    letters = wait_for(lambda: dead_letters(server), message="a dead letter")
    assert len(receiver.attempts()) == 3
    (letter,) = letters
    assert letter["webhook"] == "out"
    assert letter["attempts"] == 3
    assert letter["reason"].startswith("HTTP 500")
    assert letter["payload"]["event"]["text"] == "doomed"
    assert letter["id"] == letter["payload"]["id"]
    assert SIGNING not in json.dumps(letter)
    # A 4xx other than 408/425/429 is not retried.
    receiver.default = 400
    alice.send("refused")
    wait_for(lambda: len(dead_letters(server)) == 2, message="a second dead letter")
    assert len(receiver.attempts()) == 4


def test_a_reload_changes_the_webhooks(tmp_path, chat_server_factory, native, receiver):
    other = Receiver()
    try:
        config = tmp_path / "chatcore.toml"

        def write(*hooks: str) -> None:
            config.write_text(f"webhook-out = {json.dumps(list(hooks))}\n", encoding="utf-8")

        write(outgoing(receiver.url, "events=message"))
        server = chat_server_factory(
            "--config", str(config), "--plugins", "webhooks", "--listen", "tcp://127.0.0.1:0",
            "--webhook-dead-letter", str(tmp_path / "dead.jsonl"),
        )  # fmt: skip
        alice = native(server, "alice")
        alice.send("one")
        wait_for(lambda: len(receiver.delivered()) == 1, message="the first delivery")

        # The webhook now points elsewhere, and a second one is added.
        write(outgoing(other.url, "events=message"), f"name=two url={other.url} secret={SIGNING} events=join")
        assert reload_configuration(server)
        alice.send("two")
        native(server, "bob")
        wait_for(lambda: len(other.delivered()) == 2, message="both webhooks delivering to the other receiver")
        assert sorted(body["webhook"] for body in other.delivered()) == ["out", "two"]
        assert len(receiver.delivered()) == 1

        # A bad entry keeps the running webhooks.
        config.write_text('webhook-out = ["name=x url=nowhere"]\n', encoding="utf-8")
        assert not reload_configuration(server)
        assert len(server.config.data["webhooks"].outboxes) == 2

        # Taken out: no more deliveries.
        write()
        assert reload_configuration(server)
        assert server.config.data["webhooks"].outboxes == ()
    finally:
        other.close()


def test_an_unchanged_namespace_reload_keeps_the_queue(serve, receiver):
    server = serve("--webhook-out", outgoing(receiver.url))
    state = server.config.data["webhooks"]
    before = state.outboxes[0]
    options = argparse.Namespace(**vars(server.config.options))
    webhooks.chatcore_reload(server, options)()
    assert state.outboxes[0] is before


def test_the_verification_example_in_the_docs_verifies_a_real_delivery(serve, native, receiver):
    doc = (Path(__file__).parent.parent / "docs" / "webhooks.md").read_text(encoding="utf-8")
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(example.replace('b"Zm9v...long"', repr(SIGNING.encode())), namespace)
    server = serve("--webhook-out", outgoing(receiver.url, "events=message"))
    native(server, "alice").send("check me")
    wait_for(receiver.delivered, message="a delivery")
    ((headers, body, _answer),) = receiver.attempts()
    sent = {name.title(): text for name, text in headers.items()}  # as a receiver's framework gives them
    assert namespace["verify"](sent, body)
    assert not namespace["verify"](sent, body + b" ")
    assert not namespace["verify"]({**sent, "X-Chatcore-Timestamp": str(int(time.time()) - 3600)}, body)


def test_what_is_undelivered_when_the_server_stops_goes_to_the_dead_letter_log(serve, native, receiver):
    receiver.default = "hang"
    server = serve("--webhook-out", outgoing(receiver.url, "events=message"), "--webhook-timeout", "0.3")
    alice = native(server, "alice")
    for n in range(3):
        alice.send(f"pending {n}")
    alice.sync()
    wait_for(receiver.attempts, message="the first delivery stuck")
    state = server.config.data["webhooks"]
    server.stop(timeout=1.0)
    letters = [json.loads(line) for line in Path(state.dead_letters.path).read_text().splitlines()]
    assert sorted(letter["payload"]["event"]["text"] for letter in letters) == ["pending 0", "pending 1", "pending 2"]
    assert all("stopped" in letter["reason"] for letter in letters)


def test_a_reload_does_not_refill_an_incoming_webhook_s_bucket(serve):
    server = serve("--webhook-in", INCOMING, "--webhook-burst", "1", "--webhook-rate", "0.01")
    assert post(server, f"/hooks/{SECRET}", b'{"text": "x"}')[0] == 404  # nobody in lobby; the token is spent
    webhooks.chatcore_reload(server, server.config.options)()
    assert post(server, f"/hooks/{SECRET}", b'{"text": "x"}')[0] == 429


@pytest.mark.slow
def test_sighup_moves_a_webhook_in_a_running_server(tmp_path, receiver):
    moved = Receiver()
    config = tmp_path / "chatcore.toml"

    def write(url: str) -> None:
        config.write_text(f"webhook-out = [{json.dumps(outgoing(url, 'events=message'))}]\n", encoding="utf-8")

    write(receiver.url)
    try:
        with ServerProcess(
            "--config", str(config), "--plugins", "webhooks", "--webhook-dead-letter", str(tmp_path / "dead.jsonl")
        ) as proc:
            alice = LineClient(proc.address)
            alice.sync()
            alice.send("before")
            wait_for(lambda: len(receiver.delivered()) == 1, message="the first delivery")
            write(moved.url)
            proc.send_signal(signal.SIGHUP)
            assert "--webhook-out" in proc.expect_log(re.compile("configuration reloaded"))
            alice.send("after")
            wait_for(lambda: len(moved.delivered()) == 1, message="a delivery to the new URL")
            assert [body["event"]["text"] for body in receiver.delivered() + moved.delivered()] == ["before", "after"]
            alice.close()
        assert proc.returncode == 0
        assert SIGNING not in proc.stderr
    finally:
        moved.close()
