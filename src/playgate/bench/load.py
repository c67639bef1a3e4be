"""The end-to-end load: spread sockets and viewers over load processes, run one schedule, add up the results."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import psutil

from playgate.bench.loadgen import DECISION_TIMEOUT_S, SETTLE_S, LoadPlan, Schedule, Viewer, process_main
from playgate.bench.stats import CpuWindow, percentiles_ms
from playgate.bench.target import Account, BenchError, Target

DEMO_VIDEOS = ("1", "2", "3", "4", "5", "6")
START_DELAY_S = 0.5
READY_TIMEOUT_BASE_S = 60.0
READY_TIMEOUT_PER_SOCKET_S = 0.02
RESULT_GRACE_S = 60.0
JOIN_TIMEOUT_S = 30.0
SAMPLE_INTERVAL_S = 0.25
# A load process above this share of its core, or whose loop wakes this late, may be what limits the figures.
SATURATED_CPU_PERCENT = 85.0
SATURATED_LAG_P99_MS = 5.0


@dataclass(frozen=True)
class LoadSpec:
    """One run: C sockets, of which V are viewers; idle sockets spread over `idle_users` other users."""

    sockets: int
    viewers: int
    duration_s: float
    warmup_s: float
    idle_users: int | None = None
    rate_per_s: float | None = None  # open loop when set
    processes: int = 1
    load_cpus: frozenset[int] | None = None

    @property
    def mode(self) -> str:
        """`closed` (viewers wait for each decision) or `open` (a fixed request rate)."""
        return "open" if self.rate_per_s else "closed"

    @property
    def idle_user_count(self) -> int:
        """How many users the C - V idle sockets belong to (by default one per socket, at most 100)."""
        idle = self.sockets - self.viewers
        if idle <= 0:
            return 0
        return max(1, min(idle, self.idle_users if self.idle_users is not None else 100))

    def check(self) -> None:
        """BenchError for an impossible load spec (the CLI checks the ranges of each option)."""
        if self.viewers < 1 or self.sockets < self.viewers:
            raise BenchError(f"need 1 <= viewers <= sockets (got V={self.viewers}, C={self.sockets})")


ProgressHook = Callable[[float, float, int], None]  # (elapsed in window s, window s, decisions so far)
ConnectHook = Callable[[int, int], None]  # (sockets connected so far, sockets to connect)


def run_load(
    target: Target, spec: LoadSpec, progress: ProgressHook | None = None, connecting: ConnectHook | None = None
) -> dict[str, Any]:
    """Run one load against `target` and return its result (the JSON document of one run)."""
    spec.check()
    viewer_names = [f"viewer{i}" for i in range(spec.viewers)]
    idle_names = [f"idle{i}" for i in range(spec.idle_user_count)]
    accounts = asyncio.run(target.accounts_for(viewer_names + idle_names))
    viewer_accounts, idle_accounts = accounts[: spec.viewers], accounts[spec.viewers :]
    urls = target.base_urls
    viewers = [
        Viewer(
            a.user_id,
            a.token,
            DEMO_VIDEOS[i % len(DEMO_VIDEOS)],
            socket_url=urls[i % len(urls)],
            http_url=urls[(i + 1) % len(urls)],
        )
        for i, a in enumerate(viewer_accounts)
    ]
    idle = _idle_sockets(idle_accounts, spec.sockets - spec.viewers, urls)
    processes = max(1, min(spec.processes, spec.viewers))
    plans = [
        LoadPlan(
            viewers=tuple(viewers[p::processes]),
            idle_sockets=tuple(idle[p::processes]),
            mode=spec.mode,
            rate_per_s=(spec.rate_per_s or 0.0) / processes,
            cpus=spec.load_cpus,
        )
        for p in range(processes)
    ]
    started = time.time()
    parts = _run_processes(target, spec, plans, progress, connecting)
    result = _aggregate(spec, parts["results"], parts["server"], parts["connect"])
    result["target"] = _describe(target)
    result["started_at"] = started
    return result


def _idle_sockets(accounts: list[Account], count: int, urls: list[str]) -> list[tuple[str, str, str]]:
    """`count` listening sockets: users taking turns, APIs taking turns."""
    return [
        (accounts[i % len(accounts)].user_id, accounts[i % len(accounts)].token, urls[i % len(urls)])
        for i in range(count)
    ]


def _describe(target: Target) -> dict[str, Any]:
    return {
        "urls": target.base_urls,
        "deployment": target.deployment,
        "processes": [{"role": p.role, "pid": p.pid} for p in target.processes],
    }


def _run_processes(
    target: Target,
    spec: LoadSpec,
    plans: list[LoadPlan],
    progress: ProgressHook | None,
    connecting: ConnectHook | None = None,
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    counters: list[Synchronized[int]] = []
    children: list[BaseProcess] = []
    try:
        for plan in plans:
            parent_end, child_end = ctx.Pipe()
            counter: Synchronized[int] = ctx.Value("q", 0, lock=False)
            child: BaseProcess = ctx.Process(target=process_main, args=(plan, child_end, counter), daemon=True)
            child.start()
            child_end.close()  # the child's copy is enough: a child that dies then reads as EOF here
            pipes.append(parent_end)
            counters.append(counter)
            children.append(child)
        ready_timeout_s = READY_TIMEOUT_BASE_S + READY_TIMEOUT_PER_SOCKET_S * spec.sockets
        connect = _wait_connected(pipes, counters, spec.sockets, ready_timeout_s, connecting)
        now = time.time()
        schedule = Schedule(
            start_at=now + START_DELAY_S,
            measure_from=now + START_DELAY_S + spec.warmup_s,
            measure_until=now + START_DELAY_S + spec.warmup_s + spec.duration_s,
        )
        for pipe in pipes:
            pipe.send(schedule)
        server = _watch_server(target, schedule, counters, progress)
        results = [
            _receive(pipe, spec.duration_s + spec.warmup_s + 2 * DECISION_TIMEOUT_S + SETTLE_S + RESULT_GRACE_S, "load")
            for pipe in pipes
        ]
        return {"results": results, "server": server, "connect": connect}
    except BaseException:
        for child in children:  # interrupted or failed: do not wait for the schedule to end
            child.terminate()
        raise
    finally:
        for child in children:
            child.join(JOIN_TIMEOUT_S)
            if child.is_alive():
                child.terminate()
                child.join(5)


def _wait_connected(
    pipes: list[Connection],
    counters: list[Synchronized[int]],
    sockets: int,
    timeout_s: float,
    connecting: ConnectHook | None,
) -> list[dict[str, Any]]:
    """Each process's report once it has connected its sockets, showing how many are connected meanwhile."""
    reports: list[dict[str, Any] | None] = [None] * len(pipes)
    deadline = time.monotonic() + timeout_s
    while True:
        for i, pipe in enumerate(pipes):
            if reports[i] is None and pipe.poll(0):
                reports[i] = _receive(pipe, 0, "connecting its sockets")
        if connecting is not None:
            done = sum(r["connected"] if r is not None else c.value for r, c in zip(reports, counters, strict=True))
            connecting(done, sockets)
        ready = [r for r in reports if r is not None]
        if len(ready) == len(reports):
            return ready
        if time.monotonic() > deadline:
            raise BenchError(f"load processes still connecting their sockets after {timeout_s:.0f}s")
        time.sleep(SAMPLE_INTERVAL_S)


