"""Every route of API.md: answers, errors (problem+json) and who may see what; in-process (httpx.ASGITransport
over create_app), since none of this needs a socket."""

from __future__ import annotations

import httpx
import pytest

from tests.support.clients import TestUser, api_client, decided, new_user

PROBLEM = "application/problem+json"

# base_url and admin in this process (tests/conftest.py).
pytestmark = pytest.mark.inprocess


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    if field is not None:
        assert body["field"] == field, body
    return dict(body)


# ---- health and auth ------------------------------------------------------------------------------------


async def test_health_routes(base_url: str) -> None:
    async with api_client(base_url) as client:
        root = await client.get("/")
        assert root.status_code == 200
        assert root.json()["status"] == "ok"
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert set(ready.json()["checks"].values()) == {"ok"}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        for name in (
            "playgate_decisions_total",
            "playgate_decision_latency_seconds_bucket",
            "playgate_queue_depth",
            "playgate_active_streams",
            "playgate_sockets_connected",
        ):
            assert name in metrics.text


async def test_login_json_and_form(base_url: str) -> None:
    async with api_client(base_url) as client:
        as_json = await client.post("/auth/token", json={"username": "user1", "password": "user1"})
        assert as_json.status_code == 200
        body = as_json.json()
        assert body["tokenType"] == "bearer"
        assert body["expiresIn"] > 0
        assert body["user"] == {
            "id": "1",
            "name": "user1",
            "limit": 3,
            "ownLimit": 3,
            "plan": None,
            "disabled": False,
            "admin": False,
            "household": [],
        }
        as_form = await client.post("/auth/token", data={"username": "user2", "password": "user2"})
        assert as_form.status_code == 200
        assert as_form.json()["user"]["id"] == "2"
        # An OAuth2 client's form carries more than the two fields; RFC 6749 §3.2 has them ignored, and the schema
        # says so. JSON takes the two fields alone.
        oauth2 = {"grant_type": "password", "username": "user2", "password": "user2", "scope": "", "client_id": "tv"}
        assert (await client.post("/auth/token", data=oauth2)).status_code == 200
        assert (await client.post("/auth/token", files={k: (None, v) for k, v in oauth2.items()})).status_code == 200
        assert_problem(await client.post("/auth/token", json=oauth2), 422, "grant_type")
        content = (await client.get("/openapi.json")).json()["paths"]["/auth/token"]["post"]["requestBody"]["content"]
        assert content["application/json"]["schema"]["additionalProperties"] is False
        for form in ("application/x-www-form-urlencoded", "multipart/form-data"):
            assert content[form]["schema"]["additionalProperties"] is True


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "user1", "password": "wrong"},
        {"username": "nobody", "password": "user1"},
    ],
)
async def test_wrong_credentials_are_401(base_url: str, credentials: dict[str, str]) -> None:
    async with api_client(base_url) as client:
        assert_problem(await client.post("/auth/token", json=credentials), 401)


