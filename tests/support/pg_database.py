"""A fresh PostgreSQL database with a random name on 127.0.0.1:5432 (trust auth, user postgres), dropped after."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from playgate.catalog.db import upgrade

PG_HOST = os.environ.get("PLAYGATE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PLAYGATE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PLAYGATE_TEST_PG_USER", "postgres")
CONNECT_TIMEOUT_S = 3.0


@dataclass
class PgDatabase:
    """A database made for the tests; `url` is the SQLAlchemy URL PlayGate takes."""

    name: str

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=CONNECT_TIMEOUT_S
    )


async def pg_unavailable_reason() -> str | None:
    """Why no test database can be made here, or None when PostgreSQL answers."""
    try:
        conn = await _admin()
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"no PostgreSQL on {PG_HOST}:{PG_PORT} for user {PG_USER} ({type(exc).__name__}: {exc})"
    await conn.close()
    return None


async def create_database() -> PgDatabase:
    """CREATE DATABASE with a random name."""
    db = PgDatabase(f"playgate_test_{secrets.token_hex(6)}")
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{db.name}"')
    finally:
        await conn.close()
    return db


async def drop_database(db: PgDatabase) -> None:
    """DROP DATABASE, disconnecting whoever is still connected."""
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def migrated_database() -> AsyncIterator[str]:
    """A fresh database with PlayGate's migrations applied, its URL; dropped after. Skips the test, with the
    reason, when PostgreSQL does not answer."""
    reason = await pg_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    db = await create_database()
    try:
        await upgrade(db.url)
        yield db.url
    finally:
        await drop_database(db)
