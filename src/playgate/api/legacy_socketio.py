"""Socket.IO v2 clients (Engine.IO protocol 3) beside python-socketio's v4 server, on the same path.

python-engineio 4 dropped Engine.IO 3, and no maintained Python library serves both protocols, so the original
service's clients (socket.io-client 2.x, e.g. its Angular UI) are served here: Engine.IO 3 over polling and
websocket (the `len:packet` payloads, the client pinging, the probe-and-upgrade), and the part of Socket.IO 2 a
listening player needs (the implicit connection to the default namespace, events out, disconnect).

A v2 socket is a participant of python-socketio's client manager like any v4 socket: it connects to the manager
and enters its user's room. Every emit to a room, this process's own or a worker's (carried over Redis pub/sub),
reaches the manager's participants through `_send_eio_packet`; `LegacyAwareServer` hands the packets of v2
sessions to them. Socket.IO event packets are spelled the same in v2 and v4 (`2["message",{...}]`), only the
Engine.IO framing around them differs.

Who a v2 socket is: `?token=` (or, auth disabled, `?user=`); auth disabled and no user named, it is in
EVERY_USER_ROOM and gets every user's events, as the original sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from playgate.api.lean_sockets import LeanEngineIO
from playgate.bus.protocol import EVERY_USER_ROOM, user_room
from playgate.errors import PlayGateError
from playgate.service import PlayGate

log = logging.getLogger("playgate.socket.v2")
# What every socket's client sends, v2 or not (LegacyAwareServer's own checks).
socket_log = logging.getLogger("playgate.socket")

NAMESPACE = "/"
# A client that stops reading is dropped once this many packets wait for it.
MAX_QUEUED_PACKETS = 1000
# Engine.IO 3 packet types (the first character of a packet).
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0", "1", "2", "3", "4", "5", "6"
# Socket.IO 2 packet types (the first character of an Engine.IO message).
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_ACK, SIO_ERROR = "0", "1", "2", "3", "4"

# An event a v2 socket may emit: (the service, the socket's user or None, the event's argument) → its ack.
EventHandler = Callable[[PlayGate, str | None, Any], Awaitable[Any]]
# Socket.IO's reserved event names, which socket.io-client refuses to emit. python-socketio would run the handler of
# the same name for a client that sends one anyway: a `disconnect` sent by a live socket took it out of its user's
# count (PLAYGATE_MAX_SOCKETS_PER_USER) and out of reach of the revocation check, and a `connect` logged a traceback.
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
# The Socket.IO packets a client may send: connect, disconnect, an event, an ack. No event of PlayGate's takes binary
# data, so a binary event or ack is refused as unreadable, with it the attachments python-socketio would wait for.
CLIENT_PACKETS = frozenset({sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT, sio_packet.ACK})


class UnreadablePacket(Exception):
    """What a client sent is no Socket.IO packet PlayGate takes; the message says why."""


class ClientPacket(sio_packet.Packet):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's packet, whose decoding (the server decodes only what its clients send) raises
    UnreadablePacket for what PlayGate does not take: what does not parse, a type a client does not send (binary
    among them), an event that is no `["name", ...]` list. It overrides `decode` alone: the emits, which encode,
    cost what they did."""

    def decode(self, encoded_packet: Any) -> int:
        """The packet's fields from its text; how many binary attachments follow (none are taken)."""
        if not isinstance(encoded_packet, str):
            raise UnreadablePacket("binary data")
        try:
            attachments: int = super().decode(encoded_packet)
        except (ValueError, TypeError, IndexError, KeyError) as exc:  # python-socketio's decoder raises these
            raise UnreadablePacket(f"{type(exc).__name__}: {str(exc)[:80]}") from None
        if self.packet_type not in CLIENT_PACKETS:
            raise UnreadablePacket(f"packet type {str(self.packet_type)[:10]!r}")
        if self.packet_type == sio_packet.EVENT and not (
            isinstance(self.data, list) and self.data and isinstance(self.data[0], str)
        ):
            raise UnreadablePacket("an event is a list that starts with its name")
        return attachments


