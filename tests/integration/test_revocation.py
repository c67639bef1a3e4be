"""Tokens that should die do: a password change, a disable (even once re-enabled) and a deletion end the user's
tokens and close their sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from playgate.catalog.db import create_engine, upgrade
from playgate.catalog.service import Catalog
from tests.support.clients import SocketClient, api_client, connect_socket, new_user, token_for

CLOSE_DEADLINE_S = 10.0


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
