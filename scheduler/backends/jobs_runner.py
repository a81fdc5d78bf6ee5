"""The Jobs backend's executor: builds the ``JobsSnapshot``, runs ``decide_jobs`` and carries out its actions.

Each loop: one queue read and one listing of this Space's Jobs (``list_jobs`` by the ``dreambooth-space`` label),
plus the log tail of each alive Job (the Run view) and of each ended Job whose task is still RUNNING (the error).
Actions: ``run_job`` (image = this Space's, command = ``python -m scheduler run-task <id> --holder <h>``, flavor =
the task's hardware, timeout = the task's deadline plus a start-up margin, ``HF_TOKEN`` as a Job secret, labels =
task + Space + lease holder), ``cancel_job``, and the queue's compare-and-swap changes. It never asks for Space
hardware. Every Hub call goes through huggingface_hub; transient failures (5xx, 429, network) are retried with
``scheduler.retry``, and before each creation the task's Jobs are listed again, so a Job that did land behind an
ambiguous 5xx is adopted instead of started twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from huggingface_hub import HfApi, JobInfo

from contract.flavors import FLAVORS, is_gpu, jobs_prices
from contract.settings import DEFAULT_ENDPOINT, Settings
from scheduler.backends.jobs import (
    REFUSAL_BACKOFF_S,
    JobAction,
    JobActionKind,
    JobsSnapshot,
    JobView,
    decide_jobs,
    job_period_label,
)
from scheduler.billing import Claim, GpuPeriod
from scheduler.queue.base import InvalidTransition, QueueError, TaskQueue
from scheduler.redact import redact
from scheduler.retry import RetryPolicy, call_with_retries, http_status
from scheduler.spending import DAY_S, Budget, caps_for, job_timeout_s
from scheduler.stored import vetted_with_billing
from scheduler.task import Task

log = logging.getLogger(__name__)

LABEL_TASK, LABEL_SPACE, LABEL_HOLDER = "dreambooth-task", "dreambooth-space", "dreambooth-holder"
LOG_TAIL_LINES = 40
#: an alive Job's log tail is re-read at most this often (a read of a quiet running Job's logs can take seconds)
LOG_REFRESH_S = 30.0
BILLING_URL = "https://huggingface.co/settings/billing"
TOKENS_URL = "https://huggingface.co/settings/tokens"


class JobRefused(Exception):
    """The Hub refused to create a Job; ``fix`` tells the owner what to do."""

    def __init__(self, reason: str, fix: str, status: int | None = None) -> None:
        super().__init__(f"{reason} Fix: {fix}")
        self.reason, self.fix, self.status = reason, fix, status


def job_refusal(exc: BaseException, flavor: str, namespace: str) -> JobRefused | None:
    """The ``JobRefused`` a failed ``run_job`` means (no credit, no permission, unknown flavor), else None."""
    status = http_status(exc)
    text = str(getattr(exc, "server_message", "") or exc).lower()
    pretty = FLAVORS[flavor].label if flavor in FLAVORS else flavor
    if status == 402 or "credit" in text or "payment" in text or "billing" in text:
        return JobRefused(f"The Hub refused a Job on {pretty} for {namespace}: Jobs need a positive credit balance (HTTP {status}).",
                          f"Add credits or a payment method at {BILLING_URL}, then press Retry on the task.", status)  # fmt: skip
    if status == 401:
        return JobRefused(f"The Hub refused the token for Jobs in {namespace} (HTTP 401).",
                          f"Save a write token of {namespace} as the HF_TOKEN secret ({TOKENS_URL}), then press Retry.", status)  # fmt: skip
    if status == 403:
        return JobRefused(f"The token may not run Jobs in {namespace} (HTTP 403).",
                          f"Use a write token of {namespace}, or a fine-grained token allowed to start Jobs there ({TOKENS_URL}); "
                          "then press Retry on the task.", status)  # fmt: skip
    if status in (400, 404, 422):
        return JobRefused(f"The Hub does not run Jobs on the flavor {flavor!r} (HTTP {status}).",
                          "Choose another hardware flavor for the task (or set TRAIN_HARDWARE) and submit it again.", status)  # fmt: skip
    return None


def refusal_note(hardware: str, refused: JobRefused) -> str:
    """The note a task keeps while its Job is refused: the reason and the fix."""
    return f"Job for {hardware} refused: {refused.reason} Fix: {refused.fix}"


def space_label(space_id: str) -> str:
    """The ``dreambooth-space`` label value of a Space's Jobs."""
    return space_id


