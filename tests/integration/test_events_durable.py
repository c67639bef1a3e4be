"""Embedded, each change is logged in the ledger's own transaction, and the audit trail and the webhook outbox
record the log in batches: a `playgate serve` killed with SIGKILL right after answering plays and a stop, then
restarted, has every decided request's audit event and outbox row, and every stopped stream's end, each once
(before the ledger logged them, they waited ~0.5 s in memory and died with the process)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sqlite3
from pathlib import Path

import pytest
from alembic import command

from playgate.admission import denied
from playgate.audit import LedgerEvents
from playgate.catalog.db import alembic_config, upgrade
from playgate.domain import Admission, PlayRequest, Policy, Quota, Reason, Rules, Status
from playgate.ledger import sql
from playgate.ledger.sql import SqlLedger
from playgate.webhooks import Outbox
from tests.support.clients import admin_client, api_client, new_user
from tests.support.inprocess import served
from tests.support.servers import free_port, start_playgate

SECRET = "whsec_" + base64.b64encode(b"playgate-webhook-test-key-32-byt").decode()
ROUNDS = 3
PLAYS = 20  # a round's concurrent plays; limit 2, so most are denied


def _stored(db: Path, user_id: str) -> tuple[list[tuple[str, str, str | None, str | None]], set[str], set[str]]:
    """The user's audit events (kind, outcome, request id, stream id), outbox ids, delivery rows' ids."""
    with sqlite3.connect(db) as conn:
        events = conn.execute(
            "SELECT kind, outcome, request_id, stream_id FROM audit_events WHERE user_id = ? ORDER BY id", (user_id,)
        ).fetchall()
        outbox = {row[0] for row in conn.execute("SELECT msg_id FROM webhook_events WHERE user_id = ?", (user_id,))}
        sent = {row[0] for row in conn.execute("SELECT msg_id FROM webhook_deliveries WHERE user_id = ?", (user_id,))}
    return events, outbox, sent


async def _burst_then_kill(data_dir: Path) -> tuple[str, dict[str, str], set[str]]:
    """Plays and a stop, answered; SIGKILL at once. The user, each request's answer, the stopped streams."""
    # The receiver's port refuses connections: deliveries stay pending, their rows are what this test reads.
    hooks = f"http://127.0.0.1:{free_port()}/hooks"
    server = start_playgate(data_dir, PLAYGATE_WEBHOOK_URLS=hooks, PLAYGATE_WEBHOOK_SECRET=SECRET)
    try:
        admin = await admin_client(server.base_url)
        user = await new_user(server.base_url, admin, limit=2)
        await admin.aclose()
        async with api_client(server.base_url, user.token) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/plays", params={"wait": 5}, json={"videoId": "1"}) for _ in range(PLAYS))
            )
            decided = {a.json()["requestId"]: a.json()["status"] for a in answers}
            stopped = {a.json()["streamId"] for a in answers if a.json()["status"] == "allowed"}
            assert (await client.delete("/v1/streams")).status_code == 204
    finally:
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    return user.id, decided, stopped


async def test_events_survive_a_kill_right_after_the_answers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # Each round a new user, the same database file, a kill at the end.
    rounds = [await _burst_then_kill(data_dir) for _ in range(ROUNDS)]

    # Restarted, the process records what the killed ones logged (a query records what waits before it reads).
    hooks = f"http://127.0.0.1:{free_port()}/hooks"
    server = start_playgate(data_dir, PLAYGATE_WEBHOOK_URLS=hooks, PLAYGATE_WEBHOOK_SECRET=SECRET)
    try:
        admin = await admin_client(server.base_url)
        pages = [(await admin.get(f"/v1/users/{r[0]}/events", params={"limit": 1000})).json() for r in rounds]
        await admin.aclose()
    finally:
        server.stop()
    for (user_id, decided, stopped), page in zip(rounds, pages, strict=True):
        assert set(decided.values()) == {"allowed", "denied"}
        assert {e["requestId"] for e in page["events"] if e["kind"] == "decision"} == set(decided)
        events, outbox, deliveries = _stored(data_dir / "playgate.sqlite3", user_id)
        decisions = {request_id: outcome for kind, outcome, request_id, _ in events if kind == "decision"}
        assert decisions == decided
        assert sum(kind == "decision" for kind, *_ in events) == len(decided)  # each once
        ends = {stream_id for kind, outcome, _, stream_id in events if kind == "stream_end" and outcome == "stopped"}
        assert ends == stopped
        expected = {f"msg_{r}" for r in decided} | {f"msg_end_{s}" for s in stopped}
        assert outbox == expected
        assert deliveries == expected


