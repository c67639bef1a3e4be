"""PLAYGATE_TRACING=otlp on the distributed deployment: the decision's span comes from a worker process, in the
trace of the API process's span that queued the request (its traceparent carried on the Redis stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.distributed.conftest import Cluster, deployment
from tests.integration.test_tracing import traced_play, tracing_env
from tests.support.clients import admin_client, api_client, new_user
from tests.support.collector import Collector
from tests.support.redis_server import redis_binary, start_redis


@pytest_asyncio.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Collector]]:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    collector = await Collector().start()
    try:
        async with deployment(tmp_path, lambda: start_redis(tmp_path / "redis"), **tracing_env(collector)) as made:
            yield made, collector
    finally:
        await collector.stop()


async def test_the_workers_decision_span_joins_the_apis_trace(traced: tuple[Cluster, Collector]) -> None:
    cluster, collector = traced
    admin = await admin_client(cluster.urls[0])
    async with admin:
        user = await new_user(cluster.urls[0], admin, limit=1)
    async with api_client(cluster.urls[1], user.token) as player:
        allowed = await traced_play(collector, player, "POST", "/v1/plays?wait=10", json={"videoId": "1"})
        denied = await traced_play(collector, player, "POST", "/v1/plays?wait=10", json={"videoId": "2"})
    assert allowed.http.resource["playgate.role"] == "api"
    assert allowed.decide.resource["playgate.role"] == "worker"
    assert (allowed.decide.attributes["playgate.decision"], denied.decide.attributes["playgate.reason"]) == (
        "allowed",
        "limit_reached",
    )
