"""The distributed deployment end to end: 2 `playgate api` and 2 `playgate worker` processes on Redis and
PostgreSQL, hammered concurrently through both APIs; a worker killed, Redis restarted, sockets across processes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from playgate.connections import QUEUE_SHARDS, layout_for
from tests.distributed.conftest import Cluster, kill
from tests.support.clients import SocketClient, TestUser, admin_client, api_client, connect_socket, new_user
from tests.support.redis_cluster import RedisCluster

DECIDE_TIMEOUT_S = 60.0
LATE_S = 0.3  # after the last expected socket message: a late duplicate, if any, arrives within this
RETRY_STATUSES = {502, 503, 504}


@dataclass
class Player:
    """One test user: a socket on one API, an HTTP client on each API, and what it sent and saw."""

    user: TestUser
    socket: SocketClient
    clients: list[httpx.AsyncClient]
    request_ids: list[str] = field(default_factory=list)
    stopped: set[str] = field(default_factory=set)
    max_seen_streams: int = 0

    def client(self, rng: random.Random) -> httpx.AsyncClient:
        return rng.choice(self.clients)

    def messages_by_request(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        while not self.socket.messages.empty():
            message = self.socket.messages.get_nowait()
            found[message["requestId"]].append(message)
        return found


async def players(cluster: Cluster, count: int, limits: tuple[int, ...] = (2, 3)) -> list[Player]:
    """Users made through API 1, each with a socket on API 1 or API 2 (alternating)."""
    admin = await admin_client(cluster.urls[0])
    made = []
    try:
        for n in range(count):
            user = await new_user(cluster.urls[0], admin, limit=limits[n % len(limits)])
            socket = await connect_socket(cluster.urls[n % 2], token=user.token)
            clients = [api_client(url, user.token) for url in cluster.urls]
            made.append(Player(user, socket, clients))
    finally:
        await admin.aclose()
    return made


async def close(group: list[Player]) -> None:
    for p in group:
        await p.socket.close()
        for c in p.clients:
            await c.aclose()


async def call(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One HTTP call; while a backend is away (503 or no connection) try again, for at most 30 s."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            response = await client.request(method, url, **kwargs)
            if response.status_code not in RETRY_STATUSES:
                return response
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


async def request_plays(p: Player, rng: random.Random, count: int) -> None:
    """`count` play requests over both APIs, all at once; each with an Idempotency-Key, as the player kit sends, so
    that `call` trying one again after a 503 or a lost answer (the request may have been queued all the same) gets
    that request back instead of queueing a second one that nobody here follows."""

    async def one(n: int) -> None:
        video = str(rng.randint(1, 6))
        body: dict[str, Any] = {"videoId": video}
        if rng.random() < 0.5:
            # A device asks again for the video it plays (same stream, lease renewed); a device per video, since
            # a device that asks for another title replaces its own stream, which these counts do not follow.
            body["deviceId"] = f"dev-{n % 3}-{video}"
        key = {"Idempotency-Key": f"play-{n}-{rng.getrandbits(64):x}"}
        response = await call(p.client(rng), "POST", "/v1/plays", json=body, headers=key)
        assert response.status_code in (200, 202), response.text  # 200: a retry whose first try was decided
        p.request_ids.append(response.json()["requestId"])

    await asyncio.gather(*(one(n) for n in range(count)))


async def churn(p: Player, rng: random.Random, rounds: int) -> None:
    """Look at the streams, heartbeat some, stop some; the user never has more streams than the limit."""
    for _ in range(rounds):
        response = await call(p.client(rng), "GET", "/v1/streams")
        assert response.status_code == 200, response.text
        streams = response.json()
        p.max_seen_streams = max(p.max_seen_streams, len(streams))
        assert len(streams) <= p.user.limit, streams
        for stream in streams:
            roll = rng.random()
            if roll < 0.4:
                beat = await call(p.client(rng), "POST", f"/v1/streams/{stream['id']}/heartbeat")
                assert beat.status_code in (200, 404), beat.text
            elif roll < 0.6:
                stop = await call(p.client(rng), "DELETE", f"/v1/streams/{stream['id']}")
                assert stop.status_code in (204, 404), stop.text
                if stop.status_code == 204:
                    p.stopped.add(stream["id"])
        await asyncio.sleep(rng.uniform(0.0, 0.05))


async def decisions(p: Player) -> dict[str, dict[str, Any]]:
    """Every request's decision from GET /v1/plays/{id} (either API), once none is pending any more."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + DECIDE_TIMEOUT_S
    for n, rid in enumerate(p.request_ids):
        while True:
            response = await call(p.clients[n % 2], "GET", f"/v1/plays/{rid}")
            assert response.status_code == 200, response.text
            body = response.json()
            if body["status"] != "pending":
                found[rid] = body
                break
            assert time.monotonic() < deadline, f"request {rid} still pending after {DECIDE_TIMEOUT_S}s"
            await asyncio.sleep(0.1)
    return found