def _name(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def job_view(job: JobInfo, log_tail: tuple[str, ...] = ()) -> JobView | None:
    """A Job as the decision sees it; None for a Job without a task label (not ours)."""
    labels = job.labels or {}
    task_id = labels.get(LABEL_TASK)
    if not task_id:
        return None
    return JobView(
        job_id=job.id, task_id=task_id, stage=_name(job.status.stage) or "UNKNOWN", holder=labels.get(LABEL_HOLDER),
        flavor=_name(job.flavor), created_at=_ts(job.created_at), started_at=_ts(job.started_at),
        finished_at=_ts(job.finished_at), message=job.status.message, log_tail=log_tail,
    )  # fmt: skip


def gpu_seconds_in_day(jobs: list[JobView], now: float) -> float:
    """GPU seconds of ``jobs`` in the last 24 h: each Job's running time (from its start, billed) in that window,
    times its flavor's GPU count; CPU Jobs count 0."""
    total = 0.0
    for job in jobs:
        if job.started_at is None or not is_gpu(job.flavor):
            continue
        start, end = max(job.started_at, now - DAY_S), job.finished_at if job.finished_at is not None else now
        total += max(0.0, end - start) * FLAVORS[job.flavor or ""].gpus
    return total


def labelled_jobs(api: HfApi, namespace: str, labels: dict[str, str]) -> list[JobInfo]:
    """The Jobs of ``namespace`` that carry every one of ``labels`` (asked of the Hub by label, checked here too)."""
    found = list(api.list_jobs(labels=labels, namespace=namespace))
    return [j for j in found if all((j.labels or {}).get(k) == v for k, v in labels.items())]


def run_or_adopt(api: HfApi, *, namespace: str, match: dict[str, str], **spec: Any) -> tuple[JobInfo, bool]:
    """Start a Job (``run_job(**spec)`` in ``namespace``) unless one labelled ``match`` is alive there: then that
    one is adopted. Returns (the Job, whether it was started now). Retrying this whole function after an ambiguous
    5xx therefore never makes a second Job: the one that landed is found by its labels."""
    alive = [j for j in labelled_jobs(api, namespace, match) if (v := job_view(j)) is not None and v.alive]
    if alive:  # an earlier creation did land (an ambiguous 5xx) or another loop started one: adopt it
        return alive[0], False
    return api.run_job(namespace=namespace, **spec), True


def read_jobs_prices(api: HfApi, call: Callable[[Callable[[], Any]], Any] = lambda fn: fn()) -> tuple[dict[str, float], str]:
    """USD per hour per flavor from the Hub's public ``list_jobs_hardware`` (through ``call``: retries), and where the
    figures come from; a failure keeps ``contract.flavors``' fallback table (prices are an estimate)."""
    try:
        rows = [{"name": h.name, "unit_cost_usd": h.unit_cost_usd, "unit_label": h.unit_label}
                for h in call(api.list_jobs_hardware)]  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - prices are an estimate: keep the fallback table
        log.warning("list_jobs_hardware failed (%s); using the fallback price table", exc)
        rows = None
    return jobs_prices(rows)


def job_command(python: str, task_id: str, holder: str) -> list[str]:
    """The in-Job entry point (``scheduler.cli`` ``run-task``) run by ``python``."""
    return [python, "-u", "-m", "scheduler", "run-task", task_id, "--holder", holder]


def job_env(settings: Settings) -> dict[str, str]:
    """The non-secret settings a Job needs to claim, train and complete its task like this Space would."""
    s = settings
    env = {
        "SPACE_ID": s.space_id or "",
        "QUEUE_REPO": s.queue_repo or "",
        "TRAINING_BACKEND": "jobs",
        "MAX_ATTEMPTS": str(s.max_attempts),
        "TASK_DEADLINE_S": repr(s.deadline_s),
        "LEASE_S": repr(s.lease_s),
        "POLL_INTERVAL_S": repr(s.poll_interval_s),
        "RETRY_BASE_S": repr(s.retry_base_s),
        "BASE_MODELS": ",".join(s.base_models),
        "DEFAULT_BASE_MODEL": s.default_base_model,
        "ALLOW_CPU_TRAINING": "true" if s.allow_cpu_training else "false",
        "KEEP_PHOTOS": "true" if s.keep_photos else "false",
    }
    if s.hf_endpoint != DEFAULT_ENDPOINT:
        env["HF_ENDPOINT"] = s.hf_endpoint
    if s.output_namespace:
        env["OUTPUT_NAMESPACE"] = s.output_namespace
    if s.recipes_modules:
        env["TRAINING_RECIPES_MODULES"] = ",".join(s.recipes_modules)
    if s.training_script:
        env["TRAINING_SCRIPT"] = s.training_script
    if s.family_modules:
        env["TRAINING_FAMILY_MODULES"] = ",".join(s.family_modules)
    sources = s.sources()
    for name, var in (("scoring_dino_model", "SCORING_DINO_MODEL"), ("scoring_clip_model", "SCORING_CLIP_MODEL")):
        if sources.get(name) == var:  # set on the Space (None: turned off); unset keeps the trainer's default
            env[var] = getattr(s, name) or "none"
    if sources.get("caption_model") == "CAPTION_MODEL":  # the run's captioning model, when the Space sets one
        env["CAPTION_MODEL"] = s.caption_model
    return env


def job_log_tail(api: HfApi, namespace: str, job_id: str, token: str | None,
                 lines: int = LOG_TAIL_LINES) -> tuple[str, ...]:  # fmt: skip
    """A Job's last log lines with ``token`` masked; () when the logs cannot be read (they only explain)."""
    try:
        got = list(api.fetch_job_logs(job_id=job_id, namespace=namespace, follow=False, tail=lines))
    except Exception as exc:  # noqa: BLE001 - logs are a view: never let them stop the caller
        log.info("logs of Job %s unavailable: %s", job_id, exc)
        return ()
    return tuple(redact(str(line).rstrip("\n"), [token]) for line in got[-lines:])


def apply_follow_up(action: JobAction, queue: TaskQueue, cancel_job: Callable[[str], Any], now: float) -> bool:
    """Carry out one of ``decide_jobs``' follow-up actions: CANCEL_JOB (``cancel_job(job_id)``), REQUEUE and FAIL
    (the queue's change, matched to the action's lease holder), REQUEUE_EXPIRED (at ``now``). False for any other
    kind (nothing done)."""
    kind = action.kind
    if kind is JobActionKind.CANCEL_JOB:
        cancel_job(action.job_id or "")
    elif kind is JobActionKind.REQUEUE:
        queue.requeue(action.task_id or "", action.holder or "", action.reason)
    elif kind is JobActionKind.FAIL:
        queue.fail(action.task_id or "", action.holder, action.reason)
    elif kind is JobActionKind.REQUEUE_EXPIRED:
        queue.requeue_expired(now)
    else:
        return False
    return True


class JobsRunner:
    """Runs the queue's tasks as Hugging Face Jobs for the Space of ``settings`` (``TRAINING_BACKEND=jobs``)."""

    def __init__(
        self,
        settings: Settings,
        queue: TaskQueue,
        status: Any,
        api: HfApi | None = None,
        *,
        python: str = "python",
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.space_id or not settings.jobs_namespace or not settings.job_image:
            raise ValueError("The Jobs backend needs SPACE_ID (its image, labels and namespace come from it).")
        self.settings = settings
        self.queue = queue
        self.status = status
        self.api = api or HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token)
        self.python = python  # the Job's interpreter ("python" in the Space image)
        self.retry = retry or RetryPolicy(base_s=settings.retry_base_s, max_s=max(settings.retry_base_s * 8, 0.01))
        self._sleep = sleep
        self._clock = clock
        self.namespace = settings.jobs_namespace
        self.refused: dict[str, float] = {}  # task id -> when its Job creation was refused
        self._refused_at_update: dict[str, float] = {}  # task id -> its updated_at when refused (a change resets)
        self.prices: dict[str, float] = {}
        self.prices_source = ""
        self._logs: dict[str, tuple[float, bool, tuple[str, ...]]] = {}  # job id -> (read at, ended, tail)

    # ------------------------------------------------------------------------------------------- reading
    def _hub(self, fn: Callable[[], Any]) -> Any:
        return call_with_retries(fn, self.retry, sleep=self._sleep)

    def list_jobs(self, task_id: str | None = None) -> list[JobInfo]:
        """This Space's Jobs (of one task when ``task_id`` is given), filtered by label here too."""
        labels = {LABEL_SPACE: space_label(self.settings.space_id or "")}
        if task_id is not None:
            labels[LABEL_TASK] = task_id
        return self._hub(lambda: labelled_jobs(self.api, self.namespace or "", labels))

    def log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> tuple[str, ...]:
        """The Job's last log lines, token masked; () when the logs cannot be read (they only feed the UI)."""
        return job_log_tail(self.api, self.namespace or "", job_id, self.settings.hf_token, lines)

    def _cached_tail(self, view: JobView, now: float) -> tuple[tuple[str, ...], int]:
        """The Job's log tail: read once after it ended, at most every ``LOG_REFRESH_S`` while it runs."""
        cached = self._logs.get(view.job_id)
        if cached is not None and (cached[1] or (view.alive and now - cached[0] < LOG_REFRESH_S)):
            return cached[2], 0
        tail = self.log_tail(view.job_id)
        self._logs[view.job_id] = (now, not view.alive, tail)
        return tail, 1

    def read_prices(self) -> dict[str, float]:
        """USD per hour per flavor from ``list_jobs_hardware`` (fallback: ``contract.flavors``), read once."""
        if not self.prices:
            self.prices, self.prices_source = read_jobs_prices(self.api, self._hub)
        return self.prices

    def snapshot(self) -> tuple[JobsSnapshot, int]:
        """Read the queue and this Space's Jobs; return the snapshot and the Hub requests made."""
        tasks, billing = vetted_with_billing(self.queue, self.settings)
        infos = self.list_jobs()
        requests = 2
        now = self._clock()
        running = {t.id for t in tasks if t.status.value == "RUNNING"}
        views = []
        for info in infos:
            view = job_view(info)
            if view is None:
                continue
            if view.alive or view.task_id in running:  # the Run view, or the error of a task whose Job ended
                tail, fetched = self._cached_tail(view, now)
                view = job_view(info, tail)
                requests += fetched
            views.append(view)
        self._logs = {k: v for k, v in self._logs.items() if any(j.job_id == k for j in views)}
        for task in tasks:  # a task that changed since its refusal (the owner retried it) may be offered again
            if task.id in self.refused and task.updated_at != self._refused_at_update.get(task.id):
                self.refused.pop(task.id, None)
        recorded = frozenset(p.closed_by[4:] for p in billing if p.closed_by and p.closed_by.startswith("job "))
        cap = self.settings.jobs_gpu_hours_per_day
        snap = JobsSnapshot(
            tasks=tuple(tasks), jobs=tuple(views), now=now, max_parallel=self.settings.max_parallel_jobs,
            gpu_s_today=gpu_seconds_in_day(views, now), gpu_s_cap=None if cap is None else cap * 3600.0,
            refused=dict(self.refused), recorded_jobs=recorded, allow_cpu_training=self.settings.allow_cpu_training,
            refusal_backoff_s=REFUSAL_BACKOFF_S, budget=Budget(caps_for(self.settings, self.prices), tuple(billing), jobs=True),
        )  # fmt: skip
        self.status.update(tasks=tasks, billing=billing, jobs=list(views))
        return snap, requests

    # ------------------------------------------------------------------------------------------- one loop
    def step(self) -> tuple[list[JobAction], int]:
        """One loop: snapshot, decide, execute every action. Returns the actions and the Hub requests made."""
        snap, requests = self.snapshot()
        actions = decide_jobs(snap)
        for action in actions:
            if action.kind is not JobActionKind.WAIT:
                log.info(
                    "jobs action %s %s %s %s",
                    action.kind.value,
                    action.task_id or "",
                    action.job_id or "",
                    action.reason,
                )
            try:
                requests += self.execute(action, snap)
            except (InvalidTransition, QueueError) as exc:  # the task changed meanwhile: the next loop decides again
                log.warning("jobs action %s on %s not done: %s", action.kind.value, action.task_id, exc)
            except Exception as exc:  # noqa: BLE001 - a Hub failure on one action must not skip the others
                log.exception("jobs action %s on %s failed", action.kind.value, action.task_id)
                self.status.update(
                    last_error=f"{action.kind.value} {action.task_id or ''}: {type(exc).__name__}: {exc}"
                )
        self.status.update(
            last_action="; ".join(f"{a.kind.value}: {a.reason}" for a in actions)[:2000], last_action_at=time.time()
        )
        return actions, requests

    def execute(self, action: JobAction, snap: JobsSnapshot) -> int:
        """Carry out one action; returns the Hub requests it made (about)."""
        kind = action.kind
        if kind is JobActionKind.WAIT:
            pending = any(t.status.value == "PENDING" for t in snap.tasks)
            alive = any(j.alive for j in snap.jobs)
            self.status.update(
                phase="following Jobs" if alive else ("waiting" if pending else "idle"), message=action.reason
            )
            return 0
        if kind is JobActionKind.DISPATCH:
            task = next(t for t in snap.tasks if t.id == action.task_id)
            return self.dispatch(task, stop_at=action.stop_at, timeout_s=action.timeout_s)
        if apply_follow_up(action, self.queue, self.cancel_job, self._clock()):
            if kind is JobActionKind.CANCEL_JOB:
                self.status.update(message=f"Cancelled Job {action.job_id}: {action.reason}")
                return 1
        elif kind is JobActionKind.RECORD_COST:
            job = next(j for j in snap.jobs if j.job_id == action.job_id)
            self.record_cost(job, snap.now, next((t.submitted_by for t in snap.tasks if t.id == job.task_id), None))
        elif kind is JobActionKind.HOLD:
            self.queue.hold_for_cap(action.task_id or "", action.holder, action.reason)
        elif kind is JobActionKind.LIMIT:
            self.queue.limit_run(action.task_id or "", action.stop_at)
        self.status.update(message=f"{kind.value} {action.task_id or ''}: {action.reason.splitlines()[0]}")
        return 1

    # ------------------------------------------------------------------------------------------- actions
    def cancel_job(self, job_id: str) -> None:
        self._hub(lambda: self.api.cancel_job(job_id=job_id, namespace=self.namespace))

    def job_env(self) -> dict[str, str]:
        """The non-secret settings a Job needs to claim, train and complete its task like this Space would."""
        return job_env(self.settings)

    def job_command(self, task_id: str, holder: str) -> list[str]:
        """The in-Job entry point (``scheduler.cli`` ``run-task``)."""
        return job_command(self.python, task_id, holder)

    def dispatch(self, task: Task, *, stop_at: float | None = None, timeout_s: int | None = None) -> int:
        """Run one Job for ``task`` (adopting one that already runs for it); a refusal goes on the task's note.
        ``stop_at``: a spending cap stops the run then (written to the task first; a stale stop is cleared), and the
        Job's platform timeout is ``timeout_s`` instead of the deadline's."""
        holder = f"job:{uuid.uuid4().hex[:12]}"
        labels = {LABEL_TASK: task.id, LABEL_SPACE: space_label(self.settings.space_id or ""), LABEL_HOLDER: holder}
        requests = 0
        if task.stop_at != stop_at:
            self.queue.limit_run(task.id, stop_at)
            requests += 1

        def create() -> tuple[JobInfo, bool]:
            nonlocal requests
            requests += 2
            return run_or_adopt(
                self.api, namespace=self.namespace or "", match={k: labels[k] for k in (LABEL_SPACE, LABEL_TASK)},
                image=self.settings.job_image or "", command=self.job_command(task.id, holder), env=self.job_env(),
                secrets={"HF_TOKEN": self.settings.hf_token or ""}, flavor=task.hardware,
                timeout=timeout_s or job_timeout_s(task.deadline_s), labels=labels,
            )  # fmt: skip

        try:
            job, created = self._hub(create)
        except Exception as exc:
            refused = job_refusal(exc, task.hardware, self.namespace or "")
            if refused is None:
                raise
            self._refuse(task, refused)
            return requests
        verb = "Started" if created else "Adopted"
        self.status.update(phase="following Jobs", message=f"{verb} Job {job.id} for task {task.id} on {task.hardware}")
        return requests

    def _refuse(self, task: Task, refused: JobRefused) -> None:
        note = refusal_note(task.hardware, refused)
        self.status.update(phase="refused", message=note)
        try:
            stored = self.queue.set_note(task.id, note)
            self._refused_at_update[task.id] = stored.updated_at
        except QueueError:
            log.exception("could not store the refusal on task %s", task.id)
            self._refused_at_update[task.id] = task.updated_at
        self.refused[task.id] = self._clock()

    def record_cost(self, job: JobView, now: float, user: str | None = None) -> None:
        """Write the Job's period (created -> finished) to the queue's billing: the whole cost of that Job, its
        task's (submitted by ``user``)."""
        end = job.finished_at if job.finished_at is not None else now
        start = job.created_at if job.created_at is not None else end
        period = GpuPeriod(hardware=job.flavor or "", requested_at=start, released_at=max(start, end),
                           claims=[Claim(job.task_id, job.started_at or start, user)], closed_by=job_period_label(job.job_id))  # fmt: skip
        self.queue.record_period(period)
