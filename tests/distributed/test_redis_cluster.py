"""The distributed deployment on a Redis Cluster (three primaries, three replicas): the lifecycle tests of
test_distributed run on it, then a slot migration (MOVED / ASK) and a primary's failover to its replica, each
during load: never over a limit, one decision per request, no allowed stream lost."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio
from redis.crc import key_slot

from playgate.config import load_settings
from playgate.connections import QUEUE_SHARDS, KeyLayout, decision_channels, translate_redis_errors
from playgate.doctor import Verdict, check_redis
from playgate.errors import Unavailable
from tests.distributed import test_distributed as lifecycle
from tests.distributed import test_revocation as revocation
from tests.distributed.conftest import Cluster
from tests.distributed.test_distributed import Player, close, decisions, players, request_plays, settle
from tests.support.redis_cluster import RedisCluster, wait_replicas_synced

FAILOVER_TIMEOUT_S = 20.0
KEYS_TIMEOUT_S = 20.0
MIGRATE_PAUSE_S = 0.05  # between keys: the slot stays half-moved while requests arrive
SOCKET_CHANNEL = decision_channels()[0]  # the sharded channel that carries the socket messages


def store(cluster: Cluster) -> RedisCluster:
    assert isinstance(cluster.redis, RedisCluster)
    return cluster.redis


async def test_a_socket_on_one_api_gets_decisions_of_requests_sent_to_the_other(on_redis_cluster: Cluster) -> None:
    await lifecycle.test_a_socket_on_one_api_gets_decisions_of_requests_sent_to_the_other(on_redis_cluster)


async def test_many_users_hammered_over_both_apis_never_exceed_their_limit(on_redis_cluster: Cluster) -> None:
    await lifecycle.test_many_users_hammered_over_both_apis_never_exceed_their_limit(on_redis_cluster)


async def test_a_killed_worker_s_requests_are_decided_by_the_other(on_redis_cluster: Cluster) -> None:
    await lifecycle.test_a_killed_worker_s_requests_are_decided_by_the_other(on_redis_cluster)


async def test_a_user_playgate_import_disables_hears_their_streams_end(
    on_redis_cluster: Cluster, tmp_path: Path
) -> None:
    # On a cluster the ledger's stop does not publish the ends itself: the command's fan-out does.
    await revocation.test_a_user_playgate_import_disables_hears_their_streams_end_on_every_api(
        on_redis_cluster, tmp_path
    )


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
    if sockets:
        settled = await settle(group, timeout_s=20)
    else:
        settled = [(await decisions(p), {}) for p in group]
    for p, (found, seen) in zip(group, settled, strict=True):
        assert set(found) == set(p.request_ids)
        if sockets:
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


async def fail_over(rc: RedisCluster, slot: int) -> str:
    """`CLUSTER FAILOVER` on the replica of the primary serving `slot`; returns once the replica serves it."""
    primary = owner_of(rc, slot)
    primary_id = node_ids(rc)[primary]
    replica = next(
        int(addr.rpartition(":")[2].split("@")[0])
        for addr, node in rc.topology().items()
        if node.get("master_id") == primary_id
    )
    with rc.client(replica) as c:
        c.execute_command("CLUSTER FAILOVER")  # graceful: the replica catches up, then takes over
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while owner_of(rc, slot) != replica:
        assert time.monotonic() < deadline, "the replica never took over"
        await asyncio.sleep(0.05)
    rc.wait_ok()
    return f"primary :{primary} failed over to its replica :{replica} during load"


async def test_a_primary_failing_over_under_load_loses_nothing(on_redis_cluster: Cluster) -> None:
    rc = store(on_redis_cluster)

    async def disturb(group: list[Player]) -> str:
        await asyncio.sleep(0.3)
        return await fail_over(rc, KeyLayout(cluster=True).slot(group[0].user.id))

    # The decisions only: a socket misses the messages published while its API's listener subscribes again (pub/sub
    # keeps nothing; README: what a failover cannot promise). The test below proves the sockets hear on after it.
    await under_load(on_redis_cluster, 29, disturb, sockets=False)


def replica_of(rc: RedisCluster, primary: int) -> int:
    """The port of the replica of the primary on `primary`."""
    primary_id = node_ids(rc)[primary]
    return next(
        int(addr.rpartition(":")[2].split("@")[0])
        for addr, node in rc.topology().items()
        if node.get("master_id") == primary_id
    )


async def kill_primary(rc: RedisCluster, slot: int) -> str:
    """kill -9 of the primary serving `slot`; returns once its replica has been promoted (the cluster's own
    failure detection, cluster-node-timeout 1 s) and the killed node is back, as the new primary's replica."""
    primary = owner_of(rc, slot)
    replica = replica_of(rc, primary)
    rc.node(primary).stop(signal.SIGKILL)
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while owner_of(rc, slot) != replica:
        assert time.monotonic() < deadline, "the replica never took over"
        await asyncio.sleep(0.05)
    await asyncio.to_thread(rc.node(primary).start)  # its nodes.conf makes it rejoin, as a replica now
    await asyncio.to_thread(rc.wait_ok)
    await asyncio.to_thread(wait_replicas_synced, rc)
    return f"primary :{primary} killed (SIGKILL) during load, its replica :{replica} promoted"