async def socket_messages(p: Player, expected: int, timeout_s: float = 15.0) -> dict[str, list[dict[str, Any]]]:
    """The socket's messages by request id, once every request has at least one (or timeout_s has passed)."""
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected and time.monotonic() < deadline:
        try:
            message = await p.socket.next_message(timeout_s=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        seen[message["requestId"]].append(message)
    return seen


async def settle(
    group: list[Player], timeout_s: float = 15.0
) -> list[tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]]:
    """Each player's decisions at GET and socket messages, player after player; then LATE_S for late duplicates,
    once for the group after the last player's messages (not once per player: 12 s of a 40-player test), and
    every message that came meanwhile."""
    settled = [(await decisions(p), await socket_messages(p, len(p.request_ids), timeout_s)) for p in group]
    await asyncio.sleep(LATE_S)
    for p, (_, seen) in zip(group, settled, strict=True):
        for rid, extra in p.messages_by_request().items():
            seen[rid].extend(extra)
    return settled


def check_one_decision_each(p: Player, found: dict[str, dict[str, Any]], seen: dict[str, list[dict[str, Any]]]) -> int:
    """Each request: one decision, the same on the socket as at GET; returns how many were delivered twice."""
    assert set(found) == set(p.request_ids)
    assert set(seen) == set(p.request_ids), "a request got no socket message"
    twice = 0
    for rid, messages in seen.items():
        first = messages[0]
        assert all(
            (m["status"], m.get("streamId"), m.get("reason"))
            == (first["status"], first.get("streamId"), first.get("reason"))
            for m in messages
        ), f"request {rid} decided differently: {messages}"
        assert (first["status"], first.get("streamId")) == (found[rid]["status"], found[rid].get("streamId"))
        assert all(m["active"] <= p.user.limit for m in messages)
        twice += len(messages) > 1
    return twice


async def test_a_socket_on_one_api_gets_decisions_of_requests_sent_to_the_other(cluster: Cluster) -> None:
    [p] = await players(cluster, 1)
    other_api = p.clients[1]  # the socket is on API 1 (index 0)
    response = await other_api.post("/v1/plays", json={"videoId": "1", "deviceId": "tv"})
    assert response.status_code == 202, response.text
    message = await p.socket.next_message(timeout_s=10)
    assert (message["requestId"], message["status"]) == (response.json()["requestId"], "allowed")
    waited = await other_api.post("/v1/plays", params={"wait": 5}, json={"videoId": "2", "deviceId": "phone"})
    assert waited.status_code == 200, waited.text  # a worker's decision woke the waiter in API 2
    assert waited.json()["status"] == "allowed"
    status = await p.clients[0].get(f"/v1/plays/{waited.json()['requestId']}")
    assert status.json()["status"] == "allowed"
    await close([p])


async def test_many_users_hammered_over_both_apis_never_exceed_their_limit(cluster: Cluster) -> None:
    rng = random.Random(7)
    group = await players(cluster, 12)
    started = time.monotonic()
    await asyncio.gather(*(request_plays(p, rng, 14) for p in group), *(churn(p, rng, 6) for p in group))
    for p, (found, seen) in zip(group, await settle(group), strict=True):
        assert check_one_decision_each(p, found, seen) == 0, "a decision was delivered twice without a failure"
        streams = (await p.clients[0].get("/v1/streams")).json()
        assert len(streams) <= p.user.limit
        allowed = {d["streamId"] for d in found.values() if d["status"] == "allowed"}
        assert {s["id"] for s in streams} <= allowed
    total = sum(len(p.request_ids) for p in group)
    print(f"\n{total} requests from {len(group)} users decided in {time.monotonic() - started:.1f}s")
    await close(group)


