"""The shapes shared below the API: a denial's conflicts as the socket and the HTTP answer carry them; a play
request and its decision as the queues and channels between processes carry them; a video URL as the OpenAPI
document and the validator take it."""

from __future__ import annotations

import dataclasses
import re

import orjson
import pytest
from pydantic import ValidationError

from playgate.api.schemas import ConflictOut, PlayOut, VideoIn
from playgate.bus.protocol import Playback, conflict_message, decision_message, request_from_json, request_to_json
from playgate.connections import decision_from_json, decision_to_json
from playgate.domain import Decision, PlayRequest, Reason, Status, Stream
from playgate.wire import PLAYABLE_PATTERN


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


def test_a_queued_request_keeps_every_field() -> None:
    """The Redis queue and the owner's queue (serve --processes) carry every field the rule reads: a field left
    out was decided as its default by the worker (a video's kinds were, so kind caps held in one process only)."""
    request = PlayRequest(
        request_id="r1",
        user_id="u1",
        video_id="v1",
        device_id="tv",
        accepted_at=1_700_000_000.5,
        replace_stream_ids=("s1", "s2"),
        replace_others=True,
        device_name="Den TV",
        replace_device_stream=True,
        kinds=("uhd", "live"),
        away=True,
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    defaults = PlayRequest("", "", "", "", 0.0)
    for field in dataclasses.fields(PlayRequest):  # a field added later is set above, or this fails
        assert getattr(request, field.name) != getattr(defaults, field.name), field.name
    assert request_from_json(request_to_json(request)) == request


def test_a_published_decision_keeps_every_field() -> None:
    """What a worker publishes (and keeps under the decision's key) is the decision the API answers with."""
    decision = Decision(
        request_id="r1",
        user_id="u1",
        video_id="v1",
        device_id="tv",
        status=Status.denied,
        active=2,
        limit=2,
        decided_at=1_700_000_000.123456,
        stream_id="s1",
        reason=Reason.kind_limit,
        expires_at=1_700_000_090.654321,
        reason_tag="uhd",
        shadow_reason="title_limit",
        started_at=1_699_999_940.987654,
        away=True,
    )
    defaults = Decision("", "", "", "", Status.allowed, 0, 0, 0.0)
    for field in dataclasses.fields(Decision):
        assert getattr(decision, field.name) != getattr(defaults, field.name), field.name
    assert decision_from_json(orjson.loads(orjson.dumps(decision_to_json(decision)))) == decision


def test_a_decision_kept_by_a_version_before_reads_as_started_at_no_known_instant_at_home() -> None:
    """A decision kept or published before decisions named their stream's start and away flag (no `st`, `aw`): its
    playback token then names the decision's instant, at home (PlaybackLinks.for_decision)."""
    before = {"r": "r1", "u": "u1", "v": "v1", "d": "tv", "s": "allowed", "a": 1, "l": 2, "t": "1.5", "sid": "s1"}
    decision = decision_from_json(before)
    assert (decision.started_at, decision.away) == (None, False)
    assert decision == Decision("r1", "u1", "v1", "tv", Status.allowed, 1, 2, 1.5, stream_id="s1")


def test_a_request_queued_by_a_version_before_reads_with_the_defaults() -> None:
    before = orjson.dumps({"rid": "r1", "uid": "u1", "vid": "v1", "dev": "tv", "at": 1.0, "rep": None})
    assert request_from_json(before) == PlayRequest("r1", "u1", "v1", "tv", 1.0)
    with pytest.raises(TypeError):
        request_from_json(orjson.dumps({"rid": "r1", "uid": "u1", "vid": "v1", "dev": "tv", "at": 1.0, "k": "uhd"}))


@pytest.mark.parametrize(
    "decision",
    [
        Decision("r1", "u1", "v1", "tv", Status.allowed, 1, 2, 1_700_000_000.0, "s1", None, 1_700_000_090.0),
        Decision(
            "r2", "u1", "v2", "tv", Status.denied, 1, 2, 1_700_000_000.0, reason=Reason.kind_limit, reason_tag="uhd"
        ),
    ],
)
def test_the_socket_message_says_what_the_http_answer_says(decision: Decision) -> None:
    """A player merges a decision pushed on its socket into its pending answer (the player kit does): every field
    both carry is the same, the lease's end (heartbeats are timed by it) and the reason's tag included."""
    playback = Playback("/v1/play/t/master.m3u8", "t") if decision.status is Status.allowed else None
    pushed = decision_message(decision, playback, [])
    answered = PlayOut.of(decision, playback).model_dump(by_alias=True, exclude_none=True)
    shared = (answered.keys() & pushed.keys()) - {"conflicts"}
    assert shared >= {"requestId", "deviceId", "status", "active", "limit"}
    assert {k: pushed[k] for k in shared} == {k: answered[k] for k in shared}
    missing = answered.keys() - pushed.keys() - {"videoId"}  # the socket's video is data.videoId, as the seed's
    assert not missing, missing
    assert pushed["data"]["videoId"] == answered["videoId"]


@pytest.mark.parametrize(
    ("url", "playable"),
    [
        ("/", True),
        ("/media/clip.mp4", True),
        ("/a//b", True),
        ("http://cdn.example/v.m3u8", True),
        ("HTTPS://x", True),
        ("https:///", True),
        ("//cdn.example/v.m3u8", False),  # scheme-relative: another host, not this server's path
        ("http://", False),
        ("http:/x", False),
        ("ftp://x", False),
        ("javascript:alert(1)", False),
        ("data:text/html,x", False),
        ("/a b", False),
        ("/a\x7f", False),
        ("/a\n", False),  # Python's `$` matches before a final newline; fullmatch and the validator do not
        ("0", False),
        ("", False),
    ],
)
def test_a_video_url_is_taken_as_the_openapi_pattern_says(url: str, playable: bool) -> None:
    """The document's `url` pattern (what a client or a fuzzer checks against) is the rule the validator applies."""
    schema = VideoIn.model_json_schema()["properties"]["url"]
    assert schema["pattern"] == PLAYABLE_PATTERN
    assert (re.fullmatch(PLAYABLE_PATTERN.removeprefix("^").removesuffix("$"), url) is not None) is playable
    try:
        VideoIn.model_validate({"title": "t", "url": url})
    except ValidationError:
        assert not playable
    else:
        assert playable
