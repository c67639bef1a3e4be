"""Webhooks over real HTTP to a real receiver on 127.0.0.1: signed events in order per user; a receiver stopped
while events happen gets every one of them, in order, once it is back (short backoff settings); the delivery log
and `playgate webhooks replay` / `log`; the backoff schedule, giving up and pruning (the clock injected)."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

from click.testing import CliRunner

from playgate.audit import DECISION, AuditEvent, AuditTrail
from playgate.catalog.db import create_engine, upgrade
from playgate.cli import main
from playgate.config import load_settings, security_problems
from playgate.domain import Policy
from playgate.webhooks import (
    DELIVERED,
    FAILED,
    PENDING,
    Outbox,
    delivery_log,
)
from tests.support.clients import admin_client, new_user
from tests.support.inprocess import served
from tests.support.receiver import Receiver, dispatcher_to, play_deny_stop
from tests.support.servers import playgate_env
from tests.support.wait import until

SECRET = "whsec_" + base64.b64encode(b"playgate-webhook-test-key-32-byt").decode()
FAST = {
    "PLAYGATE_WEBHOOK_SECRET": SECRET,
    "PLAYGATE_WEBHOOK_BACKOFF": "0.05",
    "PLAYGATE_WEBHOOK_BACKOFF_MAX": "0.2",
    "PLAYGATE_WEBHOOK_POLL": "0.05",
}
USERS = 4
RETRIES_SEEN = 3
DEADLINE_S = 20.0


async def test_signed_events_arrive_in_order_per_user(tmp_path: Path) -> None:
    receiver = Receiver(SECRET)
    await receiver.start()
    try:
        async with served(tmp_path, PLAYGATE_WEBHOOK_URLS=receiver.url, **FAST) as base_url:
            admin = await admin_client(base_url)
            user = await new_user(base_url, admin, limit=1)
            await admin.aclose()
            expected = await play_deny_stop(base_url, user.token, wait_s=5)
            received = await receiver.wait_for(len(expected))
    finally:
        await receiver.stop()
    assert receiver.bad == []
    assert [(r.type, r.msg_id) for r in received] == expected
    started = received[0].body
    assert started["data"]["userId"] == user.id
    assert started["data"]["limit"] == 1
    assert started["timestamp"].endswith("Z")
    assert received[1].body["data"]["reason"] == "limit_reached"
    assert received[2].body["data"]["reason"] == "stopped"


async def test_while_the_secret_is_rotated_each_delivery_verifies_with_the_old_and_the_new(tmp_path: Path) -> None:
    # Two receivers, one still on the old secret and one already on the new: both verify every delivery, since
    # each carries a signature per configured secret (Standard Webhooks: `v1,<old> v1,<new>`).
    new_secret = "whsec_" + base64.b64encode(b"the-next-webhook-signing-key-32b").decode()
    old_side, new_side = Receiver(SECRET), Receiver(new_secret)
    for receiver in (old_side, new_side):
        await receiver.start()
    try:
        urls = f"{old_side.url},{new_side.url}"
        rotating = {**FAST, "PLAYGATE_WEBHOOK_SECRET": f"{SECRET} {new_secret}"}
        async with served(tmp_path, PLAYGATE_WEBHOOK_URLS=urls, **rotating) as base_url:
            admin = await admin_client(base_url)
            user = await new_user(base_url, admin, limit=1)
            await admin.aclose()
            expected = await play_deny_stop(base_url, user.token, wait_s=5)
            for receiver in (old_side, new_side):
                assert [(r.type, r.msg_id) for r in await receiver.wait_for(len(expected))] == expected
    finally:
        for receiver in (old_side, new_side):
            await receiver.stop()
    assert old_side.bad == new_side.bad == []


def test_a_webhook_secret_list_with_one_bad_secret_is_refused() -> None:
    settings = load_settings(
        {"PLAYGATE_WEBHOOK_URLS": "http://127.0.0.1:9/hooks", "PLAYGATE_WEBHOOK_SECRET": f"{SECRET} whsec_c2hvcnQ="}
    )
    assert security_problems(settings) == [
        "PLAYGATE_WEBHOOK_SECRET: each secret must be whsec_ and the base64 of at least 24 random bytes, several "
        "separated by spaces"
    ]


async def test_a_receiver_that_was_down_gets_every_event_in_order_per_user_when_it_returns(tmp_path: Path) -> None:
    receiver = Receiver(SECRET)  # not started: the port refuses connections
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'playgate.sqlite3'}")
    try:
        async with served(tmp_path, PLAYGATE_WEBHOOK_URLS=receiver.url, **FAST) as base_url:
            admin = await admin_client(base_url)
            users = [await new_user(base_url, admin, limit=1) for _ in range(USERS)]
            await admin.aclose()
            per_user = await asyncio.gather(*(play_deny_stop(base_url, u.token, wait_s=5) for u in users))
            expected = sum(len(events) for events in per_user)

            async def retried() -> bool:
                # Every user's first event has failed a few times; the later ones have not been tried at all.
                log = await delivery_log(engine, status=PENDING, limit=1000)
                tries = sorted((e.attempts for e in log), reverse=True)
                return len(log) == expected and tries[:USERS] >= [RETRIES_SEEN] * USERS

            await until(
                retried,
                "every user's first delivery retried while the receiver is down",
                timeout_s=DEADLINE_S,
                every_s=0.05,
            )
            pending = await delivery_log(engine, status=PENDING, limit=1000)
            tried = [e for e in pending if e.attempts > 0]
            assert sorted(e.msg_id for e in tried) == sorted(events[0][1] for events in per_user)
            assert all(e.last_status is None and "ConnectError" in str(e.last_error) for e in tried)

            await receiver.start()
            received = await receiver.wait_for(expected)
            await asyncio.sleep(0.3)  # a duplicate would arrive within a few polls
            delivered = await delivery_log(engine, status=DELIVERED, limit=1000)
    finally:
        await receiver.stop()
        await engine.dispose()
    assert receiver.bad == []
    assert len(receiver.received) == expected
    for user, events in zip(users, per_user, strict=True):
        assert [(r.type, r.msg_id) for r in received if r.user_id == user.id] == events
    assert len(delivered) == expected
    assert all(e.last_status == 204 and e.last_error is None for e in delivered)


async def _playgate(data_dir: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """`playgate <args>`: its exit status, stdout and stderr. Through click's runner in a thread (the command runs
    an event loop of its own), not a process: the command's logic against the served app's database is what is
    tested here, and tests/integration/test_cli.py proves `python -m playgate` itself (a process each was 3 s)."""
    result = await asyncio.to_thread(CliRunner().invoke, main, list(args), env=playgate_env(data_dir, **env))
    return result.exit_code, result.stdout, result.stderr


async def test_replay_sends_events_again_and_log_shows_them(tmp_path: Path) -> None:
    receiver = Receiver(SECRET)
    await receiver.start()
    env = {"PLAYGATE_WEBHOOK_URLS": receiver.url, **FAST}
    try:
        async with served(tmp_path, **env) as base_url:
            admin = await admin_client(base_url)
            user = await new_user(base_url, admin, limit=1)
            await admin.aclose()
            expected = await play_deny_stop(base_url, user.token, wait_s=5)
            await receiver.wait_for(len(expected))

            code, out, err = await _playgate(tmp_path, "webhooks", "replay", "--id", expected[1][1], **env)
            assert (code, out.strip()) == (0, "1 deliveries queued again"), err
            again = await receiver.wait_for(len(expected) + 1)
            assert again[-1].msg_id == expected[1][1]

            code, out, err = await _playgate(tmp_path, "webhooks", "replay", "--since", "1970-01-01T00:00:00", **env)
            assert (code, out.strip()) == (0, "3 deliveries queued again"), err
            again = await receiver.wait_for(len(expected) + 4)
            assert [(r.type, r.msg_id) for r in again[-3:]] == expected

            code, out, _ = await _playgate(tmp_path, "webhooks", "log", "--status", "delivered", **env)
            lines = [line.split("\t") for line in out.splitlines()]
            assert code == 0
            assert sorted(line[0] for line in lines) == sorted(m for _, m in expected)
            assert all(line[4] == DELIVERED and line[7] == "204" for line in lines)
    finally:
        await receiver.stop()

    code, _, err = await _playgate(tmp_path, "webhooks", "replay", "--id", "msg_nothing", **env)
    assert code == 1
    assert "no event 'msg_nothing'" in err
    for bad in ("yesterday", "nan"):
        code, _, err = await _playgate(tmp_path, "webhooks", "replay", "--since", bad, **env)
        assert code == 2
        assert "--since" in err
    code, _, err = await _playgate(tmp_path, "webhooks", "replay", "--since", "0")
    assert code == 1
    assert "PLAYGATE_WEBHOOK_URLS is empty" in err


async def test_no_urls_no_outbox(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'playgate.sqlite3'}")
    try:
        async with served(tmp_path) as base_url:
            admin = await admin_client(base_url)
            user = await new_user(base_url, admin, limit=1)
            await admin.aclose()
            await play_deny_stop(base_url, user.token, wait_s=5)
        assert await delivery_log(engine, limit=10) == []
    finally:
        await engine.dispose()


async def test_a_failing_receiver_is_retried_with_backoff_then_given_up_and_old_events_pruned(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hooks.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    now = [time.time()]  # the receiver checks webhook-timestamp against its own clock (5 minutes either way)
    receiver = Receiver(SECRET, failing=True)
    await receiver.start()
    try:
        outbox = Outbox([receiver.url], clock=lambda: now[0])
        trail = AuditTrail(engine, policy=Policy.deny, retention_s=3600, clock=lambda: now[0], companion=outbox)
        first = AuditEvent(now[0], DECISION, "u1", "v1", "d1", "allowed", request_id="r1", stream_id="s1")
        second = AuditEvent(now[0] + 1, DECISION, "u1", "v1", "d1", "denied", request_id="r2", reason="limit_reached")
        trail.record([first, second])
        assert await trail.flush() == 2
        dispatcher = dispatcher_to(
            receiver, engine, lambda: now[0], first_backoff_s=10, max_backoff_s=40, give_up_s=100, retention_s=100
        )
        try:
            start = now[0]
            # Tried at +0, +10, +30, +70 (backoff 10, 20, 40): never before it is due; only the user's first event.
            for at_s, tried in [(0, 1), (9, 0), (10, 1), (29, 0), (30, 1), (69, 0), (70, 1)]:
                now[0] = start + at_s
                assert (await dispatcher.step(), at_s) == (tried, at_s)
            (head,) = await delivery_log(engine, msg_id="msg_r1")
            assert (head.status, head.attempts, head.last_status, head.last_error) == (PENDING, 4, 500, "HTTP 500")
            now[0] = start + 110  # give_up_s after its first try: marked failed, and the user's next event goes
            assert await dispatcher.step() == 1
            assert (await delivery_log(engine, msg_id="msg_r1"))[0].status == FAILED
            assert await dispatcher.step() == 1
            (second_try,) = await delivery_log(engine, msg_id="msg_r2")  # its own give_up_s counts from now
            assert (second_try.status, second_try.attempts, second_try.last_status) == (PENDING, 1, 500)

            assert await dispatcher.prune() == 1  # past the retention: the failed one goes, the pending one stays
            assert [e.msg_id for e in await delivery_log(engine)] == ["msg_r2"]
            receiver.failing = False
            now[0] = start + 120
            assert await dispatcher.step() == 1
            assert [r.msg_id for r in receiver.received] == ["msg_r2"]
            now[0] = start + 200
            assert await dispatcher.prune() == 1
            assert await delivery_log(engine) == []
            assert receiver.bad == []
        finally:
            await dispatcher.close()
    finally:
        await receiver.stop()
        await engine.dispose()
