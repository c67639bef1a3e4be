"""Engine.IO 3 framing (payload lengths in UTF-16 units, as JavaScript counts) and a silent client's deadline."""

from __future__ import annotations

from typing import Any

import pytest

from playgate.api.legacy_socketio import (
    CLOSE,
    LegacyAwareServer,
    LegacySession,
    LegacySocketIO,
    decode_payload,
    encode_payload,
    is_engineio3,
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
