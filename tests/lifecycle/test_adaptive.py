"""HLS and DASH through the content gate, embedded and distributed: the token in the path reaches every playlist
and segment, the playlists are valid (m3u8, ffprobe), every request is a heartbeat, an ended stream is refused."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from typing import Any

import httpx
import m3u8
import pytest

from tests.lifecycle.conftest import Deployment
from tests.lifecycle.helpers import active_ids, ended_events, play, token_of
from tests.support.clients import api_client, connect_socket, new_user

FFPROBE = shutil.which("ffprobe")


async def get(base_url: str, url: str, **headers: str) -> httpx.Response:
    """One request as a player makes it: no bearer token, just the URL."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as player:
        return await player.get(url, headers=headers)


def beside(url: str, name: str) -> str:
    """The URL of `name` relative to the playlist at `url` (what a player resolves)."""
    return url.rsplit("/", 1)[0] + "/" + name


async def first_segment(base_url: str, playback_url: str) -> str:
    """The URL of the first segment of the first variant of a master playlist."""
    master = m3u8.loads((await get(base_url, playback_url)).text)
    variant_url = beside(playback_url, master.playlists[0].uri)
    media = m3u8.loads((await get(base_url, variant_url)).text)
    return beside(variant_url, media.segments[0].uri)


def ffprobe(url: str) -> dict[str, Any]:
    """ffprobe's view of a stream at a URL: its format and video streams."""
    assert FFPROBE is not None
    done = subprocess.run(
        [FFPROBE, "-v", "error", "-show_entries", "format=duration,format_name:stream=codec_name,width,height",
         "-of", "json", url],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    probed: dict[str, Any] = json.loads(done.stdout)
    return probed


async def probe_while_playing(client: httpx.AsyncClient, stream_id: str, url: str) -> dict[str, Any]:
    """ffprobe's view of a playing stream, its lease kept by heartbeats meanwhile, as its player keeps it: starting
    ffprobe on a busy machine can take most of the lifecycle deployment's 2 s lease."""
    probing = asyncio.create_task(asyncio.to_thread(ffprobe, url))
    for _ in range(200):  # bounded: ffprobe times out after 60 s
        done, _ = await asyncio.wait({probing}, timeout=0.3)
        if done:
            break
        assert (await client.post(f"/v1/streams/{stream_id}/heartbeat")).status_code == 200
    return await probing


async def test_hls_and_dash_served_by_the_gate_are_valid(deny: Deployment, deny_admin: httpx.AsyncClient) -> None:
    base = deny.base_url
    user = await new_user(base, deny_admin, limit=1)
    async with api_client(base, user.token) as client:
        decision = await play(client, "3", "tv")
    url = decision["playbackUrl"]
    token = token_of(decision)

    answer = await get(base, url)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert answer.headers["cache-control"] == "private, no-store"
    master = m3u8.loads(answer.text)
    assert master.is_variant
    assert len(master.playlists) >= 2
    for variant in master.playlists:
        assert "://" not in variant.uri
        assert not variant.uri.startswith("/"), "relative: the player keeps the tokened path"
        playlist = await get(base, beside(url, variant.uri))
        assert playlist.status_code == 200
        assert token not in playlist.text, "the token is needed in one place only: the URL"
        media = m3u8.loads(playlist.text)
        assert media.is_endlist
        assert sum(s.duration for s in media.segments) >= 60
        init = await get(base, beside(url, media.segments[0].init_section.uri))
        assert init.status_code == 200
        assert init.content[4:8] == b"ftyp"
        segment = await get(base, beside(url, media.segments[-1].uri), Range="bytes=0-99")
        assert segment.status_code == 206
        assert len(segment.content) == 100

    manifest = await get(base, beside(url, "manifest.mpd"))
    assert manifest.status_code == 200
    assert manifest.headers["content-type"].startswith("application/dash+xml")
    assert "<MPD" in manifest.text
    assert token not in manifest.text

    missing = await get(base, beside(url, "chunk-9-99999.m4s"))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"

    if FFPROBE is None:
        pytest.skip("ffprobe is not installed: `make test` installs the Debian package ffmpeg")
    async with api_client(base, user.token) as client:
        stream_id = decision["streamId"]
        probes = [
            ("hls", await probe_while_playing(client, stream_id, base + url)),
            ("dash", await probe_while_playing(client, stream_id, base + beside(url, "manifest.mpd"))),
        ]
    for kind, probed in probes:
        assert kind in probed["format"]["format_name"]
        assert float(probed["format"]["duration"]) >= 60
        assert {s["codec_name"] for s in probed["streams"]} == {"h264"}
        assert {(s["width"], s["height"]) for s in probed["streams"]} >= {(320, 180), (160, 90)}


async def test_segment_requests_keep_the_stream_and_silence_frees_it(
    deny: Deployment, deny_admin: httpx.AsyncClient
) -> None:
    base = deny.base_url
    user = await new_user(base, deny_admin, limit=1)
    sock = await connect_socket(deny.socket_url, token=user.token)
    try:
        async with api_client(base, user.token) as client:
            decision = await play(client, "4", "tv")
            segment = await first_segment(base, decision["playbackUrl"])
            # Playing: a segment every 0.4 s keeps the stream past its lease, with no other heartbeat.
            deadline = time.monotonic() + deny.stream_ttl_s * 1.5
            while time.monotonic() < deadline:
                assert (await get(base, segment)).status_code == 200
                await asyncio.sleep(0.4)
            assert decision["streamId"] in await active_ids(client)
            assert (await play(client, "5", "phone"))["status"] == "denied"
            # Paused: no requests; the slot frees itself after the lease, and the URL is refused.
            [ended] = await ended_events(sock, 1, deny.stream_ttl_s + 3.0)
            assert (ended["streamId"], ended["reason"]) == (decision["streamId"], "expired")
            refused = await get(base, segment)
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/problem+json"
            assert "ended" in refused.json()["detail"]
            assert (await play(client, "5", "phone"))["status"] == "allowed"
    finally:
        await sock.close()


async def test_an_evicted_streams_next_segment_is_refused_at_once(
    evict: Deployment, evict_admin: httpx.AsyncClient
) -> None:
    base = evict.base_url
    user = await new_user(base, evict_admin, limit=1)
    async with api_client(base, user.token) as client:
        first = await play(client, "1", "tv")
        segment = await first_segment(base, first["playbackUrl"])
        assert (await get(base, segment)).status_code == 200
        second = await play(client, "2", "phone")
        assert second["status"] == "allowed"
        refused = await get(base, segment)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert (await get(base, first["playbackUrl"])).status_code == 403
        assert (await get(base, second["playbackUrl"])).status_code == 200
        # A forged token is refused before the ledger is asked; a path out of the folder finds nothing.
        forged = segment.replace(token_of(first), token_of(first)[:-4] + "AAAA")
        assert (await get(base, forged)).status_code == 401
        traversal = beside(second["playbackUrl"], "..%2F..%2F1.mp4")
        assert (await get(base, traversal)).status_code == 404
