"""A Redis restart under load: once Redis answers again, every process serves at once, with no 503 from a
connection the restart left dead (API pools, the login throttle's pool, the worker, both pub/sub listeners).

One `playgate api` and one `playgate worker` on a throwaway redis-server (append-only file on, as deployed) and
a SQLite catalogue; players keep asking through the restart. The figures (how long after Redis answered the first
decision came back over HTTP and over the socket) are printed for the report, not asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.clients import admin_client, api_client, connect_socket, new_user
from tests.support.redis_server import RedisServer, redis_binary, start_redis
from tests.support.servers import ServerProcess, migrate_playgate, start_playgate

LOAD_CLIENTS = 4
LOAD_MAX_REQUESTS = 2_000
DOWN_S = 1.0
RECOVERY_DEADLINE_S = 20.0

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed (.ci/run installs it)")


def _queue_consumers(server: RedisServer) -> int:
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
    try:
        return sum(str(c.get("name", "")).startswith("playgate-queue:") for c in client.client_list())
    finally:
        client.close()


def _start(data_dir: Path, server: RedisServer) -> tuple[ServerProcess, ServerProcess]:
    env = {"PLAYGATE_REDIS_URL": server.url, "PLAYGATE_MEDIA_DIR": str(data_dir / "media")}
    migrate_playgate(data_dir, **env)
    api = start_playgate(data_dir, "api", **env)
    worker = start_playgate(data_dir, "worker", wait_ready=False, **env)
    deadline = time.monotonic() + 30
    while _queue_consumers(server) < 2:  # the API's queue client and the worker's
        assert worker.proc.poll() is None, worker.log()
        assert time.monotonic() < deadline, "the worker never read from the queue"
        time.sleep(0.1)
    return api, worker


async def _load(base_url: str, token: str, stop: asyncio.Event, statuses: list[tuple[float, int]]) -> None:
    """Ask and stop, again and again, until `stop`; each request's start time and status recorded."""
    async with api_client(base_url, token) as client:
        for _ in range(LOAD_MAX_REQUESTS):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                response = await client.post("/v1/plays", params={"wait": 1}, json={"videoId": "1"})
                statuses.append((started, response.status_code))
                started = time.monotonic()
                stopped = await client.delete("/v1/streams")
                statuses.append((started, stopped.status_code))
            except httpx.TransportError:
                statuses.append((started, 0))
            await asyncio.sleep(0.02)


async def test_every_process_serves_again_as_soon_as_redis_answers(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", appendonly=True)
    api, worker = await asyncio.to_thread(_start, tmp_path, server)
    stop = asyncio.Event()
    statuses: list[tuple[float, int]] = []
    try:
        admin = await admin_client(api.base_url)
        users = [await new_user(api.base_url, admin, limit=50) for _ in range(LOAD_CLIENTS + 1)]
        await admin.aclose()
        watcher = users[-1]
        sock = await connect_socket(api.base_url, token=watcher.token)
        load = [asyncio.create_task(_load(api.base_url, u.token, stop, statuses)) for u in users[:-1]]
        await asyncio.sleep(1.0)  # every pool holds warm connections
        await asyncio.to_thread(server.restart, DOWN_S)
        back_at = time.monotonic()  # Redis answers PING again, its append-only file loaded

        first_http_s = first_socket_s = None
        asked: set[str] = set()
        async with api_client(api.base_url, watcher.token) as client:
            while first_socket_s is None:
                assert time.monotonic() - back_at < RECOVERY_DEADLINE_S, "no decision reached the socket"
                play = await client.post("/v1/plays", params={"wait": 2}, json={"videoId": "2", "deviceId": "tv"})
                assert play.status_code in (200, 202), play.text
                asked.add(play.json()["requestId"])
                if play.status_code == 200 and first_http_s is None:
                    first_http_s = time.monotonic() - back_at
                with contextlib.suppress(TimeoutError):
                    while first_socket_s is None:
                        if (await sock.next_message(timeout_s=0.5))["requestId"] in asked:
                            first_socket_s = time.monotonic() - back_at
            assert (await client.get("/readyz")).status_code == 200
        async with httpx.AsyncClient(base_url=api.base_url) as anonymous:
            login = await anonymous.post("/auth/token", json={"username": watcher.name, "password": watcher.password})
        assert login.status_code == 200, f"the login throttle's pool kept a dead connection: {login.text}"
        login_s = time.monotonic() - back_at  # argon2 included

        stop.set()
        await asyncio.gather(*load)
        await sock.close()
        after = [status for started, status in statuses if started > back_at]
        failed = [status for status in after if status >= 500 or status == 0]
        assert after, "the load stopped"
        assert not failed, f"{len(failed)} of {len(after)} requests after Redis was back failed: {sorted(set(failed))}"
        print(
            f"\nRedis restart ({DOWN_S:g} s down), after Redis answered: first decision over HTTP "
            f"{first_http_s:.2f} s, over the socket {first_socket_s:.2f} s, a login {login_s:.2f} s; "
            f"{len(after)} requests after it, none failed"
        )
    finally:
        stop.set()
        api.stop()
        worker.stop()
        server.stop()
