"""The admission loop: take a batch, look up quotas, decide in the ledger, publish, acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from playgate import tracing
from playgate.admission import denied
from playgate.audit import AuditTrail
from playgate.bus.protocol import Delivery, Fanout, RequestQueue, observe_queue
from playgate.catalog.service import Catalog
from playgate.domain import Admission, Decision, Outcome, Reason
from playgate.errors import Unavailable
from playgate.ledger.protocol import Ledger
from playgate.metrics import Metrics

log = logging.getLogger("playgate.worker")
# One line per decision, on a logger of its own so that it can be turned down alone.
decision_log = logging.getLogger("playgate.decision")

MAX_ATTEMPTS = 5
# The longest pause between tries while the ledger does not answer: the worker decides again at most this long
# after it is back (its connections reconnect by themselves, see playgate.connections).
BACKOFF_MAX_S = 0.5


def decision_fields(decision: Decision, latency_s: float, attempts: int) -> dict[str, object]:
    """The fields of a decision's log line: who, what, the outcome and how long it took."""
    return {
        "request_id": decision.request_id,
        "user_id": decision.user_id,
        "video_id": decision.video_id,
        "device_id": decision.device_id,
        "stream_id": decision.stream_id,
        "decision": decision.status.value,
        "reason": decision.why,
        "shadow_reason": decision.shadow_reason,
        "active": decision.active,
        "limit": decision.limit,
        "latency_ms": round(latency_s * 1000, 3),
        "attempts": attempts,
    }


