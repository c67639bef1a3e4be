"""The outage policy's state, on an injected clock: modes, probing, which streams are honoured, new plays under
each policy, and what is left to write back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from playgate.domain import Decision, EndedStream, PlayRequest, Reason, Status, Stream
from playgate.errors import Unavailable
from playgate.kept import PREFIX, KeptOutages, reconciliation_from_json, reconciliation_to_json
from playgate.metrics import Metrics
from playgate.outage import (
    PROBE_INTERVAL_S,
    DeferredStop,
    Mode,
    Outage,
    OutagePolicy,
    OutageRefused,
    admitted_in_outage,
)
from tests.support.clock import Clock

LEASE_S = 90.0
GRACE_S = 300.0
T0 = 1_800_000_000.0


def outage(policy: OutagePolicy = OutagePolicy.deny) -> tuple[Outage, Clock, Metrics]:
    clock, metrics = Clock(), Metrics()
    return Outage(policy=policy, grace_s=GRACE_S, lease_s=LEASE_S, metrics=metrics, clock=clock), clock, metrics


def stream(sid: str = "s1", user: str = "u1", expires_at: float = T0 + LEASE_S) -> Stream:
    return Stream(sid, user, "v1", "tv", T0 - 10, expires_at)


def told(sid: str = "s1", user: str = "u1") -> Stream:
    """A stream as its playback token tells it (video, device, start), its lease to be set by the outage."""
    return Stream(sid, user, "v1", "tv", T0 - 10, T0)


def request(rid: str = "r1", device: str = "phone") -> PlayRequest:
    return PlayRequest(rid, "u1", "v2", device, accepted_at=T0, replace_device_stream=True)


def test_modes_follow_the_store_and_the_grace() -> None:
    state, clock, metrics = outage()
    assert state.mode() is Mode.normal
    assert state.should_try_store()
    state.store_down(Unavailable("gone"))
    assert state.mode() is Mode.grace
    assert metrics.outage_mode._value.get() == 1
    assert "grace" in state.describe()
    assert not state.should_try_store()  # tried just now
    clock.now += PROBE_INTERVAL_S
    assert state.should_try_store()
    assert not state.should_try_store()  # one request a probe interval
    clock.now = T0 + GRACE_S
    assert state.mode() is Mode.expired
    work = state.store_up()
    assert work is not None
    assert work.down_s == GRACE_S
    assert state.mode() is Mode.normal
    assert metrics.outage_mode._value.get() == 0
    assert state.store_up() is None


@pytest.mark.parametrize(
    ("known", "user", "token", "honoured"),
    [
        (stream(), "u1", None, True),  # renewed or admitted here
        (None, "u1", told(), True),  # unknown here, but a valid playback token names it
        (None, "u1", None, False),  # unknown here, no token: a heartbeat of a stream never seen
        (stream(), "u2", None, False),  # another user's stream
        (stream(expires_at=T0 - 1), "u1", None, False),  # ended before the outage began
    ],
)
def test_which_streams_are_honoured(known: Stream | None, user: str, token: Stream | None, honoured: bool) -> None:
    state, clock, _ = outage()
    if known is not None:
        state.remember([known])
    state.store_down(Unavailable("gone"))
    clock.now += 60
    renewed = state.honour("s1", user, token)
    assert (renewed is not None) is honoured
    if renewed is not None:
        assert renewed.expires_at == clock.now + LEASE_S


def test_nothing_is_honoured_past_the_grace_or_without_an_outage() -> None:
    state, clock, _ = outage()
    state.remember([stream()])
    assert state.honour("s1", "u1") is None  # the store answers: ask it
    state.store_down(Unavailable("gone"))
    clock.now += GRACE_S
    assert state.honour("s1", "u1") is None


def test_deny_refuses_new_plays_with_retry_after() -> None:
    state, _, _ = outage(OutagePolicy.deny)
    state.store_down(Unavailable("gone"))
    assert not state.decides_without_store()  # each new play tries the store first
    with pytest.raises(OutageRefused) as refused:
        state.decide(request(), limit=3)
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "5"}


def test_a_plans_policy_overrides_the_deployments() -> None:
    deny, _, _ = outage(OutagePolicy.deny)
    deny.store_down(Unavailable("gone"))
    assert deny.decide(request(), limit=1, policy=OutagePolicy.allow).decision.status is Status.allowed
    allow, _, _ = outage(OutagePolicy.allow)
    allow.store_down(Unavailable("gone"))
    with pytest.raises(OutageRefused, match="outage policy deny"):
        allow.decide(request(), limit=1, policy=OutagePolicy.deny)


def test_allow_admits_within_the_known_limit_and_leaves_it_to_write_back() -> None:
    state, clock, _ = outage(OutagePolicy.allow)
    state.remember([stream()])
    state.store_down(Unavailable("gone"))
    assert state.decides_without_store()  # tried just now
    outcome = state.decide(request("r1", "phone"), limit=2)
    first = outcome.decision
    assert (first.status, first.active, outcome.ended) == (Status.allowed, 2, ())
    assert first.stream_id is not None
    assert admitted_in_outage(first.stream_id)
    assert not admitted_in_outage("7531-0123")
    again = state.decide(request("r2", "tablet"), limit=2).decision
    assert (again.status, again.reason, again.active) == (Status.denied, Reason.limit_reached, 2)
    # the same device asking for another title replaces its own stream, which is stopped: ended as `replaced`
    replacing = state.decide(request("r3", "phone"), limit=2)
    following = replacing.decision
    assert following.status is Status.allowed
    assert [(e.stream.id, e.reason) for e in replacing.ended] == [(first.stream_id, Reason.replaced)]
    assert state.honour(first.stream_id, "u1") is None
    assert state.decision("r2") == again
    assert state.stopped("s1", "u1") is not None
    assert state.stopped("s1", "u1") is None  # once
    clock.now += 10
    work = state.store_up()
    assert work is not None
    assert [s.id for s in work.streams] == [following.stream_id]
    assert [d.request_id for d in work.decisions] == ["r1", "r2", "r3"]
    taken = clock.now - 10  # both stops were taken before the clock moved on
    assert work.stopped == {
        first.stream_id: DeferredStop("u1", Reason.replaced, taken),
        "s1": DeferredStop("u1", Reason.stopped, taken),
    }
    assert state.decision("r1") is None


def test_decisions_name_their_streams_start_and_away_flag_before_and_in_the_outage() -> None:
    """A decision the store gave for a stream started earlier (the device asked again for the video it plays) is
    remembered with that start and away flag, so that the outage counts it against maxAwayStreams and by its age;
    an allowed decision of the outage names its new stream's start and away flag as the store's decisions do."""
    state, clock, _ = outage(OutagePolicy.allow)
    asked_again = replace(request("r0", "tv"), video_id="v1")  # from home now; the stream plays away
    kept = Decision("r0", "u1", "v1", "tv", Status.allowed, 1, 3, T0, "s0", expires_at=T0 + LEASE_S)
    state.admitted(asked_again, replace(kept, started_at=T0 - 600, away=True))
    state.store_down(Unavailable("gone"))
    honoured = state.honour("s0", "u1")
    assert honoured is not None
    assert (honoured.started_at, honoured.away) == (T0 - 600, True)
    clock.advance(1)
    away = state.decide(replace(request("r1", "phone"), away=True), limit=3).decision
    assert (away.status, away.started_at, away.away) == (Status.allowed, clock.now, True)


def test_a_stream_seen_only_in_a_playback_token_counts_from_then_on() -> None:
    """A heartbeat or media request that reaches a process that never saw its stream, carrying the stream's
    playback token: honoured, and the stream counts against the user's limit for new plays decided here."""
    state, _, _ = outage(OutagePolicy.allow)
    state.store_down(Unavailable("gone"))
    assert state.honour("s1", "u1", told()) is not None
    denied = state.decide(request("r1", "phone"), limit=1).decision
    assert (denied.status, denied.reason, denied.active) == (Status.denied, Reason.limit_reached, 1)


