"""`playgate doctor`: checks the settings and every connection this process would need, in plain words.

Each check says `ok`, `warn` (works, but worth a look) or `FAIL` (this process would not start or not work);
the command exits 1 when any check fails, so it serves as a container probe and as a pre-deploy step. It only
reads: it creates no database file, no secret and no Redis key.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import jwt
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError, ResponseError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from playgate import tracing
from playgate.catalog.db import alembic_config, check_url, create_engine, is_sqlite
from playgate.config import JWT_SECRET_FILE, Settings, Tracing, is_loopback, security_problems
from playgate.connections import HASH_LISTPACK_VALUE, check_redis_url, is_cluster_url, primaries
from playgate.errors import ConfigError, Unavailable
from playgate.security import KeySet
from playgate.values import frozen

CONNECT_TIMEOUT_S = 5.0
# A server waiting at start for its database tries again after this long, doubled each try up to the maximum.
START_RETRY_FIRST_S = 0.5
START_RETRY_MAX_S = 5.0
log = logging.getLogger("playgate")


class Verdict(StrEnum):
    """The outcome of one check."""

    ok = "ok"
    warn = "warn"
    fail = "FAIL"


@frozen
class Check:
    """One line of the report: what was checked, the verdict, and what was found in plain words."""

    name: str
    verdict: Verdict
    detail: str

    def line(self) -> str:
        """The check as printed: `verdict  name: detail`."""
        return f"{self.verdict.value:<5} {self.name}: {self.detail}"


def safe_url(url: str) -> str:
    """A database or Redis URL with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # SQLAlchemy parses one host only: hide what follows the user name
        return re.sub(r"^([^:/]+://[^:@/]*):[^@]*@", r"\1:***@", url)


def check_settings(settings: Settings) -> list[Check]:
    """The settings: safe to run with (auth, secrets, demo users on an open host), and a known database driver."""
    checks = [Check("settings", Verdict.fail, problem) for problem in security_problems(settings)]
    try:
        check_url(settings.resolved_database_url)
    except ConfigError as exc:
        checks.append(Check("settings", Verdict.fail, exc.detail))
    try:
        if settings.redis_url:
            check_redis_url(settings.redis_url)
    except ConfigError as exc:
        checks.append(Check("settings", Verdict.fail, exc.detail))
    if not checks:
        where = "loopback only" if is_loopback(settings.host) else "every interface this host has"
        checks.append(Check("settings", Verdict.ok, f"valid; serves on {settings.host}:{settings.port} ({where})"))
    checks.append(_check_secret(settings))
    return checks


def _check_secret(settings: Settings) -> Check:
    if settings.jwt_secret:
        accepted = len(settings.jwt_accepted_secret_list)
        beside = f", {accepted} more accepted (PLAYGATE_JWT_ACCEPTED_SECRETS)" if accepted else ""
        return Check("jwt secret", Verdict.ok, f"set by PLAYGATE_JWT_SECRET{beside}")
    path = settings.data_dir / JWT_SECRET_FILE
    if path.exists():
        return Check("jwt secret", Verdict.ok, f"generated earlier, kept in {path}")
    return Check(
        "jwt secret",
        Verdict.warn,
        f"none yet: one is generated into {path} at the first start; "
        "set PLAYGATE_JWT_SECRET when more than one process signs tokens",
    )


async def check_database(settings: Settings) -> list[Check]:
    """Connect to the catalogue database and compare its migration revision with this version's."""
    url = settings.resolved_database_url
    shown = safe_url(url)
    try:
        check_url(url)
    except ConfigError:
        return []  # reported by check_settings
    missing = _missing_sqlite_file(url)
    if missing is not None:
        return [
            Check(
                "database",
                Verdict.fail,
                f"no database file at {missing} yet: run `playgate db upgrade` (`playgate serve` also creates it)",
            )
        ]
    engine = create_engine(url)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            current = await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return [Check("database", Verdict.fail, f"cannot connect to {shown}: {_reason(exc)}")]
    finally:
        await engine.dispose()
    checks = [Check("database", Verdict.ok, f"connected to {shown}")]
    script = ScriptDirectory.from_config(alembic_config(url))
    heads = set(script.get_heads())
    if current in heads:
        checks.append(Check("migrations", Verdict.ok, f"the schema is at revision {current}, the newest"))
        demo = await demo_password_problem(settings)
        if demo is not None:
            checks.append(Check("demo users", Verdict.fail, demo))
    elif current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        # A newer version migrated it (README, Upgrade: migrations stay additive, the version running keeps working)
        checks.append(
            Check(
                "migrations",
                Verdict.warn,
                f"the schema is at revision {current}, newer than this version's {', '.join(sorted(heads))}: "
                "a newer version migrated it; this one works on it while it rolls out",
            )
        )
    else:
        checks.append(
            Check(
                "migrations",
                Verdict.fail,
                f"the schema is at revision {current or 'none (empty database)'}, this version needs "
                f"{', '.join(sorted(heads))}: run `playgate db upgrade`",
            )
        )
    return checks


