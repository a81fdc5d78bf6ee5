"""The Queue tab's "Your tasks" in the visitor-pays mode (``ui.visitor_tasks``, ``scheduler.visitor_follow``; issue
25), through the real Gradio handlers of the built app against the emulator, with visitors signed in through OAuth
(``tests.visitor_app``): each visitor lists, cancels and retries their own tasks and Jobs with their own token, and
nobody else (the Space's owner included) sees or touches them.

The Jobs run the real in-Job entry point (``python -m scheduler run-task``) from this checkout where a test needs
them to run: ``faults-slow-lora`` (the real LoRA recipe on the tiny model, pausing after each step) where a Job is
killed between checkpoints, ``test-slow`` (a stand-in trainer that only reports steps) where the training itself does
not matter. Those tasks are put in the visitor's queue with ``scheduler.visitor_queue`` (what the Train button does,
with a recipe the form does not offer); everything after that goes through the page's handlers. A Job is killed with
SIGKILL to its processes (a crash, as the OOM killer does), as tests/test_jobs_backend.py does.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from huggingface_hub import HfApi

from scheduler import visitor_queue as vq
from scheduler.queue.hub import HubQueue
from scheduler.task import Task, TaskStatus
from scheduler.visitor_token import read_visitor_token
from tests import visitor_app
from tests.conftest import ALICE_TOKEN
from tests.polling import wait_for
from tests.test_jobs_backend import kill_task_processes
from tests.tiny_models import make_images
from tests.visitor_app import FULL, Visitor, open_space_app, run_handler, train, visitor
from ui.visitor_tasks import NO_TASKS, SIGN_IN

pytestmark = pytest.mark.slow

open_space = visitor_app.open_space  # the fixture: Jobs held in SCHEDULING
FLAVOR = "t4-small"
RECIPES = "tests.test_worker_recipes,tests.faults.recipes"


@pytest.fixture
def training_space(hub, tmp_path, tiny_sd):
    """The same Space, whose visitors' Jobs run (on this machine's CPU) with the test recipes; the Jobs' disk."""
    job_data = tmp_path / "job-data"
    hub.configure_jobs(scheduling_s=0.3, flavor_env={FLAVOR: {"DATA_DIR": str(job_data)}})
    with open_space_app(hub, tmp_path, tiny_sd, TRAINING_RECIPES_MODULES=RECIPES, LEASE_S="20",
                        POLL_INTERVAL_S="0.5") as app:  # fmt: skip
        yield app, job_data


def texts(values: list[Any]) -> str:
    """Everything the handlers sent back, as text (a component update by its arguments)."""
    return " ".join(str(getattr(v, "constructor_args", v)) for v in values)


def mine(app, v: Visitor | None, action: str = "my_tasks", task_id: str | None = None) -> list[Any]:
    """Press Refresh (``my_tasks``), Cancel (``my_cancel``) or Retry (``my_retry``) in "Your tasks" as ``v``: the
    table's HTML, the picker's update, the message; ``v``'s token is in none of them."""
    values = run_handler(app.demo, action, [task_id], v)
    assert v is None or v.token not in texts(values)
    return values


def choices(update: Any) -> list[str]:
    return [c[1] if isinstance(c, tuple) else c for c in update.constructor_args["choices"]]


def owner_signed_in() -> Visitor:
    """alice, the Space's owner, signed in (her token is also the Space's HF_TOKEN)."""
    return Visitor("alice", ALICE_TOKEN, " ".join(FULL), time.time() + 8 * 3600)


def queued(hub, app, v: Visitor, tmp: Path, recipe: str, max_attempts: int | None = None, **params) -> Task:
    """A task of ``v`` in their queue repo and its Job started, as the Train button does (with a test recipe)."""
    signin = SimpleNamespace(token=v.token, scope=v.scope, expires_at=v.expires_at)
    vt = read_visitor_token(signin, endpoint=hub.url)
    task = Task(instance_prompt="a photo of sks dog", submitted_by="?", base_model=app.settings.base_models[0],
                recipe=recipe, hardware=FLAVOR, max_attempts=max_attempts or app.settings.max_attempts,
                params={"resolution": 64, **params})  # fmt: skip
    task = vq.submit(v.token, vt, app.settings, task, make_images(tmp / f"photos-{task.id}", 2, size=64))
    assert vq.dispatch(v.token, vt, app.settings, task.id).created
    return task


def stored(hub, v: Visitor, task_id: str) -> Task:
    """The task as the visitor's queue repo holds it (read with their token, outside the app)."""
    return HubQueue(HfApi(endpoint=hub.url, token=v.token), vq.visitor_queue_repo(v.name)).get(task_id)


def job_stage(hub, v: Visitor, job_id: str) -> str:
    return next(j["status"]["stage"] for j in hub.jobs(v.name) if j["id"] == job_id)


