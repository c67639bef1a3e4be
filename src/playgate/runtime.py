"""Wiring: builds catalogue, ledger, bus, worker and service from Settings, and runs their tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from playgate.bus.local import LocalFanout, LocalQueue
from playgate.bus.protocol import Emitter
from playgate.catalog.db import check_url, create_engine, is_sqlite, upgrade
from playgate.catalog.service import Catalog
from playgate.config import AuthMode, Settings, jwt_secret
from playgate.errors import ConfigError, PlayGateError
from playgate.ledger.sql import SqlLedger
from playgate.media import ContentGate, MediaLibrary, playback_url
from playgate.metrics import Metrics
from playgate.security import PlaybackTokens, TokenIssuer
from playgate.service import PlayGate
from playgate.worker import Worker

log = logging.getLogger("playgate")


def preflight(settings: Settings) -> None:
    """Refuse settings this process cannot run with, in one line naming the variable (ConfigError)."""
    if settings.distributed:
        raise ConfigError(
            "PLAYGATE_REDIS_URL: the distributed deployment is not part of this version; unset it to run embedded"
        )
    url = settings.resolved_database_url
    check_url(url)
    if not is_sqlite(url):
        raise ConfigError(
            "PLAYGATE_DATABASE_URL: the embedded deployment keeps its ledger in SQLite; use a sqlite+aiosqlite URL"
        )
    jwt_secret(settings)


def open_catalog(settings: Settings, clock: Callable[[], float]) -> tuple[AsyncEngine, Catalog]:
    """The catalogue engine and service for the configured database."""
    engine = create_engine(settings.resolved_database_url)
    catalog = Catalog(engine, default_limit=settings.default_limit, cache_ttl_s=settings.cache_ttl_s, clock=clock)
    return engine, catalog


async def prepare_catalog(settings: Settings, catalog: Catalog) -> None:
    """Load the demo catalogue into an empty database (unless PLAYGATE_DEMO=false); set the admin password."""
    if settings.demo and await catalog.is_empty():
        await catalog.load_demo()
        log.info("loaded the demo catalogue: users user1..user3, videos 1..6")
    if settings.admin_password:
        await catalog.ensure_admin(settings.admin_password)
        log.info("admin user ready")


async def _prepare_media(library: MediaLibrary, catalog: Catalog) -> None:
    """Make the clips and posters of every catalogue video that has none yet (logged, never fatal)."""
    try:
        await library.prepare(v.id for v in await catalog.list_videos())
    except PlayGateError as exc:
        log.error("could not make the demo media (it is retried on the first media request): %s", exc.detail)


@dataclass
class Runtime:
    """The running parts of one process, and the tasks to stop at shutdown."""

    gate: PlayGate
    engine: AsyncEngine
    worker: Worker
    content: ContentGate
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        emitter: Emitter,
        metrics: Metrics,
        clock: Callable[[], float],
        migrate: bool = True,
    ) -> Runtime:
        """Check the settings, migrate, prepare the catalogue, and start the worker and sweeper tasks."""
        preflight(settings)
        url = settings.resolved_database_url
        if settings.auth is AuthMode.disabled:
            log.warning("PLAYGATE_AUTH=disabled: callers are believed on ?user=; for the seed's test UI only")
        tokens = TokenIssuer(jwt_secret(settings), settings.token_ttl_s)
        if migrate:
            await upgrade(url)
        engine, catalog = open_catalog(settings, clock)
        await prepare_catalog(settings, catalog)
        ledger = SqlLedger(
            url,
            lease_s=settings.stream_ttl_s,
            decision_ttl_s=settings.decision_ttl_s,
            policy=settings.policy,
            clock=clock,
        )
        queue = LocalQueue()
        playback = PlaybackTokens(jwt_secret(settings), settings.playback_token_ttl_s)
        fanout = LocalFanout(emitter, playback_url=lambda decision: playback_url(playback, decision, clock()))
        gate = PlayGate(
            settings=settings,
            catalog=catalog,
            ledger=ledger,
            queue=queue,
            fanout=fanout,
            tokens=tokens,
            metrics=metrics,
            clock=clock,
        )
        worker = Worker(
            queue=queue,
            ledger=ledger,
            fanout=fanout,
            catalog=catalog,
            metrics=metrics,
            clock=clock,
            batch_size=settings.batch_size,
            sweep_interval_s=settings.sweep_interval_s,
        )
        library = MediaLibrary(settings.resolved_media_dir)
        content = ContentGate(gate=gate, tokens=playback, library=library, clock=clock)
        runtime = cls(gate=gate, engine=engine, worker=worker, content=content)
        runtime.tasks = [
            asyncio.create_task(worker.run(runtime.stop_event), name="playgate-worker"),
            asyncio.create_task(worker.sweep_forever(runtime.stop_event), name="playgate-sweeper"),
            # Clips are made in the background: start-up does not wait, a first media request waits for its own.
            asyncio.create_task(_prepare_media(library, catalog), name="playgate-media"),
        ]
        return runtime

    async def stop(self) -> None:
        """Let the worker finish what is queued, then close every connection."""
        self.stop_event.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.gate.fanout.close()
        await self.gate.queue.close()
        await self.gate.ledger.close()
        await self.engine.dispose()
