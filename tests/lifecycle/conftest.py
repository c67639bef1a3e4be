"""Deployments for the stream lifecycle tests: PlayGate with short leases and a fast sweeper, per policy.

Every test here takes a `Deployment` and speaks to it over HTTP and Socket.IO only, so the same tests run over
each deployment in DEPLOYMENTS: `embedded` (one `playgate serve`) and `distributed` (redis-server, PostgreSQL,
two `playgate api` and one `playgate worker`; HTTP goes to the first API, sockets to the last, so every
announcement crosses processes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.support.clients import admin_client
from tests.support.pg_database import PgDatabase, create_database, drop_database, pg_unavailable_reason
from tests.support.redis_server import RedisServer, redis_binary, start_redis
from tests.support.servers import ServerProcess, migrate_playgate, start_playgate, wait_until_ready

# Longer than test_nginx's auth cache (2 s): with a lease no longer than the cache, a stream whose last segments
# were answered from nginx's cache could lapse before the next authorisation renewed it (seen once, on a slow machine).
STREAM_TTL_S = 3.0
SWEEP_INTERVAL_S = 0.2
START_TIMEOUT_S = 90.0
DEPLOYMENTS = ["embedded", "distributed"]


@dataclass
class Deployment:
    """A running PlayGate (one or more processes) as the tests see it."""

    kind: str
    base_url: str
    socket_url: str
    media_dir: Path
    servers: list[ServerProcess]
    redis: RedisServer | None = None
    db: PgDatabase | None = None
    stream_ttl_s: float = STREAM_TTL_S
    sweep_interval_s: float = SWEEP_INTERVAL_S
    workers: list[ServerProcess] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop every process, then the servers they used."""
        for server in (*self.servers, *self.workers):
            await asyncio.to_thread(server.stop)
        if self.redis is not None:
            self.redis.stop()
        if self.db is not None:
            with contextlib.suppress(OSError):
                await drop_database(self.db)


@pytest.fixture(scope="session")
def media_dir(shared_media_dir: Path) -> Path:
    """One media folder for every server of the session: the clips and adaptive sets are made once."""
    return shared_media_dir


def lifecycle_env(media_dir: Path, **env: str) -> dict[str, str]:
    """Short leases, a fast sweeper, no catalogue cache (a changed limit applies at the next heartbeat)."""
    return {
        "PLAYGATE_STREAM_TTL": str(STREAM_TTL_S),
        "PLAYGATE_SWEEP_INTERVAL": str(SWEEP_INTERVAL_S),
        "PLAYGATE_MEDIA_DIR": str(media_dir),
        "PLAYGATE_CACHE_TTL": "0",
        **env,
    }


async def start_deployment(kind: str, root: Path, media_dir: Path, **env: str) -> Deployment:
    """Start a deployment of `kind` with short leases; `env` adds PLAYGATE_* settings."""
    settings = lifecycle_env(media_dir, **env)
    if kind == "embedded":
        server = await _start(root / "embedded", "serve", **settings)
        return Deployment(kind, server.base_url, server.base_url, media_dir, [server])
    if kind == "distributed":
        return await _start_distributed(root, media_dir, settings)
    raise ValueError(f"unknown deployment {kind!r}")


async def _start(data_dir: Path, command: str, **settings: str) -> ServerProcess:
    """Start `playgate <command>` and wait for /readyz, allowing for a machine busy with other test sessions."""
    server = start_playgate(data_dir, command, wait_ready=False, **settings)
    try:
        await asyncio.to_thread(wait_until_ready, server, START_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


async def _start_distributed(root: Path, media_dir: Path, settings: dict[str, str]) -> Deployment:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    reason = await pg_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    redis = start_redis(root / "redis")
    db = await create_database()
    deployment = Deployment("distributed", "", "", media_dir, [], redis=redis, db=db)
    settings = {**settings, "PLAYGATE_REDIS_URL": redis.url, "PLAYGATE_DATABASE_URL": db.url}
    data_dir = root / "distributed"
    try:
        await asyncio.to_thread(migrate_playgate, data_dir, **settings)
        # The first API loads the catalogue and the admin before the second starts.
        for _ in range(2):
            deployment.servers.append(await _start(data_dir, "api", **settings))
        deployment.workers.append(start_playgate(data_dir, "worker", wait_ready=False, **settings))
    except BaseException:
        await deployment.stop()
        raise
    deployment.base_url = deployment.servers[0].base_url
    deployment.socket_url = deployment.servers[-1].base_url
    await _wait_for_worker(deployment)
    return deployment


async def _wait_for_worker(deployment: Deployment, timeout_s: float = 30.0) -> None:
    """Wait until a play request is decided: the worker reads the queue."""
    async with await admin_client(deployment.base_url) as admin:
        response = await admin.post("/v1/plays", params={"wait": 10}, json={"videoId": "1"})
        deadline = asyncio.get_running_loop().time() + timeout_s
        while response.status_code != 200 and asyncio.get_running_loop().time() < deadline:
            worker = deployment.workers[0]
            assert worker.proc.poll() is None, worker.log()
            response = await admin.get(f"/v1/plays/{response.json()['requestId']}")
            if response.json()["status"] != "pending":
                break
            await asyncio.sleep(0.2)
        assert response.json()["status"] != "pending", "the worker decided nothing"
        await admin.delete("/v1/streams")


@pytest_asyncio.fixture(scope="session", loop_scope="session", params=DEPLOYMENTS)
async def deny(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> AsyncIterator[Deployment]:
    """A deployment with the default policy (deny at the limit)."""
    deployment = await start_deployment(request.param, Path(tmp_path_factory.mktemp("deny")), media_dir)
    yield deployment
    await deployment.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session", params=DEPLOYMENTS)
async def evict(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> AsyncIterator[Deployment]:
    """A deployment with PLAYGATE_POLICY=evict_oldest."""
    root = Path(tmp_path_factory.mktemp("evict"))
    deployment = await start_deployment(request.param, root, media_dir, PLAYGATE_POLICY="evict_oldest")
    yield deployment
    await deployment.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def deny_admin(deny: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    """The admin of the deny deployment."""
    client = await admin_client(deny.base_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def evict_admin(evict: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    """The admin of the evict_oldest deployment."""
    client = await admin_client(evict.base_url)
    yield client
    await client.aclose()
