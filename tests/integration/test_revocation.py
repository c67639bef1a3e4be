"""Tokens that should die do: a password change, a disable (even once re-enabled) and a deletion end the user's
tokens and close their sockets, whichever way they come (PATCH, PUT, an import)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import httpx
import pytest

from playgate.api.socket import FULL_CHECK_S, SocketRegistry
from playgate.catalog.bulk import USERS
from playgate.catalog.db import create_engine, upgrade
from playgate.catalog.service import REVOCATIONS_KEPT_S, Catalog
from playgate.errors import NotFound, Unavailable
from playgate.service import PlayGate
from tests.lifecycle.helpers import play
from tests.support.clients import OpenSocket, SocketClient, api_client, connect_socket, new_user, token_for
from tests.support.clock import Clock

CLOSE_DEADLINE_S = 10.0
NDJSON = {"Content-Type": "application/x-ndjson"}


async def _status(base_url: str, token: str) -> int:
    async with api_client(base_url, token) as client:
        return (await client.get("/v1/streams")).status_code


async def _closed(sock: SocketClient) -> bool:
    """True once the server has closed the socket (waits at most CLOSE_DEADLINE_S)."""
    deadline = time.monotonic() + CLOSE_DEADLINE_S
    while sock.sio.connected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return not sock.sio.connected


async def test_a_password_change_ends_the_old_tokens_and_sockets(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    sock = await connect_socket(base_url, token=user.token)
    errors: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    sock.sio.on("error", errors.put)
    try:
        assert await _status(base_url, user.token) == 200
        assert (await admin.patch(f"/v1/users/{user.id}", json={"password": "a-new-password"})).status_code == 200
        assert await _status(base_url, user.token) == 401
        assert await _closed(sock), "the socket opened with the old token stayed open"
        assert (await asyncio.wait_for(errors.get(), 1))["status"] == 401
        fresh = await token_for(base_url, user.name, "a-new-password")
        assert await _status(base_url, fresh) == 200
    finally:
        await sock.close()


async def test_re_enabling_a_user_does_not_revive_the_tokens_of_before(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    sock = await connect_socket(base_url, token=user.token)
    try:
        assert (await admin.patch(f"/v1/users/{user.id}", json={"disabled": True})).status_code == 200
        assert await _closed(sock), "the disabled user's socket stayed open"
        assert (await admin.patch(f"/v1/users/{user.id}", json={"disabled": False})).status_code == 200
        assert await _status(base_url, user.token) == 401
        assert await _status(base_url, await token_for(base_url, user.name, user.password)) == 200
    finally:
        await sock.close()


async def test_a_deleted_users_sockets_are_closed(base_url: str, admin: httpx.AsyncClient) -> None:
    user = await new_user(base_url, admin)
    sock = await connect_socket(base_url, token=user.token)
    try:
        assert (await admin.delete(f"/v1/users/{user.id}")).status_code == 204
        assert await _closed(sock), "the deleted user's socket stayed open"
    finally:
        await sock.close()


async def test_a_new_password_by_put_ends_the_old_tokens_and_the_same_one_keeps_them(
    base_url: str, admin: httpx.AsyncClient, open_socket: OpenSocket
) -> None:
    user = await new_user(base_url, admin)
    sock = await open_socket(base_url, token=user.token)
    again = await admin.put(f"/v1/users/{user.id}", json={"password": user.password})
    assert again.status_code == 200, again.text
    assert await _status(base_url, user.token) == 200  # the same password: nothing changed
    assert (await admin.put(f"/v1/users/{user.id}", json={"password": "a-new-password"})).status_code == 200
    assert await _status(base_url, user.token) == 401
    assert await _closed(sock), "the socket opened with the old token stayed open"
    assert await _status(base_url, await token_for(base_url, user.name, "a-new-password")) == 200


async def test_an_import_that_disables_and_enables_a_user_does_not_revive_the_tokens_of_before(
    base_url: str, admin: httpx.AsyncClient, open_socket: OpenSocket
) -> None:
    user = await new_user(base_url, admin)
    sock = await open_socket(base_url, token=user.token)
    async with api_client(base_url, user.token) as client:
        stream_id = (await play(client, "1", "tv"))["streamId"]
    for disabled in ("true", "false"):
        body = f'{{"id": "{user.id}", "disabled": {disabled}}}\n'
        answer = await admin.post("/v1/users:import", content=body, headers=NDJSON)
        assert answer.status_code == 200, answer.text
        assert answer.json()["updated"] == 1
    # the disable ended the stream at once and said why, as a PATCH does
    assert await sock.next_ended(5.0) == {"streamId": stream_id, "videoId": "1", "reason": "user_disabled"}
    assert await _status(base_url, user.token) == 401
    assert await _closed(sock), "the socket opened before the disable stayed open"
    assert await _status(base_url, await token_for(base_url, user.name, user.password)) == 200


async def test_setting_the_same_admin_password_at_each_start_keeps_the_admins_tokens(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'admin.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    catalog = Catalog(engine, default_limit=3, cache_ttl_s=0, clock=time.time)
    try:
        first = await catalog.ensure_admin("the-password")
        assert (await catalog.ensure_admin("the-password")).token_epoch == first.token_epoch
        assert (await catalog.ensure_admin("another-password")).token_epoch == first.token_epoch + 1
    finally:
        await catalog.close()
        await engine.dispose()


async def test_token_epochs_leave_out_disabled_and_unknown_users_and_read_fresh(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'epochs.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    # a long cache: the epochs must not come from it (the revocation check needs what another process wrote)
    catalog = Catalog(engine, default_limit=3, cache_ttl_s=3600, clock=time.time)
    writer = Catalog(engine, default_limit=3, cache_ttl_s=0, clock=time.time)  # another process's catalogue
    try:
        kept = await catalog.create_user(name="kept", password="a-password-1")
        gone = await catalog.create_user(name="gone", password="a-password-2", disabled=True)
        await catalog.users([kept.id])  # cached now
        assert await catalog.token_epochs([kept.id, gone.id, "nobody", kept.id]) == {kept.id: kept.token_epoch}
        changed = await writer.update_user(kept.id, {"password": "a-new-password"})
        assert changed.token_epoch == kept.token_epoch + 1
        assert await catalog.token_epochs([kept.id]) == {kept.id: changed.token_epoch}
        assert await catalog.token_epochs([]) == {}
    finally:
        await writer.close()
        await catalog.close()
        await engine.dispose()


async def test_revoked_since_names_the_users_whose_tokens_died_and_old_notes_are_pruned(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'notes.sqlite3'}"
    await upgrade(url)
    engine = create_engine(url)
    clock = Clock()
    catalog = Catalog(engine, default_limit=3, cache_ttl_s=0, clock=clock)
    try:
        start = clock.now
        a, b, c, d = [await catalog.create_user(name=n, password="a-password-1") for n in "abcd"]
        await catalog.update_user(a.id, {"limit": 5})  # no token dies
        assert await catalog.revoked_since(start) == set()
        await catalog.update_user(a.id, {"password": "a-new-password"})
        clock.advance(10)
        await catalog.delete_user(c.id)
        with pytest.raises(NotFound):
            await catalog.delete_user("nobody")  # nothing deleted, nothing noted
        clock.advance(10)
        assert (await catalog.upsert(USERS, [(1, {"id": b.id, "disabled": True})])).revoked == [b.id]
        assert await catalog.revoked_since(start) == {a.id, b.id, c.id}
        assert await catalog.revoked_since(start + 15) == {b.id}
        clock.advance(REVOCATIONS_KEPT_S + 1)
        await catalog.update_user(d.id, {"disabled": True})
        assert await catalog.revoked_since(0) == {d.id}  # the notes of an hour ago were pruned by this write
    finally:
        await catalog.close()
        await engine.dispose()


class _Gate:
    """What SocketRegistry asks of PlayGate, answering from a dict of epochs and noting who it was asked about."""

    def __init__(self, epochs: dict[str, int]) -> None:
        self.epochs = epochs
        self.noted: dict[str, float] = {}  # user id -> when their tokens died
        self.asked: list[set[str]] = []
        self.fail = False

    async def token_epochs(self, user_ids: Iterable[str]) -> dict[str, int]:
        if self.fail:
            raise Unavailable("The database does not answer.")
        wanted = set(user_ids)
        self.asked.append(wanted)
        return {u: e for u, e in self.epochs.items() if u in wanted}

    async def revoked_since(self, since: float) -> set[str]:
        return {u for u, at in self.noted.items() if at >= since}


async def test_the_sweep_asks_about_every_user_once_a_minute_and_between_about_those_revoked_lately() -> None:
    clock = Clock()
    gate = _Gate({"u1": 0, "u2": 0, "u3": 0})
    sockets = SocketRegistry(clock)
    for user_id in ("u1", "u2", "u3"):
        sockets.take(user_id, f"sid-{user_id}", 0, cap=0)
    as_gate = cast(PlayGate, gate)
    assert await sockets.revoked(as_gate) == []
    assert gate.asked == [{"u1", "u2", "u3"}]  # the first sweep asks about everyone
    clock.advance(1)
    assert await sockets.revoked(as_gate) == []
    assert len(gate.asked) == 1  # nothing revoked lately: nobody asked about
    gate.epochs["u2"] = 1
    gate.noted.update(u2=clock.now, nobody=clock.now)  # a user with no socket here is not asked about
    clock.advance(1)
    assert await sockets.revoked(as_gate) == ["sid-u2"]
    assert gate.asked[-1] == {"u2"}
    clock.advance(1)
    gate.epochs["u3"] = 1  # a change no note tells of (a clock far off): not seen until the next full check
    assert await sockets.revoked(as_gate) == ["sid-u2"]
    clock.advance(FULL_CHECK_S)
    assert await sockets.revoked(as_gate) == ["sid-u2", "sid-u3"]
    assert gate.asked[-1] == {"u1", "u2", "u3"}
    clock.advance(FULL_CHECK_S)
    gate.fail = True
    with pytest.raises(Unavailable):
        await sockets.revoked(as_gate)
    gate.fail = False
    clock.advance(1)
    await sockets.revoked(as_gate)
    assert gate.asked[-1] == {"u1", "u2", "u3"}  # a full check that failed is made at the next sweep
