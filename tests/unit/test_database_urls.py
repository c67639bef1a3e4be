"""PLAYGATE_DATABASE_URL's forms: the schemes providers hand out run on PlayGate's drivers, libpq's query goes to
asyncpg."""

from __future__ import annotations

import ssl

import pytest
from sqlalchemy.engine import make_url

from playgate.catalog.db import check_url, engine_url
from playgate.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgres://u:secret@db.example:6432/app", "postgresql+asyncpg"),
        ("postgresql://u@db.example/app", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@db.example/app", "postgresql+asyncpg"),
        ("sqlite:////var/lib/playgate/playgate.sqlite3", "sqlite+aiosqlite"),
    ],
)
def test_the_schemes_providers_hand_out_run_on_playgates_drivers(url: str, driver: str) -> None:
    assert check_url(url) == driver
    target, _ = engine_url(url)
    assert target.drivername == driver
    assert target.database == make_url(url).database


def test_libpqs_query_goes_to_asyncpg_and_the_rest_stays_on_the_url() -> None:
    target, connect_args = engine_url(
        "postgres://u:secret@db.example:6432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=4"
        "&application_name=playgate-api"
    )
    assert (target.host, target.port, target.username, target.password) == ("db.example", 6432, "u", "secret")
    assert dict(target.query) == {}
    assert connect_args == {
        "timeout": 4.0,
        "dsn": "postgresql://?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=playgate-api",
    }


def test_the_statement_caches_go_to_asyncpg_and_sqlalchemy() -> None:
    # Behind a pooler in transaction mode (PgBouncer), both are turned off from the URL.
    target, connect_args = engine_url(
        "postgresql://u@pooler.example:6432/app?statement_cache_size=0&prepared_statement_cache_size=0&sslmode=require"
    )
    assert dict(target.query) == {"prepared_statement_cache_size": "0"}
    assert connect_args == {"statement_cache_size": 0, "dsn": "postgresql://?sslmode=require"}


def test_asyncpgs_name_for_the_mode_is_libpqs_too() -> None:
    _, connect_args = engine_url("postgresql+asyncpg://u@db.example/app?ssl=require")
    assert connect_args == {"dsn": "postgresql://?sslmode=require"}


def test_a_url_without_a_query_has_no_connect_arguments() -> None:
    assert engine_url("postgresql://u@db.example/app")[1] == {}


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://u@db.example/app", "driver 'mysql' is not supported"),
        ("postgresql://u@db.example/app?sslmode=on", "sslmode 'on' is not one of disable, allow, prefer"),
        ("postgresql://u@db.example/app?sslcert=/nonexistent.pem", "sslcert names /nonexistent.pem"),
        ("postgresql://u@db.example/app?connect_timeout=0", "connect_timeout '0' is not a whole number"),
        ("postgresql://u@db.example/app?statement_cache_size=none", "statement_cache_size 'none' is not a whole"),
    ],
)
def test_a_url_playgate_cannot_use_is_refused_naming_the_setting(url: str, named: str) -> None:
    with pytest.raises(ConfigError, match=r"^PLAYGATE_DATABASE_URL: ") as raised:
        check_url(url)
    assert named in raised.value.detail


@pytest.mark.parametrize(
    ("mode", "checks_host"), [("", True), ("&sslmode=verify-full", True), ("&sslmode=verify-ca", False)]
)
def test_the_systems_roots_are_a_context_of_pythons_default_roots(mode: str, checks_host: bool) -> None:
    _, connect_args = engine_url(f"postgresql://u@db.example/app?sslrootcert=system{mode}&application_name=pg")
    context = connect_args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is checks_host
    assert connect_args["dsn"] == "postgresql://?application_name=pg"


def test_the_systems_roots_with_a_mode_that_checks_nothing_are_refused() -> None:
    with pytest.raises(ConfigError, match="sslrootcert=system needs sslmode verify-full or verify-ca, not require"):
        check_url("postgresql://u@db.example/app?sslrootcert=system&sslmode=require")
