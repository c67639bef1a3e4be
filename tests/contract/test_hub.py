"""The process group's bus (bus.hub) in one process: an owner's Hub and two members' links over real Unix
socket pairs. Members put and look; the owner's queue holds; a fan-out frame reaches the members holding its
users' rooms (and those waiting for its decisions), and no other."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from playgate.bus.hub import RECENT_DECISIONS, GroupFanout, Hub, MemberFanout, MemberLink, MemberQueue
from playgate.bus.local import LocalQueue
from playgate.bus.protocol import user_room
from playgate.domain import Decision, EndedStream, Outcome, PlayRequest, Reason, Status, Stream
from playgate.errors import Unavailable


@dataclass
class Sockets:
    """An Emitter that records what a member would emit to its own sockets."""

    emitted: list[tuple[str, Any, str | None]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def emit(self, event: str, data: Any = None, *, room: str | None = None) -> None:
        self.emitted.append((event, data, room))
        self.arrived.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.emitted) < count:
                self.arrived.clear()
                await self.arrived.wait()


@dataclass
class Group:
    hub: Hub
    owner_fanout: GroupFanout
    links: list[MemberLink]
    queues: list[MemberQueue]
    fanouts: list[MemberFanout]
    sockets: list[Sockets]


@pytest_asyncio.fixture
async def group() -> AsyncIterator[Group]:
    hub = Hub(LocalQueue())
    links, queues, fanouts, sockets = [], [], [], []
    for index in range(2):
        owner_end, member_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        await hub.attach(index, owner_end)
        link = MemberLink(member_end, index)
        local = Sockets()
        fanout = MemberFanout(link, local)
        await fanout.start()
        links.append(link)
        queues.append(MemberQueue(link))
        fanouts.append(fanout)
        sockets.append(local)
    yield Group(hub, GroupFanout(hub.broadcast), links, queues, fanouts, sockets)
    for fanout in fanouts:
        await fanout.close()
    await hub.close()


def play(rid: str) -> PlayRequest:
    return PlayRequest(rid, "u1", "v1", "tv", accepted_at=1_800_000_000.5, replace_stream_ids=("s0",), device_name="TV")


def allowed(rid: str) -> Decision:
    return Decision(rid, "u1", "v1", "tv", Status.allowed, 1, 3, 1_800_000_001.25, stream_id=f"s-{rid}")


async def test_a_request_put_by_a_member_is_the_owners_until_acked(group: Group) -> None:
    first, second = group.queues
    await first.put(play("a"))
    assert await second.pending("a") == play("a")
    assert await second.depth() == 1
    [delivery] = await group.hub.queue.take(10, wait_s=1.0)
    assert delivery.request == play("a")
    assert await first.pending("a") == play("a")  # in hand: still pending
    await group.hub.queue.ack([delivery])
    assert await first.pending("a") is None
    assert await first.depth() == 0
    await first.ping()


def allowed_for(rid: str, user_id: str) -> Decision:
    return Decision(rid, user_id, "v1", "tv", Status.allowed, 1, 3, 1_800_000_001.25, stream_id=f"s-{rid}")


async def test_a_published_decision_reaches_every_member_holding_its_user(group: Group) -> None:
    for link in group.links:
        await link.hold(user_room("u1"))
    ended = EndedStream(Stream("old", "u1", "v2", "phone", 1.0, 2.0), Reason.evicted)
    await group.owner_fanout.publish([Outcome(allowed("r1"), ended=(ended,))])
    for local in group.sockets:
        await local.wait_for(2)
        [(event, body, room), (ended_event, ended_body, _)] = local.emitted
        assert (event, room, body["requestId"], body["streamId"]) == ("message", user_room("u1"), "r1", "s-r1")
        assert (ended_event, ended_body["streamId"], ended_body["reason"]) == ("stream_ended", "old", "evicted")


async def test_a_member_without_a_socket_of_the_user_gets_nothing(group: Group) -> None:
    await group.links[0].hold(user_room("u1"))
    await group.links[1].hold(user_room("u2"))
    await group.owner_fanout.publish([Outcome(allowed_for("r1", "u1"))])
    await group.owner_fanout.publish([Outcome(allowed_for("r2", "u2"))])
    # Frames keep their order on a link: once u2's decision is in, u1's would have been before it.
    for index, (user, rid) in enumerate([("u1", "r1"), ("u2", "r2")]):
        local = group.sockets[index]
        await local.wait_for(1)
        assert [(room, body["requestId"]) for _, body, room in local.emitted] == [(user_room(user), rid)]


async def test_a_member_gets_a_users_decisions_from_its_hold_until_its_drop(group: Group) -> None:
    await group.links[1].hold(user_room("u2"))
    await group.owner_fanout.publish([Outcome(allowed_for("r1", "u1"))])  # member 0 holds no u1 yet
    await group.links[0].hold(user_room("u1"))
    await group.owner_fanout.publish([Outcome(allowed_for("r2", "u1"))])
    group.links[0].drop(user_room("u1"))
    await group.queues[0].depth()  # an answered call: the owner has read the drop
    await group.owner_fanout.publish([Outcome(allowed_for("r3", "u1"))])
    await group.links[0].hold(user_room("u2"))
    await group.owner_fanout.publish([Outcome(allowed_for("r4", "u2"))])
    await group.sockets[0].wait_for(2)
    assert [body["requestId"] for _, body, _ in group.sockets[0].emitted] == ["r2", "r4"]
    await group.sockets[1].wait_for(1)
    assert [body["requestId"] for _, body, _ in group.sockets[1].emitted] == ["r4"]


async def test_an_emit_to_another_room_reaches_every_member(group: Group) -> None:
    await group.owner_fanout._emitter.emit("notice", {"n": 1}, room="elsewhere")
    for local in group.sockets:
        await local.wait_for(1)
        assert local.emitted == [("notice", {"n": 1}, "elsewhere")]


async def test_a_waiter_on_a_member_without_sockets_is_woken(group: Group) -> None:
    waiter = group.fanouts[1].watch("r1")
    await group.owner_fanout.publish([Outcome(allowed("r1"))])
    assert await asyncio.wait_for(waiter, 5) == allowed("r1")
    assert group.sockets[1].emitted == []


async def test_a_wait_told_after_the_decision_was_sent_is_answered_from_the_recent_ones(group: Group) -> None:
    await group.owner_fanout.publish([Outcome(allowed("r1"))])
    waiter = group.fanouts[0].watch("r1")  # the owner reads this `wait` after it sent r1
    assert await asyncio.wait_for(waiter, 5) == allowed("r1")
    group.fanouts[0].unwatch("r1", waiter)
    assert await group.queues[0].depth() == 0  # an answered call: the owner has read the unwait too
    assert len(group.hub._recent) == 1 <= RECENT_DECISIONS
    assert group.hub._waits == {}


async def test_a_members_announcement_reaches_the_members_holding_its_user(group: Group) -> None:
    await group.links[1].hold(user_room("u7"))
    await group.links[0].hold(user_room("u8"))
    ended = EndedStream(Stream("s9", "u7", "v1", "tv", 1.0, 2.0), Reason.stopped)
    await group.fanouts[0].announce([ended])
    await group.owner_fanout.publish([Outcome(allowed_for("r1", "u8"))])
    await group.sockets[1].wait_for(1)
    assert group.sockets[1].emitted == [
        ("stream_ended", {"streamId": "s9", "videoId": "v1", "reason": "stopped"}, "user:u7")
    ]
    await group.sockets[0].wait_for(1)
    assert [event for event, _, _ in group.sockets[0].emitted] == ["message"]


async def test_a_member_without_its_owner_answers_unavailable_and_says_so(group: Group) -> None:
    lost = asyncio.Event()
    group.links[0].on_lost = lost.set
    await group.hub.close()
    await asyncio.wait_for(lost.wait(), 5)
    with pytest.raises(Unavailable):
        await group.queues[0].put(play("b"))
