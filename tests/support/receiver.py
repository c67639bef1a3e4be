"""A real webhook receiver for tests: an aiohttp server on 127.0.0.1 that verifies each delivery's Standard
Webhooks signature (the reference library) and keeps what it was sent; it can be stopped and started again on
the same port."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from playgate.webhooks import PLAY_DENIED, STREAM_ENDED, STREAM_STARTED, Dispatcher
from tests.support.clients import api_client
from tests.support.servers import free_port


@dataclass
class Received:
    """One delivery as the receiver saw it."""

    msg_id: str
    type: str
    user_id: str
    body: dict[str, Any]


@dataclass
class Receiver:
    """Listens on 127.0.0.1:<port>/hooks while started; `received` in arrival order (those answered 204), `bad`
    the deliveries whose signature did not verify."""

    secret: str
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    failing: bool = False  # answer 500 (after verifying) instead of 204
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The endpoint to configure."""
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.bad.append(str(exc))
            return web.Response(status=400)
        if self.failing:
            return web.Response(status=500)
        payload = json.loads(body)
        self.received.append(
            Received(request.headers["webhook-id"], payload["type"], payload["data"]["userId"], payload)
        )
        return web.Response(status=204)

    async def start(self) -> None:
        """Listen (again) on the same port."""
        app = web.Application()
        app.router.add_post("/hooks", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        """Stop listening: deliveries meanwhile find the port closed."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Received]:
        """The deliveries, once at least `count` arrived (AssertionError after timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} webhooks arrived in {timeout_s}s")
            await asyncio.sleep(0.05)
        return list(self.received)


async def play_deny_stop(base_url: str, token: str, *, wait_s: float = 10) -> list[tuple[str, str]]:
    """A user's allowed play, a denied one (limit 1), then a stop: the (type, webhook-id) each should send."""
    async with api_client(base_url, token) as client:
        allowed = (await client.post("/v1/plays", params={"wait": wait_s}, json={"videoId": "1"})).json()
        denied = (await client.post("/v1/plays", params={"wait": wait_s}, json={"videoId": "2"})).json()
        assert (allowed["status"], denied["status"]) == ("allowed", "denied")
        assert (await client.delete("/v1/streams")).status_code == 204
    return [
        (STREAM_STARTED, f"msg_{allowed['requestId']}"),
        (PLAY_DENIED, f"msg_{denied['requestId']}"),
        (STREAM_ENDED, f"msg_end_{allowed['streamId']}"),
    ]


def dispatcher_to(receiver: Receiver, engine: AsyncEngine, clock: Callable[[], float], **settings: Any) -> Dispatcher:
    """A Dispatcher of the outbox in `engine` to `receiver` alone, sending each event at once (no settle time),
    with `settings` (backoff, give-up, retention, horizon) over short defaults."""
    options: dict[str, Any] = {
        "first_backoff_s": 1,
        "max_backoff_s": 1,
        "give_up_s": 60,
        "timeout_s": 5,
        "poll_s": 1,
        "settle_s": 0,
        "retention_s": 3600,
        **settings,
    }
    return Dispatcher(engine, endpoints=[receiver.url], secrets=[receiver.secret], clock=clock, **options)
