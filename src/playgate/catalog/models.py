"""The SQL schema: catalogue tables (users, plans, videos, API keys) and the SQL ledger's tables (streams,
decisions, the change log)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# An owned id (domain.owned_id: a request's or a stream's) is its user id as hex, up to 2 * MAX_ID_LEN characters,
# then 25 more: at most wire.MAX_STREAM_ID_LEN. The ids built on one (an audit event's, a webhook message's) a few
# more. Migration 0012 widened the columns to these.
OWNED_ID_LEN = 160
EVENT_ID_LEN = 200
# A reason as the API words it, with its rule's tag (`kind_limit:<tag>`, a tag up to 40 characters); migration 0014.
REASON_LEN = 100

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base sharing one MetaData with a naming convention (stable migration names)."""

    metadata = MetaData(naming_convention=NAMING)


class PlanRow(Base):
    """A subscription plan."""

    __tablename__ = "plans"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    max_streams: Mapped[int] = mapped_column(Integer)
    # The rules beside max_streams and the shadow policy, as the API writes them (camelCase JSON objects).
    rules: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class UserRow(Base):
    """An account; `own_limit` None falls back to the plan's limit, then the default."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    own_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    plan_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("plans.id", ondelete="RESTRICT"), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)
    # The household's networks (CIDR strings); empty: no household, every stream counts as at home.
    household: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # Raised when the password changes or the user is disabled: tokens issued under an older epoch are refused.
    token_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class TokenRevocationRow(Base):
    """A user whose tokens died (token epoch raised, disabled, deleted), kept for a while: each API process's
    socket sweep asks about the users named here lately instead of every connected one (api/socket.py)."""

    __tablename__ = "token_revocations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, index=True)


class VideoRow(Base):
    """A video of the catalogue."""

    __tablename__ = "videos"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(500))
    url: Mapped[str] = mapped_column(String(2000))
    source: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    kinds: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class ApiKeyRow(Base):
    """An API key for a platform's backend: only the SHA-256 of the key is kept (times in epoch seconds)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class StreamRow(Base):
    """An active stream held by the SQL ledger (times in epoch seconds)."""

    __tablename__ = "streams"
    id: Mapped[str] = mapped_column(String(OWNED_ID_LEN), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    video_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    device_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    kinds: Mapped[str] = mapped_column(String(2000), default="[]")  # a JSON array of the video's kind tags
    away: Mapped[bool] = mapped_column(Boolean, default=False)


class DecisionRow(Base):
    """A decided play request, kept so that a redelivery or a retry gets the same answer."""

    __tablename__ = "decisions"
    request_id: Mapped[str] = mapped_column(String(OWNED_ID_LEN), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    video_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    stream_id: Mapped[str | None] = mapped_column(String(OWNED_ID_LEN), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(REASON_LEN), nullable=True)
    active: Mapped[int] = mapped_column(Integer)
    limit: Mapped[int] = mapped_column(Integer)
    decided_at: Mapped[float] = mapped_column(Float, index=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    shadow_reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # An allowed decision's stream: its start (earlier than decided_at when the device asked again for the stream
    # it plays) and whether it plays away from the household; NULL and false for denials and older rows.
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    away: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditColumns:
    """The columns of an audit event (audit.AuditEvent's fields) but its time, which each table declares with its
    own index: audit_events, and the SQLite ledger's log of events not yet recorded in it (ledger_events)."""

    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(String(64))
    video_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(OWNED_ID_LEN), nullable=True)
    stream_id: Mapped[str | None] = mapped_column(String(OWNED_ID_LEN), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(REASON_LEN), nullable=True)
    policy: Mapped[str | None] = mapped_column(String(32), nullable=True)
    active: Mapped[int | None] = mapped_column(Integer, nullable=True)
    limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    shadow: Mapped[str | None] = mapped_column(String(REASON_LEN), nullable=True)


class LedgerEventRow(AuditColumns, Base):
    """An audit event of a SQLite ledger transaction (a decision, a stream's end), logged in it for the audit trail
    and the webhook outbox to record later, in batches, off the hot path (ledger.sql.SqlLedger.drain_changes): the
    columns of audit_events but its id and event id, and no index but the sequence, which keeps the order logged. A
    row is deleted in the transaction that records it. Unused on PostgreSQL (the distributed ledger logs in Redis)."""

    __tablename__ = "ledger_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)


class IdempotencyRow(Base):
    """An Idempotency-Key of a user, bound to the request it first created."""

    __tablename__ = "idempotency_keys"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(OWNED_ID_LEN))
    video_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


class DeviceRow(Base):
    """A device an account started a stream on (kept by the SQL ledger under a plan's device cap)."""

    __tablename__ = "devices"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_seen_at: Mapped[float] = mapped_column(Float)


class ShadowDenialRow(Base):
    """A request the shadow policy would have denied (the enforced policy decided it)."""

    __tablename__ = "shadow_denials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    request_id: Mapped[str] = mapped_column(String(OWNED_ID_LEN))
    video_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(100))
    enforced: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[float] = mapped_column(Float, index=True)


class AuditEventRow(AuditColumns, Base):
    """One entry of the audit trail: a decision or a stream's end (times in epoch seconds)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    # What the event tells of (`decision:<request id>`, `stream_end:<stream id>`): recorded once however often
    # it is written (a change log entry redelivered after a crash). NULL on rows written before it existed and on
    # those the SQLite ledger's journal records (each once, in the transaction that forgets it): only ids are
    # indexed, so that those rows cost no index update.
    event_id: Mapped[str | None] = mapped_column(String(EVENT_ID_LEN), nullable=True)

    __table_args__ = (
        Index("ix_audit_events_user_id_id", "user_id", "id"),
        Index(
            "uq_audit_events_event_id",
            "event_id",
            unique=True,
            sqlite_where=text("event_id IS NOT NULL"),
            postgresql_where=text("event_id IS NOT NULL"),
        ),
    )


class WebhookEventRow(Base):
    """An outbound event in the webhook outbox (Standard Webhooks message id, type and JSON body)."""

    __tablename__ = "webhook_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    msg_id: Mapped[str] = mapped_column(String(EVENT_ID_LEN), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, index=True)
    body: Mapped[str] = mapped_column(Text)


class WebhookDeliveryRow(Base):
    """The delivery of one outbox event to one endpoint: its state and the log of its attempts. `at` is the
    event's time: a user's pending delivery of least (at, id) is the one to send next."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    msg_id: Mapped[str] = mapped_column(String(EVENT_ID_LEN))
    endpoint: Mapped[str] = mapped_column(String(2048))
    user_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed (gave up)
    created_at: Mapped[float] = mapped_column(Float)
    next_at: Mapped[float] = mapped_column(Float)
    locked_until: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    first_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        UniqueConstraint("msg_id", "endpoint", name="uq_webhook_deliveries_msg_id_endpoint"),
        Index("ix_webhook_deliveries_status_endpoint_user_id_at", "status", "endpoint", "user_id", "at", "id"),
    )
