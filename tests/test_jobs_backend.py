"""The Jobs backend end to end: the Space's worker (TRAINING_BACKEND=jobs) against the emulator's Jobs API.

Real huggingface_hub client, real HubQueue, real Jobs of the emulator running ``python -m scheduler run-task`` from
this checkout (the emulator's stand-in for the Space's image), real training of the tiny model where the test is
about training. The Space's worker runs in this process (as in tests/test_worker_hub.py); a "restart" is a new Worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from contract.settings import load_settings
from scheduler.billing import task_cost_usd
from scheduler.hardware import make_hardware
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN
from tests.polling import wait_for
from tests.tiny_models import make_images

pytestmark = pytest.mark.slow

RECIPES = "tests.test_worker_recipes,tests.faults.recipes"
FLAVOR = "t4-small"  # a GPU flavor: the emulator runs its Jobs on this machine's CPU


class JobsSpace:
    """A Space on the emulator whose worker dispatches Jobs, and the test's own view of its queue and Jobs."""

    def __init__(self, hub, tmp_path: Path, tiny_sd: Path, **env: str) -> None:
        self.hub, self.tmp, self.model = hub, tmp_path, str(tiny_sd)
        self.repo = f"alice/jobs-{uuid.uuid4().hex[:6]}"
        hub.create_space(self.repo, owner_token=ALICE_TOKEN, switch_delay_s=0.2)
        hub.wait_for_stage(self.repo, "RUNNING", timeout_s=10)
        self.job_data = tmp_path / "job-data"  # the Jobs' disk (DATA_DIR inside every Job)
        hub.configure_jobs(
            scheduling_s=0.5, flavor_env={FLAVOR: {"DATA_DIR": str(self.job_data), "KEEP_RUN_FOLDERS": "1"}}
        )
        values = {"SPACE_ID": self.repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "POLL_INTERVAL_S": "0.5",
                  "RETRY_BASE_S": "0.01", "TRAINING_BACKEND": "jobs", "BASE_MODELS": self.model, "LEASE_S": "20",
                  "TRAINING_RECIPES_MODULES": RECIPES, "DATA_DIR": str(tmp_path / "space-data"), **env}  # fmt: skip
        self.settings = load_settings(values)
        self.queue = make_queue(self.settings)
        self.api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
        self.worker = self.new_worker()

    def new_worker(self) -> Worker:
        return Worker(self.settings, make_queue(self.settings), make_hardware(self.settings))

    def enqueue(self, recipe: str = "test-slow", steps: int = 5, **params) -> Task:
        task = Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model=self.model, recipe=recipe,
                    hardware=FLAVOR, params={"steps": steps, "resolution": 64, **params})  # fmt: skip
        task.output_repo = f"alice/out-{task.id}"
        return self.queue.enqueue(task, make_images(self.tmp / f"photos-{task.id}", 3, size=64))

    def jobs(self, task_id: str | None = None) -> list[dict]:
        """This Space's Jobs as the emulator knows them (oldest first)."""
        mine = [j for j in self.hub.jobs("alice") if (j.get("labels") or {}).get("dreambooth-space") == self.repo]
        return [j for j in mine if task_id is None or j["labels"].get("dreambooth-task") == task_id]

    def ledger(self) -> list[dict]:
        return [p for p in self.hub.jobs_ledger("alice") if p["labels"].get("dreambooth-space") == self.repo]

    def alive(self) -> list[dict]:
        return [j for j in self.jobs() if j["status"]["stage"] in ("SCHEDULING", "RUNNING")]

    def wait_terminal(self, task_ids: list[str], timeout: float) -> list[Task]:
        def ready() -> list[Task] | None:
            tasks = [self.queue.get(t) for t in task_ids]
            return tasks if all(t.status.terminal for t in tasks) else None

        return wait_for(ready, timeout, f"tasks {task_ids} to end")

    def space_never_left_cpu(self) -> None:
        assert self.hub.requests("POST", rf"^/api/spaces/{self.repo}/hardware$") == []
        assert self.hub.space_runtime(self.repo)["hardware"]["current"] == "cpu-basic"
        assert set(self.hub.billed_seconds(self.repo)) <= {"cpu-basic"}

    def job_periods(self) -> list:
        return [p for p in self.queue.list_with_billing()[1] if (p.closed_by or "").startswith("job ")]


@pytest.fixture
def space(hub, tmp_path, tiny_sd):
    s = JobsSpace(hub, tmp_path, tiny_sd)
    yield s
    s.worker.stop()