async def test_every_kind_of_stop_is_recorded_with_its_reason_and_a_plays_key_stop_is_not(tmp_path: Path) -> None:
    """Stream ends no device asked for are logged in the ledger's transaction too, each with its reason."""
    async with served(tmp_path) as base_url:
        admin = await admin_client(base_url)
        try:
            video = (await admin.post("/v1/videos", json={"title": "Gone", "url": "https://cdn.example/g.mp4"})).json()
            user = await new_user(base_url, admin, limit=3)
            async with api_client(base_url, user.token) as client:
                plays = [
                    (await client.post("/v1/plays", params={"wait": 5}, json={"videoId": v})).json()
                    for v in ("1", video["id"], "2")
                ]
            assert [p["status"] for p in plays] == ["allowed"] * 3
            assert (await admin.delete(f"/v1/streams/{plays[0]['streamId']}")).status_code == 204
            assert (await admin.delete(f"/v1/videos/{video['id']}")).status_code == 204
            assert (await admin.patch(f"/v1/users/{user.id}", json={"disabled": True})).status_code == 200
            page = (await admin.get(f"/v1/users/{user.id}/events", params={"limit": 100})).json()
        finally:
            await admin.aclose()
    ends = [(e["streamId"], e["reason"]) for e in page["events"] if e["kind"] == "stream_end"]
    assert ends == [
        (plays[0]["streamId"], "stopped_by_admin"),
        (plays[1]["streamId"], "video_deleted"),
        (plays[2]["streamId"], "user_disabled"),
    ]


