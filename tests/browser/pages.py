"""What a person does on the web app's pages, as Playwright steps, and what they should then see."""

from __future__ import annotations

import re

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


async def no_sideways_scroll(page: Page) -> bool:
    """True when the page fits the viewport's width (nothing to scroll sideways)."""
    return bool(await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


async def media_fetched(page: Page, title: str) -> None:
    """Wait until the card's clip, if any, is fully buffered: no media request (each renews the lease) is left."""
    video = card(page, title).locator("video")
    if await video.count():
        await page.wait_for_function(
            "v => v.buffered.length > 0 && v.buffered.end(v.buffered.length - 1) >= v.duration - 0.05",
            arg=await video.element_handle(),
            timeout=15_000,
        )
