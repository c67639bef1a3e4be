"""`playgate bench` run as a user runs it, against a server it starts itself: short runs, checked results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_server import redis_binary

RUN_TIMEOUT_S = 110
needs_redis = pytest.mark.skipif(
    redis_binary() is None, reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)"
)


def bench(out: Path, *args: str) -> tuple[str, list[Path]]:
    """Run `playgate bench ARGS --out OUT`; its stdout and the JSON files it wrote."""
    done = subprocess.run(
        [sys.executable, "-m", "playgate", "bench", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, sorted(out.rglob("*.json"))


def check_load_result(result: dict[str, Any], sockets: int, viewers: int) -> None:
    """Every field is there, and every request got exactly one decision on each socket of its user."""
    assert result["params"]["sockets"] == sockets
    assert result["params"]["viewers"] == viewers
    assert result["decisions"] > 0
    assert result["decisions_per_s"] == round(result["decisions"] / result["params"]["duration_s"], 1)
    assert result["allowed"] + result["denied"] == result["decisions"]
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert result["http_errors"] == 0, result["http_errors_by_kind"]
    assert result["missing_decisions"] == 0
    accounting = result["sockets"]
    assert accounting["connected"] == sockets
    assert accounting["failed"] == 0
    assert accounting["exact"] == sockets
    assert accounting["foreign_messages"] == 0
    assert accounting["duplicate_messages"] == 0
    assert accounting["idle_sockets_with_messages"] == 0
    assert accounting["decisions_per_request_per_socket"] == {"min": 1.0, "max": 1.0}
    assert accounting["requests"] >= result["decisions"]
    assert result["server"]["cpu_percent"] > 0
    assert result["server"]["rss_mb"] > 10
    load = result["load"]
    assert len(load["processes"]) >= 1
    assert all(p["cpu_percent"] > 0 and p["loop_lag_ms"]["max"] is not None for p in load["processes"])
    assert isinstance(load["saturated"], bool)


def test_closed_loop_sweep_writes_results_table_and_chart(tmp_path: Path) -> None:
    stdout, files = bench(tmp_path, "load", "--sweep", "3:2,9:3", "--duration", "1.5", "--warmup", "0.5")
    results = {p.name: json.loads(p.read_text()) for p in files}
    check_load_result(results["load-c3-v2.json"], sockets=3, viewers=2)
    check_load_result(results["load-c9-v3.json"], sockets=9, viewers=3)
    assert results["load-c9-v3.json"]["params"]["idle_users"] == 6
    assert [r["params"]["sockets"] for r in results["sweep.json"]["runs"]] == [3, 9]
    folder = files[0].parent
    table = (folder / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| C sockets | V viewers | decisions/s |")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["3", "9"]
    assert (folder / "sweep.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "C=9 V=3 closed:" in stdout


def test_open_loop_over_two_load_processes(tmp_path: Path) -> None:
    stdout, files = bench(
        tmp_path, "load", "-c", "6", "-v", "4", "--rate", "40", "-p", "2", "--duration", "1.5", "--warmup", "0.5"
    )
    result = json.loads(files[0].read_text())
    check_load_result(result, sockets=6, viewers=4)
    assert result["params"]["mode"] == "open"
    assert len(result["load"]["processes"]) == 2
    # Open loop: the schedule is kept whatever the answers. 40 requests/s from the warm-up's start (0.5 + 1.5 s),
    # 20/s in each process: every one of the 80 sent and accepted, none dropped.
    assert result["sockets"]["requests"] == 80
    assert result["dropped_requests"] == 0
    # Only decisions that arrive inside the measured 1.5 s count (how many do depends on the machine's load: a
    # busy 2-core run of the suite measured 32, an idle one about 60).
    assert 0 < result["decisions"] <= 80
    assert "open:" in stdout


def test_admission_micro_benchmark_by_batch_size(tmp_path: Path) -> None:
    stdout, files = bench(tmp_path, "admission", "-n", "120", "--users", "3", "--batch-sizes", "1,16")
    result = json.loads(files[0].read_text())
    assert [run["batch_size"] for run in result["runs"]] == [1, 16]
    for run in result["runs"]:
        assert run["decisions"] == 120
        assert run["allowed"] + run["denied"] == 120
        # 3 users at limit 4 cycling over 8 devices: the first 4 devices of each are allowed, then renewed.
        assert run["allowed"] == 60
        assert run["decisions_per_s"] > 0
        assert run["worker_cpu_us_per_decision"] > 0
        assert run["redis_cpu_us_per_decision"] is None  # no Redis behind SQLite
    assert result["runs"][0]["batches"] == 120
    assert result["runs"][1]["batches"] == 8
    assert "sqlite total batch    16:" in stdout


def test_admission_micro_benchmark_prices_a_plan_with_every_rule(tmp_path: Path) -> None:
    stdout, files = bench(
        tmp_path, "admission", "-n", "120", "--users", "3", "--batch-sizes", "16", "--policy", "every-rule"
    )
    result = json.loads(files[0].read_text())
    assert result["params"]["policy"] == "every-rule"
    (run,) = result["runs"]
    assert run["allowed"] + run["denied"] == 120
    assert run["allowed"] > 0
    assert "sqlite every-rule batch    16:" in stdout


def test_idle_sockets_cost_reported_per_socket(tmp_path: Path) -> None:
    stdout, files = bench(tmp_path, "idle", "-c", "40", "-p", "1", "--hold", "0.5", "--idle-users", "4")
    result = json.loads(files[0].read_text())
    assert result["connected"] == 40
    assert result["connect_failures"] == {}
    assert result["server_rss_held_mb"] >= result["server_rss_before_mb"] > 10
    assert result["server_rss_per_socket_kb"] is not None
    assert result["messages_on_idle_sockets"] == 0
    assert "40/40 idle sockets held" in stdout


@needs_redis
def test_distributed_load_crosses_apis_and_says_where_the_time_goes(tmp_path: Path) -> None:
    stdout, files = bench(
        tmp_path, "load", "--deployment", "distributed", "--apis", "2", "--workers", "1",
        "-c", "6", "-v", "2", "--duration", "1.5", "--warmup", "0.5",
    )  # fmt: skip
    result = json.loads(files[0].read_text())
    # Each viewer's socket is on one API and its requests go to the other: delivery crosses processes.
    check_load_result(result, sockets=6, viewers=2)
    assert result["target"]["deployment"] == "distributed"
    assert len(result["target"]["urls"]) == 2
    roles = result["server"]["by_role"]
    assert {role: roles[role]["processes"] for role in roles} == {"api": 2, "worker": 1, "redis": 1}
    assert all(roles[role]["cpu_percent"] > 0 for role in ("api", "worker"))
    assert "C=6 V=2 closed:" in stdout
    assert "(api " in stdout  # the summary says where the server's CPU went


@needs_redis
def test_admission_micro_benchmark_on_redis_reports_memory_per_stream(tmp_path: Path) -> None:
    _stdout, files = bench(
        tmp_path, "admission", "--ledger", "redis", "-n", "120", "--users", "3", "--batch-sizes", "16"
    )
    (run,) = json.loads(files[0].read_text())["runs"]
    assert run["decisions"] == 120
    assert run["allowed"] == 60
    assert run["active_streams"] == 12  # 3 users x limit 4
    assert run["redis_used_memory_bytes"] > 0
    assert run["redis_decisions_kept"] == 120
    assert run["redis_change_log_entries"] == 120  # each decision logged once, not counted in the streams' memory
    assert run["redis_change_log_bytes"] > 0
    assert run["redis_bytes_per_active_stream"] > 0
    assert run["worker_cpu_us_per_decision"] > 0
    assert run["redis_cpu_us_per_decision"] > 0  # the Lua's CPU, read off the server's INFO cpu


def test_bench_segments_reports_requests_latency_and_cpu_for_both_modes(
    tmp_path: Path, shared_media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAYGATE_MEDIA_DIR", str(shared_media_dir))
    stdout, files = bench(tmp_path, "segments", "-n", "20", "--interval", "0.5", "-d", "2", "-w", "0.5")
    assert "mode serve" in stdout
    assert "mode authorize" in stdout
    results = {json.loads(f.read_text())["params"]["mode"]: json.loads(f.read_text()) for f in files}
    assert set(results) == {"serve", "authorize"}
    for mode, ok in (("serve", "200"), ("authorize", "204")):
        result = results[mode]
        assert result["params"]["offered_per_s"] == 40
        assert result["requests"] > 0
        assert result["statuses"] == {ok: result["requests"]}, result["statuses"]
        assert result["errors"] == 0
        latency = result["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        assert result["server"]["cpu_percent"] > 0
    assert results["serve"]["mb_per_s"] > 0
    assert results["authorize"]["mb_per_s"] == 0


def _generator_result(path: Path, dialect: str, clients: int, viewers: int, per_s: float, p99: float) -> Path:
    """A file as the outside generator (../shared/bench, loadgen.js) leaves its stdout: the result on its last line."""
    document = {
        "tool": "loadgen",
        "dialect": dialect,
        "config": {"clients": clients, "viewers": viewers},
        "window": {"decisionsPerSec": per_s},
        "latencyMs": {"decision": {"p99": p99}},
    }
    path.write_text("progress is on stderr\n" + json.dumps(document) + "\n")
    return path


def test_compare_tables_and_charts_the_outside_generator_s_runs(tmp_path: Path) -> None:
    files = [
        _generator_result(tmp_path / "o1.json", "seed", 10, 10, 1000, 5.0),
        _generator_result(tmp_path / "o2.json", "seed", 10, 10, 1200, 6.0),
        _generator_result(tmp_path / "p1.json", "playgate", 10, 10, 2200, 4.0),
        _generator_result(tmp_path / "o3.json", "seed", 1000, 20, 50, 300.0),
        _generator_result(tmp_path / "p2.json", "playgate", 1000, 20, 1000, 18.0),
    ]
    chart = tmp_path / "outside.png"
    done = subprocess.run(
        [sys.executable, "-m", "playgate", "bench", "compare", *map(str, files), "--chart", str(chart)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert "| 10, 10 | 1,000, 1,200 | 2,200 | 2.00x | 5.0 ms, 6.0 ms | 4.0 ms |" in rows
    assert "| 1,000, 20 | 50.0 | 1,000 | 20.00x | 300 ms | 18.0 ms |" in rows
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_compare_names_a_file_that_is_not_the_generator_s(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"tool": "something else"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "playgate", "bench", "compare", str(tmp_path / "other.json")],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2
    assert "RESULTS" in done.stderr
    assert "not a result of the outside generator" in done.stderr
