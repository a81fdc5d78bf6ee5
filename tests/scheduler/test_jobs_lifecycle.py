"""Table-driven tests of ``decide_jobs``: one row per situation of DESIGN.md §4.1 and the extra cases of issue 12."""

from __future__ import annotations

import copy

import pytest

from scheduler.backends import DECIDERS
from scheduler.backends.jobs import (
    CAP_CANCEL_AFTER_S,
    JOB_EXIT_GRACE_S,
    REFUSAL_BACKOFF_S,
    JobActionKind,
    JobsSnapshot,
    JobView,
    decide_jobs,
)
from scheduler.billing import Claim, GpuPeriod
from scheduler.lifecycle import decide
from scheduler.spending import CAP_NOTE_PREFIX, END_MARGIN_S, EXIT_MARGIN_S, Budget, Caps
from scheduler.task import Lease, Task, TaskStatus

NOW = 1_000_000.0
K = JobActionKind


def task(tid: str, status: TaskStatus = TaskStatus.PENDING, created: float = 100, **changes) -> Task:
    fields = dict(instance_prompt="a photo of sks dog", submitted_by="alice", id=tid, status=status,
                  created_at=NOW - created, updated_at=NOW - created)  # fmt: skip
    fields.update(changes)
    return Task(**fields)


def running(tid: str, holder: str, expires_in: float = 100, attempts: int = 1, started: float = 50, **changes) -> Task:
    return task(
        tid,
        TaskStatus.RUNNING,
        attempts=attempts,
        lease=Lease(holder, NOW + expires_in),
        started_at=NOW - started,
        **changes,
    )


def job(
    jid: str, tid: str, stage: str = "RUNNING", holder: str | None = None, created: float = 60, **changes
) -> JobView:
    return JobView(job_id=jid, task_id=tid, stage=stage, holder=holder or f"h-{jid}", flavor="t4-small",
                   created_at=NOW - created, **changes)  # fmt: skip


def snap(tasks=(), jobs=(), **changes) -> JobsSnapshot:
    base = dict(tasks=tuple(tasks), jobs=tuple(jobs), now=NOW, max_parallel=2, gpu_s_cap=24 * 3600.0)
    base.update(changes)
    # Terminal Jobs of the rows are recorded unless a row says otherwise: each row looks at one decision.
    if "recorded_jobs" not in changes:
        base["recorded_jobs"] = frozenset(j.job_id for j in base["jobs"])
    return JobsSnapshot(**base)


def budget(month: float | None = None, user_h: float | None = None, periods=()) -> Budget:
    """The spending caps (MAX_SPEND_USD_PER_MONTH, MAX_GPU_HOURS_PER_USER_DAY; alice owns the Space) and the periods."""
    return Budget(Caps(month_usd=month, user_s=None if user_h is None else user_h * 3600, owner="alice"), tuple(periods))


HELD = CAP_NOTE_PREFIX + "its worst case would pass this month's spending cap"
BOB_HOUR = (GpuPeriod("t4-small", NOW - 4000, NOW - 400, [Claim("x", NOW - 4000, "bob")], closed_by="job old"),)


def kinds(actions) -> list[tuple[JobActionKind, str | None]]:
    return [(a.kind, a.task_id) for a in actions]


CRASH_LOG = ("loading the model", "Traceback (most recent call last):", "RuntimeError: CUDA error")

