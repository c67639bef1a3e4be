"""`playgate worker` with PLAYGATE_METRICS_PORT: probes and the decision metrics, scraped from the worker itself."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import admin_client, api_client, new_user
from tests.support.pg_database import PgDatabase
from tests.support.redis_server import redis_binary, start_redis
from tests.support.servers import (
    ServerProcess,
    free_port,
    migrate_playgate,
    start_playgate,
    wait_until_ready,
)

READY_TIMEOUT_S = 60.0
COUNTED_WITHIN_S = 5.0


def _decisions(text: str, status: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "playgate_decisions_total" and sample.labels.get("status") == status
    )


async def test_a_worker_serves_health_readiness_and_its_decision_metrics(
    tmp_path: Path, pg_database: PgDatabase
) -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    redis = start_redis(tmp_path / "redis")
    env = {"PLAYGATE_REDIS_URL": redis.url, "PLAYGATE_DATABASE_URL": pg_database.url}
    started: list[ServerProcess] = []
    try:
        migrate_playgate(tmp_path, **env)
        api = start_playgate(tmp_path, "api", wait_ready=False, **env)
        started.append(api)
        wait_until_ready(api, timeout_s=READY_TIMEOUT_S)
        metrics_port = free_port()
        # The worker's probe server is on its PLAYGATE_METRICS_PORT: wait for its /readyz there.
        worker = start_playgate(
            tmp_path,
            "worker",
            port=metrics_port,
            wait_ready=False,
            PLAYGATE_METRICS_PORT=str(metrics_port),
            **env,
        )
        started.append(worker)
        wait_until_ready(worker, timeout_s=READY_TIMEOUT_S)
        await _check_worker(api, worker)
    finally:
        for proc in started:
            proc.stop()
        redis.stop()


async def _check_worker(api: ServerProcess, worker: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=worker.base_url) as probe:
        assert (await probe.get("/healthz")).status_code == 200
        ready = await probe.get("/readyz")
        assert ready.status_code == 200
        assert set(ready.json()["checks"]) >= {"catalog", "ledger", "queue"}
        before = _decisions((await probe.get("/metrics")).text, "allowed")
        admin = await admin_client(api.base_url)
        user = await new_user(api.base_url, admin, limit=2)
        await admin.aclose()
        async with api_client(api.base_url, user.token) as client:
            answer = await client.post("/v1/plays", json={"videoId": "1"}, params={"wait": "10"})
        assert answer.json()["status"] == "allowed", answer.text
        # The worker counts a decision just after publishing it (and acknowledging its batch): poll briefly.
        deadline = time.monotonic() + COUNTED_WITHIN_S
        scraped = (await probe.get("/metrics")).text
        while _decisions(scraped, "allowed") < before + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            scraped = (await probe.get("/metrics")).text
    assert _decisions(scraped, "allowed") == before + 1, worker.log()
    assert "playgate_decision_latency_seconds_count" in scraped
    assert "playgate_queue_lag_seconds" in scraped
    assert worker.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Traceback" not in worker.log()
    # The probe port closes with the worker.
    async with httpx.AsyncClient(base_url=worker.base_url, timeout=5) as probe:
        with pytest.raises(httpx.TransportError):
            await probe.get("/healthz")
