"""The players' hot routes as plain ASGI, in front of FastAPI: the request → decision → stop loop and the media
edge's `auth_request` without the framework's per-request dependency solving, routing and response models.

Each route here is also registered with FastAPI (api/routes/seed.py, v1.py, content.py), which documents it in
/openapi.json and answers whatever this router leaves alone: another method, a path it does not match, a browser's
request (an `Origin` header, so that CORS stays FastAPI's), and a `POST /v1/plays` whose body, `?wait=` or
`Idempotency-Key` is not plainly valid (FastAPI reads the same body again and words the 422). What a caller sees is
the same either way: auth on every call (`PlayGate.principal`), ids checked with the same constraints and answered
with the same problem+json naming the field, the user's rate (429 with Retry-After), and HttpEdge around both
(request id, security headers, metrics by route template). `POST /v1/plays` runs FastAPI's own endpoint function
(v1.create_play) on the body validated by its own model (PlayIn), so the two cannot drift apart.
tests/integration/test_hot_routes.py holds both answers side by side.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools
import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE, STATUS_LINE

from playgate.api.deps import credential
from playgate.api.errors import problem, problem_for, validation_problem
from playgate.api.guard import GuardedHttpProtocol
from playgate.api.middleware import HttpEdge, repeated_parameter
from playgate.api.routes import v1
from playgate.api.schemas import PlayIn, PlayOut
from playgate.domain import ID_PATTERN, MAX_ID_LEN, new_id
from playgate.errors import Invalid, PlayGateError
from playgate.logs import REQUEST_ID_HEADER, request_id_var, sane_request_id
from playgate.media import ContentGate
from playgate.service import PlayGate, Principal
from playgate.values import frozen
from playgate.wire import MAX_STREAM_ID_LEN, Id, StreamId

log = logging.getLogger("playgate.api")

_ID = TypeAdapter(Id)
_STREAM_ID = TypeAdapter(StreamId)
_PLAY_OUT = TypeAdapter(PlayOut)
_JSON = b"application/json"
_ID_CHARS = re.compile(ID_PATTERN)
# What this router takes as plainly valid without asking pydantic; anything else is FastAPI's to answer.
_WAIT = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


@frozen
class Template:
    """The route template a request matched: HttpEdge labels its metrics with `path`, as for FastAPI's routes."""

    path: str


@dataclass(slots=True)
class Call:
    """One request to a hot route: its scope, what it carries that the routes read, and the services."""

    scope: Scope
    gate: PlayGate
    content: Callable[[], ContentGate]
    credentials: tuple[str | None, str | None]  # the Authorization and X-API-Key headers
    query: dict[str, str]
    headers: dict[bytes, str]
    body: bytes = b""

    @property
    def client_address(self) -> str | None:
        """The client's address (after ProxyHeadersMiddleware), as `Request.client.host`."""
        client = self.scope.get("client")
        return client[0] if client else None

    async def caller(self) -> Principal:
        """The authenticated caller (401 without a valid token), as the routes' `Caller` dependency."""
        return await self.gate.principal(credential(*self.credentials), self.query.get("user"))


class Rejected(Exception):
    """Path or query parameters that break their constraints: FastAPI's 422 `errors`, collected."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


class Handoff(Exception):
    """A request this router leaves to FastAPI (raised before anything was done for it)."""


Errors = list[dict[str, Any]]


@dataclass(slots=True)
class Answer:
    """A hot route's answer: its status, JSON body (or none) and extra headers."""

    status: int
    body: bytes | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"application/json"

    @classmethod
    def of(cls, response: Response) -> Answer:
        """The answer a Starlette response (a problem+json one) gives."""
        headers = [h for h in response.raw_headers if h[0] not in (b"content-length", b"content-type")]
        content_type = next((v for k, v in response.raw_headers if k == b"content-type"), _JSON)
        return cls(response.status_code, bytes(response.body), headers, content_type)

    def head(self) -> list[tuple[bytes, bytes]]:
        """Its headers: content length and type (when it has a body), then its own."""
        if self.body is None:
            return self.headers
        return [(b"content-length", b"%d" % len(self.body)), (b"content-type", self.content_type), *self.headers]


