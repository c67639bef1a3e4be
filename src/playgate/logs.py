"""Logging: one JSON object per line (or console lines for people), a request id per HTTP call, secrets redacted.

Every record goes through the standard library: `log.info("decision", extra={"user_id": ...})` puts the extra
fields into the JSON object. The HTTP request id (the caller's `X-Request-Id`, else a new one) is kept in a
context variable and added to every line logged while that request is handled, and echoed in the response.
Whatever the format, the finished line passes through `Redactor`, so a token, password or secret that reaches a
log call (from PlayGate or a library) is written as `[redacted]`.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import orjson
from starlette.types import Scope

from playgate.config import LogFormat, Settings

REDACTED = "[redacted]"
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_LEN = 128

CHATTY_LOGGERS = {"socketio": logging.WARNING, "engineio": logging.WARNING, "aiosqlite": logging.INFO}

request_id_var: ContextVar[str | None] = ContextVar("playgate_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the line
# (uvicorn's `color_message` is the same text with terminal colours: left out).
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


# Each pattern with a cheap substring test that must hit before the regular expression runs: most lines (every
# decision line) contain none of them, and the regular expressions would cost more than the rest of the line.
_PATTERNS = (
    # A JWT (header.payload.signature, base64url): access tokens, wherever they appear.
    (("eyj",), re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]+")),
    # `Bearer <token>` in a header dump.
    (("bearer",), re.compile(r"(?i)(?<=bearer )[\w.~+/=-]{8,}")),
    # key=value and "key": "value" pairs whose key says secret.
    (
        ("passw", "secret", "token", "authorization"),
        re.compile(
            r"(?i)(?<![\w-])((?:password|passwd|secret|jwt_secret|token|access_?token|authorization)"
            r"[\"']?\s*[:=]\s*[\"']?)(?!\[redacted\])[^\"'&,\s}]+"
        ),
    ),
    # A password inside a URL: scheme://user:password@host.
    (("://",), re.compile(r"(?<=://)([^:/@\s]*:)[^@/\s]+(?=@)")),
)


class Redactor:
    """Replaces known secret values and anything shaped like a token or password in a finished log line."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so that a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        """The line with every secret replaced by [redacted]."""
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        folded = line.lower()
        for hints, pattern in _PATTERNS:
            if any(hint in folded for hint in hints):
                line = pattern.sub(_keep_key, line)
        return line


def _keep_key(match: re.Match[str]) -> str:
    """The replacement of a secret: the key part (when the pattern has one) stays, the value goes."""
    return (match.group(1) if match.groups() else "") + REDACTED


class _Second:
    """The last second a line was stamped in, and its text: one strftime a second, not one a line (every decision
    writes a line). One tuple, replaced whole, so that a line logged from another thread never pairs them wrong."""

    last: tuple[int, str] = (-1, "")


def _timestamp(record: logging.LogRecord) -> str:
    """`2026-12-01T07:17:11.532Z`: UTC to the millisecond, rounded to the microsecond first as datetime does."""
    epoch_s, micros = divmod(round(record.created * 1_000_000), 1_000_000)
    second, text = _Second.last
    if second != epoch_s:
        text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(epoch_s))
        _Second.last = (epoch_s, text)
    return f"{text}{micros // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}
    request_id = request_id_var.get()
    if request_id is not None:
        fields.setdefault("request_id", request_id)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the `extra` fields, and exc for a traceback."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        body: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(_fields(record))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(body, default=str).decode()
        return self._redact(line)


class ConsoleFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` for a person at a terminal."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The record as a console line (a traceback follows on its own lines)."""
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line = f"{line}  {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return self._redact(line)


def _url_passwords(settings: Settings) -> list[str | None]:
    """Passwords inside the database and Redis URLs (URL-decoded and as written)."""
    found: list[str | None] = []
    for url in (settings.database_url, settings.redis_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                continue  # not a URL the settings would accept either; nothing to find in it
            found += [unquote(password), password] if password else []
    return found


def resolve_format(log_format: LogFormat, stream: IO[str]) -> LogFormat:
    """`auto` becomes console on a terminal and JSON anywhere else (containers, files, pipes)."""
    if log_format is LogFormat.auto:
        return LogFormat.console if stream.isatty() else LogFormat.json
    return log_format


def configure_logging(settings: Settings, *, secrets: Iterable[str | None] = (), stream: IO[str] | None = None) -> None:
    """Send every logger (PlayGate's, uvicorn's, the libraries') to one handler in the configured format."""
    stream = stream or sys.stderr
    redactor = Redactor(
        [
            settings.jwt_secret,
            *settings.jwt_accepted_secret_list,
            settings.edge_secret,
            *settings.webhook_secret_list,
            settings.admin_password,
            *_url_passwords(settings),
            *secrets,
        ]
    )
    handler = logging.StreamHandler(stream)
    if resolve_format(settings.log_format, stream) is LogFormat.json:
        handler.setFormatter(JsonFormatter(redactor))
    else:
        handler.setFormatter(ConsoleFormatter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # No line shows where a call was made from, nor its thread or process: skip finding them for every record
    # (the logging HOWTO's "Optimization"). With the timestamp made once a second, a decision's line went from
    # about 41 to 25 µs of CPU (tests/ops/test_logs.py keeps both honest).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # uvicorn configures loggers of its own; route them through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Libraries that log every packet or statement: the Socket.IO and Engine.IO servers (payloads included)
    # at info, aiosqlite at debug. Keep them quieter than PlayGate's own lines.
    for name, floor in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))


def incoming_request_id(scope: Scope) -> str | None:
    """The caller's X-Request-Id when it is a sane one (printable, no spaces, bounded), else None."""
    for key, value in scope.get("headers", ()):
        if key == REQUEST_ID_HEADER.encode():
            text = sane_request_id(bytes(value).decode("latin-1"))
            if text is not None:
                return text
    return None


def sane_request_id(value: str) -> str | None:
    """An X-Request-Id header's value when it is a sane one (printable, no spaces, bounded), else None."""
    text = value.strip()
    return text if 0 < len(text) <= MAX_REQUEST_ID_LEN and re.fullmatch(r"[\w.:@/+=-]+", text) else None
