"""Settings: every knob of PlayGate, read from PLAYGATE_* environment variables at the edge."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from playgate.connections import QUEUE_SHARDS
from playgate.devices import DeviceIdMode
from playgate.domain import OutagePolicy, Policy, Rules
from playgate.errors import ConfigError, Invalid
from playgate.policy import rules_from_json

# Upper bounds of the durations and sizes: a value past them (`inf`, 1e23) is a typo that would fail only at run
# time (an answer's time that cannot be written, a Redis argument out of range, a loop that never sleeps).
HOUR_S = 3600
DAY_S = 86_400
YEAR_S = 365 * DAY_S
MAX_ENTRIES = 1_000_000_000
JWT_SECRET_FILE = "jwt-secret"  # noqa: S105 (a file name, not a secret)
MIN_JWT_SECRET_LEN = 32
# A key with fewer distinct characters is a placeholder ("x" * 32, spaces), not a random one: 32 random hex digits
# hold all 16 but with a chance of about 1e-13 of fewer than 8.
MIN_JWT_SECRET_DISTINCT = 8
# The admin's password on a host other than loopback, where anyone on the network may try it (the log-in throttle
# slows them down, it does not make a short password long).
MIN_OPEN_ADMIN_PASSWORD_LEN = 12
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (the Standard Webhooks prefix, not a secret)
MIN_WEBHOOK_KEY_BYTES = 24


class AuthMode(StrEnum):
    """Whether callers must present a token (`enabled`) or are believed on `?user=` (`disabled`)."""

    enabled = "enabled"
    disabled = "disabled"


class EdgeSigning(StrEnum):
    """Who checks media requests: PlayGate on each one (`off`: the content gate, or nginx's auth_request), or the
    edge alone on a signed, short-lived link (`nginx-secure-link`: nginx's secure_link format)."""

    off = "off"
    nginx_secure_link = "nginx-secure-link"


class UnknownVideos(StrEnum):
    """What a play for a title PlayGate has never seen gets: refused with 404 (`deny`) or decided (`allow`)."""

    allow = "allow"
    deny = "deny"


class LogFormat(StrEnum):
    """How log lines look: one JSON object per line, console lines for people, or `auto` (console on a terminal)."""

    auto = "auto"
    json = "json"
    console = "console"


class Tracing(StrEnum):
    """Whether spans go to an OpenTelemetry collector: `off`, or `otlp` (OTLP over HTTP, OTEL_EXPORTER_OTLP_*)."""

    off = "off"
    otlp = "otlp"


class Settings(BaseSettings):
    """PlayGate configuration; each field is the environment variable PLAYGATE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="PLAYGATE_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(
        8080,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("PLAYGATE_PORT", "PORT"),
        description="HTTP port; plain PORT is honoured too.",
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes serving HTTP and Socket.IO in `playgate serve` (embedded); above 1, one more "
        "process owns the queue and the worker.",
    )
    data_dir: Path = Field(
        Path("data"),
        description="Where the SQLite file and the JWT secret live, and what a stop left for the next start.",
    )
    database_url: str | None = Field(
        None, description="Catalogue (and embedded ledger) database; default a SQLite file in the data dir."
    )
    start_wait_s: float = Field(
        30.0,
        ge=0,
        validation_alias=AliasChoices("PLAYGATE_START_WAIT"),
        description="Seconds `playgate serve`, `api`, `db upgrade` and the other commands that open the database "
        "wait at start for a PostgreSQL catalogue to answer.",
    )
    redis_url: str | None = Field(None, description="Set to run distributed: ledger, queue and fan-out on Redis.")
    admin_password: str | None = Field(
        None, description="Creates or updates the `admin` user at start; without it no admin exists."
    )
    jwt_secret: str | None = Field(None, description="Token signing key; else generated once in the data dir.")
    jwt_accepted_secrets: str = Field(
        "",
        description="Comma-separated keys whose access tokens, playback tokens and device ids are accepted beside "
        "PLAYGATE_JWT_SECRET's, none of them signing: the key being rotated out (or, first, the one being rotated in).",
    )
    token_ttl_s: int = Field(
        12 * 3600,
        ge=60,
        le=YEAR_S,
        validation_alias=AliasChoices("PLAYGATE_TOKEN_TTL"),
        description="Token lifetime.",
    )
    auth: AuthMode = Field(AuthMode.enabled, description="`enabled`, or `disabled` for the seed's trust model.")
    stream_ttl_s: float = Field(
        90.0,
        gt=0,
        le=YEAR_S,
        validation_alias=AliasChoices("PLAYGATE_STREAM_TTL"),
        description="Lease of a stream: seconds after its last heartbeat before it stops counting.",
    )
    playback_token_ttl_s: int = Field(
        900,
        ge=1,
        le=86_400,
        validation_alias=AliasChoices("PLAYGATE_PLAYBACK_TOKEN_TTL"),
        description="Lifetime of a playback token (the media URL of one stream); heartbeats hand out fresh ones.",
    )
    media_dir: Path | None = Field(
        None, description="Where the generated clips and posters live; default <data dir>/media."
    )
    edge_signing: EdgeSigning = Field(
        EdgeSigning.off,
        description="`off`, or `nginx-secure-link`: playbackUrl is a signed, short-lived link checked by the edge.",
    )
    edge_secret: str | None = Field(
        None, description="The secret shared with the edge (nginx's secure_link_md5); needed with edge signing."
    )
    edge_link_ttl_s: int = Field(
        120,
        ge=10,
        le=86_400,
        validation_alias=AliasChoices("PLAYGATE_EDGE_LINK_TTL"),
        description="How long a signed edge link works; heartbeats hand out fresh ones.",
    )
    edge_prefix: str = Field(
        "/edge", pattern=r"^(/[A-Za-z0-9._-]+)+$", description="The path under which the edge serves signed links."
    )
    media_roots: str = Field(
        "", description="Comma-separated folders a video's own media (`source`) may be in; empty: none may be set."
    )
    default_limit: int = Field(3, ge=0, description="Limit of a user with no own limit and no plan.")
    demo: bool = Field(True, description="Load the demo catalogue on first start with an empty database.")
    policy: Policy = Field(
        Policy.deny,
        description="At the limit, for users whose plan names no `onLimit`: `deny`, `evict_oldest` or "
        "`evict_oldest_on_same_device_first`.",
    )
    shadow_policy: str | None = Field(
        None,
        description='A shadow policy for users whose plan has none, as a plan\'s rules in JSON (`{"maxStreams": 2, '
        '"kinds": {"uhd": 1}}`): decided beside the enforced one, its would-be denials counted, never enforced.',
    )
    device_ids: DeviceIdMode = Field(
        DeviceIdMode.any,
        description="`any`: a play request may name any deviceId; `issued`: only one this server issued to the "
        "user (the answer to a request without one carries it), sent with its `deviceSecret`, so that players "
        "cannot share a slot or pass a device cap by claiming one id, even one copied from the account's listings.",
    )
    one_stream_per_device: bool = Field(
        True,
        description="A device asking for another title replaces its own stream (next episode) instead of taking "
        "a second slot; false lets one device hold several streams.",
    )
    batch_size: int = Field(256, ge=1, le=10_000, description="Most requests the worker decides per transaction.")
    cache_ttl_s: float = Field(
        2.0,
        ge=0,
        le=DAY_S,
        validation_alias=AliasChoices("PLAYGATE_CACHE_TTL"),
        description=(
            "How long users, limits and videos are cached; a change applies within this time. An entry read after"
            " half of it is reloaded in the background, so one in use never expires on a request."
        ),
    )
    decision_ttl_s: float = Field(
        3600.0,
        gt=0,
        le=YEAR_S,
        validation_alias=AliasChoices("PLAYGATE_DECISION_TTL"),
        description="How long decisions are kept for GET /v1/plays/{id} and retries.",
    )
    sweep_interval_s: float = Field(
        1.0,
        gt=0,
        le=HOUR_S,
        validation_alias=AliasChoices("PLAYGATE_SWEEP_INTERVAL"),
        description="How often expired streams are swept and announced, and sockets whose tokens died are looked for.",
    )
    claim_idle_s: float = Field(
        15.0,
        gt=0,
        le=DAY_S,
        validation_alias=AliasChoices("PLAYGATE_CLAIM_IDLE"),
        description=(
            "Distributed: seconds a request may stay unacknowledged with a worker before another takes it (and an "
            "entry of the ledger's change log, read but not yet recorded in the audit trail)."
        ),
    )
    queue_maxlen: int = Field(
        1_000_000,
        ge=1000,
        le=MAX_ENTRIES,
        description="Distributed: each request stream is trimmed to about this many entries.",
    )
    queue_shards: int = Field(
        QUEUE_SHARDS,
        ge=1,
        le=1024,
        description="Redis Cluster: streams of the request queue, spread over the primaries (a user's requests stay "
        "on one, each read by one worker at a time: more workers than shards leaves some idle). Change it only with "
        "the queue empty: requests left in a shard that is no longer read stay there.",
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest request body accepted.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="`playgate worker` (and the owner process of `serve --processes N`) serves /healthz, /readyz "
        "and /metrics on this port (not PLAYGATE_PORT; a port in use is refused at start).",
    )
    log_format: LogFormat = Field(
        LogFormat.auto, description="`json` (one object per line), `console`, or `auto`: console on a terminal."
    )
    tracing: Tracing = Field(
        Tracing.off,
        description="`otlp`: a span per HTTP request and per decision (in the request's trace, whichever process "
        "decides) to an OpenTelemetry collector over OTLP/HTTP, set by the standard OTEL_EXPORTER_OTLP_ENDPOINT "
        "(default http://localhost:4318), OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER and OTEL_SERVICE_NAME "
        "(default playgate); `off`: none.",
    )
    insecure: bool = Field(False, description="Must be true as well for PLAYGATE_AUTH=disabled to be accepted.")
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed to call the API from a browser; empty: same origin only."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        validation_alias=AliasChoices("PLAYGATE_TRUSTED_PROXIES", "PLAYGATE_FORWARDED_ALLOW_IPS"),
        description="Proxies (addresses or networks, comma-separated) whose X-Forwarded-For is believed for the "
        "client address (logins, households); from any other peer the header is ignored.",
    )
    login_failures_per_user: int = Field(
        5, ge=1, description="Failed logins per user name within login_window_s before 429."
    )
    login_failures_per_address: int = Field(
        20, ge=1, description="Failed logins per client address within login_window_s before 429."
    )
    login_window_s: int = Field(
        60,
        ge=1,
        validation_alias=AliasChoices("PLAYGATE_LOGIN_WINDOW"),
        description="The window of the login rate limits, seconds.",
    )
    login_checks_at_once: int = Field(
        2,
        ge=1,
        le=64,
        description="Most password checks (argon2) running at once; the others wait, so logins cannot starve plays.",
    )
    jwks_url: str | None = Field(
        None, description="The platform's key set (JWKS): its RS256/ES256/EdDSA access tokens are accepted."
    )
    oidc_issuer: str | None = Field(
        None, description="OpenID Connect issuer: the key set is found at <issuer>/.well-known/openid-configuration."
    )
    token_issuer: str | None = Field(
        None, description="Required `iss` of the platform's tokens; default PLAYGATE_OIDC_ISSUER."
    )
    token_audience: str | None = Field(None, description="Required `aud` of the platform's tokens.")
    token_leeway_s: int = Field(
        30,
        ge=0,
        le=300,
        validation_alias=AliasChoices("PLAYGATE_TOKEN_LEEWAY"),
        description="Clock skew tolerated on `exp` and `nbf` of the platform's tokens, seconds.",
    )
    jwks_refetch_s: float = Field(
        30.0,
        ge=0,
        validation_alias=AliasChoices("PLAYGATE_JWKS_REFETCH"),
        description="Least seconds between two key set fetches caused by an unknown `kid` (forged kids cannot "
        "hammer the identity provider).",
    )
    jwks_ttl_s: float = Field(
        3600.0,
        gt=0,
        validation_alias=AliasChoices("PLAYGATE_JWKS_TTL"),
        description="Seconds a fetched key set is used before it is fetched again.",
    )
    claim_user: str = Field("sub", min_length=1, description="The claim of a platform token that holds the user id.")
    claim_plan: str | None = Field(None, description="The claim that holds the user's plan id (optional).")
    claim_limit: str | None = Field(None, description="The claim that holds the user's own stream limit (optional).")
    unknown_videos: UnknownVideos = Field(
        UnknownVideos.deny, description="`deny`: a play for an unknown title is 404; `allow`: it is decided."
    )
    max_import_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest body of the import routes (POST /v1/users:import ...)."
    )

    audit_retention_days: float = Field(
        30.0,
        gt=0,
        validation_alias=AliasChoices("PLAYGATE_AUDIT_RETENTION"),
        description="Days the audit trail (every decision and stream end) is kept; older events are pruned.",
    )
    audit_backlog: int = Field(
        1_000_000,
        ge=1000,
        le=MAX_ENTRIES,
        description="Distributed: the most entries each of the Redis ledger's change logs keeps while they wait for "
        "the audit trail (PostgreSQL not answering); beyond it the oldest are removed (lost to the audit trail and "
        "the webhooks), counted in an error log line, so that Redis's memory is not exhausted.",
    )
    lean_routes: bool = Field(
        True,
        description="Answer the players' hot routes (GET /videos/{id}/request, /videos/{id}/stop, /videos/stop, "
        "DELETE /v1/streams/{id}, POST /v1/plays, GET /v1/authorize) with a small plain-ASGI router in front of "
        "FastAPI, and on uvicorn (playgate serve, api) in its HTTP protocol, below ASGI: the same answers for less "
        "CPU. Off: FastAPI answers them too.",
    )
    webhook_urls: str = Field(
        "",
        description="Comma-separated http(s) URLs that receive the signed webhook events (stream.started, "
        "stream.ended, play.denied); empty: no webhooks. Only these URLs are ever called.",
    )
    webhook_secret: str | None = Field(
        None,
        description="The Standard Webhooks signing secret, whsec_<base64 of 24+ bytes>; needed with the URLs. Several "
        "separated by spaces while rotating it: each delivery is signed with each.",
    )
    webhook_backoff_s: float = Field(
        5.0,
        gt=0,
        validation_alias=AliasChoices("PLAYGATE_WEBHOOK_BACKOFF"),
        description="Seconds before the first retry of a failed webhook delivery; doubled on each further failure.",
    )
    webhook_backoff_max_s: float = Field(
        300.0,
        gt=0,
        validation_alias=AliasChoices("PLAYGATE_WEBHOOK_BACKOFF_MAX"),
        description="The longest wait between two tries of a webhook delivery.",
    )
    webhook_give_up_s: float = Field(
        3 * 86_400.0,
        gt=0,
        validation_alias=AliasChoices("PLAYGATE_WEBHOOK_GIVE_UP"),
        description="Seconds after its first try that a delivery still failing is marked failed and the user's "
        "next event goes (it can still be replayed).",
    )
    webhook_timeout_s: float = Field(
        10.0,
        gt=0,
        validation_alias=AliasChoices("PLAYGATE_WEBHOOK_TIMEOUT"),
        description="Seconds a receiver has to answer one delivery.",
    )
    webhook_poll_s: float = Field(
        1.0,
        gt=0,
        le=HOUR_S,
        validation_alias=AliasChoices("PLAYGATE_WEBHOOK_POLL"),
        description="Seconds between two looks at the outbox when nothing is due.",
    )
    webhook_settle_s: float = Field(
        2.0,
        ge=0,
        le=HOUR_S,
        validation_alias=AliasChoices("PLAYGATE_WEBHOOK_SETTLE"),
        description="Seconds an event waits before it is sent, so that a user's earlier event written a little "
        "later by another process (each writes every 0.5 s) is sent first.",
    )
    shadow_retention_days: float = Field(
        7.0,
        gt=0,
        validation_alias=AliasChoices("PLAYGATE_SHADOW_RETENTION"),
        description="Days shadow denials (GET /v1/shadow-denials) are kept; older ones are pruned with the audit.",
    )
    ws_per_message_deflate: bool = Field(
        False,
        description="Offer permessage-deflate on websockets: frames are tiny, and each compressed socket costs about "
        "100 KB more server memory, so it is off unless turned on.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        validation_alias=AliasChoices("PLAYGATE_HEADER_TIMEOUT"),
        description="Seconds a connection may take to send a request's headers (from connect or from the request's "
        "first byte) before it is closed with 408.",
    )
    keep_alive_s: int = Field(
        5,
        ge=1,
        validation_alias=AliasChoices("PLAYGATE_KEEP_ALIVE"),
        description="Seconds an idle keep-alive connection is kept open between requests.",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="Most open connections (HTTP and websocket) per process; beyond it a new one gets 503 and is "
        "closed. Default: 90 % of the process's open-file limit.",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="Largest request line plus headers of one request (431 beyond).",
    )
    max_sockets_per_user: int = Field(
        100, ge=0, description="Most Socket.IO connections of one user per API process (0: no cap)."
    )
    user_rate: float = Field(
        100.0,
        ge=0,
        description="Play requests and socket events one user may make per second, per API process, sustained "
        "(0: no limit); 429 with Retry-After beyond it.",
    )
    user_burst: int = Field(
        500, ge=1, description="How many play requests and socket events one user may make at once above user_rate."
    )

    outage_grace_s: float = Field(
        300.0,
        ge=0,
        le=YEAR_S,
        validation_alias=AliasChoices("PLAYGATE_OUTAGE_GRACE"),
        description="Seconds a stream already playing keeps playing while the ledger's store (Redis, the database) "
        "does not answer: its heartbeats and media requests are honoured from the playback token and this "
        "process's lease cache (0: not at all).",
    )
    outage_policy: OutagePolicy = Field(
        OutagePolicy.deny,
        description="New plays while the ledger's store does not answer, for users whose plan names no `onOutage`: "
        "`deny` (503 with Retry-After) or `allow` "
        "(admitted within the limit as far as this process knows the user's streams; written back and brought "
        "within the limit once the store is back).",
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty PLAYGATE_REDIS_URL (a template's blank) is no Redis, as doctor already read it."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        """Each trusted proxy an address or a network (`*`: any): a name or a typo would never match a peer, and
        the proxy's clients would all count as its one address."""
        for item in (i.strip() for i in value.split(",") if i.strip()):
            if item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an IP address or network (such as 10.0.0.0/8), nor *") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls(cls, value: str) -> str:
        for url in (u.strip() for u in value.split(",") if u.strip()):
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @property
    def jwt_accepted_secret_list(self) -> list[str]:
        """The keys accepted beside the signing key, in the order configured."""
        return [k.strip() for k in self.jwt_accepted_secrets.split(",") if k.strip()]

    @property
    def webhook_secret_list(self) -> list[str]:
        """The webhook signing secrets (several while one is rotated), in the order configured."""
        return (self.webhook_secret or "").split()

    @property
    def webhook_url_list(self) -> list[str]:
        """The webhook endpoints, in the order configured."""
        return [u.strip() for u in self.webhook_urls.split(",") if u.strip()]

    @property
    def resolved_database_url(self) -> str:
        """The catalogue URL: the configured one, else a SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'playgate.sqlite3').resolve()}"

    @property
    def resolved_media_dir(self) -> Path:
        """Where clips and posters live: the configured folder, else `media` in the data dir."""
        return self.media_dir if self.media_dir is not None else self.data_dir / "media"

    @property
    def media_root_list(self) -> list[Path]:
        """The folders an admin's own media may come from."""
        return [Path(p.strip()) for p in self.media_roots.split(",") if p.strip()]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com (no path)")
        return value

    @field_validator("shadow_policy")
    @classmethod
    def _shadow_rules(cls, value: str | None) -> str | None:
        if value is not None:
            cls._parse_shadow(value)
        return value

    @staticmethod
    def _parse_shadow(value: str) -> Rules:
        try:
            body = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError('a JSON object of rules, such as {"maxStreams": 2}')
        try:
            return rules_from_json(body)
        except Invalid as exc:
            raise ValueError(exc.detail) from None

    @property
    def shadow_rules(self) -> Rules | None:
        """The deployment's shadow policy, if one is set."""
        return self._parse_shadow(self.shadow_policy) if self.shadow_policy else None

    @property
    def cors_origin_list(self) -> list[str]:
        """The allowed cross-origin callers; empty means same origin only."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def platform_tokens(self) -> bool:
        """True when the platform's own tokens are accepted (a key set or an OpenID issuer is configured)."""
        return bool(self.jwks_url or self.oidc_issuer)

    @property
    def expected_issuer(self) -> str | None:
        """The `iss` platform tokens must carry."""
        return self.token_issuer or self.oidc_issuer

    @property
    def distributed(self) -> bool:
        """True when Redis carries the ledger, the queue and the fan-out."""
        return self.redis_url is not None


# The settings that hold secrets, each of which may come from a file named by <variable>_FILE instead (Docker's and
# Kubernetes' secrets mounted as files), so that the secret is in no process environment.
SECRET_FIELDS = (
    "database_url",
    "redis_url",
    "admin_password",
    "jwt_secret",
    "jwt_accepted_secrets",
    "edge_secret",
    "webhook_secret",
)


def _from_files(environ: Mapping[str, str], overrides: Mapping[str, Any]) -> dict[str, str]:
    """The secret settings that `environ` names a file for (PLAYGATE_JWT_SECRET_FILE=/run/secrets/jwt): each file's
    text without its final line break. ConfigError naming the variable for a file that cannot be read, or for a
    setting given both ways."""
    found: dict[str, str] = {}
    for name in SECRET_FIELDS:
        variable = f"PLAYGATE_{name.upper()}"
        path = environ.get(f"{variable}_FILE")
        if not path or name in overrides:
            continue
        if environ.get(variable):
            raise ConfigError(f"{variable}_FILE: {variable} is set too; give one or the other")
        try:
            found[name] = Path(path).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{variable}_FILE: cannot read {path} ({type(exc).__name__})") from None
        if not found[name].strip():
            raise ConfigError(f"{variable}_FILE: {path} is empty")
    return found


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from `environ` (default: the process environment), secrets from the files that
    PLAYGATE_<SECRET>_FILE variables name; a bad value raises ConfigError."""
    try:
        if environ is None:
            return Settings(**{**_from_files(os.environ, overrides), **overrides})
        # Only this mapping is read: the process environment is not consulted.
        source = {k: v for k, v in environ.items() if k.startswith("PLAYGATE_") or k == "PORT"}
        return _settings_from_mapping(source, {**_from_files(source, overrides), **overrides})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = _env_name(error)
        raise ConfigError(f"{name}: {error['msg']} (got {error.get('input')!r})") from None


def _settings_from_mapping(source: Mapping[str, str], overrides: Mapping[str, Any]) -> Settings:
    # model_validate reads no environment: alias fields take their alias as key, the others their name.
    values: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            found = next((k for k in alias.choices if isinstance(k, str) and k in source), None)
            key = str(alias.choices[0])
            if name in overrides:
                values[key] = overrides[name]
            elif found is not None:
                values[key] = source[found]
        elif name in overrides:
            values[name] = overrides[name]
        elif f"PLAYGATE_{name.upper()}" in source:
            values[name] = source[f"PLAYGATE_{name.upper()}"]
    return Settings.model_validate(values)


def _env_name(error: Any) -> str:
    loc = error.get("loc") or ("?",)
    field_name = str(loc[0])
    field = Settings.model_fields.get(field_name)
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        first = field.validation_alias.choices[0]
        if isinstance(first, str):
            return first
    if field_name.startswith("PLAYGATE_") or field_name == "PORT":
        return field_name
    return f"PLAYGATE_{field_name.upper()}"


def is_loopback(host: str) -> bool:
    """True when `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def security_problems(settings: Settings) -> list[str]:
    """What makes these settings unsafe to run with, one line each naming the variable (empty when none)."""
    problems: list[str] = []
    if settings.auth is AuthMode.disabled and not settings.insecure:
        problems.append(
            "PLAYGATE_AUTH=disabled lets any caller act as any user and as an admin; "
            "set PLAYGATE_INSECURE=true as well if that is really meant (the seed's test UI only)"
        )
    if settings.jwt_secret and not _random_enough(settings.jwt_secret):
        problems.append(f"PLAYGATE_JWT_SECRET: {KEY_RULE}")
    if not all(_random_enough(key) for key in settings.jwt_accepted_secret_list):
        problems.append(f"PLAYGATE_JWT_ACCEPTED_SECRETS: each key {KEY_RULE}")
    if settings.edge_signing is not EdgeSigning.off and (
        not settings.edge_secret or not re.fullmatch(r"[A-Za-z0-9_.~+/=-]{32,}", settings.edge_secret)
    ):
        problems.append(
            f"PLAYGATE_EDGE_SECRET: PLAYGATE_EDGE_SIGNING={settings.edge_signing.value} needs a secret of at least "
            f"32 characters of A-Z a-z 0-9 _ . ~ + / = - (nginx's configuration holds it too)"
        )
    problems += _platform_token_problems(settings)
    if settings.webhook_urls.strip() and not settings.webhook_secret:
        problems.append("PLAYGATE_WEBHOOK_SECRET: must be set with PLAYGATE_WEBHOOK_URLS (whsec_<base64>)")
    if settings.webhook_secret is not None and not (
        settings.webhook_secret_list and all(_webhook_secret_ok(s) for s in settings.webhook_secret_list)
    ):
        # Checked here, not by a validator: a validator's message would echo the secret.
        problems.append(
            f"PLAYGATE_WEBHOOK_SECRET: each secret must be {WEBHOOK_SECRET_PREFIX} and the base64 of at least "
            f"{MIN_WEBHOOK_KEY_BYTES} random bytes, several separated by spaces"
        )
    return problems + _open_host_problems(settings)


def _open_host_problems(settings: Settings) -> list[str]:
    """What is unsafe on a host other than loopback only: anyone on the network may call."""
    if is_loopback(settings.host):
        return []
    problems: list[str] = []
    if not settings.jwt_secret:
        problems.append(
            f"PLAYGATE_JWT_SECRET: must be set when binding a non-loopback host (PLAYGATE_HOST={settings.host}), "
            "so that every process signs tokens with one key you manage"
        )
    if settings.demo:
        problems.append(
            f"PLAYGATE_DEMO: the demo users' passwords equal their names; set PLAYGATE_DEMO=false when binding "
            f"a non-loopback host (PLAYGATE_HOST={settings.host})"
        )
    if settings.admin_password and len(settings.admin_password) < MIN_OPEN_ADMIN_PASSWORD_LEN:
        problems.append(
            f"PLAYGATE_ADMIN_PASSWORD: must be at least {MIN_OPEN_ADMIN_PASSWORD_LEN} characters when binding a "
            f"non-loopback host (PLAYGATE_HOST={settings.host})"
        )
    return problems


KEY_RULE = (
    f"must be at least {MIN_JWT_SECRET_LEN} characters, {MIN_JWT_SECRET_DISTINCT} of them different (a random key: "
    "openssl rand -hex 32)"
)


def _random_enough(key: str) -> bool:
    """Whether a signing key is long enough and not a placeholder (told apart by its few distinct characters)."""
    return len(key) >= MIN_JWT_SECRET_LEN and len(set(key)) >= MIN_JWT_SECRET_DISTINCT


def _webhook_secret_ok(secret: str) -> bool:
    """Whether `secret` is a Standard Webhooks secret: whsec_ and the base64 of MIN_WEBHOOK_KEY_BYTES or more."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return False
    try:
        return len(base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)) >= MIN_WEBHOOK_KEY_BYTES
    except ValueError:
        return False


def _platform_token_problems(settings: Settings) -> list[str]:
    """What is missing for the platform's tokens to be checked safely."""
    if not settings.platform_tokens:
        return []
    problems: list[str] = []
    if not settings.expected_issuer:
        problems.append(
            "PLAYGATE_TOKEN_ISSUER: must be set with PLAYGATE_JWKS_URL (the `iss` of the platform's tokens)"
        )
    if not settings.token_audience:
        problems.append("PLAYGATE_TOKEN_AUDIENCE: must be set with PLAYGATE_JWKS_URL (the `aud` meant for PlayGate)")
    for name, url in (("PLAYGATE_JWKS_URL", settings.jwks_url), ("PLAYGATE_OIDC_ISSUER", settings.oidc_issuer)):
        if url and not _fetchable(url):
            problems.append(f"{name}: must be an https:// URL (http:// only for a loopback host)")
    return problems


def _fetchable(url: str) -> bool:
    """True for https URLs, and for http URLs of a loopback host (tests, a local key set)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname is not None and is_loopback(parts.hostname)


def jwt_secret(settings: Settings) -> str:
    """The signing key: PLAYGATE_JWT_SECRET, else one generated once and kept in the data dir."""
    if settings.jwt_secret:
        if not _random_enough(settings.jwt_secret):
            raise ConfigError(f"PLAYGATE_JWT_SECRET: {KEY_RULE}")
        return settings.jwt_secret
    path = settings.data_dir / JWT_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Create with owner-only permissions; O_EXCL so two processes starting together agree on one key.
    try:
        fd = path.open("x", encoding="ascii")
    except FileExistsError:
        return path.read_text().strip()
    with fd:
        path.chmod(0o600)
        fd.write(secret)
    return secret
