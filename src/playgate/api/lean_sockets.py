"""Less memory per idle Socket.IO websocket, and less work per message: a lean queue, and the engine.io server and
uvicorn protocol that use it.

Memory, measured with tracemalloc around 360 idle sockets (bench/README.md, "Where an idle socket's memory goes"):
each socket held two `asyncio.Queue`s (uvicorn's, engine.io's), and each allocates four deques up front (its items,
getters, putters, and its `join` Event's waiters), about 3 KB a queue; and engine.io kept a task per socket asleep
until its next ping (a task, its coroutine, its sleep future and timer, about 1 KB). And uvicorn's connection kept
wsproto's whole handshake for the websocket's life (the h11 connection that read the upgrade request, the request
and its headers, about 3 KB), where only the frame protocol it opened is used again (`LeanWSProtocol.send`).

Work: engine.io hands every packet to a writer task per socket, through the socket's queue (a wake-up of that
task, a timeout armed and cancelled, ASGI's send). A message for a websocket whose writer is idle (waiting on an
empty queue) is written to the connection at once instead (`LeanQueue.direct`): the same frame, in the same order,
since nothing is queued before it and the writer is not writing. Anything else (pings, which keep the writer's
wait short of its timeout; a socket still upgrading from long-polling; a connection that asked us to stop writing
until it drains) goes the queue's way. A Socket.IO emit takes that direct way in one call
(`LeanEngineIO.write_now`), without engine.io's send on the way, and a text message on a websocket without
extensions is framed here (`text_frame`), not by wsproto.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import engineio
import wsproto.connection
import wsproto.events
from engineio import packet as eio_packet
from engineio.async_drivers.asgi import WebSocket as AsgiWebSocket
from engineio.async_socket import AsyncSocket
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

T = TypeVar("T")
log = logging.getLogger("playgate.socket")
# The first character of an Engine.IO 4 packet a client sends as text: close, ping, pong, message, upgrade, noop.
CLIENT_PACKET_TYPES = frozenset("123456")


class LeanQueue(Generic[T]):
    """An unbounded queue with asyncio.Queue's methods (put, put_nowait, get, get_nowait, task_done, join, qsize,
    empty), holding its items and waiters in lists made on first use: an idle socket's queue costs about 200 bytes
    instead of about 3 KB."""

    __slots__ = ("_all_done", "_getters", "_items", "_unfinished", "direct")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._getters: list[asyncio.Future[T]] | None = None
        self._unfinished = 0
        self._all_done: asyncio.Future[None] | None = None
        # Delivers an item past the queue (True) when the queue is empty and a getter waits: see the module's text.
        self.direct: Callable[[T], bool] | None = None

    def qsize(self) -> int:
        """Items waiting."""
        return len(self._items)

    def empty(self) -> bool:
        """No item waiting."""
        return not self._items

    def put_direct(self, item: T) -> bool:
        """Deliver `item` past the queue (`direct`), which is in order only with nothing queued and a getter
        waiting; True if delivered, else nothing was done."""
        return self.direct is not None and not self._items and self._waiting() and self.direct(item)

    def put_nowait(self, item: T) -> None:
        """Add an item; the first getter still waiting is handed the oldest. With nothing queued and a getter
        waiting, `direct` may deliver it instead."""
        if self.put_direct(item):
            return
        self._items.append(item)
        self._unfinished += 1
        self._hand_over()

    async def put(self, item: T) -> None:
        """Add an item (the queue is unbounded: never waits)."""
        self.put_nowait(item)

    def get_nowait(self) -> T:
        """The oldest item; asyncio.QueueEmpty when there is none."""
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def get(self) -> asyncio.Future[T]:
        """The oldest item, as a future awaited as asyncio.Queue.get is: done at once when an item waits, else handed
        the next item put. A future, not a coroutine: asyncio.wait_for (engine.io's writer waits so) then wraps it in
        no task of its own, and a waiting socket holds no coroutine frame. A getter cancelled before an item came
        (wait_for's timeout) is passed over; one handed an item keeps it (cancelling a done future does nothing, and
        wait_for returns the result of a future done when it times out or is cancelled), so no item is lost."""
        getter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._getters:
            self._getters = [g for g in self._getters if not g.done()]  # those cancelled while they waited
        if self._getters is None:
            self._getters = []
        self._getters.append(getter)
        self._hand_over()
        return getter

    def task_done(self) -> None:
        """One item taken earlier is processed; `join` returns once every item put is."""
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._all_done is not None:
            if not self._all_done.done():
                self._all_done.set_result(None)
            self._all_done = None

    async def join(self) -> None:
        """Wait until every item put has been taken and marked done."""
        if self._unfinished == 0:
            return
        if self._all_done is None:
            self._all_done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._all_done)

    def _waiting(self) -> bool:
        """A getter waits (one not cancelled, nor handed an item it has not taken yet)."""
        return self._getters is not None and any(not getter.done() for getter in self._getters)

    def _hand_over(self) -> None:
        """The oldest items to the oldest getters still waiting, in order."""
        while self._items and self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(self._items.pop(0))


class DirectWebSocket(AsgiWebSocket):  # type: ignore[misc]  # python-engineio is untyped
    """engine.io's ASGI websocket, which lets its socket's messages skip the writer task while it is idle (on
    uvicorn's connection, LeanWSProtocol; on another server, everything goes the queue's way)."""

    def __call__(self, environ: dict[str, Any]) -> Awaitable[Any]:
        """Serve the websocket (engine.io's), its socket's queue writing messages straight to the connection. Not a
        coroutine of its own: engine.io's runs the websocket's whole life, with no frame of ours held (about 0.2 KB
        an idle socket)."""
        socket = getattr(self.handler, "__self__", None)
        connection = getattr(environ.get("asgi.send"), "__self__", None)
        queue = getattr(socket, "queue", None)
        if isinstance(socket, AsyncSocket) and isinstance(queue, LeanQueue) and isinstance(connection, LeanWSProtocol):
            queue.direct = _WriteNow(socket, connection)
        return super().__call__(environ)  # type: ignore[no-any-return]  # python-engineio is untyped

    async def wait(self) -> Any:
        """The next message, as engine.io's; but a text frame that is no Engine.IO packet a client sends (empty, or
        of another type) ends the connection, as its close does (OSError): engine.io decoded it out of its handler
        (an error from the ASGI application, with a traceback) or logged an unknown type as an error, each time."""
        data = await super().wait()
        if isinstance(data, str) and data[:1] not in CLIENT_PACKET_TYPES:
            log.info("closed a websocket: it sent a frame that is not Engine.IO (%r)", data[:20])
            raise OSError("not an Engine.IO packet")
        return data


class _WriteNow:
    """A socket's messages written past its idle writer task; an object of two slots rather than a closure, which
    costs an idle socket about 250 bytes more."""

    __slots__ = ("connection", "socket")

    def __init__(self, socket: AsyncSocket, connection: LeanWSProtocol) -> None:
        self.socket = socket
        self.connection = connection

    def __call__(self, pkt: Any) -> bool:
        """Write a message packet now, if the socket is on this websocket for good (not upgrading from
        long-polling); anything else, or a connection that cannot take it now, goes the queue's way."""
        socket = self.socket
        if pkt is None or pkt.packet_type != eio_packet.MESSAGE or not socket.upgraded or socket.upgrading:
            return False
        return self.connection.send_now(pkt.encode())


class LeanEngineIO(engineio.AsyncServer):  # type: ignore[misc]  # python-engineio is untyped
    """engine.io's server with lean socket queues, whose messages skip an idle writer task (DirectWebSocket), and
    each socket's next ping on a timer of the event loop instead of a task asleep until then (the ping, its timing
    and the timeout check of a silent client are unchanged)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async = {**self._async, "websocket": DirectWebSocket}  # type: ignore[has-type]  # set untyped above

    def create_queue(self, *_args: Any, **_kwargs: Any) -> LeanQueue[Any]:
        """A socket's outgoing packets."""
        return LeanQueue()

    def write_now(self, sid: str, pkt: Any) -> bool:
        """Deliver a packet to socket `sid` past its queue, as `send_packet` would through the queue's `direct`
        (DirectWebSocket): True if written. False, with nothing done, where `send_packet` must take it (no such
        socket, or closed; a client overdue for its pong, whose socket that way closes; anything `direct` leaves
        to the queue)."""
        socket = self.sockets.get(sid)
        if socket is None or socket.closed or not isinstance(socket.queue, LeanQueue):
            return False
        last_ping = socket.last_ping
        if last_ping and time.time() - last_ping > self.ping_timeout:
            return False
        return socket.queue.put_direct(pkt)

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        """engine.io's tasks, but a socket's `_send_ping` (started after each pong) becomes a timer."""
        socket = getattr(target, "__self__", None)
        if isinstance(socket, AsyncSocket) and getattr(target, "__func__", None) is AsyncSocket._send_ping:
            return asyncio.get_running_loop().call_later(self.ping_interval, _ping, socket)
        return super().start_background_task(target, *args, **kwargs)

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """engine.io's events; and when a polling client says it closes, its long-poll GET still waiting is answered
        at once (a NOOP), as the JavaScript engine.io server does, instead of being held until the next ping time
        (25 s): the request ends, and a client that waits for its poll to end before it returns from disconnect
        (python-engineio's) is not kept waiting."""
        if event == "disconnect" and len(args) >= 2 and args[1] == self.reason.CLIENT_DISCONNECT:
            socket = self.sockets.get(args[0])
            if socket is not None and not socket.upgraded:
                socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        return await super()._trigger_event(event, *args, **kwargs)


def _ping(socket: AsyncSocket) -> None:
    """What engine.io's `_send_ping` does once its sleep ends: queue a PING, and note when, for the timeout check."""
    if not socket.closing and not socket.closed:
        socket.last_ping = time.time()
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))


