"""The players' hot routes answered by the lean router (api/hot.py) answer exactly as FastAPI answers them: two
apps side by side, one with PLAYGATE_LEAN_ROUTES off, each asked the same thing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.support.clients import admin_client, api_client, new_user
from tests.support.inprocess import served

pytestmark = pytest.mark.inprocess

PROBLEM = "application/problem+json"
# Each user may make 3 play requests at once, then one a minute: the rate limit test reaches it quickly.
RATE = {"PLAYGATE_USER_RATE": "0.01", "PLAYGATE_USER_BURST": "3"}


@dataclass
class App:
    """One of the two apps: its base URL and an admin client."""

    url: str
    admin: httpx.AsyncClient


@pytest_asyncio.fixture(scope="module")
async def lean(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    async with served(Path(tmp_path_factory.mktemp("lean")), **RATE) as url, await admin_client(url) as admin:
        yield App(url, admin)


@pytest_asyncio.fixture(scope="module")
async def framework(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    data_dir = Path(tmp_path_factory.mktemp("framework"))
    async with served(data_dir, PLAYGATE_LEAN_ROUTES="false", **RATE) as url, await admin_client(url) as admin:
        yield App(url, admin)


def _same_shape(text: str, user_id: str) -> str:
    """The answer with what differs between the two apps by construction (ids, request ids) masked."""
    text = text.replace(user_id, "<user>")
    return re.sub(r"[0-9a-f]{16,}(-[0-9a-f]{24})?", "<id>", text)


async def ask(app: App, method: str, path: str, *, token: str | None = "own", **kwargs: Any) -> tuple[Any, ...]:
    """Ask `app` as a fresh user (`token`: "own", None for no header, or a literal token); the answer as
    (status, content type, masked body, Retry-After, WWW-Authenticate)."""
    user = await new_user(app.url, app.admin)
    path = path.replace("{me}", user.id)
    async with api_client(app.url, user.token if token == "own" else token) as client:
        response = await client.request(method, path, **kwargs)
    assert response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
    return (
        response.status_code,
        response.headers.get("content-type"),
        _same_shape(response.text, user.id),
        response.headers.get("retry-after"),
        response.headers.get("www-authenticate"),
    )


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        ("GET", "/videos/1/request?user={me}", "own", 202),
        ("GET", "/videos/1/request/?user={me}", "own", 202),
        ("GET", "/videos/1/request", "own", 202),
        ("GET", "/videos/1/stop?user={me}", "own", 204),
        ("GET", "/videos/1/stop/?user={me}", "own", 204),
        ("GET", "/videos/stop?user={me}", "own", 204),
        ("GET", "/videos/stop/?user={me}", "own", 204),
        ("GET", "/videos/1/request?user={me}", None, 401),
        ("GET", "/videos/1/request?user={me}", "not-a-token", 401),
        ("GET", "/videos/1/stop?user={me}", "Basic abc", 401),
        ("GET", "/videos/stop?user={me}", None, 401),
        ("DELETE", "/v1/streams/abc", None, 401),
        ("GET", "/videos/bad%20id/request?user={me}", "own", 422),
        ("GET", "/videos/" + "9" * 65 + "/request?user={me}", "own", 422),
        ("GET", "/videos/1/request?user=", "own", 422),
        ("GET", "/videos/bad%20id/request?user=a%20b", "own", 422),
        ("GET", "/videos/bad%20id/stop?user={me}", "own", 422),
        ("GET", "/videos/stop?user=%00", "own", 422),
        ("GET", "/videos/1/request?user=1", "own", 403),
        ("GET", "/videos/stop?user=1", "own", 403),
        ("GET", "/videos/no-such-video/request?user={me}", "own", 404),
        ("DELETE", "/v1/streams/no-such-stream", "own", 404),
        ("DELETE", "/v1/streams/bad%20id", "own", 422),
        ("DELETE", "/v1/streams/" + "s" * 161, "own", 422),
        ("POST", "/videos/1/request?user={me}", "own", 405),
        ("GET", "/videos//request?user={me}", "own", 404),
    ],
)
async def test_the_lean_router_answers_as_fastapi(
    lean: App, framework: App, method: str, path: str, token: str | None, status: int
) -> None:
    literal = token if token not in ("own", None) else None
    header = literal if literal is None or " " in literal else f"Bearer {literal}"
    kwargs: dict[str, Any] = {"headers": {"Authorization": header}} if header else {}
    own = token if literal is None else None
    got = await ask(lean, method, path, token=own, **kwargs)
    expected = await ask(framework, method, path, token=own, **kwargs)
    assert got == expected
    assert got[0] == status
    if status >= 400:
        assert got[1] == PROBLEM


async def test_a_bad_id_is_named(lean: App) -> None:
    status, content_type, body, *_ = await ask(lean, "GET", "/videos/bad%20id/request?user=a%20b")
    assert (status, content_type) == (422, PROBLEM)
    assert '"field":"videoId"' in body
    assert '"field":"user"' in body  # both wrong: both listed, the first named


async def test_the_user_rate_limit_is_429_with_retry_after(lean: App, framework: App) -> None:
    for app in (lean, framework):
        user = await new_user(app.url, app.admin)
        async with api_client(app.url, user.token) as client:
            answers = [await client.get(f"/videos/1/request?user={user.id}") for _ in range(4)]
        assert [a.status_code for a in answers] == [202, 202, 202, 429]
        refused = answers[-1]
        assert refused.headers["content-type"] == PROBLEM
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["status"] == 429


async def test_metrics_count_the_lean_routes_by_template(lean: App) -> None:
    user = await new_user(lean.url, lean.admin)
    async with api_client(lean.url, user.token) as client:
        assert (await client.get(f"/videos/1/stop/?user={user.id}")).status_code == 204
        assert (await client.delete("/v1/streams/nothing-here")).status_code == 404
        metrics = (await lean.admin.get("/metrics")).text
    assert 'route="/videos/{videoId}/stop/",status="204"' in metrics
    assert 'route="/v1/streams/{streamId}",status="404"' in metrics


async def test_a_request_is_decided_and_its_stream_stops(lean: App) -> None:
    user = await new_user(lean.url, lean.admin)
    async with api_client(lean.url, user.token) as client:
        asked = await client.get(f"/videos/1/request?user={user.id}")
        assert asked.status_code == 202
        request_id = asked.json()["requestId"]
        decided = (await client.get(f"/v1/plays/{request_id}")).json()
        for _ in range(100):  # bounded: the worker decides within a few batches
            if decided["status"] != "pending":
                break
            await asyncio.sleep(0.05)
            decided = (await client.get(f"/v1/plays/{request_id}")).json()
        assert decided["status"] == "allowed"
        assert len((await client.get("/v1/streams")).json()) == 1
        assert (await client.delete(f"/v1/streams/{decided['streamId']}")).status_code == 204
        assert (await client.get("/v1/streams")).json() == []


async def test_callers_looked_up_together_each_act_as_themselves(lean: App) -> None:
    """Many users' first requests at once (their users not cached yet): each is answered for its own user, and a
    deleted user's token is refused among them."""
    users = [await new_user(lean.url, lean.admin) for _ in range(12)]
    gone = users.pop()
    assert (await lean.admin.delete(f"/v1/users/{gone.id}")).status_code == 204

    async def ask_as(token: str) -> httpx.Response:
        async with api_client(lean.url, token) as client:
            return await client.get("/videos/1/request")

    answers = await asyncio.gather(*(ask_as(u.token) for u in [*users, gone]))
    assert [a.status_code for a in answers] == [202] * len(users) + [401]
    assert [a.json()["data"]["data"]["userId"] for a in answers[:-1]] == [u.id for u in users]
