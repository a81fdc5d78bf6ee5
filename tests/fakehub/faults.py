"""Fault injection and the request log of the emulator."""

from __future__ import annotations

import random
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
    * ``probability`` < 1: each matching request is disturbed only with that chance (seeded: see
      :meth:`FaultBook.seed`); ``count`` counts the disturbed ones. For random 5xx over many requests.
    """

    method: str
    path_regex: str
    status: int | None = None
    count: int = 1
    delay_s: float = 0.0
    land_then_fail: bool = False
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    probability: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], not {self.probability}")
        if self.status is None and (self.delay_s <= 0 or self.land_then_fail):
            self.status = 500
        re.compile(self.path_regex)

    def matches(self, method: str, path: str) -> bool:
        return self.method.upper() in ("*", method.upper()) and re.search(self.path_regex, path) is not None


JOB_FAULT_KINDS = ("refuse", "crash", "cancel", "delete", "logs_unavailable")


@dataclass
class JobFault:
    """Something that happens to the Jobs created after it was added (see tests/fakehub/README.md, "Jobs").

    Matching Jobs: created in ``namespace`` (any when None) and carrying every label in ``labels``; the first
    ``skip`` of them are left alone, the next ``count`` are hit. ``kind``:

    * ``refuse``: the creation is answered ``status`` (default 402) with ``message``; no Job is created.
    * ``crash``: ``at_s`` seconds after the Job is RUNNING its process group is killed; stage ERROR with the
      message of a process that exited with ``exit_code`` (default 1).
    * ``cancel`` / ``delete``: at ``at_s`` the platform stops the Job from outside: stage CANCELED / DELETED.
    * ``logs_unavailable``: every logs request of the Job is answered ``status`` (default 503).
    """

    kind: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    skip: int = 0
    count: int = 1
    at_s: float = 0.0
    status: int | None = None
    message: str | None = None
    exit_code: int = 1

    def __post_init__(self) -> None:
        if self.kind not in JOB_FAULT_KINDS:
            raise ValueError(f"unknown job fault kind {self.kind!r}; one of {JOB_FAULT_KINDS}")
        if self.status is None:
            self.status = {"refuse": 402, "logs_unavailable": 503}.get(self.kind)

    def matches(self, namespace: str, labels: dict[str, str]) -> bool:
        return (self.namespace in (None, namespace)) and all(labels.get(k) == v for k, v in self.labels.items())


class JobFaultBook:
    """Pending Job faults; thread-safe. ``take`` is called once per Job creation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[JobFault] = []

    def add(self, fault: JobFault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[JobFault]:
        with self._lock:
            return list(self._faults)

    def take(self, namespace: str, labels: dict[str, str]) -> list[JobFault]:
        """The faults that hit a Job being created now (each use consumed; skips counted down)."""
        hit: list[JobFault] = []
        with self._lock:
            for fault in list(self._faults):
                if not fault.matches(namespace, labels):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                hit.append(fault)
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
        return hit


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
        self._random = random.Random(0)

    def seed(self, seed: int) -> None:
        """Reseed the draws of faults with ``probability`` < 1 (seed 0 at start)."""
        with self._lock:
            self._random.seed(seed)

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
                    if fault.probability < 1.0 and self._random.random() >= fault.probability:
                        continue
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
