"""The filters plugin: flood control, message length and banned words."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatcore import Message, UsageError, hookimpl
from chatcore.config import parse_config
from chatcore.engine.server import ChatServer
from chatcore.plugins.filters import BannedWords, TokenBucket
from chatcore.testing import ClientFactory, LineClient, wait_for


def named(chat_client: ClientFactory, server: ChatServer, nick: str) -> LineClient:
    client = chat_client(server)
    client.send(f"/nick {nick}")
    client.expect(f"* you are now known as {nick}")
    return client


def quiet(client: LineClient) -> list[str]:
    """What ``client`` received, without join and rename notices."""
    return [line for line in client.sync() if not re.match(r"^\* \S+ (joined$|is now known as )", line)]


# -- the rules, without a server ---------------------------------------------------


def test_token_bucket_burst_then_rate():
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.4)  # 0.8 of a token
    assert bucket.take(100.5)  # 1.0
    assert not bucket.take(100.5)
    # A long pause refills to the burst, never beyond.
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]


def test_token_bucket_counts_rejections_in_a_window():
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert [bucket.rejections_within(t, 10.0) for t in (0.0, 1.0, 2.0)] == [1, 2, 3]
    assert bucket.rejections_within(10.5, 10.0) == 3  # the one at 0.0 expired
    assert bucket.rejections_within(30.0, 10.0) == 1


@pytest.mark.parametrize(
    ("words", "text", "masked"),
    [
        # case-insensitive, whole words only
        ("darn", "Darn it, DARN!", "**** it, ****!"),
        ("darn", "darned undarn darn_it darn2 x-darn-y", "darned undarn darn_it darn2 x-****-y"),
        ("darn", "darn's", "****'s"),
        # casefolding: ß is ss, in the word or in the text; one * per character shown
        ("straße", "STRASSE strasse Straße", "******* ******* ******"),
        ("STRASSE", "die Straße", "die ******"),
        # accents are significant, however they are encoded
        ("café", "cafe café CAFÉ cafe\u0301", "cafe **** **** ****"),
        ("cafe", "café", "café"),
        # compatibility forms: full-width letters, ligatures
        ("bad", "\uff22\uff41\uff44 day", "*** day"),
        ("fine", "\ufb01ne", "***"),
        # non-Latin scripts; word boundaries hold for non-ASCII letters
        ("дурак", "Ты ДУРАК! дураки", "Ты *****! дураки"),
        ("ünd", "Ünd fünd", "*** fünd"),
        # marks (accents, vowel signs) belong to the word they are in
        ("नहीं", "मैं नहीं जानता", "मैं ** जानता"),
        ("i", "i\u0308 i", "i\u0308 *"),
        # a letter that folds to two characters is never half-matched
        ("i", "İstanbul i", "İstanbul *"),
        # phrases: any run of white space between the words
        ("bad word", "a bad   word, a bad", "a **********, a bad"),
        # several words in one message; the longest phrase wins
        ("heck,heck no", "heck no, heck", "*******, ****"),
    ],
)
def test_banned_word_rules(words, text, masked):
    banned = BannedWords(words.split(","))
    assert banned.mask(text, banned.find(text)) == masked


def test_the_quick_ascii_check_finds_what_the_pattern_finds():
    # ASCII lines skip the pattern unless one of their words starts a banned
    # word or phrase: over many lines made of words, near-words and
    # punctuation, that check must never skip a match.
    words = ["darn", "heck no", "rats", "x2", "under_score", "don't"]
    banned = BannedWords(words)
    pattern = re.compile(r"\b(?:don't|under_score|heck\s+no|darn|rats|x2)\b", re.ASCII)
    pieces = ["darn", "DARN", "heck", "no", "rats", "pirats", "x2", "x22", "under_score", "under", "don't", "don", "t"]
    pieces += ["a", "hello", "_", "-", "!", "'", " ", "  ", "\t", ",", "9"]
    generator = random.Random(16)
    for _ in range(3000):
        text = "".join(generator.choice(pieces) for _ in range(generator.randint(1, 8)))
        assert banned.find(text) == [match.span() for match in pattern.finditer(text.lower())], text


def test_no_banned_word_leaves_the_text_alone():
    banned = BannedWords(["darn"])
    assert banned.find("a perfectly fine line") == []
    assert banned.find("ein völlig harmloser Satz") == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--banned-words", "ok,!!"],
            "banned word '!!': a banned word must start and end with a letter or digit, not punctuation",
        ),
        (["--flood-burst", "3"], "--flood-burst needs --flood-rate (flood control is off without it)"),
        (["--flood-disconnect", "3"], "--flood-disconnect needs --flood-rate (flood control is off without it)"),
        (["--banned-words-file", "/nonexistent/words.txt"], "--banned-words-file /nonexistent/words.txt: cannot read"),
    ],
)
def test_bad_options_are_usage_errors(args, error):
    with pytest.raises(UsageError, match=re.escape(error)):
        parse_config(["--plugins", "filters", *args])


@pytest.mark.parametrize("value", ["0", "-1", "fast", "inf", "nan"])
def test_bad_flood_rate_is_refused_by_argparse(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--plugins", "filters", "--flood-rate", value])
    assert exit_info.value.code == 2
    assert "--flood-rate" in capsys.readouterr().err


def test_word_file_must_be_utf8(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes(b"darn\n\xff\xfe\n")
    with pytest.raises(UsageError, match="not UTF-8 text"):
        parse_config(["--plugins", "filters", "--banned-words-file", str(path)])


# -- over real sockets -----------------------------------------------------------


def test_banned_words_are_masked_in_chat_actions_and_private_messages(chat_server_factory, chat_client, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# one word or phrase a line\n\nheck\n  Straße \n", encoding="utf-8")
    server = chat_server_factory("--plugins", "filters", "--banned-words", "darn", "--banned-words-file", str(words))
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    alice.send("Darn, what the HECK is this strasse")
    bob.expect("<alice> ****, what the **** is this *******")
    alice.send("/me says darn")
    bob.expect("* alice says ****")
    assert quiet(alice) == ["* alice says ****"]
    alice.send("/msg bob heck")
    bob.expect("*alice* ****")
    assert quiet(alice) == ["-> *bob* ****"]
    alice.send("undarnable")
    bob.expect("<alice> undarnable")


def test_banned_words_reject(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "filters", "--banned-words", "darn", "--banned-action", "reject")
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    alice.send("oh DARN")
    alice.send("/msg bob darn")
    alice.send("/me darns")
    assert quiet(alice) == [
        "! message not sent: it contains the banned word 'DARN'",
        "! message not sent: it contains the banned word 'darn'",
        "* alice darns",
    ]
    assert quiet(bob) == ["* alice darns"]


def test_flood_control_limits_only_the_flooder(chat_server_factory, chat_client):
    # A rate this low adds no token during the test: the burst is all there is.
    server = chat_server_factory("--plugins", "filters", "--flood-rate", "0.001", "--flood-burst", "3")
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    for number in range(5):
        alice.send(f"line {number}")
    alice.send("/msg bob private")
    assert quiet(alice) == ["! slow down"] * 3
    assert quiet(bob) == ["<alice> line 0", "<alice> line 1", "<alice> line 2"]
    for number in range(3):
        bob.send(f"bob {number}")
    assert quiet(bob) == []
    assert quiet(alice) == ["<bob> bob 0", "<bob> bob 1", "<bob> bob 2"]
    # Other commands are not messages: the flooder still gets answers.
    alice.send("/who")
    assert quiet(alice) == ["* in lobby (2): alice, bob"]


def test_flood_control_refills(chat_server_factory, chat_client):
    server = chat_server_factory(
        "--plugins", "filters", "--flood-rate", "2", "--flood-burst", "1", "--flood-disconnect", "0"
    )
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    alice.send("first")
    alice.send("second")  # right behind the first: no token yet
    assert quiet(alice) == ["! slow down"]
    # After a token's worth of time (half a second), one more goes through.
    wait_for(lambda: (alice.send("later"), quiet(alice) == [])[1], message="a token after 0.5 s")
    bob.expect("<alice> first")
    bob.expect("<alice> later")


def test_a_client_that_keeps_flooding_is_disconnected(chat_server_factory, chat_client):
    server = chat_server_factory(
        "--plugins", "filters", "--flood-rate", "0.001", "--flood-burst", "1", "--flood-disconnect", "3"
    )
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    # In one write: sent line by line, the last lines could arrive after the
    # server closed, which answers them with a reset (a broken pipe here).
    alice.send_raw("".join(f"spam {number}\n" for number in range(6)).encode())
    lines = [line for line in alice.wait_closed() if line.startswith("!")]
    assert lines == ["! slow down", "! slow down", "! disconnected: flooding"]
    bob.expect("<alice> spam 0")
    bob.expect("* alice left (flooding)")
    assert not any("spam" in line for line in quiet(bob))
    assert server.registry.find("alice") is None


def test_max_message_chars_counts_characters_not_bytes(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "filters", "--max-message-chars", "5")
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    alice.send("ééééé")  # 5 characters, 10 bytes
    alice.send("hello!")
    alice.send("/msg bob 123456")
    assert quiet(alice) == [
        "! message too long (6 characters; the limit is 5); it was not sent",
        "! message too long (6 characters; the limit is 5); it was not sent",
    ]
    assert quiet(bob) == ["<alice> ééééé"]


class TextRecorder:
    """A plain (unordered) filter that records the text it is given."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def chatcore_message(self, message: Message) -> None:
        self.seen.append(message.text)


