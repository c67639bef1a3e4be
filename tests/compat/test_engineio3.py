"""Engine.IO 3 over plain HTTP, packet by packet: the handshake with Socket.IO 2's implicit connect, the client's
pings answered with pongs on the next poll, namespaces, a disconnect, unknown sessions."""

from __future__ import annotations

import json

import httpx

from playgate.api.legacy_socketio import decode_payload, encode_payload
from tests.support.servers import ServerProcess

POLLING = {"EIO": "3", "transport": "polling"}


async def handshake(client: httpx.AsyncClient, **query: str) -> tuple[str, dict[str, object]]:
    response = await client.get("/socket.io/", params={**POLLING, **query})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    opened, connected = decode_payload(response.text)
    assert opened[0] == "0"
    assert connected == "40", "Socket.IO 2 connects to '/' without being asked"
    handshake = json.loads(opened[1:])
    return str(handshake["sid"]), handshake


async def send(client: httpx.AsyncClient, sid: str, *packets: str) -> None:
    response = await client.post("/socket.io/", params={**POLLING, "sid": sid}, content=encode_payload(list(packets)))
    assert (response.status_code, response.text) == (200, "ok")


async def poll(client: httpx.AsyncClient, sid: str) -> list[str]:
    response = await client.get("/socket.io/", params={**POLLING, "sid": sid})
    assert response.status_code == 200, response.text
    return decode_payload(response.text)


async def test_the_client_pings_and_the_server_answers(open_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=open_server.base_url, timeout=10) as client:
        sid, opened = await handshake(client, user="1")
        assert opened["upgrades"] == ["websocket"]
        assert (opened["pingInterval"], opened["pingTimeout"]) == (25000, 20000)
        await send(client, sid, "2")
        assert await poll(client, sid) == ["3"]
        await send(client, sid, "2probe", "2")
        assert await poll(client, sid) == ["3probe", "3"]


async def test_namespaces_other_than_the_default_are_refused(open_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=open_server.base_url, timeout=10) as client:
        sid, _ = await handshake(client)
        await send(client, sid, "40/admin,", "40")
        assert await poll(client, sid) == ['44/admin,"Invalid namespace"', "40"]


async def test_a_disconnect_ends_the_session(open_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=open_server.base_url, timeout=10) as client:
        sid, _ = await handshake(client)
        await send(client, sid, "41")
        gone = await client.get("/socket.io/", params={**POLLING, "sid": sid})
        assert gone.status_code == 400
        assert gone.json() == {"code": 1, "message": "Session ID unknown"}


async def test_bad_requests_get_400(open_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=open_server.base_url, timeout=10) as client:
        sid, _ = await handshake(client)
        not_a_payload = await client.post("/socket.io/", params={**POLLING, "sid": sid}, content="hello")
        unknown_transport = await client.get("/socket.io/", params={"EIO": "3", "transport": "flash"})
    assert not_a_payload.status_code == 400
    assert unknown_transport.status_code == 400
