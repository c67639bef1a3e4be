"""The Ledger contract, run unchanged against the SQLite and the Redis ledger.

The model-based test replays random sequences of admissions, heartbeats, stops, sweeps and clock moves on a
ledger and on a model made of the pure rule `playgate.admission.decide` alone: every decision, every ended stream
and every read must be the same, so both ledgers follow the one rule (same inputs, same decisions).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from playgate.admission import decide, denied
from playgate.domain import (
    DAY_S,
    Admission,
    Decision,
    EndedStream,
    PlayRequest,
    Policy,
    Quota,
    Reason,
    Rules,
    Status,
    Stream,
    id_owner,
)
from playgate.ledger.protocol import Ledger
from tests.contract.conftest import LEASE_S, LedgerFactory
from tests.support.clock import Clock

USERS = ("u1", "u2", "u3")
VIDEOS = ("v1", "v2", "v3")
DEVICES = ("tv", "phone", "web")


KIND_SETS = ((), ("uhd",), ("live",), ("live", "uhd"))
RULE_SETS = (
    Rules(),
    Rules(kind_limits=(("live", 1), ("uhd", 1))),
    Rules(max_per_title=1),
    Rules(max_devices=2, device_window_s=30.0),
    Rules(max_away_streams=1),
    Rules(kind_limits=(("uhd", 0),), max_per_title=2, max_devices=3, device_window_s=DAY_S, max_away_streams=0),
)
ZERO_UHD = Rules(kind_limits=(("uhd", 0),))
SHADOWS = (None, None, Rules(max_streams=1), Rules(kind_limits=(("uhd", 1),), max_devices=1, max_per_title=1))


# When a request was accepted, unless a test says: after every stream the tests start (a request accepted before
# its device's stream started is a late one, `superseded`).
ACCEPTED_NOW = 4_000_000_000.0


def play(
    rid: str,
    user: str = "u1",
    video: str = "v1",
    device: str = "tv",
    replace_id: str | None = None,
    kinds: tuple[str, ...] = (),
    away: bool = False,
    *,
    own_device: bool = False,
    replace_ids: tuple[str, ...] = (),
    others: bool = False,
    accepted_at: float = ACCEPTED_NOW,
) -> PlayRequest:
    """A play request; its id names its user, as the service's ids do (domain.owned_id), so that a Redis Cluster
    finds its decision from the id alone."""
    owned = rid if id_owner(rid) == user else f"{user.encode().hex()}-{rid}"
    return PlayRequest(
        owned,
        user,
        video,
        device,
        accepted_at=accepted_at,
        replace_stream_ids=(*replace_ids, *([replace_id] if replace_id else [])),
        replace_others=others,
        device_name=f"{device} of {user}",
        replace_device_stream=own_device,
        kinds=kinds,
        away=away,
    )


def admit(request: PlayRequest, limit: int = 3, policy: Policy = Policy.deny, **quota: Any) -> Admission:
    quota.setdefault("rules", Rules(on_limit=policy))
    return Admission(request, Quota(limit, **quota))


async def one(ledger: Ledger, request: PlayRequest, limit: int = 3, **quota: Any) -> Decision:
    [outcome] = await ledger.decide([admit(request, limit, **quota)])
    return outcome.decision


# ---- the rule, case by case ---------------------------------------------------------------------------


async def test_allows_up_to_the_limit_then_denies(make_ledger: LedgerFactory) -> None:
    ledger = await make_ledger()
    decisions = [await one(ledger, play(f"r{i}", video=f"v{i}", device=f"d{i}")) for i in range(4)]
    assert [d.status for d in decisions] == [Status.allowed] * 3 + [Status.denied]
    assert [d.active for d in decisions] == [1, 2, 3, 3]
    assert decisions[3].reason is Reason.limit_reached
    assert decisions[3].limit == 3
    assert len(await ledger.streams("u1")) == 3
    assert await ledger.count_active() == 3


async def test_same_device_and_video_reuses_its_stream_and_renews_it(make_ledger: LedgerFactory, clock: Clock) -> None:
    ledger = await make_ledger()
    first = await one(ledger, play("r1"), limit=1)
    clock.advance(30)
    again = await one(ledger, play("r2"), limit=1)
    assert again.status is Status.allowed
    assert again.stream_id == first.stream_id
    assert again.expires_at == clock.now + LEASE_S
    [stream] = await ledger.streams("u1")
    assert stream.expires_at == clock.now + LEASE_S


async def test_an_allowed_decision_names_its_streams_start_and_whether_it_plays_away(
    make_ledger: LedgerFactory, clock: Clock
) -> None:
    """An allowed decision names its stream's start and away flag, which its playback token names for a process
    that honours the stream from the token alone (the away cap, oldest-first eviction): a new away stream's, and,
    when the same device asks again for the video it plays, the first stream's start (earlier than this decision)
    and away flag, as stored. A denial names neither. The ledger keeps them with the decision."""
    ledger = await make_ledger()
    away = await one(ledger, play("r1", away=True), rules=Rules(max_away_streams=1))
    [stream] = await ledger.streams("u1")
    assert stream.away is True
    assert (away.started_at, away.away) == (stream.started_at, True)
    assert away.started_at == clock.now
    clock.advance(30)
    again = await one(ledger, play("r2"), rules=Rules(max_away_streams=1))  # asked from home now: still away
    assert again.stream_id == away.stream_id
    assert again.decided_at == clock.now
    assert (again.started_at, again.away) == (stream.started_at, True)
    at_home = await one(ledger, play("r3", video="v2", device="phone"))
    assert (at_home.started_at, at_home.away) == (clock.now, False)
    refused = await one(ledger, play("r4", video="v3", device="web", away=True), rules=Rules(max_away_streams=1))
    assert refused.reason is Reason.household_limit
    assert (refused.started_at, refused.away) == (None, False)
    for decision in (away, again, at_home, refused):
        assert await ledger.decision(decision.request_id) == decision


async def test_a_stop_unless_renewed_spares_a_stream_played_again_since(
    make_ledger: LedgerFactory, clock: Clock
) -> None:
    """A stop taken during an outage, written back once the store answers (unless_renewed_after: its instant plus
    a lease): the same device played the same video again meanwhile and got the same stream, renewed; the stop
    leaves it alone, in the same atomic step. A stream not renewed since is stopped."""
    ledger = await make_ledger()
    first = await one(ledger, play("r1"), limit=1)
    taken = clock.now + 1  # the stop, deferred by the outage
    clock.advance(5)
    again = await one(ledger, play("r2"), limit=1)
    assert again.stream_id == first.stream_id
    assert again.expires_at is not None
    assert again.expires_at > taken + LEASE_S
    assert first.stream_id is not None
    kept = await ledger.stop([first.stream_id], "u1", reason=Reason.stopped, unless_renewed_after=taken + LEASE_S)
    assert kept == []
    assert [s.id for s in await ledger.streams("u1")] == [first.stream_id]
    later = clock.now + 1  # a stop taken after that renewal ends it
    stopped = await ledger.stop([first.stream_id], "u1", reason=Reason.stopped, unless_renewed_after=later + LEASE_S)
    assert [s.id for s in stopped] == [first.stream_id]
    assert await ledger.streams("u1") == []


async def test_a_request_is_decided_once(make_ledger: LedgerFactory, clock: Clock) -> None:
    ledger = await make_ledger()
    [decided] = await ledger.decide([admit(play("r1"))])
    first = decided.decision
    clock.advance(1)
    outcomes = await ledger.decide([admit(play("r1")), admit(play("r1"))])
    assert [o.decision for o in outcomes] == [first, first]
    assert [decided.again, *(o.again for o in outcomes)] == [False, True, True]  # told again: listed once already
    assert await ledger.decision(first.request_id) == first
    assert len(await ledger.streams("u1")) == 1
    assert await ledger.decision("nope") is None


async def test_expired_streams_stop_counting_and_are_reported(make_ledger: LedgerFactory, clock: Clock) -> None:
    ledger = await make_ledger()
    old = await one(ledger, play("r1"), limit=1)
    clock.advance(LEASE_S)
    [outcome] = await ledger.decide([admit(play("r2", video="v2"), limit=1)])
    assert outcome.decision.status is Status.allowed
    assert [(e.stream.id, e.reason) for e in outcome.ended] == [(old.stream_id, Reason.expired)]
    assert await ledger.stream(old.stream_id or "") is None


async def test_replace_ends_the_named_stream(make_ledger: LedgerFactory) -> None:
    ledger = await make_ledger()
    a = await one(ledger, play("r1", video="v1"), limit=2)
    await one(ledger, play("r2", video="v2"), limit=2)
    [outcome] = await ledger.decide([admit(play("r3", video="v3", replace_id=a.stream_id), limit=2)])
    assert outcome.decision.status is Status.allowed
    assert [(e.stream.id, e.reason) for e in outcome.ended] == [(a.stream_id, Reason.replaced)]
    assert {s.video_id for s in await ledger.streams("u1")} == {"v2", "v3"}


async def test_watch_here_ends_the_named_streams_in_the_admitting_step(make_ledger: LedgerFactory) -> None:
    ledger = await make_ledger()
    held = [await one(ledger, play(f"r{i}", video=f"v{i}", device=f"d{i}"), limit=3) for i in range(3)]
    ids = tuple(d.stream_id or "" for d in held)
    # A limit lowered to 1: naming two of three streams is not enough, so nothing ends.
    [short] = await ledger.decide([admit(play("r3", device="here", replace_ids=ids[:2]), limit=1)])
    assert short.decision.status is Status.denied
    assert short.ended == ()
    assert {s.id for s in await ledger.streams("u1")} == set(ids)
    # Naming all three (and one id of no live stream) admits the new one and ends exactly those.
    [done] = await ledger.decide([admit(play("r4", device="here", replace_ids=(*ids, "gone-stream")), limit=1)])
    assert done.decision.status is Status.allowed
    assert done.decision.active == 1
    assert ended_set(done.ended) == {(i, "replaced") for i in ids}
    assert [s.id for s in await ledger.streams("u1")] == [done.decision.stream_id]


async def test_watch_here_for_all_others_and_its_denial(make_ledger: LedgerFactory) -> None:
    ledger = await make_ledger()
    for i in range(2):
        await one(ledger, play(f"r{i}", video=f"v{i}", device=f"d{i}", kinds=("uhd",)), limit=2)
    other_user = await one(ledger, play("x1", user="u2", device="d9"), limit=1)
    # A cap no replacement can satisfy (no uhd at all): denied, and both streams still play.
    refused = await ledger.decide([admit(play("r2", device="here", kinds=("uhd",), others=True), 2, rules=ZERO_UHD)])
    assert refused[0].decision.status is Status.denied
    assert refused[0].ended == ()
    assert len(await ledger.streams("u1")) == 2
    [done] = await ledger.decide([admit(play("r3", device="here", others=True), limit=2)])
    assert done.decision.status is Status.allowed
    assert {e.reason for e in done.ended} == {Reason.replaced}
    assert len(done.ended) == 2
    assert [s.id for s in await ledger.streams("u1")] == [done.decision.stream_id]
    assert [s.id for s in await ledger.streams("u2")] == [other_user.stream_id]


async def test_watch_here_in_one_batch_never_exceeds_the_limit(make_ledger: LedgerFactory) -> None:
    """Two devices each asking to watch here in the same batch: each replaces what it named, the limit holds."""
    ledger = await make_ledger()
    held = [await one(ledger, play(f"r{i}", video=f"v{i}", device=f"d{i}"), limit=2) for i in range(2)]
    ids = tuple(d.stream_id or "" for d in held)
    outcomes = await ledger.decide(
        [admit(play("w1", device="tv2", replace_ids=ids), limit=2), admit(play("w2", device="tv3", others=True), 2)]
    )
    assert [o.decision.status for o in outcomes] == [Status.allowed, Status.allowed]
    assert [s.id for s in await ledger.streams("u1")] == [outcomes[1].decision.stream_id]
    assert ended_set(outcomes[1].ended) == {(outcomes[0].decision.stream_id or "", "replaced")}


async def test_evict_oldest_makes_room(make_ledger: LedgerFactory, clock: Clock) -> None:
    ledger = await make_ledger()
    oldest = await one(ledger, play("r1", video="v1"), limit=2)
    clock.advance(1)
    await one(ledger, play("r2", video="v2"), limit=2)
    clock.advance(1)
    [outcome] = await ledger.decide([admit(play("r3", video="v3"), limit=2, policy=Policy.evict_oldest)])
    assert outcome.decision.status is Status.allowed
    assert outcome.decision.active == 2
    assert [(e.stream.id, e.reason) for e in outcome.ended] == [(oldest.stream_id, Reason.evicted)]


@pytest.mark.parametrize(
    ("quota", "reason", "limit"),
    [
        ({"exists": False}, Reason.unknown_user, 0),
        ({"disabled": True}, Reason.user_disabled, 3),
    ],
)
async def test_unknown_and_disabled_users_are_denied(
    make_ledger: LedgerFactory, quota: dict[str, bool], reason: Reason, limit: int
) -> None:
    ledger = await make_ledger()
    decision = await one(ledger, play("r1"), 3, **quota)
    assert (decision.status, decision.reason, decision.limit) == (Status.denied, reason, limit)
    assert await ledger.streams("u1") == []


async def test_heartbeat_stop_and_lookup(make_ledger: LedgerFactory, clock: Clock) -> None:
    ledger = await make_ledger()
    a = await one(ledger, play("r1", video="v1"))
    b = await one(ledger, play("r2", video="v2"))
    assert a.stream_id
    assert b.stream_id
    clock.advance(10)
    renewed = await ledger.heartbeat(a.stream_id, "u1")
    assert renewed is not None
    assert renewed.expires_at == clock.now + LEASE_S
    assert await ledger.heartbeat(a.stream_id, "u2") is None
    assert await ledger.heartbeat("no-such-stream") is None
    found = await ledger.stream(b.stream_id)
    assert found is not None
    assert (found.user_id, found.video_id) == ("u1", "v2")
    assert [s.id for s in await ledger.stop(None, "u1", "v2")] == [b.stream_id]
    assert await ledger.stop([b.stream_id], "u1") == []
    assert [s.id for s in await ledger.stop(None, "u1")] == [a.stream_id]
    assert await ledger.streams("u1") == []
    clock.advance(LEASE_S + 1)
    assert await ledger.heartbeat(a.stream_id) is None


async def test_restore_writes_back_streams_of_an_outage(make_ledger: LedgerFactory, clock: Clock) -> None:
    """restore() (the outage policy's write-back): an absent or expired stream is stored as given, a live one keeps
    the later expiry, one whose own lease ran out is left out; limits are not checked."""
    ledger = await make_ledger()
    held = await one(ledger, play("r1", video="v1"), limit=1)
    assert held.stream_id
    owner = b"u1".hex()
    clock.advance(1)
    outage = Stream(f"{owner}-o1", "u1", "v2", "phone", clock.now, clock.now + 2 * LEASE_S, "phone", ("uhd",), True)
    stale = Stream(f"{owner}-o2", "u1", "v3", "web", clock.now - 3 * LEASE_S, clock.now - 1)
    assert await ledger.restore([outage, stale]) == 1
    assert await ledger.restore([replace(outage, expires_at=clock.now + LEASE_S / 2)]) == 0  # earlier: kept
    assert [s.id for s in await ledger.streams("u1")] == [held.stream_id, outage.id]  # over the limit of 1
    assert await ledger.stream(outage.id) == outage
    clock.advance(LEASE_S + 1)  # the decided stream's lease ran out, the restored one's not
    again = replace(outage, expires_at=clock.now + 3 * LEASE_S)
    gone = await ledger.stream(held.stream_id)
    assert gone is None
    # the lease ran out unswept: the stream keeps its own fields, with the later expiry
    assert await ledger.restore([again, Stream(held.stream_id, "u1", "v9", "", 0.0, clock.now + LEASE_S)]) == 2
    streams = {s.id: s for s in await ledger.streams("u1")}
    assert {sid: s.expires_at for sid, s in streams.items()} == {
        held.stream_id: clock.now + LEASE_S,
        outage.id: again.expires_at,
    }
    assert (streams[held.stream_id].video_id, streams[held.stream_id].device_id) == ("v1", "tv")


async def test_streams_come_oldest_first_then_by_id(make_ledger: LedgerFactory, clock: Clock) -> None:
    ledger = await make_ledger()
    same_instant = await ledger.decide([admit(play(f"r{i}", video=f"v{i}"), limit=5) for i in range(3)])
    clock.advance(1)
    newest = await one(ledger, play("r3", video="v3"), limit=5)
    started = sorted(o.decision.stream_id or "" for o in same_instant)
    expected = [*started, newest.stream_id]
    assert [s.id for s in await ledger.streams("u1")] == expected
    assert [s.id for s in await ledger.stop(None, "u1")] == expected


async def test_kept_decisions_are_told_and_never_replace_one(make_ledger: LedgerFactory, clock: Clock) -> None:
    ledger = await make_ledger()
    allowed = await one(ledger, play("r1"))
    given_up = [denied(play(rid), Reason.error, 0, 0, clock.now) for rid in ("r1", "r2")]
    await ledger.keep(given_up)
    assert await ledger.decision(allowed.request_id) == allowed
    assert await ledger.decision(given_up[1].request_id) == given_up[1]
    await ledger.keep([])


async def test_idempotency_keys_bind_once_per_user(make_ledger: LedgerFactory) -> None:
    ledger = await make_ledger()
    first = await ledger.claim_key("u1", "k", "r1", "v1")
    again = await ledger.claim_key("u1", "k", "r2", "v2")
    other = await ledger.claim_key("u2", "k", "r3", "v1")
    assert (first.request_id, first.created) == ("r1", True)
    assert (again.request_id, again.fingerprint, again.created) == ("r1", "v1", False)
    assert (other.request_id, other.created) == ("r3", True)


async def test_sweep_ends_each_expired_stream_once_among_concurrent_sweepers(
    make_ledger: LedgerFactory, clock: Clock
) -> None:
    ledger = await make_ledger()
    for n, user in enumerate(USERS):
        for v in range(2):
            await one(ledger, play(f"r{n}-{v}", user=user, video=f"v{v}"))
    clock.advance(LEASE_S)
    survivor = await one(ledger, play("late", user="u1", video="v9"))
    sweepers = [await make_ledger() for _ in range(3)]
    swept = await asyncio.gather(*(s.sweep() for s in sweepers))
    ended = [e for batch in swept for e in batch]
    assert len(ended) == 6 - 2  # u1's two expired streams were already ended by the late admission
    assert len({e.stream.id for e in ended}) == len(ended)
    assert all(e.reason is Reason.expired for e in ended)
    assert [s.id for s in await ledger.streams("u1")] == [survivor.stream_id]
    assert await ledger.count_active() == 1


async def test_concurrent_clients_never_exceed_the_limit(make_ledger: LedgerFactory) -> None:
    clients = [await make_ledger() for _ in range(4)]
    batches = [
        [admit(play(f"c{c}-r{i}", video=f"v{c}-{i}", device=f"d{c}-{i}"), limit=2) for i in range(5)]
        for c in range(len(clients))
    ]
    results = await asyncio.gather(*(c.decide(b) for c, b in zip(clients, batches, strict=True)))
    allowed = [o.decision for batch in results for o in batch if o.decision.status is Status.allowed]
    assert len(allowed) == 2
    assert all(o.decision.active <= 2 for batch in results for o in batch)
    assert len(await clients[0].streams("u1")) == 2


async def test_next_episode_on_the_same_device_replaces_its_own_stream(make_ledger: LedgerFactory) -> None:
    ledger = await make_ledger()
    [first] = await ledger.decide([admit(play("r1", video="ep1", own_device=True), limit=1)])
    [second] = await ledger.decide([admit(play("r2", video="ep2", own_device=True), limit=1)])
    assert second.decision.status is Status.allowed
    assert [(e.stream.id, e.reason) for e in second.ended] == [(first.decision.stream_id, Reason.replaced)]
    [stream] = await ledger.streams("u1")
    assert (stream.video_id, stream.device_name) == ("ep2", "tv of u1")


async def test_a_late_request_of_a_device_does_not_replace_the_stream_of_its_later_one(
    make_ledger: LedgerFactory, clock: Clock
) -> None:
    """Decided out of order (another worker was faster, or this one was taken over from a worker that died): the
    device's older wish is denied (`superseded`) and the stream it asked for later keeps playing."""
    ledger = await make_ledger()
    late = play("r1", video="ep1", own_device=True, accepted_at=clock())
    clock.advance(5)
    newer = await one(ledger, play("r2", video="ep2", own_device=True, accepted_at=clock()), limit=1)
    [outcome] = await ledger.decide([admit(late, limit=1)])
    assert (outcome.decision.status, outcome.decision.reason) == (Status.denied, Reason.superseded)
    assert not outcome.ended
    assert [s.id for s in await ledger.streams("u1")] == [newer.stream_id]
    # Within the clocks' tolerance (accepted half a second before the device's stream started) it replaces it.
    clock.advance(1)
    close = play("r3", video="ep3", own_device=True, accepted_at=clock() - 1.5)
    [replacing] = await ledger.decide([admit(close, limit=1)])
    assert replacing.decision.status is Status.allowed
    assert [(e.stream.id, e.reason) for e in replacing.ended] == [(newer.stream_id, Reason.replaced)]


async def test_a_denial_at_the_limit_names_the_streams_holding_it(make_ledger: LedgerFactory, clock: Clock) -> None:
    ledger = await make_ledger()
    await one(ledger, play("r1", video="v1", device="tv"), limit=2)
    clock.advance(1)
    await one(ledger, play("r2", video="v2", device="phone"), limit=2)
    [denied] = await ledger.decide([admit(play("r3", video="v3", device="web"), limit=2)])
    assert denied.decision.reason is Reason.limit_reached
    assert [(s.video_id, s.device_id, s.device_name) for s in denied.conflicts] == [
        ("v1", "tv", "tv of u1"),
        ("v2", "phone", "phone of u1"),
    ]
    [again] = await ledger.decide([admit(play("r3", video="v3", device="web"), limit=2)])
    assert again.decision == denied.decision


async def test_concurrent_next_episodes_never_exceed_the_limit(make_ledger: LedgerFactory) -> None:
    clients = [await make_ledger() for _ in range(4)]
    # Four ledgers at once, each a device asking for episode after episode: one slot per device at most.
    batches = [
        [admit(play(f"c{c}-r{i}", video=f"ep{i}", device=f"d{c % 3}", own_device=True), limit=2) for i in range(5)]
        for c in range(len(clients))
    ]
    results = await asyncio.gather(*(c.decide(b) for c, b in zip(clients, batches, strict=True)))
    assert all(o.decision.active <= 2 for batch in results for o in batch)
    streams = await clients[0].streams("u1")
    assert len(streams) <= 2
    assert len({s.device_id for s in streams}) == len(streams)


async def test_stop_video_ends_every_users_streams_of_that_video(make_ledger: LedgerFactory) -> None:
    ledger = await make_ledger()
    for user in ("u1", "u2"):
        await one(ledger, play(f"{user}-a", user=user, video="gone", device="tv"))
        await one(ledger, play(f"{user}-b", user=user, video="kept", device="phone"))
    stopped = await ledger.stop_video("gone")
    assert sorted((s.user_id, s.video_id) for s in stopped) == [("u1", "gone"), ("u2", "gone")]
    for user in ("u1", "u2"):
        assert [s.video_id for s in await ledger.streams(user)] == ["kept"]
    assert await ledger.stop_video("gone") == []


# ---- model-based: the ledger against the pure rule --------------------------------------------------------


@dataclass
class Model:
    """What a ledger should hold, kept with nothing but admission.decide."""

    policy: Policy
    streams: dict[str, list[Stream]] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    devices: dict[str, dict[str, float]] = field(default_factory=dict)

    def admit(
        self, admission: Admission, now: float, stream_id: str | None
    ) -> tuple[Decision, set[tuple[str, str]], tuple[Stream, ...]]:
        request = admission.request
        verdict = decide(
            request,
            streams=self.streams.get(request.user_id, []),
            quota=admission.quota,
            now=now,
            lease_s=LEASE_S,
            new_stream_id=stream_id or "unused",
            prior=self.decisions.get(request.request_id),
            devices=self.devices.get(request.user_id, {}),
        )
        self.streams[request.user_id] = list(verdict.streams)
        if verdict.devices is not None:
            self.devices[request.user_id] = dict(verdict.devices)
        self.decisions.setdefault(request.request_id, verdict.decision)
        ended = {(e.stream.id, e.reason.value) for e in verdict.ended}
        return verdict.decision, ended, verdict.conflicts

    def live(self, user_id: str, now: float) -> list[Stream]:
        return sorted((s for s in self.streams.get(user_id, []) if s.live(now)), key=lambda s: (s.started_at, s.id))

    def all_ids(self) -> list[str]:
        return [s.id for streams in self.streams.values() for s in streams]


def ended_set(ended: tuple[EndedStream, ...] | list[EndedStream]) -> set[tuple[str, str]]:
    return {(e.stream.id, e.reason.value) for e in ended}


async def step_admit(ledger: Ledger, model: Model, rng: random.Random, now: float, counter: list[int]) -> None:
    batch = []
    for _ in range(rng.randint(1, 4)):
        user = rng.choice(USERS)
        if model.decisions and rng.random() < 0.15:
            rid = rng.choice(sorted(model.decisions))  # a redelivery: same request again
            prior = model.decisions[rid]
            request = play(rid, prior.user_id, prior.video_id, prior.device_id)
        else:
            counter[0] += 1
            own = model.streams.get(user, [])
            replace_id = rng.choice(own).id if own and rng.random() < 0.2 else None
            replace_ids = tuple(s.id for s in own if rng.random() < 0.5) if rng.random() < 0.1 else ()
            others = rng.random() < 0.05
            own_device = rng.random() < 0.5
            kinds = rng.choice(KIND_SETS)
            away = rng.random() < 0.3
            request = play(
                f"r{counter[0]}",
                user,
                rng.choice(VIDEOS),
                rng.choice(DEVICES),
                replace_id,
                kinds,
                away,
                own_device=own_device,
                replace_ids=replace_ids,
                others=others,
            )
        limit = rng.choice((0, 1, 2, 2, 3, 3))
        rules = replace(rng.choice(RULE_SETS), on_limit=model.policy)
        quota = Quota(
            limit,
            disabled=rng.random() < 0.05,
            exists=rng.random() > 0.03,
            rules=rules,
            shadow=rng.choice(SHADOWS),
        )
        batch.append(Admission(request, quota))
    outcomes = await ledger.decide(batch)
    assert len(outcomes) == len(batch)
    for admission, outcome in zip(batch, outcomes, strict=True):
        expected, expected_ended, expected_conflicts = model.admit(admission, now, outcome.decision.stream_id)
        assert outcome.decision == expected
        assert ended_set(outcome.ended) == expected_ended
        assert outcome.conflicts == expected_conflicts


async def step_heartbeat(ledger: Ledger, model: Model, rng: random.Random, now: float) -> None:
    ids = model.all_ids()
    stream_id = rng.choice(ids) if ids and rng.random() < 0.9 else "unknown-stream"
    as_user = rng.choice((None, *USERS))
    got = await ledger.heartbeat(stream_id, as_user)
    for user, streams in model.streams.items():
        for i, s in enumerate(streams):
            if s.id == stream_id and s.live(now) and as_user in (None, user):
                streams[i] = replace(s, expires_at=now + LEASE_S)
                assert got == streams[i]
                return
    assert got is None


async def step_stop(ledger: Ledger, model: Model, rng: random.Random, now: float) -> None:
    user = rng.choice(USERS)
    own = model.streams.get(user, [])
    mode = rng.choice(("ids", "all", "video"))
    ids = [s.id for s in own if rng.random() < 0.5] if mode == "ids" else None
    video = rng.choice(VIDEOS) if mode == "video" else None
    got = await ledger.stop(ids, user, video)
    gone = [s for s in own if (ids is None or s.id in ids) and (video is None or s.video_id == video)]
    model.streams[user] = [s for s in own if s not in gone]
    expected = sorted((s for s in gone if s.live(now)), key=lambda s: (s.started_at, s.id))
    assert sorted(got, key=lambda s: (s.started_at, s.id)) == expected


async def step_sweep(ledger: Ledger, model: Model, now: float) -> None:
    got = await ledger.sweep()
    expired = {(s.id, "expired") for streams in model.streams.values() for s in streams if not s.live(now)}
    for user, streams in model.streams.items():
        model.streams[user] = [s for s in streams if s.live(now)]
    assert ended_set(got) == expired


async def check_reads(ledger: Ledger, model: Model, rng: random.Random, now: float) -> None:
    for user in USERS:
        assert await ledger.streams(user) == model.live(user, now)
        devices = {d.id: d.last_seen_at for d in await ledger.devices(user)}
        assert devices == model.devices.get(user, {})
    assert await ledger.count_active() == sum(len(model.live(u, now)) for u in USERS)
    if model.decisions:
        rid = rng.choice(sorted(model.decisions))
        assert await ledger.decision(rid) == model.decisions[rid]
    ids = model.all_ids()
    if ids:
        sid = rng.choice(ids)
        expected = next((s for u in USERS for s in model.live(u, now) if s.id == sid), None)
        assert await ledger.stream(sid) == expected


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("seed", range(6))
async def test_ledger_follows_the_pure_rule(
    make_ledger: LedgerFactory, clock: Clock, policy: Policy, seed: int
) -> None:
    ledger = await make_ledger()
    model = Model(policy)
    rng = random.Random(f"{seed}-{policy.value}")
    counter = [0]
    for _ in range(60):
        roll = rng.random()
        if roll < 0.55:
            await step_admit(ledger, model, rng, clock.now, counter)
        elif roll < 0.7:
            await step_heartbeat(ledger, model, rng, clock.now)
        elif roll < 0.8:
            await step_stop(ledger, model, rng, clock.now)
        elif roll < 0.87:
            await step_sweep(ledger, model, clock.now)
        else:
            clock.advance(rng.choice((0.25, 1.0, 10.0, LEASE_S / 2, LEASE_S)))
        await check_reads(ledger, model, rng, clock.now)
