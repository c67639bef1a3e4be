"""Wiring: builds catalogue, ledger, bus, worker and service from Settings, and runs their tasks."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from playgate import tracing, webhooks
from playgate.audit import AuditTrail, ChangeFeed, ChangeJournal, LedgerEvents, Retention
from playgate.bus.hub import GroupFanout, Hub, MemberFanout, MemberLink, MemberQueue
from playgate.bus.local import QUEUE_KEEP_FILE, LocalFanout, LocalQueue, queue_kept
from playgate.bus.protocol import (
    Emitter,
    Fanout,
    ListeningFanout,
    NoSockets,
    PlaybackOf,
    PlayQueue,
    RequestQueue,
    SharedQueue,
    conflict_message,
    rooms_of,
)
from playgate.bus.redis import RedisFanout, RedisQueue
from playgate.catalog.db import check_url, create_engine, is_sqlite, upgrade
from playgate.catalog.db import reset as reset_database
from playgate.catalog.models import ShadowDenialRow
from playgate.catalog.service import Catalog
from playgate.config import (
    JWT_SECRET_FILE,
    AuthMode,
    EdgeSigning,
    Settings,
    Tracing,
    is_loopback,
    jwt_secret,
    security_problems,
)
from playgate.connections import check_redis_url, forget_all
from playgate.devices import DeviceIds
from playgate.domain import EndedStream, Reason, Stream
from playgate.errors import ConfigError, PlayGateError
from playgate.kept import KeptOutages
from playgate.ledger.protocol import Ledger
from playgate.ledger.redis import RedisLedger
from playgate.ledger.sql import SqlLedger
from playgate.media import ContentGate, EdgeSigner, MediaLibrary, PlaybackLinks
from playgate.metrics import Metrics
from playgate.probes import ProbeServer, probe_app
from playgate.security import KeySet, PlatformTokens, PlaybackTokens, TokenIssuer
from playgate.service import ENDS_AT_ONCE, PlayGate
from playgate.throttle import LoginThrottle
from playgate.values import frozen
from playgate.worker import MAX_ATTEMPTS, Worker

log = logging.getLogger("playgate")

DEMO_USER_NAMES = ("user1", "user2", "user3")


def preflight(settings: Settings) -> str:
    """Refuse settings this process cannot run with, in one line naming the variable (ConfigError); else the
    JWT signing key, resolved once for the process (PLAYGATE_JWT_SECRET, or the one kept in the data dir)."""
    problems = security_problems(settings)
    if problems:
        raise ConfigError(problems[0])
    _writable_folder("PLAYGATE_DATA_DIR", settings.data_dir)
    _writable_folder("PLAYGATE_MEDIA_DIR", settings.resolved_media_dir)
    url = settings.resolved_database_url
    check_url(url)
    if settings.redis_url is not None:
        check_redis_url(settings.redis_url)
    elif not is_sqlite(url):
        raise ConfigError(
            "PLAYGATE_DATABASE_URL: the embedded deployment keeps its ledger in SQLite; use a sqlite+aiosqlite URL"
        )
    return jwt_secret(settings)


def _writable_folder(variable: str, folder: Path) -> None:
    """The folder, made if missing; ConfigError naming `variable` when it cannot be made or written (the data dir
    keeps the SQLite file and the generated key, the media dir the segments made on demand)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot create {folder} ({exc.strerror or type(exc).__name__})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{variable}: {folder} cannot be written by this process")


def open_catalog(settings: Settings, clock: Callable[[], float]) -> tuple[AsyncEngine, Catalog]:
    """The catalogue engine and service for the configured database."""
    # Reads stay deferred (no write lock on the hot path); Catalog writes on an immediate engine of its own.
    engine = create_engine(settings.resolved_database_url)
    return engine, catalog_on(engine, settings, clock)


def catalog_on(engine: AsyncEngine, settings: Settings, clock: Callable[[], float]) -> Catalog:
    """The catalogue service over `engine`, with the defaults the settings give."""
    return Catalog(
        engine,
        default_limit=settings.default_limit,
        cache_ttl_s=settings.cache_ttl_s,
        clock=clock,
        hashes_at_once=settings.login_checks_at_once,
        default_policy=settings.policy,
        default_shadow=settings.shadow_rules,
    )


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


@frozen
class Reset:
    """What `playgate db reset` removed."""

    redis_keys: int
    jwt_secret_file: bool
    kept_files: int = 0


