"""Measuring helpers of the benchmark: percentiles, process CPU and RSS, and event-loop lag."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

LAG_PROBE_INTERVAL_S = 0.01


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99, max and mean of latencies given in seconds, in milliseconds (nearest-rank)."""
    if not samples_s:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(samples_s)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000.0

    return {
        "p50": round(rank(0.50), 3),
        "p90": round(rank(0.90), 3),
        "p99": round(rank(0.99), 3),
        "max": round(ordered[-1] * 1000.0, 3),
        "mean": round(sum(ordered) / n * 1000.0, 3),
    }


@dataclass
class CpuWindow:
    """CPU time and RSS of one process (and its children) over a measured window."""

    process: psutil.Process
    include_children: bool = False
    _cpu_start_s: float = 0.0
    _wall_start_s: float = 0.0
    rss_max_bytes: int = 0

    def _cpu_s(self) -> float:
        times = self.process.cpu_times()
        total = times.user + times.system
        if self.include_children:
            # Children that ended and were waited for (the demo media's ffmpeg, say) count in the parent's
            # children_* times; without them a child ending inside the window would take its CPU away from the sum.
            total += times.children_user + times.children_system
            for child in self.process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
        return total

    def rss_bytes(self) -> int:
        """Resident memory now (and the largest seen so far)."""
        rss = int(self.process.memory_info().rss)
        if self.include_children:
            for child in self.process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += int(child.memory_info().rss)
        self.rss_max_bytes = max(self.rss_max_bytes, rss)
        return rss

    def start(self) -> None:
        """Begin the window."""
        self._cpu_start_s = self._cpu_s()
        self._wall_start_s = time.perf_counter()
        self.rss_bytes()

    def result(self) -> dict[str, float]:
        """CPU use over the window as a percentage of one core, and RSS now and at most, in MB."""
        cpu_s = self._cpu_s() - self._cpu_start_s
        wall_s = max(1e-9, time.perf_counter() - self._wall_start_s)
        rss = self.rss_bytes()
        return {
            "cpu_percent": round(100.0 * cpu_s / wall_s, 1),
            "cpu_s": round(cpu_s, 3),
            "rss_mb": round(rss / 1e6, 1),
            "rss_max_mb": round(self.rss_max_bytes / 1e6, 1),
        }


@dataclass
class LoopLag:
    """How late the event loop wakes a task that asked to sleep LAG_PROBE_INTERVAL_S: a saturated loop shows."""

    interval_s: float = LAG_PROBE_INTERVAL_S
    lags_s: list[float] = field(default_factory=list)

    async def run(self, record_from_s: float, until_s: float) -> None:
        """Probe until `until_s`, keeping lags from `record_from_s` on (both time.perf_counter instants)."""
        while True:
            before = time.perf_counter()
            if before >= until_s:
                return
            await asyncio.sleep(self.interval_s)
            lag_s = time.perf_counter() - before - self.interval_s
            if before >= record_from_s:
                self.lags_s.append(max(0.0, lag_s))

    def result(self) -> dict[str, float | None]:
        """p50/p99/max lag in milliseconds."""
        summary = percentiles_ms(self.lags_s)
        return {"p50": summary["p50"], "p99": summary["p99"], "max": summary["max"]}
