"""Health and metrics over HTTP for a process that serves no API: `playgate worker` with PLAYGATE_METRICS_PORT.

The worker counts the decisions, their latency and the queue lag; this small server lets Prometheus scrape them
and lets an orchestrator probe the worker like an API process (`/healthz`, `/readyz`). It runs in the worker's
event loop and leaves signal handling to the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from playgate import __version__
from playgate.errors import Unavailable
from playgate.metrics import Metrics
from playgate.service import Readiness

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

ReadyCheck = Callable[[], Awaitable[Readiness]]


def probe_app(metrics: Metrics, ready: ReadyCheck) -> Starlette:
    """/healthz (200 while running), /readyz (200 when every backend answers, else 503) and /metrics."""

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(_request: Request) -> Response:
        readiness = await ready()
        status = "ok" if readiness.ok else "unavailable"
        body = {"status": status, "version": __version__, "checks": readiness.checks, "outage": readiness.outage}
        return JSONResponse(body, status_code=200 if readiness.ok else 503)

    async def scrape(_request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", scrape)],
    )


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside another program's event loop: the program keeps its own signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ProbeServer:
    """Serves probe_app on host:port from start() until stop()."""

    def __init__(self, app: Starlette, *, host: str, port: int, log_level: str) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, lifespan="off", log_config=None, log_level=log_level, access_log=False
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin serving; returns once the port is bound (raises if it could not be)."""
        self._task = asyncio.create_task(self._server.serve(), name="playgate-probes")
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raises why it stopped
                raise Unavailable("the probe server stopped before it started")
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"the probe server did not start within {START_TIMEOUT_S:g} s")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop serving and wait (bounded) for the server to close."""
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.wait_for(self._task, STOP_TIMEOUT_S)
