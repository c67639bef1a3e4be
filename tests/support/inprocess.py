"""PlayGate served in the test's own process: `create_app` behind httpx.ASGITransport, its lifespan driven here.

The same app as `playgate serve` (routes, service, worker and sweeper tasks, SQLite ledger, in-process bus), with
the same settings as tests/support/servers.py gives a real process, but no process, port or uvicorn: what a test
of rules and routes needs, at a fraction of the cost. Socket.IO, signals, nginx and the like need a real server.
`served_on_uvicorn` is the middle way: the app on uvicorn as `playgate serve` configures it (its HTTP protocol
included), on a port, in the test's own process.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp, Message

from playgate.api.app import create_app
from playgate.cli import server_config
from playgate.config import load_settings
from tests.support.clients import TRANSPORTS, TestUser, admin_client, api_client, new_user
from tests.support.servers import free_port, playgate_env

LIFESPAN_TIMEOUT_S = 30.0


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run `app`'s ASGI lifespan: start-up on entry (its failure raised here), shutdown on exit."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        await outbox.put(message)

    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, receive, send))

    async def step(event: str) -> None:
        await inbox.put({"type": f"lifespan.{event}"})
        answer = await asyncio.wait_for(outbox.get(), LIFESPAN_TIMEOUT_S)
        if answer["type"] != f"lifespan.{event}.complete":
            raise RuntimeError(f"lifespan {event} failed: {answer.get('message', answer)}")

    try:
        await step("startup")
        yield
        await step("shutdown")
    finally:
        await asyncio.wait_for(task, LIFESPAN_TIMEOUT_S)


@asynccontextmanager
async def served(data_dir: Path, *, clock: Callable[[], float] | None = None, **env: str) -> AsyncIterator[str]:
    """Serve PlayGate in this process on `data_dir`; yields a base URL that tests/support/clients.py's clients
    reach through an ASGI transport (no socket). `env` adds PLAYGATE_* settings, as start_playgate takes them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(playgate_env(data_dir, **env))
    app = create_app(settings) if clock is None else create_app(settings, clock=clock)
    base_url = f"http://inprocess-{secrets.token_hex(4)}.test"
    async with lifespan(app):
        TRANSPORTS[base_url] = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        try:
            yield base_url
        finally:
            del TRANSPORTS[base_url]


@asynccontextmanager
async def served_on_uvicorn(data_dir: Path, **env: str) -> AsyncIterator[str]:
    """Serve PlayGate on uvicorn in this process, configured as `playgate serve` does, on a free port of 127.0.0.1;
    yields its base URL (clients reach it over TCP)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(playgate_env(data_dir, PLAYGATE_PORT=str(free_port()), **env))
    # start-up runs the migrations and the worker: LIFESPAN_TIMEOUT_S bounds it
    async with uvicorn_serving(uvicorn.Server(server_config(settings, create_app(settings)))):
        yield f"http://127.0.0.1:{settings.port}"


@asynccontextmanager
async def uvicorn_serving(server: uvicorn.Server, timeout_s: float = LIFESPAN_TIMEOUT_S) -> AsyncIterator[None]:
    """`server` serving in this process while the block runs (RuntimeError if it has not started within
    `timeout_s`), then stopped (within `timeout_s` too)."""
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(int(timeout_s / 0.01)):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout_s)


async def play_left_undecided(data_dir: Path, **env: str) -> tuple[TestUser, str]:
    """Serve on `data_dir` in this process, make a user (limit 1) and, with another connection holding the SQLite
    file's write lock until the process has stopped, ask a play of video 1 on its tv (answered 202): the stop leaves
    it undecided, kept in the data dir (bus.local.QUEUE_KEEP_FILE). Set a short busy timeout first
    (playgate.catalog.db and playgate.ledger.sql's SQLITE_BUSY_TIMEOUT_MS). The user and the request's id."""
    lock = sqlite3.connect(data_dir / "playgate.sqlite3", isolation_level=None)
    try:
        async with served(data_dir, **env) as base_url:
            admin = await admin_client(base_url)
            try:
                user = await new_user(base_url, admin, limit=1)
            finally:
                await admin.aclose()
            async with api_client(base_url, user.token) as client:
                lock.execute("BEGIN IMMEDIATE")  # held until the process has stopped
                asked = await client.post("/v1/plays", params={"wait": 1}, json={"videoId": "1", "deviceId": "tv"})
                assert asked.status_code == 202, asked.text
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    return user, str(asked.json()["requestId"])
