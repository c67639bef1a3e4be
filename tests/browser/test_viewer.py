"""The viewer in a real browser, on the player kit: log in, one stream per device, denials live as a list with
Stop, Replace and Watch here, pause frees the slot, ends told full screen with their reason, log-out of one device
or all, phones and the keyboard, and an axe-core scan of every view."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from playwright.async_api import Page, Request, expect

from tests.browser.conftest import PHONE, STREAM_TTL_S, Browsing
from tests.browser.pages import (
    assert_accessible,
    card,
    expect_lost,
    expect_playing,
    log_in,
    log_in_viewer,
    no_sideways_scroll,
    play,
)
from tests.support.clients import admin_client, api_client, new_user, token_for
from tests.support.servers import ServerProcess

Screenshot = Callable[[Page, str], Awaitable[Path]]


async def streams_of(web_server: ServerProcess, name: str, password: str | None = None) -> list[dict[str, str]]:
    async with api_client(web_server.base_url, await token_for(web_server.base_url, name, password or name)) as api:
        return list((await api.get("/v1/streams")).json())


TAKEN = "another device took its slot (Replace, or Watch here)"  # the `replaced` reason, as the viewer says it


async def test_log_in_refuses_a_wrong_password_and_tells_a_disabled_account_why(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    page, watch = await browsing.page("viewer")
    watch.expect_http_error(401)
    await page.goto("/", wait_until="domcontentloaded")
    assert page.url == f"{browsing.base_url}/app/"
    await assert_accessible(page, "login")
    # Keyboard only: the fields are labelled, Tab moves between them, Enter submits.
    await page.get_by_label("User name").focus()
    await page.keyboard.type("user1")
    await page.keyboard.press("Tab")
    await page.keyboard.type("not-the-password")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    async with await admin_client(web_server.base_url) as admin:
        user = await new_user(web_server.base_url, admin)
        await admin.patch(f"/v1/users/{user.id}", json={"disabled": True})
    watch.expect_http_error(403)
    await log_in(page, user.name, user.password)
    await expect(page.get_by_role("alert")).to_contain_text("This account is disabled.")
    assert not watch.expected_statuses, "the 401 and 403 never reached the console"


async def test_the_fourth_device_is_denied_live_and_stops_replaces_or_watches_here(
    browsing: Browsing, web_server: ServerProcess, screenshot: Screenshot
) -> None:
    devices: list[tuple[Page, str]] = []
    for n in (1, 2, 3):
        page, _ = await browsing.page(f"user1 device {n}")
        name = await log_in_viewer(page, "user1", "user1")
        await play(page, f"video{n}")
        devices.append((page, name))
    assert len({name for _, name in devices}) == 3, "each browser context is a device of its own"
    await assert_accessible(devices[0][0], "playing")

    fourth, _ = await browsing.page("user1 device 4")
    await log_in_viewer(fourth, "user1", "user1")
    await fourth.get_by_role("button", name="Play video4", exact=True).click()
    await expect(card(fourth, "video4").locator(".state")).to_have_text("Denied: all 3 of your streams are in use")
    panel = fourth.get_by_role("region", name="Limit reached: video4 cannot start")
    await expect(panel).to_be_visible()
    await expect(panel).to_contain_text("Your account may play 3 streams at once, and all 3 are in use.")
    items = panel.get_by_role("list", name="Streams using your limit").get_by_role("listitem")
    await expect(items).to_have_count(3)
    for n, (_, name) in enumerate(devices, start=1):
        item = items.filter(has_text=name)
        await expect(item).to_contain_text(f"video{n} on {name}")
        await expect(item).to_contain_text(re.compile(r"since \d+:\d{2}:\d{2}"))
        # WCAG 2.5.3: the accessible names start with the visible text.
        await expect(item.get_by_role("button", name=f"Replace with video4: video{n} on {name}")).to_be_visible()
    await expect(fourth.locator("#usage")).to_have_text("3 of 3 streams in use")
    await assert_accessible(fourth, "denial")
    await screenshot(fourth, "viewer-denied")

    # Live while open: device 3 stops its own stream, and the panel (with the focus where it was) follows at once.
    stop_first = panel.get_by_role("button", name=f"Stop video1 on {devices[0][1]}", exact=True)
    await stop_first.focus()
    await devices[2][0].get_by_role("button", name="Stop video3", exact=True).click()
    await expect(panel).to_contain_text("A slot is free now (2 of 3 streams in use).")
    await expect(items).to_have_count(2)
    await expect(stop_first).to_be_focused()
    # Escape closes the panel; the focus goes back to the card's Play button.
    await fourth.keyboard.press("Escape")
    await expect(panel).to_be_hidden()
    await expect(fourth.get_by_role("button", name="Play video4", exact=True)).to_be_focused()
    await fourth.keyboard.press("Enter")
    await expect_playing(fourth, "video4")

    # Device 3 asks again: denied; "Watch here" takes the slots of every other stream in one step (they end only
    # because this one is allowed) and plays here; the others are told their slot was taken.
    third = devices[2][0]
    await third.get_by_role("button", name="Play video3", exact=True).click()
    third_panel = third.get_by_role("region", name="Limit reached: video3 cannot start")
    sent: list[Request] = []
    third.on("request", lambda request: sent.append(request))
    await third_panel.get_by_role("button", name="Watch here").click()
    await expect_playing(third, "video3")
    # One play request naming the streams it takes the place of; nothing is stopped before it is allowed.
    plays = [r for r in sent if r.method == "POST" and r.url.split("?")[0].endswith("/v1/plays")]
    assert len(plays) == 1, [r.url for r in plays]
    assert len(plays[0].post_data_json["replaceStreamIds"]) == 3
    assert [r.url for r in sent if r.method == "DELETE"] == []
    await expect_lost(devices[0][0], "video1", TAKEN)
    await expect_lost(fourth, "video4", TAKEN)
    assert [(s["videoId"], s["deviceName"]) for s in await streams_of(web_server, "user1")] == [("3", devices[2][1])]
    await screenshot(third, "viewer")


async def test_the_next_episode_replaces_this_devices_stream_and_pause_frees_the_slot(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    page, _ = await browsing.page("user2 tv")
    name = await log_in_viewer(page, "user2", "user2")
    await play(page, "video1")
    await play(page, "video2")  # one stream per device: video1 makes way at once
    await expect(card(page, "video1").locator(".state")).to_have_text("Ready to play")
    assert [(s["videoId"], s["deviceName"]) for s in await streams_of(web_server, "user2")] == [("2", name)]

    video = card(page, "video2").locator("video")
    await video.evaluate("v => v.pause()")
    # No heartbeat while paused: the lease runs out, the slot is free.
    for _ in range(int(STREAM_TTL_S * 4) + 20):
        if not await streams_of(web_server, "user2"):
            break
        await page.wait_for_timeout(500)
    assert await streams_of(web_server, "user2") == []
    await expect(card(page, "video2").locator(".state")).to_have_text(
        "Paused: your slot is free again; Play asks for it"
    )
    await video.evaluate("v => v.play()")  # resume asks again
    await expect_playing(page, "video2")
    assert [s["videoId"] for s in await streams_of(web_server, "user2")] == ["2"]
    await page.get_by_role("button", name="Stop video2", exact=True).click()
    await expect(card(page, "video2").locator(".state")).to_have_text("Stopped")


async def test_log_out_ends_this_devices_stream_and_sign_out_of_all_devices_ends_every_one(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    leaving, _ = await browsing.page("user3 leaving")
    await log_in_viewer(leaving, "user3", "user3")
    staying, _ = await browsing.page("user3 staying")
    await log_in_viewer(staying, "user3", "user3")
    await play(leaving, "video1")
    await play(staying, "video2")

    await leaving.get_by_role("button", name="Log out", exact=True).click()
    await expect(leaving.get_by_role("alert")).to_have_text(
        "You logged out; this device's stream was stopped, your other devices play on."
    )
    assert [s["videoId"] for s in await streams_of(web_server, "user3")] == ["2"]
    await expect_playing(staying, "video2")

    await log_in_viewer(leaving, "user3", "user3")
    await leaving.get_by_role("button", name="Sign out of all devices").click()
    await expect(leaving.get_by_role("alert")).to_contain_text("You signed out of all devices")
    await expect_lost(staying, "video2", "it was stopped from another device")
    assert await streams_of(web_server, "user3") == []


async def test_a_lowered_limit_is_told_as_such_on_the_device_that_lost_its_stream(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    async with await admin_client(web_server.base_url) as admin:
        user = await new_user(web_server.base_url, admin, limit=2)
        first, _ = await browsing.page("first")
        await log_in_viewer(first, user.name, user.password)
        await play(first, "video1")
        second, _ = await browsing.page("second")
        await log_in_viewer(second, user.name, user.password)
        await play(second, "video2")
        await admin.patch(f"/v1/users/{user.id}", json={"limit": 1})
    # The newer stream ends at its next heartbeat (a third of the lease), said full screen with what to do.
    await expect(second.get_by_role("alertdialog", name="video2 stopped")).to_contain_text(
        "Why: your account's stream limit was lowered. Stop a stream on another device to watch here.",
        timeout=STREAM_TTL_S * 1000 + 10_000,
    )
    await expect_lost(second, "video2", "your account's stream limit was lowered")
    await expect_playing(first, "video1")


async def test_on_a_phone_the_denial_is_a_list_that_fits_and_works_from_the_keyboard(
    browsing: Browsing, web_server: ServerProcess, screenshot: Screenshot
) -> None:
    async with await admin_client(web_server.base_url) as admin:
        user = await new_user(web_server.base_url, admin, limit=1)
    tv, _ = await browsing.page("tv")
    tv_name = await log_in_viewer(tv, user.name, user.password)
    await play(tv, "video1")
    page, _ = await browsing.page("phone", viewport=PHONE)
    await log_in_viewer(page, user.name, user.password)
    assert await no_sideways_scroll(page)
    await assert_accessible(page, "grid")
    play_button = page.get_by_role("button", name="Play video6", exact=True)
    await play_button.focus()
    await page.keyboard.press("Enter")
    panel = page.get_by_role("region", name="Limit reached: video6 cannot start")
    await expect(panel).to_be_visible()
    await expect(panel).to_contain_text("Your account may play 1 stream at once, and all 1 are in use.")
    assert await no_sideways_scroll(page)
    for label in (f"Stop video1 on {tv_name}", f"Replace with video6: video1 on {tv_name}"):
        box = await panel.get_by_role("button", name=label, exact=True).bounding_box()
        assert box is not None, label
        assert 0 <= box["x"] <= box["x"] + box["width"] <= PHONE["width"], (label, box)
    await screenshot(page, "viewer-phone")
    # Keyboard only: Tab from the heading reaches Stop, then Replace; Enter replaces the TV's stream.
    await expect(panel.get_by_role("heading")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(panel.get_by_role("button", name=f"Stop video1 on {tv_name}", exact=True)).to_be_focused()
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect_playing(page, "video6")
    await expect(page.get_by_role("button", name="Stop video6")).to_be_focused()
    await expect_lost(tv, "video1", TAKEN)
