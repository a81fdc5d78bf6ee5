"""The visitor-pays mode below the UI (issue 25): one signed-in visitor's queue, Jobs and models, all in their account.

Every function takes the visitor's token string and their ``VisitorToken`` (``scheduler.visitor_token``) per call and
keeps neither: the token goes into a short-lived ``HfApi`` and, for a Job, into its ``HF_TOKEN`` secret only; never
into the queue, a Job label or env, a log line or an exception message. ``settings`` are the Space's (endpoint,
Space id and image, trainer settings); its own ``hf_token`` is never used here.

- The visitor's tasks live in ``visitor_queue_repo(username)``: a private dataset repo ``<username>/dreambooth-
  space-tasks`` created with their token (``contribute-repos``: the app may write only the repos it created), the
  same ``HubQueue`` as the owner's queue. Their models go to private model repos in their namespace.
- A task runs as a Job in their namespace (image = this Space's, command = ``run-task``, platform timeout from the
  task's deadline, labels = app + task + holder), created as the Jobs backend does (``run_or_adopt``: a Job that
  landed behind an ambiguous 5xx is adopted, never doubled). A refused Job leaves the task waiting with a note.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from contract.settings import Settings
from scheduler.backends.jobs import JobView
from scheduler.backends.jobs_runner import (
    LABEL_HOLDER,
    LABEL_SPACE,
    LABEL_TASK,
    JobRefused,
    job_command,
    job_env,
    job_refusal,
    job_view,
    labelled_jobs,
    read_jobs_prices,
    refusal_note,
    run_or_adopt,
    space_label,
)
from scheduler.queue.hub import HubQueue
from scheduler.retry import RetryPolicy, call_with_retries, http_status
from scheduler.spending import job_timeout_s
from scheduler.stored import queue_checker
from scheduler.task import Task, TaskStatus
from scheduler.visitor_token import VisitorToken, fitted_deadline, fix_for, missing_scopes, task_fits_token

log = logging.getLogger(__name__)

VISITOR_QUEUE_NAME = "dreambooth-space-tasks"
LABEL_BILLING, BILLED_TO_VISITOR = "dreambooth-billing", "visitor"


class VisitorRefused(Exception):
    """The visitor's request cannot be done: ``reason`` and ``fix`` are for them (never their token)."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason} {fix}")
        self.reason, self.fix = reason, fix


@dataclass(frozen=True)
class Dispatched:
    """What ``dispatch`` did: ``job_id`` of the Job started (``created``) or adopted; else why not (``note``)."""

    task_id: str
    job_id: str | None = None
    created: bool = False
    note: str | None = None


@dataclass(frozen=True)
class VisitorView:
    """A visitor's own tasks (from their queue repo) and this Space's Jobs in their namespace."""

    tasks: tuple[Task, ...]
    jobs: tuple[JobView, ...]


def visitor_prices(settings: Settings) -> dict[str, object]:
    """The Hub's public Jobs prices read anonymously (nobody's token is needed for a price list), as the worker's
    status fields ``job_prices`` and ``job_prices_source``: a visitor's estimate is at the price they pay."""
    prices, source = read_jobs_prices(HfApi(endpoint=settings.hf_endpoint, token=False))
    return {"job_prices": prices, "job_prices_source": source}


def visitor_queue_repo(username: str) -> str:
    """The private dataset repo that holds ``username``'s tasks and photos."""
    return f"{username}/{VISITOR_QUEUE_NAME}"


def visitor_settings(settings: Settings, visitor: VisitorToken) -> Settings:
    """The Space's settings as a visitor's Job sees them: their queue, their namespace, no token."""
    name = visitor.username
    return dataclasses.replace(settings, queue_repo=visitor_queue_repo(name), jobs_namespace=name,
                               output_namespace=name, hf_token=None)  # fmt: skip


def visitor_api(token: str, visitor: VisitorToken, settings: Settings) -> HfApi:
    """A client for this one call; a missing or expired sign-in is refused before any request."""
    if not token:
        raise VisitorRefused("You are not signed in.", "Sign in with Hugging Face, then try again.")
    if visitor.expires_at is not None and visitor.expires_at <= time.time():
        raise VisitorRefused("Your sign-in has expired.", "Sign out and sign in again, then try again.")
    return HfApi(endpoint=settings.hf_endpoint, token=token)


