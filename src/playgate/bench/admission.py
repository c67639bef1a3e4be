"""The admission path alone: the worker deciding queued requests against a ledger, no HTTP, no sockets.

For each batch size a fresh ledger is filled with the same workload, and the worker's steps are timed until
the queue is empty: decisions/s by batch size. Ledgers: SQLite (a temp file, writing the audit trail and the shadow
denials in each decision's transaction, as the embedded deployment does), Redis (pipelined Lua), or a Redis
Cluster of `shards` primaries started here (one call sequence per node). With `workers` > 1, that many worker
processes share the users (each its own queue) and start together: decisions/s of them all. Policies:
`total` (a plan with the total limit only) or `every-rule` (a plan using every rule and a shadow policy), over
the same requests (kind tags and home/away addresses alike), to price the richer rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playgate.audit import ChangeJournal, LedgerEvents
from playgate.bench.cluster import each_primary, redis_cluster
from playgate.bench.target import BenchError, free_port, redis_server_command
from playgate.bus.local import LocalFanout, LocalQueue
from playgate.catalog.db import create_engine, upgrade
from playgate.catalog.service import Catalog
from playgate.connections import PREFIX, connect, decision_key, is_cluster_url, layout_for, primaries
from playgate.domain import PlayRequest, Policy, Status
from playgate.ledger.protocol import Ledger
from playgate.ledger.redis import RedisLedger
from playgate.ledger.sql import SqlLedger
from playgate.metrics import Metrics
from playgate.policy import rules_from_json
from playgate.worker import Worker

USER_LIMIT = 4
DEVICES_PER_USER = 8  # twice the limit: in steady state half the requests renew a stream, half are denied
POLICIES = ("total", "every-rule")
# Every rule at once, with caps the workload reaches (kinds, title, away) or nears (devices), and a shadow; `deny`
# at the limit as the total-only plan, so that both write alike and the difference is the rule's own cost.
EVERY_RULE = {
    "onLimit": "deny",
    "kinds": {"uhd": 1, "live": 2},
    "maxPerTitle": 2,
    "maxDevices": DEVICES_PER_USER,
    "deviceWindowDays": 30,
    "maxAwayStreams": 2,
}
EVERY_RULE_SHADOW = {"maxStreams": 2, "kinds": {"uhd": 1}, "maxDevices": 4}
VIDEO_KINDS = {"1": ("uhd",), "2": ("live",), "3": ("live", "uhd"), "4": ("vod",), "5": (), "6": ("vod", "uhd")}
LEASE_S = 3600.0
REDIS_START_TIMEOUT_S = 10.0


class NullEmitter:
    """Counts the Socket.IO emits the fan-out would make (no sockets in this benchmark)."""

    def __init__(self) -> None:
        self.emitted = 0
        self.statuses: Counter[str] = Counter()

    async def emit(self, event: str, data: Any = None, *, room: str | None = None) -> None:
        """Count one emit, and the outcome of each decision."""
        self.emitted += 1
        if event == "message" and isinstance(data, dict):
            self.statuses[str(data.get("status"))] += 1


@dataclass(frozen=True)
class AdmissionSpec:
    """The workload: `requests` decisions over `users` users, for each batch size."""

    batch_sizes: tuple[int, ...]
    requests: int
    users: int
    ledger: str  # "sqlite", "redis" or "redis-cluster"
    redis_url: str | None = None
    policy: str = "total"  # one of POLICIES
    shards: int = 3
    workers: int = 1


def workload(user_ids: Sequence[str], count: int, now: float) -> list[PlayRequest]:
    """`count` play requests, users taking turns, each user cycling over DEVICES_PER_USER devices; the videos
    carry kind tags and every third device is away from home (what only the every-rule plan looks at)."""
    requests = []
    for i in range(count):
        turn = i // len(user_ids)
        device = turn % DEVICES_PER_USER
        request_id = secrets.token_hex(16)
        video_id = str(device % 6 + 1)
        requests.append(
            PlayRequest(
                request_id=request_id,
                user_id=user_ids[i % len(user_ids)],
                video_id=video_id,
                device_id=f"device{device}",
                accepted_at=now,
                kinds=VIDEO_KINDS[video_id],
                away=device % 3 == 0,
            )
        )
    return requests


@contextlib.asynccontextmanager
async def redis_server(url: str | None) -> AsyncIterator[str]:
    """The given Redis URL, or a throwaway redis-server on a free port (no persistence), stopped afterwards."""
    if url is not None:
        yield url
        return
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *redis_server_command(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), REDIS_START_TIMEOUT_S)


async def _wait_for_port(port: int, process: asyncio.subprocess.Process) -> None:
    """Until something accepts connections on the port; BenchError if the process exits or time runs out."""
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline or process.returncode is not None:
                raise BenchError(f"redis-server did not start on port {port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


def _redis_ledger(url: str, clock: Callable[[], float]) -> Ledger:
    """The Redis ledger of the distributed deployment."""
    return RedisLedger(url, lease_s=LEASE_S, decision_ttl_s=3600.0, clock=clock)


async def _flush(url: str) -> None:
    await each_primary(url, lambda client: client.flushall())


async def shard_memory_bytes(url: str) -> list[int]:
    """used_memory of each primary (one entry for one server)."""
    return [int(info["used_memory"]) for info in await each_primary(url, lambda client: client.info("memory"))]


async def shard_cpu_s(url: str) -> list[float]:
    """CPU seconds (user + system) each primary has used since it started."""
    infos = await each_primary(url, lambda client: client.info("cpu"))
    return [float(info["used_cpu_user"]) + float(info["used_cpu_sys"]) for info in infos]


async def redis_cpu(url: str, before_s: list[float], run: dict[str, Any]) -> dict[str, Any]:
    """CPU per decision of the run: the worker processes' and the primaries' (from their CPU before the run)."""
    used_s = [after - before for after, before in zip(await shard_cpu_s(url), before_s, strict=True)]
    decisions = max(1, int(run["decisions"]))
    return {
        "redis_cpu_s_per_shard": [round(s, 4) for s in used_s],
        "worker_cpu_us_per_decision": round(1e6 * float(run["worker_cpu_s"]) / decisions, 1),
        "redis_cpu_us_per_decision": round(1e6 * sum(used_s) / decisions, 1),
    }


async def _redis_memory_bytes(url: str) -> int:
    return sum(await shard_memory_bytes(url))


async def redis_memory(url: str, ledger: Ledger, empty_bytes: int) -> dict[str, Any]:
    """Redis memory after the run, then without the kept decisions and the change logs (drained every 0.5 s in a
    deployment; here nothing drains them): what the active streams alone cost, measured as what FLUSHALL then
    returns. Not against `empty_bytes` (before the run): a redis-server that has served load keeps buffers that no
    flush returns (about 0.9 MB a primary here, the same after every later run), which are not the streams'."""
    used = await shard_memory_bytes(url)
    logged, log_bytes = await _delete_change_logs(url)
    active = await ledger.count_active()
    pattern = f"{PREFIX}{{*}}:decision:*" if is_cluster_url(url) else decision_key("*")
    decisions = 0
    for client in await primaries(url):
        try:
            cursor = None
            while cursor != 0:
                cursor, keys = await client.scan(cursor or 0, match=pattern, count=1000)
                if keys:  # one key a command: a cluster node refuses keys of several slots in one
                    pipe = client.pipeline(transaction=False)
                    for key in keys:
                        pipe.unlink(key)
                    decisions += sum(await pipe.execute())
        finally:
            await client.aclose()
    with_streams = await _redis_memory_bytes(url)
    await _flush(url)  # synchronous (lazyfree-lazy-user-flush is off by default)
    flushed = await _redis_memory_bytes(url)
    streams_bytes = with_streams - flushed
    return {
        "redis_used_memory_bytes": sum(used),
        "redis_used_memory_bytes_per_shard": used,
        "redis_change_log_entries": logged,
        "redis_change_log_bytes": log_bytes,
        "redis_decisions_kept": decisions,
        "redis_kept_after_flush_bytes": flushed - empty_bytes,
        "active_streams": active,
        "redis_bytes_per_active_stream": round(streams_bytes / active, 1) if active else None,
    }


