"""Exponential backoff: the one delay function behind the engine's retries of a
failed resource and the daemon's heal backoff against another writer.

Both double from a base up to a cap; a retry adds jitter so that resources that
failed together do not come back together, a heal waits exactly its step.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 300.0,
    jitter: float = 0.5,
    rng: Callable[[], float] = random.random,
) -> float:
    """The delay before try `attempt` (1, 2, ...): `base`, 2 x `base`, 4 x `base` ...
    up to `cap`, plus up to `jitter` of itself at random, still within `cap`."""
    delay = min(cap, base * 2.0 ** min(max(0, attempt - 1), 62))
    if not jitter:
        return delay
    return min(cap, delay * (1.0 + jitter * rng()))