async def reset_data(settings: Settings) -> Reset:
    """Delete PlayGate's data: the database emptied and migrated again (users, videos, plans; embedded: the
    streams and decisions too), PlayGate's Redis keys when PLAYGATE_REDIS_URL is set, the JWT key generated
    into the data dir (tokens issued before stop working), and the work stopped processes kept there for the next
    start (plays left undecided, what an outage took), which would otherwise be written into the emptied store.
    The media files are kept: they are made from nothing but the video ids."""
    await reset_database(settings.resolved_database_url)
    keys = await forget_all(settings.redis_url) if settings.redis_url is not None else 0
    secret_file = settings.data_dir / JWT_SECRET_FILE
    had_secret_file = settings.jwt_secret is None and secret_file.exists()
    if had_secret_file:
        secret_file.unlink()
    queue_keep = settings.data_dir / QUEUE_KEEP_FILE
    removed = int(queue_keep.exists())
    queue_keep.unlink(missing_ok=True)
    removed += KeptOutages(settings.data_dir).remove_all()
    return Reset(keys, had_secret_file, removed)


async def refuse_demo_passwords(catalog: Catalog) -> None:
    """ConfigError when an enabled demo user still logs in with its demo password (name = password)."""
    for name in DEMO_USER_NAMES:
        user = await catalog.authenticate(name, name)
        if user is not None and not user.disabled:
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


def playback_links(settings: Settings, secret: str) -> PlaybackLinks:
    """Playback URLs as configured: tokened paths at the content gate, or signed edge links."""
    tokens = PlaybackTokens(secret, settings.playback_token_ttl_s, settings.jwt_accepted_secret_list)
    if settings.edge_signing is EdgeSigning.off or settings.edge_secret is None:
        return PlaybackLinks(tokens)
    signer = EdgeSigner(settings.edge_secret, settings.edge_link_ttl_s, settings.edge_prefix)
    return PlaybackLinks(tokens, signer)


class Role(StrEnum):
    """What one process runs: `serve` API and worker, `api` HTTP and Socket.IO only, `worker` the worker only;
    in a process group (`serve --processes N`) the `owner` runs the worker and `member`s HTTP and Socket.IO."""

    serve = "serve"
    api = "api"
    worker = "worker"
    owner = "owner"
    member = "member"

    @property
    def decides(self) -> bool:
        """Whether this process runs the worker and the sweeper."""
        return self in (Role.serve, Role.worker, Role.owner)


# Where a process of a group reaches the others: the owner's hub, or a member's link to it.
GroupEnd = Hub | MemberLink


def open_backends(
    settings: Settings,
    emitter: Emitter,
    playback: PlaybackOf,
    clock: Callable[[], float],
    group: GroupEnd | None = None,
    events: LedgerEvents | None = None,
) -> tuple[Ledger, PlayQueue, Fanout]:
    """The one mapping from settings to backends: PLAYGATE_REDIS_URL set -> Redis ledger, Redis Streams queue and
    Redis fan-out; unset -> the SQLite ledger in the catalogue's database (writing `events` in its transactions)
    and the in-process bus, or, in a process group, the owner's queue and a fan-out to every member (bus.hub)."""
    lease_s, decision_ttl_s = settings.stream_ttl_s, settings.decision_ttl_s
    # Auth disabled: events go to the sockets that named no user as well (the original service's broadcast).
    to_every_user_room = settings.auth is AuthMode.disabled

    def conflicts(streams: Sequence[Stream]) -> list[dict[str, Any]]:
        return [conflict_message(s, lease_s) for s in streams]

    if settings.redis_url is not None:
        url = settings.redis_url
        queue = RedisQueue(
            url,
            consumer=f"{socket.gethostname()}-{os.getpid()}",
            claim_idle_s=settings.claim_idle_s,
            maxlen=settings.queue_maxlen,
            pending_ttl_s=settings.decision_ttl_s,
            max_attempts=MAX_ATTEMPTS,
            shards=settings.queue_shards,
        )
        ledger: Ledger = RedisLedger(
            url,
            lease_s=lease_s,
            decision_ttl_s=decision_ttl_s,
            clock=clock,
            end_rooms=functools.partial(rooms_of, to_every_user_room=to_every_user_room),
        )
        return ledger, queue, RedisFanout(url, emitter, playback, conflicts, to_every_user_room=to_every_user_room)
    ledger = SqlLedger(
        settings.resolved_database_url, lease_s=lease_s, decision_ttl_s=decision_ttl_s, clock=clock, events=events
    )
    if isinstance(group, Hub):
        fanout = GroupFanout(group.broadcast, playback, conflicts, to_every_user_room=to_every_user_room)
        return ledger, group.queue, fanout
    if isinstance(group, MemberLink):
        member_fanout = MemberFanout(group, emitter, playback, conflicts, to_every_user_room=to_every_user_room)
        return ledger, MemberQueue(group), member_fanout
    return (
        ledger,
        LocalQueue(settings.data_dir / QUEUE_KEEP_FILE),
        LocalFanout(emitter, playback=playback, conflicts=conflicts, to_every_user_room=to_every_user_room),
    )


