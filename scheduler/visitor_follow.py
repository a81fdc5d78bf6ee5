"""Following a visitor's tasks and Jobs in their own requests (visitor-pays mode, issue 25).

The Space keeps no visitor token after the request that used it, so no background loop follows a visitor's Jobs:
their page's Refresh (and page load) runs ``follow_up`` and their Retry runs ``retry``, each with the token of that
request only. ``follow_up`` makes the Jobs backend's own decisions (``decide_jobs``) on one listing of their tasks
and Jobs and carries out the follow-up ones as the owner's runner does (``apply_follow_up``): a useless Job is
cancelled, a RUNNING task whose Job ended (or was lost) is requeued, or failed when out of attempts. It never starts
a Job: a new Job starts only when the visitor presses Train or Retry (``retry``), and it resumes from the
checkpoints the earlier one mirrored to their queue repo.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from contract.settings import Settings
from scheduler import visitor_queue as vq
from scheduler.backends.jobs import JobActionKind, JobsSnapshot, JobView, decide_jobs
from scheduler.backends.jobs_runner import apply_follow_up, job_log_tail
from scheduler.queue.base import InvalidTransition, QueueError
from scheduler.retry import call_with_retries
from scheduler.task import Task, TaskStatus
from scheduler.visitor_token import VisitorToken

log = logging.getLogger(__name__)

#: the decisions a visitor's request carries out (no DISPATCH: only Train and Retry start a Job; no costs or caps)
FOLLOW_UP = frozenset({JobActionKind.CANCEL_JOB, JobActionKind.REQUEUE, JobActionKind.FAIL,
                       JobActionKind.REQUEUE_EXPIRED})  # fmt: skip


def _ended_under_lease(task: Task, job: JobView) -> bool:
    """Whether ``job`` is the ended Job of RUNNING ``task``'s holder (its log tail explains the requeue or failure)."""
    holder = task.lease.holder if task.lease else None
    return task.status is TaskStatus.RUNNING and not job.alive and holder is not None and job.holder == holder


def follow_up(token: str, visitor: VisitorToken, settings: Settings, now: float | None = None) -> vq.VisitorView:
    """Read the visitor's tasks and Jobs (one ``list_visitor``), carry out the follow-up decisions of the Jobs
    backend with their token, and return their view after the changes (the first one when nothing changed).

    A change that the task made meanwhile (``InvalidTransition``, ``QueueError``) is skipped: the next Refresh
    decides again."""
    view = vq.list_visitor(token, visitor, settings)
    now = time.time() if now is None else now
    api = vq.visitor_api(token, visitor, settings)
    by_id = {t.id: t for t in view.tasks}
    jobs = []
    for job in view.jobs:
        task = by_id.get(job.task_id)
        if task is not None and _ended_under_lease(task, job):  # the reason of a requeue or failure: its last lines
            tail = job_log_tail(api, visitor.username, job.job_id, token)
            job = dataclasses.replace(job, log_tail=tail)
        jobs.append(job)
    snap = JobsSnapshot(tasks=view.tasks, jobs=tuple(jobs), now=now, max_parallel=settings.max_queued_per_user,
                        allow_cpu_training=settings.allow_cpu_training)  # fmt: skip
    actions = [a for a in decide_jobs(snap) if a.kind in FOLLOW_UP]
    if not actions:
        return view
    queue = vq.visitor_queue(token, visitor, settings)

    def cancel_job(job_id: str) -> None:
        call_with_retries(lambda: api.cancel_job(job_id=job_id, namespace=visitor.username), vq.retry_policy(settings))

    for action in actions:
        try:
            apply_follow_up(action, queue, cancel_job, now)
        except (InvalidTransition, QueueError) as exc:  # the task changed meanwhile
            log.warning("visitor follow-up %s on %s not done: %s", action.kind.value, action.task_id, type(exc).__name__)
            continue
        log.info("visitor follow-up %s %s %s", action.kind.value, action.task_id or "", action.job_id or "")
    return vq.list_visitor(token, visitor, settings)


def retry(token: str, visitor: VisitorToken, settings: Settings, task_id: str, *, python: str = "python",
          now: float | None = None) -> vq.Dispatched:  # fmt: skip
    """Start the visitor's task again as a new Job (``vq.dispatch``), which resumes from the checkpoints mirrored
    to their queue repo. A PENDING task held by a note (a refused Job) or a FAILED or CANCELLED one is made runnable
    first (the queue's ``retry``); a RUNNING one is followed up first (its Job may have ended). Raises
    ``TaskNotFound`` when the task is not in their queue, ``InvalidTransition`` when it cannot run again (DONE, its
    photos removed) and ``VisitorRefused`` when it would pass ``max_queued_per_user``."""
    queue = vq.visitor_queue(token, visitor, settings)
    task = queue.get(task_id)
    if task.status is TaskStatus.RUNNING:
        follow_up(token, visitor, settings, now)
        task = queue.get(task_id)
        if task.status is TaskStatus.RUNNING:
            return vq.Dispatched(task.id, note="The task is RUNNING: its Job still trains. Cancel it to stop it.")
    if task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        vq.require_room(queue, settings)
    if task.note or task.status is not TaskStatus.PENDING:
        queue.retry(task_id)  # InvalidTransition for a DONE task
    return vq.dispatch(token, visitor, settings, task_id, python=python, now=now)
