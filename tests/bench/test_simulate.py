"""The simulation's evening: its arrival rate surges in the middle third (prime time)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from playgate.bench.simulate import SimulationSpec, plays_per_s
from tests.bench.test_bench_cli import bench
from tests.support.redis_cluster import cluster_tools_installed


def test_the_rate_surges_in_the_middle_third_only() -> None:
    spec = SimulationSpec(virtual_s=90, base_plays_per_s=10, surge_plays_per_s=50)
    rates = [plays_per_s(spec, second) for second in range(90)]
    assert rates[:30] == [10] * 30
    assert rates[30:60] == [50] * 30
    assert rates[60:] == [10] * 30


@pytest.mark.skipif(not cluster_tools_installed(), reason="redis-server and redis-cli are not installed (.ci/run does)")
@pytest.mark.parametrize("device_ids", ["issued", "short"])
def test_a_small_evening_on_a_three_shard_cluster_reports_what_the_streams_cost(
    tmp_path: Path, device_ids: str
) -> None:
    """`playgate bench simulate` end to end: every play decided, the streams' memory measured as what a flush of the
    keyspace returns (so more than nothing, and not the server's own buffers)."""
    stdout, files = bench(
        tmp_path, "simulate", "--users", "300", "--virtual-s", "6", "--base-rate", "30", "--surge-rate", "60",
        "--shards", "3", "--device-ids", device_ids,
    )  # fmt: skip
    result = json.loads(files[0].read_text())
    assert result["params"]["device_ids"] == device_ids
    assert (
        result["decisions"] == result["allowed"] + result["denied"] == 4 * 30 + 2 * 60
    )  # a third of the 6 s at the surge rate
    assert 0 < result["active_streams"] <= result["allowed"]
    assert result["bytes_per_active_stream"] > 0
    assert result["kept_after_flush_bytes"] >= 0
    assert f"{result['active_streams']:,} active streams" in stdout
