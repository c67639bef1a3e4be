"""Logs: one JSON object per line with the decision's ids, console lines on request, and no secret ever written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from playgate.config import LogFormat, load_settings
from playgate.logs import REDACTED, ConsoleFormatter, JsonFormatter, Redactor, configure_logging, request_id_var
from tests.support.clients import admin_client, api_client, connect_socket, new_user, token_for
from tests.support.servers import ADMIN_PASSWORD, JWT_SECRET, start_playgate

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (f"GET /socket.io/?token={TOKEN}&EIO=4", TOKEN),
        ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
        ('{"username": "u", "password": "hunter2-hunter2"}', "hunter2-hunter2"),
        ("password=hunter2-hunter2&username=u", "hunter2-hunter2"),
        ("connecting to postgresql+asyncpg://playgate:pg-pass-123@db:5432/playgate", "pg-pass-123"),
        ("redis://:redis-pass-456@redis:6379/0", "redis-pass-456"),
        ("the configured secret is configured-secret-value", "configured-secret-value"),
    ],
)
def test_the_redactor_removes_tokens_passwords_and_known_secrets(line: str, secret: str) -> None:
    redacted = Redactor(["configured-secret-value"])(line)
    assert secret not in redacted
    assert REDACTED in redacted


def test_the_redactor_leaves_ordinary_lines_alone() -> None:
    line = "decision request_id=abc user_id=7 stream_id=s1 playback_token_ttl_s=900 tokens=3"
    assert Redactor()(line) == line


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("playgate.test", logging.INFO, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_extra_fields_and_the_request_id() -> None:
    token = request_id_var.set("req-42")
    try:
        line = JsonFormatter(Redactor()).format(_record("decision", user_id="7", stream_id=None, decision="denied"))
    finally:
        request_id_var.reset(token)
    assert "\n" not in line
    body = json.loads(line)
    assert body["msg"] == "decision"
    assert body["level"] == "info"
    assert body["logger"] == "playgate.test"
    assert body["ts"].endswith("Z")
    assert (body["user_id"], body["stream_id"], body["decision"], body["request_id"]) == ("7", None, "denied", "req-42")


def test_console_lines_are_for_people() -> None:
    line = ConsoleFormatter(Redactor()).format(_record("decision", user_id="7"))
    assert " INFO " in line
    assert line.endswith("playgate.test: decision  user_id=7")


@pytest.mark.parametrize(
    "created",
    # a second's first and last millisecond, a float just under a millisecond, and the next second's
    [1796107928.0, 1796107928.9995, 1796107928.532, 1796107928.5319999, 1796107929.0004, 1796107928.001],
)
def test_json_lines_are_stamped_in_utc_to_the_millisecond_as_datetime_rounds(created: float) -> None:
    record = _record("decision")
    record.created = created
    moment = datetime.fromtimestamp(created, UTC)
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert json.loads(JsonFormatter(Redactor()).format(record))["ts"] == expected


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    found = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = found


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.usefixtures("root_logging")
def test_configured_logging_does_not_look_up_the_caller_thread_or_process_of_each_line() -> None:
    # No format writes them; finding them cost a decision's line most of its time.
    configure_logging(load_settings({"PLAYGATE_JWT_SECRET": JWT_SECRET}), stream=io.StringIO())
    kept = _Kept()
    logger = logging.getLogger("playgate.test.caller")
    logger.addHandler(kept)
    try:
        logger.warning("decision")
    finally:
        logger.removeHandler(kept)
    (record,) = kept.records
    assert (record.lineno, record.funcName, record.thread, record.process) == (0, "(unknown function)", None, None)


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize(
    ("log_format", "is_json"), [(LogFormat.auto, True), (LogFormat.json, True), (LogFormat.console, False)]
)
def test_the_format_is_chosen_by_setting_and_auto_means_json_off_a_terminal(
    log_format: LogFormat, is_json: bool
) -> None:
    stream = io.StringIO()  # not a terminal
    accepted = "a-key-being-rotated-out-0123456789abcdef"
    settings = load_settings(
        {
            "PLAYGATE_LOG_FORMAT": log_format.value,
            "PLAYGATE_JWT_SECRET": JWT_SECRET,
            "PLAYGATE_JWT_ACCEPTED_SECRETS": accepted,
        }
    )
    configure_logging(settings, stream=stream)
    logging.getLogger("playgate.test").warning("the secrets %s and %s must not show", JWT_SECRET, accepted)
    output = stream.getvalue()
    assert JWT_SECRET not in output
    assert accepted not in output
    assert output.startswith("{") is is_json


@pytest.mark.usefixtures("root_logging")
def test_a_urls_password_is_redacted_decoded_and_as_written() -> None:
    stream = io.StringIO()
    url = "postgresql://playgate:s3cret%40db%2Fpw@db.internal/playgate"
    configure_logging(load_settings({"PLAYGATE_DATABASE_URL": url}), stream=stream)
    logging.getLogger("playgate.test").warning("connecting with s3cret@db/pw, from %s", url)
    output = stream.getvalue()
    assert "s3cret@db/pw" not in output
    assert "s3cret%40db%2Fpw" not in output


async def test_a_real_run_logs_json_decision_lines_and_no_token_or_password(tmp_path: Path) -> None:
    server = start_playgate(tmp_path, PLAYGATE_LOG_LEVEL="debug", PLAYGATE_LOG_FORMAT="json")
    try:
        admin = await admin_client(server.base_url)
        user = await new_user(server.base_url, admin, limit=1)
        await admin.aclose()
        socket = await connect_socket(server.base_url, token=user.token)
        async with api_client(server.base_url, user.token) as client:
            first = await client.post("/v1/plays", json={"videoId": "1"}, headers={"X-Request-Id": "trace-123"})
            assert first.headers["x-request-id"] == "trace-123"
            second = await client.get(f"/videos/2/request?user={user.id}&token={user.token}")
            allowed, denied = await socket.next_message(), await socket.next_message()
            wrong = await client.post("/auth/token", data={"username": user.name, "password": user.password + "x"})
            assert wrong.status_code == 401
        await socket.close()
        again = await token_for(server.base_url, user.name, user.password)
    finally:
        server.stop()
    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    decisions = {line["request_id"]: line for line in lines if line["msg"] == "decision"}
    for message in (allowed, denied):
        line = decisions[message["requestId"]]
        assert line["user_id"] == user.id
        assert line["decision"] == message["status"]
        assert line.get("stream_id") == message.get("streamId")
    assert decisions[first.json()["requestId"]]["decision"] == "allowed"
    assert decisions[second.json()["requestId"]]["reason"] == "limit_reached"
    assert any(line.get("request_id") == "trace-123" and line["msg"] == "http request" for line in lines)
    for secret in (user.token, again, user.password, ADMIN_PASSWORD, JWT_SECRET):
        assert secret not in log
