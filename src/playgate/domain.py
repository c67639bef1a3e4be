"""The nouns of PlayGate: users, videos, plans, play requests, decisions and streams."""

from __future__ import annotations

import os
import threading
from enum import StrEnum

from playgate.values import frozen

# Ids of users, videos, plans, requests: what platforms' identity providers use too (`auth0|5f7c...`,
# `user@example.com`, UUIDs), and nothing that could break a Redis hash tag ({}), a path or a log line.
ID_PATTERN = r"^[A-Za-z0-9._:@|-]+$"
MAX_ID_LEN = 64
DAY_S = 86_400.0
DEVICE_WINDOW_DAYS = 30


class Status(StrEnum):
    """Where a play request stands."""

    pending = "pending"
    allowed = "allowed"
    denied = "denied"


class Policy(StrEnum):
    """What happens when a user at the limit asks for one more stream."""

    deny = "deny"
    evict_oldest = "evict_oldest"
    evict_oldest_on_same_device_first = "evict_oldest_on_same_device_first"


class OutagePolicy(StrEnum):
    """What a new play gets while the ledger's store is down: refused (`deny`, 503) or allowed (`allow`), within
    the user's limit as far as the deciding process knows their streams."""

    deny = "deny"
    allow = "allow"


class Reason(StrEnum):
    """Why a request was denied, or why a stream ended without its device asking."""

    limit_reached = "limit_reached"
    kind_limit = "kind_limit"
    title_limit = "title_limit"
    device_limit = "device_limit"
    household_limit = "household_limit"
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
    outage_reconciled = "outage_reconciled"
    # Denied: a later request of the same device was decided first (this one came late: decided out of order by
    # another worker, or taken over from a worker that died), so the device's newer stream is not replaced by it.
    superseded = "superseded"


def reason_text(reason: Reason, tag: str | None = None) -> str:
    """A reason as the wire shows it: `kind_limit:<tag>` for a kind cap, else the reason's name."""
    return f"{reason.value}:{tag}" if tag is not None else reason.value


def parse_reason(text: str) -> tuple[Reason, str | None]:
    """The reason and kind tag of a reason's wire text (`kind_limit:uhd` -> kind_limit, "uhd")."""
    name, colon, tag = text.partition(":")
    return Reason(name), (tag if colon else None)


@frozen
class Rules:
    """The admission rules of a plan beside its total limit; None (or no entry) means no such cap.

    `max_streams` None takes the user's limit (the enforced rules always do; a shadow policy may set its own).
    `on_limit` None takes the deployment's PLAYGATE_POLICY. `kind_limits` caps streams per kind tag,
    `max_per_title` streams of one video, `max_devices` distinct devices seen within `device_window_s`, and
    `max_away_streams` streams from outside the account's household networks. `on_outage` None takes the
    deployment's PLAYGATE_OUTAGE_POLICY.
    """

    max_streams: int | None = None
    on_limit: Policy | None = None
    kind_limits: tuple[tuple[str, int], ...] = ()
    max_per_title: int | None = None
    max_devices: int | None = None
    device_window_s: float = DEVICE_WINDOW_DAYS * DAY_S
    max_away_streams: int | None = None
    on_outage: OutagePolicy | None = None


@frozen
class Plan:
    """A subscription plan: how many streams its users may watch at once, its other rules and a shadow policy."""

    id: str
    name: str
    max_streams: int
    rules: Rules = Rules()
    shadow: Rules | None = None


@frozen
class User:
    """An account; `limit` is the effective limit (own, else the plan's, else the default)."""

    id: str
    name: str
    limit: int
    own_limit: int | None
    plan: str | None
    disabled: bool
    is_admin: bool = False
    household: tuple[str, ...] = ()
    rules: Rules = Rules()
    shadow: Rules | None = None
    token_epoch: int = 0  # tokens carry the epoch they were issued under; an older one is refused


class KeyScope(StrEnum):
    """What an API key may do: everything an admin may (`admin`), play and stop for any user (`plays`), or read
    users, plans, videos and streams (`read`)."""

    admin = "admin"
    plays = "plays"
    read = "read"


@frozen
class ApiKey:
    """An API key as stored (never the key itself): its id, name, scope, and when it was made, last used, revoked."""

    id: str
    name: str
    scope: KeyScope
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


@frozen
class Video:
    """Something to watch."""

    id: str
    title: str
    url: str
    source: str | None = None  # a folder of the admin's own HLS/DASH media, else the media PlayGate makes
    kinds: tuple[str, ...] = ()


@frozen
class Quota:
    """What the admission rule needs to know of a user at decision time."""

    limit: int
    disabled: bool = False
    exists: bool = True
    rules: Rules = Rules()
    shadow: Rules | None = None


