"""`playgate doctor`: plain words about what is wrong, exit 1 when something is, 0 when all is well."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import redis

from playgate.bench.keyset import IdentityProvider, new_key
from playgate.connections import HASH_LISTPACK_VALUE
from tests.support.collector import Collector
from tests.support.pg_database import PgDatabase
from tests.support.redis_server import redis_binary, start_redis
from tests.support.servers import free_port, run_playgate


def doctor(data_dir: Path, *args: str, **env: str) -> tuple[int, str]:
    """Run `playgate <args>` (default `doctor`) with a test environment: exit code and output."""
    result = run_playgate(data_dir, *(args or ("doctor",)), **env)
    return result.returncode, result.stdout + result.stderr


def test_a_fresh_data_dir_needs_the_migrations_and_doctor_creates_nothing(tmp_path: Path) -> None:
    code, output = doctor(tmp_path)
    assert code == 1
    assert "FAIL  database: no database file" in output
    assert "run `playgate db upgrade`" in output
    assert list(tmp_path.iterdir()) == []  # it only looked
    assert doctor(tmp_path, "db", "upgrade")[0] == 0
    code, output = doctor(tmp_path)
    assert code == 0, output
    assert "ok    migrations: the schema is at revision" in output
    assert "ok    redis: not configured" in output
    assert output.rstrip().endswith("no problems found")


def test_unsafe_settings_are_reported_in_plain_words(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, PLAYGATE_AUTH="disabled", PLAYGATE_HOST="0.0.0.0")
    assert code == 1
    assert "set PLAYGATE_INSECURE=true as well" in output
    assert "PLAYGATE_DEMO: the demo users' passwords equal their names" in output


def test_a_bad_value_names_the_variable(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, PLAYGATE_PORT="eighty")
    assert code != 0
    assert "PLAYGATE_PORT" in output
    assert "Traceback" not in output


def test_servers_that_do_not_answer_are_named_without_their_password(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    code, output = doctor(
        tmp_path,
        PLAYGATE_DATABASE_URL=f"postgresql+asyncpg://playgate:db-password@127.0.0.1:{port}/playgate",
        PLAYGATE_REDIS_URL=f"redis://:redis-password@127.0.0.1:{port}/0",
    )
    assert code == 1
    assert f"FAIL  database: cannot connect to postgresql+asyncpg://playgate:***@127.0.0.1:{port}/playgate" in output
    assert f"FAIL  redis: cannot connect to redis://:***@127.0.0.1:{port}/0" in output
    assert "db-password" not in output
    assert "redis-password" not in output


async def test_real_postgres_and_redis_before_and_after_the_migrations(tmp_path: Path, pg_database: PgDatabase) -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    redis_plain = start_redis(tmp_path / "redis-plain")
    redis_aof = start_redis(tmp_path / "redis-aof", appendonly=True)
    with redis.Redis(port=redis_aof.port, socket_timeout=5) as client:
        client.config_set("hash-max-listpack-value", HASH_LISTPACK_VALUE)  # as deploy/ runs it
    try:
        env = {"PLAYGATE_DATABASE_URL": pg_database.url, "PLAYGATE_REDIS_URL": redis_plain.url}
        code, output = doctor(tmp_path, **env)
        assert code == 1
        assert "ok    database: connected to postgresql+asyncpg://" in output
        assert "FAIL  migrations: the schema is at revision none (empty database)" in output
        assert "warn  redis persistence: append-only file is off" in output
        assert "warn  redis memory: hash-max-listpack-value is 64" in output  # Redis's default
        assert doctor(tmp_path, "db", "upgrade", **env)[0] == 0
        code, output = doctor(tmp_path, **{**env, "PLAYGATE_REDIS_URL": redis_aof.url})
        assert code == 0, output
        assert "ok    redis: connected to redis://" in output
        assert "redis persistence" not in output
        assert "redis memory" not in output
    finally:
        redis_plain.stop()
        redis_aof.stop()


def test_a_secret_from_a_file_and_a_file_that_is_not_there(tmp_path: Path) -> None:
    secret = tmp_path / "jwt-secret-file"
    secret.write_text("a-signing-key-kept-in-a-mounted-file-0123456789\n")
    _, output = doctor(tmp_path, PLAYGATE_JWT_SECRET="", PLAYGATE_JWT_SECRET_FILE=str(secret))
    assert "ok    jwt secret: set by PLAYGATE_JWT_SECRET" in output
    code, output = doctor(tmp_path, PLAYGATE_JWT_SECRET="", PLAYGATE_JWT_SECRET_FILE=str(tmp_path / "missing"))
    assert code != 0
    assert f"PLAYGATE_JWT_SECRET_FILE: cannot read {tmp_path / 'missing'}" in output
    assert "Traceback" not in output


async def test_the_traces_collector_is_tried_and_one_away_is_a_warning(tmp_path: Path) -> None:
    assert doctor(tmp_path, "db", "upgrade")[0] == 0
    collector = await Collector().start()
    try:
        env = {"PLAYGATE_TRACING": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
        code, output = await asyncio.to_thread(doctor, tmp_path, **env)
        assert code == 0, output
        assert f"ok    tracing: spans go to {collector.endpoint}/v1/traces" in output
        assert collector.spans == []  # an export of none
    finally:
        await collector.stop()
    away = f"http://127.0.0.1:{free_port()}"
    code, output = await asyncio.to_thread(doctor, tmp_path, PLAYGATE_TRACING="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=away)
    assert code == 0, output  # a warning: plays do not need the collector
    assert f"warn  tracing: the collector at {away}/v1/traces does not answer" in output
    assert "tracing" not in doctor(tmp_path)[1]  # off: nothing to check


def test_a_folder_that_cannot_be_made_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    """A data or media folder where a file stands (or where this process may not write): one line at start, not a
    traceback, and not a server whose every playlist answers 500."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    for args, env, said in (
        (("serve",), {"PLAYGATE_DATA_DIR": str(in_the_way)}, f"Error: PLAYGATE_DATA_DIR: cannot create {in_the_way}"),
        (("db", "upgrade"), {"PLAYGATE_DATA_DIR": str(in_the_way)}, "Error: PLAYGATE_DATABASE_URL: cannot create"),
        (("serve",), {"PLAYGATE_MEDIA_DIR": str(in_the_way / "media")}, "Error: PLAYGATE_MEDIA_DIR: cannot create"),
    ):
        result = run_playgate(tmp_path / "data", *args, PLAYGATE_PORT=str(free_port()), **env)
        assert result.returncode != 0
        assert said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_port_in_use_or_a_host_that_is_no_address_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_playgate(tmp_path, "serve", PLAYGATE_PORT=str(port))
    assert result.returncode == 1
    assert f"Error: PLAYGATE_PORT: cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr
    wrong = run_playgate(
        tmp_path, "serve", PLAYGATE_HOST="127.0.0.1:8080", PLAYGATE_DEMO="false", PLAYGATE_PORT=str(free_port())
    )
    assert "Error: PLAYGATE_HOST: '127.0.0.1:8080' is not an address to listen on" in wrong.stderr, wrong.stderr
    assert "Traceback" not in result.stderr + wrong.stderr


