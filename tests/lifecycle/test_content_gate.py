"""The content gate over real processes: media requests are the heartbeat, ended streams lose their media at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from playgate.domain import Stream
from playgate.media import MediaLibrary
from playgate.security import PlaybackTokens
from tests.lifecycle.conftest import Deployment
from tests.lifecycle.helpers import active_ids, clip_url, ended_events, fetch, keep_watching, play, token_of
from tests.support.clients import OpenSocket, api_client, new_user
from tests.support.servers import JWT_SECRET


async def test_pause_a_watch_b_resume_a_by_media_requests_alone(
    deny: Deployment,
    deny_admin: httpx.AsyncClient,
    open_socket: OpenSocket,
) -> None:
    base = deny.base_url
    user = await new_user(base, deny_admin, limit=1)
    sock = await open_socket(deny.socket_url, token=user.token)
    async with api_client(base, user.token) as client:
        a = await play(client, "1", "laptop")
        assert a["status"] == "allowed"
        assert a["playbackUrl"] == f"/v1/play/{token_of(a)}/master.m3u8"
        message = await sock.next_message()
        assert message["playbackUrl"].startswith("/v1/play/")
        assert token_of(message) != "", "the socket message carries a playback URL of its own"

        # Watching A: media requests alone keep it alive past its lease.
        await keep_watching(base, clip_url(a), deny.stream_ttl_s * 1.5)
        assert a["streamId"] in await active_ids(client)
        # B on another device (the same device would replace its own stream: one stream per device).
        b = await play(client, "2", "phone")
        assert (b["status"], b["reason"]) == ("denied", "limit_reached")

        # Pause A (no more media requests): its lease runs out, the sweeper frees and announces it.
        [ended] = await ended_events(sock, 1, deny.stream_ttl_s + 3.0)
        assert ended == {"streamId": a["streamId"], "videoId": "1", "reason": "expired"}
        assert (await fetch(base, clip_url(a))).status_code == 403

        # Watch B.
        b = await play(client, "2", "phone")
        assert b["status"] == "allowed", b
        await keep_watching(base, clip_url(b), 1.0)

        # Pause B; resume A as soon as the limit allows, without any stop call.
        [ended] = await ended_events(sock, 1, deny.stream_ttl_s + 3.0)
        assert ended["streamId"] == b["streamId"]
        again = await play(client, "1", "laptop")
        assert again["status"] == "allowed"
        response = await fetch(base, clip_url(again))
        assert response.status_code == 206


async def test_a_stream_whose_media_requests_stop_is_freed_within_ttl_and_grace(
    deny: Deployment,
    deny_admin: httpx.AsyncClient,
    open_socket: OpenSocket,
) -> None:
    base = deny.base_url
    user = await new_user(base, deny_admin, limit=2)
    sock = await open_socket(deny.socket_url, token=user.token)
    async with api_client(base, user.token) as client:
        decision = await play(client, "3", "tv")
        assert (await fetch(base, clip_url(decision))).status_code == 206
        last_request = time.monotonic()
        grace_s = deny.sweep_interval_s + 1.0  # the sweep period, plus slack for a loaded machine
        [ended] = await ended_events(sock, 1, deny.stream_ttl_s + grace_s + 2.0)
        elapsed_s = time.monotonic() - last_request
        assert ended == {"streamId": decision["streamId"], "videoId": "3", "reason": "expired"}
        # A media request may leave a lease renewed up to a tenth of it earlier: freed no later than TTL + grace.
        assert deny.stream_ttl_s * 0.5 <= elapsed_s <= deny.stream_ttl_s + grace_s, elapsed_s
        assert await active_ids(client) == set()


async def test_tokens_that_do_not_open_the_stream(deny: Deployment, deny_admin: httpx.AsyncClient) -> None:
    base = deny.base_url
    alice = await new_user(base, deny_admin, limit=2)
    bob = await new_user(base, deny_admin, limit=2)
    async with api_client(base, alice.token) as a_client, api_client(base, bob.token) as b_client:
        mine = await play(a_client, "1", "phone")
        theirs = await play(b_client, "1", "phone")
        url, token = clip_url(mine).split("?token=")
        other_token = token_of(theirs)
        # The token goes in the URL or in a header.
        assert (await fetch(base, url, **{"X-Playback-Token": token})).status_code == 206
        no_token = await fetch(base, url)
        assert no_token.status_code == 401
        assert no_token.headers["content-type"] == "application/problem+json"
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert (await fetch(base, f"{url}?token={forged}")).status_code == 401
        assert (await fetch(base, f"{url}?token={other_token}")).status_code == 403
        # An access token is not a playback token, and a playback token from another secret is forged.
        assert (await fetch(base, f"{url}?token={alice.token}")).status_code == 401
        foreign = PlaybackTokens("another-secret-that-is-long-enough-0123456789", 60)
        foreign_token = foreign.issue(Stream(mine["streamId"], alice.id, "1", "", 0.0, 0.0), now=time.time())
        assert (await fetch(base, f"{url}?token={foreign_token}")).status_code == 401
        expired = PlaybackTokens(JWT_SECRET, 1).issue(
            Stream(mine["streamId"], alice.id, "1", "", 0.0, 0.0), now=time.time() - 120
        )
        response = await fetch(base, f"{url}?token={expired}")
        assert response.status_code == 401
        assert "expired" in response.json()["detail"]
        # Stopped: the token stops working at once, not when it expires.
        assert (await a_client.delete(f"/v1/streams/{mine['streamId']}")).status_code == 204
        assert (await fetch(base, clip_url(mine))).status_code == 403


async def test_heartbeats_hand_out_fresh_playback_urls_and_media_requests_renew(
    deny: Deployment, deny_admin: httpx.AsyncClient, media_dir: Path
) -> None:
    base = deny.base_url
    # Made here first: made on the first media request, the set can outlast the 2 s lease on a busy machine.
    await MediaLibrary(media_dir).ensure_adaptive("4")
    user = await new_user(base, deny_admin, limit=1)
    async with api_client(base, user.token) as client:
        decision = await play(client, "4", "tv")
        response = await client.post(f"/v1/streams/{decision['streamId']}/heartbeat")
        assert response.status_code == 200
        fresh = response.json()["playbackUrl"]
        assert fresh.startswith("/v1/play/")
        assert fresh.endswith("/master.m3u8")
        before = (await client.get("/v1/streams")).json()[0]["expiresAt"]
        await asyncio.sleep(0.3)
        assert (await fetch(base, fresh, range_header=None)).status_code == 200
        after = (await client.get("/v1/streams")).json()[0]["expiresAt"]
        assert after > before
        status = (await client.get(f"/v1/plays/{decision['requestId']}")).json()
        assert token_of(status) != ""
