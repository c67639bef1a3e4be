"""The seed's routes, with its paths and payload shapes, so that its clients keep working."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Response

from playgate.api.deps import Admin, Caller, CatalogDep, ClientAddress, GateDep
from playgate.api.errors import RATE_LIMITED, problem_responses
from playgate.api.schemas import SeedPlayData, SeedPlayOut, SeedPlayStatus, StreamOut, UserOut, VideoOut
from playgate.errors import Forbidden, Invalid
from playgate.service import PlayGate, Principal
from playgate.wire import Id, Name

router = APIRouter(tags=["seed"])

UserParam = Annotated[Id | None, Query(description="The user acting; must be the caller unless an admin.")]
UserIdPath = Annotated[Id, Path(description="A user id.")]
VideoIdPath = Annotated[Id, Path(description="A video id.")]
ERRORS = problem_responses(
    {
        401: "No valid token.",
        403: "Not yours.",
        404: "Unknown user or video.",
    }
)


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def seed_get(path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Register a seed route at `path` and, answered the same, at `path/`: the original's clients call some
    with a trailing slash (`/videos/1/request/?user=1`), and a redirect would cost each call a round trip."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(path, endpoint, methods=["GET"], **options)
        router.add_api_route(f"{path}/", endpoint, methods=["GET"], include_in_schema=False, **options)
        return endpoint

    return register


def _acting(gate: PlayGate, caller: Principal, user: str | None) -> str:
    if user is None and caller.user is None:
        raise Invalid("Name the user: ?user=<userId>.", field="user")
    return gate.acting_user(caller, user)


@seed_get("/users", summary="All users, or the one with ?name= (admin)", responses=ERRORS)
async def list_users(
    catalog: CatalogDep, _admin: Admin, name: Annotated[Name | None, Query(description="A user name.")] = None
) -> list[UserOut] | UserOut:
    """`[User]`, or with `?name=` that `User` (404 if no such name)."""
    if name is not None:
        return UserOut.of(await catalog.find_user(name))
    return [UserOut.of(u) for u in await catalog.list_users()]


@seed_get("/users/{userId}", summary="One user (that user, or admin)", responses=ERRORS)
async def get_user(catalog: CatalogDep, caller: Caller, user_id: Annotated[Id, Path(alias="userId")]) -> UserOut:
    """A user: yourself, or anyone for an admin."""
    if not caller.may_see(user_id):
        raise Forbidden("You may only see yourself.")
    return UserOut.of(await catalog.get_user(user_id))


@seed_get("/users/{userId}/streams", summary="A user's active streams (that user, or admin)", responses=ERRORS)
async def user_streams(gate: GateDep, caller: Caller, user_id: Annotated[Id, Path(alias="userId")]) -> list[StreamOut]:
    """The user's active streams, oldest first."""
    if not caller.may_see(user_id):
        raise Forbidden("You may only see your own streams.")
    return [StreamOut.of(s) for s in await gate.user_streams(user_id)]


@seed_get("/videos", summary="All videos (anyone)")
async def list_videos(catalog: CatalogDep) -> list[VideoOut]:
    """Every video."""
    return [VideoOut.of(v) for v in await catalog.list_videos()]


@seed_get(
    "/videos/stop",
    status_code=204,
    response_class=Response,
    summary="Stop all of the user's streams (log-out)",
    responses=ERRORS,
)
async def stop_all(gate: GateDep, caller: Caller, user: UserParam = None) -> Response:
    """204, whether or not anything was playing."""
    await gate.stop_streams(_acting(gate, caller, user))
    return Response(status_code=204)


@seed_get("/videos/{videoId}", summary="One video (anyone)", responses=ERRORS)
async def get_video(catalog: CatalogDep, video_id: Annotated[Id, Path(alias="videoId")]) -> VideoOut:
    """A video, 404 if unknown."""
    return VideoOut.of(await catalog.get_video(video_id))


@seed_get(
    "/videos/{videoId}/request",
    status_code=202,
    summary="Ask to stream a video; the decision comes over Socket.IO as `message`",
    responses={**ERRORS, **RATE_LIMITED},
)
async def request_video(
    gate: GateDep,
    caller: Caller,
    client_address: ClientAddress,
    video_id: Annotated[Id, Path(alias="videoId")],
    user: UserParam = None,
) -> SeedPlayOut:
    """202 with the request id; 404 for an unknown video or user, before anything is queued."""
    ticket = await gate.request_play(_acting(gate, caller, user), video_id, client_address=client_address)
    request = ticket.request
    return SeedPlayOut(
        data=SeedPlayStatus(data=SeedPlayData(video_id=request.video_id, user_id=request.user_id)),
        request_id=request.request_id,
    )


@seed_get(
    "/videos/{videoId}/stop",
    status_code=204,
    response_class=Response,
    summary="Stop the user's streams of this video",
    responses=ERRORS,
)
async def stop_video(
    gate: GateDep, caller: Caller, video_id: Annotated[Id, Path(alias="videoId")], user: UserParam = None
) -> Response:
    """204, also when nothing was playing."""
    await gate.stop_streams(_acting(gate, caller, user), video_id)
    return Response(status_code=204)