async def test_a_primary_killed_under_load_loses_nothing(on_redis_cluster: Cluster) -> None:
    """kill -9 of a primary while requests arrive (not the one serving the socket messages' channel, so that every
    socket message is checked too): every request decided once, the same on the socket as at GET, never over a
    limit, every allowed stream still counted. What a kill -9 cannot promise (a write the primary acknowledged
    and had not yet sent to its replica) is in the README; on loopback that window is too short to hit here."""
    rc = store(on_redis_cluster)
    channel_owner = owner_of(rc, key_slot(SOCKET_CHANNEL.encode()))
    layout = KeyLayout(cluster=True)

    async def disturb(group: list[Player]) -> str:
        await asyncio.sleep(0.3)
        slot = next(s for s in (layout.slot(p.user.id) for p in group) if owner_of(rc, s) != channel_owner)
        return await kill_primary(rc, slot)

    await under_load(on_redis_cluster, 43, disturb)


async def test_sockets_keep_hearing_decisions_after_the_socket_channel_s_primary_fails_over(
    on_redis_cluster: Cluster,
) -> None:
    """The primary serving the socket messages' sharded channel fails over during load (the requests are decided
    once each); afterwards the sockets opened before it, on both APIs, and new ones get one message per request."""
    rc = store(on_redis_cluster)
    channel_slot = key_slot(SOCKET_CHANNEL.encode())

    async def disturb(group: list[Player]) -> str:
        await asyncio.sleep(0.3)
        return await fail_over(rc, channel_slot)

    before = await players(on_redis_cluster, 4, limits=(3,))  # sockets on both APIs, open across the failover
    await under_load(on_redis_cluster, 31, disturb, sockets=False)
    for p in before:
        assert p.socket.messages.empty()
    rng = random.Random(37)
    after = await players(on_redis_cluster, 4, limits=(3,))
    group = before + after
    await asyncio.gather(*(request_plays(p, rng, 6) for p in group))
    for p, (found, seen) in zip(group, await settle(group, timeout_s=20), strict=True):
        lifecycle.check_one_decision_each(p, found, seen)
    await close(group)


def queue_entries_by_primary(rc: RedisCluster) -> dict[int, int]:
    """Entries ever added to the request queue's shards, by the port of the primary holding each shard."""
    added: dict[int, int] = {}
    for shard in KeyLayout(cluster=True).queue_shards(QUEUE_SHARDS):
        port = owner_of(rc, key_slot(shard.requests_key.encode()))
        with rc.client(port) as c:
            info = c.xinfo_stream(shard.requests_key)
        added[port] = added.get(port, 0) + int(info["entries-added"])
    return added


async def test_the_request_queue_is_spread_over_the_primaries(on_redis_cluster: Cluster) -> None:
    """Requests of many users land on queue shards held by every primary (no one stream carries all traffic), and
    each is decided once."""
    rc = store(on_redis_cluster)
    before = queue_entries_by_primary(rc)
    rng = random.Random(41)
    group = await players(on_redis_cluster, 40, limits=(3,))  # a primary holding 2 of 8 shards gets none: 0.75**40
    await asyncio.gather(*(request_plays(p, rng, 2) for p in group))
    for p, (found, seen) in zip(group, await settle(group), strict=True):
        lifecycle.check_one_decision_each(p, found, seen)
    after = queue_entries_by_primary(rc)
    grew = {port: after[port] - before.get(port, 0) for port in after}
    assert sum(grew.values()) == 40 * 2
    assert len(after) == len(rc.primaries()) == 3, after
    assert all(count > 0 for count in grew.values()), f"a primary's shards got no request: {grew}"
    await close(group)


async def test_a_cluster_s_refusals_are_unavailable_not_errors(on_redis_cluster: Cluster) -> None:
    """A replica's MOVED (redis-py's MovedError, its text without the prefix) is a 503 (Unavailable), not a 500."""
    rc = store(on_redis_cluster)
    replica = next(n.port for n in rc.nodes if n.port not in rc.primaries())
    client = redis.asyncio.Redis(host="127.0.0.1", port=replica, socket_timeout=5)
    try:
        with pytest.raises(Unavailable, match="MovedError"):
            async with translate_redis_errors():
                await client.set("playgate:c16-probe", "1")
    finally:
        await client.aclose()


async def test_a_script_missing_on_a_promoted_replica_is_unavailable_not_an_error(on_redis_cluster: Cluster) -> None:
    """A replica promoted has none of the scripts; redis-py loads one again on the nodes it knew and may be told
    NOSCRIPT a second time (seen as a 500 on POST /v1/plays in a failover): a 503 (Unavailable), like the failover."""
    rc = store(on_redis_cluster)
    client = redis.asyncio.Redis(host="127.0.0.1", port=rc.primaries()[0], socket_timeout=5)
    try:
        with pytest.raises(Unavailable, match="NoScriptError"):
            async with translate_redis_errors():
                await client.evalsha("0" * 40, 0)
    finally:
        await client.aclose()


async def test_doctor_asks_every_primary(on_redis_cluster: Cluster) -> None:
    """`playgate doctor` on a redis+cluster:// URL checks each primary (it used to fail with a traceback: redis-py's
    from_url knows no cluster scheme): these keep no append-only file and Redis's default listpack bound."""
    rc = store(on_redis_cluster)
    checks = await check_redis(load_settings({"PLAYGATE_REDIS_URL": rc.url, "PLAYGATE_JWT_SECRET": "x" * 32}))
    found = {c.name: (c.verdict, c.detail) for c in checks}
    assert found["redis"][0] is Verdict.ok
    assert found["redis"][1].endswith(" (3 primaries)")
    assert found["redis persistence"][0] is Verdict.warn
    assert found["redis memory"][0] is Verdict.warn
    assert "hash-max-listpack-value is 64" in found["redis memory"][1]
