"""The players' hot routes as plain ASGI, in front of FastAPI: the request → decision → stop loop without the
framework's per-request dependency solving, routing and response models.

Each route here is also registered with FastAPI (api/routes/seed.py, v1.py), which documents it in /openapi.json
and answers whatever this router leaves alone: another method, a path it does not match, a browser's request (an
`Origin` header, so that CORS stays FastAPI's). What a caller sees is the same either way: auth on every call
(`PlayGate.principal`), ids checked with the same constraints and answered with the same problem+json naming the
field, the user's rate (429 with Retry-After), and HttpEdge around both (request id, security headers, metrics by
route template). tests/integration/test_hot_routes.py holds both answers side by side.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from playgate.api.errors import problem, problem_for, validation_problem
from playgate.api.schemas import MAX_STREAM_ID_LEN, Id, StreamId
from playgate.domain import ID_PATTERN, MAX_ID_LEN
from playgate.errors import Invalid, PlayGateError
from playgate.service import PlayGate, Principal

log = logging.getLogger("playgate.api")

_ID = TypeAdapter(Id)
_STREAM_ID = TypeAdapter(StreamId)
_JSON_HEADERS = (b"content-type", b"application/json")
_ID_CHARS = re.compile(ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Template:
    """The route template a request matched: HttpEdge labels its metrics with `path`, as for FastAPI's routes."""

    path: str


@dataclass(slots=True)
class Call:
    """One request to a hot route: its scope, and what it carries that the routes read."""

    scope: Scope
    token: str | None
    query: dict[str, str]

    @property
    def client_address(self) -> str | None:
        """The client's address (after ProxyHeadersMiddleware), as `Request.client.host`."""
        client = self.scope.get("client")
        return client[0] if client else None


class Rejected(Exception):
    """Path or query parameters that break their constraints: FastAPI's 422 `errors`, collected."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


Errors = list[dict[str, Any]]


def _checked(value: str | None, field: str, adapter: TypeAdapter[str], max_len: int, errors: Errors) -> str:
    """`value` when it meets the id constraints; else its pydantic errors (as FastAPI words them) join `errors`."""
    if value is not None and 0 < len(value) <= max_len and _ID_CHARS.fullmatch(value):
        return value
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        errors.extend({**e, "loc": (field, *e["loc"])} for e in exc.errors())
    return value or ""


def _bearer(authorization: str | None) -> str | None:
    """The credentials of `Authorization: Bearer <token>` (as FastAPI's HTTPBearer reads them), else None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if not scheme or not credentials or scheme.lower() != "bearer":
        return None
    return credentials


async def _answer(send: Send, status: int, body: bytes | None = None) -> None:
    headers = [(b"content-length", str(len(body)).encode()), _JSON_HEADERS] if body is not None else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body or b""})


Handler = Callable[[PlayGate, Call, Principal, tuple[str, ...]], Awaitable[bytes | None]]


def _acting(gate: PlayGate, caller: Principal, user: str | None) -> str:
    if user is None and caller.user is None:
        raise Invalid("Name the user: ?user=<userId>.", field="user")
    return gate.acting_user(caller, user)


def _user_param(call: Call, errors: list[dict[str, Any]]) -> str | None:
    user = call.query.get("user")
    return None if user is None else _checked(user, "user", _ID, MAX_ID_LEN, errors)


async def _request_video(gate: PlayGate, call: Call, caller: Principal, params: tuple[str, ...]) -> bytes | None:
    errors: list[dict[str, Any]] = []
    video_id = _checked(params[0], "videoId", _ID, MAX_ID_LEN, errors)
    user = _user_param(call, errors)
    if errors:
        raise Rejected(errors)
    ticket = await gate.request_play(_acting(gate, caller, user), video_id, client_address=call.client_address)
    request = ticket.request
    return orjson.dumps(
        {
            "message": "Streaming request created.",
            "data": {"status": "pending", "data": {"videoId": request.video_id, "userId": request.user_id}},
            "requestId": request.request_id,
        }
    )


