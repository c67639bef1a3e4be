"""A password changed through one API process ends the user's tokens and sockets on the other one too; a user
`playgate import` disables has their streams ended, and told, on every API process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from click.testing import CliRunner

from playgate.cli import main
from tests.distributed.conftest import Cluster
from tests.support.clients import admin_client, api_client, connect_socket, new_user
from tests.support.servers import playgate_env

DEADLINE_S = 10.0  # the other process's catalogue cache (PLAYGATE_CACHE_TTL, 2 s) and a sweep interval, with room


async def test_a_password_change_on_one_api_ends_tokens_and_sockets_on_the_other(cluster: Cluster) -> None:
    first, second = cluster.urls[:2]
    admin = await admin_client(first)
    user = await new_user(first, admin)
    sock = await connect_socket(second, token=user.token)
    try:
        async with api_client(second, user.token) as client:
            assert (await client.get("/v1/streams")).status_code == 200
            changed = await admin.patch(f"/v1/users/{user.id}", json={"password": "changed-elsewhere"})
            assert changed.status_code == 200
            deadline = time.monotonic() + DEADLINE_S
            while (await client.get("/v1/streams")).status_code != 401:
                assert time.monotonic() < deadline, "the other API process still takes the old token"
                await asyncio.sleep(0.2)
        while sock.sio.connected:
            assert time.monotonic() < deadline, "the other API process kept the socket open"
            await asyncio.sleep(0.2)
    finally:
        await sock.close()
        await admin.aclose()


async def test_a_user_playgate_import_disables_hears_their_streams_end_on_every_api(
    cluster: Cluster, tmp_path: Path
) -> None:
    # The command runs beside the deployment (no server of its own): the ledger's stop tells the sockets, whichever
    # API process holds them.
    first, second = cluster.urls[:2]
    admin = await admin_client(first)
    user = await new_user(first, admin, limit=2)
    sock = await connect_socket(second, token=user.token)
    try:
        async with api_client(first, user.token) as client:
            plays = [(await client.post("/v1/plays?wait=5", json={"videoId": v})).json() for v in ("1", "2")]
        assert [play["status"] for play in plays] == ["allowed", "allowed"]
        rows = tmp_path / "disable.csv"
        rows.write_text(f"id,disabled\n{user.id},true\n")
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["import", "users", str(rows)], env=playgate_env(cluster.data_dir, **cluster.env)
        )
        assert result.exit_code == 0, result.output
        assert "1 user(s) disabled: 2 stream(s) of theirs ended" in result.stdout
        ended = [await sock.next_ended(DEADLINE_S) for _ in plays]
        assert sorted(e["streamId"] for e in ended) == sorted(play["streamId"] for play in plays)
        assert {e["reason"] for e in ended} == {"user_disabled"}
        assert (await admin.get(f"/users/{user.id}/streams")).json() == []
    finally:
        await sock.close()
        await admin.aclose()
