"""Socket.IO v2 clients in the distributed deployment: a worker process emits through the Redis manager, and a
v2 socket on either API process gets its user's decisions, beside a v4 socket of the same user on the other."""

from __future__ import annotations

import pytest

from tests.compat.node import NodeSocket, require_node_clients
from tests.distributed.conftest import Cluster
from tests.support.clients import admin_client, api_client, new_user


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_v2_sockets_on_an_api_process_get_decisions_made_by_a_worker(cluster: Cluster, transport: str) -> None:
    require_node_clients()
    admin = await admin_client(cluster.urls[0])
    try:
        user = await new_user(cluster.urls[0], admin)
        other = await new_user(cluster.urls[0], admin)
    finally:
        await admin.aclose()
    v2 = await NodeSocket.open("v2", f"{cluster.urls[0]}?token={user.token}", transport)
    v4 = await NodeSocket.open("v4", f"{cluster.urls[1]}?token={user.token}", transport)
    other_v2 = await NodeSocket.open("v2", f"{cluster.urls[1]}?token={other.token}", transport)
    try:
        for sock in (v2, v4, other_v2):
            await sock.connected()
        async with api_client(cluster.urls[1], user.token) as client:
            response = await client.get("/videos/2/request/", params={"user": user.id})
        assert response.status_code == 202, response.text
        request_id = response.json()["requestId"]
        for sock in (v2, v4):
            [message] = await sock.messages(1)
            assert (message["requestId"], message["status"], message["data"]["userId"]) == (
                request_id,
                "allowed",
                user.id,
            )
            assert await sock.quiet() == [], "each decision once"
        assert await other_v2.quiet() == [], "another user's v2 socket gets nothing"
    finally:
        for sock in (v2, v4, other_v2):
            await sock.close()
