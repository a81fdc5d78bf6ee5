"""The trainer as a subprocess: ``python -m training`` in its own process group, under a watchdog.

``trainer_command`` builds the command line (``accelerate launch`` on multi-GPU flavors, ``--script`` for a
customized training script), ``start_trainer`` launches it, ``supervise`` watches it: it applies the trainer's
progress events (a JSON-lines file read by ``EventReader``) to the ``WorkerStatus``, renews the lease, enforces the
deadline, kills the whole process group on cancel, shutdown or a lost lease, and turns how it ended into a
``TrainOutcome``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.events import (
    Captions,
    Checkpoint,
    Done,
    Error,
    Event,
    ExitCode,
    MemoryPlan,
    Phase,
    Resumed,
    Sample,
    Scores,
    Step,
    parse_event,
)
from contract.settings import child_environment, hub_offline
from scheduler.queue.base import InvalidTransition, QueueError
from scheduler.queue.document import CHECKPOINTS_DIR
from scheduler.spending import STOP_GRACE_S
from scheduler.status import WorkerStatus
from scheduler.task import Task

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where ``python -m training`` finds the package
#: how a task whose model was trained but whose upload the Hub refused for good (401/403/404) begins its error; it
#: is not trained again, and its final checkpoint stays in the queue: Retry resumes there and only uploads
UPLOAD_REFUSED = "trained, upload refused"
UPLOAD_RETRY_HINT = ("Once that is fixed, press Retry: it resumes from the final checkpoint (a LoRA's is kept in the "
                     "queue) and only uploads, without training again.")  # fmt: skip
EXIT_MESSAGES = {
    ExitCode.BAD_INPUT: "the trainer refused the task's input",
    ExitCode.OUT_OF_MEMORY: "the GPU ran out of memory (try a lower resolution or rank, or a bigger GPU)",
    ExitCode.UPLOAD_FAILED: "the model was trained but the upload failed",
    ExitCode.UPLOAD_REFUSED: UPLOAD_REFUSED,
}
LOG_TAIL_LINES = 40
#: how often the supervisor reads the trainer's events (seconds). 0.25 s halved the owner's lag behind a step (crowd
#: records of 2026-12-07) but two browser tests turned flaky under the suite's load with it; 1 s keeps the owner at
#: most one 2-s refresh behind (never more than one tick missed in the crowd)
EVENTS_READ_S = 1.0
ERROR_TAIL_LINES = 15

#: log lines as the UI may show them (the token masked)
Redact = Callable[[list[str]], list[str]]


@dataclass
class TrainOutcome:
    """How one training run ended."""

    ok: bool
    result_url: str | None = None
    error: str | None = None
    stopped: bool = False  # cancelled or the lease was lost: leave the task alone
    capped: bool = False  # a spending cap stopped it (checkpoint saved): hold the task, the attempt given back
    retryable: bool = False  # another attempt may succeed (killed, crashed, upload failed): requeue if attempts left
    report: dict[str, Any] | None = None  # the "run" of the trainer's done event (speed, step times, settings)
    resumed_step: int = 0  # the step this attempt resumed from (its "resumed" event)


@dataclass(frozen=True)
class Watch:
    """What the watchdog checks besides the trainer itself; the worker supplies the callbacks."""

    task_id: str
    deadline_s: float  # the trainer is killed once it ran this long
    poll_interval_s: float  # how often ``cancelled`` and ``each_poll`` run
    heartbeat_s: float  # how often ``heartbeat`` runs
    kill_grace_s: float  # SIGTERM, then SIGKILL after this long
    stopping: Callable[[], bool]  # the app is shutting down
    cancelled: Callable[[], bool]  # (one queue read) the task is no longer this worker's
    # renew the lease, storing the progress on the task: InvalidTransition when the task is no longer ours,
    # QueueError to retry at the next beat
    heartbeat: Callable[[dict[str, Any]], None]
    each_poll: Callable[[], None] = lambda: None  # e.g. re-read a Space runtime whose stage still settles
    echo: bool = False  # copy the trainer's log to stdout (inside a Job, whose own log then shows it)
    # when a spending cap stops the run (unix seconds; None: not before the deadline), asked every poll interval
    stop_at: Callable[[], float | None] = lambda: None


def memory_plan_message(event: MemoryPlan) -> str:
    """The run view's line for the trainer's ``memory_plan`` event, e.g. "Memory plan: NF4 base, gradient
    checkpointing, about 9.9 GiB of GPU memory"; a run on the CPU speaks of the CPU and its RAM."""
    kind, cpu = event.quantized_base or "none", event.device == "cpu"
    parts = ["training on the CPU" if cpu else "bf16/fp16 base" if kind == "none" else f"{kind.upper()} base"]
    parts += [name for on, name in ((event.gradient_checkpointing, "gradient checkpointing"),
                                    (event.use_8bit_adam, "8-bit Adam")) if on]  # fmt: skip
    if event.estimate_gib is not None:
        gib = "under 0.1" if event.estimate_gib < 0.05 else f"about {event.estimate_gib:.1f}"
        parts.append(f"{gib} GiB of {'RAM' if cpu else 'GPU memory'}")
    if event.scoring_gib:  # at sampling time, when the training step's activations are freed
        parts.append(f"scoring models {event.scoring_gib:.1f} GiB while sampling")
    return "Memory plan: " + ", ".join(parts)


