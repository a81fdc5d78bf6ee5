"""The task record that travels through the queue.

A task is plain data: it serialises to a JSON object (``to_dict``/``from_dict``) that stays readable in
the Hub's file viewer. It never holds a secret.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from contract.hub_dataset import DatasetSource

LOCAL_CPU, LOCAL_GPU = "local-cpu", "local-gpu"  # the flavor of a run on a workstation (local mode), by its device


class MalformedTask(ValueError):
    """A stored task entry that is not a task record (wrong types, unknown status, missing keys)."""


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
    removed: bool = False  # the photos were removed from the queue once the task was DONE (KEEP_PHOTOS unset)


@dataclass
class Lease:
    """Who holds a RUNNING task and until when (unix seconds)."""

    holder: str
    expires_at: float


@dataclass
class RunRecord:
    """What a finished run measured, and the settings it ran with: the estimates of later runs use it.

    Times are unix seconds, durations seconds. ``startup_s`` runs from this container's start on the GPU (from the
    claim for a task that is not the container's first, and always in local mode) to the first training step;
    ``wrapup_s`` from the last step to the task's completion in the queue; ``switch_s`` (the first task of a GPU
    period) from the GPU request to this container's start; ``release_s`` (the last task of a GPU period) from the
    completion to the release request. ``family`` is ``sd15``, ``sd2``, ``sdxl`` or None when the trainer could not
    tell (a tiny or custom model): then only runs of the same ``base_model`` compare.
    """

    flavor: str  # the hardware it really ran on (a Space flavor; ``local-cpu`` / ``local-gpu`` on a workstation)
    recipe: str
    base_model: str
    family: str | None = None
    resolution: int | None = None
    batch_size: int = 1
    steps: int | None = None
    prior_preservation: bool = False
    train_text_encoder: bool = False
    steps_per_s: float | None = None  # the trainer's steady rate (samples and checkpoints left out)
    first_step_at: float | None = None
    last_step_at: float | None = None
    startup_s: float | None = None
    wrapup_s: float | None = None
    switch_s: float | None = None
    release_s: float | None = None

    @property
    def overhead_s(self) -> float:
        """Every measured second that was not training."""
        return sum(s for s in (self.switch_s, self.startup_s, self.wrapup_s, self.release_s) if s is not None)

    def completed(self, now: float) -> RunRecord:
        """This record with ``wrapup_s`` measured up to ``now`` (the completion)."""
        wrapup = None if self.last_step_at is None else round(max(0.0, now - self.last_step_at), 3)
        return replace(self, wrapup_s=wrapup)


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
    #: the dataset it trains on instead of uploaded photos (``contract.hub_dataset``); its ``images`` folder is empty
    dataset: DatasetSource | None = None
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
    run: RunRecord | None = None  # what the run measured (DONE tasks; written with the completion)
    # When a spending cap stops the run (unix seconds; ``scheduler.spending``): the watchdog inside the Job stops the
    # trainer there with a checkpoint and the task is held. Written by the Jobs backend (before each Job it starts, None
    # when the cap leaves the whole deadline, and while it runs); a Space's worker finds its stop itself.
    stop_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (status as its string value)."""
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Task:
        """Inverse of ``to_dict``; unknown keys are ignored so old readers survive new fields.

        Raises ``MalformedTask`` (a ValueError) when ``data`` is not a well-typed task record."""
        if not isinstance(data, dict):
            raise MalformedTask(f"a task must be a JSON object, not {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("id", "instance_prompt", "submitted_by"):
            if key not in known:
                raise MalformedTask(f"the task has no {key!r}")
        status = known.get("status", "PENDING")
        if not isinstance(status, str) or status not in {s.value for s in TaskStatus}:
            raise MalformedTask(f"unknown status {status!r}")
        known["status"] = TaskStatus(status)
        _check_types(known, _TASK_TYPES, "task")
        if known.get("images") is not None:
            known["images"] = ImageRef(**_record(known["images"], ImageRef, _IMAGE_TYPES, "images"))
        if known.get("dataset") is not None:
            try:
                known["dataset"] = DatasetSource.from_dict(known["dataset"])
            except ValueError as e:
                raise MalformedTask(str(e)) from None
        if known.get("lease") is not None:
            known["lease"] = Lease(**_record(known["lease"], Lease, _LEASE_TYPES, "lease"))
        known["run"] = run_record_from_dict(known.get("run"))
        return cls(**known)

    @property
    def runnable(self) -> bool:
        """PENDING, attempts left, and not held back by a note."""
        return self.status is TaskStatus.PENDING and self.attempts < self.max_attempts and not self.note

    def lease_expired(self, now: float) -> bool:
        """True for a RUNNING task whose holder stopped renewing its lease."""
        return self.status is TaskStatus.RUNNING and (self.lease is None or self.lease.expires_at <= now)


# --- type checks of stored records (``from_dict``): JSON types accepted per field --------------------------------

_STR, _OPT_STR = (str,), (str, type(None))
_INT, _NUM, _OPT_NUM = (int,), (int, float), (int, float, type(None))
_TASK_TYPES: dict[str, tuple[type, ...]] = {
    "id": _STR, "instance_prompt": _STR, "submitted_by": _STR, "recipe": _STR, "base_model": _STR,
    "hardware": _STR, "output_repo": _STR, "class_prompt": _OPT_STR, "last_error": _OPT_STR, "note": _OPT_STR,
    "result_url": _OPT_STR, "private": (bool,), "attempts": _INT, "max_attempts": _INT, "deadline_s": _NUM,
    "created_at": _NUM, "updated_at": _NUM, "started_at": _OPT_NUM, "finished_at": _OPT_NUM, "stop_at": _OPT_NUM,
    "params": (dict,), "progress": (dict,), "images": (dict, type(None)), "dataset": (dict, type(None)), "lease": (dict, type(None)),
}  # fmt: skip
_IMAGE_TYPES = {"path": _STR, "repo_id": _OPT_STR, "revision": _OPT_STR, "count": _INT, "removed": (bool,)}
_LEASE_TYPES = {"holder": _STR, "expires_at": _NUM}
_OPT_INT, _BOOL = (int, type(None)), (bool,)
_RUN_TYPES = {
    "flavor": _STR, "recipe": _STR, "base_model": _STR, "family": _OPT_STR, "resolution": _OPT_INT, "batch_size": _INT,
    "steps": _OPT_INT, "prior_preservation": _BOOL, "train_text_encoder": _BOOL, "steps_per_s": _OPT_NUM,
    "first_step_at": _OPT_NUM, "last_step_at": _OPT_NUM, "startup_s": _OPT_NUM, "wrapup_s": _OPT_NUM,
    "switch_s": _OPT_NUM, "release_s": _OPT_NUM,
}  # fmt: skip


def run_record_from_dict(data: Any) -> RunRecord | None:
    """The stored ``run`` of a task, or None when there is none or it is malformed: a run record only feeds
    estimates and costs, so a bad one is dropped rather than making its task unreadable."""
    if data is None:
        return None
    try:
        return RunRecord(**_record(data, RunRecord, _RUN_TYPES, "run"))
    except MalformedTask:
        return None


def _check_types(values: dict[str, Any], types: dict[str, tuple[type, ...]], what: str) -> None:
    for key, value in values.items():
        allowed = types.get(key)
        if allowed is None:
            continue
        if isinstance(value, bool) and bool not in allowed:  # JSON true is not a number here
            raise MalformedTask(f"{what} field {key!r} must not be a boolean")
        if not isinstance(value, allowed):
            raise MalformedTask(f"{what} field {key!r} has the wrong type ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise MalformedTask(f"{what} field {key!r} is not a finite number")


def _record(data: Any, kind: type, types: dict[str, tuple[type, ...]], what: str) -> dict[str, Any]:
    """The known keys of a nested record, type-checked; its fields without a default must be present."""
    if not isinstance(data, dict):
        raise MalformedTask(f"{what} must be a JSON object, not {type(data).__name__}")
    names = {f.name for f in fields(kind)}
    values = {k: v for k, v in data.items() if k in names}
    missing = [
        f.name for f in fields(kind) if f.name not in values and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise MalformedTask(f"{what} has no {missing[0]!r}")
    _check_types(values, types, what)
    return values