def test_ends_not_announced_in_the_outage_are_left_for_after_it_and_carried_when_it_fails() -> None:
    state, _, _ = outage()
    state.store_down(Unavailable("gone"))
    ended = [EndedStream(stream("s1"), Reason.stopped), EndedStream(stream("s2"), Reason.replaced)]
    state.unannounced(ended)
    work = state.store_up()
    assert work is not None
    assert work.unannounced == ended
    assert not work.empty
    state.store_down(Unavailable("again, before the write-back ended"))
    state.carry(work)
    state.unannounced([EndedStream(stream("s3"), Reason.stopped)])
    again = state.store_up()
    assert again is not None
    assert [e.stream.id for e in again.unannounced] == ["s1", "s2", "s3"]


def test_a_stream_known_ended_is_never_honoured_not_even_from_its_playback_token() -> None:
    """Ended here or announced by another process (its `stream_ended` heard): its player's heartbeats in an outage
    are refused, so that the write-back does not bring back a stream replaced or stopped elsewhere."""
    state, clock, _ = outage()
    state.remember([stream("s1"), stream("s2")])
    state.forget(["s1", "s3"])  # s3: never seen here, its end heard
    state.store_down(Unavailable("gone"))
    clock.now += 60
    assert state.honour("s1", "u1") is None
    assert state.honour("s3", "u1", told("s3")) is None  # a valid playback token names it: refused all the same
    assert state.honour("s2", "u1") is not None
    state.remember([stream("s3")])  # the store gives it again (a later play of the same stream id): it plays
    assert state.honour("s3", "u1") is not None


