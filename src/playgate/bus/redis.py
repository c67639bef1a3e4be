"""The distributed bus: a Redis Streams request queue with one consumer group, and a fan-out over Redis pub/sub.

Keys (all under playgate:):
- `playgate:requests` the stream of play requests (XADD with MAXLEN ~ maxlen), read by the group `workers`;
- `playgate:requests:dead` the dead-letter stream: requests given up after max_attempts deliveries;
- `playgate:pending:<request id>` the request while it is owed a decision, so that any API process answers
  `GET /v1/plays/{id}` with "pending"; written with the XADD by one script (enqueue.lua), deleted at the ack
  (ack.lua), kept at most pending_ttl_s;
- channel `playgate:decisions` carries every socket message of the decisions and stream ends to the API processes,
  each of which emits them to its own sockets, with the decisions themselves for their `?wait=` waiters: a worker
  publishes a batch of decisions, an API process a stop's `stream_ended`, in one message, `{"d": [decision, ...],
  "e": [[event, body, room], ...]}` (one PUBLISH, one parse in each API process); on a single server a player's
  stop publishes its `stream_ended` from the stop script itself (ledger/stop.lua), without "d".

Each API process's Socket.IO server has python-socketio's Redis client manager too (channel `socketio`), for what
python-socketio itself sends between servers (an emit to one socket id, a disconnect), and for the socket messages
of a worker of the version before this one.

On a Redis Cluster (a redis+cluster:// URL) the queue is PLAYGATE_QUEUE_SHARDS streams (connections.QueueShard,
`playgate:{b…}:requests`, `:requests:dead` and `:pending:<request id>` in one slot each, so each script runs in
one slot), a request on its user's shard; a decision is kept in its user's slot (connections.KeyLayout); the
decisions (on the first of connections.decision_channels()) and python-socketio's manager use sharded pub/sub
(SPUBLISH / SSUBSCRIBE) over redis-py's cluster client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any

import orjson
import socketio
from redis import exceptions as redis_errors
from redis.asyncio import RedisCluster

from playgate.batch import GroupCommit
from playgate.bus.local import LeanManager
from playgate.bus.protocol import (
    Conflicts,
    Delivery,
    Emit,
    Emitter,
    EmittingFanout,
    PlaybackOf,
    request_from_json,
    request_to_json,
)
from playgate.connections import (
    DECISIONS_CHANNEL,
    GROUP,
    QUEUE_SHARDS,
    QueueShard,
    ScriptCall,
    call_together,
    connect,
    decision_channels,
    decision_from_json,
    decision_to_json,
    is_cluster_url,
    is_sentinel_url,
    layout_for,
    pool_options,
    ready,
    translate_redis_errors,
)
from playgate.domain import EndedStream, Outcome, PlayRequest, id_owner
from playgate.errors import Unavailable

log = logging.getLogger("playgate.bus")

DEAD_LETTER_MAXLEN = 100_000
LISTEN_POLL_S = 1.0
# How long one poll of the cluster's decisions channel waits when nothing comes (a message ends it at once).
# redis-py's cluster pub/sub waits on each node's subscription in turn, but the fan-out subscribes to one sharded
# channel, on one node. 0.01 s (from when it heard eight channels over the nodes) cost an idle API process 2 to 3% of a
# core, against 0.5% on one server.
SHARDED_POLL_S = 0.25
# Pauses of the pub/sub listeners between tries after a lost connection: they listen again at most
# LISTEN_BACKOFF_MAX_S after Redis is back.
LISTEN_BACKOFF_MIN_S = 0.05
LISTEN_BACKOFF_MAX_S = 0.5
# A worker that found every queue shard empty waits on one of them (in turn) at most this long, then looks at all
# again: a request on another shard waits at most about this long for an idle worker.
SHARD_BLOCK_S = 0.1
MAX_BLOCKING_READS = 10_000


def _script(name: str) -> str:
    return (resources.files("playgate.bus") / name).read_text(encoding="utf-8")


class SlotMoved(Exception):
    """A shard stopped serving a sharded channel this process listens to: subscribe again (where it now lives)."""


def socket_manager(url: str) -> socketio.AsyncRedisManager:
    """python-socketio's Redis client manager of an API process's server, with the pool options (health checks,
    retries) of every PlayGate Redis client."""
    if is_cluster_url(url):
        return ClusterRedisManager(url, redis_options=pool_options())
    return ResilientRedisManager(url, redis_options=pool_options())


class ResilientRedisManager(socketio.AsyncRedisManager, LeanManager):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's Redis manager with its transport hook `_listen` made to recover quickly, delivering to
    this process's sockets as LeanManager does (each packet encoded once, no task per socket).

    The library's own listener waits 1, 2, 4 ... up to 60 s between tries after it loses Redis, so that sockets
    got their decisions seconds after Redis was back; this one tries again after at most LISTEN_BACKOFF_MAX_S,
    and closes the client it gives up on instead of leaving its pool behind.
    """

    def _redis_connect(self) -> None:
        if not is_sentinel_url(self.redis_url):
            super()._redis_connect()
            return
        # python-socketio reads a redis+sentinel:// URL too, but leaves its user name and password percent-encoded
        # (p%40ss for p@ss): the client every PlayGate component opens instead.
        self.redis = connect(self.redis_url, decode=False)
        pubsub: Any = self.redis.pubsub(ignore_subscribe_messages=True)  # None on a cluster (ClusterRedisManager)
        self.pubsub = pubsub
        self.connected = True

    async def _listen(self) -> AsyncIterator[Any]:
        channel = self.channel.encode("utf-8")
        backoff_s = LISTEN_BACKOFF_MIN_S
        while True:
            try:
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                backoff_s = LISTEN_BACKOFF_MIN_S
                async for message in self.pubsub.listen():
                    if message["channel"] == channel and message["type"] == "message" and "data" in message:
                        yield message["data"]
            except (redis_errors.RedisError, OSError) as exc:
                log.warning("Socket.IO manager lost Redis (%s); subscribing again in %.2fs", exc, backoff_s)
            finally:
                if self.redis is not None:
                    with contextlib.suppress(redis_errors.RedisError, OSError):
                        await self.pubsub.aclose()
                        await self.redis.aclose()
            await asyncio.sleep(backoff_s)
            backoff_s = min(LISTEN_BACKOFF_MAX_S, backoff_s * 2)