async def _delete_change_logs(url: str) -> tuple[int, int]:
    """Delete the ledger's change logs (the audit trail's outbox); their entries and the memory they held."""
    client = connect(url)
    try:
        keys = layout_for(url).event_keys()
        entries = sum([int(await client.xlen(key)) for key in keys])  # this client's connection made first
        before = await _redis_memory_bytes(url)
        for key in keys:
            await client.delete(key)  # DEL frees at once (UNLINK may free later, after the reading below)
        return entries, before - await _redis_memory_bytes(url)
    finally:
        await client.aclose()


async def run_admission(spec: AdmissionSpec) -> dict[str, Any]:
    """Time the worker over the workload once per batch size; one result document."""
    clock = time.time
    with tempfile.TemporaryDirectory(prefix="playgate-bench-admission-") as tmp:
        catalog_url = f"sqlite+aiosqlite:///{Path(tmp) / 'catalog.sqlite3'}"
        await upgrade(catalog_url)
        engine = create_engine(catalog_url)
        catalog = Catalog(engine, default_limit=USER_LIMIT, cache_ttl_s=3600.0, clock=clock)
        try:
            user_ids = await _users(catalog, spec)
            async with contextlib.AsyncExitStack() as stack:
                redis_url = None
                if spec.ledger == "redis":
                    redis_url = await stack.enter_async_context(redis_server(spec.redis_url))
                elif spec.ledger == "redis-cluster":
                    redis_url = spec.redis_url or await stack.enter_async_context(redis_cluster(spec.shards))
                runs = []
                for index, batch_size in enumerate(spec.batch_sizes):
                    if redis_url is not None:
                        await _flush(redis_url)
                        empty_bytes = await _redis_memory_bytes(redis_url)
                        ledger = _redis_ledger(redis_url, clock)
                    else:
                        ledger_url = f"sqlite+aiosqlite:///{Path(tmp) / f'ledger-{index}.sqlite3'}"
                        await upgrade(ledger_url)
                        ledger = SqlLedger(
                            ledger_url,
                            lease_s=LEASE_S,
                            decision_ttl_s=3600.0,
                            clock=clock,
                            events=LedgerEvents(Policy.deny),
                        )
                    redis_cpu_s = await shard_cpu_s(redis_url) if redis_url is not None else []
                    try:
                        if spec.workers > 1 and redis_url is not None:
                            runs.append(await _time_processes(spec, catalog_url, redis_url, user_ids, batch_size))
                        else:
                            runs.append(
                                await _time_batches(
                                    ledger,
                                    catalog,
                                    user_ids,
                                    spec.requests,
                                    batch_size,
                                    clock,
                                    lists_shadow=redis_url is not None,  # SQLite lists them in its transaction
                                )
                            )
                        if redis_url is not None:
                            runs[-1].update(await redis_cpu(redis_url, redis_cpu_s, runs[-1]))
                            runs[-1].update(await redis_memory(redis_url, ledger, empty_bytes))
                    finally:
                        await ledger.close()
        finally:
            await engine.dispose()
    return {
        "tool": "playgate bench admission",
        "params": {
            "ledger": spec.ledger,
            "policy": spec.policy,
            "requests": spec.requests,
            "users": spec.users,
            "user_limit": USER_LIMIT,
            "devices_per_user": DEVICES_PER_USER,
            "batch_sizes": list(spec.batch_sizes),
            "shards": spec.shards if spec.ledger == "redis-cluster" else 1,
            "workers": spec.workers,
        },
        "runs": runs,
    }


