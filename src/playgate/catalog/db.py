"""Engines and migrations: one place that turns a database URL into a ready SQLAlchemy engine."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from playgate.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000
SUPPORTED_DRIVERS = {"sqlite+aiosqlite", "postgresql+asyncpg"}
# The schemes hosting providers and libpq hand out, and the driver PlayGate runs them with.
DRIVER_OF_SCHEME = {"sqlite": "sqlite+aiosqlite", "postgres": "postgresql+asyncpg", "postgresql": "postgresql+asyncpg"}
# libpq's TLS modes (`sslmode=`), which asyncpg reads from its DSN as libpq does.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SSL_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
# Query arguments SQLAlchemy's asyncpg dialect reads itself (they stay on its URL).
SQLALCHEMY_ARGUMENTS = ("prepared_statement_cache_size",)
# The query's whole numbers: the least each may be, and what it counts.
WHOLE_NUMBERS = (
    ("connect_timeout", 1, " of seconds"),
    ("statement_cache_size", 0, ""),
    *((name, 0, "") for name in SQLALCHEMY_ARGUMENTS),
)
# `sslrootcert=system`: the machine's trusted roots (libpq 16); only with a mode that checks the server.
SYSTEM_ROOTS = "system"
VERIFYING_MODES = ("verify-ca", "verify-full")


def check_url(url: str) -> str:
    """The driver PlayGate runs the URL with, or ConfigError naming PLAYGATE_DATABASE_URL."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError, ValueError or others on nonsense
        raise ConfigError(f"PLAYGATE_DATABASE_URL: not a database URL ({exc})") from None
    driver = DRIVER_OF_SCHEME.get(parsed.drivername, parsed.drivername)
    if driver not in SUPPORTED_DRIVERS:
        schemes = sorted(SUPPORTED_DRIVERS | DRIVER_OF_SCHEME.keys())
        raise ConfigError(f"PLAYGATE_DATABASE_URL: driver {parsed.drivername!r} is not supported; use one of {schemes}")
    if driver.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        # The catalogue, the ledger and every process must open the same database: an in-memory one is per
        # connection.
        raise ConfigError("PLAYGATE_DATABASE_URL: SQLite needs a database file (sqlite+aiosqlite:///path), not memory")
    if driver.startswith("postgresql"):
        _check_postgres_query(parsed.query)
    return driver


def _check_postgres_query(query: Mapping[str, str | tuple[str, ...]]) -> None:
    mode = query.get("sslmode", query.get("ssl"))
    if mode is not None and mode not in SSL_MODES:
        raise ConfigError(f"PLAYGATE_DATABASE_URL: sslmode {mode!r} is not one of {', '.join(SSL_MODES)}")
    if query.get("sslrootcert") == SYSTEM_ROOTS and mode not in (None, *VERIFYING_MODES):
        # As libpq 16 says: the system's roots are for checking the server, which a weaker mode would not do.
        raise ConfigError(
            f"PLAYGATE_DATABASE_URL: sslrootcert=system needs sslmode verify-full or verify-ca, not {mode}"
        )
    for name in SSL_FILES:
        path = query.get(name)
        if name == "sslrootcert" and path == SYSTEM_ROOTS:
            continue
        if isinstance(path, str) and not Path(path).expanduser().is_file():
            raise ConfigError(f"PLAYGATE_DATABASE_URL: {name} names {path}, which is not a file here")
    for name, least, unit in WHOLE_NUMBERS:
        value = query.get(name)
        if value is not None and not (isinstance(value, str) and value.isdigit() and int(value) >= least):
            raise ConfigError(f"PLAYGATE_DATABASE_URL: {name} {value!r} is not a whole number{unit}")


def engine_url(url: str) -> tuple[URL, dict[str, Any]]:
    """The SQLAlchemy URL and the driver's connect arguments for a checked database URL.

    A PostgreSQL URL's query is libpq's (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `host` for a socket
    directory, `application_name`...): it goes to asyncpg as a DSN, which asyncpg reads the way libpq does, while
    the host, user and database stay on SQLAlchemy's URL. `connect_timeout` becomes asyncpg's `timeout`;
    `statement_cache_size` (asyncpg's) and `prepared_statement_cache_size` (SQLAlchemy's) are theirs.
    """
    parsed = make_url(url)
    parsed = parsed.set(drivername=DRIVER_OF_SCHEME.get(parsed.drivername, parsed.drivername))
    if not parsed.drivername.startswith("postgresql") or not parsed.query:
        return parsed, {}
    query = dict(parsed.query)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" in query:
        connect_args["timeout"] = float(str(query.pop("connect_timeout")))
    if "statement_cache_size" in query:  # asyncpg's, 0 behind a pooler such as PgBouncer
        connect_args["statement_cache_size"] = int(str(query.pop("statement_cache_size")))
    if "ssl" in query:  # asyncpg's own name for the mode
        query.setdefault("sslmode", query.pop("ssl"))
    if query.get("sslrootcert") == SYSTEM_ROOTS:
        # libpq 16's `sslrootcert=system` (the machine's trusted roots, for a server whose certificate a public CA
        # signed), which asyncpg does not know: a context of Python's own default roots, checking the host name
        # unless the mode is verify-ca.
        del query["sslrootcert"]
        connect_args["ssl"] = _system_roots(verify_host=query.pop("sslmode", "verify-full") == "verify-full")
    own = {key: query.pop(key) for key in SQLALCHEMY_ARGUMENTS if key in query}
    if query:
        connect_args["dsn"] = "postgresql://?" + urlencode(query, doseq=True)
    return parsed.set(query=own), connect_args


def _system_roots(*, verify_host: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = verify_host
    return context


def is_sqlite(url: str) -> bool:
    """True for a SQLite database URL."""
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, immediate: bool = False) -> AsyncEngine:
    """An async engine for `url`; for SQLite, WAL and a busy timeout, and `BEGIN IMMEDIATE` if asked.

    `immediate` makes every transaction take SQLite's write lock at BEGIN, so that a read-decide-write
    transaction cannot interleave with another process's (the ledger's guarantee).
    """
    check_url(url)
    target, connect_args = engine_url(url)
    kwargs: dict[str, Any] = {}
    if is_sqlite(url):
        _ensure_parent(url)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = connect_args
    engine = create_async_engine(target, **kwargs)
    if is_sqlite(url):
        _configure_sqlite(engine, immediate=immediate)
    return engine


def _ensure_parent(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        folder = Path(database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"PLAYGATE_DATABASE_URL: cannot create {folder} for the SQLite file ({reason}; the default file is "
                "in PLAYGATE_DATA_DIR)"
            ) from None


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
