"""Settings: read from an injected environment; a bad value is one line naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from playgate.config import AuthMode, jwt_secret, load_settings
from playgate.connections import check_redis_url
from playgate.domain import Policy
from playgate.errors import ConfigError


def test_defaults() -> None:
    settings = load_settings({})
    assert (settings.host, settings.port, settings.stream_ttl_s, settings.default_limit) == ("127.0.0.1", 8080, 90, 3)
    assert settings.auth is AuthMode.enabled
    assert settings.policy is Policy.deny
    assert settings.demo is True
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_database_url.endswith("data/playgate.sqlite3")


def test_values_from_the_environment() -> None:
    settings = load_settings(
        {
            "PLAYGATE_PORT": "9000",
            "PLAYGATE_STREAM_TTL": "30",
            "PLAYGATE_DEMO": "false",
            "PLAYGATE_POLICY": "evict_oldest",
            "PLAYGATE_AUTH": "disabled",
            "PLAYGATE_DEFAULT_LIMIT": "5",
            "UNRELATED": "x",
        }
    )
    assert (settings.port, settings.stream_ttl_s, settings.demo, settings.default_limit) == (9000, 30, False, 5)
    assert settings.policy is Policy.evict_oldest
    assert settings.auth is AuthMode.disabled


def test_plain_port_is_honoured_and_playgate_port_wins() -> None:
    assert load_settings({"PORT": "7000"}).port == 7000
    assert load_settings({"PORT": "7000", "PLAYGATE_PORT": "7001"}).port == 7001


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"PLAYGATE_PORT": "eighty"}, "PLAYGATE_PORT"),
        ({"PORT": "70000"}, "PLAYGATE_PORT"),
        ({"PLAYGATE_STREAM_TTL": "-1"}, "PLAYGATE_STREAM_TTL"),
        ({"PLAYGATE_AUTH": "maybe"}, "PLAYGATE_AUTH"),
        ({"PLAYGATE_DEMO": "perhaps"}, "PLAYGATE_DEMO"),
        ({"PLAYGATE_DEFAULT_LIMIT": "-3"}, "PLAYGATE_DEFAULT_LIMIT"),
        ({"PLAYGATE_LOG_LEVEL": "loud"}, "PLAYGATE_LOG_LEVEL"),
        # a typo would never match a peer: every client behind the proxy would count as its one address
        ({"PLAYGATE_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.0/33"}, "PLAYGATE_TRUSTED_PROXIES"),
        ({"PLAYGATE_TRUSTED_PROXIES": "ingress.local"}, "PLAYGATE_TRUSTED_PROXIES"),
        # past their bounds, a duration or a size failed at run time only (an answer's time, a Redis argument)
        ({"PLAYGATE_STREAM_TTL": "inf"}, "PLAYGATE_STREAM_TTL"),
        ({"PLAYGATE_DECISION_TTL": "1e23"}, "PLAYGATE_DECISION_TTL"),
        ({"PLAYGATE_QUEUE_MAXLEN": "100000000000000000000000"}, "PLAYGATE_QUEUE_MAXLEN"),
        ({"PLAYGATE_WEBHOOK_POLL": "inf"}, "PLAYGATE_WEBHOOK_POLL"),
    ],
)
def test_a_bad_value_names_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message


def test_jwt_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings({"PLAYGATE_DATA_DIR": str(tmp_path)})
    first = jwt_secret(settings)
    assert len(first) >= 32
    assert jwt_secret(settings) == first
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0


def test_a_short_jwt_secret_is_refused(tmp_path: Path) -> None:
    settings = load_settings({"PLAYGATE_DATA_DIR": str(tmp_path), "PLAYGATE_JWT_SECRET": "short"})
    with pytest.raises(ConfigError, match=r"^PLAYGATE_JWT_SECRET:"):
        jwt_secret(settings)


def test_secrets_may_come_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Docker's and Kubernetes' secrets mounted as files: PLAYGATE_<SECRET>_FILE names the file, its final line break
    # is not part of the secret; from a mapping and from the process environment alike.
    secret = tmp_path / "jwt"
    secret.write_text("a-signing-key-kept-in-a-mounted-file-0123456789\n")
    database = tmp_path / "db"
    database.write_text("postgresql://playgate:p%40ss@db.internal/playgate")
    env = {"PLAYGATE_JWT_SECRET_FILE": str(secret), "PLAYGATE_DATABASE_URL_FILE": str(database)}
    settings = load_settings(env)
    assert settings.jwt_secret == "a-signing-key-kept-in-a-mounted-file-0123456789"
    assert settings.database_url == "postgresql://playgate:p%40ss@db.internal/playgate"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings().jwt_secret == settings.jwt_secret


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PLAYGATE_ADMIN_PASSWORD_FILE": "/nonexistent/admin"}, "PLAYGATE_ADMIN_PASSWORD_FILE: cannot read"),
        (
            {"PLAYGATE_WEBHOOK_SECRET_FILE": "/etc/hostname", "PLAYGATE_WEBHOOK_SECRET": "whsec_x"},
            "PLAYGATE_WEBHOOK_SECRET_FILE: PLAYGATE_WEBHOOK_SECRET is set too",
        ),
    ],
)
def test_a_secret_file_that_cannot_be_used_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(env)


def test_an_empty_secret_file_and_an_empty_redis_url(tmp_path: Path) -> None:
    """An empty file named for a secret is refused (it was read as no secret at all: a key generated instead); an
    empty PLAYGATE_REDIS_URL (a template's blank) is no Redis, as `playgate doctor` reads it."""
    empty = tmp_path / "jwt"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=f"PLAYGATE_JWT_SECRET_FILE: {empty} is empty"):
        load_settings({"PLAYGATE_JWT_SECRET_FILE": str(empty)})
    assert load_settings({"PLAYGATE_REDIS_URL": ""}).redis_url is None
    assert load_settings({"PLAYGATE_TRUSTED_PROXIES": "*, 10.0.0.0/8, 192.0.2.7, ::1"}).forwarded_allow_ips


def test_a_redis_url_whose_port_is_not_a_number_is_named_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        check_redis_url("redis://:s3cret@127.0.0.1:sixty/0")
    assert str(caught.value) == "PLAYGATE_REDIS_URL: the port is not a number: 127.0.0.1:sixty/0"