# (id, snapshot, expected [(kind, task id)])
ROWS = [
    # spending caps (a Job of a 3 h deadline on a T4 may bill its 3 h 10 min timeout: up to $1.27)
    ("cap-month-dispatch-hold", snap([task("a")], budget=budget(month=1.0)), [(K.HOLD, "a")]),
    ("cap-month-fits-dispatch", snap([task("a")], budget=budget(month=2.0)), [(K.DISPATCH, "a")]),
    ("cap-held-still-over-wait", snap([task("a", note=HELD)], budget=budget(month=1.0)), [(K.WAIT, None)]),
    ("cap-held-fits-dispatch-again", snap([task("a", note=HELD)], budget=budget(month=2.0)), [(K.DISPATCH, "a")]),
    ("cap-room-for-one-of-two", snap([task("a", created=90), task("b", created=60)], budget=budget(month=2.0)),
     [(K.DISPATCH, "a"), (K.HOLD, "b")]),
    ("cap-running-job-counts", snap([running("a", "h-j1"), task("b")], [job("j1", "a")], budget=budget(month=2.0)),
     [(K.HOLD, "b")]),
    ("user-cap-running-job-stops-early", snap([running("a", "h-j1", submitted_by="bob")], [job("j1", "a")],
                                              budget=budget(user_h=2, periods=BOB_HOUR)), [(K.LIMIT, "a")]),
    ("user-cap-stop-already-set-wait", snap([running("a", "h-j1", submitted_by="bob", stop_at=NOW + 3600 - 50 - END_MARGIN_S)],
                                            [job("j1", "a")], budget=budget(user_h=2, periods=BOB_HOUR)), [(K.WAIT, None)]),
    ("cap-stop-passed-job-ended-hold", snap([running("a", "h-j1", stop_at=NOW - 30)], [job("j1", "a", "ERROR", finished_at=NOW - 5)]),
     [(K.HOLD, "a")]),
    ("cap-stop-long-passed-job-alive-cancel", snap([running("a", "h-j1", started=900, stop_at=NOW - CAP_CANCEL_AFTER_S - 1)],
                                                   [job("j1", "a", created=950)]), [(K.CANCEL_JOB, "a")]),
    # finding 3: a cancelled task's Job, ended but not recorded yet, counts against its submitter at once
    ("user-cap-cancelled-unrecorded-job-counts", snap([task("x", TaskStatus.CANCELLED, submitted_by="bob"), task("b", submitted_by="bob")],
                                                      [job("j1", "x", "CANCELED", created=7000, finished_at=NOW - 10)],
                                                      recorded_jobs=frozenset(), budget=budget(user_h=2)),
     [(K.RECORD_COST, "x"), (K.HOLD, "b")]),
    # DESIGN §4.1 rows
    ("runnable-free-slot-dispatch", snap([task("a")]), [(K.DISPATCH, "a")]),
    (
        "two-slots-dispatch-two-oldest",
        snap([task("a", created=30), task("b", created=90), task("c", created=60)]),
        [(K.DISPATCH, "b"), (K.DISPATCH, "c")],
    ),
    (
        "no-free-slot-wait",
        snap([running("a", "h-j1"), running("b", "h-j2"), task("c")], [job("j1", "a"), job("j2", "b")]),
        [(K.WAIT, None)],
    ),
    (
        "one-slot-left-dispatch-one",
        snap([running("a", "h-j1"), task("b", created=50), task("c", created=40)], [job("j1", "a")]),
        [(K.DISPATCH, "b")],
    ),
    ("gpu-cap-reached-wait", snap([task("a")], gpu_s_today=24 * 3600.0), [(K.WAIT, None)]),
    ("gpu-cap-zero-wait", snap([task("a")], gpu_s_cap=0.0), [(K.WAIT, None)]),
    ("no-cap-dispatch", snap([task("a")], gpu_s_today=10**7, gpu_s_cap=None), [(K.DISPATCH, "a")]),
    (
        "refused-note-no-redispatch",
        snap([task("a", note="Job creation refused (402). Fix: add credits")]),
        [(K.WAIT, None)],
    ),
    ("refused-recently-no-redispatch", snap([task("a")], refused={"a": NOW - 60}), [(K.WAIT, None)]),
    (
        "refused-long-ago-dispatch-again",
        snap([task("a")], refused={"a": NOW - REFUSAL_BACKOFF_S - 1}),
        [(K.DISPATCH, "a")],
    ),
    ("alive-job-running-task-follow", snap([running("a", "h-j1")], [job("j1", "a")]), [(K.WAIT, None)]),
    ("scheduling-job-pending-task-no-second-job", snap([task("a")], [job("j1", "a", "SCHEDULING")]), [(K.WAIT, None)]),
    (
        "job-error-task-running-requeue",
        snap([running("a", "h-j1")], [job("j1", "a", "ERROR", log_tail=CRASH_LOG)]),
        [(K.REQUEUE, "a")],
    ),
    (
        "job-canceled-task-running-requeue",
        snap([running("a", "h-j1")], [job("j1", "a", "CANCELED")]),
        [(K.REQUEUE, "a")],
    ),
    ("job-deleted-task-running-requeue", snap([running("a", "h-j1")], [job("j1", "a", "DELETED")]), [(K.REQUEUE, "a")]),
    (
        "job-timeout-task-running-requeue",
        snap([running("a", "h-j1")], [job("j1", "a", "ERROR", message="Job timeout")]),
        [(K.REQUEUE, "a")],
    ),
    (
        "job-completed-task-still-running-requeue",
        snap([running("a", "h-j1")], [job("j1", "a", "COMPLETED")]),
        [(K.REQUEUE, "a")],
    ),
    (
        "job-error-last-attempt-fail-with-log",
        snap([running("a", "h-j1", attempts=2)], [job("j1", "a", "ERROR", log_tail=CRASH_LOG)]),
        [(K.FAIL, "a")],
    ),
    ("lost-job-lease-expired-requeue", snap([running("a", "h-gone", expires_in=-1)]), [(K.REQUEUE_EXPIRED, "a")]),
    ("lost-job-lease-alive-wait", snap([running("a", "h-gone", expires_in=30)]), [(K.WAIT, None)]),
    (
        "cancelled-task-alive-job-cancel",
        snap([task("a", TaskStatus.CANCELLED)], [job("j1", "a")]),
        [(K.CANCEL_JOB, "a")],
    ),
    ("deleted-task-alive-job-cancel", snap([], [job("j1", "gone")]), [(K.CANCEL_JOB, "gone")]),
    (
        "restart-readopts-no-duplicate",
        snap([running("a", "h-j1"), running("b", "h-j2"), task("c")], [job("j1", "a"), job("j2", "b")], max_parallel=3),
        [(K.DISPATCH, "c")],
    ),
    # extra cases
    ("attempts-exhausted-pending-fail", snap([task("a", attempts=2, last_error="OOM")]), [(K.FAIL, "a")]),
    (
        "hung-job-lease-expired-cancel",
        snap([running("a", "h-j1", expires_in=-1)], [job("j1", "a")]),
        [(K.CANCEL_JOB, "a")],
    ),
    (
        "old-attempt-job-alive-cancel",
        snap([running("a", "h-j2", attempts=2)], [job("j1", "a", created=90), job("j2", "a")]),
        [(K.CANCEL_JOB, "a")],
    ),
    (
        "duplicate-jobs-pending-cancel-newer",
        snap([task("a")], [job("j1", "a", "SCHEDULING", created=20), job("j2", "a", "SCHEDULING", created=10)]),
        [(K.CANCEL_JOB, "a")],
    ),
    (
        "done-task-job-exiting-grace-wait",
        snap([task("a", TaskStatus.DONE, finished_at=NOW - 5)], [job("j1", "a")]),
        [(K.WAIT, None)],
    ),
    (
        "done-task-job-lingers-cancel",
        snap([task("a", TaskStatus.DONE, finished_at=NOW - JOB_EXIT_GRACE_S - 1)], [job("j1", "a")]),
        [(K.CANCEL_JOB, "a")],
    ),
    (
        "old-terminal-job-new-attempt-pending-dispatch",
        snap([task("a", attempts=1)], [job("j1", "a", "ERROR")]),
        [(K.DISPATCH, "a")],
    ),
    (
        "terminal-job-unrecorded-record-cost",
        snap(
            [task("a", TaskStatus.DONE)], [job("j1", "a", "COMPLETED", finished_at=NOW - 1)], recorded_jobs=frozenset()
        ),
        [(K.RECORD_COST, "a")],
    ),
    ("cpu-task-not-allowed-fail", snap([task("a", hardware="cpu-basic")]), [(K.FAIL, "a")]),
    (
        "cpu-task-allowed-dispatch",
        snap([task("a", hardware="cpu-basic")], allow_cpu_training=True),
        [(K.DISPATCH, "a")],
    ),
    ("jobs-only-flavor-dispatch", snap([task("a", hardware="h200")]), [(K.DISPATCH, "a")]),
    ("running-task-of-another-backend-wait", snap([running("a", "space:worker")]), [(K.WAIT, None)]),
    ("empty-wait", snap(), [(K.WAIT, None)]),
    # Jobs that die before they claim the task (the task never changes): counted against its attempts
    (
        "one-job-ended-unclaimed-dispatch-again",
        snap([task("a")], [job("j1", "a", "ERROR", created=50)]),
        [(K.DISPATCH, "a")],
    ),
    (
        "max-attempts-jobs-ended-unclaimed-fail",
        snap([task("a")], [job("j1", "a", "ERROR", created=50), job("j2", "a", "ERROR", created=20)]),
        [(K.FAIL, "a")],
    ),
    (
        "jobs-ended-before-the-last-retry-do-not-count",
        snap([task("a", created=300, updated_at=NOW - 10)],
             [job("j1", "a", "ERROR", created=200), job("j2", "a", "ERROR", created=100)]),
        [(K.DISPATCH, "a")],
    ),  # fmt: skip
]