def _receive(pipe: Connection, timeout_s: float, what: str) -> Any:
    if not pipe.poll(timeout_s):
        raise BenchError(f"a load process sent nothing for {timeout_s:.0f}s while {what}")
    try:
        return pipe.recv()
    except EOFError:
        raise BenchError(f"a load process died while {what}") from None


def _watch_server(
    target: Target, schedule: Schedule, counters: list[Synchronized[int]], progress: ProgressHook | None
) -> dict[str, Any] | None:
    """Sample the server processes over the measured window (CPU, RSS), and report progress while waiting."""
    samplers: list[tuple[str, CpuWindow]] = []
    for process in target.processes:
        with contextlib.suppress(psutil.Error):
            samplers.append((process.role, CpuWindow(psutil.Process(process.pid), include_children=True)))
    time.sleep(max(0.0, schedule.measure_from - time.time()))
    for _role, sampler in samplers:
        sampler.start()
    window_s = schedule.measure_until - schedule.measure_from
    while (now := time.time()) < schedule.measure_until:
        if progress is not None:
            progress(now - schedule.measure_from, window_s, sum(c.value for c in counters))
        for _role, sampler in samplers:
            with contextlib.suppress(psutil.Error):
                sampler.rss_bytes()
        time.sleep(min(SAMPLE_INTERVAL_S, max(0.0, schedule.measure_until - now)))
    if progress is not None:
        progress(window_s, window_s, sum(c.value for c in counters))
    if not samplers:
        return None
    return _by_role([(role, sampler.result()) for role, sampler in samplers])


