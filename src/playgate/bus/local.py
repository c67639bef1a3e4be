"""In-process bus for the embedded deployment: an asyncio queue and a direct Socket.IO fan-out."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

from playgate.bus.protocol import Delivery, Emitter, decision_message, ended_message, user_room
from playgate.domain import Decision, EndedStream, PlayRequest, Reason
from playgate.ledger.protocol import Outcome

# Announced by the fan-out after an admission; `expired` ones are found by the sweeper as well.
ANNOUNCED = frozenset({Reason.expired, Reason.evicted, Reason.replaced})


class LocalQueue:
    """A FIFO in this process; requests in hand stay pending until acknowledged, released ones go first."""

    def __init__(self) -> None:
        self._ready: deque[Delivery] = deque()
        self._in_hand: dict[str, Delivery] = {}
        self._pending: dict[str, PlayRequest] = {}
        self._arrived = asyncio.Event()

    async def put(self, request: PlayRequest) -> None:
        """Queue a request."""
        self._pending[request.request_id] = request
        self._ready.append(Delivery(request))
        self._arrived.set()

    async def pending(self, request_id: str) -> PlayRequest | None:
        """The request while it is queued or in hand."""
        return self._pending.get(request_id)

    async def take(self, max_items: int, wait_s: float) -> list[Delivery]:
        """Up to max_items requests, waiting up to wait_s for the first."""
        if not self._ready and wait_s > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait_s)
            except TimeoutError:
                return []
        batch: list[Delivery] = []
        while self._ready and len(batch) < max_items:
            delivery = self._ready.popleft()
            self._in_hand[delivery.request.request_id] = delivery
            batch.append(delivery)
        return batch

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget decided requests."""
        for delivery in deliveries:
            self._in_hand.pop(delivery.request.request_id, None)
            self._pending.pop(delivery.request.request_id, None)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Put undecided requests back at the head of the queue, in their order."""
        for delivery in reversed(deliveries):
            self._in_hand.pop(delivery.request.request_id, None)
            self._ready.appendleft(Delivery(delivery.request, delivery.attempts + 1))
        self._arrived.set()

    async def depth(self) -> int:
        """Requests queued or in hand."""
        return len(self._ready) + len(self._in_hand)

    async def ping(self) -> None:
        """Always answers: it lives in this process."""

    async def close(self) -> None:
        """Nothing to release."""


class LocalFanout:
    """Emits straight to this process's Socket.IO server and resolves local waiters."""

    def __init__(self, emitter: Emitter, playback_url: Callable[[Decision], str | None] | None = None) -> None:
        self._emitter = emitter
        self._playback_url = playback_url
        self._waiters: dict[str, set[asyncio.Future[Decision]]] = {}

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Emit each decision to its user's room, then the streams it ended."""
        for outcome in outcomes:
            decision = outcome.decision
            for waiter in self._waiters.get(decision.request_id, ()):
                if not waiter.done():
                    waiter.set_result(decision)
            url = self._playback_url(decision) if self._playback_url is not None else None
            await self._emitter.emit("message", decision_message(decision, url), room=user_room(decision.user_id))
            await self.announce([e for e in outcome.ended if e.reason in ANNOUNCED])

    async def announce(self, ended: Sequence[EndedStream]) -> None:
        """Emit `stream_ended` to each ended stream's user."""
        for item in ended:
            await self._emitter.emit("stream_ended", ended_message(item), room=user_room(item.stream.user_id))

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

    async def close(self) -> None:
        """Cancel anyone still waiting."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()
