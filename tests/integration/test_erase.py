"""DELETE /v1/users/{userId}/history: what PlayGate keeps of a user's activity is erased (audit trail, webhook
outbox, registered devices), including the ends that deleting the user itself just logged."""

from __future__ import annotations

import asyncio
import base64
import secrets
from pathlib import Path

import httpx

from tests.support.clients import admin_client, api_client, new_user
from tests.support.inprocess import served
from tests.support.servers import free_port

WEBHOOKS = {
    # Nobody listens at the URL: the events stay in the outbox, pending.
    "PLAYGATE_WEBHOOK_URLS": f"http://127.0.0.1:{free_port()}/hooks",
    "PLAYGATE_WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
}
EVENTS_WITHIN_S = 10.0


async def events_of(admin: httpx.AsyncClient, user_id: str) -> list[dict[str, object]]:
    return list((await admin.get(f"/v1/users/{user_id}/events")).json()["events"])


async def until_events(admin: httpx.AsyncClient, user_id: str, count: int) -> None:
    for _ in range(int(EVENTS_WITHIN_S / 0.1)):
        if len(await events_of(admin, user_id)) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} events of {user_id} within {EVENTS_WITHIN_S} s")


async def test_a_deleted_users_history_is_erased_with_the_ends_the_delete_logged(tmp_path: Path) -> None:
    async with served(tmp_path, **WEBHOOKS) as base_url:
        admin = await admin_client(base_url)
        try:
            plan = await admin.post("/v1/plans", json={"name": "capped", "maxStreams": 2, "maxDevices": 2})
            assert plan.status_code == 201, plan.text
            user = await new_user(base_url, admin, limit=None, plan=plan.json()["id"])
            async with api_client(base_url, user.token) as client:
                first = (await client.post("/v1/plays?wait=5", json={"videoId": "1"})).json()
                assert (await client.delete(f"/v1/streams/{first['streamId']}")).status_code == 204
                playing = (await client.post("/v1/plays?wait=5", json={"videoId": "2"})).json()
            assert (first["status"], playing["status"]) == ("allowed", "allowed")
            await until_events(admin, user.id, 3)  # two decisions, one end
            assert (await admin.get(f"/v1/users/{user.id}/devices")).json() != []
            # The delete ends the stream still playing and logs its end; the erasure right after takes it too.
            assert (await admin.delete(f"/v1/users/{user.id}")).status_code == 204
            erased = await admin.delete(f"/v1/users/{user.id}/history")
            assert erased.status_code == 200, erased.text
            counts = erased.json()
            assert counts["auditEvents"] == 4, counts  # the two decisions and the two ends
            # The last end reaches the outbox when the trail records it: erased before, or with it.
            assert counts["webhookEvents"] == counts["webhookDeliveries"] in (3, 4), counts
            assert counts["devices"] == 2, counts  # each play named no device: one issued each time
            await asyncio.sleep(1.5)  # the audit trail's drains, had anything been left to drain
            assert await events_of(admin, user.id) == []
            again = (await admin.delete(f"/v1/users/{user.id}/history")).json()
            assert set(again.values()) == {0}
            other = await new_user(base_url, admin)
            async with api_client(base_url, other.token) as client:
                refused = await client.delete(f"/v1/users/{user.id}/history")
            assert refused.status_code == 403
        finally:
            await admin.aclose()