def _by_role(results: list[tuple[str, dict[str, float]]]) -> dict[str, Any]:
    """Totals over every server process, and per role (serve, api, worker, redis)."""
    roles: dict[str, dict[str, float]] = {}
    for role, result in results:
        into = roles.setdefault(role, {"processes": 0, "cpu_percent": 0.0, "rss_mb": 0.0, "rss_max_mb": 0.0})
        into["processes"] += 1
        for key in ("cpu_percent", "rss_mb", "rss_max_mb"):
            into[key] = round(into[key] + result[key], 1)
    return {
        "cpu_percent": round(sum(r["cpu_percent"] for _, r in results), 1),
        "rss_mb": round(sum(r["rss_mb"] for _, r in results), 1),
        "rss_max_mb": round(sum(r["rss_max_mb"] for _, r in results), 1),
        "by_role": roles,
    }


def _aggregate(
    spec: LoadSpec, parts: list[dict[str, Any]], server: dict[str, Any] | None, connect: list[dict[str, Any]]
) -> dict[str, Any]:
    latencies = [x for part in parts for x in part["latencies_s"]]
    decided = sum(p["decided_in_window"] for p in parts)
    http_errors: Counter[str] = Counter()
    requests_by_user: Counter[str] = Counter()
    connect_failures: Counter[str] = Counter()
    for part in parts:
        http_errors.update(part["http_errors"])
        requests_by_user.update(part["requests_by_user"])
    for item in connect:
        connect_failures.update(item["connect_failures"])
    load = [{"pid": p["pid"], **p["cpu"], "loop_lag_ms": p["loop_lag_ms"]} for p in parts]
    saturated = _saturation(load)
    return {
        "tool": "playgate bench load",
        "params": {
            **asdict(spec),
            "load_cpus": sorted(spec.load_cpus) if spec.load_cpus else None,
            "mode": spec.mode,
            "idle_users": spec.idle_user_count,
        },
        "decisions": decided,
        "decisions_per_s": round(decided / spec.duration_s, 1),
        "allowed": sum(p["allowed"] for p in parts),
        "denied": sum(p["denied"] for p in parts),
        "latency_ms": percentiles_ms(latencies),
        "http_errors": sum(http_errors.values()),
        "http_errors_by_kind": dict(http_errors),
        "missing_decisions": sum(p["missing"] for p in parts),
        "dropped_requests": sum(p["dropped"] for p in parts),
        "sockets": _socket_accounting(parts, requests_by_user, connect_failures),
        "server": server,
        "load": {
            "processes": load,
            "cpu_percent": round(sum(p["cpu_percent"] for p in load), 1),
            "loop_lag_ms_max": max((p["loop_lag_ms"]["max"] or 0.0) for p in load) if load else None,
            "saturated": bool(saturated),
            "saturation": saturated,
        },
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
    }


def _saturation(load: list[dict[str, Any]]) -> list[str]:
    """Why the load generator may have limited the figures: a busy core, or a loop that wakes late."""
    reasons = []
    for p in load:
        lag_p99_ms = p["loop_lag_ms"]["p99"] or 0.0
        if p["cpu_percent"] >= SATURATED_CPU_PERCENT:
            reasons.append(f"load process {p['pid']} used {p['cpu_percent']}% of a core")
        if lag_p99_ms >= SATURATED_LAG_P99_MS:
            reasons.append(
                f"load process {p['pid']} event loop woke {lag_p99_ms} ms late at p99 "
                "(a busy loop, or a core shared with other work)"
            )
    return reasons


