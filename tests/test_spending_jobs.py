"""The spending caps on the Jobs backend: the Space's worker against the emulator's Jobs (whose ledger is the bill),
and the in-Job worker stopping a real run at a cap's stop with a checkpoint.

The Jobs run ``python -m scheduler run-task`` from this checkout (``tests.test_jobs_backend.JobsSpace``) with the
stand-in recipe ``test-slow`` (a few seconds each); the last test trains the tiny model for real, because what it
shows is the trainer's checkpoint at the stop and the resume from it.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest

from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.queue import make_queue
from scheduler.spending import CAP_NOTE_PREFIX, cap_held
from scheduler.task import Task, TaskStatus
from scheduler.worker import Worker
from tests.polling import wait_for
from tests.test_jobs_backend import FLAVOR, JobsSpace, max_concurrency
from tests.tiny_models import make_images

pytestmark = pytest.mark.slow

DEADLINE_S = 60  # a Job's timeout is then 120 s: a worst case of 180 s billed ($0.02 on a T4)
T4_USD_H = 0.40
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")


def enqueue(space: JobsSpace, user: str, steps: int = 5) -> Task:
    task = Task(instance_prompt="a photo of sks dog", submitted_by=user, base_model=space.model, recipe="test-slow",
                hardware=FLAVOR, params={"steps": steps, "resolution": 64}, deadline_s=DEADLINE_S)  # fmt: skip
    task.output_repo = f"{user}/out-{task.id}"
    return space.queue.enqueue(task, make_images(space.tmp / f"photos-{task.id}", 3, size=64))


def billed_usd(ledger: list[dict]) -> float:
    """The emulator's bill of these Jobs, per started minute."""
    return sum(math.ceil(p["seconds"] / 60) * 60 / 3600 * T4_USD_H for p in ledger)


def test_the_months_cap_holds_jobs_that_would_pass_it_and_the_bill_stays_under_it(hub, tmp_path, tiny_sd):
    cap = 0.035  # a worst case (0.02) on top of two one-minute Jobs (0.013), not of three; nor two worst cases at once
    space = JobsSpace(hub, tmp_path, tiny_sd, MAX_SPEND_USD_PER_MONTH=str(cap), TASK_DEADLINE_S=str(DEADLINE_S))
    tasks = [enqueue(space, "alice") for _ in range(6)]  # six one-minute Jobs would bill $0.04

    def settled() -> tuple[list[Task], list[Task]] | None:
        now = [space.queue.get(t.id) for t in tasks]
        done, held = [t for t in now if t.status is TaskStatus.DONE], [t for t in now if cap_held(t)]
        quiet = not space.alive() and len(space.job_periods()) == len(space.jobs())
        return (done, held) if quiet and len(done) + len(held) == len(tasks) else None

    space.worker.start()
    try:
        done, held = wait_for(settled, 180, "every task done or held by the cap")
        for _ in range(3):  # and it stays so: nothing more is dispatched
            space.worker.wait_for_loop(space.worker.status.loops, 10)
    finally:
        space.worker.stop()
    ledger = space.ledger()
    assert billed_usd(ledger) <= cap, ledger
    assert len(ledger) == len(done) >= 2 and held  # a held task ran once the first Job's bill left room
    assert max_concurrency(ledger) == 1  # two worst cases at once would pass the cap: one Job at a time
    assert all("MAX_SPEND_USD_PER_MONTH" in (t.note or "") and t.attempts == 0 for t in held)
    space.space_never_left_cpu()


