"""The queue as one JSON document, and every state change as a pure edit of that document.

Both backends store the same ``queue.json``; they differ only in how they read it and how they write it back
atomically (a file lock and a rename locally, a compare-and-swap commit on the Hub). Keeping the transitions here
means the two backends cannot disagree on semantics.
"""

from __future__ import annotations

import json
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from scheduler.billing import RECOVERED, RELEASED, Claim, GpuPeriod, open_period, parse_periods
from scheduler.queue.base import InvalidTransition, QueueError, TaskNotFound, TaskQueue
from scheduler.queue.holds import op_hold_for_cap, op_limit_run
from scheduler.queue.stored_names import IMAGE_SUFFIXES as IMAGE_SUFFIXES  # re-exported
from scheduler.queue.stored_names import image_name as image_name
from scheduler.queue.stored_names import stored_files as stored_files
from scheduler.stored import IMAGES_DIR as IMAGES_DIR  # re-exported: the queues lay out images/<id>/
from scheduler.stored import UnreadableTask, unreadable
from scheduler.task import ImageRef, Lease, MalformedTask, RunRecord, Task, TaskStatus

R = TypeVar("R")

QUEUE_FILE = "queue.json"
CHECKPOINTS_DIR = "checkpoints"  # the trainer's resumable state, mirrored next to the queue (see scheduler.trainer_process)
FORMAT_VERSION = 1
RECENT_OPS_KEPT = 200
PERIODS_KEPT = 500  # GPU periods kept (the oldest go first; a task of a dropped period falls back to its own time)
ABOUT = (
    "Task queue of a self-upgrading DreamBooth Space. Every change is a compare-and-swap commit made by the app; "
    "edit by hand only while the Space is paused."
)


@dataclass
class QueueDoc:
    """The parsed queue file: tasks in submission order, the GPU periods (``scheduler.billing``), plus the ids of
    the latest operations (used to tell whether a write whose answer was lost did land).

    Format 1 without a ``billing`` key (files written before GPU periods were recorded) reads as no period."""

    tasks: list[Task] = field(default_factory=list)
    recent_ops: list[str] = field(default_factory=list)
    revision: str | None = None  # the commit this document was read at (Hub only; not stored in the file)
    billing: list[GpuPeriod] = field(default_factory=list)
    unreadable_billing: list[Any] = field(default_factory=list)  # stored entries that are not periods, kept as is

    def find(self, task_id: str) -> Task | None:
        return next((t for t in self.tasks if t.id == task_id), None)

    def require(self, task_id: str) -> Task:
        task = self.find(task_id)
        if task is None:
            raise TaskNotFound(f"No task with id {task_id!r}.")
        return task

    def to_json(self) -> str:
        data = {
            "format": FORMAT_VERSION,
            "about": ABOUT,
            "tasks": [t.raw if isinstance(t, UnreadableTask) else t.to_dict() for t in self.tasks],
            "billing": [p.to_dict() for p in self.billing[-PERIODS_KEPT:]] + self.unreadable_billing,
            "recent_ops": self.recent_ops[-RECENT_OPS_KEPT:],
        }
        return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> QueueDoc:
        """Parse a queue file. An entry that is not a task becomes an ``UnreadableTask`` (shown FAILED, kept as it
        was); a file that is not a queue document at all raises QueueError."""
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise QueueError(f"{QUEUE_FILE} is not valid JSON ({exc}); fix or restore it in the queue.") from None
        entries = data.get("tasks", []) if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise QueueError(f"{QUEUE_FILE} is not a queue document (no list of tasks); fix or restore it in the queue.")
        tasks: list[Task] = []
        for index, entry in enumerate(entries):
            try:
                tasks.append(Task.from_dict(entry))
            except MalformedTask as exc:
                tasks.append(unreadable(entry, index, str(exc)))
        ops = data.get("recent_ops", [])
        billing, skipped = parse_periods(data.get("billing"))
        return cls(
            tasks=tasks,
            recent_ops=[op for op in ops if isinstance(op, str)] if isinstance(ops, list) else [],
            billing=billing,
            unreadable_billing=skipped,
        )