class Worker:
    """Decides queued play requests in batches; each batch is one ledger transaction, then one publish."""

    def __init__(
        self,
        *,
        queue: RequestQueue,
        ledger: Ledger,
        fanout: Fanout,
        catalog: Catalog,
        metrics: Metrics,
        clock: Callable[[], float],
        batch_size: int,
        sweep_interval_s: float,
        max_attempts: int = MAX_ATTEMPTS,
        audit: AuditTrail | None = None,
        sweep_hold_s: float = 0.0,
        lists_shadow: bool = True,
        traced: bool = False,
        sweep_held: bool = False,
    ) -> None:
        self._queue = queue
        self._ledger = ledger
        self._fanout = fanout
        self._catalog = catalog
        self._metrics = metrics
        self._clock = clock
        self.batch_size = batch_size
        self.sweep_interval_s = sweep_interval_s
        self.max_attempts = max_attempts
        self._audit = audit
        self._failures = 0
        self._held: list[Delivery] = []  # taken, not decided: the ledger's store did not answer
        # After the ledger's store was down, expired leases are not swept for this long: their players could not
        # renew them meanwhile (the outage policy honoured them), and their next heartbeats renew them.
        self.sweep_hold_s = sweep_hold_s
        # Started with an earlier process's outage still to write back (outage_taken_back): swept as after an
        # outage, once the store answers and sweep_hold_s later.
        self.sweep_held = sweep_held
        # False where the ledger lists shadow denials in the transaction of their decisions (embedded, LedgerEvents).
        self.lists_shadow = lists_shadow
        # PLAYGATE_TRACING: a span per decision, in the trace of the request (playgate.tracing).
        self.traced = traced

    async def run(self, stop: asyncio.Event, *, poll_s: float = 0.5) -> None:
        """Decide batches until `stop` is set, then drain what is already queued (burst mode) and return."""
        while not stop.is_set():
            try:
                await self.step(wait_s=poll_s)
            except Unavailable as exc:
                await self._back_off(stop, exc)
            except Exception as exc:  # a bug must not silently end the loop: log it, retry the batch later
                log.exception("worker step failed")
                await self._back_off(stop, exc)
        drained = 0
        while True:
            try:
                decided = await self.step(wait_s=0)
            except Unavailable as exc:
                log.error("worker stopping with undecided requests: %s", exc)
                return
            if decided == 0:
                break
            drained += decided
        if drained:
            log.info("worker drained %d queued requests before stopping", drained)

    async def step(self, *, wait_s: float) -> int:
        """Decide one batch; returns how many requests it decided (0 when the queue was empty)."""
        deliveries, self._held = self._held or await self._queue.take(self.batch_size, wait_s), []
        if not deliveries:
            self._metrics.queue_lag.set(0)
            return 0
        oldest_s = min(d.request.accepted_at for d in deliveries)
        self._metrics.queue_lag.set(max(0.0, self._clock() - oldest_s))
        poisoned = [d for d in deliveries if d.attempts > self.max_attempts]
        healthy = [d for d in deliveries if d.attempts <= self.max_attempts]
        try:
            outcomes = await self._decide(healthy)
        except Unavailable:
            # The ledger's store (or the catalogue) does not answer: the requests are not at fault. Kept in hand,
            # uncounted, and decided first once it answers (a request is decided once, should another worker
            # claim it meanwhile), not dead-lettered after a long outage, nor lost.
            self._metrics.ledger_errors.inc()
            self._held = list(deliveries)
            raise
        except Exception:
            self._metrics.ledger_errors.inc()
            await self._queue.release(healthy)
            await self._fail(poisoned)
            raise
        # Listed before the players hear: whoever reads a decision finds its shadow denial listed too.
        await self._record_shadow(outcomes)
        await self._fanout.publish(outcomes)
        await self._queue.ack(healthy)
        await self._fail(poisoned)
        self._observe(healthy, outcomes)
        self._failures = 0
        return len(deliveries)

    async def _decide(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        if not deliveries:
            return []
        quotas = await self._catalog.quotas({d.request.user_id for d in deliveries})
        admissions = [Admission(d.request, quotas[d.request.user_id]) for d in deliveries]
        return await self._ledger.decide(admissions)

    async def _fail(self, deliveries: Sequence[Delivery]) -> None:
        """Answer requests that failed max_attempts times with a denial, reason `error`, kept by the ledger: never
        silence."""
        if not deliveries:
            return
        now = self._clock()
        errors = [denied(d.request, Reason.error, 0, 0, now) for d in deliveries]
        try:
            await self._ledger.keep(errors)  # GET /v1/plays/{id} tells it too
            # A request whose decision was made before (an attempt whose answer was lost: a Redis primary killed
            # after it ran the script) keeps that decision; its player is told that one, never the error.
            stored = [await self._ledger.decision(e.request_id) for e in errors]
        except Unavailable:
            self._held += deliveries  # denied once the store answers; never left in hand for ever
            raise
        outcomes = [Outcome(kept or error) for kept, error in zip(stored, errors, strict=True)]
        log.error(
            "giving up on %d request(s) after %d attempts",
            len(deliveries),
            self.max_attempts,
            extra={"request_ids": [d.request.request_id for d in deliveries]},
        )
        self._metrics.dead_lettered.inc(len(deliveries))
        await self._fanout.publish(outcomes)
        await self._queue.ack(deliveries)
        self._observe(deliveries, outcomes)

    def _observe(self, deliveries: Sequence[Delivery], outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        if self._audit is not None:
            self._audit.record_outcomes(outcomes)
        now = self._clock()
        self._metrics.batch_size.observe(len(outcomes))
        verbose = decision_log.isEnabledFor(logging.INFO)
        traced = self.traced
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            decision = outcome.decision
            reason = decision.reason.value if decision.reason else ""  # kind tags stay out of the label
            latency_s = max(0.0, now - delivery.request.accepted_at)
            self._metrics.labelled(self._metrics.decisions, decision.status.value, reason).inc()
            if decision.shadow_reason is not None and not outcome.again:
                self._metrics.labelled(self._metrics.shadow_denials, decision.shadow_reason).inc()
            self._metrics.decision_latency.observe(latency_s)
            for ended in outcome.ended:
                self._metrics.labelled(self._metrics.streams_ended, ended.reason.value).inc()
            if verbose:
                fields = decision_fields(decision, latency_s, delivery.attempts)
                if traced and delivery.request.trace:
                    fields["trace_id"] = tracing.trace_id(delivery.request.trace)
                decision_log.info("decision", extra=fields)
            if traced and delivery.request.trace:
                tracing.decided(
                    delivery.request,
                    decision,
                    ended=len(outcome.ended),
                    attempts=delivery.attempts,
                    batch=len(outcomes),
                    now=now,
                )

    async def _record_shadow(self, outcomes: Sequence[Outcome]) -> None:
        """List the shadow policy's would-be denials per account (the decisions stand whether or not this works)."""
        if not self.lists_shadow or not any(o.decision.shadow_reason for o in outcomes):
            return
        try:
            await self._catalog.record_shadow_denials(o.decision for o in outcomes if not o.again)
        except Unavailable as exc:
            log.warning("shadow denials not listed (counted and logged only): %s", exc)

    async def _back_off(self, stop: asyncio.Event, exc: Exception) -> None:
        self._failures += 1
        delay_s = min(BACKOFF_MAX_S, 0.05 * 2**self._failures)
        log.warning("ledger unavailable (%s); retrying in %.2fs", exc, delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)

    async def sweep_forever(self, stop: asyncio.Event) -> None:
        """Every sweep_interval_s: end expired streams and announce them; refresh the active-streams gauge."""
        down = self.sweep_held
        held_until = 0.0
        while not stop.is_set():
            try:
                if down:
                    await self._ledger.ping()
                    down, held_until = False, self._clock() + self.sweep_hold_s
                    log.info("ledger store back: expired leases swept again in %g s", self.sweep_hold_s)
                if self._clock() >= held_until:
                    await self.sweep()
            except Unavailable as exc:
                down = True
                log.warning("sweep skipped: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.sweep_interval_s)

    async def sweep(self) -> None:
        """One sweep of expired streams."""
        ended = await self._ledger.sweep()
        if ended:
            if self._audit is not None:
                self._audit.record_ended(ended)
            await self._fanout.announce(ended)
            for item in ended:
                self._metrics.labelled(self._metrics.streams_ended, item.reason.value).inc()
        self._metrics.active_streams.set(await self._ledger.count_active())
        await observe_queue(self._queue, self._metrics)
