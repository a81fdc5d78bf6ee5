"""What a non-owner may spend and where they may write: per-user caps and the output namespace.

The Space owner pays for every GPU minute and owns every repo the token can write, so allowed users who are not the
owner get bounded powers: a few queued tasks, a few GPU hours a day (counted as billed, ``scheduler.spending``; the
worker applies the same cap again before each GPU request or Job), and model repos named after them in a namespace
the Space's token can write (``OUTPUT_NAMESPACE``, else the owner's: ``alice/bob-dreambooth-sks-dog``) that either
do not exist yet or were made by this app for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contract.flavors import FLAVORS
from scheduler.backends.jobs import JobView, jobs_live, unrecorded_periods
from scheduler.billing import GpuPeriod
from scheduler.output_names import default_output_repo
from scheduler.spending import MIN_START_S, Budget, Live, caps_for, space_live, user_room_s, user_usage
from scheduler.task import Task, TaskStatus
from ui.auth import is_owner


def budget_now(settings: Any, tasks: Sequence[Task], periods: Sequence[GpuPeriod] = (), jobs: Iterable[JobView] = (),
               now: float | None = None, prices: Mapping[str, float] | None = None) -> tuple[Budget, list[Live]]:  # fmt: skip
    """The caps with what is billed (the queue's periods; in Jobs mode also the Jobs not recorded yet, as the worker
    last listed them) and what runs now."""
    now = time.time() if now is None else now
    uses_jobs = bool(getattr(settings, "uses_jobs", False))
    periods, jobs = list(periods), list(jobs)
    if uses_jobs:
        recorded = [p.closed_by[4:] for p in periods if (p.closed_by or "").startswith("job ")]
        periods += unrecorded_periods(jobs, recorded, tasks, now)
    live = jobs_live(tasks, jobs, now) if uses_jobs else space_live(tasks, periods)
    return Budget(caps_for(settings, prices), tuple(periods), jobs=uses_jobs), live


def user_cap_text(settings: Any, hardware: str | None = None, prices: Mapping[str, float] | None = None) -> str:
    """The per-user cap in hours and in dollars, e.g. "2 GPU hours a day (about $0.80 on Nvidia T4 small)"."""
    hours = float(settings.max_gpu_hours_per_user_day)
    flavor = hardware or settings.train_hardware
    price = caps_for(settings, prices).price(flavor)
    label = FLAVORS[flavor].label if flavor in FLAVORS else flavor
    return f"{hours:g} GPU hours a day (about ${hours * price:.2f} on {label})"


def user_limit_problem(settings: Any, user: str, tasks: Iterable[Task], *, periods: Sequence[GpuPeriod] = (),
                       jobs: Iterable[JobView] = (), retry: Task | None = None, now: float | None = None,
                       hardware: str | None = None, prices: Mapping[str, float] | None = None) -> str | None:  # fmt: skip
    """Why ``user`` may not queue one more task (or ``retry`` one) now; None for the owner and within the caps.

    The GPU-hours cap counts what the user's tasks were billed in the last 24 hours (their share of the queue's GPU
    periods and Jobs, cancelled and deleted tasks included; ``periods``, ``jobs``) and what their running tasks may
    still use (until their deadline), and needs room for a start (``spending.MIN_START_S``)."""
    if is_owner(settings, user):
        return None
    now = time.time() if now is None else now
    tasks = list(tasks)
    live_tasks = [t for t in tasks if t.submitted_by == user and t.status in (TaskStatus.PENDING, TaskStatus.RUNNING)]
    live_tasks = [t for t in live_tasks if retry is None or t.id != retry.id]
    if len(live_tasks) >= settings.max_queued_per_user:
        return (f"{user} already has {len(live_tasks)} queued or running task(s); the limit per user is "
                f"{settings.max_queued_per_user} (MAX_QUEUED_PER_USER). Wait for one to finish or cancel one.")  # fmt: skip
    budget, live = budget_now(settings, tasks, periods, jobs, now, prices)
    room = user_room_s(user, budget, tasks, live, now)
    if room is None or room >= MIN_START_S:
        return None
    used, usd = user_usage(user, budget.periods, tasks, now, budget.caps)
    running = sum(x.remaining_s(now) for x in live if x.user == user)
    more = f", and their running tasks may use {running / 3600:.2f} h more" if running > 0 else ""
    return (f"{user} was billed {used / 3600:.2f} GPU hours (${usd:.2f}) in the last 24 hours{more}; the limit per user "
            f"is {user_cap_text(settings, hardware or (retry.hardware if retry else None), prices)} "
            "(MAX_GPU_HOURS_PER_USER_DAY). Try again later.")  # fmt: skip


def output_namespace(settings: Any, user: str | None) -> str | None:
    """Where ``user``'s models go: the owner's to their account; others' to OUTPUT_NAMESPACE when set, else to the
    owner's account (the Space's token is the owner's: it cannot write the user's own), named after the user (None
    when nobody is signed in). When visitors pay (``BILLING=visitor``) everyone's go to their own account."""
    if not user or is_owner(settings, user) or getattr(settings, "visitor_pays", False):
        return user
    return settings.output_namespace or settings.space_author or user


def output_repo_problem(settings: Any, user: str, repo_id: str, tasks: Iterable[Task], api: Any) -> str | None:
    """Why a non-owner may not write ``repo_id``: outside their namespace (or, in another namespace than their own,
    not named ``<user>-...``), or an existing repo this app did not make for them (one of their own DONE tasks wrote
    it). None for the owner, and in local mode."""
    if is_owner(settings, user) or not repo_id:
        return None
    namespace = output_namespace(settings, user)
    prefix = "" if namespace == user else f"{user}-"
    name = repo_id.split("/", 1)[1] if "/" in repo_id else ""
    if repo_id.split("/")[0] != namespace or not name.startswith(prefix) or len(name) == len(prefix):
        example = default_output_repo(user, "", namespace=namespace).replace("dreambooth-lora", "dreambooth-my-subject")
        where = f"in {namespace}/" + (f" named {prefix}..." if prefix else "")
        return (f"Output model repo: use a repo {where} (for example {example}): this Space uploads models with its "
                "owner's token, which writes only there for you.")  # fmt: skip
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
