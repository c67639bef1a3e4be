"""/v1 management of users, videos, plans and API keys (admins and `admin` keys; `read` keys may read), with
create-or-update by id and bulk import."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from playgate.api.deps import Admin, CatalogDep, ContentDep, GateDep, Reader
from playgate.api.errors import problem_responses
from playgate.api.schemas import (
    AdminVideoOut,
    ErasedOut,
    ImportOut,
    KeyCreated,
    KeyIn,
    KeyOut,
    PlanIn,
    PlanOut,
    PlanPatch,
    PlanPut,
    RefusalOut,
    UserIn,
    UserOut,
    UserPatch,
    UserPut,
    VideoIn,
    VideoPatch,
    VideoPut,
)
from playgate.catalog.bulk import PLANS, VIDEOS
from playgate.imports import MAX_ROWS, KindName, format_of
from playgate.policy import parse_networks
from playgate.wire import Id

router = APIRouter(prefix="/v1", tags=["admin"])

ERRORS = problem_responses(
    {
        401: "No valid token or key.",
        403: "Not an admin (nor, for reads, a `read` key).",
        404: "No such thing.",
        409: "Name taken, or still in use.",
        422: "A field is wrong; `field` names it.",
    }
)
UserId = Annotated[Id, Path(alias="userId")]
VideoId = Annotated[Id, Path(alias="videoId")]
PlanId = Annotated[Id, Path(alias="planId")]


@router.get("/users", summary="List users", responses=ERRORS)
async def list_users(catalog: CatalogDep, _reader: Reader) -> list[UserOut]:
    """Every user."""
    return [UserOut.of(u) for u in await catalog.list_users()]


@router.post("/users", status_code=201, summary="Create a user", responses=ERRORS)
async def create_user(body: UserIn, catalog: CatalogDep, _admin: Admin) -> UserOut:
    """201 with the new user; the server assigns the id."""
    user = await catalog.create_user(
        name=body.name,
        password=body.password,
        limit=body.limit,
        plan=body.plan,
        disabled=body.disabled,
        household=parse_networks(body.household),
    )
    return UserOut.of(user)


@router.get("/users/{userId}", summary="One user", responses=ERRORS)
async def get_user(user_id: UserId, catalog: CatalogDep, _reader: Reader) -> UserOut:
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
    changes = body.model_dump(exclude_unset=True, by_alias=False)
    if body.household is not None:
        changes["household"] = parse_networks(body.household)
    return UserOut.of(await gate.update_user(user_id, changes))


@router.delete("/users/{userId}", status_code=204, response_class=Response, summary="Delete a user", responses=ERRORS)
async def delete_user(user_id: UserId, gate: GateDep, _admin: Admin) -> Response:
    """204; the user's streams end with them."""
    await gate.delete_user(user_id)
    return Response(status_code=204)


@router.delete(
    "/users/{userId}/history",
    summary="Erase a user's history",
    description=(
        "Deletes what PlayGate keeps of the user's activity: the audit trail (`GET /v1/users/{userId}/events`), "
        "shadow denials, webhook events and their deliveries (sent or not), and registered devices; for a user "
        "deleted before (`DELETE /v1/users/{userId}`, whose streams' ends are erased with the rest) or one kept. "
        "It first waits, up to 10 s, until the audit trail has taken every change logged before the call: 503 "
        "(nothing erased) if it has not. Calling it again is harmless."
    ),
    responses={**ERRORS, 503: {"description": "The audit trail is behind, or a backend does not answer: ask again."}},
)
async def erase_history(user_id: UserId, gate: GateDep, _admin: Admin) -> ErasedOut:
    """200 with what was deleted, by kind."""
    return ErasedOut.model_validate(await gate.erase_history(user_id))


@router.get("/videos", summary="List videos", responses=ERRORS)
async def list_videos(catalog: CatalogDep, _reader: Reader) -> list[AdminVideoOut]:
    """Every video."""
    return [AdminVideoOut.of(v) for v in await catalog.list_videos()]


@router.post("/videos", status_code=201, summary="Create a video", responses=ERRORS)
async def create_video(body: VideoIn, catalog: CatalogDep, content: ContentDep, _admin: Admin) -> AdminVideoOut:
    """201 with the new video; a `source` outside PLAYGATE_MEDIA_ROOTS, or without a master playlist, is 422."""
    source = content.check_source(body.source)
    video = await catalog.create_video(title=body.title, url=body.url, source=source, kinds=tuple(body.kinds))
    return AdminVideoOut.of(video)


@router.get("/videos/{videoId}", summary="One video", responses=ERRORS)
async def get_video(video_id: VideoId, catalog: CatalogDep, _reader: Reader) -> AdminVideoOut:
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
async def delete_video(video_id: VideoId, gate: GateDep, _admin: Admin) -> Response:
    """204; its streams end (announced to their users as `stream_ended`, reason `video_deleted`)."""
    await gate.delete_video(video_id)
    return Response(status_code=204)


