"""The run record of a task trained to the end (``scheduler.task.RunRecord``): what the trainer reported (its
steady speed and step times, its settings) and the start-up, measured from the claim or from this container's start.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.billing import GpuPeriod
from scheduler.task import RunRecord, Task
from scheduler.trainer_process import TrainOutcome

_IMPORTED_AT = time.time()


def process_started_at() -> float:
    """Unix time this process started (Linux: from /proc; elsewhere when this module was imported). On a Space the
    app starts with its container, so this is the container's start."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime: clock ticks after boot (field 22 of proc(5))
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT
    return started if started <= _IMPORTED_AT else _IMPORTED_AT


@dataclass(frozen=True)
class ClaimInfo:
    """How this worker claimed a task: where startup is measured from, and what the GPU switch before it took."""

    flavor: str  # the hardware it trains on (``LOCAL_CPU``/``LOCAL_GPU`` in local mode)
    claimed_at: float
    since: float  # this container's start (its first task on a GPU), else the claim
    switch_s: float | None = None  # GPU request -> this container's start (the first task of a GPU period)


def claim_info(flavor: str, claimed_at: float, container_started_at: float, *, first_paid: bool,
               period: GpuPeriod | None, bill_to: str | None) -> ClaimInfo:  # fmt: skip
    """How a claim is timed. A container's first task on a paid GPU is measured from the container's start and,
    when it is the first claim of the GPU period it joins (``period``, as read before the claim, on ``bill_to``),
    carries the switch (GPU request -> container start); any other task is measured from its claim."""
    switch_s = None
    if first_paid and period is not None and period.hardware == bill_to and not period.claims:
        switch_s = round(max(0.0, container_started_at - period.requested_at), 3)
    since = container_started_at if first_paid else claimed_at
    return ClaimInfo(flavor=flavor, claimed_at=claimed_at, since=since, switch_s=switch_s)


def run_record(task: Task, outcome: TrainOutcome, claim: ClaimInfo) -> RunRecord:
    """The run record of a task trained to the end (``wrapup_s`` is filled in by the completion itself).

    ``startup_s`` runs from ``claim.since`` to the start of the first training step: the first logged step's time
    less the steady time of the steps logged with it."""
    report = outcome.report if isinstance(outcome.report, dict) else {}

    def number(key: str) -> float | None:
        value = report.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def whole(key: str) -> int | None:
        value = report.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    rate, first_at, first_step = number("steps_per_s"), number("first_step_at"), whole("first_step")
    startup = None
    if first_at is not None:
        before_first = (first_step - outcome.resumed_step) / rate if rate and first_step else 0.0
        startup = round(max(0.0, first_at - claim.since - max(0.0, before_first)), 3)
    family = report.get("family")
    params = task.params
    return RunRecord(
        flavor=claim.flavor,
        recipe=task.recipe,
        base_model=task.base_model,
        family=family if isinstance(family, str) else None,
        resolution=whole("resolution") or _int_param(params, "resolution"),
        batch_size=whole("batch_size") or _int_param(params, "batch_size") or 1,
        steps=whole("steps") or _int_param(params, "steps"),
        prior_preservation=bool(report.get("prior_preservation", params.get("prior_preservation", False))),
        train_text_encoder=bool(report.get("train_text_encoder", params.get("train_text_encoder", False))),
        steps_per_s=rate if rate and rate > 0 else None,
        first_step_at=first_at,
        last_step_at=number("last_step_at"),
        startup_s=startup,
        switch_s=claim.switch_s,
    )


def _int_param(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
