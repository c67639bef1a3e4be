"""An allowed decision's playback (media/gate.py PlaybackLinks): its URL and the stream's playback token, in the
`message` event as in the HTTP answers; with edge signing the token comes beside a link that carries none."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from playgate.bus.protocol import decision_message
from playgate.domain import Decision, Reason, Status, Stream
from playgate.media import EdgeSigner, PlaybackLinks, play_url
from playgate.security import PlaybackClaims, PlaybackTokens

TOKENS = PlaybackTokens("a-secret-of-forty-characters-or-so-1234", 300)
SIGNER = EdgeSigner("e" * 32, 120)


def allowed(now: float) -> Decision:
    return Decision("r1", "u1", "v1", "tv", Status.allowed, 1, 3, now, stream_id="s1", expires_at=now + 90)


@pytest.mark.parametrize("signer", [None, SIGNER], ids=["content gate", "edge signing"])
def test_an_allowed_decision_carries_its_streams_playback_token(signer: EdgeSigner | None) -> None:
    now = time.time()  # the token's expiry is checked against the wall clock, when the test runs
    playback = PlaybackLinks(TOKENS, signer).for_decision(allowed(now), now)
    assert playback is not None
    # the device and a start too (a decision stored before decisions named their stream's: the decision's instant)
    expected = PlaybackClaims(user_id="u1", stream_id="s1", video_id="v1", device_id="tv", started_at=now)
    assert TOKENS.check(playback.token) == expected
    if signer is None:
        assert playback.url == play_url(playback.token)  # the token the URL carries
    else:
        assert playback.url == SIGNER.url(stream_id="s1", video_id="v1", now=now)
        assert playback.token not in playback.url
    message = decision_message(allowed(now), playback)
    assert (message["playbackUrl"], message["playbackToken"]) == (playback.url, playback.token)


@pytest.mark.parametrize("away", [True, False], ids=["away", "at home"])
def test_an_allowed_decisions_token_names_its_streams_start_and_away_flag_as_a_heartbeats_does(away: bool) -> None:
    """The same device asked again for the video it plays: the decision names the stream's earlier start and whether
    it plays away, and its token says what a heartbeat's token of that stream says (a process honouring it in an
    outage counts it against maxAwayStreams and evicts oldest first as the store would)."""
    now = time.time()
    stream = Stream("s1", "u1", "v1", "tv", now - 600, now + 90, away=away)
    decision = replace(allowed(now), started_at=stream.started_at, away=away)
    links = PlaybackLinks(TOKENS)
    playback = links.for_decision(decision, now)
    assert playback is not None
    claims = TOKENS.check(playback.token)
    assert claims == PlaybackClaims("u1", "s1", "v1", device_id="tv", started_at=now - 600, away=away)
    assert claims == TOKENS.check(links.for_stream(stream, now).token)


def test_a_denial_has_no_playback() -> None:
    now = time.time()
    denied = Decision("r2", "u1", "v1", "tv", Status.denied, 3, 3, now, reason=Reason.limit_reached)
    assert PlaybackLinks(TOKENS, SIGNER).for_decision(denied, now) is None
    assert {"playbackUrl", "playbackToken"}.isdisjoint(decision_message(denied, None))


def test_a_playing_streams_token_names_its_device_start_and_whether_it_plays_away() -> None:
    """A heartbeat's fresh token tells a process that never saw the stream all it needs to hold it as the store did
    (tests/distributed/test_outage.py writes one back from it)."""
    now = time.time()
    away = Stream("s1", "u1", "v1", "phone", now - 60, now + 90, away=True)
    claims = TOKENS.check(PlaybackLinks(TOKENS).for_stream(away, now).token)
    assert claims == PlaybackClaims("u1", "s1", "v1", device_id="phone", started_at=now - 60, away=True)
    at_home = TOKENS.check(PlaybackLinks(TOKENS).for_stream(replace(away, away=False), now).token)
    assert at_home.away is False
