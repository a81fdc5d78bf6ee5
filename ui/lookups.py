"""Bounds on the Hub lookups the form makes for a typed base model: a small LRU cache with a time to live, and a
token bucket per caller, so that no visitor can spend the owner's token's request budget or the app's memory.

Both take a ``clock`` (seconds, monotonic) so that tests move time by hand.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")
Clock = Callable[[], float]

CACHE_SIZE = 64  # kept lookups (a probe holds one small model_index.json and the repo's file list)
CACHE_TTL_S = 3600.0  # a kept lookup is made again after an hour (the repo may have changed)
BURST = 5  # lookups a caller may make at once...
REFILL_S = 10.0  # ...and one more every this many seconds (at most 35 in the Hub's 5-minute window)
TOO_OFTEN = "Base model checked too often, try again in a moment."


class ProbeCache(Generic[V]):
    """At most ``size`` values, each kept ``ttl_s`` seconds; the least recently used one goes first."""

    def __init__(self, size: int = CACHE_SIZE, ttl_s: float = CACHE_TTL_S, clock: Clock = time.monotonic) -> None:
        self.size, self.ttl_s, self.clock = size, ttl_s, clock
        self._items: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value kept for ``key`` (now the most recently used), or None when there is none or it expired."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if self.clock() - item[0] >= self.ttl_s:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: Hashable, value: V) -> None:
        """Keep ``value`` for ``key``, dropping the least recently used values beyond ``size``."""
        with self._lock:
            self._items[key] = (self.clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per caller: ``burst`` lookups at once, one more every ``refill_s`` seconds. At most
    ``callers`` buckets are kept (the least recently used goes; it would be full by the time it is needed)."""

    def __init__(self, burst: int = BURST, refill_s: float = REFILL_S, clock: Clock = time.monotonic,
                 callers: int = 256) -> None:  # fmt: skip
        self.burst, self.refill_s, self.clock, self.callers = burst, refill_s, clock, callers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, caller: str) -> bool:
        """Whether ``caller`` may make one more lookup now (and that lookup is counted)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.pop(caller, None) or _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + max(0.0, now - bucket.at) / self.refill_s)
            bucket.at = now
            allowed = bucket.tokens >= 1.0
            if allowed:
                bucket.tokens -= 1.0
            self._buckets[caller] = bucket
            while len(self._buckets) > self.callers:
                self._buckets.popitem(last=False)
            return allowed

    def __len__(self) -> int:
        """How many callers' buckets are kept."""
        with self._lock:
            return len(self._buckets)
