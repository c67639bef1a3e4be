"""Webhooks in the distributed deployment: the outbox in PostgreSQL, two worker processes delivering it; a receiver
down while plays go on gets every event once, in order per user, when it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from playgate.catalog.db import create_engine
from playgate.webhooks import DELIVERED, PENDING, delivery_log
from tests.distributed.conftest import Cluster, deployment
from tests.support.clients import admin_client, new_user
from tests.support.receiver import Receiver, play_deny_stop
from tests.support.redis_server import redis_binary, start_redis
from tests.unit.test_webhooks import VECTOR_SECRET

USERS = 4
DEADLINE_S = 30.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hooked(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Cluster, Receiver]]:
    """2 APIs and 2 workers whose webhooks go to a receiver (not started: the test starts it)."""
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    receiver = Receiver(VECTOR_SECRET)
    data_dir = Path(tmp_path_factory.mktemp("distributed-webhooks"))
    settings = {
        "PLAYGATE_WEBHOOK_URLS": receiver.url,
        "PLAYGATE_WEBHOOK_SECRET": VECTOR_SECRET,
        "PLAYGATE_WEBHOOK_BACKOFF": "0.05",
        "PLAYGATE_WEBHOOK_BACKOFF_MAX": "0.2",
        "PLAYGATE_WEBHOOK_POLL": "0.05",
    }
    async with deployment(data_dir, lambda: start_redis(data_dir / "redis"), **settings) as cluster:
        try:
            yield cluster, receiver
        finally:
            await receiver.stop()


async def test_two_workers_deliver_every_event_once_in_order_after_the_receiver_returns(
    hooked: tuple[Cluster, Receiver],
) -> None:
    cluster, receiver = hooked
    first, second = cluster.urls[:2]
    admin = await admin_client(first)
    users = [await new_user(first, admin, limit=1) for _ in range(USERS)]
    await admin.aclose()
    per_user = await asyncio.gather(*(play_deny_stop(first if i % 2 else second, u.token) for i, u in enumerate(users)))
    expected = sum(len(events) for events in per_user)
    engine = create_engine(cluster.db.url)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:  # written by the API and worker processes, then tried (and refused) by the workers
            pending = await delivery_log(engine, status=PENDING, limit=1000)
            if (len(pending) == expected and sum(e.attempts > 1 for e in pending) == USERS) or (
                time.monotonic() > deadline
            ):
                break
            await asyncio.sleep(0.1)
        assert len(pending) == expected
        assert sorted(e.msg_id for e in pending if e.attempts > 0) == sorted(events[0][1] for events in per_user)

        await receiver.start()
        received = await receiver.wait_for(expected, timeout_s=DEADLINE_S)
        await asyncio.sleep(0.5)  # a duplicate from the other worker would come within a few polls
        delivered = await delivery_log(engine, status=DELIVERED, limit=1000)
    finally:
        await engine.dispose()
    assert receiver.bad == []
    assert len(receiver.received) == expected
    for user, events in zip(users, per_user, strict=True):
        assert [(r.type, r.msg_id) for r in received if r.user_id == user.id] == events
    assert len(delivered) == expected


async def test_live_events_keep_their_order_across_api_and_worker_processes(hooked: tuple[Cluster, Receiver]) -> None:
    # The decisions are written by a worker's audit buffer, the stop's stream.ended by an API's: whichever flushes
    # first, each user's events arrive in the order they happened.
    cluster, receiver = hooked
    await receiver.stop()
    await receiver.start()
    before = len(receiver.received)
    admin = await admin_client(cluster.urls[0])
    users = [await new_user(cluster.urls[0], admin, limit=1) for _ in range(USERS)]
    await admin.aclose()
    per_user = await asyncio.gather(*(play_deny_stop(cluster.urls[i % 2], u.token) for i, u in enumerate(users)))
    received = (await receiver.wait_for(before + sum(map(len, per_user)), timeout_s=DEADLINE_S))[before:]
    assert receiver.bad == []
    for user, events in zip(users, per_user, strict=True):
        assert [(r.type, r.msg_id) for r in received if r.user_id == user.id] == events
