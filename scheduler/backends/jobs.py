"""The Jobs backend's decisions as one pure function: ``decide_jobs(snapshot) -> list[JobAction]``.

The Space stays on its idle hardware and runs each task as one Hugging Face Job (README: "Training on Hugging Face Jobs"). Each loop the
executor (``scheduler.backends.jobs_runner``) builds a ``JobsSnapshot`` from one queue read and one listing of this
Space's Jobs (by label), calls ``decide_jobs`` and carries out the actions. No I/O here: every row of the table is a
plain table-driven test (tests/scheduler/test_jobs_lifecycle.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from contract.flavors import FLAVORS, is_gpu
from scheduler.billing import Claim, GpuPeriod
from scheduler.spending import (
    END_MARGIN_S,
    EXIT_MARGIN_S,
    MINUTE_S,
    Budget,
    Live,
    cap_held,
    cap_stop_note,
    job_limits,
    job_timeout_s,
    planned_end,
    start_check,
    start_worst_s,
    startable,
    stop_changed,
    stop_for,
)
from scheduler.task import Task, TaskStatus

#: the Job stages after which a Job runs no more (huggingface_hub's ``JobStage``)
TERMINAL_STAGES = frozenset({"COMPLETED", "CANCELED", "ERROR", "DELETED"})
#: a DONE or FAILED task's Job still alive this long after the task finished is cancelled (it only exits by then)
JOB_EXIT_GRACE_S = 120.0
#: after a refused creation, the same task is not offered to the Hub again for this long (unless it changes)
REFUSAL_BACKOFF_S = 15 * 60
LOG_LINES_IN_ERRORS = 15
#: a RUNNING task's Job still alive this long after its cap stop is cancelled (its trainer did not stop by itself)
CAP_CANCEL_AFTER_S = END_MARGIN_S - MINUTE_S


class JobActionKind(str, Enum):  # noqa: UP042 - str(kind) formatting, as lifecycle.ActionKind
    DISPATCH = "dispatch"  # run one Job for action.task_id on action.hardware
    CANCEL_JOB = "cancel_job"  # cancel action.job_id (its task was cancelled, deleted, finished or hung)
    REQUEUE = "requeue"  # the task's Job ended while the task is RUNNING: back to PENDING (resumes from checkpoint)
    FAIL = "fail"  # mark action.task_id FAILED with action.reason
    REQUEUE_EXPIRED = "requeue_expired"  # RUNNING tasks whose lease lapsed with no Job alive: requeue or fail them
    RECORD_COST = "record_cost"  # write a terminal Job's period (created -> finished) to the queue's billing
    HOLD = "hold"  # a spending cap holds action.task_id: PENDING before it starts, or RUNNING (holder) it stopped
    LIMIT = "limit"  # a spending cap stops action.task_id's run at action.stop_at
    WAIT = "wait"  # nothing to do now; action.reason says why


@dataclass(frozen=True)
class JobView:
    """One of this Space's Jobs as the snapshot saw it (times are unix seconds)."""

    job_id: str
    task_id: str  # its ``dreambooth-task`` label
    stage: str
    holder: str | None = None  # its ``dreambooth-holder`` label: the lease holder its claim uses
    flavor: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    message: str | None = None  # the platform's status message (e.g. why it ended in ERROR)
    log_tail: tuple[str, ...] = ()  # its last log lines, where the executor fetched them

    @property
    def alive(self) -> bool:
        return self.stage not in TERMINAL_STAGES


@dataclass(frozen=True)
class JobsSnapshot:
    """Everything ``decide_jobs`` may look at. Built by the executor once per loop."""

    tasks: tuple[Task, ...]
    jobs: tuple[JobView, ...]
    now: float
    max_parallel: int = 2
    gpu_s_today: float = 0.0  # GPU seconds of this Space's Jobs in the last 24 h
    gpu_s_cap: float | None = None  # JOBS_GPU_HOURS_PER_DAY in seconds; None: no cap
    refused: Mapping[str, float] = field(default_factory=dict)  # task id -> when its Job creation was refused
    recorded_jobs: frozenset[str] = frozenset()  # Job ids whose period the queue's billing already holds
    allow_cpu_training: bool = False
    refusal_backoff_s: float = REFUSAL_BACKOFF_S
    budget: Budget | None = None  # the spending caps and the queue's billed periods (None: no cap)