async def _stop_video(gate: PlayGate, call: Call, caller: Principal, params: tuple[str, ...]) -> bytes | None:
    errors: list[dict[str, Any]] = []
    video_id = _checked(params[0], "videoId", _ID, MAX_ID_LEN, errors)
    user = _user_param(call, errors)
    if errors:
        raise Rejected(errors)
    await gate.stop_streams(_acting(gate, caller, user), video_id)
    return None


async def _stop_all(gate: PlayGate, call: Call, caller: Principal, _params: tuple[str, ...]) -> bytes | None:
    errors: list[dict[str, Any]] = []
    user = _user_param(call, errors)
    if errors:
        raise Rejected(errors)
    await gate.stop_streams(_acting(gate, caller, user))
    return None


async def _stop_stream(gate: PlayGate, _call: Call, caller: Principal, params: tuple[str, ...]) -> bytes | None:
    errors: list[dict[str, Any]] = []
    stream_id = _checked(params[0], "streamId", _STREAM_ID, MAX_STREAM_ID_LEN, errors)
    if errors:
        raise Rejected(errors)
    await gate.stop_stream(caller, stream_id)
    return None


@dataclass(frozen=True, slots=True)
class Route:
    """A hot route: its handler, its success status, and its template (with and without the trailing slash)."""

    handler: Handler
    status: int
    template: Template


def _seed(path: str, handler: Handler, status: int) -> tuple[Route, Route]:
    return Route(handler, status, Template(path)), Route(handler, status, Template(f"{path}/"))


_REQUEST = _seed("/videos/{videoId}/request", _request_video, 202)
_STOP = _seed("/videos/{videoId}/stop", _stop_video, 204)
_STOP_ALL = _seed("/videos/stop", _stop_all, 204)
_STOP_STREAM = Route(_stop_stream, 204, Template("/v1/streams/{streamId}"))


def match(method: str, path: str) -> tuple[Route, tuple[str, ...]] | None:
    """The hot route of `method path` and its path parameters; None for every other request (FastAPI's)."""
    parts = path.split("/")
    n = len(parts)
    if method == "GET" and n in (3, 4, 5) and parts[1] == "videos":
        slash = n in (4, 5) and parts[-1] == ""
        if n - slash == 3 and parts[2] == "stop":
            return _STOP_ALL[slash], ()
        if n - slash == 4 and parts[2]:
            seed = _REQUEST if parts[3] == "request" else _STOP if parts[3] == "stop" else None
            if seed is not None:
                return seed[slash], (parts[2],)
        return None
    if method == "DELETE" and n == 4 and parts[1] == "v1" and parts[2] == "streams" and parts[3]:
        return _STOP_STREAM, (parts[3],)
    return None


class HotRoutes:
    """Answers the hot routes itself; hands every other request (and every non-HTTP scope) to `app`."""

    def __init__(self, app: ASGIApp, gate: Callable[[], PlayGate]) -> None:
        self.app = app
        self._gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = match(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        authorization = api_key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                api_key = value.decode("latin-1")
            elif name == b"origin":
                await self.app(scope, receive, send)  # a browser's: CORS is FastAPI's (CORSMiddleware)
                return
        route, params = found
        scope["route"] = route.template
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        call = Call(scope, _bearer(authorization) or api_key, query)
        try:
            gate = self._gate()
            caller = await gate.principal(call.token, query.get("user"))
            body = await route.handler(gate, call, caller, params)
        except PlayGateError as exc:
            await problem_for(exc)(scope, receive, send)
            return
        except Rejected as exc:
            await validation_problem(exc.errors)(scope, receive, send)
            return
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            failed = problem(500, "Internal error", "Something went wrong on our side; it was logged.")
            await failed(scope, receive, send)
            return
        await _answer(send, route.status, body)
