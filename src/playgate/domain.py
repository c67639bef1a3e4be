"""The nouns of PlayGate: users, videos, plans, play requests, decisions and streams."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

# Ids of users, videos, plans, requests: what platforms' identity providers use too (`auth0|5f7c...`,
# `user@example.com`, UUIDs), and nothing that could break a Redis hash tag ({}), a path or a log line.
ID_PATTERN = r"^[A-Za-z0-9._:@|-]+$"
MAX_ID_LEN = 64


class Status(StrEnum):
    """Where a play request stands."""

    pending = "pending"
    allowed = "allowed"
    denied = "denied"


class Policy(StrEnum):
    """What happens when a user at the limit asks for one more stream."""

    deny = "deny"
    evict_oldest = "evict_oldest"


class Reason(StrEnum):
    """Why a request was denied, or why a stream ended without its device asking."""

    limit_reached = "limit_reached"
    user_disabled = "user_disabled"
    unknown_user = "unknown_user"
    error = "error"
    expired = "expired"
    evicted = "evicted"
    replaced = "replaced"
    stopped_by_admin = "stopped_by_admin"
    stopped = "stopped"
    limit_lowered = "limit_lowered"
    video_deleted = "video_deleted"


@dataclass(frozen=True, slots=True)
class Plan:
    """A subscription plan: how many streams its users may watch at once."""

    id: str
    name: str
    max_streams: int


@dataclass(frozen=True, slots=True)
class User:
    """An account; `limit` is the effective limit (own, else the plan's, else the default)."""

    id: str
    name: str
    limit: int
    own_limit: int | None
    plan: str | None
    disabled: bool
    is_admin: bool = False


class KeyScope(StrEnum):
    """What an API key may do: everything an admin may (`admin`), play and stop for any user (`plays`), or read
    users, plans, videos and streams (`read`)."""

    admin = "admin"
    plays = "plays"
    read = "read"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored (never the key itself): its id, name, scope, and when it was made, last used, revoked."""

    id: str
    name: str
    scope: KeyScope
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class Video:
    """Something to watch."""

    id: str
    title: str
    url: str
    source: str | None = None  # a folder of the admin's own HLS/DASH media, else the media PlayGate makes


@dataclass(frozen=True, slots=True)
class Quota:
    """What the admission rule needs to know of a user at decision time."""

    limit: int
    disabled: bool = False
    exists: bool = True


@dataclass(frozen=True, slots=True)
class PlayRequest:
    """A user's wish to start a video on a device, as queued for the worker (times in epoch seconds)."""

    request_id: str
    user_id: str
    video_id: str
    device_id: str
    accepted_at: float
    replace_stream_id: str | None = None
    device_name: str = ""
    # One stream per device: a stream this device plays (another title) is replaced by this one, atomically.
    replace_device_stream: bool = False


@dataclass(frozen=True, slots=True)
class Stream:
    """An active (or, once its lease ran out, expired) stream."""

    id: str
    user_id: str
    video_id: str
    device_id: str
    started_at: float
    expires_at: float
    device_name: str = ""

    def live(self, now: float) -> bool:
        """True while the lease has not run out."""
        return self.expires_at > now


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one play request; `active` is the user's stream count after it."""

    request_id: str
    user_id: str
    video_id: str
    device_id: str
    status: Status
    active: int
    limit: int
    decided_at: float
    stream_id: str | None = None
    reason: Reason | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class EndedStream:
    """A stream that stopped counting, and why."""

    stream: Stream
    reason: Reason


@dataclass(frozen=True, slots=True)
class Admission:
    """One request to decide, with the user's quota as known at decision time."""

    request: PlayRequest
    quota: Quota


@dataclass(frozen=True, slots=True)
class Outcome:
    """What deciding one admission did: the decision, the streams it ended to make room (if any), and, for a
    request denied at the limit, the streams that hold the limit (`conflicts`)."""

    decision: Decision
    ended: tuple[EndedStream, ...] = ()
    conflicts: tuple[Stream, ...] = ()


def new_id() -> str:
    """A fresh opaque id for requests and streams (128 random bits, URL-safe)."""
    return secrets.token_hex(16)
