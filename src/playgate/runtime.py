"""Wiring: builds catalogue, ledger, bus, worker and service from Settings, and runs their tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncEngine

from playgate.bus.local import LocalFanout, LocalQueue
from playgate.bus.protocol import Emitter, Fanout, RequestQueue
from playgate.bus.redis import RedisFanout, RedisQueue, socket_manager
from playgate.catalog.db import check_url, create_engine, is_sqlite, upgrade
from playgate.catalog.service import Catalog
from playgate.config import AuthMode, EdgeSigning, Settings, is_loopback, jwt_secret, security_problems
from playgate.connections import check_redis_url
from playgate.domain import Decision
from playgate.errors import ConfigError, PlayGateError
from playgate.ledger.protocol import Ledger
from playgate.ledger.redis import RedisLedger
from playgate.ledger.sql import SqlLedger
from playgate.media import ContentGate, EdgeSigner, MediaLibrary, PlaybackLinks
from playgate.metrics import Metrics
from playgate.probes import ProbeServer, probe_app
from playgate.security import PlaybackTokens, TokenIssuer
from playgate.service import PlayGate
from playgate.worker import MAX_ATTEMPTS, Worker

log = logging.getLogger("playgate")

DEMO_USER_NAMES = ("user1", "user2", "user3")


def preflight(settings: Settings) -> None:
    """Refuse settings this process cannot run with, in one line naming the variable (ConfigError)."""
    problems = security_problems(settings)
    if problems:
        raise ConfigError(problems[0])
    url = settings.resolved_database_url
    check_url(url)
    if settings.redis_url is not None:
        check_redis_url(settings.redis_url)
    elif not is_sqlite(url):
        raise ConfigError(
            "PLAYGATE_DATABASE_URL: the embedded deployment keeps its ledger in SQLite; use a sqlite+aiosqlite URL"
        )
    jwt_secret(settings)


def open_catalog(settings: Settings, clock: Callable[[], float]) -> tuple[AsyncEngine, Catalog]:
    """The catalogue engine and service for the configured database."""
    # Reads stay deferred (no write lock on the hot path); Catalog writes on an immediate engine of its own.
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
    if not is_loopback(settings.host):
        await refuse_demo_passwords(catalog)


async def refuse_demo_passwords(catalog: Catalog) -> None:
    """ConfigError when a demo user still logs in with its demo password (name = password)."""
    for name in DEMO_USER_NAMES:
        if await catalog.authenticate(name, name) is not None:
            raise ConfigError(
                f"the demo user {name!r} still has its demo password and this process binds a non-loopback host; "
                "change its password or delete it (PATCH or DELETE /v1/users/{id})"
            )


async def _prepare_media(library: MediaLibrary, catalog: Catalog) -> None:
    """Make the clips and posters of every catalogue video that has none yet (logged, never fatal)."""
    try:
        await library.prepare((v.id, v.source) for v in await catalog.list_videos())
    except PlayGateError as exc:
        log.error("could not make the demo media (it is retried on the first media request): %s", exc.detail)


def playback_links(settings: Settings) -> PlaybackLinks:
    """Playback URLs as configured: tokened paths at the content gate, or signed edge links."""
    tokens = PlaybackTokens(jwt_secret(settings), settings.playback_token_ttl_s)
    if settings.edge_signing is EdgeSigning.off or settings.edge_secret is None:
        return PlaybackLinks(tokens)
    signer = EdgeSigner(settings.edge_secret, settings.edge_link_ttl_s, settings.edge_prefix)
    return PlaybackLinks(tokens, signer)


class Role(StrEnum):
    """What one process runs: `serve` API and worker, `api` HTTP and Socket.IO only, `worker` the worker only."""

    serve = "serve"
    api = "api"
    worker = "worker"


def open_backends(
    settings: Settings,
    emitter: Emitter,
    playback: Callable[[Decision], str | None],
    clock: Callable[[], float],
) -> tuple[Ledger, RequestQueue, Fanout]:
    """The one mapping from settings to backends: PLAYGATE_REDIS_URL set -> Redis ledger, Redis Streams queue and
    Redis fan-out; unset -> the SQLite ledger in the catalogue's database and the in-process bus."""
    lease_s, decision_ttl_s, policy = settings.stream_ttl_s, settings.decision_ttl_s, settings.policy
    if settings.redis_url is not None:
        url = settings.redis_url
        queue = RedisQueue(
            url,
            consumer=f"{socket.gethostname()}-{os.getpid()}",
            claim_idle_s=settings.claim_idle_s,
            maxlen=settings.queue_maxlen,
            pending_ttl_s=settings.decision_ttl_s,
            max_attempts=MAX_ATTEMPTS,
        )
        ledger: Ledger = RedisLedger(url, lease_s=lease_s, decision_ttl_s=decision_ttl_s, policy=policy, clock=clock)
        return ledger, queue, RedisFanout(url, emitter, playback)
    ledger = SqlLedger(
        settings.resolved_database_url, lease_s=lease_s, decision_ttl_s=decision_ttl_s, policy=policy, clock=clock
    )
    return ledger, LocalQueue(), LocalFanout(emitter, playback_url=playback)


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
        role: Role = Role.serve,
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
        if role is not Role.worker:  # workers start beside API processes that already did this
            await prepare_catalog(settings, catalog)
        links = playback_links(settings)
        ledger, queue, fanout = open_backends(
            settings, emitter, lambda decision: links.for_decision(decision, clock()), clock
        )
        if isinstance(fanout, RedisFanout) and role is not Role.worker:
            await fanout.start()  # this process's ?wait= callers are woken by decisions of any worker
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
        content = ContentGate(gate=gate, links=links, library=library, clock=clock)
        runtime = cls(gate=gate, engine=engine, worker=worker, content=content)
        if role is not Role.api:
            runtime.tasks += [
                asyncio.create_task(worker.run(runtime.stop_event), name="playgate-worker"),
                asyncio.create_task(worker.sweep_forever(runtime.stop_event), name="playgate-sweeper"),
            ]
        if role is not Role.worker:
            # Clips are made in the background: start-up does not wait, a first media request waits for its own.
            runtime.tasks.append(asyncio.create_task(_prepare_media(library, catalog), name="playgate-media"))
        return runtime

    async def stop(self) -> None:
        """Let the worker finish what is queued (distributed: its batch in hand), then close every connection."""
        if isinstance(self.gate.queue, RedisQueue):
            self.gate.queue.stop_reading()  # the other workers take what is still queued
        self.stop_event.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.gate.fanout.close()
        await self.gate.queue.close()
        await self.gate.ledger.close()
        await self.gate.catalog.close()
        await self.engine.dispose()


async def run_worker(settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
    """A worker process of the distributed deployment: the Worker loop and the sweeper, no HTTP.

    Decisions reach the sockets through a write-only Socket.IO Redis manager. SIGTERM or SIGINT: the batch in
    hand is decided, published and acknowledged, nothing new is taken, and the process exits.
    """
    assert settings.redis_url is not None, "run_worker needs PLAYGATE_REDIS_URL"
    emitter = socket_manager(settings.redis_url, write_only=True)
    runtime = await Runtime.start(
        settings, emitter=emitter, metrics=Metrics(), clock=clock, migrate=False, role=Role.worker
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %s started", runtime.gate.queue.consumer if isinstance(runtime.gate.queue, RedisQueue) else "")
    probes = None
    if settings.metrics_port is not None:
        # /healthz, /readyz and /metrics for Prometheus and the orchestrator's probes (PLAYGATE_METRICS_PORT).
        app = probe_app(runtime.gate.metrics, runtime.gate.ready)
        probes = ProbeServer(app, host=settings.host, port=settings.metrics_port, log_level=settings.log_level)
    try:
        if probes is not None:
            await probes.start()
        await stop.wait()
    finally:
        if probes is not None:
            await probes.stop()
        await runtime.stop()
        log.info("worker stopped")