async def test_login_input_errors_name_the_field(base_url: str) -> None:
    async with api_client(base_url) as client:
        assert_problem(await client.post("/auth/token", json={"username": "user1"}), 422, "password")
        assert_problem(
            await client.post("/auth/token", content=b"{not json", headers={"content-type": "application/json"}), 422
        )
        assert_problem(await client.post("/auth/token", json={"username": 5, "password": "x"}), 422, "username")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-token", "Basic dXNlcjE6dXNlcjE=", "Bearer " + "a.b.c"],
)
async def test_protected_routes_need_a_valid_token(base_url: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with api_client(base_url) as client:
        client.headers.update(headers)
        for method, path in (
            ("GET", "/users"),
            ("GET", "/users/1"),
            ("GET", "/users/1/streams"),
            ("GET", "/videos/1/request?user=1"),
            ("GET", "/videos/1/stop?user=1"),
            ("GET", "/videos/stop?user=1"),
            ("POST", "/v1/plays"),
            ("GET", "/v1/streams"),
            ("GET", "/v1/users"),
        ):
            response = await client.request(method, path, json={"videoId": "1"} if method == "POST" else None)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"


# ---- seed routes ----------------------------------------------------------------------------------------


async def test_videos_are_public(base_url: str) -> None:
    async with api_client(base_url) as client:
        videos = (await client.get("/videos")).json()
        assert [v["id"] for v in videos][:6] == ["1", "2", "3", "4", "5", "6"]
        assert (await client.get("/videos/3")).json()["title"] == "video3"
        assert_problem(await client.get("/videos/nope"), 404)


async def test_users_routes_for_admin(base_url: str, admin: httpx.AsyncClient) -> None:
    users = (await admin.get("/users")).json()
    names = {u["name"] for u in users}
    assert {"user1", "user2", "user3", "admin"} <= names
    assert all("password" not in u and "passwordHash" not in u for u in users)
    user2 = (await admin.get("/users", params={"name": "user2"})).json()
    assert (user2["id"], user2["limit"]) == ("2", 4)
    assert_problem(await admin.get("/users", params={"name": "nobody"}), 404)
    assert (await admin.get("/users/3")).json()["name"] == "user3"
    assert_problem(await admin.get("/users/nope"), 404)


async def test_a_user_sees_only_themself(base_url: str, admin: httpx.AsyncClient) -> None:
    alice = await new_user(base_url, admin)
    bob = await new_user(base_url, admin)
    async with api_client(base_url, alice.token) as client:
        assert (await client.get(f"/users/{alice.id}")).json()["name"] == alice.name
        assert (await client.get(f"/users/{alice.id}/streams")).json() == []
        assert_problem(await client.get(f"/users/{bob.id}"), 403)
        assert_problem(await client.get(f"/users/{bob.id}/streams"), 403)
        assert_problem(await client.get("/users"), 403)
        assert_problem(await client.get(f"/videos/1/request?user={bob.id}"), 403)
        assert_problem(await client.get(f"/videos/1/stop?user={bob.id}"), 403)
        assert_problem(await client.get(f"/videos/stop?user={bob.id}"), 403)
        assert_problem(await client.get("/v1/users"), 403)


async def test_seed_request_shape_and_unknown_ids(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    async with api_client(base_url, user.token) as client:
        response = await client.get(f"/videos/2/request?user={user.id}")
        assert response.status_code == 202
        body = response.json()
        assert body["message"] == "Streaming request created."
        assert body["data"] == {"status": "pending", "data": {"videoId": "2", "userId": user.id}}
        decision = await decided(client, body["requestId"])
        assert decision["status"] == "allowed"
        assert_problem(await client.get(f"/videos/nope/request?user={user.id}"), 404)
        streams = (await client.get(f"/users/{user.id}/streams")).json()
        assert [s["videoId"] for s in streams] == ["2"]
        assert (await client.get(f"/videos/2/stop?user={user.id}")).status_code == 204
        assert (await client.get(f"/videos/2/stop?user={user.id}")).status_code == 204
        assert (await client.get(f"/users/{user.id}/streams")).json() == []
    # an admin asking for a user that does not exist: 404 before anything is queued
    assert_problem(await admin.get("/videos/1/request?user=no-such-user"), 404)


async def test_stop_all_seed_route(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    async with api_client(base_url, user.token) as client:
        for video in ("1", "2"):
            await decided(client, (await client.get(f"/videos/{video}/request?user={user.id}")).json()["requestId"])
        assert len((await client.get("/v1/streams")).json()) == 2
        assert (await client.get(f"/videos/stop?user={user.id}")).status_code == 204
        assert (await client.get("/v1/streams")).json() == []
        # ?user= may be left out: the caller is the user
        assert (await client.get("/videos/stop")).status_code == 204


TOKEN = "X-Playback-Token"

# ---- /v1 plays and streams ------------------------------------------------------------------------------


async def test_play_with_wait_heartbeat_and_stop(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin, limit=1)
    async with api_client(base_url, user.token) as client:
        allowed = await client.post("/v1/plays?wait=5", json={"videoId": "1", "deviceId": "tv"})
        assert allowed.status_code == 200
        play = allowed.json()
        assert (play["status"], play["active"], play["limit"]) == ("allowed", 1, 1)
        stream_id = play["streamId"]
        assert (await client.get(f"/v1/plays/{play['requestId']}")).json()["streamId"] == stream_id
        streams = (await client.get("/v1/streams")).json()
        assert [(s["id"], s["deviceId"], s["videoId"], s["userId"]) for s in streams] == [
            (stream_id, "tv", "1", user.id)
        ]
        assert streams[0]["startedAt"].endswith("Z")

        denied = (await client.post("/v1/plays?wait=5", json={"videoId": "2", "deviceId": "phone"})).json()
        assert (denied["status"], denied["reason"], denied["active"]) == ("denied", "limit_reached", 1)
        assert denied.get("streamId") is None

        # the same device asking again for what it plays keeps its stream
        again = (await client.post("/v1/plays?wait=5", json={"videoId": "1", "deviceId": "tv"})).json()
        assert (again["status"], again["streamId"]) == ("allowed", stream_id)

        beat = await client.post(f"/v1/streams/{stream_id}/heartbeat")
        assert beat.status_code == 200
        assert beat.json()["expiresAt"].endswith("Z")
        # with the stream's playback token (the outage policy honours it anywhere); a bad one names the header
        token = play["playbackToken"]
        assert token == play["playbackUrl"].split("/")[3], "the token the playback URL carries"
        assert beat.json()["playbackToken"] == beat.json()["playbackUrl"].split("/")[3]
        assert (await client.post(f"/v1/streams/{stream_id}/heartbeat", headers={TOKEN: token})).status_code == 200
        for bad in ("not-a-token", token[:-2]):
            assert_problem(await client.post(f"/v1/streams/{stream_id}/heartbeat", headers={TOKEN: bad}), 422, TOKEN)
        assert (await client.delete(f"/v1/streams/{stream_id}")).status_code == 204
        assert_problem(await client.delete(f"/v1/streams/{stream_id}"), 404)
        assert_problem(await client.post(f"/v1/streams/{stream_id}/heartbeat"), 404)
        assert (await client.delete("/v1/streams")).status_code == 204


async def test_play_without_wait_is_202_pending(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    async with api_client(base_url, user.token) as client:
        response = await client.post("/v1/plays", json={"videoId": "3"})
        assert response.status_code == 202
        assert response.json()["status"] in {"pending"}
        assert (await decided(client, response.json()["requestId"]))["status"] == "allowed"


async def test_a_user_with_a_long_id_finds_its_requests(base_url: str, admin: httpx.AsyncClient) -> None:
    """A request id names its user (as hex), so a 64-character user id makes a request id of 153 characters:
    GET /v1/plays/{requestId} takes it (it answered 422 for ids past 64 characters, `playgate chaos` found it)."""
    user_id = "u" * 64
    assert (await admin.put(f"/v1/users/{user_id}", json={"limit": 1})).status_code in (200, 201)
    play = (await admin.post("/v1/plays?wait=5", json={"videoId": "1", "userId": user_id})).json()
    assert len(play["requestId"]) > 64
    found = await admin.get(f"/v1/plays/{play['requestId']}")
    assert found.status_code == 200, found.text
    assert found.json()["status"] == play["status"] == "allowed"
    assert_problem(await admin.get(f"/v1/plays/{'a' * 161}"), 422, "requestId")


def _decided(answer: dict[str, object]) -> dict[str, object]:
    """A play's answer without its playback link and token, which are issued afresh (their expiry from now) each
    time the decision is told."""
    return {k: v for k, v in answer.items() if k not in ("playbackUrl", "playbackToken")}


async def test_idempotency_key_gives_the_same_request_and_decision(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin, limit=1)
    async with api_client(base_url, user.token) as client:
        headers = {"Idempotency-Key": "play-42"}
        first = (await client.post("/v1/plays?wait=5", json={"videoId": "1"}, headers=headers)).json()
        second = (await client.post("/v1/plays?wait=5", json={"videoId": "1"}, headers=headers)).json()
        assert _decided(first) == _decided(second)
        assert first["status"] == "allowed"
        assert len((await client.get("/v1/streams")).json()) == 1
        # the same key for another request is a client error, not a silent new request nor the first one's answer:
        # another video, device, device name or streams to replace
        for other_body in (
            {"videoId": "2"},
            {"videoId": "1", "deviceId": "phone"},
            {"videoId": "1", "deviceName": "Den TV"},
            {"videoId": "1", "replaceOthers": True},
            {"videoId": "1", "replaceStreamIds": [first["streamId"]]},
        ):
            refused = await client.post("/v1/plays", json=other_body, headers=headers)
            assert_problem(refused, 422, "Idempotency-Key")
        # what is not part of the request is not compared: how long the answer waits
        again = await client.post("/v1/plays?wait=1", json={"videoId": "1"}, headers=headers)
        assert _decided(again.json()) == _decided(first)
    # keys are scoped to the user
    other = await new_user(base_url, admin, limit=1)
    async with api_client(base_url, other.token) as client:
        mine = (
            await client.post("/v1/plays?wait=5", json={"videoId": "1"}, headers={"Idempotency-Key": "play-42"})
        ).json()
        assert mine["requestId"] != first["requestId"]


async def test_plays_of_others_are_not_found(base_url: str, admin: httpx.AsyncClient) -> None:
    alice = await new_user(base_url, admin)
    bob = await new_user(base_url, admin)
    async with api_client(base_url, alice.token) as client:
        play = (await client.post("/v1/plays?wait=5", json={"videoId": "1"})).json()
    async with api_client(base_url, bob.token) as client:
        assert_problem(await client.get(f"/v1/plays/{play['requestId']}"), 404)
        assert_problem(await client.delete(f"/v1/streams/{play['streamId']}"), 404)
        assert_problem(await client.post(f"/v1/streams/{play['streamId']}/heartbeat"), 404)
        assert_problem(await client.get("/v1/plays/unknown-request"), 404)
    async with api_client(base_url, alice.token) as client:
        assert len((await client.get("/v1/streams")).json()) == 1


@pytest.mark.parametrize(
    ("query", "body", "field"),
    [
        ("", {}, "videoId"),
        ("", {"videoId": 5}, "videoId"),
        ("", {"videoId": ""}, "videoId"),
        ("", {"videoId": "1", "deviceId": ""}, "deviceId"),
        ("", {"videoId": "1", "extra": True}, "extra"),
        ("?wait=soon", {"videoId": "1"}, "wait"),
        ("?wait=-1", {"videoId": "1"}, "wait"),
        ("?wait=nan", {"videoId": "1"}, "wait"),
    ],
)
async def test_play_input_errors_name_the_field(
    base_url: str, admin: httpx.AsyncClient, query: str, body: dict[str, object], field: str
) -> None:
    user = await new_user(base_url, admin)
    async with api_client(base_url, user.token) as client:
        assert_problem(await client.post(f"/v1/plays{query}", json=body), 422, field)
        assert_problem(await client.post("/v1/plays", json={"videoId": "no-such-video"}), 404)


async def test_large_wait_is_taken_as_ten_seconds(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    async with api_client(base_url, user.token) as client:
        response = await client.post("/v1/plays?wait=99999", json={"videoId": "1"})
        assert response.status_code == 200


# ---- admin management ------------------------------------------------------------------------------------


async def test_admin_manages_plans_users_and_videos(base_url: str, admin: httpx.AsyncClient) -> None:
    plan = await admin.post("/v1/plans", json={"name": f"family-{id(admin)}", "maxStreams": 4})
    assert plan.status_code == 201
    plan_id = plan.json()["id"]
    assert (await admin.get(f"/v1/plans/{plan_id}")).json()["maxStreams"] == 4
    assert plan_id in {p["id"] for p in (await admin.get("/v1/plans")).json()}

    created = await admin.post("/v1/users", json={"name": f"carol-{plan_id}", "password": "pw-carol", "plan": plan_id})
    assert created.status_code == 201
    carol = created.json()
    assert (carol["limit"], carol["ownLimit"], carol["plan"]) == (4, None, plan_id)
    assert "password" not in carol

    # the plan's limit follows through; an own limit wins; null falls back to the plan again
    assert (await admin.patch(f"/v1/plans/{plan_id}", json={"maxStreams": 2})).json()["maxStreams"] == 2
    assert (await admin.get(f"/v1/users/{carol['id']}")).json()["limit"] == 2
    assert (await admin.patch(f"/v1/users/{carol['id']}", json={"limit": 5})).json()["limit"] == 5
    assert (await admin.patch(f"/v1/users/{carol['id']}", json={"limit": None})).json()["limit"] == 2
    assert_problem(await admin.delete(f"/v1/plans/{plan_id}"), 409)
    assert (await admin.patch(f"/v1/users/{carol['id']}", json={"plan": None})).json()["limit"] == 3
    assert (await admin.delete(f"/v1/plans/{plan_id}")).status_code == 204
    assert_problem(await admin.get(f"/v1/plans/{plan_id}"), 404)

    # a changed password works at once; a taken name is a conflict
    await admin.patch(f"/v1/users/{carol['id']}", json={"password": "pw-new"})
    async with api_client(base_url) as anonymous:
        login = await anonymous.post("/auth/token", json={"username": carol["name"], "password": "pw-new"})
        assert login.status_code == 200
    assert_problem(await admin.post("/v1/users", json={"name": carol["name"], "password": "x"}), 409, "name")
    # ... also with a change that ends the user's tokens (found by schemathesis: a 500), and it changes nothing
    before = (await admin.get(f"/v1/users/{carol['id']}")).json()
    renamed = await admin.patch(
        f"/v1/users/{carol['id']}", json={"name": "admin", "password": "pw-other", "disabled": True}
    )
    assert_problem(renamed, 409, "name")
    assert (await admin.get(f"/v1/users/{carol['id']}")).json() == before
    async with api_client(base_url) as anonymous:
        login = await anonymous.post("/auth/token", json={"username": carol["name"], "password": "pw-new"})
        assert login.status_code == 200
    assert_problem(
        await admin.post("/v1/users", json={"name": "dave", "password": "x", "plan": "no-plan"}), 422, "plan"
    )
    assert_problem(await admin.post("/v1/users", json={"name": "dave", "password": "x", "limit": -1}), 422, "limit")
    assert (await admin.delete(f"/v1/users/{carol['id']}")).status_code == 204
    assert_problem(await admin.get(f"/v1/users/{carol['id']}"), 404)
    assert_problem(await admin.delete(f"/v1/users/{carol['id']}"), 404)

    video = await admin.post("/v1/videos", json={"title": "Kick-off", "url": "https://cdn.example/kick.mp4"})
    assert video.status_code == 201
    video_id = video.json()["id"]
    assert (await admin.patch(f"/v1/videos/{video_id}", json={"title": "Kick-off (live)"})).json()[
        "title"
    ] == "Kick-off (live)"
    async with api_client(base_url) as anonymous:
        assert (await anonymous.get(f"/videos/{video_id}")).json()["title"] == "Kick-off (live)"
    assert video_id in {v["id"] for v in (await admin.get("/v1/videos")).json()}
    assert (await admin.delete(f"/v1/videos/{video_id}")).status_code == 204
    assert_problem(await admin.get(f"/v1/videos/{video_id}"), 404)
    assert_problem(await admin.post("/v1/videos", json={"title": "no url"}), 422, "url")


async def test_disabling_a_user_ends_their_streams_and_their_token(base_url: str, admin: httpx.AsyncClient) -> None:
    user: TestUser = await new_user(base_url, admin)
    async with api_client(base_url, user.token) as client:
        assert (await client.post("/v1/plays?wait=5", json={"videoId": "1"})).json()["status"] == "allowed"
        await admin.patch(f"/v1/users/{user.id}", json={"disabled": True})
        assert (await admin.get(f"/users/{user.id}/streams")).json() == []
        assert_problem(await client.get("/v1/streams"), 401)
        async with api_client(base_url) as anonymous:
            login = await anonymous.post("/auth/token", json={"username": user.name, "password": user.password})
            assert "disabled" in str(assert_problem(login, 403)["detail"])
            wrong = await anonymous.post("/auth/token", json={"username": user.name, "password": "not it"})
            assert_problem(wrong, 401)


async def test_admin_stops_anyones_stream(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    async with api_client(base_url, user.token) as client:
        play = (await client.post("/v1/plays?wait=5", json={"videoId": "1"})).json()
    assert (await admin.delete(f"/v1/streams/{play['streamId']}")).status_code == 204
    assert (await admin.get(f"/users/{user.id}/streams")).json() == []


async def test_openapi_lists_every_route(base_url: str) -> None:
    async with api_client(base_url) as client:
        paths = set((await client.get("/openapi.json")).json()["paths"])
    assert {
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/auth/token",
        "/users",
        "/users/{userId}",
        "/users/{userId}/streams",
        "/videos",
        "/videos/{videoId}",
        "/videos/{videoId}/request",
        "/videos/{videoId}/stop",
        "/videos/stop",
        "/v1/plays",
        "/v1/plays/{requestId}",
        "/v1/streams",
        "/v1/streams/{streamId}",
        "/v1/streams/{streamId}/heartbeat",
        "/v1/users",
        "/v1/users/{userId}",
        "/v1/videos",
        "/v1/videos/{videoId}",
        "/v1/plans",
        "/v1/plans/{planId}",
    } <= paths
