"""Security hygiene: unsafe settings refused at start, login throttled per user name and per address, CORS."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from playgate.config import is_loopback, load_settings, security_problems
from playgate.errors import Unavailable
from playgate.throttle import LoginThrottle, Throttled
from tests.support.clients import api_client
from tests.support.redis_server import redis_binary, start_redis
from tests.support.servers import ADMIN_PASSWORD, ServerProcess, playgate_env, run_playgate, start_playgate

SECRET = "a-secret-that-is-long-enough-for-hs256-0123"
ORIGIN = "https://app.example.test"
FAILURES_PER_USER = 3
FAILURES_PER_ADDRESS = 8


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"PLAYGATE_AUTH": "disabled"}, ["PLAYGATE_INSECURE"]),
        ({"PLAYGATE_AUTH": "disabled", "PLAYGATE_INSECURE": "true"}, []),
        ({"PLAYGATE_INSECURE": "true"}, []),
        ({"PLAYGATE_JWT_SECRET": "short"}, ["PLAYGATE_JWT_SECRET"]),
        ({"PLAYGATE_JWT_SECRET": " " * 40}, ["PLAYGATE_JWT_SECRET"]),  # a placeholder, not a random key
        ({"PLAYGATE_JWT_SECRET": "x" * 32 + "abcdef"}, ["PLAYGATE_JWT_SECRET"]),  # 7 different characters
        ({"PLAYGATE_JWT_ACCEPTED_SECRETS": f"{SECRET},{'k' * 40}"}, ["PLAYGATE_JWT_ACCEPTED_SECRETS"]),
        (
            {
                "PLAYGATE_HOST": "0.0.0.0",
                "PLAYGATE_DEMO": "false",
                "PLAYGATE_JWT_SECRET": SECRET,
                "PLAYGATE_ADMIN_PASSWORD": "admin12345",
            },
            ["PLAYGATE_ADMIN_PASSWORD"],
        ),
        (
            {
                "PLAYGATE_HOST": "0.0.0.0",
                "PLAYGATE_DEMO": "false",
                "PLAYGATE_JWT_SECRET": SECRET,
                "PLAYGATE_ADMIN_PASSWORD": "a-long-admin-password",
            },
            [],
        ),
        ({"PLAYGATE_ADMIN_PASSWORD": "admin"}, []),  # loopback: only this machine can try it
        ({"PLAYGATE_HOST": "0.0.0.0"}, ["PLAYGATE_JWT_SECRET", "PLAYGATE_DEMO"]),
        ({"PLAYGATE_HOST": "0.0.0.0", "PLAYGATE_JWT_SECRET": SECRET}, ["PLAYGATE_DEMO"]),
        ({"PLAYGATE_HOST": "0.0.0.0", "PLAYGATE_DEMO": "false"}, ["PLAYGATE_JWT_SECRET"]),
        ({"PLAYGATE_HOST": "0.0.0.0", "PLAYGATE_DEMO": "false", "PLAYGATE_JWT_SECRET": SECRET}, []),
        ({"PLAYGATE_HOST": "10.1.2.3", "PLAYGATE_DEMO": "false"}, ["PLAYGATE_JWT_SECRET"]),
        ({"PLAYGATE_HOST": "playgate.internal", "PLAYGATE_DEMO": "false"}, ["PLAYGATE_JWT_SECRET"]),
        ({"PLAYGATE_HOST": "localhost"}, []),
        ({"PLAYGATE_HOST": "127.0.0.2"}, []),
        ({"PLAYGATE_HOST": "::1"}, []),
    ],
)
def test_security_problems_name_the_variable_to_fix(env: dict[str, str], expected: list[str]) -> None:
    problems = security_problems(load_settings(env))
    assert len(problems) == len(expected), problems
    for problem, variable in zip(problems, expected, strict=True):
        assert variable in problem


def test_loopback_hosts() -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0", "::", "example.org")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def _refused(data_dir: Path, **env: str) -> str:
    """Run `playgate serve` expecting it to refuse: returns its output (asserts a non-zero exit)."""
    result = run_playgate(data_dir, "serve", **env)
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_auth_disabled_alone_is_refused_at_start(tmp_path: Path) -> None:
    output = _refused(tmp_path, PLAYGATE_AUTH="disabled")
    assert "PLAYGATE_INSECURE=true" in output
    assert "Traceback" not in output


def test_an_open_host_without_a_secret_or_with_the_demo_users_is_refused(tmp_path: Path) -> None:
    env = playgate_env(tmp_path)
    del env["PLAYGATE_JWT_SECRET"]
    result = subprocess.run(
        [sys.executable, "-m", "playgate", "serve", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "PLAYGATE_JWT_SECRET" in result.stderr
    assert "PLAYGATE_DEMO" in _refused(tmp_path, PLAYGATE_HOST="0.0.0.0")


def test_demo_users_left_in_the_database_are_refused_on_an_open_host(tmp_path: Path) -> None:
    # A first start on loopback loads the demo catalogue; the same database may not then be served openly.
    subprocess.run(
        [sys.executable, "-m", "playgate", "demo"], env=playgate_env(tmp_path), check=True, capture_output=True
    )
    output = _refused(tmp_path, PLAYGATE_HOST="0.0.0.0", PLAYGATE_DEMO="false")
    assert "Error: PLAYGATE_HOST: the demo user 'user1' still has its demo password" in output
    assert "Traceback" not in output  # one line, before the server starts (it was the start-up's traceback)
    doctor = run_playgate(tmp_path, "doctor", PLAYGATE_HOST="0.0.0.0", PLAYGATE_DEMO="false")
    assert doctor.returncode == 1
    assert "FAIL  demo users: PLAYGATE_HOST: the demo user 'user1' still has its demo password" in doctor.stdout


# ---- a server of its own: small login limits and one allowed cross origin --------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_playgate(
        Path(tmp_path_factory.mktemp("guarded")),
        PLAYGATE_LOGIN_FAILURES_PER_USER=str(FAILURES_PER_USER),
        PLAYGATE_LOGIN_FAILURES_PER_ADDRESS=str(FAILURES_PER_ADDRESS),
        PLAYGATE_LOGIN_WINDOW="120",
        PLAYGATE_CORS_ORIGINS=f"{ORIGIN}, http://localhost:5173",
    )
    yield proc
    proc.stop()


async def _login(client: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    return await client.post("/auth/token", json={"username": name, "password": password})


def _assert_throttled(response: httpx.Response, window_s: int = 120) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 429
    assert 1 <= int(response.headers["retry-after"]) <= window_s


async def test_failed_logins_for_one_user_name_are_throttled_with_retry_after(guarded: ServerProcess) -> None:
    async with api_client(guarded.base_url) as client:
        for _ in range(FAILURES_PER_USER):
            assert (await _login(client, "user1", "wrong")).status_code == 401
        # Now even the right password waits: the guesser must not learn that it was right.
        _assert_throttled(await _login(client, "user1", "user1"))
        _assert_throttled(await _login(client, "USER1 ", "wrong"))  # the same name, however it is written
        # Another user is not affected, and a right password does not count as a failure.
        for _ in range(FAILURES_PER_USER + 1):
            assert (await _login(client, "user2", "user2")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'playgate_logins_throttled_total{limit="user"} 2.0' in metrics


async def test_browsers_from_a_configured_origin_may_call_the_api(guarded: ServerProcess) -> None:
    async with api_client(guarded.base_url) as client:
        preflight = await client.options(
            "/v1/plays",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                # a player traced in the browser (OpenTelemetry) sends its trace context as well
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key, traceparent",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        heartbeat = await client.options(  # a player's heartbeat carries its stream's playback token
            "/v1/streams/s1/heartbeat",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, x-playback-token",
            },
        )
        assert heartbeat.status_code == 200, heartbeat.text
        simple = await client.get("/videos", headers={"Origin": ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        other = await client.get("/videos", headers={"Origin": "https://evil.example.test"})
        assert "access-control-allow-origin" not in other.headers
        refused = await client.options(
            "/v1/plays", headers={"Origin": "https://evil.example.test", "Access-Control-Request-Method": "POST"}
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers


async def _engineio_handshake(base_url: str, origin: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url) as client:
        return await client.get("/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Origin": origin})


async def test_socketio_accepts_the_configured_origin_only(guarded: ServerProcess) -> None:
    allowed = await _engineio_handshake(guarded.base_url, ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert (await _engineio_handshake(guarded.base_url, "https://evil.example.test")).status_code == 400


async def test_by_default_only_the_same_origin_is_allowed(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get("/videos", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert (await _engineio_handshake(base_url, ORIGIN)).status_code == 400
    assert (await _engineio_handshake(base_url, base_url)).status_code == 200


async def test_behind_a_trusted_proxy_each_forwarded_address_is_counted_on_its_own(guarded: ServerProcess) -> None:
    # The test server trusts 127.0.0.1 (the default PLAYGATE_FORWARDED_ALLOW_IPS), as a proxy on this host.
    async with api_client(guarded.base_url) as client:
        for i in range(FAILURES_PER_ADDRESS + 2):
            response = await client.post(
                "/auth/token",
                json={"username": f"proxied-{i}", "password": "wrong"},
                headers={"X-Forwarded-For": f"203.0.113.{i + 1}"},
            )
            assert response.status_code == 401, response.text
        one_address = {"X-Forwarded-For": "198.51.100.7"}
        for i in range(FAILURES_PER_ADDRESS):
            response = await client.post(
                "/auth/token", json={"username": f"from-one-{i}", "password": "wrong"}, headers=one_address
            )
            assert response.status_code == 401, response.text
        throttled = await client.post(
            "/auth/token", json={"username": "from-one-x", "password": "wrong"}, headers=one_address
        )
        _assert_throttled(throttled)


async def test_concurrent_guesses_get_no_more_password_checks_than_the_limit(guarded: ServerProcess) -> None:
    # Each attempt is counted before its password is checked: 60 at once cannot all slip past the count.
    guesser, user = {"X-Forwarded-For": "198.51.100.50"}, {"X-Forwarded-For": "198.51.100.51"}
    async with api_client(guarded.base_url) as client:
        answers = await asyncio.gather(
            *(
                client.post("/auth/token", json={"username": "user3", "password": f"guess-{i}"}, headers=guesser)
                for i in range(60)
            )
        )
        codes = [a.status_code for a in answers]
        assert codes.count(401) <= FAILURES_PER_USER, codes
        assert codes.count(429) >= 60 - FAILURES_PER_USER, codes
        right = {"username": "user3", "password": "user3"}
        _assert_throttled(await client.post("/auth/token", json=right, headers=guesser))
        # The user, on another address, still logs in: the guesser cannot lock them out.
        assert (await client.post("/auth/token", json=right, headers=user)).status_code == 200
        # The per-address limit holds under concurrency too, across names.
        spray = {"X-Forwarded-For": "198.51.100.60"}
        answers = await asyncio.gather(
            *(
                client.post("/auth/token", json={"username": f"spray-{i}", "password": "x"}, headers=spray)
                for i in range(60)
            )
        )
        assert [a.status_code for a in answers].count(401) <= FAILURES_PER_ADDRESS


async def test_failed_logins_from_one_address_are_throttled_for_every_name(guarded: ServerProcess) -> None:
    # Last in this module: once the address is throttled, every login from it waits out the window.
    async with api_client(guarded.base_url) as client:
        for i in range(FAILURES_PER_ADDRESS):
            response = await _login(client, f"nobody-{i}", "wrong")
            if response.status_code == 429:
                break  # earlier tests' failures from this address count too
            assert response.status_code == 401
        _assert_throttled(await _login(client, "admin", ADMIN_PASSWORD))
        assert "address" in (await _login(client, "someone-new", "x")).json()["detail"]


async def test_api_processes_share_the_login_counters_through_redis(tmp_path: Path) -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    redis = start_redis(tmp_path / "redis")
    settings = load_settings(
        {
            "PLAYGATE_REDIS_URL": redis.url,
            "PLAYGATE_LOGIN_FAILURES_PER_USER": "2",
            "PLAYGATE_DATA_DIR": str(tmp_path),
        }
    )
    first, second = LoginThrottle(settings), LoginThrottle(settings)  # as two API processes would
    try:
        await first.attempt("shared-user", "192.0.2.1")
        await second.attempt("shared-user", "192.0.2.1")
        with pytest.raises(Throttled) as caught:
            await first.attempt("shared-user", "192.0.2.1")
        assert caught.value.limit == "user"
        assert 1 <= caught.value.retry_after_s <= settings.login_window_s
        await second.attempt("shared-user", "192.0.2.3")  # the same name from another address is not affected
        await second.attempt("another-user", "192.0.2.1")  # nor another name
        # A right password gives its attempt back: only failures use up the limit.
        await first.succeeded("shared-user", "192.0.2.3")
        await first.attempt("shared-user", "192.0.2.3")
        redis.stop()
        with pytest.raises(Unavailable):
            await first.attempt("shared-user", "192.0.2.3")  # Redis gone: 503, not an unhandled error
    finally:
        redis.stop()
        await first.close()
        await second.close()