def test_filter_order_with_welcome_and_logger(chat_server_factory, chat_client, tmp_path):
    recorder = TextRecorder()
    log_file = tmp_path / "events.jsonl"
    server = chat_server_factory(
        "--plugins",
        "welcome,logger,filters",
        "--log-file",
        str(log_file),
        "--banned-words",
        "darn",
        "--max-message-chars",
        "20",
        "--flood-rate",
        "0.001",
        "--flood-burst",
        "4",
        plugins=[recorder],
    )
    impls = server.config.pluginmanager.hook.chatcore_message.get_hookimpls()
    called = [impl.function.__name__ for impl in reversed(impls)]  # pluggy calls the last first
    assert called[0] == "flood_control"
    assert called[-1] == "banned_words"
    assert set(called[1:-1]) == {"muted", "message_length", "chatcore_message"}  # muted: the opers plugin, always on

    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    too_long = "darn, a message that is far too long"
    alice.send(too_long)  # length refuses it before the words
    alice.send("darn it")  # the recorder sees it before the words are masked
    alice.send("/msg bob darn")
    alice.send("/me ok")
    alice.send("darn, again, too long and flooding")  # flood control refuses it first
    assert quiet(alice) == [
        f"! message too long ({len(too_long)} characters; the limit is 20); it was not sent",
        "-> *bob* ****",
        "* alice ok",
        "! slow down",
    ]
    assert quiet(bob) == ["<alice> **** it", "*alice* ****", "* alice ok"]
    assert recorder.seen == ["darn it", "darn", "ok"]

    server.stop()  # the logger writes everything before it returns
    events = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    said = [(e["event"], e["nick"], e["text"]) for e in events if "text" in e]
    assert said == [("chat", "alice", "**** it"), ("private", "alice", "****"), ("action", "alice", "ok")]
    (private,) = [e for e in events if e["event"] == "private"]
    assert (private["to"], private["recipients"]) == ("bob", 1)


