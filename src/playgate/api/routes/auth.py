"""POST /auth/token: credentials in, access token out (JSON, or the OAuth2 password form)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from playgate.api.deps import GateDep
from playgate.api.errors import problem_responses
from playgate.api.schemas import TokenIn, TokenOut, UserOut

router = APIRouter(tags=["auth"])

_TOKEN_IN = TokenIn.model_json_schema()
# The OAuth2 password form (RFC 6749 §4.3.2) as it is read: `username` and `password`; its other fields
# (`grant_type`, `scope`, client credentials) and any unknown one are ignored, as RFC 6749 §3.2 has an authorization
# server ignore unrecognized parameters. The JSON body takes the two fields alone.
_TOKEN_FORM = {
    **_TOKEN_IN,
    "additionalProperties": True,
    "description": "The OAuth2 password form: `username` and `password`; other fields (`grant_type`, `scope`, "
    "client credentials, unknown ones) are ignored (RFC 6749 §3.2).",
}
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _TOKEN_IN},
            **{form: {"schema": _TOKEN_FORM} for form in _FORMS},
        },
    }
}


async def _credentials(request: Request) -> TokenIn:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type in _FORMS:
            form = await request.form()
            values = {k: v for k, v in form.items() if k in ("username", "password") and isinstance(v, str)}
            return TokenIn.model_validate(values)
        return TokenIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"not valid JSON or form data ({exc})", "type": "body_parse"}]
        ) from None


@router.post(
    "/auth/token",
    response_model=TokenOut,
    summary="Log in: a bearer token for username and password",
    description="JSON `{username, password}` (nothing else), or the OAuth2 password form (urlencoded or multipart; "
    "its other fields are ignored). Wrong credentials: 401; a disabled account (right password): 403 saying so.",
    openapi_extra=_BODY,
    responses=problem_responses(
        {
            401: "Wrong username or password.",
            403: "The password is right but the account is disabled (said so, so that the user knows why).",
            422: "A field is missing or wrong.",
            429: "Too many failed logins for this user name or from this address; see Retry-After.",
        }
    ),
)
async def token(request: Request, response: Response, gate: GateDep) -> TokenOut:
    """Exchange credentials for an access token; 429 after too many failed logins for the name or address."""
    credentials = await _credentials(request)
    address = request.client.host if request.client else "unknown"
    login = await gate.login(credentials.username, credentials.password, address)
    # RFC 6749 §5.1: a token answer must not be stored by any cache.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return TokenOut(access_token=login.access_token, expires_in=login.expires_in_s, user=UserOut.of(login.user))
