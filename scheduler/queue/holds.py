"""The queue changes of the spending caps (``scheduler.spending``): an earlier stop for a run, and a hold.

``op_limit_run`` sets when a spending cap stops the task's run (``Task.stop_at``); ``op_hold_for_cap`` holds a task
back with the cap's note: a PENDING one before it starts, or a RUNNING one that the cap stopped (back to PENDING,
its attempt given back: a stop by the cap is not a failed attempt). Each edits the document in place and returns the
task; raising leaves the stored queue untouched.
"""

from __future__ import annotations

from typing import Protocol

from scheduler.queue.base import InvalidTransition
from scheduler.task import Task, TaskStatus


class QueueDoc(Protocol):
    """What these changes use of ``scheduler.queue.document.QueueDoc`` (which imports this module)."""

    def require(self, task_id: str) -> Task: ...


def op_limit_run(doc: QueueDoc, task_id: str, stop_at: float | None, now: float) -> Task:
    """PENDING or RUNNING: the run stops at ``stop_at`` (None: no stop of a cap)."""
    task = doc.require(task_id)
    if task.status not in (TaskStatus.PENDING, TaskStatus.RUNNING):
        raise InvalidTransition(f"Cannot limit the run of task {task_id}: it is {task.status.value}.")
    if task.stop_at != stop_at:
        task.stop_at = stop_at
        task.updated_at = now
    return task


def op_hold_for_cap(doc: QueueDoc, task_id: str, holder: str | None, note: str, now: float) -> Task:
    """A PENDING task (``holder`` None) gets ``note``; a RUNNING one held by ``holder`` goes back to PENDING with
    it, its lease dropped and its attempt given back."""
    task = doc.require(task_id)
    if task.status is TaskStatus.PENDING and task.note == note:
        return task  # repeated after an answer was lost
    if holder is None:
        if task.status is not TaskStatus.PENDING:
            raise InvalidTransition(f"Cannot hold task {task_id}: it is {task.status.value}, not PENDING.")
    else:
        current = task.lease.holder if task.lease else None
        if task.status is not TaskStatus.RUNNING or current != holder:
            raise InvalidTransition(f"Cannot hold task {task_id}: it is {task.status.value}, held by {current!r}.")
        task.status = TaskStatus.PENDING
        task.lease = None
        task.attempts = max(0, task.attempts - 1)
    task.note = task.last_error = note
    task.stop_at = None
    task.updated_at = now
    return task
