"""/v1 account routes beside plays: registered devices, the household's networks, the shadow policy's denials."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from playgate.api.deps import Caller, GateDep
from playgate.api.errors import problem_responses
from playgate.api.schemas import DeviceOut, HouseholdIO, ShadowDenialOut
from playgate.wire import Id, iso

router = APIRouter(prefix="/v1", tags=["account"])

ERRORS = problem_responses(
    {
        401: "No valid token.",
        404: "Unknown, or not yours.",
        422: "A field is wrong; `field` names it.",
    }
)
ForUser = Annotated[Id | None, Query(alias="userId", description="Another account's (admins); default your own.")]


@router.get(
    "/devices",
    summary="Registered devices",
    description="Devices that started a stream under a plan with `maxDevices`, least recently seen first. A device "
    "counts against the cap while seen within the plan's `deviceWindowDays`; remove one to make room.",
    responses=ERRORS,
)
async def list_devices(gate: GateDep, caller: Caller, user_id: ForUser = None) -> list[DeviceOut]:
    """The account's registered devices."""
    return [DeviceOut.of(d) for d in await gate.devices(caller, user_id)]


@router.delete(
    "/devices/{deviceId:path}",
    status_code=204,
    response_class=Response,
    summary="Remove a registered device",
    description="Frees its place under the device cap; its streams play on until they end. The device id may "
    "contain `/`.",
    responses=ERRORS,
)
async def forget_device(
    gate: GateDep,
    caller: Caller,
    device_id: Annotated[str, Path(alias="deviceId", min_length=1, max_length=200)],
    user_id: ForUser = None,
) -> Response:
    """204; 404 if the device is not registered."""
    await gate.forget_device(caller, device_id, user_id)
    return Response(status_code=204)


@router.get("/household", summary="The household's networks", responses=ERRORS)
async def get_household(gate: GateDep, caller: Caller, user_id: ForUser = None) -> HouseholdIO:
    """The networks (CIDR) a stream must come from to count as at home."""
    return HouseholdIO.of(await gate.user(caller, user_id))


@router.put(
    "/household",
    summary="Set the household's networks",
    description="Streams from other addresses count against the plan's `maxAwayStreams`. The address is the peer's, "
    "or the client a trusted proxy names in X-Forwarded-For (PLAYGATE_TRUSTED_PROXIES). [] ends the household: "
    "every stream counts as at home. Applies to requests made after it.",
    responses=ERRORS,
)
async def set_household(gate: GateDep, caller: Caller, body: HouseholdIO, user_id: ForUser = None) -> HouseholdIO:
    """200 with the networks as stored (normalised)."""
    return HouseholdIO.of(await gate.set_household(caller, body.networks, user_id))


@router.get(
    "/shadow-denials",
    summary="Would-be denials of the shadow policy",
    description="The latest 100 requests that the shadow policy (the plan's `shadow`, or PLAYGATE_SHADOW_POLICY) "
    "would have denied, newest first, with the rule and what the enforced policy decided. An admin without "
    "`userId` sees every account's.",
    responses=ERRORS,
)
async def list_shadow_denials(gate: GateDep, caller: Caller, user_id: ForUser = None) -> list[ShadowDenialOut]:
    """The shadow's would-be denials."""
    return [
        ShadowDenialOut(
            user_id=d.user_id,
            request_id=d.request_id,
            video_id=d.video_id,
            device_id=d.device_id,
            rule=d.rule,
            enforced="allowed" if d.enforced == "allowed" else "denied",
            decided_at=iso(d.decided_at),
        )
        for d in await gate.shadow_denials(caller, user_id)
    ]
