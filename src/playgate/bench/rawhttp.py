"""A small keep-alive HTTP/1.1 client for the load: prebuilt request bytes, httptools' C parser.

aiohttp costs the load generator about 4x the CPU per request (measured against /healthz: ~280 µs of client CPU
per request for aiohttp, ~70 µs for this), and the load must not be what limits the figures.
"""

from __future__ import annotations

import asyncio
from typing import cast
from urllib.parse import urlsplit

import httptools

Answer = tuple[int, bytes]


class _Connection(asyncio.Protocol):
    """One TCP connection carrying one request at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self.alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same interface.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP answer: {exc}"))

    def on_body(self, body: bytes) -> None:
        """httptools callback: a piece of the body."""
        self._body.append(body)

    def on_message_complete(self) -> None:
        """httptools callback: the answer is complete."""
        waiter, self._waiter = self._waiter, None
        body, self._body = b"".join(self._body), []
        if not self._parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection closed ({exc})"))

    def _fail(self, exc: Exception) -> None:
        self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        """Close the connection; it is not reused."""
        self.alive = False
        if self._transport is not None:
            self._transport.close()

    async def send(self, raw: bytes) -> Answer:
        """Write one request and wait for its answer: (status, body)."""
        assert self._transport is not None
        assert self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter


class HttpClient:
    """Requests to one origin over a pool of keep-alive connections (one per request in flight)."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL is needed, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._authority = parts.netloc
        self._timeout_s = timeout_s
        self._idle: list[_Connection] = []

    def build(self, method: str, path: str, token: str) -> bytes:
        """The bytes of a body-less request with a bearer token (build once, send many times)."""
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {self._authority}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def build_raw(self, method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
        """The bytes of a body-less request without a bearer token (a player's media request), with `headers`."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        return f"{method} {path} HTTP/1.1\r\nHost: {self._authority}\r\n{extra}Content-Length: 0\r\n\r\n".encode()

    async def send(self, raw: bytes) -> Answer:
        """Send prebuilt request bytes; (status, body). ConnectionError or TimeoutError when it fails."""
        connection = self._idle.pop() if self._idle else None
        while connection is not None and not connection.alive:  # the server closed it while idle
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = await self._connect()
        try:
            answer = await asyncio.wait_for(connection.send(raw), self._timeout_s)
        except BaseException:
            connection.close()
            raise
        if connection.alive:
            self._idle.append(connection)
        return answer

    async def _connect(self) -> _Connection:
        _transport, connection = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(_Connection, self._host, self._port), self._timeout_s
        )
        return connection

    def close(self) -> None:
        """Close every idle connection."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
