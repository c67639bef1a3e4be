"""Playback tokens: bound to one stream, short-lived, and never interchangeable with access tokens."""

from __future__ import annotations

import time

import pytest

from playgate.domain import Stream
from playgate.errors import Unauthorized
from playgate.security import PlaybackClaims, PlaybackTokens, TokenIssuer

SECRET = "a-secret-for-the-playback-token-tests-0123456789"
STREAM = Stream("s1", "u1", "v1", "tv", 1_800_000_000.25, 1_800_000_090.25)


def test_a_token_names_its_stream_user_and_video() -> None:
    tokens = PlaybackTokens(SECRET, ttl_s=60)
    token = tokens.issue(STREAM, now=time.time())
    assert tokens.check(token) == PlaybackClaims(
        user_id="u1", stream_id="s1", video_id="v1", device_id="tv", started_at=STREAM.started_at
    )


def test_an_expired_token_is_refused() -> None:
    tokens = PlaybackTokens(SECRET, ttl_s=60)
    token = tokens.issue(STREAM, now=time.time() - 3600)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.check(token)


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "é"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthorized):
        PlaybackTokens(SECRET, ttl_s=60).check(token)


def test_access_and_playback_tokens_do_not_stand_in_for_each_other() -> None:
    access = TokenIssuer(SECRET, ttl_s=60)
    playback = PlaybackTokens(SECRET, ttl_s=60)
    access_token = access.issue("u1", admin=True, now=time.time())
    playback_token = playback.issue(STREAM, now=time.time())
    with pytest.raises(Unauthorized):
        playback.check(access_token)
    with pytest.raises(Unauthorized):
        access.check(playback_token)


def test_another_secret_makes_a_forged_token() -> None:
    forged = PlaybackTokens(SECRET + "-other", ttl_s=60).issue(STREAM, now=time.time())
    with pytest.raises(Unauthorized, match="not valid"):
        PlaybackTokens(SECRET, ttl_s=60).check(forged)
