"""One table that turns every error into application/problem+json (RFC 9457)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from playgate.api.schemas import Problem
from playgate.errors import PlayGateError, Unauthorized

log = logging.getLogger("playgate.api")

PROBLEM = "application/problem+json"


Responses = dict[int | str, dict[str, Any]]


def problem_responses(descriptions: Mapping[int, str]) -> Responses:
    """OpenAPI `responses` entries for error statuses, each a problem+json document."""
    schema = Problem.model_json_schema()
    return {
        code: {"description": text, "content": {PROBLEM: {"schema": schema}}} for code, text in descriptions.items()
    }


def problem_fields(status: int, title: str, detail: str, *, type: str = "about:blank", **extra: Any) -> dict[str, Any]:
    """The problem document (RFC 9457): `type`, `title`, `status`, `detail`, and any extra members that are set."""
    body = {"type": type, "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def error_fields(exc: PlayGateError) -> dict[str, Any]:
    """The problem document of a PlayGate error: the HTTP answer's body, and a Socket.IO ack's."""
    return problem_fields(exc.status, exc.title, exc.detail, type=exc.type, **exc.extra)


RATE_LIMITED = problem_responses(
    {429: "Too many play requests from this user (PLAYGATE_USER_RATE, PLAYGATE_USER_BURST); see Retry-After."}
)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body = problem_fields(status, title, detail, **extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "body")


def problem_for(exc: PlayGateError) -> JSONResponse:
    """The problem+json answer to a PlayGate error, with its headers (Retry-After, WWW-Authenticate)."""
    if exc.status >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.detail)
    response = problem(exc.status, exc.title, exc.detail, type=exc.type, **exc.extra)
    response.headers.update(exc.headers)
    return response


async def _playgate_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PlayGateError)
    return problem_for(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(exc.errors())


def _error(found: Mapping[str, Any]) -> dict[str, Any]:
    """One of pydantic's (or FastAPI's) errors as a problem names it. A body that is not JSON is FastAPI's
    `json_invalid` at ("body", offset): the field is the body, and the offset goes into the message."""
    loc, kind = found.get("loc", ()), found.get("type", "")
    if kind == "json_invalid" and len(loc) == 2 and loc[0] == "body" and isinstance(loc[1], int):
        why = str((found.get("ctx") or {}).get("error") or "")
        # json's reasons read on into a place ("Expecting value", "Unterminated string starting at").
        message = f"not valid JSON: {why or 'unreadable'}{'' if why.endswith(' at') else ' at'} character {loc[1]}"
        return {"field": "body", "message": message, "type": kind}
    return {"field": _field(loc), "message": found.get("msg", ""), "type": kind}


def validation_problem(found: Sequence[Mapping[str, Any]]) -> JSONResponse:
    """The 422 problem+json for pydantic's errors (`loc`, `msg`, `type` each): `field` names the first one's field."""
    errors = [_error(e) for e in found]
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return problem(
        422,
        "Unprocessable content",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot parse (not JSON, not UTF-8): a client error about the body.
        return problem(422, "Unprocessable content", f"body: {exc.detail}", field="body")
    titles = {
        404: "Not found",
        405: "Method not allowed",
        413: "Content too large",
        415: "Unsupported media type",
    }
    response = problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        response.headers["Allow"] = _allowed_methods(request) or response.headers.get("Allow", "")
    return response


def _allowed_methods(request: Request) -> str:
    """Every method the request's path answers (RFC 9110 wants them all in a 405's Allow): Starlette names only
    those of the first route that matched the path, and FastAPI makes a route of each method. Each method is tried
    on the app's routes (BaseRoute.matches, FastAPI's included routers as well)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """The client closed the connection before sending its whole body: its fault, not ours (no 5xx, no trace)."""
    assert isinstance(exc, ClientDisconnect)
    log.info("client disconnected before sending the whole body of %s %s", request.method, request.url.path)
    return problem(400, "Bad request", "The client closed the connection before sending the whole body.")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "Something went wrong on our side; it was logged.")


def _document_problems(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """OpenAPI generation that documents every 422 (and each error) as the problem+json it really is."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            problem_schema = Problem.model_json_schema()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    if "422" in responses:
                        responses["422"] = {
                            "description": "A field is missing or wrong; `field` names it.",
                            "content": {PROBLEM: {"schema": problem_schema}},
                        }
                    responses.setdefault(
                        "413",
                        {"description": "The body is too large.", "content": {PROBLEM: {"schema": problem_schema}}},
                    )
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def install(app: FastAPI) -> None:
    """Register the handlers on `app`, and document them in its OpenAPI schema."""
    app.openapi = _document_problems(app)  # type: ignore[method-assign]
    app.add_exception_handler(PlayGateError, _playgate_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


__all__ = [
    "PROBLEM",
    "RATE_LIMITED",
    "Responses",
    "Unauthorized",
    "error_fields",
    "install",
    "problem",
    "problem_fields",
    "problem_for",
    "problem_responses",
    "validation_problem",
]
