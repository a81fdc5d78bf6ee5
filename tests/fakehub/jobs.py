"""Hugging Face Jobs: the registry, each Job's state machine, the local processes that play them, and the ledger.

Timeline of a Job created at ``t`` (``s`` = the host's ``scheduling_s``):

    [t, t+s)   SCHEDULING (not billed)
    t+s        RUNNING: ``command + arguments`` starts as a local process group, its output streamed to the Job's
               log (billed from here: ``startedAt``)
    then       COMPLETED (exit code 0) | ERROR (other exit code, crash fault, or ``timeoutSeconds`` after
               ``startedAt``: "Job timeout") | CANCELED (cancel_job, cancel fault) | DELETED (delete fault, or
               the emulator's end-of-test clean-up); ``finishedAt`` ends the billed period.

The registry lives in the emulator process: a Space that restarts finds its Jobs again with ``list_jobs``.
"""

from __future__ import annotations

import json
import os
import secrets as token_gen
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakehub.credit import CreditBook
from tests.fakehub.faults import JobFault, JobFaultBook
from tests.fakehub.runner import clean_env, kill_process_tree, stop_process_tree

TICK_S = 0.05
DEFAULT_TIMEOUT_S = 30 * 60  # the platform's default when run_job gets no timeout
TERMINAL_STAGES = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
JOB_STAGES = ("SCHEDULING", "RUNNING", *TERMINAL_STAGES)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MESSAGE = "Job timeout"
STARTED_BANNER = "===== Job started"  # the client drops log lines starting with this


@dataclass(frozen=True)
class JobFlavor:
    """One row of ``GET /api/jobs/hardware``; ``usd_per_hour`` is the list price (billed per minute)."""

    name: str
    pretty_name: str
    cpu: str
    ram: str
    usd_per_hour: float
    gpu: str | None = None
    gpus: int = 0
    vram_gb: int = 0  # total over the GPUs

    def to_json(self) -> dict:
        micro = round(self.usd_per_hour / 60 * 1_000_000)
        data: dict = {
            "name": self.name,
            "prettyName": self.pretty_name,
            "cpu": self.cpu,
            "ram": self.ram,
            "ephemeralStorage": "50 GB",
            "accelerator": None,
            "unitCostMicroUSD": micro,
            "unitCostUSD": micro / 1_000_000,
            "unitLabel": "minute",
        }
        if self.gpu:
            data["accelerator"] = {
                "type": "gpu",
                "model": self.gpu,
                "quantity": str(self.gpus),
                "vram": f"{self.vram_gb} GB",
                "manufacturer": "Nvidia",
            }
        return data


# The emulator's own table (prices: hub-docs pricing pages, 2026-08; cpu-basic at $0.01/h as in the client's
# example, 167 micro-USD a minute). CPU/RAM of the Jobs-only flavors are placeholders, not verified.
JOB_FLAVORS: dict[str, JobFlavor] = {
    f.name: f
    for f in (
        JobFlavor("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", 0.01),
        JobFlavor("cpu-upgrade", "CPU Upgrade", "8 vCPU", "32 GB", 0.03),
        JobFlavor("cpu-performance", "CPU Performance", "32 vCPU", "256 GB", 1.90),
        JobFlavor("cpu-xl", "CPU XL", "16 vCPU", "124 GB", 1.00),
        JobFlavor("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", 0.40, "T4", 1, 16),
        JobFlavor("t4-medium", "Nvidia T4 - medium", "8 vCPU", "30 GB", 0.60, "T4", 1, 16),
        JobFlavor("l4x1", "1x Nvidia L4", "8 vCPU", "30 GB", 0.80, "L4", 1, 24),
        JobFlavor("l4x4", "4x Nvidia L4", "48 vCPU", "186 GB", 3.80, "L4", 4, 96),
        JobFlavor("l40sx1", "1x Nvidia L40S", "8 vCPU", "62 GB", 1.80, "L40S", 1, 48),
        JobFlavor("l40sx4", "4x Nvidia L40S", "48 vCPU", "382 GB", 8.30, "L40S", 4, 192),
        JobFlavor("l40sx8", "8x Nvidia L40S", "192 vCPU", "1534 GB", 23.50, "L40S", 8, 384),
        JobFlavor("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", 1.00, "A10G", 1, 24),
        JobFlavor("a10g-large", "Nvidia A10G - large", "12 vCPU", "46 GB", 1.50, "A10G", 1, 24),
        JobFlavor("a10g-largex2", "2x Nvidia A10G - large", "24 vCPU", "92 GB", 3.00, "A10G", 2, 48),
        JobFlavor("a10g-largex4", "4x Nvidia A10G - large", "48 vCPU", "184 GB", 5.00, "A10G", 4, 96),
        JobFlavor("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", 2.50, "A100", 1, 80),
        JobFlavor("a100x4", "4x Nvidia A100", "48 vCPU", "568 GB", 10.00, "A100", 4, 320),
        JobFlavor("a100x8", "8x Nvidia A100", "96 vCPU", "1136 GB", 20.00, "A100", 8, 640),
        JobFlavor("h200", "1x Nvidia H200", "23 vCPU", "256 GB", 5.00, "H200", 1, 141),
        JobFlavor("h200x2", "2x Nvidia H200", "46 vCPU", "512 GB", 10.00, "H200", 2, 282),
        JobFlavor("h200x4", "4x Nvidia H200", "92 vCPU", "1024 GB", 20.00, "H200", 4, 564),
        JobFlavor("h200x8", "8x Nvidia H200", "184 vCPU", "2048 GB", 40.00, "H200", 8, 1128),
        JobFlavor("rtx-pro-6000", "1x Nvidia RTX PRO 6000", "16 vCPU", "128 GB", 2.75, "RTX PRO 6000", 1, 96),
        JobFlavor("rtx-pro-6000x2", "2x Nvidia RTX PRO 6000", "32 vCPU", "256 GB", 5.50, "RTX PRO 6000", 2, 192),
        JobFlavor("rtx-pro-6000x4", "4x Nvidia RTX PRO 6000", "64 vCPU", "512 GB", 11.00, "RTX PRO 6000", 4, 384),
        JobFlavor("rtx-pro-6000x8", "8x Nvidia RTX PRO 6000", "128 vCPU", "1024 GB", 22.00, "RTX PRO 6000", 8, 768),
    )
}