async def test_dead_letters_once_and_expired_leases_are_recorded_from_the_ledgers_log(tmp_path: Path) -> None:
    """The worker's dead letters (kept once however often) and the sweeper's expired streams, on the ledger itself:
    logged in its transactions, recorded once by a drain in order, whatever drains after it."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    await upgrade(url)
    now = [1_000_000.0]
    outbox = Outbox([f"http://127.0.0.1:{free_port()}/hooks"], lambda: now[0])
    ledger = SqlLedger(
        url, lease_s=60, decision_ttl_s=3600, clock=lambda: now[0], events=LedgerEvents(Policy.deny, outbox)
    )
    try:
        request = PlayRequest("r-dead", "u1", "1", "d1", accepted_at=now[0])
        dead = denied(request, Reason.error, 0, 0, now[0])
        await ledger.keep([dead])
        await ledger.keep([dead])  # a redelivered dead letter: already kept, not recorded again
        [allowed] = await ledger.decide([Admission(PlayRequest("r-play", "u1", "1", "d1", now[0]), Quota(limit=1))])
        now[0] += 61
        [expired] = await ledger.sweep()
        assert _stored(tmp_path / "ledger.sqlite3", "u1") == ([], set(), set())  # logged, not recorded yet
        assert await ledger.drain_changes() == 3  # the events of the dead letter, the decision and the sweep
        assert await ledger.drain_changes() == 0
    finally:
        await ledger.close()
    assert expired.stream.id == allowed.decision.stream_id
    events, msg_ids, deliveries = _stored(tmp_path / "ledger.sqlite3", "u1")
    assert events == [
        ("decision", "denied", "r-dead", None),
        ("decision", "allowed", "r-play", allowed.decision.stream_id),
        ("stream_end", "expired", None, allowed.decision.stream_id),
    ]
    assert msg_ids == deliveries == {"msg_r-dead", "msg_r-play", f"msg_end_{allowed.decision.stream_id}"}


async def test_a_stop_that_finds_a_lease_run_out_records_it_expired(tmp_path: Path) -> None:
    """A stream whose lease ran out, not swept yet, ended by a stop (a player's, an outage's write-back) or by its
    video's removal: gone, not counted as stopped, and its end recorded as `expired` (the sweep would have; the
    Redis ledger's stop does), so the trail and the webhooks never hold a stream that never ended."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    await upgrade(url)
    now = [1_000_000.0]
    ledger = SqlLedger(url, lease_s=60, decision_ttl_s=3600, clock=lambda: now[0], events=LedgerEvents(Policy.deny))
    try:
        played = await ledger.decide(
            [
                Admission(PlayRequest("r-stop", "u1", "1", "d1", now[0]), Quota(limit=2)),
                Admission(PlayRequest("r-video", "u1", "2", "d2", now[0]), Quota(limit=2)),
            ]
        )
        now[0] += 61
        assert await ledger.stop(None, "u1", "1", reason=Reason.stopped) == []
        assert await ledger.stop_video("2", reason=Reason.video_deleted) == []
        assert await ledger.streams("u1") == []
        assert await ledger.drain_changes() == 4
    finally:
        await ledger.close()
    events, _, _ = _stored(tmp_path / "ledger.sqlite3", "u1")
    stream_ids = [o.decision.stream_id for o in played]
    assert events == [
        ("decision", "allowed", "r-stop", stream_ids[0]),
        ("decision", "allowed", "r-video", stream_ids[1]),
        ("stream_end", "expired", None, stream_ids[0]),
        ("stream_end", "expired", None, stream_ids[1]),
    ]


