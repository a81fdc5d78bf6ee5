"""The whole state machine of the self-upgrading Space as one pure function: ``decide(snapshot) -> Action``.

The worker builds a ``Snapshot`` (queue, hardware, time), calls ``decide`` and executes the returned action, then
loops. ``decide`` does no I/O, so every row of the lifecycle table is a plain table-driven test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from contract.flavors import FLAVORS, is_gpu
from scheduler.billing import open_period
from scheduler.spending import Budget, Start, cap_held, space_live, start_check, startable
from scheduler.task import Task, TaskStatus


class ActionKind(str, Enum):  # noqa: UP042 - kept: str(kind) formatting is part of the contract
    WAIT = "wait"  # nothing to do now (serve the form, or wait for a requested switch)
    REQUEST_HARDWARE = "request_hardware"  # ask the Hub for action.hardware
    CLAIM_AND_TRAIN = "claim_and_train"  # claim action.task_id and train it here
    REQUEUE_EXPIRED = "requeue_expired"  # a RUNNING task's lease expired: requeue or fail it
    FAIL_TASK = "fail_task"  # mark action.task_id FAILED with action.reason
    STOP_TRAINING = "stop_training"  # the task this worker trains was cancelled: kill the trainer
    RELEASE_HARDWARE = "release_hardware"  # on paid hardware with nothing runnable: go back to idle
    HOLD_TASK = "hold_task"  # a spending cap holds action.task_id back: store action.reason as its note


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
    budget: Budget | None = None  # the spending caps and the billed periods (None: no cap, e.g. local mode)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    task_id: str | None = None
    hardware: str | None = None
    reason: str = ""


def _capacity(flavor: str | None) -> int:
    """Total GPU memory of a flavor in GiB (0 for CPU or unknown flavors)."""
    known = FLAVORS.get(flavor or "")
    return known.gpus * known.gpu_memory_gib if known else 0


def can_train_on(task: Task, current: str | None) -> bool:
    """A GPU flavor trains a task when it is the task's flavor or has at least as much GPU memory in total.

    Rule: any runnable task runs on any GPU flavor at least as capable as the one it asked for, so a Space already
    on a GPU drains the whole queue in one paid period instead of switching between flavors.
    """
    if current is None:
        return False
    return task.hardware == current or (is_gpu(current) and _capacity(current) >= _capacity(task.hardware) > 0)


def _wait(reason: str, task_id: str | None = None) -> Action:
    return Action(ActionKind.WAIT, task_id=task_id, reason=reason)


def _cap_verdicts(snap: Snapshot, tasks: list[Task], current: str | None) -> dict[str, Start]:
    """Whether each task that may start (``spending.startable``) fits the spending caps now: on the GPU it would
    train on here, else on its own flavor (a GPU request). The task the open period was requested for may use all
    the room left (its start is billed already)."""
    assert snap.budget is not None
    live = space_live(tasks, snap.budget.periods)
    period = open_period(snap.budget.periods)
    verdicts = {}
    for t in (t for t in tasks if startable(t)):
        here = is_gpu(current) and can_train_on(t, current)
        shorten = (here or not is_gpu(current)) and period is not None and period.requested_for == t.id
        verdicts[t.id] = start_check(t, snap.budget, tasks, live, snap.now, flavor=current if here else t.hardware,
                                     shorten=shorten)  # fmt: skip
    return verdicts


def decide(snap: Snapshot) -> Action:
    """The next action for this worker, from the snapshot alone (no I/O). Rules, in priority order:

    1. This worker is training: stop when its task was cancelled, taken over or its lease lapsed; else wait.
    2. A RUNNING task's lease expired (its container died): requeue it (or fail it when out of attempts).
    3. A PENDING task out of attempts: fail it with its last error.
    4. Local mode: claim the oldest runnable task and train it here; never request or release hardware.
    5. A CPU container (ACCELERATOR none) while the runtime reports a GPU flavor: the old container of a switch; wait.
       On a GPU flavor without CUDA (unless CPU training is allowed): fail the runnable task, then release.
    6. On a GPU flavor: claim the oldest runnable task it can train (see ``can_train_on``); if only bigger tasks
       are left, request the bigger flavor; wait while another worker's lease is alive; else release (once).
    7. On idle hardware: request the oldest runnable task's flavor, unless a switch is already requested.
       A task with a note (e.g. its GPU request was refused) is not runnable until the owner retries it.

    With a ``budget`` (off local mode), steps 6 and 7 first apply the spending caps (``scheduler.spending``): a task
    whose start would pass one is held (``HOLD_TASK``: its note says why), and one held by a cap runs again once its
    start fits.
    """
    tasks = sorted(snap.tasks, key=lambda t: t.created_at)
    by_id = {t.id: t for t in tasks}

    if snap.training_task_id is not None:
        mine = by_id.get(snap.training_task_id)
        if mine is None or mine.status is TaskStatus.CANCELLED:
            return Action(ActionKind.STOP_TRAINING, task_id=snap.training_task_id, reason="the task was cancelled")
        if mine.status is not TaskStatus.RUNNING or mine.lease is None or mine.lease.holder != snap.worker_id:
            return Action(ActionKind.STOP_TRAINING, task_id=mine.id, reason="the task is no longer held by this worker")
        if mine.lease_expired(snap.now):
            return Action(ActionKind.STOP_TRAINING, task_id=mine.id, reason="this worker's lease expired")
        return _wait(f"training task {mine.id}", mine.id)

    expired = [t for t in tasks if t.lease_expired(snap.now)]
    if expired:
        return Action(ActionKind.REQUEUE_EXPIRED, task_id=expired[0].id, reason="lease expired: the worker stopped or hung")

    exhausted = [t for t in tasks if t.status is TaskStatus.PENDING and t.attempts >= t.max_attempts]
    if exhausted:
        t = exhausted[0]
        last = f" Last error: {t.last_error}" if t.last_error else ""
        return Action(ActionKind.FAIL_TASK, task_id=t.id, reason=f"Gave up after {t.attempts} of {t.max_attempts} attempts.{last}")

    runnable = [t for t in tasks if t.runnable]
    held_back = [t for t in tasks if t.status is TaskStatus.PENDING and t.note]

    if snap.local:
        if runnable:
            return Action(ActionKind.CLAIM_AND_TRAIN, task_id=runnable[0].id, reason="local mode: training here")
        return _wait("no task to run")

    current, requested = snap.current_hardware, snap.requested_hardware
    switching = requested is not None and current is not None and requested != current

    if is_gpu(current) and snap.accelerator in ("", "none"):
        # This container was started on CPU hardware while the runtime already reports a GPU: it is the old container
        # of a hardware switch, still serving until the GPU one is up. Claiming, failing or releasing from here would
        # race the new container (and fail tasks for want of CUDA), so it only waits.
        return _wait(f"the Space runs on {current} now; this CPU container hands over to the new one")
    if snap.budget is not None:
        verdicts = _cap_verdicts(snap, tasks, current)
        hold = next((t for t in tasks if t.id in verdicts and verdicts[t.id].problem and not cap_held(t)), None)
        if hold is not None:
            return Action(ActionKind.HOLD_TASK, task_id=hold.id, reason=verdicts[hold.id].problem or "")
        runnable = [t for t in tasks if t.id in verdicts and verdicts[t.id].problem is None]
    if is_gpu(current):
        trainable = [t for t in runnable if can_train_on(t, current)]
        if trainable and not (snap.gpu_visible or snap.allow_cpu_training):
            t = trainable[0]
            return Action(
                ActionKind.FAIL_TASK,
                task_id=t.id,
                reason=f"The Space runs on {current} but no CUDA device is visible in the container "
                f"(ACCELERATOR={snap.accelerator}); the hardware will be released. Retry the task later.",
            )
        if trainable and not switching:
            return Action(ActionKind.CLAIM_AND_TRAIN, task_id=trainable[0].id, hardware=current, reason=f"training on {current}")
        if trainable:
            # A switch is under way; work claimed now would start on a container that is about to stop.
            return _wait(f"moving to {requested}; task {trainable[0].id} waits for the next container", trainable[0].id)
        if runnable:
            target = runnable[0].hardware
            if requested == target:
                return _wait(f"moving to {target}", runnable[0].id)
            return Action(ActionKind.REQUEST_HARDWARE, task_id=runnable[0].id, hardware=target, reason=f"task needs {target}, more than {current}")
        alive = [t for t in tasks if t.status is TaskStatus.RUNNING and t.lease is not None and t.lease.holder != snap.worker_id]
        if alive:
            t = alive[0]
            return _wait(f"task {t.id} is held by worker {t.lease.holder}; waiting for it to finish or for its lease to expire", t.id)
        if requested is not None and not is_gpu(requested):
            return _wait(f"release to {requested} requested")
        why = "nothing left to run" if not held_back else "the remaining tasks wait for their owner (see their note)"
        return Action(ActionKind.RELEASE_HARDWARE, hardware=snap.idle_hardware, reason=f"{why}: going back to {snap.idle_hardware}")

    # Idle (CPU) hardware, or unknown during a build.
    if not runnable:
        if held_back:
            return _wait(f"task {held_back[0].id} waits for its owner: {held_back[0].note}", held_back[0].id)
        return _wait("no task to run")
    t = runnable[0]
    if not is_gpu(t.hardware):
        if current == t.hardware and snap.allow_cpu_training:
            return Action(ActionKind.CLAIM_AND_TRAIN, task_id=t.id, hardware=current, reason=f"CPU training allowed on {current}")
        if t.hardware in FLAVORS and snap.allow_cpu_training:
            if requested == t.hardware:
                return _wait(f"moving to {t.hardware}", t.id)
            return Action(ActionKind.REQUEST_HARDWARE, task_id=t.id, hardware=t.hardware, reason=f"task {t.id} needs {t.hardware}")
        return Action(ActionKind.FAIL_TASK, task_id=t.id, reason=f"Hardware {t.hardware!r} is not a GPU flavor this Space can train on.")
    if requested == t.hardware or is_gpu(requested):
        return _wait(f"moving to {requested}", t.id)
    return Action(ActionKind.REQUEST_HARDWARE, task_id=t.id, hardware=t.hardware, reason=f"task {t.id} needs {t.hardware}")
