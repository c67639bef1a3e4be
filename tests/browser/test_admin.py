"""The admin page in a real browser: users, limits and streams live; stop, limit, disable; videos add, edit and
delete (confirmed; a viewer playing it is told why it stopped)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from playwright.async_api import Locator, Page, expect

from tests.browser.conftest import PHONE, Browsing
from tests.browser.pages import (
    assert_accessible,
    card,
    expect_lost,
    log_in,
    log_in_admin,
    log_in_viewer,
    media_fetched,
    no_sideways_scroll,
    play,
)
from tests.support.clients import admin_client
from tests.support.servers import ServerProcess

Screenshot = Callable[[Page, str], Awaitable[Path]]


def user_row(admin: Page, name: str) -> Locator:
    """The users-table row of the user called `name`."""
    return admin.locator("#users tbody tr").filter(has=admin.get_by_role("rowheader", name=re.compile(rf"^{name}\b")))


async def test_a_stream_stopped_on_the_admin_page_leaves_the_viewer_with_its_reason(
    browsing: Browsing, screenshot: Screenshot
) -> None:
    viewer, _ = await browsing.page("user1 viewer")
    device_id = await log_in_viewer(viewer, "user1", "user1")
    await play(viewer, "video5")
    admin, _ = await browsing.page("admin")
    await log_in_admin(admin)

    row = user_row(admin, "user1")
    await expect(row).to_contain_text(f"video5 on {device_id}, since")
    await expect(row).to_contain_text("effective 3")
    await assert_accessible(admin, "admin")
    await screenshot(admin, "admin")
    await row.get_by_role("button", name=f"Stop video5 of user1 on {device_id}", exact=True).click()

    await expect_lost(viewer, "video5", "an admin stopped it")
    await expect(row.locator(".streams")).to_have_text("none")


async def test_streams_appear_live_and_an_admin_changes_a_limit_and_disables_a_user(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    admin, _ = await browsing.page("admin")
    await log_in_admin(admin)
    viewer, _ = await browsing.page("user2 viewer")
    device_id = await log_in_viewer(viewer, "user2", "user2")
    row = user_row(admin, "user2")
    await expect(row.locator(".streams")).to_have_text("none")
    await play(viewer, "video1")
    await expect(row).to_contain_text(f"video1 on {device_id}")  # the page refreshes by itself
    # Catalogue writes that race a lease renewal can fail with 503 on SQLite (reported); start from a quiet ledger.
    await media_fetched(viewer, "video1")

    limit = row.get_by_label("Own limit of user2")
    await limit.fill("1")
    await limit.press("Enter")
    await expect(row).to_contain_text("effective 1")
    await expect(row.get_by_role("status")).to_have_text("Saved: user2's limit is 1.")
    async with await admin_client(web_server.base_url) as api:
        assert (await api.get("/v1/users/2")).json()["limit"] == 1
    # Another device of user2 is denied (the same device would replace its own stream instead).
    phone, _ = await browsing.page("user2 phone")
    await log_in_viewer(phone, "user2", "user2")
    await phone.get_by_role("button", name="Play video2", exact=True).click()
    await expect(card(phone, "video2").locator(".state")).to_have_text("Denied: all 1 of your streams are in use")
    await expect(phone.get_by_role("region", name="Limit reached: video2 cannot start")).to_be_visible()
    # Let the viewers' own follow-up calls (stream list, usage) finish: once disabled, a call in flight gets 401.
    await viewer.wait_for_load_state("networkidle")
    await phone.wait_for_load_state("networkidle")

    await row.get_by_role("button", name="Disable user2").click()
    await expect(row).to_contain_text("Disabled")
    await expect(row.locator(".streams")).to_have_text("none")
    await expect(viewer.get_by_role("alert")).to_have_text("An admin disabled this account; its streams were stopped.")
    await expect(viewer.get_by_label("User name")).to_be_visible()

    await row.get_by_role("button", name="Enable user2").click()
    await expect(row).to_contain_text("Active")
    await limit.fill("")
    await row.get_by_role("button", name="Save").click()
    await expect(row).to_contain_text("effective 3 (plan or default)")  # no plan: PLAYGATE_DEFAULT_LIMIT
    await limit.fill("4")
    await row.get_by_role("button", name="Save").click()
    await expect(row).to_contain_text("effective 4")
    # Letters (a number field lets "e" in) are refused, not read as "empty: the plan's".
    await limit.fill("")
    await limit.press_sequentially("e")
    await limit.press("Enter")
    await expect(row.get_by_role("alert")).to_have_text(
        "Letters are not a limit: type a whole number, 0 or more (empty: the plan's)."
    )
    await expect(row).to_contain_text("effective 4")


async def test_videos_are_added_edited_and_deleted_and_a_bad_field_is_named(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    admin, watch = await browsing.page("admin")
    await log_in_admin(admin)
    await admin.get_by_label("Title", exact=True).fill("Launch trailer")
    await admin.get_by_label("URL", exact=True).fill("/media/trailer.mp4")
    await admin.get_by_role("button", name="Add video").click()
    rows = admin.locator("#videos tbody tr")
    await expect(rows).to_have_count(7)  # the six demo videos, and this one
    added = rows.last
    await expect(added.get_by_role("textbox").first).to_have_value("Launch trailer")
    video_id = await added.get_attribute("data-video-id")
    assert video_id

    title = admin.get_by_label(f"Title of video {video_id}")
    await title.fill("Launch trailer (final cut)")
    await admin.get_by_role("button", name=f"Save video {video_id}").click()
    await expect(admin.get_by_role("alert").filter(has_text="url")).to_have_count(0)
    async with await admin_client(web_server.base_url) as api:
        for _ in range(50):
            video = (await api.get(f"/v1/videos/{video_id}")).json()
            if video["title"] == "Launch trailer (final cut)":
                break
            await admin.wait_for_timeout(100)
        assert video["title"] == "Launch trailer (final cut)"

    watch.expect_http_error(422)
    await admin.get_by_label("Title", exact=True).fill("Broken")
    await admin.get_by_label("URL", exact=True).fill("has spaces in it")
    await admin.get_by_role("button", name="Add video").click()
    await expect(admin.locator("#videos-error")).to_have_text(
        "url: Value error, a video URL has no spaces or control characters (write a space as %20)"
    )
    watch.expect_http_error(422)
    await admin.get_by_label("URL", exact=True).fill("javascript:alert(1)")
    await admin.get_by_role("button", name="Add video").click()
    await expect(admin.locator("#videos-error")).to_contain_text("a video URL is http(s)://")

    # Delete, asked to confirm in the row: Escape keeps the video; "Yes, delete" ends the stream a viewer plays.
    viewer, _ = await browsing.page("user3 viewer")
    await log_in_viewer(viewer, "user3", "user3")
    await play(viewer, "Launch trailer (final cut)")
    delete = admin.get_by_role("button", name=f"Delete video {video_id}", exact=True)
    await delete.click()
    await expect(added).to_contain_text("Delete “Launch trailer (final cut)”? Streams playing it stop now.")
    await expect(added.get_by_role("button", name=f"Cancel: keep video {video_id}")).to_be_focused()
    await admin.keyboard.press("Escape")
    await expect(delete).to_be_focused()
    await expect(added.get_by_role("button", name=re.compile("^Yes, delete"))).to_have_count(0)
    await delete.click()
    await added.get_by_role("button", name=f"Yes, delete video {video_id}", exact=True).click()
    await expect(rows).to_have_count(6)
    await expect(admin.locator("#videos-status")).to_have_text(
        "Deleted “Launch trailer (final cut)”; its streams were stopped."
    )
    await expect_lost(viewer, "Launch trailer (final cut)", "this video was removed from the catalogue")
    async with await admin_client(web_server.base_url) as api:
        assert (await api.get(f"/v1/videos/{video_id}")).status_code == 404


async def test_a_viewer_account_cannot_use_the_admin_page_and_the_page_fits_a_phone(
    browsing: Browsing, screenshot: Screenshot
) -> None:
    page, _ = await browsing.page("admin on a phone", viewport=PHONE)
    await log_in(page, "user3", "user3", path="/app/admin/")
    await expect(page.get_by_role("alert")).to_have_text("user3 is not an admin. Log in as admin.")
    await log_in_admin(page)
    await expect(user_row(page, "user3")).to_be_visible()
    assert await no_sideways_scroll(page)
    await screenshot(page, "admin-phone")