def max_concurrency(periods: list[dict]) -> int:
    edges = sorted([(p["started_at"], 1) for p in periods] + [(p["ended_at"] or time.time(), -1) for p in periods])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def kill_task_processes(task_id: str) -> int:
    """SIGKILL every process of a task's Job (the in-Job worker and its trainer): a crash, as the OOM killer does."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes()
            if task_id.encode() in cmd and (b"run-task" in cmd or b"training" in cmd):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed


def test_three_tasks_run_as_two_parallel_jobs_then_one_and_the_space_stays_on_cpu(space):
    tasks = [space.enqueue("dreambooth-lora", steps=2, rank=4, checkpoint_every=None) for _ in range(3)]
    space.worker.start()
    done = space.wait_terminal([t.id for t in tasks], 150)
    assert [t.status for t in done] == [TaskStatus.DONE] * 3, [t.last_error for t in done]
    assert all(t.attempts == 1 and t.result_url for t in done)  # each trained once, and uploaded
    assert all(t.run is not None and t.run.flavor == FLAVOR and t.run.steps_per_s for t in done)

    # Two Jobs ran together, the third only once a slot was free; one Job per task, never more.
    ledger = space.ledger()
    assert sorted(p["labels"]["dreambooth-task"] for p in ledger) == sorted(t.id for t in tasks)
    first_two, third = (
        sorted(ledger, key=lambda p: p["started_at"])[:2],
        sorted(ledger, key=lambda p: p["started_at"])[2],
    )
    assert max(p["started_at"] for p in first_two) < min(p["ended_at"] for p in first_two)  # overlapped
    assert third["started_at"] >= min(p["ended_at"] for p in first_two) - 0.5  # (clock tick of the emulator)
    assert max_concurrency(ledger) == 2
    assert all(p["flavor"] == FLAVOR for p in ledger)
    for job in space.jobs():  # the Job ran this Space's image with the task's hardware, token as a secret only
        assert job["spaceId"] == space.repo and job["flavor"] == FLAVOR
        assert "HF_TOKEN" not in (job.get("environment") or {}) and "HF_TOKEN" in (job.get("secrets") or {})
    space.space_never_left_cpu()

    # The queue's billing gets one period per Job (its creation to its end), the task's whole cost.
    periods = wait_for(lambda: len(space.job_periods()) == 3 and space.job_periods(), 30, "three Job periods")
    assert sorted(p.claims[0].task_id for p in periods) == sorted(t.id for t in tasks)
    assert all(p.hardware == FLAVOR and p.released_at > p.requested_at for p in periods)
    now = time.time()
    assert all(task_cost_usd(t.id, periods, now) > 0 for t in tasks)


def test_a_crashed_job_is_requeued_and_the_next_job_resumes_from_the_checkpoint(space):
    task = space.enqueue("faults-slow-lora", steps=8, rank=4, checkpoint_every=2)
    space.worker.start()
    ckpt = f"checkpoints/{task.id}/step-00000002/state.json"
    wait_for(lambda: ckpt in space.api.list_repo_files(space.queue.repo_id, repo_type="dataset"), 120,
             "the step-2 checkpoint on the Hub")  # fmt: skip
    [first] = space.jobs(task.id)
    first_holder = space.queue.get(task.id).lease.holder
    assert first_holder == first["labels"]["dreambooth-holder"]
    assert kill_task_processes(task.id) >= 1
    # A new container has an empty disk: only the Hub mirror can give the checkpoint back.
    wait_for(lambda: space.jobs(task.id)[0]["status"]["stage"] == "ERROR", 20, "the first Job to end in ERROR")
    for folder in space.job_data.glob("runs/*"):
        shutil.rmtree(folder)

    [done] = space.wait_terminal([task.id], 150)
    assert done.status is TaskStatus.DONE, done.last_error
    assert done.attempts == 2
    assert "ERROR" in (done.last_error or "") and first["id"] in (done.last_error or "")
    jobs = space.jobs(task.id)
    assert len(jobs) == 2 and jobs[0]["status"]["stage"] == "ERROR"
    log = space.hub.job_log(jobs[1]["id"])
    assert "resumed from the checkpoint of step" in log, log[-2000:]
    step = int(log.split("resumed from the checkpoint of step ")[1].split()[0])
    assert step >= 2
    # Once DONE, the checkpoints (LoRA and optimizer state) leave the queue repo with the photos.
    files = space.api.list_repo_files(space.queue.repo_id, repo_type="dataset")
    assert not [f for f in files if f.startswith((f"checkpoints/{task.id}/", f"images/{task.id}/"))], files
    space.space_never_left_cpu()


def test_a_refused_job_leaves_the_task_pending_with_the_reason_and_is_not_retried(space):
    task = space.enqueue()
    space.hub.inject_job_fault("refuse", namespace="alice", status=402, count=5)
    space.hub.clear_requests()
    for _ in range(4):
        space.worker.step()
    held = space.queue.get(task.id)
    assert held.status is TaskStatus.PENDING and held.attempts == 0
    assert "refused" in held.note and "credit" in held.note.lower() and "Fix:" in held.note
    assert "credit" in space.worker.status.snapshot().message.lower()  # the Run view says why nothing runs
    assert len(space.hub.requests("POST", r"^/api/jobs/alice$")) == 1  # one creation tried, no loop
    assert space.jobs(task.id) == []
    space.space_never_left_cpu()

    space.queue.retry(task.id)  # the owner added credits and pressed Retry: it runs now
    space.hub.clear_faults()
    space.worker.step()
    assert len(space.jobs(task.id)) == 1


def test_cancelling_a_running_task_cancels_its_job(space):
    task = space.enqueue(steps=200)  # 40 s of steps: it is running when cancelled
    space.worker.start()
    wait_for(lambda: space.queue.get(task.id).progress.get("step", 0) >= 1, 60, "the task's first heartbeat")
    [job] = space.jobs(task.id)
    space.queue.cancel(task.id)  # what the UI's Cancel does
    wait_for(lambda: space.jobs(task.id)[0]["status"]["stage"] in ("CANCELED", "COMPLETED"), 30, "the Job to stop")
    assert space.queue.get(task.id).status is TaskStatus.CANCELLED
    assert len(space.jobs(task.id)) == 1 and space.jobs(task.id)[0]["id"] == job["id"]
    [period] = [p for p in space.ledger() if p["job_id"] == job["id"]]
    assert period["seconds"] < 40  # stopped well before its 200 steps
    space.space_never_left_cpu()


def test_a_restarted_space_readopts_its_running_jobs_without_duplicates(space, hub):
    tasks = [space.enqueue(steps=40) for _ in range(2)]  # 8 s each
    space.worker.start()
    wait_for(lambda: all(space.queue.get(t.id).status is TaskStatus.RUNNING for t in tasks), 60, "both tasks running")
    space.worker.stop()  # the Space restarts; its Jobs keep running
    hub.inject_fault("*", r"^/api/jobs/", status=500, count=6, probability=0.5)  # and the Jobs API is flaky
    hub.seed_faults(12)
    space.worker = space.new_worker()
    space.worker.start()
    done = space.wait_terminal([t.id for t in tasks], 90)
    assert [t.status for t in done] == [TaskStatus.DONE] * 2, [t.last_error for t in done]
    assert [len(space.jobs(t.id)) for t in tasks] == [1, 1]  # re-adopted, never a second Job
    assert all(t.attempts == 1 for t in done)
    space.space_never_left_cpu()


def test_a_job_created_behind_an_ambiguous_5xx_is_adopted_not_started_twice(space):
    task = space.enqueue()
    # The creation lands on the Hub but its answer is a 502: the retry lists the task's Jobs first and adopts it.
    space.hub.inject_fault("POST", r"^/api/jobs/alice$", status=502, land_then_fail=True, count=1)
    space.hub.clear_requests()
    space.worker.step()
    assert len(space.hub.requests("POST", r"^/api/jobs/alice$")) == 1
    [job] = space.jobs(task.id)
    assert "Adopted" in space.worker.status.snapshot().message and job["id"] in space.worker.status.snapshot().message
    space.worker.step()
    assert len(space.jobs(task.id)) == 1  # the next loops follow it
    space.worker.start()
    [done] = space.wait_terminal([task.id], 60)
    assert done.status is TaskStatus.DONE and len(space.jobs(task.id)) == 1


def test_run_task_does_nothing_for_a_task_that_is_not_claimable(space, monkeypatch, capsys):
    from scheduler.cli import main

    task = space.enqueue()
    space.queue.cancel(task.id)
    monkeypatch.setenv("SPACE_ID", space.repo)
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    monkeypatch.setenv("TRAINING_BACKEND", "jobs")
    monkeypatch.setenv("BASE_MODELS", space.model)
    monkeypatch.setenv("DATA_DIR", str(space.tmp / "job-data"))
    before = space.queue.get(task.id)
    assert main(["run-task", task.id, "--holder", "job:test"]) == 0
    after = space.queue.get(task.id)
    assert after.status is TaskStatus.CANCELLED and after.attempts == before.attempts == 0
    assert main(["run-task", "../etc", "--holder", "job:test"]) == 2  # not a task id: usage error


def test_the_daily_gpu_hours_cap_stops_dispatching(hub, tmp_path, tiny_sd):
    space = JobsSpace(hub, tmp_path, tiny_sd, JOBS_GPU_HOURS_PER_DAY="0")
    task = space.enqueue()
    space.hub.clear_requests()
    for _ in range(3):
        space.worker.step()
    assert space.queue.get(task.id).status is TaskStatus.PENDING and space.jobs(task.id) == []
    assert space.hub.requests("POST", r"^/api/jobs/") == []
    assert "JOBS_GPU_HOURS_PER_DAY" in space.worker.status.snapshot().message
    prices = space.worker.status.snapshot().job_prices  # read once from list_jobs_hardware, for the estimates
    assert prices["h200"] == pytest.approx(5.0, rel=1e-3) and prices[FLAVOR] == pytest.approx(0.40, rel=1e-3)
    assert space.worker.status.snapshot().job_prices_source.startswith("list_jobs_hardware")
