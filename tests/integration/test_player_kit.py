"""What players rely on, in process: denials with their conflicts, issued device ids and their secrets, device names,
one stream per device under concurrent requests, "Watch here", log-out of one device, the beacon stop of a page
being closed, and why a refused stream ended."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.support.clients import api_client
from tests.support.inprocess import served
from tests.support.servers import ADMIN_PASSWORD

CHROME_ON_LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


@pytest_asyncio.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """PlayGate with the default settings (device ids: any; one stream per device), shared by the module."""
    async with served(Path(tmp_path_factory.mktemp("kit"))) as base_url, api_client(base_url) as client:
        yield client


async def log_in(client: httpx.AsyncClient, name: str, password: str) -> dict[str, str]:
    """The Authorization header of `name` (asserts the log-in worked)."""
    response = await client.post("/auth/token", json={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


async def user_with_limit(client: httpx.AsyncClient, limit: int) -> dict[str, str]:
    """A new user with its own limit; its Authorization header."""
    return (await account_with_limit(client, limit))[0]


async def account_with_limit(client: httpx.AsyncClient, limit: int) -> tuple[dict[str, str], str]:
    """A new user with its own limit; its Authorization header and its id."""
    admin = await log_in(client, "admin", ADMIN_PASSWORD)
    name = f"u-{secrets.token_hex(4)}"
    created = await client.post("/v1/users", json={"name": name, "password": name, "limit": limit}, headers=admin)
    assert created.status_code == 201, created.text
    return await log_in(client, name, name), str(created.json()["id"])


async def play(client: httpx.AsyncClient, auth: dict[str, str], video: str, **body: object) -> dict[str, object]:
    response = await client.post("/v1/plays?wait=5", json={"videoId": video, **body}, headers=auth)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_a_denial_carries_its_conflicts_with_wait_and_when_looked_up(app: httpx.AsyncClient) -> None:
    auth = await user_with_limit(app, 1)
    allowed = await play(app, auth, "1", deviceId="tv", deviceName="Living-room TV")
    assert allowed["conflicts"] is None
    denied = await play(app, auth, "2", deviceId="phone")
    assert (denied["status"], denied["reason"]) == ("denied", "limit_reached")
    looked_up = (await app.get(f"/v1/plays/{denied['requestId']}", headers=auth)).json()
    for answer in (denied, looked_up):
        [conflict] = answer["conflicts"]
        assert conflict["streamId"] == allowed["streamId"]
        assert (conflict["videoId"], conflict["deviceId"], conflict["deviceName"]) == ("1", "tv", "Living-room TV")
        assert {"startedAt", "lastSeenAt"} <= conflict.keys()


async def test_a_device_is_named_from_its_user_agent_unless_the_viewer_names_it(app: httpx.AsyncClient) -> None:
    auth = await user_with_limit(app, 3)
    await play(app, auth, "1", deviceId="browser")
    await play(app, {**auth, "User-Agent": CHROME_ON_LINUX}, "2", deviceId="laptop")
    streams = (await app.get("/v1/streams", headers=auth)).json()
    assert {s["deviceId"]: s["deviceName"] for s in streams} == {"browser": "", "laptop": "Chrome on Linux"}


async def test_the_next_episode_on_the_same_device_replaces_its_stream_at_once(app: httpx.AsyncClient) -> None:
    auth = await user_with_limit(app, 1)
    first = await play(app, auth, "1", deviceId="tv")
    second = await play(app, auth, "2", deviceId="tv")
    assert second["status"] == "allowed"
    [stream] = (await app.get("/v1/streams", headers=auth)).json()
    assert (stream["id"], stream["videoId"]) == (second["streamId"], "2")
    assert stream["id"] != first["streamId"]


async def test_concurrent_next_episodes_never_exceed_the_limit(app: httpx.AsyncClient) -> None:
    auth = await user_with_limit(app, 2)
    # Three devices, each asking for episode after episode at once: the limit holds at every decision.
    answers = await asyncio.gather(
        *(
            app.post("/v1/plays?wait=10", json={"videoId": str(1 + n % 6), "deviceId": f"d{n % 3}"}, headers=auth)
            for n in range(24)
        )
    )
    decisions = [a.json() for a in answers]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert all(d["active"] <= 2 for d in decisions)
    assert any(d["status"] == "allowed" for d in decisions)
    streams = (await app.get("/v1/streams", headers=auth)).json()
    assert len(streams) <= 2
    assert len({s["deviceId"] for s in streams}) == len(streams), "one stream per device"


async def test_log_out_of_one_device_leaves_the_others_playing(app: httpx.AsyncClient) -> None:
    auth = await user_with_limit(app, 3)
    await play(app, auth, "1", deviceId="tv")
    phone = await play(app, auth, "2", deviceId="phone")
    assert (await app.delete("/v1/streams?deviceId=tv", headers=auth)).status_code == 204
    assert [s["id"] for s in (await app.get("/v1/streams", headers=auth)).json()] == [phone["streamId"]]
    assert (await app.delete("/v1/streams", headers=auth)).status_code == 204  # sign out of all devices
    assert (await app.get("/v1/streams", headers=auth)).json() == []


async def test_a_beacon_stops_the_stream_with_the_token_in_its_body(app: httpx.AsyncClient) -> None:
    auth = await user_with_limit(app, 3)
    token = auth["Authorization"].removeprefix("Bearer ")
    stream_id = (await play(app, auth, "1", deviceId="tab"))["streamId"]
    beacon = f"/v1/streams/{stream_id}/stop"
    for body in (b"not json", b"[]", b'{"token": ""}', b'{"token": 5}'):
        refused = await app.post(beacon, content=body)
        assert (refused.status_code, refused.json()["field"]) == (422, "token"), body
    assert (await app.post(beacon, content=b'{"token": "forged"}')).status_code == 401
    stopped = await app.post(beacon, content=f'{{"token": "{token}"}}', headers={"Content-Type": "text/plain"})
    assert stopped.status_code == 204
    assert (await app.get("/v1/streams", headers=auth)).json() == []
    assert (await app.post(beacon, content=f'{{"token": "{token}"}}')).status_code == 404
    documented = (await app.get("/openapi.json")).json()["paths"]["/v1/streams/{streamId}/stop"]["post"]
    media = documented["requestBody"]["content"]
    assert set(media) == {"application/json", "text/plain"}
    assert media["text/plain"]["schema"]["required"] == ["token"]


async def test_issued_device_ids_are_required_when_the_platform_says_so(tmp_path: Path) -> None:
    async with served(tmp_path, PLAYGATE_DEVICE_IDS="issued") as base_url, api_client(base_url) as client:
        user1 = await log_in(client, "user1", "user1")
        user2 = await log_in(client, "user2", "user2")
        first = await play(client, user1, "1")
        issued, secret = str(first["deviceId"]), str(first["deviceSecret"])
        assert issued.startswith("dv1.")
        again = await play(client, user1, "1", deviceId=issued, deviceSecret=secret)
        assert again["streamId"] == first["streamId"], "the issued id is the same device"
        assert again["deviceSecret"] is None, "the secret is told only in the answer that issued the device"
        for forged, who in ((f"{issued[:-1]}0" if issued[-1] != "0" else f"{issued[:-1]}1", user1), (issued, user2)):
            body = {"videoId": "2", "deviceId": forged, "deviceSecret": secret}
            refused = await client.post("/v1/plays", json=body, headers=who)
            assert refused.status_code == 422
            assert refused.json()["field"] == "deviceId"
        assert (
            await client.post("/v1/plays", json={"videoId": "2", "deviceId": "tv"}, headers=user1)
        ).status_code == 422


async def test_an_issued_device_id_copied_to_another_installation_is_refused(tmp_path: Path) -> None:
    """The id is public (every listing of the account's streams shows it); without the secret it was issued with,
    another installation of the same user cannot use it: it cannot take over the device's stream (one stream per
    device) nor pass a device cap as that device."""
    async with served(tmp_path, PLAYGATE_DEVICE_IDS="issued") as base_url, api_client(base_url) as client:
        user1 = await log_in(client, "user1", "user1")
        tv = await play(client, user1, "1")
        tv_id, tv_secret = str(tv["deviceId"]), str(tv["deviceSecret"])
        phone = await play(client, user1, "2")
        assert phone["deviceId"] != tv_id
        assert phone["deviceSecret"] != tv_secret
        [listed] = [s for s in (await client.get("/v1/streams", headers=user1)).json() if s["deviceId"] == tv_id]
        assert "deviceSecret" not in listed
        for copied in ({}, {"deviceSecret": str(phone["deviceSecret"])}, {"deviceSecret": tv_secret[:-1] + "x"}):
            refused = await client.post("/v1/plays", json={"videoId": "3", "deviceId": tv_id, **copied}, headers=user1)
            assert refused.status_code == 422, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["field"] == "deviceSecret"
        streams = (await client.get("/v1/streams", headers=user1)).json()
        assert {s["id"] for s in streams} == {tv["streamId"], phone["streamId"]}, "the copied id ended nothing"
        # The installation holding the secret plays its next episode as that device.
        next_episode = await play(client, user1, "3", deviceId=tv_id, deviceSecret=tv_secret)
        assert (next_episode["status"], next_episode["deviceId"]) == ("allowed", tv_id)


async def test_a_retry_of_a_request_that_issued_a_device_is_told_the_same_device_and_secret(
    app: httpx.AsyncClient,
) -> None:
    auth = await user_with_limit(app, 3)
    key = {"Idempotency-Key": f"k-{secrets.token_hex(4)}"}
    first = await play(app, {**auth, **key}, "1")
    retry = await play(app, {**auth, **key}, "1")
    assert (retry["requestId"], retry["deviceId"]) == (first["requestId"], first["deviceId"])
    assert retry["deviceSecret"] == first["deviceSecret"] is not None


async def authorize(client: httpx.AsyncClient, answer: dict[str, object]) -> httpx.Response:
    """/v1/authorize of an answer's playback token (as nginx asks it, without touching the media)."""
    token = str(answer["playbackUrl"]).split("/")[3]
    return await client.get("/v1/authorize", headers={"X-Playback-Token": token})


