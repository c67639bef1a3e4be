"""PLAYGATE_REDIS_URL naming Redis Sentinels (redis+sentinel://): PlayGate finds the primary through them (the first
one named does not answer), and carries on when they fail over to the replica: the streams it counted are still
counted, and decisions reach the sockets again."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis

from tests.distributed.conftest import Cluster
from tests.support.clients import admin_client, api_client, user_with_socket
from tests.support.redis_sentinel import start_sentinel_set
from tests.support.redis_server import redis_binary
from tests.support.servers import start_playgate

FAILOVER_WITHIN_S = 30.0


async def play(client: httpx.AsyncClient, video: str) -> httpx.Response:
    return await client.post("/v1/plays", params={"wait": 5}, json={"videoId": video})


async def test_playgate_follows_the_primary_the_sentinels_name_through_a_failover(cluster: Cluster) -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    sentinels = start_sentinel_set(cluster.data_dir / "sentinel")
    try:
        env = {**cluster.env, "PLAYGATE_REDIS_URL": sentinels.url()}
        server = start_playgate(cluster.data_dir, "serve", **env)
    except BaseException:
        sentinels.stop()
        raise
    try:
        user, sock = await user_with_socket(server.base_url, limit=2)
        async with api_client(server.base_url, user.token) as client:
            before = [(await play(client, video)).json() for video in ("1", "2", "3")]
            assert [answer["status"] for answer in before] == ["allowed", "allowed", "denied"]
            assert [(await sock.next_message())["requestId"] for _ in before] == [a["requestId"] for a in before]
            with redis.Redis(port=sentinels.primary.port, socket_timeout=5) as primary:
                assert primary.wait(1, 5000) == 1  # the replica has every write so far
            sentinels.primary.proc.kill()  # type: ignore[union-attr]
            deadline = time.monotonic() + FAILOVER_WITHIN_S
            while sentinels.primary_port() != sentinels.replica.port:
                assert time.monotonic() < deadline, "the Sentinel did not fail over"
                await asyncio.sleep(0.2)
            # The two streams were replicated: still counted on the new primary.
            while (third := await play(client, "3")).status_code != 200:
                assert time.monotonic() < deadline, f"no answer after the failover: {third.text}"
                await asyncio.sleep(0.2)
            assert third.json()["status"] == "denied"
            assert (await client.delete(f"/v1/streams/{before[0]['streamId']}")).status_code == 204
            after = (await play(client, "3")).json()
            assert after["status"] == "allowed"
            # Pub/sub delivers at most once: a decision published while the listeners were subscribing again may
            # miss the socket (its `?wait=` caller gets it); the ones after reach it.
            while (await sock.next_message(10.0))["requestId"] != after["requestId"]:
                pass
            assert (await client.get("/readyz")).status_code == 200
        await (await admin_client(server.base_url)).aclose()  # a log-in: the login throttle's counters moved too
        await sock.close()
    finally:
        server.stop()
        sentinels.stop()