async def check_redis(settings: Settings) -> list[Check]:
    """Ping Redis (each primary of a cluster) when the deployment uses it; warn when one keeps no append-only file,
    or keeps a user's streams in a hashtable where a listpack would do (hash-max-listpack-value)."""
    if not settings.redis_url:
        return [Check("redis", Verdict.ok, "not configured: embedded deployment (in-process queue, SQLite ledger)")]
    shown = safe_url(settings.redis_url)
    try:
        check_redis_url(settings.redis_url)
    except ConfigError:
        return []  # reported by check_settings
    clients: list[Any] = []
    try:
        clients = await primaries(settings.redis_url)
        infos = [(await c.info("persistence"), await _listpack_value(c)) for c in clients]
    except (RedisError, RedisClusterException, OSError, ValueError, ConfigError) as exc:
        return [Check("redis", Verdict.fail, f"cannot connect to {shown}: {_reason(exc)}")]
    finally:
        for client in clients:
            await client.aclose()
    cluster = f" ({len(infos)} primaries)" if is_cluster_url(settings.redis_url) else ""
    checks = [Check("redis", Verdict.ok, f"connected to {shown}{cluster}")]
    if not all(int(persistence.get("aof_enabled", 0)) for persistence, _ in infos):
        checks.append(
            Check(
                "redis persistence",
                Verdict.warn,
                "append-only file is off: a Redis restart loses queued requests and active streams "
                "(run redis-server with --appendonly yes)",
            )
        )
    values = [value for _, value in infos if value is not None]
    if values and min(values) < HASH_LISTPACK_VALUE:
        checks.append(
            Check(
                "redis memory",
                Verdict.warn,
                f"hash-max-listpack-value is {min(values)}: a stream whose device id is one the server issued "
                f"costs about 130 bytes more (run redis-server with --hash-max-listpack-value {HASH_LISTPACK_VALUE})",
            )
        )
    return checks


async def redis_refusal(settings: Settings) -> str | None:
    """A Redis that answers but refuses this process (a wrong or missing password, a database number it does not
    have, a TLS file that is missing or a CA that did not sign its certificate), in one line naming
    PLAYGATE_REDIS_URL; None when it takes the process, or when it does not answer at all (an outage, which a
    server rides out under the outage policy)."""
    if not settings.redis_url:
        return None
    clients: list[Any] = []
    try:
        clients = await primaries(settings.redis_url)
        for client in clients:
            await client.ping()
    except (AuthenticationError, ResponseError) as exc:
        return f"PLAYGATE_REDIS_URL: Redis at {safe_url(settings.redis_url)} refuses this process: {_reason(exc)}"
    except (RedisError, RedisClusterException, OSError, ValueError) as exc:
        if isinstance(exc.__cause__, (FileNotFoundError, PermissionError, IsADirectoryError, ssl.SSLError)):
            shown = safe_url(settings.redis_url)
            return f"PLAYGATE_REDIS_URL: cannot connect to {shown} over TLS: {_reason(exc.__cause__)}"
        return None
    finally:
        for client in clients:
            await client.aclose()
    return None