def platform_tokens(settings: Settings) -> PlatformTokens | None:
    """The checker of the platform's own tokens, when a key set (or an OpenID issuer) is configured."""
    if not settings.platform_tokens:
        return None
    issuer, audience = settings.expected_issuer, settings.token_audience
    if issuer is None or audience is None:
        raise ConfigError("PLAYGATE_TOKEN_ISSUER and PLAYGATE_TOKEN_AUDIENCE must be set with PLAYGATE_JWKS_URL")
    keys = KeySet(
        jwks_url=settings.jwks_url,
        oidc_issuer=settings.oidc_issuer,
        ttl_s=settings.jwks_ttl_s,
        refetch_s=settings.jwks_refetch_s,
    )
    return PlatformTokens(
        keys,
        issuer=issuer,
        audience=audience,
        leeway_s=settings.token_leeway_s,
        claim_user=settings.claim_user,
        claim_plan=settings.claim_plan,
        claim_limit=settings.claim_limit,
    )


@dataclass
class Runtime:
    """The running parts of one process; it owns what it opened and closes it, in reverse order, at stop."""

    gate: PlayGate
    catalog: Catalog
    metrics: Metrics
    worker: Worker | None
    content: ContentGate
    stack: AsyncExitStack
    consumer: str = ""

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
        secret: str | None = None,
        group: GroupEnd | None = None,
    ) -> Runtime:
        """Check the settings (unless the caller did: `secret` is then preflight's answer), migrate, open the
        backends, prepare the catalogue, and start the worker and sweeper tasks. A failed start closes what it
        had opened. `group`: this process's end of a process group (serve --processes N)."""
        secret = preflight(settings) if secret is None else secret
        if settings.auth is AuthMode.disabled:
            log.warning("PLAYGATE_AUTH=disabled: callers are believed on ?user=; for the seed's test UI only")
        async with AsyncExitStack() as stack:
            _start_tracing(settings, role, stack)
            if migrate:
                await upgrade(settings.resolved_database_url)
            engine, catalog = open_catalog(settings, clock)
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(catalog.close)
            stack.push_async_callback(catalog.keys.flush)  # the last-used times gathered since the last write
            shadow_retention = Retention(
                "shadow denials", ShadowDenialRow.decided_at, settings.shadow_retention_days * 86_400
            )
            outbox = webhooks.outbox(settings, clock)
            # Embedded, the SQLite ledger logs each change in its transaction, and the trail records the log with the
            # outbox in batches; distributed, the Redis ledger logs each change in its own call, and the deciding
            # processes drain the log.
            sqlite_ledger = settings.redis_url is None
            audit = AuditTrail(
                engine,
                policy=settings.policy,
                retention_s=settings.audit_retention_days * 86_400,
                clock=clock,
                max_backlog=settings.audit_backlog,
                companion=outbox,
                also_prune=[shadow_retention],
                in_ledger=True,
                ledger_in_catalogue=sqlite_ledger,
            )
            # Stopped after the worker and sweeper (pushed later, so closed earlier): what they decide while
            # draining is written too.
            audit_stop = asyncio.Event()
            audit_task = asyncio.create_task(audit.run(audit_stop), name="playgate-audit")
            stack.push_async_callback(_stop_audit, audit_stop, audit_task)
            if role not in (Role.worker, Role.member):  # they start beside a process that did this
                await prepare_catalog(settings, catalog)
            links = playback_links(settings, secret)
            # They list the shadow denials too, in the transaction of their decisions (else the worker does).
            ledger_events = LedgerEvents(settings.policy, outbox) if sqlite_ledger else None
            ledger, queue, fanout = open_backends(
                settings,
                emitter,
                lambda decision: links.for_decision(decision, clock()),
                clock,
                group,
                ledger_events,
            )
            for backend in (ledger, queue, fanout):
                stack.push_async_callback(backend.close)
            _drain_change_log(role, audit, ledger, queue, settings.claim_idle_s, stack)
            if role.decides:  # the worker's process delivers the webhook outbox, in the order of the change log
                horizon = ledger.unrecorded_since if isinstance(ledger, ChangeFeed) else None
                await webhooks.start(settings, engine, clock, stack, horizon)
            if isinstance(fanout, ListeningFanout) and role is not Role.worker:
                await fanout.start()  # this process's ?wait= callers are woken by decisions of any worker
            throttle = LoginThrottle(settings, clock=clock)
            stack.push_async_callback(throttle.close)
            platform = platform_tokens(settings)
            if platform is not None:
                stack.push_async_callback(platform.close)
            gate = PlayGate(
                settings=settings,
                catalog=catalog,
                ledger=ledger,
                queue=queue,
                fanout=fanout,
                tokens=TokenIssuer(secret, settings.token_ttl_s, settings.jwt_accepted_secret_list),
                devices=DeviceIds(secret, settings.jwt_accepted_secret_list),
                throttle=throttle,
                metrics=metrics,
                clock=clock,
                platform=platform,
                audit=audit,
            )
            await _take_back(role, gate, settings, queue)
            worker = None
            if role.decides:  # a member only puts and looks: its owner's worker decides
                if not isinstance(queue, RequestQueue):
                    raise TypeError(f"a {role.value} process decides, but its queue {queue!r} cannot be taken from")
                worker = Worker(
                    queue=queue,
                    ledger=ledger,
                    fanout=fanout,
                    catalog=catalog,
                    metrics=metrics,
                    clock=clock,
                    batch_size=settings.batch_size,
                    sweep_interval_s=settings.sweep_interval_s,
                    audit=audit,
                    sweep_hold_s=settings.stream_ttl_s,
                    lists_shadow=ledger_events is None,
                    traced=settings.tracing is Tracing.otlp,
                    sweep_held=gate.writes_back_taken,
                )
            library = MediaLibrary(settings.resolved_media_dir)
            content = ContentGate(
                gate=gate,
                catalog=catalog,
                links=links,
                library=library,
                media_roots=settings.media_root_list,
                clock=clock,
            )
            stack.push_async_callback(_stop_tasks, _start_tasks(role, worker, library, catalog), queue)
            runtime = cls(
                gate=gate,
                catalog=catalog,
                metrics=metrics,
                worker=worker,
                content=content,
                stack=stack.pop_all(),
                consumer=queue.consumer if isinstance(queue, SharedQueue) else "",
            )
        return runtime

    async def stop(self) -> None:
        """Write back what an outage left, if the store answers now; let the worker finish what is queued
        (distributed: its batch in hand), then close every connection."""
        await self.gate.write_back_before_stopping()
        await self.stack.aclose()