@frozen
class PlayRequest:
    """A user's wish to start a video on a device, as queued for the worker (times in epoch seconds)."""

    request_id: str
    user_id: str
    video_id: str
    device_id: str
    accepted_at: float
    # "Watch here": streams of the user to end in exchange for this one, atomically, only if it is then admitted:
    # these ids, or (`replace_others`) every stream of the user.
    replace_stream_ids: tuple[str, ...] = ()
    replace_others: bool = False
    device_name: str = ""
    # One stream per device: a stream this device plays (another title) is replaced by this one, atomically.
    replace_device_stream: bool = False
    kinds: tuple[str, ...] = ()
    away: bool = False
    # PLAYGATE_TRACING: the W3C traceparent of the API's span that queued it, for the worker's span ("": none).
    trace: str = ""


@frozen
class Stream:
    """An active (or, once its lease ran out, expired) stream."""

    id: str
    user_id: str
    video_id: str
    device_id: str
    started_at: float
    expires_at: float
    device_name: str = ""
    kinds: tuple[str, ...] = ()
    away: bool = False

    def live(self, now: float) -> bool:
        """True while the lease has not run out."""
        return self.expires_at > now


@frozen
class Decision:
    """The outcome of one play request; `active` is the user's stream count after it.

    An allowed decision names its stream: its id, lease, start (`started_at`: the decision's instant for a new
    stream, earlier when the device asked again for the stream it plays) and whether it plays away from the
    household's networks, so that the decision's playback token names them as a heartbeat's would. `started_at`
    is None for a denial, and for a decision stored before decisions carried it.
    """

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
    reason_tag: str | None = None
    shadow_reason: str | None = None
    started_at: float | None = None
    away: bool = False

    @property
    def why(self) -> str | None:
        """The denial reason as the wire shows it (`kind_limit:uhd`), None when allowed."""
        return reason_text(self.reason, self.reason_tag) if self.reason is not None else None


@frozen
class Device:
    """A device an account played on, and when it last started a stream (epoch seconds)."""

    id: str
    user_id: str
    last_seen_at: float


@frozen
class EndedStream:
    """A stream that stopped counting, and why."""

    stream: Stream
    reason: Reason


@frozen
class Admission:
    """One request to decide, with the user's quota as known at decision time."""

    request: PlayRequest
    quota: Quota


@frozen
class Outcome:
    """What deciding one admission did: the decision, the streams it ended to make room (if any), and, for a
    request denied at the limit, the streams that hold the limit (`conflicts`)."""

    decision: Decision
    ended: tuple[EndedStream, ...] = ()
    conflicts: tuple[Stream, ...] = ()
    # A request decided before (delivered again: a worker died before acknowledging it), told its first decision
    # again: listed and counted once already.
    again: bool = False


@frozen
class LoggedChange:
    """A change as a ledger logged it beside making it (distributed: an entry of its change log), for the audit
    trail to record: a decision (with the streams it ended) or streams ended at `at` without one. `entry` names it
    in the log (what the reader acknowledges)."""

    entry: str
    at: float
    decision: Decision | None = None
    ended: tuple[EndedStream, ...] = ()
    # The policy at the limit the decision was made under (its plan's onLimit, else PLAYGATE_POLICY); None from a
    # process of the version before, which did not log it.
    policy: Policy | None = None


class _RandomBits(threading.local):
    """The operating system's random bytes (os.urandom), read 4 KiB at a time and handed out in slices: ids as
    random as `secrets` makes them, without a system call each. Per thread, so no lock (the ledger's thread makes
    stream ids too)."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Drop the bytes held (this thread's)."""
        self._pool = b""
        self._at = 0

    def hex(self, n_bytes: int) -> str:
        """`n_bytes` fresh random bytes, as hex."""
        if self._at + n_bytes > len(self._pool):
            self._pool, self._at = os.urandom(RANDOM_POOL_BYTES), 0
        start, self._at = self._at, self._at + n_bytes
        return self._pool[start : self._at].hex()


RANDOM_POOL_BYTES = 4096
_random_bits = _RandomBits()
# A forked child (playgate serve --processes) must not hand out the bytes its parent holds: it starts empty.
os.register_at_fork(after_in_child=_random_bits.forget)


def random_hex(n_bytes: int) -> str:
    """`n_bytes` fresh random bytes as hex, as `secrets.token_hex` makes them, without a system call each."""
    return _random_bits.hex(n_bytes)


def new_id() -> str:
    """A fresh opaque id for requests and streams (128 random bits, URL-safe)."""
    return _random_bits.hex(16)


def owned_id(user_id: str) -> str:
    """A fresh id that names its user: `<user id, UTF-8 as hex>-<96 random bits as hex>` (URL-safe). Stream and
    request ids are made so, so that a cluster finds their keys (which carry the user's hash tag) from the id alone."""
    return f"{user_id.encode().hex()}-{_random_bits.hex(12)}"


def id_owner(owned: str) -> str | None:
    """The user id an owned_id names, or None for an id it did not make."""
    head, dash, _ = owned.partition("-")
    if not dash or not head:
        return None
    try:
        return bytes.fromhex(head).decode()
    except (ValueError, UnicodeDecodeError):
        return None