async def _listpack_value(client: Any) -> int | None:
    """The server's hash-max-listpack-value, or None where CONFIG GET is refused (as some managed Redis do)."""
    try:
        found = await client.config_get("hash-max-listpack-value")
    except ResponseError:
        return None
    value = found.get("hash-max-listpack-value")
    return int(value) if value is not None else None


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database file that does not exist (connecting would create it empty), else None."""
    if not is_sqlite(url):
        return None
    database = make_url(url).database
    if database and database != ":memory:" and not Path(database).exists():
        return database
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__


async def demo_password_problem(settings: Settings) -> str | None:
    """On a host other than loopback, the server refuses to start while an enabled demo user still logs in with
    its demo password: that refusal, in one line naming the variable (None: none, or no catalogue to ask yet)."""
    if is_loopback(settings.host):
        return None
    from playgate.runtime import open_catalog, refuse_demo_passwords  # the runtime is the doctor's patient

    engine, catalog = open_catalog(settings, time.time)
    try:
        await refuse_demo_passwords(catalog)
    except ConfigError as exc:
        return f"PLAYGATE_HOST: {exc.detail}"
    except SQLAlchemyError:
        return None  # no catalogue yet (a server that migrates makes it, with no demo user on such a host)
    finally:
        await catalog.close()
        await engine.dispose()
    return None


async def wait_for_database(settings: Settings, *, migrated: bool) -> None:
    """Before a server starts: wait up to PLAYGATE_START_WAIT for the catalogue database to answer (a warning line
    each try), then, if `migrated`, ask that its schema is this version's. Unavailable with doctor's line when
    it never answered, ConfigError when its schema is not this version's."""
    patience_s = 0.0 if is_sqlite(settings.resolved_database_url) else settings.start_wait_s  # a file: no waiting
    deadline = time.monotonic() + patience_s
    pause_s = START_RETRY_FIRST_S
    while True:
        checks = await check_database(settings)
        refused = next((c for c in checks if c.name == "database" and c.verdict is Verdict.fail), None)
        if refused is None:
            break
        if time.monotonic() + pause_s > deadline:
            waited = f" (waited {patience_s:g} s)" if patience_s else ""
            raise Unavailable(f"PLAYGATE_DATABASE_URL: {refused.detail}{waited}")
        log.warning("waiting for the database: %s; trying again in %g s", refused.detail, pause_s)
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, START_RETRY_MAX_S)
    behind = next((c for c in checks if c.verdict is Verdict.fail), None)
    if migrated and behind is not None:
        raise ConfigError(f"PLAYGATE_DATABASE_URL: {behind.detail}")


async def check_tracing(settings: Settings) -> list[Check]:
    """PLAYGATE_TRACING=otlp: whether the collector takes spans (an export of none, as the exporter would send it).
    A collector away is a warning: spans are dropped meanwhile, plays are not affected."""
    if settings.tracing is not Tracing.otlp:
        return []
    url = tracing.traces_url()
    headers = {"Content-Type": "application/x-protobuf", **tracing.exporter_headers()}
    try:
        async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT_S) as client:
            answer = await client.post(url, content=b"", headers=headers)  # an export of no span
    except httpx.HTTPError as exc:
        away = f"the collector at {url} does not answer ({_reason(exc)}): spans are dropped until it does"
        return [Check("tracing", Verdict.warn, f"{away} (plays are not affected)")]
    if not answer.is_success:
        return [Check("tracing", Verdict.warn, f"the collector at {url} refused an export: HTTP {answer.status_code}")]
    return [Check("tracing", Verdict.ok, f"spans go to {url} (it took an export)")]


async def check_platform_keys(settings: Settings) -> list[Check]:
    """PLAYGATE_JWKS_URL or PLAYGATE_OIDC_ISSUER: the platform's key set, fetched as the API would (FAIL when it
    cannot be: every platform token would get 503)."""
    if not settings.platform_tokens:
        return []
    where = settings.jwks_url or settings.oidc_issuer
    variable = "PLAYGATE_JWKS_URL" if settings.jwks_url else "PLAYGATE_OIDC_ISSUER"
    keys = KeySet(jwks_url=settings.jwks_url, oidc_issuer=settings.oidc_issuer, ttl_s=0.0, refetch_s=0.0)
    try:
        found = [key for key in await keys.download() if key.key_id]
    except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
        said = f"the platform's key set cannot be fetched from {where} ({_reason(exc)}): every platform token"
        return [Check("key set", Verdict.fail, f"{variable}: {said} would get 503")]
    finally:
        await keys.close()
    if not found:
        return [Check("key set", Verdict.fail, f"{variable}: the key set at {where} holds no key with a kid")]
    return [Check("key set", Verdict.ok, f"{len(found)} key(s) fetched from {where}")]


async def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order: settings, database and migrations, Redis, the platform's key set, the traces'
    collector."""
    checks = check_settings(settings)
    steps: list[Callable[[Settings], Awaitable[list[Check]]]] = [
        check_database,
        check_redis,
        check_platform_keys,
        check_tracing,
    ]
    for step in steps:
        checks += await step(settings)
    return checks


def report(checks: list[Check]) -> tuple[str, int]:
    """The printed report and the exit code (1 when any check failed)."""
    failed = [c for c in checks if c.verdict is Verdict.fail]
    lines = [c.line() for c in checks]
    if failed:
        lines.append(f"{len(failed)} problem(s) found: PlayGate would not start or not work with this set-up.")
    else:
        lines.append("no problems found")
    return "\n".join(lines), 1 if failed else 0
