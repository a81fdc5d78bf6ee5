"""The worker against LocalQueue + LocalHardware, running the real trainer subprocess.

The happy path and the input failure train/load the tiny model for real; the watchdog tests (deadline, cancel,
lease renewal) use the stand-in recipes of ``tests/test_worker_recipes.py`` because a tiny model trains too fast to
hang or to be cancelled half-way.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from contract.events import Step
from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.hardware.base import HardwareState
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from scheduler.trainer_process import PROJECT_ROOT, EventReader
from scheduler.worker import Worker
from tests.polling import alive, wait_for
from tests.tiny_models import make_images

TEST_RECIPES = "tests.test_worker_recipes"


@pytest.fixture
def local(tmp_path):
    """Settings, queue and worker of a local-mode app in ``tmp_path``."""
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "POLL_INTERVAL_S": "0.2", "LEASE_S": "30"})
    queue = make_queue(settings)
    worker = Worker(settings, queue, make_hardware(settings), recipes_modules=(TEST_RECIPES,), heartbeat_s=0.5,
                    kill_grace_s=2.0)  # fmt: skip
    images = make_images(tmp_path / "photos", 3)
    yield settings, queue, worker, images
    worker.stop()


def new_task(base_model: str, recipe: str = "dreambooth-lora", steps: int = 4, **kw) -> Task:
    params = {"steps": steps, "resolution": 64, "learning_rate": 1e-4}
    if recipe == "dreambooth-lora":
        params.update(rank=4, validation_prompts=["a photo of sks dog"], checkpoint_every=2)
    return Task(instance_prompt="a photo of sks dog", submitted_by="local", base_model=base_model, recipe=recipe,
                params=params, **kw)  # fmt: skip


def test_trains_a_task_to_done_with_progress_and_samples(local, tiny_sd):
    settings, queue, worker, images = local
    task = queue.enqueue(new_task(str(tiny_sd)), images)

    action, requests = worker.step()

    assert action.kind.value == "claim_and_train"
    done = queue.get(task.id)
    assert done.status is TaskStatus.DONE, done.last_error
    assert done.attempts == 1 and done.finished_at is not None
    out = Path(done.result_url)
    assert out.is_dir() and any(out.glob("*.safetensors")) and (out / "README.md").is_file()
    status = worker.status.snapshot()
    assert status.phase == "done" and status.task_id == task.id
    assert (status.step, status.total) == (4, 4)
    assert [s for s, _ in status.loss_history] == [1, 2, 3, 4]
    assert status.samples and all(Path(p).is_file() for p in status.samples)
    assert status.log_tail, "the trainer's log tail is shown"
    # The run record, written with the completion: the trainer's measured speed and step times, the settings.
    run = done.run
    assert run is not None and run.flavor == "local-cpu" and run.base_model == str(tiny_sd)
    assert (run.recipe, run.resolution, run.steps, run.batch_size) == ("dreambooth-lora", 64, 4, 1)
    assert (run.prior_preservation, run.train_text_encoder, run.family) == (False, False, None)  # tiny: no family
    assert run.steps_per_s and run.steps_per_s > 0
    assert done.started_at < run.first_step_at < run.last_step_at < done.finished_at
    assert run.startup_s is not None and 0 <= run.startup_s <= run.first_step_at - done.started_at
    assert run.wrapup_s == pytest.approx(done.finished_at - run.last_step_at, abs=1e-3)
    assert run.switch_s is None and run.release_s is None  # local mode: no GPU period
    assert queue.list_with_billing()[1] == []


def test_trainer_error_marks_the_task_failed_with_the_log_tail(local, tmp_path):
    settings, queue, worker, images = local
    task = queue.enqueue(new_task(str(tmp_path / "no-such-model")), images)

    worker.step()

    failed = queue.get(task.id)
    assert failed.status is TaskStatus.FAILED
    assert "no-such-model" in failed.last_error  # the trainer's own message reaches the queue
    assert worker.status.snapshot().phase == "failed"


def test_deadline_kills_the_whole_process_group(local, tmp_path):
    settings, queue, worker, images = local
    # 10 s: the trainer must have started (torch imported, pids written) before the deadline, on a loaded CI machine too
    task = queue.enqueue(new_task("unused", recipe="test-hang", deadline_s=10.0), images)

    started = time.monotonic()
    worker.step()

    failed = queue.get(task.id)
    assert failed.status is TaskStatus.FAILED
    assert "deadline" in failed.last_error
    assert time.monotonic() - started < 40  # the hang would last for ever: the deadline ended it
    pids = (settings.data_dir / "runs" / task.id / "work" / "pids.txt").read_text().split()
    wait_for(lambda: not any(alive(int(p)) for p in pids), 5, "trainer and its child to die")


def test_cancel_stops_the_trainer_and_heartbeats_renew_the_lease(local):
    settings, queue, worker, images = local
    task = queue.enqueue(new_task("unused", recipe="test-slow", steps=300), images)
    worker.start()

    wait_for(lambda: queue.get(task.id).progress.get("step", 0) >= 3, 30, "a heartbeat with progress")
    running = queue.get(task.id)
    assert running.status is TaskStatus.RUNNING and running.lease.holder == worker.worker_id
    first_expiry = running.lease.expires_at
    wait_for(lambda: queue.get(task.id).lease.expires_at > first_expiry, 5, "the lease to be renewed")
    proc = worker._proc
    assert proc is not None and proc.poll() is None
    # The UI's task list is refreshed while training (no stale PENDING in the queue view).
    wait_for(lambda: [t.status for t in worker.status.snapshot().tasks] == [TaskStatus.RUNNING], 5, "a fresh task list")

    queue.cancel(task.id)

    wait_for(lambda: proc.poll() is not None, 10, "the trainer to stop after cancel")
    wait_for(lambda: worker.status.snapshot().phase == "cancelled", 5, "the run view to say the task was cancelled")
    assert queue.get(task.id).status is TaskStatus.CANCELLED
    assert worker.status.snapshot().step < 300


def test_drains_every_runnable_task(local):
    settings, queue, worker, images = local
    first = queue.enqueue(new_task("unused", recipe="test-slow", steps=3), images)
    second = queue.enqueue(new_task("unused", recipe="test-slow", steps=3), images)
    worker.start()

    wait_for(lambda: all(queue.get(t.id).status.terminal for t in (first, second)), 60, "both tasks to finish")
    assert [queue.get(t.id).status for t in (first, second)] == [TaskStatus.DONE, TaskStatus.DONE]
    assert queue.get(first.id).finished_at <= queue.get(second.id).started_at


def test_multi_gpu_flavors_launch_one_process_per_gpu(local, tmp_path):
    settings, queue, worker, images = local
    worker._hw_state = HardwareState("l4x4", "l4x4", "RUNNING", "l4x4", True)
    cmd = worker.trainer_command(tmp_path / "t.json", tmp_path / "w", tmp_path / "e.jsonl")
    assert cmd[1:7] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4", "-m"]
    assert cmd[7] == "training"
    worker._hw_state = HardwareState("t4-small", "t4-small", "RUNNING", "t4-small", True)
    assert worker.trainer_command(tmp_path / "t.json", tmp_path / "w", tmp_path / "e.jsonl")[1:3] == ["-m", "training"]


def test_a_training_script_setting_is_passed_to_the_trainer(local, tmp_path):
    """TRAINING_SCRIPT: ``python -m training ... --script <its absolute path>``, on one GPU and on several."""
    settings, queue, worker, images = local
    args = (tmp_path / "t.json", tmp_path / "w", tmp_path / "e.jsonl")
    assert "--script" not in worker.trainer_command(*args)  # not set: the trainer's own training/train.py
    script = tmp_path / "my_train.py"
    script.write_text("")
    for value, expected in ((str(script), str(script)), ("app.py", str(PROJECT_ROOT / "app.py"))):
        custom = Worker(load_settings({"DATA_DIR": str(tmp_path / "data"), "TRAINING_SCRIPT": value}), queue,
                        make_hardware(settings), recipes_modules=(TEST_RECIPES,))  # fmt: skip
        cmd = custom.trainer_command(*args)
        assert cmd[1:3] == ["-m", "training"] and cmd[cmd.index("--script") + 1] == expected
        assert cmd[cmd.index("--recipes-module") + 1] == TEST_RECIPES
        custom._hw_state = HardwareState("l4x4", "l4x4", "RUNNING", "l4x4", True)
        multi = custom.trainer_command(*args)
        assert multi[1:3] == ["-m", "accelerate.commands.launch"] and multi[multi.index("--script") + 1] == expected


def test_family_modules_are_passed_to_the_trainer(local, tmp_path):
    """TRAINING_FAMILY_MODULES: ``--families-module M`` for each, on one GPU and on several."""
    settings, queue, worker, images = local
    args = (tmp_path / "t.json", tmp_path / "w", tmp_path / "e.jsonl")
    assert "--families-module" not in worker.trainer_command(*args)
    custom = Worker(load_settings({"DATA_DIR": str(tmp_path / "data"), "TRAINING_FAMILY_MODULES": "my_family,pkg.more"}),
                    queue, make_hardware(settings), recipes_modules=(TEST_RECIPES,))  # fmt: skip
    for hw in (None, HardwareState("l4x4", "l4x4", "RUNNING", "l4x4", True)):
        custom._hw_state = hw
        cmd = custom.trainer_command(*args)
        assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--families-module"] == ["my_family", "pkg.more"]
        assert cmd[cmd.index("--recipes-module") + 1] == TEST_RECIPES


def test_event_reader_keeps_a_partial_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.read_new() == []
    path.write_text('{"event": "step", "step": 1}\n')
    assert reader.read_new() == []  # a step event without its total is not a well-formed event
    path.write_text('{"event": "step", "step": 1, "total": 4}\n{"event": "st')
    reader = EventReader(path)
    assert reader.read_new() == [Step(step=1, total=4)]
    with open(path, "a") as f:
        f.write('ep", "step": 2, "total": 4}\nnot json\n{"event": "unknown"}\n')
    assert reader.read_new() == [Step(step=2, total=4)]


def test_status_snapshots_are_copies_safe_across_threads(local):
    settings, queue, worker, images = local
    status = worker.status

    def writer():
        for i in range(500):
            status.record_step(Step(step=i, total=500, loss=0.5))

    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        snap = status.snapshot()
        assert len(snap.loss_history) <= 500
    t.join()
    snap = status.snapshot()
    snap.loss_history.clear()
    assert len(status.snapshot().loss_history) == 500


def test_each_task_starts_clean_and_a_cancelled_one_says_so(local, tmp_path):
    """A failed task's error does not stay on the next task's run view; a cancelled task is named as cancelled."""
    settings, queue, worker, images = local
    failing = queue.enqueue(new_task(str(tmp_path / "no-such-model")), images)
    worker.step()
    assert worker.status.snapshot().phase == "failed" and worker.status.snapshot().last_error

    ok = queue.enqueue(new_task("unused", recipe="test-slow", steps=3), images)
    worker.step()
    s = worker.status.snapshot()
    assert queue.get(ok.id).status is TaskStatus.DONE
    assert (s.phase, s.task_id, s.last_error, s.eta_s) == ("done", ok.id, None, None)
    assert failing.id not in s.message

    slow = queue.enqueue(new_task("unused", recipe="test-slow", steps=300), images)
    worker.start()
    wait_for(lambda: worker.status.snapshot().task_id == slow.id and worker.status.snapshot().step >= 2, 30,
             "the slow task to train")  # fmt: skip
    queue.cancel(slow.id)
    wait_for(lambda: worker.status.snapshot().phase == "cancelled", 15, "the run view to say cancelled")
    s = worker.status.snapshot()
    assert s.message == f"Task {slow.id} was cancelled; its trainer was stopped."
    assert s.last_error is None and s.eta_s is None
    time.sleep(1.0)  # the idle loops that follow keep saying so
    assert worker.status.snapshot().phase == "cancelled"