def _checked(value: str | None, field: str, adapter: TypeAdapter[str], max_len: int, errors: Errors) -> str:
    """`value` when it meets the id constraints; else its pydantic errors (as FastAPI words them) join `errors`."""
    if value is not None and 0 < len(value) <= max_len and _ID_CHARS.fullmatch(value):
        return value
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        errors.extend({**e, "loc": (field, *e["loc"])} for e in exc.errors())
    return value or ""


def query_of(query_string: bytes) -> dict[str, str]:
    """A query string's parameters, as Starlette's `request.query_params` reads them (parse_qsl, blank values kept,
    the last of a repeated name). Without escapes (`%`, `+`), which a player's `?user=` has none of, split here:
    parse_qsl would undo none, at five times the cost."""
    text = query_string.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    return {name: value for name, _, value in (part.partition("=") for part in text.split("&") if part)}


async def _answer(send: Send, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.head()})
    await send({"type": "http.response.body", "body": answer.body or b""})


Handler = Callable[[Call, tuple[str, ...]], Awaitable[Answer]]


def _acting(gate: PlayGate, caller: Principal, user: str | None) -> str:
    if user is None and caller.user is None:
        raise Invalid("Name the user: ?user=<userId>.", field="user")
    return gate.acting_user(caller, user)


def _user_param(call: Call, errors: list[dict[str, Any]]) -> str | None:
    user = call.query.get("user")
    return None if user is None else _checked(user, "user", _ID, MAX_ID_LEN, errors)


async def _video_and_acting_user(call: Call, params: tuple[str, ...]) -> tuple[str, str]:
    """A seed video route's `videoId` and the user acting (`?user=`, checked against the caller); both named when
    bad, as FastAPI names them."""
    caller = await call.caller()
    errors: list[dict[str, Any]] = []
    video_id = _checked(params[0], "videoId", _ID, MAX_ID_LEN, errors)
    user = _user_param(call, errors)
    if errors:
        raise Rejected(errors)
    return video_id, _acting(call.gate, caller, user)


async def _request_video(call: Call, params: tuple[str, ...]) -> Answer:
    video_id, user_id = await _video_and_acting_user(call, params)
    ticket = await call.gate.request_play(user_id, video_id, client_address=call.client_address)
    request = ticket.request
    body = {
        "message": "Streaming request created.",
        "data": {"status": "pending", "data": {"videoId": request.video_id, "userId": request.user_id}},
        "requestId": request.request_id,
    }
    return Answer(202, orjson.dumps(body))


async def _stop_video(call: Call, params: tuple[str, ...]) -> Answer:
    video_id, user_id = await _video_and_acting_user(call, params)
    await call.gate.stop_streams(user_id, video_id)
    return Answer(204)


async def _stop_all(call: Call, _params: tuple[str, ...]) -> Answer:
    caller = await call.caller()
    errors: list[dict[str, Any]] = []
    user = _user_param(call, errors)
    if errors:
        raise Rejected(errors)
    await call.gate.stop_streams(_acting(call.gate, caller, user))
    return Answer(204)


async def _stop_stream(call: Call, params: tuple[str, ...]) -> Answer:
    caller = await call.caller()
    errors: list[dict[str, Any]] = []
    stream_id = _checked(params[0], "streamId", _STREAM_ID, MAX_STREAM_ID_LEN, errors)
    if errors:
        raise Rejected(errors)
    await call.gate.stop_stream(caller, stream_id)
    return Answer(204)


def _play_in(call: Call) -> PlayIn:
    """The body as FastAPI would hand it to v1.create_play, when it is plainly valid JSON for PlayIn; anything
    else (no or another content type, bad JSON, a field wrong) is FastAPI's to answer and word."""
    content_type = call.headers.get(b"content-type")
    if content_type is None or content_type.partition(";")[0].strip().lower() != "application/json":
        raise Handoff
    try:
        return PlayIn.model_validate(orjson.loads(call.body))
    except (orjson.JSONDecodeError, ValidationError):
        raise Handoff from None