class LeanWSProtocol(WSProtocol):
    """uvicorn's wsproto websocket protocol with a lean queue of ASGI events, and a send that does not wait."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = LeanQueue()  # type: ignore[assignment]

    def send(self, message: Any) -> Coroutine[Any, Any, None]:
        """uvicorn's ASGI send; the one that accepts the websocket also lets go of its handshake (_opened)."""
        sending = super().send(message)
        return sending if self.handshake_complete else self._opened(sending)

    async def _opened(self, sending: Coroutine[Any, Any, None]) -> None:
        """Send (the accept, or a refusal); once the websocket is open, keep only wsproto's frame protocol: its
        `Connection` answers send, receive_data, events and state as the `WSConnection` around it does once open
        (all uvicorn asks of it), and the handshake beside it (the h11 connection that read the upgrade request,
        the request and its headers: about 3 KB) is not used again."""
        await sending
        if isinstance(self.conn, wsproto.WSConnection) and self.conn.connection is not None:
            self.conn = self.conn.connection  # type: ignore[assignment]  # the same calls, see above

    def send_now(self, data: str | bytes) -> bool:
        """Write one message frame, as ASGI's `websocket.send` does, if that needs no wait: the websocket is open
        and the connection is not asking us to hold off (its buffer full); False (nothing written) otherwise. Text
        on a websocket that agreed on no extension is framed here (text_frame, the frame wsproto makes); anything
        else by wsproto (which compresses under permessage-deflate, PLAYGATE_WS_PER_MESSAGE_DEFLATE)."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.response_started
            or self.disconnected
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        if isinstance(data, str) and _extensions(self.conn) == []:
            self.transport.write(text_frame(data))
            return True
        message = wsproto.events.TextMessage(data) if isinstance(data, str) else wsproto.events.BytesMessage(data)
        self.transport.write(self.conn.send(message))
        return True


def _extensions(conn: Any) -> Any:
    """The extensions a wsproto connection agreed on (its frame protocol's: the `Connection` itself, or the one a
    `WSConnection` opened); None where this wsproto keeps them elsewhere, or before the handshake."""
    return getattr(getattr(getattr(conn, "connection", conn), "_proto", None), "extensions", None)


def text_frame(text: str) -> bytes:
    """A server's WebSocket text message in one frame (RFC 6455, 5.2): final, unmasked, no extension bit, as
    wsproto frames one on a connection without extensions."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload
