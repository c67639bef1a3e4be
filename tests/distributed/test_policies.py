"""Plans' rules that read the request itself, decided by a worker that took the request from the Redis queue."""

from __future__ import annotations

from tests.distributed.conftest import Cluster
from tests.integration.test_policies import request_caps_hold


async def test_kind_and_household_caps_hold_when_a_worker_decides(cluster: Cluster) -> None:
    """Made through one API, played through the other, decided by either worker."""
    await request_caps_hold(cluster.urls[0], cluster.urls[1])