class LegacyAwareServer(socketio.AsyncServer):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's server, delivering the packets of Engine.IO 3 sessions to them instead of to engineio.

    The manager sends every participant's packet through `_send_eio_packet` (one encoded packet for a room) or
    `_send_packet` (a packet with an ack id); these two hooks are all this class changes of the sending. Of what
    clients send, it closes a client whose packet ClientPacket refuses (_handle_eio_message) and drops Socket.IO's
    reserved events (_handle_event).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, serializer=ClientPacket, **kwargs)
        self.legacy_sessions: dict[str, LegacySession] = {}

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """python-socketio's, but a packet that does not read as Socket.IO (ClientPacket) closes its client, as the
        JavaScript server closes one on a parse error: python-socketio logged a traceback at error level for each
        such packet and kept the socket."""
        try:
            if not data:  # a packet decodes nothing from it, and reads as an event of None
                raise UnreadablePacket("an empty message")
            await super()._handle_eio_message(eio_sid, data)
        except UnreadablePacket as exc:
            socket_log.info("closed socket %s: it sent a packet that is not Socket.IO (%s)", eio_sid, exc)
            socket = self.eio.sockets.get(eio_sid)
            if socket is not None:
                # Not waiting for the close packet to be taken: a polling client takes it with its next GET, while
                # this runs within its POST (engine.io's disconnect, which waits, held the POST until a timeout).
                await socket.close(wait=False, reason=self.eio.reason.SERVER_DISCONNECT)

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        """A client's event, unless it names one of Socket.IO's own (RESERVED_EVENTS): those are dropped, as an
        event with no handler is (no ack)."""
        if isinstance(data, list) and data and data[0] in RESERVED_EVENTS:
            socket_log.debug("dropped the reserved event %r sent by socket %s", data[0], eio_sid)
            return
        await super()._handle_event(eio_sid, namespace, id, data)

    def _engineio_server_class(self) -> type[LeanEngineIO]:
        # Less memory per socket (api/lean_sockets.py).
        return LeanEngineIO

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        session = self.legacy_sessions.get(eio_sid)
        if session is None:
            if not self.eio.write_now(eio_sid, eio_pkt):  # a websocket ready for it, at once (lean_sockets.py)
                await super()._send_eio_packet(eio_sid, eio_pkt)
            return
        encoded = eio_pkt.encode()
        if isinstance(encoded, str):
            session.push(encoded)
        else:
            log.warning("binary packet for Socket.IO v2 session %s not sent", eio_sid)

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if eio_sid not in self.legacy_sessions:
            await super()._send_packet(eio_sid, pkt)
            return
        encoded = pkt.encode()
        for part in encoded if isinstance(encoded, list) else [encoded]:
            await self._send_eio_packet(eio_sid, eio_packet.Packet(eio_packet.MESSAGE, part))


@dataclass(eq=False)
class LegacySession:
    """One Engine.IO 3 connection: packets waiting for the client, and its state."""

    eio_sid: str
    last_seen_at: float
    sid: str | None = None  # the Socket.IO sid in the manager, once connected
    user_id: str | None = None
    upgrading: bool = False  # probed over a websocket: polls answer at once, so that the client can pause
    upgraded: bool = False  # on the websocket
    polling: bool = False  # a GET is waiting
    closed: bool = False
    outbox: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    on_overflow: Callable[[LegacySession], None] | None = None

    def push(self, packet: str) -> None:
        """Queue an encoded Engine.IO packet for the client; past MAX_QUEUED_PACKETS unread, on_overflow."""
        if self.closed:
            return
        self.outbox.append(packet)
        self.ready.set()
        if len(self.outbox) > MAX_QUEUED_PACKETS and self.on_overflow is not None:
            log.warning("Socket.IO v2 session %s: %d packets unread", self.eio_sid, len(self.outbox))
            self.on_overflow(self)

    def take(self) -> list[str]:
        """Every queued packet, oldest first."""
        packets, self.outbox = self.outbox, []
        self.ready.clear()
        return packets


async def _disconnected(receive: Receive) -> None:
    """Return when the HTTP client has gone (its request body, already read, is passed over)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_client_gone(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """An Engine.IO 4 long poll, cancelled if its client goes away first: python-engineio then closes the session
    (a poll cancelled is a transport error to it), as engine.io does, instead of waiting out the ping period."""
    request: Message | None = await receive()  # a GET's (empty) body: the app's to read, then nothing more for it
    gone: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    async def app_receive() -> Message:
        nonlocal request
        if request is not None:
            message, request = request, None
            return message
        return await gone

    poll = asyncio.ensure_future(app(scope, app_receive, send))
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((poll, watch), return_when=asyncio.FIRST_COMPLETED)
        if not poll.done():
            gone.set_result({"type": "http.disconnect"})
            poll.cancel()
    finally:
        watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poll


def utf16_len(text: str) -> int:
    """A string's length as JavaScript counts it (UTF-16 code units): the unit of Engine.IO 3's payload lengths."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def encode_payload(packets: list[str]) -> str:
    """Engine.IO 3's polling payload: each packet as `<length>:<packet>`."""
    return "".join(f"{utf16_len(p)}:{p}" for p in packets)


