"""A password changed through one API process ends the user's tokens and sockets on the other one too."""

from __future__ import annotations

import asyncio
import time

from tests.distributed.conftest import Cluster
from tests.support.clients import admin_client, api_client, connect_socket, new_user

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
