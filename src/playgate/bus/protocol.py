"""The bus: a queue of play requests to the workers, and a fan-out of decisions back to the players."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import orjson

from playgate.domain import Decision, EndedStream, Outcome, PlayRequest, Reason, Stream
from playgate.metrics import Metrics
from playgate.values import frozen
from playgate.wire import iso


@frozen
class Delivery:
    """A request handed to a worker; `attempts` counts deliveries including this one."""

    request: PlayRequest
    attempts: int = 1
    receipt: Any = None


class PlayQueue(Protocol):
    """The API's side of the request queue: put a request, look whether it is still owed. A group member holds
    only this (its owner's worker takes); a RequestQueue is one."""

    async def put(self, request: PlayRequest) -> None:
        """Queue a request; it is pending until a worker acknowledges its decision."""
        ...

    async def pending(self, request_id: str) -> PlayRequest | None:
        """The request if it is queued or being decided."""
        ...

    async def depth(self) -> int:
        """Requests waiting or in hand."""
        ...

    async def ping(self) -> None:
        """Raise Unavailable unless the queue answers."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class RequestQueue(PlayQueue, Protocol):
    """Carries requests from the API to the workers; a request stays owed until acknowledged."""

    async def take(self, max_items: int, wait_s: float) -> list[Delivery]:
        """Up to max_items requests, waiting up to wait_s for the first one."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """These were decided and published: forget them."""
        ...

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """These could not be decided now: deliver them again."""
        ...


@runtime_checkable
class QueueBacklog(Protocol):
    """What a durable queue can tell about its backlog, for the metrics (the in-process queue has no such parts)."""

    async def pending_count(self) -> int:
        """Requests delivered to a worker and not yet acknowledged."""
        ...

    async def dead_letter_count(self) -> int:
        """Requests set aside after too many failed deliveries."""
        ...


@runtime_checkable
class SharedQueue(Protocol):
    """A queue other workers read too: one stopping hands what it has not taken to them."""

    consumer: str

    def stop_reading(self) -> None:
        """Take nothing new; what is still queued is left to the other consumers."""
        ...


@runtime_checkable
class ListeningFanout(Protocol):
    """A fan-out that must listen before `?wait=` callers of this process hear other processes' decisions."""

    async def start(self, ready_timeout_s: float = 5.0) -> None:
        """Start listening; return once subscribed (or after ready_timeout_s)."""
        ...


async def observe_queue(queue: PlayQueue, metrics: Metrics) -> None:
    """Refresh the queue gauges: its depth, and its backlog when it is a queue that has one."""
    metrics.queue_depth.set(await queue.depth())
    if isinstance(queue, QueueBacklog):
        metrics.queue_pending.set(await queue.pending_count())
        metrics.queue_dead_letters.set(await queue.dead_letter_count())


Emit = list[Any]  # [event, body, room]


class Emitter(Protocol):
    """What sends a Socket.IO event to a room of this process's sockets: its Socket.IO server (bus.redis.OwnSockets
    when the server's client manager is a Redis one), or NoSockets."""

    async def emit(self, event: str, data: Any = None, *, room: str | None = None) -> None:
        """Send `event` with `data` to every socket in `room`."""
        ...


class NoSockets:
    """The Emitter of a process that holds no sockets (a worker): its fan-out sends to the processes that do."""

    async def emit(self, event: str, data: Any = None, *, room: str | None = None) -> None:
        """Nothing to send to."""


class Fanout(Protocol):
    """Hands decisions and ended streams to the sockets of the user concerned, and wakes `?wait=` callers."""

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Send each decision (and each stream it ended) to its user's sockets; wake its waiters."""
        ...

    async def announce(self, ended: Sequence[EndedStream]) -> None:
        """Tell users' sockets of streams that ended without their device asking."""
        ...

    def watch(self, request_id: str) -> Any:
        """Start waiting for a decision; returns an awaitable that resolves to it."""
        ...

    def unwatch(self, request_id: str, waiter: Any) -> None:
        """Stop waiting (the awaitable from watch)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class SocketJson:
    """orjson behind the json-module interface python-socketio expects (dumps returns str), for the server, its
    managers and the bench's clients alike."""

    @staticmethod
    def dumps(obj: Any, **_kwargs: Any) -> str:
        """JSON text of `obj`."""
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(data: str | bytes, **_kwargs: Any) -> Any:
        """The value of JSON text."""
        return orjson.loads(data)


def user_room(user_id: str) -> str:
    """The Socket.IO room of one user's sockets."""
    return f"user:{user_id}"


# Auth disabled: the room of the sockets that named no user, which get every user's events, as the original
# service sent them (its Socket.IO v2 clients never say who they are).
EVERY_USER_ROOM = "users:every"


@frozen
class Playback:
    """How a player plays an allowed stream: its media's URL (`playbackUrl`) and the stream's PlayGate playback
    token (`playbackToken`): the token the URL carries, or, when the URL is an edge's signed link (which carries
    none), one issued beside it. The token is what a heartbeat sends (`X-Playback-Token`, socket `playbackToken`)
    so that, while the ledger's store does not answer, a process that never saw the stream honours it."""

    url: str
    token: str


# An allowed decision's Playback (None for a denial), as the fan-out puts it in the decision's `message`.
PlaybackOf = Callable[[Decision], Playback | None]


def decision_message(
    decision: Decision, playback: Playback | None = None, conflicts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The `message` event payload of API.md for a decision, with what the HTTP answer (PlayOut) says of it: the
    device, the reason as worded there (`kind_limit:uhd`), an allowed one's lease end (`expiresAt`, which a player
    times its heartbeats by), `playbackUrl` and `playbackToken`, a denied one at the limit the streams holding it
    (`conflicts`)."""
    body: dict[str, Any] = {
        "status": decision.status.value,
        "data": {"videoId": decision.video_id, "userId": decision.user_id},
        "requestId": decision.request_id,
        "deviceId": decision.device_id,
        "active": decision.active,
        "limit": decision.limit,
    }
    if decision.stream_id is not None:
        body["streamId"] = decision.stream_id
    if decision.expires_at is not None:
        body["expiresAt"] = iso(decision.expires_at)
    if playback is not None:
        body["playbackUrl"] = playback.url
        body["playbackToken"] = playback.token
    if decision.reason is not None:
        body["reason"] = decision.why
    if decision.reason is Reason.limit_reached:
        body["conflicts"] = conflicts or []
    return body


# Shapes the streams holding a denial's limit as its `conflicts` (conflict_message, with the deployment's lease).
Conflicts = Callable[[Sequence[Stream]], list[dict[str, Any]]]


def conflict_message(stream: Stream, lease_s: float) -> dict[str, Any]:
    """One of a denial's `conflicts` (API.md): a stream holding the limit, enough for a player to offer to stop it;
    its last sign of life is one lease before it runs out. The HTTP answer's ConflictOut has this shape."""
    return {
        "streamId": stream.id,
        "videoId": stream.video_id,
        "deviceId": stream.device_id,
        "deviceName": stream.device_name,
        "startedAt": iso(stream.started_at),
        "lastSeenAt": iso(max(stream.started_at, stream.expires_at - lease_s)),
    }


def rooms_of(user_id: str, *, to_every_user_room: bool) -> list[str]:
    """The rooms a user's events go to: the user's room, and EVERY_USER_ROOM when asked (auth disabled): a socket
    is in one or the other, never both, so nobody gets an event twice."""
    return [user_room(user_id), EVERY_USER_ROOM] if to_every_user_room else [user_room(user_id)]


def ended_message(ended: EndedStream) -> dict[str, Any]:
    """The `stream_ended` event payload of API.md."""
    return {"streamId": ended.stream.id, "videoId": ended.stream.video_id, "reason": ended.reason.value}


# Announced by the fan-out after an admission; `expired` ones are found by the sweeper as well.
ANNOUNCED = frozenset({Reason.expired, Reason.evicted, Reason.replaced})


class EmittingFanout:
    """What every fan-out shares: `?wait=` futures by request id, and emitting outcomes through an Emitter.

    A backend adds only its transport: how decisions reach the waiters of other processes (if any).
    """

    def __init__(
        self,
        emitter: Emitter,
        playback: PlaybackOf | None = None,
        conflicts: Conflicts | None = None,
        *,
        to_every_user_room: bool = False,
    ) -> None:
        self._emitter = emitter
        self._playback = playback
        self._conflicts = conflicts
        self._to_every_user_room = to_every_user_room
        # Told the ids of the streams whose `stream_ended` a listening fan-out hears from other processes (the
        # Redis one): the API's outage policy then never honours them (PlayGate sets it).
        self.on_ended: Callable[[list[str]], None] | None = None
        self._waiters: dict[str, set[asyncio.Future[Decision]]] = {}

    async def _emit(self, outcomes: Sequence[Outcome]) -> None:
        """Emit each decision to its user's room, then the streams it ended."""
        for event, body, room in self._emits(outcomes):
            await self._emitter.emit(event, body, room=room)

    async def announce(self, ended: Sequence[EndedStream]) -> None:
        """Emit `stream_ended` to each ended stream's user."""
        for event, body, room in self._ended_emits(ended):
            await self._emitter.emit(event, body, room=room)

    def _emits(self, outcomes: Sequence[Outcome]) -> list[Emit]:
        """What `_emit` sends: each decision's message to its user's room, then `stream_ended` of the streams it
        ended."""
        emits: list[Emit] = []
        for outcome in outcomes:
            decision = outcome.decision
            playback = self._playback(decision) if self._playback is not None else None
            conflicts = self._conflicts(outcome.conflicts) if self._conflicts is not None else None
            emits += self._emits_for(decision.user_id, "message", decision_message(decision, playback, conflicts))
            emits += self._ended_emits([e for e in outcome.ended if e.reason in ANNOUNCED])
        return emits

    def _ended_emits(self, ended: Sequence[EndedStream]) -> list[Emit]:
        """What `announce` sends: `stream_ended` to each ended stream's user."""
        emits: list[Emit] = []
        for item in ended:
            emits += self._emits_for(item.stream.user_id, "stream_ended", ended_message(item))
        return emits

    def _emits_for(self, user_id: str, event: str, body: dict[str, Any]) -> list[Emit]:
        """An event to each of the user's rooms (rooms_of)."""
        return [[event, body, room] for room in rooms_of(user_id, to_every_user_room=self._to_every_user_room)]

    def watch(self, request_id: str) -> asyncio.Future[Decision]:
        """A future resolved when the decision is published."""
        waiter: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, set()).add(waiter)
        return waiter

    def unwatch(self, request_id: str, waiter: asyncio.Future[Decision]) -> None:
        """Drop a waiter."""
        waiters = self._waiters.get(request_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[request_id]

    def _wake(self, decision: Decision) -> None:
        for waiter in self._waiters.get(decision.request_id, ()):
            if not waiter.done():
                waiter.set_result(decision)

    def _cancel_waiters(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()


# ---- a queued request as JSON: the Redis queue's entries, the process group's link, the embedded queue's keep ----


def request_to_json(request: PlayRequest) -> str:
    """A PlayRequest as the JSON kept in the stream and the pending marker."""
    return orjson.dumps(
        {
            "rid": request.request_id,
            "uid": request.user_id,
            "vid": request.video_id,
            "dev": request.device_id,
            "at": request.accepted_at,
            "rep": list(request.replace_stream_ids),
            "all": request.replace_others,
            "dn": request.device_name,
            "own": request.replace_device_stream,
            "k": list(request.kinds),
            "away": request.away,
            "tp": request.trace,
        }
    ).decode()


def request_from_json(raw: str | bytes) -> PlayRequest:
    """The PlayRequest of request_to_json; ValueError, KeyError or TypeError on anything else."""
    body = orjson.loads(raw)
    return PlayRequest(
        request_id=str(body["rid"]),
        user_id=str(body["uid"]),
        video_id=str(body["vid"]),
        device_id=str(body["dev"]),
        accepted_at=float(body["at"]),
        replace_stream_ids=_replaced(body.get("rep")),
        replace_others=bool(body.get("all", False)),
        device_name=str(body.get("dn") or ""),
        replace_device_stream=bool(body.get("own", False)),
        kinds=_kinds(body.get("k")),
        away=bool(body.get("away", False)),
        trace=str(body.get("tp") or ""),
    )


def _kinds(kinds: object) -> tuple[str, ...]:
    """The video's kind tags, as kept in the queue: a list (absent from a process of a version before)."""
    if kinds is None:
        return ()
    if not isinstance(kinds, list):
        raise TypeError("k must be a list of kind tags")
    return tuple(str(k) for k in kinds)


def _replaced(rep: object) -> tuple[str, ...]:
    """The stream ids to replace, as kept in the queue: a list (or, from a process of the version before, one id
    or null)."""
    if rep is None:
        return ()
    if isinstance(rep, str):
        return (rep,)
    if not isinstance(rep, list):
        raise TypeError("rep must be a list of stream ids")
    return tuple(str(r) for r in rep)