def _socket_accounting(
    parts: list[dict[str, Any]], requests_by_user: Counter[str], connect_failures: Counter[str]
) -> dict[str, Any]:
    """Every socket must get each decision of its own user exactly once, and nothing about anyone else."""
    sockets = [s for part in parts for s in part["sockets"]]
    connected = [s for s in sockets if s[1]]
    exact = 0
    ratios: list[float] = []
    idle_with_messages = 0
    for user_id, _ok, own, foreign, duplicates in connected:
        expected = requests_by_user.get(user_id, 0)
        exact += int(own == expected and foreign == 0 and duplicates == 0)
        if expected:
            ratios.append((own + duplicates) / expected)
        elif own or foreign:
            idle_with_messages += 1
    return {
        "connected": len(connected),
        "failed": len(sockets) - len(connected),
        "connect_failures": dict(connect_failures),
        "exact": exact,
        "foreign_messages": sum(s[3] for s in connected),
        "duplicate_messages": sum(s[4] for s in connected),
        "idle_sockets_with_messages": idle_with_messages,
        "decisions_per_request_per_socket": {
            "min": round(min(ratios), 4) if ratios else None,
            "max": round(max(ratios), 4) if ratios else None,
        },
        "requests": sum(requests_by_user.values()),
    }


def sweep_points(text: str, default_viewers: int) -> list[tuple[int, int]]:
    """`"10:10,100:20,1000"` as (C, V) pairs; a bare C takes the default V (at most C)."""
    points = []
    for item in text.split(","):
        sockets_text, _, viewers_text = item.strip().partition(":")
        sockets = int(sockets_text)
        viewers = int(viewers_text) if viewers_text else min(default_viewers, sockets)
        if sockets < 1 or viewers < 1 or viewers > sockets:
            raise BenchError(f"--sweep: {item!r} needs 1 <= V <= C")
        points.append((sockets, viewers))
    return points


def run_idle(
    target: Target,
    *,
    connecting: ConnectHook | None = None,
    sockets: int,
    idle_users: int,
    processes: int,
    hold_s: float,
    load_cpus: frozenset[int] | None = None,
) -> dict[str, Any]:
    """Connect `sockets` idle sockets, hold them `hold_s`, and report the server's RSS per socket."""
    if not target.processes:
        raise BenchError("the idle check needs the server's pid (--server-pid) to read its RSS")
    accounts = asyncio.run(target.accounts_for([f"idle{i}" for i in range(min(idle_users, sockets))]))
    idle = _idle_sockets(accounts, sockets, target.base_urls)
    processes = max(1, min(processes, sockets))
    plans = [
        LoadPlan(viewers=(), idle_sockets=tuple(idle[p::processes]), mode="closed", cpus=load_cpus)
        for p in range(processes)
    ]
    time.sleep(SETTLE_S)
    baseline_bytes = sum(int(psutil.Process(p.pid).memory_info().rss) for p in target.processes)
    spec = LoadSpec(sockets=sockets, viewers=0, duration_s=hold_s, warmup_s=0.0, processes=processes)
    connect_started = time.perf_counter()
    parts = _run_processes(target, spec, plans, None, connecting)
    connected = sum(item["connected"] for item in parts["connect"])
    held = parts["server"] or {}
    held_bytes = int(held.get("rss_mb", 0.0) * 1e6)
    failures: Counter[str] = Counter()
    for item in parts["connect"]:
        failures.update(item["connect_failures"])
    per_socket = (held_bytes - baseline_bytes) / connected if connected else None
    return {
        "tool": "playgate bench idle",
        "params": {"sockets": sockets, "idle_users": len(accounts), "processes": processes, "hold_s": hold_s},
        "target": _describe(target),
        "connected": connected,
        "connect_failures": dict(failures),
        "seconds_to_connect_and_hold": round(time.perf_counter() - connect_started, 2),
        "server_rss_before_mb": round(baseline_bytes / 1e6, 1),
        "server_rss_held_mb": round(held_bytes / 1e6, 1),
        "server_rss_per_socket_kb": round(per_socket / 1024, 2) if per_socket is not None else None,
        "server_cpu_percent_while_held": held.get("cpu_percent"),
        "messages_on_idle_sockets": sum(s[2] + s[3] for r in parts["results"] for s in r["sockets"]),
    }
