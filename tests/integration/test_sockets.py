"""Socket.IO over a real server: tokens at connect, decisions to the user's sockets only, heartbeats with acks, and
what a client sends that is not Socket.IO."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import socketio
import websockets

from tests.support.clients import OpenSocket, api_client, connect_socket, new_user
from tests.support.servers import ServerProcess


@pytest.mark.parametrize("auth", [{}, {"token": "garbage"}, {"token": ""}])
async def test_a_socket_without_a_valid_token_is_refused(base_url: str, auth: dict[str, str]) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(base_url, auth=auth, transports=["websocket"], wait_timeout=5)
    assert not sio.connected


async def test_token_in_the_query_is_accepted(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(f"{base_url}?token={user.token}", transports=["websocket"], wait_timeout=5)
    assert sio.connected
    await sio.disconnect()


async def test_decisions_reach_only_the_users_sockets(
    base_url: str, admin: httpx.AsyncClient, open_socket: OpenSocket
) -> None:
    alice = await new_user(base_url, admin, limit=1)
    bob = await new_user(base_url, admin, limit=1)
    alice_phone = await open_socket(base_url, token=alice.token)
    alice_tv = await open_socket(base_url, token=alice.token)
    bob_phone = await open_socket(base_url, token=bob.token)
    async with api_client(base_url, alice.token) as client:
        request_id = (await client.post("/v1/plays", json={"videoId": "1", "deviceId": "tv"})).json()["requestId"]
    for sock in (alice_phone, alice_tv):
        message = await sock.next_message()
        assert message["requestId"] == request_id
        assert message["status"] == "allowed"
        assert message["data"] == {"videoId": "1", "userId": alice.id}
        assert (message["active"], message["limit"]) == (1, 1)
        assert message["streamId"]
        # the stream's playback token beside its URL, the one the URL carries (no edge signing here)
        assert message["playbackToken"] == message["playbackUrl"].split("/")[3]
    async with api_client(base_url, bob.token) as client:
        bob_request = (await client.post("/v1/plays", json={"videoId": "2"})).json()["requestId"]
    assert (await bob_phone.next_message())["requestId"] == bob_request
    await asyncio.sleep(0.3)
    assert alice_phone.messages.empty(), "alice must not see bob's decision"
    assert alice_tv.messages.empty()
    assert bob_phone.messages.empty(), "bob got exactly one message"


async def test_heartbeat_event_renews_the_lease(
    base_url: str, admin: httpx.AsyncClient, open_socket: OpenSocket
) -> None:
    user = await new_user(base_url, admin)
    other = await new_user(base_url, admin)
    sock = await open_socket(base_url, token=user.token)
    other_sock = await open_socket(base_url, token=other.token)
    async with api_client(base_url, user.token) as client:
        play = (await client.post("/v1/plays?wait=5", json={"videoId": "1"})).json()
        before = (await client.get("/v1/streams")).json()[0]["expiresAt"]
    await asyncio.sleep(0.01)
    ack = await sock.sio.call("heartbeat", {"streamId": play["streamId"]}, timeout=5)
    assert ack["streamId"] == play["streamId"]
    assert ack["expiresAt"] >= before
    # A fresh playback link, as the HTTP heartbeat answer carries: it opens the stream.
    assert ack["playbackUrl"].startswith("/v1/play/")
    assert ack["playbackToken"] == ack["playbackUrl"].split("/")[3]
    async with httpx.AsyncClient(base_url=base_url) as media:
        opened = await media.get("/v1/authorize", headers={"X-Playback-Token": ack["playbackUrl"].split("/")[3]})
    assert opened.status_code == 204
    # errors are acked as the problem fields of HTTP (README: Errors)
    gone = await sock.sio.call("heartbeat", {"streamId": "nope"}, timeout=5)
    assert gone == {"type": "about:blank", "title": "Not found", "status": 404, "detail": gone["detail"]}
    assert "nope" in gone["detail"]
    bad = await sock.sio.call("heartbeat", "not an object", timeout=5)
    assert (bad["type"], bad["title"], bad["status"], bad["field"]) == (
        "about:blank",
        "Unprocessable content",
        422,
        "streamId",
    )
    assert bad["detail"]
    # the stream's playback token may go along (the outage policy honours it anywhere); another's is refused
    token = play["playbackUrl"].split("/")[3]
    beat = {"streamId": play["streamId"], "playbackToken": token}
    assert (await sock.sio.call("heartbeat", beat, timeout=5))["streamId"] == play["streamId"]
    for wrong in ("forged", 42):
        refused = await sock.sio.call("heartbeat", {**beat, "playbackToken": wrong}, timeout=5)
        assert (refused["status"], refused["field"]) == (422, "playbackToken"), refused
    # someone else's stream is not found for them
    assert (await other_sock.sio.call("heartbeat", {"streamId": play["streamId"]}, timeout=5))["status"] == 404


async def test_sockets_are_counted_in_metrics(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)

    async def sockets_gauge() -> float:
        text = (await admin.get("/metrics")).text
        line = next(line for line in text.splitlines() if line.startswith("playgate_sockets_connected "))
        return float(line.split()[1])

    before = await sockets_gauge()
    sock = await connect_socket(base_url, token=user.token)
    assert await sockets_gauge() == before + 1
    await sock.close()
    async with asyncio.timeout(5):
        while await sockets_gauge() != before:
            await asyncio.sleep(0.05)


async def test_a_denial_at_the_limit_carries_the_streams_holding_it(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin, limit=1)
    sock = await connect_socket(base_url, token=user.token)
    try:
        async with api_client(base_url, user.token) as client:
            playing = await client.post("/v1/plays", json={"videoId": "1", "deviceId": "tv", "deviceName": "Den TV"})
            allowed = await sock.next_message()
            assert allowed["requestId"] == playing.json()["requestId"]
            assert "conflicts" not in allowed
            await client.post("/v1/plays", json={"videoId": "2", "deviceId": "phone"})
        denied = await sock.next_message()
        assert (denied["status"], denied["reason"]) == ("denied", "limit_reached")
        [conflict] = denied["conflicts"]
        assert conflict["streamId"] == allowed["streamId"]
        assert (conflict["videoId"], conflict["deviceId"], conflict["deviceName"]) == ("1", "tv", "Den TV")
        assert conflict["startedAt"] <= conflict["lastSeenAt"]
    finally:
        await sock.close()


async def _raw_socket(server: ServerProcess, token: str) -> websockets.ClientConnection:
    """A websocket speaking Engine.IO 4 by hand, connected to the default namespace as `token`'s user."""
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket")
    assert (await ws.recv()).startswith("0{")  # Engine.IO's open
    await ws.send("40" + orjson.dumps({"token": token}).decode())
    assert (await ws.recv()).startswith("40{")  # the namespace's connect
    return ws


