"""The outage policy with Redis stopped under load: watchers keep watching, new plays follow the policy, and the
ledger is reconciled once Redis is back.

Two `playgate api` processes (A with PLAYGATE_OUTAGE_POLICY=deny, B with allow) and a worker on a throwaway
redis-server that keeps nothing on disk, so its restart empties the ledger, and a SQLite catalogue. Leases are
short (4 s) and Redis stays down for longer than one, so a stream kept playing through the outage would be gone
without the write-back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.clients import TestUser, admin_client, api_client, connect_socket, new_user
from tests.support.redis_server import RedisServer, redis_binary, start_redis
from tests.support.servers import ServerProcess, playgate_env, start_playgate

LEASE_S = 4.0
DOWN_S = 6.0  # longer than a lease
ROUND_PAUSE_S = 1.0
MAX_ROUNDS = 30
BACK_DEADLINE_S = 30.0

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed (.ci/run installs it)")


def _start(data_dir: Path, server: RedisServer) -> tuple[ServerProcess, ServerProcess, ServerProcess]:
    env = {
        "PLAYGATE_REDIS_URL": server.url,
        "PLAYGATE_MEDIA_DIR": str(data_dir / "media"),
        "PLAYGATE_STREAM_TTL": str(LEASE_S),
        "PLAYGATE_OUTAGE_GRACE": "120",
    }
    upgrade = subprocess.run(
        [sys.executable, "-m", "playgate", "db", "upgrade"],
        env=playgate_env(data_dir, **env),
        capture_output=True,
        timeout=60,
    )
    assert upgrade.returncode == 0, upgrade.stderr.decode()
    deny = start_playgate(data_dir, "api", PLAYGATE_OUTAGE_POLICY="deny", **env)
    allow = start_playgate(data_dir, "api", PLAYGATE_OUTAGE_POLICY="allow", **env)
    worker = start_playgate(data_dir, "worker", wait_ready=False, **env)
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
    deadline = time.monotonic() + 30
    try:
        # the two APIs' queue clients and the worker's
        while sum(str(c.get("name", "")).startswith("playgate-queue:") for c in client.client_list()) < 3:
            assert worker.proc.poll() is None, worker.log()
            assert time.monotonic() < deadline, "the worker never read from the queue"
            time.sleep(0.1)
    finally:
        client.close()
    return deny, allow, worker


async def _play(client: httpx.AsyncClient, video_id: str, device_id: str) -> dict[str, Any]:
    answer = await client.post("/v1/plays", params={"wait": 5}, json={"videoId": video_id, "deviceId": device_id})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _watch(client: httpx.AsyncClient, play: dict[str, Any]) -> tuple[int, int]:
    """One round of a watching player: a heartbeat and a media request (the web server's auth_request)."""
    beat = await client.post(f"/v1/streams/{play['streamId']}/heartbeat")
    media = await client.get("/v1/authorize", headers={"X-Original-URI": play["playbackUrl"]})
    return beat.status_code, media.status_code


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_watchers_keep_watching_while_redis_is_down(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", appendonly=False)
    deny, allow, worker = await asyncio.to_thread(_start, tmp_path, server)
    clients: list[httpx.AsyncClient] = []
    try:
        admin = await admin_client(deny.base_url)
        watchers: list[TestUser] = [await new_user(deny.base_url, admin, limit=1) for _ in range(3)]
        latecomer = await new_user(deny.base_url, admin, limit=1)
        await admin.aclose()
        on_deny = [api_client(deny.base_url, u.token) for u in watchers]
        clients += on_deny
        plays = [await _play(c, "1", "tv") for c in on_deny]
        assert all(p["status"] == "allowed" for p in plays), plays
        # The first watcher also asks on B during the outage: B does not know its stream on A.
        first_on_allow = api_client(allow.base_url, watchers[0].token)
        late_on_deny = api_client(deny.base_url, latecomer.token)
        clients += [first_on_allow, late_on_deny]
        sock = await connect_socket(allow.base_url, token=watchers[0].token)

        await asyncio.to_thread(server.stop)
        down_at = time.monotonic()
        rounds = 0
        while time.monotonic() - down_at < DOWN_S:
            assert rounds < MAX_ROUNDS
            rounds += 1
            for client, play in zip(on_deny, plays, strict=True):
                assert await _watch(client, play) == (200, 204), f"round {rounds}: {play['streamId']}"
            await asyncio.sleep(ROUND_PAUSE_S)
        assert rounds >= 2

        # New plays: A refuses (deny), B admits within what it knows of the user, then is at the limit.
        refused = await late_on_deny.post("/v1/plays", params={"wait": 1}, json={"videoId": "2", "deviceId": "tv"})
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "5"
        assert "outage policy deny" in refused.json()["detail"]
        extra = await _play(first_on_allow, "2", "phone")
        assert extra["status"] == "allowed", extra
        over = await _play(first_on_allow, "3", "tablet")
        assert (over["status"], over["reason"]) == ("denied", "limit_reached"), over
        assert await _watch(first_on_allow, extra) == (200, 204)
        assert (await first_on_allow.get(f"/v1/plays/{extra['requestId']}")).json()["status"] == "allowed"

        ready = await on_deny[0].get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["outage"].startswith("grace:"), ready.json()
        assert _metric((await on_deny[0].get("/metrics")).text, "playgate_outage_mode") == 1
        assert "outage mode: the ledger store does not answer" in deny.log()

        await asyncio.to_thread(server.start)  # empty: it kept nothing on disk
        # Redis is back: every watcher keeps playing (A writes back the streams it kept alive), and the first
        # watcher, over its limit of 1 once B's stream is written back too, loses the newer one at a heartbeat,
        # told why. (A process tries the store at most once a second while it is down: the first requests after
        # may still be answered from its cache.)
        for _ in range(MAX_ROUNDS):
            for client, play in zip(on_deny, plays, strict=True):
                assert await _watch(client, play) == (200, 204), play["streamId"]
            beat = await first_on_allow.post(f"/v1/streams/{extra['streamId']}/heartbeat")
            assert beat.status_code in (200, 404), beat.text
            if beat.status_code == 404:
                break
            await asyncio.sleep(ROUND_PAUSE_S / 2)
        assert beat.status_code == 404, beat.text
        deadline = time.monotonic() + BACK_DEADLINE_S
        ended = await sock.next_ended(timeout_s=max(0.1, deadline - time.monotonic()))
        assert ended == {"streamId": extra["streamId"], "videoId": "2", "reason": "outage_reconciled"}
        assert await _watch(on_deny[0], plays[0]) == (200, 204)
        kept = await first_on_allow.get(f"/v1/plays/{extra['requestId']}")
        assert kept.status_code == 200, kept.text
        assert kept.json()["status"] == "allowed", kept.text
        streams = await on_deny[0].get("/v1/streams")
        assert [s["id"] for s in streams.json()] == [plays[0]["streamId"]]

        ready = await on_deny[0].get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["outage"] == "normal", ready.text
        assert _metric((await on_deny[0].get("/metrics")).text, "playgate_outage_mode") == 0
        assert "outage over: the ledger store answers again" in deny.log()
        # New plays are decided by the worker again.
        asked = await late_on_deny.post("/v1/plays", params={"wait": 5}, json={"videoId": "2", "deviceId": "tv"})
        assert asked.status_code in (200, 202), asked.text
        answer = asked.json()
        for _ in range(MAX_ROUNDS):
            if answer["status"] != "pending":
                break
            await asyncio.sleep(ROUND_PAUSE_S)
            answer = (await late_on_deny.get(f"/v1/plays/{answer['requestId']}")).json()
        assert answer["status"] == "allowed", answer
        await sock.close()
    finally:
        for client in clients:
            await client.aclose()
        deny.stop()
        allow.stop()
        worker.stop()
        server.stop()
