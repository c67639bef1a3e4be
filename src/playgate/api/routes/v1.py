"""/v1 plays and streams: the REST surface for players."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import ValidationError

from playgate.api.deps import Caller, ClientAddress, ContentDep, GateDep
from playgate.api.errors import RATE_LIMITED, problem_responses
from playgate.api.schemas import ConflictOut, HeartbeatOut, PlayIn, PlayOut, StopBeaconIn, StreamOut
from playgate.devices import clean_name, device_name
from playgate.domain import Decision, PlayRequest, Reason
from playgate.errors import Invalid
from playgate.media import ContentGate
from playgate.media.gate import TOKEN_HEADER as PLAYBACK_TOKEN_HEADER
from playgate.service import MAX_WAIT_S, PlayGate
from playgate.wire import DeviceId, Id, RequestId, StreamId

router = APIRouter(prefix="/v1", tags=["v1"])

ForUser = Annotated[
    Id | None,
    Query(alias="userId", description="The user to act for: an API key (scope plays) or an admin names it."),
]

ERRORS = problem_responses(
    {
        401: "No valid token.",
        403: "Not yours to act for (another user, or a key without the scope).",
        404: "Unknown or not yours.",
        422: "A field is wrong; `field` names it.",
    }
)


@router.post(
    "/plays",
    status_code=202,
    summary="Ask to play a video",
    description=(
        "Queues the request: 202 `{requestId, status: pending}`. With `?wait=<s>` (at most 10; larger values "
        "are taken as 10) the answer waits for the decision: 200 with it when it comes in time, else the 202. "
        "`Idempotency-Key` (per user): a retry with the same key and body gets the same request and decision; "
        "the same key with another body (video, device, device name, streams to replace) is a 422. "
        "A platform's backend with an API key of scope `plays` (or an admin) names the user in `userId`. "
        "Without `deviceId` the answer carries the one issued for this new device, and its `deviceSecret`. "
        "A request from a device that "
        "plays another title replaces that stream (one stream per device). Denied at the limit: `conflicts`. "
        '"Watch here": `replaceStreamIds` (or `replaceOthers`) end those streams in the step that admits this '
        "one, never when it is denied."
    ),
    responses={200: {"model": PlayOut, "description": "Decided within ?wait=."}, **ERRORS, **RATE_LIMITED},
)
async def create_play(
    body: PlayIn,
    response: Response,
    gate: GateDep,
    content: ContentDep,
    caller: Caller,
    client_address: ClientAddress,
    wait: Annotated[float, Query(ge=0, allow_inf_nan=False, description="Seconds to wait for the decision.")] = 0,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")
    ] = None,
    user_agent: Annotated[str | None, Header(alias="User-Agent", include_in_schema=False)] = None,
) -> PlayOut:
    """Queue a play request for the caller."""
    ticket = await gate.request_play(
        gate.acting_user(caller, body.user_id),
        body.video_id,
        device_id=body.device_id,
        device_secret=body.device_secret,
        device_name=clean_name(body.device_name or device_name(user_agent)),
        idempotency_key=idempotency_key,
        replace_stream_ids=[
            *(body.replace_stream_ids or []),
            *([body.replace_stream_id] if body.replace_stream_id else []),
        ],
        replace_others=body.replace_others,
        wait_s=min(wait, MAX_WAIT_S),
        client_address=client_address,
    )
    if ticket.decision is not None:
        response.status_code = 200
    answer = await _play_out(gate, content, ticket.decision or ticket.request)
    answer.device_secret = gate.device_secret(ticket)
    return answer


async def _play_out(gate: PlayGate, content: ContentGate, found: PlayRequest | Decision) -> PlayOut:
    """A request as answered: pending, or its decision with a fresh playback URL and token or the conflicts of a
    denial."""
    if isinstance(found, PlayRequest):
        return PlayOut.of(found)
    lease_s = gate.lease_s
    held = await gate.conflicts(found) if found.reason is Reason.limit_reached else None
    conflicts = [ConflictOut.of(s, lease_s) for s in held] if held is not None else None
    return PlayOut.of(found, content.playback_for_decision(found), conflicts)


@router.get("/plays/{requestId}", summary="A play request's status (own requests only)", responses=ERRORS)
async def get_play(
    gate: GateDep, content: ContentDep, caller: Caller, request_id: Annotated[RequestId, Path(alias="requestId")]
) -> PlayOut:
    """pending, allowed (with a fresh playback URL and token) or denied (at the limit: with the streams holding
    it)."""
    return await _play_out(gate, content, await gate.play_status(caller, request_id))


@router.get("/streams", summary="Your active streams (or a user's, for a key or an admin)", responses=ERRORS)
async def list_streams(gate: GateDep, caller: Caller, user_id: ForUser = None) -> list[StreamOut]:
    """The caller's active streams, oldest first; with `?userId=`, that user's (`plays` or `read` key, admin)."""
    return [StreamOut.of(s) for s in await gate.streams(gate.viewed_user(caller, user_id))]


@router.post("/streams/{streamId}/heartbeat", summary="Renew a stream's lease", responses=ERRORS)
async def heartbeat(
    gate: GateDep,
    content: ContentDep,
    caller: Caller,
    stream_id: Annotated[StreamId, Path(alias="streamId")],
    playback_token: Annotated[
        str | None,
        Header(
            alias=PLAYBACK_TOKEN_HEADER,
            description="The stream's playback token (`playbackToken` of its decision or of the last heartbeat's "
            "answer), optional: while the ledger's store "
            "does not answer, an API process that never saw the stream honours the heartbeat from it (the outage "
            "policy); 422 naming this header when it is not valid or is another stream's.",
        ),
    ] = None,
) -> HeartbeatOut:
    """200 with the new expiry and a fresh playback URL and token; 404 when the stream is no longer active
    (`reason`: why it ended, when recorded)."""
    owner = caller.user.id if caller.user is not None and not caller.stops_any else None
    claims = content.heartbeat_claims(playback_token, stream_id, owner, field=PLAYBACK_TOKEN_HEADER)
    stream = await gate.heartbeat(caller, stream_id, claims)
    return HeartbeatOut.of(stream, content.playback_for(stream))


@router.delete(
    "/streams/{streamId}",
    status_code=204,
    response_class=Response,
    summary="Stop a stream (an admin may stop anyone's)",
    responses=ERRORS,
)
async def stop_stream(
    gate: GateDep, caller: Caller, stream_id: Annotated[StreamId, Path(alias="streamId")]
) -> Response:
    """204; 404 if not active."""
    await gate.stop_stream(caller, stream_id)
    return Response(status_code=204)


# The body as a page sends it: JSON, as text/plain (sendBeacon's, with no CORS preflight) or application/json; the
# route reads it itself, whatever the content type.
_BEACON_SCHEMA = StopBeaconIn.model_json_schema()
_BEACON_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _BEACON_SCHEMA}, "text/plain": {"schema": _BEACON_SCHEMA}},
    }
}


@router.post(
    "/streams/{streamId}/stop",
    status_code=204,
    response_class=Response,
    summary="Stop a stream from a page being closed (navigator.sendBeacon)",
    description="For `navigator.sendBeacon`, which cannot set headers: the access token travels in the body, "
    'JSON `{"token": "<accessToken>"}` sent as any content type (text/plain avoids a CORS preflight). '
    "204 when stopped; 401 for a missing or bad token; 404 if not active.",
    responses=ERRORS,
    openapi_extra=_BEACON_BODY,
)
async def stop_stream_by_beacon(
    request: Request, gate: GateDep, stream_id: Annotated[StreamId, Path(alias="streamId")]
) -> Response:
    """Stop the token's user's stream; the token is read from the body."""
    try:
        token = StopBeaconIn.model_validate_json(await request.body()).token
    except ValidationError:
        raise Invalid('Send the body {"token": "<accessToken>"}.', field="token") from None
    await gate.stop_stream(await gate.principal(token), stream_id)
    return Response(status_code=204)


@router.delete(
    "/streams",
    status_code=204,
    response_class=Response,
    summary="Stop your streams: this device's (log-out), or all (sign out of all devices)",
    description="With `?deviceId=`: only that device's streams (a log-out on one device leaves the others "
    'playing). Without: every stream of the account ("sign out of all devices").',
    responses=ERRORS,
)
async def stop_streams(
    gate: GateDep,
    caller: Caller,
    user_id: ForUser = None,
    device_id: Annotated[DeviceId | None, Query(alias="deviceId", description="Only this device's streams.")] = None,
) -> Response:
    """204, whether or not anything was playing; with `?userId=`, that user's streams (`plays` key, admin)."""
    await gate.stop_streams(gate.acting_user(caller, user_id), device_id=device_id)
    return Response(status_code=204)