def new_op_id() -> str:
    return uuid.uuid4().hex


# --- transitions: each edits ``doc`` in place and returns its result; raising leaves the stored queue untouched ---


def op_enqueue(doc: QueueDoc, task: Task, images: ImageRef, now: float) -> Task:
    existing = doc.find(task.id)
    if existing is not None:
        return existing
    stored = Task.from_dict(task.to_dict())
    stored.images = images
    stored.status = TaskStatus.PENDING
    stored.lease = None
    stored.updated_at = now
    doc.tasks.append(stored)
    return stored


def op_claim(
    doc: QueueDoc, task_id: str, holder: str, lease_s: float, now: float, bill_to: str | None = None
) -> Task | None:
    """PENDING -> RUNNING; with ``bill_to`` (the paid flavor it trains on) the claim joins the open GPU period."""
    task = doc.require(task_id)
    if task.status is TaskStatus.RUNNING and task.lease is not None and task.lease.holder == holder:
        return task  # already ours: a claim repeated after an answer was lost
    if task.status is not TaskStatus.PENDING:
        return None
    if task.attempts >= task.max_attempts:
        raise InvalidTransition(f"Task {task_id} has used all {task.max_attempts} attempts; retry it first.")
    task.status = TaskStatus.RUNNING
    task.attempts += 1
    task.lease = Lease(holder=holder, expires_at=now + lease_s)
    task.started_at = now
    task.finished_at = None
    task.updated_at = now
    task.note = None
    if doc.revision and task.images is not None and task.images.repo_id and not task.images.revision:
        task.images.revision = doc.revision  # pin the images to a commit that contains them
    if bill_to is not None:
        period = open_period(doc.billing)
        if period is None or period.hardware != bill_to:
            # The record of the GPU request is missing (its commit was lost) or names another flavor: bill from now.
            period = op_open_period(doc, bill_to, now)
        period.claims.append(Claim(task_id, now, task.submitted_by))
    return task


def _require_holder(task: Task, holder: str, action: str) -> None:
    if task.status is not TaskStatus.RUNNING:
        raise InvalidTransition(f"Cannot {action} task {task.id}: it is {task.status.value}, not RUNNING.")
    current = task.lease.holder if task.lease else None
    if current != holder:
        raise InvalidTransition(f"Cannot {action} task {task.id}: it is held by {current!r}, not {holder!r}.")


def op_heartbeat(doc: QueueDoc, task_id: str, holder: str, lease_s: float, progress: dict[str, Any] | None, now: float) -> Task:
    task = doc.require(task_id)
    if task.status is TaskStatus.CANCELLED:
        raise InvalidTransition(f"Task {task_id} was cancelled; stop training it.")
    _require_holder(task, holder, "renew the lease of")
    task.lease = Lease(holder=holder, expires_at=now + lease_s)
    if progress is not None:
        task.progress = dict(progress)
    task.updated_at = now
    return task


def op_complete(
    doc: QueueDoc, task_id: str, holder: str, result_url: str, now: float, run: RunRecord | None = None
) -> Task:
    """RUNNING -> DONE; ``run`` (what the run measured) is stored with its ``wrapup_s`` measured up to ``now``."""
    task = doc.require(task_id)
    if task.status is TaskStatus.DONE and task.result_url == result_url:
        return task  # idempotent: a repeated completion changes nothing
    _require_holder(task, holder, "complete")
    task.status = TaskStatus.DONE
    task.result_url = result_url
    task.lease = None
    task.finished_at = now
    task.updated_at = now
    if run is not None:
        task.run = run.completed(now)
    return task


def op_fail(doc: QueueDoc, task_id: str, holder: str | None, error: str, now: float) -> Task:
    task = doc.require(task_id)
    if task.status is TaskStatus.FAILED and task.last_error == error:
        return task
    if holder is not None:
        _require_holder(task, holder, "fail")
    elif task.status.terminal:
        raise InvalidTransition(f"Cannot fail task {task_id}: it is already {task.status.value}.")
    task.status = TaskStatus.FAILED
    task.last_error = error
    task.lease = None
    task.finished_at = now
    task.updated_at = now
    return task


