"""`playgate chaos` in CI: a short scenario (20 s of load and faults) on a real distributed deployment, and its
report's invariants: nobody over the limit, every accepted request decided, kept and unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.pg_database import pg_unavailable_reason
from tests.support.redis_server import redis_binary

DURATION_S = 20
# Start-up of 2 APIs and 2 workers, the scenario, and the audit's settling, on a busy 2-core machine.
RUN_TIMEOUT_S = 400

FAULTS = ["kill -9 worker", "kill -9 api", "restart redis", "freeze redis", "cut database"]


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
async def test_a_short_chaos_scenario_keeps_every_invariant() -> None:
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    reason = await pg_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    done = subprocess.run(
        [sys.executable, "-m", "playgate", "chaos", "--duration", str(DURATION_S), "--users", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert [f["name"] for f in report["faults"]] == FAULTS, report
    assert report["accepted"] > 0, report
    assert report["allowed"] > 0, report
    assert report["denied"] > 0, report  # two viewers per user at a limit of 1: both outcomes are exercised
    assert report["samples"] > 0, report
    assert report["over_limit_samples"] == 0, report
    assert report["undecided"] == 0, report
    assert report["lost"] == 0, report["lost_detail"]  # each loss: when, and what the audit trail recorded of it
    assert report["changed"] == 0, report
    assert report["ok"] is True
    assert done.returncode == 0
