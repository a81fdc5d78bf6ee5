"""The task record that travels through the queue.

A task is plain data: it serialises to a JSON object (``to_dict``/``from_dict``) that stays readable in
the Hub's file viewer. It never holds a secret.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class TaskStatus(str, Enum):  # noqa: UP042 - kept: str(status) formatting is part of the contract
    """Where a task is in its life. DONE, FAILED and CANCELLED are terminal."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass
class ImageRef:
    """Where a task's training images live.

    ``repo_id`` is None for a local queue (then ``path`` is a folder on this machine); otherwise the images are
    the files under ``path`` in dataset repo ``repo_id`` at commit ``revision``.
    """

    path: str
    repo_id: str | None = None
    revision: str | None = None
    count: int = 0


@dataclass
class Lease:
    """Who holds a RUNNING task and until when (unix seconds)."""

    holder: str
    expires_at: float


@dataclass
class Task:
    """One training job. ``params`` holds the recipe's parameters (steps, learning_rate, rank, ...)."""

    instance_prompt: str
    submitted_by: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: TaskStatus = TaskStatus.PENDING
    recipe: str = "dreambooth-lora"
    base_model: str = ""
    class_prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    hardware: str = "t4-small"
    images: ImageRef | None = None
    output_repo: str = ""
    private: bool = True
    attempts: int = 0
    max_attempts: int = 2
    deadline_s: float = 3 * 3600
    lease: Lease | None = None
    last_error: str | None = None
    # Why a PENDING task waits for its owner (e.g. the GPU request was refused). While set, the lifecycle does not
    # request hardware for it again; ``retry`` clears it.
    note: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    result_url: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (status as its string value)."""
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        """Inverse of ``to_dict``; unknown keys are ignored so old readers survive new fields."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["status"] = TaskStatus(known.get("status", "PENDING"))
        if known.get("images") is not None:
            known["images"] = ImageRef(**known["images"])
        if known.get("lease") is not None:
            known["lease"] = Lease(**known["lease"])
        return cls(**known)

    @property
    def runnable(self) -> bool:
        """PENDING, attempts left, and not held back by a note."""
        return self.status is TaskStatus.PENDING and self.attempts < self.max_attempts and not self.note

    def lease_expired(self, now: float) -> bool:
        """True for a RUNNING task whose holder stopped renewing its lease."""
        return self.status is TaskStatus.RUNNING and (self.lease is None or self.lease.expires_at <= now)
