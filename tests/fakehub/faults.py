"""Fault injection and the request log of the emulator."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field


@dataclass
class Fault:
    """The next ``count`` requests whose method and raw path (query excluded) match are disturbed.

    * ``delay_s`` alone: the request waits, then is served normally.
    * ``status`` (default 500 when not delaying): the client gets that status, ``body`` and ``headers``
      (``Retry-After`` via ``headers``); the request is not applied...
    * ...unless ``land_then_fail``: the request is applied (e.g. the commit lands), then answered with ``status``.
    """

    method: str
    path_regex: str
    status: int | None = None
    count: int = 1
    delay_s: float = 0.0
    land_then_fail: bool = False
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status is None and (self.delay_s <= 0 or self.land_then_fail):
            self.status = 500
        re.compile(self.path_regex)

    def matches(self, method: str, path: str) -> bool:
        return self.method.upper() in ("*", method.upper()) and re.search(self.path_regex, path) is not None


@dataclass
class RequestRecord:
    """One request served (``path`` is the raw path without the query)."""

    method: str
    path: str
    status: int
    time: float
    query: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class FaultBook:
    """Pending faults and the log of served requests; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """The first pending fault matching the request, with one use consumed."""
        with self._lock:
            for fault in self._faults:
                if fault.count > 0 and fault.matches(method, path):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def record(self, method: str, path: str, status: int, query: str = "") -> None:
        with self._lock:
            self._log.append(RequestRecord(method, path, status, time.time(), query))

    def requests(self, method: str | None = None, path_regex: str | None = None) -> list[RequestRecord]:
        with self._lock:
            log = list(self._log)
        return [
            r
            for r in log
            if (method is None or r.method == method.upper()) and (path_regex is None or re.search(path_regex, r.path))
        ]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()
