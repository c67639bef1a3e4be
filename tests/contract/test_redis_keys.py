"""The Redis ledger's naming: stream ids that carry their user, one hash tag per user, URLs it accepts."""

from __future__ import annotations

from collections import Counter

import pytest
from redis.crc import key_slot

from playgate.bus.redis import socket_manager
from playgate.config import load_settings
from playgate.connections import (
    BUCKETS,
    KeyLayout,
    check_redis_url,
    cluster_nodes,
    cluster_tls,
    connect,
    forget_all,
    idempotency_key,
    is_cluster_url,
    sentinel_service,
    streams_key,
)
from playgate.errors import ConfigError
from playgate.ledger.redis import new_stream_id, stream_owner
from playgate.throttle import storage_url
from tests.support.redis_server import RedisServer


@pytest.mark.parametrize("user_id", ["1", "a1b2c3d4e5f6", "user-with-dashes", "ünïcode", "{braces}"])
def test_a_stream_id_names_its_user(user_id: str) -> None:
    stream_id = new_stream_id(user_id)
    assert stream_owner(stream_id) == user_id
    assert stream_id != new_stream_id(user_id)
    assert all(c.isalnum() or c == "-" for c in stream_id)  # safe in a URL path


@pytest.mark.parametrize("stream_id", ["", "-abc", "zz-abc", "nodash", "ff-", "c3-x"])
def test_ids_it_did_not_make_name_no_user_or_a_wrong_one_that_is_never_found(stream_id: str) -> None:
    owner = stream_owner(stream_id)
    assert owner is None or new_stream_id(owner).split("-")[0] == stream_id.split("-")[0]


def test_a_users_keys_share_one_hash_tag() -> None:
    assert streams_key("42") == "playgate:{42}:streams"
    assert idempotency_key("42", "k").startswith("playgate:{42}:")


@pytest.mark.parametrize("user_id", ["1", "42", "ünïcode", "{braces}", "user-with-dashes"])
def test_on_a_cluster_every_key_of_an_admission_lies_in_the_users_slot(user_id: str) -> None:
    keys = KeyLayout(cluster=True)
    request_id = new_stream_id(user_id)  # request ids name their user as stream ids do
    admission_keys = [
        keys.streams_key(user_id),
        keys.leases_key(user_id),
        keys.decision_key(request_id, user_id),
        keys.devices_key(user_id),
    ]
    assert {key_slot(k.encode()) for k in admission_keys} == {keys.slot(user_id)}
    assert keys.admission_keys(user_id, request_id) == (
        admission_keys[1],
        admission_keys[0],
        admission_keys[2],
        admission_keys[3],
    )
    assert keys.find_decision_key(request_id) == keys.decision_key(request_id, user_id)
    assert keys.find_decision_key("no-user-named") is None


def test_a_cluster_spreads_users_evenly_over_its_buckets_and_slot_ranges() -> None:
    keys = KeyLayout(cluster=True)
    assert len(set(keys.lease_keys())) == BUCKETS
    per_third = Counter(keys.slot(str(n)) * 3 // 16384 for n in range(30_000))
    assert all(9_000 < count < 11_000 for count in per_third.values())  # three primaries, contiguous slot ranges


def test_one_server_keeps_its_keys_unchanged() -> None:
    keys = KeyLayout(cluster=False)
    assert keys.streams_key("42") == streams_key("42")
    assert keys.lease_keys() == [keys.leases_key("42")] == ["playgate:leases"]
    assert keys.decision_key("r1", "42") == keys.find_decision_key("r1") == "playgate:decision:r1"


def test_a_cluster_url_names_its_nodes() -> None:
    url = "redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7001/0"
    check_redis_url(url)
    assert is_cluster_url(url)
    assert not is_cluster_url("redis://10.0.0.1:7000")
    assert cluster_nodes(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    with pytest.raises(ConfigError, match="PLAYGATE_REDIS_URL"):
        check_redis_url("redis+cluster://10.0.0.1/0")


def test_a_tls_cluster_url_names_its_ca_and_nothing_else() -> None:
    assert cluster_tls("redis+cluster://10.0.0.1:7000/0") == {}
    url = "rediss+cluster://10.0.0.1:7000,10.0.0.2:7001/0?ssl_ca_certs=%2Fetc%2Fredis%2Fca.pem&ssl_cert_reqs=required"
    check_redis_url(url)
    assert cluster_tls(url) == {"ssl": True, "ssl_ca_certs": "/etc/redis/ca.pem", "ssl_cert_reqs": "required"}
    for refused in ("rediss+cluster://10.0.0.1:7000/0?timeout=3", "redis+cluster://10.0.0.1:7000/0?ssl_ca_certs=x"):
        with pytest.raises(ConfigError, match="PLAYGATE_REDIS_URL"):
            check_redis_url(refused)


def test_a_sentinel_url_names_its_sentinels_service_database_and_the_primarys_credentials() -> None:
    named = sentinel_service("redis+sentinel://app:p%40ss@10.0.0.1:26379,sentinel-2:26380/3/playgate-main")
    assert named.sentinels == [("10.0.0.1", 26379), ("sentinel-2", 26380)]
    assert (named.service, named.db, named.username, named.password) == ("playgate-main", 3, "app", "p@ss")
    assert storage_url(load_settings({"PLAYGATE_REDIS_URL": "redis+sentinel://s:26379/0/main"})) == "async+redis://"
    for refused, named_in_error in (
        ("redis+sentinel://10.0.0.1:26379/main", "redis+sentinel://host:port[,host:port...]/db/service"),
        ("redis+sentinel://10.0.0.1:26379/0/main?ssl=true", "with no query"),
        ("redis+sentinel://10.0.0.1/0/main", "sentinel '10.0.0.1' is not host:port"),
    ):
        with pytest.raises(ConfigError, match="PLAYGATE_REDIS_URL") as raised:
            check_redis_url(refused)
        assert named_in_error in raised.value.detail


async def test_socketios_manager_takes_a_sentinel_urls_password_decoded() -> None:
    # python-socketio's own reading of the URL leaves it percent-encoded (p%40ss); the manager uses PlayGate's client.
    manager = socket_manager("redis+sentinel://:p%40ss@127.0.0.1:26379/2/main")
    manager._redis_connect()
    try:
        pool = manager.redis.connection_pool
        assert (pool.service_name, pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (
            "main",
            2,
            "p@ss",
        )
    finally:
        await manager.redis.aclose()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache:6380", "unix:///run/redis.sock"])
def test_redis_urls_are_accepted(url: str) -> None:
    check_redis_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "postgresql://x/y"])
def test_other_urls_are_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match="PLAYGATE_REDIS_URL"):
        check_redis_url(url)


async def test_forget_all_deletes_playgates_keys_and_no_others(redis_server: RedisServer) -> None:
    redis_server.flush()
    client = connect(redis_server.url)
    try:
        for i in range(2500):  # more than one SCAN chunk
            await client.set(f"playgate:decision:{i}", "x")
        await client.set(streams_key("7"), "x")
        await client.set("someone-else:key", "kept")
        assert await forget_all(redis_server.url) == 2501
        assert await client.keys("*") == ["someone-else:key"]
        assert await forget_all(redis_server.url) == 0
    finally:
        await client.aclose()
