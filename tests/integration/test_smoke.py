"""The walk-through of the README, end to end over real HTTP and Socket.IO."""

from __future__ import annotations

import httpx

from tests.support.clients import OpenSocket, api_client, new_user


async def test_three_allowed_fourth_denied_then_stop_and_play(
    base_url: str, admin: httpx.AsyncClient, open_socket: OpenSocket
) -> None:
    user = await new_user(base_url, admin, limit=3)
    sock = await open_socket(base_url, token=user.token)
    async with api_client(base_url, user.token) as client:
        streams = []
        for video in ("1", "2", "3"):
            response = await client.get(f"/videos/{video}/request", params={"user": user.id})
            assert response.status_code == 202
            message = await sock.next_message()
            assert message["status"] == "allowed"
            assert message["requestId"] == response.json()["requestId"]
            streams.append(message["streamId"])
        response = await client.get("/videos/4/request", params={"user": user.id})
        denied = await sock.next_message()
        assert denied["status"] == "denied"
        assert denied["reason"] == "limit_reached"
        assert (denied["active"], denied["limit"]) == (3, 3)
        assert (await client.get("/videos/1/stop", params={"user": user.id})).status_code == 204
        await client.get("/videos/4/request", params={"user": user.id})
        assert (await sock.next_message())["status"] == "allowed"
