"""Table-driven tests of ``decide``: one row per situation of DESIGN.md §4 and the extra cases of issue 3."""

from __future__ import annotations

import copy

import pytest

from scheduler.billing import Claim, GpuPeriod
from scheduler.lifecycle import ActionKind, Snapshot, can_train_on, decide
from scheduler.spending import CAP_NOTE_PREFIX, Budget, Caps
from scheduler.task import Lease, Task, TaskStatus

NOW = 1_000_000.0
ME = "worker-me"


def task(tid: str, status: TaskStatus = TaskStatus.PENDING, **changes) -> Task:
    fields = dict(instance_prompt="a photo of sks dog", submitted_by="alice", id=tid, status=status, created_at=NOW - 100)
    fields.update(changes)
    return Task(**fields)


def running(tid: str, holder: str, expires_in: float, **changes) -> Task:
    return task(tid, TaskStatus.RUNNING, attempts=1, lease=Lease(holder, NOW + expires_in), **changes)


CPU = dict(current_hardware="cpu-basic", requested_hardware="cpu-basic", accelerator="none", gpu_visible=False)
T4 = dict(current_hardware="t4-small", requested_hardware="t4-small", accelerator="t4-small", gpu_visible=True)


def snap(tasks=(), **changes) -> Snapshot:
    base = dict(tasks=tuple(tasks), now=NOW, worker_id=ME, local=False, **CPU)
    base.update(changes)
    return Snapshot(**base)


def budget(month: float | None = None, user_h: float | None = None, periods=()) -> Budget:
    """The spending caps (MAX_SPEND_USD_PER_MONTH, MAX_GPU_HOURS_PER_USER_DAY; alice owns the Space) and the periods."""
    return Budget(Caps(month_usd=month, user_s=None if user_h is None else user_h * 3600, owner="alice"), tuple(periods))


HELD = CAP_NOTE_PREFIX + "its worst case would pass this month's spending cap"
# A T4 requested for task "a" five minutes ago ($0.03 so far); bob's tasks billed 1.95 h of T4 today (room: 180 s).
REQUESTED_FOR_A = (GpuPeriod("t4-small", NOW - 300, None, requested_for="a", requested_by="alice"),)
BOB_BILLED = (GpuPeriod("t4-small", NOW - 7100, NOW - 100, [Claim("x", NOW - 7100, "bob")]),)

