"""The `playgate` command: serve, api, worker, db upgrade|reset, demo, token, keys, webhooks, import, version, doctor,
bench."""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import uvicorn
import uvloop
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from playgate import __version__
from playgate.bench.cli import bench as bench_commands
from playgate.catalog.bulk import USERS, UpsertResult
from playgate.catalog.db import create_engine, is_sqlite, upgrade
from playgate.catalog.service import Catalog
from playgate.config import Settings, jwt_secret, load_settings
from playgate.domain import KeyScope, Reason
from playgate.errors import ConfigError, NotFound, PlayGateError
from playgate.imports import SCHEMAS, Format, KindName, check, csv_records, format_of, ndjson_records, records, store
from playgate.logs import configure_logging
from playgate.runtime import (
    Role,
    catalog_on,
    end_streams_of,
    open_catalog,
    preflight,
    prepare_catalog,
    reset_data,
    run_worker,
)
from playgate.security import TokenIssuer
from playgate.webhooks import DELIVERED, FAILED, PENDING, delivery_log, replay
from playgate.wire import Name

T = TypeVar("T")


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _run(coro: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine on uvloop, the event loop `playgate serve` and `api` run on too."""
    try:
        return uvloop.run(coro())  # type: ignore[arg-type]
    except PlayGateError as exc:
        raise click.ClickException(exc.detail) from None


def _logging(settings: Settings) -> None:
    configure_logging(settings)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="playgate")
def main() -> None:
    """PlayGate: concurrent-stream limits, decided by a worker, told to players over Socket.IO.

    Every setting is an environment variable PLAYGATE_* (see the README); a bad value stops
    start-up with one line naming the variable.
    """


@main.command()
@click.option("--host", help="Bind address (PLAYGATE_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (PLAYGATE_PORT or PORT, default 8080).")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    help="Processes serving HTTP and Socket.IO (PLAYGATE_PROCESSES, default 1); above 1, one more process owns "
    "the queue and the worker, and hands each connection to a member (a socket.io session stays on one).",
)
def serve(host: str | None, port: int | None, processes: int | None) -> None:
    """Run API and worker (embedded: SQLite, no Redis); migrates the database first.

    One process by default; with --processes N, N processes serve HTTP and Socket.IO and one owner process holds
    the queue, the worker and the listening socket.
    """
    settings = _settings(host=host, port=port, processes=processes)
    if settings.processes > 1:
        _serve_group(settings)
    else:
        _serve(settings)


def _serve_group(settings: Settings) -> None:
    from playgate.processes import run_group

    if settings.distributed:
        raise click.ClickException(
            "PLAYGATE_PROCESSES: a process group is the embedded deployment's; with PLAYGATE_REDIS_URL run "
            "several `playgate api` and `playgate worker` instead"
        )
    secret = _preflight(settings)
    _refuse_an_address_in_use(settings, probes=True)
    _logging(settings)
    _run(lambda: run_group(settings, secret))


@main.command(hidden=True)
@click.option("--index", type=int, required=True, help="The member's place in the group (0..N-1).")
@click.option("--link-fd", type=int, required=True, help="Its end of the socket pair to the owner's hub.")
@click.option("--connections-fd", type=int, required=True, help="Where the owner hands it connections.")
def member(index: int, link_fd: int, connections_fd: int) -> None:
    """A member process of `playgate serve --processes N`: started by the owner, not by hand."""
    from playgate.api.app import create_app
    from playgate.bus.hub import MemberLink
    from playgate.processes import MemberServer

    settings = _settings()
    secret = _preflight(settings)
    _logging(settings)
    link = MemberLink(socket.socket(fileno=link_fd), index)
    app = create_app(settings, role=Role.member, secret=secret, link=link)
    server = MemberServer(server_config(settings, app), socket.socket(fileno=connections_fd), link)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    server.run()
    if not server.started:
        sys.exit(3)


def _preflight(settings: Settings) -> str:
    try:
        return preflight(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _wait_for_database(settings: Settings, *, migrated: bool) -> None:
    """A PostgreSQL catalogue may start after PlayGate (a compose file, a cluster, a migration job): wait for it,
    then say in one line why not (it never answered; `migrated`: its schema is not this version's) instead of a
    traceback."""
    from playgate.doctor import wait_for_database

    if not is_sqlite(settings.resolved_database_url) or migrated:
        _run(lambda: wait_for_database(settings, migrated=migrated))


def _refuse_an_address_in_use(settings: Settings, *, port: bool = True, probes: bool = False) -> None:
    """Before serving: one line naming the setting when the host is not an address of this machine, or a port this
    command listens on (`port`: PLAYGATE_PORT; `probes`: PLAYGATE_METRICS_PORT, when set) is taken (uvicorn said
    `[Errno 98] error while attempting to bind`, naming neither)."""
    ports = [("PLAYGATE_PORT", settings.port)] if port else []
    if probes and settings.metrics_port is not None:
        if port and settings.metrics_port == settings.port:
            raise click.ClickException(
                f"PLAYGATE_METRICS_PORT: {settings.metrics_port} is PLAYGATE_PORT too; the probes and /metrics "
                "need a port of their own"
            )
        ports.append(("PLAYGATE_METRICS_PORT", settings.metrics_port))
    for variable, number in ports:
        try:
            family = socket.getaddrinfo(settings.host, number, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as exc:
            said = f"{settings.host!r} is not an address to listen on ({exc.strerror})"
            raise click.ClickException(f"PLAYGATE_HOST: {said}") from None
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is free
            try:
                probe.bind((settings.host, number))
            except OSError as exc:
                where = f"{settings.host}:{number}"
                raise click.ClickException(f"{variable}: cannot listen on {where} ({exc.strerror})") from None


def _refuse(*finds: Callable[[Settings], Awaitable[str | None]], settings: Settings) -> None:
    """Before serving or deciding: the first problem one of doctor's start-up checks finds (a demo user with its
    demo password on an open host; a Redis that answers but refuses this process, where one that does not answer
    is an outage the process starts into), in one line instead of the start-up's traceback or a process that
    cannot work."""

    async def first() -> str | None:
        for find in finds:
            problem = await find(settings)
            if problem is not None:
                return problem
        return None

    problem = _run(first)
    if problem is not None:
        raise click.ClickException(problem)


def _serve(settings: Settings, role: Role = Role.serve) -> None:
    from playgate.api.app import create_app  # heavy import, only for commands that serve

    secret = _preflight(settings)
    _refuse_an_address_in_use(settings)
    _logging(settings)
    _wait_for_database(settings, migrated=role is not Role.serve)
    from playgate.doctor import demo_password_problem, redis_refusal

    _refuse(demo_password_problem, redis_refusal, settings=settings)
    server = uvicorn.Server(server_config(settings, create_app(settings, role=role, secret=secret)))
    # uvicorn handles SIGINT and SIGTERM (graceful shutdown), then raises the signal again under the handlers it
    # found: these let the process end there with status 0, not with a KeyboardInterrupt ("Aborted!") or killed.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    server.run()
    if not server.started:
        sys.exit(3)


def server_config(settings: Settings, app: Any) -> uvicorn.Config:
    """uvicorn's settings for a PlayGate process serving `app`."""
    from playgate.api.guard import guarded_protocol
    from playgate.api.hot import HotHttpProtocol
    from playgate.api.lean_sockets import LeanWSProtocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # Said, not guessed: uvicorn takes an app whose __call__ is not a coroutine function for ASGI 2, and the
        # outer middlewares (HttpEdge, HotRoutes) return the inner app's coroutine instead of awaiting it.
        interface="asgi3",
        # httptools with a header timeout, a header size cap and a connection cap (playgate.api.guard), answering
        # the players' hot routes below ASGI (playgate.api.hot)
        http=guarded_protocol(settings, HotHttpProtocol),
        timeout_keep_alive=settings.keep_alive_s,
        # wsproto: about 3 KB less per idle socket than the websockets implementations (bench idle); with a lean
        # queue of ASGI events (api/lean_sockets.py)
        ws=LeanWSProtocol,
        # No websocket-level pings: engine.io pings every socket itself (25 s) and closes one that stays silent.
        ws_ping_interval=None,
        # Off unless asked: frames are tiny, and a compressed socket costs ~138 KB of RSS instead of ~40 KB.
        ws_per_message_deflate=settings.ws_per_message_deflate,
        lifespan="on",
        log_level=settings.log_level,
        log_config=None,  # our handler (JSON or console, secrets redacted) takes uvicorn's records too
        access_log=False,
        proxy_headers=False,  # create_app believes X-Forwarded-For of PLAYGATE_TRUSTED_PROXIES only
        # On SIGTERM: stop accepting, finish in-flight requests (a ?wait= call takes up to 10 s), close
        # websockets with 1012 "service restart" (Socket.IO clients reconnect), then drain the worker.
        timeout_graceful_shutdown=15,
    )


