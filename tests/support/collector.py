"""A real OpenTelemetry collector's receiving end for tests: an aiohttp server on 127.0.0.1 taking OTLP/HTTP
(`POST /v1/traces`, protobuf, as OpenTelemetry's exporter sends it), decoding each request with OpenTelemetry's own
protobuf classes and keeping the spans."""

from __future__ import annotations

import asyncio
import gzip
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from tests.support.servers import free_port

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Span:
    """One span as received: ids in hex (parent "" for a root), its kind's name, attributes and its resource's."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    start_ns: int
    end_ns: int


@dataclass
class Collector:
    """Listens on 127.0.0.1:<port> while started; `spans` in arrival order."""

    port: int = field(default_factory=free_port)
    spans: list[Span] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for the exporter (it adds /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415)
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(_span(s, resource) for s in scope_spans.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)

    async def wait_for(self, count: int, *, trace_id: str, timeout_s: float = 20.0) -> list[Span]:
        """The spans of `trace_id` once at least `count` have arrived (what came by the deadline otherwise)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [s for s in self.spans if s.trace_id == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)


def _span(span: SpanProto, resource: dict[str, Any]) -> Span:
    return Span(
        name=span.name,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        kind=SpanProto.SpanKind.Name(span.kind),
        attributes=_attributes(span.attributes),
        resource=resource,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)
