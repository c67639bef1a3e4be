"""Group commit: calls that arrive while the previous commit is under way are written together in the next one.

A caller is answered only once the commit that holds its item is done, so nothing it was told happened can be lost
on a crash; there is no timer: a lone call is committed at once, and a batch is whatever queued meanwhile. The
same shape serves reads made together (the service's look-ups of callers' users). Another writer may take what is
queued (`take`) into a transaction of its own, and settle each item after it (`settle`): the SQLite ledger's
decisions take the stops queued meanwhile.
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

    def __init__(self, commit: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._commit = commit
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
                batch = self.take()
                try:
                    results = await self._commit([item for item, _ in batch])
                except Exception as exc:  # each caller of the batch gets the error (Unavailable, say)
                    self.settle(batch, exc)
                    continue
                self.settle(batch, results)
        finally:
            self._draining = None
