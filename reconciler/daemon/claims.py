"""Which resources the daemon's passes are working on (decision 0126).

Passes over disjoint sets of resources overlap: a pass claims the ids it will
work on, and each claim ends when its resource settles (the engine's
`on_settled`) or, at the latest, when the pass ends. So a hand edit is healed
while a long apply of other resources is still running, and no resource is
worked on by two passes at once.

Revision passes (a new revision, rotated secrets) run one at a time. One waits
for the drift passes in flight to end and starts no new one until it has made
its claims: a drift pass may still be bound to the previous desired state, and
the revision pass must see its dependencies at rest. From then on drift passes
take the desired state the revision pass converges (`desired`), for the ids it
does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable

from reconciler.model import DesiredState, ResourceId


class Claim:
    """One pass's hold on its resources."""

    def __init__(self, ids: Iterable[ResourceId]) -> None:
        self.ids = frozenset(ids)


class Claims:
    """The claims of the passes in flight."""

    def __init__(self, on_release: Callable[[], None]) -> None:
        self._held: dict[ResourceId, Claim] = {}
        self._on_release = on_release
        """Called when a claim ends or a revision pass stops holding drift passes
        back: the work loop looks again at what it deferred."""
        self._revision = asyncio.Lock()
        self._holding = False
        """A revision pass waits for, or has not yet claimed after, the drift passes."""
        self._drifts = 0
        self._no_drifts = asyncio.Event()
        self._no_drifts.set()
        self.desired: DesiredState | None = None
        """The desired state a revision pass is converging (None: none is)."""

    @property
    def holding(self) -> bool:
        """Whether drift passes must not start now."""
        return self._holding

    def free(self, rid: ResourceId, deps: Collection[ResourceId]) -> bool:
        """Whether a pass may work on `rid`: neither it nor a dependency is held
        (a pass reads its dependencies' recorded states; one mid-apply would block it)."""
        held = self._held
        return rid not in held and not any(dep in held for dep in deps)

    def take(self, ids: Iterable[ResourceId]) -> Claim:
        claim = Claim(ids)
        for rid in claim.ids:
            self._held[rid] = claim
        return claim

    def settled(self, rid: ResourceId) -> None:
        """`rid` settled in the pass that holds it: others may work on it now."""
        if self._held.pop(rid, None) is not None:
            self._on_release()

    def end(self, claim: Claim) -> None:
        """The pass of `claim` ended: what it still holds is free."""
        held = self._held
        for rid in claim.ids:
            if held.get(rid) is claim:
                del held[rid]
        self._on_release()

    # drift passes (the work loop's)

    def drift_started(self) -> None:
        """A drift pass (its claim taken) starts: counted, so a revision pass can
        wait for the drift passes in flight to end."""
        self._drifts += 1
        self._no_drifts.clear()

    def drift_ended(self, claim: Claim) -> None:
        self._drifts -= 1
        if not self._drifts:
            self._no_drifts.set()
        self.end(claim)

    # revision passes (the syncer's)

    @contextlib.asynccontextmanager
    async def revision(self) -> AsyncIterator[None]:
        """Held by a revision pass, one at a time: waits for the drift passes in
        flight to end, and holds new ones back until `converging` (or the end)."""
        async with self._revision:
            self._holding = True
            try:
                await self._no_drifts.wait()
                yield
            finally:
                self._holding = False
                self.desired = None
                self._on_release()

    def converging(self, desired: DesiredState, ids: Iterable[ResourceId]) -> Claim:
        """Inside `revision`: the pass converges `desired` over `ids`; drift passes
        may start again, on other ids and with this desired state. The caller
        starts its pass before its next await and ends the claim after it."""
        claim = self.take(ids)
        self.desired = desired
        self._holding = False
        self._on_release()
        return claim

    async def close(self) -> None:
        """At shutdown: wait for the passes in flight; none starts after."""
        await self._revision.acquire()  # held from here on
        self._holding = True
        await self._no_drifts.wait()
