"""Fixtures of the operations tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.pg_database import PgDatabase, create_database, drop_database, pg_unavailable_reason


@pytest_asyncio.fixture(loop_scope="session")
async def pg_database() -> AsyncIterator[PgDatabase]:
    """A fresh PostgreSQL database, dropped after the test (skipped, with the reason, when there is no server)."""
    reason = await pg_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    db = await create_database()
    yield db
    await drop_database(db)
