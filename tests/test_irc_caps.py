"""IRCv3 capabilities and message tags of the irc plugin (docs/irc.md,
"IRCv3"): the tag codec and the formats per set of capabilities as units,
then each capability over real sockets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from test_irc import IRCClient

from chatcore import hookimpl
from chatcore.engine.server import ChatServer
from chatcore.events import Chat, Joined, parse_msgid
from chatcore.plugins.irc import (
    CAPABILITIES,
    Capability,
    IRCFormat,
    IRCProtocol,
    TaggedIRCFormat,
    batch_lines,
    capabilities_changed,
    server_time,
    with_tags,
)
from chatcore.testing import LineClient
from chatcore.wire.tags import escape_tag_value, parse_tags, tag_text, unescape_tag_value

#: A time tag: milliseconds, UTC.
TIME = r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def irc() -> Iterator:
    """``irc(server, nick, caps="")``: a registered IRC client that enabled
    ``caps`` before registering; all closed at the end."""
    made: list[LineClient] = []

    def make(server: ChatServer, nick: str, caps: str = "", join: str = "#lobby") -> IRCClient:
        client = IRCClient(server.listener("irc").address)
        made.append(client)
        if caps:
            client.send("CAP LS 302")
            client.send(f"CAP REQ :{caps}")
            client.expect(f":chatcore CAP * ACK :{caps}")
        client.send(f"NICK {nick}")
        client.send(f"USER {nick} 0 * :The real {nick}")
        if caps:
            client.send("CAP END")
        client.expect(re.compile(f" 001 {nick} "))
        if join:
            client.send(f"JOIN {join}")
            client.expect(re.compile(f" 366 {nick} {join} "))
        return client

    yield make
    for client in made:
        client.close()


def start(factory, *args: str, plugins: str = "") -> ChatServer:  # type: ignore[no-untyped-def]
    listen = ["--listen", "tcp://127.0.0.1:0", "--listen", "irc://127.0.0.1:0"]
    return factory("--plugins", ",".join(["irc", *filter(None, [plugins])]), *listen, *args)


def tags_of(line: str) -> dict[str, str]:
    assert line.startswith("@"), line
    return parse_tags(line[1:].partition(" ")[0])


# -- units -----------------------------------------------------------------------------


def test_tag_values_are_escaped_and_read_back():
    nasty = "a;b c\\d\re\nf"
    assert escape_tag_value(nasty) == "a\\:b\\sc\\\\d\\re\\nf"
    assert unescape_tag_value(escape_tag_value(nasty)) == nasty
    assert escape_tag_value("no\0nul") == "nonul"  # a NUL would cut the line
    assert unescape_tag_value("unknown\\xescape\\") == "unknownxescape"  # as the spec says
    assert parse_tags("+typing=active;msgid=e:1;flag;+draft/reply=e\\:2") == {
        "+typing": "active",
        "msgid": "e:1",
        "flag": "",
        "+draft/reply": "e;2",
    }
    assert tag_text([("a", "x y"), ("flag", "")]) == "a=x\\sy;flag"


def test_server_time_is_utc_with_milliseconds():
    assert server_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert server_time(1796601541.1239) == "2026-12-06T23:59:01.123Z"


def test_tags_go_before_the_tags_a_line_has():
    assert with_tags([b":a PRIVMSG #x :hi", b"@time=t :a NICK b"], "msgid=e:1") == [
        b"@msgid=e:1 :a PRIVMSG #x :hi",
        b"@msgid=e:1;time=t :a NICK b",
    ]
    assert with_tags([b"PING"], "") == [b"PING"]


def test_a_batch_wraps_lines_with_its_reference():
    lines = batch_lines(
        "srv", "b1", "chathistory", ["#lobby"], [b":a PRIVMSG #lobby :1", b"@time=t :a PRIVMSG #lobby :2"]
    )
    assert lines == [
        b":srv BATCH +b1 chathistory #lobby",
        b"@batch=b1 :a PRIVMSG #lobby :1",
        b"@batch=b1;time=t :a PRIVMSG #lobby :2",
        b":srv BATCH -b1",
    ]
    assert (
        batch_lines("srv", "7", "labeled-response", [], [], tags="label=x")[0]
        == b"@label=x :srv BATCH +7 labeled-response"
    )


def test_one_format_per_set_of_rendering_capabilities():
    plain = IRCFormat()
    assert plain.with_caps(["sasl", "batch"]) is plain  # these change no room line
    tagged = plain.with_caps(["server-time", "message-tags", "sasl"])
    assert isinstance(tagged, TaggedIRCFormat)
    assert tagged.with_caps(["message-tags", "server-time"]) is tagged  # shared by every client with that set
    assert plain.with_caps(["server-time"]) is not tagged
    assert tagged.with_caps([]) is plain
    assert plain.variants() == [tagged, plain.with_caps(["server-time"])]
    assert not tagged.echoes_messages
    assert plain.with_caps(["echo-message"]).echoes_messages


def test_the_plain_format_renders_todays_bytes_and_the_tagged_one_adds_time_and_id():
    event = Chat("lobby", "bob", "hi", 7, "e1", 1796601541.5)
    assert IRCFormat().encode(event) == b":bob!bob@chatcore PRIVMSG #lobby :hi\r\n"
    both = IRCFormat().with_caps(["server-time", "message-tags"])
    assert both.encode(event) == b"@time=2026-12-06T23:59:01.500Z;msgid=e1:7 :bob!bob@chatcore PRIVMSG #lobby :hi\r\n"
    assert (
        IRCFormat().with_caps(["message-tags"]).encode(event) == b"@msgid=e1:7 :bob!bob@chatcore PRIVMSG #lobby :hi\r\n"
    )
    # A long line split in two: both parts tagged, each within 512 bytes after its tags.
    long = both.encode(Chat("lobby", "bob", "x" * 600, 8, "e1", 1.0)).split(b"\r\n")[:-1]
    assert len(long) == 2
    assert all(line.startswith(b"@time=1970-01-01T00:00:01.000Z;msgid=e1:8 :bob") for line in long)
    assert all(len(line.partition(b" ")[2]) <= 510 for line in long)


def test_send_batch_wraps_only_for_clients_with_the_batch_capability():
    sent: list[bytes] = []
    client = SimpleNamespace(wire=IRCFormat(), data={}, send_data=sent.append)
    protocol = IRCProtocol(client)  # type: ignore[arg-type]
    lines = IRCFormat().event_lines(Chat("lobby", "bob", "hi", 1, "e", 1.0))
    protocol.send_batch("chathistory", ["#lobby"], lines)
    protocol.caps.add("batch")
    protocol.send_batch("chathistory", ["#lobby"], lines)
    protocol.send_batch("chathistory", ["#lobby"], lines)
    assert sent == [
        b":bob!bob@chatcore PRIVMSG #lobby :hi\r\n",
        b":chatcore BATCH +b1 chathistory #lobby\r\n@batch=b1 :bob!bob@chatcore PRIVMSG #lobby :hi\r\n"
        b":chatcore BATCH -b1\r\n",
        b":chatcore BATCH +b2 chathistory #lobby\r\n@batch=b2 :bob!bob@chatcore PRIVMSG #lobby :hi\r\n"
        b":chatcore BATCH -b2\r\n",
    ]


# -- over sockets ----------------------------------------------------------------------


def test_tags_reach_the_clients_that_asked_and_the_others_get_plain_lines(chat_server_factory, irc, connect):
    server = start(chat_server_factory)
    tagged = irc(server, "tagged", "message-tags server-time")
    timed = irc(server, "timed", "server-time")
    plain = irc(server, "plain")
    alice = connect(server, "alice")
    alice.send("hello")
    line = tagged.expect(re.compile("PRIVMSG #lobby :hello"))
    assert re.fullmatch(rf"@{TIME};msgid=\S+ :alice!alice@chatcore PRIVMSG #lobby :hello", line)
    assert re.fullmatch(rf"@{TIME} :alice!alice@chatcore PRIVMSG #lobby :hello", timed.expect(re.compile(":hello")))
    assert plain.expect(re.compile(":hello")) == ":alice!alice@chatcore PRIVMSG #lobby :hello"
    assert parse_msgid(tags_of(line)["msgid"]) is not None
    # Joins, nick changes and leaves carry them too.
    alice.send("/nick alicia")
    assert re.fullmatch(rf"@{TIME};msgid=\S+ :alice!alice@chatcore NICK alicia", tagged.expect(re.compile(" NICK ")))
    assert plain.expect(re.compile(" NICK ")) == ":alice!alice@chatcore NICK alicia"
    # One rendering per set: three formats in the room (two tagged, one plain), the native one.
    assert len(server.registry.feeds["lobby"]) == 4


def test_a_client_that_enables_tags_in_a_channel_gets_them_from_then_on(chat_server_factory, irc, connect):
    server = start(chat_server_factory)
    late = irc(server, "late")
    alice = connect(server, "alice")
    alice.send("before")
    assert late.expect(re.compile(":before$")).startswith(":alice")
    late.send("CAP REQ server-time")
    late.expect(":chatcore CAP late ACK :server-time")
    alice.send("after")
    assert re.match(rf"@{TIME} :alice", late.expect(re.compile(":after$")))
    late.send("CAP REQ -server-time")
    late.expect(":chatcore CAP late ACK :-server-time")
    alice.send("plain again")
    assert late.expect(re.compile(":plain again$")) == ":alice!alice@chatcore PRIVMSG #lobby :plain again"


def test_echo_message_returns_the_senders_lines_with_the_rooms_id(chat_server_factory, irc):
    server = start(chat_server_factory)
    echo = irc(server, "echo", "echo-message message-tags")
    other = irc(server, "other", "message-tags")
    echo.send("PRIVMSG #lobby :hi all")
    mine = echo.expect(re.compile("PRIVMSG #lobby :hi all"))
    theirs = other.expect(re.compile("PRIVMSG #lobby :hi all"))
    assert mine == theirs  # the same line, the same msgid
    assert mine.startswith("@msgid=")
    echo.send("PRIVMSG #lobby :\x01ACTION waves\x01")
    assert echo.expect(re.compile("ACTION waves")).endswith(":echo!echo@chatcore PRIVMSG #lobby :\x01ACTION waves\x01")
    echo.send("PRIVMSG other :psst")
    mine = echo.expect(re.compile(" :psst"))
    assert mine.endswith(" :echo!echo@chatcore PRIVMSG other :psst")
    assert other.expect(re.compile(" :psst")) == mine  # one ID for both copies
    # Without echo-message: nothing back, as before.
    other.send("PRIVMSG #lobby :no echo")
    echo.expect(re.compile(":no echo$"))
    assert not [line for line in other.sync() if "no echo" in line]


def test_own_join_carries_a_time_for_server_time_clients(chat_server_factory, irc):
    server = start(chat_server_factory)
    timed = irc(server, "timed", "server-time", join="")
    timed.send("JOIN #dev")
    assert re.fullmatch(rf"@{TIME} :timed!timed@chatcore JOIN #dev", timed.expect(re.compile(" JOIN #dev")))


# -- client tags and TAGMSG --------------------------------------------------------------


def test_tagmsg_reaches_members_with_message_tags_and_the_web_shows_typing(chat_server_factory, irc, connect):
    from test_web import WSClient

    server = start(chat_server_factory, "--listen", "ws://127.0.0.1:0", plugins="web")
    typist = irc(server, "typist", "message-tags")
    reader = irc(server, "reader", "message-tags server-time")
    plain = irc(server, "plain")
    alice = connect(server, "alice")
    browser = WSClient(server.listener("ws").address)
    try:
        browser.expect({"type": "welcome"})
        typist.send("@+typing=active;+draft/x=a\\sb;msgid=forged;label=no TAGMSG #lobby")
        line = reader.expect(re.compile(" TAGMSG #lobby$"))
        assert line.endswith(" :typist!typist@chatcore TAGMSG #lobby")
        tags = tags_of(line)
        # The client's own tags are relayed, escaped again; a server tag it sent is not.
        assert tags["+typing"] == "active"
        assert tags["+draft/x"] == "a b"
        assert tags["msgid"] != "forged"
        assert parse_msgid(tags["msgid"]) is not None
        assert "label" not in tags
        typing = browser.expect({"type": "typing"})
        assert typing == {**typing, "nick": "typist", "state": "active", "room": "lobby"}
        # Client tags ride on PRIVMSG too; a client without message-tags and
        # a native user get the line alone.
        typist.send("@+draft/reply=e:1 PRIVMSG #lobby :yes")
        assert tags_of(reader.expect(re.compile(" :yes$")))["+draft/reply"] == "e:1"
        assert plain.expect(re.compile(" :yes$")) == ":typist!typist@chatcore PRIVMSG #lobby :yes"
        alice.expect("<typist> yes")
        assert not [line for line in plain.sync() if "TAGMSG" in line]
        assert not [line for line in alice.sync() if "typing" in line]
        # A reaction alone is not shown on the web page.
        typist.send("@+draft/react=👍 TAGMSG #lobby")
        reader.expect(re.compile("TAGMSG"))
        typist.send("@+typing=done TAGMSG #lobby")
        assert browser.expect({"type": "typing"})["state"] == "done"
    finally:
        browser.close()


def test_tagmsg_to_a_nick_and_its_errors(chat_server_factory, irc):
    server = start(chat_server_factory)
    typist = irc(server, "typist", "message-tags echo-message")
    reader = irc(server, "reader", "message-tags")
    plain = irc(server, "plain")
    typist.send("@+typing=active TAGMSG reader")
    received = reader.expect(re.compile("TAGMSG reader$"))
    assert received.endswith(" :typist!typist@chatcore TAGMSG reader")
    assert tags_of(received)["+typing"] == "active"
    echoed = typist.expect(re.compile("TAGMSG reader$"))  # echo-message: the same message, the same ID
    assert tags_of(echoed)["msgid"] == tags_of(received)["msgid"]
    # Private messages have an ID and carry client tags too; one to oneself arrives (and comes back).
    typist.send("@+draft/reply=x PRIVMSG reader :hi")
    received = tags_of(reader.expect(re.compile(":hi$")))
    assert received["+draft/reply"] == "x"
    assert received["msgid"] == tags_of(typist.expect(re.compile(":hi$")))["msgid"]
    typist.send("PRIVMSG typist :note to self")
    assert len([line for line in typist.sync() if line.endswith("PRIVMSG typist :note to self")]) == 2
    typist.send("@+typing=active TAGMSG nobody")
    typist.expect(":chatcore 401 typist nobody :No such nick/channel")
    typist.send("@+typing=active TAGMSG #nowhere")
    typist.expect(":chatcore 403 typist #nowhere :No such channel")
    plain.send("@+typing=active TAGMSG #lobby")  # TAGMSG belongs to message-tags
    plain.expect(":chatcore 421 plain TAGMSG :Unknown command (CAP REQ :message-tags first)")
    # Tags over 4094 bytes (without the "@" and the space): 417, and nothing is relayed.
    typist.send(f"@+draft/x={'y' * 4086} PRIVMSG #lobby :too many tags")
    typist.expect(":chatcore 417 typist :Input line was too long (the limit for tags is 4094 bytes)")
    typist.send(f"@+draft/x={'y' * 4085} PRIVMSG #lobby :enough")
    assert tags_of(reader.expect(re.compile(":enough$")))["+draft/x"] == "y" * 4085
    assert not [line for line in reader.sync() if "too many tags" in line]


# -- the other capabilities ---------------------------------------------------------------


def test_cap_ls_302_lists_every_capability_with_its_values(chat_server_factory, tmp_path):
    server = start(chat_server_factory, "--state-db", str(tmp_path / "state.db"), plugins="accounts")
    client = IRCClient(server.listener("irc").address)
    try:
        client.send("CAP LS 302")
        assert client.readline() == (
            ":chatcore CAP * LS :account-notify account-tag away-notify batch cap-notify echo-message extended-join "
            "invite-notify labeled-response message-tags multi-prefix sasl=PLAIN,EXTERNAL server-time "
            "setname userhost-in-names"
        )
        client.send("CAP LIST")  # 302 enables cap-notify by itself
        assert client.readline() == ":chatcore CAP * LIST :cap-notify"
    finally:
        client.close()


def test_a_cap_version_of_non_ascii_digits_is_not_302(chat_server_factory):
    # "³02" passed str.isdigit() and int() raised, which dropped the client:
    # found by a minute of fuzzing (fuzz/corpus/irc/ keeps the input).
    server = start(chat_server_factory)
    client = IRCClient(server.listener("irc").address)
    try:
        client.send("CAP LS \u00b302")
        assert client.readline().startswith(":chatcore CAP * LS :account-notify ")  # no values: not 302
        client.send("CAP LIST")
        assert client.readline() == ":chatcore CAP * LIST :"  # and no cap-notify of its own
    finally:
        client.close()


def test_labeled_response_labels_one_line_batches_several_and_acks_none(chat_server_factory, irc):
    server = start(chat_server_factory)
    me = irc(server, "me", "labeled-response batch echo-message message-tags")
    me.send("@label=one PING :x")
    assert me.readline() == "@label=one :chatcore PONG chatcore :x"
    me.send("@label=two JOIN #dev")
    lines = me.sync()
    ref = lines[0].split()[3][1:]
    assert lines[0] == f"@label=two :chatcore BATCH +{ref} labeled-response"
    assert lines[1].startswith(f"@batch={ref};time=") or lines[1].startswith(f"@batch={ref} :me!me@chatcore JOIN #dev")
    assert [line.split(" ", 2)[2].split()[0] for line in lines[2:-1]] == ["353", "366"]
    assert all(line.startswith(f"@batch={ref} ") for line in lines[1:-1])
    assert lines[-1] == f":chatcore BATCH -{ref}"
    # Its own message back (echo-message) carries the label.
    me.send("@label=three PRIVMSG #dev :hi")
    echo = me.readline()
    assert tags_of(echo)["label"] == "three"
    assert "msgid" in tags_of(echo)
    assert echo.endswith(":me!me@chatcore PRIVMSG #dev :hi")
    me.send("@label=four AWAY")  # one numeric
    assert me.readline() == "@label=four :chatcore 305 me :You are no longer marked as being away"
    me.send("@label=five MODE #dev +n")  # a change that comes back through the room: nothing of its own
    assert me.sync()[0] == "@label=five :chatcore ACK"
    # Without the capability, a label is ignored.
    plain = irc(server, "plain", "batch")
    plain.send("@label=six PING :y")
    assert plain.readline() == ":chatcore PONG chatcore :y"


def test_multi_prefix_and_userhost_in_names(chat_server_factory, irc):
    server = start(chat_server_factory)
    op = irc(server, "op", join="#dev")  # the first in a channel runs it
    op.send("MODE #dev +v op")
    op.expect(re.compile(r"MODE #dev \+v op"))
    both = irc(server, "both", "multi-prefix userhost-in-names", join="")
    both.send("JOIN #dev")
    names = both.expect(re.compile(" 353 "))
    assert sorted(names.partition(" :")[2].split()) == ["@+op!op@chatcore", "both!both@chatcore"]
    both.send("WHO #dev")
    assert both.expect(re.compile(" 352 both #dev op ")).split()[8] == "H@+"
    op.send("NAMES #dev")
    assert sorted(op.expect(re.compile(" 353 ")).partition(" :")[2].split()) == ["@op", "both"]


def test_extended_join_and_account_tag_render_the_account_and_real_name():
    wire = IRCFormat().with_caps(["extended-join", "account-tag"])
    joined = Joined("lobby", nick="bob", user="b", account="bobacct", realname="Bob B", offset=1, epoch="e")
    assert wire.encode(joined) == b":bob!b@chatcore JOIN #lobby bobacct :Bob B\r\n"
    anonymous = Joined("lobby", nick="amy", offset=2, epoch="e")
    assert wire.encode(anonymous) == b":amy!amy@chatcore JOIN #lobby * amy\r\n"
    assert IRCFormat().encode(joined) == b":bob!b@chatcore JOIN #lobby\r\n"
    chat = Chat("lobby", "bob", "hi", 3, "e", 1.0, "b", account="bobacct")
    assert wire.encode(chat) == b"@account=bobacct :bob!b@chatcore PRIVMSG #lobby :hi\r\n"
    assert wire.encode(Chat("lobby", "amy", "hi", 4, "e", 1.0)) == b":amy!amy@chatcore PRIVMSG #lobby :hi\r\n"
    hostile = Joined("lobby", nick="eve", account="a b", realname="x", offset=5, epoch="e")
    assert wire.encode(hostile) == b":eve!eve@chatcore JOIN #lobby * x\r\n"


def test_extended_join_over_a_socket(chat_server_factory, irc):
    server = start(chat_server_factory)
    watcher = irc(server, "watcher", "extended-join")
    irc(server, "bob")
    assert watcher.expect(re.compile(" JOIN #lobby")) == ":bob!bob@chatcore JOIN #lobby * :The real bob"


def test_away_notify_tells_channel_peers_and_on_join(chat_server_factory, irc):
    server = start(chat_server_factory)
    watcher = irc(server, "watcher", "away-notify")
    plain = irc(server, "plain")
    other = irc(server, "other")
    other.send("AWAY :gone fishing")
    other.expect(re.compile(" 306 "))
    assert watcher.expect(re.compile(" AWAY")) == ":other!other@chatcore AWAY :gone fishing"
    other.send("AWAY")
    other.expect(re.compile(" 305 "))
    assert watcher.expect(re.compile(" AWAY")) == ":other!other@chatcore AWAY"
    other.send("AWAY :again")
    other.expect(re.compile(" 306 "))
    watcher.expect(re.compile(" AWAY :again"))
    watcher.send("JOIN #dev")
    watcher.expect(re.compile(" 366 watcher #dev "))
    other.send("JOIN #dev")
    assert watcher.expect(re.compile("JOIN #dev|AWAY")) == ":other!other@chatcore JOIN #dev"
    assert watcher.expect(re.compile(" AWAY")) == ":other!other@chatcore AWAY :again"
    assert not [line for line in plain.sync() if " AWAY" in line]


def test_setname_changes_the_real_name_and_tells_those_who_asked(chat_server_factory, irc):
    server = start(chat_server_factory)
    me = irc(server, "me", "setname")
    watcher = irc(server, "watcher", "setname")
    plain = irc(server, "plain")
    me.send("SETNAME :Mister Me")
    assert me.expect(re.compile(" SETNAME ")) == ":me!me@chatcore SETNAME :Mister Me"
    assert watcher.expect(re.compile(" SETNAME ")) == ":me!me@chatcore SETNAME :Mister Me"
    plain.send("WHOIS me")
    assert plain.expect(re.compile(" 311 ")) == ":chatcore 311 plain me me chatcore * :Mister Me"
    assert not [line for line in plain.sync() if "SETNAME" in line]
    me.send("SETNAME :")
    assert me.expect(re.compile("FAIL")) == ":chatcore FAIL SETNAME INVALID_REALNAME :Realname is not valid"
    me.send(f"SETNAME :{'x' * 101}")
    assert me.expect(re.compile("FAIL")) == ":chatcore FAIL SETNAME INVALID_REALNAME :Realname is not valid"


def test_invite_notify_tells_the_channels_other_operators(chat_server_factory, irc):
    server = start(chat_server_factory)
    first = irc(server, "first", join="#dev")
    second = irc(server, "second", "invite-notify", join="#dev")
    first.send("MODE #dev +o second")
    second.expect(re.compile(r"MODE #dev \+o second"))
    irc(server, "carol", join="")
    first.send("INVITE carol #dev")
    first.expect(re.compile(" 341 "))
    assert second.expect(re.compile(" INVITE ")) == ":first!first@chatcore INVITE carol #dev"


def test_cap_notify_says_what_came_and_went(chat_server_factory, irc, monkeypatch):
    server = start(chat_server_factory)
    offered = {"draft/example": "v1"}
    capability = Capability("draft/example", lambda protocol: offered.get("draft/example"))
    monkeypatch.setitem(CAPABILITIES, "draft/example", capability)
    notified = irc(server, "notified", "cap-notify draft/example")
    old = IRCClient(server.listener("irc").address)  # CAP LS without 302 and no cap-notify: told nothing
    try:
        old.send("CAP LS")
        old.readline()
        del offered["draft/example"]
        capabilities_changed(server)
        assert notified.readline() == ":chatcore CAP notified DEL :draft/example"
        notified.send("CAP LIST")
        assert notified.readline() == ":chatcore CAP notified LIST :cap-notify"
        offered["draft/example"] = "v2"
        capabilities_changed(server)
        assert notified.readline() == ":chatcore CAP notified NEW :draft/example=v2"
        assert old.sync() == []
    finally:
        old.close()


def test_account_notify_tells_channel_peers_of_logins_and_logouts(chat_server_factory, irc, connect, tmp_path):
    server = start(chat_server_factory, "--state-db", str(tmp_path / "state.db"), plugins="accounts")
    watcher = irc(server, "watcher", "account-notify account-tag")
    plain = irc(server, "plain")
    dana = connect(server, "dana")  # a native user in the lobby
    dana.send("/register horse-battery-9")
    dana.expect(lambda line: line.startswith("* registered the account dana"))
    assert watcher.expect(re.compile(" ACCOUNT ")) == ":dana!dana@chatcore ACCOUNT dana"
    dana.send("logged in now")
    assert (
        watcher.expect(re.compile(":logged in now$"))
        == "@account=dana :dana!dana@chatcore PRIVMSG #lobby :logged in now"
    )
    dana.send("/logout")
    dana.sync()
    assert watcher.expect(re.compile(" ACCOUNT ")) == ":dana!dana@chatcore ACCOUNT *"
    assert not [line for line in plain.sync() if " ACCOUNT " in line]


class AccountWatcher:
    """A plugin that records every account change."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    @hookimpl
    def chatcore_account_changed(self, client, old: str) -> None:  # type: ignore[no-untyped-def]
        self.changes.append((client.nick, old, client.account))


def test_account_changes_reach_the_hook_once_each(chat_server_factory, connect, tmp_path):
    watcher = AccountWatcher()
    listen = ["--listen", "tcp://127.0.0.1:0"]
    server = chat_server_factory(
        "--plugins", "accounts", "--state-db", str(tmp_path / "state.db"), *listen, plugins=[watcher]
    )
    dana = connect(server, "dana")
    dana.send("/register horse-battery-9")
    dana.expect(lambda line: line.startswith("* registered the account dana"))
    dana.send("/logout")
    dana.sync()
    dana.send("/login dana horse-battery-9")
    dana.sync()
    assert watcher.changes == [("dana", "", "dana"), ("dana", "dana", ""), ("dana", "", "dana")]


def test_a_labeled_message_to_oneself_labels_the_echo_only(chat_server_factory, irc):
    server = start(chat_server_factory)
    me = irc(server, "me", "labeled-response batch echo-message")
    me.send("@label=x PRIVMSG me :hi me")
    lines = [line for line in me.sync() if line.endswith("PRIVMSG me :hi me")]
    assert sorted(lines) == [":me!me@chatcore PRIVMSG me :hi me", "@label=x :me!me@chatcore PRIVMSG me :hi me"]
