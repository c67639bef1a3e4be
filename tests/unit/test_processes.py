"""Which member a connection belongs to, from the first bytes of its first request; a connection the owner could
not hand to a member that just died goes to another."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from playgate.bus.hub import Hub, frame
from playgate.bus.local import LocalQueue
from playgate.config import load_settings
from playgate.processes import ProcessGroup, member_of_request, member_of_session, session_ids


@pytest.mark.parametrize(
    ("head", "member"),
    [
        (b"GET /socket.io/?EIO=4&transport=polling&sid=1.AbC-_x HTTP/1.1\r\nHost: x\r\n\r\n", 1),
        (b"POST /socket.io/?EIO=3&transport=polling&t=N1&sid=12.xyz HTTP/1.1\r\n", 12),
        (b"GET /socket.io/?EIO=4&transport=websocket&sid=0.q HTTP/1.1\r\nUpgrade: websocket\r\n", 0),
        (b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n", None),  # a handshake: any member
        (b"GET /socket.io/?EIO=4&transport=polling&sid=AbCdEf HTTP/1.1\r\n", None),  # no member in the id
        (b"GET /v1/plays/r1?sid=1.x HTTP/1.1\r\n", None),  # not a Socket.IO request
        (b"GET /socket.io/?sid=1.x", None),  # the line is not complete
        (b"", None),
        (b"\x16\x03\x01\x02\x00", None),  # not HTTP at all
    ],
)
def test_a_connection_goes_to_the_member_of_its_session(head: bytes, member: int | None) -> None:
    assert member_of_request(head) == member


def test_session_ids_carry_their_member() -> None:
    ids = iter(["a", "b"])
    generate = session_ids(3, lambda: next(ids))
    assert [generate(), generate()] == ["3.a", "3.b"]
    assert member_of_session("3.a") == 3
    assert member_of_session("x.a") is None


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """Unix socket pairs made by a test, closed at its end."""
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for one, other in made:
        one.close()
        other.close()


async def test_a_connection_for_a_member_that_just_died_goes_to_another(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """Member 0 died: its end of the connection channel is closed, but the hub has not read its link's end yet
    (it still counts as ready). A connection of one of its sessions goes to member 1 instead of being dropped."""
    hub = Hub(LocalQueue())
    group = ProcessGroup(load_settings({}), 2, hub)
    members = []
    for slot in group.slots:
        link, channel = socket.socketpair(), socket.socketpair()
        pairs += [link, channel]
        await hub.attach(slot.index, link[0])
        link[1].sendall(frame(["ready"]))
        channel[0].setblocking(False)
        slot.connections = channel[0]
        members.append(channel[1])
    while len(hub.ready()) < 2:
        hub.changed.clear()
        await asyncio.wait_for(hub.changed.wait(), 5)
    members[0].close()  # member 0 died
    client, accepted = socket.socketpair()
    pairs.append((client, accepted))
    client.sendall(b"GET /socket.io/?EIO=4&transport=polling&sid=0.x HTTP/1.1\r\n")
    try:
        await group._hand_on(accepted)
        members[1].settimeout(5)
        _data, fds, _flags, _addr = socket.recv_fds(members[1], 1, 1)
        assert len(fds) == 1, "member 1 got the connection"
        handed = socket.socket(fileno=fds[0])
        handed.sendall(b"HTTP/1.1 200 OK\r\n")
        handed.close()
        assert client.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        await hub.close()