def decode_payload(body: str) -> list[str]:
    """The packets of an Engine.IO 3 polling payload; ValueError if it is not one."""
    packets: list[str] = []
    at = 0
    while at < len(body):
        colon = body.find(":", at)
        if colon < 0 or not body[at:colon].isdigit():
            raise ValueError("not an Engine.IO 3 payload")
        units, end = int(body[at:colon]), colon + 1
        while units > 0:
            if end >= len(body):
                raise ValueError("truncated Engine.IO 3 payload")
            units -= 2 if ord(body[end]) > 0xFFFF else 1
            end += 1
        packets.append(body[colon + 1 : end])
        at = end
    return packets


def is_engineio3(scope: Scope, path: str) -> bool:
    """Whether an ASGI request is Engine.IO 3 on the Socket.IO path (`?EIO=3`)."""
    if scope["type"] not in ("http", "websocket") or scope["path"].rstrip("/") != path:
        return False
    return b"EIO=3" in scope.get("query_string", b"").split(b"&")


def is_long_poll(scope: Scope, path: str) -> bool:
    """Whether an ASGI request is a polling GET of an open session on the Socket.IO path (`?sid=`)."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["path"].rstrip("/") != path:
        return False
    return any(part.startswith(b"sid=") for part in scope.get("query_string", b"").split(b"&"))


def _query(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}


def _header(scope: Scope, name: bytes) -> str | None:
    value = next((v for k, v in scope["headers"] if k == name), None)
    return value.decode("latin-1") if value is not None else None


class LegacySocketIO:
    """ASGI middleware: Engine.IO 3 requests on the Socket.IO path are served here, everything else by `app`."""

    def __init__(
        self,
        app: ASGIApp,
        sio: LegacyAwareServer,
        gate: Callable[[], PlayGate],
        *,
        path: str,
        origins: str | list[str] | None,
        events: Mapping[str, EventHandler] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.events = dict(events or {})
        self.sio = sio
        self.gate = gate
        self.path = "/" + path.strip("/")
        self.origins = origins
        self.clock = clock
        self.ping_interval_s = float(sio.eio.ping_interval)
        self.ping_timeout_s = float(sio.eio.ping_timeout)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine of its own: an idle engine.io 4 socket's life runs in the app's with no frame of ours held.
        if not is_engineio3(scope, self.path):
            if is_long_poll(scope, self.path):
                return _until_client_gone(self.app, scope, receive, send)
            return self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return self._websocket(scope, receive, send)
        return self._http(scope, receive, send)

    # ---- sessions ---------------------------------------------------------------------------------------

    @property
    def deadline_s(self) -> float:
        """A session that has not pinged for this long is closed."""
        return self.ping_interval_s + self.ping_timeout_s

    async def _open(self, query: dict[str, str], *, upgrades: list[str]) -> LegacySession:
        """A new session: the open packet, then Socket.IO 2's implicit connect to "/" (or its refusal)."""
        session = LegacySession(self.sio.eio.generate_id(), self.clock(), on_overflow=self._close)
        handshake = {
            "sid": session.eio_sid,
            "upgrades": upgrades,
            "pingInterval": round(self.ping_interval_s * 1000),
            "pingTimeout": round(self.ping_timeout_s * 1000),
        }
        session.push(OPEN + orjson.dumps(handshake).decode())
        try:
            principal = await self.gate().principal(query.get("token"), query.get("user"))
        except PlayGateError as exc:
            # As a Socket.IO 2 server refuses a connection: an error packet for "/", then the close.
            session.push(MESSAGE + SIO_ERROR + orjson.dumps(exc.detail).decode())
            self._close(session)
            return session
        manager = self.sio.manager
        if not self.sio.manager_initialized:  # the Redis manager starts listening here, as on a v4 connect
            self.sio.manager_initialized = True
            manager.initialize()
        self.sio.legacy_sessions[session.eio_sid] = session
        session.sid = await manager.connect(session.eio_sid, NAMESPACE)
        session.user_id = principal.user.id if principal.user is not None else None
        room = user_room(session.user_id) if session.user_id is not None else EVERY_USER_ROOM
        await manager.enter_room(session.sid, NAMESPACE, room, eio_sid=session.eio_sid)
        session.push(MESSAGE + SIO_CONNECT)
        self.gate().socket_opened()
        asyncio.get_running_loop().call_later(self.deadline_s, self._check_alive, session)
        return session

    def _check_alive(self, session: LegacySession) -> None:
        """Close a session whose client stopped pinging; else look again when its deadline would fall."""
        if session.closed:
            return
        silent_s = self.clock() - session.last_seen_at
        if silent_s >= self.deadline_s:
            log.info("Socket.IO v2 session %s closed: no ping for %.0f s", session.eio_sid, silent_s)
            self._close(session)
            return
        asyncio.get_running_loop().call_later(self.deadline_s - silent_s, self._check_alive, session)

    def _close(self, session: LegacySession) -> None:
        """Leave the manager, tell the client (the close packet), and wake whoever waits on the session."""
        if session.closed:
            return
        session.closed = True
        session.outbox.append(CLOSE)
        session.ready.set()
        self.sio.legacy_sessions.pop(session.eio_sid, None)
        if session.sid is not None:
            self.sio.manager.basic_disconnect(session.sid, NAMESPACE)
            self.gate().socket_closed()

    async def _received(self, session: LegacySession, packet: str) -> None:
        """Handle one Engine.IO packet from the client."""
        session.last_seen_at = self.clock()
        kind, data = packet[:1], packet[1:]
        if kind == PING:
            session.push(PONG + data)
        elif kind == CLOSE:
            self._close(session)
        elif kind == MESSAGE:
            await self._received_socketio(session, data)
        elif kind not in (UPGRADE, NOOP):
            log.debug("Socket.IO v2 session %s: unknown packet %r", session.eio_sid, packet[:20])

    async def _received_socketio(self, session: LegacySession, data: str) -> None:
        """A Socket.IO 2 packet: an event to its handler; a disconnect closes; a connect to "/" is confirmed, to
        any other refused."""
        kind, rest = data[:1], data[1:]
        if kind == SIO_EVENT:
            await self._event(session, rest)
        elif kind == SIO_DISCONNECT:
            self._close(session)
        elif kind == SIO_CONNECT and rest.strip(",") in ("", NAMESPACE):
            session.push(MESSAGE + SIO_CONNECT)
        elif kind == SIO_CONNECT:
            namespace = rest.split(",", 1)[0].split("?", 1)[0]
            session.push(MESSAGE + SIO_ERROR + namespace + "," + orjson.dumps("Invalid namespace").decode())
        else:
            log.debug("Socket.IO v2 session %s: packet %r ignored", session.eio_sid, data[:20])

    async def _event(self, session: LegacySession, rest: str) -> None:
        """An event on "/" (`[ack id]["name", argument]`): its handler's answer goes back as the ack, if asked."""
        digits = len(rest) - len(rest.lstrip("0123456789"))
        ack_id = rest[:digits]
        try:
            args = orjson.loads(rest[digits:])
        except orjson.JSONDecodeError:
            args = None
        handler = self.events.get(args[0]) if isinstance(args, list) and args and isinstance(args[0], str) else None
        if handler is None:
            log.debug("Socket.IO v2 session %s: event %r ignored", session.eio_sid, rest[:40])
            return
        answer = await handler(self.gate(), session.user_id, args[1] if len(args) > 1 else None)
        if ack_id:
            session.push(MESSAGE + SIO_ACK + ack_id + orjson.dumps([answer]).decode())

    # ---- origins -----------------------------------------------------------------------------------------

    def _origin_allowed(self, scope: Scope) -> bool:
        """No Origin header (not a browser), the same origin, or one of PLAYGATE_CORS_ORIGINS (or "*")."""
        origin = _header(scope, b"origin")
        if origin is None or self.origins == "*":
            return True
        if isinstance(self.origins, list):
            return origin in self.origins
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        return origin == f"{scheme}://{_header(scope, b'host')}"

    def _cors_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = _header(scope, b"origin")
        if origin is None or self.origins is None or not self._origin_allowed(scope):
            return []
        # engine.io-client 3 sends its XHRs with credentials: the origin itself, never "*", must be allowed.
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
        ]

    # ---- polling -----------------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._origin_allowed(scope):
            await self._answer(scope, send, 400, b'{"code":3,"message":"Not an accepted origin."}', json=True)
            return
        method, query = scope["method"], _query(scope)
        if method == "OPTIONS":
            await self._preflight(scope, send)
        elif query.get("transport") != "polling":
            await self._answer(scope, send, 400, b'{"code":0,"message":"Transport unknown"}', json=True)
        elif method == "GET" and "sid" not in query:
            opened = await self._open(query, upgrades=["websocket"])
            await self._answer(scope, send, 200, encode_payload(opened.take()).encode())
        elif (session := self.sio.legacy_sessions.get(query.get("sid", ""))) is None:
            await self._answer(scope, send, 400, b'{"code":1,"message":"Session ID unknown"}', json=True)
        elif method == "GET":
            await self._poll(scope, receive, send, session)
        elif method == "POST":
            await self._post(scope, receive, send, session)
        else:
            await self._answer(scope, send, 400, b'{"code":2,"message":"Bad handshake method"}', json=True)

    async def _poll(self, scope: Scope, receive: Receive, send: Send, session: LegacySession) -> None:
        """A long poll: the queued packets, as soon as there are any (a noop after a ping period without). A poll
        whose client goes away while it waits closes the session, as engine.io does ("poll connection closed
        prematurely"): a dead client holds no task until its deadline, nor the server's graceful shutdown."""
        if session.polling or session.upgraded:
            self._close(session)
            await self._answer(scope, send, 400, b'{"code":3,"message":"Bad request"}', json=True)
            return
        session.polling = True
        try:
            if session.upgrading and not session.outbox:
                session.push(NOOP)
            if not session.outbox and not await self._packets_or_gone(session, receive):
                self._close(session)
                return
            packets = session.take()
        finally:
            session.polling = False
        await self._answer(scope, send, 200, encode_payload(packets).encode())

    async def _packets_or_gone(self, session: LegacySession, receive: Receive) -> bool:
        """Wait for a packet to send (a noop after the deadline): True; False if the client disconnects first."""
        ready = asyncio.ensure_future(session.ready.wait())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait((ready, gone), timeout=self.deadline_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            gone.cancel()
        if gone in done and ready not in done:
            return False
        if not done:
            session.push(NOOP)
        return True

    async def _post(self, scope: Scope, receive: Receive, send: Send, session: LegacySession) -> None:
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        try:
            packets = decode_payload(body.decode())
        except ValueError:  # UnicodeDecodeError too: binary payloads are not taken
            await self._answer(scope, send, 400, b'{"code":3,"message":"Bad request"}', json=True)
            return
        for packet in packets:
            await self._received(session, packet)
        await self._answer(scope, send, 200, b"ok", content_type=b"text/html")

    async def _preflight(self, scope: Scope, send: Send) -> None:
        headers = self._cors_headers(scope)
        if headers:
            requested = _header(scope, b"access-control-request-headers")
            headers.append((b"access-control-allow-methods", b"OPTIONS, GET, POST"))
            if requested:
                headers.append((b"access-control-allow-headers", requested.encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": [*headers, (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        status: int,
        body: bytes,
        *,
        json: bool = False,
        content_type: bytes = b"text/plain; charset=UTF-8",
    ) -> None:
        headers = [
            (b"content-type", b"application/json" if json else content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *self._cors_headers(scope),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # ---- websocket ---------------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        query = _query(scope)
        session = self.sio.legacy_sessions.get(query.get("sid", "")) if "sid" in query else None
        if not self._origin_allowed(scope) or ("sid" in query and (session is None or session.upgraded)):
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        if session is None:
            session = await self._open(query, upgrades=[])
        elif not await self._probe(session, receive, send):
            return
        writer = asyncio.create_task(self._pump(session, send), name=f"socketio-v2-{session.eio_sid}")
        client_left = False
        try:
            while not session.closed:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    client_left = True
                    break
                if message.get("text"):
                    await self._received(session, message["text"])
        finally:
            self._close(session)
            if client_left:
                writer.cancel()  # else it sends what is left (a refusal, the close packet) and closes the socket
            await asyncio.gather(writer, return_exceptions=True)

    async def _probe(self, session: LegacySession, receive: Receive, send: Send) -> bool:
        """The upgrade from polling: `2probe` answered `3probe`, the waiting poll released, then `5`."""
        try:
            return await self._probed(session, receive, send)
        finally:
            session.upgrading = False  # upgraded, or the probe failed and the client goes on polling

    async def _probed(self, session: LegacySession, receive: Receive, send: Send) -> bool:
        while not session.closed:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return False
            text = message.get("text") or ""
            session.last_seen_at = self.clock()
            if text == PING + "probe":
                await send({"type": "websocket.send", "text": PONG + "probe"})
                session.upgrading = True  # the client waits for its pending poll to end before it upgrades
                session.push(NOOP)
            elif text == UPGRADE:
                session.upgraded = True
                return True
        return False

    async def _pump(self, session: LegacySession, send: Send) -> None:
        """Send queued packets as frames, one packet each, until the session closes (then close the socket)."""
        while True:
            await session.ready.wait()
            for packet in session.take():
                message: Message = {"type": "websocket.send", "text": packet}
                await send(message)
            if session.closed:
                await send({"type": "websocket.close", "code": 1000})
                return
