"""Dependencies of the routes: the application service, the catalogue and the caller (`GateDep`, `CatalogDep`,
`Caller`, `Admin`, `Reader`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from playgate.catalog.service import Catalog
from playgate.errors import Forbidden, Unauthorized
from playgate.media import ContentGate
from playgate.service import PlayGate, Principal

_bearer = HTTPBearer(
    auto_error=False,
    description="An access token from POST /auth/token, the platform's own token (when PLAYGATE_JWKS_URL or "
    "PLAYGATE_OIDC_ISSUER is set), or an API key (`pgk_...`).",
)
_api_key = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key (`pgk_...`, from `playgate keys create` or POST /v1/keys), for a platform's backend.",
)


# Plain-`def` dependencies run in FastAPI's threadpool: these are async so that each request skips that hop.
async def get_gate(request: Request) -> PlayGate:
    """The PlayGate service of this app."""
    gate: PlayGate = request.app.state.gate
    return gate


GateDep = Annotated[PlayGate, Depends(get_gate)]


async def get_catalog(request: Request) -> Catalog:
    """The catalogue of this app, for the routes that only read or edit users, videos and plans."""
    catalog: Catalog = request.app.state.catalog
    return catalog


CatalogDep = Annotated[Catalog, Depends(get_catalog)]


async def get_content(request: Request) -> ContentGate:
    """The content gate of this app: playback tokens, leases renewed by media requests, the media files."""
    content: ContentGate = request.app.state.content
    return content


ContentDep = Annotated[ContentGate, Depends(get_content)]


async def get_client_address(request: Request) -> str | None:
    """The client's address: the peer, or the client a trusted proxy names (PLAYGATE_TRUSTED_PROXIES)."""
    return request.client.host if request.client else None


ClientAddress = Annotated[str | None, Depends(get_client_address)]


def credential(authorization: str | None, api_key: str | None) -> str | None:
    """A request's one credential: `Authorization: Bearer <token or key>`, or `X-API-Key: <key>`. Unauthorized for
    an Authorization header of another form, or for both headers with different credentials: what a request
    presents is never passed over for something else it carries (an empty header is as good as none)."""
    api_key = api_key or None
    if authorization is None or not authorization.strip():
        return api_key
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization takes `Bearer <token>`; an API key may go there or in X-API-Key.")
    if api_key is not None and api_key != token:
        raise Unauthorized("Send one credential: Authorization and X-API-Key name different ones.")
    return token


async def get_caller(
    request: Request,
    _bearer_shown: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """The authenticated caller: a bearer token or API key, or X-API-Key (401 without a valid one; with auth
    disabled, `?user=` is believed). The bearer scheme is there for the OpenAPI document: it reads a malformed
    Authorization header as none, so credential reads the header itself."""
    token = credential(request.headers.get("authorization"), api_key)
    # The service straight from the app, not through GateDep: each dependency costs every request a resolution.
    gate: PlayGate = request.app.state.gate
    return await gate.principal(token, request.query_params.get("user"))


Caller = Annotated[Principal, Depends(get_caller)]


async def get_admin(caller: Caller) -> Principal:
    """The caller, who must be an admin (403 otherwise)."""
    if not caller.admin:
        raise Forbidden("This needs an admin.")
    return caller


Admin = Annotated[Principal, Depends(get_admin)]


async def get_reader(caller: Caller) -> Principal:
    """The caller, who must be an admin or hold a `read` key (403 otherwise)."""
    if not caller.reads_all:
        raise Forbidden("This needs an admin, or an API key with scope read.")
    return caller


Reader = Annotated[Principal, Depends(get_reader)]
