"""The background worker: runs ``decide()`` in a loop and carries out its actions.

One worker per app process. Each loop it builds a ``Snapshot`` (the queue and the hardware state), asks
``decide()`` what to do and does it: request hardware, claim and train a task, requeue expired leases, fail a
task, or release paid hardware. Training runs ``python -m training`` under a watchdog that renews the lease,
enforces the deadline and stops on cancel (``scheduler.trainer_process``). The UI never talks to the Hub to show
progress: it reads ``WorkerStatus`` (``scheduler.status``).

Costs and speeds: a granted GPU request opens a GPU period in the queue, each claim on a GPU joins it in the claim's
commit and the release request is preceded by the commit that closes it (``scheduler.billing``); each finished task's
completion carries its run record (``scheduler.run_records``: the trainer's steady speed, start-up, wrap-up).

Hub request budget: every loop costs one queue read (plus a runtime read when the hardware matters) and the
worker then sleeps ``poll_interval_s`` per request made, so idle polling stays at or below one request per
``poll_interval_s``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from contract.flavors import FLAVORS, is_gpu
from scheduler.billing import RECOVERED, GpuPeriod, open_period
from scheduler.hardware.base import HardwareController, HardwareRefused, HardwareState
from scheduler.hardware.probe import cuda_visible
from scheduler.lifecycle import Action, ActionKind, Snapshot, decide
from scheduler.outcomes import record_outcome, run_stop_at
from scheduler.queue.base import QueueError, TaskQueue
from scheduler.redact import redact
from scheduler.run_records import ClaimInfo, claim_info, process_started_at
from scheduler.spending import Budget, cap_held, caps_for, startable
from scheduler.status import ENDED_PHASES, WorkerStatus
from scheduler.stored import is_safe_task_id, vetted_with_billing
from scheduler.task import LOCAL_CPU, LOCAL_GPU, Task, TaskStatus
from scheduler.trainer_process import (
    EventReader,
    TrainOutcome,
    Watch,
    kill_process_group,
    start_trainer,
    supervise,
    task_spec,
    trainer_command,
)
from scheduler.visitor_queue import visitor_prices

log = logging.getLogger(__name__)

REFUSAL_BACKOFF_S = 15 * 60
#: Space stages that change on their own within seconds (huggingface_hub's intermediate stages)
SETTLING_STAGES = frozenset({"BUILDING", "RUNNING_BUILDING", "APP_STARTING", "RUNNING_APP_STARTING"})


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
        self._tasks: list[Task] = []  # the queue's tasks, as last read while training (the cap's stop)
        self._in_job = False  # ``run_one`` inside a Job: the Space records the Job's period, claims bill nothing
        self._jobs = None
        self._visitor_prices_read = False
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
        kill_process_group(self._proc, self.kill_grace_s)
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
        snap = Snapshot(tasks=tuple(tasks), now=now, worker_id=self.worker_id, local=bool(self.settings.local),
                        current_hardware=hw.current, requested_hardware=hw.requested, accelerator=hw.accelerator,
                        gpu_visible=hw.gpu_visible, idle_hardware=self.settings.idle_hardware, training_task_id=None,
                        allow_cpu_training=bool(self.settings.allow_cpu_training),
                        budget=None if self.settings.local else Budget(caps_for(self.settings), tuple(self._billing)))  # fmt: skip
        return snap, requests

    def step(self) -> tuple[Action, int]:
        """One loop: snapshot, decide, execute. Returns the action and the Hub requests made."""
        if self._jobs is not None:
            return self._jobs_step()
        snap, requests = self.snapshot()
        if getattr(self.settings, "visitor_pays", False) and not self._visitor_prices_read:  # their form's estimate
            self._visitor_prices_read, requests = True, requests + 1
            self.status.update(**visitor_prices(self.settings))
        action = decide(snap)
        described = f"{action.kind.value}: {action.reason}".strip(": ")
        if action.kind is not ActionKind.WAIT or described != self._last_logged:
            log.info("action %s %s %s %s", action.kind.value, action.task_id or "", action.hardware or "", action.reason)
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
        complete it, as the GPU container of the self-upgrade backend does. Returns 0 when the task ended DONE, held
        by a spending cap, or there was nothing to do (cancelled, finished, held by another holder), 1 when this
        attempt failed."""
        self._in_job = True
        tasks, self._billing = vetted_with_billing(self.queue, self.settings)
        self._tasks = tasks
        task = next((t for t in tasks if t.id == task_id), None)
        if task is None or not startable(task):  # held by a cap: the Space started this Job because it fits now
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
        return 0 if final.status in (TaskStatus.DONE, TaskStatus.CANCELLED) or cap_held(final) else 1

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
        elif kind is ActionKind.HOLD_TASK:
            self.queue.hold_for_cap(action.task_id or "", None, action.reason)
            self.status.update(phase="waiting", message=f"Task {action.task_id} waits: {action.reason}")
        elif kind is ActionKind.STOP_TRAINING:
            kill_process_group(self._proc, self.kill_grace_s)
        elif kind is ActionKind.RELEASE_HARDWARE:
            self.status.update(phase="releasing", message="Nothing left to train: going back to idle hardware")
            self._close_period()
            done = self.hardware.release()
            if done.startswith("requested"):  # the header says "moving to CPU basic" at once
                self.status.hardware_requested(self.settings.idle_hardware)
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
            answer = self.hardware.request(flavor, sleep_time_s=int(deadline_s + 1800))
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
        self.status.hardware_requested(flavor, answer)  # the header says "moving to ..." now, not after a poll
        if is_gpu(flavor) and not self.settings.local:
            try:  # the GPU is billed from now: record the period (idempotent when it is already recorded)
                self.queue.open_period(flavor, requested_at, action.task_id)
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
        first_paid = paid and self._claims == 0  # this container's first task on a GPU
        self._claims += 1
        claim = claim_info(self._run_flavor(task), task.started_at or time.time(), self._started_at,
                           first_paid=first_paid, period=period, bill_to=bill_to)  # fmt: skip
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
            finished = record_outcome(self.queue, self.status, self.worker_id, task, outcome, claim, now=time.time())
        finally:
            self._clean_up_run(task, finished)

    # ----------------------------------------------------------------- training
    def trainer_command(self, spec_path: Path, workdir: Path, events: Path) -> list[str]:
        """``python -m training ...`` (``scheduler.trainer_process.trainer_command``): one process per GPU when the
        current flavor has several and they are visible, ``--script`` when ``TRAINING_SCRIPT`` is set,
        ``--families-module`` for each of ``TRAINING_FAMILY_MODULES``."""
        hw = self._hw_state
        gpus = FLAVORS[hw.current].gpus if hw and hw.current in FLAVORS and hw.gpu_visible else 0
        script = getattr(self.settings, "training_script_path", None)
        families = tuple(getattr(self.settings, "family_modules", ()))
        return trainer_command(self.python, spec_path, workdir, events, recipes_modules=self.recipes_modules,
                               family_modules=families, script=script, gpus=gpus)  # fmt: skip

    def run_dir(self, task_id: str) -> Path:
        """This machine's folder for a task's runs: a copy of its photos (``images/``) and the trainer's ``work/``.

        ValueError for an id that is not a safe task id or a folder that resolves outside ``data_dir/runs``."""
        runs = (Path(self.settings.data_dir) / "runs").resolve()
        folder = (runs / task_id).resolve() if is_safe_task_id(task_id) else None
        if folder is None or folder.parent != runs:
            raise ValueError(f"Refusing a run folder for task id {task_id!r}: not a safe id inside {runs}.")
        return folder

    def remove_photos(self, task_id: str) -> None:
        """Delete this machine's copy of a task's photos, and what the trainer fetched (a dataset's images and its
        cache: ``work/inputs``); the run's outputs stay."""
        shutil.rmtree(self.run_dir(task_id) / "images", ignore_errors=True)
        shutil.rmtree(self.run_dir(task_id) / "work" / "inputs", ignore_errors=True)

    def train(self, task: Task) -> TrainOutcome:
        """Run the trainer for a claimed task under the watchdog and return how it ended."""
        workdir = self.run_dir(task.id)
        workdir.mkdir(parents=True, exist_ok=True)
        self.status.update(phase="downloading", message="Fetching the training images")
        log.info("task %s attempt %d: fetching its photos from the queue", task.id, task.attempts)  # a hang here shows
        # a dataset's images are read by the trainer (``training.dataset_images``); the queue holds none of them
        images = workdir / "images"
        if task.dataset is None:
            images = Path(self.queue.fetch_images(task, images)).resolve()
        spec_path = workdir / "task.json"
        spec_path.write_text(json.dumps(task_spec(task, images, self.settings), indent=2))
        events_path = workdir / f"events-{task.attempts}.jsonl"
        log_path = workdir / f"train-{task.attempts}.log"
        cmd = self.trainer_command(spec_path, workdir / "work", events_path)
        log.info("starting trainer for %s: %s", task.id, " ".join(cmd))
        self.status.update(phase="starting trainer", message=f"Training task {task.id}")
        self._proc = start_trainer(cmd, log_path)
        return supervise(self._proc, EventReader(events_path), log_path, self.status, self._watch(task), self._redacted)

    def _watch(self, task: Task) -> Watch:
        """What the watchdog checks for ``task``: its deadline, shutdown, cancel (a queue read every poll
        interval), and the lease renewed with the run's progress every ``heartbeat_s``."""
        heartbeat = partial(self.queue.heartbeat, task.id, self.worker_id, self.settings.lease_s)
        return Watch(task_id=task.id, deadline_s=task.deadline_s, poll_interval_s=self.settings.poll_interval_s,
                     heartbeat_s=self.heartbeat_s, kill_grace_s=self.kill_grace_s, stopping=self._stop.is_set,
                     cancelled=lambda: self._cancelled(task.id), heartbeat=heartbeat,
                     each_poll=self._refresh_settling_hardware, echo=self._in_job,
                     stop_at=lambda: run_stop_at(self.settings, task.id, self._tasks, self._billing, time.time(),
                                                 in_job=self._in_job))  # fmt: skip

    def _cancelled(self, task_id: str) -> bool:
        """Re-read the queue (one request; it also refreshes the UI's task list): is the task no longer ours?"""
        try:
            tasks, self._billing = vetted_with_billing(self.queue, self.settings)
        except QueueError:
            return False
        self.status.update(tasks=tasks, billing=self._billing)
        self._tasks = tasks
        task = next((t for t in tasks if t.id == task_id), None)
        if task is None:
            return True
        return task.status is not TaskStatus.RUNNING or task.lease is None or task.lease.holder != self.worker_id

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
