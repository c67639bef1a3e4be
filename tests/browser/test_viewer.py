"""The viewer in a real browser: log in, three devices play, the fourth is denied and explained, logout, phones."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from playwright.async_api import Page, expect

from tests.browser.conftest import PHONE, Browsing
from tests.browser.pages import (
    card,
    expect_playing,
    expect_stopped,
    log_in_viewer,
    no_sideways_scroll,
    play,
)
from tests.support.clients import api_client, token_for
from tests.support.servers import ServerProcess

Screenshot = Callable[[Page, str], Awaitable[Path]]


async def test_a_browser_at_the_root_lands_on_the_login_form_and_a_wrong_password_is_refused(
    browsing: Browsing,
) -> None:
    page, watch = await browsing.page("viewer")
    watch.expect_http_error(401)
    await page.goto("/", wait_until="domcontentloaded")
    assert page.url == f"{browsing.base_url}/app/"
    # Keyboard only: the fields are labelled, Tab moves between them, Enter submits.
    await page.get_by_label("User name").focus()
    await page.keyboard.type("user1")
    await page.keyboard.press("Tab")
    await page.keyboard.type("not-the-password")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    await expect(page.get_by_role("heading", name="Videos")).to_be_hidden()
    assert not watch.expected_statuses, "the 401 of the wrong password never reached the console"


async def test_three_devices_play_and_the_fourth_is_denied_with_the_streams_that_use_the_limit(
    browsing: Browsing, web_server: ServerProcess, screenshot: Screenshot
) -> None:
    devices: list[tuple[Page, str]] = []
    for n in (1, 2, 3):
        page, _ = await browsing.page(f"user1 device {n}")
        device_id = await log_in_viewer(page, "user1", "user1")
        await play(page, f"video{n}")
        devices.append((page, device_id))
    assert len({device_id for _, device_id in devices}) == 3, "each browser context must be its own device"

    fourth, _ = await browsing.page("user1 device 4")
    fourth_id = await log_in_viewer(fourth, "user1", "user1")
    await fourth.get_by_role("button", name="Play video4", exact=True).click()
    await expect(card(fourth, "video4").locator(".state")).to_have_text("Denied: all 3 of your streams are in use")
    panel = fourth.get_by_role("region", name="Limit reached: video4 cannot start")
    await expect(panel).to_be_visible()
    await expect(panel).to_contain_text("Your account may play 3 streams at once, and all 3 are in use.")
    rows = panel.locator("tbody tr")
    await expect(rows).to_have_count(3)
    for n, (_, device_id) in enumerate(devices, start=1):
        row = rows.filter(has_text=device_id)
        await expect(row).to_contain_text(f"video{n}")
        await expect(row).to_contain_text(re.compile(r"\d+:\d{2}:\d{2}"))  # since when
        await expect(row.get_by_role("button", name=f"Replace video{n} on {device_id} with video4")).to_be_visible()
    await expect(fourth.locator("#usage")).to_have_text("3 of 3 streams in use")
    await screenshot(fourth, "viewer-denied")

    first_page, first_id = devices[0]
    await panel.get_by_role("button", name=f"Stop video1 on {first_id}", exact=True).click()
    await expect(panel).to_contain_text("A slot is free now (2 of 3 streams in use).")
    await expect(rows).to_have_count(2)
    await panel.get_by_role("button", name="Play video4", exact=True).click()
    await expect_playing(fourth, "video4")
    await expect(panel).to_be_hidden()

    # The tab whose stream was stopped learns it from its next heartbeat.
    await expect_stopped(first_page, "video1", "it is no longer active (stopped on another device, or expired)")

    async with api_client(web_server.base_url, await token_for(web_server.base_url, "user1", "user1")) as api:
        streams = (await api.get("/v1/streams")).json()
    assert sorted((s["videoId"], s["deviceId"]) for s in streams) == sorted(
        [("2", devices[1][1]), ("3", devices[2][1]), ("4", fourth_id)]
    )
    await screenshot(fourth, "viewer")


async def test_replace_ends_the_chosen_stream_and_its_tab_hears_why(browsing: Browsing) -> None:
    # user2 (limit 4) fills the limit on two tabs, then replaces one stream of the other tab from the panel.
    other, _ = await browsing.page("user2 other tab")
    other_id = await log_in_viewer(other, "user2", "user2")
    for n in (1, 2):
        await play(other, f"video{n}")
    here, _ = await browsing.page("user2 this tab")
    await log_in_viewer(here, "user2", "user2")
    for n in (3, 4):
        await play(here, f"video{n}")
    await here.get_by_role("button", name="Play video5", exact=True).click()
    panel = here.get_by_role("region", name="Limit reached: video5 cannot start")
    await panel.get_by_role("button", name=f"Replace video1 on {other_id} with video5", exact=True).click()
    await expect_playing(here, "video5")
    await expect_stopped(other, "video1", "replaced by a stream on another device")
    await expect(other.get_by_role("status").filter(has_text="video1 stopped")).to_have_text(
        "video1 stopped: replaced by a stream on another device."
    )
    await expect_playing(other, "video2")
    await here.get_by_role("button", name="Log out").click()
    await expect(other.locator("li.card[data-state=playing]")).to_have_count(0)


async def test_logout_stops_every_stream_of_the_user(browsing: Browsing, web_server: ServerProcess) -> None:
    leaving, _ = await browsing.page("user3 leaving")
    await log_in_viewer(leaving, "user3", "user3")
    staying, _ = await browsing.page("user3 other device")
    await log_in_viewer(staying, "user3", "user3")
    await play(leaving, "video1")
    await play(staying, "video2")

    await leaving.get_by_role("button", name="Log out").click()
    await expect(leaving.get_by_role("alert")).to_have_text("You logged out; your streams were stopped.")
    await expect(leaving.get_by_label("User name")).to_be_visible()
    async with api_client(web_server.base_url, await token_for(web_server.base_url, "user3", "user3")) as api:
        assert (await api.get("/v1/streams")).json() == []
    await expect_stopped(staying, "video2", "it is no longer active (stopped on another device, or expired)")


async def test_on_a_phone_the_page_fits_and_works_from_the_keyboard(
    browsing: Browsing, web_server: ServerProcess, screenshot: Screenshot
) -> None:
    page, _ = await browsing.page("phone", viewport=PHONE)
    await log_in_viewer(page, "user2", "user2")
    assert await no_sideways_scroll(page)
    play_button = page.get_by_role("button", name="Play video6", exact=True)
    await play_button.focus()
    await page.keyboard.press("Enter")
    await expect_playing(page, "video6")
    # Focus follows the card's action: the Stop button now has it, and Enter stops the stream.
    await expect(page.get_by_role("button", name="Stop video6")).to_be_focused()
    await screenshot(page, "viewer-phone")
    # A reload keeps the tab's device, and with it the stream (asking again from the same device re-uses it).
    await page.reload(wait_until="domcontentloaded")
    await expect_playing(page, "video6")
    async with api_client(web_server.base_url, await token_for(web_server.base_url, "user2", "user2")) as api:
        assert [s["videoId"] for s in (await api.get("/v1/streams")).json()] == ["6"]
    await page.get_by_role("button", name="Stop video6").focus()
    await page.keyboard.press("Enter")
    await expect(card(page, "video6").locator(".state")).to_have_text("Stopped")
    assert await no_sideways_scroll(page)
    await page.get_by_role("button", name="Log out").click()


async def test_the_api_serves_the_built_app_and_sends_browsers_to_it(web_server: ServerProcess) -> None:
    async with api_client(web_server.base_url) as http:
        browser_root = await http.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert (browser_root.status_code, browser_root.headers["location"]) == (303, "/app/")
        program_root = await http.get("/", headers={"Accept": "application/json"})
        assert program_root.json()["status"] == "ok"
        for path in ("/app/", "/app/admin/"):
            page = await http.get(path)
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert '<script type="module"' in page.text
        assert (await http.get("/app/no-such-file.js")).status_code == 404
