"""Webhook signing against the Standard Webhooks test vector, the backoff schedule, the payload shapes, and the
settings that refuse a bad secret or URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from playgate.audit import DECISION, STREAM_END, AuditEvent
from playgate.config import load_settings, security_problems
from playgate.errors import ConfigError
from playgate.webhooks import PLAY_DENIED, STREAM_ENDED, STREAM_STARTED, backoff_s, message_of, sign, signers

# The specification's published test vector (standard-webhooks spec, "Signature scheme").
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP_S = 1614265330
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_is_the_specifications_test_vector() -> None:
    assert sign(signers([VECTOR_SECRET]), VECTOR_ID, VECTOR_TIMESTAMP_S, VECTOR_BODY) == VECTOR_SIGNATURE


def test_the_signature_is_hmac_sha256_of_id_timestamp_body_with_the_decoded_key() -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    body = '{"type":"stream.started"}'
    mac = hmac.new(bytes(range(32)), f"msg_1.1700000000.{body}".encode(), hashlib.sha256).digest()
    assert sign(signers([secret]), "msg_1", 1700000000, body) == "v1," + base64.b64encode(mac).decode()


def test_with_two_secrets_the_header_carries_a_signature_for_each_in_order() -> None:
    other = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    one = sign(signers([other]), VECTOR_ID, VECTOR_TIMESTAMP_S, VECTOR_BODY)
    both = sign(signers([VECTOR_SECRET, other]), VECTOR_ID, VECTOR_TIMESTAMP_S, VECTOR_BODY)
    assert both == f"{VECTOR_SIGNATURE} {one}"


@pytest.mark.parametrize(
    ("attempts", "expected_s"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0), (7, 300.0), (50, 300.0), (0, 5.0)],
)
def test_backoff_doubles_from_the_first_wait_up_to_the_cap(attempts: int, expected_s: float) -> None:
    assert backoff_s(attempts, first_s=5.0, max_s=300.0) == expected_s


def _decision(outcome: str, **fields: object) -> AuditEvent:
    values: dict[str, object] = {
        "at": 1764554400.25,
        "kind": DECISION,
        "user_id": "u1",
        "video_id": "v1",
        "device_id": "d1",
        "outcome": outcome,
        "request_id": "r1",
        "policy": "deny",
        "active": 1,
        "limit": 2,
        **fields,
    }
    return AuditEvent(**values)  # type: ignore[arg-type]


def test_an_allowed_decision_is_stream_started() -> None:
    message = message_of(_decision("allowed", stream_id="s1"))
    assert message is not None
    assert (message.msg_id, message.type, message.user_id) == ("msg_r1", STREAM_STARTED, "u1")
    assert json.loads(message.body) == {
        "type": STREAM_STARTED,
        "timestamp": "2025-12-01T02:00:00.250000Z",
        "data": {
            "userId": "u1",
            "videoId": "v1",
            "deviceId": "d1",
            "streamId": "s1",
            "requestId": "r1",
            "active": 1,
            "limit": 2,
            "policy": "deny",
        },
    }


def test_a_denied_decision_is_play_denied_with_its_reason() -> None:
    message = message_of(_decision("denied", reason="limit_reached"))
    assert message is not None
    assert (message.msg_id, message.type) == ("msg_r1", PLAY_DENIED)
    data = json.loads(message.body)["data"]
    assert data["reason"] == "limit_reached"
    assert "streamId" not in data


def test_a_stream_end_is_stream_ended_keyed_by_the_stream() -> None:
    event = AuditEvent(1.0, STREAM_END, "u1", "v1", "d1", "expired", stream_id="s9", reason="expired")
    message = message_of(event)
    assert message is not None
    assert (message.msg_id, message.type) == ("msg_end_s9", STREAM_ENDED)
    assert json.loads(message.body)["data"] == {
        "userId": "u1",
        "videoId": "v1",
        "deviceId": "d1",
        "streamId": "s9",
        "reason": "expired",
    }


@pytest.mark.parametrize("secret", ["abc", "whsec_!!!", "whsec_YWJj", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
def test_a_secret_that_is_not_whsec_base64_of_24_bytes_is_refused_without_echoing_it(secret: str) -> None:
    problems = security_problems(load_settings({"PLAYGATE_WEBHOOK_SECRET": secret}))
    assert len(problems) == 1
    assert problems[0].startswith("PLAYGATE_WEBHOOK_SECRET:")
    assert secret not in problems[0]


def test_urls_need_a_secret_and_must_be_http() -> None:
    problems = security_problems(load_settings({"PLAYGATE_WEBHOOK_URLS": "http://127.0.0.1:9/hooks"}))
    assert [p.split(":")[0] for p in problems] == ["PLAYGATE_WEBHOOK_SECRET"]
    with pytest.raises(ConfigError, match="PLAYGATE_WEBHOOK_URLS"):
        load_settings({"PLAYGATE_WEBHOOK_URLS": "http://127.0.0.1:9/a, file:///etc/passwd"})
    settings = load_settings({"PLAYGATE_WEBHOOK_URLS": " http://127.0.0.1:9/a ,https://h.example/b,"})
    assert settings.webhook_url_list == ["http://127.0.0.1:9/a", "https://h.example/b"]