@pytest.mark.parametrize(("snapshot", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_decide_jobs(snapshot, expected):
    actions = decide_jobs(snapshot)
    assert kinds(actions) == expected, [a.reason for a in actions]
    assert all(a.reason for a in actions)  # every action says why, for the UI


def test_dispatch_carries_the_task_flavor():
    [action] = decide_jobs(snap([task("a", hardware="a10g-small")]))
    assert action.kind is K.DISPATCH and action.hardware == "a10g-small"


def test_a_job_that_ended_requeues_with_its_holder_and_the_reason():
    [action] = decide_jobs(snap([running("a", "h-j1")], [job("j1", "a", "ERROR", message="Job timeout")]))
    assert action.holder == "h-j1" and action.job_id == "j1"
    assert "ERROR" in action.reason and "Job timeout" in action.reason and "checkpoint" in action.reason


def test_failure_after_the_last_attempt_carries_the_jobs_last_log_lines():
    [action] = decide_jobs(snap([running("a", "h-j1", attempts=2)], [job("j1", "a", "ERROR", log_tail=CRASH_LOG)]))
    assert action.kind is K.FAIL and action.holder == "h-j1"
    assert "RuntimeError: CUDA error" in action.reason and "2 of 2" in action.reason


def test_waits_say_why():
    [full] = decide_jobs(
        snap([running("a", "h-j1"), running("b", "h-j2"), task("c")], [job("j1", "a"), job("j2", "b")])
    )
    assert "slot" in full.reason and "MAX_PARALLEL_JOBS" in full.reason
    [capped] = decide_jobs(snap([task("a")], gpu_s_today=25 * 3600.0))
    assert "JOBS_GPU_HOURS_PER_DAY" in capped.reason and "24" in capped.reason


def test_cost_is_recorded_once_per_job():
    done = [task("a", TaskStatus.DONE)]
    ended = [job("j1", "a", "COMPLETED", finished_at=NOW)]
    assert [a.job_id for a in decide_jobs(snap(done, ended, recorded_jobs=frozenset())) if a.kind is K.RECORD_COST] == [
        "j1"
    ]
    assert not [a for a in decide_jobs(snap(done, ended, recorded_jobs=frozenset({"j1"}))) if a.kind is K.RECORD_COST]


def test_a_cancelled_job_frees_its_slot_in_the_same_loop():
    actions = decide_jobs(
        snap([task("x", TaskStatus.CANCELLED), running("a", "h-j1"), task("b")], [job("j0", "x"), job("j1", "a")])
    )
    assert kinds(actions) == [(K.CANCEL_JOB, "x"), (K.DISPATCH, "b")]


def test_decide_jobs_is_pure():
    s = snap([task("a"), running("b", "h-j1", expires_in=-1)], [job("j1", "b", "ERROR")])
    before = copy.deepcopy(s)
    decide_jobs(s)
    assert s == before


def test_registry_names_both_backends():
    assert DECIDERS == {"space": decide, "jobs": decide_jobs}


def test_jobs_that_never_claim_their_task_fail_it_with_the_last_jobs_log():
    ended = (job("j1", "a", "ERROR", created=50), job("j2", "a", "ERROR", created=20, message="Job failed with exit code: 1",
             log_tail=("python: No module named scheduler",)))  # fmt: skip
    [action] = decide_jobs(snap([task("a")], ended))
    assert action.kind is K.FAIL and "2 Jobs ended before they could claim the task" in action.reason
    assert "exit code: 1" in action.reason and "No module named scheduler" in action.reason


def test_a_user_with_less_room_than_the_deadline_starts_with_an_earlier_stop_and_a_shorter_timeout():
    [action] = decide_jobs(snap([task("b", submitted_by="bob")], budget=budget(user_h=2, periods=BOB_HOUR)))
    assert action.kind is K.DISPATCH
    assert action.timeout_s == 3600 - 60  # one hour left: the Job's timeout leaves the last billed minute
    assert action.stop_at == pytest.approx(NOW + 3600 - END_MARGIN_S)
    [full] = decide_jobs(snap([task("a")], budget=budget(user_h=2, periods=BOB_HOUR)))  # the owner: no stop
    assert full.kind is K.DISPATCH and full.stop_at is None and full.timeout_s is None


def test_a_running_task_stops_early_where_its_submitters_cap_ends():
    [limit] = decide_jobs(snap([running("a", "h-j1", submitted_by="bob")], [job("j1", "a")],
                               budget=budget(user_h=2, periods=BOB_HOUR), recorded_jobs=frozenset()))  # fmt: skip
    # bob had an hour left when the Job started 60 s ago: its bill may end an hour after its creation; the trainer
    # stops EXIT_MARGIN_S before that (the checkpoint, the hold, the Job's exit)
    assert limit.kind is K.LIMIT and limit.stop_at == pytest.approx(NOW - 60 + 3600 - EXIT_MARGIN_S)
    assert "spending cap" in limit.reason


def test_a_cap_stop_is_a_hold_not_a_failed_attempt():
    [hold] = decide_jobs(snap([running("a", "h-j1", attempts=2, stop_at=NOW - 30)],
                              [job("j1", "a", "ERROR", finished_at=NOW - 5)]))  # fmt: skip
    assert hold.kind is K.HOLD and hold.holder == "h-j1" and hold.reason.startswith(CAP_NOTE_PREFIX)


def test_two_tasks_of_a_user_cannot_run_past_their_daily_cap_together():
    """Finding 4: two 3 h tasks of bob both started against a 2 h cap (5.7 GPU h ran). Now the first starts with a
    stop where bob's 2 h end, and the second is held: the first one's remaining run is counted."""
    actions = decide_jobs(snap([task("a", submitted_by="bob", created=90), task("b", submitted_by="bob", created=60)],
                               budget=budget(user_h=2)))  # fmt: skip
    assert kinds(actions) == [(K.DISPATCH, "a"), (K.HOLD, "b")]
    first = actions[0]
    assert first.timeout_s == 2 * 3600 - 60 and first.stop_at == pytest.approx(NOW + 2 * 3600 - 60 - EXIT_MARGIN_S)
    assert "MAX_GPU_HOURS_PER_USER_DAY" in actions[1].reason and actions[1].reason.startswith(CAP_NOTE_PREFIX)
