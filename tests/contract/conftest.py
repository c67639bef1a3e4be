"""Backends for the contract suite: every test here runs unchanged against each implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from playgate.catalog.db import upgrade
from playgate.ledger.protocol import Ledger
from playgate.ledger.redis import RedisLedger
from playgate.ledger.sql import SqlLedger
from tests.support.clock import Clock
from tests.support.redis_cluster import RedisCluster, cluster_tools_installed, start_cluster
from tests.support.redis_server import RedisServer, redis_binary, start_redis

LEASE_S = 90.0
DECISION_TTL_S = 3600.0


class Recorder:
    """An Emitter that keeps what was emitted."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, str | None]] = []

    async def emit(self, event: str, data: Any = None, *, room: str | None = None) -> None:
        self.events.append((event, data, room))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway redis-server for the contract suite (skipped, with the reason, when none is installed)."""
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    server = start_redis(Path(tmp_path_factory.mktemp("contract-redis")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A throwaway Redis Cluster, three primaries and three replicas (skipped, with the reason, without redis)."""
    if not cluster_tools_installed():
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server; .ci/run does)")
    cluster = start_cluster(Path(tmp_path_factory.mktemp("contract-cluster")))
    yield cluster
    cluster.stop()


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """An empty Redis: one server, then the test cluster (for the tests of the Redis backends alone)."""
    store: RedisServer | RedisCluster = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    store.flush()
    return store.url


@pytest.fixture
def clock() -> Clock:
    return Clock()


LedgerFactory = Callable[..., Awaitable[Ledger]]


@pytest_asyncio.fixture(params=["sql", "redis", "redis-cluster"])
async def make_ledger(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[LedgerFactory]:
    """Makes ledgers of one backend on one fresh store; each call is another client of the same store."""
    made: list[Ledger] = []
    if request.param == "sql":
        url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
        await upgrade(url)
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        url = server.url
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        url = cluster.url

    async def make(lease_s: float = LEASE_S) -> Ledger:
        cls = SqlLedger if request.param == "sql" else RedisLedger
        ledger: Ledger = cls(url, lease_s=lease_s, decision_ttl_s=DECISION_TTL_S, clock=clock)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        await ledger.close()
