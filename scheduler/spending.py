"""The spending caps as pure arithmetic: what the month cost, what each user used, and what may start or go on.

Billed usage comes from the queue's GPU periods (``scheduler.billing``: a Space's GPU periods, one per Job; the Jobs
backend adds the Jobs it has not recorded yet, an alive one open up to now), each billed per started minute (its
length rounded up to a whole minute). What may still be billed comes from the tasks running now (``Live``: until
their deadline, or their earlier stop, plus ``EXIT_MARGIN_S``; ``Live.remaining_s``). Two caps, none in local mode:

- ``MAX_SPEND_USD_PER_MONTH`` (``Caps.month_usd``): the calendar month's (UTC) billed cost. A start (a GPU request on
  a Space, a Job) needs room for its worst case (``start_worst_s``: its deadline, or its Job's timeout, at its
  flavor's price) on top of what the month cost so far and what the running tasks may still cost.
- ``MAX_GPU_HOURS_PER_USER_DAY`` (``Caps.user_s``, not for the owner): the hours of paid hardware a user's tasks were
  billed in the last 24 hours (their share of each period, cancelled and deleted tasks included) plus what their
  running tasks may still use. A start needs ``MIN_START_S`` of room; with less room than its worst case it starts
  with an earlier stop.

A running task whose end would pass a cap gets an earlier stop (``stop_for``; the oldest running task keeps its room
first): the watchdog stops the trainer there with a checkpoint and the task is held with a note that starts with
``CAP_NOTE_PREFIX``, its attempt given back. A held task starts again by itself once its start fits (or on Retry).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contract.flavors import FLAVORS
from scheduler.billing import GpuPeriod, open_period, shares
from scheduler.task import Task, TaskStatus

MINUTE_S = 60.0
DAY_S = 24 * 3600.0
#: billed after a stop at the latest: the checkpoint (``STOP_GRACE_S``), the last commits and the release or the
#: Job's exit (``EXIT_MARGIN_S``), and the rounding up to a whole minute
END_MARGIN_S = 150.0
EXIT_MARGIN_S = END_MARGIN_S - MINUTE_S
#: from a cap's stop to SIGKILL: the trainer saves (and mirrors) its checkpoint in this time
STOP_GRACE_S = 60.0
#: the least room a start needs (four billed minutes: a Job's start-up, a minute or so of the run, its stop)
MIN_START_S = 4 * MINUTE_S
#: a Job's platform timeout adds this much (at most the deadline again) for the image pull and the downloads
JOB_STARTUP_MARGIN_S = 600.0
#: a stop already written to the queue is moved only when it moves by more than this (the billed minutes step)
STOP_TOLERANCE_S = MINUTE_S
CAP_NOTE_PREFIX = "Held by a spending cap: "


@dataclass(frozen=True)
class Caps:
    """The caps in force (None: none) and the prices they are counted at."""

    month_usd: float | None = None  # MAX_SPEND_USD_PER_MONTH
    user_s: float | None = None  # MAX_GPU_HOURS_PER_USER_DAY in seconds
    owner: str | None = None  # the per-user cap does not bind the owner
    prices: Mapping[str, float] = field(default_factory=dict)  # USD/h where they differ from contract.flavors

    def price(self, flavor: str | None) -> float:
        """USD per hour of ``flavor`` (0 for one this template does not know)."""
        if flavor in self.prices:
            return float(self.prices[flavor])
        known = FLAVORS.get(flavor or "")
        return known.usd_per_hour if known else 0.0

    def binds(self, user: str) -> bool:
        """Whether the per-user cap applies to ``user``."""
        return self.user_s is not None and user != self.owner


def caps_for(settings: Any, prices: Mapping[str, float] | None = None) -> Caps:
    """The caps of ``settings`` (none in local mode, where training is free)."""
    if getattr(settings, "local", True):
        return Caps()
    hours = getattr(settings, "max_gpu_hours_per_user_day", None)
    return Caps(month_usd=getattr(settings, "max_spend_usd_per_month", None),
                user_s=None if hours is None else float(hours) * 3600.0, owner=getattr(settings, "space_author", None),
                prices=dict(prices or {}))  # fmt: skip


@dataclass(frozen=True)
class Budget:
    """What the decisions need to apply the caps: the caps, the billed periods and the backend."""

    caps: Caps = field(default_factory=Caps)
    periods: tuple[GpuPeriod, ...] = ()
    jobs: bool = False  # the Jobs backend: a start's worst case is its Job's timeout


@dataclass(frozen=True)
class Live:
    """Something that bills now: a running task (or a Job), until ``ends_by`` at the latest, on a bill that began at
    ``start`` (its Job's creation, or the request of the GPU period it runs in; the billed periods count it so far)."""

    task_id: str
    user: str
    flavor: str
    since: float  # when it started (the older one keeps its room first)
    ends_by: float
    start: float

    def remaining_s(self, now: float) -> float:
        """What it may still be billed after now: its bill's worst total less what the periods count so far."""
        return max(0.0, billed_s(self.ends_by - self.start) - billed_s(now - self.start))


@dataclass(frozen=True)
class Start:
    """May a task start now? ``problem``: why not (a hold note); ``room_s``: the billed seconds it may use from now
    when that is less than its worst case (it starts with an earlier stop), else None."""

    problem: str | None = None
    room_s: float | None = None


# ------------------------------------------------------------------------------------------------ billed usage
def billed_s(seconds: float) -> float:
    """What a stretch of ``seconds`` is billed: per started minute."""
    return 0.0 if seconds <= 0 else math.ceil(seconds / MINUTE_S - 1e-9) * MINUTE_S


def month_start(now: float) -> float:
    """The start of ``now``'s calendar month (UTC)."""
    day = datetime.fromtimestamp(now, UTC)
    return datetime(day.year, day.month, 1, tzinfo=UTC).timestamp()


def period_billed_s(period: GpuPeriod, since: float, now: float) -> float:
    """The billed seconds of ``period`` after ``since`` (an open one up to ``now``)."""
    end = period.released_at if period.released_at is not None else now
    return billed_s(end - max(period.requested_at, since))


def month_spend_usd(periods: Iterable[GpuPeriod], now: float, caps: Caps) -> float:
    """The calendar month's billed cost of ``periods`` at the caps' prices."""
    since = month_start(now)
    return sum(period_billed_s(p, since, now) / 3600 * caps.price(p.hardware) for p in periods)


def user_usage(user: str, periods: Iterable[GpuPeriod], tasks: Iterable[Task], now: float, caps: Caps,
               since: float | None = None) -> tuple[float, float]:  # fmt: skip
    """(seconds, USD) that ``user``'s tasks were billed since ``since`` (default: the last 24 hours): their share
    of each period. A task is ``user``'s when the period records them as its submitter, or the queue does."""
    since = now - DAY_S if since is None else since
    submitter = {t.id: t.submitted_by for t in tasks}
    seconds = usd = 0.0
    for period in periods:
        billed = period_billed_s(period, since, now)
        if billed <= 0:
            continue
        recorded = period.users()
        part = sum(f for tid, f in shares(period, now).items() if recorded.get(tid, submitter.get(tid)) == user)
        seconds += part * billed
        usd += part * billed / 3600 * caps.price(period.hardware)
    return seconds, usd


# ------------------------------------------------------------------------------------------------ what may run
def job_timeout_s(deadline_s: float) -> int:
    """A Job's platform timeout: the deadline plus a start-up margin (at most the deadline again), so the trainer's
    own watchdog ends a slow run first and records it; the platform's timeout is the backstop."""
    return int(deadline_s + min(JOB_STARTUP_MARGIN_S, deadline_s))


def start_worst_s(deadline_s: float, jobs: bool) -> float:
    """The most a start may be billed: a Job's timeout and a minute of scheduling (billed per started minute), or on
    a Space the deadline plus ``END_MARGIN_S``."""
    return billed_s(job_timeout_s(deadline_s) + MINUTE_S) if jobs else deadline_s + END_MARGIN_S


def job_limits(room_s: float, now: float) -> tuple[float, int]:
    """A Job started with ``room_s`` billed seconds left (less than its worst case): (when its trainer stops, its
    platform timeout). Its bill, a minute of scheduling included, stays within the whole minutes of the room."""
    timeout = int(math.floor(room_s / MINUTE_S) * MINUTE_S - MINUTE_S)
    return now + timeout - EXIT_MARGIN_S, timeout


def planned_end(task: Task, *, stored_stop: bool = True) -> float | None:
    """When a RUNNING task's trainer stops at the latest: its deadline, or the earlier stop stored on it (Jobs
    backend; ``stored_stop`` False on a Space, whose worker finds its stop itself and stores none)."""
    if task.status is not TaskStatus.RUNNING or task.started_at is None:
        return None
    end = task.started_at + task.deadline_s
    return min(end, task.stop_at) if stored_stop and task.stop_at is not None else end


def space_live(tasks: Iterable[Task], periods: Sequence[GpuPeriod]) -> list[Live]:
    """The running tasks of the Space backend, at the flavor of the period they were claimed in."""
    current = open_period(periods)
    live = []
    for task in tasks:
        end = planned_end(task, stored_stop=False)
        if end is None or task.started_at is None:
            continue
        inside = current is not None and task.id in current.task_ids
        flavor, start = (
            (current.hardware, current.requested_at) if current and inside else (task.hardware, task.started_at)
        )
        live.append(Live(task.id, task.submitted_by, flavor, task.started_at, end + EXIT_MARGIN_S, start))
    return live


def cap_held(task: Task) -> bool:
    """A PENDING task held back by a spending cap (it starts again by itself once its start fits)."""
    return (task.status is TaskStatus.PENDING and task.attempts < task.max_attempts
            and (task.note or "").startswith(CAP_NOTE_PREFIX))  # fmt: skip


def startable(task: Task) -> bool:
    """Runnable, or held by a cap only (which ``start_check`` decides on)."""
    return task.runnable or cap_held(task)


def dollars_left(budget: Budget, live: Iterable[Live], now: float) -> float | None:
    """What the month's cap leaves once the month's bill and what ``live`` may still cost are paid (None: no cap)."""
    caps = budget.caps
    if caps.month_usd is None:
        return None
    committed = sum(x.remaining_s(now) / 3600 * caps.price(x.flavor) for x in live)
    return caps.month_usd - month_spend_usd(budget.periods, now, caps) - committed


def user_room_s(user: str, budget: Budget, tasks: Iterable[Task], live: Iterable[Live], now: float) -> float | None:
    """The seconds the per-user cap leaves ``user`` once their last 24 hours and their running tasks are counted
    (None: the cap does not bind them)."""
    if not budget.caps.binds(user) or budget.caps.user_s is None:
        return None
    used, _ = user_usage(user, budget.periods, tasks, now, budget.caps)
    return budget.caps.user_s - used - sum(x.remaining_s(now) for x in live if x.user == user)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def start_check(task: Task, budget: Budget, tasks: Sequence[Task], live: Sequence[Live], now: float, *,
                flavor: str | None = None, shorten: bool = False) -> Start:  # fmt: skip
    """May ``task`` start now on ``flavor`` (default its own)? The month's cap needs room for its worst case (only
    for ``MIN_START_S`` with ``shorten``: the GPU that was requested for it is billed already); the per-user cap needs
    ``MIN_START_S``. With less room than the worst case it starts with an earlier stop (``Start.room_s``)."""
    caps, flavor = budget.caps, flavor or task.hardware
    label = FLAVORS[flavor].label if flavor in FLAVORS else flavor
    worst = start_worst_s(task.deadline_s, budget.jobs)
    others = [x for x in live if x.task_id != task.id]
    room, problems = math.inf, []
    left = dollars_left(budget, others, now)
    price = caps.price(flavor)
    if left is not None and price > 0:
        room = left / price * 3600
        if room < (MIN_START_S if shorten else worst):
            problems.append(f"its worst case ({_hours(worst)} on {label} at ${price:.2f}/h: ${worst / 3600 * price:.2f}) "
                            f"would pass this month's spending cap (MAX_SPEND_USD_PER_MONTH). It starts by itself when "
                            "the cap leaves room again (next month, or once the owner raises it).")  # fmt: skip
    user_room = user_room_s(task.submitted_by, budget, tasks, others, now)
    if user_room is not None and caps.user_s is not None:
        room = min(room, user_room)
        if user_room < MIN_START_S:
            used, usd = user_usage(task.submitted_by, budget.periods, tasks, now, caps)
            problems.append(f"{task.submitted_by} was billed {_hours(used)} (${usd:.2f}) of paid hardware in the last 24 "
                            f"hours, with what their running tasks may still use; the limit is {caps.user_s / 3600:g} h a day "
                            f"(MAX_GPU_HOURS_PER_USER_DAY; about ${caps.user_s / 3600 * price:.2f} on {label}). It starts "
                            "by itself once the last 24 hours leave room.")  # fmt: skip
    if problems:
        return Start(problem=CAP_NOTE_PREFIX + " ".join(problems))
    return Start(room_s=None if room >= worst else room)


def stop_for(task: Task, budget: Budget, tasks: Sequence[Task], live: Sequence[Live], now: float) -> float | None:
    """An earlier stop for the running ``task`` (one of ``live``) when its end would pass a cap, else None. The
    running tasks that started before it keep their room first. Its bill (a Job's, or the Space's GPU period) may
    reach what the month's cap leaves plus what it was billed so far, in whole minutes; the per-user cap counts the
    bill of a Job the same way, and on a Space what the user may still use from now. The stop leaves
    ``EXIT_MARGIN_S`` before the bill's end."""
    mine = [x for x in live if x.task_id == task.id]
    if not mine:
        return None
    first = min(mine, key=lambda x: x.since)
    older = [x for x in live if x.task_id != task.id and (x.since, x.task_id) < (first.since, first.task_id)]
    so_far = billed_s(now - first.start)
    allowed = math.inf
    left = dollars_left(budget, older, now)
    price = budget.caps.price(first.flavor)
    if left is not None and price > 0:
        allowed = first.start + math.floor((max(0.0, left) / price * 3600 + so_far) / MINUTE_S) * MINUTE_S
    room = user_room_s(task.submitted_by, budget, tasks, older, now)
    if room is not None:  # a Job's bill is the user's alone; a Space's period is shared by its claims
        by_user = (
            first.start + math.floor((max(0.0, room) + so_far) / MINUTE_S) * MINUTE_S if budget.jobs else now + room
        )
        allowed = min(allowed, by_user)
    if allowed >= max(x.ends_by for x in mine):
        return None
    return allowed - EXIT_MARGIN_S


def stop_changed(task: Task, stop_at: float | None) -> bool:
    """Whether ``stop_at`` should replace the stop the queue holds for ``task`` (earlier by more than a billed minute,
    or none held)."""
    if stop_at is None:
        return False
    return task.stop_at is None or stop_at < task.stop_at - STOP_TOLERANCE_S


def cap_stop_note(task: Task, stop_at: float) -> str:
    """The note of a task whose run a cap stopped."""
    when = datetime.fromtimestamp(stop_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{CAP_NOTE_PREFIX}the run was stopped at {when} with a checkpoint, before it could pass a spending cap "
            "(MAX_SPEND_USD_PER_MONTH or MAX_GPU_HOURS_PER_USER_DAY). It resumes from that checkpoint by itself once the "
            "cap leaves room, or on Retry; this stop did not use up an attempt.")  # fmt: skip