class ClusterRedisManager(ResilientRedisManager):
    """python-socketio's Redis manager over a Redis Cluster (the manager itself knows redis:// and sentinel URLs):
    redis-py's RedisCluster, and its channel a sharded one (SPUBLISH / SSUBSCRIBE, Redis 7), so that the messages
    go to one shard instead of every node. Only the transport hooks are replaced (`_publish`, `_listen`)."""

    def _redis_connect(self) -> None:
        if not is_cluster_url(self.redis_url):
            super()._redis_connect()
            return
        self.redis = connect(self.redis_url, decode=False)
        self.pubsub = None
        self.connected = True

    async def _publish(self, data: Any) -> Any:
        if not is_cluster_url(self.redis_url):
            return await super()._publish(data)
        async with translate_redis_errors():
            if not self.connected:
                self._redis_connect()
            await ready(self.redis)
            return await self.redis.spublish(self.channel, self.json.dumps(data))

    async def _listen(self) -> AsyncIterator[Any]:
        if not is_cluster_url(self.redis_url):
            async for data in super()._listen():
                yield data
            return
        backoff_s = LISTEN_BACKOFF_MIN_S
        while True:
            try:
                self._redis_connect()
                await ready(self.redis)
                pubsub: Any = self.redis.pubsub()
                self.pubsub = pubsub
                await pubsub.ssubscribe(self.channel)
                backoff_s = LISTEN_BACKOFF_MIN_S
                while True:
                    message = await pubsub.get_sharded_message(timeout=LISTEN_POLL_S)
                    if message is not None and message.get("type") == "sunsubscribe":
                        raise SlotMoved(f"{self.channel} is no longer served by its node")
                    if message is not None and message.get("type") == "smessage":
                        yield message["data"]
            except (redis_errors.RedisError, redis_errors.RedisClusterException, SlotMoved, OSError) as exc:
                # Any failure of the cluster ends this subscription, never the listener (python-socketio's task
                # would end with it, and no socket of this process would hear a decision again).
                log.warning("Socket.IO listener lost the cluster (%s); subscribing again in %.2fs", exc, backoff_s)
            finally:
                # The next try makes a new client (one that learns the slot map afresh): close this one's
                # connections instead of leaving them open on every node.
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    if self.pubsub is not None:
                        await self.pubsub.aclose()
                    if self.redis is not None:
                        await self.redis.aclose()
            await asyncio.sleep(backoff_s)
            backoff_s = min(LISTEN_BACKOFF_MAX_S, backoff_s * 2)


