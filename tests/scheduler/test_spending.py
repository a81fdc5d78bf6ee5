"""The spending caps' arithmetic (``scheduler.spending``): billed per started minute, the month's spend, each
user's billed hours (cancelled and deleted tasks included), what may start, and which running task stops early."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contract.settings import load_settings
from scheduler.billing import Claim, GpuPeriod
from scheduler.spending import (
    CAP_NOTE_PREFIX,
    EXIT_MARGIN_S,
    MIN_START_S,
    Budget,
    Caps,
    Live,
    Start,
    billed_s,
    cap_held,
    caps_for,
    job_timeout_s,
    month_spend_usd,
    space_live,
    start_check,
    start_worst_s,
    stop_changed,
    stop_for,
    user_usage,
)
from scheduler.task import Lease, Task, TaskStatus

NOW = datetime(2026, 3, 15, 12, tzinfo=UTC).timestamp()
T4 = 0.40  # USD/h


def task(tid: str, user: str = "bob", status: TaskStatus = TaskStatus.PENDING, **changes) -> Task:
    fields = dict(instance_prompt="a photo of sks dog", submitted_by=user, id=tid, status=status, created_at=NOW - 900)
    fields.update(changes)
    return Task(**fields)


def running(tid: str, started_ago: float, user: str = "bob", **changes) -> Task:
    return task(tid, user, TaskStatus.RUNNING, attempts=1, lease=Lease("w", NOW + 60), started_at=NOW - started_ago,
                **changes)  # fmt: skip


def job_period(
    tid: str, start: float, end: float | None, user: str | None = "bob", flavor: str = "t4-small"
) -> GpuPeriod:
    return GpuPeriod(flavor, start, end, [Claim(tid, start, user)], closed_by=f"job j-{tid}-{start}")


def test_billed_per_started_minute():
    assert [billed_s(s) for s in (0, 0.5, 59.9, 60, 60.5, 3600)] == [0, 60, 60, 60, 120, 3600]


def test_the_month_counts_its_own_part_per_started_minute_and_an_open_period_up_to_now():
    month = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    periods = [
        GpuPeriod("t4-small", month - 3600, month + 30),  # began last month: its 30 s of March bill one minute
        GpuPeriod("a10g-small", NOW - 3000, NOW - 2999),  # one second bills a minute
        GpuPeriod("t4-small", NOW - 1800, None),  # open: half an hour so far
        GpuPeriod("t4-small", month - 7200, month - 3600),  # all of it last month
    ]
    expected = 60 / 3600 * T4 + 60 / 3600 * 1.00 + 0.5 * T4
    assert month_spend_usd(periods, NOW, Caps()) == pytest.approx(expected)
    assert month_spend_usd(periods, NOW, Caps(prices={"t4-small": 0.8})) == pytest.approx(
        expected + 0.5 * 0.4 + 60 / 3600 * 0.4
    )


def test_a_users_billed_hours_include_cancelled_and_deleted_tasks_and_a_switch_requested_for_them():
    tasks = [task("cancelled", status=TaskStatus.CANCELLED), task("other", user="carol", status=TaskStatus.DONE)]
    periods = [
        job_period("cancelled", NOW - 600, NOW - 598),  # a Job cancelled after 2 s: one billed minute
        job_period("deleted", NOW - 500, NOW - 440),  # its task was deleted: the period still names bob
        GpuPeriod("t4-small", NOW - 400, NOW - 280, requested_for="gone", requested_by="bob"),  # cancelled mid-switch
        job_period("other", NOW - 300, NOW - 100, user="carol"),
        job_period("cancelled", NOW - 2 * 86400, NOW - 2 * 86400 + 600),  # two days ago: out of the window
    ]
    seconds, usd = user_usage("bob", periods, tasks, NOW, Caps())
    assert seconds == 60 + 60 + 120
    assert usd == pytest.approx(240 / 3600 * T4)
    assert user_usage("carol", periods, tasks, NOW, Caps())[0] == 240


def test_caps_are_off_in_local_mode_and_the_per_user_cap_spares_the_owner():
    assert caps_for(load_settings({"MAX_SPEND_USD_PER_MONTH": "5"})) == Caps()
    caps = caps_for(
        load_settings({"SPACE_ID": "alice/s", "SPACE_AUTHOR_NAME": "alice", "MAX_SPEND_USD_PER_MONTH": "5"})
    )
    assert (caps.month_usd, caps.user_s, caps.owner) == (5.0, 2 * 3600.0, "alice")
    assert caps.binds("bob") and not caps.binds("alice")


def test_a_start_needs_room_for_its_worst_case_under_the_months_cap():
    spent = [GpuPeriod("t4-small", NOW - 3600, NOW)]  # $0.40 this month
    one = task("a", user="alice", deadline_s=3600)
    worst = start_worst_s(3600, jobs=False) / 3600 * T4  # the deadline plus the end margin, at T4 prices
    fits = Budget(Caps(month_usd=0.40 + worst + 0.001), tuple(spent))
    assert start_check(one, fits, [one], [], NOW) == Start()  # no problem, its whole deadline
    tight = Budget(Caps(month_usd=0.40 + worst - 0.001), tuple(spent))
    held = start_check(one, tight, [one], [], NOW)
    assert held.problem and held.problem.startswith(CAP_NOTE_PREFIX) and "MAX_SPEND_USD_PER_MONTH" in held.problem
    # What runs now counts too: a running task may still cost until its deadline.
    other = Live("b", "alice", "t4-small", NOW - 60, NOW + 1800, start=NOW - 60)
    assert start_check(one, fits, [one], [other], NOW).problem
    # The Jobs backend's worst case is the Job's platform timeout.
    assert start_worst_s(3600, jobs=True) == job_timeout_s(3600) + 60
    # The task the GPU was requested for (billed already) may use what is left, shortened.
    shortened = start_check(one, tight, [one], [], NOW, shorten=True)
    assert shortened.problem is None and shortened.room_s is not None and shortened.room_s < start_worst_s(3600, False)


def test_a_users_start_is_shortened_to_their_room_or_held_without_enough():
    caps = Caps(user_s=2 * 3600.0, owner="alice")
    new = task("n", deadline_s=3 * 3600)
    used = [job_period("old", NOW - 3600, NOW - 1800)]  # 30 min billed today
    start = start_check(new, Budget(caps, tuple(used)), [new], [], NOW)
    assert start.problem is None and start.room_s == pytest.approx(1.5 * 3600)  # 3 h deadline, 1.5 h left
    almost = [job_period("old", NOW - 7200 + MIN_START_S - 10, NOW - 1)]
    held = start_check(new, Budget(caps, tuple(almost)), [new], [], NOW)
    assert held.problem and "MAX_GPU_HOURS_PER_USER_DAY" in held.problem and "$" in held.problem
    assert start_check(task("o", user="alice"), Budget(caps, tuple(almost)), [], [], NOW).problem is None  # the owner


def test_the_younger_running_task_stops_early_when_both_would_pass_the_users_cap():
    caps = Caps(user_s=2 * 3600.0, owner="alice")
    old, young = running("old", 1800, deadline_s=3 * 3600), running("young", 600, deadline_s=3 * 3600)
    periods = (job_period("old", NOW - 1800, None), job_period("young", NOW - 600, None))
    live = space_live([old, young], periods)
    budget = Budget(caps, periods)
    # bob used 40 minutes; the old task's remaining run (2.5 h + margin) takes all the room left.
    young_stop = stop_for(young, budget, [old, young], live, NOW)
    assert young_stop is not None and young_stop <= NOW
    old_stop = stop_for(old, budget, [old, young], live, NOW)
    # bob has 2 h - 40 min left; the old task's bill (30 min so far) may reach 30 min + that, then EXIT_MARGIN_S
    assert old_stop == NOW - 1800 + (1800 + 2 * 3600 - 2400) - EXIT_MARGIN_S
    assert stop_changed(old, old_stop)
    assert not stop_changed(running("old", 1800, deadline_s=3 * 3600, stop_at=old_stop + 30), old_stop)  # jitter
    assert stop_for(young, Budget(Caps(), periods), [old, young], live, NOW) is None  # no cap, no stop


def test_a_task_held_by_a_cap_is_one_that_may_start_again():
    assert cap_held(task("a", note=CAP_NOTE_PREFIX + "x"))
    assert not cap_held(task("a", note="GPU request refused"))
    assert not cap_held(task("a", note=CAP_NOTE_PREFIX + "x", attempts=2, max_attempts=2))
