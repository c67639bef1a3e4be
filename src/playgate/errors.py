"""The one exception tree of PlayGate; the API turns each kind into problem+json once, at the boundary."""

from __future__ import annotations


class PlayGateError(Exception):
    """Root of every error PlayGate raises on purpose."""

    status = 500
    title = "Internal error"
    type = "about:blank"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the problem document (`Retry-After`, say)."""
        return {}


class ConfigError(PlayGateError):
    """A setting is missing or wrong; start-up stops with this one line."""

    title = "Configuration error"


class BadRequest(PlayGateError):
    """The client's input cannot be used."""

    status = 400
    title = "Bad request"


class Invalid(PlayGateError):
    """A field of the client's input is well-formed but not acceptable (`field` names it)."""

    status = 422
    title = "Unprocessable content"

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(detail, field=field)


class TooLarge(PlayGateError):
    """The client's input is larger than PlayGate takes in one call."""

    status = 413
    title = "Content too large"


class Unauthorized(PlayGateError):
    """No valid credentials."""

    status = 401
    title = "Unauthorized"


class Forbidden(PlayGateError):
    """Valid credentials, but not for this."""

    status = 403
    title = "Forbidden"


class NotFound(PlayGateError):
    """The named thing does not exist (or is not the caller's to know of)."""

    status = 404
    title = "Not found"


class Conflict(PlayGateError):
    """The change clashes with what is stored (a taken name, a plan still in use)."""

    status = 409
    title = "Conflict"


class Unavailable(PlayGateError):
    """A backend (database, Redis) does not answer; try again later."""

    status = 503
    title = "Service unavailable"


class TooManyRequests(PlayGateError):
    """The caller is over a rate; `retry_after_s` says when to try again (the Retry-After header)."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, retryAfter=retry_after_s)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        """When to try again."""
        return {"Retry-After": str(self.retry_after_s)}