class RedisQueue:
    """Requests on Redis streams; each worker is one consumer of the group `workers` of every stream.

    On a single server there is one stream. On a cluster there are `shards` streams (connections.QueueShard), each
    in one slot spread over the primaries, each with its own group: a request goes to its user's shard, so that one
    user's requests keep their order on one stream and no single key carries all traffic. Each shard is read by one
    worker at a time (the shards dealt out among the live workers, each held under a lease: _hold_shards), so one
    user's requests are decided in arrival order; a worker reads its shards a share of a batch from each, then the
    rest from those that had more.

    An entry is acknowledged only after its decision is committed and published (the Worker calls ack then).
    Entries left pending longer than claim_idle_s (their worker died) are claimed by another worker, shard by shard;
    every delivery counts in Delivery.attempts, and an entry acknowledged after more than max_attempts deliveries
    (the Worker answered it with reason `error`) is copied to its shard's dead-letter stream.
    """

    def __init__(
        self,
        url: str,
        *,
        consumer: str,
        claim_idle_s: float,
        maxlen: int,
        pending_ttl_s: float,
        max_attempts: int,
        shards: int = QUEUE_SHARDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = connect(url, client_name=f"playgate-queue:{consumer}")
        self._layout = layout_for(url)
        self._shards = self._layout.queue_shards(shards)
        self._enqueue = self._redis.register_script(_script("enqueue.lua"))
        # On a single server, requests that arrive together (the players of one batch of decisions ask again at
        # once) go in one pipeline, an enqueue.lua call each; on a cluster each goes on its own, to its shard's slot.
        self._puts: GroupCommit[ScriptCall, Any] | None = (
            None if self._layout.cluster else GroupCommit(self._put_together)
        )
        self._ack = self._redis.register_script(_script("ack.lua"))
        self._own = self._redis.register_script(_script("own.lua"))
        self._live = self._redis.register_script(_script("workers.lua"))
        self.consumer = consumer
        self._claim_idle_ms = max(1, round(claim_idle_s * 1000))
        self._claim_every_s = max(0.05, min(1.0, claim_idle_s / 2))
        self._maxlen = maxlen
        self._pending_ttl_ms = max(1, round(pending_ttl_s * 1000))
        self._max_attempts = max_attempts
        self._clock = clock
        self._next_claim_at = 0.0
        # Several shards: each is read by one worker at a time (own.lua), the shards dealt out among the live
        # workers; `_owned` are this worker's, renewed every _claim_every_s (the lease: claim_idle_s).
        self._owned: list[QueueShard] = self._shards if len(self._shards) == 1 else []
        self._next_own_at = 0.0
        self._next_shard = 0  # where the next read starts and the next blocking read waits: the shards in turn
        self._group_ready = False
        self._released: list[Delivery] = []
        self._reading = True

    def _shard_of_user(self, user_id: str) -> QueueShard:
        return self._shards[self._layout.queue_shard_of_user(user_id, len(self._shards))]

    def _shard_of(self, receipt: tuple[int, Any]) -> QueueShard:
        return self._shards[receipt[0]]

    async def put(self, request: PlayRequest) -> None:
        """Append the request to its user's shard and mark it pending there, both or neither, once (enqueue.lua:
        a retry of a call whose reply was lost adds nothing)."""
        shard = self._shard_of_user(request.user_id)
        keys = [shard.pending_key(request.request_id), shard.requests_key]
        args: list[Any] = [request_to_json(request), self._pending_ttl_ms, self._maxlen]
        async with translate_redis_errors():
            if self._puts is None:
                await self._enqueue(keys=keys, args=args)
            else:
                await self._puts((keys, args))

    async def _put_together(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """enqueue.lua's replies to requests that arrived together, in one pipeline (a call run again, its script
        loaded after NOSCRIPT, adds nothing: enqueue.lua finds its request pending)."""
        return await call_together(self._redis, self._enqueue, calls)

    async def pending(self, request_id: str) -> PlayRequest | None:
        """The request while it is owed a decision, seen from any process: in the shard its id names (a request id
        names its user, domain.owned_id), else looked for in every shard."""
        owner = id_owner(request_id)
        shards = [self._shard_of_user(owner)] if owner is not None else self._shards
        async with translate_redis_errors():
            pipe = self._redis.pipeline(transaction=False)  # GETs, not MGET: the shards lie in several slots
            for shard in shards:
                pipe.get(shard.pending_key(request_id))
            found = [raw for raw in await pipe.execute() if raw]
        return request_from_json(found[0]) if found else None

    def stop_reading(self) -> None:
        """Take no new entries from now on (a stopping worker finishes its batch; others take the rest)."""
        self._reading = False

    async def take(self, max_items: int, wait_s: float) -> list[Delivery]:
        """Released entries first, then entries of dead workers, then new ones (waiting up to wait_s for some)."""
        async with translate_redis_errors():
            await self._ensure_groups()
            batch = await self._reclaim_released(max_items)
            if self._reading and len(self._shards) > 1 and self._clock() >= self._next_own_at:
                batch += await self._hold_shards(max_items - len(batch))
                self._next_own_at = self._clock() + self._claim_every_s
            if self._reading and len(batch) < max_items and self._clock() >= self._next_claim_at:
                batch += await self._claim_idle(max_items - len(batch))
                self._next_claim_at = self._clock() + self._claim_every_s
            if self._reading and len(batch) < max_items:
                batch += await self._read_new(max_items - len(batch), wait_s if not batch else 0.0)
        return batch

    async def _ensure_groups(self, *, force: bool = False) -> None:
        if self._group_ready and not force:
            return
        for shard in self._shards:
            try:
                await self._redis.xgroup_create(shard.requests_key, GROUP, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    async def _reclaim_released(self, max_items: int) -> list[Delivery]:
        """Claim released entries back to this consumer (counting one more delivery each), shard by shard."""
        if not self._released:
            return []
        chosen, self._released = self._released[:max_items], self._released[max_items:]
        try:
            for index in sorted({d.receipt[0] for d in chosen}):
                ids = [d.receipt[1] for d in chosen if d.receipt[0] == index]
                await self._redis.xclaim(self._shards[index].requests_key, GROUP, self.consumer, 0, ids)
        except BaseException:
            self._released = chosen + self._released
            raise
        return [Delivery(d.request, d.attempts + 1, d.receipt) for d in chosen]

    def _in_turn(self) -> list[QueueShard]:
        """Every shard this worker reads, starting from the next one in turn (so that no shard is always read
        last)."""
        if not self._owned:
            return []
        start = self._next_shard % len(self._owned)
        self._next_shard = (start + 1) % len(self._owned)
        return self._owned[start:] + self._owned[:start]

    async def _hold_shards(self, max_items: int) -> list[Delivery]:
        """Deal the shards out among the live workers (shard i to the i mod n-th by name), hold this worker's and
        give up the others; returns what earlier owners left pending in the shards just taken (claimed at once,
        before any newer entry is read, so that a user's requests keep their order across a hand-over).

        A shard is taken only once its former owner gave it up (after its batch was acknowledged) or stopped
        renewing it for claim_idle_s (it died): two workers never read one shard at once, unless one stalls longer
        than that.
        """
        lease_ms = str(self._claim_idle_ms)
        live = [
            str(c) for c in await self._live(keys=[self._shards[0].workers_key], args=[self.consumer, lease_ms, "0"])
        ]
        rank = live.index(self.consumer) if self.consumer in live else 0
        keep = {d.receipt[0] for d in self._released}  # retried entries stay with this worker
        wanted = [s for s in self._shards if s.index % max(1, len(live)) == rank or s.index in keep]
        held = await asyncio.gather(
            *(
                self._own(keys=[s.owner_key], args=[self.consumer, lease_ms, "1" if s in wanted else "0"])
                for s in self._shards
            )
        )
        self._owned = [s for s, answer in zip(self._shards, held, strict=True) if int(answer) > 0]
        batch: list[Delivery] = []
        for shard, answer in zip(self._shards, held, strict=True):
            if int(answer) == 2 and len(batch) < max_items:
                batch += await self._claim_idle_in(shard, max_items - len(batch), idle_ms=0)
        return batch

    async def _give_up_shards(self) -> None:
        """Leave the live workers and give up every shard held, so that the others take them at once."""
        if len(self._shards) == 1 or self._next_own_at == 0.0:
            return  # never read (an API process's queue)
        lease_ms = str(self._claim_idle_ms)
        await self._live(keys=[self._shards[0].workers_key], args=[self.consumer, lease_ms, "1"])
        await asyncio.gather(*(self._own(keys=[s.owner_key], args=[self.consumer, lease_ms, "0"]) for s in self._owned))
        self._owned = []

    async def _claim_idle(self, max_items: int) -> list[Delivery]:
        """XAUTOCLAIM entries idle longer than claim_idle_s, shard after shard; their attempts from XPENDING."""
        batch: list[Delivery] = []
        for shard in self._in_turn():
            if len(batch) >= max_items:
                break
            batch += await self._claim_idle_in(shard, max_items - len(batch))
        return batch

    async def _claim_idle_in(self, shard: QueueShard, max_items: int, idle_ms: int | None = None) -> list[Delivery]:
        try:
            reply = await self._redis.xautoclaim(
                shard.requests_key,
                GROUP,
                self.consumer,
                self._claim_idle_ms if idle_ms is None else idle_ms,
                start_id="0-0",
                count=max_items,
            )
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The server lost the group (restarted without persistence): make it again, as _read_new does.
            await self._ensure_groups(force=True)
            return []
        entries = [e for e in reply[1] if e and e[1]]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            log.error("%d pending request(s) were trimmed from the stream before being decided", len(deleted))
            await self._redis.xack(shard.requests_key, GROUP, *deleted)
        if not entries:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(shard.requests_key, GROUP, min=entry_id, max=entry_id, count=1)
        counts = await pipe.execute()
        attempts = [int(found[0]["times_delivered"]) if found else 1 for found in counts]
        log.warning("claimed %d request(s) left pending by another worker", len(entries))
        return await self._deliveries(shard, entries, attempts)

    async def _read_new(self, max_items: int, wait_s: float) -> list[Delivery]:
        """New entries: with one shard, one read blocking up to wait_s. With several, a share of max_items from
        each (in parallel), then the rest from the shards that had their full share; when all were empty, block on
        one shard in turn for at most SHARD_BLOCK_S and look at all again, until wait_s has passed."""
        if len(self._shards) == 1:
            block_ms = max(1, round(wait_s * 1000)) if wait_s > 0 else None
            return await self._read(self._shards[0], max_items, block_ms)
        if not self._owned:  # more workers than shards: this one waits until a shard is dealt to it
            await asyncio.sleep(min(wait_s, self._claim_every_s))
            return []
        batch = await self._read_shares(max_items)
        deadline = time.monotonic() + wait_s
        for _ in range(MAX_BLOCKING_READS):  # bounded; ends at the deadline long before
            left_s = deadline - time.monotonic()
            if batch or left_s <= 0:
                break
            shard = self._in_turn()[0]
            batch = await self._read(shard, max_items, max(1, round(min(left_s, SHARD_BLOCK_S) * 1000)))
            if not batch:
                batch = await self._read_shares(max_items)
        return batch

    async def _read_shares(self, max_items: int) -> list[Delivery]:
        """Up to max_items new entries, never more: first an even share from each shard (in parallel), then what is
        left from the shards that gave their whole share. Fewer items than shards: shard after shard, in turn."""
        asked = self._in_turn()
        if max_items < len(asked):
            batch: list[Delivery] = []
            for shard in asked:
                if len(batch) >= max_items:
                    break
                batch += await self._read(shard, max_items - len(batch), None)
            return batch
        share = max_items // len(asked)
        replies = await asyncio.gather(*(self._read(shard, share, None) for shard in asked))
        batch = [d for reply in replies for d in reply]
        fuller = [shard for shard, reply in zip(asked, replies, strict=True) if len(reply) == share]
        left = max_items - len(batch)
        if fuller and left > 0:
            fuller = fuller[:left]
            more = left // len(fuller)
            replies = await asyncio.gather(*(self._read(shard, more, None) for shard in fuller))
            batch += [d for reply in replies for d in reply]
        return batch

    async def _read(self, shard: QueueShard, max_items: int, block_ms: int | None) -> list[Delivery]:
        try:
            reply = await self._xreadgroup(shard, max_items, block_ms)
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The server lost the group (restarted without persistence): make it again; read next time.
            await self._ensure_groups(force=True)
            return []
        if not reply:
            return []
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        return await self._deliveries(shard, entries, [1] * len(entries))

    async def _xreadgroup(self, shard: QueueShard, max_items: int, block_ms: int | None) -> Any:
        """XREADGROUP of new entries. On a cluster it is sent to the shard's node: redis-py's cluster client asks a
        server for the keys of a command with movable keys, on a connection of another event loop (redis-py 8.1),
        and a redirection (the shard's slot moved, a failover) reads nothing this time (NOT_NOW: 503, then again).
        """
        if not isinstance(self._redis, RedisCluster):
            return await self._redis.xreadgroup(
                GROUP, self.consumer, {shard.requests_key: ">"}, count=max_items, block=block_ms
            )
        await ready(self._redis)
        node = self._redis.get_node_from_key(shard.requests_key)
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        args = ("GROUP", GROUP, self.consumer, "COUNT", max_items, *block, "STREAMS", shard.requests_key, ">")
        return await self._redis.execute_command("XREADGROUP", *args, target_nodes=node)

    async def _deliveries(self, shard: QueueShard, entries: Sequence[Any], attempts: Sequence[int]) -> list[Delivery]:
        """Deliveries of stream entries; an entry that is not a request is dead-lettered at once."""
        batch: list[Delivery] = []
        for (entry_id, fields), count in zip(entries, attempts, strict=True):
            try:
                request = request_from_json(fields["r"])
            except (KeyError, TypeError, ValueError) as exc:
                log.error("dead-lettering stream entry %s that is not a play request: %s", entry_id, exc)
                await self._acknowledge(shard, [entry_id], [], [{"entry": entry_id, **fields}])
                continue
            batch.append(Delivery(request, count, (shard.index, entry_id)))
        return batch

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """XACK the entries and drop their pending markers, all at once in each shard (ack.lua), the shards in
        parallel.

        An entry past max_attempts (the Worker answered it `denied`, reason `error`, and the ledger keeps that
        answer) is copied to its shard's dead letters.
        """
        if not deliveries:
            return
        by_shard: dict[int, list[Delivery]] = {}
        for delivery in deliveries:
            by_shard.setdefault(delivery.receipt[0], []).append(delivery)
        async with translate_redis_errors():
            await asyncio.gather(*(self._ack_in(self._shards[i], items) for i, items in by_shard.items()))

    async def _ack_in(self, shard: QueueShard, deliveries: Sequence[Delivery]) -> None:
        dead_letters = [
            {"r": request_to_json(d.request), "attempts": d.attempts, "entry": str(d.receipt[1])}
            for d in deliveries
            if d.attempts > self._max_attempts
        ]
        markers = [shard.pending_key(d.request.request_id) for d in deliveries]
        await self._acknowledge(shard, [d.receipt[1] for d in deliveries], markers, dead_letters)

    async def _acknowledge(
        self, shard: QueueShard, receipts: Sequence[Any], markers: Sequence[str], dead_letters: Sequence[Any]
    ) -> None:
        """ack.lua: add the dead letters, XACK the receipts, delete the pending markers, all or nothing."""
        keys = [shard.requests_key, shard.dead_letter_key, *markers]
        args = [GROUP, DEAD_LETTER_MAXLEN, orjson.dumps(dead_letters), *receipts]
        await self._ack(keys=keys, args=args)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Keep them pending on this consumer and hand them out again first (each re-delivery is counted)."""
        self._released.extend(deliveries)

    async def depth(self) -> int:
        """Entries not yet read by the group plus entries read and not yet acknowledged, over every shard."""
        return sum(await asyncio.gather(*(self._depth_of(shard) for shard in self._shards)))

    async def _depth_of(self, shard: QueueShard) -> int:
        async with translate_redis_errors():
            try:
                groups = await self._redis.xinfo_groups(shard.requests_key)
            except redis_errors.ResponseError:
                return 0  # no stream yet
        for group in groups:
            if group.get("name") == GROUP:
                return int(group.get("pending") or 0) + int(group.get("lag") or 0)
        async with translate_redis_errors():
            return int(await self._redis.xlen(shard.requests_key))

    async def pending_count(self) -> int:
        """Entries read by a worker of the group and not yet acknowledged (XPENDING's count), over every shard."""
        total = 0
        async with translate_redis_errors():
            for shard in self._shards:
                try:
                    summary = await self._redis.xpending(shard.requests_key, GROUP)
                except redis_errors.ResponseError:
                    continue  # no stream or group yet
                total += int(summary.get("pending") or 0)
        return total

    async def dead_letter_count(self) -> int:
        """Entries in the dead-letter streams."""
        async with translate_redis_errors():
            return sum([int(await self._redis.xlen(shard.dead_letter_key)) for shard in self._shards])

    async def dead_letters(self, count: int = 100) -> list[PlayRequest]:
        """The latest requests in the dead-letter streams, newest first (for operators and tests)."""
        entries: list[Any] = []
        async with translate_redis_errors():
            for shard in self._shards:
                entries += await self._redis.xrevrange(shard.dead_letter_key, count=count) or []
        entries.sort(key=lambda entry: tuple(int(part) for part in str(entry[0]).split("-")), reverse=True)
        found = []
        for _, fields in entries[:count]:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                assert fields is not None
                found.append(request_from_json(fields["r"]))
        return found

    async def ping(self) -> None:
        """Raise Unavailable unless Redis answers."""
        async with translate_redis_errors():
            await self._redis.ping()

    async def close(self) -> None:
        """Give up the shards this worker read, then close the connection pool."""
        try:
            async with translate_redis_errors():
                await self._give_up_shards()
        except Unavailable as exc:
            log.warning("could not give up the queue shards (%s): others take them after the lease", exc)
        await self._redis.aclose()


class OwnSockets:
    """The Emitter of an API process's own sockets: its Socket.IO server, whose plain emit would go through Redis
    to every process (`ignore_queue` keeps it here)."""

    def __init__(self, server: socketio.AsyncServer) -> None:
        self._server = server

    async def emit(self, event: str, data: Any = None, *, room: str | None = None) -> None:
        """Send `event` to the sockets of `room` held by this process."""
        await self._server.emit(event, data, room=room, ignore_queue=True)


class RedisFanout(EmittingFanout):
    """Decisions and stream ends to every API process over Redis pub/sub (the channel `playgate:decisions`, above):
    each emits the socket messages to its own sockets (`local`) and wakes its own `?wait=` waiters."""

    def __init__(
        self,
        url: str,
        local: Emitter,
        playback: PlaybackOf | None = None,
        conflicts: Conflicts | None = None,
        *,
        to_every_user_room: bool = False,
    ) -> None:
        super().__init__(local, playback, conflicts, to_every_user_room=to_every_user_room)
        self._redis = connect(url)
        self._cluster = is_cluster_url(url)
        self._keys = layout_for(url)
        # On a cluster the first of the sharded channels alone (see _send and _listen).
        self._channel = decision_channels()[0] if self._cluster else DECISIONS_CHANNEL
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, ready_timeout_s: float = 5.0) -> None:
        """Listen for decisions (API processes); waits until subscribed, or ready_timeout_s if Redis is down."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="playgate-decision-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), ready_timeout_s)

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Send the decisions (to wake waiters) and their socket messages to every API process: one PUBLISH."""
        if outcomes:
            await self._send([decision_to_json(o.decision) for o in outcomes], self._emits(outcomes))

    async def announce(self, ended: Sequence[EndedStream]) -> None:
        """Send `stream_ended` of each ended stream to every API process: one PUBLISH."""
        emits = self._ended_emits(ended)
        if emits:
            await self._send([], emits)

    async def _send(self, decided: list[dict[str, Any]], emits: list[Emit]) -> None:
        payload = orjson.dumps({"d": decided, "e": emits})
        async with translate_redis_errors():
            if self._cluster:
                # One sharded channel, so that a failover of one primary (whose subscribers hear nothing until they
                # subscribe again) can cost socket messages only if it is that channel's, as python-socketio's one
                # channel did (workers of the version before took the channels in turn).
                await ready(self._redis)
                await self._redis.spublish(self._channel, payload)
            else:
                await self._redis.publish(self._channel, payload)

    async def _deliver(self, raw: str | bytes) -> None:
        """A message of the decisions channel: wake this process's waiters, then emit to its own sockets. A bare
        list is from a worker of the version before this one (decisions only: its socket messages come over
        python-socketio's channel)."""
        try:
            message = orjson.loads(raw)
            # A stop's `stream_ended`, published by the ledger's own script (ledger.redis), has no "d".
            decided, emits = (message, []) if isinstance(message, list) else (message.get("d", []), message["e"])
            woken = [decision_from_json(item) for item in decided if item["r"] in self._waiters]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("dropped a malformed message of the decisions channel (%s): %.200r", exc, raw)
            return
        for decision in woken:
            self._wake(decision)
        if self.on_ended is not None:
            ended = [body["streamId"] for event, body, _room in emits if event == "stream_ended"]
            if ended:
                self.on_ended(ended)
        for event, body, room in emits:
            try:
                await self._emitter.emit(event, body, room=room)
            except Exception:  # one emit's failure must not keep the others from their sockets
                log.exception("could not emit %r to %s", event, room)

    async def _catch_up(self) -> None:
        """Wake the waiters whose decision was published while the listener was not subscribed (Redis was away):
        pub/sub keeps nothing, the decisions are kept under their keys."""
        request_ids = list(self._waiters)
        if not request_ids:
            return
        pipe = self._redis.pipeline(transaction=False)  # GETs, not MGET: the keys may live on several shards
        for request_id in request_ids:
            key = self._keys.find_decision_key(request_id)
            if key is not None:
                pipe.get(key)
        for raw in await pipe.execute():
            if raw:
                self._wake(decision_from_json(orjson.loads(raw)))

    async def _listen(self) -> None:
        """Subscribe (then catch up on decisions missed meanwhile), wake waiters and emit to the sockets; after a
        lost connection, subscribe again with a growing pause.

        On a cluster only the channel the workers publish on is heard: one subscription on one node, so that a
        primary that carries none of the sockets' messages can fail over without the sockets missing any (a
        subscription over several nodes is torn down when any of them goes away)."""
        backoff_s = LISTEN_BACKOFF_MIN_S
        while True:
            # redis-py's cluster pub/sub (ssubscribe, get_sharded_message) is unannotated
            pubsub: Any = None
            try:
                await ready(self._redis)
                # On a cluster the subscription messages are seen: a shard that stops serving a channel's slot (a
                # failover, a migration) says so with `sunsubscribe`, and the listener subscribes again.
                pubsub = self._redis.pubsub(ignore_subscribe_messages=not self._cluster)
                if self._cluster:
                    await pubsub.ssubscribe(self._channel)
                else:
                    await pubsub.subscribe(self._channel)
                self._subscribed.set()
                backoff_s = LISTEN_BACKOFF_MIN_S
                await self._catch_up()
                await self._hear(pubsub)
            except (redis_errors.RedisError, redis_errors.RedisClusterException, SlotMoved, OSError) as exc:
                # Any Redis failure (on a cluster: a slot moving, a failover) ends this subscription, never the
                # listener.
                self._subscribed.clear()
                log.warning("decision listener lost Redis (%s); subscribing again in %.2fs", exc, backoff_s)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis_errors.RedisError, OSError):
                        await pubsub.aclose()
            await asyncio.sleep(backoff_s)
            backoff_s = min(LISTEN_BACKOFF_MAX_S, backoff_s * 2)

    async def _hear(self, pubsub: Any) -> None:
        """Deliver each message of the subscription, until it fails (SlotMoved: a channel left its node). On one
        server, a read that waits for the next message (pub/sub's `listen`): polled with a timeout instead, every
        message cost an API process twice as much (the timeout's set-up, each read's own checks), and every API
        process hears every decision of the deployment, whoever holds its sockets."""
        if not self._cluster:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    await self._deliver(message["data"])
            raise redis_errors.ConnectionError("the decisions channel's subscription ended")
        while True:
            message = await pubsub.get_sharded_message(timeout=SHARDED_POLL_S)
            if message is not None and message.get("type") == "sunsubscribe":
                raise SlotMoved(f"{message.get('channel')} is no longer served by its node")
            if message is not None and message.get("type") in ("message", "smessage"):
                await self._deliver(message["data"])

    async def close(self) -> None:
        """Stop listening, cancel anyone still waiting, close the connection pool."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        self._cancel_waiters()
        await self._redis.aclose()