class EventReader:
    """Reads the trainer's JSON-lines progress file incrementally (tolerates partial last lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[Event]:
        """Events appended since the last call (a line that is not a well-formed event is skipped)."""
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
                event = parse_event(json.loads(line))
            except ValueError:
                continue
            if event is not None:
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


def task_spec(task: Task, images: Path, settings: Any) -> dict[str, Any]:
    """The trainer's TASK.json for ``task`` (see ``python -m training --help``). Local runs upload only
    with an ``HF_TOKEN`` and not in huggingface_hub's offline mode (the model then stays in its output folder)."""
    output = None
    if task.output_repo and (not settings.local or (settings.hf_token and not hub_offline())):
        output = {"repo_id": task.output_repo, "private": bool(task.private)}
    checkpoint = None
    if not settings.local and settings.queue_repo:
        checkpoint = {"repo_id": settings.queue_repo, "repo_type": "dataset", "path": f"{CHECKPOINTS_DIR}/{task.id}"}
    base_model = task.base_model
    if base_model.startswith(".") and Path(base_model).exists():
        base_model = str(Path(base_model).resolve())  # the trainer runs in another folder
    return {
        "task_id": task.id,
        "recipe": task.recipe,
        "base_model": base_model,
        "instance_prompt": task.instance_prompt,
        "class_prompt": task.class_prompt,
        "images": task.dataset.to_dict() if task.dataset is not None else str(images),  # a dataset: read by the trainer
        "params": dict(task.params),
        "output": output,
        "checkpoint": checkpoint,
    }


def trainer_command(python: str, spec_path: Path, workdir: Path, events: Path, *, recipes_modules: Sequence[str] = (),
                    family_modules: Sequence[str] = (), script: Path | None = None, gpus: int = 0) -> list[str]:  # fmt: skip
    """``python -m training ...`` (``--recipes-module`` / ``--families-module`` load extra recipes and model
    families, ``--script`` runs a customized copy of ``training/train.py``), under ``accelerate launch`` with one
    process per GPU when ``gpus`` is more than one."""
    args = ["-m", "training", "--task", str(spec_path), "--workdir", str(workdir), "--progress", str(events)]
    for module in recipes_modules:
        args += ["--recipes-module", module]
    for module in family_modules:
        args += ["--families-module", module]
    if script is not None:
        args += ["--script", str(script)]
    if gpus > 1:
        return [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus), *args]
    return [python, *args]


def start_trainer(cmd: list[str], log_path: Path) -> subprocess.Popen:
    """Start ``cmd`` in the project's folder, in a new session (its own process group), output to ``log_path``."""
    with open(log_path, "ab") as logf:
        return subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=child_environment(),  # HF_TOKEN yes; the Space's OAuth client secret never
        )


