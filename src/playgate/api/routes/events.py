"""GET /v1/users/{userId}/events: a user's audit trail, paged by cursor, or exported whole as NDJSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from playgate.api.deps import Caller, GateDep
from playgate.api.errors import problem_responses
from playgate.api.schemas import EventOut, EventsOut
from playgate.audit import PAGE_MAX, StoredEvent
from playgate.wire import Id, Instant

router = APIRouter(prefix="/v1", tags=["audit"])

NDJSON = "application/x-ndjson"
ERRORS = problem_responses(
    {
        401: "No valid token.",
        403: "Not yours.",
        422: "A parameter is wrong; `field` names it.",
        503: "The database does not answer.",
    }
)


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()  # naive: UTC


async def _ndjson(events: AsyncIterator[StoredEvent]) -> AsyncIterator[bytes]:
    async for stored in events:
        yield orjson.dumps(EventOut.of(stored).model_dump(by_alias=True)) + b"\n"


@router.get(
    "/users/{userId}/events",
    summary="A user's audit trail: decisions and stream ends (that user, or admin)",
    description=(
        "Every decision and every stream's end of the user, oldest first, kept for PLAYGATE_AUDIT_RETENTION days. "
        "`since` (inclusive) and `until` (exclusive) bound the time (ISO-8601); pages of `limit` events, the next "
        "one with `?cursor=<nextCursor>`. `?format=ndjson` exports every event of the range instead, one JSON "
        "object a line. Events are written in batches: one appears within about a second of what it records."
    ),
    responses={**ERRORS, 200: {"content": {NDJSON: {}}, "description": "A page (JSON), or every event (NDJSON)."}},
    response_model=EventsOut,
)
async def user_events(
    gate: GateDep,
    caller: Caller,
    user_id: Annotated[Id, Path(alias="userId")],
    since: Annotated[Instant | None, Query(description="Events at or after this time.")] = None,
    until: Annotated[Instant | None, Query(description="Events before this time.")] = None,
    cursor: Annotated[str | None, Query(max_length=20, description="The nextCursor of the page before.")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Events per page.")] = 100,
    output: Annotated[
        Literal["json", "ndjson"], Query(alias="format", description="`ndjson`: every event, a line each.")
    ] = "json",
) -> EventsOut | StreamingResponse:
    """A page of the user's events, or all of them as NDJSON."""
    if output == "ndjson":
        events = gate.export_events(caller, user_id, since=_epoch(since), until=_epoch(until))
        return StreamingResponse(_ndjson(events), media_type=NDJSON)
    page, next_cursor = await gate.events(
        caller, user_id, since=_epoch(since), until=_epoch(until), cursor=cursor, limit=limit
    )
    return EventsOut(events=[EventOut.of(e) for e in page], next_cursor=next_cursor)
