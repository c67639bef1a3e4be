"""The outage policy embedded: an outage is the SQLite file refusing the ledger's calls. Here another process holds
the file's write lock (a backup, a long migration, a `sqlite3` shell left in a transaction) past the busy timeout,
shortened for the test: reads go on (WAL), every write fails with "database is locked"."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from playgate.bus.local import QUEUE_KEEP_FILE
from playgate.bus.protocol import request_from_json
from playgate.kept import PREFIX as KEEP_PREFIX
from tests.support.clients import TestUser, admin_client, api_client, decided, new_user
from tests.support.inprocess import play_left_undecided, served

BUSY_MS = 200  # instead of 30 s: how long a ledger write waits for the lock before it fails
LOCKED_S = 4.0  # long enough for the worker to fail its batch more often than MAX_ATTEMPTS
DEADLINE_S = 20.0


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("playgate.catalog.db.SQLITE_BUSY_TIMEOUT_MS", BUSY_MS)
    monkeypatch.setattr("playgate.ledger.sql.SQLITE_BUSY_TIMEOUT_MS", BUSY_MS)


async def _user(base_url: str, limit: int) -> TestUser:
    admin = await admin_client(base_url)
    try:
        return await new_user(base_url, admin, limit=limit)
    finally:
        await admin.aclose()


@contextlib.contextmanager
def _locked(tmp_path: Path) -> Iterator[None]:
    """Another process holds the file's write lock until the block ends."""
    lock = sqlite3.connect(tmp_path / "playgate.sqlite3", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


async def _playing_on_tv_and_tablet(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """The user's plays of video 1 on its tv and its tablet, both allowed."""
    tv, tablet = [
        (await client.post("/v1/plays", params={"wait": 5}, json={"videoId": "1", "deviceId": d})).json()
        for d in ("tv", "tablet")
    ]
    assert (tv["status"], tablet["status"]) == ("allowed", "allowed"), (tv, tablet)
    return tv, tablet


@pytest.mark.usefixtures("short_busy_timeout")
async def test_a_locked_database_file_is_an_outage(tmp_path: Path) -> None:
    """Playing streams are honoured (heartbeat, media) and /readyz says grace; a new play waits in the in-memory
    queue, is neither refused nor dead-lettered, and is decided once the file takes writes again; the stop taken
    meanwhile is written back and recorded."""
    async with served(tmp_path, PLAYGATE_OUTAGE_POLICY="deny") as base_url:
        user = await _user(base_url, limit=3)
        async with api_client(base_url, user.token) as client:
            tv, tablet = await _playing_on_tv_and_tablet(client)
            lock = sqlite3.connect(tmp_path / "playgate.sqlite3", isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            try:
                beat = await client.post(f"/v1/streams/{tv['streamId']}/heartbeat")
                assert beat.status_code == 200, beat.text
                media = await client.get("/v1/authorize", headers={"X-Original-URI": tv["playbackUrl"]})
                assert media.status_code == 204, media.text
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["outage"].startswith("grace:"), ready.text
                assert (await client.delete(f"/v1/streams/{tablet['streamId']}")).status_code == 204
                asked = await client.post("/v1/plays", params={"wait": 1}, json={"videoId": "2", "deviceId": "phone"})
                assert asked.status_code == 202, asked.text
                await asyncio.sleep(LOCKED_S)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            answer = await decided(client, asked.json()["requestId"], DEADLINE_S)
            # Decided by the worker once the file took writes again (not refused, not dead-lettered).
            assert answer["status"] == "allowed", answer
            streams = (await client.get("/v1/streams")).json()
            assert sorted(s["id"] for s in streams) == sorted([tv["streamId"], answer["streamId"]])
            page = (await client.get(f"/v1/users/{user.id}/events")).json()["events"]
            ends = [(e["streamId"], e["outcome"]) for e in page if e["kind"] == "stream_end"]
            assert ends == [(tablet["streamId"], "stopped")], page
            assert (await client.get("/readyz")).json()["outage"] == "normal"


EDGE = {"PLAYGATE_EDGE_SIGNING": "nginx-secure-link", "PLAYGATE_EDGE_SECRET": "e" * 32}


@pytest.mark.usefixtures("short_busy_timeout")
async def test_with_edge_signing_the_decisions_playback_token_carries_a_heartbeat_where_the_stream_is_unknown(
    tmp_path: Path,
) -> None:
    """With edge signing the `playbackUrl` is the edge's link, which carries no PlayGate token: the decision's
    `playbackToken` is what lets a process that never saw the stream (here a fresh app on the same file) honour its
    heartbeat while the file is locked; without it, 503. The honoured answer hands out a fresh token."""
    async with served(tmp_path, **EDGE) as base_url:
        user = await _user(base_url, limit=3)
        async with api_client(base_url, user.token) as client:
            play = (await client.post("/v1/plays", params={"wait": 5}, json={"videoId": "1", "deviceId": "tv"})).json()
            assert play["status"] == "allowed", play
            assert play["playbackUrl"].startswith("/edge/"), play
            status = (await client.get(f"/v1/plays/{play['requestId']}")).json()
            assert (status["playbackUrl"][:6], bool(status["playbackToken"])) == ("/edge/", True), status
    stream_id, token = play["streamId"], play["playbackToken"]
    assert token not in play["playbackUrl"]
    async with served(tmp_path, **EDGE) as base_url, api_client(base_url, user.token) as client:
        lock = sqlite3.connect(tmp_path / "playgate.sqlite3", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            unknown = await client.post(f"/v1/streams/{stream_id}/heartbeat")
            assert unknown.status_code == 503, unknown.text
            beat = await client.post(f"/v1/streams/{stream_id}/heartbeat", headers={"X-Playback-Token": token})
            assert beat.status_code == 200, beat.text
            fresh = beat.json()
            assert (fresh["playbackUrl"][:6], bool(fresh["playbackToken"])) == ("/edge/", True), fresh
            again = await client.post(
                f"/v1/streams/{stream_id}/heartbeat", headers={"X-Playback-Token": fresh["playbackToken"]}
            )
            assert again.status_code == 200, again.text
        finally:
            lock.execute("ROLLBACK")
            lock.close()


async def _playing_on_tv(client: httpx.AsyncClient) -> dict[str, Any]:
    """The user's play of video 1 on its tv, allowed."""
    first: dict[str, Any] = (
        await client.post("/v1/plays", params={"wait": 5}, json={"videoId": "1", "deviceId": "tv"})
    ).json()
    assert first["status"] == "allowed", first
    return first


async def _stopped_and_recorded(client: httpx.AsyncClient, user_id: str, stream_id: str) -> None:
    """The stream is gone and its one end recorded `stopped` (the write-back came first)."""
    assert (await client.get("/v1/streams")).json() == []
    page = (await client.get(f"/v1/users/{user_id}/events")).json()["events"]
    ends = [(e["streamId"], e["outcome"]) for e in page if e["kind"] == "stream_end"]
    assert ends == [(stream_id, "stopped")], page


@pytest.mark.usefixtures("short_busy_timeout")
async def test_a_stop_that_begins_the_outage_is_written_back(tmp_path: Path) -> None:
    """The first call the locked file refuses is a player's stop: answered 204 from the lease cache, and written
    back (ended, recorded `stopped`) once the file takes writes again."""
    async with served(tmp_path, PLAYGATE_OUTAGE_POLICY="deny") as base_url:
        user = await _user(base_url, limit=1)
        async with api_client(base_url, user.token) as client:
            first = await _playing_on_tv(client)
            with _locked(tmp_path):
                assert (await client.delete(f"/v1/streams/{first['streamId']}")).status_code == 204
                assert (await client.get("/readyz")).json()["outage"].startswith("grace:")
            await _stopped_and_recorded(client, user.id, first["streamId"])


@pytest.mark.usefixtures("short_busy_timeout")
async def test_a_stop_taken_in_the_outage_spares_the_play_of_that_device_asked_since(tmp_path: Path) -> None:
    """The stop of a device's stream is taken while the file is locked (204, written back later); the device asks
    for the same video again, and the ledger, which still holds the stream, answers with that stream, its lease
    renewed. Writing the stop back then would end the new play: it is left playing."""
    async with served(tmp_path, PLAYGATE_OUTAGE_POLICY="deny") as base_url:
        user = await _user(base_url, limit=1)
        async with api_client(base_url, user.token) as client:
            play = {"videoId": "1", "deviceId": "tv"}
            first = (await client.post("/v1/plays", params={"wait": 5}, json=play)).json()
            assert first["status"] == "allowed", first
            with _locked(tmp_path):
                assert (await client.delete(f"/v1/streams/{first['streamId']}")).status_code == 204
                again = await client.post("/v1/plays", params={"wait": 1}, json=play)
                assert again.status_code == 202, again.text
            answer = await decided(client, again.json()["requestId"], DEADLINE_S)
            assert (answer["status"], answer["streamId"]) == ("allowed", first["streamId"]), answer
            streams = (await client.get("/v1/streams")).json()  # the write-back comes first
            assert [s["id"] for s in streams] == [first["streamId"]], streams
            assert (await client.get("/readyz")).json()["outage"] == "normal"
            assert (await client.delete(f"/v1/streams/{first['streamId']}")).status_code == 204


@pytest.mark.usefixtures("short_busy_timeout")
async def test_a_stop_taken_in_the_outage_is_written_back_by_a_process_stopping_after_it(tmp_path: Path) -> None:
    """The file takes writes again, and the process is stopped before any call came to write the outage's stop
    back: it writes it back as it stops, so the restarted process has the stream ended and recorded."""
    async with served(tmp_path, PLAYGATE_OUTAGE_POLICY="deny") as base_url:
        user = await _user(base_url, limit=1)
        async with api_client(base_url, user.token) as client:
            first = await _playing_on_tv(client)
            with _locked(tmp_path):
                assert (await client.delete(f"/v1/streams/{first['streamId']}")).status_code == 204
    async with served(tmp_path) as base_url, api_client(base_url, user.token) as client:
        await _stopped_and_recorded(client, user.id, first["streamId"])


@pytest.mark.usefixtures("short_busy_timeout")
async def test_a_play_still_queued_when_the_process_stops_is_decided_by_the_next_start(tmp_path: Path) -> None:
    """The file is still locked as the process stops, a play queued (answered 202): the in-memory queue keeps it in
    the data dir instead of losing it, and the next start decides it (then the file is gone)."""
    user, request_id = await play_left_undecided(tmp_path)
    keep = tmp_path / QUEUE_KEEP_FILE
    assert [request_from_json(line).request_id for line in keep.read_text().splitlines()] == [request_id]
    async with served(tmp_path) as base_url, api_client(base_url, user.token) as client:
        answer = await decided(client, request_id, DEADLINE_S)
        assert (answer["status"], answer["videoId"], answer["deviceId"]) == ("allowed", "1", "tv"), answer
        assert not keep.exists()


@pytest.mark.usefixtures("short_busy_timeout")
async def test_what_an_outage_took_is_kept_by_a_process_stopped_in_it_and_written_back_by_the_next(
    tmp_path: Path,
) -> None:
    """The file is still locked as the process stops after the outage took a stop (the tablet's) and honoured a
    heartbeat (the tv's): both are kept in the data dir, and the next start writes them back before anything
    else: the tablet's stream ended and recorded `stopped`, the tv's still listed. Before, both were lost with the
    process (the tablet's stream came back as playing)."""
    lock = sqlite3.connect(tmp_path / "playgate.sqlite3", isolation_level=None)
    try:
        async with served(tmp_path, PLAYGATE_OUTAGE_POLICY="deny") as base_url:
            user = await _user(base_url, limit=3)
            async with api_client(base_url, user.token) as client:
                tv, tablet = await _playing_on_tv_and_tablet(client)
                lock.execute("BEGIN IMMEDIATE")  # held until the process has stopped
                assert (await client.post(f"/v1/streams/{tv['streamId']}/heartbeat")).status_code == 200
                assert (await client.delete(f"/v1/streams/{tablet['streamId']}")).status_code == 204
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    kept = list(tmp_path.glob(f"{KEEP_PREFIX}*"))
    assert [p.suffix for p in kept] == [".json"], kept
    async with served(tmp_path) as base_url, api_client(base_url, user.token) as client:
        assert list(tmp_path.glob(f"{KEEP_PREFIX}*")) == []  # written back at start
        assert [s["id"] for s in (await client.get("/v1/streams")).json()] == [tv["streamId"]]
        page = (await client.get(f"/v1/users/{user.id}/events")).json()["events"]
        ends = [(e["streamId"], e["outcome"]) for e in page if e["kind"] == "stream_end"]
        assert ends == [(tablet["streamId"], "stopped")], page
