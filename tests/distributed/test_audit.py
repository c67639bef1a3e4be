"""The audit trail in PostgreSQL: decisions made by the worker processes are on record, readable from any API."""

from __future__ import annotations

import asyncio
import time

from tests.distributed.conftest import Cluster
from tests.integration.test_audit import the_plans_policy_is_on_record
from tests.integration.test_policies import account, new_plan, play, put_video
from tests.support.clients import admin_client, api_client, new_user

PLAYS = 10
DEADLINE_S = 15.0


async def test_decisions_of_the_workers_are_on_record_in_postgres(cluster: Cluster) -> None:
    first, second = cluster.urls[:2]
    admin = await admin_client(first)
    user = await new_user(first, admin, limit=2)
    await admin.aclose()
    async with api_client(first, user.token) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/plays", params={"wait": 5}, json={"videoId": "1"}) for _ in range(PLAYS))
        )
    asked = sorted(a.json()["requestId"] for a in answers)
    async with api_client(second, user.token) as client:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            page = (await client.get(f"/v1/users/{user.id}/events", params={"limit": 1000})).json()
            recorded = sorted(e["requestId"] for e in page["events"] if e["kind"] == "decision")
            if len(recorded) >= PLAYS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert recorded == asked


async def test_erasing_a_deleted_users_history_waits_for_the_ends_the_delete_logged(cluster: Cluster) -> None:
    # The delete through one API ends the user's streams and logs their ends in Redis's change log; the erasure
    # through the other, right after, waits until the workers' drains have recorded them, then erases them too.
    first, second = cluster.urls[:2]
    admin = await admin_client(first)
    other_admin = await admin_client(second)
    try:
        user = await new_user(first, admin, limit=2)
        async with api_client(first, user.token) as client:
            plays = [(await client.post("/v1/plays?wait=5", json={"videoId": v})).json() for v in ("1", "2")]
        assert [play["status"] for play in plays] == ["allowed", "allowed"]
        assert (await admin.delete(f"/v1/users/{user.id}")).status_code == 204
        erased = await other_admin.delete(f"/v1/users/{user.id}/history")
        assert erased.status_code == 200, erased.text
        assert erased.json()["auditEvents"] == 4, erased.json()  # two decisions, two ends
        await asyncio.sleep(1.5)  # a drain that came late would have written by now
        page = (await admin.get(f"/v1/users/{user.id}/events")).json()
        assert page["events"] == []
    finally:
        await admin.aclose()
        await other_admin.aclose()


async def test_a_denials_reason_is_on_record_as_answered_with_the_shadow_rules_reason(cluster: Cluster) -> None:
    """A kind cap's denial recorded with its tag (as long as a tag may be: PostgreSQL's column holds it), and what
    the plan's shadow rules would have denied beside what was enforced."""
    tag = "t" * 40
    first, second = cluster.urls[:2]
    admin = await admin_client(first)
    async with admin:
        plan = await new_plan(admin, maxStreams=3, kinds={tag: 1}, shadow={"maxStreams": 1})
        tagged = [await put_video(admin, {"title": t, "url": f"/{t}.mp4", "kinds": [tag]}) for t in ("a", "b")]
        user_id, token = await account(first, admin, plan["id"])
        async with api_client(second, token) as player:
            answers = [
                await play(player, video, f"d{n}") for n, video in enumerate((tagged[0]["id"], tagged[1]["id"], "1"))
            ]
        assert [(a["status"], a["reason"]) for a in answers] == [
            ("allowed", None),
            ("denied", f"kind_limit:{tag}"),
            ("allowed", None),
        ]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            page = (await admin.get(f"/v1/users/{user_id}/events")).json()
            decisions = [e for e in page["events"] if e["kind"] == "decision"]
            if len(decisions) >= len(answers) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert [(e["requestId"], e["outcome"], e["reason"], e["shadow"]) for e in decisions] == [
        (answers[0]["requestId"], "allowed", None, None),
        (answers[1]["requestId"], "denied", f"kind_limit:{tag}", "limit_reached"),
        (answers[2]["requestId"], "allowed", None, "limit_reached"),
    ]


async def test_a_plans_own_policy_is_on_record_from_the_workers_log(cluster: Cluster) -> None:
    await the_plans_policy_is_on_record(cluster.urls[0], cluster.urls[1])