def test_a_stream_known_from_its_token_alone_is_written_back_as_the_token_tells_it() -> None:
    """Its device and start come from the token (its kinds, which the token does not name, are added by the
    write-back: tests/distributed/test_outage.py)."""
    state, clock, _ = outage()
    state.remember([stream("s2")])
    state.store_down(Unavailable("gone"))
    clock.now += 60
    assert state.honour("s1", "u1", told()) is not None
    assert state.honour("s2", "u1") is not None
    work = state.store_up()
    assert work is not None
    assert {(s.id, s.device_id, s.started_at, s.expires_at) for s in work.streams} == {
        ("s1", "tv", T0 - 10, clock.now + LEASE_S),
        ("s2", "tv", T0 - 10, clock.now + LEASE_S),
    }


def test_what_a_process_stopping_in_an_outage_kept_is_the_next_process_s_to_write_back() -> None:
    """The work kept as a process stops in an outage (the keep file's JSON) becomes the next process's outage, down
    since it began in the first: the same streams (kinds and away included), decisions, stops and unannounced
    ends. Reading it takes nothing from the first."""
    state, clock, _ = outage(OutagePolicy.allow)
    state.remember([replace(stream("s1"), kinds=("uhd",), away=True), stream("s2")])
    state.store_down(Unavailable("gone"))
    began = clock.now
    assert state.honour("s1", "u1") is not None
    admitted = state.decide(request("r1", "phone"), limit=3).decision
    assert admitted.status is Status.allowed
    assert state.stopped("s2", "u1") is not None
    state.unannounced([EndedStream(stream("s3"), Reason.stopped)])
    clock.advance(30)
    unwritten = state.unwritten()
    assert unwritten is not None
    kept, since = unwritten
    assert since == began
    assert state.unwritten() == unwritten  # nothing taken

    later, later_clock, _ = outage()
    later_clock.now = began + 100  # the next start, 70 s after the first process stopped
    work, kept_since = reconciliation_from_json(reconciliation_to_json(kept, since), later_clock.now)
    assert (kept_since, work.down_s) == (began, 100)
    later.resume(work)
    assert (later.since, later.mode()) == (began, Mode.grace)
    back = later.store_up()
    assert back is not None
    assert sorted(back.streams, key=lambda s: s.id) == sorted(kept.streams, key=lambda s: s.id)
    assert [s.kinds for s in back.streams if s.id == "s1"] == [("uhd",)]
    assert (back.decisions, back.stopped, back.unannounced) == (kept.decisions, kept.stopped, kept.unannounced)
    assert back.decisions == [admitted]
    assert later.since is None


