"""`playgate bench floor`: the outside generator's loop served with nothing but the wire.

The playgate dialect of `../shared/bench` (and `playgate bench load`) asks `GET /videos/{id}/request?user=` with a
bearer token, waits for the decision on its Socket.IO v4 socket and asks `GET /videos/{id}/stop?user=`. This server
answers that loop on uvloop and httptools with a WebSocket and Engine.IO written out by hand, an in-memory count per
user, and nothing else: no ledger, no signature check (a token's user is read from its payload), no audit, no
framework. It is not a service (it keeps nothing and checks nothing); it is the floor of Python on this stack for
that loop, the figure PlayGate's own cost per decision is read against (README, Performance).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import json
import logging
from typing import cast

import httptools

log = logging.getLogger("playgate.bench.floor")

# RFC 6455's key suffix for Sec-WebSocket-Accept.
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PING_INTERVAL_S = 25.0
_OPEN = b'0{"sid":"f%%d","upgrades":[],"pingInterval":%d,"pingTimeout":20000,"maxPayload":1000000}' % int(
    PING_INTERVAL_S * 1000
)
_REASONS = {200: b"OK", 202: b"Accepted", 204: b"No Content", 400: b"Bad Request", 404: b"Not Found"}
VIDEO_IDS = tuple(str(n) for n in range(1, 7))
LIMIT = 3


def text_frame(payload: bytes) -> bytes:
    """One unmasked WebSocket text frame (server to client)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


def token_user(token: str) -> str | None:
    """The `sub` of a JWT's payload, unverified (the floor checks nothing)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


class Floor:
    """The state: each user's streams (video ids) and sockets."""

    def __init__(self) -> None:
        self.streams: dict[str, list[str]] = {}
        self.sockets: dict[str, list[FloorProtocol]] = {}
        self.users: dict[str, str | None] = {}  # token -> its user, read once
        self.ids = itertools.count(1)

    def user_of(self, authorization: bytes) -> str | None:
        token = authorization[7:].decode("latin-1") if authorization[:7].lower() == b"bearer " else ""
        if token not in self.users:
            self.users[token] = token_user(token)
        return self.users[token]

    def request(self, user: str, video: str) -> None:
        mine = self.streams.setdefault(user, [])
        status = "allowed" if len(mine) < LIMIT else "denied"
        stream_id = None
        if status == "allowed":
            mine.append(video)
            stream_id = f"s{next(self.ids)}"
        body = {"status": status, "data": {"videoId": video, "userId": user}, "streamId": stream_id}
        frame = text_frame(b'42["message",' + json.dumps(body).encode() + b"]")
        for socket in self.sockets.get(user, ()):
            socket.send(frame)

    def stop(self, user: str, video: str | None) -> None:
        mine = self.streams.get(user, [])
        if video is None:
            mine.clear()
        elif video in mine:
            mine.remove(video)

    def ping(self) -> None:
        frame = text_frame(b"2")
        for sockets in self.sockets.values():
            for socket in sockets:
                socket.send(frame)


class FloorProtocol(asyncio.Protocol):
    """One connection: HTTP/1.1 keep-alive until a Socket.IO upgrade, then WebSocket frames."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.websocket = False
        self.pending = b""
        self.user: str | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        if self.user is not None and self in self.floor.sockets.get(self.user, ()):
            self.floor.sockets[self.user].remove(self)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.websocket:
            self.pending += data
            self._frames()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # answered in on_message_complete; what follows is WebSocket
        except httptools.HttpParserError:
            self._answer(400, b"")
            self._close()

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_message_complete(self) -> None:
        path = httptools.parse_url(self.url).path
        if path.startswith(b"/socket.io/") and b"sec-websocket-key" in self.headers:
            self._upgrade()
            return
        if path == b"/videos":
            self._answer(200, json.dumps([{"id": v, "title": f"video{v}"} for v in VIDEO_IDS]).encode())
            return
        parts = path.decode("latin-1").split("/")  # "", "videos", id, request|stop, or "", "videos", "stop"
        user = self.floor.user_of(self.headers.get(b"authorization", b""))
        if user is None or parts[1:2] != ["videos"]:
            self._answer(404, b"")
        elif parts[2:] == ["stop"]:
            self.floor.stop(user, None)
            self._answer(204, b"")
        elif len(parts) == 4 and parts[3] == "request":
            body = {"message": "accepted", "data": {"status": "pending", "data": {"videoId": parts[2], "userId": user}}}
            self._answer(202, json.dumps(body).encode())
            self.floor.request(user, parts[2])
        elif len(parts) == 4 and parts[3] == "stop":
            self.floor.stop(user, parts[2])
            self._answer(204, b"")
        else:
            self._answer(404, b"")

    def _answer(self, status: int, body: bytes) -> None:
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
            status,
            _REASONS[status],
            len(body),
        )
        self.send(head + body)

    def _upgrade(self) -> None:
        accept = base64.b64encode(
            hashlib.sha1(self.headers[b"sec-websocket-key"] + _WS_GUID, usedforsecurity=False).digest()
        )
        self.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.websocket = True
        self.send(text_frame(_OPEN % next(self.floor.ids)))

    def _frames(self) -> None:
        """The client's frames (masked): Socket.IO's connect with its token, pongs, a close."""
        data = self.pending
        while len(data) >= 2:
            opcode, size, start = data[0] & 0x0F, data[1] & 0x7F, 2
            if size == 126:
                size, start = int.from_bytes(data[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(data[2:10], "big"), 10
            if len(data) < start + 4 + size:
                break
            mask = data[start : start + 4]
            masked = data[start + 4 : start + 4 + size]
            payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(masked))
            data = data[start + 4 + size :]
            if opcode == 0x8:
                self._close()
                return
            self._packet(payload)
        self.pending = data

    def _packet(self, payload: bytes) -> None:
        if payload.startswith(b"40") and self.user is None:
            try:
                auth = json.loads(payload[2:] or b"{}")
            except ValueError:
                auth = {}
            token = auth.get("token") if isinstance(auth, dict) else None
            self.user = token_user(token) if isinstance(token, str) else None
            if self.user is None:
                self.send(text_frame(b'44{"message":"a token is required"}'))
                return
            self.floor.sockets.setdefault(self.user, []).append(self)
            self.send(text_frame(b'40{"sid":"n%d"}' % next(self.floor.ids)))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, *, ready: asyncio.Event | None = None) -> None:
    """Serve the floor until cancelled."""
    floor = Floor()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(floor), host, port)
    log.info("floor server on %s:%d", host, port)
    if ready is not None:
        ready.set()
    async with server:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            floor.ping()