async def test_watch_here_ends_the_named_streams_in_the_step_that_admits(app: httpx.AsyncClient) -> None:
    auth = await user_with_limit(app, 2)
    held = [await play(app, auth, "1", deviceId="tv"), await play(app, auth, "2", deviceId="phone")]
    ids = [h["streamId"] for h in held]
    here = await play(app, auth, "3", deviceId="laptop", replaceStreamIds=ids)
    assert (here["status"], here["active"]) == ("allowed", 1)
    assert [s["id"] for s in (await app.get("/v1/streams", headers=auth)).json()] == [here["streamId"]]
    for ended in held:
        refused = await authorize(app, ended)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["reason"] == "replaced"
    assert (await authorize(app, here)).status_code == 204


async def test_watch_here_for_all_and_a_denial_that_ends_nothing(app: httpx.AsyncClient) -> None:
    auth, user_id = await account_with_limit(app, 3)
    admin = await log_in(app, "admin", ADMIN_PASSWORD)
    held = [await play(app, auth, str(n), deviceId=f"device-{n}") for n in (1, 2, 3)]
    lowered = await app.patch(f"/v1/users/{user_id}", json={"limit": 1}, headers=admin)
    assert lowered.status_code == 200, lowered.text
    # Under a limit of 1, naming two of the three is not enough: denied, and all three still play.
    short = await play(app, auth, "4", deviceId="here", replaceStreamIds=[held[0]["streamId"], held[1]["streamId"]])
    assert (short["status"], short["reason"]) == ("denied", "limit_reached")
    assert len((await app.get("/v1/streams", headers=auth)).json()) == 3
    everyone = await play(app, auth, "4", deviceId="here", replaceOthers=True)
    assert (everyone["status"], everyone["active"]) == ("allowed", 1)
    assert [s["id"] for s in (await app.get("/v1/streams", headers=auth)).json()] == [everyone["streamId"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"replaceStreamIds": "one-id"}, "replaceStreamIds"),
        ({"replaceStreamIds": ["bad id"]}, "replaceStreamIds.0"),
        ({"replaceStreamIds": [f"s{n}" for n in range(65)]}, "replaceStreamIds"),
        ({"replaceOthers": "maybe"}, "replaceOthers"),
        ({"deviceSecret": ""}, "deviceSecret"),
    ],
)
async def test_bad_replacement_or_secret_is_refused_naming_the_field(
    app: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    auth = await user_with_limit(app, 1)
    refused = await app.post("/v1/plays", json={"videoId": "1", "deviceId": "tv", **body}, headers=auth)
    assert refused.status_code == 422
    assert refused.json()["field"] == field


async def test_a_refused_stream_says_why_it_ended(app: httpx.AsyncClient) -> None:
    """The 403 of the content gate (and a heartbeat's 404) names the reason the audit trail knows: stopped by the
    player, by an admin, the user disabled, the limit lowered, the video deleted."""
    auth, user_id = await account_with_limit(app, 3)
    admin = await log_in(app, "admin", ADMIN_PASSWORD)

    async def reason(answer: dict[str, object]) -> str:
        refused = await authorize(app, answer)
        assert refused.status_code == 403, refused.text
        why: str = refused.json()["reason"]
        assert why in refused.json()["detail"]
        return why

    mine = await play(app, auth, "1", deviceId="tv")
    assert (await app.delete(f"/v1/streams/{mine['streamId']}", headers=auth)).status_code == 204
    assert await reason(mine) == "stopped"
    # A heartbeat of it is answered 404, naming why too.
    gone = await app.post(f"/v1/streams/{mine['streamId']}/heartbeat", headers=auth)
    assert (gone.status_code, gone.json()["reason"]) == (404, "stopped")
    by_admin = await play(app, auth, "1", deviceId="tv")
    assert (await app.delete(f"/v1/streams/{by_admin['streamId']}", headers=admin)).status_code == 204
    assert await reason(by_admin) == "stopped_by_admin"
    old, new = await play(app, auth, "1", deviceId="tv"), await play(app, auth, "2", deviceId="phone")
    assert (await app.patch(f"/v1/users/{user_id}", json={"limit": 1}, headers=admin)).status_code == 200
    assert (await authorize(app, old)).status_code == 204  # the first come keeps its slot under `deny`
    assert await reason(new) == "limit_lowered"
    created = await app.post("/v1/videos", json={"title": "Gone soon", "url": "/media/gone.mp4"}, headers=admin)
    assert created.status_code == 201, created.text
    doomed = await play(app, auth, created.json()["id"], deviceId="tv")
    assert (await app.delete(f"/v1/videos/{created.json()['id']}", headers=admin)).status_code == 204
    assert await reason(doomed) == "video_deleted"
    last = await play(app, auth, "1", deviceId="tv")
    assert (await app.patch(f"/v1/users/{user_id}", json={"disabled": True}, headers=admin)).status_code == 200
    assert await reason(last) == "user_disabled"


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("javascript:alert(1)", 422),
        ("data:video/mp4;base64,AAAA", 422),
        ("//elsewhere.example/clip.mp4", 422),
        ("https://cdn.example/clip.mp4", 201),
        ("http://cdn.example/clip.mp4", 201),
        ("/media/clip.mp4", 201),
    ],
)
async def test_video_urls_are_http_or_a_path_on_this_server(app: httpx.AsyncClient, url: str, status: int) -> None:
    admin = await log_in(app, "admin", ADMIN_PASSWORD)
    answer = await app.post("/v1/videos", json={"title": "t", "url": url}, headers=admin)
    assert answer.status_code == status, answer.text
    if status == 422:
        assert answer.json()["field"] == "url"


async def test_deleting_a_video_ends_its_streams_for_every_user(app: httpx.AsyncClient) -> None:
    admin = await log_in(app, "admin", ADMIN_PASSWORD)
    video = (await app.post("/v1/videos", json={"title": "gone soon", "url": "/media/x.mp4"}, headers=admin)).json()
    viewers = [await user_with_limit(app, 2) for _ in range(2)]
    for auth in viewers:
        await play(app, auth, video["id"], deviceId="tv")
        await play(app, auth, "1", deviceId="phone")
    assert (await app.delete(f"/v1/videos/{video['id']}", headers=admin)).status_code == 204
    for auth in viewers:
        assert [s["videoId"] for s in (await app.get("/v1/streams", headers=auth)).json()] == ["1"]