@router.get("/plans", summary="List plans", responses=ERRORS)
async def list_plans(catalog: CatalogDep, _reader: Reader) -> list[PlanOut]:
    """Every plan."""
    return [PlanOut.of(p) for p in await catalog.list_plans()]


PLAN_RULES = (
    "A plan holds its policy: `maxStreams`, `onLimit`, caps per kind tag (`kinds`), per title (`maxPerTitle`), "
    "on devices (`maxDevices` within `deviceWindowDays`) and on streams away from the household "
    "(`maxAwayStreams`); absent or null is no such cap. `shadow` runs a second policy beside it: every request "
    "is decided under both, the player sees only the enforced decision, and the shadow's would-be denials are "
    "counted (`playgate_shadow_denials_total{rule}`) and listed (`GET /v1/shadow-denials`). A change applies "
    "to the plan's users within PLAYGATE_CACHE_TTL, at their next request or heartbeat."
)


@router.post("/plans", status_code=201, summary="Create a plan", description=PLAN_RULES, responses=ERRORS)
async def create_plan(body: PlanIn, catalog: CatalogDep, _admin: Admin) -> PlanOut:
    """201 with the new plan."""
    plan = await catalog.create_plan(
        name=body.name,
        max_streams=body.max_streams,
        rules=body.rules(),
        shadow=body.shadow.rules() if body.shadow is not None else None,
    )
    return PlanOut.of(plan)


@router.get("/plans/{planId}", summary="One plan", responses=ERRORS)
async def get_plan(plan_id: PlanId, catalog: CatalogDep, _reader: Reader) -> PlanOut:
    """A plan."""
    return PlanOut.of(await catalog.get_plan(plan_id))


@router.patch("/plans/{planId}", summary="Change a plan", description=PLAN_RULES, responses=ERRORS)
async def update_plan(plan_id: PlanId, body: PlanPatch, catalog: CatalogDep, _admin: Admin) -> PlanOut:
    """200 with the changed plan."""
    return PlanOut.of(await catalog.update_plan(plan_id, body.changes()))


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


# ---- create or update by id --------------------------------------------------------------------------------

PUT_DOC = (
    "Creates the {noun} with this id (201) or updates it (200); absent fields keep their value, so the same call "
    "twice changes nothing the second time."
)


def _put_answer(response: Response, created: bool) -> None:
    response.status_code = 201 if created else 200


@router.put(
    "/users/{userId}",
    summary="Create or update a user by id",
    description=PUT_DOC.format(noun="user") + " A new user without `name` is named by its id; without `password` "
    "it logs in only with the platform's tokens. Disabling ends its streams at once. A new password, and a disable "
    "either way, end the tokens issued before (401 on every process); the same password again changes nothing.",
    responses={201: {"model": UserOut, "description": "Created."}, **ERRORS},
)
async def put_user(
    user_id: UserId, body: UserPut, response: Response, gate: GateDep, catalog: CatalogDep, _admin: Admin
) -> UserOut:
    """201 created, or 200 updated, with the user."""
    user, created = await gate.put_user(user_id, body.model_dump(exclude_unset=True))
    if body.household is not None:
        user = await catalog.update_user(user_id, {"household": parse_networks(body.household)})
    _put_answer(response, created)
    return UserOut.of(user)


@router.put(
    "/videos/{videoId}",
    summary="Create or update a video by id",
    description=PUT_DOC.format(noun="video") + " A new video needs `title` and `url`.",
    responses={201: {"model": AdminVideoOut, "description": "Created."}, **ERRORS},
)
async def put_video(
    video_id: VideoId, body: VideoPut, response: Response, catalog: CatalogDep, _admin: Admin
) -> AdminVideoOut:
    """201 created, or 200 updated, with the video."""
    _put_answer(response, await catalog.put(VIDEOS, video_id, body.model_dump(exclude_unset=True)))
    if body.kinds is not None:
        return AdminVideoOut.of(await catalog.update_video(video_id, {"kinds": body.kinds}))
    return AdminVideoOut.of(await catalog.get_video(video_id))


@router.put(
    "/plans/{planId}",
    summary="Create or update a plan by id",
    description=PUT_DOC.format(noun="plan") + " A new plan needs `name` and `maxStreams`.",
    responses={201: {"model": PlanOut, "description": "Created."}, **ERRORS},
)
async def put_plan(plan_id: PlanId, body: PlanPut, response: Response, catalog: CatalogDep, _admin: Admin) -> PlanOut:
    """201 created, or 200 updated, with the plan."""
    values = body.model_dump(exclude_unset=True, by_alias=True)
    _put_answer(response, await catalog.put(PLANS, plan_id, values))
    policy = {name: value for name, value in body.changes().items() if name in ("rules", "shadow")}
    if policy:
        return PlanOut.of(await catalog.update_plan(plan_id, policy))
    return PlanOut.of(await catalog.get_plan(plan_id))