def op_requeue(doc: QueueDoc, task_id: str, holder: str, error: str, now: float) -> Task:
    task = doc.require(task_id)
    if task.status is TaskStatus.PENDING and task.last_error == error:
        return task  # repeated after an answer was lost
    if task.status is TaskStatus.FAILED and task.last_error and task.last_error.endswith(error):
        return task
    _require_holder(task, holder, "requeue")
    task.lease = None
    task.updated_at = now
    if task.attempts < task.max_attempts:
        task.status = TaskStatus.PENDING
        task.last_error = error
    else:
        task.status = TaskStatus.FAILED
        task.last_error = f"Gave up after {task.attempts} of {task.max_attempts} attempts. {error}"
        task.finished_at = now
    return task


def op_cancel(doc: QueueDoc, task_id: str, now: float) -> Task:
    task = doc.require(task_id)
    if task.status is TaskStatus.CANCELLED:
        return task
    if task.status.terminal:
        raise InvalidTransition(f"Cannot cancel task {task_id}: it is already {task.status.value}.")
    task.status = TaskStatus.CANCELLED  # the lease stays, so its holder recognises the cancellation
    task.finished_at = now
    task.updated_at = now
    return task


def op_retry(doc: QueueDoc, task_id: str, now: float) -> Task:
    task = doc.require(task_id)
    if isinstance(task, UnreadableTask):
        raise InvalidTransition(f"Cannot retry task {task_id}: its entry in {QUEUE_FILE} is unreadable ({task.problem}).")
    if task.images is not None and task.images.removed:
        raise InvalidTransition(f"Cannot retry task {task_id}: its photos were removed from the queue; submit it again.")
    if task.status is TaskStatus.PENDING and task.note:
        if task.last_error == task.note:  # the hold's reason, not an attempt's error: it holds no more
            task.last_error = None
        task.note = None  # the owner fixed what held the task back (e.g. added a payment method)
        task.updated_at = now
        return task
    if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise InvalidTransition(f"Cannot retry task {task_id}: it is {task.status.value}; only FAILED or CANCELLED tasks can be retried.")
    task.status = TaskStatus.PENDING
    task.attempts = 0
    task.lease = None
    task.note = None
    task.started_at = None
    task.finished_at = None
    task.updated_at = now
    return task


def op_requeue_expired(doc: QueueDoc, now: float, accept: Callable[[Task], bool] = lambda t: True) -> list[Task]:
    changed = []
    for task in doc.tasks:
        if not task.lease_expired(now) or not accept(task):
            continue
        holder = task.lease.holder if task.lease else "unknown"
        reason = f"Lease of worker {holder} expired (attempt {task.attempts} of {task.max_attempts}): the container stopped or hung."
        task.lease = None
        task.updated_at = now
        if task.attempts < task.max_attempts:
            task.status = TaskStatus.PENDING
            task.last_error = reason
        else:
            previous = f" Last error: {task.last_error}" if task.last_error else ""
            task.status = TaskStatus.FAILED
            task.last_error = f"Gave up after {task.attempts} attempts. {reason}{previous}"
            task.finished_at = now
        changed.append(task)
    return changed


def op_set_note(doc: QueueDoc, task_id: str, note: str | None, now: float) -> Task:
    task = doc.require(task_id)
    if task.status is not TaskStatus.PENDING:
        raise InvalidTransition(f"Cannot set a note on task {task_id}: it is {task.status.value}, not PENDING.")
    if task.note == note:
        return task
    task.note = note
    if note is not None:
        task.last_error = note
    task.updated_at = now
    return task


