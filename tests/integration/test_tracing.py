"""PLAYGATE_TRACING=otlp for real: a `playgate serve` process sends its spans over OTLP/HTTP to a collector's
receiving end (tests/support/collector.py); a play's HTTP span continues the caller's `traceparent`, and the
decision's span is its child, whichever route asked; the decision's log line names the trace. The distributed
deployment's version, with the decision's span from a worker process: tests/distributed/test_tracing.py."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest_asyncio

from playgate.tracing import DECIDE_SPAN
from tests.support.clients import admin_client, api_client, new_user
from tests.support.collector import Collector, Span
from tests.support.servers import start_playgate


def tracing_env(collector: Collector) -> dict[str, str]:
    """The settings of a traced process: spans to `collector`, sent every 100 ms (not 5 s)."""
    return {
        "PLAYGATE_TRACING": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@dataclass(frozen=True)
class Traced:
    """A play's two spans: the API's HTTP span and the worker's decision span."""

    http: Span
    decide: Span


async def traced_play(collector: Collector, client: httpx.AsyncClient, method: str, url: str, **kw: object) -> Traced:
    """Call a play route inside a trace of the caller's own, and return the spans PlayGate added to it: the HTTP
    span a child of the caller's, the decision's span a child of the HTTP span."""
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{caller}-01"}
    response = await client.request(method, url, headers=headers, **kw)  # type: ignore[arg-type]
    assert response.status_code in (200, 202), response.text
    spans = await collector.wait_for(2, trace_id=trace_id)
    [http] = [s for s in spans if s.kind == "SPAN_KIND_SERVER"]
    [decide] = [s for s in spans if s.name == DECIDE_SPAN]
    assert http.parent_id == caller, spans
    assert decide.parent_id == http.span_id, spans
    assert decide.kind == "SPAN_KIND_CONSUMER"
    assert decide.attributes["playgate.request_id"] == http.attributes["playgate.request_id"]
    assert http.start_ns <= decide.start_ns <= decide.end_ns
    return Traced(http, decide)


def status_of(span: Span) -> int:
    """The HTTP status on a server span (the attribute's name depends on OTEL_SEMCONV_STABILITY_OPT_IN)."""
    return int(span.attributes.get("http.response.status_code") or span.attributes["http.status_code"])


def path_of(span: Span) -> str:
    return str(span.attributes.get("url.path") or span.attributes.get("http.target") or "")


@pytest_asyncio.fixture
async def collector() -> AsyncIterator[Collector]:
    started = await Collector().start()
    yield started
    await started.stop()


async def test_a_play_and_its_decision_are_one_trace_with_the_callers(collector: Collector, tmp_path: Path) -> None:
    env = {**tracing_env(collector), "PLAYGATE_LOG_LEVEL": "info", "PLAYGATE_LOG_FORMAT": "json"}
    server = await asyncio.to_thread(start_playgate, tmp_path, **env)
    try:
        admin = await admin_client(server.base_url)
        async with admin:
            user = await new_user(server.base_url, admin, limit=1)
        async with api_client(server.base_url, user.token) as player:
            allowed = await traced_play(collector, player, "POST", "/v1/plays?wait=5", json={"videoId": "1"})
            # The seed route, a hot route: answered by the same router, now on ASGI, and traced as well.
            denied = await traced_play(collector, player, "GET", f"/videos/2/request?user={user.id}")
            untraced = await player.get("/v1/streams")  # no traceparent: a trace of its own
        assert untraced.status_code == 200
    finally:
        assert await asyncio.to_thread(server.stop) == 0, server.log()
    assert (allowed.http.name, status_of(allowed.http)) == ("POST /v1/plays", 200)
    assert allowed.http.attributes["http.route"] == "/v1/plays"
    assert (allowed.decide.attributes["playgate.decision"], allowed.decide.attributes["playgate.user_id"]) == (
        "allowed",
        user.id,
    )
    assert (denied.http.name, status_of(denied.http)) == ("GET /videos/{videoId}/request", 202)
    assert denied.decide.attributes["playgate.decision"] == "denied"
    assert denied.decide.attributes["playgate.reason"] == "limit_reached"
    resource = allowed.decide.resource
    assert (resource["service.name"], resource["playgate.role"]) == ("playgate", "serve")
    [streams] = [s for s in collector.spans if s.name == "GET /v1/streams"]
    assert streams.parent_id == ""
    # Each decision's log line names its trace.
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    logged = {line["request_id"]: line.get("trace_id") for line in lines if line["logger"] == "playgate.decision"}
    for traced in (allowed, denied):
        assert logged[traced.decide.attributes["playgate.request_id"]] == traced.http.trace_id
    # Never traced: the probes (the start-up's wait polled /readyz) and the Socket.IO transport.
    assert not [s for s in collector.spans if path_of(s).startswith(("/readyz", "/healthz", "/socket.io"))]
