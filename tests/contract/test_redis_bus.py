"""Only the Redis bus: dead workers' entries re-claimed, poison dead-lettered, fan-out across processes."""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import pytest_asyncio

from playgate import connections
from playgate.bus.protocol import NoSockets, ended_message, rooms_of
from playgate.bus.redis import RedisFanout, RedisQueue
from playgate.connections import (
    DECISIONS_CHANNEL,
    connect,
    decision_channels,
    decision_to_json,
    is_cluster_url,
    ready,
)
from playgate.domain import Admission, Decision, EndedStream, Outcome, PlayRequest, Quota, Reason, Status, Stream
from playgate.ledger import redis as redis_ledger
from playgate.ledger.redis import RedisLedger
from playgate.metrics import Metrics
from playgate.worker import Worker
from tests.contract.conftest import Recorder
from tests.support.redis_cluster import RedisCluster

QueueFactory = Callable[..., RedisQueue]
POISON = "7531-poison"  # a request id naming its user u1, as the service's do (a cluster finds its decision so)


def play(rid: str, user: str = "u1") -> PlayRequest:
    return PlayRequest(rid, user, "v1", "tv", accepted_at=time.time())


async def heard(sockets: Recorder, count: int) -> list[tuple[str, Any, str | None]]:
    """The first `count` events the sockets got (waiting at most 5 s for them: an API process's listener emits
    them shortly), then forgotten."""
    for _ in range(100):
        if len(sockets.events) >= count:
            break
        await asyncio.sleep(0.05)
    events, sockets.events = sockets.events[:count], sockets.events[count:]
    return events


@pytest_asyncio.fixture
async def make_queue(redis_url: str) -> AsyncIterator[QueueFactory]:
    """Queues on one fresh Redis (a server, a cluster), each a consumer of its own (as worker processes are)."""
    made: list[RedisQueue] = []

    def make(claim_idle_s: float = 0.2, max_attempts: int = 5) -> RedisQueue:
        queue = RedisQueue(
            redis_url,
            consumer=f"worker-{secrets.token_hex(4)}",
            claim_idle_s=claim_idle_s,
            maxlen=10_000,
            pending_ttl_s=60.0,
            max_attempts=max_attempts,
        )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.close()


async def test_entries_of_a_dead_worker_are_claimed_by_another(make_queue: QueueFactory) -> None:
    # Idle must outlast the first take of the other worker even on a loaded machine (0.2 s did not, in CI).
    dead, alive = make_queue(claim_idle_s=2.0), make_queue(claim_idle_s=2.0)
    for rid in ("a", "b"):
        await dead.put(play(rid))
    taken = await dead.take(10, wait_s=1.0)
    assert len(taken) == 2  # ... and this worker dies without acknowledging
    assert await alive.take(10, wait_s=0.1) == []  # not idle long enough yet
    await asyncio.sleep(2.1)
    claimed = await alive.take(10, wait_s=0.1)
    assert sorted((d.request.request_id, d.attempts) for d in claimed) == [("a", 2), ("b", 2)]
    assert await alive.pending("a") is not None  # still owed until acknowledged
    await alive.ack(claimed)
    assert await alive.pending("a") is None
    assert await alive.depth() == 0


async def test_a_poison_entry_gets_an_error_decision_and_is_dead_lettered(
    make_queue: QueueFactory, redis_url: str
) -> None:
    queue = make_queue(claim_idle_s=0.05, max_attempts=2)
    await queue.put(play(POISON))
    for _ in range(2):  # two deliveries to workers that die before deciding
        await asyncio.sleep(0.1)
        assert len(await make_queue(claim_idle_s=0.05).take(1, wait_s=0.5)) == 1
    assert (await queue.pending_count(), await queue.dead_letter_count()) == (1, 0)
    await asyncio.sleep(0.1)
    recorder = Recorder()  # an API process's sockets: the worker's fan-out holds none
    api = RedisFanout(redis_url, recorder)
    await api.start()
    fanout = RedisFanout(redis_url, NoSockets())
    ledger = RedisLedger(redis_url, lease_s=90, decision_ttl_s=60, clock=time.time)
    worker = Worker(
        queue=queue,
        ledger=ledger,
        fanout=fanout,
        catalog=None,  # type: ignore[arg-type]  # never reached: the only entry is past max_attempts
        metrics=Metrics(),
        clock=time.time,
        batch_size=10,
        sweep_interval_s=1.0,
        max_attempts=2,
    )
    assert await worker.step(wait_s=0.5) == 1
    [(event, message, room)] = await heard(recorder, 1)
    assert recorder.events == []  # that one only
    assert (event, room) == ("message", "user:u1")
    assert (message["status"], message["reason"], message["requestId"]) == ("denied", "error", POISON)
    assert [r.request_id for r in await queue.dead_letters()] == [POISON]
    assert (await queue.pending_count(), await queue.dead_letter_count()) == (0, 1)
    assert await queue.depth() == 0
    assert await queue.pending(POISON) is None
    kept = await ledger.decision(POISON)  # GET /v1/plays/{id} tells the same answer
    assert kept is not None
    assert (kept.status, kept.reason) == (Status.denied, Reason.error)
    await ledger.close()
    await fanout.close()
    await api.close()


