"""Rotating PLAYGATE_JWT_SECRET without logging anyone out or cutting a stream: the old key stays accepted
(PLAYGATE_JWT_ACCEPTED_SECRETS) while the new one signs, then goes; each step a restart on the same data dir."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from playgate.errors import ConfigError
from tests.support.clients import api_client
from tests.support.inprocess import served

OLD = "the-key-being-rotated-out-0123456789abcdef"
NEW = "the-key-being-rotated-in-0123456789abcdefgh"


async def log_in(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/auth/token", json={"username": "user1", "password": "user1"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['accessToken']}"}


async def play(client: httpx.AsyncClient, auth: dict[str, str], **body: object) -> httpx.Response:
    return await client.post("/v1/plays?wait=5", json={"videoId": "1", **body}, headers=auth)


async def media_answer(client: httpx.AsyncClient, playback_url: str) -> int:
    """What the content gate answers a segment request carrying the stream's playback token."""
    token = playback_url.split("/v1/play/", 1)[1].split("/", 1)[0]
    return (await client.get("/v1/authorize", headers={"X-Playback-Token": token})).status_code


async def test_a_rotated_key_keeps_tokens_streams_and_devices_until_it_is_dropped(tmp_path: Path) -> None:
    issued = {"PLAYGATE_DEVICE_IDS": "issued"}
    async with served(tmp_path, PLAYGATE_JWT_SECRET=OLD, **issued) as base_url, api_client(base_url) as client:
        old_auth = await log_in(client)
        first = await play(client, old_auth)
        assert first.json()["status"] == "allowed", first.text
        device = {"deviceId": first.json()["deviceId"], "deviceSecret": first.json()["deviceSecret"]}
        playback_url = str(first.json()["playbackUrl"])
        assert await media_answer(client, playback_url) == 204

    # A process that does not know the new key yet accepts its tokens once told to (the first step of a rolling
    # rotation), while still signing with the old one.
    async with served(tmp_path, PLAYGATE_JWT_SECRET=NEW, **issued) as base_url, api_client(base_url) as client:
        new_auth = await log_in(client)
    async with (
        served(tmp_path, PLAYGATE_JWT_SECRET=OLD, PLAYGATE_JWT_ACCEPTED_SECRETS=NEW, **issued) as base_url,
        api_client(base_url) as client,
    ):
        assert (await client.get("/v1/streams", headers=new_auth)).status_code == 200

    # The new key signs; everything the old one made still works: the log-in, the stream's media, the device.
    async with (
        served(tmp_path, PLAYGATE_JWT_SECRET=NEW, PLAYGATE_JWT_ACCEPTED_SECRETS=f" {OLD} ", **issued) as base_url,
        api_client(base_url) as client,
    ):
        assert await media_answer(client, playback_url) == 204
        again = await play(client, old_auth, **device)
        assert again.status_code == 200, again.text
        assert again.json()["streamId"] == first.json()["streamId"], "the device issued under the old key"
        assert (await client.get("/v1/streams", headers=new_auth)).status_code == 200

    # The old key dropped: what it signed is refused, what the new one signed is not.
    async with served(tmp_path, PLAYGATE_JWT_SECRET=NEW, **issued) as base_url, api_client(base_url) as client:
        assert (await client.get("/v1/streams", headers=old_auth)).status_code == 401
        assert await media_answer(client, playback_url) == 401
        refused = await play(client, new_auth, **device)
        assert refused.status_code == 422
        assert refused.json()["field"] == "deviceId"
        assert (await client.get("/v1/streams", headers=new_auth)).status_code == 200


async def test_an_accepted_key_too_short_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PLAYGATE_JWT_ACCEPTED_SECRETS: each key must be at least 32 characters, 8 "):
        async with served(tmp_path, PLAYGATE_JWT_SECRET=NEW, PLAYGATE_JWT_ACCEPTED_SECRETS=f"{OLD},short"):
            pass
