"""The catalogue's cache over a real SQLite database: a user or video read in the second half of its cache life is
reloaded in the background, so the worker's quotas and the callers' look-ups keep hitting the cache under load,
and a change another process wrote still applies within the TTL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from playgate.catalog.db import create_engine, upgrade
from playgate.catalog.service import Catalog
from tests.support.clock import Clock
from tests.support.wait import until

TTL_S = 2.0
SETTLE_S = 5.0


@pytest.fixture
async def catalogs(tmp_path: Path) -> AsyncIterator[tuple[Catalog, Catalog, Clock]]:
    """A cached catalogue on a fake clock, and another process's (uncached) one over the same database."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'refresh.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    clock = Clock()
    reader = Catalog(engine, default_limit=3, cache_ttl_s=TTL_S, clock=clock)
    writer = Catalog(engine, default_limit=3, cache_ttl_s=0, clock=clock)
    try:
        yield reader, writer, clock
    finally:
        await writer.close()
        await reader.close()
        await engine.dispose()


async def test_quotas_read_late_in_the_cache_life_are_reloaded_and_still_hit_after_it(
    catalogs: tuple[Catalog, Catalog, Clock],
) -> None:
    reader, writer, clock = catalogs
    user = await writer.create_user(name="viewer", password="a-password-1", limit=2)
    assert (await reader.quotas([user.id]))[user.id].limit == 2  # loaded: cached from now
    await writer.update_user(user.id, {"limit": 5})  # another process's change
    clock.now += TTL_S * 0.6
    assert (await reader.quotas([user.id]))[user.id].limit == 2  # still within the TTL: served from the cache

    async def reloaded() -> bool:
        return (reader.cached_user(user.id) or user).limit == 5

    await until(reloaded, "the background reload never landed", timeout_s=SETTLE_S)
    clock.now += TTL_S * 0.9  # the first load has expired; the reload has not
    cached = reader.cached_user(user.id)
    assert cached is not None
    assert cached.limit == 5


async def test_a_video_read_late_in_its_cache_life_is_reloaded(catalogs: tuple[Catalog, Catalog, Clock]) -> None:
    reader, writer, clock = catalogs
    video = await writer.create_video(title="First title", url="https://cdn.example/first.m3u8")
    assert (await reader.get_video(video.id)).title == "First title"
    await writer.update_video(video.id, {"title": "Second title"})
    clock.now += TTL_S * 0.6
    assert (await reader.get_video(video.id)).title == "First title"

    async def reloaded() -> bool:
        return (await reader.get_video(video.id)).title == "Second title"

    await until(reloaded, "the background reload never landed", timeout_s=SETTLE_S)
    clock.now += TTL_S * 0.9
    assert (await reader.get_video(video.id)).title == "Second title"


async def test_a_write_through_this_catalogue_is_seen_at_once_despite_a_reload_in_flight(
    catalogs: tuple[Catalog, Catalog, Clock],
) -> None:
    reader, _writer, clock = catalogs
    user = await reader.create_user(name="viewer", password="a-password-1", limit=2)
    await reader.get_user(user.id)
    clock.now += TTL_S * 0.6
    reader.cached_user(user.id)  # queues a reload
    await reader.update_user(user.id, {"limit": 4})  # clears the cache: a reload begun before must not undo it
    await asyncio.sleep(0.05)
    assert (await reader.get_user(user.id)).limit == 4
