"""Passwords (argon2), access tokens (JWT, HS256: `sub` is the user id, admins carry scope `admin`), playback
tokens (JWT bound to one stream of one user, signed with a key of their own), and the platform's own access tokens
(RS256, ES256, EdDSA), checked against its key set (JWKS)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import httpx
import jwt
import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from jwt import PyJWK, PyJWKSet

from playgate.domain import ID_PATTERN, MAX_ID_LEN, Stream
from playgate.errors import Unauthorized, Unavailable
from playgate.values import frozen

log = logging.getLogger("playgate.security")

ALGORITHM = "HS256"
ADMIN_SCOPE = "admin"
# Tokens verified once are remembered until they expire, so that a player's every request skips the HMAC and the
# JSON decoding; the map is emptied when it reaches this many, which bounds it.
CHECKED_TOKENS_MAX = 10_000
PLAYBACK_AUDIENCE = "playgate:playback"
# Playback tokens travel in URLs and logs: signing them with a key derived for them alone means that a leaked
# playback token can never be replayed as an access token, nor the other way round.
_PLAYBACK_KEY_LABEL = b"playgate playback token key v1"

# argon2id with OWASP's first recommended profile (19 MiB, 2 passes, 1 lane): about 25 ms of one core per hash
# here. argon2-cffi's default (RFC 9106's low-memory profile: 64 MiB, 3 passes, 4 lanes) cost about 150 ms of a
# core, so that a platform creating and logging in 1,000 users spent five minutes of CPU on it. A hash carries its
# own parameters: hashes made under the old profile still verify.
PASSWORD_TIME_COST = 2
PASSWORD_MEMORY_KIB = 19 * 1024
PASSWORD_LANES = 1
_hasher = PasswordHasher(time_cost=PASSWORD_TIME_COST, memory_cost=PASSWORD_MEMORY_KIB, parallelism=PASSWORD_LANES)
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


def _decode(token: str, keys: Sequence[str], **options: Any) -> dict[str, Any]:
    """The payload of an HS256 `token` signed with one of `keys`, tried in order (the signing key first: a token it
    signed costs one try); the claims (expiry, audience) are checked once a key verified the signature. PyJWT's
    errors otherwise: InvalidSignatureError when none of the keys signed it."""
    for key in keys[:-1]:
        try:
            return jwt.decode(token, key, algorithms=[ALGORITHM], **options)
        except jwt.InvalidSignatureError:
            continue
    return jwt.decode(token, keys[-1], algorithms=[ALGORITHM], **options)


@frozen
class Claims:
    """What a valid token says: who, and whether an admin."""

    user_id: str
    admin: bool
    epoch: int = 0  # the user's token epoch when it was issued (claim `ep`; absent: 0)


class TokenIssuer:
    """Issues access tokens with one secret and checks them against it and the `accepted` ones (a key being rotated
    out, or in: PLAYGATE_JWT_ACCEPTED_SECRETS); the clock is passed in."""

    def __init__(self, secret: str, ttl_s: int, accepted: Sequence[str] = ()) -> None:
        self._keys = (secret, *accepted)  # the first signs
        self.ttl_s = ttl_s
        self._checked: _Verified[Claims] = _Verified()
        # Every token issued here starts with this header ({"alg":"HS256","typ":"JWT"}, as PyJWT writes it).
        self._header = jwt.encode({}, secret, algorithm=ALGORITHM).split(".")[0] + "."

    def issued_here(self, token: str) -> bool:
        """True when `token` has the header of PlayGate's own tokens (whether it verifies is for check())."""
        return token.startswith(self._header)

    def issue(self, user_id: str, *, admin: bool, now: float, epoch: int = 0) -> str:
        """A signed token for `user_id`, valid for ttl_s from `now`, under the user's token `epoch`."""
        payload: dict[str, object] = {"sub": user_id, "iat": int(now), "exp": int(now) + self.ttl_s}
        if admin:
            payload["scope"] = ADMIN_SCOPE
        if epoch:
            payload["ep"] = epoch
        return jwt.encode(payload, self._keys[0], algorithm=ALGORITHM)

    def check(self, token: str) -> Claims:
        """The claims of a valid token; Unauthorized for a missing, malformed, expired or forged one."""
        checked = self._checked.get(token)
        if checked is not None:
            return checked
        try:
            payload = _decode(token, self._keys, options={"require": ["sub", "exp"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid.") from None
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("The token names no user.")
        scopes = str(payload.get("scope", "")).split()
        epoch = payload.get("ep", 0)
        if not isinstance(epoch, int):
            raise Unauthorized("The token is not valid.")
        claims = Claims(user_id=sub, admin=ADMIN_SCOPE in scopes, epoch=epoch)
        return self._checked.keep(token, claims, float(payload["exp"]))


@frozen
class PlaybackClaims:
    """What a valid playback token says: whose stream, which stream, which video; and, in tokens issued since they
    were added, which device plays it and when it started (epoch seconds), so that a process that honours the
    stream from its token alone during an outage knows it as the store did (a decision's token names its stream's
    start and away flag as a heartbeat's does; one of a decision stored before decisions carried them names the
    decision's instant, at home)."""

    user_id: str
    stream_id: str
    video_id: str
    device_id: str = ""
    started_at: float | None = None
    away: bool = False  # from outside the household's networks


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_PLAYBACK_HEADER = _b64(b'{"alg":"HS256","typ":"JWT"}') + b"."


def _playback_key(secret: str) -> str:
    return hmac.new(secret.encode(), _PLAYBACK_KEY_LABEL, hashlib.sha256).hexdigest()


class PlaybackTokens:
    """Issues playback tokens (short-lived, bound to one stream of one user) under one secret, and checks them
    against it and the `accepted` ones; the clock is passed in."""

    def __init__(self, secret: str, ttl_s: int, accepted: Sequence[str] = ()) -> None:
        self._keys = [_playback_key(s) for s in (secret, *accepted)]  # the first signs
        self.ttl_s = ttl_s
        self._checked: _Verified[PlaybackClaims] = _Verified()
        # The HMAC state after the key, copied for each token: one token signed per allowed decision.
        self._signer = hmac.new(self._keys[0].encode(), digestmod=hashlib.sha256)

    def issue(self, stream: Stream, *, now: float) -> str:
        """A signed token for one stream, valid for ttl_s from `now`: its user, video and id, and its device, start
        and whether it plays away from home, for a process that has to honour it from the token alone."""
        payload: dict[str, object] = {
            "sub": stream.user_id,
            "sid": stream.id,
            "vid": stream.video_id,
            "aud": PLAYBACK_AUDIENCE,
            "exp": int(now) + self.ttl_s,
            "st": stream.started_at,
        }
        if stream.device_id:
            payload["dev"] = stream.device_id
        if stream.away:
            payload["aw"] = True
        # The JWT PyJWT's jwt.encode writes (the same header, claims in this order, compact JSON), made here: a
        # third of its cost, on every allowed decision. check() verifies it with PyJWT.
        signing_input = _PLAYBACK_HEADER + _b64(orjson.dumps(payload))
        signer = self._signer.copy()
        signer.update(signing_input)
        return (signing_input + b"." + _b64(signer.digest())).decode()

    def check(self, token: str) -> PlaybackClaims:
        """The claims of a valid playback token; Unauthorized for a malformed, expired or forged one.

        A player sends the same token with every segment (a request every 2 s or so): once verified, it costs a
        dictionary lookup until it expires."""
        checked = self._checked.get(token)
        if checked is not None:
            return checked
        try:
            payload = _decode(
                token,
                self._keys,
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
        device, started, away = payload.get("dev", ""), payload.get("st"), payload.get("aw", False)
        if not isinstance(device, str) or not isinstance(away, bool) or type(started) not in (int, float, type(None)):
            raise Unauthorized("The playback token is not valid.")
        found = PlaybackClaims(
            user_id=str(claims[0]),
            stream_id=str(claims[1]),
            video_id=str(claims[2]),
            device_id=device,
            started_at=None if started is None else float(started),
            away=away,
        )
        return self._checked.keep(token, found, float(payload["exp"]))


# ---- the platform's own tokens, checked against its key set ------------------------------------------------

# Public-key algorithms only, each with the key type it needs: a key set never verifies an HMAC (HS256 "signed"
# with a public key is the classic confusion attack), nor `none`.
KEY_TYPES = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
DISCOVERY_PATH = "/.well-known/openid-configuration"
_ID = re.compile(ID_PATTERN)
FETCH_TIMEOUT_S = 5.0


class KeySet:
    """The platform's JWKS, fetched over HTTP and cached; refetched when it is older than `ttl_s`, or when a token
    names a `kid` it lacks, but then at most once per `refetch_s`, so that a flood of forged kids cannot hammer the
    identity provider. With only an OpenID issuer, the key set's URL is discovered from its configuration."""

    def __init__(
        self,
        *,
        jwks_url: str | None,
        oidc_issuer: str | None,
        ttl_s: float,
        refetch_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._jwks_url = jwks_url
        self._oidc_issuer = oidc_issuer
        self._ttl_s = ttl_s
        self._refetch_s = refetch_s
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        self.fetches = 0

    async def key(self, kid: str) -> PyJWK:
        """The key with this `kid`; Unauthorized when the key set, even refetched, has none."""
        now = self._clock()
        key = self._keys.get(kid)
        if key is not None and self._fetched_at is not None and now - self._fetched_at < self._ttl_s:
            return key
        async with self._lock:  # concurrent requests with one new kid share one fetch
            key = self._keys.get(kid)
            fetched_at = self._fetched_at
            stale = fetched_at is None or self._clock() - fetched_at >= self._ttl_s
            may_refetch = fetched_at is None or self._clock() - fetched_at >= self._refetch_s
            if stale or (key is None and may_refetch):
                await self._fetch()
                key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("The token's key (kid) is not in the platform's key set.")
        return key

    async def _fetch(self) -> None:
        self.fetches += 1
        self._fetched_at = self._clock()  # a failed fetch also waits refetch_s before the next
        try:
            keys = await self.download()
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            log.warning("could not fetch the platform's key set: %s", exc)
            if not self._keys:
                raise Unavailable("The platform's key set cannot be fetched.") from None
            return  # keep the keys we had
        self._keys = {k.key_id: k for k in keys if k.key_id}

    async def download(self) -> list[PyJWK]:
        """The key set's keys, fetched now (httpx.HTTPError, ValueError or jwt.PyJWTError when it cannot be)."""
        url = self._jwks_url or await self._discover()
        answer = await self._http.get(url)
        answer.raise_for_status()
        return list(PyJWKSet.from_dict(answer.json()).keys)

    async def _discover(self) -> str:
        assert self._oidc_issuer is not None
        answer = await self._http.get(self._oidc_issuer.rstrip("/") + DISCOVERY_PATH)
        answer.raise_for_status()
        jwks_uri = answer.json().get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the OpenID configuration names no jwks_uri")
        self._jwks_url = jwks_uri
        return jwks_uri

    async def close(self) -> None:
        """Release the HTTP client."""
        await self._http.aclose()


def _unverified_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, read but not trusted (it picks the key; the signature is checked after).

    Read here rather than with PyJWT, whose per-character checks of each segment cost more than the signature.
    """
    segment = token.split(".", 1)[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:  # binascii.Error and orjson.JSONDecodeError are ValueErrors
        raise Unauthorized("The token is not valid.") from None
    if not isinstance(header, dict):
        raise Unauthorized("The token is not valid.")
    return header


@frozen
class PlatformClaims:
    """What a valid platform token says: the user id, and the plan and own limit when the claims carry them."""

    user_id: str
    plan: str | None
    limit: int | None


class PlatformTokens:
    """Checks the platform's access tokens: signature by a key of its key set, `iss`, `aud`, `exp` and `nbf`."""

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        leeway_s: int,
        claim_user: str = "sub",
        claim_plan: str | None = None,
        claim_limit: str | None = None,
    ) -> None:
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s
        self._claim_user = claim_user
        self._claim_plan = claim_plan
        self._claim_limit = claim_limit
        self._checked: _Verified[PlatformClaims] = _Verified()

    async def check(self, token: str) -> PlatformClaims:
        """The claims of a valid platform token; Unauthorized otherwise (remembered until `exp`, as TokenIssuer)."""
        checked = self._checked.get(token)
        if checked is not None:
            return checked
        header = _unverified_header(token)
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in KEY_TYPES:
            raise Unauthorized(f"Tokens signed with {algorithm!r} are not accepted.")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("The token names no key (kid).")
        key = await self.keys.key(kid)
        # The key's type must fit the algorithm, and an EC key's curve the ES variant (PyJWK names it from `crv`).
        if key.key_type != KEY_TYPES[algorithm] or (key.key_type == "EC" and key.algorithm_name != algorithm):
            raise Unauthorized("The token's algorithm does not match its key.")
        payload = self._decode(token, key, algorithm)
        return self._checked.keep(token, self._claims(payload), float(payload["exp"]))

    def _decode(self, token: str, key: PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The token is not valid yet (nbf).") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("The token's issuer (iss) is not the one configured.") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The token is not meant for PlayGate (aud).") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid.") from None

    def _claims(self, payload: dict[str, Any]) -> PlatformClaims:
        user_id = payload.get(self._claim_user)
        if not isinstance(user_id, str | int) or isinstance(user_id, bool) or not str(user_id):
            raise Unauthorized(f"The token names no user (claim {self._claim_user!r}).")
        if len(str(user_id)) > MAX_ID_LEN or not _ID.match(str(user_id)):
            raise Unauthorized(f"The token's user id (claim {self._claim_user!r}) is not an id PlayGate takes.")
        plan = payload.get(self._claim_plan) if self._claim_plan else None
        limit = payload.get(self._claim_limit) if self._claim_limit else None
        return PlatformClaims(
            user_id=str(user_id),
            plan=str(plan) if isinstance(plan, str | int) and not isinstance(plan, bool) else None,
            limit=limit if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit <= 10_000 else None,
        )

    async def close(self) -> None:
        """Release the key set's HTTP client."""
        await self.keys.close()
