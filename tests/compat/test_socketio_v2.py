"""Socket.IO v2 clients (the real socket.io-client 2.5 in Node) beside v4 ones on one server: polling,
websocket and the upgrade between them; `?token=` with auth on; auth disabled, every user's decisions to a v2
socket that names no user, as the original service sent them."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from tests.compat.node import NodeSocket
from tests.support.clients import TestUser, api_client, new_user
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.usefixtures("node_clients")

TRANSPORTS = {"polling": "polling", "websocket": "websocket", "upgrade": "polling,websocket"}


async def play(base_url: str, user_id: str, video_id: str, token: str | None = None) -> str:
    """Ask for a video through the seed route; the request id."""
    async with api_client(base_url, token) as client:
        response = await client.get(f"/videos/{video_id}/request", params={"user": user_id})
    assert response.status_code == 202, response.text
    return str(response.json()["requestId"])


def summary(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(m["requestId"], m["data"]["userId"], m["status"]) for m in messages]


@pytest.mark.parametrize("transport", TRANSPORTS.values(), ids=TRANSPORTS.keys())
async def test_v2_and_v4_clients_each_get_their_own_users_decisions(
    base_url: str, admin: httpx.AsyncClient, transport: str
) -> None:
    alice, bob = await new_user(base_url, admin), await new_user(base_url, admin)
    alice_v2 = await NodeSocket.open("v2", f"{base_url}?token={alice.token}", transport)
    bob_v4 = await NodeSocket.open("v4", f"{base_url}?token={bob.token}", transport)
    try:
        assert await alice_v2.connected() == transport.split(",")[0]
        await bob_v4.connected()
        alice_request = await play(base_url, alice.id, "1", alice.token)
        bob_request = await play(base_url, bob.id, "2", bob.token)
        [alice_message] = await alice_v2.messages(1)
        [bob_message] = await bob_v4.messages(1)
        assert summary([alice_message]) == [(alice_request, alice.id, "allowed")]
        assert alice_message["data"] == {"videoId": "1", "userId": alice.id}
        assert (alice_message["active"], alice_message["limit"]) == (1, 3)
        assert summary([bob_message]) == [(bob_request, bob.id, "allowed")]
        # After the upgrade (if any), decisions come over the websocket.
        second = await play(base_url, alice.id, "3", alice.token)
        assert summary(await alice_v2.messages(1)) == [(second, alice.id, "allowed")]
        # A v2 player renews its stream's lease as a v4 one does: the `heartbeat` event, answered in its ack.
        ack = await alice_v2.call("heartbeat", {"streamId": alice_message["streamId"]})
        assert ack["streamId"] == alice_message["streamId"]
        assert ack["expiresAt"]
        assert ack["playbackUrl"].startswith("/v1/play/")
        assert (await alice_v2.call("heartbeat", {"streamId": "nope"}))["status"] == 404
        assert (await alice_v2.call("heartbeat", "not an object"))["status"] == 422
        assert await alice_v2.quiet() == [], "alice's v2 socket gets nothing of bob's"
        assert await bob_v4.quiet() == [], "bob's v4 socket gets nothing of alice's"
    finally:
        await alice_v2.close()
        await bob_v4.close()


@pytest.mark.parametrize("query", ["", "?token=garbage", "?user=1"], ids=["nothing", "bad token", "user only"])
async def test_a_v2_client_without_a_valid_token_is_refused_with_an_error(base_url: str, query: str) -> None:
    sock = await NodeSocket.open("v2", f"{base_url}{query}", "polling")
    try:
        event = await sock.next()
        assert event["event"] == "error", event
        assert "token" in event["data"].lower()
    finally:
        await sock.close()


async def test_auth_disabled_a_v2_client_naming_no_user_gets_every_users_decisions(
    open_server: ServerProcess,
) -> None:
    url = open_server.base_url
    users = [await open_user(url) for _ in range(2)]
    everyone = await NodeSocket.open("v2", url, "polling,websocket")
    only_second = await NodeSocket.open("v2", f"{url}?user={users[1].id}", "websocket")
    first_v4 = await NodeSocket.open("v4", f"{url}?user={users[0].id}", "websocket")
    try:
        for sock in (everyone, only_second, first_v4):
            await sock.connected()
        requests = [await play(url, user.id, "1") for user in users]
        expected = [(request, user.id, "allowed") for request, user in zip(requests, users, strict=True)]
        assert sorted(summary(await everyone.messages(2))) == sorted(expected)
        [second_decision] = await only_second.messages(1)
        assert summary([second_decision]) == [expected[1]]
        assert summary(await first_v4.messages(1)) == [expected[0]]
        # A stream ended by someone else (every caller is an admin here) is announced to its user's sockets.
        async with api_client(url) as client:
            stopped = await client.delete(f"/v1/streams/{second_decision['streamId']}")
        assert stopped.status_code == 204, stopped.text
        ended = {"streamId": second_decision["streamId"], "videoId": "1", "reason": "stopped_by_admin"}
        assert await everyone.messages(1, "stream_ended") == [ended]
        assert await only_second.messages(1, "stream_ended") == [ended]
        for sock in (everyone, only_second, first_v4):
            assert await sock.quiet() == []
        refused = await everyone.call("heartbeat", {"streamId": expected[0][0]})
        assert (refused["status"], refused["field"]) == (422, "user"), "a socket of no user renews nothing"
    finally:
        for sock in (everyone, only_second, first_v4):
            await sock.close()


async def open_user(base_url: str) -> TestUser:
    """A fresh user on the auth-disabled server (its admin routes need no token there)."""
    async with api_client(base_url) as client:
        response = await client.post("/v1/users", json={"name": f"v2-{secrets.token_hex(4)}", "password": "pw-123456"})
    assert response.status_code == 201, response.text
    body = response.json()
    return TestUser(body["id"], body["name"], "pw-123456", "", body["limit"])
