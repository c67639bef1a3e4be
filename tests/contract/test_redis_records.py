"""The Redis ledger's stream record (record.lua): small enough that a user's hash stays a listpack, times exact, and
records of the previous format read, renewed and ended alike."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from playgate.connections import connect, layout_for
from playgate.domain import Status, Stream
from playgate.ledger.redis import RedisLedger
from tests.contract.conftest import DECISION_TTL_S, LEASE_S
from tests.contract.test_ledger import one, play
from tests.support.clock import Clock

# Epoch seconds as a real clock gives them: 17 significant digits, no short decimal form.
REAL_NOW = 1_796_130_932.6080668
USER = "13bfb416f037"  # as the catalogue makes them
LISTPACK_VALUE_MAX = 64  # Redis's default hash-max-listpack-value


def ledger_on(url: str, clock: Clock) -> RedisLedger:
    return RedisLedger(url, lease_s=LEASE_S, decision_ttl_s=DECISION_TTL_S, clock=clock)


async def test_a_users_streams_stay_a_small_listpack_with_exact_times(redis_url: str) -> None:
    """Streams as the admission bench's users hold them: short device ids and names (a device id as devices.py
    issues them, 61 characters, does not fit the listpack bound with the rest)."""
    clock = Clock(REAL_NOW)
    ledger, client = ledger_on(redis_url, clock), connect(redis_url)
    streams_key = layout_for(redis_url).streams_key(USER)
    try:
        expected = []
        looks = [((), False, ""), (("uhd",), True, "TV"), (("live", "uhd"), False, "Phone"), ((), True, "")]
        for i, (kinds, away, name) in enumerate(looks):
            request = play(f"r{i}", user=USER, video=f"v{i}", device=f"device{i}", kinds=kinds, away=away)
            request = replace(request, device_name=name)
            decision = await one(ledger, request, limit=4)
            assert decision.status is Status.allowed
            assert decision.stream_id
            assert decision.expires_at == clock.now + LEASE_S
            expected.append(
                Stream(
                    decision.stream_id,
                    USER,
                    f"v{i}",
                    f"device{i}",
                    clock.now,
                    clock.now + LEASE_S,
                    request.device_name,
                    kinds,
                    away,
                )
            )
            clock.advance(0.1)
        assert await ledger.streams(USER) == expected
        assert await client.execute_command("OBJECT", "ENCODING", streams_key) == "listpack"
        stored = await client.hgetall(streams_key)
        assert all(len(f) <= LISTPACK_VALUE_MAX and len(v) <= LISTPACK_VALUE_MAX for f, v in stored.items())

        renewed = await ledger.heartbeat(expected[1].id)
        assert renewed is not None
        assert renewed.expires_at == clock.now + LEASE_S
        assert await ledger.stream(expected[1].id) == renewed
        assert await client.hgetall(streams_key) == stored  # a renewal moves the lease index alone
    finally:
        await ledger.close()
        await client.aclose()


@pytest.mark.parametrize("fields", [7, 4])  # the last previous format, and the first (before names and policies)
async def test_records_of_the_previous_format_are_read_renewed_and_ended(redis_url: str, fields: int) -> None:
    clock = Clock(REAL_NOW)
    ledger, client = ledger_on(redis_url, clock), connect(redis_url)
    keys = layout_for(redis_url)
    owner = USER.encode().hex()
    old = [
        Stream(f"{owner}-{'a' * 24}", USER, "v1", "tv", clock.now - 10, clock.now + 20, "tv", ("uhd",), True),
        Stream(f"{owner}-{'b' * 24}", USER, "v2", "phone", clock.now - 5, clock.now + 30, "phone"),
    ]
    if fields == 4:
        old = [Stream(s.id, s.user_id, s.video_id, s.device_id, s.started_at, s.expires_at) for s in old]
    for s in old:
        value = [s.video_id, s.device_id, repr(s.started_at), repr(s.expires_at), s.device_name, list(s.kinds)]
        await client.hset(keys.streams_key(USER), s.id, orjson.dumps([*value, int(s.away)][:fields]))
        await client.zadd(keys.leases_key(USER), {s.id: s.expires_at})
    try:
        assert await ledger.streams(USER) == old
        assert await ledger.stream(old[1].id) == old[1]
        denied = await one(ledger, play("r1", user=USER, video="v3", device="web"), limit=2)
        assert (denied.status, denied.active) == (Status.denied, 2)

        renewed = await ledger.heartbeat(old[0].id)
        assert renewed is not None
        assert renewed.expires_at == clock.now + LEASE_S
        assert await ledger.stream(old[0].id) == renewed
        stored = await client.hkeys(keys.streams_key(USER))
        assert sorted(stored) == sorted(["a" * 24, old[1].id])  # rewritten in this format as it was renewed

        assert await ledger.stop([old[1].id], USER) == [old[1]]
        clock.advance(LEASE_S)
        assert [(e.stream, e.reason.value) for e in await ledger.sweep()] == [(renewed, "expired")]
        assert await client.exists(keys.streams_key(USER)) == 0
    finally:
        await ledger.close()
        await client.aclose()
