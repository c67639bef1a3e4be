"""What a person does on the web app's pages, as Playwright steps, and what they should then see."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import Locator, Page, expect

from tests.support.servers import ADMIN_PASSWORD

expect.set_options(timeout=15_000)


async def log_in(page: Page, name: str, password: str, path: str = "/") -> None:
    """Open the app (at / as a browser does, or at `path`) and log in through the form."""
    await page.goto(path, wait_until="domcontentloaded")
    await page.get_by_label("User name").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


async def log_in_viewer(page: Page, name: str, password: str) -> str:
    """Log in on the viewer; returns this tab's device id once the videos are shown."""
    await log_in(page, name, password)
    await expect(page.get_by_role("heading", name="Videos")).to_be_visible()
    await expect(card(page, "video1")).to_be_visible()
    return (await page.locator("#device-id").inner_text()).strip()


async def log_in_admin(page: Page) -> None:
    """Log in on the admin page as the test servers' admin."""
    await log_in(page, "admin", ADMIN_PASSWORD, path="/app/admin/")
    await expect(page.get_by_role("heading", name="Users and their streams")).to_be_visible()


def card(page: Page, title: str) -> Locator:
    """The grid card of the video titled `title`."""
    return page.locator("li.card").filter(has=page.get_by_role("heading", name=title, exact=True))


async def play(page: Page, title: str) -> None:
    """Press Play on a video and wait until it plays."""
    await page.get_by_role("button", name=f"Play {title}", exact=True).click()
    await expect_playing(page, title)


async def expect_playing(page: Page, title: str) -> None:
    """The card says Playing; when the server gave a playback URL, its <video> really advances."""
    item = card(page, title)
    await expect(item.locator(".state")).to_have_text(re.compile(r"^Playing"))
    await expect(item).to_have_attribute("data-state", "playing")
    if await item.locator("video").count():
        await page.wait_for_function(
            "v => v.currentTime > 0.2 && !v.paused && v.readyState >= 2",
            arg=await item.locator("video").element_handle(),
            timeout=15_000,
        )


async def expect_stopped(page: Page, title: str, why: str) -> None:
    """The card shows that its stream ended, and why; no media is left on it."""
    item = card(page, title)
    await expect(item.locator(".state")).to_have_text(f"Stopped: {why}")
    await expect(item.locator("video")).to_have_count(0)
    await expect(item.get_by_role("button", name=f"Play {title}", exact=True)).to_be_visible()


async def expect_lost(page: Page, title: str, why: str) -> None:
    """The stream of `title` ended without this device asking: said full screen with its reason, and on the card.

    The dialog is closed afterwards (Escape), as a viewer would.
    """
    dialog = page.get_by_role("alertdialog", name=f"{title} stopped")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(f"Why: {why}.")
    await expect(dialog.get_by_role("button", name="OK")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect_stopped(page, title, why)


async def no_sideways_scroll(page: Page) -> bool:
    """True when the page fits the viewport's width (nothing to scroll sideways)."""
    return bool(await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


async def media_fetched(page: Page, title: str) -> None:
    """Wait until the card's media, if any, is buffered: an MP4 clip whole, HLS (hls.js, a blob: source) as far
    ahead as hls.js buffers (7 s of its 8): no media request (each renews the lease) is under way for a while."""
    video = card(page, title).locator("video")
    if await video.count():
        await page.wait_for_function(
            "v => v.buffered.length > 0 && (v.src.startsWith('blob:')"
            " ? v.buffered.end(v.buffered.length - 1) - v.currentTime >= 7"
            " : v.buffered.end(v.buffered.length - 1) >= v.duration - 0.05)",
            arg=await video.element_handle(),
            timeout=15_000,
        )


AXE = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "axe-core" / "axe.min.js"


async def assert_accessible(page: Page, view: str) -> None:
    """axe-core (npm `axe-core`, injected into the page) finds no WCAG 2 A/AA violation in `view`."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol: the web app's Content-Security-Policy refuses inline scripts.
        await page.evaluate(AXE.read_text(encoding="utf-8"))
    result = await page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']})).violations"
        ".map(v => `${v.id}: ${v.help} (${v.nodes.map(n => n.target.join(' ')).join(', ')})`)"
    )
    assert result == [], f"{view}: {result}"