def _stopped(_sig: int, _frame: object) -> None:
    """Nothing left to do: uvicorn has already shut down gracefully when it raises the signal again."""


@main.command()
@click.option("--host", help="Bind address (PLAYGATE_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (PLAYGATE_PORT or PORT, default 8080).")
def api(host: str | None, port: int | None) -> None:
    """Run an API process of the distributed deployment: HTTP and Socket.IO, no worker (needs PLAYGATE_REDIS_URL).

    It does not migrate: run `playgate db upgrade` once before starting API and worker processes. It waits up to
    PLAYGATE_START_WAIT seconds for the database to answer, and will not start on a schema older than its own.
    """
    _serve(_distributed_only("api", host=host, port=port), role=Role.api)


@main.command()
def worker() -> None:
    """Run a worker process of the distributed deployment: decides queued requests, no HTTP (needs PLAYGATE_REDIS_URL).

    SIGTERM finishes and acknowledges the batch in hand, then exits; other workers take what is still queued.
    """
    settings = _distributed_only("worker")
    _logging(settings)
    from playgate.doctor import redis_refusal

    _refuse(redis_refusal, settings=settings)
    _refuse_an_address_in_use(settings, port=False, probes=True)
    _run(lambda: run_worker(settings))


def _distributed_only(command: str, **overrides: Any) -> Settings:
    settings = _settings(**overrides)
    if not settings.distributed:
        raise click.ClickException(
            f"playgate {command} runs beside other processes and needs PLAYGATE_REDIS_URL; "
            "for one process use `playgate serve`"
        )
    return settings


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to PLAYGATE_DATABASE_URL (default: the SQLite file in the data dir)."""
    settings = _settings()
    _wait_for_database(settings, migrated=False)
    _run(lambda: upgrade(settings.resolved_database_url))
    click.echo(f"database at {_safe_url(settings.resolved_database_url)} is up to date")


@db.command("reset")
@click.option("--yes", is_flag=True, help="Confirm: every user, video, plan, stream and decision is deleted.")
def db_reset(yes: bool) -> None:
    """Delete all data: the database emptied and migrated again, PlayGate's Redis keys, the generated JWT key, the
    work stopped processes kept in the data dir for the next start.

    Stop the service first. The next `playgate serve` loads the demo catalogue again (unless PLAYGATE_DEMO=false).
    """
    settings = _settings()
    where = _safe_url(settings.resolved_database_url)
    if not yes:
        raise click.ClickException(f"this deletes every user, video, plan, stream and decision in {where}; add --yes")
    done = _run(lambda: reset_data(settings))
    click.echo(f"database at {where} is empty and up to date")
    if settings.redis_url is not None:
        click.echo(f"deleted {done.redis_keys} Redis keys under playgate:")
    if done.jwt_secret_file:
        click.echo("deleted the generated JWT key: tokens issued before no longer work")
    if done.kept_files:
        click.echo(f"deleted {done.kept_files} file(s) of work stopped processes kept for the next start")


@main.command()
def demo() -> None:
    """Load the demo catalogue (users user1..user3, videos 1..6) where missing."""
    added = _with_catalog(lambda catalog: catalog.load_demo(), _settings(demo=True))
    click.echo("demo catalogue loaded" if added else "demo catalogue already there")


@main.command()
@click.argument("user")
def token(user: str) -> None:
    """Print an access token for USER (a user name or id), for curl and scripts."""
    settings = _settings()

    async def issue() -> str:
        engine, catalog = open_catalog(settings, time.time)
        try:
            await prepare_catalog(settings, catalog)
            try:
                found = await catalog.find_user(user)
            except NotFound:
                found = await catalog.get_user(user)
        finally:
            await catalog.close()
            await engine.dispose()
        issuer = TokenIssuer(jwt_secret(settings), settings.token_ttl_s)
        return issuer.issue(found.id, admin=found.is_admin, now=time.time(), epoch=found.token_epoch)

    click.echo(_run(issue))


@main.group()
def keys() -> None:
    """API keys for a platform's backend: create (printed once), list, revoke."""