def test_a_keep_file_that_is_not_one_is_refused() -> None:
    """Not JSON, not an object, fields missing, or of the wrong type (which the write-back would fail on at every
    call): refused as it is read."""
    good = {"id": "s1", "user_id": "u1", "video_id": "v1", "device_id": "tv", "started_at": T0, "expires_at": T0}
    good |= {"device_name": "", "kinds": [], "away": False}
    bad_streams = [{"id": "s1"}, good | {"expires_at": "soon"}, good | {"id": 7}, good | {"kinds": "uhd"}]
    empty = {"since": T0, "decisions": [], "stopped": {}, "unannounced": []}
    raws = [b"", b"[]", b'{"since": 1}'] + [orjson.dumps(empty | {"streams": [s]}) for s in bad_streams]
    raws.append(orjson.dumps(empty | {"streams": [], "stopped": {"s1": {"user": "u1", "reason": "?", "at": T0}}}))
    for raw in raws:
        with pytest.raises((ValueError, KeyError, TypeError, AttributeError)):
            reconciliation_from_json(raw, T0)
    assert reconciliation_from_json(orjson.dumps(empty | {"streams": [good]}), T0)[0].streams[0].id == "s1"


def test_a_stream_the_earlier_process_stopped_is_never_honoured_by_the_one_that_takes_its_work_back() -> None:
    """Its stop and its unannounced ends are taken back with the streams they end: a playback token of one of them
    reaching the new process in the outage is not honoured (it would be written back as playing, and the stop
    skipped as older than its lease)."""
    state, clock, _ = outage()
    state.remember([stream("s1"), stream("s2")])
    state.store_down(Unavailable("gone"))
    assert state.stopped("s1", "u1") is not None
    state.unannounced([EndedStream(stream("s2"), Reason.replaced)])
    unwritten = state.unwritten()
    assert unwritten is not None
    later, later_clock, _ = outage()
    later_clock.now = clock.now + 5
    later.resume(reconciliation_from_json(reconciliation_to_json(*unwritten), later_clock.now)[0])
    assert later.honour("s1", "u1", told("s1")) is None
    assert later.honour("s2", "u1", told("s2")) is None
    assert later.honour("s3", "u1", told("s3")) is not None  # another stream's token still counts


def test_a_keep_file_is_taken_by_one_process_at_a_time_and_left_by_one_that_dies(tmp_path: Path) -> None:
    """Taken under an exclusive lock: another taker gets nothing while it is held, the next gets it once the
    holder lets go (its process ended), and nothing once it is written back (removed); files being written or
    unreadable are not candidates, and a reset removes every keep file."""
    state, clock, _ = outage()
    state.remember([stream("s1")])
    state.store_down(Unavailable("gone"))
    assert state.stopped("s1", "u1") is not None
    unwritten = state.unwritten()
    assert unwritten is not None
    first, second = KeptOutages(tmp_path), KeptOutages(tmp_path)
    kept = first.keep(*unwritten)
    assert kept.name.startswith(PREFIX)
    for other in (f"{PREFIX}2-bb.json.part", f"{PREFIX}3-cc.json.unreadable", "undecided-requests.ndjson"):
        (tmp_path / other).write_text("{}")
    assert [(path, work.stopped) for path, work, _ in first.take(clock.now)] == [(kept, unwritten[0].stopped)]
    assert first.held
    assert second.take(clock.now) == []  # held
    for held in first._held:  # as when its process ends
        held.release()
    first._held.clear()
    assert [path for path, _, _ in second.take(clock.now)] == [kept]
    second.release()
    assert not kept.exists()
    assert not second.held
    assert KeptOutages(tmp_path).take(clock.now) == []
    assert KeptOutages(tmp_path / "absent").take(clock.now) == []
    assert KeptOutages(tmp_path).remove_all() == 2  # the .part and the .unreadable
    assert [p.name for p in tmp_path.iterdir()] == ["undecided-requests.ndjson"]