def test_cancelled_jobs_count_against_their_submitter_and_the_fifth_cycle_is_refused(hub, tmp_path, tiny_sd):
    """Finding 3 (Jobs): submit on a GPU, let the Job start, cancel; four Jobs billed, nothing counted, a fifth
    accepted. Now each cancelled Job counts (a started minute at least) and the fifth submission is refused."""
    from ui.limits import user_limit_problem

    cap_h = 7 / 60  # seven minutes: four starts of a 3-minute worst case fit one after the other, not a fifth
    space = JobsSpace(hub, tmp_path, tiny_sd, ALLOWED_USERS="alice,bob", MAX_GPU_HOURS_PER_USER_DAY=repr(cap_h),
                      TASK_DEADLINE_S=str(DEADLINE_S))  # fmt: skip
    worker, refused_at, problem = space.worker, None, None
    for cycle in range(1, 7):
        tasks, periods = space.queue.list_with_billing()
        problem = user_limit_problem(space.settings, "bob", tasks, periods=periods, jobs=worker.status.snapshot().jobs)
        if problem:
            refused_at = cycle
            break
        task = enqueue(space, "bob", steps=500)  # long enough to be running when cancelled
        worker.step()
        wait_for(
            lambda t=task: any(j["status"]["stage"] == "RUNNING" for j in space.jobs(t.id)), 30, "the Job to start"
        )
        space.queue.cancel(task.id)  # what the Queue tab's Cancel does
        wait_for(
            lambda t=task: worker.step() and space.jobs(t.id)[0]["status"]["stage"] in TERMINAL, 30, "the Job to end"
        )
        wait_for(lambda c=cycle: worker.step() and len(space.job_periods()) == c, 30, "its period in the queue")
    assert refused_at == 5, problem
    assert "MAX_GPU_HOURS_PER_USER_DAY" in problem and "bob was billed 0.07 GPU hours ($0.03)" in problem
    ledger = space.ledger()
    assert len(ledger) == 4 and sum(math.ceil(p["seconds"] / 60) * 60 for p in ledger) <= cap_h * 3600
    assert user_limit_problem(space.settings, "alice", *space.queue.list_with_billing()[:1]) is None  # the owner


def test_a_cap_stop_saves_a_checkpoint_holds_the_task_and_the_next_run_resumes_from_it(tmp_path, tiny_sd):
    """Finding 4 and the cap: a run whose end would pass a cap is stopped at the stop the Space wrote (as the Jobs
    backend's LIMIT does), with a checkpoint; the task is held, not failed, its attempt given back; it resumes."""
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "POLL_INTERVAL_S": "0.2", "LEASE_S": "30"})
    queue = make_queue(settings)
    worker = Worker(settings, queue, make_hardware(settings), recipes_modules=("tests.faults.recipes",),
                    heartbeat_s=0.5, kill_grace_s=2.0)  # fmt: skip
    params = {"steps": 12, "resolution": 64, "rank": 4, "learning_rate": 1e-4, "checkpoint_every": None}
    task = queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="local", base_model=str(tiny_sd),
                              recipe="faults-slow-lora", params=params, max_attempts=1),
                         make_images(tmp_path / "photos", 3, size=64))  # fmt: skip
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(worker.run_one(task.id)))
    run.start()
    wait_for(lambda: worker.status.snapshot().step >= 2, 120, "two training steps")
    queue.limit_run(task.id, queue.get(task.id).started_at)  # the cap's stop: now
    run.join(120)
    assert codes == [0]  # a hold is no failure of the Job
    held = queue.get(task.id)
    assert held.status is TaskStatus.PENDING and held.attempts == 0 and held.stop_at is None  # the only attempt, back
    assert held.note.startswith(CAP_NOTE_PREFIX) and "checkpoint" in held.note
    assert "stopped by a spending cap; its checkpoint of step" in worker.status.snapshot().message
    saved = sorted(p.name for p in Path(worker.run_dir(task.id), "work").rglob("step-*") if p.is_dir())
    assert saved, "a checkpoint at the stop"

    assert worker.run_one(task.id) == 0  # the cap left room again: it runs on
    done = queue.get(task.id)
    assert done.status is TaskStatus.DONE and done.attempts == 1, done.last_error
    events = Path(worker.run_dir(task.id), "events-1.jsonl").read_text()  # both runs were attempt 1
    resumed = [json.loads(line) for line in events.splitlines() if '"resumed"' in line]
    assert resumed and resumed[-1]["step"] >= 2  # from the checkpoint saved at the stop, not from scratch
