"""The players' hot routes answered by the lean router (api/hot.py) answer exactly as FastAPI answers them: apps
side by side, one with PLAYGATE_LEAN_ROUTES off, each asked the same thing; and on uvicorn, where its HTTP protocol
answers them below ASGI (HotHttpProtocol), the same again over TCP."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import pytest_asyncio

from playgate.api import hot
from playgate.api.hot import HotRoutes
from tests.support.clients import admin_client, api_client, new_user
from tests.support.inprocess import served, served_on_uvicorn

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


@pytest_asyncio.fixture(scope="module")
async def wire(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    data_dir = Path(tmp_path_factory.mktemp("wire"))
    async with served_on_uvicorn(data_dir, **RATE) as url, await admin_client(url) as admin:
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
    if isinstance(kwargs.get("content"), str):
        kwargs["content"] = kwargs["content"].replace("{me}", user.id)
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
    lean: App, framework: App, wire: App, method: str, path: str, token: str | None, status: int
) -> None:
    literal = token if token not in ("own", None) else None
    header = literal if literal is None or " " in literal else f"Bearer {literal}"
    kwargs: dict[str, Any] = {"headers": {"Authorization": header}} if header else {}
    own = token if literal is None else None
    got = await ask(lean, method, path, token=own, **kwargs)
    expected = await ask(framework, method, path, token=own, **kwargs)
    assert got == expected
    assert await ask(wire, method, path, token=own, **kwargs) == expected
    assert got[0] == status
    if status >= 400:
        assert got[1] == PROBLEM


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("path", "body", "headers", "token", "status"),
    [
        ("/v1/plays", '{"videoId":"1"}', JSON, "own", 202),
        ("/v1/plays", '{"videoId":"1"}', {}, "own", 422),
        ("/v1/plays", '{"videoId":"1","deviceName":"Living-room TV"}', {**JSON, "Idempotency-Key": "k-1"}, "own", 202),
        ("/v1/plays", '{"videoId":"1","deviceId":"tv-1","userId":"{me}"}', JSON, "own", 202),
        ("/v1/plays", '{"videoId":"1","replaceStreamId":"no-such-stream"}', JSON, "own", 202),
        ("/v1/plays", '{"videoId":"1","replaceStreamIds":["no-such-stream"],"replaceOthers":true}', JSON, "own", 202),
        ("/v1/plays", '{"videoId":"1","replaceStreamIds":["bad id"]}', JSON, "own", 422),
        ("/v1/plays", '{"videoId":"1","replaceOthers":"maybe"}', JSON, "own", 422),
        ("/v1/plays?wait=0", '{"videoId":"1"}', {**JSON, "User-Agent": "Mozilla/5.0 (SMART-TV; Tizen)"}, "own", 202),
        ("/v1/plays", '{"videoId":"1","userId":"1"}', JSON, "own", 403),
        ("/v1/plays", '{"videoId":"no-such-video"}', JSON, "own", 404),
        ("/v1/plays", '{"videoId":"1"}', JSON, None, 401),
        ("/v1/plays", '{"videoId":"1"}', JSON, "not-a-token", 401),
        ("/v1/plays", "{}", JSON, "own", 422),
        ("/v1/plays", "", JSON, "own", 422),
        ("/v1/plays", "not json", JSON, "own", 422),
        ("/v1/plays", "not json", JSON, None, 422),
        ("/v1/plays", "[1]", JSON, "own", 422),
        ("/v1/plays", '{"videoId":"bad id"}', JSON, "own", 422),
        ("/v1/plays", '{"videoId":"bad id"}', JSON, None, 401),
        ("/v1/plays", '{"videoId":"1","surprise":1}', JSON, "own", 422),
        ("/v1/plays", '{"videoId":"1","replaceStreamId":"bad id"}', JSON, "own", 422),
        ("/v1/plays", '{"videoId":1}', JSON, "own", 422),
        ("/v1/plays", '{"videoId":"1"}', {"Content-Type": "text/plain"}, "own", 422),
        ("/v1/plays?wait=-1", '{"videoId":"1"}', JSON, "own", 422),
        ("/v1/plays?wait=nan", '{"videoId":"1"}', JSON, "own", 422),
        ("/v1/plays?wait=soon", '{"videoId":"1"}', JSON, "own", 422),
        ("/v1/plays", '{"videoId":"1"}', {**JSON, "Idempotency-Key": "a key"}, "own", 422),
        ("/v1/plays", '{"videoId":"1"}', {**JSON, "Idempotency-Key": "k" * 201}, "own", 422),
        ("/v1/plays/", '{"videoId":"1"}', JSON, "own", 307),
    ],
)
async def test_plays_answer_as_fastapi(
    lean: App, framework: App, wire: App, path: str, body: str, headers: dict[str, str], token: str | None, status: int
) -> None:
    if token not in ("own", None):
        headers = {**headers, "Authorization": f"Bearer {token}"}
    own = token if token in ("own", None) else None
    got = await ask(lean, "POST", path, token=own, content=body, headers=headers)
    expected = await ask(framework, "POST", path, token=own, content=body, headers=headers)
    assert got == expected
    assert await ask(wire, "POST", path, token=own, content=body, headers=headers) == expected
    assert got[0] == status
    if status >= 400:
        assert got[1] == PROBLEM


async def test_a_play_waited_for_is_answered_with_its_decision_and_a_retry_with_its_key_gets_the_same(
    lean: App, framework: App
) -> None:
    answers = []
    for app in (lean, framework):
        user = await new_user(app.url, app.admin)
        async with api_client(app.url, user.token) as client:
            ask_once = {"json": {"videoId": "1", "deviceId": "tv"}, "headers": {"Idempotency-Key": "once"}}
            first = await client.post("/v1/plays?wait=5", **ask_once)
            again = await client.post("/v1/plays?wait=5", **ask_once)
        assert (first.status_code, again.status_code) == (200, 200)
        assert first.json() == again.json()
        answers.append(first.json())
    lean_answer, framework_answer = answers
    assert lean_answer["status"] == framework_answer["status"] == "allowed"
    assert list(lean_answer) == list(framework_answer)
    assert lean_answer["playbackUrl"].startswith("/v1/play/")


async def _playback_path(app: App, client: httpx.AsyncClient) -> tuple[str, str]:
    """An allowed stream's id and playback path (`/v1/play/{token}/master.m3u8`)."""
    decided = (await client.post("/v1/plays?wait=5", json={"videoId": "1"})).json()
    assert decided["status"] == "allowed", decided
    return decided["streamId"], decided["playbackUrl"].split("?")[0]