def op_open_period(doc: QueueDoc, hardware: str, requested_at: float, for_task: str | None = None) -> GpuPeriod:
    """Record that ``hardware`` was requested at ``requested_at`` (for task ``for_task``). Idempotent: an open period
    of the same flavor is kept (its start moved back to ``requested_at`` if that is earlier); one of another flavor
    (a move to a bigger GPU) is closed at ``requested_at`` first."""
    period, task = open_period(doc.billing), doc.find(for_task) if for_task else None
    by = task.submitted_by if task is not None else None
    if period is not None and period.hardware == hardware:
        period.requested_at = min(period.requested_at, requested_at)
        if period.requested_for is None and for_task is not None:
            period.requested_for, period.requested_by = for_task, by
        return period
    if period is not None:
        period.released_at, period.closed_by = max(requested_at, period.requested_at), RELEASED
    period = GpuPeriod(hardware=hardware, requested_at=requested_at, requested_for=for_task, requested_by=by)
    doc.billing.append(period)
    return period


def op_record_period(doc: QueueDoc, period: GpuPeriod) -> GpuPeriod:
    """Add a closed period (a Job's), unless one with its ``closed_by`` is there already."""
    found = next((p for p in doc.billing if p.closed_by == period.closed_by), None)
    if found is not None:
        return found
    doc.billing.append(period)
    return period


def op_close_period(doc: QueueDoc, now: float, closed_by: str = RELEASED) -> GpuPeriod | None:
    """Close the open GPU period at ``now`` (None when none is open). On a release, the task that finished last in
    it gets ``run.release_s`` (its completion -> now); a recovered period's end is a guess, so nothing is measured."""
    period = open_period(doc.billing)
    if period is None:
        return None
    period.released_at, period.closed_by = max(now, period.requested_at), closed_by
    last = max(period.claims, key=lambda c: c.at, default=None)
    task = doc.find(last.task_id) if last is not None else None
    if closed_by != RECOVERED and task is not None and task.status is TaskStatus.DONE and task.run is not None:
        if task.finished_at is not None and task.finished_at >= last.at:
            task.run.release_s = round(max(0.0, now - task.finished_at), 3)
    return period


def op_mark_photos_removed(task: Task) -> Task:
    """Record on a DONE task that its photos left the queue (the count stays, for the record)."""
    if task.status is TaskStatus.DONE and task.images is not None and not task.images.removed:
        task.images.removed = True
    return task


def op_delete(doc: QueueDoc, task_id: str) -> Task:
    task = doc.require(task_id)
    if not task.status.terminal:
        raise InvalidTransition(
            f"Cannot delete task {task_id}: it is {task.status.value}. Cancel it first; only DONE, FAILED or CANCELLED "
            "tasks can be deleted."
        )
    doc.tasks.remove(task)
    return task


