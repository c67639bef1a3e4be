"""Plans' rules and the player kit's answers with the API that answers, the worker that decides and the API holding
the socket all different processes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.distributed.conftest import Cluster
from tests.integration.test_policies import account, new_plan, play, request_caps_hold
from tests.support.clients import admin_client, api_client, connect_socket

# The audit trail records a worker's decisions from the change log within a second or two.
TRAIL_WAIT_S = 15.0


async def test_kind_and_household_caps_hold_when_a_worker_decides(cluster: Cluster) -> None:
    """Made through one API, played through the other, decided by either worker."""
    await request_caps_hold(cluster.urls[0], cluster.urls[1])


async def test_conflicts_watch_here_eviction_and_shadow_across_processes(cluster: Cluster) -> None:
    """What the player kit and the plans rely on, with the API that answers, the worker that decides and the API
    holding the socket all different processes: a denial's conflicts, "Watch here" announced on the other API's
    socket, an eviction, and a shadow rule's would-be denials listed."""
    first_api, second_api = cluster.urls
    admin = await admin_client(first_api)
    async with admin:
        kept = await new_plan(admin, maxStreams=1)
        evicting = await new_plan(admin, maxStreams=1, onLimit="evict_oldest")
        shadowed = await new_plan(admin, maxStreams=2, shadow={"maxStreams": 1})
        _, token = await account(first_api, admin, kept["id"])
        _, evicted_token = await account(first_api, admin, evicting["id"])
        shadow_user, shadow_token = await account(first_api, admin, shadowed["id"])
    socket = await connect_socket(first_api, token=token)
    try:
        async with api_client(first_api, token) as here, api_client(second_api, token) as there:
            tv = await play(here, "1", "tv")
            denied = await play(there, "2", "phone")
            assert (denied["status"], denied["reason"]) == ("denied", "limit_reached")
            [conflict] = denied["conflicts"]
            assert (conflict["streamId"], conflict["deviceId"], conflict["videoId"]) == (tv["streamId"], "tv", "1")
            response = await there.post(
                "/v1/plays?wait=5", json={"videoId": "2", "deviceId": "phone", "replaceStreamIds": [tv["streamId"]]}
            )
            phone = response.json()
            assert (phone["status"], phone["active"]) == ("allowed", 1), phone
            ended = await socket.next_ended(timeout_s=10)
            assert (ended["streamId"], ended["reason"]) == (tv["streamId"], "replaced")
        async with api_client(second_api, evicted_token) as player:
            oldest = await play(player, "1", "tv")
            newest = await play(player, "2", "phone")
            assert (newest["status"], newest["active"]) == ("allowed", 1)
            assert [s["id"] for s in (await player.get("/v1/streams")).json()] == [newest["streamId"]]
            assert oldest["streamId"] != newest["streamId"]
        async with api_client(second_api, shadow_token) as player:
            assert (await play(player, "1", "tv"))["status"] == "allowed"
            assert (await play(player, "2", "phone"))["status"] == "allowed"
            listed = await shadow_denials(player, count=1)
        assert [(d["userId"], d["rule"], d["enforced"]) for d in listed] == [(shadow_user, "limit_reached", "allowed")]
    finally:
        await socket.close()


async def shadow_denials(player: httpx.AsyncClient, *, count: int) -> list[dict[str, Any]]:
    """The player's shadow denials once `count` are listed (the trail takes them from the change log)."""
    deadline = time.monotonic() + TRAIL_WAIT_S
    while True:
        listed = (await player.get("/v1/shadow-denials")).json()
        if len(listed) >= count or time.monotonic() > deadline:
            return list(listed)
        await asyncio.sleep(0.2)
