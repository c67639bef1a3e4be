"""The one ASGI middleware in front of PlayGate's HTTP: request id, body cap, request counts.

One layer, not three: every layer costs each request a call, a closure and a wrapped `send` per message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from playgate.api.errors import problem
from playgate.domain import new_id
from playgate.logs import REQUEST_ID_HEADER, incoming_request_id, request_id_var
from playgate.metrics import Metrics

if TYPE_CHECKING:
    from uvicorn.middleware.proxy_headers import _TrustedHosts as TrustedHosts

    from playgate.api.hot import HotRoutes

_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()
IMPORT_SUFFIX = ":import"
# On every answer: no MIME sniffing, no framing by another site, no URL (tokens ride in playback URLs) sent on
# as a Referer.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
# The web app's pages load their scripts, styles, posters, clips and socket from this origin alone; hls.js feeds
# the <video> through a blob: URL (Media Source Extensions) and may parse in a blob: worker, both made on the page.
WEB_APP_PREFIX = "/app"
WEB_APP_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    b"worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)
_NEWLINE_PATH = problem(404, "Not found", "No route has a path that ends in a newline.")


def repeated_parameter(query_string: bytes) -> str | None:
    """The first name the query string gives more than once, if any. No route takes a list in its query, and
    which of two `userId`s (or `user`s) a request means must not depend on who reads it: a platform's backend
    that checked the first and PlayGate, which would read the last, would act for different users."""
    if b"&" not in query_string:
        return None
    seen: set[str] = set()
    for part in query_string.decode("latin-1").split("&"):
        name = part.partition("=")[0]
        if "%" in name or "+" in name:
            name = unquote_plus(name, encoding="latin-1")
        if name in seen:
            return name
        if name:
            seen.add(name)
    return None


log = logging.getLogger("playgate.http")


class HttpEdge:
    """For each HTTP request: a request id (the caller's X-Request-Id or a new one) set for the logs and echoed
    back; the security headers (and the web app's Content-Security-Policy); 413 problem+json for a body over
    max_bytes, whether its length is announced or not; 404 problem+json for a path that ends in a newline; a count
    and a duration by route template (not raw path, to bound label values) and status, except under `uncounted`
    (the Socket.IO transport's own requests).

    `hot`, the players' hot routes in the app, is there for the HTTP protocol: on uvicorn, it answers them below
    ASGI (api/hot.py's HotHttpProtocol), doing this edge's part itself (`headers`, `observe`) and reading the
    forwarded client address from the proxies the app trusts (`proxies`, ProxyHeadersMiddleware's)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        metrics: Metrics,
        uncounted: str,
        import_bytes: int | None = None,
        hot: HotRoutes | None = None,
        proxies: TrustedHosts | None = None,
        on_route: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.app = app
        # PLAYGATE_TRACING: names the request's span by its route template and method (playgate.tracing).
        self.on_route = on_route
        self.hot = hot
        self.proxies = proxies
        self.max_bytes = max_bytes
        # The bulk import routes (`POST /v1/users:import` ...) take up to 100,000 rows: a cap of their own.
        self.import_bytes = import_bytes or max_bytes
        self.metrics = metrics
        self.uncounted = uncounted

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine of its own: a websocket's whole life runs in the app's, with no frame of ours held (an idle
        # socket's memory: bench/README.md).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return self._http(scope, receive, send)

    @staticmethod
    def headers(request_id: str, path: str) -> list[tuple[bytes, bytes]]:
        """The headers this edge adds to an answer: the security headers (and the web app's CSP), the request id."""
        extra_headers = [*SECURITY_HEADERS, (_REQUEST_ID_HEADER, request_id.encode())]
        if path.startswith(WEB_APP_PREFIX):
            extra_headers.append((b"content-security-policy", WEB_APP_CSP))
        return extra_headers

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = incoming_request_id(scope) or new_id()
        context = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        extra_headers = self.headers(request_id, scope["path"])

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra_headers]
                if self.on_route is not None:  # now: the span ends as the answer's last part is sent
                    self._name_route(scope, self.on_route)
            await send(message)

        try:
            if scope["path"].endswith("\n"):
                # Starlette's route patterns end with `$`, which in Python also matches before a final newline:
                # `GET /videos/%0A` would be answered as `GET /videos/`, the list (found by schemathesis).
                await _NEWLINE_PATH(scope, _no_body, answer)
                return
            repeated = None if scope["path"].startswith(self.uncounted) else repeated_parameter(scope["query_string"])
            if repeated is not None:
                refused = problem(
                    422, "Unprocessable content", f"{repeated}: given more than once; send it once.", field=repeated
                )
                await refused(scope, _no_body, answer)
                return
            cap = self.import_bytes if scope["path"].endswith(IMPORT_SUFFIX) else self.max_bytes
            body = await self._within_cap(scope, receive, cap)
            if body is None:
                too_large = problem(413, "Content too large", f"The body may be at most {cap} bytes.")
                await too_large(scope, _no_body, answer)
            else:
                await self.app(scope, body, answer)
        finally:
            self._observe(scope, status, time.perf_counter() - started)
            request_id_var.reset(context)

    async def _within_cap(self, scope: Scope, receive: Receive, cap: int) -> Receive | None:
        """`receive` to hand on, or None when the body is over the cap (read here when its length is unknown)."""
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            return None if length.isdigit() and int(length) > cap else receive
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return receive  # no route reads a body of these: nothing to cap, and no read on the players' hot path
        # No announced length (chunked): read the body here, within the cap, then replay it.
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > cap:
                return None
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        return replay

    @staticmethod
    def _name_route(scope: Scope, on_route: Callable[[str, str | None], None]) -> None:
        path = getattr(scope.get("route"), "path", None)
        if path is not None:
            on_route(path, scope.get("method"))

    def _observe(self, scope: Scope, status: int, duration_s: float) -> None:
        route: Any = scope.get("route")
        path = getattr(route, "path", None)
        if path is None and scope["path"].startswith(self.uncounted):
            return
        self.observe(path or "unmatched", scope.get("method"), status, duration_s)

    def observe(self, path: str, method: str | None, status: int, duration_s: float) -> None:
        """Count an answered request by its route template and status, and time it (also for the hot routes
        answered below ASGI, api/hot.py's HotHttpProtocol)."""
        self.metrics.labelled(self.metrics.http_requests, path, str(status)).inc()
        self.metrics.labelled(self.metrics.http_duration, path).observe(duration_s)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "http request",
                extra={
                    "method": method,
                    "route": path,
                    "status": status,
                    "duration_ms": round(duration_s * 1000, 3),
                },
            )


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