async def test_shadow_denials_are_listed_in_the_transaction_of_their_decisions(tmp_path: Path) -> None:
    """Embedded, the ledger lists the shadow policy's would-be denials with the decisions (no worker after it), and
    the worker built for it lists none again."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    await upgrade(url)
    now = 1_000_000.0
    ledger = SqlLedger(url, lease_s=60, decision_ttl_s=3600, clock=lambda: now, events=LedgerEvents(Policy.deny))
    quota = Quota(limit=3, shadow=Rules(max_streams=1))
    try:
        outcomes = await ledger.decide(
            [Admission(PlayRequest(f"r{n}", "u1", "1", f"d{n}", accepted_at=now), quota) for n in range(3)]
        )
    finally:
        await ledger.close()
    assert [o.decision.status for o in outcomes] == [Status.allowed] * 3
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        listed = conn.execute(
            "SELECT user_id, request_id, video_id, device_id, rule, enforced, decided_at FROM shadow_denials"
            " ORDER BY request_id"
        ).fetchall()
    assert listed == [("u1", f"r{n}", "1", f"d{n}", "limit_reached", "allowed", now) for n in (1, 2)]


async def test_logged_events_are_recorded_field_for_field_in_order_once(tmp_path: Path) -> None:
    """What the ledger logs is recorded as the events it logged (every column, NULLs and numbers kept), in the order
    logged, whichever of two ledgers on the file drains, and once (with no event id: nothing records them twice)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    await upgrade(url)
    now = 1_000_000.25
    ledgers = [
        SqlLedger(url, lease_s=60, decision_ttl_s=3600, clock=lambda: now, events=LedgerEvents(Policy.deny))
        for _ in range(2)
    ]
    quota = Quota(limit=1, shadow=Rules(max_streams=1))
    try:
        first, second = await ledgers[0].decide(
            [Admission(PlayRequest(f"r{n}", "u1", "1", f"d{n}", accepted_at=now), quota) for n in range(2)]
        )
        stopped = await ledgers[1].stop(None, "u1", reason=Reason.stopped)
        drained = await asyncio.gather(*(ledger.drain_changes() for ledger in ledgers))
    finally:
        for ledger in ledgers:
            await ledger.close()
    assert sorted(drained) == [0, 3]  # three logged events (two decisions, a stop), recorded by one of them
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        rows = conn.execute(
            "SELECT at, kind, user_id, video_id, device_id, outcome, request_id, stream_id, reason, policy, active, "
            '"limit", shadow, event_id FROM audit_events ORDER BY id'
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM ledger_events").fetchone() == (0,)
    assert [s.id for s in stopped] == [first.decision.stream_id]
    assert second.decision.status is Status.denied
    assert rows == [
        (
            now,
            "decision",
            "u1",
            "1",
            "d0",
            "allowed",
            "r0",
            first.decision.stream_id,
            None,
            "deny",
            1,
            1,
            None,
            None,
        ),
        (now, "decision", "u1", "1", "d1", "denied", "r1", None, "limit_reached", "deny", 1, 1, "limit_reached", None),
        (
            now,
            "stream_end",
            "u1",
            "1",
            "d0",
            "stopped",
            None,
            first.decision.stream_id,
            "stopped",
            None,
            None,
            None,
            None,
            None,
        ),
    ]


async def test_changes_logged_before_the_upgrade_are_recorded_after_it(tmp_path: Path) -> None:
    """Changes a 0010 schema logged as JSON (a stopped process's, not recorded yet) are moved into ledger_events by
    the upgrade, in order, and the next drain records them as they were logged."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0010")
    logged = [
        [1.5, "decision", "u1", "1", "d1", "allowed", "r1", "s1", None, "deny", 1, 2, None, "decision:r1"],
        [2.5, "stream_end", "u1", "1", "d1", "stopped", None, "s1", "stopped", None, None, None, None, "stream_end:s1"],
    ]
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        conn.executemany("INSERT INTO ledger_changes (changes) VALUES (?)", [(json.dumps([e]),) for e in logged])
    await upgrade(url)
    ledger = SqlLedger(url, lease_s=60, decision_ttl_s=3600, clock=lambda: 3.0, events=LedgerEvents(Policy.deny))
    try:
        assert await ledger.drain_changes() == 2
    finally:
        await ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        rows = conn.execute(
            "SELECT at, kind, user_id, video_id, device_id, outcome, request_id, stream_id, reason, policy, active, "
            '"limit", shadow, event_id FROM audit_events ORDER BY id'
        ).fetchall()
    assert rows == [(*event[:13], None) for event in logged]


async def test_a_drain_records_on_the_event_loop_a_chunk_at_a_time_with_other_calls_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain's chunks run on the event loop (not queued on the ledger's thread, where each statement would wait
    for the GIL while the players' calls queued behind it), and yield between chunks: every event recorded once, in
    order, with the event loop's other work run in between."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    await upgrade(url)
    now = [1_000_000.0]
    ledger = SqlLedger(url, lease_s=60, decision_ttl_s=3600, clock=lambda: now[0], events=LedgerEvents(Policy.deny))
    try:
        for n in range(5):
            await ledger.decide([Admission(PlayRequest(f"r{n}", "u1", "1", f"d{n}", now[0]), Quota(limit=10))])
        monkeypatch.setattr(sql, "DRAIN_CHUNK", 2)

        def on_the_thread(*_args: object) -> None:
            raise AssertionError("the drain ran on the ledger's thread")

        monkeypatch.setattr(SqlLedger, "_call", on_the_thread)
        turns: list[int] = []

        async def meanwhile() -> None:
            for turn in range(10):
                turns.append(turn)
                await asyncio.sleep(0)

        other = asyncio.create_task(meanwhile())
        assert await ledger.drain_changes() == 5
        await other
        assert len(turns) >= 2, "nothing else ran while the drain's chunks were recorded"
        monkeypatch.undo()
        events, _outbox, _sent = _stored(tmp_path / "ledger.sqlite3", "u1")
        assert [e[2] for e in events] == [f"r{n}" for n in range(5)]
    finally:
        await ledger.close()
