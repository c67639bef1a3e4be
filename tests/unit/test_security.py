"""Passwords and tokens."""

from __future__ import annotations

import time

import jwt
import pytest

from playgate.domain import Stream
from playgate.errors import Unauthorized
from playgate.security import (
    PLAYBACK_AUDIENCE,
    PlaybackClaims,
    PlaybackTokens,
    TokenIssuer,
    hash_password,
    verify_password,
)

SECRET = "x" * 40


def test_password_hash_verifies_only_the_password() -> None:
    hashed = hash_password("user1")
    assert hashed.startswith("$argon2")
    assert verify_password(hashed, "user1")
    assert not verify_password(hashed, "user2")
    assert not verify_password("not a hash", "user1")


def test_token_round_trip_and_admin_scope() -> None:
    issuer = TokenIssuer(SECRET, ttl_s=60)
    now = time.time()
    claims = issuer.check(issuer.issue("7", admin=True, now=now))
    assert (claims.user_id, claims.admin) == ("7", True)
    assert issuer.check(issuer.issue("8", admin=False, now=now)).admin is False


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        jwt.encode({"sub": "1", "exp": 4_000_000_000}, "another-secret-of-enough-length-here", algorithm="HS256"),
        jwt.encode({"sub": "1", "exp": 1}, SECRET, algorithm="HS256"),
        jwt.encode({"exp": 4_000_000_000}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "1"}, SECRET, algorithm="HS256"),
    ],
    ids=["empty", "garbage", "forged", "expired", "no-sub", "no-exp"],
)
def test_bad_tokens_are_unauthorized(token: str) -> None:
    with pytest.raises(Unauthorized):
        TokenIssuer(SECRET, ttl_s=60).check(token)


def test_a_remembered_token_still_expires_and_a_forged_twin_is_refused() -> None:
    issuer = TokenIssuer(SECRET, ttl_s=1)
    token = issuer.issue("7", admin=False, now=time.time())
    assert issuer.check(token).user_id == "7"
    assert issuer.check(token).user_id == "7"  # remembered
    header, payload, signature = token.split(".")
    with pytest.raises(Unauthorized):
        issuer.check(f"{header}.{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}")
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires_at - time.time()) + 0.01)
    with pytest.raises(Unauthorized, match="expired"):
        issuer.check(token)


@pytest.mark.parametrize("video_id", ["1", "a-video:ü|@x", "v" * 64])
def test_a_playback_token_is_a_jwt_that_pyjwt_verifies_with_its_claims(video_id: str) -> None:
    tokens = PlaybackTokens("a-secret-of-forty-characters-or-so-1234", 300)
    now = time.time()
    token = tokens.issue(Stream("75-00ff", "u1", video_id, "", now, now), now=now)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, tokens._keys[0], algorithms=["HS256"], audience=PLAYBACK_AUDIENCE)
    assert (claims["sub"], claims["sid"], claims["vid"]) == ("u1", "75-00ff", video_id)
    assert tokens.check(token) == PlaybackClaims(user_id="u1", stream_id="75-00ff", video_id=video_id, started_at=now)
    with pytest.raises(Unauthorized):
        PlaybackTokens("another-secret-of-forty-characters-12345", 300).check(token)
