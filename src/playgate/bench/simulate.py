"""A prime-time simulation on the admission path alone (no HTTP): a million users' plays, heartbeats, stops and
vanished players against a Redis Cluster of real redis-server processes started here (or a given Redis URL).

Time is simulated: the ledger's clock is a virtual one that moves one second a tick, so a stream's lease, its
heartbeats every heartbeat_s and its expiry play out as in production, as fast as the ledger can take them. Each
tick sends that second's plays (a rate that surges in the middle third: prime time), the heartbeats that fall
due, the stops of viewers who leave; a viewer who vanishes sends nothing more and its stream expires (the sweeper
runs every sweep_s). Reported: decisions/s and heartbeats/s of wall time, p99 of a batch's and a heartbeat's
round trip, what ended how, Redis memory per shard and per active stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from playgate.bench.admission import redis_memory
from playgate.bench.cluster import each_primary, redis_cluster
from playgate.bench.stats import percentiles_ms
from playgate.domain import Admission, PlayRequest, Quota, Status, owned_id
from playgate.ledger.redis import RedisLedger

LIMITS = (1, 2, 4)  # plans: basic, standard, premium
DEVICES = 4
VIDEOS = 1000
BATCH = 256  # the worker's batch
IN_FLIGHT = 8  # batches (or heartbeat groups) sent at once, as several workers would
VANISH_SHARE = 0.1  # players that stop sending anything (crash, network): their stream expires
MEAN_VIEW_S = 900.0


@dataclass(frozen=True)
class SimulationSpec:
    """The simulated population and evening."""

    users: int = 1_000_000
    virtual_s: int = 180
    base_plays_per_s: int = 200
    surge_plays_per_s: int = 800
    lease_s: float = 90.0
    heartbeat_s: float = 30.0
    sweep_s: float = 10.0
    shards: int = 3
    redis_url: str | None = None
    seed: int = 1
    # The players' device ids: "issued" as long as those the server issues (devices.DeviceIds: dv1.<24 hex>.<32
    # hex>, 61 characters), "short" as the other benchmarks' (d0..d3). Their length decides what a stream costs Redis.
    device_ids: str = "issued"


@dataclass
class Tally:
    """What happened, and how long each round trip took (seconds)."""

    allowed: int = 0
    denied: int = 0
    heartbeats: int = 0
    stops: int = 0
    expired: int = 0
    decide_s: list[float] = field(default_factory=list)
    heartbeat_s: list[float] = field(default_factory=list)


class VirtualClock:
    """The ledger's clock: epoch seconds that move only when the simulation says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def plays_per_s(spec: SimulationSpec, second: int) -> int:
    """The arrival rate at a virtual second: the base rate, the surge in the middle third (prime time)."""
    third = spec.virtual_s / 3
    return spec.surge_plays_per_s if third <= second < 2 * third else spec.base_plays_per_s


async def _timed(calls: Sequence[Callable[[], Awaitable[Any]]], into: list[float]) -> list[Any]:
    """Run the calls IN_FLIGHT at a time, recording each one's round trip."""
    results: list[Any] = []
    for start in range(0, len(calls), IN_FLIGHT):

        async def one(call: Callable[[], Awaitable[Any]]) -> Any:
            began = time.perf_counter()
            try:
                return await call()
            finally:
                into.append(time.perf_counter() - began)

        results += await asyncio.gather(*(one(c) for c in calls[start : start + IN_FLIGHT]))
    return results


