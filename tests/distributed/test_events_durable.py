"""Distributed, the audit trail and the webhook outbox are written from the Redis ledger's change log: every
worker killed with SIGKILL right after plays and a stop are answered, then workers started again, and every decided
request has exactly one audit event and one outbox row, every stopped stream one end (before, each process buffered
its events ~0.5 s in memory and they died with it). On one Redis server and on a Redis Cluster."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from playgate.catalog.db import create_engine
from tests.distributed.conftest import Cluster, deployment, kill
from tests.support.clients import admin_client, api_client, new_user
from tests.support.redis_cluster import cluster_tools_installed, start_cluster
from tests.support.redis_server import redis_binary, start_redis
from tests.support.servers import free_port

SECRET = "whsec_" + base64.b64encode(b"playgate-webhook-test-key-32-byt").decode()
ROUNDS = 2
PLAYS = 20  # a round's concurrent plays; limit 2, so most are denied
DEADLINE_S = 40.0  # the killed workers' unacknowledged entries are taken over after PLAYGATE_CLAIM_IDLE (4 s)


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["redis", "redis-cluster"])
async def hooked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """2 APIs and 2 workers whose webhooks go to a port that refuses them (the deliveries stay pending)."""
    if request.param == "redis" and redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    if request.param == "redis-cluster" and not cluster_tools_installed():
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server; .ci/run does)")
    data_dir = Path(tmp_path_factory.mktemp(f"events-{request.param}"))
    start = (
        (lambda: start_redis(data_dir / "redis"))
        if request.param == "redis"
        else (lambda: start_cluster(data_dir / "redis-cluster"))
    )
    hooks = f"http://127.0.0.1:{free_port()}/hooks"
    async with deployment(data_dir, start, PLAYGATE_WEBHOOK_URLS=hooks, PLAYGATE_WEBHOOK_SECRET=SECRET) as made:
        yield made


async def _burst_stop_then_kill(cluster: Cluster) -> tuple[str, dict[str, str], set[str]]:
    """Plays and a stop, answered; every worker killed at once, then two started. The user, each request's answer,
    the stopped streams."""
    api = cluster.urls[0]
    admin = await admin_client(api)
    user = await new_user(api, admin, limit=2)
    await admin.aclose()
    async with api_client(api, user.token) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/plays", params={"wait": 10}, json={"videoId": "1"}) for _ in range(PLAYS))
        )
        decided = {a.json()["requestId"]: a.json()["status"] for a in answers}
        stopped = {a.json()["streamId"] for a in answers if a.json()["status"] == "allowed"}
        assert (await client.delete("/v1/streams")).status_code == 204
    for worker in list(cluster.workers):
        kill(worker)
        cluster.workers.remove(worker)
    await asyncio.to_thread(cluster.start_workers, 2)
    return user.id, decided, stopped


async def _recorded(
    db_url: str, user_id: str, expected: int
) -> tuple[list[tuple[str, str, str, str]], set[str], list[str]]:
    """The user's audit events (kind, outcome, request id, stream id), outbox ids and deliveries' ids, once the
    trail holds `expected` events or DEADLINE_S has passed."""
    engine = create_engine(db_url)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            async with engine.connect() as conn:
                events = [
                    tuple(row)
                    for row in await conn.execute(
                        text(
                            "SELECT kind, outcome, request_id, stream_id FROM audit_events WHERE user_id = :u "
                            "ORDER BY id"
                        ),
                        {"u": user_id},
                    )
                ]
                outbox = set(
                    (await conn.execute(text("SELECT msg_id FROM webhook_events WHERE user_id = :u"), {"u": user_id}))
                    .scalars()
                    .all()
                )
                deliveries = list(
                    (
                        await conn.execute(
                            text("SELECT msg_id FROM webhook_deliveries WHERE user_id = :u"), {"u": user_id}
                        )
                    )
                    .scalars()
                    .all()
                )
            if len(events) >= expected or time.monotonic() > deadline:
                await asyncio.sleep(1.0)  # a duplicate, were one to come, would come with the next drains
                return events, outbox, deliveries
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


@pytest.mark.timeout(600)  # a deployment of 4 processes (and a cluster of 6 servers) on a loaded machine
async def test_events_survive_killing_every_worker_right_after_the_answers(hooked: Cluster) -> None:
    for _ in range(ROUNDS):  # each round a new user, every worker killed at the end
        user_id, decided, stopped = await _burst_stop_then_kill(hooked)
        assert set(decided.values()) == {"allowed", "denied"}
        expected = {f"msg_{r}" for r in decided} | {f"msg_end_{s}" for s in stopped}
        events, outbox, deliveries = await _recorded(hooked.db.url, user_id, len(expected))
        decisions = [(request_id, outcome) for kind, outcome, request_id, _ in events if kind == "decision"]
        assert sorted(decisions) == sorted(decided.items())  # each decided request once
        ends = [stream_id for kind, outcome, _, stream_id in events if kind == "stream_end" and outcome == "stopped"]
        assert sorted(ends) == sorted(stopped)
        assert len(events) == len(expected)
        assert outbox == expected
        assert sorted(deliveries) == sorted(expected)  # one delivery row each (one endpoint)
