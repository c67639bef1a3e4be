"""The HTTP server's guards against idle, slow and oversized connections, on uvicorn's httptools protocol.

uvicorn closes an idle keep-alive connection, but not one that never sends a request or sends its headers a byte at
a time, it takes headers of any size, and it accepts connections until the process runs out of file descriptors
(then every request fails). This protocol adds, per connection: a header timeout (408), a cap on the request line
and headers (431), and a cap on the process's open connections (503 to the ones beyond). Each refusal is a short
problem+json answer, then the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from playgate.config import Settings

log = logging.getLogger("playgate.http")

# Room kept for what is not a client connection (database, Redis, log and media files) when the connection cap is
# derived from the open-file limit.
FILE_LIMIT_SHARE = 0.9
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class HeadersTooLarge(httptools.HttpParserError):
    """Raised from a parser callback to stop reading a request whose headers are over the cap."""


def max_connections(settings: Settings) -> int:
    """PLAYGATE_MAX_CONNECTIONS, else 90 % of this process's open-file limit."""
    if settings.max_connections is not None:
        return settings.max_connections
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(1, int(soft * FILE_LIMIT_SHARE))


def refusal(status: int, title: str, detail: str) -> bytes:
    """A complete HTTP/1.1 problem+json answer that closes the connection."""
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\nconnection: close\r\n"
        % (status, _REASONS[status], len(body))
    )
    if status == 503:
        head += b"retry-after: 1\r\n"
    return head + b"\r\n" + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a header size cap and a connection cap."""

    header_timeout_s = 10.0
    max_header_bytes = 16 * 1024
    max_connections = 10_000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection; over the cap it is answered 503 and closed, else its header clock starts."""
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._headers_unclocked = False  # a request began, its headers are not all in, their clock not started
        self._header_bytes = 0
        self._headers_too_large = False
        if len(self.connections) > self.max_connections:
            log.debug("connection refused: %d open", len(self.connections))
            self._refuse(503, "Service unavailable", "This server holds as many connections as it may; try again.")
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the header clock, then let uvicorn clean up."""
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """As uvicorn's; then, when a request began in what was read and its headers are not all in, their clock
        starts. Armed here, not per request: most requests arrive whole, in one read, and need none."""
        super().data_received(data)
        if self._headers_unclocked and not self.transport.is_closing():
            self._arm_header_timer()

    def on_message_begin(self) -> None:
        """A request's first byte: its headers must be complete within header_timeout_s (from this read on)."""
        super().on_message_begin()
        self._header_bytes = 0
        self._disarm_header_timer()  # the wait for the connection's first request, if this is it, is over
        self._headers_unclocked = True

    def on_url(self, url: bytes) -> None:
        """Count the request line against the cap."""
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count each header against the cap."""
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Headers in, in time: the header clock stops (the app's own time is not limited here)."""
        self._disarm_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse; 431 when it was stopped for its headers' size."""
        if self._headers_too_large:
            detail = f"The request line and headers may be at most {self.max_header_bytes} bytes."
            self._refuse(431, "Request header fields too large", detail)
            return
        super().send_400_response(msg)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._headers_too_large = True
            raise HeadersTooLarge("headers over the cap")

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        self._headers_unclocked = False
        timer: asyncio.TimerHandle | None = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        detail = f"The request's headers did not arrive within {self.header_timeout_s:g} s."
        self._refuse(408, "Request timeout", detail)

    def _refuse(self, status: int, title: str, detail: str) -> None:
        self._disarm_header_timer()
        if not self.transport.is_closing():
            self.transport.write(refusal(status, title, detail))
            self.transport.close()


def guarded_protocol(
    settings: Settings, base: type[GuardedHttpProtocol] = GuardedHttpProtocol
) -> type[GuardedHttpProtocol]:
    """The protocol class for uvicorn's `http=` (`base`, or a subclass of it), with this deployment's limits."""
    limits: dict[str, Any] = {
        "header_timeout_s": settings.header_timeout_s,
        "max_header_bytes": settings.max_header_bytes,
        "max_connections": max_connections(settings),
    }
    return type(base.__name__, (base,), limits)
