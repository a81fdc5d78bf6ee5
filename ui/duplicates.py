"""Recently queued submissions, so that a second click on Train does not silently queue (and pay for) the same task.

A submission's fingerprint covers the submitter, the prompts, the photos' content (SHA-256) and every setting.
The app process remembers the fingerprints it queued in the last ``WINDOW_S`` seconds; a new submission with the
same fingerprint whose earlier task is still in the queue (not cancelled or failed) asks for confirmation first.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.task import Task, TaskStatus

WINDOW_S = 600.0
# Form values that make two submissions the same task (the output repo is chosen at submit time and not compared).
COMPARED = ("instance_prompt", "class_prompt", "base_model", "recipe", "steps", "hardware", "learning_rate", "rank",
            "resolution", "private", "lr_scheduler", "lr_warmup_steps", "snr_gamma", "score", "dataset")  # fmt: skip


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def submission_fingerprint(user: str, values: Mapping[str, Any], images: Iterable[Path]) -> str:
    """One digest of who submits what: the compared form values and the photos' content (in any order)."""
    record = {
        "user": user,
        "values": {k: (str(values.get(k) or "").strip() if isinstance(values.get(k), str) else values.get(k)) for k in COMPARED},
        "photos": sorted(file_digest(Path(p)) for p in images),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class RecentSubmissions:
    """Fingerprint -> (task id, when queued) of this process's submissions in the last ``window_s`` seconds."""

    window_s: float = WINDOW_S
    _seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, fingerprint: str, task_id: str, now: float | None = None) -> None:
        """Note that ``task_id`` was queued for ``fingerprint``."""
        now = time.time() if now is None else now
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if now - v[1] < self.window_s}
            self._seen[fingerprint] = (task_id, now)

    def candidate(self, fingerprint: str, now: float | None = None) -> tuple[str, float] | None:
        """(task id, queued at) of a recent submission with this fingerprint, without reading the queue."""
        now = time.time() if now is None else now
        with self._lock:
            entry = self._seen.get(fingerprint)
        return entry if entry and now - entry[1] < self.window_s else None

    def duplicate_of(self, fingerprint: str, tasks: Iterable[Task], now: float | None = None) -> Task | None:
        """The recent task this submission repeats, if it is still queued, running or done."""
        entry = self.candidate(fingerprint, now)
        if entry is None:
            return None
        task = next((t for t in tasks if t.id == entry[0]), None)
        if task is None or task.status in (TaskStatus.CANCELLED, TaskStatus.FAILED):
            return None
        return task
