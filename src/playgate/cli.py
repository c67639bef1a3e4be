"""The `playgate` command: serve, api, worker, db upgrade|reset, demo, token, version, doctor, bench."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import uvicorn
import uvloop

from playgate import __version__
from playgate.bench.cli import bench as bench_commands
from playgate.catalog.db import upgrade
from playgate.config import Settings, jwt_secret, load_settings
from playgate.errors import ConfigError, NotFound, PlayGateError
from playgate.logs import configure_logging
from playgate.runtime import Role, open_catalog, preflight, prepare_catalog, reset_data, run_worker
from playgate.security import TokenIssuer

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
def serve(host: str | None, port: int | None) -> None:
    """Run API and worker in one process (embedded: SQLite, in-process queue); migrates the database first."""
    settings = _settings(host=host, port=port)
    _serve(settings)


def _serve(settings: Settings, role: Role = Role.serve) -> None:
    from playgate.api.app import create_app  # heavy import, only for commands that serve

    try:
        secret = preflight(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _logging(settings)
    config = uvicorn.Config(
        create_app(settings, role=role, secret=secret),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="wsproto",  # about 3 KB less per idle socket than the websockets implementations (bench idle)
        lifespan="on",
        log_level=settings.log_level,
        log_config=None,  # our handler (JSON or console, secrets redacted) takes uvicorn's records too
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # On SIGTERM: stop accepting, finish in-flight requests (a ?wait= call takes up to 10 s), close
        # websockets with 1012 "service restart" (Socket.IO clients reconnect), then drain the worker.
        timeout_graceful_shutdown=15,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT and SIGTERM (graceful shutdown), then raises the signal again under the handlers it
    # found: these let the process end there with status 0, not with a KeyboardInterrupt ("Aborted!") or killed.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    server.run()
    if not server.started:
        sys.exit(3)


def _stopped(_sig: int, _frame: object) -> None:
    """Nothing left to do: uvicorn has already shut down gracefully when it raises the signal again."""


@main.command()
@click.option("--host", help="Bind address (PLAYGATE_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (PLAYGATE_PORT or PORT, default 8080).")
def api(host: str | None, port: int | None) -> None:
    """Run an API process of the distributed deployment: HTTP and Socket.IO, no worker (needs PLAYGATE_REDIS_URL).

    It does not migrate: run `playgate db upgrade` once before starting API and worker processes.
    """
    _serve(_distributed_only("api", host=host, port=port), role=Role.api)


@main.command()
def worker() -> None:
    """Run a worker process of the distributed deployment: decides queued requests, no HTTP (needs PLAYGATE_REDIS_URL).

    SIGTERM finishes and acknowledges the batch in hand, then exits; other workers take what is still queued.
    """
    settings = _distributed_only("worker")
    _logging(settings)
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
    _run(lambda: upgrade(settings.resolved_database_url))
    click.echo(f"database at {_safe_url(settings.resolved_database_url)} is up to date")


@db.command("reset")
@click.option("--yes", is_flag=True, help="Confirm: every user, video, plan, stream and decision is deleted.")
def db_reset(yes: bool) -> None:
    """Delete all data: the database emptied and migrated again, PlayGate's Redis keys, the generated JWT key.

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


@main.command()
def demo() -> None:
    """Load the demo catalogue (users user1..user3, videos 1..6) where missing."""
    settings = _settings(demo=True)

    async def load() -> bool:
        await upgrade(settings.resolved_database_url)
        engine, catalog = open_catalog(settings, time.time)
        try:
            return await catalog.load_demo()
        finally:
            await catalog.close()
            await engine.dispose()

    added = _run(load)
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
        return issuer.issue(found.id, admin=found.is_admin, now=time.time())

    click.echo(_run(issue))


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


@main.command()
def doctor() -> None:
    """Check the settings, the database (and its migrations) and Redis; say what is wrong. Exit 1 on a problem."""
    from playgate.doctor import report, run_checks

    settings = _settings()
    text, code = report(asyncio.run(run_checks(settings)))
    click.echo(text)
    sys.exit(code)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


main.add_command(bench_commands)
