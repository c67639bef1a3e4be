"""One load process: holds its share of Socket.IO connections and runs its viewers (closed loop) or its rate.

The parent starts one or more of these (multiprocessing, spawn), waits until every one has connected its
sockets, then sends the common wall-clock instants of the start, the measured window and its end. Latency is
measured inside one process: request sent (perf_counter) to decision received on the socket; in the open loop
it runs from the instant the request was due, so that a late sender cannot hide queueing (coordinated omission).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import orjson
import psutil
import socketio
import uvloop

from playgate.bench.rawhttp import HttpClient
from playgate.bench.stats import CpuWindow, LoopLag
from playgate.bench.target import raise_fd_limit
from playgate.bus.protocol import SocketJson

CONNECT_CONCURRENCY = 64
CONNECT_TIMEOUT_S = 20.0
DECISION_TIMEOUT_S = 10.0
SETTLE_S = 0.5
DISCONNECT_TIMEOUT_S = 20.0
MAX_IN_FLIGHT = 10_000
ERROR_PAUSE_S = 0.01
YIELD_EVERY = 32


@dataclass(frozen=True)
class Viewer:
    """One viewer: the user it acts for, its token, the video it asks for, and the API its socket and its
    requests go to (different APIs when there are several, as behind a load balancer)."""

    user_id: str
    token: str
    video_id: str
    socket_url: str
    http_url: str


@dataclass(frozen=True)
class LoadPlan:
    """What one load process does: the sockets it holds, and its viewers (closed loop) or its rate (open)."""

    viewers: tuple[Viewer, ...]
    idle_sockets: tuple[tuple[str, str, str], ...]  # (user id, token, API URL) of each socket that only listens
    mode: str  # "closed" or "open"
    rate_per_s: float = 0.0
    cpus: frozenset[int] | None = None


@dataclass(frozen=True)
class Schedule:
    """Wall-clock (time.time) instants shared by every load process."""

    start_at: float
    measure_from: float
    measure_until: float


Arrival = tuple[dict[str, Any], float]


@dataclass
class Listener:
    """A connected socket of one user: counts the decisions it gets and hands awaited ones to their waiter."""

    user_id: str
    keeps_early: bool = False
    sio: socketio.AsyncClient | None = None
    own: int = 0
    foreign: int = 0
    duplicates: int = 0
    seen: set[str] = field(default_factory=set)
    waiters: dict[str, asyncio.Future[Arrival]] = field(default_factory=dict)
    early: dict[str, Arrival] = field(default_factory=dict)

    async def on_message(self, message: Any) -> None:
        """Socket.IO `message` handler: classify the decision and wake whoever waits for it."""
        received_s = time.perf_counter()
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict) or str(data.get("userId")) != self.user_id:
            self.foreign += 1
            return
        request_id = str(message.get("requestId"))
        if request_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(request_id)
        self.own += 1
        waiter = self.waiters.pop(request_id, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result((message, received_s))
        elif self.keeps_early:
            # The decision can beat the HTTP answer that names its request id.
            self.early[request_id] = (message, received_s)

    async def decision(self, request_id: str, timeout_s: float) -> Arrival | None:
        """The decision of `request_id` and when it arrived (perf_counter), or None after timeout_s."""
        arrived = self.early.pop(request_id, None)
        if arrived is not None:
            return arrived
        waiter: asyncio.Future[Arrival] = asyncio.get_running_loop().create_future()
        self.waiters[request_id] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return None
        finally:
            self.waiters.pop(request_id, None)


@dataclass
class Tally:
    """What the viewers of one process saw."""

    latencies_s: list[float] = field(default_factory=list)
    decided_in_window: int = 0
    allowed: int = 0
    denied: int = 0
    missing: int = 0
    dropped: int = 0
    http_errors: Counter[str] = field(default_factory=Counter)
    requests_by_user: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Window:
    """The schedule in this process's perf_counter time."""

    start: float
    measure_from: float
    until: float

    @classmethod
    def of(cls, schedule: Schedule) -> Window:
        """Convert wall-clock instants to perf_counter instants."""
        offset = time.perf_counter() - time.time()
        return cls(schedule.start_at + offset, schedule.measure_from + offset, schedule.measure_until + offset)