def test_filters_are_off_by_default(chat_server_factory, chat_client):
    server = chat_server_factory("--plugins", "filters")
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    for number in range(50):
        alice.send(f"darn {number} " + "x" * 1000)
    for number in range(50):
        bob.expect(f"<alice> darn {number} " + "x" * 1000)
    assert quiet(alice) == []


def test_help_lists_the_filter_options():
    result = subprocess.run(
        [sys.executable, "-m", "chatcore", "serve", "--plugins", "filters", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    for option in ("--banned-words", "--banned-words-file", "--banned-action", "--flood-rate", "--flood-burst"):
        assert option in result.stdout
    assert "--flood-disconnect" in result.stdout
    assert "--max-message-chars" in result.stdout


def test_bad_word_file_through_the_cli(tmp_path: Path):
    missing = tmp_path / "missing.txt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatcore",
            "serve",
            "--port",
            "0",
            "--plugins",
            "filters",
            "--banned-words-file",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--banned-words-file" in result.stderr
    assert "cannot read it" in result.stderr
    assert "Traceback" not in result.stderr


def test_leave_reasons_go_through_the_filters_but_not_the_flood_control(chat_server_factory, chat_client):
    # A /quit reason is said to the room like a message: banned words are
    # masked in it, and a flooder may still leave with its reason.
    server = chat_server_factory(
        "--plugins", "filters", "--banned-words", "darn", "--flood-rate", "0.001", "--flood-burst", "1"
    )  # fmt: skip
    alice = named(chat_client, server, "alice")
    bob = named(chat_client, server, "bob")
    alice.send("/quit darn this place")
    bob.expect("* alice left (**** this place)")
    carol = named(chat_client, server, "carol")
    carol.send("one")
    carol.send("two")
    carol.expect("! slow down")
    carol.send("/quit see you")
    bob.expect("* carol left (see you)")