# ------------------------------------------------------------------------------ each visitor sees only their own
def test_a_visitor_sees_their_task_and_job_and_nobody_else_sees_or_touches_them(hub, open_space, tmp_path):
    a, b = visitor(hub), visitor(hub)
    answer = train(open_space, tmp_path, a)
    [job] = hub.jobs(a.name)
    task_id = answer.split("**Task `")[1].split("`")[0]
    table, pick, message = mine(open_space, a)
    assert f'data-task="{task_id}"' in table and f"{job['id']} SCHEDULING" in table and "PENDING" in table
    assert "a photo of sks dog" in table and choices(pick) == [task_id]
    assert "1 task(s)" in message and "1 Job(s) alive" in message

    hub.clear_requests()
    for other in (b, owner_signed_in()):  # another visitor, and the Space's owner: none of it
        table, pick, message = mine(open_space, other)
        assert task_id not in table and job["id"] not in table and NO_TASKS in table and choices(pick) == []
        for action in ("my_cancel", "my_retry"):
            _, _, said = mine(open_space, other, action, task_id)
            assert "is not one of your tasks: nothing was changed" in said, said
    writes = [r for r in hub.requests() if r.method in ("POST", "PUT", "DELETE") and "whoami" not in r.path]
    assert writes == [], writes  # no Job cancelled or started, no repo created or changed
    assert not HfApi(endpoint=hub.url, token=b.token).repo_exists(vq.visitor_queue_repo(b.name), repo_type="dataset")
    assert stored(hub, a, task_id).status is TaskStatus.PENDING and job_stage(hub, a, job["id"]) == "SCHEDULING"
    tick = next(f.fn for f in open_space.demo.fns.values() if getattr(f.fn, "__name__", "") == "on_tick")
    owners_queue = run_handler(open_space.demo, None, [None, [], {}], owner_signed_in(), fn=tick)[1]
    assert task_id not in str(owners_queue)  # the owner's own queue table does not hold it either

    hub.clear_requests()
    assert task_id not in str(run_handler(open_space.demo, None, [None, [], {}], a, fn=tick))
    assert hub.requests() == []  # the 2 s timer asks the Hub nothing for a visitor's tasks
    for action in ("my_tasks", "my_cancel", "my_retry"):  # anonymous: a sign-in prompt and no request at all
        table, pick, message = mine(open_space, None, action, task_id)
        assert message == SIGN_IN and SIGN_IN in table and choices(pick) == []
    assert hub.requests() == []


def test_cancel_on_the_page_cancels_the_task_and_its_job_in_the_visitors_account(hub, open_space, tmp_path):
    v = visitor(hub)
    train(open_space, tmp_path, v)
    [job] = hub.jobs(v.name)
    task_id = job["labels"]["dreambooth-task"]
    assert mine(open_space, v, "my_cancel", None)[2] == "Pick one of your tasks first."
    table, _, message = mine(open_space, v, "my_cancel", task_id)
    assert f"Task `{task_id}` is CANCELLED; its Job in your account was cancelled." == message
    assert "CANCELLED" in table and f"{job['id']} CANCELED" in table
    assert stored(hub, v, task_id).status is TaskStatus.CANCELLED and job_stage(hub, v, job["id"]) == "CANCELED"


def test_a_task_refused_for_no_credit_starts_on_retry_once_the_credit_is_back(hub, open_space, tmp_path):
    v = visitor(hub)
    hub.set_credit(v.name, 0)
    answer = train(open_space, tmp_path, v)
    assert "**Its Job was not started.**" in answer and hub.jobs(v.name) == []
    task_id = answer.split("**Task `")[1].split("`")[0]
    table, _, _ = mine(open_space, v)
    assert "PENDING" in table and "HTTP 402" in table and "settings/billing" in table  # the reason and the fix
    hub.set_credit(v.name, None)
    table, _, message = mine(open_space, v, "my_retry", task_id)
    [job] = hub.jobs(v.name)
    assert f"runs again as Hugging Face Job `{job['id']}` (started)" in message, message
    assert job["labels"]["dreambooth-task"] == task_id and f"{job['id']} SCHEDULING" in table
    task = stored(hub, v, task_id)
    assert task.status is TaskStatus.PENDING and task.note is None  # (its last_error keeps the refusal, as any retry)