async def _next_or_closed(ws: websockets.ClientConnection) -> str:
    try:
        return str(await asyncio.wait_for(ws.recv(), 5))
    except websockets.ConnectionClosed:
        return "(closed)"


@pytest.mark.parametrize(
    "sent",
    [
        "4x",  # no packet type
        "4",  # an empty message
        "49",  # a type Socket.IO has not
        "42",  # an event with no data
        '42{"name":"heartbeat"}',  # an event that is no list
        "42[1]",  # a name that is no string
        '42["heartbeat",{"streamId":',  # JSON cut short
        '45-["heartbeat",{"_placeholder":true,"num":0}]',  # binary: no event of PlayGate's takes it
        '44"refused"',  # CONNECT_ERROR is the server's to send
        # and below Socket.IO, frames that are no Engine.IO packet (engine.io raised out of the ASGI application)
        "",
        "x",
        "9",
    ],
)
async def test_a_packet_that_is_not_socketio_closes_its_socket_without_an_error_logged(
    server: ServerProcess, server_admin: httpx.AsyncClient, sent: str
) -> None:
    """As the JavaScript server does on a parse error; python-socketio logged a traceback at error level for each
    and kept the socket."""
    user = await new_user(server.base_url, server_admin)
    logged = len(server.log())
    ws = await _raw_socket(server, user.token)
    try:
        await ws.send(sent)
        assert await _next_or_closed(ws) in ("1", "(closed)")  # Engine.IO's close, or the connection's end
    finally:
        await ws.close()
    await asyncio.sleep(0.2)
    assert '"level":"error"' not in server.log()[logged:]


async def test_an_event_with_more_arguments_than_its_handler_takes_is_answered(
    server: ServerProcess, server_admin: httpx.AsyncClient
) -> None:
    """The arguments past the first are ignored: python-socketio's call failed (a traceback, no ack)."""
    user = await new_user(server.base_url, server_admin)
    ws = await _raw_socket(server, user.token)
    try:
        await ws.send('427["heartbeat",{"streamId":"no-such-stream"},"more",3]')
        ack = await _next_or_closed(ws)
        assert ack.startswith("437["), ack
        assert orjson.loads(ack[3:])[0]["status"] == 404
    finally:
        await ws.close()


async def test_over_long_polling_an_unreadable_packet_is_answered_and_closes_the_session(
    server: ServerProcess, server_admin: httpx.AsyncClient
) -> None:
    """The close does not wait for the packet that says so to be taken: a polling client takes it with its next
    GET, which it sends once its POST is answered (the POST was held until a timeout)."""
    user = await new_user(server.base_url, server_admin)
    polling = {"EIO": "4", "transport": "polling"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        opened = await client.get("/socket.io/", params=polling)
        session = {**polling, "sid": orjson.loads(opened.text[1:])["sid"]}
        joined = await client.post("/socket.io/", params=session, content=f'40{{"token":"{user.token}"}}')
        assert joined.status_code == 200
        assert (await client.get("/socket.io/", params=session)).text.startswith("40{")
        refused = await client.post("/socket.io/", params=session, content="4x")
        assert (refused.status_code, refused.text) == (200, "OK")
        after = await client.get("/socket.io/", params=session)
        assert after.status_code == 400 or after.text == "1", after.text  # closed, or told so
