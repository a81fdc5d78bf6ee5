"""Scenarios 1-3 of issue 6: the trainer is killed, crashes, or hangs while the Space is on the (emulated) GPU.

Each test runs the real app as a Space on the emulator; the task is enqueued with the real HubQueue; the app asks
for t4-small, the emulator restarts it there and it trains on the CPU (ALLOW_CPU_TRAINING) with the tiny model or a
fault recipe from tests/faults/recipes.py.
"""

from __future__ import annotations

import os
import signal

import pytest

from scheduler.task import TaskStatus
from tests.faults.space import space, tiny_params, wait_for
from tests.tiny_models import make_images

pytestmark = pytest.mark.slow


def test_1_trainer_sigkilled_mid_run_resumes_from_its_checkpoint_at_attempt_2(hub, tmp_path, tiny_sd):
    steps = 8
    images = make_images(tmp_path / "photos", 3)
    with space(hub, tmp_path, tiny_sd) as run:
        task = run.enqueue(images, recipe="faults-slow-lora", params=tiny_params(steps, checkpoint_every=2))
        # Wait for the checkpoint at step 2 (of 8), then kill the trainer process like the OOM killer would.
        wait_for(lambda: any(e.get("event") == "checkpoint" and e.get("step") == 2 for e in run.events(task.id)),
                 90, "the first checkpoint")  # fmt: skip
        pids = run.trainer_pids()
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)

        done = run.wait_terminal([task.id], 120)[0]
        assert done.status is TaskStatus.DONE, done.last_error
        assert done.attempts == 2
        assert "killed by signal 9" in (done.last_error or "")  # the first attempt's cause stays visible
        run.wait_released()

    events = run.events(task.id)
    files = sorted({e["_file"] for e in events})
    assert len(files) == 2 and files[0].endswith("events-1.jsonl") and files[1].endswith("events-2.jsonl")
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 2
    trained = [e["step"] for e in events if e.get("event") == "step"]
    # The second attempt starts after the checkpoint: fewer steps than two full runs, and every step is covered.
    assert len(trained) < 2 * steps
    assert set(trained) == set(range(1, steps + 1))
    assert [e["step"] for e in events if e.get("event") == "step" and e["_file"].endswith("-2.jsonl")][0] == resumed[0]["step"] + 1
    # One GPU period: one upgrade, one release; the model is on the Hub.
    assert len(run.hardware_posts()) == 2
    assert any(f.endswith(".safetensors") for f in run.queue.api.list_repo_files(done.output_repo))
    assert not run.open_paid_periods()


def test_2_trainer_crashing_at_step_1_fails_after_max_attempts_and_releases_the_gpu(hub, tmp_path, tiny_sd):
    images = make_images(tmp_path / "photos", 3)
    with space(hub, tmp_path, tiny_sd) as run:
        task = run.enqueue(images, recipe="faults-crash", max_attempts=2)
        failed = run.wait_terminal([task.id], 90)[0]
        runtime = run.wait_released()
        # The UI's queue view shows the error (rendered by the app's own refresh handler).
        status_text = run.ui_text("simulated trainer bug at step 1")

    assert failed.status is TaskStatus.FAILED
    assert failed.attempts == 2 == failed.max_attempts
    assert "Gave up after 2 of 2 attempts" in failed.last_error
    assert "simulated trainer bug at step 1" in failed.last_error
    assert "FAILED" in status_text and "Gave up after 2 of 2 attempts" in status_text
    assert runtime["hardware"]["current"] == "cpu-basic"
    # No loop: exactly max_attempts trainer runs, in one GPU period (<= max attempts), one upgrade and one release.
    starts = [e for e in run.events(task.id) if e.get("event") == "phase" and e.get("phase") == "training"]
    assert len(starts) == 2
    assert 1 <= len(run.gpu_containers()) <= failed.max_attempts
    assert len(run.hardware_posts()) == 2
    assert not run.open_paid_periods()


def test_3_hanging_trainer_is_killed_at_the_deadline_and_the_gpu_released(hub, tmp_path, tiny_sd):
    images = make_images(tmp_path / "photos", 3)
    with space(hub, tmp_path, tiny_sd) as run:
        task = run.enqueue(images, recipe="faults-hang", deadline_s=8.0)
        failed = run.wait_terminal([task.id], 90)[0]
        run.wait_released()
        wait_for(lambda: not run.trainer_pids(), 15, "the hung trainer to be gone")

    assert failed.status is TaskStatus.FAILED
    assert "deadline of 8 s exceeded" in failed.last_error
    assert failed.attempts == 1  # a timeout is not retried: it would hang again on the paid GPU
    assert failed.finished_at - failed.started_at < 8.0 + 15.0
    assert len(run.hardware_posts()) == 2
    assert not run.open_paid_periods()
