"""The admission rule: a table of cases, and properties that hold for any sequence of requests."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playgate.admission import decide
from playgate.domain import PlayRequest, Policy, Quota, Reason, Status, Stream

NOW = 1_000.0
LEASE_S = 90.0


def request(
    rid: str = "r1", video: str = "v1", device: str = "d1", replace_id: str | None = None, *, own: bool = False
) -> PlayRequest:
    return PlayRequest(
        rid, "u1", video, device, accepted_at=NOW, replace_stream_id=replace_id, replace_device_stream=own
    )


def stream(sid: str, video: str = "v1", device: str = "dx", started: float = 0.0, expires: float = NOW + 10) -> Stream:
    return Stream(sid, "u1", video, device, started_at=started, expires_at=expires)


CASES = [
    # (name, streams, quota, request, policy, status, reason, active)
    ("empty allows", [], Quota(3), request(), Policy.deny, Status.allowed, None, 1),
    ("below limit allows", [stream("a"), stream("b")], Quota(3), request(), Policy.deny, Status.allowed, None, 3),
    (
        "at limit denies",
        [stream("a"), stream("b"), stream("c")],
        Quota(3),
        request(),
        Policy.deny,
        Status.denied,
        Reason.limit_reached,
        3,
    ),
    (
        "expired streams do not count",
        [stream("a"), stream("b", expires=NOW), stream("c", expires=NOW - 1)],
        Quota(2),
        request(),
        Policy.deny,
        Status.allowed,
        None,
        2,
    ),
    ("limit zero denies", [], Quota(0), request(), Policy.deny, Status.denied, Reason.limit_reached, 0),
    (
        "disabled user denied",
        [],
        Quota(3, disabled=True),
        request(),
        Policy.deny,
        Status.denied,
        Reason.user_disabled,
        0,
    ),
    ("unknown user denied", [], Quota(0, exists=False), request(), Policy.deny, Status.denied, Reason.unknown_user, 0),
    (
        "same device same video re-uses at the limit",
        [stream("a", device="d1", video="v1"), stream("b")],
        Quota(2),
        request(device="d1", video="v1"),
        Policy.deny,
        Status.allowed,
        None,
        2,
    ),
    (
        "same device other video needs a slot",
        [stream("a", device="d1", video="v2"), stream("b")],
        Quota(2),
        request(device="d1", video="v1"),
        Policy.deny,
        Status.denied,
        Reason.limit_reached,
        2,
    ),
    (
        "evict_oldest ends the oldest at the limit",
        [stream("new", started=5), stream("old", started=1)],
        Quota(2),
        request(),
        Policy.evict_oldest,
        Status.allowed,
        None,
        2,
    ),
    (
        "evict_oldest with limit zero denies",
        [],
        Quota(0),
        request(),
        Policy.evict_oldest,
        Status.denied,
        Reason.limit_reached,
        0,
    ),
    (
        "replace swaps one of the user's streams",
        [stream("a"), stream("b")],
        Quota(2),
        request(replace_id="a"),
        Policy.deny,
        Status.allowed,
        None,
        2,
    ),
    (
        "replace of an unknown stream is denied at the limit",
        [stream("a"), stream("b")],
        Quota(2),
        request(replace_id="zzz"),
        Policy.deny,
        Status.denied,
        Reason.limit_reached,
        2,
    ),
    (
        "next episode on the same device replaces its own stream at the limit",
        [stream("ep1", device="d1", video="v2")],
        Quota(1),
        request(device="d1", video="v1", own=True),
        Policy.deny,
        Status.allowed,
        None,
        1,
    ),
    (
        "one stream per device does not reach other devices' streams",
        [stream("a", device="d2"), stream("b", device="d3")],
        Quota(2),
        request(device="d1", own=True),
        Policy.deny,
        Status.denied,
        Reason.limit_reached,
        2,
    ),
    (
        "over the limit after it was lowered: still denied, nothing ended",
        [stream("a"), stream("b"), stream("c")],
        Quota(1),
        request(replace_id="a"),
        Policy.deny,
        Status.denied,
        Reason.limit_reached,
        3,
    ),
]


@pytest.mark.parametrize(
    ("streams", "quota", "req", "policy", "status", "reason", "active"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rule_table(
    streams: list[Stream],
    quota: Quota,
    req: PlayRequest,
    policy: Policy,
    status: Status,
    reason: Reason | None,
    active: int,
) -> None:
    verdict = decide(req, streams=streams, quota=quota, now=NOW, lease_s=LEASE_S, new_stream_id="s-new", policy=policy)
    assert verdict.decision.status is status
    assert verdict.decision.reason is reason
    assert verdict.decision.active == active == len(verdict.streams)
    assert verdict.decision.limit == quota.limit
    if status is Status.allowed:
        assert verdict.decision.stream_id in {s.id for s in verdict.streams}
    else:
        assert verdict.decision.stream_id is None
        assert verdict.started is None


def test_re_use_renews_the_lease_and_keeps_the_stream_id() -> None:
    playing = stream("a", device="d1", video="v1", expires=NOW + 1)
    verdict = decide(request(), streams=[playing], quota=Quota(1), now=NOW, lease_s=LEASE_S, new_stream_id="s-new")
    assert verdict.decision.stream_id == "a"
    assert verdict.renewed == replace(playing, expires_at=NOW + LEASE_S)
    assert verdict.started is None


def test_eviction_and_replacement_are_reported_as_ended() -> None:
    old, new = stream("old", started=1), stream("new", started=5)
    evicted = decide(
        request(),
        streams=[new, old],
        quota=Quota(2),
        now=NOW,
        lease_s=LEASE_S,
        new_stream_id="s",
        policy=Policy.evict_oldest,
    )
    assert [(e.stream.id, e.reason) for e in evicted.ended] == [("old", Reason.evicted)]
    replaced = decide(
        request(replace_id="new"), streams=[new, old], quota=Quota(2), now=NOW, lease_s=LEASE_S, new_stream_id="s"
    )
    assert [(e.stream.id, e.reason) for e in replaced.ended] == [("new", Reason.replaced)]


def test_the_next_episode_ends_the_previous_one_as_replaced() -> None:
    ep1 = stream("ep1", device="d1", video="v2")
    verdict = decide(
        request(device="d1", own=True), streams=[ep1], quota=Quota(1), now=NOW, lease_s=LEASE_S, new_stream_id="ep2"
    )
    assert [(e.stream.id, e.reason) for e in verdict.ended] == [("ep1", Reason.replaced)]
    assert [s.id for s in verdict.streams] == ["ep2"]


def test_a_denial_at_the_limit_carries_the_streams_holding_it_oldest_first() -> None:
    held = [stream("b", started=5), stream("a", started=1)]
    verdict = decide(request(), streams=held, quota=Quota(2), now=NOW, lease_s=LEASE_S, new_stream_id="s")
    assert [s.id for s in verdict.conflicts] == ["a", "b"]
    disabled = decide(
        request(), streams=held, quota=Quota(2, disabled=True), now=NOW, lease_s=LEASE_S, new_stream_id="s"
    )
    assert disabled.conflicts == ()


def test_expired_streams_are_reported_as_ended() -> None:
    gone = stream("gone", expires=NOW - 5)
    verdict = decide(request(), streams=[gone], quota=Quota(1), now=NOW, lease_s=LEASE_S, new_stream_id="s")
    assert [(e.stream.id, e.reason) for e in verdict.ended] == [("gone", Reason.expired)]
    assert verdict.decision.status is Status.allowed


def test_a_prior_decision_is_returned_unchanged() -> None:
    first = decide(request(), streams=[], quota=Quota(1), now=NOW, lease_s=LEASE_S, new_stream_id="s1")
    again = decide(
        request(),
        streams=first.streams,
        quota=Quota(1),
        now=NOW + 5,
        lease_s=LEASE_S,
        new_stream_id="s2",
        prior=first.decision,
    )
    assert again.decision == first.decision
    assert again.streams == first.streams
    assert again.started is None


# ---- properties -------------------------------------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["play", "play", "play", "stop", "tick", "retry"]),
        st.sampled_from(["v1", "v2", "v3"]),
        st.sampled_from(["d1", "d2", "d3", "d4"]),
        st.floats(min_value=0, max_value=40),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=ops,
    limit=st.integers(min_value=0, max_value=4),
    policy=st.sampled_from(list(Policy)),
    lease_s=st.floats(min_value=1, max_value=60),
    one_per_device=st.booleans(),
)
def test_properties_over_any_sequence(
    ops: list[tuple[str, str, str, float]], limit: int, policy: Policy, lease_s: float, one_per_device: bool
) -> None:
    """Never over the limit; a request decided twice gets the same answer; re-use takes no slot; with one stream
    per device, a device never holds two."""
    now = 0.0
    streams: tuple[Stream, ...] = ()
    decided: dict[str, tuple[PlayRequest, object]] = {}
    for n, (op, video, device, dt) in enumerate(ops):
        now += dt
        if op == "tick":
            continue
        if op == "stop":
            streams = tuple(s for s in streams if s.device_id != device)
            continue
        if op == "retry" and decided:
            rid = sorted(decided)[n % len(decided)]
            req, decision = decided[rid]
            verdict = decide(
                req,
                streams=streams,
                quota=Quota(limit),
                now=now,
                lease_s=lease_s,
                new_stream_id=f"s{n}",
                prior=decision,  # type: ignore[arg-type]
            )
            assert verdict.decision == decision
            streams = verdict.streams
            continue
        req = PlayRequest(f"r{n}", "u1", video, device, accepted_at=now, replace_device_stream=one_per_device)
        live_before = [s for s in streams if s.live(now)]
        playing_same = any(s.device_id == device and s.video_id == video for s in live_before)
        verdict = decide(
            req, streams=streams, quota=Quota(limit), now=now, lease_s=lease_s, new_stream_id=f"s{n}", policy=policy
        )
        streams = verdict.streams
        decided[req.request_id] = (req, verdict.decision)
        assert all(s.live(now) for s in streams), "expired streams are dropped"
        assert len(streams) <= max(limit, len(live_before)), "never over the limit"
        if len(live_before) <= limit:
            assert len(streams) <= limit
        if playing_same and limit > 0:
            assert verdict.decision.status is Status.allowed
            assert len(streams) == len(live_before), "re-use takes no new slot"
        if verdict.decision.status is Status.allowed:
            assert verdict.decision.stream_id in {s.id for s in streams}
        if one_per_device:
            assert len({s.device_id for s in streams}) == len(streams), "one stream per device"