async def _users(catalog: Catalog, spec: AdmissionSpec) -> list[str]:
    """The bench users, on a plan with the total limit only, or with every rule and a shadow policy."""
    rules = rules_from_json(EVERY_RULE) if spec.policy == "every-rule" else None
    shadow = rules_from_json(EVERY_RULE_SHADOW) if spec.policy == "every-rule" else None
    plan = await catalog.create_plan(name=f"bench-{spec.policy}", max_streams=USER_LIMIT, rules=rules, shadow=shadow)
    password = secrets.token_urlsafe(12)
    return [
        (await catalog.create_user(name=f"bench{i}", password=password, plan=plan.id)).id for i in range(spec.users)
    ]


async def _time_batches(
    ledger: Ledger,
    catalog: Catalog,
    user_ids: list[str],
    count: int,
    batch_size: int,
    clock: Callable[[], float],
    *,
    lists_shadow: bool,
) -> dict[str, Any]:
    queue = LocalQueue()
    emitter = NullEmitter()
    fanout = LocalFanout(emitter)
    worker = Worker(
        queue=queue,
        ledger=ledger,
        fanout=fanout,
        catalog=catalog,
        metrics=Metrics(),
        clock=clock,
        batch_size=batch_size,
        sweep_interval_s=3600.0,
        lists_shadow=lists_shadow,
    )
    await catalog.quotas(user_ids)  # warm the catalogue cache: the quota lookups are part of each step
    for request in workload(user_ids, count, clock()):
        await queue.put(request)
    steps = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while await worker.step(wait_s=0):
        steps += 1
    if isinstance(ledger, ChangeJournal):  # the audit trail's share: recording what the ledger logged
        await ledger.drain_changes()
    elapsed_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    return {
        "batch_size": batch_size,
        "decisions": count,
        "elapsed_s": round(elapsed_s, 4),
        "decisions_per_s": round(count / elapsed_s, 1),
        "batches": steps,
        "ms_per_batch": round(1000 * elapsed_s / max(1, steps), 3),
        # CPU per decision: this process (the worker; the SQLite ledger's thread included); with Redis behind it,
        # redis_cpu() adds the server's (the Lua) and recounts both over every shard and worker process.
        "worker_cpu_s": round(cpu_s, 4),
        "worker_cpu_us_per_decision": round(1e6 * cpu_s / count, 1),
        "redis_cpu_us_per_decision": None,
        "allowed": emitter.statuses.get(Status.allowed.value, 0),
        "denied": emitter.statuses.get(Status.denied.value, 0),
        "emits": emitter.emitted,
    }


