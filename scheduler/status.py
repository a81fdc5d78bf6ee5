"""What the worker is doing, for the UI: ``StatusData`` and its thread-safe holder ``WorkerStatus``.

The worker (and the Jobs runner) write it; UI handlers read the published view (``WorkerStatus.view``: one copy per
change, shared by every reader) or a deep copy of their own (``WorkerStatus.snapshot``), so the page never talks to
the Hub to show progress.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from contract.events import Scores, Step
from scheduler.billing import GpuPeriod
from scheduler.hardware.base import HardwareState
from scheduler.task import Task, TaskStatus

LOSS_HISTORY = 2000
SAMPLES_KEPT = 8
#: phases that say how the last run ended: an idle worker keeps showing them until the next task starts
ENDED_PHASES = frozenset({"done", "failed", "cancelled", "stopped"})
#: stages of a switch the Hub still calls under way while the old container serves
SWITCHING_STAGES = frozenset({"RUNNING_BUILDING", "RUNNING_APP_STARTING"})


def runs_on(accelerator: str, flavor: str | None) -> bool:
    """Whether a container whose ``ACCELERATOR`` is ``accelerator`` runs on ``flavor`` (any CPU flavor: "none")."""
    if not flavor:
        return False
    return accelerator in ("", "none") if flavor.startswith("cpu") else accelerator == flavor


def as_served(hw: HardwareState | None) -> HardwareState | None:
    """The hardware state as a page this process answers shows it. The app answering the page IS running, so a
    stage read while this container started is stale: APP_STARTING on the flavor this container runs on is shown as
    RUNNING, and a switch the Hub calls under way (the old container serving) while this container already runs on
    the requested flavor (and not on the old one) is shown as done. Anything else is the Hub's word (e.g. the old
    container, still answering while the new one starts)."""
    if hw is None:
        return None
    flavor = hw.current or hw.requested
    if hw.stage == "APP_STARTING" and runs_on(hw.accelerator, flavor):
        return replace(hw, current=flavor, stage="RUNNING")
    moved = hw.requested and hw.requested != hw.current and runs_on(hw.accelerator, hw.requested)
    if hw.stage in SWITCHING_STAGES and moved and not runs_on(hw.accelerator, hw.current):
        return replace(hw, current=hw.requested, stage="RUNNING")
    return hw


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
    scores: Scores | None = None  # the latest scored checkpoint's (``contract.scores``)
    base_scores: Scores | None = None  # the base model's (step 0), the baseline they are shown next to
    samples: list[str] = field(default_factory=list)
    #: the run's photo captions (stem, caption, written by the captioning model) when it captions (``Captions``)
    captions: list[tuple[str, str, bool]] = field(default_factory=list)
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
    """Thread-safe holder of ``StatusData``: the worker writes, UI handlers read copies.

    Every change drops the published view; the next ``view()`` copies the data once and every reader until the next
    change shares that copy (a page refresh of many open tabs costs no copy each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = StatusData()
        self._view: StatusData | None = None  # the published copy (None: changed since)

    def _changed(self) -> None:
        """Under the lock: the data changed, the next ``view()`` publishes a new copy."""
        self._view = None

    def update(self, **changes: Any) -> None:
        """Set fields of the status atomically."""
        with self._lock:
            for key, value in changes.items():
                setattr(self._data, key, value)
            self._data.updated_at = time.time()
            self._changed()

    def hardware_requested(self, flavor: str, answer: HardwareState | None = None) -> None:
        """The app itself asked the Hub for ``flavor``: the header says so at once, not after the next runtime read.
        ``answer``: the state the Hub answered the request with (its new stage); without one that names ``flavor``,
        the last state with ``flavor`` as the requested hardware."""
        with self._lock:
            d = self._data
            if answer is not None and answer.requested == flavor:
                d.hardware = answer
            elif d.hardware is not None:
                d.hardware = replace(d.hardware, requested=flavor)
            d.updated_at = time.time()
            self._changed()

    def record_step(self, event: Step) -> None:
        """Apply one ``step`` event of the trainer."""
        with self._lock:
            d = self._data
            d.step = event.step
            d.total = event.total or d.total
            d.steps_per_s = event.steps_per_s if event.steps_per_s is not None else d.steps_per_s
            d.eta_s = event.eta_s if event.eta_s is not None else d.eta_s
            if event.loss is not None:
                d.loss = float(event.loss)
                d.loss_history.append((d.step, d.loss))
                del d.loss_history[:-LOSS_HISTORY]
            d.updated_at = time.time()
            self._changed()

    def record_scores(self, event: Scores) -> None:
        """Apply one ``scores`` event of the trainer: step 0 is the base model's, any other the latest checkpoint's."""
        with self._lock:
            if event.step == 0:
                self._data.base_scores = event
            else:
                self._data.scores = event
            self._data.updated_at = time.time()
            self._changed()

    def add_samples(self, paths: list[str]) -> None:
        """Remember the newest sample images (kept: the last few)."""
        with self._lock:
            self._data.samples = (self._data.samples + paths)[-SAMPLES_KEPT:]
            self._changed()

    def start_task(self, task: Task) -> None:
        """Reset every per-task field for a new training run: nothing of the previous task (its error, speed,
        ETA, loss, samples or log) stays on the run view."""
        with self._lock:
            d = self._data
            d.task_id, d.phase, d.message = task.id, "preparing", f"Training task {task.id}"
            d.step, d.total = 0, int(task.params.get("steps", 0) or 0)
            d.loss = d.steps_per_s = d.eta_s = None
            d.scores = d.base_scores = None
            d.loss_history, d.samples, d.log_tail, d.captions = [], [], [], []
            d.last_error = None
            d.updated_at = time.time()
            self._changed()

    def end_task(self, phase: str, message: str, last_error: str | None = None) -> None:
        """Record how the current run ended (``done``, ``failed``, ``cancelled``...): no ETA is left behind, and
        ``last_error`` is the error of this run only."""
        with self._lock:
            d = self._data
            d.phase, d.message, d.last_error, d.eta_s = phase, message, last_error, None
            d.updated_at = time.time()
            self._changed()

    def progress(self) -> dict[str, Any]:
        """The run's progress as a heartbeat stores it on the task (phase, step, loss, speed, ETA, when, and the
        latest and the base model's scores: what a Job's panel shows)."""
        with self._lock:
            d = self._data
            scores = {k: v.model_dump(mode="json", exclude={"event", "time"})
                      for k, v in (("scores", d.scores), ("base_scores", d.base_scores)) if v is not None}  # fmt: skip
            return {"phase": d.phase, "step": d.step, "total": d.total, "loss": d.loss, "steps_per_s": d.steps_per_s,
                    "eta_s": d.eta_s, "at": time.time(), **scores}  # fmt: skip

    def why_stopped(self, task_id: str) -> tuple[str, str]:
        """The phase and message for a run stopped because its task is no longer this worker's (from the last
        queue read)."""
        with self._lock:
            task = next((t for t in self._data.tasks if t.id == task_id), None)
            status = None if task is None else task.status
        if status is None:
            return "cancelled", f"Task {task_id} was deleted; its trainer was stopped."
        if status is TaskStatus.CANCELLED:
            return "cancelled", f"Task {task_id} was cancelled; its trainer was stopped."
        return "stopped", f"Task {task_id} was taken over by another worker; this one stopped training it."

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
            self._changed()

    def snapshot(self) -> StatusData:
        """A deep copy of the caller's own, safe to read and change without the lock."""
        with self._lock:
            return copy.deepcopy(self._data)

    def view(self) -> StatusData:
        """The status as last published: a copy made once per change and shared by every reader until the next
        one. Read it, never change it (``snapshot`` gives a copy of one's own)."""
        with self._lock:
            if self._view is None:
                self._view = copy.deepcopy(self._data)
            return self._view