class LoadProcess:
    """The body of one load process: connect, drive, report."""

    def __init__(self, plan: LoadPlan, progress: Synchronized[int] | None = None) -> None:
        self.plan = plan
        self.progress = progress
        self.tally = Tally()
        self.lag = LoopLag()
        self.listeners: list[Listener] = []
        self.connect_failures: Counter[str] = Counter()
        self._http: dict[str, HttpClient] = {}
        for viewer in plan.viewers:
            if viewer.http_url not in self._http:
                self._http[viewer.http_url] = HttpClient(viewer.http_url, DECISION_TIMEOUT_S)
        self._requests = [
            self._http[v.http_url].build("GET", f"/videos/{v.video_id}/request?user={v.user_id}", v.token)
            for v in plan.viewers
        ]

    async def connect(self) -> None:
        """Connect every socket of the plan (the viewers' first), a bounded number at a time."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        sockets = [(v.user_id, v.token, v.socket_url, True) for v in self.plan.viewers]
        sockets += [(user_id, token, url, False) for user_id, token, url in self.plan.idle_sockets]

        async def one(user_id: str, token: str, url: str, viewer: bool) -> Listener:
            listener = Listener(user_id, keeps_early=viewer)
            sio = socketio.AsyncClient(reconnection=False, json=SocketJson)
            sio.on("message", listener.on_message)
            async with gate:
                try:
                    await sio.connect(
                        url,
                        auth={"token": token},
                        transports=["websocket"],
                        wait_timeout=CONNECT_TIMEOUT_S,
                    )
                except (socketio.exceptions.ConnectionError, OSError, TimeoutError) as exc:
                    self.connect_failures[f"{type(exc).__name__}: {str(exc)[:100]}"] += 1
                    return listener
            listener.sio = sio
            if self.progress is not None:
                self.progress.value += 1  # connected sockets until the start, then decisions
            return listener

        self.listeners = list(await asyncio.gather(*(one(*s) for s in sockets)))

    async def disconnect(self) -> None:
        """Close every socket (bounded in time)."""
        closing = [asyncio.ensure_future(s.sio.disconnect()) for s in self.listeners if s.sio is not None]
        if closing:
            await asyncio.wait(closing, timeout=DISCONNECT_TIMEOUT_S)

    async def drive(self, schedule: Schedule) -> dict[str, Any]:
        """Run the load with the measurements beside it; the result for the parent."""
        window = Window.of(schedule)
        lag = asyncio.create_task(self.lag.run(window.measure_from, window.until))
        cpu = asyncio.create_task(self._cpu(window))
        await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
        try:
            if self.plan.mode == "closed":
                await asyncio.gather(*(self._viewer(i, window) for i in range(len(self.plan.viewers))))
            else:
                await self._open_loop(window)
        finally:
            for client in self._http.values():
                client.close()
        await lag
        cpu_result = await cpu
        await asyncio.sleep(SETTLE_S)  # late duplicates or strays still count against the sockets
        return self._result(cpu_result)

    async def _cpu(self, window: Window) -> dict[str, float]:
        await asyncio.sleep(max(0.0, window.measure_from - time.perf_counter()))
        sampler = CpuWindow(psutil.Process())
        sampler.start()
        await asyncio.sleep(max(0.0, window.until - time.perf_counter()))
        return sampler.result()

    async def _viewer(self, index: int, window: Window) -> None:
        """Closed loop: request, wait for the decision on the socket, stop if allowed, repeat."""
        if self.listeners[index].sio is None:
            return
        while time.perf_counter() < window.until:
            if not await self._play(index, window, time.perf_counter()):
                await asyncio.sleep(ERROR_PAUSE_S)

    async def _open_loop(self, window: Window) -> None:
        """Open loop: start a play every 1/rate seconds whatever the answers, viewers taking turns."""
        viewers = [i for i in range(len(self.plan.viewers)) if self.listeners[i].sio is not None]
        if not viewers or self.plan.rate_per_s <= 0:
            return
        in_flight: set[asyncio.Task[bool]] = set()
        period_s = 1.0 / self.plan.rate_per_s
        count = 0
        while (due := window.start + count * period_s) < window.until:
            delay_s = due - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            elif count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if len(in_flight) >= MAX_IN_FLIGHT:
                self.tally.dropped += 1
            else:
                task = asyncio.create_task(self._play(viewers[count % len(viewers)], window, due))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            count += 1
        if in_flight:
            await asyncio.wait(in_flight, timeout=2 * DECISION_TIMEOUT_S)

    async def _play(self, index: int, window: Window, sent_s: float) -> bool:
        """One play: the request, its decision on the socket, and the stop when allowed; False on an HTTP error."""
        viewer = self.plan.viewers[index]
        http = self._http[viewer.http_url]
        body = await self._send(http, self._requests[index], "request", 202)
        if body is None:
            return False
        self.tally.requests_by_user[viewer.user_id] += 1
        arrived = await self.listeners[index].decision(orjson.loads(body)["requestId"], DECISION_TIMEOUT_S)
        if arrived is None:
            self.tally.missing += 1
            return True
        message, received_s = arrived
        self._count(message, sent_s, received_s, window)
        if message.get("status") != "allowed":
            return True
        stop = http.build("DELETE", f"/v1/streams/{message.get('streamId')}", viewer.token)
        return await self._send(http, stop, "stop", 204) is not None

    async def _send(self, http: HttpClient, request: bytes, what: str, expected: int) -> bytes | None:
        """The body of the answer, or None (counted as an HTTP error of `what`) on a failure or another status."""
        try:
            status, body = await http.send(request)
        except (ConnectionError, OSError, TimeoutError) as exc:
            self.tally.http_errors[f"{what} {type(exc).__name__}"] += 1
            return None
        if status != expected:
            self.tally.http_errors[f"{what} {status}"] += 1
            return None
        return body

    def _count(self, message: dict[str, Any], sent_s: float, received_s: float, window: Window) -> None:
        if not window.measure_from <= received_s < window.until:
            return
        self.tally.decided_in_window += 1
        self.tally.latencies_s.append(received_s - sent_s)
        if message.get("status") == "allowed":
            self.tally.allowed += 1
        else:
            self.tally.denied += 1
        if self.progress is not None:
            self.progress.value += 1  # this process alone writes its counter

    def _result(self, cpu: dict[str, float]) -> dict[str, Any]:
        tally = self.tally
        return {
            "pid": os.getpid(),
            "sockets": [(s.user_id, s.sio is not None, s.own, s.foreign, s.duplicates) for s in self.listeners],
            "connect_failures": dict(self.connect_failures),
            "latencies_s": tally.latencies_s,
            "decided_in_window": tally.decided_in_window,
            "allowed": tally.allowed,
            "denied": tally.denied,
            "missing": tally.missing,
            "dropped": tally.dropped,
            "http_errors": dict(tally.http_errors),
            "requests_by_user": dict(tally.requests_by_user),
            "cpu": cpu,
            "loop_lag_ms": self.lag.result(),
        }


def process_main(plan: LoadPlan, conn: Connection, progress: Synchronized[int] | None) -> None:
    """Entry point of a load process (spawned): pin, connect, report ready, run the schedule, report."""
    if plan.cpus is not None:
        os.sched_setaffinity(0, plan.cpus)
    raise_fd_limit()
    uvloop.run(_serve_parent(plan, conn, progress))


async def _serve_parent(plan: LoadPlan, conn: Connection, progress: Synchronized[int] | None) -> None:
    process = LoadProcess(plan, progress)
    try:
        await process.connect()
        connected = sum(1 for s in process.listeners if s.sio is not None)
        if progress is not None:
            progress.value = 0
        conn.send({"connected": connected, "connect_failures": dict(process.connect_failures)})
        schedule = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        if isinstance(schedule, Schedule):
            conn.send(await process.drive(schedule))
    finally:
        await process.disconnect()
