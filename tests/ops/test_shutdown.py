"""Graceful shutdown: SIGTERM under load loses no accepted request and decides none twice.

The embedded queue lives in memory, so this proves the drain: every request answered 202 before the process
exited must have its decision in the ledger when the process starts again on the same data dir. Sockets are
closed with WebSocket code 1012 ("service restart"), the hint for a client to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import socketio
import websockets

from tests.support.clients import admin_client, api_client, connect_socket, new_user
from tests.support.servers import ServerProcess, start_playgate

USERS = 12
LIMIT = 3
CONCURRENCY = 24
MAX_REQUESTS = 3000
ACCEPTED_BEFORE_SIGTERM = 100
LOAD_MAX_S = 30.0
SERVICE_RESTART = 1012
RECONNECT_WITHIN_S = 20.0


async def _load(server: ServerProcess, tokens: list[str], accepted: list[tuple[int, str]]) -> int:
    """Ask for plays from many clients at once until the server stops answering; returns how many were sent."""
    sent = 0
    deadline = time.monotonic() + LOAD_MAX_S
    rng = random.Random(7)

    async def client_loop() -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20.0) as client:
            while sent < MAX_REQUESTS and time.monotonic() < deadline:
                user = rng.randrange(len(tokens))
                sent += 1
                try:
                    response = await client.post(
                        "/v1/plays",
                        json={"videoId": str(rng.randint(1, 6))},
                        headers={"Authorization": f"Bearer {tokens[user]}"},
                    )
                except httpx.TransportError:
                    if server.proc.poll() is not None:
                        return  # the server is gone: this client stops
                    await asyncio.sleep(0.01)
                    continue
                assert response.status_code in (202, 503), response.text
                if response.status_code == 202:
                    accepted.append((user, response.json()["requestId"]))

    await asyncio.gather(*(client_loop() for _ in range(CONCURRENCY)))
    return sent


async def _raw_socket(base_url: str, token: str) -> websockets.ClientConnection:
    """A bare Engine.IO/Socket.IO websocket, connected to the default namespace with a token."""
    ws = await websockets.connect(base_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket")
    assert (await ws.recv()).startswith("0")  # Engine.IO open
    await ws.send("40" + json.dumps({"token": token}))
    assert (await ws.recv()).startswith("40")  # Socket.IO connected
    return ws


async def _close_code(ws: websockets.ClientConnection, timeout_s: float) -> int | None:
    """Read until the server closes the websocket; its close code (answering Engine.IO pings meanwhile)."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(timeout_s):
            async for message in ws:
                if message == "2":
                    await ws.send("3")
    return ws.close_code


async def test_sigterm_under_load_decides_every_accepted_request_exactly_once(tmp_path: Path) -> None:
    server = start_playgate(tmp_path, PLAYGATE_STREAM_TTL="3600", PLAYGATE_LOG_LEVEL="info")
    admin = await admin_client(server.base_url)
    users = [await new_user(server.base_url, admin, limit=LIMIT) for _ in range(USERS)]
    await admin.aclose()
    sockets = [await connect_socket(server.base_url, token=u.token) for u in users]
    raw = await _raw_socket(server.base_url, users[0].token)
    # A player as the JS client behaves: on a closed transport it reconnects by itself.
    player = socketio.AsyncClient(reconnection=True, reconnection_delay=0.5, reconnection_delay_max=1.0)
    connects: list[float] = []
    player.on("connect", lambda: connects.append(time.monotonic()))
    await player.connect(server.base_url, auth={"token": users[1].token}, transports=["websocket"], wait_timeout=5)
    accepted: list[tuple[int, str]] = []

    load = asyncio.create_task(_load(server, [u.token for u in users], accepted))
    # SIGTERM in the middle of the load: once some requests are in, whatever this machine's speed.
    deadline = time.monotonic() + LOAD_MAX_S / 2
    while len(accepted) < ACCEPTED_BEFORE_SIGTERM and time.monotonic() < deadline and not load.done():
        await asyncio.sleep(0.01)
    accepted_before_sigterm = len(accepted)
    server.proc.send_signal(signal.SIGTERM)
    close_code = await _close_code(raw, timeout_s=20)
    sent = await load
    exit_code = await asyncio.to_thread(server.proc.wait, 30)
    # uvicorn re-raises the signal once it has shut down: "terminated by SIGTERM", after a clean shutdown.
    assert exit_code in (0, -signal.SIGTERM), server.log()
    assert "Application shutdown complete" in server.log()
    assert close_code == SERVICE_RESTART
    assert accepted_before_sigterm >= ACCEPTED_BEFORE_SIGTERM
    assert len(accepted) < sent  # the load went on past the shutdown, and was refused

    pushed: Counter[str] = Counter()
    for sock in sockets:
        while not sock.messages.empty():
            pushed[sock.messages.get_nowait()["requestId"]] += 1
        with contextlib.suppress(Exception):
            await sock.close()
    assert max(pushed.values(), default=0) <= 1, "a decision was pushed twice"

    # Start again on the same data dir: every accepted request has exactly its one decision.
    again = start_playgate(tmp_path, port=server.port, PLAYGATE_STREAM_TTL="3600")
    try:
        decisions: dict[str, dict[str, Any]] = {}
        allowed_per_user: Counter[int] = Counter()
        for index, user in enumerate(users):
            async with api_client(again.base_url, user.token) as client:
                for _user, request_id in (a for a in accepted if a[0] == index):
                    response = await client.get(f"/v1/plays/{request_id}")
                    assert response.status_code == 200, (request_id, response.text)
                    decisions[request_id] = response.json()
                    assert decisions[request_id]["status"] in ("allowed", "denied"), decisions[request_id]
                    allowed_per_user[index] += decisions[request_id]["status"] == "allowed"
                streams = (await client.get("/v1/streams")).json()
                assert len(streams) <= LIMIT
                assert {s["id"] for s in streams} <= {d.get("streamId") for d in decisions.values()}
        assert len(decisions) == len(accepted)
        assert max(allowed_per_user.values()) <= LIMIT
        # The player took the close as a hint and is connected to the new process.
        deadline = time.monotonic() + RECONNECT_WITHIN_S
        while len(connects) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(connects) == 2
        assert player.connected
    finally:
        await player.disconnect()
        again.stop()
    print(f"sent {sent}, accepted {len(accepted)} ({accepted_before_sigterm} before SIGTERM), pushed {len(pushed)}")
