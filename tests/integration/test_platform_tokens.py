"""The platform's own tokens: a real key set served over HTTP, RS256/ES256/EdDSA tokens on HTTP and Socket.IO,
users made on first sight with the plan of the claim, rotation, forged tokens refused with bounded refetches."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from playgate.bench.keyset import AUDIENCE, IdentityProvider, SigningKey, new_key
from playgate.errors import Unauthorized
from playgate.security import KeySet, PlatformTokens
from tests.integration.test_routes import assert_problem
from tests.support.clients import admin_client, api_client, connect_socket
from tests.support.servers import ServerProcess, start_playgate, wait_until_ready

REFETCH_S = 1.0
# A start takes seconds; on a machine shared by several test runs, several times the default wait.
READY_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider([new_key("rsa-1"), new_key("ec-1", "ES256"), new_key("ed-1", "EdDSA")]).start()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def platform(idp: IdentityProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_playgate(
        Path(tmp_path_factory.mktemp("platform")),
        wait_ready=False,
        **idp.env(
            PLAYGATE_CLAIM_PLAN="plan",
            PLAYGATE_CLAIM_LIMIT="streams",
            PLAYGATE_UNKNOWN_VIDEOS="allow",
            PLAYGATE_JWKS_REFETCH=str(REFETCH_S),
        ),
    )
    wait_until_ready(proc, timeout_s=READY_TIMEOUT_S)
    yield proc
    proc.stop()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(idp: IdentityProvider, key: SigningKey, user_id: str) -> str:
    """The key-confusion forgery: an HS256 token whose HMAC secret is the (public) PEM of a published key."""
    pem = key.private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    claims = {"sub": user_id, "iss": idp.issuer, "aud": AUDIENCE, "exp": now + 600}
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def unsigned(idp: IdentityProvider, user_id: str) -> str:
    now = int(time.time())
    claims = {"sub": user_id, "iss": idp.issuer, "aud": AUDIENCE, "exp": now + 600}
    return jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"})


async def test_tokens_of_every_algorithm_play_and_their_users_are_made_with_the_claimed_plan(
    idp: IdentityProvider, platform: ServerProcess
) -> None:
    admin = await admin_client(platform.base_url)
    async with admin:
        assert (await admin.put("/v1/plans/gold", json={"name": "Gold", "maxStreams": 2})).status_code in (200, 201)
        for key in idp.keys[:3]:
            user_id = f"platform-{key.algorithm.lower()}"
            async with api_client(platform.base_url, idp.mint(user_id, key=key, plan="gold")) as client:
                answer = await client.post("/v1/plays?wait=5", json={"videoId": "1", "deviceId": "tv"})
                assert answer.status_code == 200, answer.text
                assert (answer.json()["status"], answer.json()["limit"]) == ("allowed", 2)
            user = (await admin.get(f"/v1/users/{user_id}")).json()
            assert (user["plan"], user["limit"], user["name"]) == ("gold", 2, user_id)
        # The claim of a per-user limit becomes the user's own limit; a later token with another plan moves it.
        async with api_client(platform.base_url, idp.mint("platform-rs256", plan="gold", streams=5)) as client:
            streams = await client.get("/v1/streams")
            assert streams.status_code == 200, streams.text
        user = (await admin.get("/v1/users/platform-rs256")).json()
        assert (user["ownLimit"], user["limit"]) == (5, 5)
        # A user made from a token has no password: it cannot log in with one.
        login = await admin.post("/auth/token", json={"username": "platform-rs256", "password": ""})
        assert login.status_code in (401, 422)


async def test_the_same_token_works_on_socketio(idp: IdentityProvider, platform: ServerProcess) -> None:
    token = idp.mint("platform-socket", key=idp.keys[1])
    socket = await connect_socket(platform.base_url, token=token)
    try:
        async with api_client(platform.base_url, token) as client:
            answer = await client.post("/v1/plays", json={"videoId": "2"})
            assert answer.status_code == 202, answer.text
        message = await socket.next_message()
        assert (message["status"], message["data"]["userId"]) == ("allowed", "platform-socket")
    finally:
        await socket.close()


async def test_a_title_never_registered_is_decided_with_unknown_videos_allowed(
    idp: IdentityProvider, platform: ServerProcess
) -> None:
    async with api_client(platform.base_url, idp.mint("platform-catalogue")) as client:
        answer = await client.post("/v1/plays?wait=5", json={"videoId": "platform-title-42"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "allowed"


async def test_forged_wrong_and_expired_tokens_are_401_and_refetch_the_key_set_within_its_rate_limit(
    idp: IdentityProvider, platform: ServerProcess
) -> None:
    rogue = new_key("rsa-1")  # same kid as a published key, another private key
    bad = {
        "wrong issuer": idp.mint("u-bad", iss="https://elsewhere.example"),
        "wrong audience": idp.mint("u-bad", aud="another-service"),
        "alg none": unsigned(idp, "u-bad"),
        "HS256 signed with the public key": hs256_with_public_key(idp, idp.keys[0], "u-bad"),
        "expired": idp.mint("u-bad", ttl_s=-600),
        "not yet valid": idp.mint("u-bad", nbf=int(time.time()) + 600),
        "signed by another key": idp.mint("u-bad", key=rogue),
        "no user": idp.mint("", sub=""),
        "a user id PlayGate cannot take": idp.mint("x" * 65),
    }
    forged_kids = [idp.mint("u-bad", key=new_key(f"forged-{n}", "ES256")) for n in range(30)]
    before, started = idp.fetches, time.monotonic()
    async with httpx.AsyncClient(base_url=platform.base_url) as client:
        for what, token in bad.items():
            answer = await client.get("/v1/streams", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 401, (what, answer.text)
            assert_problem(answer, 401)
        answers = await asyncio.gather(
            *(client.get("/v1/streams", headers={"Authorization": f"Bearer {t}"}) for t in forged_kids)
        )
    assert {a.status_code for a in answers} == {401}
    assert "kid" in answers[0].json()["detail"]
    elapsed_s = time.monotonic() - started
    # 30 unknown kids: at most one fetch per REFETCH_S (plus the one at the start), not one per token.
    assert idp.fetches - before <= 2 + math.ceil(elapsed_s / REFETCH_S)


async def test_a_rotated_key_is_accepted_after_one_refetch(idp: IdentityProvider, platform: ServerProcess) -> None:
    new = new_key("rsa-2")
    idp.rotate(new)
    await asyncio.sleep(REFETCH_S + 0.2)  # past the refetch rate limit left by the earlier tests
    before = idp.fetches
    async with httpx.AsyncClient(base_url=platform.base_url) as client:
        for n in range(3):
            token = idp.mint(f"platform-rotated-{n}", key=new)
            answer = await client.get("/v1/streams", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
    assert idp.fetches == before + 1


async def test_the_key_set_is_found_through_openid_discovery(idp: IdentityProvider) -> None:
    keys = KeySet(jwks_url=None, oidc_issuer=idp.issuer, ttl_s=3600, refetch_s=REFETCH_S)
    tokens = PlatformTokens(keys, issuer=idp.issuer, audience=AUDIENCE, leeway_s=5)
    try:
        claims = await tokens.check(idp.mint("discovered", key=idp.keys[2]))
        assert claims.user_id == "discovered"
        with pytest.raises(Unauthorized):
            await tokens.check(jwt.encode({"sub": "x"}, "a-shared-secret-of-32-characters!!", algorithm="HS256"))
    finally:
        await tokens.close()
