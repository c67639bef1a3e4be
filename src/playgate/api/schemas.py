"""Wire shapes of API.md: camelCase JSON, string ids, ISO-8601 UTC times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from playgate.audit import StoredEvent
from playgate.bus.protocol import Playback, conflict_message
from playgate.domain import (
    ApiKey,
    Decision,
    Device,
    KeyScope,
    Plan,
    PlayRequest,
    Stream,
    User,
    Video,
)
from playgate.policy import FIELDS, rules_to_json
from playgate.wire import (
    DeviceId,
    DeviceName,
    DeviceSecret,
    Flag,
    Id,
    Input,
    Kinds,
    Limit,
    Name,
    Networks,
    Password,
    RulesWire,
    ShadowRules,
    StreamId,
    Text,
    VideoUrl,
    Wire,
    iso,
)

MAX_REPLACED = 64  # stream ids one play request may name to replace


class Status(Wire):
    """Health answer."""

    status: str
    service: str = "playgate"
    version: str
    checks: dict[str, str] | None = None
    outage: str | None = Field(
        None,
        description="/readyz: the outage mode in force: `normal`; `grace: …` (the ledger's store is down, playing "
        "streams honoured, still ready); `expired: …` (down past PLAYGATE_OUTAGE_GRACE, not ready).",
    )


class UserOut(Wire):
    """A user as API.md shows it: `limit` is the effective limit; never a password or its hash."""

    id: str
    name: str
    limit: int
    own_limit: int | None = Field(description="The user's own limit; null falls back to the plan, then the default.")
    plan: str | None
    disabled: bool
    admin: bool
    household: list[str] = Field(description="The household's networks; streams from elsewhere count as away.")

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
            household=list(user.household),
        )


class VideoOut(Wire):
    """A video."""

    id: str
    title: str
    url: str
    poster_url: str = Field(description="Its poster image (JPEG), for anyone.")
    kinds: list[str] = Field(description="Kind tags (`live`, `uhd`, ...) that plans may cap.")

    @classmethod
    def of(cls, video: Video) -> VideoOut:
        """From the domain object."""
        return cls(
            id=video.id,
            title=video.title,
            url=video.url,
            poster_url=f"/videos/{video.id}/poster",
            kinds=list(video.kinds),
        )


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


class PlanOut(RulesWire):
    """A plan: its total limit, its other rules, and its shadow policy if one runs."""

    id: str
    name: str
    max_streams: int
    shadow: ShadowRules | None = None

    @classmethod
    def of(cls, plan: Plan) -> PlanOut:
        """From the domain object."""
        fields: dict[str, Any] = {**rules_to_json(plan.rules), "maxStreams": plan.max_streams}
        if fields.get("maxDevices") is None:
            fields.pop("deviceWindowDays", None)
        return cls.model_validate(
            {**fields, "id": plan.id, "name": plan.name, "shadow": rules_to_json(plan.shadow) if plan.shadow else None}
        )


class DeviceOut(Wire):
    """A device of the account: registered by its first stream, counted while seen within the window."""

    id: str
    user_id: str
    last_seen_at: str

    @classmethod
    def of(cls, device: Device) -> DeviceOut:
        """From the domain object."""
        return cls(id=device.id, user_id=device.user_id, last_seen_at=iso(device.last_seen_at))


class ShadowDenialOut(Wire):
    """A request the shadow policy would have denied, and what the enforced policy decided."""

    user_id: str
    request_id: str
    video_id: str
    device_id: str
    rule: str = Field(description="The shadow rule that would have denied: `limit_reached`, `kind_limit:<tag>`, ...")
    enforced: Literal["allowed", "denied"]
    decided_at: str


class HouseholdIO(Input):
    """The account's household networks."""

    networks: Networks

    @classmethod
    def of(cls, user: User) -> HouseholdIO:
        """The user's networks as stored."""
        return cls(networks=list(user.household))


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
        """From a stream, as the fan-out shapes it for a socket (bus.protocol.conflict_message)."""
        return cls.model_validate(conflict_message(stream, lease_s))


class TokenIn(Input):
    """Credentials for POST /auth/token."""

    username: Name
    password: Password


