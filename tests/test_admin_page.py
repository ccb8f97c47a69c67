"""The admin page (the api plugin's /admin/) in a real headless Chromium,
against a real ``chatcore serve`` process, beside native clients: it lists
them, and a kick from the page reaches the kicked over their socket.

Screenshots at 1280 and 375 pixels wide go to the test's temporary folder
(``CHATCORE_SCREENSHOTS=DIR`` keeps them somewhere else).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from test_web_browser import browser  # noqa: F401 (the fixture)

from chatcore.plugins import api as api_module
from chatcore.testing import LineClient, ServerProcess

pytestmark = pytest.mark.slow

TOKEN = "admin-page-token-0123456789abcdef"
TIMEOUT = 15


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    try:
        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(condition)
    except TimeoutException:
        state = driver.execute_script("return document.getElementById('state').textContent")
        raise AssertionError(f"timed out waiting for {what}; the page says {state!r}") from None


def listed(driver: WebDriver, room: str) -> list[str]:
    """The nicks the page lists in ``room``, as it has them at one moment."""
    nicks: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(`.room[data-room='${arguments[0]}'] .member`)]"
        ".map((e) => e.dataset.nick)",
        room,
    )
    return nicks


def test_the_admin_page_lists_native_users_and_its_kick_reaches_them(
    browser: Callable[..., WebDriver],  # noqa: F811
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        "--plugins", "api",
        "--listen", "tcp://127.0.0.1:0", "--listen", "http://127.0.0.1:0",
        "--api-token", f"boss:admin:{api_module.hash_token(TOKEN)}",
    ).start()  # fmt: skip
    clients: list[LineClient] = []
    try:
        for nick, source in (("alice", "127.0.0.1"), ("bob", "127.0.0.2")):
            client = LineClient(server.addresses["tcp"], timeout=TIMEOUT, source=source)
            clients.append(client)
            client.send(f"/nick {nick}")
            client.expect(f"* you are now known as {nick}")
        alice, bob = clients
        alice.expect("* bob joined")  # its first line named it (docs/protocol.md)
        for number in range(5):  # something for the rates to show
            bob.send(f"line {number}")
        alice.expect("<bob> line 4")
        host, port = server.addresses["http"]
        page = f"http://{host}:{port}/admin/"

        driver = browser("--window-size=1280,900")
        driver.get(page)
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
        wait(driver, lambda d: listed(d, "lobby") == ["alice", "bob"], "alice and bob listed in lobby")
        assert not driver.find_element(By.ID, "sign-in").is_displayed()
        # The token is in this tab's sessionStorage, never in the URL or a cookie.
        assert driver.current_url == page
        assert driver.execute_script("return document.cookie") == ""
        assert driver.execute_script("return sessionStorage.getItem('chatcore-admin-token')") == TOKEN
        wait(driver, lambda d: "…" not in d.find_element(By.ID, "counts").text, "the rates (from the second poll)")
        counts = driver.find_element(By.ID, "counts").text
        assert "slow consumers" in counts
        assert "refusals" in counts

        screenshots = Path(os.environ.get("CHATCORE_SCREENSHOTS", tmp_path))
        screenshots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshots / "admin-1280.png"))
        driver.set_window_size(375, 800)
        driver.save_screenshot(str(screenshots / "admin-375.png"))
        driver.set_window_size(1280, 900)

        driver.find_element(By.ID, "reason").send_keys("spam")
        driver.find_element(By.CSS_SELECTOR, "button[data-action='kick'][data-nick='bob']").click()
        bob.expect("* you were kicked out of lobby by boss (spam)")
        alice.expect("* bob was kicked out by boss (spam)")
        wait(driver, lambda d: d.find_element(By.ID, "outcome").text == "bob was put out of lobby", "the outcome")
        wait(driver, lambda d: listed(d, "lobby") == ["alice"], "bob gone from lobby")

        # A reload keeps the sign-in (the same tab); a new one asks again.
        driver.refresh()
        wait(driver, lambda d: listed(d, "lobby") == ["alice"], "listed again after a reload")
    finally:
        for client in clients:
            client.close()
        server.stop()
