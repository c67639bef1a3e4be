"""Wire shapes of API.md: camelCase JSON, string ids, ISO-8601 UTC times."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from playgate.domain import ID_PATTERN, MAX_ID_LEN, ApiKey, Decision, KeyScope, Plan, PlayRequest, Stream, User, Video

# Ids, names and keys: printable, no control characters, bounded.
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=ID_PATTERN)]
# A stream id may carry its user's id (the Redis ledger's do, hex-encoded: up to 2 x 64 + 25 characters).
StreamId = Annotated[str, StringConstraints(min_length=1, max_length=160, pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]


def _playable(url: str) -> str:
    """A video URL a player may be sent to: http(s), or a path on this server (the media folder); never
    `javascript:`, `data:` and the like."""
    if re.search(r"[\x00-\x20\x7f]", url):
        raise ValueError("a video URL has no spaces or control characters (write a space as %20)")
    if url.startswith("/") and not url.startswith("//"):
        return url
    scheme, colon, rest = url.partition(":")
    if colon and scheme.lower() in ("http", "https") and rest.startswith("//") and len(rest) > 2:
        return url
    raise ValueError("a video URL is http(s)://… or a path on this server such as /media/clip.mp4")


VideoUrl = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_playable)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=200)]
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Limit = Annotated[int, Field(ge=0, le=10_000)]
DeviceName = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=r"^[^\x00-\x1f\x7f]+$")]


def iso(epoch_s: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds and a Z."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Wire(BaseModel):
    """Base of every body: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class Input(Wire):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Status(Wire):
    """Health answer."""

    status: str
    service: str = "playgate"
    version: str
    checks: dict[str, str] | None = None


class UserOut(Wire):
    """A user as API.md shows it: `limit` is the effective limit; never a password or its hash."""

    id: str
    name: str
    limit: int
    own_limit: int | None = Field(description="The user's own limit; null falls back to the plan, then the default.")
    plan: str | None
    disabled: bool
    admin: bool

    @classmethod
    def of(cls, user: User) -> UserOut:
        """From the domain object."""
        return cls(
            id=user.id,
            name=user.name,
            limit=user.limit,
            own_limit=user.own_limit,
            plan=user.plan,
            disabled=user.disabled,
            admin=user.is_admin,
        )


class VideoOut(Wire):
    """A video."""

    id: str
    title: str
    url: str
    poster_url: str = Field(description="Its poster image (JPEG), for anyone.")

    @classmethod
    def of(cls, video: Video) -> VideoOut:
        """From the domain object."""
        return cls(id=video.id, title=video.title, url=video.url, poster_url=f"/videos/{video.id}/poster")


class AdminVideoOut(VideoOut):
    """A video as an admin sees it: with the folder of its own media, if it has one."""

    source: str | None = Field(
        None,
        description="The folder of the video's own HLS/DASH media (its real path); null: the media PlayGate makes.",
    )

    @classmethod
    def of(cls, video: Video) -> AdminVideoOut:
        """From the domain object."""
        return cls(**VideoOut.of(video).model_dump(), source=video.source)


class PlanOut(Wire):
    """A plan."""

    id: str
    name: str
    max_streams: int

    @classmethod
    def of(cls, plan: Plan) -> PlanOut:
        """From the domain object."""
        return cls(id=plan.id, name=plan.name, max_streams=plan.max_streams)


class StreamOut(Wire):
    """An active stream."""

    id: str
    user_id: str
    video_id: str
    device_id: str
    device_name: str = Field(description='What people call the device ("Chrome on Linux"); "" when unknown.')
    started_at: str
    expires_at: str

    @classmethod
    def of(cls, stream: Stream) -> StreamOut:
        """From the domain object."""
        return cls(
            id=stream.id,
            user_id=stream.user_id,
            video_id=stream.video_id,
            device_id=stream.device_id,
            device_name=stream.device_name,
            started_at=iso(stream.started_at),
            expires_at=iso(stream.expires_at),
        )


class ConflictOut(Wire):
    """A stream holding the limit that a denied request ran into: enough for a player to offer to stop it."""

    stream_id: str
    video_id: str
    device_id: str
    device_name: str
    started_at: str
    last_seen_at: str = Field(description="Its last sign of life (start, heartbeat or media request).")

    @classmethod
    def of(cls, stream: Stream, lease_s: float) -> ConflictOut:
        """From a stream; its last sign of life is one lease before it runs out."""
        return cls(
            stream_id=stream.id,
            video_id=stream.video_id,
            device_id=stream.device_id,
            device_name=stream.device_name,
            started_at=iso(stream.started_at),
            last_seen_at=iso(max(stream.started_at, stream.expires_at - lease_s)),
        )


class TokenIn(Input):
    """Credentials for POST /auth/token."""

    username: Name
    password: Password