async def test_authorize_answers_as_fastapi(lean: App, framework: App) -> None:
    """Allowed (204 naming the stream), then refused once the stream is stopped; and bad tokens and paths."""
    answers: list[list[tuple[Any, ...]]] = []
    for app in (lean, framework):
        user = await new_user(app.url, app.admin)
        async with api_client(app.url, user.token) as client:
            stream_id, path = await _playback_path(app, client)
            token = path.split("/")[3]
            cases: list[dict[str, str]] = [
                {"X-Original-URI": path.replace("master.m3u8", "v0/chunk-00001.m4s")},
                {"X-Playback-Token": token},
                {"X-Original-URI": path.replace("master.m3u8", "..%2F..%2Fetc/passwd")},
                {"X-Original-URI": "/media/other/1.mp4", "X-Playback-Token": token},
                {"X-Original-URI": "/v1/play/forged-token/master.m3u8"},
                {"X-Playback-Token": "forged"},
                {},
            ]
            seen = []
            async with api_client(app.url) as edge:
                for headers in cases:
                    answer = await edge.get("/v1/authorize", headers=headers)
                    seen.append((answer.status_code, _same_shape(answer.text, user.id)))
                    if answer.status_code == 204:
                        assert answer.headers["x-stream-id"] == stream_id
                        assert answer.headers["x-user-id"] == user.id
                        assert answer.headers["x-video-id"] == "1"
                        assert "content-type" not in answer.headers
                by_query = await edge.get(f"/v1/authorize?token={token}")
                seen.append((by_query.status_code, by_query.text))
                assert (await client.delete(f"/v1/streams/{stream_id}")).status_code == 204
                ended = await edge.get("/v1/authorize", headers={"X-Playback-Token": token})
                seen.append((ended.status_code, _same_shape(ended.text, user.id)))
                seen.append(((await edge.post("/v1/authorize")).status_code, ""))
        answers.append(seen)
    assert answers[0] == answers[1]
    assert [status for status, _ in answers[0]] == [204, 204, 403, 403, 401, 401, 401, 204, 403, 405]


async def test_metrics_count_plays_and_authorize_by_template(lean: App) -> None:
    user = await new_user(lean.url, lean.admin)
    async with api_client(lean.url, user.token) as client:
        assert (await client.post("/v1/plays", json={"videoId": "1"})).status_code == 202
        assert (await client.get("/v1/authorize")).status_code == 401
        metrics = (await lean.admin.get("/metrics")).text
    assert 'route="/v1/plays",status="202"' in metrics
    assert 'route="/v1/authorize",status="401"' in metrics


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


async def _not_the_asgi_way(*_args: Any) -> None:
    raise AssertionError("a hot route went the ASGI way")


