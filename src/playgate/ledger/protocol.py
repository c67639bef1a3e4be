"""The stream ledger: who is watching what, and which requests were decided. One protocol, one twin per backend."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Protocol

from playgate.domain import Admission, Decision, Device, EndedStream, Outcome, Policy, Reason, Stream
from playgate.values import frozen


@frozen
class KeyClaim:
    """The request an idempotency key is bound to, and what that request asked (`fingerprint`, as the service words
    it: service.request_fingerprint); `created` when this call bound it."""

    request_id: str
    fingerprint: str
    created: bool


class ChangeLog(Protocol):
    """What logs the SQLite ledger's changes for the audit trail and the webhook outbox (embedded:
    audit.LedgerEvents), on the ledger's connection, inside a transaction the ledger holds open: each change in the
    transaction that makes it (cheap: one row), and records what it logged later, in batches (drain_changes)."""

    def decided(
        self, conn: sqlite3.Connection, outcomes: Sequence[tuple[Decision, Sequence[EndedStream], Policy | None]]
    ) -> None:
        """Log new decisions, each with the streams it ended to make room and the policy at the limit it was made
        under (None: not made under one, a dead letter's), and list the shadow policy's would-be denials among them,
        at once."""
        ...

    def ended(self, conn: sqlite3.Connection, ended: Sequence[EndedStream], at: float) -> None:
        """Log streams ended at `at` without a decision (stopped, expired, ...)."""
        ...

    def waiting(self, conn: sqlite3.Connection) -> bool:
        """Whether anything logged waits to be recorded (read without a transaction)."""
        ...

    def record(self, conn: sqlite3.Connection, count: int) -> int:
        """Record the oldest `count` logged transactions, deleting them from the log; how many there were."""
        ...


class Ledger(Protocol):
    """Active streams and decisions; every method is atomic per user, whatever runs beside it."""

    # Whether `stop(..., announce=True)` tells the users' sockets itself (see stop).
    announces_stops: bool

    async def decide(self, admissions: Sequence[Admission]) -> list[Outcome]:
        """Decide a batch in order, atomically per user; a request decided before gets its first decision."""
        ...

    async def decision(self, request_id: str) -> Decision | None:
        """The decision of a request, if it was decided (and is still kept)."""
        ...

    async def keep(self, decisions: Sequence[Decision]) -> None:
        """Keep decisions made without the rule (requests the queue gave up on), unless a request has one."""
        ...

    async def streams(self, user_id: str) -> list[Stream]:
        """The user's active streams, oldest first."""
        ...

    async def stream(self, stream_id: str) -> Stream | None:
        """One active stream, whoever holds it."""
        ...

    async def heartbeat(self, stream_id: str, user_id: str | None = None) -> Stream | None:
        """Renew an active stream's lease (only the user's own, when `user_id` is given); None if not active."""
        ...

    async def stop(
        self,
        stream_ids: Sequence[str] | None,
        user_id: str,
        video_id: str | None = None,
        *,
        reason: Reason | None = None,
        announce: bool = False,
        unless_renewed_after: float | None = None,
    ) -> list[Stream]:
        """End the user's streams: these ids, or all of them (of one video, if given); the ones ended. `reason`:
        what their ends are recorded as, by a ledger that writes the audit trail in its own transaction.
        `announce`: a ledger whose `announces_stops` is true also tells the users' sockets (`stream_ended`, with
        `reason`) in the same call; any other ignores it and the caller's fan-out tells them.
        `unless_renewed_after`: a stream whose lease runs past this instant (epoch seconds) is left alone, in the
        same atomic step (a stop taken during an outage, written back: the stream was played again since)."""
        ...

    async def stop_video(self, video_id: str, *, reason: Reason | None = None) -> list[Stream]:
        """End every user's streams of one video (it left the catalogue); the ones that were active (`reason`: as
        for stop)."""
        ...

    async def restore(self, streams: Sequence[Stream]) -> int:
        """Write back streams decided or kept playing while the ledger was down (the outage policy): each one
        absent here is stored as given (unless its lease ran out), one known here (even expired, not yet swept) keeps
        its fields and takes the later of the two expiries; how many were written. Limits are not checked here: the
        next heartbeat holds each user to theirs."""
        ...

    async def sweep(self) -> list[EndedStream]:
        """End every stream whose lease ran out, forget old decisions and keys; what was ended."""
        ...

    async def claim_key(self, user_id: str, key: str, request_id: str, fingerprint: str) -> KeyClaim:
        """Bind an Idempotency-Key of this user to `request_id` and what it asks (`fingerprint`, at most 64
        characters), or return the request it is bound to and its fingerprint."""
        ...

    async def devices(self, user_id: str) -> list[Device]:
        """The user's registered devices (those that started a stream under a device cap), least recent first."""
        ...

    async def forget_device(self, user_id: str, device_id: str) -> bool:
        """Remove a registered device; False if it was not registered."""
        ...

    async def count_active(self) -> int:
        """Active streams of all users (for metrics)."""
        ...

    async def ping(self) -> None:
        """Raise Unavailable unless the backend answers."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