def iso(ts: float) -> str:
    """``ts`` the way the Hub writes dates, with microseconds (the client parses them)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1_000_000):06d}Z"


class JobLog:
    """A Job's output as stamped lines (strictly increasing timestamps), kept in memory and in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[str, str]] = []  # (timestamp, line without its newline)
        self.closed = False
        self._cond = threading.Condition()
        self._last = 0.0
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, line: str) -> None:
        with self._cond:
            now = max(time.time(), self._last + 1e-6)
            self._last = now
            self.events.append((iso(now), line))
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._file.close()
            self._cond.notify_all()

    def wait(self, index: int, timeout_s: float) -> tuple[list[tuple[str, str]], bool]:
        """Events from ``index`` on (waiting up to ``timeout_s`` for one), and whether the log is closed."""
        with self._cond:
            if len(self.events) <= index and not self.closed:
                self._cond.wait(timeout_s)
            return self.events[index:], self.closed

    def pump(self, pipe) -> None:
        """Copy the process's output into the log until the pipe closes (runs in its own thread)."""
        try:
            for raw in iter(pipe.readline, b""):
                self.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        finally:
            pipe.close()


@dataclass
class Job:
    """One Job: what was asked for, where it stands, and (while RUNNING) its process."""

    id: str
    namespace: str
    owner: dict
    initiator: dict
    docker_image: str | None
    space_id: str | None
    command: list[str]
    arguments: list[str]
    environment: dict[str, str]
    secrets: dict[str, str] = field(repr=False)
    flavor: str
    timeout_s: int
    labels: dict[str, str]
    volumes: list[dict]
    attempts: int | None
    created_at: float
    workdir: Path
    mount_files: dict[str, Path] = field(default_factory=dict, repr=False)  # path under mounts/ -> blob
    faults: list[JobFault] = field(default_factory=list)
    stage: str = "SCHEDULING"
    message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    log: JobLog | None = field(default=None, repr=False)
    pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def terminal(self) -> bool:
        return self.stage in TERMINAL_STAGES

    def fault(self, kind: str) -> JobFault | None:
        return next((f for f in self.faults if f.kind == kind), None)

    def to_json(self, now: float) -> dict:
        """The Job as ``GET /api/jobs/{ns}/{id}`` answers it (secret values never leave the emulator)."""
        end = self.finished_at or now
        data: dict = {
            "id": self.id,
            "createdAt": iso(self.created_at),
            "command": self.command,
            "arguments": self.arguments,
            "environment": self.environment,
            "secrets": {k: None for k in self.secrets},
            "flavor": self.flavor,
            "timeoutSeconds": self.timeout_s,
            "labels": self.labels,
            "status": {"stage": self.stage, "message": self.message},
            "durations": {
                "schedulingSecs": int((self.started_at or end) - self.created_at) if self.started_at else None,
                "runningSecs": int(end - self.started_at) if self.started_at else None,
                "totalSecs": int(end - self.created_at),
            },
            "owner": self.owner,
            "initiator": self.initiator,
        }
        if self.space_id:
            data["spaceId"] = self.space_id
        else:
            data["dockerImage"] = self.docker_image
        if self.started_at:
            data["startedAt"] = iso(self.started_at)
        if self.finished_at:
            data["finishedAt"] = iso(self.finished_at)
        if self.volumes:
            data["volumes"] = self.volumes
        if self.attempts is not None:
            data["retry"] = self.attempts - 1
        return data

    def period(self, now: float) -> dict | None:
        """The billed period (RUNNING only), the open one up to now; None if the Job never ran."""
        if self.started_at is None:
            return None
        ended = self.finished_at
        return {
            "job_id": self.id,
            "namespace": self.namespace,
            "flavor": self.flavor,
            "stage": self.stage,
            "labels": dict(self.labels),
            "initiator": self.initiator.get("name"),
            "started_at": self.started_at,
            "ended_at": ended,
            "seconds": (ended or now) - self.started_at,
        }


