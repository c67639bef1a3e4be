"""The app factory: FastAPI for HTTP and python-socketio beside it, one ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import socketio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from playgate import __version__, tracing
from playgate.api import errors
from playgate.api.hot import HotRoutes
from playgate.api.legacy_socketio import EventHandler, LegacySocketIO
from playgate.api.middleware import HttpEdge
from playgate.api.routes import account, admin, auth, content, events, health, seed, v1
from playgate.api.socket import V2_EVENTS, create_server, heartbeat_ack, register
from playgate.bus.hub import HoldingManager, MemberLink
from playgate.bus.local import LeanManager
from playgate.bus.redis import OwnSockets, socket_manager
from playgate.config import Settings, Tracing
from playgate.media.gate import ContentGate
from playgate.metrics import Metrics
from playgate.processes import session_ids
from playgate.runtime import Role, Runtime
from playgate.service import PlayGate

DESCRIPTION = """PlayGate decides whether a user may start one more video stream, and tells the player.

Ask with `POST /v1/plays` (or the seed's `GET /videos/{videoId}/request?user=`); the decision arrives on the
user's Socket.IO connections (`/socket.io`, event `message`), at `GET /v1/plays/{requestId}`, or at once with
`?wait=`. Errors are `application/problem+json`. Authenticate with a bearer token from `POST /auth/token`, the
platform's own access token (RS256, ES256 or EdDSA, checked against its key set when `PLAYGATE_JWKS_URL` or
`PLAYGATE_OIDC_ISSUER` is set), or an API key (`Authorization: Bearer pgk_...` or `X-API-Key`).

