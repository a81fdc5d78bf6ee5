"""How a training run ended, written to the queue: DONE, requeued, FAILED, or held by a spending cap.

``record_outcome`` is the worker's last step of a run (a Space's GPU container, or the worker inside a Job), and
``run_stop_at`` what its watchdog asks every poll interval: when a spending cap stops the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scheduler.billing import GpuPeriod
from scheduler.queue.base import InvalidTransition, TaskQueue
from scheduler.run_records import ClaimInfo, run_record
from scheduler.spending import Budget, cap_stop_note, caps_for, space_live, stop_for
from scheduler.status import WorkerStatus
from scheduler.task import Task, TaskStatus
from scheduler.trainer_process import TrainOutcome


def run_stop_at(settings: Any, task_id: str, tasks: Sequence[Task], periods: Sequence[GpuPeriod], now: float, *,
                in_job: bool) -> float | None:  # fmt: skip
    """When a spending cap stops task ``task_id``'s run (None: not before its deadline): inside a Job the stop stored
    on the task (the Jobs backend writes it for each attempt it starts); on a Space the one ``spending.stop_for``
    finds from the queue's last read (a stop stored on the task in a Jobs past is not this attempt's)."""
    task = next((t for t in tasks if t.id == task_id), None)
    if task is None:
        return None
    if in_job:
        return task.stop_at
    if settings.local:
        return None
    return stop_for(task, Budget(caps_for(settings), tuple(periods)), tasks, space_live(tasks, periods), now)


def record_outcome(queue: TaskQueue, status: WorkerStatus, holder: str, task: Task, outcome: TrainOutcome,
                   claim: ClaimInfo | None = None, *, now: float) -> bool:  # fmt: skip
    """Write how the run of ``task`` (held by ``holder``) ended to the queue; True when the task is finished (will
    not run again)."""
    try:
        if outcome.stopped and outcome.error == "cancelled":
            status.end_task(*status.why_stopped(task.id))
            return True
        if outcome.stopped:
            status.end_task("stopped", f"Task {task.id} stopped: {outcome.error or ''}")
            return False
        if outcome.capped:
            held = queue.hold_for_cap(task.id, holder, cap_stop_note(task, now))
            status.end_task("stopped", f"Task {task.id} {outcome.error}; it waits: {held.note}")
            return False
        if outcome.ok:
            run = run_record(task, outcome, claim) if claim is not None else None
            queue.complete(task.id, holder, outcome.result_url or "", run=run)
            status.end_task("done", f"Task {task.id} done: {outcome.result_url}")
            return True
        if outcome.retryable:
            after = queue.requeue(task.id, holder, outcome.error or "training failed")
            if after.status is TaskStatus.PENDING:
                note = f"Task {task.id} attempt {after.attempts} of {after.max_attempts} failed; it runs again"
                status.end_task("retrying", note, last_error=outcome.error)
                return False
            status.end_task("failed", f"Task {task.id} failed", last_error=after.last_error)
            return True
        queue.fail(task.id, holder, outcome.error or "training failed")
        status.end_task("failed", f"Task {task.id} failed", last_error=outcome.error)
        return True
    except InvalidTransition as exc:
        status.end_task("stopped", f"Task {task.id} changed while training ({exc}); result not recorded")
        return True  # cancelled, deleted or taken over: this container has no more use for the folder
