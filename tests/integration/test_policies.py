"""Plans' policies through the API, in-process: each denial reason, devices, households and shadow mode.

The app in this process (tests/conftest.py's `inprocess` marker) believes X-Forwarded-For from 127.0.0.1 only, the
default PLAYGATE_TRUSTED_PROXIES; every test makes plans and users of its own.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.support.clients import TRANSPORTS, admin_client, api_client, token_for

pytestmark = pytest.mark.inprocess

HOME = "203.0.113.0/24"


@asynccontextmanager
async def client(base_url: str, token: str, peer: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """A client of the in-process app calling as if from `peer` (the shared transport calls from 127.0.0.1)."""
    if peer == "127.0.0.1":
        async with api_client(base_url, token) as found:
            yield found
        return
    app = TRANSPORTS[base_url].app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, client=(peer, 50_000))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, transport=transport, timeout=15.0) as found:
        yield found


async def new_plan(admin: httpx.AsyncClient, **rules: Any) -> dict[str, Any]:
    return await created(admin, "/v1/plans", {"name": f"plan-{secrets.token_hex(4)}", **rules})


async def created(admin: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await admin.post(path, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def put_video(admin: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await admin.put(f"/v1/videos/z-{secrets.token_hex(4)}", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def account(base_url: str, admin: httpx.AsyncClient, plan: str, **fields: Any) -> tuple[str, str]:
    """A user on `plan` (no own limit): its id and token."""
    name = f"on-{plan}"
    user = await created(admin, "/v1/users", {"name": name, "password": "pw-12345", "plan": plan, **fields})
    return user["id"], await token_for(base_url, name, "pw-12345")


async def play(player: httpx.AsyncClient, video: str, device: str, **headers: str) -> dict[str, Any]:
    response = await player.post("/v1/plays?wait=5", json={"videoId": video, "deviceId": device}, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_a_plan_holds_its_rules_and_bad_ones_are_named(base_url: str, admin: httpx.AsyncClient) -> None:
    rules = {
        "onLimit": "evict_oldest_on_same_device_first",
        "kinds": {"uhd": 1, "live": 2},
        "maxPerTitle": 1,
        "maxDevices": 10,
        "deviceWindowDays": 30,
        "maxAwayStreams": 1,
        "onOutage": "allow",
    }
    plan = await new_plan(admin, maxStreams=4, **rules, shadow={"maxStreams": 2})
    assert {k: plan[k] for k in rules} == rules
    assert {k: v for k, v in plan["shadow"].items() if v is not None} == {"maxStreams": 2}
    patched = await admin.patch(f"/v1/plans/{plan['id']}", json={"maxPerTitle": None, "shadow": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["maxPerTitle"] is None
    assert patched.json()["kinds"] == {"uhd": 1, "live": 2}
    assert patched.json()["shadow"] is None
    for bad, field in (
        ({"onLimit": "shuffle"}, "onLimit"),
        ({"onOutage": "maybe"}, "onOutage"),
        ({"kinds": {"uhd": -1}}, "kinds"),
        ({"maxDevices": "many"}, "maxDevices"),
        ({"shadow": {"maxPerTitle": -2}}, "shadow"),
    ):
        response = await admin.post("/v1/plans", json={"name": "bad", "maxStreams": 1, **bad})
        assert response.status_code == 422, response.text
        assert field in str(response.json()), response.json()
    schema = (await admin.get("/openapi.json")).json()["components"]["schemas"]["PlanIn"]["properties"]
    named = {"maxStreams", "onLimit", "kinds", "maxPerTitle", "maxDevices", "maxAwayStreams", "onOutage", "shadow"}
    assert named <= set(schema)


async def test_each_rule_denies_with_its_reason(base_url: str, admin: httpx.AsyncClient) -> None:
    plan = await new_plan(admin, maxStreams=3, kinds={"uhd": 1}, maxPerTitle=1, maxDevices=3)
    # Made by id (PUT), after the demo videos in the shared app's id order.
    uhd_a = await put_video(admin, {"title": "a", "url": "/a.mp4", "kinds": ["uhd", "vod"]})
    uhd_b = await put_video(admin, {"title": "b", "url": "/b.mp4", "kinds": ["uhd"]})
    assert uhd_a["kinds"] == ["uhd", "vod"]
    _, token = await account(base_url, admin, plan["id"])
    async with client(base_url, token) as player:
        assert (await play(player, uhd_a["id"], "tv"))["status"] == "allowed"
        kind = await play(player, uhd_b["id"], "phone")
        assert (kind["status"], kind["reason"]) == ("denied", "kind_limit:uhd")
        assert (await play(player, "1", "phone"))["status"] == "allowed"
        title = await play(player, "1", "laptop")
        assert (title["status"], title["reason"]) == ("denied", "title_limit")
        assert (await play(player, "2", "laptop"))["status"] == "allowed"
        device = await play(player, "3", "tablet")
        assert (device["status"], device["reason"]) == ("denied", "device_limit")
    single = await new_plan(admin, maxStreams=1)
    _, token = await account(base_url, admin, single["id"])
    async with client(base_url, token) as player:
        assert (await play(player, "1", "tv"))["status"] == "allowed"
        total = await play(player, "2", "phone")
        assert (total["status"], total["reason"], total["limit"]) == ("denied", "limit_reached", 1)


async def test_devices_are_listed_and_removing_one_makes_room(base_url: str, admin: httpx.AsyncClient) -> None:
    plan = await new_plan(admin, maxStreams=5, maxDevices=1)
    user_id, token = await account(base_url, admin, plan["id"])
    async with client(base_url, token) as player:
        assert (await play(player, "1", "tv/living room"))["status"] == "allowed"
        assert (await play(player, "2", "phone"))["reason"] == "device_limit"
        devices = (await player.get("/v1/devices")).json()
        assert [d["id"] for d in devices] == ["tv/living room"]
        assert (await admin.get(f"/v1/devices?userId={user_id}")).json() == devices
        assert (await player.delete("/v1/devices/tv/living room")).status_code == 204
        assert (await player.delete("/v1/devices/tv/living room")).status_code == 404
        assert (await play(player, "2", "phone"))["status"] == "allowed"
        assert [d["id"] for d in (await player.get("/v1/devices")).json()] == ["phone"]
        assert (await player.get("/v1/devices?userId=1")).status_code == 404


@pytest.mark.parametrize(("peer", "trusted"), [("127.0.0.1", True), ("198.51.100.9", False)])
async def test_household_by_network_believes_forwarded_for_from_trusted_proxies_only(
    base_url: str, admin: httpx.AsyncClient, peer: str, trusted: bool
) -> None:
    """A proxy at 127.0.0.1 (PLAYGATE_TRUSTED_PROXIES) names the client; another peer's header is ignored."""
    plan = await new_plan(admin, maxStreams=4, maxAwayStreams=1)
    _, token = await account(base_url, admin, plan["id"])
    async with client(base_url, token, peer=peer) as player:
        household = await player.put("/v1/household", json={"networks": ["203.0.113.7/24"]})
        assert household.json() == {"networks": [HOME]}
        bad = await player.put("/v1/household", json={"networks": ["not-a-net"]})
        assert bad.status_code == 422
        at_home = {"X-Forwarded-For": "203.0.113.50"}
        # Through the trusted proxy the client is at home: three streams, none away. From the untrusted peer the
        # header is ignored: the peer's own address is away, so the second stream is past maxAwayStreams.
        first = await play(player, "1", "a", **at_home)
        second = await play(player, "2", "b", **at_home)
        assert first["status"] == "allowed"
        if trusted:
            assert second["status"] == "allowed"
            away = await play(player, "3", "c", **{"X-Forwarded-For": "192.0.2.1"})
            assert away["status"] == "allowed"
            again = await play(player, "4", "d", **{"X-Forwarded-For": "192.0.2.1"})
            assert (again["status"], again["reason"]) == ("denied", "household_limit")
        else:
            assert (second["status"], second["reason"]) == ("denied", "household_limit")