async def _create_play(call: Call, _params: tuple[str, ...]) -> Answer:
    """POST /v1/plays: FastAPI's own endpoint (v1.create_play), called with what its dependencies would give."""
    body = _play_in(call)
    wait = call.query.get("wait")
    key = call.headers.get(b"idempotency-key")
    if (wait is not None and not _WAIT.fullmatch(wait)) or (key is not None and not _IDEMPOTENCY_KEY.fullmatch(key)):
        raise Handoff
    caller = await call.caller()
    response = Response()
    del response.headers["content-length"]
    response.status_code = None  # type: ignore[assignment]  # as FastAPI's: the route's status unless one is set
    out = await v1.create_play(
        body=body,
        response=response,
        gate=call.gate,
        content=call.content(),
        caller=caller,
        client_address=call.client_address,
        wait=float(wait) if wait is not None else 0,
        idempotency_key=key,
        user_agent=call.headers.get(b"user-agent"),
    )
    return Answer(response.status_code or 202, _PLAY_OUT.dump_json(out, by_alias=True), response.raw_headers)


async def _authorize(call: Call, _params: tuple[str, ...]) -> Answer:
    """GET /v1/authorize (nginx's auth_request), as content.authorize answers it."""
    header_token = call.headers.get(b"x-playback-token")
    token = header_token or call.query.get("token")
    stream = await call.content().authorize(call.headers.get(b"x-original-uri"), token)
    headers = [
        (b"x-stream-id", stream.id.encode("latin-1")),
        (b"x-user-id", stream.user_id.encode("latin-1")),
        (b"x-video-id", stream.video_id.encode("latin-1")),
    ]
    return Answer(204, None, headers)


@frozen
class Route:
    """A hot route: its handler, its template, and whether it reads the request's body."""

    handler: Handler
    template: Template
    reads_body: bool = False


def _seed(path: str, handler: Handler) -> tuple[Route, Route]:
    return Route(handler, Template(path)), Route(handler, Template(f"{path}/"))


_REQUEST = _seed("/videos/{videoId}/request", _request_video)
_STOP = _seed("/videos/{videoId}/stop", _stop_video)
_STOP_ALL = _seed("/videos/stop", _stop_all)
_STOP_STREAM = Route(_stop_stream, Template("/v1/streams/{streamId}"))
_CREATE_PLAY = Route(_create_play, Template("/v1/plays"), reads_body=True)
_AUTHORIZE = Route(_authorize, Template("/v1/authorize"))
# Headers the routes read (the first of each, as Starlette's `Headers.get`).
_READ_HEADERS = frozenset((b"content-type", b"idempotency-key", b"user-agent", b"x-playback-token", b"x-original-uri"))
_BROWSER = frozenset((b"origin",))


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
    if n == 3 and parts[1] == "v1":
        if method == "POST" and parts[2] == "plays":
            return _CREATE_PLAY, ()
        if method == "GET" and parts[2] == "authorize":
            return _AUTHORIZE, ()
        return None
    if method == "DELETE" and n == 4 and parts[1] == "v1" and parts[2] == "streams" and parts[3]:
        return _STOP_STREAM, (parts[3],)
    return None


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The request's body, and the messages it came in (to replay for FastAPI)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


Read = tuple[tuple[str | None, str | None], dict[bytes, str]]


def _read_headers(
    raw: Iterable[tuple[bytes, bytes]], refused: frozenset[bytes] = _BROWSER, wanted: frozenset[bytes] = _READ_HEADERS
) -> Read | None:
    """In one pass, the caller's credentials (Authorization, X-API-Key) and the `wanted` headers (the first of
    each; every X-Forwarded-For joined and the last X-Forwarded-Proto, as ProxyHeadersMiddleware reads them); None
    when a `refused` header is there (`Origin`, a browser's request: CORS is FastAPI's, CORSMiddleware), but for a
    `Content-Length: 0`."""
    authorization = api_key = None
    headers: dict[bytes, str] = {}
    for name, value in raw:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
        elif name in refused:
            if name != b"content-length" or value != b"0":
                return None
        elif name in wanted:
            text = value.decode("latin-1")
            if name not in headers or name == b"x-forwarded-proto":
                headers[name] = text
            elif name == b"x-forwarded-for":
                headers[name] = f"{headers[name]}, {text}"
    return (authorization, api_key), headers


