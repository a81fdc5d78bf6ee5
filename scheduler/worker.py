"""The background worker: runs ``decide()`` in a loop and carries out its actions.

One worker per app process. Each loop it builds a ``Snapshot`` (the queue and the hardware state), asks
``decide()`` what to do and does it: request hardware, claim and train a task, requeue expired leases, fail a
task, or release paid hardware. Training runs ``python -m training`` as a subprocess in its own process group
(``accelerate launch`` on multi-GPU flavors) under a watchdog that renews the lease, enforces the deadline and
stops on cancel. The UI never talks to the Hub to show progress: it reads ``WorkerStatus``.

Costs and speeds: a granted GPU request opens a GPU period in the queue, each claim on a GPU joins it in the claim's
commit and the release request is preceded by the commit that closes it (``scheduler.billing``); each finished task's
completion carries its run record (``scheduler.task.RunRecord``: the trainer's steady speed, start-up, wrap-up).

Hub request budget: every loop costs one queue read (plus a runtime read when the hardware matters) and the
worker then sleeps ``poll_interval_s`` per request made, so idle polling stays at or below one request per
``poll_interval_s``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.billing import RECOVERED, GpuPeriod, open_period
from scheduler.flavors import FLAVORS, is_gpu
from scheduler.hardware.base import HardwareController, HardwareRefused, HardwareState
from scheduler.hardware.probe import cuda_visible
from scheduler.lifecycle import Action, ActionKind, Snapshot, decide
from scheduler.queue.base import InvalidTransition, QueueError, TaskQueue
from scheduler.queue.document import CHECKPOINTS_DIR
from scheduler.redact import redact
from scheduler.settings import child_environment
from scheduler.stored import is_safe_task_id, vetted_with_billing
from scheduler.task import LOCAL_CPU, LOCAL_GPU, RunRecord, Task, TaskStatus

log = logging.getLogger(__name__)

EXIT_MESSAGES = {
    2: "the trainer refused the task's input",
    3: "the GPU ran out of memory (try a lower resolution or rank, or a bigger GPU)",
    4: "the model was trained but the upload failed",
}
LOG_TAIL_LINES = 40
ERROR_TAIL_LINES = 15
LOSS_HISTORY = 2000
SAMPLES_KEPT = 8
#: phases that say how the last run ended: an idle worker keeps showing them until the next task starts
ENDED_PHASES = frozenset({"done", "failed", "cancelled", "stopped"})
REFUSAL_BACKOFF_S = 15 * 60
#: Space stages that change on their own within seconds (huggingface_hub's intermediate stages)
SETTLING_STAGES = frozenset({"BUILDING", "RUNNING_BUILDING", "APP_STARTING", "RUNNING_APP_STARTING"})
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where ``python -m training`` finds the package
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


def memory_plan_message(event: dict[str, Any]) -> str:
    """The run view's line for the trainer's ``memory_plan`` event, e.g. "Memory plan: NF4 base, gradient
    checkpointing, about 9.9 GiB of GPU memory"."""
    kind = str(event.get("quantized_base") or "none")
    parts = ["bf16/fp16 base" if kind == "none" else f"{kind.upper()} base"]
    parts += [name for key, name in (("gradient_checkpointing", "gradient checkpointing"),
                                     ("use_8bit_adam", "8-bit Adam")) if event.get(key) is True]  # fmt: skip
    est = event.get("estimate_gib")
    if isinstance(est, int | float):
        parts.append(f"about {est:.1f} GiB of GPU memory")
    return "Memory plan: " + ", ".join(parts)


@dataclass
class StatusData:
    """A copy of what the worker is doing, for the UI (see ``WorkerStatus.snapshot``)."""

    phase: str = "starting"
    message: str = ""
    task_id: str | None = None
    step: int = 0
    total: int = 0
    loss: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    hardware: HardwareState | None = None
    tasks: list[Task] = field(default_factory=list)
    billing: list[GpuPeriod] = field(default_factory=list)  # the queue's GPU periods, as last read
    # Jobs backend: this Space's Jobs as last listed (``scheduler.backends.jobs.JobView``: task id, stage, flavor,
    # times, log tail for the alive ones), and the Jobs price per flavor (USD/h) with where it was read.
    jobs: list[Any] = field(default_factory=list)
    job_prices: dict[str, float] = field(default_factory=dict)
    job_prices_source: str = ""
    last_action: str = ""
    last_action_at: float | None = None
    last_error: str | None = None
    loops: int = 0
    updated_at: float = field(default_factory=time.time)


