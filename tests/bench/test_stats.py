"""The benchmark's pure helpers: percentiles, sweep points and CPU lists."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from playgate.bench.load import LoadSpec, sweep_points
from playgate.bench.stats import CpuWindow, percentiles_ms
from playgate.bench.target import BenchError, parse_cpus


@pytest.mark.parametrize(
    ("samples_s", "expected"),
    [
        ([], {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}),
        ([0.002], {"p50": 2.0, "p90": 2.0, "p99": 2.0, "max": 2.0, "mean": 2.0}),
        ([i / 1000 for i in range(1, 101)], {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0, "mean": 50.5}),
        ([0.003, 0.001, 0.002, 0.004], {"p50": 2.0, "p90": 4.0, "p99": 4.0, "max": 4.0, "mean": 2.5}),
    ],
)
def test_percentiles_are_nearest_rank_in_ms(samples_s: list[float], expected: dict[str, float | None]) -> None:
    assert percentiles_ms(samples_s) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10:10,100:20", [(10, 10), (100, 20)]),
        ("1000, 5000", [(1000, 20), (5000, 20)]),
        ("5", [(5, 5)]),
    ],
)
def test_sweep_points(text: str, expected: list[tuple[int, int]]) -> None:
    assert sweep_points(text, default_viewers=20) == expected


@pytest.mark.parametrize("text", ["10:20", "0", "5:0"])
def test_sweep_points_refuse_impossible_pairs(text: str) -> None:
    with pytest.raises(BenchError):
        sweep_points(text, default_viewers=20)


@pytest.mark.parametrize(
    ("text", "expected"), [(None, None), ("0", {0}), ("0,1", {0, 1}), ("2-4", {2, 3, 4}), ("0,2-3", {0, 2, 3})]
)
def test_parse_cpus(text: str | None, expected: set[int] | None) -> None:
    assert parse_cpus(text) == expected


@pytest.mark.parametrize(
    ("sockets", "viewers", "idle_users", "expected"),
    [(10, 10, None, 0), (50, 10, None, 40), (5000, 20, None, 100), (5000, 20, 7, 7), (12, 10, 7, 2)],
)
def test_idle_sockets_spread_over_at_most_their_count_of_users(
    sockets: int, viewers: int, idle_users: int | None, expected: int
) -> None:
    spec = LoadSpec(sockets=sockets, viewers=viewers, duration_s=1, warmup_s=0, idle_users=idle_users)
    assert spec.idle_user_count == expected


def test_a_child_that_ends_inside_the_window_keeps_its_cpu_in_the_sum() -> None:
    """A server's child (the demo media's ffmpeg) that ends during a run: its CPU moves to the parent's children
    times when it is waited for, and must not vanish from the window (a negative server CPU, once)."""
    burn = "import time\nend = time.process_time() + 1.5\nwhile time.process_time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        started = time.monotonic()
        while sum(psutil.Process(child.pid).cpu_times()[:2]) < 0.3 and time.monotonic() - started < 20:
            time.sleep(0.02)
        window = CpuWindow(psutil.Process(os.getpid()), include_children=True)
        window.start()
        child.wait(timeout=60)
        assert window.result()["cpu_s"] > 0
    finally:
        child.kill()
        child.wait()
