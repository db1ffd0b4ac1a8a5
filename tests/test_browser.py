"""The chat page and the inspector in a real browser: Playwright driving Debian's chromium.

``make screenshots`` runs the journey with ``SCREENSHOTS`` set to a folder, and the
journey saves the pictures the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from .support import REPO, RunningBot, RunningProcess

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECRET = "a-secret-for-the-browser-tests"
# As root chromium needs --no-sandbox; the rest keep it off a network it cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"Debian's chromium is missing at {CHROMIUM}: apt-get install chromium"
            " (.ci/run installs it; set CHROMIUM to use another binary)"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def sample_bot(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningBot]:
    monkeypatch.setenv("INLINE_STATE_SECRET", SECRET)
    bot = RunningBot(REPO / "samples" / "state_management" / "bot.py", "--store", "memory://")
    bot.start()
    try:
        yield bot
    finally:
        bot.stop()


def screenshot_dir() -> Path | None:
    folder = os.environ.get("SCREENSHOTS")
    if not folder:
        return None
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


async def snap(page: Page, name: str) -> None:
    folder = screenshot_dir()
    if folder is not None:
        await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def chat(page: Page, text: str, expected_reply: str) -> None:
    """Send one message; the turn's first reply holds ``expected_reply``."""
    replies = page.locator("#transcript li.bot")
    before = await replies.count()
    await page.fill("#text", text)
    await page.click("#send")
    await expect(replies.nth(before)).to_contain_text(expected_reply)


async def log_in(page: Page, url: str) -> None:
    await page.goto(url)
    await page.fill("#secret", SECRET)
    await page.click("#login-button")
    await expect(page.locator("#who")).to_contain_text("bot: state-bot")


async def test_a_persons_journey_through_chat_and_inspector(
    browser: Browser, sample_bot: RunningBot
) -> None:
    base = f"http://127.0.0.1:{sample_bot.port}/"
    context = await browser.new_context(viewport={"width": 1200, "height": 800})
    chat_page = await context.new_page()
    await chat_page.goto(base)
    await expect(chat_page.locator("#transcript")).to_contain_text("Welcome to State Bot Sample")
    user = (await chat_page.locator("#who").inner_text()).removeprefix("you are ")

    # Three turns, and the bags beside them change as the bot's state does.
    await chat(chat_page, "hello", "What is your name?")
    await expect(chat_page.locator("#bag-conversation")).to_contain_text(
        '"prompted_for_user_name": true'
    )
    await expect(chat_page.locator("#bag-user")).to_contain_text('"name": null')
    await chat(chat_page, "Ada", "Thanks Ada")
    await expect(chat_page.locator("#bag-user")).to_contain_text('"name": "Ada"')
    await expect(chat_page.locator("#bag-user")).to_have_class("changed")
    await chat(chat_page, "third turn", "Ada sent: third turn")
    await expect(chat_page.locator("#bag-conversation")).to_contain_text('"channel_id": "chat"')
    await expect(chat_page.locator("#turn")).to_have_text("after turn 3")
    await snap(chat_page, "chat")

    # The inspector, from the chat page's link: log in, the user's record opens.
    link = await chat_page.get_attribute("#inspect", "href")
    assert link is not None
    inspector = await context.new_page()
    await log_in(inspector, base + link)
    await expect(inspector.locator("#record-title")).to_have_text(f"user: {user}")
    await expect(inspector.locator("#properties")).to_contain_text("UserProfile")
    await expect(inspector.locator("#properties")).to_contain_text('"name": "Ada"')
    await expect(inspector.locator("#records")).to_contain_text(user)

    # Edit a property; the next turn uses it.
    editor = inspector.locator("#editor")
    await editor.fill((await editor.input_value()).replace('"Ada"', '"Grace"'))
    await inspector.click("#save")
    await expect(inspector.locator("#status")).to_have_text("Saved.")
    await chat(chat_page, "fourth", "Grace sent: fourth")
    await snap(inspector, "inspector")

    # A second tab saves first: the first tab's save is a conflict, nothing overwritten.
    await editor.fill((await editor.input_value()).replace('"Grace"', '"Tab one"'))
    second = await context.new_page()
    await second.goto(base + link)
    await expect(second.locator("#properties")).to_contain_text('"name": "Grace"')
    other = second.locator("#editor")
    await other.fill((await other.input_value()).replace('"Grace"', '"Tab two"'))
    await second.click("#save")
    await expect(second.locator("#status")).to_have_text("Saved.")
    await inspector.click("#save")
    await expect(inspector.locator("#conflict")).to_be_visible()
    await expect(inspector.locator("#conflict-value")).to_contain_text('"name": "Tab two"')
    await expect(inspector.locator("#status")).to_have_text("Not saved: conflict.")
    await expect(inspector.locator("#properties")).to_contain_text('"name": "Tab two"')
    await snap(inspector, "conflict")
    await chat(chat_page, "fifth", "Tab two sent: fifth")

    # Delete the user, after a confirmation; the bot has forgotten them.
    await inspector.click("#delete-user")
    await expect(inspector.locator("#confirm-text")).to_contain_text(f"user {user} on")
    await inspector.click("#confirm-delete")
    await expect(inspector.locator("#status")).to_have_text("The user's data was deleted.")
    await expect(inspector.locator("#record-meta")).to_have_text("No data stored.")
    await chat(chat_page, "still there?", "What is your name?")
    await context.close()


HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


@pytest.fixture
def state_service() -> Iterator[RunningProcess]:
    service = RunningProcess(
        lambda port: [
            sys.executable,
            "-m",
            "inline_state",
            "state-service",
            "--listen",
            f"127.0.0.1:{port}",
            "--bot-id",
            "state-bot",
            "--secret",
            SECRET,
            "--inspector",
        ]
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


def rest_write(port: int, path: str, data: object) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v3/botstate/{path}",
        data=json.dumps({"data": data, "eTag": "*"}).encode(),
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


async def test_hostile_ids_names_and_values_are_shown_as_text(
    browser: Browser, state_service: RunningProcess
) -> None:
    from urllib.parse import quote

    port = state_service.port
    hostile_path = quote(HOSTILE, safe="")
    rest_write(port, f"{hostile_path}/users/{hostile_path}", {HOSTILE: HOSTILE, "n": 1})
    context = await browser.new_context()
    page = await context.new_page()
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text))
    await page.goto(f"http://127.0.0.1:{port}/inspector/")
    await page.evaluate(
        "document.addEventListener('securitypolicyviolation',"
        " (e) => { window.__violations = (window.__violations || 0) + 1; })"
    )
    await page.fill("#secret", SECRET)
    await page.click("#login-button")
    await expect(page.locator("#channel")).to_contain_text(HOSTILE)
    await page.fill("#prefix", "<img")
    await page.click("#search-button")
    await page.locator("#records button").first.click()
    await expect(page.locator("#record-title")).to_have_text(f"user: {HOSTILE}")
    await expect(page.locator("#properties")).to_contain_text(HOSTILE)
    assert await page.evaluate("window.__pwned") is None, "attacker script ran"
    assert await page.evaluate("document.querySelectorAll('img').length") == 0
    assert await page.evaluate("document.scripts.length") == 1, "a script element was injected"
    assert await page.evaluate("window.__violations || 0") == 0, violations
    await context.close()
