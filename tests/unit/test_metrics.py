"""Metrics: a labelled child is found once and counts into the same series as `labels()`."""

from __future__ import annotations

from playgate.metrics import Metrics


def test_a_labelled_child_is_found_once_and_counts_as_labels_does() -> None:
    metrics = Metrics()
    child = metrics.labelled(metrics.http_requests, "/videos/{videoId}/request", "202")
    assert metrics.labelled(metrics.http_requests, "/videos/{videoId}/request", "202") is child
    assert metrics.labelled(metrics.http_requests, "/videos/{videoId}/request", "404") is not child
    child.inc()
    metrics.http_requests.labels("/videos/{videoId}/request", "202").inc()
    metrics.labelled(metrics.http_duration, "/videos/{videoId}/request").observe(0.001)
    text = metrics.render().decode()
    assert 'playgate_http_requests_total{route="/videos/{videoId}/request",status="202"} 2.0' in text
    assert 'playgate_http_request_duration_seconds_count{route="/videos/{videoId}/request"} 1.0' in text
