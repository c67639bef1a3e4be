"""Session fixtures: one shared PlayGate server process, and one app in this process (`app_url`, `app_admin`),
for the tests that can share them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.support.clients import OpenSocket, SocketClient, admin_client, connect_socket
from tests.support.inprocess import served
from tests.support.servers import ServerProcess, share_media_dir, start_playgate

# The package-scoped server of the original clients' tests: started once, on one worker.
_ONE_WORKER_DIRS = ("compat",)
# The files whose tests take tests/distributed's package-scoped deployment (`cluster`: Redis, PostgreSQL, 2 APIs,
# 2 workers): one unit, so that it starts once, not once per stretch of them on a worker (the others there start
# deployments of their own and stay units of their own).
_SHARED_DEPLOYMENT = tuple(
    f"tests/distributed/test_{name}.py"
    for name in (
        "distributed",
        "audit",
        "connection_loss",
        "platform",
        "policies",
        "revocation",
        "sentinel",
        "serve",
        "socketio_v2",
    )
)
# Files whose tests each start what they use (no module-scoped fixture): spread over the workers one by one.
_PER_TEST = (
    "tests/integration/test_cli.py",
    "tests/integration/test_admission_e2e.py",
    "tests/integration/test_readme.py",
    "tests/bench/test_bench_cli.py",
    "tests/ops/test_doctor.py",
)
# The groups that took longest (seconds per group in a whole `make test`, longest first), started first so that
# none ends the run alone; then the tests of _PER_TEST one by one; then the other groups by their number of tests.
_LONGEST_FIRST = (
    "distributed",
    "tests/distributed/test_redis_cluster.py",
    "tests/integration/test_bad_input.py",
    "tests/ops/test_chaos.py",
    "lifecycle-distributed",
    "tests/browser/test_viewer.py",
    "tests/distributed/test_events_durable.py",
    "lifecycle-embedded",
    "tests/distributed/test_outage.py",
    "tests/bench/test_bench_cli.py",
    "tests/contract/test_ledger.py",
    "tests/browser/test_admin.py",
    "tests/browser/test_hls.py",
    "tests/ops/test_security.py",
    "tests/integration/test_process_group.py",
    "tests/distributed/test_redis_restart.py",
)


def worker_group(nodeid: str) -> str:
    """The pytest-xdist work unit of a test (`make test` runs `pytest -n N`): tests that share a fixture's processes
    run on one worker, so that each worker starts only what its own tests use. A lifecycle test goes with the
    others of its deployment (`[embedded]` or `[distributed]` in its id); a test of _SHARED_DEPLOYMENT with the
    others of that deployment; a test of _PER_TEST alone; any other test with its file."""
    path, _, name = nodeid.partition("::")
    parts = path.split("/")
    if len(parts) > 2 and parts[1] in _ONE_WORKER_DIRS:
        return parts[1]
    if path in _PER_TEST:
        return nodeid
    if path in _SHARED_DEPLOYMENT:
        return "distributed"
    params = name.partition("[")[2].rstrip("]").split("-")
    if len(parts) > 2 and parts[1] == "lifecycle":
        for kind in ("embedded", "distributed"):
            if kind in params:
                return f"lifecycle-{kind}"
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Work units by worker_group, the longest first (pytest-xdist's own --dist loadgroup does not see marks set
    at collection under pytest 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):  # type: ignore[misc]
        _ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # The work queue is complete at the first assignment: put it in first()'s order then. (Sorting the
            # registered collections instead, as before, sent each worker indexes into the sorted list, which it
            # read in its own collection's order: every test ran once, but not in its group nor on its worker.)
            if not self._ordered:
                self._ordered = True
                sizes = {scope: len(unit) for scope, unit in self.workqueue.items()}

                def first(scope: str) -> tuple[int, int]:
                    path = scope.partition("::")[0]
                    if path in _LONGEST_FIRST:
                        return _LONGEST_FIRST.index(path), -sizes[scope]
                    if path in _PER_TEST:
                        return len(_LONGEST_FIRST), 0
                    return len(_LONGEST_FIRST) + 1, -sizes[scope]

                for scope in sorted(self.workqueue, key=first):
                    self.workqueue.move_to_end(scope)
            super()._assign_work_unit(node)

    config.option.loadscopereorder = False  # the order is first()'s
    return ByGroup(config, log)


@pytest.fixture(scope="session", autouse=True)
def shared_media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The media folder every test server shares unless it names its own, made on demand: one for the whole run,
    the xdist workers' included (the media library writes under temporary names and renames, so processes may
    share the folder)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = Path(tmp_path_factory.mktemp("media"))
    else:
        folder = tmp_path_factory.getbasetemp().parent / "media"
        folder.mkdir(exist_ok=True)
    share_media_dir(folder)
    return folder


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A `playgate serve` process shared by the session (tests make their own users on it)."""
    proc = start_playgate(Path(tmp_path_factory.mktemp("shared-server")))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def server_url(server: ServerProcess) -> str:
    return server.base_url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def server_admin(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client logged in as admin on the shared server."""
    client = await admin_client(server.base_url)
    yield client
    await client.aclose()


def _inprocess(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("inprocess") is not None


@pytest.fixture
def base_url(request: pytest.FixtureRequest) -> str:
    """Where the test's PlayGate answers: the app in this process for a test marked `inprocess`, else the shared
    `playgate serve` process."""
    url: str = request.getfixturevalue("app_url" if _inprocess(request) else "server_url")
    return url


@pytest.fixture
def admin(request: pytest.FixtureRequest) -> httpx.AsyncClient:
    """An HTTP client logged in as admin on the test's PlayGate (see base_url)."""
    client: httpx.AsyncClient = request.getfixturevalue("app_admin" if _inprocess(request) else "server_admin")
    return client


@pytest.fixture(params=["in process", "served"])
def both_ways(request: pytest.FixtureRequest) -> tuple[str, httpx.AsyncClient]:
    """The app in this process (the hot routes answered in ASGI) and the shared server (below ASGI): a URL and an
    admin's client for each."""
    served = request.param == "served"
    url: str = request.getfixturevalue("server_url" if served else "app_url")
    admin: httpx.AsyncClient = request.getfixturevalue("server_admin" if served else "app_admin")
    return url, admin


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def app_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """PlayGate served in this process (tests/support/inprocess.py), shared by the session: its base URL, which
    the clients of tests/support/clients.py reach without a socket. For routes and rules; not for Socket.IO."""
    async with served(Path(tmp_path_factory.mktemp("inprocess-app"))) as url:
        yield url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def app_admin(app_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client logged in as admin on the in-process app."""
    client = await admin_client(app_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def open_socket() -> AsyncIterator[OpenSocket]:
    """Connects Socket.IO clients (`await open_socket(base_url, token=...)`) and closes each at the test's end."""
    opened: list[SocketClient] = []

    async def open_one(base_url: str, **auth: str) -> SocketClient:
        sock = await connect_socket(base_url, **auth)
        opened.append(sock)
        return sock

    yield open_one
    for sock in opened:
        await sock.close()
