"""Traces for an OpenTelemetry collector (PLAYGATE_TRACING=otlp): a span per HTTP request, named by its route
template, and a span per decision, in the trace of the request that asked for it, whichever process decides.

The request's trace context (W3C `traceparent`: the caller's, or the one its HTTP span began) travels with the
PlayRequest through the queue, in process or through Redis, so the worker's `playgate.decide` span is a child of
the API's span. The exporter is OpenTelemetry's own OTLP/HTTP one, set by the standard variables
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, ...); the sampler
by OTEL_TRACES_SAMPLER (default: parent-based, always on); the service by OTEL_SERVICE_NAME (default `playgate`).

Off (the default), nothing of OpenTelemetry is imported and no call here runs on the players' path.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from playgate import __version__
from playgate.domain import Decision, PlayRequest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("playgate.tracing")

# Not traced: the Socket.IO transport (a websocket lives for hours; a polling request is a wait), the probes and the
# metrics scrape (every few seconds, all alike). Regular expressions, searched in the request's URL.
UNTRACED_URLS = r"/socket\.io/,/healthz(\?|$),/readyz(\?|$),/metrics(\?|$)"
DECIDE_SPAN = "playgate.decide"

_lock = threading.Lock()
_provider: TracerProvider | None = None


def start(role: str) -> None:
    """Send this process's spans to the collector (once per process: a second call keeps the first set-up)."""
    global _provider  # one provider a process, as OpenTelemetry's global one
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    with _lock:
        if _provider is not None:
            return
        resource = Resource.create({"service.version": __version__, "playgate.role": role})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "playgate"}))
        provider = TracerProvider(resource=resource)  # its sampler: OTEL_TRACES_SAMPLER, else parent-based on
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
        for handler in logging.getLogger().handlers:
            handler.addFilter(TraceIds())
    log.info("tracing on: spans to %s", traces_url())


class TraceIds(logging.Filter):
    """Puts the current span's `trace_id` and `span_id` on each line logged inside one (an HTTP request's), so that
    a line leads to its trace; a decision's line carries its request's (Worker, decision_fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from opentelemetry import trace

        if "trace_id" not in record.__dict__:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = f"{context.trace_id:032x}"
                record.span_id = f"{context.span_id:016x}"
        return True


def trace_id(traceparent: str) -> str:
    """The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`)."""
    return traceparent[3:35]


def stop() -> None:
    """Send the spans still buffered, then stop sending (a collector that is away is tried once more, for at most
    OTEL_EXPORTER_OTLP_TIMEOUT, 10 s by default)."""
    global _provider  # the process is stopping: a later start (tests in one process) sets up anew
    with _lock:
        provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def traces_url() -> str:
    """Where the exporter sends spans, as it reads OpenTelemetry's variables: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as
    it is, else OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318) with /v1/traces."""
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    return os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces"


def exporter_headers() -> dict[str, str]:
    """The headers the exporter sends (OTEL_EXPORTER_OTLP_TRACES_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS:
    `key=value,...`, percent-encoded)."""
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
    return {unquote(key).strip(): unquote(value).strip() for key, value in pairs}


def traced_app(app: ASGIApp) -> ASGIApp:
    """`app` inside OpenTelemetry's ASGI middleware: a server span per HTTP request (the caller's `traceparent`
    continued), first named by its method alone; `route_named` names it by the route template once it is known."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    def method_only(scope: Scope) -> tuple[str, dict[str, Any]]:
        return str(scope.get("method") or "HTTP"), {}

    async def asgi3(scope: Scope, receive: Receive, send: Send) -> None:
        # The middleware takes an app whose __call__ is not a coroutine function (HttpEdge's) for ASGI 2.
        await app(scope, receive, send)

    middleware: ASGIApp = OpenTelemetryMiddleware(
        asgi3, excluded_urls=UNTRACED_URLS, default_span_details=method_only, exclude_spans=["receive", "send"]
    )
    return middleware


def route_named(route: str, method: str | None) -> None:
    """Name the current HTTP span `METHOD /route/{template}` (bounded names, as the metrics' labels)."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.update_name(f"{method} {route}" if method else route)
        span.set_attribute("http.route", route)


def joined(request_id: str) -> str:
    """Name the play request on the current HTTP span (to find its decision's span), and give the W3C traceparent
    the queued request carries for the worker's span ("" outside a trace)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    trace.get_current_span().set_attribute("playgate.request_id", request_id)
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def decided(request: PlayRequest, decision: Decision, *, ended: int, attempts: int, batch: int, now: float) -> None:
    """A `playgate.decide` span for one decision, in its request's trace: from the instant the API accepted the
    request to now (its wait in the queue included), with the outcome as attributes."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": request.trace})
    span = trace.get_tracer("playgate").start_span(
        DECIDE_SPAN,
        context=context,
        kind=SpanKind.CONSUMER,
        start_time=int(request.accepted_at * 1e9),
        attributes={
            "playgate.request_id": decision.request_id,
            "playgate.user_id": decision.user_id,
            "playgate.video_id": decision.video_id,
            "playgate.device_id": decision.device_id,
            "playgate.decision": decision.status.value,
            "playgate.reason": decision.why or "",
            "playgate.active": decision.active,
            "playgate.limit": decision.limit,
            "playgate.streams_ended": ended,
            "playgate.attempts": attempts,
            "playgate.batch_size": batch,
        },
    )
    span.end(end_time=int(max(now, request.accepted_at) * 1e9))
