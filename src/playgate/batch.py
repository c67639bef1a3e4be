"""Group commit: calls that arrive while the previous commit is under way are written together in the next one.

A caller is answered only once the commit that holds its item is done, so nothing it was told happened can be lost
on a crash; there is no timer: a lone call is committed at once, and a batch is whatever queued meanwhile. The
same shape serves reads made together (the service's look-ups of callers' users). Another writer may take what is
queued (`take`) into a transaction of its own, and settle each item after it (`settle`): the SQLite ledger's
decisions take the stops queued meanwhile. For that writer's sake a batch may linger a few turns of the event loop
before it commits (`linger_turns`): still no timer, and a lone call waits microseconds, not a tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
# Items queued for a commit, each with its caller's future.
Taken = list[tuple[Item, asyncio.Future[Result]]]


class GroupCommit(Generic[Item, Result]):
    """Feeds `commit` (items in, one result per item out, in order) with every item that queued meanwhile."""

    def __init__(
        self, commit: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]], *, linger_turns: int = 0
    ) -> None:
        self._commit = commit
        # Turns of the event loop a batch waits before its commit, for more items to join or for another writer to
        # `take` it into a commit that was coming anyway (a turn is one pass over the loop's ready callbacks and a
        # poll of its sockets that does not block).
        self._linger_turns = linger_turns
        self._queued: Taken[Item, Result] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        """`item`'s result, once the commit holding it is done; that commit's error otherwise."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain(), name="playgate-group-commit")
        return await future

    def take(self) -> Taken[Item, Result]:
        """The items queued for the next commit, now the caller's to commit and `settle` (the next commit goes on
        with what queues after)."""
        taken, self._queued = self._queued, []
        return taken

    @staticmethod
    def settle(taken: Taken[Item, Result], outcome: Sequence[Result] | Exception) -> None:
        """Answer each caller of `taken`: its result (one per item, in order), or the commit's error."""
        for i, (_, future) in enumerate(taken):
            if future.done():  # a caller that went away meanwhile: its item is committed all the same
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[i])

    async def _drain(self) -> None:
        try:
            while self._queued:
                for _ in range(self._linger_turns):
                    await asyncio.sleep(0)
                    if not self._queued:
                        break
                if not self._queued:  # another writer took the batch
                    break
                batch = self.take()
                try:
                    results = await self._commit([item for item, _ in batch])
                except Exception as exc:  # each caller of the batch gets the error (Unavailable, say)
                    self.settle(batch, exc)
                    continue
                self.settle(batch, results)
        finally:
            self._draining = None
