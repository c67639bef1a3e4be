"""The lean queue behaves as asyncio.Queue for what engine.io and uvicorn use, in less memory; engine.io's pings come
from timers, not a task per socket, and still feed the check that closes a silent socket; messages skip an idle
writer and still arrive in order."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
import uvicorn
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from playgate.api.lean_sockets import LeanEngineIO, LeanQueue, LeanWSProtocol, _extensions, text_frame
from playgate.api.socket import create_server
from tests.support.inprocess import uvicorn_serving
from tests.support.wait import until

QUEUES = [pytest.param(asyncio.Queue, id="asyncio.Queue"), pytest.param(LeanQueue, id="LeanQueue")]


@pytest.mark.parametrize("make", QUEUES)
async def test_items_come_out_in_order_and_a_getter_waits_for_one(make: Any) -> None:
    queue = make()
    assert queue.empty()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    await queue.put("a")
    queue.put_nowait("b")
    assert await asyncio.wait_for(waiting, 5) == "a"
    assert queue.qsize() == 1
    assert queue.get_nowait() == "b"
    assert queue.empty()


@pytest.mark.parametrize("make", QUEUES)
async def test_join_returns_once_every_item_is_done(make: Any) -> None:
    queue = make()
    await asyncio.wait_for(queue.join(), 5)  # nothing put: at once
    queue.put_nowait(1)
    queue.put_nowait(2)
    joined = asyncio.ensure_future(queue.join())
    queue.get_nowait()
    queue.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joined, 5)
    with pytest.raises(ValueError, match="too many"):
        queue.task_done()


@pytest.mark.parametrize("make", QUEUES)
async def test_a_getter_cancelled_after_its_wake_up_loses_no_item(make: Any) -> None:
    """asyncio.Queue passes the item on to the next getter; LeanQueue has handed it to the first already (its
    future is done: the cancel does nothing). Either way every item put comes out once."""
    queue = make()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("x")  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it runs
    queue.put_nowait("y")
    await asyncio.wait_for(second, 5)
    out = [g.result() for g in (first, second) if not g.cancelled()]
    while not queue.empty():
        out.append(queue.get_nowait())
    assert sorted(out) == ["x", "y"]


@pytest.mark.parametrize("make", QUEUES)
async def test_a_getter_cancelled_before_an_item_comes_is_passed_over(make: Any) -> None:
    queue = make()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    queue.put_nowait("x")
    assert await asyncio.wait_for(second, 5) == "x"
    assert first.cancelled()
    assert queue.empty()


async def _waiting_get(queue: Any) -> tuple[asyncio.Future[Any], set[asyncio.Task[Any]]]:
    """A task waiting on `wait_for(queue.get(), 5)`, as engine.io's writer does, and the other tasks started with it
    (other tests' tasks on the shared event loop may come and go meanwhile: they are not counted)."""
    before = asyncio.all_tasks()
    waiting = asyncio.ensure_future(asyncio.wait_for(queue.get(), 5))
    await asyncio.sleep(0)
    return waiting, asyncio.all_tasks() - before - {waiting}


def _wraps_get(started: set[asyncio.Task[Any]]) -> bool:
    """Whether wait_for wrapped the queue's get in a task of its own (as it does asyncio.Queue.get's coroutine)."""
    return any(t.get_coro().__qualname__.endswith("Queue.get") for t in started)


async def test_a_waiting_lean_get_is_a_future_that_wait_for_wraps_in_no_task() -> None:
    plain, started = await _waiting_get(asyncio.Queue())
    assert _wraps_get(started)  # asyncio.Queue.get's coroutine: wrapped in a second task
    plain.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await plain
    queue: LeanQueue[str] = LeanQueue()
    waiting, started = await _waiting_get(queue)
    assert not _wraps_get(started)  # the writer's task alone
    queue.put_nowait("z")
    assert await waiting == "z"
    for _ in range(3):  # timed-out getters do not pile up
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(queue.get(), 0.001)
    assert len(queue._getters or []) <= 1


@pytest.mark.parametrize("make", QUEUES)
async def test_a_get_timed_out_leaves_the_queue_usable(make: Any) -> None:
    # engine.io's writer waits with asyncio.wait_for(queue.get(), ping_interval + ping_timeout)
    queue = make()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(queue.get(), 0.01)
    queue.put_nowait("y")
    assert await asyncio.wait_for(queue.get(), 5) == "y"


def _bytes_per(make: Any, count: int = 200) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held = [make() for _ in range(count)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(held) == count
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / count


def test_an_idle_lean_queue_takes_a_small_part_of_an_asyncio_queue() -> None:
    lean, standard = _bytes_per(LeanQueue), _bytes_per(asyncio.Queue)
    assert lean * 5 < standard, (lean, standard)


async def test_a_sockets_next_ping_is_a_timer_not_a_task() -> None:
    server = LeanEngineIO(async_mode="asgi", ping_interval=0.01)
    socket = AsyncSocket(server, "sid1")
    tasks_before = len(asyncio.all_tasks())
    socket.schedule_ping()  # what engine.io does at connect and after each pong
    assert len(asyncio.all_tasks()) == tasks_before
    sent = await asyncio.wait_for(socket.queue.get(), 5)
    assert sent.packet_type == eio_packet.PING
    assert socket.last_ping is not None  # the timeout check runs from here
    # no pong came: engine.io's check (its service task calls it for every socket) closes the socket
    socket.last_ping = time.time() - server.ping_timeout - 1
    assert await socket.check_ping_timeout() is False
    assert socket.closed


async def test_a_closed_socket_gets_no_ping() -> None:
    server = LeanEngineIO(async_mode="asgi", ping_interval=0.01)
    socket = AsyncSocket(server, "sid2")
    socket.schedule_ping()
    socket.closed = True
    # a timer due after the ping's: the loop runs timers in the order they fall due
    later: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, later.set_result, None)
    await asyncio.wait_for(later, 5)
    assert socket.queue.empty()


async def test_other_background_tasks_still_run_as_tasks() -> None:
    server = LeanEngineIO(async_mode="asgi")

    async def work() -> str:
        return "done"

    task = server.start_background_task(work)
    assert isinstance(task, asyncio.Future)
    assert await task == "done"


async def test_a_polling_clients_close_answers_its_waiting_poll_at_once() -> None:
    """engine.io's own server holds the poll until the next ping (25 s); a client that waits for it to end before
    its disconnect returns (python-engineio's) would wait that long."""
    server = LeanEngineIO(async_mode="asgi")
    socket = AsyncSocket(server, "sid3")
    socket.connected = True
    server.sockets["sid3"] = socket
    poll = asyncio.create_task(socket.poll())
    await asyncio.sleep(0)
    assert not poll.done()
    await socket.receive(eio_packet.Packet(eio_packet.CLOSE))
    answered = await asyncio.wait_for(poll, 1)
    assert [p.packet_type for p in answered] == [eio_packet.NOOP]
    assert socket.closed


# ---- messages past an idle writer ----------------------------------------------------------------------------


async def test_an_item_for_a_waiting_getter_may_be_delivered_past_the_queue() -> None:
    queue: LeanQueue[str] = LeanQueue()
    delivered: list[str] = []

    def direct(item: str) -> bool:
        if item.startswith("msg"):
            delivered.append(item)
            return True
        return False

    queue.direct = direct
    queue.put_nowait("msg 0")  # nobody waits: queued, never past the queue
    assert delivered == []
    assert queue.get_nowait() == "msg 0"
    waiting = queue.get()
    queue.put_nowait("msg 1")  # the getter waits and nothing is queued: delivered, the getter still waits
    assert delivered == ["msg 1"]
    assert not waiting.done()
    assert queue.empty()
    queue.put_nowait("ping")  # one `direct` turns down goes to the getter
    assert waiting.result() == "ping"
    queue.put_nowait("msg 2")  # the getter was handed an item it has not taken: queued behind it, in order
    assert queue.get_nowait() == "msg 2"
    queue.get().cancel()
    queue.put_nowait("msg 3")  # a cancelled getter waits for nothing
    assert queue.get_nowait() == "msg 3"
    assert delivered == ["msg 1"]


async def test_messages_reach_a_websocket_client_in_order_past_the_idle_writer(unused_tcp_port: int) -> None:
    """A real uvicorn with PlayGate's websocket protocol and engine.io server, and a real Socket.IO client: a burst
    of messages, some written at once and some queued for the writer, arrive whole and in order."""
    sio = create_server()
    sockets: list[Any] = []

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, _environ: dict[str, Any]) -> None:
        sockets.append(sio.eio.sockets[sio.manager.eio_sid_from_sid(sid, "/")])

    client = socketio.AsyncClient()
    got: list[int] = []
    done = asyncio.Event()

    @client.on("n")  # type: ignore[misc]
    async def on_n(data: dict[str, Any]) -> None:
        got.append(data["i"])
        if len(got) == COUNT:
            done.set()

    async with _serving(sio, unused_tcp_port, client):
        await until(lambda: bool(sockets), "the server saw no connection")
        assert sockets[0].queue.direct is not None  # the writer can be skipped on this connection
        written_now: list[bool] = []
        write_now = sio.eio.write_now

        def counted(sid: str, pkt: Any) -> bool:
            written_now.append(write_now(sid, pkt))
            return written_now[-1]

        sio.eio.write_now = counted
        for i in range(COUNT):
            if i % 10 == 0:
                # A packet that goes the queue's way wakes the writer: the messages after it queue up behind it
                # until the writer has written them all and waits again.
                await sockets[0].send(eio_packet.Packet(eio_packet.NOOP))
            await sio.emit("n", {"i": i, "pad": "x" * (i % 7) * 300})
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 10)
        assert got == list(range(COUNT))
        assert len(written_now) == COUNT
        assert 0 < sum(written_now) < COUNT  # emits framed and written at once, others behind the queued ones