# ------------------------------------------------------------------------------ a Job that ends under its task
def test_refresh_requeues_a_task_whose_job_died_and_retry_resumes_from_the_mirrored_checkpoint(hub, training_space,
                                                                                                tmp_path):  # fmt: skip
    app, job_data = training_space
    v = visitor(hub)
    task = queued(hub, app, v, tmp_path, "faults-slow-lora", steps=8, rank=4, checkpoint_every=2)
    api = HfApi(endpoint=hub.url, token=v.token)
    ckpt = f"checkpoints/{task.id}/step-00000002/state.json"
    wait_for(lambda: ckpt in api.list_repo_files(vq.visitor_queue_repo(v.name), repo_type="dataset"), 120,
             "the step-2 checkpoint in the visitor's queue repo")  # fmt: skip
    [first] = hub.jobs(v.name)
    assert kill_task_processes(task.id) >= 1
    wait_for(lambda: job_stage(hub, v, first["id"]) == "ERROR", 20, "the first Job to end in ERROR")
    assert stored(hub, v, task.id).status is TaskStatus.RUNNING  # nothing follows the visitor's Jobs in the background
    for folder in job_data.glob("runs/*"):  # a new Job has an empty disk: only the mirror gives the checkpoint back
        shutil.rmtree(folder)

    table, _, _ = mine(app, v)
    requeued = stored(hub, v, task.id)
    assert requeued.status is TaskStatus.PENDING and requeued.attempts == 1, requeued.last_error
    assert f"its Job {first['id']} ended ERROR" in (requeued.last_error or "")
    assert "PENDING" in table and f"{first['id']} ERROR" in table and len(hub.jobs(v.name)) == 1  # no Job started
    hub.clear_requests()
    mine(app, v)  # a second Refresh finds nothing to do: no change
    assert [r for r in hub.requests() if r.method in ("POST", "PUT", "DELETE") and "whoami" not in r.path] == []

    _, _, message = mine(app, v, "my_retry", task.id)
    second = next(j for j in hub.jobs(v.name) if j["id"] != first["id"])
    assert f"Job `{second['id']}` (started)" in message, message
    done = wait_for(lambda: (t := stored(hub, v, task.id)).status.terminal and t, 150, "the retried task to end")
    log = hub.job_log(second["id"])
    assert done.status is TaskStatus.DONE and done.attempts == 2, (done.last_error, log[-2000:])
    assert "resumed from the checkpoint of step" in log, log[-2000:]
    assert int(log.split("resumed from the checkpoint of step ")[1].split()[0]) >= 2
    table, _, _ = mine(app, v)
    assert "DONE" in table and f'href="{done.result_url}"' in table and v.token not in log


def test_refresh_fails_a_task_out_of_attempts_whose_job_died_and_retry_starts_it_again(hub, training_space,
                                                                                        tmp_path):  # fmt: skip
    app, _ = training_space
    v = visitor(hub)
    task = queued(hub, app, v, tmp_path, "test-slow", max_attempts=1, steps=600)
    wait_for(lambda: stored(hub, v, task.id).progress.get("step", 0) >= 1, 60, "the task's first step")
    [first] = hub.jobs(v.name)
    assert kill_task_processes(task.id) >= 1
    wait_for(lambda: job_stage(hub, v, first["id"]) == "ERROR", 20, "the Job to end in ERROR")
    table, _, _ = mine(app, v)
    failed = stored(hub, v, task.id)
    assert failed.status is TaskStatus.FAILED and "Gave up after 1 of 1 attempts" in (failed.last_error or "")
    assert "FAILED" in table and "Gave up after 1 of 1 attempts" in table

    _, _, message = mine(app, v, "my_retry", task.id)
    assert "(started)" in message and len(hub.jobs(v.name)) == 2
    assert stored(hub, v, task.id).status in (TaskStatus.PENDING, TaskStatus.RUNNING)
    mine(app, v, "my_cancel", task.id)  # and the page stops it again
    assert stored(hub, v, task.id).status is TaskStatus.CANCELLED


def test_the_handlers_answer_a_cross_site_press_with_an_error(hub, open_space):
    v = visitor(hub)
    for action in ("my_tasks", "my_cancel", "my_retry"):
        with pytest.raises(gr.Error, match="another site"):
            run_handler(open_space.demo, action, ["x"], v, origin="https://evil.example")


def test_a_training_tasks_job_cell_shows_the_progress_of_its_last_heartbeat():
    """The table's Job cell of a RUNNING task (its Job alive): the heartbeat's step, loss and ETA; an ended Job or a
    task without a heartbeat shows the id and stage only."""
    from scheduler.backends.jobs import JobView
    from ui.visitor_tasks import job_cells

    running = Task(instance_prompt="p", submitted_by="v", base_model="m", params={"steps": 24})
    running.status = TaskStatus.RUNNING
    running.progress = {"step": 12, "total": 24, "loss": 0.1234, "eta_s": 120, "steps_per_s": 0.5}
    quiet = Task(instance_prompt="p", submitted_by="v", base_model="m")
    quiet.status = TaskStatus.RUNNING
    jobs = (JobView("j1", running.id, "RUNNING", created_at=1.0), JobView("j2", quiet.id, "RUNNING", created_at=2.0))
    cells = job_cells(vq.VisitorView((running, quiet), jobs))
    assert cells[running.id].startswith("j1 RUNNING · 12 / 24 steps · loss 0.1234"), cells
    assert "ETA 2 min" in cells[running.id]
    assert cells[quiet.id] == "j2 RUNNING"
    ended = job_cells(vq.VisitorView((running,), (JobView("j3", running.id, "ERROR", created_at=3.0),)))
    assert ended[running.id] == "j3 ERROR"