class WorkerStatus:
    """Thread-safe holder of ``StatusData``: the worker writes, UI handlers read copies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = StatusData()

    def update(self, **changes: Any) -> None:
        """Set fields of the status atomically."""
        with self._lock:
            for key, value in changes.items():
                setattr(self._data, key, value)
            self._data.updated_at = time.time()

    def record_step(self, event: dict[str, Any]) -> None:
        """Apply one ``step`` event of the trainer."""
        with self._lock:
            d = self._data
            d.step = int(event.get("step", d.step))
            d.total = int(event.get("total", d.total) or d.total)
            d.steps_per_s = event.get("steps_per_s", d.steps_per_s)
            d.eta_s = event.get("eta_s", d.eta_s)
            if event.get("loss") is not None:
                d.loss = float(event["loss"])
                d.loss_history.append((d.step, d.loss))
                del d.loss_history[:-LOSS_HISTORY]
            d.updated_at = time.time()

    def add_samples(self, paths: list[str]) -> None:
        """Remember the newest sample images (kept: the last few)."""
        with self._lock:
            self._data.samples = (self._data.samples + paths)[-SAMPLES_KEPT:]

    def start_task(self, task: Task) -> None:
        """Reset every per-task field for a new training run: nothing of the previous task (its error, speed,
        ETA, loss, samples or log) stays on the run view."""
        with self._lock:
            d = self._data
            d.task_id, d.phase, d.message = task.id, "preparing", f"Training task {task.id}"
            d.step, d.total = 0, int(task.params.get("steps", 0) or 0)
            d.loss = d.steps_per_s = d.eta_s = None
            d.loss_history, d.samples, d.log_tail = [], [], []
            d.last_error = None
            d.updated_at = time.time()

    def end_task(self, phase: str, message: str, last_error: str | None = None) -> None:
        """Record how the current run ended (``done``, ``failed``, ``cancelled``...): no ETA is left behind, and
        ``last_error`` is the error of this run only."""
        with self._lock:
            d = self._data
            d.phase, d.message, d.last_error, d.eta_s = phase, message, last_error, None
            d.updated_at = time.time()

    def periods(self) -> list[GpuPeriod]:
        """A copy of the queue's GPU periods as last read (cheaper than a whole ``snapshot``)."""
        with self._lock:
            return copy.deepcopy(self._data.billing)

    @property
    def loops(self) -> int:
        """How many worker loops have finished."""
        with self._lock:
            return self._data.loops

    def count_loop(self) -> None:
        """Note that one more worker loop finished."""
        with self._lock:
            self._data.loops += 1

    def snapshot(self) -> StatusData:
        """A deep copy, safe to read without the lock."""
        with self._lock:
            return copy.deepcopy(self._data)


class EventReader:
    """Reads the trainer's JSON-lines progress file incrementally (tolerates partial last lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        """Events appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def tail_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a text file (reads at most the last 64 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-n:]


@dataclass
class TrainOutcome:
    """How one training run ended."""

    ok: bool
    result_url: str | None = None
    error: str | None = None
    stopped: bool = False  # cancelled or the lease was lost: leave the task alone
    retryable: bool = False  # another attempt may succeed (killed, crashed, upload failed): requeue if attempts left
    report: dict[str, Any] | None = None  # the "run" of the trainer's done event (speed, step times, settings)
    resumed_step: int = 0  # the step this attempt resumed from (its "resumed" event)


@dataclass(frozen=True)
class ClaimInfo:
    """How this worker claimed a task: where startup is measured from, and what the GPU switch before it took."""

    flavor: str  # the hardware it trains on (``LOCAL_CPU``/``LOCAL_GPU`` in local mode)
    claimed_at: float
    since: float  # this container's start (its first task on a GPU), else the claim
    switch_s: float | None = None  # GPU request -> this container's start (the first task of a GPU period)


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


