"""Session fixtures: one shared PlayGate server process for the tests that can share it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.support.clients import admin_client
from tests.support.servers import ServerProcess, share_media_dir, start_playgate


@pytest.fixture(scope="session", autouse=True)
def shared_media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The media folder every test server shares unless it names its own (made once per session, on demand)."""
    folder = Path(tmp_path_factory.mktemp("media"))
    share_media_dir(folder)
    return folder


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A `playgate serve` process shared by the session (tests make their own users on it)."""
    proc = start_playgate(Path(tmp_path_factory.mktemp("shared-server")))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.base_url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def admin(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client logged in as admin on the shared server."""
    client = await admin_client(base_url)
    yield client
    await client.aclose()