def kill_process_group(proc: subprocess.Popen | None, grace_s: float) -> None:
    """Stop the trainer's whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def supervise(proc: subprocess.Popen, reader: EventReader, log_path: Path, status: WorkerStatus, watch: Watch,
              redact: Redact) -> TrainOutcome:  # fmt: skip
    """Watch the running trainer until it exits (or is killed) and return how it ended."""
    started = time.monotonic()
    last_beat = last_check = started
    done_event: Done | None = None
    error_event: Error | None = None
    resumed = 0
    tick = min(EVENTS_READ_S, watch.poll_interval_s)
    echoed, shown_tail = 0, None

    def kill(**outcome: Any) -> TrainOutcome:
        kill_process_group(proc, watch.kill_grace_s)
        return TrainOutcome(ok=False, **outcome)

    while True:
        code = proc.poll()
        if watch.echo:
            echoed = echo_log(log_path, echoed, redact)
        for event in reader.read_new():
            done_event, error_event = apply_event(status, event, done_event, error_event)
            if isinstance(event, Resumed):
                resumed = max(0, event.step)
        tail = redact(tail_lines(log_path, LOG_TAIL_LINES))
        if tail != shown_tail:  # unchanged: the published status (shared by every tab) stays as it is
            status.update(log_tail=tail)
            shown_tail = tail
        if code is not None:
            break
        now = time.monotonic()
        if now - started > watch.deadline_s:
            return kill(error=f"deadline of {watch.deadline_s:.0f} s exceeded; the trainer was stopped")
        if watch.stopping():
            return kill(stopped=True, error="the app is shutting down")
        if now - last_check >= watch.poll_interval_s:
            last_check = now
            if watch.cancelled():
                return kill(stopped=True, error="cancelled")
            stop = watch.stop_at()
            if stop is not None and time.time() >= stop:
                return stop_for_cap(proc, reader, log_path, status, watch, redact, done_event, error_event)
            watch.each_poll()
        if now - last_beat >= watch.heartbeat_s:
            last_beat = now
            try:
                watch.heartbeat(status.progress())
            except InvalidTransition:
                return kill(stopped=True, error="the task was cancelled or taken over")
            except QueueError:
                log.exception("heartbeat failed for %s (will retry)", watch.task_id)
        time.sleep(tick)
    outcome = trainer_outcome(code, done_event, error_event, log_path, redact)
    outcome.resumed_step = resumed
    return outcome


def stop_for_cap(proc: subprocess.Popen, reader: EventReader, log_path: Path, status: WorkerStatus, watch: Watch,
                 redact: Redact, done: Done | None, error: Error | None) -> TrainOutcome:  # fmt: skip
    """A spending cap's stop: SIGTERM (the trainer saves a checkpoint at the end of its step and exits), SIGKILL
    after ``STOP_GRACE_S``. A trainer that finished meanwhile keeps its result."""
    kill_process_group(proc, max(watch.kill_grace_s, STOP_GRACE_S))
    step = None
    for event in reader.read_new():
        done, error = apply_event(status, event, done, error)
        step = event.step if isinstance(event, Checkpoint) else step
    if proc.returncode == ExitCode.OK and done is not None:
        return trainer_outcome(ExitCode.OK, done, error, log_path, redact)
    saved = f"; its checkpoint of step {step} was saved" if step is not None else ""
    return TrainOutcome(ok=False, capped=True, error=f"stopped by a spending cap{saved}")


def echo_log(log_path: Path, offset: int, redact: Redact) -> int:
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
        print("\n".join(redact(lines)), flush=True)
    return offset + len(complete)


def apply_event(status: WorkerStatus, event: Event, done: Done | None,
                error: Error | None) -> tuple[Done | None, Error | None]:  # fmt: skip
    """Show one trainer event in ``status``; return the (done, error) events seen so far."""
    if isinstance(event, Step):
        status.record_step(event)
        status.update(phase="training")
    elif isinstance(event, Phase):
        status.update(phase=event.phase or "working")
    elif isinstance(event, Sample):
        status.add_samples(event.paths)
    elif isinstance(event, Captions):
        written = set(event.written)
        status.update(captions=[(stem, text, stem in written) for stem, text in sorted(event.captions.items())])
    elif isinstance(event, Scores):
        status.record_scores(event)
    elif isinstance(event, MemoryPlan):
        status.update(message=memory_plan_message(event))
    elif isinstance(event, Resumed):
        log.info("the trainer resumed from the checkpoint of step %s", event.step)
        status.update(message=f"Resumed from step {event.step}")
    elif isinstance(event, Done):
        done = event
    elif isinstance(event, Error):
        error = event
    elif isinstance(event, Checkpoint):
        status.update(message=f"Checkpoint saved at step {event.step}")
    return done, error


def trainer_outcome(code: int, done: Done | None, error: Error | None, log_path: Path,
                    redact: Redact) -> TrainOutcome:  # fmt: skip
    """How a trainer that exited with ``code`` ended: its result, or an error with the (redacted) log's tail."""
    if code == ExitCode.OK and done is not None:
        return TrainOutcome(ok=True, result_url=done.repo_url or done.output_dir, report=done.run or None)
    lines = tail_lines(log_path, ERROR_TAIL_LINES)
    head = EXIT_MESSAGES.get(code, f"the trainer exited with code {code}")
    if code == 0:
        head = "the trainer exited without reporting a result"
    if error is not None:
        head += f" ({error.kind}: {error.message})"
    if code < 0:
        head = f"the trainer was killed by signal {-code} (for example by the out-of-memory killer)"
    if code == ExitCode.UPLOAD_REFUSED:
        head = f"{UPLOAD_REFUSED}: {error.message if error else 'the Hub refused it'}. {UPLOAD_RETRY_HINT}"
    # Bad input, out-of-memory and a refused upload fail the same way every time; anything else (a kill, a crash, an
    # upload that kept failing, whose weights are checkpointed) gets another attempt, which resumes from the last
    # checkpoint.
    retryable = code not in (ExitCode.BAD_INPUT, ExitCode.OUT_OF_MEMORY, ExitCode.UPLOAD_REFUSED)
    return TrainOutcome(ok=False, error="\n".join(redact([head, *lines])), retryable=retryable)
