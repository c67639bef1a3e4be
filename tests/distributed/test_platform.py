"""Plugging into a platform, distributed: its tokens on any API process and socket, API keys revoked at once on
every process, imports into PostgreSQL."""

from __future__ import annotations

import secrets

import httpx
import orjson

from tests.distributed.conftest import Cluster
from tests.integration.test_routes import assert_problem
from tests.support.clients import admin_client, api_client, connect_socket


async def test_a_platform_token_plays_on_one_api_and_its_socket_on_the_other_hears_it(cluster: Cluster) -> None:
    tag = secrets.token_hex(4)
    admin = await admin_client(cluster.urls[0])
    async with admin:
        assert (await admin.put(f"/v1/plans/team-{tag}", json={"name": f"Team {tag}", "maxStreams": 1})).is_success
    token = cluster.idp.mint(f"cluster-{tag}", key=cluster.idp.keys[1], plan=f"team-{tag}")
    socket = await connect_socket(cluster.urls[1], token=token)
    try:
        async with api_client(cluster.urls[0], token) as client:
            answer = await client.post("/v1/plays", json={"videoId": "1"})
            assert answer.status_code == 202, answer.text
            message = await socket.next_message(timeout_s=20)
            assert (message["status"], message["limit"]) == ("allowed", 1)
            second = await client.post("/v1/plays?wait=10", json={"videoId": "2"})
            assert (second.json()["status"], second.json()["reason"]) == ("denied", "limit_reached")
    finally:
        await socket.close()


async def test_a_key_revoked_through_one_api_stops_at_once_on_the_other(cluster: Cluster) -> None:
    admin = await admin_client(cluster.urls[0])
    async with admin:
        made = (await admin.post("/v1/keys", json={"name": "cluster backend", "scope": "plays"})).json()
        user = (await admin.put(f"/v1/users/keyed-{secrets.token_hex(4)}", json={})).json()
        async with httpx.AsyncClient(base_url=cluster.urls[1], headers={"X-API-Key": made["key"]}) as backend:
            played = await backend.post("/v1/plays?wait=10", json={"videoId": "1", "userId": user["id"]})
            assert played.json()["status"] == "allowed", played.text
            assert_problem(await backend.get("/v1/users"), 403)
            assert (await admin.delete(f"/v1/keys/{made['id']}")).status_code == 204
            assert_problem(await backend.get("/v1/streams", params={"userId": user["id"]}), 401)


async def test_an_import_into_postgresql_counts_and_a_rerun_changes_nothing(cluster: Cluster) -> None:
    tag = secrets.token_hex(4)
    rows = [{"id": f"pg-{tag}-{n}", "limit": n % 5} for n in range(20_000)] + [{"id": f"pg-{tag}-0", "limit": 1}]
    body = b"\n".join(orjson.dumps(r) for r in rows)
    admin = await admin_client(cluster.urls[1])
    async with admin:
        first = await admin.post("/v1/users:import", content=body, timeout=120)
        assert first.status_code == 200, first.text
        assert [first.json()[k] for k in ("created", "updated", "unchanged", "refused")] == [20_000, 0, 0, 1]
        rerun = (await admin.post("/v1/users:import", content=body, timeout=120)).json()
        assert [rerun[k] for k in ("created", "updated", "unchanged", "refused")] == [0, 0, 20_000, 1]
        assert (await admin.get(f"/v1/users/pg-{tag}-7")).json()["limit"] == 2