async def _time_processes(
    spec: AdmissionSpec, catalog_url: str, redis_url: str, user_ids: list[str], batch_size: int
) -> dict[str, Any]:
    """spec.workers worker processes, each with its share of the users and of the requests, started together;
    decisions/s of them all (the total over the slowest one's time)."""
    context = multiprocessing.get_context("spawn")
    share = spec.requests // spec.workers
    with context.Manager() as manager, context.Pool(spec.workers) as pool:
        barrier = manager.Barrier(spec.workers)  # a proxy: a pool's tasks cannot carry a plain Barrier
        jobs = [
            (catalog_url, redis_url, user_ids[i :: spec.workers], share, batch_size, barrier)
            for i in range(spec.workers)
        ]
        results = await asyncio.to_thread(pool.starmap, _worker_process, jobs)
    elapsed_s = max(r["elapsed_s"] for r in results)
    total = sum(r["decisions"] for r in results)
    merged = {key: sum(r[key] for r in results) for key in ("batches", "allowed", "denied", "emits", "worker_cpu_s")}
    return {
        "batch_size": batch_size,
        "decisions": total,
        "elapsed_s": round(elapsed_s, 4),
        "decisions_per_s": round(total / elapsed_s, 1),
        "ms_per_batch": round(1000 * elapsed_s / max(1, merged["batches"] // spec.workers), 3),
        "per_worker_decisions_per_s": [r["decisions_per_s"] for r in results],
        **merged,
    }


def _worker_process(
    catalog_url: str, redis_url: str, user_ids: list[str], count: int, batch_size: int, barrier: Any
) -> dict[str, Any]:
    """One worker process of _time_processes: its own catalogue engine, ledger and event loop (uvloop)."""
    import uvloop

    async def run() -> dict[str, Any]:
        engine = create_engine(catalog_url)
        catalog = Catalog(engine, default_limit=USER_LIMIT, cache_ttl_s=3600.0, clock=time.time)
        ledger = _redis_ledger(redis_url, time.time)
        try:
            await ledger.ping()
            await asyncio.to_thread(barrier.wait)
            return await _time_batches(ledger, catalog, user_ids, count, batch_size, time.time, lists_shadow=True)
        finally:
            await ledger.close()
            await engine.dispose()

    return uvloop.run(run())
