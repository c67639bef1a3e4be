"""Engine.IO 3 framing (payload lengths in UTF-16 units, as JavaScript counts), a silent client's deadline, and a
long poll whose client goes away (Engine.IO 3 and 4)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import socketio
from starlette.types import Message

from playgate.api.legacy_socketio import (
    CLOSE,
    LegacyAwareServer,
    LegacySession,
    LegacySocketIO,
    decode_payload,
    encode_payload,
    is_engineio3,
    is_long_poll,
    utf16_len,
)


@pytest.mark.parametrize(
    ("text", "units"),
    [("", 0), ("40", 2), ("€€€", 3), ("😀", 2), ('42["message",{"t":"a😀b"}]', 26)],
)
def test_utf16_len_counts_as_javascript_does(text: str, units: int) -> None:
    assert utf16_len(text) == units


@pytest.mark.parametrize(
    ("packets", "payload"),
    [
        (["3"], "1:3"),
        (['0{"sid":"x"}', "40"], '12:0{"sid":"x"}2:40'),
        (["4hello", "4€€€"], "6:4hello4:4€€€"),
        (["4😀:x"], "5:4😀:x"),
        ([], ""),
    ],
)
def test_payloads_encode_and_decode(packets: list[str], payload: str) -> None:
    assert encode_payload(packets) == payload
    assert decode_payload(payload) == packets


@pytest.mark.parametrize("payload", ["3", "x:3", "5:3", "2:40:", "-1:3"])
def test_what_is_not_a_payload_is_refused(payload: str) -> None:
    with pytest.raises(ValueError, match="payload"):
        decode_payload(payload)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({"type": "http", "path": "/socket.io/", "query_string": b"EIO=3&transport=polling"}, True),
        ({"type": "websocket", "path": "/socket.io", "query_string": b"transport=websocket&EIO=3"}, True),
        ({"type": "http", "path": "/socket.io/", "query_string": b"EIO=4&transport=polling"}, False),
        ({"type": "http", "path": "/socket.io/", "query_string": b"EIO=31"}, False),
        ({"type": "http", "path": "/videos", "query_string": b"EIO=3"}, False),
        ({"type": "lifespan"}, False),
    ],
)
def test_only_engineio3_on_the_socket_path_is_taken(scope: dict[str, Any], expected: bool) -> None:
    assert is_engineio3(scope, "/socket.io") is expected


async def test_a_client_that_stops_pinging_is_closed_after_ping_interval_plus_timeout() -> None:
    now = [1000.0]
    sio = LegacyAwareServer(async_mode="asgi", ping_interval=25, ping_timeout=20)
    adapter = LegacySocketIO(None, sio, lambda: None, path="socket.io", origins=None, clock=lambda: now[0])
    session = LegacySession("eio-1", now[0], on_overflow=adapter._close)
    sio.legacy_sessions[session.eio_sid] = session
    now[0] += 44.0
    adapter._check_alive(session)
    assert not session.closed, "44 s of silence is within 25 + 20"
    await adapter._received(session, "2")  # a ping: answered, and the clock starts again
    assert session.take() == ["3"]
    now[0] += 44.0
    adapter._check_alive(session)
    assert not session.closed
    now[0] += 1.0
    adapter._check_alive(session)
    assert session.closed
    assert session.take() == [CLOSE]
    assert session.eio_sid not in sio.legacy_sessions


class Poll:
    """One HTTP GET driven through an ASGI app by hand: its client can go away while it waits."""

    def __init__(self, app: Any, query: str) -> None:
        self.scope = {"type": "http", "method": "GET", "path": "/socket.io/", "query_string": query.encode(),
                      "headers": []}  # fmt: skip
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.sent: list[Message] = []
        self.task = asyncio.ensure_future(app(self.scope, self.inbox.get, self._send))

    async def _send(self, message: Message) -> None:
        self.sent.append(message)

    async def answer(self) -> bytes:
        """What the app answered, once it is done (within 2 s; not cancelled here, which would end a poll too)."""
        await asyncio.wait((self.task,), timeout=2)
        assert self.task.done(), "the poll still waits"
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


@pytest.mark.parametrize(
    ("query", "expected"),
    [("EIO=4&transport=polling&sid=abc", True), ("EIO=4&transport=polling", False), ("sid=abc&EIO=3", True)],
)
def test_a_long_poll_is_a_get_with_a_session(query: str, expected: bool) -> None:
    scope = {"type": "http", "method": "GET", "path": "/socket.io/", "query_string": query.encode()}
    assert is_long_poll(scope, "/socket.io") is expected
    assert not is_long_poll({**scope, "method": "POST"}, "/socket.io")


def waiting_poll() -> tuple[LegacyAwareServer, LegacySession, Poll]:
    """An Engine.IO 3 session, and a poll of it sent."""
    sio = LegacyAwareServer(async_mode="asgi", ping_interval=25, ping_timeout=20)
    adapter = LegacySocketIO(None, sio, lambda: None, path="socket.io", origins=None)
    session = LegacySession("eio-1", 0.0, on_overflow=adapter._close)
    sio.legacy_sessions[session.eio_sid] = session
    return sio, session, Poll(adapter, "EIO=3&transport=polling&sid=eio-1")


async def test_an_engineio3_poll_whose_client_goes_away_closes_its_session_at_once() -> None:
    sio, session, poll = waiting_poll()
    await asyncio.sleep(0.05)
    assert not poll.task.done(), "nothing to send yet: the poll waits"
    poll.inbox.put_nowait({"type": "http.disconnect"})
    assert await poll.answer() == b"", "nobody to answer"
    assert session.closed
    assert session.eio_sid not in sio.legacy_sessions


async def test_an_engineio3_poll_answers_what_is_pushed_while_it_waits() -> None:
    _, session, poll = waiting_poll()
    await asyncio.sleep(0.05)
    session.push("42")
    assert await poll.answer() == b"2:42"
    assert not session.closed


async def test_an_engineio4_poll_whose_client_goes_away_closes_its_session_at_once() -> None:
    sio = LegacyAwareServer(async_mode="asgi", ping_interval=25, ping_timeout=20)
    adapter = LegacySocketIO(socketio.ASGIApp(sio), sio, lambda: None, path="socket.io", origins=None)
    opened = Poll(adapter, "EIO=4&transport=polling")
    sid = orjson.loads((await opened.answer())[1:])["sid"]
    assert sid in sio.eio.sockets
    poll = Poll(adapter, f"EIO=4&transport=polling&sid={sid}")
    await asyncio.sleep(0.05)
    assert not poll.task.done(), "nothing to send yet: the poll waits"
    poll.inbox.put_nowait({"type": "http.disconnect"})
    await poll.answer()
    assert sid not in sio.eio.sockets, "a poll connection closed prematurely is a transport error"