def _failure(scope: Scope, exc: Exception) -> Answer:
    """The problem+json answer to what a handler raised, as FastAPI's exception handlers word it."""
    if isinstance(exc, PlayGateError):
        return Answer.of(problem_for(exc))
    if isinstance(exc, Rejected):
        return Answer.of(validation_problem(exc.errors))
    log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
    return Answer.of(problem(500, "Internal error", "Something went wrong on our side; it was logged."))


class HotRoutes:
    """Answers the hot routes itself; hands every other request (and every non-HTTP scope) to `app`."""

    def __init__(self, app: ASGIApp, gate: Callable[[], PlayGate], content: Callable[[], ContentGate]) -> None:
        self.app = app
        self._gate = gate
        self._content = content

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine of its own, as HttpEdge: what it hands on runs with no frame of ours held.
        found = match(scope["method"], scope["path"]) if scope["type"] == "http" else None
        read = _read_headers(scope["headers"]) if found is not None else None
        if found is None or read is None:
            return self.app(scope, receive, send)
        return self._answer(found, read, scope, receive, send)

    def call(self, scope: Scope, read: Read) -> Call:
        """A request to a hot route, from its scope (`method`, `path`, `query_string`, `client`) and headers."""
        return Call(scope, self._gate(), self._content, read[0], query_of(scope["query_string"]), read[1])

    async def respond(self, route: Route, params: tuple[str, ...], call: Call) -> Answer:
        """The route's answer to `call`: its handler's, or the problem+json of what the handler raised (Handoff
        passes through)."""
        try:
            return await route.handler(call, params)
        except Handoff:
            raise
        except Exception as exc:  # every failure is answered as problem+json, as by FastAPI's handlers
            return _failure(call.scope, exc)

    async def _answer(
        self,
        found: tuple[Route, tuple[str, ...]],
        read: Read,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        route, params = found
        call = self.call(scope, read)
        messages: list[Message] = []
        if route.reads_body:
            call.body, messages = await _read_body(receive)
        try:
            answer = await self.respond(route, params, call)
        except Handoff:

            async def replay() -> Message:
                return messages.pop(0) if messages else await receive()

            await self.app(scope, replay, send)
            return
        scope["route"] = route.template
        await _answer(send, answer)


# A request the protocol leaves to ASGI when it carries one of these: a browser's (CORS), one with a body of no
# announced length (chunked) or one that waits for a 100 Continue; and, to a route that reads no body, one with a body.
_NOT_BELOW_ASGI = frozenset((b"origin", b"transfer-encoding", b"expect"))
_NO_BODY = _NOT_BELOW_ASGI | {b"content-length"}
# What the protocol reads besides the routes' headers: what HttpEdge and ProxyHeadersMiddleware read on ASGI.
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()
_BELOW_ASGI_READS = _READ_HEADERS | {_REQUEST_ID, b"x-forwarded-for", b"x-forwarded-proto", b"content-length"}
_FORWARDED_PROTOS = frozenset(("http", "https", "ws", "wss"))


class Answering:
    """A hot request answered below ASGI, where uvicorn's protocol keeps its request's cycle: its state as uvicorn
    reads and sets it (`response_complete`, `disconnected`, `keep_alive`, set at shutdown); the body read so far,
    and the answer to start once it is whole, for a route that reads one."""

    __slots__ = ("body", "disconnected", "keep_alive", "response_complete", "start")

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.body = bytearray()
        self.start: Callable[[], None] | None = None


class HotHttpProtocol(GuardedHttpProtocol):
    """The HTTP protocol, answering the players' hot routes below ASGI: the route is matched once the headers are
    in, its handler (HotRoutes.respond) runs in a task of its own (once the body is in, for `POST /v1/plays`), and
    its answer is written in one piece, with what HttpEdge adds (request id, security headers, metrics by route
    template). Not a second router: the same match, handlers and answers as HotRoutes on ASGI, without building and
    passing ASGI's messages through two middlewares and uvicorn's request cycle, and one write per answer instead of
    two. A play whose body, `?wait=` or key the handler hands off (Handoff) is answered by the app behind the edge,
    FastAPI, on the same connection, its body replayed (`_through`).

    The client's address and scheme are a trusted proxy's X-Forwarded-For and X-Forwarded-Proto, as
    ProxyHeadersMiddleware reads them for ASGI (with the same trusted proxies, HttpEdge.proxies).

    Anything else goes uvicorn's way, to the ASGI app: another route; a browser's request, a chunked body or one
    waiting for a 100 Continue (_NOT_BELOW_ASGI); a body to a route that reads none, or one over the edge's cap
    (whose 413 is the edge's); a path with escapes; a request pipelined behind one still being answered or on a
    connection whose client is not reading its answers; an app without the hot routes (PLAYGATE_LEAN_ROUTES off)
    or not behind HttpEdge."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """As uvicorn's; and find the hot routes, if the app has them."""
        super().connection_made(transport)
        app = self.app
        self._edge = app if isinstance(app, HttpEdge) else None
        self._hot = app.hot if isinstance(app, HttpEdge) else None

    def on_headers_complete(self) -> None:
        """Answer a hot route here, else hand the request to uvicorn (ASGI)."""
        if not self._answer_below_asgi():
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """A hot route answered here: its body (within the cap its announced length was checked against)."""
        if isinstance(self.cycle, Answering):
            self.cycle.body += body
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        """A hot route answered here whose body is now whole: its answer starts."""
        cycle = self.cycle
        if not isinstance(cycle, Answering):
            super().on_message_complete()
        elif cycle.start is not None:
            start, cycle.start = cycle.start, None
            start()

    def connection_lost(self, exc: Exception | None) -> None:
        """A hot request still being answered is marked disconnected (its answer is not written); then uvicorn's."""
        cycle = self.cycle
        if isinstance(cycle, Answering):
            cycle.disconnected = not cycle.response_complete
            self.cycle = None  # type: ignore[assignment]  # uvicorn's own cycle has nothing to wake here
        super().connection_lost(exc)

    def _answer_below_asgi(self) -> bool:
        edge, hot, cycle = self._edge, self._hot, self.cycle
        if edge is None or hot is None or (cycle is not None and not cycle.response_complete):
            return False
        if self.parser.should_upgrade() or self.limit_concurrency is not None or self.flow.write_paused:
            return False  # a client not reading its answers waits for them the ASGI way (uvicorn's flow control)
        url = httptools.parse_url(self.url)
        path = url.path.decode("latin-1")
        method = self.parser.get_method().decode("latin-1")
        found = match(method, path) if "%" not in path else None
        if found is None or (url.query and repeated_parameter(url.query) is not None):
            return False  # the ASGI way (a repeated parameter: the edge refuses it)
        route = found[0]
        read = _read_headers(self.headers, _NOT_BELOW_ASGI if route.reads_body else _NO_BODY, _BELOW_ASGI_READS)
        if read is None:
            return False
        headers = read[1]
        if route.reads_body and not _length_within(headers.get(b"content-length"), edge.max_bytes):
            return False
        self._disarm_header_timer()
        scope = cast(Scope, self.scope)  # uvicorn types its scopes more narrowly than Starlette
        scope["method"] = method
        scope["path"] = path
        scope["raw_path"] = url.path
        scope["query_string"] = url.query or b""
        self._forwarded(edge, scope, headers)
        answering = Answering(self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive())
        self.cycle = answering  # type: ignore[assignment]  # uvicorn reads the attributes Answering has
        call = hot.call(scope, read)
        incoming = headers.get(_REQUEST_ID)
        request_id = (sane_request_id(incoming) if incoming is not None else None) or new_id()

        def start() -> None:
            task = self.loop.create_task(self._answer(edge, hot, answering, found, call, request_id))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        if route.reads_body:
            answering.start = start  # once the body is in (on_message_complete)
        else:
            start()
        return True

    def _forwarded(self, edge: HttpEdge, scope: Scope, headers: dict[bytes, str]) -> None:
        """From a trusted proxy, the client's address and scheme it forwards, as ProxyHeadersMiddleware sets them."""
        proxies = edge.proxies
        if proxies is None or self.client is None or self.client[0] not in proxies:
            return
        proto = headers.get(b"x-forwarded-proto")
        if proto is not None and (scheme := proto.strip()) in _FORWARDED_PROTOS:
            scope["scheme"] = scheme
        addresses = headers.get(b"x-forwarded-for")
        if addresses is not None:
            host, port = proxies.get_trusted_client_address(addresses)
            if host:
                scope["client"] = (host, port)

    async def _answer(
        self,
        edge: HttpEdge,
        hot: HotRoutes,
        answering: Answering,
        found: tuple[Route, tuple[str, ...]],
        call: Call,
        request_id: str,
    ) -> None:
        started = time.perf_counter()
        request_id_var.set(request_id)  # in this task's own context
        route, params = found
        status = 500
        observed = False
        if route.reads_body:
            call.body = bytes(answering.body)
        try:
            try:
                answer = await hot.respond(route, params, call)
                head = [*answer.head(), *edge.headers(request_id, call.scope["path"])]
            except Handoff:  # FastAPI's to answer (and the edge's to count): through the app, on this connection
                observed = True
                answer, head = await _through(edge, call.scope, call.body)
            status = answer.status
            if not answering.disconnected and not self.transport.is_closing():
                self.transport.write(self._response(answer, head, answering))
        except Exception:
            # Not an answer's failure (those are answers): it could not be written. The connection ends, as uvicorn
            # ends one whose app failed after starting its answer.
            log.exception("answer to %s %s not written", call.scope["method"], call.scope["path"])
            self.transport.close()
            return
        except BaseException:  # cancelled (a shutdown's last resort): the connection ends
            self.transport.close()
            raise
        finally:
            answering.response_complete = True
            if not observed:
                edge.observe(route.template.path, call.scope["method"], status, time.perf_counter() - started)
        if not answering.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _response(self, answer: Answer, head: list[tuple[bytes, bytes]], answering: Answering) -> bytes:
        """The whole answer on the wire: status line, uvicorn's default headers (date, server), `head` (the answer's
        and the edge's), then the body."""
        parts = [STATUS_LINE[answer.status]]
        for name, value in (*self.server_state.default_headers, *head):
            if HEADER_VALUE_RE.search(value):
                raise ValueError(f"invalid value of the {name!r} header")
            parts += (name, b": ", value, b"\r\n")
        if answer.body is None and answer.status not in (204, 304):
            parts.append(b"content-length: 0\r\n")
        if not answering.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if answer.body:
            parts.append(answer.body)
        return b"".join(parts)


def _length_within(length: str | None, cap: int) -> bool:
    """The request announces its body's length, and it is within `cap` (else HttpEdge answers 413, on ASGI).
    httptools refuses a request that announces two."""
    return length is not None and length.isdigit() and int(length) <= cap


async def _through(edge: HttpEdge, scope: Scope, body: bytes) -> tuple[Answer, list[tuple[bytes, bytes]]]:
    """A request answered by the app behind the edge (FastAPI, for what HotRoutes hands off), its body replayed:
    the answer, and its headers as the app gave them (the edge's among them)."""
    sent: list[Message] = []
    replayed = False

    async def receive() -> Message:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}  # as uvicorn's cycle says once the answer is complete
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await edge(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    head = [(name.lower(), value) for name, value in start.get("headers", ())]
    if not any(name == b"content-length" for name, _ in head) and start["status"] not in (204, 304):
        head.append((b"content-length", b"%d" % len(content)))
    return Answer(start["status"], content, []), head