COUNT = 500


async def test_an_open_websocket_keeps_only_wsprotos_frame_protocol(unused_tcp_port: int) -> None:
    """Once uvicorn has accepted a websocket, its connection holds wsproto's frame protocol alone, not the handshake
    around it (about 3 KB an idle socket), and messages still go both ways and the close still ends it."""
    sio = create_server()
    heard: list[Any] = []
    left: list[str] = []

    @sio.on("hello")  # type: ignore[misc]
    async def hello(sid: str, data: Any) -> None:
        heard.append(data)
        await sio.emit("back", {"got": data}, to=sid)

    @sio.event  # type: ignore[misc]
    async def disconnect(sid: str, *_reason: Any) -> None:
        left.append(sid)

    client = socketio.AsyncClient()
    back: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    client.on("back", lambda data: back.done() or back.set_result(data))
    async with _serving(sio, unused_tcp_port, client) as server:
        websockets = [c for c in server.server_state.connections if isinstance(c, LeanWSProtocol)]
        assert [type(c.conn) for c in websockets] == [Connection]
        await client.emit("hello", "x" * 200)
        assert await asyncio.wait_for(back, 5) == {"got": "x" * 200}
        assert heard == ["x" * 200]
        await client.disconnect()
        await until(lambda: bool(left), "the server did not see the client go")
        await until(lambda: not server.server_state.connections, "the websocket was not closed")