async def _take_back(role: Role, gate: PlayGate, settings: Settings, queue: PlayQueue) -> None:
    """What stopped processes kept in the data dir for the next start. A process that answers players, or a
    group's owner (which starts before its members), takes back what earlier processes' outages left unwritten,
    before its worker (if any) sweeps: a stream they kept playing past its stored lease is written back, not swept
    as expired (the worker holds its sweeps while it is not). Distributed, any process puts on the shared queue
    the plays an embedded stop left undecided (embedded, the in-process queue takes them back itself)."""
    if role is not Role.worker:
        await gate.outage_taken_back()
    if settings.redis_url is not None:
        await queue_kept(settings.data_dir / QUEUE_KEEP_FILE, queue)


def _start_tracing(settings: Settings, role: Role, stack: AsyncExitStack) -> None:
    """PLAYGATE_TRACING=otlp: spans to the collector from now on; the last of them sent as the runtime stops."""
    if settings.tracing is Tracing.otlp:
        tracing.start(role.value)
        stack.callback(tracing.stop)  # closed last: the spans of the worker's final batch go too


@dataclass
class _Tasks:
    stop: asyncio.Event
    running: list[asyncio.Task[None]]
    # Cancelled on stop rather than waited for: the demo media is made again by the next start or media request.
    optional: list[asyncio.Task[None]]


def _start_tasks(role: Role, worker: Worker | None, library: MediaLibrary, catalog: Catalog) -> _Tasks:
    """The process's background tasks: worker and sweeper (where the role decides), the demo media (in a process
    that serves HTTP, or a group's owner)."""
    tasks = _Tasks(asyncio.Event(), [], [])
    if worker is not None:
        tasks.running += [
            asyncio.create_task(worker.run(tasks.stop), name="playgate-worker"),
            asyncio.create_task(worker.sweep_forever(tasks.stop), name="playgate-sweeper"),
        ]
    if role not in (Role.worker, Role.member):
        # Clips are made in the background: start-up does not wait, a first media request waits for its own.
        tasks.optional.append(asyncio.create_task(_prepare_media(library, catalog), name="playgate-media"))
    return tasks