@dataclass(frozen=True)
class JobAction:
    kind: JobActionKind
    task_id: str | None = None
    job_id: str | None = None
    hardware: str | None = None
    holder: str | None = None  # REQUEUE/FAIL/HOLD of a RUNNING task: the lease holder the queue change must match
    reason: str = ""
    stop_at: float | None = None  # DISPATCH/LIMIT: when a spending cap stops the run (None: at its deadline)
    timeout_s: int | None = None  # DISPATCH: the Job's platform timeout (None: the deadline's, ``job_timeout_s``)


def job_period_label(job_id: str) -> str:
    """The ``closed_by`` of the GPU period that records Job ``job_id`` (finds it again: recorded once)."""
    return f"job {job_id}"[:64]


def unrecorded_periods(jobs: Iterable[JobView], recorded: Iterable[str], tasks: Iterable[Task],
                       now: float) -> list[GpuPeriod]:  # fmt: skip
    """The periods of the Jobs the queue's billing does not hold yet (``recorded``: the Job ids it does), as
    ``record_cost`` will write them; an alive Job's is open (billed up to now)."""
    users, done = {t.id: t.submitted_by for t in tasks}, set(recorded)
    periods = []
    for job in jobs:
        if job.job_id in done or job.created_at is None:
            continue
        end = None if job.alive else (job.finished_at if job.finished_at is not None else now)
        claim = Claim(job.task_id, job.started_at or job.created_at, users.get(job.task_id))
        periods.append(GpuPeriod(job.flavor or "", job.created_at, None if end is None else max(end, job.created_at),
                                 [claim], closed_by=job_period_label(job.job_id)))  # fmt: skip
    return periods


def jobs_live(tasks: Iterable[Task], jobs: Iterable[JobView], now: float) -> list[Live]:
    """What the alive Jobs may still bill: until the Job's timeout from its creation, or its task's planned end
    (deadline or cap stop) plus the end margin, whichever comes first; a Job whose task is gone or finished only
    exits."""
    by_id = {t.id: t for t in tasks}
    live = []
    for job in (j for j in jobs if j.alive):
        task = by_id.get(job.task_id)
        created = job.created_at if job.created_at is not None else now
        if task is None or task.status.terminal:
            ends = now + EXIT_MARGIN_S
        else:
            ends = created + job_timeout_s(task.deadline_s) + MINUTE_S  # a minute of scheduling, as ``start_worst_s``
            end = planned_end(task)
            if end is None and task.stop_at is not None:  # dispatched with an earlier stop, not claimed yet
                end = task.stop_at
            ends = ends if end is None else min(ends, end + EXIT_MARGIN_S)
        flavor = job.flavor or (task.hardware if task is not None else "")
        user = task.submitted_by if task is not None else ""
        live.append(Live(job.task_id, user, flavor, created, max(ends, created), created))
    return live


def _budget(snap: JobsSnapshot) -> tuple[Budget, list[Live]] | None:
    """The snapshot's budget with the Jobs not recorded yet, and what the alive Jobs may still bill."""
    if snap.budget is None:
        return None
    extra = unrecorded_periods(snap.jobs, snap.recorded_jobs, snap.tasks, snap.now)
    budget = replace(snap.budget, periods=(*snap.budget.periods, *extra), jobs=True)
    return budget, jobs_live(snap.tasks, snap.jobs, snap.now)


def _ended(job: JobView) -> str:
    text = f"its Job {job.job_id} ended {job.stage}"
    return text + (f" ({job.message})" if job.message else "")


