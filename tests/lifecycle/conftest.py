"""Deployments for the stream lifecycle tests: PlayGate with short leases and a fast sweeper, per policy.

Every test here takes a `Deployment` and speaks to it over HTTP and Socket.IO only, so that the same tests run
over every deployment listed in DEPLOYMENTS (the distributed one joins the list once tests/support can start it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.support.clients import admin_client
from tests.support.servers import ServerProcess, start_playgate

STREAM_TTL_S = 2.0
SWEEP_INTERVAL_S = 0.2
DEPLOYMENTS = ["embedded"]


@dataclass
class Deployment:
    """A running PlayGate (one or more processes) as the tests see it."""

    kind: str
    base_url: str
    media_dir: Path
    servers: list[ServerProcess]
    stream_ttl_s: float = STREAM_TTL_S
    sweep_interval_s: float = SWEEP_INTERVAL_S

    def stop(self) -> None:
        """Stop every process."""
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One media folder for every server of the session: the clips are made once."""
    return Path(tmp_path_factory.mktemp("media"))


def start_deployment(kind: str, root: Path, media_dir: Path, **env: str) -> Deployment:
    """Start a deployment of `kind` with short leases; `env` adds PLAYGATE_* settings."""
    settings = {
        "PLAYGATE_STREAM_TTL": str(STREAM_TTL_S),
        "PLAYGATE_SWEEP_INTERVAL": str(SWEEP_INTERVAL_S),
        "PLAYGATE_MEDIA_DIR": str(media_dir),
        # Limits changed by the admin apply at the next heartbeat, not after a cache period.
        "PLAYGATE_CACHE_TTL": "0",
        **env,
    }
    if kind == "embedded":
        server = start_playgate(root / "embedded", **settings)
        return Deployment(kind, server.base_url, media_dir, [server])
    raise ValueError(f"unknown deployment {kind!r}")


@pytest.fixture(scope="session", params=DEPLOYMENTS)
def deny(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> Iterator[Deployment]:
    """A deployment with the default policy (deny at the limit)."""
    deployment = start_deployment(request.param, Path(tmp_path_factory.mktemp("deny")), media_dir)
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session", params=DEPLOYMENTS)
def evict(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> Iterator[Deployment]:
    """A deployment with PLAYGATE_POLICY=evict_oldest."""
    root = Path(tmp_path_factory.mktemp("evict"))
    deployment = start_deployment(request.param, root, media_dir, PLAYGATE_POLICY="evict_oldest")
    yield deployment
    deployment.stop()


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
