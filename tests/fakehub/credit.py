"""Credit per namespace: the Hub runs Jobs only for a namespace with a positive credit balance (hub-docs
``jobs-pricing.md``, 2026-05). By default a namespace's credit is unlimited; a test grants a finite amount."""

from __future__ import annotations

import threading


class CreditBook:
    """Namespace -> USD granted, drawn down by the cost of its Jobs billed after the grant."""

    def __init__(self) -> None:
        self._granted: dict[str, tuple[float, float]] = {}  # namespace -> (USD granted, its spend when granted)
        self._lock = threading.Lock()

    def grant(self, namespace: str, usd: float | None, spent: float) -> None:
        """``namespace`` has ``usd`` from now on (``spent``: its Jobs' cost so far); None: unlimited again."""
        with self._lock:
            if usd is None:
                self._granted.pop(namespace, None)
            else:
                self._granted[namespace] = (float(usd), spent)

    def left(self, namespace: str, spent: float) -> float | None:
        """USD left (None: unlimited), given the namespace's Jobs' cost so far ``spent``."""
        with self._lock:
            granted = self._granted.get(namespace)
        return None if granted is None else granted[0] - (spent - granted[1])

    def limited(self, namespace: str) -> bool:
        with self._lock:
            return namespace in self._granted

    def clear(self) -> None:
        with self._lock:
            self._granted.clear()