class TokenOut(Wire):
    """An access token and who it is for."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the OAuth2 token type)
    expires_in: int = Field(description="Seconds until the token expires.")
    user: UserOut


class PlayIn(Input):
    """Body of POST /v1/plays."""

    video_id: Id
    device_id: DeviceId | None = Field(
        None,
        description="The player. Without it the request is a new device of its own, and the answer carries the "
        "`deviceId` issued for it (keep it: under PLAYGATE_DEVICE_IDS=issued only issued ids are accepted).",
    )
    device_name: DeviceName | None = Field(
        None, description='A name people recognise ("Living-room TV"); else one made from the User-Agent.'
    )
    replace_stream_id: StreamId | None = Field(
        None, description="One of your streams to end in exchange, atomically, if the limit is reached."
    )
    user_id: Id | None = Field(
        None, description="The user to play for: for an API key of scope `plays` (or an admin); else yourself."
    )


class PlayOut(Wire):
    """A play request and, once decided, its decision."""

    request_id: str
    status: Literal["pending", "allowed", "denied"]
    video_id: str
    device_id: str = Field(description="The request's device (issued by the server when the request named none).")
    stream_id: str | None = None
    reason: str | None = None
    active: int | None = Field(None, description="The user's active streams after the decision.")
    limit: int | None = None
    expires_at: str | None = Field(None, description="When the new stream's lease runs out, unless renewed.")
    playback_url: str | None = Field(
        None,
        description="Allowed: the stream's media, `/v1/streams/{streamId}/content?token=<playback token>` "
        "(relative; fit for a `<video src>`). Each media request renews the lease.",
    )
    conflicts: list[ConflictOut] | None = Field(
        None, description="Denied at the limit: the streams holding it, oldest first (offer to stop one)."
    )

    @classmethod
    def of(
        cls, item: PlayRequest | Decision, playback_url: str | None = None, conflicts: list[ConflictOut] | None = None
    ) -> PlayOut:
        """From a pending request or a decision (with its playback URL when allowed, its conflicts when denied)."""
        if isinstance(item, PlayRequest):
            return cls(request_id=item.request_id, status="pending", video_id=item.video_id, device_id=item.device_id)
        return cls(
            request_id=item.request_id,
            status=item.status.value,
            video_id=item.video_id,
            device_id=item.device_id,
            conflicts=conflicts,
            stream_id=item.stream_id,
            reason=item.reason.value if item.reason else None,
            active=item.active,
            limit=item.limit,
            expires_at=iso(item.expires_at) if item.expires_at is not None else None,
            playback_url=playback_url,
        )


class SeedPlayData(Wire):
    """`data.data` of the seed's request answer."""

    video_id: str
    user_id: str


class SeedPlayStatus(Wire):
    """`data` of the seed's request answer."""

    status: Literal["pending"] = "pending"
    data: SeedPlayData


class SeedPlayOut(Wire):
    """The seed's 202 answer to GET /videos/{videoId}/request."""

    message: str = "Streaming request created."
    data: SeedPlayStatus
    request_id: str


class HeartbeatOut(Wire):
    """A renewed lease."""

    expires_at: str
    playback_url: str | None = Field(None, description="A fresh playback URL for the stream (a new token).")


class UserIn(Input):
    """A new user."""

    name: Name
    password: Password
    limit: Limit | None = Field(None, description="Own limit; null falls back to the plan, then the default.")
    plan: Id | None = None
    disabled: bool = False


class UserPatch(Input):
    """Changes to a user; absent fields stay as they are, `limit: null` falls back to the plan."""

    name: Name | None = None
    password: Password | None = None
    limit: Limit | None = None
    plan: Id | None = None
    disabled: bool | None = None


Source = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1000, pattern=r"^/[^\x00-\x1f\x7f]*$"),
    Field(
        description="An absolute folder on the server holding the video's own HLS media (`master.m3u8`, and "
        "`manifest.mpd` for DASH), inside one of PLAYGATE_MEDIA_ROOTS; the gate serves it instead of the demo media."
    ),
]


class VideoIn(Input):
    """A new video."""

    title: Text
    url: VideoUrl
    source: Source | None = None


class VideoPatch(Input):
    """Changes to a video."""

    title: Text | None = None
    url: VideoUrl | None = None
    source: Source | None = None


class PlanIn(Input):
    """A new plan."""

    name: Name
    max_streams: Limit


class PlanPatch(Input):
    """Changes to a plan."""

    name: Name | None = None
    max_streams: Limit | None = None


class UserPut(UserPatch):
    """A user by id, created or updated: absent fields keep their value (a new user is named by its id and has no
    password unless given: it logs in with the platform's tokens)."""


class VideoPut(VideoPatch):
    """A video by id, created or updated (a new one needs title and url)."""


class PlanPut(PlanPatch):
    """A plan by id, created or updated (a new one needs name and maxStreams)."""


class KeyIn(Input):
    """A new API key."""

    name: Name
    scope: KeyScope = Field(description="`admin`: all an admin may; `plays`: play and stop for any user; `read`: read.")


class KeyOut(Wire):
    """An API key as stored: never the key itself."""

    id: str
    name: str
    scope: KeyScope
    created_at: str
    last_used_at: str | None = Field(description="Written at most every 10 s, so up to that much behind.")
    revoked_at: str | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        """From the domain object."""
        return cls(
            id=key.id,
            name=key.name,
            scope=key.scope,
            created_at=iso(key.created_at),
            last_used_at=iso(key.last_used_at) if key.last_used_at is not None else None,
            revoked_at=iso(key.revoked_at) if key.revoked_at is not None else None,
        )


class KeyCreated(KeyOut):
    """A new API key, with the key itself: shown this once, stored only as a hash."""

    key: str = Field(description="Send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`.")


class RefusalOut(Wire):
    """An import row that was not stored, and why."""

    row: int = Field(description="The row's number in the input (its line for NDJSON, from 1).")
    id: str | None
    field: str
    reason: str


class ImportOut(Wire):
    """What an import did."""

    created: int
    updated: int
    unchanged: int = Field(description="Rows equal to what was stored: left alone.")
    refused: int
    refused_rows: list[RefusalOut] = Field(description="Each refused row with its reason (at most 1,000 listed).")


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[dict[str, object]] | None = None
