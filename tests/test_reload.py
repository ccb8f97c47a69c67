"""Reloads (SIGHUP) of a real server process: the configuration file read
again, what may change applied, what may not logged, bad files refused."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from test_api import call
from test_irc import IRCClient
from test_irc_websocket import IRCWebSocketClient
from test_web import HTTPError, WSClient

from chatcore import hookimpl
from chatcore.plugins.api import hash_token
from chatcore.reload import reload_configuration
from chatcore.testing import LineClient, ServerProcess, wait_for

pytestmark = pytest.mark.slow

RELOADED = re.compile(r"configuration reloaded: ")
FAILED = re.compile(r"reload failed: .*; the running configuration is kept")
SECRET = "reload-secret-0123456789abcdefghi"  # an API token, a webhook's secret


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def connect(proc: ServerProcess, clients: list[LineClient]) -> LineClient:
    client = LineClient(proc.address)
    clients.append(client)
    client.sync()
    return client


@pytest.fixture
def clients():
    made: list[LineClient] = []
    yield made
    for client in made:
        client.close()


BEFORE = """
plugins = ["welcome", "filters", "history"]
welcome-text = "Hello {nick}"
banned-words = "darn"
history-lines = 5
max-clients = 10
"""

AFTER = """
plugins = ["welcome", "filters", "history", "api"]
welcome-text = "Goodbye {nick}"
banned-words = "heck"
history-lines = 1
max-clients = 10
backlog = 7
"""


def test_sighup_applies_the_file_and_logs_what_needs_a_restart(tmp_path, clients):
    config = tmp_path / "chatcore.toml"
    write(config, BEFORE)
    with ServerProcess("--config", str(config)) as proc:
        alice, bob = connect(proc, clients), connect(proc, clients)
        assert alice.received[0] == "* Hello guest-1"
        alice.send("darn it")
        bob.expect("<guest-1> **** it")
        alice.send("second line")
        bob.expect("<guest-1> second line")

        write(config, AFTER)
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(re.compile(r"reload: plugin api cannot be loaded or unloaded while running: "))
        proc.expect_log(re.compile(r"reload: --plugins changed: needs a restart; left unchanged"))
        proc.expect_log(re.compile(r"reload: --backlog changed: needs a restart; left unchanged"))
        line = proc.expect_log(RELOADED)
        assert "--welcome-text" in line
        assert "--banned-words" in line
        assert "--history-lines" in line

        carol = connect(proc, clients)
        assert carol.received[0] == "* Goodbye guest-3"
        # History now keeps one line per room: the newest.
        assert carol.received[1:3] == ["* last 1 message in lobby:", "# <guest-1> second line"]
        alice.send("heck darn")
        bob.expect("<guest-1> **** darn")
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("needs a restart") == 3


def test_sighup_loads_and_unloads_plugins_that_can_be(tmp_path, clients):
    """A changed plugins list: filters unloaded and logger loaded while the
    server runs, with the logger's options from the file; then a plugin
    that cannot be (it adds a listener scheme) is named as needing a restart."""
    config = tmp_path / "chatcore.toml"
    events = tmp_path / "events.jsonl"
    write(config, 'plugins = ["welcome", "filters"]\nbanned-words = "darn"\n')
    with ServerProcess("--config", str(config)) as proc:
        alice, bob = connect(proc, clients), connect(proc, clients)
        alice.send("darn it")
        bob.expect("<guest-1> **** it")

        # A plugin to load that refuses its options: nothing changes.
        write(config, f'plugins = ["welcome", "logger"]\nlog-file = "{tmp_path}/no/such/dir/x.jsonl"\n')
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(FAILED)
        alice.send("darn again")
        bob.expect("<guest-1> **** again")

        write(config, f'plugins = ["welcome", "logger"]\nlog-file = "{events}"\n')
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(re.compile(r"reload: plugins loaded logger; unloaded filters"))
        line = proc.expect_log(RELOADED)
        assert "--plugins" in line
        alice.send("darn it")
        bob.expect("<guest-1> darn it")  # no filter any more
        carol = connect(proc, clients)
        assert carol.received[0].startswith("* Welcome to chatcore")
        wait_for(lambda: events.exists() and '"nick": "guest-3"' in events.read_text(), message="the logger's line")

        write(config, f'plugins = ["welcome", "logger", "irc"]\nlog-file = "{events}"\n')
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(re.compile(r"reload: plugin irc cannot be loaded or unloaded while running: "))
        proc.expect_log(re.compile(r"reload: --plugins changed: needs a restart; left unchanged"))
        proc.expect_log(RELOADED)

        # Taken away again: the file gets no more lines.
        write(config, 'plugins = ["welcome"]\n')
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(re.compile(r"reload: plugins unloaded logger"))
        proc.expect_log(RELOADED)
        size = events.stat().st_size
        connect(proc, clients)
        alice.send("/ping")
        alice.expect(lambda text: "pong" in text)
        assert events.stat().st_size == size
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("failed") == 1


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ('welcome-text = "Hi {nick}\nbanned-words = ', "invalid TOML"),
        ('welcome-text = "Hi {name}"\nbanned-words = "darn"\n', "--welcome-text: bad placeholder {name}"),
        ('welcome-text = "Hi {nick}"\nbanned-words = "darn"\nmax-clients = 0\n', "max-clients"),
        ('welcome-txt = "Hi {nick}"\n', "unknown key 'welcome-txt'"),
    ],
)
def test_a_bad_file_on_reload_keeps_the_whole_running_configuration(tmp_path, clients, bad, problem):
    config = tmp_path / "chatcore.toml"
    write(config, 'plugins = ["welcome", "filters"]\nwelcome-text = "Hello {nick}"\n')
    with ServerProcess("--config", str(config)) as proc:
        alice, bob = connect(proc, clients), connect(proc, clients)
        write(config, 'plugins = ["welcome", "filters"]\n' + bad)
        proc.send_signal(signal.SIGHUP)
        line = proc.expect_log(FAILED)
        assert problem in line
        carol = connect(proc, clients)
        assert carol.received[0] == "* Hello guest-3"
        alice.send("darn")  # the file's banned words were not applied either
        bob.expect("<guest-1> darn")
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_logger_reopens_its_file_on_sighup_for_logrotate(tmp_path, clients):
    log_file = tmp_path / "events.jsonl"
    rotated = tmp_path / "events.jsonl.1"
    with ServerProcess("--plugins", "logger", "--log-file", str(log_file)) as proc:
        connect(proc, clients)
        wait_for(lambda: log_file.exists() and len(read_events(log_file)) == 1, message="alice's join in the log")
        log_file.rename(rotated)  # what logrotate does, before it sends SIGHUP
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(RELOADED)
        connect(proc, clients)
        wait_for(lambda: log_file.exists() and len(read_events(log_file)) == 1, message="bob's join in a new file")
    assert proc.returncode == 0
    assert [(e["event"], e["nick"]) for e in read_events(rotated)] == [("join", "guest-1")]
    events = [(e["event"], e["nick"]) for e in read_events(log_file)]
    assert events[0] == ("join", "guest-2")
    assert sorted(events[1:]) == [("leave", "guest-1"), ("leave", "guest-2")]


def test_logger_follows_a_rotation_without_a_reload(tmp_path, clients):
    log_file = tmp_path / "events.jsonl"
    visits = 0

    def visit_until_a_new_file() -> bool:
        nonlocal visits
        visitor = LineClient(proc.address)
        visitor.sync()
        visitor.close()
        visits += 1
        return log_file.exists()

    with ServerProcess("--plugins", "logger", "--log-file", str(log_file)) as proc:
        connect(proc, clients)
        wait_for(lambda: log_file.exists() and len(read_events(log_file)) == 1, message="alice's join in the log")
        log_file.rename(tmp_path / "events.jsonl.1")
        # No SIGHUP (say the reload failed on a bad file): the logger sees
        # the file moved at a write a second or so later; until then the
        # events go to the moved file, where they are not lost either.
        wait_for(visit_until_a_new_file, message="a new file under the old name")
        proc.expect_log(re.compile(r"the event log .* was moved away \(log rotation\); writing to a new one"))
    assert proc.returncode == 0
    events = read_events(tmp_path / "events.jsonl.1") + read_events(log_file)
    assert len(events) == 2 * (1 + visits)  # a join and a leave each: none lost
    assert read_events(log_file)


def test_flood_limits_change_for_clients_already_connected(tmp_path, clients):
    config = tmp_path / "chatcore.toml"
    write(config, 'plugins = ["filters"]\nflood-rate = 1000\nflood-burst = 100\n')
    with ServerProcess("--config", str(config)) as proc:
        alice, bob = connect(proc, clients), connect(proc, clients)
        for n in range(3):
            alice.send(f"fast {n}")
            bob.expect(f"<guest-1> fast {n}")
        write(config, 'plugins = ["filters"]\nflood-rate = 0.001\nflood-burst = 1\nflood-disconnect = 0\n')
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(RELOADED)
        # Alice's bucket still holds tokens from before, at most the new burst.
        alice.send("one more")
        bob.expect("<guest-1> one more")
        alice.send("too fast")
        alice.expect("! slow down")
    assert proc.returncode == 0


class Checks:
    """Takes part in reloads: refuses a word, records what it applied."""

    def __init__(self) -> None:
        self.applied: list[str] = []

    @hookimpl
    def chatcore_reload(self, server, old, new):
        if new.welcome_text == "crash":
            raise RuntimeError("the check itself is broken")
        text = new.welcome_text
        return lambda: self.applied.append(text)


class BrokenApply:
    @hookimpl
    def chatcore_reload(self):
        def apply():
            raise RuntimeError("cannot apply")

        return apply


def test_reload_hook_checks_then_applies(tmp_path, chat_server_factory, chat_client, caplog):
    config = tmp_path / "chatcore.toml"
    write(config, 'welcome-text = "one {nick}"\n')
    checks = Checks()
    server = chat_server_factory("--config", str(config), plugins=[BrokenApply(), checks])

    write(config, 'welcome-text = "two {nick}"\n')
    assert reload_configuration(server)
    # The broken apply is logged with its plugin's name; the others applied.
    assert checks.applied == ["two {nick}"]
    assert "plugin 'BrokenApply' failed in chatcore_reload" in caplog.text
    assert chat_client(server).received[0] == "* two guest-1"

    # A check that raises abandons the reload, logged with the plugin's name.
    write(config, 'welcome-text = "crash"\n')
    assert not reload_configuration(server)
    assert "plugin 'Checks' failed in chatcore_reload: RuntimeError: the check itself is broken" in caplog.text
    assert checks.applied == ["two {nick}"]
    assert server.config.options.welcome_text == "two {nick}"


def test_engine_limits_apply_at_once(tmp_path, chat_server_factory, chat_client):
    config = tmp_path / "chatcore.toml"
    write(config, "max-clients = 5\n")
    server = chat_server_factory("--config", str(config))
    chat_client(server)
    write(config, "max-clients = 1\nmax-line = 100\n")
    assert reload_configuration(server)
    refused = LineClient(server.address)
    assert refused.expect("! server full, try again later")
    refused.close()
    assert (server.max_clients, server.max_line) == (1, 100)


def test_a_connection_keeps_its_line_limit_and_names_it_after_a_reload(tmp_path, chat_server_factory, chat_client):
    """--max-line applies to new connections; one already open keeps its
    limit, and the error it gets names that limit, not the new one."""
    config = tmp_path / "chatcore.toml"
    write(config, "max-line = 100\n")
    server = chat_server_factory("--config", str(config))
    before = chat_client(server)
    write(config, "max-line = 300\n")
    assert reload_configuration(server)
    after = chat_client(server)
    before.send("x" * 200)
    before.expect("! line too long (the limit is 100 bytes); it was not sent")
    after.send("x" * 400)
    after.expect("! line too long (the limit is 300 bytes); it was not sent")


def test_sighup_rereads_the_password_and_operators_files_and_the_limits(tmp_path, clients):
    password, opers, config = tmp_path / "password", tmp_path / "opers", tmp_path / "chatcore.toml"
    write(password, "first-pw-1729\n")
    write(opers, "root old-op-pw\n")
    settings = f'plugins = ["welcome"]\npassword-file = "{password}"\nopers-file = "{opers}"\n'
    write(config, settings)
    with ServerProcess("--config", str(config)) as proc:
        early = LineClient(proc.address)
        clients.append(early)
        early.send("/pass first-pw-1729")
        early.sync()
        write(password, "second-pw-4104\n")
        write(opers, "root new-op-pw\n")
        write(config, settings + "idle-timeout = 2\n")
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(RELOADED)

        late = LineClient(proc.address)
        clients.append(late)
        late.send("/pass first-pw-1729")
        assert late.expect("! wrong password; try /pass PASSWORD again", timeout=10)
        late.send("/pass second-pw-4104")
        late.sync()
        late.send("/oper root old-op-pw")
        assert late.expect("! wrong operator name or password", timeout=10)
        late.send("/oper root new-op-pw")
        assert late.expect("* you are now an operator (root)")
        # The new idle limit applies to connections already open too.
        lines = early.wait_closed(timeout=10)
        assert (
            "! disconnected: idle for 2 seconds (this server's --idle-timeout); send /ping now and then to stay"
            in lines
        )
    assert "first-pw-1729" not in proc.stderr
    assert "second-pw-4104" not in proc.stderr


def test_sighup_changes_the_accounts_options(tmp_path, clients):
    """--min-password-length, --account-max-failures and --nick-grace take
    effect on a reload (they were kept from the start, and a reload said
    they changed while nothing did)."""
    config = tmp_path / "chatcore.toml"
    settings = f'plugins = ["accounts"]\nstate-db = "{tmp_path / "state.db"}"\n'
    write(config, settings + "min-password-length = 10\nnick-grace = 30\naccount-max-failures = 10\n")
    with ServerProcess("--config", str(config)) as proc:
        alice = connect(proc, clients)
        alice.send("/nick alice")
        alice.expect("* you are now known as alice")
        alice.send("/register sesame1")
        alice.expect("! a password needs at least 10 characters; nothing was registered")
        bob = connect(proc, clients)
        bob.send("/login alice guess1")
        bob.expect("! wrong account name or password")
        write(config, settings + "min-password-length = 7\nnick-grace = 7\naccount-max-failures = 1\n")
        proc.send_signal(signal.SIGHUP)
        reloaded = proc.expect_log(RELOADED)
        for option in ("--min-password-length", "--nick-grace", "--account-max-failures"):
            assert option in reloaded
        alice.send("/register sesame")
        alice.expect("! a password needs at least 7 characters; nothing was registered")
        alice.send("/register sesame1")
        alice.expect("* registered the account alice; you are logged in to it (later: /login alice PASSWORD)")
        # One failure to alice (bob's, before the reload) is now as many as allowed.
        carol = connect(proc, clients)
        carol.send("/login alice guess2")
        carol.expect(re.compile(r"^! too many failed logins to alice lately"))
        # And someone taking alice's nick has the new grace to log in.
        alice.send("/quit")
        carol.expect("* alice left")  # her quit is another thread's: the nick is free once she is gone
        carol.send("/nick alice")
        carol.expect(
            "* the nick alice belongs to an account: /login alice PASSWORD within 7 seconds, "
            "or /nick to another name, or you will be renamed"
        )
    assert "needs a restart" not in proc.stderr


def irc_client(proc: ServerProcess, clients: list[LineClient], nick: str) -> tuple[IRCClient, list[str]]:
    """An IRC client registered as ``nick``, and the lines of its registration."""
    client = IRCClient(proc.addresses["irc"])
    clients.append(client)
    client.send(f"NICK {nick}")
    client.send(f"USER {nick} 0 * :{nick}")
    client.expect(f" 422 {nick} ")  # no MOTD: the last line of the registration
    return client, client.sync()


def test_sighup_keeps_the_irc_names_and_applies_the_autojoin(tmp_path, clients):
    """The server and network names need a restart (IRC clients keep those
    they registered with, as Ergo and InspIRCd refuse them at a rehash);
    --irc-autojoin applies to the next registration."""
    config = tmp_path / "chatcore.toml"
    write(config, 'plugins = ["irc"]\n')
    listen = ("--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0")
    with ServerProcess("--config", str(config), *listen) as proc:
        irc_client(proc, clients, "early")
        write(
            config,
            'plugins = ["irc"]\nirc-server-name = "irc.example.org"\nirc-network = "ExampleNet"\n'
            'irc-autojoin = "#news"\n',
        )
        proc.send_signal(signal.SIGHUP)
        proc.expect_log(re.compile(r"reload: --irc-server-name changed: needs a restart; left unchanged"))
        proc.expect_log(re.compile(r"reload: --irc-network changed: needs a restart; left unchanged"))
        assert "--irc-autojoin changed" in proc.expect_log(RELOADED)
        late, lines = irc_client(proc, clients, "late")
        assert late.received[0].startswith(":chatcore 001 late ")
        assert "NETWORK=chatcore" in " ".join(line for line in late.received if " 005 " in line).split()
        assert any(line.startswith(":late!") and line.endswith(" JOIN #news") for line in lines)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr


def test_sighup_changes_the_api_rate_and_burst(tmp_path):
    """They were kept from the start while the log said they changed."""
    config = tmp_path / "chatcore.toml"
    token = f'plugins = ["api"]\napi-token = ["bot:read:{hash_token(SECRET)}"]\n'
    write(config, token + "api-rate = 0.001\napi-burst = 5\n")
    with ServerProcess("--config", str(config), "--listen", "http://127.0.0.1:0") as proc:
        assert call(proc, "GET", "/api/rooms", SECRET)[0] == 200
        write(config, token + "api-rate = 0.1\napi-burst = 1\n")
        proc.send_signal(signal.SIGHUP)
        reloaded = proc.expect_log(RELOADED)
        assert "--api-rate" in reloaded
        assert "--api-burst" in reloaded
        assert call(proc, "GET", "/api/rooms", SECRET)[0] == 200
        status, _, response = call(proc, "GET", "/api/rooms", SECRET)  # past the new burst of one
        assert status == 429
        assert response.getheader("Retry-After") in ("9", "10")  # a request every ten seconds

        write(config, token + "api-rate = 0\n")  # refused whole: the limits stay
        proc.send_signal(signal.SIGHUP)
        assert "--api-rate must be a number of requests per second above 0" in proc.expect_log(FAILED)
        assert call(proc, "GET", "/api/rooms", SECRET)[0] == 429
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr


def test_sighup_keeps_the_bucket_of_a_kept_api_token(tmp_path):
    """A reload (logrotate's, every night) is no way around --api-rate: a
    token kept across it keeps what it has used; a new token starts full."""
    config = tmp_path / "chatcore.toml"
    tokens = f'plugins = ["api"]\napi-rate = 0.001\napi-burst = 2\napi-token = ["bot:read:{hash_token(SECRET)}"'
    write(config, tokens + "]\n")
    with ServerProcess("--config", str(config), "--listen", "http://127.0.0.1:0") as proc:
        assert [call(proc, "GET", "/api/rooms", SECRET)[0] for _ in range(3)] == [200, 200, 429]
        other = "another-secret-0123456789abcdef"
        write(config, tokens + f', "bot2:read:{hash_token(other)}"]\n')
        proc.send_signal(signal.SIGHUP)
        assert "--api-token changed" in proc.expect_log(RELOADED)
        assert call(proc, "GET", "/api/rooms", SECRET)[0] == 429
        assert call(proc, "GET", "/api/rooms", other)[0] == 200
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr


def test_sighup_changes_the_rate_of_a_kept_incoming_webhook(tmp_path, clients):
    """A webhook kept by name keeps its bucket (a reload is no way around
    its rate), and the bucket takes the new --webhook-rate and
    --webhook-burst: it kept the old ones while the log said they changed."""
    config = tmp_path / "chatcore.toml"
    hook = f'plugins = ["api", "webhooks"]\nwebhook-in = ["name=deploys room=lobby hash={hash_token(SECRET)}"]\n'
    write(config, hook + "webhook-rate = 0.001\nwebhook-burst = 5\n")
    listen = ("--listen", "tcp://127.0.0.1:0", "--listen", "http://127.0.0.1:0")
    with ServerProcess("--config", str(config), *listen, "--webhook-dead-letter", str(tmp_path / "dead.jsonl")) as proc:
        alice = connect(proc, clients)
        assert call(proc, "POST", f"/hooks/{SECRET}", body={"text": "one"})[0] == 200
        alice.expect("<deploys> one")
        write(config, hook + "webhook-rate = 0.1\nwebhook-burst = 1\n")
        proc.send_signal(signal.SIGHUP)
        reloaded = proc.expect_log(RELOADED)
        assert "--webhook-rate" in reloaded
        assert "--webhook-burst" in reloaded
        assert call(proc, "POST", f"/hooks/{SECRET}", body={"text": "two"})[0] == 200  # of four left, one now
        alice.expect("<deploys> two")
        status, _, response = call(proc, "POST", f"/hooks/{SECRET}", body={"text": "three"})
        assert status == 429
        assert response.getheader("Retry-After") == "10"  # a request every ten seconds
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr


def browser(address: tuple[str, int], clients: list[Any], origin: str = "auto") -> WSClient:
    client = WSClient(address, origin=origin)
    clients.append(client)
    client.sync()
    return client


def test_sighup_changes_the_web_origins_message_limit_and_ping_interval(tmp_path, clients):
    """They were kept from the start while the log said they changed. The
    origins apply to the next WebSocket, the message limit to WebSockets
    opened from then on, the ping interval to the open ones too."""
    config = tmp_path / "chatcore.toml"
    write(config, 'plugins = ["web"]\nweb-max-message = 1000\n')
    listen = ("--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0")
    with ServerProcess("--config", str(config), *listen) as proc:
        address = proc.addresses["ws"]
        with pytest.raises(HTTPError) as refused:
            WSClient(address, origin="https://chat.example.com")
        assert refused.value.status == 403
        early = browser(address, clients)
        silent = browser(address, clients)
        silent.auto_pong = False  # a browser gone away: answers no ping
        write(
            config,
            'plugins = ["web"]\nweb-max-message = 3000\nweb-origins = ["https://chat.example.com"]\n'
            "web-ping-interval = 1\n",
        )
        proc.send_signal(signal.SIGHUP)
        reloaded = proc.expect_log(RELOADED)
        for option in ("--web-max-message", "--web-origins", "--web-ping-interval"):
            assert option in reloaded
        late = browser(address, clients, origin="https://chat.example.com")
        late.say("x" * 2000)
        early.expect({"type": "chat", "nick": late.received[0]["you"]["nick"], "text": "x" * 2000})
        early.say("y" * 2000)
        assert early.expect({"type": "error"})["text"] == "message too long (the limit is 1000 bytes); it was not sent"
        # Reading (so answering pings), early sees the silent one dropped.
        early.expect({"type": "leave", "nick": silent.received[0]["you"]["nick"], "reason": "ping timeout"}, 10)
        silent.wait_closed()
        early.sync()
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr


def test_sighup_changes_the_irc_websocket_origins_and_ping_interval(tmp_path, clients):
    """They were kept from the start while the log said they changed."""
    config = tmp_path / "chatcore.toml"
    write(config, 'plugins = ["irc"]\n')
    listen = ("--listen", "tcp://127.0.0.1:0", "--listen", "ircws://127.0.0.1:0")
    with ServerProcess("--config", str(config), *listen) as proc:
        address = proc.addresses["ircws"]
        with pytest.raises(HTTPError) as refused:
            IRCWebSocketClient(address, origin="https://gamja.example.org")
        assert refused.value.status == 403
        early = IRCWebSocketClient(address)
        silent = IRCWebSocketClient(address)
        clients += [early, silent]
        early.register("early")
        silent.register("silent")
        silent.auto_pong = False  # a client gone away: answers no ping
        write(config, 'plugins = ["irc"]\nirc-ws-origins = ["https://gamja.example.org"]\nirc-ws-ping-interval = 1\n')
        proc.send_signal(signal.SIGHUP)
        reloaded = proc.expect_log(RELOADED)
        assert "--irc-ws-origins" in reloaded
        assert "--irc-ws-ping-interval" in reloaded
        late = IRCWebSocketClient(address, origin="https://gamja.example.org")
        clients.append(late)
        late.register("late")
        # Reading (so answering pings), early sees the silent one dropped.
        early.expect(r"^:silent!silent@chatcore QUIT :Quit: ping timeout$", timeout=10)
        silent.wait_closed()
        early.sync()
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
