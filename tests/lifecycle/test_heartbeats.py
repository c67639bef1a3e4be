"""Heartbeats by HTTP, Socket.IO and media requests; a lowered limit or a disabled user is held at the next one."""

from __future__ import annotations

import httpx

from tests.lifecycle.conftest import Deployment
from tests.lifecycle.helpers import active_ids, clip_url, ended_events, fetch, patch_user, play
from tests.support.clients import OpenSocket, api_client, new_user


async def test_a_lowered_limit_ends_the_streams_over_it_at_their_next_heartbeat(
    deny: Deployment,
    deny_admin: httpx.AsyncClient,
    open_socket: OpenSocket,
) -> None:
    base = deny.base_url
    user = await new_user(base, deny_admin, limit=3)
    sock = await open_socket(deny.socket_url, token=user.token)
    async with api_client(base, user.token) as client:
        first, second, third = [await play(client, video, f"device-{video}") for video in ("1", "2", "3")]
        await patch_user(deny_admin, user.id, {"limit": 1})
        # Under `deny` the first stream keeps its slot; the newer ones end when they next show life.
        assert (await client.post(f"/v1/streams/{first['streamId']}/heartbeat")).status_code == 200
        assert (await client.post(f"/v1/streams/{third['streamId']}/heartbeat")).status_code == 404
        ack = await sock.sio.call("heartbeat", {"streamId": second["streamId"]}, timeout=5)
        assert ack["status"] == 404
        events = await ended_events(sock, 2, 5.0)
        assert {(e["streamId"], e["reason"]) for e in events} == {
            (third["streamId"], "limit_lowered"),
            (second["streamId"], "limit_lowered"),
        }
        assert await active_ids(client) == {first["streamId"]}
        assert (await fetch(base, clip_url(first))).status_code == 206


async def test_a_media_request_over_a_lowered_limit_is_refused(
    evict: Deployment,
    evict_admin: httpx.AsyncClient,
    open_socket: OpenSocket,
) -> None:
    base = evict.base_url
    user = await new_user(base, evict_admin, limit=2)
    sock = await open_socket(evict.socket_url, token=user.token)
    async with api_client(base, user.token) as client:
        older = await play(client, "1", "tv")
        newer = await play(client, "2", "phone")
        await patch_user(evict_admin, user.id, {"limit": 1})
        # Under evict_oldest the oldest stream is the one over the limit.
        assert (await fetch(base, clip_url(older))).status_code == 403
        assert (await fetch(base, clip_url(newer))).status_code == 206
        [ended] = await ended_events(sock, 1, 5.0)
        assert ended == {"streamId": older["streamId"], "videoId": "1", "reason": "limit_lowered"}


async def test_socket_heartbeats_keep_a_stream_alive(
    deny: Deployment, deny_admin: httpx.AsyncClient, open_socket: OpenSocket
) -> None:
    base = deny.base_url
    user = await new_user(base, deny_admin, limit=1)
    sock = await open_socket(deny.socket_url, token=user.token)
    async with api_client(base, user.token) as client:
        decision = await play(client, "5", "tv")
        for _ in range(6):  # 6 x 0.5 s = 1.5 leases
            ack = await sock.sio.call("heartbeat", {"streamId": decision["streamId"]}, timeout=5)
            assert ack["streamId"] == decision["streamId"], ack
            await sock.sio.sleep(0.5)
        assert await active_ids(client) == {decision["streamId"]}
        assert sock.ended.empty()


async def test_disabling_a_user_ends_their_streams_and_their_media(
    deny: Deployment,
    deny_admin: httpx.AsyncClient,
    open_socket: OpenSocket,
) -> None:
    base = deny.base_url
    user = await new_user(base, deny_admin, limit=2)
    sock = await open_socket(deny.socket_url, token=user.token)
    async with api_client(base, user.token) as client:
        decision = await play(client, "6", "tv")
    await patch_user(deny_admin, user.id, {"disabled": True})
    [ended] = await ended_events(sock, 1, 5.0)
    assert ended == {"streamId": decision["streamId"], "videoId": "6", "reason": "user_disabled"}
    assert (await fetch(base, clip_url(decision))).status_code == 403
