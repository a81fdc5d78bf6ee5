"""What a non-owner may spend and where they may write: per-user caps and the output namespace.

The Space owner pays for every GPU minute and owns every repo the token can write, so allowed users who are not the
owner get bounded powers: a few queued tasks, a few GPU hours a day, and model repos in their own namespace (or
``OUTPUT_NAMESPACE``) that either do not exist yet or were made by this app for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from scheduler.task import Task, TaskStatus
from ui.auth import is_owner

DAY_S = 24 * 3600.0


def gpu_hours_today(user: str, tasks: Iterable[Task], now: float) -> float:
    """GPU hours ``user``'s tasks trained in the last 24 h (a running one counts up to now)."""
    seconds = 0.0
    for t in tasks:
        if t.submitted_by != user or t.started_at is None:
            continue
        end = t.finished_at if t.status.terminal and t.finished_at else now
        seconds += max(0.0, end - max(t.started_at, now - DAY_S))
    return seconds / 3600


def user_limit_problem(settings: Any, user: str, tasks: Iterable[Task], *, retry: Task | None = None,
                       now: float | None = None) -> str | None:  # fmt: skip
    """Why ``user`` may not queue one more task (or ``retry`` one) now; None for the owner and within the caps."""
    if is_owner(settings, user):
        return None
    now = time.time() if now is None else now
    tasks = list(tasks)
    live = [t for t in tasks if t.submitted_by == user and t.status in (TaskStatus.PENDING, TaskStatus.RUNNING)]
    live = [t for t in live if retry is None or t.id != retry.id]
    if len(live) >= settings.max_queued_per_user:
        return (f"{user} already has {len(live)} queued or running task(s); the limit per user is "
                f"{settings.max_queued_per_user} (MAX_QUEUED_PER_USER). Wait for one to finish or cancel one.")  # fmt: skip
    used = gpu_hours_today(user, tasks, now)
    if used >= settings.max_gpu_hours_per_user_day:
        return (f"{user} trained {used:.1f} GPU hours in the last 24 hours; the limit per user is "
                f"{settings.max_gpu_hours_per_user_day:g} (MAX_GPU_HOURS_PER_USER_DAY). Try again later.")  # fmt: skip
    return None


def output_namespace(settings: Any, user: str | None) -> str | None:
    """Where ``user``'s models go: the owner's to their account; others' to OUTPUT_NAMESPACE when set, else to
    their own account (None when nobody is signed in)."""
    if not user or is_owner(settings, user):
        return user
    return settings.output_namespace or user


def output_repo_problem(settings: Any, user: str, repo_id: str, tasks: Iterable[Task], api: Any) -> str | None:
    """Why a non-owner may not write ``repo_id``: outside their namespace, or an existing repo this app did not
    make for them (one of their own DONE tasks wrote it). None for the owner, and in local mode."""
    if is_owner(settings, user) or not repo_id:
        return None
    namespace = output_namespace(settings, user)
    if repo_id.split("/")[0] != namespace or "/" not in repo_id:
        return f"Output model repo: use a repo in {namespace}/ (for example {namespace}/dreambooth-my-subject)."
    made_for_user = any(t.submitted_by == user and t.output_repo == repo_id and t.status is TaskStatus.DONE for t in tasks)
    if made_for_user or api is None:
        return None
    try:
        exists = api.repo_exists(repo_id, repo_type="model")
    except Exception as exc:  # noqa: BLE001 - unknown is refused: the owner's repos are at stake
        return f"Output model repo: could not check whether {repo_id} exists ({type(exc).__name__}); try again."
    if exists:
        return f"Output model repo: {repo_id} already exists and was not made by this app for you; choose a new name."
    return None