class Worker:
    """Executes the lifecycle for one app process. ``start()`` runs it in a daemon thread."""

    def __init__(
        self,
        settings: Any,
        queue: TaskQueue,
        hardware: HardwareController,
        *,
        status: WorkerStatus | None = None,
        worker_id: str | None = None,
        python: str = sys.executable,
        heartbeat_s: float | None = None,
        kill_grace_s: float = 10.0,
        recipes_modules: tuple[str, ...] = (),
        job_python: str = "python",
        dispatch_jobs: bool = True,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.hardware = hardware
        self.status = status or WorkerStatus()
        self.worker_id = worker_id or f"{getattr(settings, 'space_id', None) or 'local'}:{uuid.uuid4().hex[:8]}"
        self.python = python
        lease_s = float(settings.lease_s)
        # Renew well before the lease expires: every third of it, not more often than every 30 s (Hub commits cost)
        # unless the lease is so short that 30 s would let it lapse while training.
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else min(max(30.0, lease_s / 3), lease_s / 2, 300.0)
        self.kill_grace_s = kill_grace_s
        self.recipes_modules = tuple(recipes_modules)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._hw_state: HardwareState | None = None
        self._hw_read_at = 0.0
        self._refused: dict[str, float] = {}  # task id -> when its hardware request was refused
        self._loop_done = threading.Condition()
        self._last_logged = ""
        self._started_at = process_started_at()  # this container's start (startup_s of its first task on a GPU)
        self._claims = 0  # tasks this worker claimed
        self._billing: list[GpuPeriod] = []  # the queue's GPU periods, as last read
        self._in_job = False  # ``run_one`` inside a Job: the Space records the Job's period, claims bill nothing
        self._jobs = None
        if dispatch_jobs and getattr(settings, "uses_jobs", False):  # TRAINING_BACKEND=jobs: the Space dispatches Jobs
            from scheduler.backends.jobs_runner import JobsRunner

            self._jobs = JobsRunner(settings, queue, self.status, python=job_python)

    # ----------------------------------------------------------------- thread control
    def start(self) -> threading.Thread:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run_forever, name="worker", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to end (kills a running trainer) and wait for the thread."""
        self._stop.set()
        self._wake.set()
        self._kill_trainer()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Run the next loop now instead of after the poll interval (e.g. after an enqueue)."""
        self._wake.set()

    def forget_refusal(self, task_id: str) -> None:
        """Allow a new hardware request for ``task_id`` (the user retried or resubmitted)."""
        self._refused.pop(task_id, None)

    def wait_for_loop(self, after: int, timeout: float) -> bool:
        """Block until a loop numbered greater than ``after`` finished; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._loop_done:
            while self.status.loops <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._loop_done.wait(min(left, 0.5))
        return True

    def run_forever(self) -> None:
        """Loop until ``stop()``; a failing loop is logged and retried, paid hardware is released on crash."""
        self.status.update(phase="idle", message="Waiting for tasks")
        while not self._stop.is_set():
            requests = 1
            try:
                action, requests = self.step()
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                log.exception("worker loop failed")
                self.status.update(last_error=f"{type(exc).__name__}: {exc}")
                self._release_if_paid()
                action = Action(ActionKind.WAIT)
            self._finish_loop()
            if action.kind is ActionKind.WAIT or action.kind is ActionKind.REQUEST_HARDWARE:
                self._wake.wait(self.settings.poll_interval_s * max(1, requests))
                self._wake.clear()

    def _finish_loop(self) -> None:
        with self._loop_done:
            self.status.count_loop()
            self._loop_done.notify_all()

    # ----------------------------------------------------------------- one loop
    def snapshot(self) -> tuple[Snapshot, int]:
        """Read the queue (and the hardware when it matters); return the snapshot and the requests made.

        Stored tasks that fail ``stored_task_problem`` (forged or beyond the settings) are shown and decided on as
        FAILED "rejected: ..." copies, so nothing acts on them."""
        tasks, self._billing = vetted_with_billing(self.queue, self.settings)
        requests = 1
        now = time.time()
        # Re-read the runtime every loop while something moves (tasks to run, or the Space between stages); at
        # rest once a minute, so an idle Space stays well inside the Hub's request budget.
        active = self._stage_settling() or any(not t.status.terminal for t in tasks)
        stale = now - self._hw_read_at > (self.settings.poll_interval_s if active else 60.0)
        hw = self._hw_state
        if hw is None or stale or is_gpu(hw.current):
            hw = self._read_hardware()
            requests += 0 if self.settings.local else 1
        self.status.update(tasks=tasks, billing=self._billing)
        snap = Snapshot(
            tasks=tuple(tasks),
            now=now,
            worker_id=self.worker_id,
            local=bool(self.settings.local),
            current_hardware=hw.current,
            requested_hardware=hw.requested,
            accelerator=hw.accelerator,
            gpu_visible=hw.gpu_visible,
            idle_hardware=self.settings.idle_hardware,
            training_task_id=None,
            allow_cpu_training=bool(self.settings.allow_cpu_training),
        )
        return snap, requests

    def step(self) -> tuple[Action, int]:
        """One loop: snapshot, decide, execute. Returns the action and the Hub requests made."""
        if self._jobs is not None:
            return self._jobs_step()
        snap, requests = self.snapshot()
        action = decide(snap)
        described = f"{action.kind.value}: {action.reason}".strip(": ")
        if action.kind is not ActionKind.WAIT or described != self._last_logged:
            log.info(
                "action %s %s %s %s", action.kind.value, action.task_id or "", action.hardware or "", action.reason
            )
            self._last_logged = described
        self.status.update(last_action=described, last_action_at=time.time())
        self._close_stale_period(snap)
        self.execute(action, snap)
        return action, requests

    def _jobs_step(self) -> tuple[Action, int]:
        """One loop of the Jobs backend (``scheduler.backends.jobs_runner``); the Space's own hardware is only read
        (once a minute, for the header), never changed."""
        requests = 0
        if self._hw_state is None or time.time() - self._hw_read_at > 60.0:
            self._read_hardware()
            requests += 1
        jobs = self._jobs
        assert jobs is not None
        if not jobs.prices:
            jobs.read_prices()
            self.status.update(job_prices=dict(jobs.prices), job_prices_source=jobs.prices_source)
        actions, made = jobs.step()
        # Always a WAIT for the loop: it sleeps by the requests made (the Hub budget), whatever was done.
        return Action(ActionKind.WAIT, reason=actions[-1].reason if actions else ""), requests + made

    def run_one(self, task_id: str) -> int:
        """Inside a Job: claim ``task_id`` (lease held by this worker's id), train it under the watchdog, upload and
        complete it, as the GPU container of the self-upgrade backend does. Returns 0 when the task ended DONE or
        there was nothing to do (cancelled, finished, held by another holder), 1 when this attempt failed."""
        self._in_job = True
        tasks, self._billing = vetted_with_billing(self.queue, self.settings)
        task = next((t for t in tasks if t.id == task_id), None)
        if task is None or not task.runnable:
            why = "not in the queue" if task is None else f"{task.status.value}, attempt {task.attempts} of {task.max_attempts}"
            log.warning("task %s is not claimable (%s): nothing to do", task_id, why)
            return 0
        flavor = FLAVORS.get(task.hardware)
        multi = flavor is not None and flavor.gpus > 1
        self._hw_state = HardwareState(current=task.hardware, requested=task.hardware, stage="RUNNING",
                                       accelerator=self.settings.accelerator, gpu_visible=multi and cuda_visible())  # fmt: skip
        self.status.update(hardware=self._hw_state, tasks=tasks)
        self._claim_and_train(Action(ActionKind.CLAIM_AND_TRAIN, task_id=task_id, hardware=task.hardware))
        try:
            final = self.queue.get(task_id)
        except QueueError:
            return 1
        return 0 if final.status in (TaskStatus.DONE, TaskStatus.CANCELLED) else 1

    def _close_stale_period(self, snap: Snapshot) -> None:
        """A CPU container that finds a GPU period open while no GPU is current or requested: the container that
        trained in it died without closing it. Close it now (the best guess of its end; no request when none is
        open, since the snapshot's read already brought the periods)."""
        if snap.local or open_period(self._billing) is None or snap.accelerator not in ("", "none"):
            return
        if snap.current_hardware is None or is_gpu(snap.current_hardware) or is_gpu(snap.requested_hardware):
            return
        try:
            self.queue.close_period(RECOVERED)
            log.warning("closed a GPU period left open by a container that stopped")
        except QueueError:
            log.exception("could not close the GPU period left open")

    def _close_period(self) -> None:
        """Close the open GPU period before the release request; a queue failure never holds the release back."""
        if self.settings.local:
            return
        try:
            self.queue.close_period()
        except Exception:  # noqa: BLE001 - the release must happen whatever the queue does
            log.exception("could not close the GPU period before releasing the hardware")

    def execute(self, action: Action, snap: Snapshot) -> None:
        """Carry out one action."""
        kind = action.kind
        if kind is ActionKind.WAIT:
            pending = any(t.status is TaskStatus.PENDING for t in snap.tasks)
            if pending or self.status.snapshot().phase not in ENDED_PHASES:
                self.status.update(phase="waiting" if pending else "idle", message=action.reason or "Waiting for tasks")
        elif kind is ActionKind.REQUEST_HARDWARE:
            self._request_hardware(action)
        elif kind is ActionKind.CLAIM_AND_TRAIN:
            self._claim_and_train(action)
        elif kind is ActionKind.REQUEUE_EXPIRED:
            changed = self.queue.requeue_expired(time.time())
            self.status.update(message=f"Requeued {len(changed)} task(s) whose worker disappeared")
        elif kind is ActionKind.FAIL_TASK:
            self.queue.fail(action.task_id, None, action.reason)
            self.status.update(message=f"Task {action.task_id} failed: {action.reason}")
        elif kind is ActionKind.STOP_TRAINING:
            self._kill_trainer()
        elif kind is ActionKind.RELEASE_HARDWARE:
            self.status.update(phase="releasing", message="Nothing left to train: going back to idle hardware")
            self._close_period()
            done = self.hardware.release()
            self._hw_state = None
            self.status.update(message=f"Released the GPU: {done}")

    # ----------------------------------------------------------------- actions
    def _request_hardware(self, action: Action) -> None:
        flavor = action.hardware or self.settings.train_hardware
        refused_at = self._refused.get(action.task_id or "")
        if refused_at is not None and time.time() - refused_at < REFUSAL_BACKOFF_S:
            return  # refused recently: the reason is on the task; wait for the owner instead of looping
        deadline_s = self.settings.deadline_s
        task = next((t for t in self.status.snapshot().tasks if t.id == action.task_id), None)
        if task is not None:
            deadline_s = task.deadline_s
        requested_at = time.time()
        try:
            self.hardware.request(flavor, sleep_time_s=int(deadline_s + 1800))
        except HardwareRefused as refused:
            self._refused[action.task_id or ""] = time.time()
            note = f"GPU request for {flavor} refused: {refused.reason} Fix: {refused.fix}"
            self.status.update(phase="refused", message=note)
            if action.task_id:
                try:
                    self.queue.set_note(action.task_id, note)
                except QueueError:
                    log.exception("could not store the refusal on task %s", action.task_id)
            return
        if is_gpu(flavor) and not self.settings.local:
            try:  # the GPU is billed from now: record the period (idempotent when it is already recorded)
                self.queue.open_period(flavor, requested_at)
            except QueueError:
                log.exception("could not record the GPU period of %s (the claim records it instead)", flavor)
        self._hw_state = None
        label = FLAVORS[flavor].label if flavor in FLAVORS else flavor
        self.status.update(phase="switching", message=f"Moving to {label}; the app restarts there and trains")

    def _claim_and_train(self, action: Action) -> None:
        hw = self._hw_state
        paid = not self.settings.local and hw is not None and is_gpu(hw.current)
        bill_to = hw.current if paid and hw is not None and not self._in_job else None
        period = open_period(self._billing) if bill_to else None  # as the snapshot read it, before this claim
        task = self.queue.claim(action.task_id, self.worker_id, self.settings.lease_s, bill_to=bill_to)
        if task is None:
            return  # another container won the claim
        first = self._claims == 0
        self._claims += 1
        claimed_at = task.started_at or time.time()
        switch_s = None
        if paid and first and period is not None and period.hardware == bill_to and not period.claims:
            switch_s = round(max(0.0, self._started_at - period.requested_at), 3)
        claim = ClaimInfo(
            flavor=self._run_flavor(task),
            claimed_at=claimed_at,
            since=self._started_at if paid and first else claimed_at,
            switch_s=switch_s,
        )
        self.status.start_task(task)
        try:
            outcome = self.train(task)
        except Exception as exc:  # noqa: BLE001 - the task must end FAILED, not stay RUNNING
            log.exception("training task %s crashed the worker", task.id)
            outcome = TrainOutcome(ok=False, error=f"worker error: {type(exc).__name__}: {exc}", retryable=True)
        finally:
            self._proc = None
        self._finish_task(task, outcome, claim)

    def _run_flavor(self, task: Task) -> str:
        """The hardware a run really happens on: the Space's current flavor, or this machine in local mode."""
        hw = self._hw_state
        if self.settings.local:
            return LOCAL_GPU if hw is not None and hw.gpu_visible else LOCAL_CPU
        return hw.current if hw is not None and hw.current else task.hardware

    def _redacted(self, lines: list[str]) -> list[str]:
        """Log lines as the UI may show them: the token (or anything shaped like one) masked."""
        return [redact(line, [self.settings.hf_token]) for line in lines]

    def _clean_up_run(self, task: Task, finished: bool) -> None:
        """After a task: on a Space, its whole run folder goes once the task is finished (photos, checkpoints and
        outputs are in the queue repo and the model repo); locally the outputs are the result and stay, the photo
        copy goes."""
        if self.settings.local:
            self.remove_photos(task.id)
        elif finished and not self.settings.keep_run_folders:
            shutil.rmtree(self.run_dir(task.id), ignore_errors=True)

    def _finish_task(self, task: Task, outcome: TrainOutcome, claim: ClaimInfo | None = None) -> None:
        finished = False
        try:
            finished = self._record_outcome(task, outcome, claim)
        finally:
            self._clean_up_run(task, finished)

    def _record_outcome(self, task: Task, outcome: TrainOutcome, claim: ClaimInfo | None = None) -> bool:
        """Write how the run ended to the queue; True when the task is finished (will not run again)."""
        try:
            if outcome.stopped and outcome.error == "cancelled":
                self.status.end_task(*self._why_stopped(task.id))
                return True
            if outcome.stopped:
                self.status.end_task("stopped", f"Task {task.id} stopped: {outcome.error or ''}")
                return False
            if outcome.ok:
                run = run_record(task, outcome, claim) if claim is not None else None
                self.queue.complete(task.id, self.worker_id, outcome.result_url or "", run=run)
                self.status.end_task("done", f"Task {task.id} done: {outcome.result_url}")
                return True
            if outcome.retryable:
                after = self.queue.requeue(task.id, self.worker_id, outcome.error or "training failed")
                if after.status is TaskStatus.PENDING:
                    note = f"Task {task.id} attempt {after.attempts} of {after.max_attempts} failed; it runs again"
                    self.status.end_task("retrying", note, last_error=outcome.error)
                    return False
                self.status.end_task("failed", f"Task {task.id} failed", last_error=after.last_error)
                return True
            self.queue.fail(task.id, self.worker_id, outcome.error or "training failed")
            self.status.end_task("failed", f"Task {task.id} failed", last_error=outcome.error)
            return True
        except InvalidTransition as exc:
            self.status.end_task("stopped", f"Task {task.id} changed while training ({exc}); result not recorded")
            return True  # cancelled, deleted or taken over: this container has no more use for the folder

    # ----------------------------------------------------------------- training
    def task_spec(self, task: Task, images: Path) -> dict[str, Any]:
        """The trainer's TASK.json for ``task`` (see ``python -m training --help``)."""
        params = dict(task.params)
        output = None
        if task.output_repo and (not self.settings.local or self.settings.hf_token):
            output = {"repo_id": task.output_repo, "private": bool(task.private)}
        checkpoint = None
        if not self.settings.local and self.settings.queue_repo:
            checkpoint = {"repo_id": self.settings.queue_repo, "repo_type": "dataset", "path": f"{CHECKPOINTS_DIR}/{task.id}"}
        base_model = task.base_model
        if base_model.startswith(".") and Path(base_model).exists():
            base_model = str(Path(base_model).resolve())  # the trainer runs in another folder
        return {
            "task_id": task.id,
            "recipe": task.recipe,
            "base_model": base_model,
            "instance_prompt": task.instance_prompt,
            "class_prompt": task.class_prompt,
            "images": str(images),
            "params": params,
            "output": output,
            "checkpoint": checkpoint,
        }

    def trainer_command(self, spec_path: Path, workdir: Path, events: Path) -> list[str]:
        """``python -m training ...``, under ``accelerate launch`` when the current flavor has several GPUs."""
        args = ["-m", "training", "--task", str(spec_path), "--workdir", str(workdir), "--progress", str(events)]
        for module in self.recipes_modules:
            args += ["--recipes-module", module]
        hw = self._hw_state
        gpus = FLAVORS[hw.current].gpus if hw and hw.current in FLAVORS else 0
        if gpus > 1 and hw is not None and hw.gpu_visible:
            launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus)]
            return [self.python, *launch, *args]
        return [self.python, *args]

    def run_dir(self, task_id: str) -> Path:
        """This machine's folder for a task's runs: a copy of its photos (``images/``) and the trainer's ``work/``.

        ValueError for an id that is not a safe task id or a folder that resolves outside ``data_dir/runs``."""
        runs = (Path(self.settings.data_dir) / "runs").resolve()
        folder = (runs / task_id).resolve() if is_safe_task_id(task_id) else None
        if folder is None or folder.parent != runs:
            raise ValueError(f"Refusing a run folder for task id {task_id!r}: not a safe id inside {runs}.")
        return folder

    def remove_photos(self, task_id: str) -> None:
        """Delete this machine's copy of a task's photos (the run's outputs stay)."""
        shutil.rmtree(self.run_dir(task_id) / "images", ignore_errors=True)

    def train(self, task: Task) -> TrainOutcome:
        """Run the trainer for a claimed task under the watchdog and return how it ended."""
        workdir = self.run_dir(task.id)
        workdir.mkdir(parents=True, exist_ok=True)
        self.status.update(phase="downloading", message="Fetching the training images")
        log.info("task %s attempt %d: fetching its photos from the queue", task.id, task.attempts)  # a hang here shows
        images = Path(self.queue.fetch_images(task, workdir / "images")).resolve()
        spec_path = workdir / "task.json"
        spec_path.write_text(json.dumps(self.task_spec(task, images), indent=2))
        events_path = workdir / f"events-{task.attempts}.jsonl"
        log_path = workdir / f"train-{task.attempts}.log"
        cmd = self.trainer_command(spec_path, workdir / "work", events_path)
        log.info("starting trainer for %s: %s", task.id, " ".join(cmd))
        self.status.update(phase="starting trainer", message=f"Training task {task.id}")
        with open(log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                cmd,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=child_environment(),  # HF_TOKEN yes; the Space's OAuth client secret never
            )
        return self._supervise(task, self._proc, EventReader(events_path), log_path)

    def _supervise(self, task: Task, proc: subprocess.Popen, reader: EventReader, log_path: Path) -> TrainOutcome:
        started = time.monotonic()
        last_beat = started
        last_check = started
        done_event: dict[str, Any] | None = None
        error_event: dict[str, Any] | None = None
        resumed = 0
        tick = min(1.0, self.settings.poll_interval_s)
        echoed = 0
        while True:
            code = proc.poll()
            if self._in_job:  # the trainer's output goes to the Job's own log too (its tail shows in the Run view)
                echoed = self._echo_log(log_path, echoed)
            for event in reader.read_new():
                done_event, error_event = self._apply_event(event, done_event, error_event)
                if event.get("event") == "resumed" and isinstance(event.get("step"), int):
                    resumed = max(0, event["step"])
            self.status.update(log_tail=self._redacted(tail_lines(log_path, LOG_TAIL_LINES)))
            if code is not None:
                break
            now = time.monotonic()
            if now - started > task.deadline_s:
                self._kill_trainer()
                return TrainOutcome(
                    ok=False, error=f"deadline of {task.deadline_s:.0f} s exceeded; the trainer was stopped"
                )
            if self._stop.is_set():
                self._kill_trainer()
                return TrainOutcome(ok=False, stopped=True, error="the app is shutting down")
            if now - last_check >= self.settings.poll_interval_s:
                last_check = now
                if self._cancelled(task.id):
                    self._kill_trainer()
                    return TrainOutcome(ok=False, stopped=True, error="cancelled")
                self._refresh_settling_hardware()
            if now - last_beat >= self.heartbeat_s:
                last_beat = now
                try:
                    self.queue.heartbeat(task.id, self.worker_id, self.settings.lease_s, self._progress_summary())
                except InvalidTransition:
                    self._kill_trainer()
                    return TrainOutcome(ok=False, stopped=True, error="the task was cancelled or taken over")
                except QueueError:
                    log.exception("heartbeat failed for %s (will retry)", task.id)
            time.sleep(tick)
        outcome = self._outcome(code, done_event, error_event, log_path)
        outcome.resumed_step = resumed
        return outcome

    def _echo_log(self, log_path: Path, offset: int) -> int:
        """Copy what the trainer wrote to ``log_path`` since ``offset`` to stdout, token masked; the new offset."""
        try:
            with open(log_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            return offset
        complete = chunk[: chunk.rfind(b"\n") + 1]
        if complete:
            lines = complete.decode("utf-8", errors="replace").splitlines()
            print("\n".join(self._redacted(lines)), flush=True)
        return offset + len(complete)

    def _apply_event(
        self, event: dict[str, Any], done: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        kind = event.get("event")
        if kind == "step":
            self.status.record_step(event)
            self.status.update(phase="training")
        elif kind == "phase":
            self.status.update(phase=str(event.get("phase") or event.get("name") or "working"))
        elif kind == "sample":
            paths = event.get("paths") or event.get("images") or ([event["path"]] if event.get("path") else [])
            self.status.add_samples([str(p) for p in paths])
        elif kind == "checkpoint":
            self.status.update(message=f"Checkpoint saved at step {event.get('step', '?')}")
        elif kind == "memory_plan":
            self.status.update(message=memory_plan_message(event))
        elif kind == "resumed":
            log.info("the trainer resumed from the checkpoint of step %s", event.get("step", "?"))
            self.status.update(message=f"Resumed from step {event.get('step', '?')}")
        elif kind == "done":
            done = event
        elif kind == "error":
            error = event
        return done, error

    def _outcome(
        self, code: int, done: dict[str, Any] | None, error: dict[str, Any] | None, log_path: Path
    ) -> TrainOutcome:
        if code == 0 and done is not None:
            report = done.get("run")
            return TrainOutcome(ok=True, result_url=done.get("repo_url") or done.get("output_dir"),
                                report=report if isinstance(report, dict) else None)  # fmt: skip
        lines = tail_lines(log_path, ERROR_TAIL_LINES)
        head = EXIT_MESSAGES.get(code, f"the trainer exited with code {code}")
        if code == 0:
            head = "the trainer exited without reporting a result"
        if error is not None:
            head += f" ({error.get('kind', 'error')}: {error.get('message', '')})"
        if code < 0:
            head = f"the trainer was killed by signal {-code} (for example by the out-of-memory killer)"
        # Bad input and out-of-memory fail the same way every time; anything else (a kill, a crash, a failed
        # upload whose weights are checkpointed) gets another attempt, which resumes from the last checkpoint.
        retryable = code not in (2, 3)
        error = "\n".join(self._redacted([head, *lines]))
        return TrainOutcome(ok=False, error=error, retryable=retryable)

    def _progress_summary(self) -> dict[str, Any]:
        s = self.status.snapshot()
        return {
            "phase": s.phase,
            "step": s.step,
            "total": s.total,
            "loss": s.loss,
            "steps_per_s": s.steps_per_s,
            "eta_s": s.eta_s,
            "at": time.time(),
        }

    def _cancelled(self, task_id: str) -> bool:
        """Re-read the queue (one request; it also refreshes the UI's task list): is the task no longer ours?"""
        try:
            tasks, self._billing = vetted_with_billing(self.queue, self.settings)
        except QueueError:
            return False
        self.status.update(tasks=tasks, billing=self._billing)
        task = next((t for t in tasks if t.id == task_id), None)
        if task is None:
            return True
        return task.status is not TaskStatus.RUNNING or task.lease is None or task.lease.holder != self.worker_id

    def _why_stopped(self, task_id: str) -> tuple[str, str]:
        """The phase and message for a run stopped because its task is no longer ours (from the last queue read)."""
        task = next((t for t in self.status.snapshot().tasks if t.id == task_id), None)
        if task is None:
            return "cancelled", f"Task {task_id} was deleted; its trainer was stopped."
        if task.status is TaskStatus.CANCELLED:
            return "cancelled", f"Task {task_id} was cancelled; its trainer was stopped."
        return "stopped", f"Task {task_id} was taken over by another worker; this one stopped training it."

    def _read_hardware(self) -> HardwareState:
        """Read the hardware state (one Hub request on a Space), remember when, and show it in the status."""
        self._hw_state = self.hardware.state()
        self._hw_read_at = time.time()
        self.status.update(hardware=self._hw_state)
        return self._hw_state

    def _stage_settling(self) -> bool:
        """Whether the last read found the Space between stages (it moves on by itself within seconds)."""
        return self._hw_state is not None and self._hw_state.stage in SETTLING_STAGES

    def _refresh_settling_hardware(self) -> None:
        """While training, re-read the Space's runtime only while its stage settles (training starts during
        APP_STARTING), so the header does not keep showing a stage the Space has left; then no more requests."""
        if self.settings.local or not self._stage_settling():
            return
        try:
            self._read_hardware()
        except Exception as exc:  # noqa: BLE001 - a status line must never stop a training run
            log.warning("could not re-read the Space runtime while training: %s", exc)

    def _kill_trainer(self) -> None:
        """Stop the trainer's whole process group: SIGTERM, then SIGKILL after the grace period."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(self.kill_grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def _release_if_paid(self) -> None:
        """Cost guard after an unexpected error: never stay on a GPU with a broken loop."""
        if self.settings.local:
            return
        hw = self._hw_state
        if hw is not None and is_gpu(hw.current) and self._proc is None:
            self._close_period()
            try:
                self.hardware.release()
            except Exception:  # noqa: BLE001
                log.exception("releasing the hardware failed")
