"""Scenarios 4, 5 and 7 of issue 6: the app's container dies, the release request fails, two containers overlap.

The app runs as a Space on the emulator (see tests/faults/space.py); tasks are enqueued with the real HubQueue.
"""

from __future__ import annotations

import os
import sys

import pytest

from scheduler.task import TaskStatus
from tests.conftest import ALICE_TOKEN
from tests.e2e.harness import APP, app_env, free_port, run_app, wait_http
from tests.faults.space import BASE_VARIABLES, RECIPES, space, tiny_params, wait_for
from tests.tiny_models import make_images

pytestmark = pytest.mark.slow


def test_4_container_killed_mid_training_the_next_one_resumes_after_the_lease_expires(hub, tmp_path, tiny_sd):
    steps, lease_s = 8, 6
    images = make_images(tmp_path / "photos", 3)
    with space(hub, tmp_path, tiny_sd, variables={"LEASE_S": str(lease_s)}) as run:
        task = run.enqueue(images, recipe="faults-slow-lora", params=tiny_params(steps, checkpoint_every=2))
        ckpt = f"checkpoints/{task.id}/step-00000002/state.json"
        wait_for(lambda: ckpt in run.queue.api.list_repo_files(run.queue.repo_id, repo_type="dataset"), 90,
                 "the step-2 checkpoint on the Hub")  # fmt: skip
        first_holder = run.get(task.id).lease.holder
        run.kill_container()  # the emulator restarts the Space on t4-small with an empty disk

        done = run.wait_terminal([task.id], 120)[0]
        assert done.status is TaskStatus.DONE, done.last_error
        run.wait_released()

    assert done.attempts == 2
    assert f"Lease of worker {first_holder} expired" in (done.last_error or "")
    # The second container resumed from the Hub mirror (its own disk started empty), not from step 0.
    events = run.events(task.id)
    folders = sorted({e["_file"].split("/")[0] for e in events})
    assert len(folders) == 2
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 2 and resumed[0]["_file"].startswith(folders[1])
    assert len([e for e in events if e.get("event") == "step"]) < 2 * steps
    # Never two holders at once: RUNNING by the first worker, back to PENDING once its lease expired, then RUNNING
    # by the next container's worker; the second claim came after the first lease had expired.
    seq = run.holders(task.id)
    running = [s for s in seq if s[0] == "RUNNING"]
    assert [h for _, _, h in running if h != first_holder] and running[0][2] == first_holder
    second = next(h for _, _, h in running if h != first_holder)
    assert ("PENDING", 1, None) in seq
    assert seq.index(("PENDING", 1, None)) < seq.index(("RUNNING", 2, second))
    last_beat = max(t[task.id].lease.expires_at for _, t in run.history()
                    if task.id in t and t[task.id].lease and t[task.id].lease.holder == first_holder)  # fmt: skip
    second_claim = min(t[task.id].started_at for _, t in run.history()
                       if task.id in t and t[task.id].lease and t[task.id].lease.holder == second)  # fmt: skip
    assert second_claim >= last_beat
    assert not run.open_paid_periods()


def test_5_release_failing_three_times_pauses_the_space_and_no_paid_period_stays_open(hub, tmp_path, tiny_sd):
    images = make_images(tmp_path / "photos", 3)
    with space(hub, tmp_path, tiny_sd) as run:
        task = run.enqueue(images)
        wait_for(lambda: run.get(task.id).status is TaskStatus.RUNNING, 60, "training on t4-small")
        hub.inject_fault("POST", rf"^/api/spaces/{run.repo}/hardware$", status=500, count=3)
        done = run.wait_terminal([task.id], 60)[0]
        runtime = wait_for(lambda: (rt := run.runtime())["stage"] == "PAUSED" and rt, 30, "the Space to be paused")

    assert done.status is TaskStatus.DONE, done.last_error
    posts = run.hardware_posts()
    assert [r.status for r in posts] == [200, 500, 500, 500]  # the upgrade, then three failed releases
    assert len(hub.requests("POST", rf"^/api/spaces/{run.repo}/pause$")) == 1
    assert runtime["hardware"]["current"] is None
    assert not run.open_paid_periods()
    assert f"paused {run.repo}: requesting cpu-basic failed" in run.log_text()
    billed = hub.billed_seconds(run.repo)
    assert billed["t4-small"] < done.finished_at - done.started_at + 30  # no paid time after the release


def test_7_two_containers_during_a_switch_train_each_task_once(hub, tmp_path, tiny_sd):
    images = make_images(tmp_path / "photos", 3)
    with space(hub, tmp_path, tiny_sd, switch_delay_s=1.0) as run:
        # A second container of the same Space, still up (the old CPU one): same secret and variables, its own disk.
        port = free_port()
        env = app_env(SPACE_ID=run.repo, HF_TOKEN=ALICE_TOKEN, HF_ENDPOINT=hub.url, **BASE_VARIABLES,
                      BASE_MODELS=str(tiny_sd), TRAINING_RECIPES_MODULES=RECIPES, GRADIO_SERVER_PORT=str(port),
                      DATA_DIR=str(run.cwd / "data" / "c-old"), ACCELERATOR="none",
                      PYTHONPATH=os.pathsep.join([str(APP.parent), *sys.path]))  # fmt: skip
        with run_app(run.cwd, env, tmp_path / "old-container.log") as old:
            wait_http(f"http://127.0.0.1:{port}/", 60, old, tmp_path / "old-container.log")
            tasks = [run.enqueue(images) for _ in range(3)]
            done = run.wait_terminal([t.id for t in tasks], 150)
            run.wait_released()
        old_log = (tmp_path / "old-container.log").read_text()

    assert [t.status for t in done] == [TaskStatus.DONE] * 3, [t.last_error for t in done]
    assert [t.attempts for t in done] == [1, 1, 1], [(t.last_error, run.holders(t.id)) for t in done]
    for t in done:
        # One trainer run per task, whichever container won the claim; one claim in the queue history.
        starts = [e for e in run.events(t.id) if e.get("event") == "phase" and e.get("phase") == "training"]
        assert len(starts) == 1, starts
        assert len([s for s in run.holders(t.id) if s[0] == "RUNNING"]) == 1
        assert len(run.queue.api.list_repo_commits(t.output_repo)) == 2  # repo creation + one upload
    assert "Traceback" not in old_log
    assert not run.open_paid_periods()