def _with_log(reason: str, job: JobView) -> str:
    lines = job.log_tail[-LOG_LINES_IN_ERRORS:]
    return reason + ("\nLast lines of the Job's log:\n" + "\n".join(lines) if lines else "")


def _cancellations(snap: JobsSnapshot, by_id: dict[str, Task]) -> list[JobAction]:
    """Alive Jobs that have no more use: task cancelled or deleted, finished a while ago, hung, or redundant."""
    actions = []
    oldest_alive: dict[str, JobView] = {}
    for job in sorted(snap.jobs, key=lambda j: (j.created_at or 0.0, j.job_id)):
        if job.alive:
            oldest_alive.setdefault(job.task_id, job)
    for job in snap.jobs:
        if not job.alive:
            continue
        task = by_id.get(job.task_id)
        why = None
        if task is None:
            why = f"task {job.task_id} was deleted"
        elif task.status is TaskStatus.CANCELLED:
            why = f"task {task.id} was cancelled"
        elif task.status.terminal and snap.now - (task.finished_at or task.updated_at) > JOB_EXIT_GRACE_S:
            why = f"task {task.id} is {task.status.value} but its Job still runs"
        elif task.status is TaskStatus.RUNNING and task.lease is not None and job.holder != task.lease.holder:
            why = f"task {task.id} is held by {task.lease.holder}, not by this Job"
        elif (
            task.status is TaskStatus.RUNNING
            and task.stop_at is not None
            and snap.now > task.stop_at + CAP_CANCEL_AFTER_S
        ):
            why = f"task {task.id} runs past the stop of a spending cap"
        elif task.status is TaskStatus.RUNNING and task.lease_expired(snap.now):
            why = f"task {task.id}'s lease expired while its Job runs: the trainer stopped renewing it (hung)"
        elif task.status is TaskStatus.PENDING and oldest_alive[job.task_id].job_id != job.job_id:
            why = f"task {task.id} already has a Job ({oldest_alive[job.task_id].job_id})"
        if why:
            actions.append(JobAction(JobActionKind.CANCEL_JOB, task_id=job.task_id, job_id=job.job_id, reason=why))
    return actions


def _follow_running(task: Task, jobs: list[JobView], now: float) -> JobAction | None:
    """A RUNNING task: follow its alive Job; requeue/fail it when its Job ended; lost Job: after the lease lapses."""
    holder = task.lease.holder if task.lease else None
    mine = [j for j in jobs if holder is not None and j.holder == holder]
    if any(j.alive for j in mine):
        return None  # followed: progress from the heartbeats, stage and log tail from the Job (or cancelled above)
    if mine:
        job = mine[-1]
        if task.stop_at is not None and (job.finished_at or now) >= task.stop_at:
            # the cap stopped it (the trainer did not record that itself): held, its attempt given back
            return JobAction(JobActionKind.HOLD, task_id=task.id, job_id=job.job_id, holder=holder,
                             reason=cap_stop_note(task, task.stop_at))  # fmt: skip
        if task.attempts >= task.max_attempts:
            reason = f"Gave up after {task.attempts} of {task.max_attempts} attempts: {_ended(job)}."
            return JobAction(
                JobActionKind.FAIL, task_id=task.id, job_id=job.job_id, holder=holder, reason=_with_log(reason, job)
            )
        reason = f"Attempt {task.attempts} of {task.max_attempts} stopped: {_ended(job)}; it runs again from its last checkpoint."
        return JobAction(
            JobActionKind.REQUEUE, task_id=task.id, job_id=job.job_id, holder=holder, reason=_with_log(reason, job)
        )
    if task.lease_expired(now):
        return JobAction(
            JobActionKind.REQUEUE_EXPIRED,
            task_id=task.id,
            reason=f"task {task.id}: lease expired and no Job alive for it (lost Job)",
        )
    return None  # no Job of its holder seen while the lease lives (a listing that lags, or another backend): wait


