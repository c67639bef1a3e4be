"""The bus of a process group on one machine (`playgate serve --processes N`): the owner's hub and its members.

The owner process holds the one request queue (bus.local.LocalQueue) and the one worker; each member process
(HTTP and Socket.IO) reaches it over its own Unix socket pair, with length-prefixed JSON frames:

- member -> owner: `["put", id, request]`, `["pending", id, request id]`, `["depth", id]`, `["ping", id]`,
  `["hold", id, room]` (each answered `["ok", id, value]` or `["err", id, detail]`), `["drop", room]`,
  `["wait", request id]`, `["unwait", request id]`, `["fanout", emits, decisions]` (an announcement for the
  members' sockets), `["ready"]` (the member takes connections now);
- owner -> member: the answers, and `["fanout", emits, decisions]`: emits `[event, body, room]` for the member to
  send to its own sockets, decisions (connections.decision_to_json) to wake its own `?wait=` callers.

Routing: a member's frame holds only what concerns it, and a member with nothing gets no frame. An emit to a
user's room (or to EVERY_USER_ROOM) goes to the members holding that room: a member says `hold` when a room gets
its first socket there and waits for the answer before the socket's connect completes, so a decision the owner
sends after that reaches it; it says `drop` once the room is empty. An emit to any other room goes to every
member (when unsure, send). A decision goes to the members that `wait` for its request id; one whose decision was
sent before the owner read that `wait` is sent at once from the last RECENT_DECISIONS decisions (the member
watches before it looks in the ledger, so a decision committed after that look is one of those).

Frames on one socket keep their order, so a request put by a member is seen by its next `pending` call, and a
user's decision reaches every member before the streams it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import orjson

from playgate.bus.local import LeanManager, LocalQueue
from playgate.bus.protocol import (
    EVERY_USER_ROOM,
    Conflicts,
    Emit,
    Emitter,
    EmittingFanout,
    PlaybackOf,
    request_from_json,
    request_to_json,
    user_room,
)
from playgate.connections import decision_from_json, decision_to_json
from playgate.domain import Decision, EndedStream, Outcome, PlayRequest
from playgate.errors import Unavailable

log = logging.getLogger("playgate.bus")

HEADER = struct.Struct("!I")
# A frame is a batch of decisions at most (the worker's batch_size of them, with their emits): far below this.
MAX_FRAME_BYTES = 64 * 1024 * 1024
# A member that reads nothing while this much waits for it is stuck: its link is closed (it exits and the owner
# starts it again) rather than the owner's memory growing without end.
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
CALL_TIMEOUT_S = 10.0
# Decisions the owner remembers, for a `wait` that arrives after its decision was sent (see the module's text).
RECENT_DECISIONS = 4096
USER_ROOM_PREFIX = user_room("")
NOTICES = frozenset({"fanout", "drop", "wait", "unwait", "ready"})


def routed(room: str | None) -> bool:
    """Whether emits to `room` go only to the members holding it (users' rooms); else to every member."""
    return room is not None and (room.startswith(USER_ROOM_PREFIX) or room == EVERY_USER_ROOM)


def frame(message: Any) -> bytes:
    """One frame: the message's JSON after its length."""
    body = orjson.dumps(message)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message; IncompleteReadError at the end of the stream."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes")
    return orjson.loads(await reader.readexactly(size))


