"""The small defects of issue 19, each shut: NUL in ?name=, a login body cut short, two first starts at once,
an oversized socket heartbeat id, the security headers and the token answer's Cache-Control."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx

from playgate.catalog.db import create_engine, upgrade
from playgate.catalog.service import Catalog
from tests.support.clients import api_client, connect_socket, new_user

PROBLEM = "application/problem+json"


async def test_a_nul_in_the_name_query_is_422_naming_the_field(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/users", params={"name": "a\x00b"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["field"] == "name"


def _auth_token_500s(metrics_text: str) -> float:
    match = re.search(r'playgate_http_requests_total\{route="/auth/token",status="500"\} (\S+)', metrics_text)
    return float(match.group(1)) if match else 0.0


async def test_a_login_body_cut_short_is_not_a_server_error(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        before = _auth_token_500s((await client.get("/metrics")).text)
        host, port = base_url.removeprefix("http://").split(":")
        for _ in range(3):
            _reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 200\r\n\r\n{"username": "us'
            )
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.3)  # the server notices the disconnect
        after = _auth_token_500s((await client.get("/metrics")).text)
    assert after == before, "a client that went away mid-body was counted as a 500"


async def test_two_first_starts_at_once_both_get_the_admin_and_the_demo(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'race.sqlite3'}"
    await upgrade(url)
    engines = [create_engine(url), create_engine(url)]
    catalogs = [Catalog(e, default_limit=3, cache_ttl_s=0, clock=time.time) for e in engines]
    try:
        admins = await asyncio.gather(*(c.ensure_admin("a-password") for c in catalogs))
        assert admins[0].id == admins[1].id
        await asyncio.gather(*(c.load_demo() for c in catalogs))
        assert [u.name for u in await catalogs[0].list_users()] == ["admin", "user1", "user2", "user3"]
        assert len(await catalogs[0].list_videos()) == 6
    finally:
        for catalog, engine in zip(catalogs, engines, strict=True):
            await catalog.close()
            await engine.dispose()


async def test_a_socket_heartbeat_with_a_huge_stream_id_is_422_and_not_echoed(
    base_url: str, admin: httpx.AsyncClient
) -> None:
    user = await new_user(base_url, admin)
    sock = await connect_socket(base_url, token=user.token)
    try:
        huge = "s" * 100_000
        ack = await sock.sio.call("heartbeat", {"streamId": huge}, timeout=5)
        assert ack["status"] == 422
        assert ack["field"] == "streamId"
        assert len(str(ack)) < 200
    finally:
        await sock.close()


async def test_security_headers_and_the_web_apps_policy(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        for path in ("/healthz", "/videos", "/app/"):
            response = await client.get(path)
            assert response.headers["x-content-type-options"] == "nosniff", path
            assert response.headers["referrer-policy"] == "no-referrer", path
            assert response.headers["x-frame-options"] == "DENY", path
        policy = (await client.get("/app/")).headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy
        assert "default-src 'self'" in policy


async def test_the_token_answer_is_never_cached(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    async with api_client(base_url) as client:
        response = await client.post("/auth/token", json={"username": user.name, "password": user.password})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
