"""The outage policy: while the ledger's store (Redis, or the database) does not answer, streams already allowed keep
playing for a grace period, from the signed playback token and this process's lease cache, and new plays follow
PLAYGATE_OUTAGE_POLICY; once the store answers again, what was decided meanwhile is written back (reconciled).

The state here is one process's: each API process knows the streams it has renewed or admitted itself (and those
whose playback tokens its content gate has seen). It holds no I/O of its own: the service asks it, and hands what it
gives back to the ledger.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from playgate.domain import Decision, EndedStream, OutagePolicy, Outcome, PlayRequest, Reason, Status, Stream
from playgate.errors import Unavailable
from playgate.metrics import Metrics
from playgate.values import frozen

log = logging.getLogger("playgate.outage")

# Streams one process remembers for the outage branch; the least recently seen go first beyond it.
MAX_CACHED_STREAMS = 200_000
# Stream ends one process could not announce while the store (and the fan-out on it) was down, kept to announce
# once it answers; the oldest go first beyond it.
MAX_UNANNOUNCED = 100_000
# While the store is down, at most one request a PROBE_INTERVAL_S tries it; the others are answered at once from
# the cache (a frozen Redis would hold each one for the client's socket timeout).
PROBE_INTERVAL_S = 1.0
# A stream admitted under the `allow` policy carries this mark after its user's part of the id, so that whichever
# process renews it after the outage knows why it ends when it is over the limit (Reason.outage_reconciled).
OUTAGE_MARK = "o"
RETRY_AFTER_S = 5


class Mode(StrEnum):
    """The mode in force (the `playgate_outage_mode` metric: normal 0, grace 1, expired 2)."""

    normal = "normal"
    grace = "grace"
    expired = "expired"


MODE_VALUE = {Mode.normal: 0, Mode.grace: 1, Mode.expired: 2}


class OutageRefused(Unavailable):
    """A new play while the store is down under the `deny` policy: 503 with Retry-After."""

    @property
    def headers(self) -> dict[str, str]:
        """When to try again."""
        return {"Retry-After": str(RETRY_AFTER_S)}


def outage_stream_id(user_id: str) -> str:
    """A stream id for a stream admitted during an outage: an owned id (`<user as hex>-o<random>`)."""
    return f"{user_id.encode().hex()}-{OUTAGE_MARK}{secrets.token_hex(12)}"


def admitted_in_outage(stream_id: str) -> bool:
    """Whether a stream was admitted under the `allow` outage policy (its id says so)."""
    return stream_id.partition("-")[2].startswith(OUTAGE_MARK)


def _stream_of(
    request: PlayRequest, stream_id: str, started_at: float, expires_at: float, *, away: bool | None = None
) -> Stream:
    """The stream an allowed request started (away from the household as the request, unless `away` says)."""
    return Stream(
        id=stream_id,
        user_id=request.user_id,
        video_id=request.video_id,
        device_id=request.device_id,
        started_at=started_at,
        expires_at=expires_at,
        device_name=request.device_name,
        kinds=request.kinds,
        away=request.away if away is None else away,
    )


@frozen
class DeferredStop:
    """A stop taken while the store was down, to apply once it answers: whose stream, why it ends, and when (this
    process's clock) it was taken."""

    user_id: str
    reason: Reason
    at: float


@dataclass
class Reconciliation:
    """What an outage left to write back once the store answers: streams to restore (admitted under `allow`, or
    kept playing in the grace), decisions to keep, streams stopped meanwhile (and why), and the stream ends that
    could not be announced."""

    streams: list[Stream] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    stopped: dict[str, DeferredStop] = field(default_factory=dict)  # by stream id
    unannounced: list[EndedStream] = field(default_factory=list)
    down_s: float = 0.0

    @property
    def empty(self) -> bool:
        """Nothing to write back."""
        return not (self.streams or self.decisions or self.stopped or self.unannounced)


class Outage:
    """One process's view of the ledger's store: up, or down since when; the leases it knows; what it decided while
    the store was down."""

    def __init__(
        self,
        *,
        policy: OutagePolicy,
        grace_s: float,
        lease_s: float,
        metrics: Metrics,
        clock: Callable[[], float],
        max_cached: int = MAX_CACHED_STREAMS,
    ) -> None:
        self.policy = policy
        self.grace_s = grace_s
        self._lease_s = lease_s
        self._metrics = metrics
        self._clock = clock
        self._max_cached = max_cached
        self._leases: OrderedDict[str, Stream] = OrderedDict()
        # Streams known to have ended (here, or announced by another process): never honoured, not even from a
        # playback token; the newest max_cached of them.
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.since: float | None = None
        self._probed_at = 0.0
        self._honoured: set[str] = set()
        self._admitted: dict[str, Stream] = {}
        self._decisions: dict[str, Decision] = {}
        self._stopped: dict[str, DeferredStop] = {}
        self._unannounced: deque[EndedStream] = deque(maxlen=MAX_UNANNOUNCED)
        self._set_mode(Mode.normal)

    # ---- state ------------------------------------------------------------------------------------------

    def mode(self, now: float | None = None) -> Mode:
        """normal, grace (down for less than the grace), or expired (down for longer)."""
        if self.since is None:
            return Mode.normal
        now = self._clock() if now is None else now
        return Mode.grace if now - self.since < self.grace_s else Mode.expired

    def _set_mode(self, mode: Mode) -> None:
        self._metrics.outage_mode.set(MODE_VALUE[mode])

    def describe(self) -> str:
        """The mode in force as /readyz shows it."""
        mode = self.mode()
        if mode is Mode.normal:
            return "normal"
        assert self.since is not None
        down_s = self._clock() - self.since
        if mode is Mode.grace:
            return (
                f"grace: ledger store down for {down_s:.0f} s; playing streams honoured up to "
                f"{self.grace_s:g} s, new plays {self.policy.value}"
            )
        return f"expired: ledger store down for {down_s:.0f} s, past the {self.grace_s:g} s grace"

    def store_down(self, exc: Exception) -> None:
        """The store failed a call: the outage starts now (if it had not already)."""
        now = self._clock()
        self._probed_at = now
        if self.since is None:
            self.since = now
            self._set_mode(Mode.grace)
            log.warning(
                "outage mode: the ledger store does not answer (%s); playing streams honoured for %g s, new plays: %s",
                exc,
                self.grace_s,
                self.policy.value,
            )
        elif self.mode(now) is Mode.expired:
            self._set_mode(Mode.expired)

    def should_try_store(self) -> bool:
        """True unless the store is down and was tried less than PROBE_INTERVAL_S ago (then answer at once)."""
        if self.since is None:
            return True
        now = self._clock()
        if now - self._probed_at >= PROBE_INTERVAL_S:
            self._probed_at = now
            return True
        return False

    def decides_without_store(self) -> bool:
        """Whether a new play is decided here without trying the store: under `allow`, while the store is down and
        was tried less than PROBE_INTERVAL_S ago. Under `deny` a new play always tries the store, so that none is
        refused once it answers again."""
        return self.policy is OutagePolicy.allow and not self.should_try_store()

    def store_up(self) -> Reconciliation | None:
        """The store answered: the outage (if any) is over; what it left to write back."""
        unwritten = self.unwritten()
        if unwritten is None:
            return None
        work, _since = unwritten
        self.since = None
        self._honoured.clear()
        self._admitted.clear()
        self._decisions.clear()
        self._stopped.clear()
        self._unannounced.clear()
        self._set_mode(Mode.normal)
        return work

    def carry(self, work: Reconciliation) -> None:
        """A reconciliation that failed half-way: its work is done again when the store answers next (restoring,
        keeping and stopping are each idempotent)."""
        for stream in work.streams:
            self.remember([stream])
            self._honoured.add(stream.id)
        self._decisions.update({d.request_id: d for d in work.decisions})
        self._stopped.update(work.stopped)
        self._unannounced.extendleft(reversed(work.unannounced))
        if self.since is not None:
            self.since = min(self.since, self._clock() - work.down_s)

    def resume(self, work: Reconciliation) -> None:
        """Work an earlier process on this data dir kept as it stopped with the store down: this process carries on
        with that outage (down since then) and writes the work back when the store answers."""
        if self.since is None:
            self.since = self._clock() - work.down_s
            self._set_mode(self.mode())
        # Streams the earlier process stopped, or ended unannounced: never honoured here, not even from a token.
        self.forget([*work.stopped, *(e.stream.id for e in work.unannounced)])
        self.carry(work)

    def unwritten(self) -> tuple[Reconciliation, float] | None:
        """What the outage under way would write back (without taking it), and when it began; None when there is
        no outage."""
        if self.since is None:
            return None
        work = Reconciliation(
            streams=[s for sid in self._honoured | set(self._admitted) if (s := self._leases.get(sid)) is not None]
            + [s for sid, s in self._admitted.items() if sid not in self._leases],
            decisions=list(self._decisions.values()),
            stopped=dict(self._stopped),
            unannounced=list(self._unannounced),
            down_s=self._clock() - self.since,
        )
        return work, self.since

    # ---- leases -----------------------------------------------------------------------------------------

    def remember(self, streams: Iterable[Stream]) -> None:
        """Streams the store gave (renewed, listed, admitted): kept for the outage branch."""
        for stream in streams:
            self._leases[stream.id] = stream
            self._leases.move_to_end(stream.id)
            self._ended.pop(stream.id, None)  # the store gives it: it plays
        while len(self._leases) > self._max_cached:
            self._leases.popitem(last=False)

    def admitted(self, request: PlayRequest, decision: Decision) -> None:
        """A decision this process answered: its stream, if allowed, is remembered, with the start and away flag
        the decision names (a decision that names no start, from a worker of the version before: the decision's
        instant and the request's flag)."""
        if decision.stream_id is None or decision.expires_at is None:
            return
        if decision.started_at is None:
            started_at, away = decision.decided_at, request.away
        else:
            started_at, away = decision.started_at, decision.away
        self.remember([_stream_of(request, decision.stream_id, started_at, decision.expires_at, away=away)])

    def held(self) -> str:
        """What this process holds for the write-back, in words."""
        streams = len(self._honoured | set(self._admitted))
        return (
            f"{streams} stream(s) kept playing or admitted, {len(self._decisions)} decision(s), "
            f"{len(self._stopped)} stop(s)"
        )

    def forget(self, stream_ids: Iterable[str]) -> None:
        """Streams that ended (here, or in another process that announced it): never honoured again, whatever
        playback token names them."""
        for stream_id in stream_ids:
            self._leases.pop(stream_id, None)
            self._ended[stream_id] = None
            self._ended.move_to_end(stream_id)
        while len(self._ended) > self._max_cached:
            self._ended.popitem(last=False)

    def honour(self, stream_id: str, user_id: str, told: Stream | None = None) -> Stream | None:
        """A playing stream's request while the store is down: the stream with its lease renewed locally, if it
        is known (from the cache, or as a playback token's claims tell it, `told`: its video, device and start;
        no kinds: the write-back gives it its video's) and the outage is within its grace; else
        None."""
        now = self._clock()
        if self.mode(now) is not Mode.grace or stream_id in self._ended:
            return None
        known = self._leases.get(stream_id)
        if known is not None:
            if known.user_id != user_id or (self.since is not None and known.expires_at <= self.since):
                return None  # another user's, or it had ended before the outage began
            base = known
        elif told is not None:
            base = told  # a valid playback token's stream
        else:
            return None  # never seen by this process
        renewed = replace(base, expires_at=now + self._lease_s)
        self.remember([renewed])
        self._honoured.add(stream_id)
        return renewed

    def stopped(self, stream_id: str, user_id: str, reason: Reason = Reason.stopped) -> Stream | None:
        """A stop while the store is down: the stream leaves the cache, and is stopped in the store after (its end
        recorded there with `reason`); the stream it was, if this process knew it."""
        known = self._leases.pop(stream_id, None)
        if known is None or known.user_id != user_id:
            return None
        self._stopped[stream_id] = DeferredStop(user_id, reason, self._clock())
        self._honoured.discard(stream_id)
        self._admitted.pop(stream_id, None)
        return known

    def unannounced(self, ended: Iterable[EndedStream]) -> None:
        """Stream ends the fan-out could not carry while the store was down: announced once it answers."""
        self._unannounced.extend(ended)

    # ---- new plays --------------------------------------------------------------------------------------

    def decide(self, request: PlayRequest, limit: int, policy: OutagePolicy | None = None) -> Outcome:
        """A new play while the store is down, by `policy` (the user's plan's `onOutage`), else the deployment's:
        OutageRefused under `deny` (or past the grace); under `allow`, an allowed decision while the user's streams
        known here are below `limit` (a denial at the limit), kept to be written back, with the streams it
        replaced (the asking device's own, or those the request named), ended as `replaced`."""
        now = self._clock()
        policy = policy or self.policy
        if policy is OutagePolicy.deny or self.mode(now) is not Mode.grace:
            raise OutageRefused(
                "The stream ledger is down: new plays are refused until it is back "
                f"(outage policy {policy.value}); streams already playing go on. Try again later."
            )
        live: list[Stream] = []
        replaced: list[Stream] = []
        named = set(request.replace_stream_ids)
        for s in self._leases.values():
            if s.user_id == request.user_id and s.live(now):
                mine = request.replace_device_stream and s.device_id == request.device_id
                (replaced if mine or request.replace_others or s.id in named else live).append(s)
        decision = Decision(
            request_id=request.request_id,
            user_id=request.user_id,
            video_id=request.video_id,
            device_id=request.device_id,
            status=Status.denied,
            active=len(live),
            limit=limit,
            decided_at=now,
            reason=Reason.limit_reached,
        )
        ended: list[EndedStream] = []
        if len(live) < limit:
            stream = _stream_of(request, outage_stream_id(request.user_id), now, now + self._lease_s)
            for gone in replaced:  # the device's stream before (the episode before the next), stopped after
                self.stopped(gone.id, gone.user_id, Reason.replaced)
                ended.append(EndedStream(gone, Reason.replaced))
            self.remember([stream])
            self._admitted[stream.id] = stream
            decision = replace(
                decision,
                status=Status.allowed,
                active=len(live) + 1,
                reason=None,
                stream_id=stream.id,
                expires_at=stream.expires_at,
                started_at=stream.started_at,
                away=stream.away,
            )
        self._decisions[request.request_id] = decision
        self._metrics.outage_decisions.labels(decision.status.value).inc()
        return Outcome(decision, tuple(ended))

    def decision(self, request_id: str) -> Decision | None:
        """A decision made here during the current outage."""
        return self._decisions.get(request_id)