async def test_on_uvicorn_the_hot_routes_are_answered_below_asgi(wire: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the ASGI way to the hot routes failing, uvicorn's protocol still answers them, with the edge's headers,
    the caller's request id, and counts by route template."""

    monkeypatch.setattr(HotRoutes, "_answer", _not_the_asgi_way)
    user = await new_user(wire.url, wire.admin)
    async with api_client(wire.url, user.token) as client:
        asked = await client.get(f"/videos/2/request?user={user.id}", headers={"X-Request-Id": "rid-below-asgi"})
        assert asked.status_code == 202
        assert asked.headers["x-request-id"] == "rid-below-asgi"
        assert asked.headers["referrer-policy"] == "no-referrer"
        assert asked.json()["data"]["data"] == {"videoId": "2", "userId": user.id}
        stopped = await client.get(f"/videos/2/stop/?user={user.id}")
        assert (stopped.status_code, stopped.content) == (204, b"")
        played = await client.post("/v1/plays?wait=5", json={"videoId": "5"}, headers={"Idempotency-Key": "k-below"})
        assert (played.status_code, played.json()["status"]) == (200, "allowed")
        assert (await client.delete(f"/v1/streams/{played.json()['streamId']}")).status_code == 204
        refused = await client.delete("/v1/streams/x", headers={"Authorization": "Bearer nope"})
        assert (refused.status_code, refused.headers["content-type"]) == (401, PROBLEM)
        assert refused.headers["www-authenticate"] == "Bearer"
    metrics = (await wire.admin.get("/metrics")).text
    assert 'route="/videos/{videoId}/stop/",status="204"' in metrics
    assert 'route="/v1/streams/{streamId}",status="401"' in metrics


async def _exchange(url: str, raw: bytes, answers: int) -> list[bytes]:
    """Send `raw` on one TCP connection; the first `answers` answers read back (headers, then the body by its
    content-length), and b"EOF" after them if the server closed the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    got: list[bytes] = []
    try:
        writer.write(raw)
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = re.search(rb"content-length: (\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            got.append(head + body)
        if await asyncio.wait_for(reader.read(1), 10) == b"":
            got.append(b"EOF")
    finally:
        writer.close()
    return got


async def test_pipelined_requests_are_answered_in_order(wire: App) -> None:
    """Three requests in one write, a hot one, another behind it, then one of FastAPI's: three answers, in order;
    then an HTTP/1.0 request is answered and its connection closed."""
    user = await new_user(wire.url, wire.admin)
    auth = f"Authorization: Bearer {user.token}\r\nHost: t\r\n".encode()
    pipelined = (
        b"GET /videos/3/request?user=%s HTTP/1.1\r\n%sX-Request-Id: r1\r\n\r\n" % (user.id.encode(), auth)
        + b"GET /videos/3/stop?user=%s HTTP/1.1\r\n%sX-Request-Id: r2\r\n\r\n" % (user.id.encode(), auth)
        + b"GET /v1/streams HTTP/1.1\r\n%sX-Request-Id: r3\r\nConnection: close\r\n\r\n" % auth
    )
    answers = await _exchange(wire.url, pipelined, 3)
    assert [a.split(b" ", 2)[1] for a in answers[:3]] == [b"202", b"204", b"200"]
    assert [re.search(rb"x-request-id: (\w+)", a).group(1) for a in answers[:3]] == [b"r1", b"r2", b"r3"]
    assert answers[3:] == [b"EOF"]
    one_oh = b"GET /videos/3/stop?user=%s HTTP/1.0\r\n%s\r\n" % (user.id.encode(), auth)
    answers = await _exchange(wire.url, one_oh, 1)
    assert answers[0].startswith(b"HTTP/1.1 204 ")
    assert b"connection: close" in answers[0]
    assert answers[1:] == [b"EOF"]


async def test_a_client_gone_before_its_answer_leaves_the_request_done_and_the_server_answering(wire: App) -> None:
    """A play asked on a connection closed at once is still queued and decided (nothing is lost); the answer that
    found no one is dropped, and the next caller is answered."""
    user = await new_user(wire.url, wire.admin)
    host, port = wire.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /videos/4/request?user=%s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n"
        % (user.id.encode(), user.token.encode())
    )
    writer.close()
    async with api_client(wire.url, user.token) as client:
        streams: list[Any] = []
        for _ in range(100):  # bounded: the worker decides within a few batches
            streams = (await client.get("/v1/streams")).json()
            if streams:
                break
            await asyncio.sleep(0.05)
        assert [s["videoId"] for s in streams] == ["4"]
        assert (await client.get(f"/videos/4/stop?user={user.id}")).status_code == 204


async def _decided(client: httpx.AsyncClient, asked: httpx.Response) -> dict[str, Any]:
    """The decision of a seed request (202), once the worker has made it."""
    assert asked.status_code == 202, asked.text
    path = f"/v1/plays/{asked.json()['requestId']}"
    decided: dict[str, Any] = (await client.get(path)).json()
    for _ in range(100):  # bounded: the worker decides within a few batches
        if decided["status"] != "pending":
            break
        await asyncio.sleep(0.05)
        decided = (await client.get(path)).json()
    return decided


async def test_below_asgi_a_trusted_proxy_names_the_client(wire: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a trusted proxy (127.0.0.1, the default PLAYGATE_TRUSTED_PROXIES), X-Forwarded-For names the client,
    as ProxyHeadersMiddleware reads it for ASGI: a play from the household's network is not away; the second play
    from elsewhere is past maxAwayStreams."""
    monkeypatch.setattr(HotRoutes, "_answer", _not_the_asgi_way)
    plan = await wire.admin.post(
        "/v1/plans", json={"name": f"plan-{secrets.token_hex(4)}", "maxStreams": 4, "maxAwayStreams": 1}
    )
    assert plan.status_code == 201, plan.text
    user = await new_user(wire.url, wire.admin, limit=None, plan=plan.json()["id"])
    async with api_client(wire.url, user.token) as client:
        assert (await client.put("/v1/household", json={"networks": ["203.0.113.0/24"]})).status_code == 200

        async def play(video: str, address: str) -> dict[str, Any]:
            headers = {"X-Forwarded-For": address, "X-Forwarded-Proto": "https"}
            return await _decided(client, await client.get(f"/videos/{video}/request", headers=headers))

        # At home (else this play would be the one away, and the next denied), then away, then one away too many;
        # three plays: the wire app's user rate allows three at once.
        assert (await play("1", "203.0.113.50"))["status"] == "allowed"
        assert (await play("2", "192.0.2.1"))["status"] == "allowed"
        refused = await play("3", "192.0.2.1")
        assert (refused["status"], refused["reason"]) == ("denied", "household_limit")


def _count(metrics: str, labels: str) -> float:
    """playgate_http_requests_total with these labels in a /metrics text (0 if absent)."""
    for line in metrics.splitlines():
        if line.startswith(f"playgate_http_requests_total{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_below_asgi_a_play_fastapi_words_is_counted_once(wire: App) -> None:
    """A body the hot route hands to FastAPI (not JSON) is answered 422 by it on the same connection, and counted
    once, as is an accepted play."""
    user = await new_user(wire.url, wire.admin)
    before = (await wire.admin.get("/metrics")).text
    async with api_client(wire.url, user.token) as client:
        bad = await client.post("/v1/plays", content="not json", headers=JSON)
        assert (bad.status_code, bad.headers["content-type"]) == (422, PROBLEM)
        assert bad.headers["x-content-type-options"] == "nosniff"
        assert (await client.post("/v1/plays", json={"videoId": "6"})).status_code == 202
    after = (await wire.admin.get("/metrics")).text
    for labels in ('route="/v1/plays",status="422"', 'route="/v1/plays",status="202"'):
        assert _count(after, labels) - _count(before, labels) == 1


def test_the_protocol_reads_what_the_asgi_middlewares_read_in_one_pass() -> None:
    """Every X-Forwarded-For joined and the last X-Forwarded-Proto (as ProxyHeadersMiddleware reads them), the first
    of the other headers; a body refused where none is read, but for `Content-Length: 0`."""
    raw = [
        (b"authorization", b"Bearer t-1"),
        (b"x-forwarded-for", b"203.0.113.9"),
        (b"x-forwarded-proto", b"http"),
        (b"x-request-id", b"first"),
        (b"x-forwarded-for", b"10.0.0.2"),
        (b"x-forwarded-proto", b"https"),
        (b"x-request-id", b"second"),
        (b"content-length", b"0"),
    ]
    read = hot._read_headers(raw, hot._NO_BODY, hot._BELOW_ASGI_READS)
    assert read is not None
    credentials, headers = read
    assert credentials == ("Bearer t-1", None)  # as sent: deps.credential reads them when the caller is asked for
    assert headers[b"x-forwarded-for"] == "203.0.113.9, 10.0.0.2"
    assert headers[b"x-forwarded-proto"] == "https"
    assert headers[b"x-request-id"] == "first"
    assert b"content-length" not in headers
    assert hot._read_headers([*raw, (b"content-length", b"5")], hot._NO_BODY, hot._BELOW_ASGI_READS) is None
    with_body = hot._read_headers([(b"content-length", b"5")], hot._NOT_BELOW_ASGI, hot._BELOW_ASGI_READS)
    assert with_body == ((None, None), {b"content-length": "5"})


@pytest.mark.parametrize(
    "query",
    [
        b"",
        b"user=bench17",
        b"user=a&user=b",
        b"a&b=&=c&&d=1=2",
        b"user=x%20y+z",
        b"wait=2.5&user=b1",
        b"x=%zz",
        b"=",
        b"&&",
        b"a=b;c=d",
        b"user=\xe9",
    ],
)
def test_the_query_is_read_as_starlette_reads_it(query: bytes) -> None:
    assert hot.query_of(query) == dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
