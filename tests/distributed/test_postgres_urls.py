"""PLAYGATE_DATABASE_URL as hosting providers hand it out: `postgres://` or `postgresql://` with libpq's query
(`sslmode`, `sslrootcert`, `application_name`), against a PostgreSQL server of the test's own that takes TLS only;
and behind PgBouncer in transaction mode, the statement caches turned off from the URL."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import trustme

from tests.support.clients import admin_client, api_client, new_user
from tests.support.pg_database import PG_HOST, PG_PORT, create_database, drop_database, pg_unavailable_reason
from tests.support.pg_server import PgServer, start_postgres, unavailable_reason
from tests.support.pgbouncer import pgbouncer_binary, start_pgbouncer
from tests.support.redis_server import redis_binary, start_redis
from tests.support.servers import migrate_playgate, run_playgate, start_playgate

APPLICATION = "playgate-tls-test"


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[PgServer]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


def doctor(data_dir: Path, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_playgate(data_dir, "doctor", PLAYGATE_DATABASE_URL=database_url, **env)


async def test_a_libpq_url_with_sslmode_runs_playgate_over_tls(tls_postgres: PgServer, tmp_path: Path) -> None:
    # The URL names no driver and checks the server's certificate against the CA it names (verify-full); the server
    # refuses unencrypted connections, so every step working means every connection PlayGate made was TLS.
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    url = tls_postgres.url(f"sslmode=verify-full&sslrootcert={tls_postgres.tls_ca}&application_name={APPLICATION}")
    migrate_playgate(tmp_path, PLAYGATE_DATABASE_URL=url)  # Alembic's engine
    redis = start_redis(tmp_path / "redis")
    try:
        server = start_playgate(tmp_path, "serve", PLAYGATE_DATABASE_URL=url, PLAYGATE_REDIS_URL=redis.url)
        try:
            admin = await admin_client(server.base_url)
            user = await new_user(server.base_url, admin, limit=1)
            await admin.aclose()
            async with api_client(server.base_url, user.token) as client:
                answer = await client.post("/v1/plays", params={"wait": 5}, json={"videoId": "1"})
                assert answer.status_code == 200, answer.text
                assert answer.json()["status"] == "allowed"
            # asyncpg's own reading of the same libpq parameters, to look at PlayGate's connections
            probe = await asyncpg.connect(tls_postgres.url(f"sslmode=verify-full&sslrootcert={tls_postgres.tls_ca}"))
            try:
                rows = await probe.fetch(
                    "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
                    APPLICATION,
                )
            finally:
                await probe.close()
            assert rows, "PlayGate's connections do not carry the URL's application_name"
            assert all(row["ssl"] for row in rows)
        finally:
            server.stop()
    finally:
        redis.stop()
    checked = doctor(tmp_path, url.replace("postgresql://", "postgres://"))
    assert "ok    database: connected to postgres://" in checked.stdout, checked.stdout + checked.stderr
    assert "ok    migrations" in checked.stdout


def test_doctor_names_what_the_server_refused(tls_postgres: PgServer, tmp_path: Path) -> None:
    plain = doctor(tmp_path, tls_postgres.url("sslmode=disable"))
    assert plain.returncode != 0
    assert "FAIL  database: cannot connect" in plain.stdout, plain.stdout
    assert "no encryption" in plain.stdout, plain.stdout
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    unknown_ca = doctor(tmp_path, tls_postgres.url(f"sslmode=verify-full&sslrootcert={stranger}"))
    assert unknown_ca.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in unknown_ca.stdout, unknown_ca.stdout


def test_the_systems_roots_check_a_server_whose_ca_the_system_trusts(tls_postgres: PgServer, tmp_path: Path) -> None:
    # `sslrootcert=system` (libpq 16) takes the machine's trusted roots: OpenSSL's, which SSL_CERT_FILE replaces here
    # with the test CA, as a platform's image would carry its CA among the system's.
    url = tls_postgres.url("sslmode=verify-full&sslrootcert=system")
    trusted = doctor(tmp_path, url, SSL_CERT_FILE=str(tls_postgres.tls_ca))
    assert "ok    database: connected to" in trusted.stdout, trusted.stdout + trusted.stderr
    untrusted = doctor(tmp_path, url)
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout, untrusted.stdout + untrusted.stderr


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("sslmode=required", "sslmode 'required' is not one of"),
        ("sslrootcert=/nonexistent/ca.pem", "sslrootcert names /nonexistent/ca.pem, which is not a file here"),
        ("connect_timeout=soon", "connect_timeout 'soon' is not a whole number of seconds"),
    ],
)
def test_a_bad_libpq_parameter_is_named_before_connecting(tmp_path: Path, query: str, named: str) -> None:
    checked = doctor(tmp_path, f"postgresql://postgres@127.0.0.1:9/postgres?{query}")
    assert checked.returncode != 0
    assert f"FAIL  settings: PLAYGATE_DATABASE_URL: {named}" in checked.stdout, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stderr


async def test_behind_pgbouncer_in_transaction_mode_with_the_statement_caches_off(tmp_path: Path) -> None:
    # Two PlayGate processes, many clients each, two PostgreSQL sessions behind the pooler: a statement prepared in
    # one transaction is gone in the next, which PlayGate's default caches rely on (without the two arguments this
    # test fails: `prepared statement "__asyncpg_stmt_55__" does not exist`, and some calls get no answer).
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; make test installs it)")
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    if (reason := await pg_unavailable_reason()) is not None:
        pytest.skip(reason)
    db = await create_database()
    bouncer = start_pgbouncer()
    redis = start_redis(tmp_path / "redis")
    servers = []
    try:
        env = {
            "PLAYGATE_DATABASE_URL": bouncer.url(db.name, "statement_cache_size=0&prepared_statement_cache_size=0"),
            "PLAYGATE_REDIS_URL": redis.url,
        }
        migrate_playgate(tmp_path, **env)
        servers = [start_playgate(tmp_path, role, **env) for role in ("serve", "api")]
        admins = [await admin_client(server.base_url) for server in servers]
        try:
            answers = await asyncio.gather(*(busy_admin(admin, 10) for admin in admins))
        finally:
            for admin in admins:
                await admin.aclose()
        assert [status for statuses in answers for status in statuses] == [(201, 200, 200)] * 20
        for server in servers:
            assert '"level":"error"' not in server.log(), server.log()
    finally:
        for server in servers:
            server.stop()
        redis.stop()
        bouncer.stop()
        await drop_database(db)


async def busy_admin(admin: httpx.AsyncClient, users: int) -> list[tuple[int, int, int]]:
    """`users` new users at once, each followed by a page of users and the catalogue: what each call answered."""

    async def one(index: int) -> tuple[int, int, int]:
        name = f"pooled-{index}-{secrets.token_hex(3)}"
        created = await admin.post("/v1/users", json={"name": name, "password": f"{name}-password", "limit": 2})
        listed = await admin.get("/v1/users", params={"limit": 5})
        videos = await admin.get("/v1/videos")
        return created.status_code, listed.status_code, videos.status_code

    return list(await asyncio.gather(*(one(i) for i in range(users))))


async def test_a_schema_of_its_own_in_a_shared_database(tmp_path: Path) -> None:
    # A platform's database shared by services, each in its schema: libpq's `options` sets PlayGate's search_path.
    if (reason := await pg_unavailable_reason()) is not None:
        pytest.skip(reason)
    db = await create_database()
    try:
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=db.name)
        try:
            await admin.execute("CREATE SCHEMA streaming")
            url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{db.name}?options=-csearch_path%3Dstreaming"
            migrate_playgate(tmp_path, PLAYGATE_DATABASE_URL=url)
            placed = await admin.fetch(
                "SELECT table_schema, count(*) AS tables FROM information_schema.tables "
                "WHERE table_schema IN ('public', 'streaming') GROUP BY table_schema"
            )
        finally:
            await admin.close()
        assert [(row["table_schema"], row["tables"] > 10) for row in placed] == [("streaming", True)]
        assert "ok    migrations" in doctor(tmp_path, url).stdout
    finally:
        await drop_database(db)