async def test_shadow_counts_exactly_under_concurrency(base_url: str, admin: httpx.AsyncClient) -> None:
    """Twelve requests at once: the enforced limit (3) decides; the shadow (1) would have denied all but one."""
    plan = await new_plan(admin, maxStreams=3, shadow={"maxStreams": 1})
    user_id, token = await account(base_url, admin, plan["id"])
    async with client(base_url, token) as player:
        before = await shadow_count(player)
        decisions = await asyncio.gather(*(play(player, str(n % 6 + 1), f"dev-{n}") for n in range(12)))
        assert sorted(d["status"] for d in decisions) == ["allowed"] * 3 + ["denied"] * 9
        assert {d["reason"] for d in decisions if d["status"] == "denied"} == {"limit_reached"}
        listed = (await player.get("/v1/shadow-denials")).json()
        assert len(listed) == 11
        assert {d["rule"] for d in listed} == {"limit_reached"}
        assert sorted(d["enforced"] for d in listed) == ["allowed"] * 2 + ["denied"] * 9
        everyone = (await admin.get("/v1/shadow-denials")).json()
        assert [d for d in everyone if d["userId"] == user_id] == listed
        assert (await admin.get(f"/v1/shadow-denials?userId={user_id}")).json() == listed
        assert await shadow_count(player) - before == 11