# (id, snapshot, expected kind, expected task id, expected hardware or None)
ROWS = [
    # spending caps (a 3 h deadline on a T4 costs up to $1.22 with the end margin)
    ("cap-month-idle-hold", snap([task("a")], budget=budget(month=1.0)), ActionKind.HOLD_TASK, "a", None),
    ("cap-month-idle-fits-request", snap([task("a")], budget=budget(month=2.0)), ActionKind.REQUEST_HARDWARE, "a", "t4-small"),
    ("cap-held-fits-again-request", snap([task("a", note=HELD)], budget=budget(month=2.0)), ActionKind.REQUEST_HARDWARE, "a", "t4-small"),
    ("cap-held-still-over-wait", snap([task("a", note=HELD)], budget=budget(month=1.0)), ActionKind.WAIT, "a", None),
    ("cap-gpu-requested-for-it-claims-shortened", snap([task("a")], **T4, budget=budget(month=0.5, periods=REQUESTED_FOR_A)), ActionKind.CLAIM_AND_TRAIN, "a", "t4-small"),
    ("cap-gpu-another-task-hold", snap([task("b")], **T4, budget=budget(month=0.5, periods=REQUESTED_FOR_A)), ActionKind.HOLD_TASK, "b", None),
    ("cap-gpu-only-held-release", snap([task("b", note=HELD)], **T4, budget=budget(month=0.5, periods=REQUESTED_FOR_A)), ActionKind.RELEASE_HARDWARE, None, "cpu-basic"),
    ("user-cap-spent-hold", snap([task("b", submitted_by="bob")], budget=budget(user_h=2, periods=BOB_BILLED)), ActionKind.HOLD_TASK, "b", None),
    ("user-cap-owner-unbound-request", snap([task("a")], budget=budget(user_h=0, periods=BOB_BILLED)), ActionKind.REQUEST_HARDWARE, "a", "t4-small"),
    ("user-cap-other-user-request", snap([task("c", submitted_by="carol")], budget=budget(user_h=2, periods=BOB_BILLED)), ActionKind.REQUEST_HARDWARE, "c", "t4-small"),
    # DESIGN §4 rows
    ("idle-empty-wait", snap(), ActionKind.WAIT, None, None),
    ("idle-only-finished-wait", snap([task("a", TaskStatus.DONE), task("b", TaskStatus.FAILED)]), ActionKind.WAIT, None, None),
    ("idle-runnable-request", snap([task("a")]), ActionKind.REQUEST_HARDWARE, "a", "t4-small"),
    ("idle-runnable-requests-its-flavor", snap([task("a", hardware="a10g-small")]), ActionKind.REQUEST_HARDWARE, "a", "a10g-small"),
    ("idle-target-already-requested-wait", snap([task("a")], requested_hardware="t4-small"), ActionKind.WAIT, "a", None),
    ("idle-other-gpu-requested-wait", snap([task("a")], requested_hardware="a10g-small"), ActionKind.WAIT, "a", None),
    ("build-hardware-none-requests", snap([task("a")], current_hardware=None, requested_hardware=None), ActionKind.REQUEST_HARDWARE, "a", "t4-small"),
    ("build-gpu-requested-wait", snap([task("a")], current_hardware=None, requested_hardware="t4-small"), ActionKind.WAIT, "a", None),
    ("refused-note-wait-no-rerequest", snap([task("a", note="402: add a payment method")]), ActionKind.WAIT, "a", None),
    ("gpu-runnable-claim", snap([task("a")], **T4), ActionKind.CLAIM_AND_TRAIN, "a", "t4-small"),
    ("gpu-claims-oldest-first", snap([task("new", created_at=NOW - 1), task("old", created_at=NOW - 50)], **T4), ActionKind.CLAIM_AND_TRAIN, "old", "t4-small"),
    ("expired-lease-requeue", snap([running("a", "dead", -1)]), ActionKind.REQUEUE_EXPIRED, "a", None),
    ("expired-lease-requeue-on-gpu", snap([running("a", "dead", -1), task("b")], **T4), ActionKind.REQUEUE_EXPIRED, "a", None),
    ("attempts-exhausted-fail", snap([task("a", attempts=2, max_attempts=2, last_error="OOM")]), ActionKind.FAIL_TASK, "a", None),
    ("gpu-without-cuda-fail", snap([task("a")], **{**T4, "gpu_visible": False}), ActionKind.FAIL_TASK, "a", None),
    ("gpu-without-cuda-then-release", snap([task("a", TaskStatus.FAILED)], **{**T4, "gpu_visible": False}), ActionKind.RELEASE_HARDWARE, None, "cpu-basic"),
    ("gpu-drained-release", snap([task("a", TaskStatus.DONE)], **T4), ActionKind.RELEASE_HARDWARE, None, "cpu-basic"),
    ("gpu-empty-release-to-pause", snap([], **T4, idle_hardware="pause"), ActionKind.RELEASE_HARDWARE, None, "pause"),
    # extra cases
    ("gpu-release-already-requested-wait", snap([], **{**T4, "requested_hardware": "cpu-basic"}), ActionKind.WAIT, None, None),
    ("gpu-only-noted-task-release", snap([task("a", note="refused")], **T4), ActionKind.RELEASE_HARDWARE, None, "cpu-basic"),
    ("gpu-smaller-task-trains-here", snap([task("a", hardware="t4-small")], **{**T4, "current_hardware": "a10g-small", "requested_hardware": "a10g-small"}), ActionKind.CLAIM_AND_TRAIN, "a", "a10g-small"),
    ("gpu-bigger-task-requests-bigger", snap([task("a", hardware="a100-large")], **T4), ActionKind.REQUEST_HARDWARE, "a", "a100-large"),
    ("gpu-bigger-task-already-requested-wait", snap([task("a", hardware="a100-large")], **{**T4, "requested_hardware": "a100-large"}), ActionKind.WAIT, "a", None),
    ("gpu-switching-does-not-claim", snap([task("a")], **{**T4, "requested_hardware": "cpu-basic"}), ActionKind.WAIT, "a", None),
    ("gpu-other-worker-alive-wait", snap([running("a", "other", 100)], **T4), ActionKind.WAIT, "a", None),
    ("gpu-no-cuda-cpu-training-allowed-claims", snap([task("a")], **{**T4, "gpu_visible": False}, allow_cpu_training=True), ActionKind.CLAIM_AND_TRAIN, "a", "t4-small"),
    ("training-cancelled-stop", snap([task("a", TaskStatus.CANCELLED, lease=Lease(ME, NOW + 60))], **T4, training_task_id="a"), ActionKind.STOP_TRAINING, "a", None),
    ("training-taken-over-stop", snap([running("a", "other", 60)], **T4, training_task_id="a"), ActionKind.STOP_TRAINING, "a", None),
    ("training-own-lease-lapsed-stop", snap([running("a", ME, -1)], **T4, training_task_id="a"), ActionKind.STOP_TRAINING, "a", None),
    ("training-task-vanished-stop", snap([], **T4, training_task_id="a"), ActionKind.STOP_TRAINING, "a", None),
    ("training-wait", snap([running("a", ME, 60), task("b")], **T4, training_task_id="a"), ActionKind.WAIT, "a", None),
    ("local-claims-without-hardware", snap([task("a")], local=True, current_hardware="local", requested_hardware=None), ActionKind.CLAIM_AND_TRAIN, "a", None),
    ("local-empty-wait-never-release", snap([], local=True, **{**T4}), ActionKind.WAIT, None, None),
    ("local-expired-requeue", snap([running("a", "dead", -5)], local=True), ActionKind.REQUEUE_EXPIRED, "a", None),
    ("cpu-task-allowed-on-cpu-claims", snap([task("a", hardware="cpu-basic")], allow_cpu_training=True), ActionKind.CLAIM_AND_TRAIN, "a", "cpu-basic"),
    ("cpu-task-not-allowed-fails", snap([task("a", hardware="cpu-basic")]), ActionKind.FAIL_TASK, "a", None),
]


