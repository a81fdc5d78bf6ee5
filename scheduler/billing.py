"""GPU periods: the stretches of paid hardware that the queue records, and each task's share of their cost.

A period opens when the worker has asked the Hub for a GPU (``requested_at``), gets a claim for every task trained on
that GPU (written in the claim's own commit) and closes in the commit before the worker asks for the idle hardware
again (``released_at``). A container that died without closing its period leaves it open: the next CPU container
closes it when it finds it (``closed_by`` "recovered", at the time it found it).

Cost of a period: its length times the flavor's hourly price. The Hub bills the old flavor while a switch is under
way, so the time from the GPU request to the release request is the time the GPU is billed when the switch there and
the switch back take equally long.

Shares (proportional, not equal): a claim holds the GPU until the next claim, the last one until the release (until
now while the period is open), and each task pays the period's cost in proportion to the time its claims held it.
The time from the request to the first claim (the switch and the container's start) is spread in the same
proportions. A long task thus pays more than a short one of the same period, and the shares of a period always add
up to its cost.

A period also names the task it was requested for (``requested_for``, submitted by ``requested_by``): a period in
which no task was claimed (the task was cancelled during the switch) is that task's cost, so a submitter who cancels
before training still pays the switch. Claims carry the submitter too (``user``), so that the per-user cap
(``scheduler.spending``) still counts a period after its task was deleted.

Stored records are untrusted JSON (anyone with write access to the queue can edit it): ``parse_periods`` skips an
entry that is not a period and keeps it aside, so that it is written back as it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from contract.flavors import FLAVORS

MAX_CLAIMS = 1000  # claims kept per period (a forged period cannot make every read slow)
MAX_TEXT = 64
RELEASED, RECOVERED = "release", "recovered"  # how a period was closed


@dataclass
class Claim:
    """A task claimed on the period's GPU at ``at`` (unix seconds), submitted by ``user`` (None in old records)."""

    task_id: str
    at: float
    user: str | None = None


@dataclass
class GpuPeriod:
    """From the GPU request to the release request, with the claims made in between."""

    hardware: str
    requested_at: float
    released_at: float | None = None
    claims: list[Claim] = field(default_factory=list)
    closed_by: str | None = None
    requested_for: str | None = None  # the task whose GPU request opened it
    requested_by: str | None = None  # that task's submitter

    @property
    def is_open(self) -> bool:
        return self.released_at is None

    @property
    def task_ids(self) -> list[str]:
        """The tasks trained in this period, each once, in claim order."""
        return list(dict.fromkeys(c.task_id for c in self.claims))

    def seconds(self, now: float) -> float:
        """Length so far (up to ``now`` while open)."""
        end = self.released_at if self.released_at is not None else now
        return max(0.0, end - self.requested_at)

    def usd(self, now: float) -> float:
        """Cost so far at the flavor's list price (0 for a flavor this template does not know)."""
        flavor = FLAVORS.get(self.hardware)
        return self.seconds(now) / 3600 * flavor.usd_per_hour if flavor else 0.0

    def users(self) -> dict[str, str]:
        """The submitter of each task the period names, where it records one."""
        found = {c.task_id: c.user for c in self.claims if c.user}
        if self.requested_for and self.requested_by:
            found.setdefault(self.requested_for, self.requested_by)
        return found

    def to_dict(self) -> dict[str, Any]:
        claims = [{"task_id": c.task_id, "at": c.at, **({"user": c.user} if c.user else {})} for c in self.claims]
        data: dict[str, Any] = {"hardware": self.hardware, "requested_at": self.requested_at,
                                "released_at": self.released_at, "closed_by": self.closed_by, "claims": claims}  # fmt: skip
        if self.requested_for:  # optional keys: written only when set (older readers ignore them)
            data.update(requested_for=self.requested_for, requested_by=self.requested_by)
        return data


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def period_from_dict(data: Any) -> GpuPeriod:
    """A stored period; ValueError when ``data`` is not one."""
    if not isinstance(data, dict):
        raise ValueError("a GPU period must be a JSON object")
    hardware, requested, released = data.get("hardware"), data.get("requested_at"), data.get("released_at")
    closed_by, claims = data.get("closed_by"), data.get("claims", [])
    requested_for, requested_by = data.get("requested_for"), data.get("requested_by")
    if not _text(hardware) or not _number(requested):
        raise ValueError("a GPU period needs a hardware name and a requested_at time")
    if released is not None and not (_number(released) and released >= requested):
        raise ValueError("released_at must be a time after requested_at")
    if closed_by is not None and not _text(closed_by):
        raise ValueError("closed_by must be a short text")
    if any(v is not None and not _text(v) for v in (requested_for, requested_by)):
        raise ValueError("requested_for and requested_by must be short texts")
    if not isinstance(claims, list) or len(claims) > MAX_CLAIMS:
        raise ValueError(f"claims must be a list of at most {MAX_CLAIMS}")
    parsed = []
    for claim in claims:
        if not isinstance(claim, dict) or not _text(claim.get("task_id")) or not _number(claim.get("at")):
            raise ValueError("a claim needs a task_id and an at time")
        if claim.get("user") is not None and not _text(claim.get("user")):
            raise ValueError("a claim's user must be a short text")
        parsed.append(Claim(claim["task_id"], float(claim["at"]), claim.get("user")))
    return GpuPeriod(hardware, float(requested), None if released is None else float(released), parsed, closed_by,
                     requested_for, requested_by)  # fmt: skip


def parse_periods(entries: Any) -> tuple[list[GpuPeriod], list[Any]]:
    """(the periods, the entries that are not periods, kept as they were). A value that is not a list: none."""
    periods: list[GpuPeriod] = []
    skipped: list[Any] = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            periods.append(period_from_dict(entry))
        except ValueError:
            skipped.append(entry)
    return periods, skipped


def open_period(periods: Iterable[GpuPeriod]) -> GpuPeriod | None:
    """The latest period still open, if any."""
    return next((p for p in reversed(list(periods)) if p.is_open), None)


def claim_seconds(period: GpuPeriod, now: float) -> dict[str, float]:
    """Seconds each task's claims held the period's GPU (a claim until the next one, the last until the end)."""
    end = period.released_at if period.released_at is not None else now
    claims = sorted(period.claims, key=lambda c: c.at)
    held: dict[str, float] = {}
    if not claims:
        return held
    for claim, after in zip(claims, [*claims[1:], None], strict=True):
        start = min(max(claim.at, period.requested_at), end)
        stop = end if after is None else min(max(after.at, start), end)
        held[claim.task_id] = held.get(claim.task_id, 0.0) + stop - start
    return held


def shares(period: GpuPeriod, now: float) -> dict[str, float]:
    """Each task's fraction of the period's cost (they add up to 1; equal when no claim held the GPU any time). A
    period without claims is all the cost of the task it was requested for (none when it names none)."""
    held = claim_seconds(period, now)
    total = sum(held.values())
    if not held:
        return {period.requested_for: 1.0} if period.requested_for else {}
    if total <= 0:
        return {task_id: 1 / len(held) for task_id in held}
    return {task_id: seconds / total for task_id, seconds in held.items()}


def task_cost_usd(task_id: str, periods: Sequence[GpuPeriod], now: float) -> float | None:
    """The task's share of every period it was trained in (or requested for, when nothing was claimed in it), in
    USD; None when no period names it."""
    found = [(p, share) for p in periods if (share := shares(p, now).get(task_id)) is not None]
    if not found:
        return None
    return sum(p.usd(now) * share for p, share in found)