def retry_policy(settings: Settings) -> RetryPolicy:
    """How the visitor's Hub calls are retried (transient failures only)."""
    return RetryPolicy(base_s=settings.retry_base_s, max_s=max(settings.retry_base_s * 8, 0.01))


def visitor_queue(token: str, visitor: VisitorToken, settings: Settings) -> HubQueue:
    """The visitor's queue, read and written with their token (the repo is created on the first write)."""
    own = visitor_settings(settings, visitor)
    queue = HubQueue(visitor_api(token, visitor, settings), own.queue_repo or "", retry=retry_policy(settings),
                     keep_photos=settings.keep_photos)  # fmt: skip
    queue.vet = queue_checker(queue, own)
    return queue


def require_room(queue: HubQueue, settings: Settings) -> None:
    """``VisitorRefused`` when the visitor already has ``settings.max_queued_per_user`` tasks queued or running."""
    live = [t for t in queue.list() if t.status in (TaskStatus.PENDING, TaskStatus.RUNNING)]
    if len(live) >= settings.max_queued_per_user:
        raise VisitorRefused(f"You already have {len(live)} queued or running task(s); the limit is "
                             f"{settings.max_queued_per_user} (MAX_QUEUED_PER_USER).",
                             "Wait for one to finish or cancel one.")  # fmt: skip


def submit(token: str, visitor: VisitorToken, settings: Settings, task: Task, images: Sequence[Path], *,
           now: float | None = None, needed_s: float | None = None) -> Task:  # fmt: skip
    """Enqueue ``task`` with its ``images`` in the visitor's queue repo (created private if missing).

    The task is the visitor's (``submitted_by``) and its model goes to a private repo in their namespace (a default
    name when ``output_repo`` is empty). A task that would outlive the sign-in gets a shorter deadline when the run's
    expected ``needed_s`` seconds fit with room (``fitted_deadline``). Raises ``VisitorRefused`` when the sign-in
    lacks ``contribute-repos``, when the task cannot fit the sign-in, when ``output_repo`` is in another namespace,
    or when the visitor already has ``settings.max_queued_per_user`` tasks queued or running."""
    missing = missing_scopes(visitor, ("contribute-repos",))
    if missing:
        raise VisitorRefused("Your sign-in may not create the repos that hold your photos and model.", fix_for(missing))
    now = time.time() if now is None else now
    late = task_fits_token(task.deadline_s, visitor, now)
    if late is not None:
        fitted = fitted_deadline(task.deadline_s, visitor, now, needed_s) if needed_s is not None else None
        if fitted is None:
            raise VisitorRefused("The task would outlive your sign-in.", late)
        task.deadline_s = fitted
    name = visitor.username
    task.submitted_by = name
    if not task.output_repo:
        from scheduler.output_names import default_output_repo

        task.output_repo = default_output_repo(name, task.instance_prompt, class_prompt=task.class_prompt)
    if task.output_repo.split("/")[0] != name:
        raise VisitorRefused(f"The model repo {task.output_repo} is not in your account.",
                             f"Choose a name under {name}/.")  # fmt: skip
    queue = visitor_queue(token, visitor, settings)
    require_room(queue, settings)
    queue.ensure_repo()
    stored = queue.enqueue(task, images)
    log.info("visitor task %s queued in %s", stored.id, queue.repo_id)
    return stored


def visitor_refusal(exc: BaseException, flavor: str, visitor: VisitorToken) -> JobRefused | None:
    """``job_refusal``'s reason for a failed ``run_job``, with the fix a visitor can act on (scopes, sign-in)."""
    refused = job_refusal(exc, flavor, visitor.username)
    if refused is None:
        return None
    if refused.status == 403:
        return JobRefused(refused.reason, fix_for(missing_scopes(visitor, ("jobs",)) or ["jobs"]), 403)
    if refused.status == 401:
        return JobRefused(refused.reason, "Sign out and sign in again, then press Retry on the task.", 401)
    return refused


