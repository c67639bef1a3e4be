"""API keys for a platform's backend: scopes (admin, plays, read), both headers, revocation at once, the CLI."""

from __future__ import annotations

import httpx

from tests.integration.test_cli import playgate_here
from tests.integration.test_routes import assert_problem
from tests.support.clients import api_client, new_user
from tests.support.servers import ServerProcess


async def _key(admin: httpx.AsyncClient, scope: str) -> str:
    answer = await admin.post("/v1/keys", json={"name": f"backend-{scope}", "scope": scope})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["key"].startswith(f"pgk_{body['id']}_")
    assert (body["scope"], body["revokedAt"]) == (scope, None)
    return str(body["key"])


def _with(base_url: str, key: str, header: str = "bearer") -> httpx.AsyncClient:
    if header == "bearer":
        return api_client(base_url, key)
    client = api_client(base_url)
    client.headers["X-API-Key"] = key
    return client


async def test_a_plays_key_plays_lists_and_stops_for_any_user_but_reaches_no_admin_route(
    app_url: str, app_admin: httpx.AsyncClient
) -> None:
    user = await new_user(app_url, app_admin, limit=1)
    key = await _key(app_admin, "plays")
    async with _with(app_url, key, "x-api-key") as backend:
        played = await backend.post("/v1/plays?wait=5", json={"videoId": "1", "userId": user.id, "deviceId": "tv"})
        assert played.status_code == 200, played.text
        assert played.json()["status"] == "allowed"
        second = await backend.post("/v1/plays?wait=5", json={"videoId": "2", "userId": user.id})
        assert (second.json()["status"], second.json()["reason"]) == ("denied", "limit_reached")
        streams = (await backend.get("/v1/streams", params={"userId": user.id})).json()
        assert [s["videoId"] for s in streams] == ["1"]
        renewed = await backend.post(f"/v1/streams/{streams[0]['id']}/heartbeat")
        assert renewed.status_code == 200, renewed.text
        assert (await backend.delete("/v1/streams", params={"userId": user.id})).status_code == 204
        assert (await backend.get("/v1/streams", params={"userId": user.id})).json() == []
        # A key acts for a user it names, and is no admin.
        assert_problem(await backend.post("/v1/plays", json={"videoId": "1"}), 422, field="userId")
        for method, path in (("GET", "/v1/users"), ("POST", "/v1/keys"), ("PUT", "/v1/videos/k1")):
            assert_problem(await backend.request(method, path, json={"name": "x", "scope": "read"}), 403)


async def test_a_read_key_reads_but_cannot_play(app_url: str, app_admin: httpx.AsyncClient) -> None:
    user = await new_user(app_url, app_admin)
    key = await _key(app_admin, "read")
    async with _with(app_url, key) as reader:
        assert (await reader.get("/v1/users")).status_code == 200
        assert (await reader.get(f"/v1/users/{user.id}")).json()["name"] == user.name
        assert (await reader.get("/v1/streams", params={"userId": user.id})).json() == []
        assert_problem(await reader.post("/v1/plays", json={"videoId": "1", "userId": user.id}), 403)
        assert_problem(await reader.get(f"/videos/1/request?user={user.id}"), 403)
        assert_problem(await reader.delete("/v1/streams", params={"userId": user.id}), 403)
        assert_problem(await reader.patch(f"/v1/users/{user.id}", json={"limit": 9}), 403)


async def test_a_revoked_key_stops_at_once_and_the_list_shows_when_keys_were_used(
    app_url: str, app_admin: httpx.AsyncClient
) -> None:
    key = await _key(app_admin, "admin")
    key_id = key.split("_")[1]
    async with _with(app_url, key) as backend:
        assert (await backend.get("/v1/videos")).status_code == 200
        listed = {k["id"]: k for k in (await app_admin.get("/v1/keys")).json()}
        assert listed[key_id]["lastUsedAt"] is not None
        assert "key" not in listed[key_id]
        assert (await app_admin.delete(f"/v1/keys/{key_id}")).status_code == 204
        assert_problem(await backend.get("/v1/videos"), 401)
    assert_problem(await app_admin.delete("/v1/keys/no-such-key"), 404)
    listed = {k["id"]: k for k in (await app_admin.get("/v1/keys")).json()}
    assert listed[key_id]["revokedAt"] is not None
    async with _with(app_url, key[:-1] + ("A" if key[-1] != "A" else "B")) as forged:
        assert_problem(await forged.get("/v1/videos"), 401)