def _with_catalog(work: Callable[[Catalog], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run `work` on the catalogue of PLAYGATE_DATABASE_URL (migrated first), then close it."""
    settings = settings or _settings()

    async def on_engine(engine: AsyncEngine) -> T:
        catalog = catalog_on(engine, settings, time.time)
        try:
            return await work(catalog)
        finally:
            await catalog.keys.flush()
            await catalog.close()

    return _with_engine(on_engine, settings)


def _key_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """The name as POST /v1/keys takes it (1 to 200 characters, no control characters): `keys list` prints it
    tab-separated, a line a key."""
    try:
        return TypeAdapter(Name).validate_python(value)
    except ValidationError as exc:
        error = exc.errors(include_input=False)[0]
        said = "no control characters (tabs, line breaks)" if error["type"] == "string_pattern_mismatch" else None
        raise click.BadParameter(said or error["msg"]) from None


@keys.command("create")
@click.option("--name", required=True, callback=_key_name, help="Who the key is for (a backend, a team).")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in KeyScope]),
    required=True,
    help="admin: all an admin may; plays: play, list and stop streams for any user; read: read only.",
)
def keys_create(name: str, scope: str) -> None:
    """Create a key and print it: shown this once, stored only as a hash."""
    key, plain = _with_catalog(lambda catalog: catalog.keys.create(name=name, scope=KeyScope(scope)))
    click.echo(plain)
    click.echo(f"key {key.id} ({key.scope.value}) for {key.name!r}: keep it now, it is not shown again", err=True)


@keys.command("list")
def keys_list() -> None:
    """List the keys: id, scope, name, created, last used, revoked (never the keys themselves)."""
    for key in _with_catalog(lambda catalog: catalog.keys.all()):
        times = [_when(key.created_at), _when(key.last_used_at), _when(key.revoked_at)]
        click.echo("\t".join([key.id, key.scope.value, key.name, *times]))


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the key KEY_ID: refused at once by every process."""
    key = _with_catalog(lambda catalog: catalog.keys.revoke(key_id))
    click.echo(f"key {key.id} ({key.name!r}) revoked")


@main.group()
def webhooks() -> None:
    """Webhooks to PLAYGATE_WEBHOOK_URLS: the delivery log, and replays of past events."""


def _with_engine(work: Callable[[AsyncEngine], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run `work` on an engine of PLAYGATE_DATABASE_URL (migrated first), then dispose of it."""
    settings = settings or _settings()
    _wait_for_database(settings, migrated=False)

    async def run() -> T:
        await upgrade(settings.resolved_database_url)
        engine = create_engine(settings.resolved_database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return _run(run)


def _since(value: str) -> float:
    hint = "an ISO 8601 time (UTC unless it names a zone) or epoch seconds"
    try:
        epoch_s = float(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(hint, param_hint="--since") from None
        return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(epoch_s):
        raise click.BadParameter(hint, param_hint="--since")
    return epoch_s


@webhooks.command("replay")
@click.option("--since", help="Every event at or after this time: ISO 8601 (UTC unless it names a zone) or epoch s.")
@click.option("--id", "msg_id", help="The one event with this webhook-id (msg_...).")
def webhooks_replay(since: str | None, msg_id: str | None) -> None:
    """Send events again to every configured endpoint: their deliveries become pending and due now, and the worker
    sends them, in order per user, signed with a fresh timestamp (same webhook-id: receivers can deduplicate)."""
    if (since is None) == (msg_id is None):
        raise click.UsageError("give --since or --id (one of them)")
    endpoints = _settings().webhook_url_list
    if not endpoints:
        raise click.ClickException("PLAYGATE_WEBHOOK_URLS is empty: there is no endpoint to send to")
    start = None if since is None else _since(since)
    count = _with_engine(lambda engine: replay(engine, endpoints, time.time, since=start, msg_id=msg_id))
    if count == 0 and msg_id is not None:
        raise click.ClickException(f"no event {msg_id!r} in the outbox")
    click.echo(f"{count} deliveries queued again")


@webhooks.command("log")
@click.option("--status", type=click.Choice([PENDING, DELIVERED, FAILED]), help="Only deliveries in this state.")
@click.option("--id", "msg_id", help="Only the deliveries of this webhook-id.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="How many, newest first.")
def webhooks_log(status: str | None, msg_id: str | None, limit: int) -> None:
    """The delivery log, newest first, one tab-separated line each: webhook-id, type, user, endpoint, status,
    attempts, last try, last HTTP status, last error, delivered at."""
    for entry in _with_engine(lambda engine: delivery_log(engine, status=status, msg_id=msg_id, limit=limit)):
        fields = [entry.msg_id, entry.type, entry.user_id, entry.endpoint, entry.status, str(entry.attempts)]
        last = [_when(entry.last_attempt_at), str(entry.last_status or "-"), entry.last_error or "-"]
        click.echo("\t".join([*fields, *last, _when(entry.delivered_at)]))


def _when(epoch_s: float | None) -> str:
    return "-" if epoch_s is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


@main.command("import")
@click.argument("kind", type=click.Choice(["users", "videos", "plans"]))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["ndjson", "json", "csv"]), help="Default: from the file name.")
def import_rows(kind: KindName, file: Path, fmt: Format | None) -> None:
    """Create or update users, videos or plans by id from FILE (CSV with a header row, NDJSON, or a JSON array).

    Absent fields keep their value; a bad row is reported with its reason and the rest stored; a re-run changes
    nothing. Exit status 1 when a row was refused, or with one error line when the file holds no rows to read
    (empty, JSON that is not an array, a CSV header without an `id` column). Plans carry their rules as POST
    /v1/plans takes them (onLimit, kinds, maxPerTitle, maxDevices, deviceWindowDays, maxAwayStreams, onOutage,
    shadow; in CSV kinds and shadow are JSON objects in their cells). A user it disables (or enables again) has
    its tokens ended; a user it disables has its streams ended too, in the ledger the servers read (their media
    stop at once; distributed, their sockets are told `stream_ended`; embedded, the server closes them within two
    sweeps).
    """
    settings = _settings()
    fmt = fmt or format_of(None, file.name)
    schema = SCHEMAS[kind]
    with file.open("rb") as raw:
        if not any(line.strip() for line in raw):
            raise click.ClickException(f"{file} is empty: no rows to import")

    async def work(catalog: Catalog) -> tuple[UpsertResult, list[str]]:
        with file.open(encoding="utf-8", newline="") as lines:
            total = sum(1 for _ in lines) - (1 if fmt == "csv" else 0)
        with (
            file.open(encoding="utf-8", newline="") as source,
            click.progressbar(length=max(total, 1), label=f"importing {kind}", file=sys.stderr) as bar,
        ):
            if fmt == "json":
                numbered = records(source.read(), "json")
            else:
                numbered = csv_records(source) if fmt == "csv" else ndjson_records(source)
            result = await store(catalog, schema.kind, check(schema, numbered), on_batch=bar.update)
        if schema.kind is not USERS or not result.revoked:
            return result, []
        return result, [user.id for user in (await catalog.users(result.revoked)).values() if user.disabled]

    try:
        result, disabled = _with_catalog(work, settings)
    except (ValueError, UnicodeDecodeError) as exc:  # the file as a whole: not JSON, not UTF-8, a CSV without ids
        raise click.ClickException(f"{file}: not {fmt} ({exc})") from None
    click.echo(
        f"{kind}: {result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
        f"{len(result.refused)} refused"
    )
    if disabled:
        ended = _run(lambda: end_streams_of(settings, disabled, Reason.user_disabled))
        click.echo(f"{len(disabled)} user(s) disabled: {ended} stream(s) of theirs ended")
    for refusal in result.refused[:100]:
        click.echo(f"row {refusal.row} ({refusal.id or '?'}): {refusal.field}: {refusal.reason}", err=True)
    if result.refused:
        sys.exit(1)


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


@main.command()
def doctor() -> None:
    """Check the settings, the database (and its migrations), Redis, the platform's key set (PLAYGATE_JWKS_URL) and
    the traces' collector (PLAYGATE_TRACING); say what is wrong. Exit 1 on a problem."""
    from playgate.doctor import report, run_checks

    settings = _settings()
    text, code = report(asyncio.run(run_checks(settings)))
    click.echo(text)
    sys.exit(code)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


main.add_command(bench_commands)


@main.command()
@click.option(
    "--duration",
    type=click.FloatRange(5, 3600),
    default=40.0,
    show_default=True,
    help="Seconds of load and faults (the audit and the start-up come on top).",
)
@click.option("--users", type=click.IntRange(1, 200), default=5, show_default=True, help="Users, two viewers each.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
def chaos(duration: float, users: int, as_json: bool) -> None:
    """Start a distributed PlayGate on loopback (a throwaway redis-server, a fresh database on the local PostgreSQL
    127.0.0.1:5432 behind a TCP proxy, 2 APIs, 2 workers), drive viewers looping play -> decision -> stop, inject
    faults (kill -9 a worker and an API, restart Redis, freeze Redis, cut the database), audit every request id and
    print the report. Exits 1 when an invariant failed (over-limit, undecided, lost, changed answers)."""
    import orjson

    from playgate.chaos import chaos as run_chaos

    try:
        report = asyncio.run(run_chaos(duration, users))
    except PlayGateError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(report.table())
    if not report.ok:
        sys.exit(1)