def _drain_change_log(
    role: Role, audit: AuditTrail, ledger: Ledger, queue: PlayQueue, claim_idle_s: float, stack: AsyncExitStack
) -> None:
    """Embedded: every process records the SQLite ledger's logged changes into the audit trail (each change in
    exactly one transaction, whichever process runs it), the last time after the worker stops and before the
    ledger closes. Distributed: the deciding processes drain the Redis ledger's change log into it, as one consumer
    group (each as its queue consumer)."""
    if isinstance(ledger, ChangeJournal):
        audit.journal_from(ledger)
        stack.push_async_callback(audit.close_journal)
    if role.decides and isinstance(ledger, ChangeFeed):
        consumer = queue.consumer if isinstance(queue, SharedQueue) else f"{socket.gethostname()}-{os.getpid()}"
        audit.drain_from(ledger, consumer, claim_idle_s)


async def _stop_audit(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Let the audit trail write what is left, then end its task."""
    stop.set()
    await task


async def _stop_tasks(tasks: _Tasks, queue: PlayQueue) -> None:
    """Stop the background tasks; the worker decides what it holds (embedded: all that is queued) first."""
    if isinstance(queue, SharedQueue):
        queue.stop_reading()  # the other workers take what is still queued
    tasks.stop.set()
    for task in tasks.optional:
        task.cancel()
    await asyncio.gather(*tasks.running, *tasks.optional, return_exceptions=True)


async def end_streams_of(
    settings: Settings, user_ids: Sequence[str], reason: Reason, *, clock: Callable[[], float] = time.time
) -> int:
    """End every stream of these users from a process that serves no one (`playgate import`): in the ledger the
    servers read, recorded as theirs are (audit trail, webhooks: the ledger writes the ends itself), so that their
    players' media stop at once. Distributed, the users' sockets are told (`stream_ended`, `reason`: by the ledger
    itself, or on a Redis Cluster through the fan-out); embedded, the server closes those users' sockets within two
    sweeps of revoked tokens. ENDS_AT_ONCE users' stops go together, as the API's import does (the SQLite ledger
    commits them in shared transactions). How many ended."""
    events = None if settings.distributed else LedgerEvents(settings.policy, webhooks.outbox(settings, clock))
    ledger, queue, fanout = open_backends(settings, NoSockets(), lambda _decision: None, clock, events=events)
    try:
        ended = 0
        for start in range(0, len(user_ids), ENDS_AT_ONCE):
            stops = (ledger.stop(None, u, reason=reason, announce=True) for u in user_ids[start : start + ENDS_AT_ONCE])
            stopped = [s for streams in await asyncio.gather(*stops) for s in streams]
            if not ledger.announces_stops:  # a Redis Cluster's ledger leaves it to the fan-out (embedded: no one)
                await fanout.announce([EndedStream(s, reason) for s in stopped])
            ended += len(stopped)
        return ended
    finally:
        await ledger.close()
        await queue.close()
        await fanout.close()


async def run_worker(settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
    """A worker process of the distributed deployment: the Worker loop and the sweeper, no HTTP.

    Decisions reach the sockets through the API processes (bus.redis.RedisFanout). SIGTERM or SIGINT: the batch in
    hand is decided, published and acknowledged, nothing new is taken, and the process exits.
    """
    assert settings.redis_url is not None, "run_worker needs PLAYGATE_REDIS_URL"
    runtime = await Runtime.start(
        settings, emitter=NoSockets(), metrics=Metrics(), clock=clock, migrate=False, role=Role.worker
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %s started", runtime.consumer)
    probes = probe_server(settings, runtime)
    try:
        if probes is not None:
            await probes.start()
        await stop.wait()
    finally:
        if probes is not None:
            await probes.stop()
        await runtime.stop()
        log.info("worker stopped")


def probe_server(settings: Settings, runtime: Runtime) -> ProbeServer | None:
    """/healthz, /readyz and /metrics of a process that decides without serving HTTP (a worker, a group's owner)
    for Prometheus and the orchestrator's probes, when PLAYGATE_METRICS_PORT is set."""
    if settings.metrics_port is None:
        return None
    app = probe_app(runtime.metrics, runtime.gate.ready)
    return ProbeServer(app, host=settings.host, port=settings.metrics_port, log_level=settings.log_level)
