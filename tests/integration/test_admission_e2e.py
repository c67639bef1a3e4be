"""The limit under concurrency, and across a restart of the process, on servers of their own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.clients import OpenSocket, admin_client, api_client, connect_socket, new_user, token_for
from tests.support.servers import ServerProcess, start_playgate


async def test_fifty_concurrent_requests_give_exactly_the_limit(
    base_url: str, admin: httpx.AsyncClient, open_socket: OpenSocket
) -> None:
    user = await new_user(base_url, admin, limit=3)
    sock = await open_socket(base_url, token=user.token)
    async with api_client(base_url, user.token) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/plays", json={"videoId": str(1 + n % 6)}) for n in range(50))
        )
    assert {r.status_code for r in responses} == {202}
    sent = {r.json()["requestId"] for r in responses}
    messages = [await sock.next_message(timeout_s=10) for _ in range(50)]
    assert {m["requestId"] for m in messages} == sent, "every request gets exactly one decision"
    allowed = [m for m in messages if m["status"] == "allowed"]
    assert len(allowed) == 3
    assert all(m["reason"] == "limit_reached" for m in messages if m["status"] == "denied")
    assert max(m["active"] for m in messages) == 3
    async with api_client(base_url, user.token) as client:
        assert len((await client.get("/v1/streams")).json()) == 3
    await asyncio.sleep(0.3)
    assert sock.messages.empty()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_playgate(tmp_path / "data")
    yield server
    server.stop()


async def test_a_restart_keeps_streams_catalogue_and_decisions(own_server: ServerProcess) -> None:
    base = own_server.base_url
    admin = await admin_client(base)
    user = await new_user(base, admin, limit=2)
    await admin.aclose()
    async with api_client(base, user.token) as client:
        play = (await client.post("/v1/plays?wait=5", json={"videoId": "1", "deviceId": "tv"})).json()
        assert play["status"] == "allowed"

    # uvicorn shuts down gracefully, then re-raises SIGTERM: the exit is "killed by SIGTERM", with no traceback
    assert own_server.stop() in (0, -15), own_server.log()
    assert "Traceback" not in own_server.log()
    restarted = start_playgate(own_server.data_dir, port=own_server.port)
    try:
        # the user, their password, their token (same secret kept in the data dir) and their stream survive
        assert await token_for(base, user.name, user.password)
        async with api_client(base, user.token) as client:
            streams = (await client.get("/v1/streams")).json()
            assert [s["id"] for s in streams] == [play["streamId"]]
            assert (await client.get(f"/v1/plays/{play['requestId']}")).json()["status"] == "allowed"
            second = (await client.post("/v1/plays?wait=5", json={"videoId": "2"})).json()
            third = (await client.post("/v1/plays?wait=5", json={"videoId": "3"})).json()
            assert (second["status"], third["status"]) == ("allowed", "denied")
        async with api_client(base) as anonymous:
            assert len((await anonymous.get("/videos")).json()) == 6
    finally:
        restarted.stop()


async def test_streams_stop_counting_when_the_lease_runs_out(tmp_path: Path) -> None:
    server = start_playgate(tmp_path / "data", PLAYGATE_STREAM_TTL="1", PLAYGATE_SWEEP_INTERVAL="0.2")
    try:
        admin = await admin_client(server.base_url)
        user = await new_user(server.base_url, admin, limit=1)
        await admin.aclose()
        sock = await connect_socket(server.base_url, token=user.token)
        async with api_client(server.base_url, user.token) as client:
            first = (await client.post("/v1/plays?wait=5", json={"videoId": "1"})).json()
            assert first["status"] == "allowed"
            assert (await client.post("/v1/plays?wait=5", json={"videoId": "2"})).json()["status"] == "denied"
            ended = await sock.next_ended(timeout_s=5)
            assert ended == {"streamId": first["streamId"], "videoId": "1", "reason": "expired"}
            assert (await client.get("/v1/streams")).json() == []
            assert (await client.post("/v1/plays?wait=5", json={"videoId": "2"})).json()["status"] == "allowed"
        await sock.close()
    finally:
        server.stop()


async def test_two_processes_on_one_sqlite_file_never_exceed_the_limit(tmp_path: Path) -> None:
    """The SQLite ledger holds the write lock per batch, so a second process on the same file is safe."""
    first = start_playgate(tmp_path / "data")
    second = start_playgate(tmp_path / "data")
    try:
        admin = await admin_client(first.base_url)
        user = await new_user(first.base_url, admin, limit=3)
        await admin.aclose()
        async with api_client(first.base_url, user.token) as a, api_client(second.base_url, user.token) as b:
            responses = await asyncio.gather(
                *((a if n % 2 else b).post("/v1/plays?wait=10", json={"videoId": str(1 + n % 6)}) for n in range(40))
            )
            statuses = [r.json()["status"] for r in responses]
            assert statuses.count("allowed") == 3, statuses
            assert statuses.count("denied") == 37
            assert len((await b.get("/v1/streams")).json()) == 3
    finally:
        first.stop()
        second.stop()
