"""The distributed deployment on a Redis Cluster (three primaries, three replicas): the lifecycle tests of
test_distributed run on it, then a slot migration (MOVED / ASK) and a primary's failover to its replica, each
during load: never over a limit, one decision per request, no allowed stream lost."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from playgate.connections import KeyLayout
from tests.distributed import test_distributed as lifecycle
from tests.distributed.conftest import Cluster
from tests.distributed.test_distributed import Player, close, decisions, players, request_plays, socket_messages
from tests.support.redis_cluster import RedisCluster

FAILOVER_TIMEOUT_S = 20.0
KEYS_TIMEOUT_S = 20.0
MIGRATE_PAUSE_S = 0.05  # between keys: the slot stays half-moved while requests arrive


def store(cluster: Cluster) -> RedisCluster:
    assert isinstance(cluster.redis, RedisCluster)
    return cluster.redis


async def test_a_socket_on_one_api_gets_decisions_of_requests_sent_to_the_other(on_redis_cluster: Cluster) -> None:
    await lifecycle.test_a_socket_on_one_api_gets_decisions_of_requests_sent_to_the_other(on_redis_cluster)


async def test_many_users_hammered_over_both_apis_never_exceed_their_limit(on_redis_cluster: Cluster) -> None:
    await lifecycle.test_many_users_hammered_over_both_apis_never_exceed_their_limit(on_redis_cluster)


async def test_a_killed_worker_s_requests_are_decided_by_the_other(on_redis_cluster: Cluster) -> None:
    await lifecycle.test_a_killed_worker_s_requests_are_decided_by_the_other(on_redis_cluster)


async def under_load(
    cluster: Cluster, seed: int, disturb: Callable[[list[Player]], Awaitable[str]], *, sockets: bool = True
) -> None:
    """Requests from ten users over both APIs while `disturb` runs; then every request has one decision (the same
    on the socket and at GET, when `sockets`), no user ever over the limit, and every allowed stream still
    counted."""
    rng = random.Random(seed)
    group = await players(cluster, 10, limits=(2, 3))
    load = asyncio.gather(*(request_plays(p, rng, 16) for p in group))
    what = await disturb(group)
    await load
    for p in group:
        found = await decisions(p)
        assert set(found) == set(p.request_ids)
        if sockets:
            seen = await socket_messages(p, len(p.request_ids), timeout_s=20)
            lifecycle.check_one_decision_each(p, found, seen)
        allowed = {d["streamId"] for d in found.values() if d["status"] == "allowed"}
        assert len(allowed) <= p.user.limit
        streams = (await p.clients[0].get("/v1/streams")).json()
        assert {s["id"] for s in streams} == allowed, f"{what}: an allowed stream was lost"
    print(f"\n{what}: {sum(len(p.request_ids) for p in group)} requests decided once each")
    await close(group)


def keys_in(rc: RedisCluster, slot: int) -> int:
    """How many keys `slot` holds on its primary."""
    with rc.client(owner_of(rc, slot)) as c:
        return int(c.execute_command("CLUSTER COUNTKEYSINSLOT", slot))


def node_ids(rc: RedisCluster) -> dict[int, str]:
    """Port -> node id of every node."""
    return {int(addr.rpartition(":")[2].split("@")[0]): str(node["node_id"]) for addr, node in rc.topology().items()}


def owner_of(rc: RedisCluster, slot: int) -> int:
    """The port of the primary serving `slot`."""
    for addr, node in rc.topology().items():
        if "master" in str(node["flags"]) and any(a <= slot <= b for a, b in slot_ranges(node)):
            return int(addr.rpartition(":")[2].split("@")[0])
    raise AssertionError(f"no primary serves slot {slot}")


def slot_ranges(node: dict[str, object]) -> list[tuple[int, int]]:
    """The slot ranges of a node as redis-py parses CLUSTER NODES ([first, last] lists)."""
    slots = node.get("slots")
    assert isinstance(slots, list)
    return [(int(item[0]), int(item[-1])) for item in slots]


async def migrate(rc: RedisCluster, slot: int) -> str:
    """Move `slot` to another primary the way `redis-cli --cluster reshard` does, key by key, slowly."""
    ids = node_ids(rc)
    source = owner_of(rc, slot)
    target = next(port for port in rc.primaries() if port != source)
    with rc.client(source) as src, rc.client(target) as dst:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        moved = 0
        for _ in range(1000):  # bounded: the slot holds a few hundred keys at most here
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            await asyncio.sleep(MIGRATE_PAUSE_S)
        for port in rc.primaries():
            with rc.client(port) as c:
                c.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    rc.wait_ok()
    return f"slot {slot} moved from :{source} to :{target} ({moved} keys) during load"


async def test_a_slot_migrating_under_load_loses_nothing(on_redis_cluster: Cluster) -> None:
    rc = store(on_redis_cluster)

    async def disturb(group: list[Player]) -> str:
        slot = KeyLayout(cluster=True).slot(group[0].user.id)
        deadline = time.monotonic() + KEYS_TIMEOUT_S
        while keys_in(rc, slot) < 3:  # streams and decisions exist in the slot before it moves
            assert time.monotonic() < deadline, f"slot {slot} got no keys"
            await asyncio.sleep(0.02)
        return await migrate(rc, slot)

    await under_load(on_redis_cluster, 23, disturb)


async def test_a_primary_failing_over_under_load_loses_nothing(on_redis_cluster: Cluster) -> None:
    rc = store(on_redis_cluster)

    async def disturb(group: list[Player]) -> str:
        await asyncio.sleep(0.3)
        primary = owner_of(rc, KeyLayout(cluster=True).slot(group[0].user.id))
        primary_id = node_ids(rc)[primary]
        replica = next(
            int(addr.rpartition(":")[2].split("@")[0])
            for addr, node in rc.topology().items()
            if node.get("master_id") == primary_id
        )
        with rc.client(replica) as c:
            c.execute_command("CLUSTER FAILOVER")  # graceful: the replica catches up, then takes over
        deadline = time.monotonic() + FAILOVER_TIMEOUT_S
        while owner_of(rc, KeyLayout(cluster=True).slot(group[0].user.id)) != replica:
            assert time.monotonic() < deadline, "the replica never took over"
            await asyncio.sleep(0.05)
        rc.wait_ok()
        return f"primary :{primary} failed over to its replica :{replica} during load"

    # The decisions only: after a failover of the shard that serves python-socketio's sharded channel, the
    # sockets of an API process were seen to stay silent (README: known limits), which this test does not hide.
    await under_load(on_redis_cluster, 29, disturb, sockets=False)
