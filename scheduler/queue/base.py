"""The queue contract shared by the Hub and local backends.

Every method that changes a task is atomic: on the Hub a compare-and-swap commit, locally a file lock plus an
atomic rename. Methods raise ``TaskNotFound`` for an unknown id and ``InvalidTransition`` when the task is not in
a state that allows the change (for example completing a task held by another worker).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scheduler.billing import GpuPeriod
from scheduler.task import RunRecord, Task


class QueueError(Exception):
    """Base class of queue errors; the message is meant for a human."""


class TaskNotFound(QueueError):
    """No task with that id."""


class InvalidTransition(QueueError):
    """The task's current state does not allow the requested change."""


class QueueUnavailable(QueueError):
    """The backend could not be reached or kept failing after bounded retries."""


class TaskQueue(ABC):
    """Durable task queue. Implementations: ``HubQueue`` (dataset repo) and ``LocalQueue`` (folder)."""

    @abstractmethod
    def enqueue(self, task: Task, images: Sequence[Path]) -> Task:
        """Store ``images`` and ``task`` together (both or neither); return the task with ``images`` set.

        Idempotent by ``task.id``: enqueuing an id that already exists returns the stored task unchanged.
        """

    @abstractmethod
    def list(self) -> list[Task]:
        """All tasks, oldest first."""

    @abstractmethod
    def get(self, task_id: str) -> Task:
        """One task by id."""

    def list_with_billing(self) -> tuple[list[Task], list[GpuPeriod]]:
        """``list()`` and the recorded GPU periods (``scheduler.billing``), from one read of the queue."""
        return self.list(), []

    @abstractmethod
    def claim(self, task_id: str, holder: str, lease_s: float, bill_to: str | None = None) -> Task | None:
        """PENDING -> RUNNING with attempts+1, started_at and a lease for ``holder``.

        Returns None when the task is not PENDING any more (someone else won); exactly one of several concurrent
        claimers gets the task. ``bill_to`` (the paid flavor the task trains on) adds the claim to the open GPU
        period in the same atomic change (a period is opened now when none of that flavor is open).
        """

    @abstractmethod
    def heartbeat(self, task_id: str, holder: str, lease_s: float, progress: dict[str, Any] | None = None) -> Task:
        """Renew ``holder``'s lease and optionally store a progress summary. InvalidTransition if not the holder."""

    @abstractmethod
    def complete(self, task_id: str, holder: str, result_url: str, run: RunRecord | None = None) -> Task:
        """RUNNING (held by ``holder``) -> DONE with ``result_url`` and ``run`` (what the run measured; its
        ``wrapup_s`` ends at this change); unless the queue keeps photos, the task's photos are removed in the same
        atomic change (``images.removed`` records it)."""

    def open_period(self, hardware: str, requested_at: float, for_task: str | None = None) -> GpuPeriod | None:
        """Record a GPU period on ``hardware`` requested at ``requested_at`` for task ``for_task`` (idempotent: an
        open one of the same flavor is kept). A queue that records no periods returns None."""
        return None

    def close_period(self, closed_by: str = "release") -> GpuPeriod | None:
        """Close the open GPU period now (before the release request, or ``"recovered"`` by a CPU container that
        found one left open); None when none was open."""
        return None

    def record_period(self, period: GpuPeriod) -> GpuPeriod | None:
        """Record a closed period as it is (a Job's, from its creation to its end); idempotent by ``closed_by``.
        A queue that records no periods returns None."""
        return None

    @abstractmethod
    def fail(self, task_id: str, holder: str | None, error: str) -> Task:
        """-> FAILED with ``error``. ``holder`` None fails a task nobody holds (e.g. PENDING, refused input)."""

    @abstractmethod
    def requeue(self, task_id: str, holder: str, error: str) -> Task:
        """RUNNING (held by ``holder``) -> PENDING with ``error`` after a failed attempt that may succeed when run
        again (the trainer was killed, crashed or could not upload); FAILED when no attempt is left."""

    @abstractmethod
    def cancel(self, task_id: str) -> Task:
        """PENDING or RUNNING -> CANCELLED. A running worker sees it at its next heartbeat and stops."""

    @abstractmethod
    def retry(self, task_id: str) -> Task:
        """FAILED or CANCELLED -> PENDING with attempts reset to 0 and the error kept for reference.

        InvalidTransition when the task's photos were removed (it was DONE) or its entry is unreadable."""

    @abstractmethod
    def requeue_expired(self, now: float) -> list[Task]:
        """RUNNING tasks whose lease expired -> PENDING (attempts < max) or FAILED; returns the changed tasks."""

    @abstractmethod
    def set_note(self, task_id: str, note: str | None) -> Task:
        """Set ``last_error`` on a PENDING task without changing its state (e.g. why the GPU was refused)."""

    def limit_run(self, task_id: str, stop_at: float | None) -> Task:
        """PENDING or RUNNING: a spending cap stops the task's run at ``stop_at`` (``scheduler.spending``)."""
        raise NotImplementedError

    def hold_for_cap(self, task_id: str, holder: str | None, note: str) -> Task:
        """Hold a task back with a spending cap's ``note``: a PENDING one (``holder`` None) before it starts, or a
        RUNNING one held by ``holder`` that the cap stopped (back to PENDING, its attempt given back)."""
        raise NotImplementedError

    @abstractmethod
    def delete(self, task_id: str) -> Task:
        """Remove a finished task (DONE, FAILED or CANCELLED) with its training images and checkpoints, in one
        atomic change; return it as it was. The trained model stays where it was uploaded."""

    @abstractmethod
    def fetch_images(self, task: Task, dest: Path) -> Path:
        """Make the task's training images available as files in a local folder and return that folder."""

    def squash_history(self) -> str:
        """Drop the queue's history (deleted photos stay in old commits until then); returns what was done.

        Refused (InvalidTransition) while a task is RUNNING. A queue without history does nothing."""
        return f"{self!r} keeps no history: nothing to squash."
