"""`playgate api` (and `db upgrade`, `import`) and a PostgreSQL catalogue that is not ready: it waits for one that
comes up late (PLAYGATE_START_WAIT), and otherwise exits with one line saying why, not a traceback; a schema a newer
version migrated does not stop the api (README, Upgrade)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from playgate.chaos import TcpProxy
from tests.support.pg_database import PG_HOST, PG_PORT, PgDatabase
from tests.support.redis_server import RedisServer, redis_binary, start_redis
from tests.support.servers import free_port, migrate_playgate, run_playgate, start_playgate

READY_WITHIN_S = 30.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def api_once(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`playgate api` run to its end (it is expected not to start)."""
    return run_playgate(data_dir, "api", "--port", str(free_port()), **env)


async def ready(base_url: str, within_s: float) -> bool:
    """Whether /readyz answers 200 within `within_s` (polled without blocking this loop)."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    return False


async def test_the_api_waits_for_a_database_that_comes_up_late(
    tmp_path: Path, pg_database: PgDatabase, redis_server: RedisServer
) -> None:
    migrate_playgate(tmp_path, PLAYGATE_DATABASE_URL=pg_database.url)
    proxy = TcpProxy(PG_HOST, PG_PORT)  # refuses every connection until restored: the database is "not up yet"
    await proxy.start()
    proxy.cut = True
    late = f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database.name}"
    env = {"PLAYGATE_DATABASE_URL": late, "PLAYGATE_REDIS_URL": redis_server.url, "PLAYGATE_START_WAIT": "60"}
    api = start_playgate(tmp_path, "api", wait_ready=False, **env)
    try:
        assert not await ready(api.base_url, 2.0)
        assert api.proc.poll() is None, api.log()
        # Said once the process has started (its imports take seconds on a loaded machine): asked until then.
        for _ in range(int(READY_WITHIN_S / 0.2)):
            if "waiting for the database: cannot connect to postgresql://" in api.log():
                break
            await asyncio.sleep(0.2)
        assert "waiting for the database: cannot connect to postgresql://" in api.log()
        assert not await ready(api.base_url, 0.5)  # still waiting, not serving
        proxy.restore()
        assert await ready(api.base_url, READY_WITHIN_S), api.log()
    finally:
        api.stop()
        await proxy.close()


@pytest.mark.parametrize("command", [("api",), ("db", "upgrade"), ("import", "users", "rows.csv")])
def test_a_command_gives_up_in_one_line_naming_the_database(tmp_path: Path, command: tuple[str, ...]) -> None:
    port = free_port()  # nobody listens there
    url = f"postgresql://playgate:db-password@127.0.0.1:{port}/playgate"
    (tmp_path / "rows.csv").write_text("id,name\nu1,Ann\n")
    started = time.monotonic()
    result = run_playgate(
        tmp_path,
        *(str(tmp_path / arg) if arg.endswith(".csv") else arg for arg in command),
        PLAYGATE_DATABASE_URL=url,
        PLAYGATE_REDIS_URL="redis://127.0.0.1:9/0",
        PLAYGATE_START_WAIT="1",
    )
    assert result.returncode == 1
    assert (
        f"Error: PLAYGATE_DATABASE_URL: cannot connect to postgresql://playgate:***@127.0.0.1:{port}" in result.stderr
    )
    assert result.stderr.rstrip().endswith("(waited 1 s)"), result.stderr
    assert "Traceback" not in result.stderr
    assert "db-password" not in result.stderr
    assert time.monotonic() - started < 30


def test_the_api_on_an_empty_database_says_to_migrate(tmp_path: Path, pg_database: PgDatabase) -> None:
    result = api_once(tmp_path, PLAYGATE_DATABASE_URL=pg_database.url, PLAYGATE_REDIS_URL="redis://127.0.0.1:9/0")
    assert result.returncode == 1
    assert "Error: PLAYGATE_DATABASE_URL: the schema is at revision none (empty database)" in result.stderr
    assert "run `playgate db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_schema_a_newer_version_migrated_is_a_warning_and_the_api_starts(
    tmp_path: Path, pg_database: PgDatabase, redis_server: RedisServer
) -> None:
    migrate_playgate(tmp_path, PLAYGATE_DATABASE_URL=pg_database.url)
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=pg_database.name)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = 'from_a_newer_version'")
    finally:
        await conn.close()
    env = {"PLAYGATE_DATABASE_URL": pg_database.url, "PLAYGATE_REDIS_URL": redis_server.url}
    doctor = run_playgate(tmp_path, "doctor", **env)
    assert (
        "warn  migrations: the schema is at revision from_a_newer_version, newer than this version's" in doctor.stdout
    )
    api = start_playgate(tmp_path, "api", **env)
    api.stop()


def test_a_redis_that_refuses_the_process_stops_it_in_one_line(tmp_path: Path, redis_server: RedisServer) -> None:
    """A wrong password or a database number Redis does not have is a setting to fix, not an outage to ride out:
    `playgate api` and `worker` stop at once, naming PLAYGATE_REDIS_URL (the api served, answering 503 to every
    log-in, before). A Redis that does not answer at all is an outage: the test of that is test_outage's."""
    migrate_playgate(tmp_path)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=2)
    client.config_set("requirepass", "pw-123")
    try:
        for url, said in (
            (f"redis://:wrong@127.0.0.1:{redis_server.port}/0", "refuses this process: invalid username-password"),
            (f"redis://:pw-123@127.0.0.1:{redis_server.port}/99", "refuses this process: DB index is out of range"),
        ):
            for command in ("api", "worker"):
                result = run_playgate(tmp_path, command, PLAYGATE_REDIS_URL=url, PLAYGATE_PORT=str(free_port()))
                assert result.returncode == 1, result.stderr
                assert result.stderr.startswith("Error: PLAYGATE_REDIS_URL: Redis at redis://:***@"), result.stderr
                assert said in result.stderr
                assert "Traceback" not in result.stderr
    finally:
        redis.Redis(host="127.0.0.1", port=redis_server.port, password="pw-123").config_set("requirepass", "")
        client.close()
