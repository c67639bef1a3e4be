"""The outage policy with Redis stopped under load: watchers keep watching, new plays follow the policy, and the
ledger is reconciled once Redis is back.

Two `playgate api` processes (A with PLAYGATE_OUTAGE_POLICY=deny, B with allow) and a worker on a throwaway
redis-server that keeps nothing on disk, so its restart empties the ledger, and a SQLite catalogue (the audit trail
and the webhook outbox, which stay up). Leases are short (4 s) and Redis stays down for longer than one, so a stream
kept playing through the outage would be gone without the write-back.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from playgate.bus.local import QUEUE_KEEP_FILE
from playgate.kept import PREFIX as KEEP_PREFIX
from playgate.webhooks import PLAY_DENIED, STREAM_ENDED, STREAM_STARTED
from tests.support.clients import (
    SocketClient,
    TestUser,
    admin_client,
    api_client,
    connect_socket,
    decided,
    new_user,
)
from tests.support.inprocess import play_left_undecided
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer, redis_binary, start_redis
from tests.support.servers import ServerProcess, migrate_playgate, start_playgate

LEASE_S = 4.0
DOWN_S = 6.0  # longer than a lease
ROUND_PAUSE_S = 1.0
MAX_ROUNDS = 30
BACK_DEADLINE_S = 30.0
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test secret (24 bytes, base64)
WEBHOOKS = {"PLAYGATE_WEBHOOK_POLL": "0.05", "PLAYGATE_WEBHOOK_SETTLE": "0.2", "PLAYGATE_WEBHOOK_BACKOFF": "0.2"}

pytestmark = [
    pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed (.ci/run installs it)"),
    # three processes started, Redis down and back, webhooks delivered: about 2 minutes at a load average of 20
    pytest.mark.timeout(400),
]


def _start(data_dir: Path, server: RedisServer, hooks_url: str) -> tuple[ServerProcess, ServerProcess, ServerProcess]:
    env = {
        "PLAYGATE_REDIS_URL": server.url,
        "PLAYGATE_MEDIA_DIR": str(data_dir / "media"),
        "PLAYGATE_STREAM_TTL": str(LEASE_S),
        "PLAYGATE_OUTAGE_GRACE": "120",
        "PLAYGATE_WEBHOOK_URLS": hooks_url,
        "PLAYGATE_WEBHOOK_SECRET": SECRET,
        **WEBHOOKS,
    }
    migrate_playgate(data_dir, **env)
    deny = start_playgate(data_dir, "api", PLAYGATE_OUTAGE_POLICY="deny", **env)
    allow = start_playgate(data_dir, "api", PLAYGATE_OUTAGE_POLICY="allow", **env)
    worker = start_playgate(data_dir, "worker", wait_ready=False, **env)
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
    deadline = time.monotonic() + 30
    try:
        # the two APIs' queue clients and the worker's
        while sum(str(c.get("name", "")).startswith("playgate-queue:") for c in client.client_list()) < 3:
            assert worker.proc.poll() is None, worker.log()
            assert time.monotonic() < deadline, "the worker never read from the queue"
            time.sleep(0.1)
    finally:
        client.close()
    return deny, allow, worker


async def _play(client: httpx.AsyncClient, video_id: str, device_id: str) -> dict[str, Any]:
    """The decision of a play; asked again until decided when it is still pending after 5 s (a worker started
    beside the API may not read yet on a loaded machine: a make test run met that once)."""
    answer = await client.post("/v1/plays", params={"wait": 5}, json={"videoId": video_id, "deviceId": device_id})
    assert answer.status_code in (200, 202), answer.text
    body: dict[str, Any] = answer.json()
    if answer.status_code == 202:
        body = await decided(client, body["requestId"], BACK_DEADLINE_S)
    return body


async def _watch(client: httpx.AsyncClient, play: dict[str, Any]) -> tuple[int, int]:
    """One round of a watching player: a heartbeat and a media request (the web server's auth_request)."""
    beat = await client.post(f"/v1/streams/{play['streamId']}/heartbeat")
    media = await client.get("/v1/authorize", headers={"X-Original-URI": play["playbackUrl"]})
    return beat.status_code, media.status_code


def _token(play: dict[str, Any]) -> str:
    """The playback token of an allowed play (the path segment of its playbackUrl)."""
    found = re.search(r"/v1/play/([^/]+)/", play["playbackUrl"])
    assert found is not None, play
    return found[1]


async def _events(client: httpx.AsyncClient, user_id: str, wanted: set[tuple[str, str, str]]) -> None:
    """Wait until the user's audit trail holds every (kind, request or stream id, outcome) of `wanted`."""
    deadline = time.monotonic() + BACK_DEADLINE_S
    while True:
        page = (await client.get(f"/v1/users/{user_id}/events", params={"limit": 1000})).json()["events"]
        seen = {(e["kind"], e["requestId"] or e["streamId"], e["outcome"]) for e in page}
        if wanted <= seen:
            return
        assert time.monotonic() < deadline, f"not in the audit trail: {wanted - seen}"
        await asyncio.sleep(ROUND_PAUSE_S / 2)


async def _ended(sock: SocketClient, stream_id: str) -> dict[str, Any]:
    """The next `stream_ended` of `stream_id` on the socket (others before it are skipped)."""
    deadline = time.monotonic() + BACK_DEADLINE_S
    while True:
        ended = await sock.next_ended(timeout_s=max(0.1, deadline - time.monotonic()))
        if ended["streamId"] == stream_id:
            return ended


async def _beat_where_never_seen(
    client: httpx.AsyncClient, sock: SocketClient, play: dict[str, Any], *, other: dict[str, Any]
) -> dict[str, Any]:
    """During the outage, heartbeats of `play`'s stream on a process that never saw it: 503 alone, honoured with
    the stream's playback token (HTTP header, socket field; another stream's token is refused, naming the
    header), and the stream counts there from then on: the user's next play (limit 1) is denied; its answer."""
    stream_id = play["streamId"]
    unknown = await client.post(f"/v1/streams/{stream_id}/heartbeat")
    assert unknown.status_code == 503, unknown.text
    beat = await client.post(f"/v1/streams/{stream_id}/heartbeat", headers={"X-Playback-Token": _token(play)})
    assert beat.status_code == 200, beat.text
    assert beat.json()["playbackUrl"], beat.text
    forged = await client.post(f"/v1/streams/{stream_id}/heartbeat", headers={"X-Playback-Token": _token(other)})
    assert (forged.status_code, forged.json().get("field")) == (422, "X-Playback-Token"), forged.text
    ack = await sock.sio.call("heartbeat", {"streamId": stream_id, "playbackToken": _token(play)})
    assert (ack.get("streamId"), "expiresAt" in ack) == (stream_id, True), ack
    held = await _play(client, "3", "phone")
    assert (held["status"], held["reason"]) == ("denied", "limit_reached"), held
    return held


async def _uhd_viewer(base_url: str, admin: httpx.AsyncClient) -> tuple[TestUser, str]:
    """A user whose plan allows 2 streams, 1 of them UHD, and a UHD video."""
    plan = await admin.post("/v1/plans", json={"name": "2 screens, 1 in UHD", "maxStreams": 2, "kinds": {"uhd": 1}})
    assert plan.status_code == 201, plan.text
    video = await admin.put("/v1/videos/uhd-1", json={"title": "UHD", "url": "/uhd.mp4", "kinds": ["uhd"]})
    assert video.status_code in (200, 201), video.text
    return await new_user(base_url, admin, limit=None, plan=plan.json()["id"]), "uhd-1"


async def _beat_with_token(client: httpx.AsyncClient, play: dict[str, Any]) -> httpx.Response:
    return await client.post(f"/v1/streams/{play['streamId']}/heartbeat", headers={"X-Playback-Token": _token(play)})


async def _uhd_stream_written_back_whole(
    on_deny: httpx.AsyncClient,
    on_allow: httpx.AsyncClient,
    play: dict[str, Any],
    before: list[dict[str, Any]],
    video_id: str,
) -> None:
    """The UHD stream that only B kept playing, from its playback token, is written back into the emptied Redis
    as it was: its device and start (the token names them), and its kind, so that the UHD cap still counts it (the
    same title on a second device is denied, where the total would allow it). Its heartbeats keep it alive."""
    assert (await _beat_with_token(on_allow, play)).status_code == 200
    listed = (await on_deny.get("/v1/streams")).json()
    assert [(s["id"], s["deviceId"], s["startedAt"]) for s in listed] == [
        (s["id"], s["deviceId"], s["startedAt"]) for s in before
    ], listed
    assert listed[0]["deviceId"] == "living-room"
    second = await _play(on_deny, video_id, "phone")
    assert (second["status"], second["reason"]) == ("denied", "kind_limit:uhd"), second


async def _webhooks(receiver: Receiver, wanted: set[tuple[str, str]]) -> None:
    """Wait until every (type, webhook-id) of `wanted` was delivered, signed."""
    deadline = time.monotonic() + BACK_DEADLINE_S
    while not wanted <= {(r.type, r.msg_id) for r in receiver.received}:
        assert time.monotonic() < deadline, wanted - {(r.type, r.msg_id) for r in receiver.received}
        await asyncio.sleep(ROUND_PAUSE_S / 2)
    assert receiver.bad == []


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_watchers_keep_watching_while_redis_is_down(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", appendonly=False)
    receiver = Receiver(SECRET)
    await receiver.start()
    deny, allow, worker = await asyncio.to_thread(_start, tmp_path, server, receiver.url)
    clients: list[httpx.AsyncClient] = []
    sockets: list[SocketClient] = []
    try:
        admin = await admin_client(deny.base_url)
        watchers: list[TestUser] = [await new_user(deny.base_url, admin, limit=1) for _ in range(3)]
        latecomer = await new_user(deny.base_url, admin, limit=1)
        uhd_viewer, uhd_video = await _uhd_viewer(deny.base_url, admin)
        await admin.aclose()
        on_deny = [api_client(deny.base_url, u.token) for u in watchers]
        clients += on_deny
        plays = [await _play(c, "1", "tv") for c in on_deny]
        assert all(p["status"] == "allowed" for p in plays), plays
        # A UHD stream started on A, whose heartbeats reach only B through the outage (with its playback token).
        uhd_on_deny = api_client(deny.base_url, uhd_viewer.token)
        uhd_on_allow = api_client(allow.base_url, uhd_viewer.token)
        clients += [uhd_on_deny, uhd_on_allow]
        uhd_play = await _play(uhd_on_deny, uhd_video, "living-room")
        assert uhd_play["status"] == "allowed", uhd_play
        uhd_before = (await uhd_on_deny.get("/v1/streams")).json()
        # The first watcher also asks on B during the outage: B does not know its stream on A. The second
        # watcher's heartbeats reach B too (a balancer's choice): B never saw that stream either.
        first_on_allow = api_client(allow.base_url, watchers[0].token)
        second_on_allow = api_client(allow.base_url, watchers[1].token)
        late_on_deny = api_client(deny.base_url, latecomer.token)
        clients += [first_on_allow, second_on_allow, late_on_deny]
        sock = await connect_socket(allow.base_url, token=watchers[0].token)
        first_sock_on_deny = await connect_socket(deny.base_url, token=watchers[0].token)
        second_sock = await connect_socket(allow.base_url, token=watchers[1].token)
        third_sock = await connect_socket(allow.base_url, token=watchers[2].token)
        sockets += [sock, first_sock_on_deny, second_sock, third_sock]

        await asyncio.to_thread(server.stop)
        down_at = time.monotonic()
        rounds = 0
        while time.monotonic() - down_at < DOWN_S:
            assert rounds < MAX_ROUNDS
            rounds += 1
            for client, play in zip(on_deny, plays, strict=True):
                assert await _watch(client, play) == (200, 204), f"round {rounds}: {play['streamId']}"
            assert (await _beat_with_token(uhd_on_allow, uhd_play)).status_code == 200, f"round {rounds}"
            await asyncio.sleep(ROUND_PAUSE_S)
        assert rounds >= 2

        # New plays: A refuses (deny), B admits within what it knows of the user, then is at the limit.
        refused = await late_on_deny.post("/v1/plays", params={"wait": 1}, json={"videoId": "2", "deviceId": "tv"})
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "5"
        assert "outage policy deny" in refused.json()["detail"]
        extra = await _play(first_on_allow, "2", "phone")
        assert extra["status"] == "allowed", extra
        over = await _play(first_on_allow, "3", "tablet")
        assert (over["status"], over["reason"]) == ("denied", "limit_reached"), over
        assert await _watch(first_on_allow, extra) == (200, 204)
        assert (await first_on_allow.get(f"/v1/plays/{extra['requestId']}")).json()["status"] == "allowed"

        held = await _beat_where_never_seen(second_on_allow, second_sock, plays[1], other=plays[0])

        # The third watcher stops its stream on A meanwhile: told to its socket on B once Redis is back.
        assert (await on_deny[2].delete(f"/v1/streams/{plays[2]['streamId']}")).status_code == 204

        ready = await on_deny[0].get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["outage"].startswith("grace:"), ready.json()
        assert _metric((await on_deny[0].get("/metrics")).text, "playgate_outage_mode") == 1
        assert "outage mode: the ledger store does not answer" in deny.log()

        await asyncio.to_thread(server.start)  # empty: it kept nothing on disk
        # Redis is back: every watcher keeps playing (A writes back the streams it kept alive), and the first
        # watcher, over its limit of 1 once B's stream is written back too, loses the newer one at a heartbeat,
        # told why. (A process tries the store at most once a second while it is down: the first requests after
        # may still be answered from its cache.)
        for _ in range(MAX_ROUNDS):
            for client, play in zip(on_deny[:2], plays[:2], strict=True):
                assert await _watch(client, play) == (200, 204), play["streamId"]
            assert (await _beat_with_token(uhd_on_allow, uhd_play)).status_code == 200
            beat = await first_on_allow.post(f"/v1/streams/{extra['streamId']}/heartbeat")
            assert beat.status_code in (200, 404), beat.text
            if beat.status_code == 404:
                break
            await asyncio.sleep(ROUND_PAUSE_S / 2)
        assert beat.status_code == 404, beat.text
        reconciled = {"streamId": extra["streamId"], "videoId": "2", "reason": "outage_reconciled"}
        assert await _ended(sock, extra["streamId"]) == reconciled
        assert await _ended(first_sock_on_deny, extra["streamId"]) == reconciled  # on every process
        stopped = await _ended(third_sock, plays[2]["streamId"])
        assert stopped == {"streamId": plays[2]["streamId"], "videoId": "1", "reason": "stopped"}
        # The outage's decisions and ends are in the audit trail and sent as webhooks.
        await _events(
            first_on_allow,
            watchers[0].id,
            {
                ("decision", extra["requestId"], "allowed"),
                ("decision", over["requestId"], "denied"),
                ("stream_end", extra["streamId"], "outage_reconciled"),
            },
        )
        await _events(second_on_allow, watchers[1].id, {("decision", held["requestId"], "denied")})
        hooks = {
            (STREAM_STARTED, f"msg_{extra['requestId']}"),
            (PLAY_DENIED, f"msg_{over['requestId']}"),
            (STREAM_ENDED, f"msg_end_{extra['streamId']}"),
            (PLAY_DENIED, f"msg_{held['requestId']}"),
        }
        await _webhooks(receiver, hooks)
        assert await _watch(on_deny[0], plays[0]) == (200, 204)
        kept = await first_on_allow.get(f"/v1/plays/{extra['requestId']}")
        assert kept.status_code == 200, kept.text
        assert kept.json()["status"] == "allowed", kept.text
        streams = await on_deny[0].get("/v1/streams")
        assert [s["id"] for s in streams.json()] == [plays[0]["streamId"]]
        await _uhd_stream_written_back_whole(uhd_on_deny, uhd_on_allow, uhd_play, uhd_before, uhd_video)

        ready = await on_deny[0].get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["outage"] == "normal", ready.text
        assert _metric((await on_deny[0].get("/metrics")).text, "playgate_outage_mode") == 0
        assert "outage over: the ledger store answers again" in deny.log()
        # New plays are decided by the worker again.
        asked = await late_on_deny.post("/v1/plays", params={"wait": 5}, json={"videoId": "2", "deviceId": "tv"})
        assert asked.status_code in (200, 202), asked.text
        answer = asked.json()
        for _ in range(MAX_ROUNDS):
            if answer["status"] != "pending":
                break
            await asyncio.sleep(ROUND_PAUSE_S)
            answer = (await late_on_deny.get(f"/v1/plays/{answer['requestId']}")).json()
        assert answer["status"] == "allowed", answer
    finally:
        for opened in sockets:
            await opened.close()
        for client in clients:
            await client.aclose()
        await receiver.stop()
        deny.stop()
        allow.stop()
        worker.stop()
        server.stop()


async def test_what_an_api_process_took_in_the_outage_is_kept_when_it_stops_in_it(tmp_path: Path) -> None:
    """An API process stopped while Redis is down keeps what the outage gave it (a stream it kept playing) in its
    data dir; the next API process started there writes it back once Redis answers, here an empty Redis: the
    stream is listed again as it was. Before, it was lost with the process."""
    server = start_redis(tmp_path / "redis", appendonly=False)
    env = {
        "PLAYGATE_REDIS_URL": server.url,
        "PLAYGATE_MEDIA_DIR": str(tmp_path / "media"),
        # A lease that outlasts the stop and the next start on a loaded machine (4 s did not, in a make test run):
        # the stream is no longer heartbeated once the first process stops, and a lease run out is not written back.
        "PLAYGATE_STREAM_TTL": "60",
        "PLAYGATE_OUTAGE_GRACE": "120",
    }
    await asyncio.to_thread(migrate_playgate, tmp_path, **env)
    api = await asyncio.to_thread(start_playgate, tmp_path, "api", **env)
    worker = await asyncio.to_thread(start_playgate, tmp_path, "worker", wait_ready=False, **env)
    later: ServerProcess | None = None
    try:
        admin = await admin_client(api.base_url)
        user = await new_user(api.base_url, admin, limit=1)
        await admin.aclose()
        async with api_client(api.base_url, user.token) as client:
            play = await _play(client, "1", "tv")
            assert play["status"] == "allowed", play
            before = (await client.get("/v1/streams")).json()
            await asyncio.to_thread(server.stop)
            assert (await _beat_with_token(client, play)).status_code == 200  # kept playing
        assert await asyncio.to_thread(api.stop) == 0, api.log()
        assert "the next process started on this data dir writes it back" in api.log()
        assert len(list(tmp_path.glob(f"{KEEP_PREFIX}*"))) == 1
        await asyncio.to_thread(server.start)  # empty: it kept nothing on disk
        later = await asyncio.to_thread(start_playgate, tmp_path, "api", **env)
        async with api_client(later.base_url, user.token) as client:
            streams = (await client.get("/v1/streams")).json()
        fields = ("id", "videoId", "deviceId", "startedAt")
        assert [[s[f] for f in fields] for s in streams] == [[s[f] for f in fields] for s in before], streams
        assert list(tmp_path.glob(f"{KEEP_PREFIX}*")) == []
        assert "taken back from" in later.log()
    finally:
        for process in (api, worker, later):
            if process is not None:
                process.stop()
        server.stop()


async def test_plays_an_embedded_stop_left_undecided_are_decided_by_a_distributed_start_on_its_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedded process stops with its SQLite file locked and a play queued (answered 202): it keeps the play in
    its data dir. The deployment then moves to Redis on that data dir (its SQLite catalogue kept): the API process
    started there puts the play on the Redis queue, and the worker decides it. Before, only an embedded start read
    that file, and the play was unknown to the distributed deployment."""
    monkeypatch.setattr("playgate.catalog.db.SQLITE_BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr("playgate.ledger.sql.SQLITE_BUSY_TIMEOUT_MS", 200)
    media = {"PLAYGATE_MEDIA_DIR": str(tmp_path / "media")}
    user, request_id = await play_left_undecided(tmp_path, **media)
    keep = tmp_path / QUEUE_KEEP_FILE
    assert keep.exists()
    server = start_redis(tmp_path / "redis", appendonly=False)
    env = {"PLAYGATE_REDIS_URL": server.url, **media}
    api = await asyncio.to_thread(start_playgate, tmp_path, "api", **env)
    worker = await asyncio.to_thread(start_playgate, tmp_path, "worker", wait_ready=False, **env)
    try:
        async with api_client(api.base_url, user.token) as client:
            answer = await decided(client, request_id, BACK_DEADLINE_S)
        assert (answer["status"], answer["videoId"], answer["deviceId"]) == ("allowed", "1", "tv"), answer
        assert not keep.exists()
        assert "queued from" in api.log()
    finally:
        for process in (api, worker):
            process.stop()
        server.stop()