def test_the_probes_port_is_checked_by_the_commands_that_serve_it(tmp_path: Path) -> None:
    """PLAYGATE_METRICS_PORT, served by a worker and by a process group's owner: the same port as PLAYGATE_PORT, or
    one taken, is one line naming it before anything starts (uvicorn's bind error named neither, and the group's
    members were up by then)."""
    port = free_port()
    group = run_playgate(
        tmp_path, "serve", "--processes", "2", PLAYGATE_PORT=str(port), PLAYGATE_METRICS_PORT=str(port)
    )
    assert group.returncode == 1
    assert f"Error: PLAYGATE_METRICS_PORT: {port} is PLAYGATE_PORT too" in group.stderr, group.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probes = taken.getsockname()[1]
        # a Redis that does not answer is an outage the worker starts into: the port is what stops it
        worker = run_playgate(
            tmp_path,
            "worker",
            PLAYGATE_REDIS_URL=f"redis://127.0.0.1:{free_port()}",
            PLAYGATE_METRICS_PORT=str(probes),
        )
    assert worker.returncode == 1
    said = f"Error: PLAYGATE_METRICS_PORT: cannot listen on 127.0.0.1:{probes} (Address already in use)"
    assert said in worker.stderr, worker.stderr
    assert "Traceback" not in group.stderr + worker.stderr


def test_the_platforms_key_set_is_fetched_and_one_that_cannot_be_is_a_failure(tmp_path: Path) -> None:
    assert doctor(tmp_path, "db", "upgrade")[0] == 0
    idp = IdentityProvider([new_key("doctor-rsa"), new_key("doctor-ec", "ES256")]).start()
    try:
        code, output = doctor(tmp_path, **idp.env())
        assert code == 0, output
        assert f"ok    key set: 2 key(s) fetched from {idp.jwks_url}" in output
    finally:
        idp.stop()
    code, output = doctor(tmp_path, **idp.env())  # the identity provider is gone
    assert code == 1
    assert f"FAIL  key set: PLAYGATE_JWKS_URL: the platform's key set cannot be fetched from {idp.jwks_url}" in output
