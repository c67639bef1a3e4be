"""`playgate bench tokens`: how fast the platform's tokens are checked against a cached key set, per algorithm."""

from __future__ import annotations

import time
from dataclasses import dataclass

from playgate.bench.keyset import AUDIENCE, IdentityProvider, new_key
from playgate.security import KeySet, PlatformTokens

ALGORITHMS = ("RS256", "ES256", "EdDSA")


@dataclass(frozen=True, slots=True)
class TokenFigures:
    """Checks per second of one algorithm: distinct tokens (each verified), and tokens seen before (remembered)."""

    algorithm: str
    verified_per_s: float
    remembered_per_s: float

    def line(self) -> str:
        """One line for people."""
        return (
            f"{self.algorithm:>6}: {self.verified_per_s:>9,.0f} verifications/s "
            f"({1e6 / self.verified_per_s:,.1f} us each); a token seen before: {self.remembered_per_s:,.0f}/s"
        )


async def measure(count: int) -> list[TokenFigures]:
    """Mint `count` distinct tokens per algorithm (not timed), then time checking them all, then again."""
    idp = IdentityProvider([new_key(f"bench-{a.lower()}", a) for a in ALGORITHMS]).start()
    figures = []
    try:
        for key in idp.keys:
            keys = KeySet(jwks_url=idp.jwks_url, oidc_issuer=None, ttl_s=3600, refetch_s=30)
            checker = PlatformTokens(keys, issuer=idp.issuer, audience=AUDIENCE, leeway_s=30)
            try:
                await checker.check(idp.mint("warm-up", key=key))  # fetches the key set: the rest use the cache
                tokens = [idp.mint(f"user-{n}", key=key) for n in range(count)]
                rates = []
                for _ in range(2):  # first pass verifies each; the second finds each remembered
                    started = time.perf_counter()
                    for token in tokens:
                        await checker.check(token)
                    rates.append(count / (time.perf_counter() - started))
            finally:
                await checker.close()
            figures.append(TokenFigures(key.algorithm, rates[0], rates[1]))
    finally:
        idp.stop()
    return figures
