"""A Job that hangs past its platform timeout (Jobs backend): it ends in a known state, and never bills past it.

The trainer's own watchdog kills a run at the task deadline, and a Job's timeout is longer than that deadline by
construction (``jobs_runner.job_timeout_s``), so a hang *inside* the trainer never reaches the platform's timeout.
What does reach it is a hang in the Job outside the trainer: here the download of the task's photos, after the claim
and before the trainer starts, stalls (the emulator holds the photo requests; the Job's client is given download
timeouts longer than the Job's, as a connection that trickles bytes never times out). The lease outlives the Job's
timeout, so the Space does not cancel the Job first: the platform's timeout is what ends it.

Real huggingface_hub client, real HubQueue, the Space's real worker in this process and real Jobs of the emulator
running ``python -m scheduler run-task`` (as in tests/test_jobs_backend.py).
"""

from __future__ import annotations

import time

import pytest

from scheduler.spending import job_timeout_s
from scheduler.task import Task, TaskStatus
from tests.polling import wait_for
from tests.test_jobs_backend import FLAVOR, JobsSpace
from tests.tiny_models import make_images

pytestmark = pytest.mark.slow

DEADLINE_S = 30.0  # the task's deadline: its Job's timeout is 60 s
LEASE_S = "150"  # longer than the Job's timeout: the Space does not cancel the hung Job first
STALL_S = 400.0  # how long the emulator holds a photo request (longer than any Job here lives)


def stalled_space(hub, tmp_path, tiny_sd) -> JobsSpace:
    space = JobsSpace(hub, tmp_path, tiny_sd, LEASE_S=LEASE_S, TASK_DEADLINE_S=str(DEADLINE_S), MAX_ATTEMPTS="2")
    slow_client = {"HF_HUB_ETAG_TIMEOUT": "600", "HF_HUB_DOWNLOAD_TIMEOUT": "600"}  # a trickle, not a timeout
    hub.configure_jobs(scheduling_s=0.5,
                       flavor_env={FLAVOR: {"DATA_DIR": str(space.job_data), "KEEP_RUN_FOLDERS": "1", **slow_client}})  # fmt: skip
    return space


def enqueue(space: JobsSpace, max_attempts: int) -> Task:
    task = Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model=space.model, recipe="test-slow",
                hardware=FLAVOR, params={"steps": 5, "resolution": 64}, deadline_s=DEADLINE_S,
                max_attempts=max_attempts)  # fmt: skip
    task.output_repo = f"alice/out-{task.id}"
    return space.queue.enqueue(task, make_images(space.tmp / f"photos-{task.id}", 3, size=64))


def stall_photos(space: JobsSpace, task: Task) -> None:
    """Every request for the task's photos waits ``STALL_S`` (only a Job asks for them: after its claim)."""
    space.hub.inject_fault("*", rf"^/datasets/{space.queue.repo_id}/resolve/[^/]+/images/{task.id}/",
                           delay_s=STALL_S, count=1000)  # fmt: skip


def ended(space: JobsSpace, task_id: str, count: int, timeout: float) -> list[dict]:
    def enough() -> list[dict] | None:
        jobs = space.jobs(task_id)
        done = [j for j in jobs if j["status"]["stage"] not in ("SCHEDULING", "RUNNING")]
        return done if len(done) >= count else None

    return wait_for(enough, timeout, f"{count} Job(s) of task {task_id} to end", every=0.2)


def assert_timed_out_and_billed_exactly_its_timeout(space: JobsSpace, job: dict) -> None:
    timeout = job_timeout_s(DEADLINE_S)
    assert job["timeoutSeconds"] == timeout == 60
    assert job["status"]["stage"] == "ERROR" and job["status"]["message"] == "Job timeout", job["status"]
    [period] = [p for p in space.ledger() if p["job_id"] == job["id"]]
    assert period["ended_at"] is not None
    assert period["seconds"] == pytest.approx(timeout, abs=0.01)  # never billed past the timeout


def test_a_job_hanging_past_its_timeout_is_requeued_and_the_next_attempt_finishes(hub, tmp_path, tiny_sd):
    space = stalled_space(hub, tmp_path, tiny_sd)
    task = enqueue(space, max_attempts=2)
    stall_photos(space, task)
    space.worker.start()
    try:
        wait_for(lambda: space.queue.get(task.id).status is TaskStatus.RUNNING, 60, "the Job to claim the task")
        holder = space.queue.get(task.id).lease.holder
        [first] = ended(space, task.id, 1, job_timeout_s(DEADLINE_S) + 45)
        space.hub.clear_faults()  # the network is back for the next attempt
        assert first["labels"]["dreambooth-holder"] == holder  # it was the claiming Job that hung
        assert_timed_out_and_billed_exactly_its_timeout(space, first)

        [done] = space.wait_terminal([task.id], 120)
    finally:
        space.worker.stop()
    assert done.status is TaskStatus.DONE, done.last_error
    assert done.attempts == 2  # requeued once by the Space, trained by the second Job
    assert "Job timeout" in (done.last_error or "") and first["id"] in (done.last_error or "")
    jobs = ended(space, task.id, 2, 30)  # the second Job exits once its task is DONE
    assert len(jobs) == 2 and jobs[1]["status"]["stage"] == "COMPLETED"
    assert len(space.ledger()) == 2
    space.space_never_left_cpu()


def test_a_job_hanging_past_its_timeout_at_the_last_attempt_fails_the_task_with_its_log(hub, tmp_path, tiny_sd):
    space = stalled_space(hub, tmp_path, tiny_sd)
    task = enqueue(space, max_attempts=1)
    stall_photos(space, task)
    space.worker.start()
    try:
        [job] = ended(space, task.id, 1, job_timeout_s(DEADLINE_S) + 60)
        [failed] = space.wait_terminal([task.id], 30)
        time.sleep(2 * float(space.settings.poll_interval_s))  # a few more loops: nothing is started again
    finally:
        space.worker.stop()
    assert_timed_out_and_billed_exactly_its_timeout(space, job)
    assert failed.status is TaskStatus.FAILED and failed.attempts == 1
    error = failed.last_error or ""
    assert "Gave up after 1 of 1 attempts" in error and "Job timeout" in error and job["id"] in error
    assert "exit code" not in error  # the platform ended it, not the trainer
    assert len(space.jobs(task.id)) == 1 and len(space.ledger()) == 1  # no second Job, nothing more billed
    space.space_never_left_cpu()
