"""The SQLite ledger: streams and decisions in the catalogue's database, one BEGIN IMMEDIATE transaction a batch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, delete, func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from playgate.admission import decide
from playgate.catalog.db import create_engine
from playgate.catalog.models import DecisionRow, IdempotencyRow, StreamRow
from playgate.catalog.service import translate_db_errors
from playgate.config import Policy
from playgate.domain import Decision, EndedStream, Reason, Status, Stream, new_id
from playgate.ledger.protocol import Admission, KeyClaim, Outcome

streams_t = cast(Table, StreamRow.__table__)
decisions_t = cast(Table, DecisionRow.__table__)
keys_t = cast(Table, IdempotencyRow.__table__)


def _stream(row: Row[Any]) -> Stream:
    return Stream(
        id=row.id,
        user_id=row.user_id,
        video_id=row.video_id,
        device_id=row.device_id,
        started_at=row.started_at,
        expires_at=row.expires_at,
    )


def _decision(row: Row[Any]) -> Decision:
    return Decision(
        request_id=row.request_id,
        user_id=row.user_id,
        video_id=row.video_id,
        device_id=row.device_id,
        status=Status(row.status),
        active=row.active,
        limit=row.limit,
        decided_at=row.decided_at,
        stream_id=row.stream_id,
        reason=Reason(row.reason) if row.reason else None,
        expires_at=row.expires_at,
    )


def _decision_values(d: Decision) -> dict[str, Any]:
    return {
        "request_id": d.request_id,
        "user_id": d.user_id,
        "video_id": d.video_id,
        "device_id": d.device_id,
        "status": d.status.value,
        "stream_id": d.stream_id,
        "reason": d.reason.value if d.reason else None,
        "active": d.active,
        "limit": d.limit,
        "decided_at": d.decided_at,
        "expires_at": d.expires_at,
    }


def _stream_values(s: Stream) -> dict[str, Any]:
    return {
        "id": s.id,
        "user_id": s.user_id,
        "video_id": s.video_id,
        "device_id": s.device_id,
        "started_at": s.started_at,
        "expires_at": s.expires_at,
    }


class SqlLedger:
    """Ledger on SQLite: safe across processes sharing the file, since each batch holds the write lock."""

    def __init__(
        self,
        url: str,
        *,
        lease_s: float,
        decision_ttl_s: float,
        policy: Policy,
        clock: Callable[[], float],
    ) -> None:
        self._writer: AsyncEngine = create_engine(url, immediate=True)
        self._reader: AsyncEngine = create_engine(url)
        self._lease_s = lease_s
        self._decision_ttl_s = decision_ttl_s
        self._policy = policy
        self._clock = clock

    async def decide(self, admissions: Sequence[Admission]) -> list[Outcome]:
        """Decide the batch in one write transaction: read priors and streams, apply the rule, write the diff."""
        if not admissions:
            return []
        request_ids = {a.request.request_id for a in admissions}
        user_ids = {a.request.user_id for a in admissions}
        async with translate_db_errors(), self._writer.begin() as conn:
            now = self._clock()
            priors = {
                row.request_id: _decision(row)
                for row in await conn.execute(select(decisions_t).where(decisions_t.c.request_id.in_(request_ids)))
            }
            before: dict[str, list[Stream]] = defaultdict(list)
            for row in await conn.execute(select(streams_t).where(streams_t.c.user_id.in_(user_ids))):
                before[row.user_id].append(_stream(row))
            after = {user_id: list(streams) for user_id, streams in before.items()}
            outcomes = []
            fresh: list[dict[str, Any]] = []
            for admission in admissions:
                request = admission.request
                prior = priors.get(request.request_id)
                verdict = decide(
                    request,
                    streams=after.get(request.user_id, []),
                    quota=admission.quota,
                    now=now,
                    lease_s=self._lease_s,
                    new_stream_id=new_id(),
                    prior=prior,
                    policy=self._policy,
                )
                after[request.user_id] = list(verdict.streams)
                if prior is None:
                    # A duplicate later in the same batch gets this decision as its prior.
                    priors[request.request_id] = verdict.decision
                    fresh.append(_decision_values(verdict.decision))
                outcomes.append(Outcome(verdict.decision, verdict.ended))
            await self._write(conn, before, after)
            if fresh:
                await conn.execute(decisions_t.insert(), fresh)
        return outcomes

    async def _write(self, conn: Any, before: dict[str, list[Stream]], after: dict[str, list[Stream]]) -> None:
        old = {s.id: s for streams in before.values() for s in streams}
        new = {s.id: s for streams in after.values() for s in streams}
        gone = old.keys() - new.keys()
        if gone:
            await conn.execute(delete(streams_t).where(streams_t.c.id.in_(gone)))
        inserted = [_stream_values(s) for sid, s in new.items() if sid not in old]
        if inserted:
            await conn.execute(streams_t.insert(), inserted)
        renewed = [
            {"sid": sid, "exp": s.expires_at}
            for sid, s in new.items()
            if sid in old and old[sid].expires_at != s.expires_at
        ]
        if renewed:
            await conn.execute(
                update(streams_t).where(streams_t.c.id == bindparam("sid")).values(expires_at=bindparam("exp")),
                renewed,
            )

    async def decision(self, request_id: str) -> Decision | None:
        """The stored decision of a request, if any."""
        async with translate_db_errors(), self._reader.connect() as conn:
            row = (await conn.execute(select(decisions_t).where(decisions_t.c.request_id == request_id))).first()
        return _decision(row) if row else None

    async def streams(self, user_id: str) -> list[Stream]:
        """The user's streams whose lease has not run out, oldest first."""
        query = (
            select(streams_t)
            .where(streams_t.c.user_id == user_id, streams_t.c.expires_at > self._clock())
            .order_by(streams_t.c.started_at, streams_t.c.id)
        )
        async with translate_db_errors(), self._reader.connect() as conn:
            return [_stream(row) for row in await conn.execute(query)]

    async def stream(self, stream_id: str) -> Stream | None:
        """One active stream."""
        query = select(streams_t).where(streams_t.c.id == stream_id, streams_t.c.expires_at > self._clock())
        async with translate_db_errors(), self._reader.connect() as conn:
            row = (await conn.execute(query)).first()
        return _stream(row) if row else None

    async def heartbeat(self, stream_id: str, user_id: str | None = None) -> Stream | None:
        """Push the lease of an active stream to now + lease_s."""
        async with translate_db_errors(), self._writer.begin() as conn:
            now = self._clock()
            query = (
                update(streams_t)
                .where(streams_t.c.id == stream_id, streams_t.c.expires_at > now)
                .values(expires_at=now + self._lease_s)
                .returning(*streams_t.c)
            )
            if user_id is not None:
                query = query.where(streams_t.c.user_id == user_id)
            row = (await conn.execute(query)).first()
        return _stream(row) if row else None

    async def stop(self, stream_ids: Sequence[str] | None, user_id: str, video_id: str | None = None) -> list[Stream]:
        """Delete the user's chosen streams; return those that were still active."""
        query = delete(streams_t).where(streams_t.c.user_id == user_id).returning(*streams_t.c)
        if stream_ids is not None:
            query = query.where(streams_t.c.id.in_(stream_ids))
        if video_id is not None:
            query = query.where(streams_t.c.video_id == video_id)
        async with translate_db_errors(), self._writer.begin() as conn:
            now = self._clock()
            rows = (await conn.execute(query)).all()
        return sorted((s for s in map(_stream, rows) if s.live(now)), key=lambda s: s.started_at)

    async def sweep(self) -> list[EndedStream]:
        """Delete expired streams (returned, to be announced), and decisions and keys past decision_ttl_s."""
        async with translate_db_errors(), self._writer.begin() as conn:
            now = self._clock()
            rows = (
                await conn.execute(delete(streams_t).where(streams_t.c.expires_at <= now).returning(*streams_t.c))
            ).all()
            horizon = now - self._decision_ttl_s
            await conn.execute(delete(decisions_t).where(decisions_t.c.decided_at < horizon))
            await conn.execute(delete(keys_t).where(keys_t.c.created_at < horizon))
        return [EndedStream(_stream(row), Reason.expired) for row in rows]

    async def claim_key(self, user_id: str, key: str, request_id: str, video_id: str) -> KeyClaim:
        """Insert the key if new; either way answer with the request it is bound to."""
        async with translate_db_errors(), self._writer.begin() as conn:
            inserted = await conn.execute(
                sqlite_insert(keys_t)
                .values(
                    user_id=user_id,
                    key=key,
                    request_id=request_id,
                    video_id=video_id,
                    created_at=self._clock(),
                )
                .on_conflict_do_nothing()
            )
            if inserted.rowcount == 1:
                return KeyClaim(request_id, video_id, created=True)
            row = (await conn.execute(select(keys_t).where(keys_t.c.user_id == user_id, keys_t.c.key == key))).one()
        return KeyClaim(row.request_id, row.video_id, created=False)

    async def count_active(self) -> int:
        """Streams whose lease has not run out."""
        query = select(func.count()).select_from(streams_t).where(streams_t.c.expires_at > self._clock())
        async with translate_db_errors(), self._reader.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def ping(self) -> None:
        """Raise Unavailable unless the database file answers."""
        async with translate_db_errors(), self._reader.connect() as conn:
            await conn.execute(select(1))

    async def close(self) -> None:
        """Dispose both engines."""
        await self._writer.dispose()
        await self._reader.dispose()
