"""The web page in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium; nothing is downloaded), against a real
``chatcore serve`` process, beside a native client.

Screenshots go to the test's temporary folder (``CHATCORE_SCREENSHOTS=DIR``
keeps them somewhere else).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import signal
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from chatcore.testing import LineClient, ServerProcess, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT = 15


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., WebDriver]]:
    """``browser(*arguments)``: a new headless Chromium with a fresh profile
    (and extra command-line arguments); quit at teardown."""
    # Missing is a failure, never a skip: .ci/run installs them.
    for program in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(program), f"the browser tests need {program}: apt-get install chromium chromium-driver"
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or driver
    drivers: list[WebDriver] = []

    def start(*arguments: str) -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profile = tmp_path / f"profile-{len(drivers)}"
        for argument in (
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--window-size=1000,700", *arguments,
        ):  # fmt: skip
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(TIMEOUT)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str, timeout: float = TIMEOUT) -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        log = texts(driver, "#log li")[-10:]
        state = driver.find_element(By.ID, "state").text
        raise AssertionError(f"timed out waiting for {what}; state {state!r}, log {log}") from None


# The page draws its log and lists anew as events come (a view switched,
# a badge counted): what the tests read of them is read in one script, as
# the page has it at one moment, never element by element (an element found
# may be gone from the page by the time its text is asked for).


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The text of each element ``selector`` finds (without CSS-generated text)."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)", selector
    )
    return found


def click(driver: WebDriver, find: Callable[[WebDriver], Any], what: str) -> None:
    """Click what ``find`` finds, again if the page drew it anew meanwhile."""

    def clicked(d: WebDriver) -> bool:
        try:
            find(d).click()
        except (StaleElementReferenceException, NoSuchElementException, LookupError):
            return False
        return True

    wait(driver, clicked, what)


def styled(driver: WebDriver, selector: str) -> list[tuple[str, str, str]]:
    """Each element's text, classes and computed colour."""
    found: list[tuple[str, str, str]] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map((e) => [e.textContent, e.className, getComputedStyle(e).color])",
        selector,
    )
    return found


def log_texts(driver: WebDriver) -> list[str]:
    return texts(driver, "#log li .text")


def log_has(driver: WebDriver, part: str) -> bool:
    return any(part in text for text in log_texts(driver))


def state(driver: WebDriver) -> str | None:
    return driver.find_element(By.ID, "state").get_attribute("data-state")


def wait_for_text(driver: WebDriver, text: str) -> None:
    wait(driver, lambda d: text in log_texts(d), f"{text!r} in the log")


def open_page(driver: WebDriver, url: str, nick: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.find_element(By.ID, "nick-dialog").get_attribute("open") is not None, "the nick dialog")
    field = driver.find_element(By.ID, "nick-input")
    field.clear()
    field.send_keys(nick)
    driver.find_element(By.ID, "nick-submit").click()
    wait(driver, lambda d: d.find_element(By.ID, "nick-dialog").get_attribute("open") is None, "the nick accepted")
    wait(driver, lambda d: state(d) == "connected", "connected")


def say(driver: WebDriver, text: str) -> None:
    field = driver.find_element(By.ID, "input")
    field.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "#input-form button").click()
    wait(driver, lambda d: d.find_element(By.ID, "input").get_attribute("value") == "", "the line sent")


def _button(driver: WebDriver, selector: str, name: str):  # type: ignore[no-untyped-def]
    """The button ``selector`` finds whose text (less a count) is ``name``,
    found in one script; LookupError if there is none (yet)."""
    button = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".find((b) => b.textContent.split(' (')[0] === arguments[1]) || null",
        selector,
        name,
    )
    if button is None:
        raise LookupError(f"no {name} in the list ({selector})")
    return button


def room_button(driver: WebDriver, room: str):  # type: ignore[no-untyped-def]
    return _button(driver, "#rooms button.room", room)


def leave_button(driver: WebDriver, room: str):  # type: ignore[no-untyped-def]
    return room_button(driver, room).find_element(By.XPATH, "..").find_element(By.CSS_SELECTOR, "button.leave")


def joined_rooms(driver: WebDriver) -> list[str]:
    return [text.split(" (")[0] for text in texts(driver, "#rooms li.joined button.room")]


def badges(driver: WebDriver) -> dict[str, str]:
    """The unread badge of each joined room that has one."""
    found: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#rooms li.joined')]"
        ".filter((item) => item.querySelector('.badge'))"
        ".map((item) => [item.querySelector('button.room').textContent.split(' (')[0],"
        " item.querySelector('.badge').textContent]))"
    )
    return found


