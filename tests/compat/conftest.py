"""A `playgate serve` as the original service's UI needs it: auth disabled, and another origin allowed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.node import require_node_clients
from tests.support.servers import ServerProcess, start_playgate

# Where the original UI is served from in these tests (never contacted: it is only the Origin header).
UI_ORIGIN = "http://ui.example.test:4200"


@pytest.fixture(scope="package")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """PLAYGATE_AUTH=disabled + PLAYGATE_INSECURE=true + PLAYGATE_CORS_ORIGINS=UI_ORIGIN, nothing else."""
    proc = start_playgate(
        Path(tmp_path_factory.mktemp("open-server")),
        PLAYGATE_AUTH="disabled",
        PLAYGATE_INSECURE="true",
        PLAYGATE_CORS_ORIGINS=UI_ORIGIN,
    )
    yield proc
    proc.stop()


@pytest.fixture
def node_clients() -> None:
    """The real socket.io-client 2 and 4 are installed (tests/compat/package.json)."""
    require_node_clients()