class StopBeaconIn(Wire):
    """The body of POST /v1/streams/{streamId}/stop: the access token a header would carry (navigator.sendBeacon
    cannot set headers). Read as JSON whatever the content type; other fields are ignored."""

    token: str = Field(min_length=1, description="The caller's access token (`accessToken` of POST /auth/token).")


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
    device_secret: DeviceSecret | None = Field(
        None,
        description="The secret the `deviceId` was issued with (in the answer that issued it). Under "
        "PLAYGATE_DEVICE_IDS=issued it is required with an issued `deviceId`: the id is shown to the account's "
        "other devices (streams, conflicts), the secret never is, so a copied id is refused (422 naming it).",
    )
    device_name: DeviceName | None = Field(
        None, description='A name people recognise ("Living-room TV"); else one made from the User-Agent.'
    )
    replace_stream_id: StreamId | None = Field(
        None, description="One of your streams to end in exchange, atomically (as `replaceStreamIds` with one id)."
    )
    replace_stream_ids: list[StreamId] | None = Field(
        None,
        max_length=MAX_REPLACED,
        description='"Watch here": your streams to end in exchange for this one, in the same atomic step as the '
        "decision, and only if it is allowed (a denial ends nothing). Ids of streams no longer active are passed "
        f"over. At most {MAX_REPLACED}.",
    )
    replace_others: Flag = Field(
        False,
        description='"Watch here" for all: every other stream of yours ends in exchange for this one, in the same '
        "atomic step as the decision, and only if it is allowed.",
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
    device_secret: str | None = Field(
        None,
        description="When the server issued `deviceId` for this request: its secret, told only here. Keep it "
        "beside the id, privately, and send both (`deviceSecret`) with later requests.",
    )
    stream_id: str | None = None
    reason: str | None = Field(
        None,
        description="Denied: `limit_reached`, `kind_limit:<tag>`, `title_limit`, `device_limit`, "
        "`household_limit`, `user_disabled`, `unknown_user`, `superseded` (a later request of the same device was "
        "decided first, and its stream is kept) or `error`.",
    )
    active: int | None = Field(None, description="The user's active streams after the decision.")
    limit: int | None = None
    expires_at: str | None = Field(None, description="When the new stream's lease runs out, unless renewed.")
    playback_url: str | None = Field(
        None,
        description="Allowed: the stream's media, its HLS master playlist `/v1/play/{playbackToken}/master.m3u8` "
        "(relative; fit for hls.js or a `<video src>`), or with edge signing (PLAYGATE_EDGE_SIGNING) the edge's "
        "signed, short-lived link. Each media request renews the lease.",
    )
    playback_token: str | None = Field(
        None,
        description="Allowed: the stream's playback token (the one `playbackUrl` carries, if it carries one; an "
        "edge's signed link does not). Send it with heartbeats (header `X-Playback-Token`, socket field "
        "`playbackToken`): while the ledger's store does not answer, an API process that never saw the stream "
        "honours them from it (the outage policy).",
    )
    conflicts: list[ConflictOut] | None = Field(
        None, description="Denied at the limit: the streams holding it, oldest first (offer to stop one)."
    )

    @classmethod
    def of(
        cls, item: PlayRequest | Decision, playback: Playback | None = None, conflicts: list[ConflictOut] | None = None
    ) -> PlayOut:
        """From a pending request or a decision (with its playback URL and token when allowed, its conflicts when
        denied)."""
        if isinstance(item, PlayRequest):
            return cls(request_id=item.request_id, status="pending", video_id=item.video_id, device_id=item.device_id)
        return cls(
            request_id=item.request_id,
            status=item.status.value,
            video_id=item.video_id,
            device_id=item.device_id,
            conflicts=conflicts,
            stream_id=item.stream_id,
            reason=item.why,
            active=item.active,
            limit=item.limit,
            expires_at=iso(item.expires_at) if item.expires_at is not None else None,
            playback_url=playback.url if playback is not None else None,
            playback_token=playback.token if playback is not None else None,
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
    """A renewed lease, with a fresh playback URL and token."""

    expires_at: str
    playback_url: str | None = Field(
        None, description="A fresh playback URL for the stream (a new token; with edge signing, a new signed link)."
    )
    playback_token: str | None = Field(
        None, description="A fresh playback token for the stream, for the next heartbeats (`X-Playback-Token`)."
    )

    @classmethod
    def of(cls, stream: Stream, playback: Playback) -> HeartbeatOut:
        """From the renewed stream and its fresh playback."""
        return cls(expires_at=iso(stream.expires_at), playback_url=playback.url, playback_token=playback.token)


class UserIn(Input):
    """A new user."""

    name: Name
    password: Password
    limit: Limit | None = Field(None, description="Own limit; null falls back to the plan, then the default.")
    plan: Id | None = None
    disabled: Flag = False
    household: Networks = []


class UserPatch(Input):
    """Changes to a user; absent fields stay as they are, `limit: null` falls back to the plan."""

    name: Name | None = None
    password: Password | None = None
    limit: Limit | None = None
    plan: Id | None = None
    disabled: Flag | None = None
    household: Networks | None = None


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
    kinds: Kinds = []


class VideoPatch(Input):
    """Changes to a video."""

    title: Text | None = None
    url: VideoUrl | None = None
    source: Source | None = None
    kinds: Kinds | None = None


class PlanIn(RulesWire):
    """A new plan: its name, total limit, other rules and (optionally) a shadow policy."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    max_streams: Limit
    shadow: ShadowRules | None = None


class PlanPatch(RulesWire):
    """Changes to a plan: absent fields stay; a rule set to null is lifted; `shadow: null` ends shadow mode."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    max_streams: Limit | None = None
    shadow: ShadowRules | None = None

    def changes(self) -> dict[str, Any]:
        """What the catalogue changes: name, max_streams, the rule fields sent (camelCase), shadow."""
        sent = self.model_dump(exclude_unset=True, by_alias=True)
        found: dict[str, Any] = {name: sent[name] for name in FIELDS if name in sent and name != "maxStreams"}
        result: dict[str, Any] = {"rules": found} if found else {}
        if self.name is not None:
            result["name"] = self.name
        if self.max_streams is not None:
            result["max_streams"] = self.max_streams
        if "shadow" in sent:
            result["shadow"] = self.shadow.rules() if self.shadow is not None else None
        return result


def _left_out_not_null(value: Any) -> Any:
    """For a PUT: a field the row always has may be left out (it keeps its value), not set to null."""
    if value is None:
        raise ValueError("may be left out (it keeps its value), not set to null")
    return value


def _not_nullable(*names: str) -> Callable[[dict[str, Any]], None]:
    """A PUT's JSON schema: the fields _left_out_not_null keeps (wire names) show their type without null."""

    def edit(schema: dict[str, Any]) -> None:
        for name in names:
            field = schema["properties"][name]
            field.pop("default", None)
            options = [option for option in field.pop("anyOf") if option.get("type") != "null"]
            if len(options) == 1:
                field.update(options[0])
            else:
                field["anyOf"] = options

    return edit


class UserPut(UserPatch):
    """A user by id, created or updated: absent fields keep their value (a new user is named by its id and has no
    password unless given: it logs in with the platform's tokens)."""

    model_config = ConfigDict(json_schema_extra=_not_nullable("name", "disabled", "household"))
    keep_when_left_out = field_validator("name", "disabled", "household")(_left_out_not_null)


class VideoPut(VideoPatch):
    """A video by id, created or updated (a new one needs title and url)."""

    model_config = ConfigDict(json_schema_extra=_not_nullable("title", "url", "kinds"))
    keep_when_left_out = field_validator("title", "url", "kinds")(_left_out_not_null)


class PlanPut(PlanPatch):
    """A plan by id, created or updated (a new one needs name and maxStreams)."""

    model_config = ConfigDict(json_schema_extra=_not_nullable("name", "maxStreams"))
    keep_when_left_out = field_validator("name", "max_streams")(_left_out_not_null)


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


class ErasedOut(Wire):
    """What an erasure of a user's history deleted, by kind."""

    audit_events: int = Field(description="Decisions and stream ends of the audit trail.")
    shadow_denials: int
    webhook_events: int = Field(description="Events of the webhook outbox, sent or not.")
    webhook_deliveries: int
    devices: int = Field(description="Registered devices (a plan's device cap counts them).")


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[dict[str, object]] | None = None
    reason: str | None = Field(
        None,
        description="A 403 (media) or 404 (heartbeat) for a stream that ended: why, as recorded (`evicted`, "
        "`replaced`, `stopped`, `stopped_by_admin`, `expired`, `limit_lowered`, `video_deleted`, `user_disabled`); "
        "absent while not recorded yet: a lease that ran out is recorded at the next sweep "
        "(PLAYGATE_SWEEP_INTERVAL), an end decided by another process once that process writes its audit events "
        "(every half second).",
    )


class EventOut(Wire):
    """An entry of the audit trail: a decision, or a stream's end."""

    id: str = Field(description="Grows with every event stored; the cursor of the next page.")
    at: str
    kind: Literal["decision", "stream_end"]
    user_id: str
    video_id: str
    device_id: str
    outcome: str = Field(description="`allowed` or `denied` for a decision; why it ended for a stream's end.")
    request_id: str | None
    stream_id: str | None
    reason: str | None
    policy: str | None = Field(
        description="A decision's: the policy at the limit it was made under (its plan's `onLimit`, else "
        "PLAYGATE_POLICY)."
    )
    active: int | None
    limit: int | None
    shadow: str | None = Field(
        description="A decision's: the reason the plan's shadow rules would have denied it (`limit_reached`, "
        "`kind_limit:uhd`, ...); null when they would not have, or none run."
    )

    @classmethod
    def of(cls, stored: StoredEvent) -> EventOut:
        """From the stored event."""
        e = stored.event
        return cls(
            id=str(stored.id),
            at=iso(e.at),
            kind=e.kind,
            user_id=e.user_id,
            video_id=e.video_id,
            device_id=e.device_id,
            outcome=e.outcome,
            request_id=e.request_id,
            stream_id=e.stream_id,
            reason=e.reason,
            policy=e.policy,
            active=e.active,
            limit=e.limit,
            shadow=e.shadow,
        )


class EventsOut(Wire):
    """A page of a user's audit trail, oldest first."""

    events: list[EventOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")
