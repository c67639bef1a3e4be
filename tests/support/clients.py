"""HTTP and Socket.IO clients of a running PlayGate, logged in as a user."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import socketio

from tests.support.servers import ADMIN_PASSWORD

# Base URLs of apps served in the test's own process (tests/support/inprocess.py), and the transport to each.
TRANSPORTS: dict[str, httpx.AsyncBaseTransport] = {}
# A server closes a connection idle for PLAYGATE_KEEP_ALIVE (5 s); a client that reuses it at that instant (httpx
# keeps one idle for 5 s too) reads a closed connection, httpx.ReadError, as a test whose client waited 4.5 s while
# its player fetched media did on a busy machine. The client lets go of an idle connection well before.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)


async def token_for(base_url: str, name: str, password: str) -> str:
    """Log in and return the access token (assert 200)."""
    async with api_client(base_url) as client:
        response = await client.post("/auth/token", json={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["accessToken"])


def api_client(base_url: str, token: str | None = None) -> httpx.AsyncClient:
    """An httpx client for the server (a real one, or one in this process), with the bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=15.0, limits=_LIMITS, transport=TRANSPORTS.get(base_url)
    )


async def admin_client(base_url: str) -> httpx.AsyncClient:
    """A client logged in as the test admin."""
    return api_client(base_url, await token_for(base_url, "admin", ADMIN_PASSWORD))


@dataclass
class TestUser:
    """A user made for one test: its id, name, password and token."""

    __test__ = False  # a helper, not a test class

    id: str
    name: str
    password: str
    token: str
    limit: int


async def new_user(base_url: str, admin: httpx.AsyncClient, limit: int | None = 3, **fields: Any) -> TestUser:
    """Create a fresh user through the admin API and log it in."""
    name = f"u-{secrets.token_hex(5)}"
    password = secrets.token_urlsafe(12)
    response = await admin.post("/v1/users", json={"name": name, "password": password, "limit": limit, **fields})
    assert response.status_code == 201, response.text
    body = response.json()
    token = await token_for(base_url, name, password)
    return TestUser(body["id"], name, password, token, body["limit"])


@dataclass
class SocketClient:
    """A python-socketio client that records every `message` and `stream_ended` event it gets."""

    sio: socketio.AsyncClient
    messages: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    ended: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    async def next_message(self, timeout_s: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), timeout_s)

    async def next_ended(self, timeout_s: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.ended.get(), timeout_s)

    async def close(self) -> None:
        await self.sio.disconnect()


async def decided(client: httpx.AsyncClient, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Poll GET /v1/plays/{id} until the request is decided (TimeoutError after timeout_s)."""
    async with asyncio.timeout(timeout_s):
        while True:
            body: dict[str, Any] = (await client.get(f"/v1/plays/{request_id}")).json()
            if body["status"] != "pending":
                return body
            await asyncio.sleep(0.05)


async def connect_socket(base_url: str, *, token: str | None = None, **auth: str) -> SocketClient:
    """Connect a Socket.IO client with `auth: {"token": ...}` and start recording events."""
    sio = socketio.AsyncClient(reconnection=False)
    client = SocketClient(sio)
    sio.on("message", client.messages.put)
    sio.on("stream_ended", client.ended.put)
    payload = {"token": token, **auth} if token else dict(auth)
    await sio.connect(base_url, auth=payload, transports=["websocket"], wait_timeout=5)
    return client


# What the `open_socket` fixture (tests/conftest.py) gives: connect_socket, every socket closed at the test's end.
OpenSocket = Callable[..., Awaitable[SocketClient]]


async def user_with_socket(base_url: str, limit: int) -> tuple[TestUser, SocketClient]:
    """A new user with this limit (made through the admin API, the admin logged out after) and a socket of theirs."""
    admin = await admin_client(base_url)
    try:
        user = await new_user(base_url, admin, limit=limit)
    finally:
        await admin.aclose()
    return user, await connect_socket(base_url, token=user.token)
