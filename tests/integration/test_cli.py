"""The `playgate` command: help, version, db upgrade, demo, token, start-up errors, the seed's trust mode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from playgate.bus.local import QUEUE_KEEP_FILE
from playgate.cli import main
from playgate.kept import PREFIX as KEEP_PREFIX
from tests.support.clients import api_client, connect_socket
from tests.support.inprocess import served
from tests.support.servers import playgate_env, start_playgate


def playgate(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "playgate", *args],
        env=playgate_env(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def playgate_here(data_dir: Path, *args: str, **env: str) -> Result:
    """`playgate <args>` through click's runner in a thread (the command runs an event loop of its own), with the
    environment a process would get: the command's logic and exit status without a process's start-up (about 3 s
    of importing playgate.cli on a busy machine). The tests above and the server fixtures run it as a process."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), env=playgate_env(data_dir, **env))


def test_help_lists_the_commands(tmp_path: Path) -> None:
    # The help texts in this process (click's runner): a process would prove nothing more (`--version` does run as
    # one, for `python -m playgate` itself).
    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=playgate_env(tmp_path))

    result = run("--help")
    assert result.exit_code == 0
    for command in ("serve", "api", "worker", "db", "demo", "token", "version"):
        assert f"  {command} " in result.stdout
    assert {"upgrade", "reset"} <= set(run("db", "--help").stdout.split())
    assert run("version").stdout.strip() == playgate(tmp_path, "--version").stdout.split()[-1]


def test_db_upgrade_demo_and_token(tmp_path: Path) -> None:
    # In this process (click's runner), as the commands' own logic: `python -m playgate` runs these commands as
    # processes in every server fixture (db upgrade), test_security (demo) and the printed token's test below.
    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=playgate_env(tmp_path))

    upgraded = run("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    assert "up to date" in upgraded.stdout
    assert run("demo").stdout.strip() == "demo catalogue loaded"
    assert run("demo").stdout.strip() == "demo catalogue already there"
    by_name = run("token", "user2")
    by_id = run("token", "2")
    assert by_name.exit_code == by_id.exit_code == 0
    assert by_name.stdout.count(".") == 2  # a JWT
    unknown = run("token", "nobody")
    assert unknown.exit_code != 0
    assert "nobody" in unknown.stderr


def test_db_reset_asks_for_yes_then_empties_the_database(tmp_path: Path) -> None:
    # In this process (click's runner): the command's own logic; the commands above prove the process wiring.
    def run(*args: str, **env: str) -> Result:
        return CliRunner().invoke(main, list(args), env=playgate_env(tmp_path, **env))

    assert run("demo").exit_code == 0
    refused = run("db", "reset")
    assert refused.exit_code != 0
    assert "--yes" in refused.output
    assert run("token", "user1", PLAYGATE_DEMO="false").exit_code == 0  # nothing was deleted
    # work kept by stopped processes for the next start would go into the emptied store: deleted too
    kept = [tmp_path / QUEUE_KEEP_FILE, tmp_path / f"{KEEP_PREFIX}123-abcd.json", tmp_path / "jwt-secret-not"]
    for path in kept:
        path.write_text("{}")
    done = run("db", "reset", "--yes")
    assert done.exit_code == 0, done.output
    assert "is empty and up to date" in done.output
    assert "deleted 2 file(s) of work stopped processes kept" in done.output
    assert [path.exists() for path in kept] == [False, False, True]
    gone = run("token", "user1", PLAYGATE_DEMO="false")
    assert gone.exit_code != 0
    assert "user1" in gone.output
    assert run("demo").output.strip().endswith("demo catalogue loaded")  # usable again at once


async def test_a_printed_token_works_against_the_server(tmp_path: Path) -> None:
    server = start_playgate(tmp_path)
    try:
        token = playgate(tmp_path, "token", "user3").stdout.strip()
        async with api_client(server.base_url, token) as client:
            assert (await client.get("/users/3")).json()["name"] == "user3"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PLAYGATE_PORT": "http"}, "PLAYGATE_PORT"),
        ({"PLAYGATE_STREAM_TTL": "0"}, "PLAYGATE_STREAM_TTL"),
        ({"PLAYGATE_DATABASE_URL": "mysql://x"}, "PLAYGATE_DATABASE_URL"),
        ({"PLAYGATE_DATABASE_URL": "sqlite+aiosqlite:///:memory:"}, "PLAYGATE_DATABASE_URL"),
        ({"PLAYGATE_JWT_SECRET": "short"}, "PLAYGATE_JWT_SECRET"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path, env: dict[str, str], variable: str) -> None:
    result = playgate(tmp_path, "serve", **env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


async def test_without_demo_the_catalogue_starts_empty(tmp_path: Path) -> None:
    async with served(tmp_path, PLAYGATE_DEMO="false") as base_url, api_client(base_url) as client:
        assert (await client.get("/videos")).json() == []
        login = await client.post("/auth/token", json={"username": "user1", "password": "user1"})
        assert login.status_code == 401


async def test_auth_disabled_is_the_seed_trust_model(tmp_path: Path) -> None:
    server = start_playgate(tmp_path, PLAYGATE_AUTH="disabled", PLAYGATE_INSECURE="true")
    try:
        assert "PLAYGATE_AUTH=disabled" in server.log()
        sock = await connect_socket(server.base_url, user="1")
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert len((await client.get("/users")).json()) >= 3
            assert (await client.get("/users", params={"name": "user1"})).json()["id"] == "1"
            response = await client.get("/videos/1/request", params={"user": "1"})
            assert response.status_code == 202
            message = await sock.next_message()
            assert (message["status"], message["data"]) == ("allowed", {"videoId": "1", "userId": "1"})
            assert len((await client.get("/users/1/streams")).json()) == 1
            assert (await client.get("/videos/stop", params={"user": "1"})).status_code == 204
            assert (await client.get("/videos/1/request", params={"user": "nobody"})).status_code == 404
        await sock.close()
    finally:
        server.stop()