class DocumentQueue(TaskQueue):
    """A TaskQueue over one QueueDoc. Subclasses provide ``_read`` and ``_transact`` (atomic read-modify-write).

    ``vet`` (see ``scheduler.stored.stored_task_problem``) says why a stored task must not be acted on: such a task
    is never claimed nor requeued. ``keep_photos`` False removes a task's photos in the change that marks it DONE.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        vet: Callable[[Task], str | None] | None = None,
        keep_photos: bool = False,
    ) -> None:
        self._clock = clock
        self.vet = vet
        self.keep_photos = keep_photos

    def _done_removing_photos(
        self, task_id: str, holder: str, result_url: str, run: RunRecord | None = None
    ) -> Callable[[QueueDoc], Task]:
        """The edit of ``complete`` when photos go: DONE, and ``images.removed`` recorded in the same change."""
        return lambda doc: op_mark_photos_removed(op_complete(doc, task_id, holder, result_url, self._clock(), run))

    def _problem(self, task: Task) -> str | None:
        if isinstance(task, UnreadableTask):
            return task.problem
        return self.vet(task) if self.vet is not None else None

    @abstractmethod
    def _read(self) -> QueueDoc:
        """The current queue document."""

    @abstractmethod
    def _transact(self, edit: Callable[[QueueDoc], R], message: str) -> R:
        """Apply ``edit`` to the latest document and store the result atomically when it changed anything."""

    def list(self) -> list[Task]:
        return sorted(self._read().tasks, key=lambda t: t.created_at)

    def list_with_billing(self) -> tuple[list[Task], list[GpuPeriod]]:
        doc = self._read()
        return sorted(doc.tasks, key=lambda t: t.created_at), doc.billing

    def open_period(self, hardware: str, requested_at: float, for_task: str | None = None) -> GpuPeriod | None:
        def edit(doc: QueueDoc) -> GpuPeriod:
            return op_open_period(doc, hardware, requested_at, for_task)

        return self._transact(edit, f"GPU period on {hardware} opens")

    def close_period(self, closed_by: str = RELEASED) -> GpuPeriod | None:
        if open_period(self._read().billing) is None:
            return None  # the common case costs a read, not a write
        return self._transact(lambda doc: op_close_period(doc, self._clock(), closed_by), "GPU period closes")

    def record_period(self, period: GpuPeriod) -> GpuPeriod | None:
        def edit(doc: QueueDoc) -> GpuPeriod:
            return op_record_period(doc, period)

        if any(p.closed_by == period.closed_by for p in self._read().billing):
            return period  # recorded already: a read, not a write
        return self._transact(edit, f"GPU period on {period.hardware} recorded ({period.closed_by})")

    def get(self, task_id: str) -> Task:
        return self._read().require(task_id)

    def claim(self, task_id: str, holder: str, lease_s: float, bill_to: str | None = None) -> Task | None:
        def edit(doc: QueueDoc) -> Task | None:
            problem = self._problem(doc.require(task_id))
            if problem:
                raise InvalidTransition(f"Task {task_id} was rejected: {problem}.")
            return op_claim(doc, task_id, holder, lease_s, self._clock(), bill_to)

        return self._transact(edit, f"Claim task {task_id}")

    def heartbeat(self, task_id: str, holder: str, lease_s: float, progress: dict[str, Any] | None = None) -> Task:
        return self._transact(lambda doc: op_heartbeat(doc, task_id, holder, lease_s, progress, self._clock()), f"Heartbeat task {task_id}")

    def complete(self, task_id: str, holder: str, result_url: str, run: RunRecord | None = None) -> Task:
        return self._transact(
            lambda doc: op_complete(doc, task_id, holder, result_url, self._clock(), run), f"Complete task {task_id}"
        )

    def fail(self, task_id: str, holder: str | None, error: str) -> Task:
        return self._transact(lambda doc: op_fail(doc, task_id, holder, error, self._clock()), f"Fail task {task_id}")

    def requeue(self, task_id: str, holder: str, error: str) -> Task:
        return self._transact(lambda doc: op_requeue(doc, task_id, holder, error, self._clock()), f"Requeue task {task_id}")

    def cancel(self, task_id: str) -> Task:
        return self._transact(lambda doc: op_cancel(doc, task_id, self._clock()), f"Cancel task {task_id}")

    def retry(self, task_id: str) -> Task:
        return self._transact(lambda doc: op_retry(doc, task_id, self._clock()), f"Retry task {task_id}")

    def requeue_expired(self, now: float) -> list[Task]:
        def accept(task: Task) -> bool:
            return self._problem(task) is None

        if not any(t.lease_expired(now) and accept(t) for t in self._read().tasks):
            return []  # the common case costs a read, not a write
        return self._transact(lambda doc: op_requeue_expired(doc, now, accept), "Requeue tasks with expired leases")

    def set_note(self, task_id: str, note: str | None) -> Task:
        return self._transact(lambda doc: op_set_note(doc, task_id, note, self._clock()), f"Note on task {task_id}")

    def limit_run(self, task_id: str, stop_at: float | None) -> Task:
        return self._transact(lambda doc: op_limit_run(doc, task_id, stop_at, self._clock()), f"Stop time of {task_id}")

    def hold_for_cap(self, task_id: str, holder: str | None, note: str) -> Task:
        return self._transact(lambda doc: op_hold_for_cap(doc, task_id, holder, note, self._clock()), f"Hold {task_id}")


def list_images(folder: Path) -> list[Path]:
    """Image-like files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def check_image_paths(images: Sequence[Path]) -> list[Path]:
    paths = [Path(p) for p in images]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Images not found: {', '.join(missing)}")
    return paths