@contextlib.asynccontextmanager
async def _serving(sio: socketio.AsyncServer, port: int, client: socketio.AsyncClient) -> AsyncIterator[uvicorn.Server]:
    """A real uvicorn with PlayGate's websocket protocol serving `sio` on `port`, and `client` connected to it over a
    websocket; on the way out the client leaves (if it has not) and the server stops."""
    config = uvicorn.Config(socketio.ASGIApp(sio), port=port, ws=LeanWSProtocol, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    async with uvicorn_serving(server, timeout_s=10):
        try:
            await client.connect(f"http://127.0.0.1:{port}", transports=["websocket"], wait_timeout=5)
            yield server
        finally:
            await client.disconnect()


def _opened(*, deflate: bool) -> WSConnection:
    """A server websocket after its handshake with a client that offers permessage-deflate; agreed if `deflate`."""
    server = WSConnection(ConnectionType.SERVER)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="localhost", target="/", extensions=[PerMessageDeflate()])))
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection(extensions=[PerMessageDeflate()] if deflate else [])))
    return server


def test_text_is_framed_here_only_on_a_websocket_without_extensions() -> None:
    """The guard of LeanWSProtocol.send_now reads what the installed wsproto agreed on: none, or deflate (whose
    messages wsproto must compress)."""
    assert _extensions(_opened(deflate=False)) == []
    assert [type(e) for e in _extensions(_opened(deflate=True))] == [PerMessageDeflate]
    opened = _opened(deflate=True).connection  # the frame protocol alone, as an open LeanWSProtocol keeps it
    assert [type(e) for e in _extensions(opened)] == [PerMessageDeflate]
    assert _extensions(WSConnection(ConnectionType.SERVER)) is None  # before its handshake


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_frame_written_at_once_is_the_one_wsproto_makes(size: int) -> None:
    """text_frame, for each of the three length encodings, against wsproto's own framing of the same message on a
    server connection without extensions."""
    server = _opened(deflate=False)
    text = "é" * (size // 2) + "x" * (size % 2)  # two bytes a character but the last: `size` bytes of UTF-8
    assert text_frame(text) == server.send(TextMessage(text))