@pytest.mark.parametrize(("snapshot", "kind", "task_id", "hardware"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_decide(snapshot, kind, task_id, hardware):
    action = decide(snapshot)
    assert action.kind is kind, action.reason
    assert action.task_id == task_id
    if hardware is not None:
        assert action.hardware == hardware
    assert action.reason  # every action says why, for the UI


def test_no_cuda_failure_message_is_clear():
    action = decide(snap([task("a")], **{**T4, "gpu_visible": False}))
    assert "no CUDA device" in action.reason and "t4-small" in action.reason


def test_decide_is_pure():
    s = snap([task("a"), running("b", "dead", -1)], **T4)
    before = copy.deepcopy(s)
    decide(s)
    assert s == before


@pytest.mark.parametrize(
    ("target", "current", "expected"),
    [("t4-small", "t4-small", True), ("t4-small", "a10g-small", True), ("a100-large", "t4-small", False), ("t4-small", "cpu-basic", False), ("t4-small", None, False)],
)
def test_can_train_on(target, current, expected):
    assert can_train_on(task("x", hardware=target), current) is expected


def test_a_cap_hold_says_why_and_what_to_do():
    action = decide(snap([task("a")], budget=budget(month=1.0)))
    assert action.reason.startswith(CAP_NOTE_PREFIX) and "MAX_SPEND_USD_PER_MONTH" in action.reason
    assert "$1.22" in action.reason and "starts by itself" in action.reason
    user = decide(snap([task("b", submitted_by="bob")], budget=budget(user_h=2, periods=BOB_BILLED)))
    assert "MAX_GPU_HOURS_PER_USER_DAY" in user.reason and "1.95 h ($0.78)" in user.reason  # 7,000 s billed as 117 started minutes
    assert "2 h a day" in user.reason and "about $0.80 on Nvidia T4 small" in user.reason
