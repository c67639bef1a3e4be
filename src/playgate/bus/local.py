"""In-process bus for the embedded deployment: an asyncio queue and a direct Socket.IO fan-out."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet

from playgate.bus.protocol import Delivery, EmittingFanout, PlayQueue, request_from_json, request_to_json
from playgate.domain import Outcome, PlayRequest
from playgate.errors import PlayGateError
from playgate.taken import take

log = logging.getLogger("playgate.bus")
# In the data dir: the requests an embedded process stopped without deciding, taken back by its next start.
QUEUE_KEEP_FILE = "undecided-requests.ndjson"


class LocalQueue:
    """A FIFO in this process; requests in hand stay pending until acknowledged, released ones go first.

    With a `keep` file (the embedded deployment's, in the data dir), the requests still undecided when the queue
    closes (the worker could not decide them: the SQLite file was locked, full or failing as the process stopped)
    are written there, and the next queue made on that file takes them back first, so that a request answered 202
    is decided after a restart rather than lost with the process."""

    def __init__(self, keep: Path | None = None) -> None:
        self._ready: deque[Delivery] = deque()
        self._in_hand: dict[str, Delivery] = {}
        self._pending: dict[str, PlayRequest] = {}
        self._arrived = asyncio.Event()
        self._keep = keep
        if keep is not None:
            for request in _taken_back(keep):
                self._pending[request.request_id] = request
                self._ready.append(Delivery(request))

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
        """Keep what is still undecided (in hand first, then queued, in their order) in the `keep` file."""
        undecided = [d.request for d in self._in_hand.values()] + [d.request for d in self._ready]
        if self._keep is None or not undecided:
            return
        staged = self._keep.with_name(self._keep.name + ".new")
        try:
            staged.write_text("".join(request_to_json(r) + "\n" for r in undecided), encoding="utf-8")
            staged.replace(self._keep)
        except OSError as exc:
            log.error(
                "%d undecided request(s) lost with the process: cannot write %s (%s)",
                len(undecided),
                staged,
                exc,
            )
            return
        log.warning("%d undecided request(s) kept in %s: the next start decides them first", len(undecided), self._keep)


def _taken_back(keep: Path) -> list[PlayRequest]:
    """The requests a queue kept in `keep` as it closed (the file is removed); a line that is not one is skipped,
    named in a warning."""
    try:
        text = keep.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.error("cannot read %s, the requests the last stop left undecided (%s): left there", keep, exc)
        return []
    requests = _kept_requests(keep, text)
    keep.unlink(missing_ok=True)
    log.warning("%d request(s) left undecided by the last stop taken back from %s", len(requests), keep)
    return requests


def _kept_requests(keep: Path, text: str) -> list[PlayRequest]:
    """The requests of a keep file's text, a line each; a line that is not one is skipped, named in a warning."""
    requests: list[PlayRequest] = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            requests.append(request_from_json(line))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s line %d is not a queued request (%s): skipped", keep, number, exc)
    return requests


async def queue_kept(keep: Path, queue: PlayQueue) -> int:
    """Put on a shared queue (distributed: Redis) the requests an embedded process kept in `keep` as it stopped on
    this data dir, so that a deployment moved from embedded to distributed decides them rather than leave them
    unread; how many were put. The file is taken (taken.py: a process starting beside this one leaves it to this
    one) and removed once every request is queued: a failure (the queue does not answer) leaves it whole for the
    next start. A request queued twice (a process that died between its puts and the removal) is decided once: a
    worker answers it the first decision again."""
    try:
        held = take(keep)
    except OSError as exc:
        log.error("cannot read %s, the requests an embedded stop left undecided (%s): left there", keep, exc)
        return 0
    if held is None:
        return 0
    with held:
        requests = _kept_requests(keep, held.raw.decode("utf-8", errors="replace"))
        try:
            for request in requests:
                await queue.put(request)
        except PlayGateError as exc:
            log.error(
                "%s: the requests an embedded stop left undecided could not be queued (%s): left there for the "
                "next start",
                keep,
                exc.detail,
            )
            return 0
        held.remove()
    log.warning("%d request(s) left undecided by an embedded stop queued from %s", len(requests), keep)
    return len(requests)


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