async def test_keys_from_the_command_line(server: ServerProcess) -> None:
    # The commands in this process, against the server process's database: a key the command revokes is refused
    # by the server at once.
    created = await playgate_here(server.data_dir, "keys", "create", "--name", "cli backend", "--scope", "read")
    assert created.exit_code == 0, created.stderr
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    assert "not shown again" in created.stderr
    async with _with(server.base_url, key) as reader:
        assert (await reader.get("/v1/plans")).status_code == 200
        listed = await playgate_here(server.data_dir, "keys", "list")
        line = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
        assert line.split("\t")[1:3] == ["read", "cli backend"]
        assert key not in listed.stdout
        assert (await playgate_here(server.data_dir, "keys", "revoke", key_id)).exit_code == 0
        assert (await reader.get("/v1/plans")).status_code == 401
    # A name POST /v1/keys refuses is refused here too (an empty one was created; a tab broke `keys list`'s line).
    for name, said in (("", "at least 1 character"), ("a\tb", "no control characters")):
        refused = await playgate_here(server.data_dir, "keys", "create", "--name", name, "--scope", "read")
        assert refused.exit_code == 2, refused.stdout
        assert said in refused.stderr


async def test_the_openapi_document_describes_both_schemes_and_the_new_routes(app_url: str) -> None:
    async with api_client(app_url) as client:
        document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert (schemes["APIKeyHeader"]["in"], schemes["APIKeyHeader"]["name"]) == ("header", "X-API-Key")
    paths = document["paths"]
    for path, method in (
        ("/v1/keys", "post"),
        ("/v1/keys/{keyId}", "delete"),
        ("/v1/users/{userId}", "put"),
        ("/v1/plans/{planId}", "put"),
        ("/v1/videos/{videoId}", "put"),
        ("/v1/users:import", "post"),
        ("/v1/videos:import", "post"),
        ("/v1/plans:import", "post"),
    ):
        assert paths[path][method].get("description"), (path, method)


async def test_a_request_presents_one_credential_and_a_malformed_one_is_not_passed_over(
    both_ways: tuple[str, httpx.AsyncClient],
) -> None:
    """Schemathesis found an `Authorization` header of another scheme passed over for a valid X-API-Key."""
    url, admin = both_ways
    user = await new_user(url, admin)
    key = await _key(admin, "plays")
    token = admin.headers["Authorization"].removeprefix("Bearer ")
    calls = (
        ("GET", f"/v1/streams?userId={user.id}", None, 200),
        ("POST", "/v1/plays", {"videoId": "1", "userId": user.id}, 202),
    )
    async with api_client(url) as client:
        for method, path, body, status in calls:
            for headers in (
                {"X-API-Key": key, "Authorization": "Basic Zm9vOmJhcg=="},
                {"X-API-Key": key, "Authorization": "Bearer"},
                {"X-API-Key": key, "Authorization": f"Bearer {token}"},  # two different credentials
                {"X-API-Key": "pgk_forged", "Authorization": f"Bearer {token}"},
            ):
                answer = await client.request(method, path, json=body, headers=headers)
                assert_problem(answer, 401)
            # One credential, in either header or in both alike, is taken; an empty header is none.
            for headers in (
                {"X-API-Key": key},
                {"Authorization": f"Bearer {key}"},
                {"X-API-Key": key, "Authorization": f"Bearer {key}"},
                {"X-API-Key": key, "Authorization": ""},
            ):
                answer = await client.request(method, path, json=body, headers=headers)
                assert answer.status_code == status, (headers, answer.text)
