"""Passwords (argon2), access tokens (JWT, HS256: `sub` is the user id, admins carry scope `admin`) and playback
tokens (JWT bound to one stream of one user, signed with a key of their own)."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from playgate.errors import Unauthorized

ALGORITHM = "HS256"
ADMIN_SCOPE = "admin"
# Tokens verified once are remembered until they expire, so that a player's every request skips the HMAC and the
# JSON decoding; the map is emptied when it reaches this many, which bounds it.
CHECKED_TOKENS_MAX = 10_000
PLAYBACK_AUDIENCE = "playgate:playback"
# Playback tokens travel in URLs and logs: signing them with a key derived for them alone means that a leaked
# playback token can never be replayed as an access token, nor the other way round.
_PLAYBACK_KEY_LABEL = b"playgate playback token key v1"

_hasher = PasswordHasher()
_ClaimsT = TypeVar("_ClaimsT")


class _Verified(Generic[_ClaimsT]):
    """Tokens that verified, with their claims, until they expire; bounded by emptying at CHECKED_TOKENS_MAX.

    Only a token that verified is kept, under its exact text, so a forged one is checked every time.
    """

    def __init__(self) -> None:
        self._claims: dict[str, tuple[_ClaimsT, float]] = {}

    def get(self, token: str) -> _ClaimsT | None:
        """The claims of a token verified before and not yet expired."""
        found = self._claims.get(token)
        if found is None:
            return None
        if time.time() < found[1]:
            return found[0]
        del self._claims[token]
        return None

    def keep(self, token: str, claims: _ClaimsT, expires_at: float) -> _ClaimsT:
        """Remember a token that verified; its claims."""
        if len(self._claims) >= CHECKED_TOKENS_MAX:
            self._claims.clear()
        self._claims[token] = (claims, expires_at)
        return claims


def hash_password(password: str) -> str:
    """An argon2id hash of `password`."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches `password_hash`."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: who, and whether an admin."""

    user_id: str
    admin: bool


class TokenIssuer:
    """Issues and checks access tokens with one secret; the clock is passed in."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s
        self._checked: _Verified[Claims] = _Verified()

    def issue(self, user_id: str, *, admin: bool, now: float) -> str:
        """A signed token for `user_id`, valid for ttl_s from `now`."""
        payload: dict[str, object] = {"sub": user_id, "iat": int(now), "exp": int(now) + self.ttl_s}
        if admin:
            payload["scope"] = ADMIN_SCOPE
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def check(self, token: str) -> Claims:
        """The claims of a valid token; Unauthorized for a missing, malformed, expired or forged one."""
        checked = self._checked.get(token)
        if checked is not None:
            return checked
        try:
            payload = jwt.decode(token, self._secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid.") from None
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("The token names no user.")
        scopes = str(payload.get("scope", "")).split()
        return self._checked.keep(token, Claims(user_id=sub, admin=ADMIN_SCOPE in scopes), float(payload["exp"]))


@dataclass(frozen=True, slots=True)
class PlaybackClaims:
    """What a valid playback token says: whose stream, which stream, which video."""

    user_id: str
    stream_id: str
    video_id: str


class PlaybackTokens:
    """Issues and checks playback tokens: short-lived, bound to one stream of one user; the clock is passed in."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        self._key = hmac.new(secret.encode(), _PLAYBACK_KEY_LABEL, hashlib.sha256).hexdigest()
        self.ttl_s = ttl_s
        self._checked: _Verified[PlaybackClaims] = _Verified()

    def issue(self, *, user_id: str, stream_id: str, video_id: str, now: float) -> str:
        """A signed token for one stream, valid for ttl_s from `now`."""
        payload: dict[str, object] = {
            "sub": user_id,
            "sid": stream_id,
            "vid": video_id,
            "aud": PLAYBACK_AUDIENCE,
            "exp": int(now) + self.ttl_s,
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM)

    def check(self, token: str) -> PlaybackClaims:
        """The claims of a valid playback token; Unauthorized for a malformed, expired or forged one.

        A player sends the same token with every segment (a request every 2 s or so): once verified, it costs a
        dictionary lookup until it expires."""
        checked = self._checked.get(token)
        if checked is not None:
            return checked
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=PLAYBACK_AUDIENCE,
                options={"require": ["sub", "sid", "vid", "exp", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The playback token has expired; ask for the stream again.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The playback token is not valid.") from None
        claims = (payload.get("sub"), payload.get("sid"), payload.get("vid"))
        if not all(isinstance(c, str) and c for c in claims):
            raise Unauthorized("The playback token names no stream.")
        found = PlaybackClaims(user_id=str(claims[0]), stream_id=str(claims[1]), video_id=str(claims[2]))
        return self._checked.keep(token, found, float(payload["exp"]))