The seed's routes (`/users…`, `/videos…`) answer the same with a trailing slash (`/videos/1/request/?user=1`),
without a redirect. `/socket.io` serves Socket.IO v4 clients (Engine.IO 4) and v2 clients (`?EIO=3`) alike.
"""

# The web app, built from web/ by `npm run build` (make run / make test do it); absent in a bare checkout.
SOCKET_PATH = "socket.io"
T = TypeVar("T")
WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"


@dataclass(slots=True)
class _Running:
    """The services the app's lifespan started, as the hot routes and the sockets read them on every request and
    event: a slot, where Starlette's `app.state` (kept for the FastAPI routes) first fails a plain attribute lookup,
    making and dropping an AttributeError each time (about 1% of the play loop's CPU)."""

    started_gate: PlayGate | None = None
    started_content: ContentGate | None = None

    def gate(self) -> PlayGate:
        """The PlayGate service."""
        return _started(self.started_gate)

    def content(self) -> ContentGate:
        """The content gate."""
        return _started(self.started_content)


def _started(service: T | None) -> T:
    """A service the lifespan started; RuntimeError before it has."""
    if service is None:
        raise RuntimeError("PlayGate has not started: the app's lifespan starts it")
    return service


def client_manager(settings: Settings, link: MemberLink | None) -> Any:
    """Socket.IO's client manager: a member's tells the owner which users' rooms it holds (the owner sends it only
    their decisions); Redis's with PLAYGATE_REDIS_URL; else python-socketio's own with a leaner emit (LeanManager)."""
    if link is not None:
        return HoldingManager(link)
    return socket_manager(settings.redis_url) if settings.redis_url is not None else LeanManager()


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    role: Role = Role.serve,
    secret: str | None = None,
    link: MemberLink | None = None,
) -> ASGIApp:
    """The whole PlayGate process as one ASGI app: HTTP routes, Socket.IO, worker and sweeper tasks.

    `secret` is the JWT key preflight resolved, when the caller ran it (the CLI does, to refuse bad settings before
    the server starts); without it the app's start-up runs preflight itself. `link`: a member process's link to the
    owner of its process group (`serve --processes N`).
    """
    metrics = Metrics()
    sio = create_server(socket_origins(settings), client_manager=client_manager(settings, link))
    if link is not None:  # the owner hands a session's requests to the member whose index starts its id
        sio.eio.generate_id = session_ids(link.index, sio.eio.generate_id)

    running = _Running()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(
            settings,
            # Distributed, the fan-out carries every socket message to every API process: each emits to its own.
            emitter=OwnSockets(sio) if settings.redis_url is not None else sio,
            metrics=metrics,
            clock=clock,
            migrate=role is Role.serve,
            role=role,
            secret=secret,
            group=link,
        )
        app.state.gate = running.started_gate = runtime.gate
        app.state.catalog = runtime.catalog
        app.state.content = running.started_content = runtime.content
        # Sockets of users deleted, disabled or with a new password are closed within a sweep interval.
        revocations = asyncio.create_task(
            sockets.watch(sio, gate, settings.sweep_interval_s), name="playgate-socket-revocations"
        )
        try:
            yield
        finally:
            revocations.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await revocations
            await runtime.stop()

    # FastAPI's own spans off: traced (PLAYGATE_TRACING), every HTTP request, FastAPI's or not, has one span, made
    # around the whole app (playgate.tracing), not a second one for FastAPI's routes.
    api = FastAPI(
        title="PlayGate", version=__version__, description=DESCRIPTION, lifespan=lifespan, telemetry={"tracing": False}
    )
    api.state.web_app = False
    if settings.cors_origin_list:
        # Without PLAYGATE_CORS_ORIGINS no CORS headers are sent, so browsers keep to the same origin.
        api.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-Request-Id",
                "X-API-Key",
                "X-Playback-Token",
                # W3C trace context: a browser player traced with OpenTelemetry sends it (PLAYGATE_TRACING)
                "traceparent",
                "tracestate",
            ],
            expose_headers=["Retry-After", "X-Request-Id", "Location"],
            max_age=600,
        )
    errors.install(api)
    # FastAPI tries the routers in this order: the players' routes (seed, v1) first, since they are the busiest.
    for module in (seed, v1, health, auth, content, account, admin, events):
        api.include_router(module.router)
    if (WEB_DIST / "index.html").is_file():
        api.mount("/app", StaticFiles(directory=WEB_DIST, html=True), name="web")
        api.state.web_app = True

    gate, content_gate = running.gate, running.content

    sockets = register(sio, gate, content_gate)
    app: ASGIApp = socketio.ASGIApp(sio, other_asgi_app=api, socketio_path=SOCKET_PATH)
    # Socket.IO v2 clients (`?EIO=3`, e.g. the original service's UI) on the same path.
    # Their heartbeat acks carry a fresh playback URL too, as a v4 socket's do.
    v2_events: dict[str, EventHandler] = {**V2_EVENTS, "heartbeat": partial(heartbeat_ack, content=content_gate)}
    app = LegacySocketIO(app, sio, gate, path=SOCKET_PATH, origins=socket_origins(settings), events=v2_events)
    hot = None
    if settings.lean_routes:
        # The players' request → decision → stop loop and the media edge's auth_request without FastAPI's
        # per-request machinery (api/hot.py); on uvicorn, below ASGI (HotHttpProtocol finds them on the edge).
        app = hot = HotRoutes(app, gate, content_gate)
    # The client address (logins, households) from X-Forwarded-For of trusted proxies only, here in the app so that
    # every server and the in-process tests see the same address.
    # uvicorn types ASGI scopes more narrowly than Starlette; the middleware is plain ASGI.
    proxied = ProxyHeadersMiddleware(app, trusted_hosts=settings.forwarded_allow_ips)  # type: ignore[arg-type]
    traced = settings.tracing is Tracing.otlp
    edge = HttpEdge(
        proxied,  # type: ignore[arg-type]
        max_bytes=settings.max_body_bytes,
        metrics=metrics,
        uncounted=f"/{SOCKET_PATH}/",
        import_bytes=settings.max_import_bytes,
        hot=hot,
        proxies=proxied.trusted_hosts,
        on_route=tracing.route_named if traced else None,
    )
    # Traced, every HTTP request gets its span in OpenTelemetry's middleware, around the edge: the HTTP protocol then
    # finds no edge of its own and hands the hot routes to ASGI too (HotRoutes answers them there).
    return tracing.traced_app(edge) if traced else edge


def socket_origins(settings: Settings) -> str | list[str] | None:
    """The Socket.IO server's allowed origins: same origin only (None) unless PLAYGATE_CORS_ORIGINS names some."""
    origins = settings.cors_origin_list
    if not origins:
        return None
    return "*" if "*" in origins else origins
