"""The whole state machine of the self-upgrading Space as one pure function: ``decide(snapshot) -> Action``.

The worker builds a ``Snapshot`` (queue, hardware, time), calls ``decide`` and executes the returned action, then
loops. ``decide`` does no I/O, so every row of the lifecycle table is a plain table-driven test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from scheduler.task import Task


class ActionKind(str, Enum):
    WAIT = "wait"  # nothing to do now (serve the form, or wait for a requested switch)
    REQUEST_HARDWARE = "request_hardware"  # ask the Hub for action.hardware
    CLAIM_AND_TRAIN = "claim_and_train"  # claim action.task_id and train it here
    REQUEUE_EXPIRED = "requeue_expired"  # a RUNNING task's lease expired: requeue or fail it
    FAIL_TASK = "fail_task"  # mark action.task_id FAILED with action.reason
    STOP_TRAINING = "stop_training"  # the task this worker trains was cancelled: kill the trainer
    RELEASE_HARDWARE = "release_hardware"  # on paid hardware with nothing runnable: go back to idle


@dataclass(frozen=True)
class Snapshot:
    """Everything ``decide`` may look at. Built by the worker once per loop."""

    tasks: tuple[Task, ...]
    now: float
    worker_id: str
    local: bool  # local mode: train on this machine, never request or release hardware
    current_hardware: str | None
    requested_hardware: str | None
    accelerator: str  # this container's ACCELERATOR ("none" on CPU)
    gpu_visible: bool
    idle_hardware: str = "cpu-basic"
    training_task_id: str | None = None  # the task this worker is training right now, if any
    allow_cpu_training: bool = False  # tests: a "GPU" flavor without CUDA may train on the CPU


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    task_id: str | None = None
    hardware: str | None = None
    reason: str = ""
