"""The old CPU container of a hardware switch never claims, fails or releases once the runtime reports the GPU
(found by scenario 7: it claimed a task, was stopped by the switch, and the task waited for its lease to expire)."""

from __future__ import annotations

import time

from scheduler.lifecycle import ActionKind, Snapshot, decide
from scheduler.task import Task, TaskStatus


def snap(tasks, accelerator: str, gpu_visible: bool, allow_cpu: bool) -> Snapshot:
    return Snapshot(tasks=tuple(tasks), now=time.time(), worker_id="me", local=False, current_hardware="t4-small",
                    requested_hardware="t4-small", accelerator=accelerator, gpu_visible=gpu_visible,
                    allow_cpu_training=allow_cpu)  # fmt: skip


def test_cpu_container_waits_while_the_runtime_reports_a_gpu():
    pending = Task(instance_prompt="p", submitted_by="alice")
    done = Task(instance_prompt="p", submitted_by="alice", status=TaskStatus.DONE)
    for allow_cpu in (False, True):
        assert decide(snap([pending], "none", False, allow_cpu)).kind is ActionKind.WAIT  # no claim, no FAIL
        assert decide(snap([done], "none", False, allow_cpu)).kind is ActionKind.WAIT  # no release
    # The GPU container itself still claims, and still fails + releases when CUDA is missing.
    assert decide(snap([pending], "t4-small", True, False)).kind is ActionKind.CLAIM_AND_TRAIN
    assert decide(snap([pending], "t4-small", False, False)).kind is ActionKind.FAIL_TASK
    assert decide(snap([done], "t4-small", True, False)).kind is ActionKind.RELEASE_HARDWARE
