"""In-process bus for the embedded deployment: an asyncio queue and a direct Socket.IO fan-out."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from playgate.bus.protocol import Delivery, EmittingFanout
from playgate.domain import Outcome, PlayRequest


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


class LocalFanout(EmittingFanout):
    """Emits straight to this process's Socket.IO server and resolves this process's waiters."""

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Wake the waiters of each decision, then emit it and the streams it ended."""
        for outcome in outcomes:
            self._wake(outcome.decision)
        await self._emit(outcomes)

    async def close(self) -> None:
        """Cancel anyone still waiting."""
        self._cancel_waiters()
