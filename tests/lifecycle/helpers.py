"""Small steps the lifecycle tests share: play, fetch media, wait for announcements."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.support.clients import SocketClient


async def play(
    client: httpx.AsyncClient,
    video_id: str,
    device_id: str,
    *,
    replace: str | None = None,
    replace_ids: list[str] | None = None,
) -> dict[str, Any]:
    """POST /v1/plays and wait for the decision (assert it came); `replace_ids`: "Watch here"."""
    body: dict[str, Any] = {"videoId": video_id, "deviceId": device_id}
    if replace is not None:
        body["replaceStreamId"] = replace
    if replace_ids is not None:
        body["replaceStreamIds"] = replace_ids
    response = await client.post("/v1/plays", params={"wait": 10}, json=body)
    assert response.status_code == 200, response.text
    decision: dict[str, Any] = response.json()
    return decision


def token_of(decision: dict[str, Any]) -> str:
    """The playback token in a decision's playbackUrl (`/v1/play/{token}/master.m3u8`)."""
    url: str = decision["playbackUrl"]
    assert url.startswith("/v1/play/"), url
    assert url.endswith("/master.m3u8"), url
    return url.split("/")[3]


def clip_url(decision: dict[str, Any]) -> str:
    """The single-file URL of a decision's stream (its MP4 clip), the token of its playbackUrl in the query."""
    return f"/v1/streams/{decision['streamId']}/content?token={token_of(decision)}"


async def fetch(
    base_url: str, playback_url: str, *, range_header: str | None = "bytes=0-1023", **headers: str
) -> httpx.Response:
    """One media request, as a <video> element makes it: no bearer token, just the playback URL."""
    sent = dict(headers)
    if range_header is not None:
        sent["Range"] = range_header
    async with httpx.AsyncClient(base_url=base_url, timeout=15.0) as media:
        return await media.get(playback_url, headers=sent)


async def keep_watching(base_url: str, playback_url: str, duration_s: float, every_s: float = 0.4) -> None:
    """Fetch media every `every_s` for `duration_s`, asserting each answer is a 206."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        response = await fetch(base_url, playback_url)
        assert response.status_code == 206, response.text
        await asyncio.sleep(every_s)


async def ended_events(sock: SocketClient, count: int, timeout_s: float) -> list[dict[str, Any]]:
    """The next `count` stream_ended events (fail if they do not all come within timeout_s)."""
    deadline = time.monotonic() + timeout_s
    events = []
    while len(events) < count:
        events.append(await sock.next_ended(max(0.01, deadline - time.monotonic())))
    return events


async def active_ids(client: httpx.AsyncClient) -> set[str]:
    """The ids of the caller's active streams."""
    response = await client.get("/v1/streams")
    assert response.status_code == 200, response.text
    return {s["id"] for s in response.json()}


async def patch_user(admin: httpx.AsyncClient, user_id: str, changes: dict[str, Any]) -> httpx.Response:
    """PATCH /v1/users/{id}, asserting 200 (catalogue writes take SQLite's write lock at BEGIN: no BUSY 503)."""
    response = await admin.patch(f"/v1/users/{user_id}", json=changes)
    assert response.status_code == 200, response.text
    return response