async def test_a_request_put_again_is_queued_once(make_queue: QueueFactory) -> None:
    """The same put again (redis-py retries a call whose reply was lost on a dropped connection) adds nothing."""
    queue = make_queue()
    request = play("again")
    await queue.put(request)
    await queue.put(request)
    taken = await queue.take(10, wait_s=1.0)
    assert [d.request.request_id for d in taken] == ["again"]
    await queue.ack(taken)
    assert await queue.depth() == 0


async def test_requests_that_arrive_together_go_in_one_pipeline_in_their_order(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six players ask at once (as those told of one batch of decisions do): on a single server one pipeline of
    enqueue.lua calls, sent again after loading the script the server forgot, each request queued once, in the
    order they were put; a put again of one of them adds nothing. A cluster sends each on its own (concurrent
    calls, in no set order)."""
    queue = make_queue()
    requests = [play(f"together-{n}", user="u1") for n in range(6)]
    await queue._redis.script_flush()  # the pipeline meets NOSCRIPT: loaded, and sent again
    pipelines = count_pipelines(monkeypatch)
    await asyncio.gather(*(queue.put(request) for request in [*requests, requests[0]]))
    cluster = queue._layout.cluster
    assert pipelines == ([] if cluster else [7, 7])
    taken = await queue.take(20, wait_s=1.0)
    got = [d.request for d in taken]
    assert (sorted(got, key=lambda r: r.request_id) if cluster else got) == requests
    await queue.ack(taken)


async def test_a_malformed_entry_is_dead_lettered_not_delivered(make_queue: QueueFactory) -> None:
    queue = make_queue()
    await queue.put(play("good"))
    await queue._redis.xadd(queue._shards[0].requests_key, {"r": "not json"})
    taken = await queue.take(10, wait_s=1.0)
    assert [d.request.request_id for d in taken] == ["good"]
    await queue.ack(taken)
    assert await queue.depth() == 0


async def test_waiters_in_one_process_are_woken_by_a_worker_in_another(redis_url: str) -> None:
    sockets, workers_sockets = Recorder(), Recorder()
    api, worker = RedisFanout(redis_url, sockets), RedisFanout(redis_url, workers_sockets)
    await api.start()
    waiter = api.watch("r1")
    other = api.watch("r2")
    api.unwatch("r2", other)
    decision = Decision("r1", "u1", "v1", "tv", Status.denied, 3, 3, 1_800_000_000.25, reason=Reason.limit_reached)
    await worker.publish([Outcome(decision)])
    assert await asyncio.wait_for(waiter, 5.0) == decision
    assert not other.done()
    # The socket message travelled with it, emitted by the process holding the sockets (its listener, after the
    # waiters), not by the worker.
    [(event, message, room)] = sockets.events
    assert (event, room, message["requestId"], message["reason"]) == ("message", "user:u1", "r1", "limit_reached")
    assert workers_sockets.events == []
    await api.close()
    await worker.close()


async def test_the_listener_hears_a_decision_after_a_silence_longer_than_the_socket_timeout(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener waits for the next message without a read timeout: a channel silent for longer than the
    connections' socket timeout (shortened here to 0.3 s) is not taken for a lost Redis (which would subscribe
    again after a pause, the sockets missing what was published meanwhile), and the next decision reaches them."""
    monkeypatch.setattr(connections, "SOCKET_TIMEOUT_S", 0.3)
    sockets = Recorder()
    api, worker = RedisFanout(redis_url, sockets), RedisFanout(redis_url, Recorder())
    await api.start()
    await asyncio.sleep(1.0)
    decision = Decision("r1", "u1", "v1", "tv", Status.denied, 3, 3, 1_800_000_000.25, reason=Reason.limit_reached)
    await worker.publish([Outcome(decision)])
    [(event, message, _room)] = await heard(sockets, 1)
    assert (event, message["requestId"]) == ("message", "r1")
    assert "decision listener lost Redis" not in caplog.text
    await api.close()
    await worker.close()


async def test_a_stop_s_stream_ended_reaches_the_sockets_of_every_api_process(redis_url: str) -> None:
    first, second = Recorder(), Recorder()
    apis = [RedisFanout(redis_url, first), RedisFanout(redis_url, second)]
    for api in apis:
        await api.start()
    stream = Stream("s1", "u1", "v1", "tv", 1_800_000_000.0, 1_800_000_090.0)
    ended_here: list[list[str]] = []
    apis[1].on_ended = ended_here.append  # the API's outage policy hears of it too (never honoured again)
    await apis[0].announce([EndedStream(stream, Reason.stopped)])
    for sockets in (first, second):
        [(event, message, room)] = await heard(sockets, 1)
        assert sockets.events == []  # that one only
        assert (event, room, message["streamId"], message["reason"]) == ("stream_ended", "user:u1", "s1", "stopped")
    assert ended_here == [["s1"]]
    for api in apis:
        await api.close()


async def test_a_stop_s_announcement_made_by_the_ledger_is_the_fan_out_s(redis_url: str) -> None:
    """On a single server the stop script publishes `stream_ended` itself: the same message, to the same rooms, as
    the fan-out's announce. On a cluster (the channel's slot is not the user's) the fan-out does it."""
    rooms = functools.partial(rooms_of, to_every_user_room=True)
    ledger = RedisLedger(redis_url, lease_s=60.0, decision_ttl_s=60.0, clock=time.time, end_rooms=rooms)
    sockets = Recorder()
    api = RedisFanout(redis_url, sockets, to_every_user_room=True)
    await api.start()
    try:
        assert ledger.announces_stops is not is_cluster_url(redis_url)
        [outcome] = await ledger.decide([Admission(play("r1"), Quota(2))])
        [stream] = await ledger.stop(None, "u1", "v1", reason=Reason.stopped, announce=True)
        assert stream.id == outcome.decision.stream_id
        ended = EndedStream(stream, Reason.stopped)
        if not ledger.announces_stops:
            await api.announce([ended])  # the service's part then
        told = await heard(sockets, 2)
        await api.announce([ended])
        assert told == await heard(sockets, 2) == [("stream_ended", ended_message(ended), r) for r in rooms("u1")]
        # A stop that ends nothing active announces nothing: the next event is the one announced after it.
        assert await ledger.stop(None, "u1", "v1", reason=Reason.stopped, announce=True) == []
        after = EndedStream(Stream("s-after", "u1", "v2", "tv", 1_800_000_000.0, 1_800_000_090.0), Reason.stopped)
        await api.announce([after])
        [(_, body, _)] = await heard(sockets, 1)
        assert body["streamId"] == "s-after"
    finally:
        await ledger.close()
        await api.close()


async def test_the_listener_takes_the_version_before_s_messages_and_drops_malformed_ones(redis_url: str) -> None:
    sockets = Recorder()
    api = RedisFanout(redis_url, sockets)
    await api.start()
    publisher: Any = connect(redis_url, decode=False)
    cluster = is_cluster_url(redis_url)
    await ready(publisher)

    async def send(payload: bytes) -> None:  # on the channel the listener hears (on a cluster: one of them)
        if cluster:
            await publisher.spublish(decision_channels()[0], payload)
        else:
            await publisher.publish(DECISIONS_CHANNEL, payload)

    waiters = [api.watch("r1"), api.watch("r2")]
    decision = Decision("r1", "u1", "v1", "tv", Status.allowed, 1, 3, 1_800_000_000.25, stream_id="s1")
    later = Decision("r2", "u1", "v1", "tv", Status.allowed, 2, 3, 1_800_000_000.5, stream_id="s2")
    await send(b"not json")
    await send(orjson.dumps({"d": "no list"}))
    await send(orjson.dumps([decision_to_json(decision)]))  # from a worker of the version before
    worker = RedisFanout(redis_url, NoSockets())
    await worker.publish([Outcome(later)])
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5.0) == [decision, later]
    assert [m["requestId"] for _, m, _ in sockets.events] == ["r2"]  # the version before sent it over socketio
    await publisher.aclose()
    await worker.close()
    await api.close()


