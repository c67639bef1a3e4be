"""In-process bus for the embedded deployment: an asyncio queue and a direct Socket.IO fan-out."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet

from playgate.bus.protocol import Delivery, EmittingFanout
from playgate.domain import Outcome, PlayRequest

log = logging.getLogger("playgate.bus")


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


class LeanManager(socketio.AsyncManager):  # type: ignore[misc]  # python-socketio is untyped
    """python-socketio's in-process client manager, whose emit to a room hands the packet, encoded once, to each
    of the room's sockets in turn, instead of starting a task per socket and waiting for them all
    (`asyncio.wait`): a socket's send only queues the packet for its own writer task, so nothing here waits on
    the network, and one emit to a one-socket room cost about twice as much the other way. An emit asking for
    an ack (a callback) goes python-socketio's way."""

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        """Send `event` with `data` to every socket of `room` (or `to`) in `namespace`, but `skip_sid`."""
        room = to or room
        if callback is not None or namespace not in self.rooms:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs)
            return
        # As python-socketio's: a tuple is several arguments, None none, anything else one.
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skipped = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        encoded = _encoded(self.server.packet_class, namespace, [event, *args])
        eio_packets = [
            eio_packet.Packet(eio_packet.MESSAGE, part)
            for part in (encoded if isinstance(encoded, list) else [encoded])
        ]
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skipped:
                continue
            for eio_pkt in eio_packets:
                try:
                    await self.server._send_eio_packet(eio_sid, eio_pkt)
                except Exception:  # one socket's failure must not keep the event from the others
                    log.exception("could not send %r to socket %s", event, sid)


def _encoded(packet_class: Any, namespace: str, data: list[Any]) -> str | list[Any]:
    """An event's Socket.IO packet, encoded. Said to be text first: python-socketio would otherwise walk the whole
    data looking for bytes on every emit (data_is_binary, about a tenth of an emit's cost). Bytes anywhere make
    the JSON encoder fail, and the event is then encoded as python-socketio encodes one with attachments."""
    try:
        return packet_class(packet.EVENT, namespace=namespace, data=data, binary=False).encode()  # type: ignore[no-any-return]
    except TypeError:
        return packet_class(packet.EVENT, namespace=namespace, data=data).encode()  # type: ignore[no-any-return]
