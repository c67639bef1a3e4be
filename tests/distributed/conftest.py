"""A distributed PlayGate for the tests: a throwaway redis-server (AOF on) or Redis Cluster, a fresh PostgreSQL
database, 2 `playgate api` and 2 `playgate worker` processes on them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
import redis

from playgate.bench.keyset import IdentityProvider, new_key
from tests.support.pg_database import PgDatabase, create_database, drop_database, pg_unavailable_reason
from tests.support.redis_cluster import RedisCluster, cluster_tools_installed, start_cluster
from tests.support.redis_server import RedisServer, redis_binary, start_redis
from tests.support.servers import ServerProcess, migrate_playgate, start_playgate, wait_until_ready

# Long enough that a slow batch on a loaded machine is not taken over from a live worker.
CLAIM_IDLE_S = 4.0
WORKER_READY_TIMEOUT_S = 30.0


@dataclass
class Cluster:
    """The running processes of one distributed deployment, and what they share."""

    redis: RedisServer | RedisCluster
    db: PgDatabase
    data_dir: Path
    idp: IdentityProvider
    apis: list[ServerProcess] = field(default_factory=list)
    workers: list[ServerProcess] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.settings,
            "PLAYGATE_REDIS_URL": self.redis.url,
            "PLAYGATE_DATABASE_URL": self.db.url,
            "PLAYGATE_CLAIM_IDLE": str(CLAIM_IDLE_S),
            # The platform's tokens are trusted too (the test's identity provider): tests/distributed/test_platform.py
            **self.idp.env(PLAYGATE_CLAIM_PLAN="plan"),
        }

    @property
    def urls(self) -> list[str]:
        return [api.base_url for api in self.apis]

    def start_api(self, *, wait_ready: bool = True) -> ServerProcess:
        api = start_playgate(self.data_dir, "api", wait_ready=wait_ready, **self.env)
        self.apis.append(api)
        return api

    def start_worker(self) -> ServerProcess:
        """Start a worker and wait until it reads from the consumer group."""
        [worker] = self.start_workers(1)
        return worker

    def start_workers(self, count: int) -> list[ServerProcess]:
        """Start `count` workers side by side and wait until each reads from the consumer group."""
        before = self.consumers()
        started = [start_playgate(self.data_dir, "worker", wait_ready=False, **self.env) for _ in range(count)]
        self.workers.extend(started)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for worker in started:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"playgate worker exited with {worker.proc.returncode}:\n{worker.log()}")
            if self.consumers() >= before + count:  # their queues connected: they are taking requests
                return started
            time.sleep(0.1)
        logs = "\n".join(worker.log() for worker in started)
        raise RuntimeError(f"playgate workers never all read from the queue:\n{logs}")

    def consumers(self) -> int:
        """Queue connections open on Redis: each process names them `playgate-queue:<consumer>`."""
        ports = [n.port for n in self.redis.nodes] if isinstance(self.redis, RedisCluster) else [self.redis.port]
        names: set[str] = set()
        for port in ports:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
            try:
                names |= {c.get("name", "") for c in client.client_list()}
            finally:
                client.close()
        return sum(name.startswith("playgate-queue:") for name in names)

    def stop(self) -> None:
        """SIGTERM to every process at once, then wait for each (a second SIGTERM is harmless)."""
        procs = (*self.apis, *self.workers)
        for proc in procs:
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """Redis, PostgreSQL, `playgate db upgrade`, then 2 APIs and 2 workers (skipped with the reason if a server
    binary or PostgreSQL is missing on this machine; .ci/run installs and starts them)."""
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    data_dir = Path(tmp_path_factory.mktemp("distributed"))
    async with deployment(data_dir, lambda: start_redis(data_dir / "redis", appendonly=True)) as made:
        yield made


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def on_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """The same deployment on a Redis Cluster of three primaries and three replicas."""
    if not cluster_tools_installed():
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server; .ci/run does)")
    data_dir = Path(tmp_path_factory.mktemp("distributed-cluster"))
    # One device may hold several streams here, so that every stream ever allowed is still counted at the end
    # (a device's next title would replace its own stream): what the migration and failover tests check.
    start = lambda: start_cluster(data_dir / "redis-cluster")  # noqa: E731
    async with deployment(data_dir, start, PLAYGATE_ONE_STREAM_PER_DEVICE="false") as made:
        yield made


@contextlib.asynccontextmanager
async def deployment(
    data_dir: Path, start_store: Callable[[], RedisServer | RedisCluster], **settings: str
) -> AsyncIterator[Cluster]:
    """PostgreSQL (skipped with the reason when missing), the store, `playgate db upgrade`, 2 APIs, 2 workers."""
    reason = await pg_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    store = start_store()
    db = await create_database()
    idp = IdentityProvider([new_key("cluster-rsa"), new_key("cluster-ec", "ES256")]).start()
    cluster = Cluster(store, db, data_dir, idp, settings=settings)
    try:
        await asyncio.to_thread(migrate_playgate, data_dir, **cluster.env)
        cluster.start_api()  # the first API loads the catalogue and the admin before the others start
        second = cluster.start_api(wait_ready=False)  # it starts beside the workers
        await asyncio.to_thread(cluster.start_workers, 2)
        await asyncio.to_thread(wait_until_ready, second)
        yield cluster
    finally:
        cluster.stop()
        store.stop()
        idp.stop()
        with contextlib.suppress(OSError):
            await drop_database(db)


def kill(proc: ServerProcess) -> None:
    """kill -9, and reap it."""
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)