async def test_the_ledger_decides_on_after_redis_forgets_its_scripts(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, lease_s=60.0, decision_ttl_s=60.0, clock=time.time)
    try:
        [first] = await ledger.decide([Admission(play("r1"), Quota(1))])
        await ledger._redis.script_flush()  # as after a restart without persistence of the script cache
        other_device = PlayRequest("r2", "u1", "v1", "phone", accepted_at=time.time())
        outcomes = await ledger.decide([Admission(play("r1"), Quota(1)), Admission(other_device, Quota(1))])
        assert [o.decision.status for o in outcomes] == [Status.allowed, Status.denied]
        assert outcomes[0].decision == first.decision  # decided once, whatever the retry
    finally:
        await ledger.close()


def count_pipelines(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the pipelines of script calls sent together (connections.call_together), as they go."""
    sizes: list[int] = []
    send = connections._pipelined

    async def counted(redis: Any, script: Any, calls: Any) -> list[Any]:
        sizes.append(len(calls))
        return await send(redis, script, calls)

    monkeypatch.setattr(connections, "_pipelined", counted)
    return sizes


async def test_stops_that_arrive_together_go_in_one_pipeline_and_end_each_user_s_own(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five users stop at once (as the players told of one batch of decisions do): on a single server one pipeline
    of stop.lua calls, sent again after loading the script the server forgot; each user's stream ended once, and
    only theirs."""
    ledger = RedisLedger(redis_url, lease_s=60.0, decision_ttl_s=60.0, clock=time.time)
    users = [f"together-{n}" for n in range(5)]
    try:
        outcomes = await ledger.decide([Admission(play(f"r{n}", user), Quota(1)) for n, user in enumerate(users)])
        await ledger._redis.script_flush()  # the pipeline meets NOSCRIPT: loaded, and sent again
        pipelines = count_pipelines(monkeypatch)
        stopped = await asyncio.gather(*(ledger.stop(None, user, reason=Reason.stopped) for user in users))
        assert [[s.id for s in streams] for streams in stopped] == [[o.decision.stream_id] for o in outcomes]
        assert pipelines == ([] if ledger._keys.cluster else [5, 5])  # a cluster routes each by its user's slot
        assert await asyncio.gather(*(ledger.streams(user) for user in users)) == [[]] * 5
        assert await ledger.stop(None, users[0]) == []
    finally:
        await ledger.close()


async def test_a_stop_sent_again_after_its_reply_was_lost_gets_the_first_run_s_reply(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py sends a command again when its connection drops before the reply (a Redis restart): the stop ran
    and its streams are gone, and the same call again answers what the first run ended, not "nothing was playing"
    (a DELETE of the stream would answer 404 for a stream it did stop)."""
    ledger = RedisLedger(redis_url, lease_s=60.0, decision_ttl_s=60.0, clock=time.time)
    try:
        [outcome] = await ledger.decide([Admission(play("r1", "again"), Quota(1))])
        stream_id = outcome.decision.stream_id
        assert stream_id is not None
        monkeypatch.setattr(redis_ledger, "new_id", lambda: "call-1")  # the same call twice, as a retry sends it
        first = await ledger.stop([stream_id], "again", reason=Reason.stopped)
        again = await ledger.stop([stream_id], "again", reason=Reason.stopped)
        assert [s.id for s in again] == [s.id for s in first] == [stream_id]
        monkeypatch.undo()
        assert await ledger.stop([stream_id], "again") == []  # another call: nothing left to end
    finally:
        await ledger.close()


async def test_on_a_cluster_one_user_s_requests_reach_one_worker_at_a_time(redis_cluster: RedisCluster) -> None:
    """Two workers on the sharded queue: while one holds a user's undecided request, the other is not handed the
    user's next one (it would decide it first, out of arrival order); once acknowledged, the next goes to one
    worker, once."""
    redis_cluster.flush()
    # The shard leases last claim_idle_s: long enough that the first worker's lease, taken at the start of its
    # take, has not run out by the end of the second worker's wait on a slow machine (at 0.4 s it did once in CI,
    # and the second worker rightly took the shard over as from a dead worker).
    first, second = (
        RedisQueue(
            redis_cluster.url, consumer=name, claim_idle_s=3.0, maxlen=10_000, pending_ttl_s=60.0, max_attempts=5
        )
        for name in ("worker-a", "worker-b")
    )
    try:
        await first.put(play("r1"))
        held = await first.take(10, wait_s=1.0)
        assert [d.request.request_id for d in held] == ["r1"]
        await first.put(play("r2"))
        assert await second.take(10, wait_s=0.3) == []
        await first.ack(held)
        taken: list[str] = []
        deadline = time.monotonic() + 10.0
        while not taken and time.monotonic() < deadline:  # the shard may be dealt to either worker
            for queue in (first, second):
                batch = await queue.take(10, wait_s=0.1)
                taken += [d.request.request_id for d in batch]
                await queue.ack(batch)
        assert taken == ["r2"]
    finally:
        await first.close()
        await second.close()