def unclaimed_jobs(task: Task, jobs: list[JobView]) -> list[JobView]:
    """The task's Jobs that ended since the task last changed: they never claimed it (a claim writes the task), so
    each died before training started (an image that does not start, a download that fails). Counted against the
    task's attempts, so such Jobs are not started again without end; a retry or requeue writes the task and starts
    the count again."""
    return [j for j in jobs if not j.alive and (j.created_at or 0.0) >= task.updated_at]


def decide_jobs(snap: JobsSnapshot) -> list[JobAction]:
    """The actions of this loop, from the snapshot alone (no I/O), in the order to carry them out:

    1. Cancel the Jobs that have no more use: their task was cancelled or deleted, finished more than
       ``JOB_EXIT_GRACE_S`` ago, has a newer alive Job, or is RUNNING with a lapsed lease (the trainer hangs).
    2. A RUNNING task whose Job (the one labelled with its lease holder) is alive is followed. That Job ended (ERROR,
       CANCELED, DELETED, timeout, or even COMPLETED without completing the task): requeue it (FAIL with the Job's
       last log lines when out of attempts). No such Job at all (lost): once its lease lapsed, requeue it as a dead
       container (``REQUEUE_EXPIRED``); while the lease lives, wait (the listing may lag).
    3. A PENDING task out of attempts (and no Job alive): FAIL with its last error; one whose last
       ``max_attempts`` Jobs all ended without claiming it (``unclaimed_jobs``): FAIL with the last one's log lines.
    4. A terminal Job whose period is not in the queue's billing yet: ``RECORD_COST`` (once per Job). With a
       ``budget``, a RUNNING task whose end would pass a spending cap gets an earlier stop (``LIMIT``; its trainer
       stops there with a checkpoint and the task is held); its Job ended past that stop: ``HOLD`` (not a failed
       attempt); still alive ``CAP_CANCEL_AFTER_S`` after it: cancelled.
    5. Runnable tasks (PENDING, attempts left, no note) without an alive Job, oldest first, each once: DISPATCH while
       a Job slot is free and the daily GPU-hours cap is not reached; a task refused less than ``refusal_backoff_s``
       ago is skipped (its note holds the reason and the fix). With a ``budget`` a start must fit the spending caps
       (``spending.start_check``): else ``HOLD`` (its note says why; a task held so starts once it fits), or it
       starts with an earlier stop and a shorter Job timeout. Nothing to do: one WAIT that says why.
    """
    tasks = sorted(snap.tasks, key=lambda t: t.created_at)
    by_id = {t.id: t for t in tasks}
    by_task: dict[str, list[JobView]] = {}
    for job in sorted(snap.jobs, key=lambda j: (j.created_at or 0.0, j.job_id)):
        by_task.setdefault(job.task_id, []).append(job)
    actions = _cancellations(snap, by_id)
    cancelling = {a.job_id for a in actions}
    failing: set[str] = set()

    for task in tasks:
        jobs = by_task.get(task.id, [])
        has_alive = any(j.alive for j in jobs)
        if task.status is TaskStatus.RUNNING:
            follow = _follow_running(task, jobs, snap.now)  # a Job being cancelled ends first
            if follow is not None:
                actions.append(follow)
        elif task.status is TaskStatus.PENDING and task.attempts >= task.max_attempts and not has_alive:
            last = f" Last error: {task.last_error}" if task.last_error else ""
            reason = f"Gave up after {task.attempts} of {task.max_attempts} attempts.{last}"
            actions.append(JobAction(JobActionKind.FAIL, task_id=task.id, reason=reason))
            failing.add(task.id)
        elif task.status is TaskStatus.PENDING and not has_alive:
            unclaimed = unclaimed_jobs(task, jobs)
            if len(unclaimed) >= task.max_attempts:
                reason = (f"{len(unclaimed)} Jobs ended before they could claim the task (none started training; "
                          f"the last: {_ended(unclaimed[-1]).removeprefix('its ')}).")  # fmt: skip
                actions.append(JobAction(JobActionKind.FAIL, task_id=task.id, reason=_with_log(reason, unclaimed[-1])))
                failing.add(task.id)

    for job in snap.jobs:
        if not job.alive and job.job_id not in snap.recorded_jobs and job.created_at is not None and job.flavor:
            actions.append(JobAction(JobActionKind.RECORD_COST, task_id=job.task_id, job_id=job.job_id, hardware=job.flavor,
                                     reason=f"Job {job.job_id} ended: its period is task {job.task_id}'s cost"))  # fmt: skip

    budget = _budget(snap)
    if budget is not None:  # running tasks whose end would pass a cap stop earlier (the oldest keeps its room)
        acted = {a.task_id for a in actions}
        for task in tasks:
            if (
                task.status is TaskStatus.RUNNING
                and task.id not in acted
                and any(j.alive for j in by_task.get(task.id, []))
            ):
                stop = stop_for(task, budget[0], tasks, budget[1], snap.now)
                if stop is not None and stop_changed(task, stop):
                    actions.append(JobAction(JobActionKind.LIMIT, task_id=task.id, stop_at=stop,
                                             reason=f"task {task.id} stops early: its end would pass a spending cap"))  # fmt: skip

    alive = sum(1 for j in snap.jobs if j.alive and j.job_id not in cancelling)
    free = max(0, snap.max_parallel - alive)
    waits: list[str] = []
    for task in tasks:
        if not startable(task) or task.id in failing or any(j.alive for j in by_task.get(task.id, [])):
            continue
        refused_at = snap.refused.get(task.id)
        if refused_at is not None and snap.now - refused_at < snap.refusal_backoff_s:
            waits.append(f"task {task.id}: its Job was refused; it waits for its owner")
            continue
        if task.hardware not in FLAVORS or not (is_gpu(task.hardware) or snap.allow_cpu_training):
            reason = f"Hardware {task.hardware!r} is not a flavor a Job can train on."
            actions.append(JobAction(JobActionKind.FAIL, task_id=task.id, reason=reason))
            continue
        if snap.gpu_s_cap is not None and snap.gpu_s_today >= snap.gpu_s_cap:
            cap_h, used_h = snap.gpu_s_cap / 3600, snap.gpu_s_today / 3600
            waits.append(f"task {task.id} waits: the daily cap of {cap_h:g} GPU hours of Jobs is reached "
                         f"({used_h:.2f} h in the last 24 h; JOBS_GPU_HOURS_PER_DAY)")  # fmt: skip
            continue
        if free <= 0:
            waits.append(
                f"task {task.id} waits for a free Job slot ({snap.max_parallel} Jobs run at once; MAX_PARALLEL_JOBS)"
            )
            continue
        stop_at = timeout = None
        if budget is not None:
            start = start_check(task, budget[0], tasks, budget[1], snap.now)
            if start.problem is not None:
                if not cap_held(task):
                    actions.append(JobAction(JobActionKind.HOLD, task_id=task.id, reason=start.problem))
                waits.append(f"task {task.id} waits: {task.note if cap_held(task) else start.problem}")
                continue
            end = snap.now + start_worst_s(task.deadline_s, True)
            if start.room_s is not None:  # it starts with an earlier stop, and a shorter platform timeout
                stop_at, timeout = job_limits(start.room_s, snap.now)
                end = snap.now + timeout + MINUTE_S
            budget[1].append(Live(task.id, task.submitted_by, task.hardware, snap.now, end, snap.now))
        free -= 1
        actions.append(
            JobAction(
                JobActionKind.DISPATCH,
                task_id=task.id,
                hardware=task.hardware,
                reason=f"task {task.id} runs as a Job on {task.hardware}",
                stop_at=stop_at,
                timeout_s=timeout,
            )
        )

    if not actions:
        if waits:
            reason = waits[0]
        elif alive:
            reason = f"following {alive} running Job(s)"
        else:
            held = next((t for t in tasks if t.status is TaskStatus.PENDING and t.note), None)
            reason = f"task {held.id} waits for its owner: {held.note}" if held else "no task to run"
        actions.append(JobAction(JobActionKind.WAIT, reason=reason))
    return actions