def _note(queue: HubQueue, task: Task, note: str) -> Dispatched:
    queue.set_note(task.id, note)
    log.info("visitor task %s waits: %s", task.id, note.splitlines()[0])
    return Dispatched(task.id, note=note)


def dispatch(token: str, visitor: VisitorToken, settings: Settings, task_id: str, *, python: str = "python",
             now: float | None = None) -> Dispatched:  # fmt: skip
    """Run the visitor's PENDING task as a Job in their namespace, billed to them (``HF_TOKEN`` = their token, as
    a secret); adopt the Job already alive for it. A refusal (402, 403, 401, flavor; a sign-in too short for the
    task) is written on the task, which stays PENDING, and returned in ``note``."""
    if not settings.space_id or not settings.job_image:
        raise ValueError("The visitor-pays mode needs SPACE_ID (the Jobs' image and labels come from it).")
    queue = visitor_queue(token, visitor, settings)
    task = queue.get(task_id)
    if task.status is not TaskStatus.PENDING:
        return Dispatched(task.id, note=f"The task is {task.status.value}: nothing to run.")
    late = task_fits_token(task.deadline_s, visitor, time.time() if now is None else now)
    if late is not None:
        return _note(queue, task, f"Job for {task.hardware} not started: {late}")
    api, name = visitor_api(token, visitor, settings), visitor.username
    holder = f"job:{uuid.uuid4().hex[:12]}"
    match = {LABEL_SPACE: space_label(settings.space_id), LABEL_TASK: task.id}
    labels = {**match, LABEL_HOLDER: holder, LABEL_BILLING: BILLED_TO_VISITOR}
    own = visitor_settings(settings, visitor)
    try:
        job, created = call_with_retries(
            lambda: run_or_adopt(api, namespace=name, match=match, image=settings.job_image or "",
                                 command=job_command(python, task.id, holder), env=job_env(own),
                                 secrets={"HF_TOKEN": token}, flavor=task.hardware,
                                 timeout=job_timeout_s(task.deadline_s), labels=labels),
            retry_policy(settings),
        )  # fmt: skip
    except Exception as exc:
        refused = visitor_refusal(exc, task.hardware, visitor)
        if refused is None:
            raise VisitorRefused(f"The Hub did not start your Job (HTTP {http_status(exc)}, {type(exc).__name__}).",
                                 "Wait a minute and press Retry.") from None  # fmt: skip
        return _note(queue, task, refusal_note(task.hardware, refused))
    if task.note:
        queue.set_note(task.id, None)  # an earlier refusal no longer holds
    log.info("visitor task %s: %s Job %s", task.id, "started" if created else "adopted", job.id)
    return Dispatched(task.id, job_id=job.id, created=created)


def visitor_jobs(token: str, visitor: VisitorToken, settings: Settings) -> list[JobView]:
    """This Space's Jobs in the visitor's namespace (by label, with their token)."""
    api = visitor_api(token, visitor, settings)
    labels = {LABEL_SPACE: space_label(settings.space_id or "")}
    found = call_with_retries(lambda: labelled_jobs(api, visitor.username, labels), retry_policy(settings))
    return [v for j in found if (v := job_view(j)) is not None]


def list_visitor(token: str, visitor: VisitorToken, settings: Settings) -> VisitorView:
    """The visitor's tasks (none before their first submit) and Jobs."""
    return VisitorView(tuple(visitor_queue(token, visitor, settings).list()),
                       tuple(visitor_jobs(token, visitor, settings)))  # fmt: skip


def cancel(token: str, visitor: VisitorToken, settings: Settings, task_id: str) -> Task:
    """Cancel the visitor's task and every alive Job of it in their namespace."""
    api = visitor_api(token, visitor, settings)
    queue = visitor_queue(token, visitor, settings)
    queue.get(task_id)  # TaskNotFound before any write: an id not in their queue creates no repo
    task = queue.cancel(task_id)
    for job in visitor_jobs(token, visitor, settings):
        if job.task_id == task_id and job.alive:
            call_with_retries(lambda j=job: api.cancel_job(job_id=j.job_id, namespace=visitor.username),
                              retry_policy(settings))  # fmt: skip
            log.info("visitor task %s: cancelled Job %s", task_id, job.job_id)
    return task
