"""The catalogue's cache, on an injected clock and a reload the test controls: entries are served for the TTL and
never after, a read past REFRESH_AT reloads in the background (one call for every key queued), a clear wins over a
load or reload begun before it, and a failing reload lets entries expire without a retry per read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from playgate.catalog.service import REFRESH_AT, TTLCache
from tests.support.clock import Clock

TTL_S = 2.0


class Source:
    """The database behind the cache: values by key, each reload recorded, optionally held until released."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.reloads: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.fails = False

    async def reload(self, keys: list[str]) -> Mapping[str, str]:
        self.reloads.append(sorted(keys))
        if self.gate is not None:
            await self.gate.wait()
        if self.fails:
            raise ConnectionError("the database does not answer")
        return {k: self.values[k] for k in keys if k in self.values}


def cache(source: Source, clock: Clock, ttl_s: float = TTL_S) -> TTLCache:
    return TTLCache(ttl_s, clock, source.reload, "things")


async def seed(things: TTLCache, source: Source, old: dict[str, str]) -> None:
    """Load `old` into the cache through a miss, then put the source's own values back (not counted as reloads)."""
    now = dict(source.values)
    source.values = old
    await things.load(sorted(old))
    source.values = now
    source.reloads.clear()


async def settle(cache_: TTLCache) -> None:
    """Let the refresh task run to its end (bounded: it makes at most a few reloads here)."""
    for _ in range(50):
        await asyncio.sleep(0)
    await cache_.close()


async def test_an_entry_is_served_for_the_ttl_and_not_after() -> None:
    clock, source = Clock(), Source({})
    things = cache(source, clock)
    loaded_at = clock.now
    await seed(things, source, {"a": "old"})
    clock.now += TTL_S * REFRESH_AT * 0.9
    assert things.get("a") == "old"
    clock.now = loaded_at + TTL_S
    assert things.get("a") is None
    await settle(things)
    assert source.reloads == []  # read only before REFRESH_AT: nothing reloaded


async def test_a_read_past_refresh_at_reloads_in_the_background_and_the_entry_lives_on() -> None:
    clock, source = Clock(), Source({"a": "new"})
    things = cache(source, clock)
    await seed(things, source, {"a": "old"})
    clock.now += TTL_S * 0.6
    assert things.get("a") == "old"  # served at once; the reload runs behind it
    assert things.get("a") == "old"  # queued once per life
    await settle(things)
    assert source.reloads == [["a"]]
    clock.now += TTL_S * 0.9  # past the first load's expiry, within the reload's
    assert things.get("a") == "new"


async def test_keys_read_while_a_reload_runs_go_together_in_the_next() -> None:
    clock, source = Clock(), Source({"a": "A", "b": "B", "c": "C"})
    things = cache(source, clock)
    await seed(things, source, dict.fromkeys("abc", "old"))
    clock.now += TTL_S * 0.6
    source.gate = asyncio.Event()
    things.get("a")
    await asyncio.sleep(0)  # the first reload starts, and waits
    things.get("b")
    things.get("c")
    source.gate.set()
    await settle(things)
    assert source.reloads == [["a"], ["b", "c"]]
    assert [things.get(key) for key in "abc"] == ["A", "B", "C"]


async def test_a_clear_during_a_reload_keeps_the_reloaded_value_out() -> None:
    clock, source = Clock(), Source({"a": "read before the change"})
    things = cache(source, clock)
    await seed(things, source, {"a": "old"})
    clock.now += TTL_S * 0.6
    source.gate = asyncio.Event()
    things.get("a")
    await asyncio.sleep(0)
    things.clear()  # a write through this process: what the reload read may predate it
    source.gate.set()
    await settle(things)
    assert source.reloads == [["a"]]
    assert things.get("a") is None


async def test_a_miss_loaded_across_a_clear_is_not_kept() -> None:
    source = Source({"a": "read before the clear"})
    things = cache(source, Clock())
    source.gate = asyncio.Event()
    miss = asyncio.create_task(things.load(["a"]))
    await asyncio.sleep(0)  # the load has read, and waits
    things.clear()
    source.gate.set()
    assert await miss == {"a": "read before the clear"}  # the caller still gets what it read
    assert things.get("a") is None
    source.gate = None
    source.values["a"] = "read after it"
    await things.load(["a"])
    assert things.get("a") == "read after it"


async def test_a_failing_reload_is_logged_and_not_retried_on_every_read(caplog: pytest.LogCaptureFixture) -> None:
    clock, source = Clock(), Source({"a": "new"})
    things = cache(source, clock)
    await seed(things, source, {"a": "old"})
    source.fails = True
    clock.now += TTL_S * 0.6
    with caplog.at_level(logging.WARNING, logger="playgate.catalog"):
        for _ in range(5):
            assert things.get("a") == "old"
            await asyncio.sleep(0)
        await settle(things)
    assert source.reloads == [["a"]]
    assert "Could not refresh 1 cached things" in caplog.text
    clock.now += TTL_S * 0.5
    assert things.get("a") is None  # expired: the caller's own load now says whether the database is back


async def test_a_key_deleted_meanwhile_is_not_put_back() -> None:
    clock, source = Clock(), Source({})
    things = cache(source, clock)
    await seed(things, source, {"gone": "old"})
    clock.now += TTL_S * 0.6
    things.get("gone")
    await settle(things)
    assert source.reloads == [["gone"]]
    clock.now += TTL_S * 0.5
    assert things.get("gone") is None


async def test_a_zero_ttl_caches_nothing() -> None:
    source = Source({"a": "value"})
    nothing = cache(source, Clock(), ttl_s=0)
    assert await nothing.load(["a"]) == {"a": "value"}
    assert nothing.get("a") is None


def test_a_read_outside_an_event_loop_reloads_nothing() -> None:
    clock, source = Clock(), Source({})
    things = cache(source, clock)
    asyncio.run(seed(things, source, {"a": "old"}))
    clock.now += TTL_S * 0.6
    assert things.get("a") == "old"  # no running loop: served, and simply left to expire
    assert source.reloads == []
