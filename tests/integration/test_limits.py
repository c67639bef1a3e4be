"""Connection limits of a real uvicorn: header timeout, header size, connection cap, websocket compression, the
per-user socket cap and rate; and the defaults leave a legitimate client alone (200 plays at once, 50 sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import socketio

from tests.support.clients import admin_client, api_client, connect_socket, new_user
from tests.support.servers import ServerProcess, start_playgate

HEADER_TIMEOUT_S = 1
MAX_CONNECTIONS = 20
MAX_HEADER_BYTES = 4096
SOCKETS_PER_USER = 3
USER_RATE = 2
USER_BURST = 10
READ_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A `playgate serve` with small limits, and websocket compression turned on."""
    server = start_playgate(
        Path(tmp_path_factory.mktemp("limited")),
        PLAYGATE_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S),
        PLAYGATE_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        PLAYGATE_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        PLAYGATE_MAX_SOCKETS_PER_USER=str(SOCKETS_PER_USER),
        PLAYGATE_USER_RATE=str(USER_RATE),
        PLAYGATE_USER_BURST=str(USER_BURST),
        PLAYGATE_WS_PER_MESSAGE_DEFLATE="true",
    )
    yield server
    server.stop()


async def _open(base_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _answer(reader: asyncio.StreamReader, timeout_s: float = READ_TIMEOUT_S) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout_s)


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half the headers"])
async def test_a_connection_slow_to_send_its_headers_is_closed_with_408(limited: ServerProcess, sent: bytes) -> None:
    reader, writer = await _open(limited.base_url)
    writer.write(sent)
    await writer.drain()
    answer = await _answer(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"application/problem+json" in answer


async def test_a_later_request_slow_to_send_its_headers_is_closed_with_408(limited: ServerProcess) -> None:
    """The clock starts with each request, also one whose first bytes come in the read that ended the one before."""
    reader, writer = await _open(limited.base_url)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    answer = await _answer(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 408" in answer


async def test_headers_over_the_cap_get_431_and_headers_under_it_pass(limited: ServerProcess) -> None:
    reader, writer = await _open(limited.base_url)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES * 2) + b"\r\n\r\n")
    await writer.drain()
    answer = await _answer(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    async with httpx.AsyncClient(base_url=limited.base_url) as client:
        fine = await client.get("/healthz", headers={"X-Fine": "a" * (MAX_HEADER_BYTES // 2)})
    assert fine.status_code == 200


async def test_connections_beyond_the_cap_get_503_and_the_server_goes_on(limited: ServerProcess) -> None:
    opened = [await _open(limited.base_url) for _ in range(MAX_CONNECTIONS + 5)]
    try:
        refused = 0
        for reader, _writer in opened[MAX_CONNECTIONS:]:
            answer = await _answer(reader)
            refused += answer.startswith(b"HTTP/1.1 503")
        assert refused == 5
    finally:
        for _reader, writer in opened:
            writer.close()
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=limited.base_url) as client:
        assert (await client.get("/healthz")).status_code == 200


async def _websocket_extensions(base_url: str) -> tuple[bytes, bytes]:
    """The handshake answer of a websocket upgrade that offers permessage-deflate, as a browser does."""
    reader, writer = await _open(base_url)
    writer.write(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    writer.close()
    extensions = b""
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"sec-websocket-extensions:"):
            extensions = line
    return head.split(b"\r\n")[0], extensions


async def test_websocket_compression_is_off_unless_turned_on(base_url: str, limited: ServerProcess) -> None:
    status, extensions = await _websocket_extensions(base_url)
    assert b"101" in status
    assert extensions == b"", "permessage-deflate accepted by default"
    status, extensions = await _websocket_extensions(limited.base_url)
    assert b"101" in status
    assert b"permessage-deflate" in extensions


async def test_a_users_sockets_beyond_the_cap_are_refused(limited: ServerProcess) -> None:
    admin = await admin_client(limited.base_url)
    user = await new_user(limited.base_url, admin)
    await admin.aclose()
    sockets = [await connect_socket(limited.base_url, token=user.token) for _ in range(SOCKETS_PER_USER)]
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await connect_socket(limited.base_url, token=user.token)
        await sockets.pop().close()
        await asyncio.sleep(0.2)
        sockets.append(await connect_socket(limited.base_url, token=user.token))
        # Socket.IO's own events, sent by a client as if they were its own: they run no handler. A live socket's
        # `disconnect` freed its slot (and hid it from the revocation check), a `connect` logged a traceback.
        for event in ("disconnect", "connect", "disconnecting"):
            await sockets[0].sio.emit(event, {"token": user.token})
        await asyncio.sleep(0.2)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await connect_socket(limited.base_url, token=user.token)
        ack = await sockets[0].sio.call("heartbeat", {"streamId": "no-such-stream"}, timeout=5)
        assert ack["status"] == 404, ack
        assert "Task exception was never retrieved" not in limited.log()
    finally:
        for sock in sockets:
            await sock.close()


async def test_a_user_over_the_rate_gets_429_with_retry_after_and_a_socket_error_event(
    limited: ServerProcess,
) -> None:
    admin = await admin_client(limited.base_url)
    user = await new_user(limited.base_url, admin, limit=100)
    await admin.aclose()
    sock = await connect_socket(limited.base_url, token=user.token)
    errors: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    sock.sio.on("error", errors.put)
    try:
        async with api_client(limited.base_url, user.token) as client:
            # One after the other, on one connection: the connection cap of this server is small.
            answers = [await client.post("/v1/plays", json={"videoId": "1"}) for _ in range(USER_BURST * 2)]
        refused = [a for a in answers if a.status_code == 429]
        assert refused, [a.status_code for a in answers]
        assert all(a.status_code in (202, 429) for a in answers)
        assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
        assert all(a.headers["content-type"].startswith("application/problem+json") for a in refused)
        ack = await sock.sio.call("heartbeat", {"streamId": "no-such-stream"}, timeout=5)
        assert ack["status"] == 429
        assert (await asyncio.wait_for(errors.get(), 5))["status"] == 429
    finally:
        await sock.close()


async def test_the_defaults_leave_a_busy_user_alone(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin, limit=1000)
    async with api_client(base_url, user.token) as client:
        answers = await asyncio.gather(*(client.post("/v1/plays", json={"videoId": "1"}) for _ in range(200)))
    assert [a.status_code for a in answers] == [202] * 200
    sockets = await asyncio.gather(*(connect_socket(base_url, token=user.token) for _ in range(50)))
    try:
        assert all(s.sio.connected for s in sockets)
    finally:
        await asyncio.gather(*(s.close() for s in sockets))
