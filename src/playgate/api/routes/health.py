"""Liveness, readiness, metrics and the root."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from playgate import __version__
from playgate.api.deps import GateDep
from playgate.api.schemas import Status

router = APIRouter(tags=["health"])


@router.get(
    "/",
    response_model=Status,
    response_model_exclude_none=True,
    summary="Health check",
    description='`{"status":"ok"}` for programs; a browser (Accept: text/html) is sent to the web app.',
)
async def root(request: Request) -> Response | Status:
    """Health for programs; the web app for browsers."""
    if "text/html" in request.headers.get("accept", "") and request.app.state.web_app:
        return RedirectResponse("/app/", status_code=303)
    return await healthz()


@router.get(
    "/healthz",
    response_model=Status,
    response_model_exclude_none=True,
    summary="Liveness: 200 while the process runs",
)
async def healthz() -> Status:
    """200 while the process runs."""
    return Status(status="ok", version=__version__)


@router.get(
    "/readyz",
    response_model=Status,
    response_model_exclude_none=True,
    summary="Readiness: 200 when storage and queue answer, else 503",
    description="200 when catalogue, ledger and queue answer, and also while the ledger's store has been down for "
    "less than PLAYGATE_OUTAGE_GRACE (playing streams are served meanwhile: `outage` says so); else 503.",
    responses={503: {"model": Status, "description": "A backend does not answer (past the outage grace)."}},
)
async def readyz(gate: GateDep) -> Response | Status:
    """200 when catalogue, ledger and queue answer; 503 naming the one that does not."""
    readiness = await gate.ready()
    body = Status(
        status="ok" if readiness.ok else "unavailable",
        version=__version__,
        checks=readiness.checks,
        outage=readiness.outage,
    )
    if readiness.ok:
        return body
    return JSONResponse(body.model_dump(by_alias=True), status_code=503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4."}},
)
async def metrics(gate: GateDep) -> Response:
    """Every metric of this process, in Prometheus text format."""
    body, media_type = await gate.metrics_page()
    return Response(body, media_type=media_type)
