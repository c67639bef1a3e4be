"""/v1 management of users, videos and plans (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from playgate.api.deps import Admin, CatalogDep, ContentDep, GateDep
from playgate.api.errors import problem_responses
from playgate.api.schemas import (
    AdminVideoOut,
    Id,
    PlanIn,
    PlanOut,
    PlanPatch,
    UserIn,
    UserOut,
    UserPatch,
    VideoIn,
    VideoPatch,
)

router = APIRouter(prefix="/v1", tags=["admin"])

ERRORS = problem_responses(
    {
        401: "No valid token.",
        403: "Not an admin.",
        404: "No such thing.",
        409: "Name taken, or still in use.",
        422: "A field is wrong; `field` names it.",
    }
)
UserId = Annotated[Id, Path(alias="userId")]
VideoId = Annotated[Id, Path(alias="videoId")]
PlanId = Annotated[Id, Path(alias="planId")]


@router.get("/users", summary="List users", responses=ERRORS)
async def list_users(catalog: CatalogDep, _admin: Admin) -> list[UserOut]:
    """Every user."""
    return [UserOut.of(u) for u in await catalog.list_users()]


@router.post("/users", status_code=201, summary="Create a user", responses=ERRORS)
async def create_user(body: UserIn, catalog: CatalogDep, _admin: Admin) -> UserOut:
    """201 with the new user; the server assigns the id."""
    user = await catalog.create_user(
        name=body.name, password=body.password, limit=body.limit, plan=body.plan, disabled=body.disabled
    )
    return UserOut.of(user)


@router.get("/users/{userId}", summary="One user", responses=ERRORS)
async def get_user(user_id: UserId, catalog: CatalogDep, _admin: Admin) -> UserOut:
    """A user."""
    return UserOut.of(await catalog.get_user(user_id, fresh=True))


@router.patch(
    "/users/{userId}",
    summary="Change a user",
    description="Disabling a user ends their streams at once (announced as `stream_ended`, `user_disabled`).",
    responses=ERRORS,
)
async def update_user(user_id: UserId, body: UserPatch, gate: GateDep, _admin: Admin) -> UserOut:
    """200 with the changed user."""
    return UserOut.of(await gate.update_user(user_id, body.model_dump(exclude_unset=True, by_alias=False)))


@router.delete("/users/{userId}", status_code=204, response_class=Response, summary="Delete a user", responses=ERRORS)
async def delete_user(user_id: UserId, gate: GateDep, _admin: Admin) -> Response:
    """204; the user's streams end with them."""
    await gate.delete_user(user_id)
    return Response(status_code=204)


@router.get("/videos", summary="List videos", responses=ERRORS)
async def list_videos(catalog: CatalogDep, _admin: Admin) -> list[AdminVideoOut]:
    """Every video."""
    return [AdminVideoOut.of(v) for v in await catalog.list_videos()]


@router.post("/videos", status_code=201, summary="Create a video", responses=ERRORS)
async def create_video(body: VideoIn, catalog: CatalogDep, content: ContentDep, _admin: Admin) -> AdminVideoOut:
    """201 with the new video; a `source` outside PLAYGATE_MEDIA_ROOTS, or without a master playlist, is 422."""
    source = content.check_source(body.source)
    return AdminVideoOut.of(await catalog.create_video(title=body.title, url=body.url, source=source))


@router.get("/videos/{videoId}", summary="One video", responses=ERRORS)
async def get_video(video_id: VideoId, catalog: CatalogDep, _admin: Admin) -> AdminVideoOut:
    """A video."""
    return AdminVideoOut.of(await catalog.get_video(video_id))


@router.patch("/videos/{videoId}", summary="Change a video", responses=ERRORS)
async def update_video(
    video_id: VideoId, body: VideoPatch, catalog: CatalogDep, content: ContentDep, _admin: Admin
) -> AdminVideoOut:
    """200 with the changed video; `source: null` goes back to the media PlayGate makes."""
    changes = body.model_dump(exclude_unset=True, by_alias=False)
    if "source" in changes:
        changes["source"] = content.check_source(changes["source"])
    return AdminVideoOut.of(await catalog.update_video(video_id, changes))


@router.delete(
    "/videos/{videoId}", status_code=204, response_class=Response, summary="Delete a video", responses=ERRORS
)
async def delete_video(video_id: VideoId, catalog: CatalogDep, _admin: Admin) -> Response:
    """204."""
    await catalog.delete_video(video_id)
    return Response(status_code=204)


@router.get("/plans", summary="List plans", responses=ERRORS)
async def list_plans(catalog: CatalogDep, _admin: Admin) -> list[PlanOut]:
    """Every plan."""
    return [PlanOut.of(p) for p in await catalog.list_plans()]


@router.post("/plans", status_code=201, summary="Create a plan", responses=ERRORS)
async def create_plan(body: PlanIn, catalog: CatalogDep, _admin: Admin) -> PlanOut:
    """201 with the new plan."""
    return PlanOut.of(await catalog.create_plan(name=body.name, max_streams=body.max_streams))


@router.get("/plans/{planId}", summary="One plan", responses=ERRORS)
async def get_plan(plan_id: PlanId, catalog: CatalogDep, _admin: Admin) -> PlanOut:
    """A plan."""
    return PlanOut.of(await catalog.get_plan(plan_id))


@router.patch("/plans/{planId}", summary="Change a plan", responses=ERRORS)
async def update_plan(plan_id: PlanId, body: PlanPatch, catalog: CatalogDep, _admin: Admin) -> PlanOut:
    """200 with the changed plan."""
    return PlanOut.of(await catalog.update_plan(plan_id, body.model_dump(exclude_unset=True, by_alias=False)))


@router.delete(
    "/plans/{planId}",
    status_code=204,
    response_class=Response,
    summary="Delete a plan (none of its users left)",
    responses=ERRORS,
)
async def delete_plan(plan_id: PlanId, catalog: CatalogDep, _admin: Admin) -> Response:
    """204; 409 while users are on it."""
    await catalog.delete_plan(plan_id)
    return Response(status_code=204)