class Relay:
    """An Emitter that sends emits (and the decisions to wake waiters for) to the process group as frames:
    inside `batch()` they are held and leave as one frame at its end."""

    def __init__(self, send: Callable[[list[Emit], list[dict[str, Any]]], None]) -> None:
        self._send = send
        self._emits: list[Emit] | None = None
        self._decided: list[dict[str, Any]] = []

    async def emit(self, event: str, data: Any = None, *, room: str | None = None) -> None:
        """Send one emit (held while in a batch)."""
        if self._emits is not None:
            self._emits.append([event, data, room])
        else:
            self._send([[event, data, room]], [])

    def decided(self, decisions: Iterable[Decision]) -> None:
        """Wake the waiters of these decisions in every member (sent with the batch)."""
        self._decided.extend(decision_to_json(d) for d in decisions)

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Hold the emits and decisions made inside, then send them in one frame (a batch inside one joins it)."""
        if self._emits is not None:
            yield
            return
        self._emits = []
        try:
            yield
            emits, decided = self._emits, self._decided
        finally:
            self._emits, self._decided = None, []
        if emits or decided:
            self._send(emits, decided)


class GroupFanout(EmittingFanout):
    """The fan-out of a process group: decisions and announcements go to every member (through the owner's hub);
    each member emits them to its own sockets and wakes its own waiters (`deliver`)."""

    def __init__(
        self,
        send: Callable[[list[Emit], list[dict[str, Any]]], None],
        playback: PlaybackOf | None = None,
        conflicts: Conflicts | None = None,
        *,
        local: Emitter | None = None,
        to_every_user_room: bool = False,
    ) -> None:
        self._relay = Relay(send)
        super().__init__(self._relay, playback, conflicts, to_every_user_room=to_every_user_room)
        self._local = local

    async def publish(self, outcomes: Sequence[Outcome]) -> None:
        """Send the decisions (to wake waiters) and their emits to every member, in one frame."""
        async with self._relay.batch():
            self._relay.decided(o.decision for o in outcomes)
            await self._emit(outcomes)

    async def announce(self, ended: Sequence[EndedStream]) -> None:
        """Send `stream_ended` of each ended stream to every member, in one frame."""
        async with self._relay.batch():
            await super().announce(ended)

    async def deliver(self, emits: Sequence[Emit], decisions: Sequence[dict[str, Any]]) -> None:
        """A frame from the hub: wake this process's waiters, then emit to this process's sockets."""
        for item in decisions:
            if item["r"] in self._waiters:
                self._wake(decision_from_json(item))
        if self._local is not None:
            for event, body, room in emits:
                await self._local.emit(event, body, room=room)

    async def close(self) -> None:
        """Cancel anyone still waiting."""
        self._cancel_waiters()


class _Member:
    """The owner's end of one member's link."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.ready = False
        self.task: asyncio.Task[None] | None = None
        self.rooms: set[str] = set()  # the users' rooms holding a socket in this member

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_BACKLOG_BYTES:
            log.error("member %d reads nothing (%d bytes wait for it): closing its link", self.index, len(data))
            self.writer.close()
            return
        self.writer.write(data)


class Hub:
    """The owner's end of the process group: answers the members' queue calls from the one LocalQueue, and
    sends each member the part of every fan-out frame that concerns it (see the module's text)."""

    def __init__(self, queue: LocalQueue) -> None:
        self.queue = queue
        self._members: dict[int, _Member] = {}
        self._waits: dict[str, set[int]] = {}  # request id -> the members waiting for its decision
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.changed = asyncio.Event()  # set when a member becomes ready or leaves

    async def attach(self, index: int, sock: socket.socket) -> None:
        """Serve a member on `sock` (the owner's end of its socket pair), replacing any earlier one of `index`."""
        await self.detach(index)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        member = _Member(index, reader, writer)
        self._members[index] = member
        member.task = asyncio.create_task(self._serve(member), name=f"playgate-hub-{index}")

    async def detach(self, index: int) -> None:
        """Forget a member (it exited)."""
        member = self._members.pop(index, None)
        if member is None:
            return
        self.changed.set()
        member.writer.close()
        for waiting in self._waits.values():
            waiting.discard(index)
        if member.task is not None and member.task is not asyncio.current_task():
            member.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await member.task

    def ready(self) -> list[int]:
        """The members that take connections now."""
        return [m.index for m in self._members.values() if m.ready and not m.writer.is_closing()]

    def broadcast(self, emits: list[Emit], decided: list[dict[str, Any]]) -> None:
        """Send each member the emits for its rooms and the decisions it waits for, in one frame (none when
        nothing concerns it)."""
        waiting: list[tuple[dict[str, Any], set[int]]] = []
        for item in decided:
            request_id = item["r"]
            self._recent[request_id] = item
            if len(self._recent) > RECENT_DECISIONS:
                self._recent.popitem(last=False)
            members = self._waits.pop(request_id, None)
            if members:
                waiting.append((item, members))
        for member in list(self._members.values()):
            rooms = member.rooms
            mine = [e for e in emits if e[2] in rooms or not routed(e[2])]
            woken = [item for item, members in waiting if member.index in members]
            if mine or woken:
                member.send(frame(["fanout", mine, woken]))

    async def _serve(self, member: _Member) -> None:
        try:
            while True:
                message = await read_frame(member.reader)
                await self._handle(member, message)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("member %d closed its link", member.index)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            log.error("member %d sent a bad frame (%s): closing its link", member.index, exc)
        finally:
            member.ready = False
            member.writer.close()
            self.changed.set()

    async def _handle(self, member: _Member, message: list[Any]) -> None:
        op = message[0]
        if op in NOTICES:
            self._notice(member, op, message[1:])
        elif op == "hold":
            member.rooms.add(message[2])
            member.send(frame(["ok", message[1], None]))
        else:
            call_id = message[1]
            try:
                value = await self._answer(op, message[2:])
            except Unavailable as exc:
                member.send(frame(["err", call_id, exc.detail]))
            else:
                member.send(frame(["ok", call_id, value]))

    def _notice(self, member: _Member, op: str, args: list[Any]) -> None:
        """A message without an answer."""
        if op == "fanout":
            self.broadcast(args[0], args[1])
        elif op == "drop":
            member.rooms.discard(args[0])
        elif op == "wait":
            self._wait(member, args[0])
        elif op == "unwait":
            waiting = self._waits.get(args[0])
            if waiting is not None:
                waiting.discard(member.index)
                if not waiting:
                    del self._waits[args[0]]
        else:  # ready
            member.ready = True
            self.changed.set()

    def _wait(self, member: _Member, request_id: str) -> None:
        """The member waits for a decision: send it now if it was sent already, else when it is."""
        item = self._recent.get(request_id)
        if item is not None:
            member.send(frame(["fanout", [], [item]]))
        else:
            self._waits.setdefault(request_id, set()).add(member.index)

    async def _answer(self, op: str, args: list[Any]) -> Any:
        if op == "put":
            await self.queue.put(request_from_json(args[0]))
            return None
        if op == "pending":
            found = await self.queue.pending(args[0])
            return None if found is None else request_to_json(found)
        if op == "depth":
            return await self.queue.depth()
        if op == "ping":
            return None
        raise ValueError(f"unknown call {op!r}")

    async def close(self) -> None:
        """Close every member's link."""
        for index in list(self._members):
            await self.detach(index)


class MemberLink:
    """A member's end of its link to the owner: calls with answers, fan-out frames handed to `on_fanout`.

    When the owner goes away (its end closes) `on_lost` is called: a member without its owner cannot decide.
    """

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.index = index
        self._sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._opening: asyncio.Future[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self.on_fanout: Callable[[list[Emit], list[dict[str, Any]]], Any] | None = None
        self.on_lost: Callable[[], None] | None = None

    async def start(self) -> None:
        """Open the link (once, however many callers ask at the same time)."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        await asyncio.shield(self._opening)

    async def _open(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        self._reader_task = asyncio.create_task(self._read(reader), name="playgate-member-link")

    def send(self, message: Any) -> None:
        """Send a message that has no answer; Unavailable when the owner is gone."""
        if self._writer is None or self._writer.is_closing():
            raise Unavailable("the owner process (queue and worker) is not reachable")
        self._writer.write(frame(message))

    async def call(self, op: str, *args: Any) -> Any:
        """Ask the owner and wait for its answer (Unavailable if it does not come)."""
        await self.start()
        self._next_id += 1
        call_id = self._next_id
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = answer
        try:
            self.send([op, call_id, *args])
            return await asyncio.wait_for(answer, CALL_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable(f"the owner process did not answer {op!r} within {CALL_TIMEOUT_S:.0f} s") from None
        finally:
            self._calls.pop(call_id, None)

    async def hold(self, room: str) -> None:
        """Tell the owner this member holds a socket in `room`; returns once the owner knows (Unavailable if not)."""
        await self.call("hold", room)

    def drop(self, room: str) -> None:
        """Tell the owner this member holds no socket in `room` any more (nothing when the owner is gone)."""
        with contextlib.suppress(Unavailable):
            self.send(["drop", room])

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_frame(reader)
                if message[0] == "fanout":
                    if self.on_fanout is not None:
                        await self.on_fanout(message[1], message[2])
                else:
                    self._answered(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("the owner process closed the link of member %d", self.index)
        finally:
            for answer in self._calls.values():
                if not answer.done():
                    answer.set_exception(Unavailable("the owner process went away"))
            if self._writer is not None:
                self._writer.close()
            if self.on_lost is not None:
                self.on_lost()

    def _answered(self, message: list[Any]) -> None:
        answer = self._calls.get(message[1])
        if answer is None or answer.done():
            return
        if message[0] == "ok":
            answer.set_result(message[2])
        else:
            answer.set_exception(Unavailable(str(message[2])))

    async def close(self) -> None:
        """Close the link."""
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()


class MemberQueue:
    """A member's PlayQueue: the owner's queue, over the link. Members put and look; only the owner's worker takes."""

    def __init__(self, link: MemberLink) -> None:
        self._link = link

    async def put(self, request: PlayRequest) -> None:
        """Queue the request in the owner; returns once the owner holds it."""
        await self._link.call("put", request_to_json(request))

    async def pending(self, request_id: str) -> PlayRequest | None:
        """The request while it is queued or being decided in the owner."""
        found = await self._link.call("pending", request_id)
        return None if found is None else request_from_json(found)

    async def depth(self) -> int:
        """Requests queued or in hand in the owner."""
        return int(await self._link.call("depth"))

    async def ping(self) -> None:
        """Raise Unavailable unless the owner answers."""
        await self._link.call("ping")

    async def close(self) -> None:
        """Close the link."""
        await self._link.close()


class MemberFanout(GroupFanout):
    """A member's fan-out (a ListeningFanout): its announcements go to every member through the owner; the frames
    the owner sends are emitted to this process's sockets and wake its waiters."""

    def __init__(
        self,
        link: MemberLink,
        local: Emitter,
        playback: PlaybackOf | None = None,
        conflicts: Conflicts | None = None,
        *,
        to_every_user_room: bool = False,
    ) -> None:
        super().__init__(
            lambda emits, decided: link.send(["fanout", emits, decided]),
            playback,
            conflicts,
            local=local,
            to_every_user_room=to_every_user_room,
        )
        self._link = link
        link.on_fanout = self.deliver

    def watch(self, request_id: str) -> asyncio.Future[Decision]:
        """A future resolved when the decision is published; the owner is told to send it here."""
        first = request_id not in self._waiters
        waiter = super().watch(request_id)
        if first:
            with contextlib.suppress(Unavailable):  # no owner: the caller's wait runs out
                self._link.send(["wait", request_id])
        return waiter

    def unwatch(self, request_id: str, waiter: asyncio.Future[Decision]) -> None:
        """Drop a waiter; the owner is told when this member waits no more for the decision."""
        super().unwatch(request_id, waiter)
        if request_id not in self._waiters:
            with contextlib.suppress(Unavailable):
                self._link.send(["unwait", request_id])

    async def start(self, ready_timeout_s: float = 5.0) -> None:
        """Open the link to the owner."""
        await asyncio.wait_for(self._link.start(), ready_timeout_s)

    async def close(self) -> None:
        """Cancel anyone still waiting; close the link."""
        self._cancel_waiters()
        await self._link.close()


class HoldingManager(LeanManager):
    """A member's Socket.IO client manager: tells the owner which users' rooms hold a socket here (bus.hub's
    routing). A socket's entering a room returns once the owner knows, so no decision sent after is missed. It
    emits as LeanManager does."""

    def __init__(self, link: MemberLink) -> None:
        super().__init__()
        self._link = link
        self._holds: dict[str, asyncio.Future[None]] = {}

    async def enter_room(self, sid: str, namespace: str, room: str, eio_sid: str | None = None) -> None:
        """Enter the room; for a user's room, wait until the owner knows this member holds it."""
        await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        if not routed(room):
            return
        held = self._holds.get(room)
        if held is None:
            held = self._holds[room] = asyncio.ensure_future(self._link.hold(room))
        try:
            await asyncio.shield(held)
        except Unavailable as exc:  # no owner: this member is stopping; its sockets get nothing more
            log.warning("the owner does not know room %s is held here: %s", room, exc)
            if self._holds.get(room) is held:
                del self._holds[room]

    def basic_leave_room(self, sid: str, namespace: str, room: str) -> None:
        """Leave the room (also on a disconnect); the owner is told once a user's room is empty here."""
        super().basic_leave_room(sid, namespace, room)
        if room in self._holds and room not in self.rooms.get(namespace, {}):
            del self._holds[room]
            self._link.drop(room)