class JobHost:
    """All Jobs of the emulator, and the clock thread that moves them along.

    ``image_root``: the working directory of every Job (the "image": by default this checkout);
    ``images`` maps an image or a Space id to another directory. ``flavor_env[flavor]`` is added to the env of
    Jobs on that flavor (e.g. to fake a visible GPU).
    """

    def __init__(self, root: Path, endpoint: str) -> None:
        self.dir = Path(root) / "jobs"
        self.endpoint = endpoint
        self.reset_settings()
        self.faults = JobFaultBook()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._clock, name="fakehub-jobs", daemon=True)
        self._thread.start()

    def reset_settings(self) -> None:
        """Back to the defaults: 0.2 s of SCHEDULING, 2 s of grace on cancel, every image = this checkout, unlimited
        credit everywhere."""
        self.scheduling_s = 0.2
        self.stop_grace_s = 2.0
        self.image_root: Path = PROJECT_ROOT
        self.images: dict[str, Path] = {}
        self.flavor_env: dict[str, dict[str, str]] = {}
        self.credit = CreditBook()  # unlimited for every namespace until a test grants one an amount

    # ---------------------------------------------------------------- registry
    def add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
        return job

    def new_id(self) -> str:
        return f"{int(time.time()):08x}{token_gen.token_hex(8)}"

    def get(self, namespace: str, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job if job is not None and job.namespace == namespace else None

    def list(self, namespace: str, stages: list[str] = (), labels: dict[str, str] | None = None) -> list[Job]:
        """The namespace's Jobs, oldest first, with one of ``stages`` (any if empty) and all of ``labels``."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.namespace == namespace]
        return [
            j
            for j in jobs
            if (not stages or j.stage in stages) and all(j.labels.get(k) == v for k, v in (labels or {}).items())
        ]

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def ledger(self, namespace: str | None = None) -> list[dict]:
        """Billed periods (one per Job that reached RUNNING), oldest first."""
        now = time.time()
        with self._lock:
            periods = [j.period(now) for j in self._jobs.values() if namespace in (None, j.namespace)]
        return [p for p in periods if p is not None]

    # ---------------------------------------------------------------- credit
    def cost_usd(self, namespace: str) -> float:
        """What the namespace's billed Job time costs at list price (pro rata), running Jobs up to now."""
        return sum(p["seconds"] * JOB_FLAVORS[p["flavor"]].usd_per_hour / 3600 for p in self.ledger(namespace))

    def credit_left(self, namespace: str) -> float | None:
        """USD left to ``namespace`` (None: unlimited, the default); creation is refused (402) at 0 or below."""
        return self.credit.left(namespace, self.cost_usd(namespace)) if self.credit.limited(namespace) else None

    # ---------------------------------------------------------------- transitions
    def cancel(self, job: Job) -> None:
        """cancel_job: a Job not yet ended is CANCELED and its process stopped (SIGTERM, then SIGKILL)."""
        self._finish(job, "CANCELED", None, graceful=True)

    def stop_all(self, message: str) -> int:
        """End every Job still alive (test clean-up): stage DELETED; how many there were."""
        alive = [j for j in self.all() if not j.terminal]
        for job in alive:
            self._finish(job, "DELETED", message, graceful=False)
        return len(alive)

    def _finish(
        self,
        job: Job,
        stage: str,
        message: str | None,
        *,
        graceful: bool,
        exit_code: int | None = None,
        at: float | None = None,
    ) -> None:
        """End ``job`` in ``stage`` (billing ends ``at``, default now), then stop its process and close its log."""
        with self._lock:
            if job.terminal:
                return
            job.stage, job.message, job.finished_at = stage, message, min(time.time(), at or time.time())
            if exit_code is not None:
                job.exit_code = exit_code
            process = job.process
        if process is not None:
            if graceful:
                stop_process_tree(process, self.stop_grace_s)
            else:
                kill_process_tree(process)
        self._drain(job)

    def _drain(self, job: Job) -> None:
        if job.pump is not None:
            job.pump.join(timeout=2.0)
        if job.log is not None:
            job.log.close()

    def _start(self, job: Job) -> None:
        """SCHEDULING -> RUNNING: materialise the volumes and start the command."""
        job.workdir.mkdir(parents=True, exist_ok=True)
        mounts, home = job.workdir / "mounts", job.workdir / "hf-home"
        home.mkdir(exist_ok=True)
        for rel, blob in job.mount_files.items():
            dest = mounts / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, dest)
            except OSError:
                dest.write_bytes(blob.read_bytes())
        env = clean_env()
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(HF_ENDPOINT=self.endpoint, HF_HOME=str(home))
        if job.volumes:
            env["FAKEHUB_MOUNT_ROOT"] = str(mounts)
        env.update(self.flavor_env.get(job.flavor, {}))
        env.update(job.environment)
        env.update(job.secrets)
        cwd = self.images.get(job.space_id or job.docker_image or "", self.image_root)
        job.log = JobLog(job.workdir / "job.log")
        now = time.time()
        job.started_at, job.stage = now, "RUNNING"
        job.log.append(f"{STARTED_BANNER} at {iso(now)} =====")
        command = [*job.command, *job.arguments]
        try:
            job.process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:  # the command does not exist in the "image"
            job.log.append(f"cannot start {command!r}: {e}")
            job.stage, job.finished_at, job.exit_code = "ERROR", time.time(), 127
            job.message = f"Cannot start the command: {e.strerror or e}"
            job.log.close()
            return
        job.pump = threading.Thread(target=job.log.pump, args=(job.process.stdout,), daemon=True)
        job.pump.start()

    # ---------------------------------------------------------------- the clock
    def _clock(self) -> None:
        while not self._stop.wait(TICK_S):
            for job in self.all():
                if job.terminal:
                    continue
                try:
                    self._tick(job)
                except Exception as e:  # keep the clock alive; one broken Job must not stop the others
                    print(f"fakehub: job {job.id} tick failed: {e!r}")

    def _tick(self, job: Job) -> None:
        now = time.time()
        if job.stage == "SCHEDULING":
            if now >= job.created_at + self.scheduling_s:
                with self._lock:
                    if job.stage == "SCHEDULING":
                        self._start(job)
            return
        assert job.started_at is not None
        ran = now - job.started_at
        for fault in job.faults:
            if fault.kind in ("crash", "cancel", "delete") and ran >= fault.at_s:
                if fault.kind == "crash":
                    message = fault.message or exit_message(fault.exit_code)
                    self._finish(job, "ERROR", message, graceful=False, exit_code=fault.exit_code)
                else:
                    stage = "CANCELED" if fault.kind == "cancel" else "DELETED"
                    self._finish(job, stage, fault.message, graceful=False)
                return
        if ran >= job.timeout_s:  # the platform's clock kills it on the dot: billed exactly the timeout
            self._finish(job, "ERROR", TIMEOUT_MESSAGE, graceful=False, at=job.started_at + job.timeout_s)
            return
        process = job.process
        if process is not None and process.poll() is not None:
            code = process.returncode
            kill_process_tree(process)  # what the command left behind dies with the container
            if job.pump is not None:
                job.pump.join(timeout=2.0)  # every line is in the log before the stage says the Job ended...
            with self._lock:
                if not job.terminal:
                    job.exit_code, job.finished_at = code, time.time()
                    job.stage = "COMPLETED" if code == 0 else "ERROR"
                    job.message = None if code == 0 else exit_message(code)
            self._drain(job)  # ...and the log stream ends after it does (the client then reads the stage)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.stop_all("emulator stopped")


def exit_message(code: int) -> str:
    """The ERROR message of a Job whose command exited with ``code`` (negative: killed by that signal)."""
    if code < 0:
        return f"Job failed: process killed by signal {-code}"
    return f"Job failed with exit code: {code}"


def sse_events(log: JobLog, tail: int | None, keepalive_s: float = 15.0) -> Iterator[bytes]:
    """Server-sent events of ``log``: the history (its last ``tail`` lines), then new lines until it closes.

    Keep-alive comments come every ``keepalive_s`` (longer than the client's 5 s read timeout of a non-follow
    fetch, which ends on that timeout as with the real server).
    """
    index = 0
    if tail is not None:
        index = max(0, len(log.events) - tail)
    while True:
        events, closed = log.wait(index, keepalive_s)
        if not events and closed:
            return
        if not events:
            yield b": keep-alive\n\n"
            continue
        index += len(events)
        yield "".join(f"data: {json.dumps({'data': line, 'timestamp': ts})}\n\n" for ts, line in events).encode()
