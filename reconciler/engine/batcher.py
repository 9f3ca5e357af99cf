"""The generic batcher: requests made in one loop iteration go to the provider in
one call per kind and batch (`observe_many`, `apply_many`), so a no-op pass over
thousands of files costs one thread hop per batch, not per file."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from reconciler.model import Observed, Provider, ProviderError
from reconciler.pacing import Pacer
from reconciler.registry import Registry

MAX_BATCH = 2048
"""Observations per observe_many call."""
MAX_APPLY_BATCH = 32
"""Applies per apply_many call: small, so batches still run side by side."""

_ANSWERS_SLICE = 32
"""Answers handed out between two checks of the pacer."""

ResultT = TypeVar("ResultT")


class Batcher(Generic[ResultT]):
    """Coalesces the requests made in one loop iteration into one provider call
    per kind and batch: `observe_many` for observations, `apply_many` for applies.
    A call that fails as a whole is retried item by item, so one bad object
    cannot fail the others of its batch."""

    def __init__(
        self,
        registry: Registry,
        limit: asyncio.Semaphore,
        call: Callable[[Provider[Any], list[Any]], Awaitable[Sequence[Any]]],
        what: str,
        max_batch: int,
        pacer: Pacer | None = None,
    ) -> None:
        self._registry = registry
        self._pacer = pacer
        self._limit = limit
        self._call = call
        self._what = what
        self._max_batch = max_batch
        self._pending: dict[str, list[tuple[Any, asyncio.Future[ResultT]]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, kind: str, item: Any) -> asyncio.Future[ResultT]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        self._pending.setdefault(kind, []).append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for kind, items in pending.items():
            for start in range(0, len(items), self._max_batch):
                batch = items[start : start + self._max_batch]
                task = asyncio.create_task(self._run(kind, batch), name=f"{self._what} {kind}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, kind: str, items: list[tuple[Any, asyncio.Future[ResultT]]]) -> None:
        try:
            async with self._limit:
                results = await self._call(self._registry[kind], [item for item, _ in items])
            if len(results) != len(items):
                raise ProviderError(
                    f"{kind} provider answered {len(results)} of {len(items)} {self._what} items"
                )
        except asyncio.CancelledError:
            for _, future in items:
                future.cancel()
            raise
        except Exception as exc:
            if len(items) == 1:
                items[0][1].set_exception(exc)
                return
            await asyncio.gather(*(self._run(kind, [item]) for item in items))
            return
        pacer = self._pacer
        try:
            for i, ((_, future), result) in enumerate(zip(items, results, strict=True)):
                if pacer is not None and i % _ANSWERS_SLICE == _ANSWERS_SLICE - 1:
                    await pacer.pause()  # each answer wakes its resource's task
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except asyncio.CancelledError:
            for _, future in items:
                future.cancel()  # those answered already are done: unchanged
            raise


def observer(
    registry: Registry, limit: asyncio.Semaphore, pacer: Pacer | None = None
) -> Batcher[Observed | None]:
    async def call(provider: Provider[Any], specs: list[Any]) -> Sequence[Observed | None]:
        return await provider.observe_many(specs)

    return Batcher(registry, limit, call, "observe", MAX_BATCH, pacer)


def applier(
    registry: Registry, limit: asyncio.Semaphore, pacer: Pacer | None = None
) -> Batcher[str | None]:
    async def call(
        provider: Provider[Any], items: list[Any]
    ) -> Sequence[BaseException | str | None]:
        return await provider.apply_many(items)

    return Batcher(registry, limit, call, "apply", MAX_APPLY_BATCH, pacer)
