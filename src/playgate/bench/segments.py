"""`playgate bench segments`: P players of a live-like stream, each fetching one 2 s segment every 2 s through the
gate (PlayGate serving the bytes, `/v1/play/{token}/<segment>`) or asking `/v1/authorize` alone (as nginx's
auth_request would, uncached): requests/s, latency from the instant each request was due, errors, server CPU."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import psutil

from playgate.bench.rawhttp import HttpClient
from playgate.bench.stats import CpuWindow, LoopLag, percentiles_ms
from playgate.bench.target import HTTP_TIMEOUT_S, Account, BenchError, Target
from playgate.media.clips import ADAPTIVE_SECONDS, SEGMENT_S
from playgate.values import frozen

MODES = ("serve", "authorize")
VIDEO_IDS = ("1", "2", "3", "4", "5", "6")
SEGMENTS = ADAPTIVE_SECONDS // SEGMENT_S
STREAMS_PER_USER = 4  # as a household would: the gate reads a user's streams on every request
PLAY_CONCURRENCY = 16


@frozen
class SegmentSpec:
    """One run: how many players, how often each fetches, for how long, and what the gate does."""

    players: int
    interval_s: float
    duration_s: float
    warmup_s: float
    mode: str
    rendition: int = 0
    load_cpus: frozenset[int] | None = None


@dataclass
class _Tally:
    """What the players saw in the measured window."""

    latencies_s: list[float]
    statuses: dict[int, int]
    errors: int = 0
    bytes_received: int = 0


def segment_path(token: str, rendition: int, number: int) -> str:
    """The gate's URL of segment `number` (1-based) of a rendition, token in the path (as the players' URLs)."""
    return f"/v1/play/{token}/chunk-{rendition}-{number:05d}.m4s"


def _request(client: HttpClient, spec: SegmentSpec, token: str, number: int) -> bytes:
    path = segment_path(token, spec.rendition, number)
    if spec.mode == "serve":
        return client.build_raw("GET", path)
    return client.build_raw("GET", "/v1/authorize", {"X-Original-URI": path})


async def _tokens(target: Target, players: int) -> list[str]:
    """One allowed stream per player (distinct devices of a few users), and its playback token."""
    users = max(1, -(-players // STREAMS_PER_USER))
    accounts = await target.accounts_for([f"seg-{i}" for i in range(users)])
    gate = asyncio.Semaphore(PLAY_CONCURRENCY)
    async with aiohttp.ClientSession(target.base_url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as http:

        async def one(n: int) -> str:
            account: Account = accounts[n % users]
            body = {"videoId": VIDEO_IDS[n % len(VIDEO_IDS)], "deviceId": f"player-{n}"}
            headers = {"Authorization": f"Bearer {account.token}"}
            async with gate, http.post("/v1/plays", params={"wait": "10"}, json=body, headers=headers) as answer:
                decision = await answer.json()
            if decision.get("status") != "allowed":
                raise BenchError(f"player {n} was not allowed to play: {decision}")
            url = str(decision["playbackUrl"])
            return url.split("/")[3]

        tokens = list(await asyncio.gather(*(one(n) for n in range(players))))
        # Make sure every video's adaptive set exists before the clock starts (the first request makes it).
        for token in tokens[: len(VIDEO_IDS)]:
            async with http.get(f"/v1/play/{token}/master.m3u8") as answer:
                if answer.status != 200:
                    raise BenchError(f"the master playlist answered {answer.status}: {await answer.text()}")
    return tokens


async def _player(
    client: HttpClient, spec: SegmentSpec, token: str, start_s: float, measure_from_s: float, until_s: float,
    tally: _Tally,
) -> None:  # fmt: skip
    """Fetch segment after segment, one every interval_s from `start_s`, until `until_s` (open loop)."""
    number = random.randrange(SEGMENTS)
    due_s = start_s
    while due_s < until_s:
        delay_s = due_s - time.perf_counter()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        raw = _request(client, spec, token, number % SEGMENTS + 1)
        try:
            status, body = await client.send(raw)
        except (ConnectionError, TimeoutError, OSError):
            if due_s >= measure_from_s:
                tally.errors += 1
        else:
            if due_s >= measure_from_s:
                tally.latencies_s.append(time.perf_counter() - due_s)
                tally.statuses[status] = tally.statuses.get(status, 0) + 1
                tally.bytes_received += len(body)
        number += 1
        due_s += spec.interval_s


async def _run(target: Target, spec: SegmentSpec, tokens: list[str]) -> dict[str, Any]:
    client = HttpClient(target.base_url, HTTP_TIMEOUT_S)
    tally = _Tally([], {})
    lag = LoopLag()
    pid = target.server_pid
    server = CpuWindow(psutil.Process(pid)) if pid is not None else None
    now_s = time.perf_counter()
    measure_from_s = now_s + spec.warmup_s
    until_s = measure_from_s + spec.duration_s
    # Players start spread evenly over one interval: a live audience, not a thundering herd.
    starts = [now_s + spec.interval_s * i / len(tokens) for i in range(len(tokens))]
    own = CpuWindow(psutil.Process(os.getpid()))

    async def measure() -> None:
        await asyncio.sleep(spec.warmup_s)
        own.start()
        if server is not None:
            server.start()

    try:
        await asyncio.gather(
            measure(),
            lag.run(measure_from_s, until_s),
            *(
                _player(client, spec, token, start, measure_from_s, until_s, tally)
                for token, start in zip(tokens, starts, strict=True)
            ),
        )
    finally:
        client.close()
    answered = len(tally.latencies_s)
    server_result = server.result() if server is not None else None
    if server_result is not None and answered:
        # What one request costs the server: meaningful even on a machine busy with other work.
        server_result["cpu_ms_per_request"] = round(server_result["cpu_s"] * 1000 / answered, 3)
        server_result["requests_per_core_s"] = round(answered / max(server_result["cpu_s"], 1e-9), 0)
    return {
        "requests": answered,
        "requests_per_s": round(answered / spec.duration_s, 1),
        "latency_ms": percentiles_ms(tally.latencies_s),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": tally.errors,
        "mb_per_s": round(tally.bytes_received / spec.duration_s / 1e6, 2),
        "server": server_result,
        "load": {**own.result(), "loop_lag_ms": lag.result()},
    }


def run_segments(target: Target, spec: SegmentSpec, log: Callable[[str], None]) -> dict[str, Any]:
    """Set up the players' streams, then run the load; the result document."""
    if spec.load_cpus is not None:
        os.sched_setaffinity(0, spec.load_cpus)

    async def main() -> dict[str, Any]:
        log(f"starting {spec.players:,} streams")
        tokens = await _tokens(target, spec.players)
        log(f"{spec.players:,} players, one segment each every {spec.interval_s:g} s, mode {spec.mode}")
        return await _run(target, spec, tokens)

    result = asyncio.run(main())
    return {
        "tool": "playgate bench segments",
        "params": {
            "players": spec.players,
            "interval_s": spec.interval_s,
            "duration_s": spec.duration_s,
            "warmup_s": spec.warmup_s,
            "mode": spec.mode,
            "rendition": spec.rendition,
            "offered_per_s": round(spec.players / spec.interval_s, 1),
        },
        "load_average": os.getloadavg(),
        **result,
    }


def summary(result: dict[str, Any]) -> str:
    """One line with the figures that matter."""
    params, latency = result["params"], result["latency_ms"]
    server = result.get("server") or {}
    return (
        f"{params['players']:,} players, mode {params['mode']}: {result['requests_per_s']:,.0f} requests/s "
        f"(offered {params['offered_per_s']:,.0f}/s), p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
        f"max {latency['max']} ms; statuses {result['statuses']}, errors {result['errors']}, "
        f"{result['mb_per_s']} MB/s; server cpu {server.get('cpu_percent', '—')}% "
        f"({server.get('cpu_ms_per_request', '—')} ms a request: {server.get('requests_per_core_s', '—')}/s a core), "
        f"load cpu {result['load']['cpu_percent']}% (lag p99 {result['load']['loop_lag_ms']['p99']} ms); "
        f"load average {', '.join(f'{v:.2f}' for v in result['load_average'])}"
    )