# ---- bulk import -------------------------------------------------------------------------------------------

IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-ndjson": {"schema": {"type": "string", "description": "One JSON object per line."}},
            # Items of any type: a row that is not an object is refused in `refusedRows`, as a bad object is, and
            # the other rows are stored; the whole body is refused only when it is not an array.
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {"description": "A row: an object (another value is a refused row)."},
                }
            },
            "text/csv": {
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "description": "A header row naming the fields (`id` among them), then rows.",
                }
            },
        },
    }
}
IMPORT_ERRORS = problem_responses(
    {
        401: "No valid token or key.",
        403: "Not an admin.",
        413: f"More than {MAX_ROWS:,} rows, or a body over PLAYGATE_MAX_IMPORT_BYTES.",
        422: "The body is empty, or not NDJSON, a JSON array or CSV.",
    }
)
MAX_REFUSALS_LISTED = 1000


def _import_route(kind: KindName, fields: str) -> None:
    async def import_rows(request: Request, gate: GateDep, _admin: Admin) -> ImportOut:
        body = await request.body()
        result = await gate.import_rows(kind, body, format_of(request.headers.get("content-type")))
        return ImportOut(
            created=result.created,
            updated=result.updated,
            unchanged=result.unchanged,
            refused=len(result.refused),
            refused_rows=[
                RefusalOut(row=r.row, id=r.id, field=r.field, reason=r.reason)
                for r in result.refused[:MAX_REFUSALS_LISTED]
            ],
        )

    router.add_api_route(
        f"/{kind}:import",
        import_rows,
        methods=["POST"],
        summary=f"Create or update many {kind} by id",
        description=f"Up to {MAX_ROWS:,} rows per call as NDJSON (`application/x-ndjson`), a JSON array "
        f"(`application/json`) or CSV (`text/csv`), each row {fields}. Rows are created or updated by id (absent "
        "fields keep their value); a bad row is refused with its reason and the rest stored; a re-run of the "
        "same rows changes nothing (`unchanged`).",
        openapi_extra=IMPORT_BODY,
        responses=IMPORT_ERRORS,
        operation_id=f"import_{kind}",
    )


_import_route(
    "users",
    "`{id, name?, limit?, plan?, disabled?}`; a user it disables has its streams ended at once (`stream_ended`, "
    "`user_disabled`) and, disabled or enabled again, its tokens ended, as by `PATCH /v1/users/{userId}`",
)
_import_route("videos", "`{id, title?, url?}` (a new video needs both)")
_import_route(
    "plans",
    "`{id, name?, maxStreams?, onLimit?, kinds?, maxPerTitle?, maxDevices?, deviceWindowDays?, maxAwayStreams?, "
    "onOutage?, shadow?}` (a new plan needs name and maxStreams; a rule set to null is lifted, `shadow: null` ends "
    "shadow mode; in CSV `kinds` and `shadow` are JSON objects in their cells)",
)


# ---- API keys ----------------------------------------------------------------------------------------------

KeyId = Annotated[Id, Path(alias="keyId")]


@router.get("/keys", summary="List API keys", tags=["keys"], responses=ERRORS)
async def list_keys(catalog: CatalogDep, _admin: Admin) -> list[KeyOut]:
    """Every key, revoked ones too (never the keys themselves)."""
    return [KeyOut.of(k) for k in await catalog.keys.all()]


@router.post(
    "/keys",
    status_code=201,
    summary="Create an API key",
    description="201 with the key in `key`: shown this once, stored only as a hash. Scopes: `admin` (all an "
    "admin may), `plays` (play, list and stop streams for any user: `userId`), `read` (read users, plans, "
    "videos, streams).",
    tags=["keys"],
    responses=ERRORS,
)
async def create_key(body: KeyIn, catalog: CatalogDep, _admin: Admin) -> KeyCreated:
    """201 with the new key."""
    key, plain = await catalog.keys.create(name=body.name, scope=body.scope)
    return KeyCreated(**KeyOut.of(key).model_dump(), key=plain)


@router.delete(
    "/keys/{keyId}",
    status_code=204,
    response_class=Response,
    summary="Revoke an API key (at once, in every process)",
    tags=["keys"],
    responses=ERRORS,
)
async def revoke_key(key_id: KeyId, catalog: CatalogDep, _admin: Admin) -> Response:
    """204; the key is refused from now on. Revoking twice is fine."""
    await catalog.keys.revoke(key_id)
    return Response(status_code=204)
