"""Engines and migrations: one place that turns a database URL into a ready SQLAlchemy engine."""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from playgate.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000
SUPPORTED_DRIVERS = {"sqlite+aiosqlite", "postgresql+asyncpg"}


def check_url(url: str) -> str:
    """The URL's driver name, or ConfigError naming PLAYGATE_DATABASE_URL."""
    try:
        driver = make_url(url).drivername
    except Exception as exc:  # SQLAlchemy raises ArgumentError, ValueError or others on nonsense
        raise ConfigError(f"PLAYGATE_DATABASE_URL: not a database URL ({exc})") from None
    if driver not in SUPPORTED_DRIVERS:
        raise ConfigError(
            f"PLAYGATE_DATABASE_URL: driver {driver!r} is not supported; use one of {sorted(SUPPORTED_DRIVERS)}"
        )
    if driver.startswith("sqlite") and make_url(url).database in (None, "", ":memory:"):
        # The catalogue, the ledger and every process must open the same database: an in-memory one is per
        # connection.
        raise ConfigError("PLAYGATE_DATABASE_URL: SQLite needs a database file (sqlite+aiosqlite:///path), not memory")
    return driver


def is_sqlite(url: str) -> bool:
    """True for a SQLite database URL."""
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, immediate: bool = False) -> AsyncEngine:
    """An async engine for `url`; for SQLite, WAL and a busy timeout, and `BEGIN IMMEDIATE` if asked.

    `immediate` makes every transaction take SQLite's write lock at BEGIN, so that a read-decide-write
    transaction cannot interleave with another process's (the ledger's guarantee).
    """
    check_url(url)
    kwargs: dict[str, Any] = {}
    if is_sqlite(url):
        _ensure_parent(url)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        _configure_sqlite(engine, immediate=immediate)
    return engine


def _ensure_parent(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def configure_sqlite_connection(dbapi_connection: Any, *, busy_timeout_ms: int | None = None) -> None:
    """WAL, a busy timeout (SQLITE_BUSY_TIMEOUT_MS unless given) and foreign keys on a new SQLite connection (the
    engines' and the ledger's)."""
    timeout_ms = SQLITE_BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _configure_sqlite(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN (the pysqlite recipe in SQLAlchemy's docs).
        dbapi_connection.isolation_level = None
        configure_sqlite_connection(dbapi_connection)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def alembic_config(url: str) -> Config:
    """An Alembic Config for the migrations shipped in this package."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("playgate.catalog") / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade_sync(url: str) -> None:
    check_url(url)
    if is_sqlite(url):
        _ensure_parent(url)
    command.upgrade(alembic_config(url), "head")


async def upgrade(url: str) -> None:
    """Apply every migration to the database at `url` (runs Alembic in a thread of its own)."""
    await asyncio.to_thread(_upgrade_sync, url)


def _reset_sync(url: str) -> None:
    check_url(url)
    config = alembic_config(url)
    command.downgrade(config, "base")
    command.upgrade(config, "head")


async def reset(url: str) -> None:
    """Empty the database at `url`: every migration undone, then applied again (Alembic, in a thread)."""
    await asyncio.to_thread(_reset_sync, url)
