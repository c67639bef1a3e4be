"""Which member a connection belongs to, from the first bytes of its first request."""

from __future__ import annotations

import pytest

from playgate.processes import member_of_request, member_of_session, session_ids


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
