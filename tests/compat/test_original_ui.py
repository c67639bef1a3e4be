"""The original service's web UI against PlayGate in auth-disabled mode on another origin: its calls, in its order
(trailing slashes included), and its socket.io-client 2 socket; CORS headers on every answer it gets."""

from __future__ import annotations

import httpx
import pytest

from tests.compat.conftest import UI_ORIGIN
from tests.compat.node import run_original_ui
from tests.support.servers import ServerProcess

# The original's routes as its clients call them; each must answer itself, with and without a trailing slash.
SEED_PATHS = [
    "/users?name=user3",
    "/users/3",
    "/users/3/streams",
    "/videos",
    "/videos/5",
    "/videos/5/stop?user=3",
    "/videos/stop?user=3",
]


@pytest.mark.usefixtures("node_clients")
async def test_log_in_play_three_refused_the_fourth_stop_one_play_again_log_out(open_server: ServerProcess) -> None:
    transcript = await run_original_ui(open_server.base_url, UI_ORIGIN)
    assert [call["path"] for call in transcript["calls"]] == [
        "/users/?name=user1",
        "/videos",
        "/users/1/streams",
        "/videos/1/request/?user=1",
        "/videos/2/request/?user=1",
        "/videos/3/request/?user=1",
        "/videos/4/request/?user=1",
        "/videos/1/stop/?user=1",
        "/videos/4/request/?user=1",
        "/videos/stop/?user=1",
    ]
    assert [call["status"] for call in transcript["calls"]] == [200, 200, 200, 202, 202, 202, 202, 204, 202, 204]
    assert {call["allowOrigin"] for call in transcript["calls"]} == {UI_ORIGIN}
    shown = [(f["videoId"], f["feedback"]) for f in transcript["feedback"] if f["status"] != "pending"]
    assert shown == [
        ("1", "Playing..."),
        ("2", "Playing..."),
        ("3", "Playing..."),
        ("4", "Limit exceeded."),
        ("1", ""),
        ("4", "Playing..."),
    ]
    assert transcript["socket"]["transport"] == "websocket", "the v2 socket upgrades from polling"
    async with httpx.AsyncClient(base_url=open_server.base_url) as client:
        assert (await client.get("/users/1/streams")).json() == [], "log-out stopped every stream"


@pytest.mark.parametrize("path", SEED_PATHS)
async def test_seed_routes_answer_with_and_without_a_trailing_slash(open_server: ServerProcess, path: str) -> None:
    slashed = path.replace("?", "/?") if "?" in path else f"{path}/"
    async with httpx.AsyncClient(base_url=open_server.base_url, headers={"Origin": UI_ORIGIN}) as client:
        plain, with_slash = await client.get(path), await client.get(slashed)
    assert with_slash.status_code == plain.status_code < 300, (with_slash.status_code, with_slash.text)
    assert with_slash.content == plain.content
    for response in (plain, with_slash):
        assert response.headers["access-control-allow-origin"] == UI_ORIGIN


@pytest.mark.parametrize("path", [p.split("?")[0] for p in SEED_PATHS] + ["/videos/5/request/", "/socket.io/"])
async def test_cors_preflight_from_the_uis_origin(open_server: ServerProcess, path: str) -> None:
    headers = {"Origin": UI_ORIGIN, "Access-Control-Request-Method": "GET"}
    query = {"EIO": "3", "transport": "polling"} if path.startswith("/socket.io") else {}
    async with httpx.AsyncClient(base_url=open_server.base_url) as client:
        response = await client.options(path, headers=headers, params=query)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "GET" in response.headers["access-control-allow-methods"]


async def test_another_origin_is_refused(open_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=open_server.base_url, headers={"Origin": "http://evil.test"}) as client:
        api = await client.get("/videos")
        socket = await client.get("/socket.io/", params={"EIO": "3", "transport": "polling"})
    assert "access-control-allow-origin" not in api.headers
    assert socket.status_code == 400
    assert "access-control-allow-origin" not in socket.headers


async def test_problem_answers_carry_the_cors_headers_too(open_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=open_server.base_url, headers={"Origin": UI_ORIGIN}) as client:
        unknown_video = await client.get("/videos/999/request/", params={"user": "1"})
        unknown_user = await client.get("/users/", params={"name": "nobody"})
    for response in (unknown_video, unknown_user):
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["access-control-allow-origin"] == UI_ORIGIN
