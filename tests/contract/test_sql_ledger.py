"""The SQLite ledger's own ways (the contract itself is test_ledger.py's): the players' calls run on the event loop
while SQLite grants its lock at once, never waiting there for a lock another connection holds; and the WAL they
write is still checkpointed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from alembic import command

from playgate.catalog.db import alembic_config, upgrade
from playgate.domain import Reason, Status
from playgate.errors import Unavailable
from playgate.ledger import sql
from playgate.ledger.sql import SqlLedger
from tests.contract.conftest import DECISION_TTL_S, LEASE_S
from tests.contract.test_ledger import admit, one, play
from tests.support.clock import Clock


@pytest.fixture
async def database(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    await upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def _ledger(path: Path, clock: Clock) -> SqlLedger:
    return SqlLedger(f"sqlite+aiosqlite:///{path}", lease_s=LEASE_S, decision_ttl_s=DECISION_TTL_S, clock=clock)


async def test_a_lock_held_elsewhere_is_waited_for_off_the_event_loop(database: Path, clock: Clock) -> None:
    """Another process in a write transaction (a backup, a `sqlite3` shell): the batch waits for the lock on the
    ledger's thread, the event loop goes on meanwhile, and the batch is decided once the lock is let go."""
    ledger = _ledger(database, clock)
    try:
        assert (await one(ledger, play("r0"))).status is Status.allowed  # the event loop's connection is open
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            deciding = asyncio.create_task(ledger.decide([admit(play("r1", device="phone"))]))
            started = time.monotonic()
            await asyncio.sleep(0.2)
            assert time.monotonic() - started < 2, "the event loop waited for the lock"
            assert not deciding.done()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        [outcome] = await asyncio.wait_for(deciding, 10)
        assert outcome.decision.status is Status.allowed
        assert len(await ledger.streams("u1")) == 2
    finally:
        await ledger.close()


async def test_a_stop_queued_when_a_batch_is_decided_goes_in_its_transaction_first(
    database: Path, clock: Clock
) -> None:
    """A player's stop that queued for its group commit, then the worker's batch: the batch takes the stop into its
    own transaction, ahead of its decisions (the slot it frees counts for them), and the stop is answered after it;
    its own commit then finds nothing left to write."""
    ledger = _ledger(database, clock)
    try:
        first = await one(ledger, play("r0"), limit=1)
        assert first.status is Status.allowed
        assert first.stream_id is not None
        stopping = asyncio.create_task(ledger.stop([first.stream_id], "u1", reason=Reason.stopped))
        await asyncio.sleep(0)  # the stop is queued; its group commit has not run
        transactions = _transactions(ledger)
        [outcome] = await ledger.decide([admit(play("r1", video="v2", device="phone"), limit=1)])
        assert outcome.decision.status is Status.allowed, "the stop queued first did not free its slot"
        assert [s.id for s in await stopping] == [first.stream_id]
        assert _transactions(ledger) == transactions + 1
        assert [s.video_id for s in await ledger.streams("u1")] == ["v2"]
    finally:
        await ledger.close()


async def test_a_failed_batch_fails_the_stops_it_took(database: Path, clock: Clock) -> None:
    """The batch's transaction fails: the stops it took are answered with its error, and nothing of them is
    written (the stream plays on)."""
    ledger = _ledger(database, clock)
    try:
        first = await one(ledger, play("r0"))
        assert first.stream_id is not None
        stopping = asyncio.create_task(ledger.stop([first.stream_id], "u1"))
        await asyncio.sleep(0)
        with pytest.raises(TypeError):
            await ledger.decide([admit(play("r1", device="phone"), limit="three")])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await stopping
        assert [s.id for s in await ledger.streams("u1")] == [first.stream_id]
    finally:
        await ledger.close()


async def test_the_wal_written_on_the_event_loop_is_checkpointed_and_starts_over(
    database: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop's connection leaves checkpoints to the thread: the WAL is copied back into the database and
    starts over (its header's checkpoint sequence number goes up), instead of growing with every transaction, also
    while transactions go on during the thread's checkpoint, as under load."""
    monkeypatch.setattr(sql, "CHECKPOINT_EVERY", 10)
    wal = database.with_name(database.name + "-wal")
    ledger = _ledger(database, clock)
    try:
        started_over = 0
        for n in range(1500):
            await one(ledger, play(f"r{n}", user=f"u{n % 500}", device=f"d{n}"))
            await asyncio.sleep(0)  # one turn of the event loop: the next transaction may start during a checkpoint
            started_over = _checkpoint_sequence(wal)
            if started_over >= 3:
                break
        assert started_over >= 3, f"the WAL started over {started_over} times in 1,500 transactions"
    finally:
        await ledger.close()


def _checkpoint_sequence(wal: Path) -> int:
    """The WAL header's checkpoint sequence number: how many times the WAL started over (sqlite.org/fileformat.html)."""
    with wal.open("rb") as file:
        return int.from_bytes(file.read(16)[12:16], "big")


async def test_a_failure_without_sqlites_code_on_the_event_loop_is_unavailable(database: Path, clock: Clock) -> None:
    """An OperationalError that carries no SQLite error code (raised by the driver itself) is an outage, as on the
    thread: Unavailable, which the service answers 503, never an AttributeError."""
    ledger = _ledger(database, clock)

    def fails(_conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("the driver's own")

    try:
        with pytest.raises(Unavailable):
            await ledger._run(fails, inline=True)
    finally:
        await ledger.close()


async def test_closing_during_a_checkpoint_leaves_no_connection_open(
    database: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger closed while the thread checkpoints: the checkpoint's second pass does not open the thread's
    connection again behind the close."""
    monkeypatch.setattr(sql, "CHECKPOINT_EVERY", 1)
    ledger = _ledger(database, clock)
    await one(ledger, play("r0"))  # a write on the event loop: the thread starts a checkpoint
    await ledger.close()
    assert ledger._conn is None
    assert ledger._checkpoint is None


def _transactions(ledger: SqlLedger) -> int:
    """Write transactions on the event loop's connection so far (each counted once, when it changed something)."""
    return ledger._inline_writes  # the count the checkpoints are driven by


async def test_a_decision_stored_before_migration_0015_reads_without_its_streams_start(
    tmp_path: Path, clock: Clock
) -> None:
    """Migration 0015 adds the stream's start and away flag to the decisions table: a row stored before it reads as
    started at no known instant, at home (its playback token names the decision's instant); one decided after it
    keeps both; and the migration goes down again."""
    path = tmp_path / "ledger.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0014")
    with sqlite3.connect(path) as conn:
        conn.execute(
            'INSERT INTO decisions (request_id, user_id, video_id, device_id, status, active, "limit", decided_at, '
            "stream_id, expires_at) VALUES ('r0', 'u1', 'v1', 'tv', 'allowed', 1, 3, ?, 's0', ?)",
            (clock.now, clock.now + LEASE_S),
        )
    await upgrade(url)
    ledger = _ledger(path, clock)
    try:
        before = await ledger.decision("r0")
        assert before is not None
        assert (before.status, before.stream_id, before.started_at, before.away) == (Status.allowed, "s0", None, False)
        after = await one(ledger, play("r1", away=True))
        assert (after.started_at, after.away) == (clock.now, True)
        assert await ledger.decision(after.request_id) == after
    finally:
        await ledger.close()
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0014")
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}
    assert {"started_at", "away"}.isdisjoint(columns)
    assert {"decided_at", "stream_id", "shadow_reason"} <= columns
