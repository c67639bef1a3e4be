"""`playgate bench tokens`: how fast the platform's tokens are checked against a cached key set, per algorithm."""

from __future__ import annotations

import time

from playgate.bench.keyset import AUDIENCE, IdentityProvider, new_key
from playgate.security import KeySet, PlatformTokens
from playgate.values import frozen

ALGORITHMS = ("RS256", "ES256", "EdDSA")


@frozen
class TokenFigures:
    """Checks of one algorithm per second of this process's CPU time (what one core does, however busy the
    machine), and per second of wall time: distinct tokens (each verified), and tokens seen before (remembered)."""

    algorithm: str
    verified_per_cpu_s: float
    verified_per_s: float
    remembered_per_cpu_s: float

    def line(self) -> str:
        """One line for people."""
        return (
            f"{self.algorithm:>6}: {self.verified_per_cpu_s:>9,.0f} verifications per CPU-second "
            f"({1e6 / self.verified_per_cpu_s:,.1f} us each; {self.verified_per_s:,.0f}/s of wall time); "
            f"a token seen before: {self.remembered_per_cpu_s:,.0f} per CPU-second"
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
                    started, started_cpu = time.perf_counter(), time.process_time()
                    for token in tokens:
                        await checker.check(token)
                    cpu_s = max(time.process_time() - started_cpu, 1e-9)
                    rates.append((count / cpu_s, count / (time.perf_counter() - started)))
            finally:
                await checker.close()
            figures.append(TokenFigures(key.algorithm, rates[0][0], rates[0][1], rates[1][0]))
    finally:
        idp.stop()
    return figures
