"""/metrics on a real server: every family the dashboard and the alerts rely on, with live values."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import OpenSocket, api_client, new_user

COUNTED_WITHIN_S = 5.0


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


async def test_metrics_cover_http_decisions_queue_streams_sockets_and_errors(
    base_url: str, admin: httpx.AsyncClient, open_socket: OpenSocket
) -> None:
    user = await new_user(base_url, admin, limit=1)
    await open_socket(base_url, token=user.token)  # connected while the samples are taken
    async with api_client(base_url, user.token) as client:
        first = await client.post("/v1/plays", json={"videoId": "1"}, params={"wait": "5"})
        assert first.json()["status"] == "allowed"
        second = await client.post("/v1/plays", json={"videoId": "2"}, params={"wait": "5"})
        assert second.json()["status"] == "denied"
        assert (await client.get("/readyz")).status_code == 200
        # The worker counts a decision right after publishing it: poll briefly for both.
        deadline = time.monotonic() + COUNTED_WITHIN_S
        samples = _samples((await client.get("/metrics")).text)
        while _value(samples, "playgate_decision_latency_seconds_count") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            samples = _samples((await client.get("/metrics")).text)

    assert _value(samples, "playgate_http_requests_total", route="/v1/plays", status="200") >= 2
    assert _value(samples, "playgate_http_request_duration_seconds_count", route="/v1/plays") >= 2
    assert _value(samples, "playgate_decisions_total", status="allowed") >= 1
    assert _value(samples, "playgate_decisions_total", status="denied", reason="limit_reached") >= 1
    assert _value(samples, "playgate_decision_latency_seconds_count") >= 2
    assert _value(samples, "playgate_sockets_connected") >= 1
    assert _value(samples, "playgate_ready") == 1
    for name in (
        "playgate_queue_depth",
        "playgate_queue_lag_seconds",
        "playgate_queue_pending",
        "playgate_queue_dead_letters",
        "playgate_requests_dead_lettered_total",
        "playgate_active_streams",
        "playgate_ledger_errors_total",
    ):
        assert name in samples, name
    # Route labels are templates, never raw paths: a label per request id would grow without bound.
    routes = {labels["route"] for labels, _ in samples["playgate_http_requests_total"]}
    assert not any(first.json()["requestId"] in route for route in routes)
