"""One line under the banner about money: the month's spend and what remains, to the owner only; an allowed user's
daily GPU hours, in hours and dollars, to that user. Nothing for anyone else, nothing in local mode (it is free)."""

from __future__ import annotations

import time
from typing import Any

from scheduler.spending import month_spend_usd, user_room_s, user_usage
from ui.limits import budget_now, user_cap_text


def owner_spend_line(settings: Any, status: Any, now: float | None = None) -> str:
    """The month's billed cost (the queue's GPU periods and Jobs, an open one up to now) and what remains of
    ``MAX_SPEND_USD_PER_MONTH``."""
    now = time.time() if now is None else now
    budget, _ = budget_now(settings, status.tasks, status.billing, status.jobs, now, status.job_prices or None)
    spent, cap = month_spend_usd(budget.periods, now, budget.caps), settings.max_spend_usd_per_month
    if cap is None:
        return (f"**This month:** ${spent:.2f} billed so far, no spending cap (set `MAX_SPEND_USD_PER_MONTH` to stop "
                "GPU requests and Jobs before the month's bill passes it).")  # fmt: skip
    return (f"**This month:** ${spent:.2f} billed of ${cap:.2f} (`MAX_SPEND_USD_PER_MONTH`): "
            f"${max(0.0, cap - spent):.2f} left.")  # fmt: skip


def user_allowance_line(settings: Any, user: str, status: Any, now: float | None = None) -> str:
    """What an allowed user (not the owner) may use, in hours and dollars, and what they were billed."""
    now = time.time() if now is None else now
    prices = status.job_prices or None
    budget, live = budget_now(settings, status.tasks, status.billing, status.jobs, now, prices)
    used, usd = user_usage(user, budget.periods, status.tasks, now, budget.caps)
    room = user_room_s(user, budget, status.tasks, live, now)
    left = "" if room is None else f"; {max(0.0, room) / 3600:.2f} h left"
    return (f"**Your limit:** {user_cap_text(settings, prices=prices)} (`MAX_GPU_HOURS_PER_USER_DAY`); billed to "
            f"you in the last 24 hours: {used / 3600:.2f} h (${usd:.2f}){left}.")  # fmt: skip


def spend_note(settings: Any, access: Any, status: Any, now: float | None = None) -> str:
    """The line for ``access`` (an ``ui.auth.Access``), "" when it gets none."""
    if settings.local or not access.allowed:
        return ""
    if access.owner:
        return owner_spend_line(settings, status, now)
    return user_allowance_line(settings, access.user, status, now)