async def shadow_count(client: httpx.AsyncClient) -> float:
    """playgate_shadow_denials_total{rule="limit_reached"} now (the app is shared: tests compare before and after)."""
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith('playgate_shadow_denials_total{rule="limit_reached"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_stricter_plan_ends_the_streams_over_its_rules_at_their_next_heartbeat(
    base_url: str, admin: httpx.AsyncClient
) -> None:
    uhd = await put_video(admin, {"title": "UHD", "url": "/media/u.mp4", "kinds": ["uhd"]})
    plan = await new_plan(admin, maxStreams=4, onLimit="deny")
    _, token = await account(base_url, admin, plan["id"])
    async with client(base_url, token) as player:
        tv = await play(player, uhd["id"], "tv")
        phone = await play(player, uhd["id"], "phone")
        laptop = await play(player, "1", "laptop")
        assert {tv["status"], phone["status"], laptop["status"]} == {"allowed"}
        stricter = await admin.patch(f"/v1/plans/{plan['id']}", json={"kinds": {"uhd": 1}, "maxDevices": 2})
        assert stricter.status_code == 200, stricter.text

        async def heartbeat(decision: dict[str, Any]) -> httpx.Response:
            return await player.post(f"/v1/streams/{decision['streamId']}/heartbeat")

        # Under deny the first come keeps its slot: the second UHD stream is over the kind cap.
        assert (await heartbeat(tv)).status_code == 200
        ended = await heartbeat(phone)
        assert ended.status_code == 404
        assert "kind_limit:uhd" in ended.json()["detail"]
        # The laptop is the second device still playing: within maxDevices 2.
        assert (await heartbeat(laptop)).status_code == 200
        assert await admin.patch(f"/v1/plans/{plan['id']}", json={"maxDevices": 1})
        refused = await heartbeat(laptop)
        assert refused.status_code == 404
        assert "device_limit" in refused.json()["detail"]
        live = {s["id"] for s in (await player.get("/v1/streams")).json()}
        assert live == {tv["streamId"]}


async def request_caps_hold(admin_url: str, player_url: str) -> None:
    """The rules that read the request itself (the video's kind tags, the client's network) decided as the API
    saw the request: a plan of 1 UHD stream and 1 away, made through `admin_url`, played through `player_url`
    (both the same process here; other processes, with the decision made by a worker or an owner, in
    tests/distributed/test_policies.py and tests/integration/test_process_group.py)."""
    admin = await admin_client(admin_url)
    async with admin:
        plan = await new_plan(admin, maxStreams=4, kinds={"uhd": 1}, maxAwayStreams=1)
        uhd_a = await put_video(admin, {"title": "a", "url": "/a.mp4", "kinds": ["uhd"]})
        uhd_b = await put_video(admin, {"title": "b", "url": "/b.mp4", "kinds": ["uhd"]})
        _, token = await account(admin_url, admin, plan["id"])
    at_home = {"X-Forwarded-For": "203.0.113.50"}  # the caller is 127.0.0.1, a trusted proxy by default
    away = {"X-Forwarded-For": "192.0.2.1"}
    async with api_client(player_url, token) as player:
        assert (await player.put("/v1/household", json={"networks": [HOME]})).status_code == 200
        assert (await play(player, uhd_a["id"], "tv", **at_home))["status"] == "allowed"
        kind = await play(player, uhd_b["id"], "phone", **at_home)
        assert (kind["status"], kind["reason"]) == ("denied", "kind_limit:uhd")
        assert (await play(player, "1", "phone", **away))["status"] == "allowed"
        household = await play(player, "2", "laptop", **away)
        assert (household["status"], household["reason"]) == ("denied", "household_limit")
        streams = (await player.get("/v1/streams")).json()
    assert sorted(s["videoId"] for s in streams) == sorted([uhd_a["id"], "1"])


async def test_kind_and_household_caps_read_the_request(base_url: str) -> None:
    await request_caps_hold(base_url, base_url)
