"""API keys for platforms' backends: made, listed, revoked, and checked on every request that carries one.

A key reads `pgk_<id>_<secret>`: the prefix makes a leaked key easy to recognise (secret scanners, logs), the id
finds its row, and the 256-bit secret makes guessing hopeless, so a fast hash (SHA-256) is the right way to keep
it: a slow one (argon2) only protects low-entropy passwords, and would cost every request tens of milliseconds.
A key's validity is read from the database on every request (one primary-key read), so a revoked key stops at
once in every process; its last-used time is kept in memory and written at most every LAST_USED_FLUSH_S.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select, update

from playgate.catalog.models import ApiKeyRow
from playgate.domain import ApiKey, KeyScope
from playgate.errors import NotFound, Unauthorized

KEY_PREFIX = "pgk_"
LAST_USED_FLUSH_S = 10.0
_ID_BYTES = 8
_SECRET_BYTES = 32

SessionFactory = Callable[[], Any]


def is_api_key(credential: str) -> bool:
    """True when the credential has the shape of a PlayGate API key (not whether it is valid)."""
    return credential.startswith(KEY_PREFIX)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _to_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        scope=KeyScope(row.scope),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class KeyStore:
    """Makes, lists, revokes and checks API keys; `session` and `write_session` open the catalogue's sessions."""

    def __init__(self, session: SessionFactory, write_session: SessionFactory, clock: Callable[[], float]) -> None:
        self._session = session
        self._write_session = write_session
        self._clock = clock
        self._used: dict[str, float] = {}
        self._flushed_at = clock()

    async def create(self, *, name: str, scope: KeyScope) -> tuple[ApiKey, str]:
        """A new key: the stored record, and the key itself (shown once, never stored)."""
        key_id = secrets.token_hex(_ID_BYTES)
        plain = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
        row = ApiKeyRow(id=key_id, name=name, scope=scope.value, key_hash=_digest(plain), created_at=self._clock())
        async with self._write_session() as session:
            session.add(row)
            await session.commit()
        return _to_key(row), plain

    async def all(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first (last-used times written so far)."""
        await self.flush()
        async with self._session() as session:
            rows = (await session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id))).all()
        return [_to_key(r) for r in rows]

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (it stops working at once); NotFound if there is none. Revoking twice changes nothing."""
        async with self._write_session() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"No API key with id {key_id!r}.")
            if row.revoked_at is None:
                row.revoked_at = self._clock()
            await session.commit()
        return _to_key(row)

    async def check(self, plain: str) -> ApiKey:
        """The key's record when `plain` is a valid, unrevoked key; Unauthorized otherwise."""
        parts = plain.split("_", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise Unauthorized("The API key is not valid.")
        async with self._session() as session:
            row = await session.get(ApiKeyRow, parts[1])
        # Compare digests in constant time, so that timing tells nothing of the stored hash.
        if row is None or not hmac.compare_digest(row.key_hash, _digest(plain)):
            raise Unauthorized("The API key is not valid.")
        if row.revoked_at is not None:
            raise Unauthorized("The API key has been revoked.")
        await self._used_now(row.id)
        return _to_key(row)

    async def _used_now(self, key_id: str) -> None:
        now = self._clock()
        self._used[key_id] = now
        if now - self._flushed_at >= LAST_USED_FLUSH_S:
            await self.flush()

    async def flush(self) -> None:
        """Write the last-used times gathered since the previous flush, in one statement."""
        used, self._used = self._used, {}
        self._flushed_at = self._clock()
        if not used:
            return
        statement = (
            update(ApiKeyRow.__table__)  # type: ignore[arg-type]
            .where(ApiKeyRow.__table__.c.id == bindparam("key_id"))
            .values(last_used_at=bindparam("used_at"))
        )
        async with self._write_session() as session:
            await session.execute(statement, [{"key_id": k, "used_at": t} for k, t in used.items()])
            await session.commit()
