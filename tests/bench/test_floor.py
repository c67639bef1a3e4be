"""`playgate bench floor`: the generator's loop over real HTTP and a real Socket.IO v4 client, with nothing else."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import socketio

from playgate.bench.floor import serve
from tests.support.servers import free_port


def _token(user: str) -> str:
    """A token as the floor reads it: only the payload's `sub` counts (nothing is verified)."""
    payload = base64.urlsafe_b64encode(json.dumps({"sub": user}).encode()).rstrip(b"=").decode()
    return f"e30.{payload}.unsigned"


@pytest.fixture
async def floor_url() -> AsyncIterator[str]:
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", port, ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    yield f"http://127.0.0.1:{port}"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _socket(url: str, user: str) -> tuple[socketio.AsyncClient, asyncio.Queue[dict[str, object]]]:
    messages: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    sio = socketio.AsyncClient(reconnection=False)
    sio.on("message", messages.put_nowait)
    await sio.connect(url, auth={"token": _token(user)}, transports=["websocket"], wait_timeout=5)
    return sio, messages


async def test_the_loop_is_answered_with_decisions_on_the_user_s_sockets_only(floor_url: str) -> None:
    alice_socket, alice_heard = await _socket(floor_url, "alice")
    bob_socket, bob_heard = await _socket(floor_url, "bob")
    alice = {"authorization": f"Bearer {_token('alice')}"}
    async with httpx.AsyncClient(base_url=floor_url, timeout=5) as http:
        assert [v["id"] for v in (await http.get("/videos", headers=alice)).json()] == ["1", "2", "3", "4", "5", "6"]
        statuses = []
        for video in ("1", "2", "3", "4"):
            answer = await http.get(f"/videos/{video}/request?user=alice", headers=alice)
            assert answer.status_code == 202
            assert answer.json()["data"] == {"status": "pending", "data": {"videoId": video, "userId": "alice"}}
            message = await asyncio.wait_for(alice_heard.get(), 5)
            assert message["data"] == {"videoId": video, "userId": "alice"}
            statuses.append(message["status"])
        assert statuses == ["allowed", "allowed", "allowed", "denied"]  # three at once, as the original's users
        assert (await http.get("/videos/2/stop?user=alice", headers=alice)).status_code == 204
        await http.get("/videos/4/request?user=alice", headers=alice)
        assert (await asyncio.wait_for(alice_heard.get(), 5))["status"] == "allowed"
        assert (await http.get("/videos/1/request?user=alice")).status_code == 404  # no token, no user
    assert bob_heard.empty()
    await alice_socket.disconnect()
    await bob_socket.disconnect()


async def test_a_socket_without_a_token_is_refused(floor_url: str) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(floor_url, auth={}, transports=["websocket"], wait_timeout=5)


def test_the_command_serves_until_sigterm() -> None:
    port = free_port()
    command = [sys.executable, "-m", "playgate", "bench", "floor", "--port", str(port)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            assert "floor server on" in server.stdout.readline()
            for _ in range(50):
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/videos", timeout=2)
                    break
                except httpx.ConnectError:
                    time.sleep(0.1)
            assert answer.status_code == 200
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                stopped = server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()  # not left serving after the test
                raise
    assert stopped == 0