def private_list(driver: WebDriver) -> dict[str, str]:
    """Each private conversation in the list, with its unread badge ("" for none)."""
    # Read in one step: the list is drawn anew as messages come.
    found: dict[str, str] = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#privates li')].map((item) =>"
        " [item.querySelector('button.peer').textContent, item.querySelector('.badge')?.textContent || '']))"
    )
    return found


def peer_button(driver: WebDriver, nick: str):  # type: ignore[no-untyped-def]
    return _button(driver, "#privates button.peer", nick)


def shown(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "room-name").text)


def topic(driver: WebDriver) -> tuple[str, str | None]:
    """The topic bar's text, and whether the visitor may edit it ("true"/"false")."""
    bar = driver.find_element(By.ID, "topic")
    return bar.find_element(By.ID, "topic-text").text, bar.get_attribute("data-editable")


def nick_color(nick: str) -> str:
    """app.js's nickColor: djb2 (xor) of the lower-case nick, modulo 16."""
    value = 5381
    for char in nick.lower():
        value = ((value * 33) ^ ord(char)) & 0xFFFFFFFF
    return f"nick-color-{value % 16}"


def members(driver: WebDriver) -> list[str]:
    return texts(driver, "#members li")


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("CHATCORE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve(*args: str, web: str = "ws://127.0.0.1:0") -> ServerProcess:
    return ServerProcess(
        "--plugins", "welcome,web,history", "--listen", web, "--listen", "tcp://127.0.0.1:0", *args
    )  # fmt: skip


def test_two_browsers_and_a_native_client_chat_in_every_direction(browser, tmp_path):
    with serve() as server:
        url = "http://{}:{}/".format(*server.addresses["ws"])
        alice, bob = browser(), browser()
        open_page(alice, url, "alice")
        native = LineClient(server.addresses["tcp"])
        try:
            native.send("/nick nat")
            native.expect("* you are now known as nat")
            native.send("before bob came")
            open_page(bob, url, "bob")
            # History on entering the room, and the member list.
            wait_for_text(bob, "before bob came")
            wait(bob, lambda d: members(d) == ["alice", "bob", "nat"], "three members")
            wait(alice, lambda d: members(d) == ["alice", "bob", "nat"], "bob in alice's member list")

            say(alice, "hello from alice")
            native.expect("<alice> hello from alice")
            wait_for_text(bob, "hello from alice")
            say(bob, "hello from bob")
            native.expect("<bob> hello from bob")
            wait_for_text(alice, "hello from bob")
            native.send("hello from nc, see https://example.com/page.")
            for driver in (alice, bob):
                wait_for_text(driver, "hello from nc, see https://example.com/page.")
            link = alice.find_element(By.CSS_SELECTOR, "#log a")
            assert link.get_attribute("href") == "https://example.com/page"
            assert link.get_attribute("rel") == "noopener noreferrer"

            say(alice, "/me waves")
            native.expect("* alice waves")
            wait(
                bob,
                lambda d: "* alice" in texts(d, "li.action .nick"),
                "the action",
            )
            say(bob, "/msg nat psst from bob")
            native.expect("*bob* psst from bob")
            native.send("/msg alice psst from nat")
            # In a conversation of its own, not the room's timeline.
            wait(alice, lambda d: private_list(d) == {"nat": "1"}, "a private conversation with nat, unread")
            assert "psst from nat" not in log_texts(alice)
            click(alice, lambda d: peer_button(d, "nat"), "the button nat")
            wait_for_text(alice, "psst from nat")
            click(alice, lambda d: room_button(d, "lobby"), "the button lobby")
            wait(alice, lambda d: d.find_element(By.ID, "room-name").text == "#lobby", "alice back in the lobby")
            assert "psst from nat" not in log_texts(bob)

            # Markup and script-like text stay text.
            hostile = "<img src=x onerror=\"document.title='pwned'\"> <b>bold</b> javascript:alert(1)"
            native.send(hostile)
            for driver in (alice, bob):
                wait_for_text(driver, hostile)
                assert driver.find_elements(By.CSS_SELECTOR, "#log img, #log b") == []
                assert all(
                    (a.get_attribute("href") or "").startswith("https://")
                    for a in driver.find_elements(By.CSS_SELECTOR, "#log a")
                )
                assert driver.title != "pwned"
            # A nick with markup is refused by the server, and the refusal is shown as text.
            say(bob, "/nick <script>x</script>")
            wait(
                bob,
                lambda d: log_has(d, "invalid nickname '<script>x</script>'"),
                "the nick refused",
            )
            assert bob.find_elements(By.CSS_SELECTOR, "#log script") == []

            # /join: a second room with a buffer of its own; the lobby stays
            # joined, and what is said there meanwhile waits under a badge.
            say(bob, "/join dev")
            wait(bob, lambda d: d.find_element(By.ID, "room-name").text == "#dev", "bob in dev")
            wait(bob, lambda d: members(d) == ["bob"], "dev's member list")
            assert "hello from alice" not in log_texts(bob)  # the lobby's lines are in its own buffer
            wait(
                bob,
                lambda d: "dev (1)" in texts(d, "#rooms button.room"),
                "dev in the room list, live",
            )
            native.send("said while bob looks at dev")
            wait(bob, lambda d: badges(d) == {"lobby": "1"}, "a badge on the lobby")
            assert "said while bob looks at dev" not in log_texts(bob)
            click(
                bob, lambda d: room_button(d, "lobby"), "the button lobby"
            )  # back to the lobby: a switch, not a new join
            wait(bob, lambda d: d.find_element(By.ID, "room-name").text == "#lobby", "bob back in the lobby")
            wait_for_text(bob, "said while bob looks at dev")
            assert "hello from alice" in log_texts(bob)
            assert badges(bob) == {}
            assert not [seen for seen in native.sync() if "bob" in seen]  # nat saw bob neither leave nor join
            click(bob, lambda d: leave_button(d, "dev"), "the button dev")
            wait(bob, lambda d: joined_rooms(d) == ["lobby"], "dev left")
            say(alice, "/nick alicia")
            wait(alice, lambda d: "alicia" in members(d), "the new nick")
            # She came first, so runs the lobby, under her new name too.
            wait(alice, lambda d: topic(d) == ("no topic: click to set one", "true"), "the topic hers to set")
            native.expect("* alice is now known as alicia")
            screenshot(alice, tmp_path, "web-chat")
        finally:
            native.close()


def test_two_rooms_a_private_conversation_with_a_native_user_and_the_topic(browser, tmp_path):
    with serve() as server:
        url = "http://{}:{}/".format(*server.addresses["ws"])
        native = LineClient(server.addresses["tcp"])
        try:
            native.send("/nick nat")
            native.expect("* you are now known as nat")
            native.send("/topic Welcome, all")  # nat came first: the lobby's operator
            native.expect("* nat set the topic: Welcome, all")

            # Asking for a name first: not connected meanwhile, so nobody sees anything.
            alice = browser()
            alice.get(url)
            wait(alice, lambda d: d.find_element(By.ID, "nick-dialog").get_attribute("open") is not None, "the dialog")
            assert state(alice) == "idle"
            assert not [line for line in native.sync() if "joined" in line or "guest-" in line]
            heard = len(native.received)
            field = alice.find_element(By.ID, "nick-input")
            field.clear()
            field.send_keys("alice")
            alice.find_element(By.ID, "nick-submit").click()
            wait(alice, lambda d: state(d) == "connected", "connected")
            native.expect("* alice joined")  # the first the room hears of her: her own name
            assert not [line for line in native.received[heard:] if "guest-" in line]
            wait(alice, lambda d: shown(d) == "#lobby", "alice in the lobby")
            # The welcome greets her by her name, on top of the first room.
            assert log_has(alice, "Welcome to chatcore, alice!")

            # The lobby's topic, read-only for alice; it changes live.
            wait(alice, lambda d: topic(d) == ("Welcome, all", "false"), "the lobby's topic, read-only")
            alice.find_element(By.ID, "topic-text").click()
            assert not alice.find_element(By.ID, "topic-input").is_displayed()
            native.send("/topic Quiet please")
            wait(alice, lambda d: topic(d)[0] == "Quiet please", "the new topic")
            wait_for_text(alice, "nat set the topic: Quiet please")

            # A second room, which alice runs: she sets its topic in the page.
            alice.find_element(By.ID, "join-input").send_keys("dev")
            alice.find_element(By.CSS_SELECTOR, "#join-form button").click()
            wait(alice, lambda d: shown(d) == "#dev", "alice in dev")
            wait(alice, lambda d: topic(d) == ("no topic: click to set one", "true"), "dev's topic, editable")
            native.send("/join dev")
            native.expect("* you are now in dev (2 here)")
            wait(alice, lambda d: members(d) == ["alice", "nat"], "dev's members")
            alice.find_element(By.ID, "topic-text").click()
            editor = alice.find_element(By.ID, "topic-input")
            wait(alice, lambda d: editor.is_displayed(), "the topic editor")
            editor.send_keys("Release on Friday\n")
            native.expect("[dev] * alice set the topic: Release on Friday")
            wait(alice, lambda d: topic(d) == ("Release on Friday", "true"), "dev's topic set")
            assert not editor.is_displayed()
            # Escape leaves it as it was.
            alice.find_element(By.ID, "topic-text").click()
            editor.send_keys("never mind")
            editor.send_keys(Keys.ESCAPE)
            wait(alice, lambda d: not editor.is_displayed(), "the editor closed")
            assert topic(alice) == ("Release on Friday", "true")
            # Changed by someone else while she edits: left alone until she is done.
            say(alice, "/mode +o nat")
            native.expect("[dev] * alice set mode +o nat")
            alice.find_element(By.ID, "topic-text").click()
            wait(alice, lambda d: editor.is_displayed(), "the editor again")
            native.send("/topic Release on Monday")
            wait_for_text(alice, "nat set the topic: Release on Monday")
            assert editor.is_displayed()
            editor.send_keys(Keys.ESCAPE)
            wait(alice, lambda d: topic(d) == ("Release on Monday", "true"), "the topic set meanwhile")
            # Her topic is the lobby's no more when she looks there, and nat's lines wait under badges.
            native.send("/join lobby")  # nat's current room: the lobby
            native.expect("* you now talk in lobby")
            native.send("said in the lobby")
            wait(alice, lambda d: badges(d) == {"lobby": "1"}, "a badge on the lobby")
            assert "said in the lobby" not in log_texts(alice)

            # A private conversation, opened from the member list.
            click(alice, lambda d: d.find_elements(By.CSS_SELECTOR, "#members li")[1], "nat in the member list")
            wait(alice, lambda d: shown(d) == "private: nat", "the conversation with nat")
            assert topic(alice) == ("private conversation with nat: only you two see it", "false")
            say(alice, "hi nat, just us")
            native.expect("*alice* hi nat, just us")
            wait_for_text(alice, "hi nat, just us")
            native.send("/msg alice hi alice")
            wait_for_text(alice, "hi alice")
            assert private_list(alice) == {"nat": ""}
            # Back in dev: the conversation is not in the room's timeline; a
            # message that comes meanwhile waits under its badge.
            click(alice, lambda d: room_button(d, "dev"), "the button dev")
            wait(alice, lambda d: shown(d) == "#dev", "dev shown again")
            assert not {"hi nat, just us", "hi alice"} & set(log_texts(alice))
            native.send("/msg alice are you there?")
            wait(alice, lambda d: private_list(d) == {"nat": "1"}, "an unread private message")
            assert "are you there?" not in log_texts(alice)
            # /msg typed in a room: sent, into the conversation, and the view stays.
            say(alice, "/msg nat yes, in dev")
            native.expect("*alice* yes, in dev")
            assert shown(alice) == "#dev"
            click(alice, lambda d: peer_button(d, "nat"), "the button nat")
            wait_for_text(alice, "yes, in dev")
            assert log_texts(alice) == [
                "hi nat, just us", "hi alice", "are you there?", "yes, in dev",
            ]  # fmt: skip
            assert private_list(alice) == {"nat": ""}
            # A rename follows the conversation.
            native.send("/nick natalie")
            wait(alice, lambda d: private_list(d) == {"natalie": ""}, "the conversation renamed")
            wait(alice, lambda d: shown(d) == "private: natalie", "the view renamed")
            say(alice, "still there?")
            native.expect("*alice* still there?")

            # Each nick's colour comes from its name, the same in the log and the member list.
            in_log = {text: classes for text, classes, _ in styled(alice, "#log .nick")}
            assert nick_color("alice") in in_log["alice"]
            assert nick_color("nat") in in_log["nat"]
            click(alice, lambda d: room_button(d, "lobby"), "the button lobby")
            wait(alice, lambda d: shown(d) == "#lobby", "the lobby")
            wait_for_text(alice, "said in the lobby")
            wait(alice, lambda d: members(d) == ["alice", "natalie"], "the lobby's members")
            listed = styled(alice, "#members li")
            for text, classes, _ in listed:
                assert nick_color(text) in classes
            assert ["op" in classes.split() for _, classes, _ in listed] == [False, True]  # natalie runs the lobby
            text_colour = alice.execute_script("return getComputedStyle(document.body).color")
            assert (
                len({*(colour for _, _, colour in listed), text_colour}) == 3
            )  # two nicks, two colours, not the text's
            screenshot(alice, tmp_path, "web-private")
            # Closing the conversation.
            click(
                alice,
                lambda d: (
                    peer_button(d, "natalie").find_element(By.XPATH, "..").find_element(By.CSS_SELECTOR, ".leave")
                ),
                "the conversation's close button",
            )
            wait(alice, lambda d: private_list(d) == {}, "the conversation closed")
            wait(alice, lambda d: shown(d) == "#lobby", "the room shown again")
            # /query, the page's own command, opens one again (and says a line in it).
            alice.find_element(By.ID, "input").send_keys("/query no/such")
            alice.find_element(By.CSS_SELECTOR, "#input-form button").click()
            wait_for_text(alice, "usage: /query NICK [TEXT] (a nick: 1 to 32 letters, digits, _ or -)")
            assert alice.find_element(By.ID, "input").get_attribute("value") == "/query no/such"  # kept, to mend
            alice.find_element(By.ID, "input").clear()
            say(alice, "/query natalie back again")
            native.expect("*alice* back again")
            wait(alice, lambda d: shown(d) == "private: natalie", "the conversation opened by /query")
            wait_for_text(alice, "back again")
            alice.find_element(By.ID, "input").send_keys("/me waves\n")
            wait_for_text(alice, "/me is for rooms: a private conversation has no actions")
        finally:
            native.close()


def test_the_page_works_in_a_narrow_window(browser, tmp_path):
    with serve() as server:
        driver = browser()
        driver.set_window_size(390, 800)
        open_page(driver, "http://{}:{}/".format(*server.addresses["ws"]), "phone")
        side = driver.find_element(By.ID, "side")
        assert not side.is_displayed()
        toggle = driver.find_element(By.ID, "toggle-side")
        assert toggle.is_displayed()
        toggle.click()
        wait(driver, lambda d: d.find_element(By.ID, "side").is_displayed(), "the side panel")
        assert members(driver) == ["phone"]
        toggle.click()
        say(driver, "small screen")
        assert driver.find_element(By.ID, "input").size["width"] > 200
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(driver, tmp_path, "web-narrow")


def history_rows(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return [text for (text,) in connection.execute("SELECT text FROM chatcore_history ORDER BY id")]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_restart_shows_the_disconnect_reconnects_and_loses_nothing_kept(browser, tmp_path, how):
    port = free_port()
    db = tmp_path / "history.db"
    args = ("--history-db", str(db))
    driver = browser()
    first = serve(*args, web=f"ws://127.0.0.1:{port}").start()
    try:
        open_page(driver, f"http://127.0.0.1:{port}/", "alice")
        say(driver, "/join dev")
        wait(driver, lambda d: d.find_element(By.ID, "room-name").text == "#dev", "alice in dev")
        native = LineClient(first.addresses["tcp"])
        native.send("/join dev")
        native.send("said before the restart")
        wait_for_text(driver, "said before the restart")
        say(driver, "alice before the restart")
        native.expect(lambda line: line.endswith("> alice before the restart"))
        native.close()
        # Killed, the server keeps only what its history had written: wait for that.
        wanted = ["said before the restart", "alice before the restart"]
        wait_for(lambda: history_rows(db) == wanted, TIMEOUT, "the history written to the database")
    finally:
        assert first.stop(how) == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    wait(driver, lambda d: state(d) == "disconnected", "disconnected")
    assert "reconnecting in" in driver.find_element(By.ID, "state").text
    screenshot(driver, tmp_path, f"web-disconnected-{how.name}")
    with serve(*args, web=f"ws://127.0.0.1:{port}") as second:
        wait(
            driver,
            lambda d: state(d) == "connected",
            "reconnected",
            40,
        )
        wait(driver, lambda d: d.find_element(By.ID, "room-name").text == "#dev", "back in dev")
        wait(driver, lambda d: "alice" in members(d), "alice's nick again")
        wait(driver, lambda d: log_has(d, "you may have missed messages"), "the missed-messages line")
        native = LineClient(second.addresses["tcp"])
        try:
            native.send("/join dev")
            native.send("/part lobby")
            native.send("said after the restart")
            wait_for_text(driver, "said after the restart")
            texts = log_texts(driver)
            # What the history kept is there once: not lost, not doubled.
            assert texts.count("said before the restart") == 1, texts
            assert texts.count("alice before the restart") == 1, texts
            say(driver, "alice after the restart")
            native.expect("<alice> alice after the restart")
        finally:
            native.close()


class Proxy:
    """A TCP forwarder on 127.0.0.1 to :attr:`upstream` (set it before the
    first connection), whose link can be cut: the network between a browser
    and the server going away and back, while the server keeps running."""

    def __init__(self) -> None:
        self.upstream: tuple[str, int] = ("", 0)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.up = True
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._all: list[socket.socket] = []  # closed at the end, once no pump uses them
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.up:
                near.close()  # refused while the link is down
                continue
            far = socket.create_connection(self.upstream)
            with self._lock:
                self._pairs.append((near, far))
                self._all += (near, far)
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""
        self.up = False
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
        for sock in self._all:
            sock.close()


def test_after_a_lost_connection_the_page_gets_what_it_missed_once(browser, tmp_path):
    # The page is reached through the proxy, as through a reverse proxy:
    # its origin is the proxy's, allowed with --web-origins.
    proxy = Proxy()
    with serve("--history-lines", "4", "--web-origins", f"http://127.0.0.1:{proxy.port}") as server:
        proxy.upstream = server.addresses["ws"]
        driver = browser()
        native = LineClient(server.addresses["tcp"])
        try:
            open_page(driver, f"http://127.0.0.1:{proxy.port}/", "alice")
            native.send("/nick nat")
            native.expect("* you are now known as nat")
            native.send("one")
            wait_for_text(driver, "one")
            say(driver, "alice says hi")
            native.expect("<alice> alice says hi")

            # The link goes; the server sees alice leave and the room goes on.
            proxy.cut()
            wait(driver, lambda d: state(d) == "disconnected", "disconnected")
            native.expect(re.compile(r"^\* alice left"))
            native.send("two")
            native.send("three")
            native.sync()
            proxy.restore()
            wait(driver, lambda d: state(d) == "connected", "reconnected", 40)
            wait_for_text(driver, "three")
            wait(driver, lambda d: "alice" in members(d), "alice's nick again")
            native.sync()
            texts = log_texts(driver)
            for line in ("one", "two", "three", "alice says hi"):
                assert texts.count(line) == 1, (line, texts)
            assert not log_has(driver, "you may have missed messages")

            # Again, with more said than the history keeps (4 lines): the page says so.
            proxy.cut()
            wait(driver, lambda d: state(d) == "disconnected", "disconnected again")
            native.expect(re.compile(r"^\* alice left"))
            for n in range(6):
                native.send(f"missed {n}")
            native.sync()
            proxy.restore()
            wait(driver, lambda d: log_has(d, "you may have missed messages"), "the missed-messages line", 40)
            wait_for_text(driver, "missed 5")
            texts = log_texts(driver)
            assert [t for t in texts if t.startswith("missed ")] == ["missed 2", "missed 3", "missed 4", "missed 5"]
            screenshot(driver, tmp_path, "web-resumed")
        finally:
            native.close()
            proxy.close()


class _EvilPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


OPEN_WEBSOCKET = """
const [url, done] = arguments;
const ws = new WebSocket(url);
ws.onopen = () => { ws.close(); done("open"); };
ws.onerror = () => done("refused");
"""


def test_a_cross_origin_websocket_is_refused_in_the_browser(browser):
    evil = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _EvilPage)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        with serve() as server:
            host, port = server.addresses["ws"]
            driver = browser()
            driver.set_script_timeout(TIMEOUT)
            # From the chat's own page: it opens.
            driver.get(f"http://{host}:{port}/")
            assert driver.execute_async_script(OPEN_WEBSOCKET, f"ws://{host}:{port}/ws") == "open"
            # From another site's page: refused by the server's Origin check.
            driver.get(f"http://127.0.0.2:{evil.server_address[1]}/")
            assert driver.execute_async_script(OPEN_WEBSOCKET, f"ws://{host}:{port}/ws") == "refused"
        assert f"Origin http://127.0.0.2:{evil.server_address[1]}" in server.stderr
    finally:
        evil.shutdown()
        evil.server_close()


def test_lines_that_arrive_while_the_tab_is_hidden_are_marked_unread(browser):
    with serve() as server:
        driver = browser()
        open_page(driver, "http://{}:{}/".format(*server.addresses["ws"]), "alice")
        native = LineClient(server.addresses["tcp"])
        try:
            native.send("seen while looking")
            wait_for_text(driver, "seen while looking")
            # The page hidden as a background tab is: what the browser says
            # to it, set by hand, so that the lines surely arrive while it is
            # hidden (a real tab switch races with their delivery).
            driver.execute_script(
                "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
                "document.dispatchEvent(new Event('visibilitychange'));"
            )
            native.send("first unseen")
            native.send("second unseen")
            wait_for_text(driver, "second unseen")
            wait(driver, lambda d: d.title.startswith("(2)"), "the unread count in the title")
            driver.execute_script("delete document.hidden; document.dispatchEvent(new Event('visibilitychange'));")
            # The marker is put in only while the page is hidden.
            items = driver.find_elements(By.CSS_SELECTOR, "#log li")
            kinds = [("marker" if "unread-marker" in (i.get_attribute("class") or "") else i.text) for i in items]
            marker = kinds.index("marker")
            assert "seen while looking" in kinds[marker - 1]
            assert "first unseen" in kinds[marker + 1]
            wait(driver, lambda d: d.title == "chatcore", "the title without the count once looked at")
        finally:
            native.close()


def test_scrolling_to_the_top_loads_older_lines_back_through_500(browser, tmp_path):
    with serve("--history-room-lines", "lobby=600") as server:
        native = LineClient(server.addresses["tcp"])
        try:
            native.send("/nick nat")
            native.expect("* you are now known as nat")
            for number in range(500):
                native.send(f"line {number:03}")
            native.sync()  # each kept before the pong
            driver = browser()
            open_page(driver, "http://{}:{}/".format(*server.addresses["ws"]), "alice")
            wait_for_text(driver, "line 499")
            said = [f"line {number:03}" for number in range(500)]

            def lines(d: WebDriver) -> list[str]:
                return [text for text in log_texts(d) if text.startswith("line ")]

            assert lines(driver) == said[-20:]  # the replay on entering: --history-lines
            pages = 0
            while "nothing older is kept" not in log_texts(driver):
                before = len(lines(driver))
                # As a person scrolling up: the log to its top, and the page keeps what was shown in view.
                driver.execute_script("const log = document.getElementById('log'); log.scrollTop = 0;")
                wait(driver, lambda d, n=before: len(lines(d)) > n or "nothing older is kept" in log_texts(d), "older")
                pages += 1
                assert pages < 20
                # Older lines go above without moving the view to the top.
                if "nothing older is kept" not in log_texts(driver):
                    assert driver.execute_script("return document.getElementById('log').scrollTop") > 0
            assert lines(driver) == said  # all 500, in order, none twice
            assert log_texts(driver).index("nothing older is kept") < log_texts(driver).index("line 000")
            native.send("and a new one")
            wait_for_text(driver, "and a new one")
            assert lines(driver)[-1] == "line 499"
            screenshot(driver, tmp_path, "scroll-back")
        finally:
            native.close()


def test_the_page_over_wss(browser, tmp_path):
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    with serve("--tls-cert", str(cert), "--tls-key", str(key), web="wss://127.0.0.1:0") as server:
        # The test's own CA is not in Chromium's store: accept its certificate.
        driver = browser("--ignore-certificate-errors")
        open_page(driver, "https://{}:{}/".format(*server.addresses["wss"]), "secure")
        native = LineClient(server.addresses["tcp"])
        try:
            say(driver, "over TLS")
            native.expect("<secure> over TLS")
            native.send("back over TLS")
            wait_for_text(driver, "back over TLS")
        finally:
            native.close()


def test_the_server_password_works_from_the_page(browser, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("letmein\n")

    def asking(driver: WebDriver) -> bool:
        return driver.find_element(By.ID, "password-dialog").get_attribute("open") is not None

    with serve("--password-file", str(secret)) as server:
        driver = browser()
        driver.get("http://{}:{}/".format(*server.addresses["ws"]))
        # The nick first (the page connects once it has one), then the password.
        wait(
            driver, lambda d: d.find_element(By.ID, "nick-dialog").get_attribute("open") is not None, "the nick dialog"
        )
        nick = driver.find_element(By.ID, "nick-input")
        nick.clear()
        nick.send_keys("keyholder")
        driver.find_element(By.ID, "nick-submit").click()
        wait(driver, asking, "the password dialog")
        field = driver.find_element(By.ID, "password-input")
        assert field.get_attribute("type") == "password"
        field.send_keys("guess")
        driver.find_element(By.ID, "password-submit").click()
        wait(driver, lambda d: "wrong password" in d.find_element(By.ID, "password-error").text, "the refusal")
        field.send_keys("letmein")
        driver.find_element(By.ID, "password-submit").click()
        wait(driver, lambda d: not asking(d), "the password accepted")
        # In under the nick offered before /pass: the welcome greets it.
        wait(driver, lambda d: log_has(d, "Welcome to chatcore, keyholder!"), "the welcome")
        wait(driver, lambda d: d.find_element(By.ID, "nick-dialog").get_attribute("open") is None, "the nick accepted")
        assert not log_has(driver, "guest-")
        native = LineClient(server.addresses["tcp"])
        try:
            native.send("/pass letmein")
            native.sync()
            say(driver, "past the door")
            assert native.expect("<keyholder> past the door")
        finally:
            native.close()
    assert "guess" not in server.stderr  # the password is never logged
    assert "letmein" not in server.stderr


def test_the_page_arrives_under_the_chosen_nick_once(browser, tmp_path):
    """Issue 25, item 1: the page asks for the nick before it connects and
    sends it as its first message, so the server lets it in under it: the
    welcome greets the nick, and a native member sees one join under it,
    no guest and no rename. Again after a reconnect (the nick remembered)."""
    with serve() as server:
        url = "http://{}:{}/".format(*server.addresses["ws"])
        native = LineClient(server.addresses["tcp"])
        try:
            native.sync()
            page = browser()
            open_page(page, url, "carol")
            wait(page, lambda d: log_has(d, "Welcome to chatcore, carol!"), "the welcome greeting carol")
            native.expect("* carol joined")
            say(page, "hello from the page")
            native.expect("<carol> hello from the page")
            page.get(url)  # a reload: the remembered nick is the first message at once
            wait(page, lambda d: log_has(d, "Welcome to chatcore, carol!"), "the welcome after the reload")
            native.expect("* carol left")
            native.expect("* carol joined")
            native.sync()
            assert not [line for line in native.received if "guest-2" in line or "known as" in line], native.received
            assert not any("guest-" in text for text in log_texts(page)), log_texts(page)
        finally:
            native.close()


def test_the_login_form_logs_in_to_an_account_and_a_wrong_password_says_so(browser, tmp_path):
    """Registered on native, logged in from the page's form (issue 28): a
    wrong password is shown in the form and changes nothing; the right one
    logs in, and the account's nick is the page's without being renamed."""
    password = "horse-battery-9"
    with serve(
        "--plugins", "welcome,web,accounts", "--state-db", str(tmp_path / "state.db"), "--nick-grace", "0"
    ) as server:
        url = "http://{}:{}/".format(*server.addresses["ws"])
        native = LineClient(server.addresses["tcp"])
        try:
            for nick in ("alice", "bob"):
                native.send(f"/nick {nick}")
                native.expect(f"* you are now known as {nick}")
                native.send(f"/register {password}")
                native.expect(lambda line, nick=nick: line.startswith(f"* registered the account {nick}"))
                native.send("/logout")
                native.expect(f"* you are logged out of {nick}")
            native.send("/nick nat")
            native.expect("* you are now known as nat")

            page = browser()
            page.get(url)
            wait(page, lambda d: d.find_element(By.ID, "nick-dialog").get_attribute("open") is not None, "the form")
            page.find_element(By.ID, "nick-input").send_keys("alice")
            page.find_element(By.ID, "account-password").send_keys("wrong-password")
            page.find_element(By.ID, "nick-submit").click()
            wait(
                page,
                lambda d: d.find_element(By.ID, "nick-error").text == "wrong account name or password",
                "the refusal in the form",
            )
            assert page.find_element(By.ID, "nick-dialog").get_attribute("open") is not None
            assert page.find_element(By.ID, "account-password").get_attribute("value") == ""

            field = page.find_element(By.ID, "nick-input")
            field.clear()
            field.send_keys("alice")
            page.find_element(By.ID, "account-password").send_keys(password)
            page.find_element(By.ID, "nick-submit").click()
            wait(page, lambda d: d.find_element(By.ID, "nick-dialog").get_attribute("open") is None, "the form closed")
            wait_for_text(page, "you are logged in to alice")
            native.expect("* alice joined")  # in no room until the nick was its own (rooms=after-nick)
            # A witness without the password is renamed at once (--nick-grace 0):
            # the check has run since, and the page kept its account's nick.
            native.send("/nick bob")
            native.expect(lambda line: line.startswith("* you were renamed to guest-"))
            say(page, "still alice")
            native.expect("<alice> still alice")
            assert not log_has(page, "you were renamed")

            # The account's password given at once: the login is the page's
            # first message, and it enters under the account's name (issue 25).
            other = browser()
            other.get(url)
            wait(other, lambda d: d.find_element(By.ID, "nick-dialog").get_attribute("open") is not None, "the form")
            other.find_element(By.ID, "nick-input").send_keys("bob")
            other.find_element(By.ID, "account-password").send_keys(password)
            other.find_element(By.ID, "nick-submit").click()
            wait(other, lambda d: log_has(d, "Welcome to chatcore, bob!"), "the welcome greeting bob")
            wait_for_text(other, "you are logged in to bob")
            native.expect("* bob joined")
            assert not any("guest-" in text or "known as" in text for text in log_texts(other)), log_texts(other)
        finally:
            native.close()
    assert password not in server.stderr
