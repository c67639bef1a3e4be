"""The admission rule: a table of cases, and properties that hold for any sequence of requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from playgate.admission import decide, over_rules
from playgate.domain import DAY_S, PlayRequest, Policy, Quota, Reason, Rules, Status, Stream

NOW = 1_000.0
LEASE_S = 90.0


def request(
    rid: str = "r1",
    video: str = "v1",
    device: str = "d1",
    replace_id: str | None = None,
    kinds: tuple[str, ...] = (),
    away: bool = False,
    *,
    own: bool = False,
    replace_ids: tuple[str, ...] = (),
    others: bool = False,
) -> PlayRequest:
    return PlayRequest(
        rid,
        "u1",
        video,
        device,
        accepted_at=NOW,
        replace_stream_ids=(*replace_ids, *([replace_id] if replace_id else [])),
        replace_others=others,
        replace_device_stream=own,
        kinds=kinds,
        away=away,
    )


def stream(
    sid: str,
    video: str = "v1",
    device: str = "dx",
    started: float = 0.0,
    expires: float = NOW + 10,
    kinds: tuple[str, ...] = (),
    away: bool = False,
) -> Stream:
    return Stream(sid, "u1", video, device, started_at=started, expires_at=expires, kinds=kinds, away=away)


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
        "watch here: the named streams all make way at the limit",
        [stream("a", device="d2"), stream("b", device="d3"), stream("c", device="d4")],
        Quota(2),
        request(replace_ids=("a", "b", "c")),
        Policy.deny,
        Status.allowed,
        None,
        1,
    ),
    (
        "watch here naming too few streams for a lowered limit: denied, nothing ended",
        [stream("a", device="d2"), stream("b", device="d3"), stream("c", device="d4")],
        Quota(1),
        request(replace_ids=("a", "b")),
        Policy.deny,
        Status.denied,
        Reason.limit_reached,
        3,
    ),
    (
        "watch here for all the others at the limit",
        [stream("a", device="d2"), stream("b", device="d3")],
        Quota(2),
        request(others=True),
        Policy.deny,
        Status.allowed,
        None,
        1,
    ),
    (
        "watch here for all at a limit of zero: denied, nothing ended",
        [stream("a", device="d2")],
        Quota(0),
        request(others=True),
        Policy.deny,
        Status.denied,
        Reason.limit_reached,
        1,
    ),
    (
        "watch here with ids of no live stream: denied at the limit",
        [stream("a", device="d2")],
        Quota(1),
        request(replace_ids=("gone", "other-users")),
        Policy.deny,
        Status.denied,
        Reason.limit_reached,
        1,
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
    quota = replace(quota, rules=replace(quota.rules, on_limit=policy))
    verdict = decide(req, streams=streams, quota=quota, now=NOW, lease_s=LEASE_S, new_stream_id="s-new")
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
        quota=Quota(2, rules=Rules(on_limit=Policy.evict_oldest)),
        now=NOW,
        lease_s=LEASE_S,
        new_stream_id="s",
    )
    assert [(e.stream.id, e.reason) for e in evicted.ended] == [("old", Reason.evicted)]
    replaced = decide(
        request(replace_id="new"), streams=[new, old], quota=Quota(2), now=NOW, lease_s=LEASE_S, new_stream_id="s"
    )
    assert [(e.stream.id, e.reason) for e in replaced.ended] == [("new", Reason.replaced)]


def test_watch_here_ends_what_it_names_as_replaced_and_a_denial_ends_nothing() -> None:
    held = [stream("a", device="d2"), stream("b", device="d3"), stream("c", device="d4", kinds=("uhd",))]
    named = decide(
        request(replace_ids=("a", "c")), streams=held, quota=Quota(3), now=NOW, lease_s=LEASE_S, new_stream_id="s"
    )
    assert [(e.stream.id, e.reason) for e in named.ended] == [("a", Reason.replaced), ("c", Reason.replaced)]
    assert [s.id for s in named.streams] == ["b", "s"]
    everyone = decide(request(others=True), streams=held, quota=Quota(3), now=NOW, lease_s=LEASE_S, new_stream_id="s")
    assert {e.stream.id for e in everyone.ended} == {"a", "b", "c"}
    assert [s.id for s in everyone.streams] == ["s"]
    # A cap that still denies once they are gone (no uhd at all): nothing ends, the conflicts are the uhd ones.
    capped = Quota(3, rules=Rules(kind_limits=(("uhd", 0),)))
    refused = decide(
        request(kinds=("uhd",), others=True), streams=held, quota=capped, now=NOW, lease_s=LEASE_S, new_stream_id="s"
    )
    assert refused.decision.status is Status.denied
    assert refused.ended == ()
    assert refused.streams == tuple(held)


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
            req,
            streams=streams,
            quota=Quota(limit, rules=Rules(on_limit=policy)),
            now=now,
            lease_s=lease_s,
            new_stream_id=f"s{n}",
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


# ---- the plan's rules, one by one and together -----------------------------------------------------------

UHD = (("uhd", 1),)
DENY, EVICT, SAME_DEVICE = Policy.deny, Policy.evict_oldest, Policy.evict_oldest_on_same_device_first
RECENT = NOW - 10  # a device seen within any window below
RULE_CASES = [
    # (name, streams, devices, rules, request, status, reason text, ended stream ids)
    (
        "kind cap denies a second uhd",
        [stream("a", kinds=("uhd",))],
        {},
        Rules(kind_limits=UHD),
        request(video="v2", kinds=("uhd",)),
        Status.denied,
        "kind_limit:uhd",
        [],
    ),
    (
        "kind cap leaves other kinds alone",
        [stream("a", kinds=("uhd",))],
        {},
        Rules(kind_limits=UHD),
        request(video="v2", kinds=("vod",)),
        Status.allowed,
        None,
        [],
    ),
    (
        "the first full kind names the denial",
        [stream("a", kinds=("live",))],
        {},
        Rules(kind_limits=(("live", 1), ("uhd", 0))),
        request(video="v2", kinds=("live", "uhd")),
        Status.denied,
        "kind_limit:live",
        [],
    ),
    (
        "kind cap evicts the oldest of that kind",
        [stream("a", started=1), stream("b", started=2, kinds=("uhd",))],
        {},
        Rules(on_limit=EVICT, kind_limits=UHD),
        request(video="v2", kinds=("uhd",)),
        Status.allowed,
        None,
        ["b"],
    ),
    (
        "kind cap zero denies under eviction",
        [],
        {},
        Rules(on_limit=EVICT, kind_limits=(("uhd", 0),)),
        request(kinds=("uhd",)),
        Status.denied,
        "kind_limit:uhd",
        [],
    ),
    (
        "title cap denies the same video on another device",
        [stream("a", video="v1")],
        {},
        Rules(max_per_title=1),
        request(video="v1", device="d2"),
        Status.denied,
        "title_limit",
        [],
    ),
    (
        "title cap re-use on the same device still allowed",
        [stream("a", video="v1", device="d1")],
        {},
        Rules(max_per_title=1),
        request(video="v1", device="d1"),
        Status.allowed,
        None,
        [],
    ),
    (
        "title cap evicts that title's oldest",
        [stream("a", video="v9", started=1), stream("b", video="v1", started=2)],
        {},
        Rules(on_limit=EVICT, max_per_title=1),
        request(video="v1"),
        Status.allowed,
        None,
        ["b"],
    ),
    (
        "a new device past the cap is denied",
        [],
        {"d2": RECENT, "d3": RECENT},
        Rules(max_devices=2),
        request(device="d1"),
        Status.denied,
        "device_limit",
        [],
    ),
    (
        "a known device plays at the cap",
        [],
        {"d1": RECENT, "d2": RECENT},
        Rules(max_devices=2),
        request(device="d1"),
        Status.allowed,
        None,
        [],
    ),
    (
        "devices past the window do not count",
        [],
        {"d2": NOW - 2 * DAY_S, "d3": RECENT},
        Rules(max_devices=2, device_window_s=DAY_S),
        request(device="d1"),
        Status.allowed,
        None,
        [],
    ),
    (
        "eviction frees no device",
        [stream("a", device="d2")],
        {"d2": RECENT},
        Rules(on_limit=EVICT, max_devices=1),
        request(device="d1"),
        Status.denied,
        "device_limit",
        [],
    ),
    (
        "away streams have their own cap",
        [stream("a", away=True)],
        {},
        Rules(max_away_streams=1),
        request(video="v2", away=True),
        Status.denied,
        "household_limit",
        [],
    ),
    (
        "home streams ignore the away cap",
        [stream("a", away=True)],
        {},
        Rules(max_away_streams=1),
        request(video="v2"),
        Status.allowed,
        None,
        [],
    ),
    (
        "away cap evicts the oldest away stream",
        [stream("h", started=1), stream("a", started=2, away=True)],
        {},
        Rules(on_limit=EVICT, max_away_streams=1),
        request(video="v2", away=True),
        Status.allowed,
        None,
        ["a"],
    ),
    (
        "same device first evicts the asking device's oldest",
        [stream("a", started=1, device="d9"), stream("b", started=2, device="d1"), stream("c", started=3, device="d1")],
        {},
        Rules(on_limit=SAME_DEVICE),
        request(video="v2"),
        Status.allowed,
        None,
        ["b"],
    ),
    (
        "same device first falls back to the oldest",
        [stream("a", started=1), stream("b", started=2), stream("c", started=3)],
        {},
        Rules(on_limit=SAME_DEVICE),
        request(video="v2", device="d7"),
        Status.allowed,
        None,
        ["a"],
    ),
    (
        "total is checked before kinds",
        [stream("a", kinds=("uhd",)), stream("b"), stream("c")],
        {},
        Rules(kind_limits=UHD),
        request(video="v2", kinds=("uhd",)),
        Status.denied,
        "limit_reached",
        [],
    ),
    (
        "replace frees the kind slot",
        [stream("a", kinds=("uhd",))],
        {},
        Rules(kind_limits=UHD),
        request(video="v2", kinds=("uhd",), replace_id="a"),
        Status.allowed,
        None,
        ["a"],
    ),
    (
        "every rule together: allowed when all fit",
        [stream("a", kinds=("uhd",), device="d2"), stream("b", away=True, device="d3")],
        {"d2": RECENT, "d3": RECENT},
        Rules(kind_limits=(("uhd", 2), ("live", 1)), max_per_title=1, max_devices=3, max_away_streams=2),
        request(video="v5", kinds=("uhd", "live"), away=True),
        Status.allowed,
        None,
        [],
    ),
    (
        "every rule together under eviction: kind then household",
        [stream("a", started=1, kinds=("uhd",)), stream("b", started=2, away=True)],
        {},
        Rules(on_limit=EVICT, kind_limits=UHD, max_away_streams=1),
        request(video="v5", kinds=("uhd",), away=True),
        Status.allowed,
        None,
        ["a", "b"],
    ),
]


@pytest.mark.parametrize(
    ("streams", "devices", "rules", "req", "status", "why", "ended"),
    [case[1:] for case in RULE_CASES],
    ids=[case[0] for case in RULE_CASES],
)
def test_rules_table(
    streams: list[Stream],
    devices: dict[str, float],
    rules: Rules,
    req: PlayRequest,
    status: Status,
    why: str | None,
    ended: list[str],
) -> None:
    quota = Quota(3, rules=rules)
    verdict = decide(
        req, streams=streams, quota=quota, now=NOW, lease_s=LEASE_S, new_stream_id="s-new", devices=devices
    )
    assert verdict.decision.status is status
    assert verdict.decision.why == why
    assert sorted(e.stream.id for e in verdict.ended) == ended
    if status is Status.denied:
        assert verdict.streams == tuple(streams), "nothing ends when the request is denied"
        assert verdict.devices is None


def test_devices_are_registered_only_under_a_device_cap() -> None:
    free = decide(request(), streams=[], quota=Quota(3), now=NOW, lease_s=LEASE_S, new_stream_id="s")
    assert free.devices is None
    capped = decide(
        request(device="d1"),
        streams=[],
        quota=Quota(3, rules=Rules(max_devices=2, device_window_s=DAY_S)),
        now=NOW,
        lease_s=LEASE_S,
        new_stream_id="s",
        devices={"old": NOW - 2 * DAY_S, "d2": RECENT, "d1": NOW - 5},
    )
    assert capped.devices == {"d2": RECENT, "d1": NOW}


@pytest.mark.parametrize(
    ("shadow", "enforced", "shadow_reason"),
    [
        (Rules(max_streams=1), Status.allowed, "limit_reached"),
        (Rules(kind_limits=UHD), Status.allowed, "kind_limit:uhd"),
        (Rules(max_streams=5), Status.allowed, None),
        (Rules(max_devices=1), Status.allowed, "device_limit"),
    ],
)
def test_shadow_is_decided_beside_and_never_enforced(shadow: Rules, enforced: Status, shadow_reason: str) -> None:
    streams = [stream("a", kinds=("uhd",), device="d2")]
    with_shadow = decide(
        request(video="v2", kinds=("uhd",)),
        streams=streams,
        quota=Quota(3, shadow=shadow),
        now=NOW,
        lease_s=LEASE_S,
        new_stream_id="s",
        devices={"d2": RECENT},
    )
    without = decide(
        request(video="v2", kinds=("uhd",)),
        streams=streams,
        quota=Quota(3),
        now=NOW,
        lease_s=LEASE_S,
        new_stream_id="s",
    )
    assert with_shadow.decision.status is enforced
    assert with_shadow.decision.shadow_reason == shadow_reason
    assert replace(with_shadow.decision, shadow_reason=None) == without.decision
    assert with_shadow.streams == without.streams


rules_strategy = st.builds(
    Rules,
    on_limit=st.sampled_from(list(Policy)),
    kind_limits=st.sampled_from([(), (("uhd", 1),), (("live", 2), ("uhd", 1)), (("uhd", 0),)]),
    max_per_title=st.one_of(st.none(), st.integers(0, 2)),
    max_devices=st.one_of(st.none(), st.integers(0, 3)),
    device_window_s=st.sampled_from([5.0, 60.0, DAY_S]),
    max_away_streams=st.one_of(st.none(), st.integers(0, 2)),
)


def _assert_within_stream_caps(streams: Sequence[Stream], rules: Rules) -> None:
    """No kind tag, title or away count of `streams` over its cap in `rules`."""
    for tag, cap in rules.kind_limits:
        assert sum(tag in s.kinds for s in streams) <= cap
    if rules.max_per_title is not None:
        for title in {s.video_id for s in streams}:
            assert sum(s.video_id == title for s in streams) <= rules.max_per_title
    if rules.max_away_streams is not None:
        assert sum(s.away for s in streams) <= rules.max_away_streams


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["v1", "v2", "v3"]),
            st.sampled_from(["d1", "d2", "d3", "d4", "d5"]),
            st.sampled_from([(), ("uhd",), ("live",), ("live", "uhd")]),
            st.booleans(),
            st.floats(min_value=0, max_value=20),
        ),
        max_size=40,
    ),
    limit=st.integers(min_value=0, max_value=4),
    rules=rules_strategy,
)
def test_no_sequence_breaks_any_rule(
    ops: list[tuple[str, str, tuple[str, ...], bool, float]], limit: int, rules: Rules
) -> None:
    """Whatever the requests, the streams held never exceed the total, a kind, a title or the away cap, and
    no more devices than the cap ever start a stream within the window."""
    now = 0.0
    streams: tuple[Stream, ...] = ()
    devices: dict[str, float] = {}
    quota = Quota(limit, rules=rules)
    for n, (video, device, kinds, away, dt) in enumerate(ops):
        now += dt
        req = PlayRequest(f"r{n}", "u1", video, device, accepted_at=now, kinds=kinds, away=away)
        verdict = decide(
            req, streams=streams, quota=quota, now=now, lease_s=30.0, new_stream_id=f"s{n}", devices=devices
        )
        streams = verdict.streams
        devices = dict(verdict.devices) if verdict.devices is not None else devices
        assert len(streams) <= limit
        _assert_within_stream_caps(streams, rules)
        if rules.max_devices is not None:
            recent = {d for d, seen_at in devices.items() if seen_at > now - rules.device_window_s}
            assert len(recent) <= rules.max_devices


def test_a_lowered_rule_ends_the_newest_streams_over_it_under_deny_and_the_oldest_under_eviction() -> None:
    held = [
        stream("a", video="v1", device="tv", started=1, kinds=("uhd",)),
        stream("b", video="v2", device="phone", started=2, kinds=("uhd",), away=True),
        stream("c", video="v1", device="laptop", started=3, away=True),
    ]
    assert over_rules(held, 3, Rules()) == {}
    kinds = Rules(on_limit=Policy.deny, kind_limits=(("uhd", 1),))
    assert {sid: c.text for sid, c in over_rules(held, 3, kinds).items()} == {"b": "kind_limit:uhd"}
    evict = replace(kinds, on_limit=Policy.evict_oldest)
    assert {sid: c.text for sid, c in over_rules(held, 3, evict).items()} == {"a": "kind_limit:uhd"}
    title = Rules(max_per_title=1)
    assert {sid: c.text for sid, c in over_rules(held, 3, title).items()} == {"c": "title_limit"}
    away = Rules(max_away_streams=0)
    assert set(over_rules(held, 3, away)) == {"b", "c"}
    devices = Rules(max_devices=1)
    assert {sid: c.text for sid, c in over_rules(held, 3, devices).items()} == {
        "b": "device_limit",
        "c": "device_limit",
    }
    # A device the account removed no longer counts: its stream plays on and makes room for another.
    assert set(over_rules(held, 3, replace(devices, max_devices=2), registered={"phone", "laptop"})) == set()
    # A stream ended for one cap is not counted by the next: the total takes c, then uhd is within its cap.
    both = Rules(kind_limits=(("uhd", 1),), max_per_title=1)
    assert {sid: c.text for sid, c in over_rules(held, 2, both).items()} == {
        "c": "limit_reached",
        "b": "kind_limit:uhd",
    }


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["v1", "v2", "v3"]),
            st.sampled_from(["d1", "d2", "d3", "d4", "d5"]),
            st.sampled_from([(), ("uhd",), ("live",), ("live", "uhd")]),
            st.booleans(),
        ),
        max_size=12,
    ),
    limit=st.integers(min_value=0, max_value=6),
    rules=rules_strategy,
    lowered=rules_strategy,
    lowered_limit=st.integers(min_value=0, max_value=6),
)
def test_heartbeats_hold_streams_to_lowered_rules(
    ops: list[tuple[str, str, tuple[str, ...], bool]], limit: int, rules: Rules, lowered: Rules, lowered_limit: int
) -> None:
    """Streams admitted under the rules are never over them; once the plan changes, the streams left after
    those over_rules names fit every cap of the new plan."""
    streams: tuple[Stream, ...] = ()
    devices: dict[str, float] = {}
    for n, (video, device, kinds, away) in enumerate(ops):
        req = PlayRequest(f"r{n}", "u1", video, device, accepted_at=float(n), kinds=kinds, away=away)
        verdict = decide(
            req,
            streams=streams,
            quota=Quota(limit, rules=rules),
            now=float(n),
            lease_s=1000.0,
            new_stream_id=f"s{n}",
            devices=devices,
        )
        streams = verdict.streams
        devices = dict(verdict.devices) if verdict.devices is not None else devices
    assert over_rules(streams, limit, rules, registered=devices) == {}
    over = over_rules(streams, lowered_limit, lowered)
    left = [s for s in streams if s.id not in over]
    assert len(left) <= lowered_limit
    _assert_within_stream_caps(left, lowered)
    if lowered.max_devices is not None:
        assert len({s.device_id for s in left}) <= lowered.max_devices
