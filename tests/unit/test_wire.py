"""The shapes shared below the API: a denial's conflicts as the socket and the HTTP answer carry them."""

from __future__ import annotations

import pytest

from playgate.api.schemas import ConflictOut
from playgate.bus.protocol import conflict_message
from playgate.domain import Stream


@pytest.mark.parametrize(
    ("started_at", "expires_at", "last_seen"),
    [
        (1_700_000_000.0, 1_700_000_090.0, "2023-11-14T22:13:50.000Z"),  # renewed: one lease before it runs out
        (1_700_000_000.0, 1_700_000_010.0, "2023-11-14T22:13:20.000Z"),  # younger than a lease: its start
    ],
)
def test_a_socket_conflict_and_the_http_one_say_the_same(started_at: float, expires_at: float, last_seen: str) -> None:
    stream = Stream("s1", "u1", "v1", "tv", started_at, expires_at, device_name="Den TV")
    sent = conflict_message(stream, lease_s=60.0)
    assert sent == {
        "streamId": "s1",
        "videoId": "v1",
        "deviceId": "tv",
        "deviceName": "Den TV",
        "startedAt": "2023-11-14T22:13:20.000Z",
        "lastSeenAt": last_seen,
    }
    assert ConflictOut.of(stream, 60.0).model_dump() == sent
