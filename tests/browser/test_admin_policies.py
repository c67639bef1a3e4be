"""The admin page edits plans with their rules and shadow policies, lists shadow denials, removes devices."""

from __future__ import annotations

from playwright.async_api import expect

from tests.browser.conftest import Browsing
from tests.browser.pages import log_in_admin
from tests.support.clients import admin_client, api_client, token_for
from tests.support.servers import ServerProcess


async def test_an_admin_writes_a_plan_s_rules_and_sees_whom_its_shadow_would_deny(
    browsing: Browsing, web_server: ServerProcess
) -> None:
    admin, _ = await browsing.page("admin")
    await log_in_admin(admin)
    await admin.get_by_label("Name", exact=True).fill("uhd-family")
    await admin.get_by_label("Max streams", exact=True).fill("4")
    await admin.get_by_label("Rules", exact=True).fill('{"kinds": {"uhd": 1}, "maxDevices": 2}')
    await admin.get_by_role("button", name="Add plan").click()
    rules = admin.get_by_label("Rules of uhd-family")
    await expect(rules).to_have_value('{"kinds":{"uhd":1},"maxDevices":2,"deviceWindowDays":30}')

    await admin.get_by_label("Shadow policy of uhd-family").fill('{"maxStreams": 1}')
    await admin.get_by_label("Rules of uhd-family").fill('{"kinds": {"uhd": 1}, "maxDevices": 2}')
    await admin.get_by_role("button", name="Save plan uhd-family").click()
    await expect(admin.get_by_label("Shadow policy of uhd-family")).to_have_value('{"maxStreams":1}')
    await admin.get_by_label("Shadow policy of uhd-family").fill("not json")
    await admin.get_by_role("button", name="Save plan uhd-family").click()
    await expect(admin.locator("#plans-error")).to_contain_text("Shadow: a JSON object")

    async with await admin_client(web_server.base_url) as api:
        plan = next(p for p in (await api.get("/v1/plans")).json() if p["name"] == "uhd-family")
        assert plan["shadow"]["maxStreams"] == 1
        body = {"name": "family", "password": "family-pw", "plan": plan["id"]}
        user = (await api.post("/v1/users", json=body)).json()
    token = await token_for(web_server.base_url, "family", "family-pw")
    async with api_client(web_server.base_url, token) as player:
        for device in ("tv", "phone", "laptop"):
            video = "1" if device == "tv" else "2"
            answer = await player.post("/v1/plays?wait=5", json={"videoId": video, "deviceId": device})
            assert answer.status_code == 200, answer.text

    async with await admin_client(web_server.base_url) as api:
        listed = (await api.get(f"/v1/shadow-denials?userId={user['id']}")).json()
    assert [d["deviceId"] for d in listed] == ["laptop", "phone"]
    # tv allowed; phone allowed but the shadow (one stream) would have denied it; laptop a third device: denied.
    shadow = admin.locator("#shadow tbody tr").filter(has_text=user["id"])
    await expect(shadow).to_have_count(2)
    await expect(shadow.first).to_contain_text("limit_reached")

    await admin.get_by_label("User id").fill(user["id"])
    await admin.get_by_role("button", name="Show devices").click()
    await expect(admin.locator("#devices li")).to_have_count(2)
    await admin.get_by_role("button", name="Remove device tv").click()
    await expect(admin.locator("#devices li")).to_have_count(1)
    await expect(admin.locator("#devices")).to_contain_text("phone")
