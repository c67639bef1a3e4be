"""Passwords (argon2) and access tokens (JWT, HS256): `sub` is the user id, admins carry scope `admin`."""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from playgate.errors import Unauthorized

ALGORITHM = "HS256"
ADMIN_SCOPE = "admin"

_hasher = PasswordHasher()


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

    def issue(self, user_id: str, *, admin: bool, now: float) -> str:
        """A signed token for `user_id`, valid for ttl_s from `now`."""
        payload: dict[str, object] = {"sub": user_id, "iat": int(now), "exp": int(now) + self.ttl_s}
        if admin:
            payload["scope"] = ADMIN_SCOPE
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def check(self, token: str) -> Claims:
        """The claims of a valid token; Unauthorized for a missing, malformed, expired or forged one."""
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
        return Claims(user_id=sub, admin=ADMIN_SCOPE in scopes)