async def test_a_killed_worker_s_requests_are_decided_by_the_other(cluster: Cluster) -> None:
    rng = random.Random(11)
    group = await players(cluster, 10, limits=(3,))
    victim = cluster.workers[0]  # stays listed until killed: a failure here still stops it at teardown
    consumer = f"{socket.gethostname()}-{victim.proc.pid}"
    caught = asyncio.Event()
    # Plays keep coming until the victim is caught holding a batch (a single burst can be decided before the
    # first look, on a busy machine), each user's over both APIs; bounded: 50 rounds of 2 per user.
    load = asyncio.gather(*(plays_until(p, rng, caught, rounds=50) for p in group))
    held = 0
    try:
        for _ in range(100):  # freeze it at an instant when it holds a batch (bounded: about 10 s)
            await asyncio.sleep(0.05)
            victim.proc.send_signal(signal.SIGSTOP)
            held = pending_on(cluster, consumer)
            if held > 0:
                break
            victim.proc.send_signal(signal.SIGCONT)
        caught.set()
        assert held > 0, "the worker never held a batch; the test would prove nothing"
        kill(victim)  # kill -9 with a batch in hand: the other worker claims it after PLAYGATE_CLAIM_IDLE
        cluster.workers.remove(victim)
        await load
        twice = 0
        for p, (found, seen) in zip(group, await settle(group, timeout_s=20), strict=True):
            twice += check_one_decision_each(p, found, seen)
            allowed = {d["streamId"] for d in found.values() if d["status"] == "allowed"}
            assert len(allowed) <= p.user.limit  # no stops here: every stream allowed is still counted
        print(f"\n{held} request(s) held by the killed worker were decided by the other; {twice} published twice")
        cluster.start_worker()  # back to two workers for the tests after this one
    finally:
        caught.set()
        with contextlib.suppress(Exception):
            await load
        await close(group)


async def plays_until(p: Player, rng: random.Random, stop: asyncio.Event, rounds: int) -> None:
    """Two play requests at a time, round after round, until `stop` is set (at most `rounds`)."""
    for _ in range(rounds):
        if stop.is_set():
            return
        await request_plays(p, rng, 2)


async def test_a_worker_stopped_with_sigterm_finishes_its_batch_and_leaves_nothing_pending(cluster: Cluster) -> None:
    rng = random.Random(17)
    group = await players(cluster, 6, limits=(3,))
    leaving = cluster.workers[0]
    consumer = f"{socket.gethostname()}-{leaving.proc.pid}"
    load = asyncio.gather(*(request_plays(p, rng, 15) for p in group))
    await asyncio.sleep(0.3)
    assert await asyncio.to_thread(leaving.stop, signal.SIGTERM) == 0, leaving.log()
    cluster.workers.remove(leaving)
    assert pending_on(cluster, consumer) == 0  # what it took, it decided and acknowledged before exiting
    await load
    for p, (found, seen) in zip(group, await settle(group), strict=True):
        assert check_one_decision_each(p, found, seen) == 0
    cluster.start_worker()
    await close(group)


def pending_on(cluster: Cluster, consumer: str) -> int:
    """Entries of the request group pending on one consumer."""
    shards = layout_for(cluster.redis.url).queue_shards(QUEUE_SHARDS)
    client: redis.Redis | redis.RedisCluster
    if isinstance(cluster.redis, RedisCluster):
        client = redis.RedisCluster(host="127.0.0.1", port=cluster.redis.nodes[0].port, socket_timeout=2)
    else:
        client = redis.Redis(host="127.0.0.1", port=cluster.redis.port, socket_timeout=2)
    try:
        summaries = [client.xpending(shard.requests_key, "workers") for shard in shards]
    finally:
        client.close()
    names = (consumer, consumer.encode())
    return sum(int(c["pending"]) for s in summaries for c in s.get("consumers") or [] if c["name"] in names)


async def test_redis_restart_during_load_loses_no_allowed_stream(cluster: Cluster) -> None:
    rng = random.Random(13)
    group = await players(cluster, 8, limits=(3,))
    first_half = asyncio.gather(*(request_plays(p, rng, 4) for p in group))
    await first_half
    cluster.redis.stop()  # SIGTERM: Redis writes its AOF and exits
    async with httpx.AsyncClient(base_url=cluster.urls[1], timeout=10) as probe:
        ready = await probe.get("/readyz")
        # Within PLAYGATE_OUTAGE_GRACE the API stays ready (it serves the streams playing) and says why.
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["ledger"] != "ok", ready.text
        assert ready.json()["outage"].startswith("grace:"), ready.text
        refused = await group[0].clients[1].post("/v1/plays", json={"videoId": "1"})
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        second_half = asyncio.gather(*(request_plays(p, rng, 4) for p in group))  # retried while Redis is away
        await asyncio.sleep(1.0)
        cluster.redis.start()
        await second_half
        deadline = time.monotonic() + 30
        for url in cluster.urls:
            while (await probe.get(f"{url}/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "an API did not recover by itself"
                await asyncio.sleep(0.2)
    for p in group:
        found = await decisions(p)
        allowed = {d["streamId"] for d in found.values() if d["status"] == "allowed"}
        assert 0 < len(allowed) <= p.user.limit
        streams = (await p.clients[0].get("/v1/streams")).json()
        assert {s["id"] for s in streams} == allowed, "an allowed stream was lost across the restart"
    await close(group)