class Evening:
    """The simulated viewers: who plays, whose heartbeats are due, who leaves or vanishes when."""

    def __init__(self, spec: SimulationSpec, ledger: RedisLedger, clock: VirtualClock) -> None:
        self.spec, self.ledger, self.clock = spec, ledger, clock
        self.rng = random.Random(spec.seed)
        self.tally = Tally()
        self.beats: list[tuple[float, str, str]] = []  # (due at, stream id, user id)
        self.leaves_at: dict[str, float] = {}  # stream id -> when its viewer leaves
        self.vanishes: set[str] = set()

    async def tick(self, second: int) -> None:
        """One virtual second: plays, due heartbeats and stops, and the sweeper on its interval."""
        await self._plays(plays_per_s(self.spec, second))
        await self._heartbeats()
        if second % int(self.spec.sweep_s) == 0:
            self.tally.expired += len(await self.ledger.sweep())

    def _device(self, user: int) -> str:
        """One of the user's DEVICES, with an id of the spec's kind (a device keeps its id)."""
        index = self.rng.randrange(DEVICES)
        return f"dv1.{user:024x}.{index:032x}" if self.spec.device_ids == "issued" else f"d{index}"

    async def _plays(self, count: int) -> None:
        requests = []
        for _ in range(count):
            n = self.rng.randrange(self.spec.users)
            user = f"u{n}"
            request = PlayRequest(owned_id(user), user, f"v{self.rng.randrange(VIDEOS)}", self._device(n), 0.0)
            requests.append(Admission(request, Quota(LIMITS[n % len(LIMITS)])))
        batches = [requests[i : i + BATCH] for i in range(0, len(requests), BATCH)]
        calls = [lambda b=b: self.ledger.decide(b) for b in batches]
        now = self.clock()
        for outcomes in await _timed(calls, self.tally.decide_s):
            for outcome in outcomes:
                d = outcome.decision
                if d.status is not Status.allowed or d.stream_id is None:
                    self.tally.denied += 1
                    continue
                self.tally.allowed += 1
                if d.stream_id in self.leaves_at:
                    continue  # the same device asked again: its stream goes on
                self.leaves_at[d.stream_id] = now + self.rng.expovariate(1 / MEAN_VIEW_S)
                if self.rng.random() < VANISH_SHARE:
                    self.vanishes.add(d.stream_id)
                heapq.heappush(self.beats, (now + self.spec.heartbeat_s, d.stream_id, d.user_id))

    async def _heartbeats(self) -> None:
        now = self.clock()
        due: list[tuple[str, str]] = []
        leaving: list[tuple[str, str]] = []
        while self.beats and self.beats[0][0] <= now:
            _, stream_id, user_id = heapq.heappop(self.beats)
            if stream_id in self.vanishes:
                continue  # no heartbeat, no stop: the lease runs out and the sweeper ends it
            if self.leaves_at.get(stream_id, now) <= now:
                leaving.append((stream_id, user_id))
                continue
            due.append((stream_id, user_id))
            heapq.heappush(self.beats, (now + self.spec.heartbeat_s, stream_id, user_id))
        beats = [lambda s=s, u=u: self.ledger.heartbeat(s, u) for s, u in due]
        self.tally.heartbeats += len(await _timed(beats, self.tally.heartbeat_s))
        stops = [lambda s=s, u=u: self.ledger.stop([s], u) for s, u in leaving]
        self.tally.stops += sum(len(ended) for ended in await _timed(stops, []))
        for stream_id, _ in leaving:
            self.leaves_at.pop(stream_id, None)


async def run_simulation(spec: SimulationSpec) -> dict[str, Any]:
    """Run the evening against a throwaway cluster (or spec.redis_url); one result document."""
    async with contextlib.AsyncExitStack() as stack:
        url = spec.redis_url
        if url is None:
            url = await stack.enter_async_context(redis_cluster(spec.shards))
        await each_primary(url, lambda client: client.flushall())
        empty = [int(i["used_memory"]) for i in await each_primary(url, lambda client: client.info("memory"))]
        clock = VirtualClock(1_800_000_000.0)
        ledger = RedisLedger(url, lease_s=spec.lease_s, decision_ttl_s=60.0, clock=clock)
        stack.push_async_callback(ledger.close)
        evening = Evening(spec, ledger, clock)
        started = time.perf_counter()
        for second in range(spec.virtual_s):
            await evening.tick(second)
            clock.now += 1.0
        elapsed_s = time.perf_counter() - started
        used = [int(i["used_memory"]) for i in await each_primary(url, lambda client: client.info("memory"))]
        keys = [int(n) for n in await each_primary(url, lambda client: client.dbsize())]
        memory = await redis_memory(url, ledger, sum(empty))  # then without the kept decisions
    t = evening.tally
    decisions = t.allowed + t.denied
    return {
        "tool": "playgate bench simulate",
        "params": {k: v for k, v in vars(spec).items() if k != "redis_url"},
        "elapsed_s": round(elapsed_s, 2),
        "decisions": decisions,
        "allowed": t.allowed,
        "denied": t.denied,
        "heartbeats": t.heartbeats,
        "stops": t.stops,
        "expired": t.expired,
        "decisions_per_s": round(decisions / elapsed_s, 1),
        "heartbeats_per_s": round(t.heartbeats / elapsed_s, 1),
        "batch_p99_ms": percentiles_ms(t.decide_s)["p99"],
        "heartbeat_p99_ms": percentiles_ms(t.heartbeat_s)["p99"],
        "active_streams": memory["active_streams"],
        "used_memory_bytes_per_shard": used,
        "keys_per_shard": keys,
        "decisions_kept": memory["redis_decisions_kept"],
        # The streams, their users' hashes and the lease indexes, once the kept decisions are deleted: what a flush
        # then returns (admission.redis_memory).
        "bytes_per_active_stream": memory["redis_bytes_per_active_stream"],
        # What the servers kept after that flush, above their memory before the run: buffers, not keys.
        "kept_after_flush_bytes": memory["redis_kept_after_flush_bytes"],
    }
