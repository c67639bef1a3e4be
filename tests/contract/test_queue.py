"""The RequestQueue contract, run unchanged against the in-process queue and the Redis Streams queue."""

from __future__ import annotations

import fcntl
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from playgate.bus.local import QUEUE_KEEP_FILE, LocalQueue, queue_kept
from playgate.bus.protocol import RequestQueue
from playgate.bus.redis import RedisQueue
from playgate.domain import PlayRequest
from playgate.errors import Unavailable
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer


def play(rid: str) -> PlayRequest:
    return PlayRequest(rid, "u1", "v1", "tv", accepted_at=1_800_000_000.5)


@pytest_asyncio.fixture(params=["local", "redis", "redis-cluster"])
async def queue(request: pytest.FixtureRequest) -> AsyncIterator[RequestQueue]:
    if request.param == "local":
        made: RequestQueue = LocalQueue()
    else:
        store: RedisServer | RedisCluster = request.getfixturevalue(
            "redis_server" if request.param == "redis" else "redis_cluster"
        )
        store.flush()
        made = RedisQueue(
            store.url,
            consumer=f"test-{secrets.token_hex(4)}",
            claim_idle_s=30.0,
            maxlen=10_000,
            pending_ttl_s=60.0,
            max_attempts=5,
        )
    yield made
    await made.close()


async def test_requests_come_out_in_order_and_stay_pending_until_acked(queue: RequestQueue) -> None:
    for rid in ("a", "b", "c"):
        await queue.put(play(rid))
    assert await queue.pending("b") == play("b")
    assert await queue.depth() == 3
    first = await queue.take(2, wait_s=1.0)
    assert [d.request for d in first] == [play("a"), play("b")]
    assert [d.attempts for d in first] == [1, 1]
    rest = await queue.take(10, wait_s=1.0)
    assert [d.request.request_id for d in rest] == ["c"]
    assert await queue.depth() == 3  # taken, not yet acknowledged
    await queue.ack(first)
    assert await queue.pending("a") is None
    assert await queue.pending("c") == play("c")
    assert await queue.depth() == 1
    await queue.ack(rest)
    assert await queue.depth() == 0
    assert await queue.pending("unknown") is None


async def test_released_requests_come_back_first_with_one_more_attempt(queue: RequestQueue) -> None:
    await queue.put(play("a"))
    await queue.put(play("b"))
    [a] = await queue.take(1, wait_s=1.0)
    await queue.release([a])
    again = await queue.take(2, wait_s=1.0)
    assert [(d.request.request_id, d.attempts) for d in again] == [("a", 2), ("b", 1)]
    await queue.release(again[:1])
    [third] = await queue.take(1, wait_s=1.0)
    assert (third.request.request_id, third.attempts) == ("a", 3)
    await queue.ack([third, again[1]])
    assert await queue.depth() == 0


async def test_take_waits_at_most_wait_s_on_an_empty_queue(queue: RequestQueue) -> None:
    started = time.monotonic()
    assert await queue.take(5, wait_s=0.3) == []
    assert 0.2 <= time.monotonic() - started < 2.0
    assert await queue.take(5, wait_s=0) == []
    await queue.ping()


async def test_the_embedded_queue_keeps_what_is_undecided_for_the_next_queue_on_its_file(tmp_path: Path) -> None:
    """Closed with requests in hand and queued (the worker could not decide them), the in-process queue writes them
    to its keep file, in hand first; the next queue on that file takes them back first, skipping a line that is no
    request, and removes the file. Closed with nothing undecided, it writes nothing."""
    keep = tmp_path / QUEUE_KEEP_FILE
    first = LocalQueue(keep)
    for rid in ("a", "b", "c"):
        await first.put(play(rid))
    decided, in_hand = await first.take(1, wait_s=0), await first.take(1, wait_s=0)
    await first.ack(decided)
    assert [d.request.request_id for d in in_hand] == ["b"]
    await first.close()
    keep.write_text(keep.read_text() + "not a request\n")
    second = LocalQueue(keep)
    assert not keep.exists()
    assert await second.pending("b") == play("b")
    assert [d.request for d in await second.take(10, wait_s=0)] == [play("b"), play("c")]
    third = LocalQueue(keep)
    await third.close()
    assert not keep.exists()


class _Refusing(LocalQueue):
    """A queue whose store does not answer after its first put."""

    async def put(self, request: PlayRequest) -> None:
        if await self.depth():
            raise Unavailable("the queue's store does not answer")
        await super().put(request)


async def test_what_the_embedded_queue_kept_is_put_on_a_shared_queue_once_whole(tmp_path: Path) -> None:
    """queue_kept (a distributed start): every kept request is put on the queue, then the file is removed; a queue
    that fails midway leaves the file whole for the next start; a file another process holds is left to it."""
    keep = tmp_path / QUEUE_KEEP_FILE
    first = LocalQueue(keep)
    for rid in ("a", "b"):
        await first.put(play(rid))
    await first.close()
    kept = keep.read_text()
    assert await queue_kept(keep, _Refusing()) == 0
    assert keep.read_text() == kept
    with keep.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert await queue_kept(keep, LocalQueue()) == 0
    shared = LocalQueue()
    assert await queue_kept(keep, shared) == 2
    assert not keep.exists()
    assert [d.request for d in await shared.take(10, wait_s=0)] == [play("a"), play("b")]
    assert await queue_kept(keep, shared) == 0
