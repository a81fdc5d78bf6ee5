"""The UI in Jobs mode (``TRAINING_BACKEND=jobs``): one Run panel per running task, the Jobs flavors and prices in
the form, why tasks wait (owner only), privacy over real HTTP, and Cancel in the UI cancelling the Job end to end.

The fast tests render from a ``StatusData`` as the worker fills it (tasks from the queue, ``JobView``s from
``list_jobs``). The slow ones run the real app (Gradio, HubQueue, huggingface_hub) against the emulator; the last one
also runs the real worker, whose Job runs ``python -m scheduler run-task`` as an emulator process.
"""

from __future__ import annotations

import json
import time
import uuid
from html import escape

import gradio as gr
import pytest
from huggingface_hub import HfApi

from app import create_app
from contract.events import Scores
from contract.settings import load_settings
from scheduler.backends.jobs import JobView
from scheduler.billing import Claim, GpuPeriod
from scheduler.hardware import make_hardware
from scheduler.queue import make_queue
from scheduler.status import StatusData, WorkerStatus
from scheduler.task import Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.polling import free_port, wait_for
from tests.test_security import call
from tests.tiny_models import make_images
from ui.auth import Access
from ui.context import AppContext
from ui.estimate import describe, estimate
from ui.form import build_form, form_estimate, hardware_choices
from ui.jobs_view import SIGN_IN_PROMPT, jobs_panels, wait_reasons
from ui.queue_view import HELD_FOR_OWNER, cost_usd

TOKEN = "hf_jobsuisecret0123456789abcdef"
HEARTBEAT_AT = 1796189705.0  # 2026-12-02 05:35:05 UTC
OWNER, BOB, CAROL, ANON = (Access("alice", True, True), Access("bob", True, False), Access("carol", False, False),
                           Access(None, False, False))  # fmt: skip


def jobs_settings(**env: str):
    return load_settings({"SPACE_ID": "alice/trainer", "HF_TOKEN": TOKEN, "TRAINING_BACKEND": "jobs",
                          "ALLOWED_USERS": "alice,bob", **env})  # fmt: skip


def running(submitter: str, prompt: str, step: int, hardware: str = "t4-small") -> Task:
    task = Task(instance_prompt=prompt, submitted_by=submitter, hardware=hardware, params={"steps": 10})
    task.status, task.attempts, task.started_at = TaskStatus.RUNNING, 1, time.time() - 30
    task.progress = {"phase": "training", "step": step, "total": 10, "loss": 0.25, "steps_per_s": 1.5, "eta_s": 90.0,
                     "at": HEARTBEAT_AT}  # fmt: skip
    return task


def job_of(task: Task, stage: str = "RUNNING", log: tuple[str, ...] = ()) -> JobView:
    return JobView(job_id=f"job-{task.id}", task_id=task.id, stage=stage, holder="job:x", flavor=task.hardware,
                   created_at=time.time() - 40, started_at=time.time() - 35, log_tail=log)  # fmt: skip


def two_running_and_one_waiting() -> tuple[StatusData, list[Task]]:
    dog = running("alice", "a photo of sks dog", 3)
    cat = running("bob", "a photo of zwx cat", 7, hardware="h200")
    waiting = Task(instance_prompt="a photo of qpx toy", submitted_by="alice", hardware="t4-small", params={"steps": 10})
    status = StatusData(
        tasks=[dog, cat, waiting],
        jobs=[job_of(dog, log=(f"step 3 loss 0.25 with {TOKEN}",)), job_of(cat, "SCHEDULING", ("pulling the image",))],
        job_prices={"t4-small": 0.40, "h200": 5.00}, job_prices_source="list_jobs_hardware",
    )  # fmt: skip
    return status, [dog, cat, waiting]


def test_the_owner_sees_one_panel_per_running_task_with_stage_flavor_progress_and_log():
    status, (dog, cat, waiting) = two_running_and_one_waiting()
    summary, html = jobs_panels(OWNER, status, [dog, cat, waiting], jobs_settings())
    assert "**2 of 2** Job slots busy" in summary and "list_jobs_hardware" in summary
    assert html.count('class="job-card"') == 2
    for task in (dog, cat):
        assert f'data-task="{task.id}"' in html and f"job-{task.id}" in html
    assert "stage <b>RUNNING</b>" in html and "stage <b>SCHEDULING</b>" in html
    assert "Nvidia T4 small ($0.40/h)" in html and "Nvidia H200 ($5.00/h)" in html
    assert "3 / 10 steps (30%)" in html and "7 / 10 steps (70%)" in html
    assert "loss 0.2500" in html and "1.50 steps/s" in html and "ETA 1 min" in html
    assert "Task RUNNING, attempt 1 of 2 · progress as of 05:35:05 UTC" in html  # as old as the last heartbeat
    assert "step 3 loss 0.25 with ***" in html and TOKEN not in html  # the Job's log tail, token masked
    # The third task waits, and the owner is told why: both slots are busy.
    assert f"<code>{waiting.id}</code>" in html and "all 2 Job slots are busy (MAX_PARALLEL_JOBS)" in html


def test_a_jobs_panel_shows_the_scores_its_heartbeat_carries():
    """The Job's trainer records its ``scores`` events in its WorkerStatus; the heartbeat stores them on the task (as
    JSON, through the queue) and the owner's panel shows the latest next to the base model's (issue 22, point 3)."""
    status, (dog, cat, waiting) = two_running_and_one_waiting()
    in_job = WorkerStatus()
    in_job.start_task(dog)
    in_job.record_scores(Scores(step=0, dino=0.42, clip_t=0.301, val_loss=0.2))
    dog.progress = json.loads(json.dumps(in_job.progress()))
    _, html = jobs_panels(OWNER, status, [dog, cat, waiting], jobs_settings())
    assert "Scores of the base model: DINO 0.420 · CLIP-T 0.301 · validation loss 0.2000" in html
    in_job.record_scores(Scores(step=4, dino=0.612, clip_t=0.298, val_loss=0.18))
    dog.progress = json.loads(json.dumps(in_job.progress()))
    _, html = jobs_panels(OWNER, status, [dog, cat, waiting], jobs_settings())
    assert "Scores at step 4: DINO 0.612 (base 0.420) · CLIP-T 0.298 (base 0.301)" in html
    assert html.count("job-scores") == 1  # the other task has no scores yet
    dog.progress["scores"] = {"step": "<b>x</b>", "dino": "high"}  # not scores: left out, never shown as markup
    _, html = jobs_panels(OWNER, status, [dog, cat, waiting], jobs_settings())
    assert "job-scores" not in html and "<b>x</b>" not in html and html.count('class="job-card"') == 2


def test_why_a_task_waits_names_the_cap_or_the_refusal_with_its_fix():
    status, (dog, cat, waiting) = two_running_and_one_waiting()
    settings = jobs_settings(JOBS_GPU_HOURS_PER_DAY="0.01", MAX_PARALLEL_JOBS="4")
    [(task, why)] = wait_reasons(status, settings, time.time())
    assert task.id == waiting.id and "daily cap of 0.01 GPU hours" in why and "JOBS_GPU_HOURS_PER_DAY" in why
    waiting.note = "Job for t4-small refused: Jobs need a positive credit balance (HTTP 402). Fix: Add credits ..."
    [(_, why)] = wait_reasons(status, settings, time.time())
    assert why == waiting.note
    waiting.note = None
    [(_, why)] = wait_reasons(status, jobs_settings(MAX_PARALLEL_JOBS="4"), time.time())
    assert why == "its Job starts on the next loop"


def test_an_allowed_user_sees_only_their_own_panel_and_no_reasons_and_strangers_see_nothing():
    status, tasks = two_running_and_one_waiting()
    dog, cat, waiting = tasks
    _, bob_html = jobs_panels(BOB, status, [cat], jobs_settings())
    assert cat.id in bob_html and dog.id not in bob_html and waiting.id not in bob_html
    assert "waits" not in bob_html and "sks dog" not in bob_html and TOKEN not in bob_html
    for stranger in (ANON, CAROL):
        summary, html = jobs_panels(stranger, status, [], jobs_settings())
        assert (summary, html) == (SIGN_IN_PROMPT, "")


def test_no_panel_while_nothing_trains():
    summary, html = jobs_panels(OWNER, StatusData(), [], jobs_settings())
    assert "No task is training right now." in summary and "job-card" not in html


def test_the_form_offers_the_jobs_flavors_at_the_jobs_price_and_says_the_space_stays_on_cpu(hub, tmp_path):
    names = [name for _, name in hardware_choices(True)]
    assert {"h200", "rtx-pro-6000", "t4-small", "a100-large"} <= set(names)
    assert "h200" not in [name for _, name in hardware_choices()]  # a Space cannot move to an H200
    live = dict(hardware_choices(True, {"h200": 4.5}))
    assert live["Nvidia H200 ($4.50/h)"] == "h200"

    repo = f"alice/jobsform-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "TRAINING_BACKEND": "jobs",
                              "MAX_PARALLEL_JOBS": "3", "DATA_DIR": str(tmp_path / "data")})  # fmt: skip
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    queue = make_queue(settings, api=api)
    worker = Worker(settings, queue, make_hardware(settings, api=api))  # not started
    ctx = AppContext(settings=settings, queue=queue, worker=worker, api=api)
    with gr.Blocks() as demo:
        build_form(ctx)
    [dropdown] = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "hardware-choice"]
    assert dropdown.label == "GPU (a Hugging Face Job)"
    assert "trains on Hugging Face Jobs, 3 at once" in dropdown.info and "stays on CPU" in dropdown.info
    assert "h200" in [value for _, value in dropdown.choices]
    [estimate_md] = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "estimate"]
    assert "as a Hugging Face Job on Nvidia T4 small ($0.40/h)" in estimate_md.value
    assert "fallback price table" in estimate_md.value  # the worker has not read the Hub's prices yet

    # Once the worker read the Hub's prices, the estimate costs the task at them and says where they come from.
    worker.status.update(job_prices={"h200": 6.0}, job_prices_source="list_jobs_hardware + fallback table for the rest")
    est = form_estimate(ctx, 600, "h200", "dreambooth-lora", 512, False, "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert est.usd == pytest.approx(est.total_s / 3600 * 6.0)
    text = describe(est, False, job_usd_per_hour=6.0, jobs_prices_source=worker.status.snapshot().job_prices_source)
    assert "Nvidia H200 ($6.00/h)" in text and "the Hub's Jobs prices" in text and "stays on CPU" in text
    assert est.train_s < estimate(600, "t4-small").train_s  # an H200 is not priced at the CPU's speed


def test_the_queue_costs_a_job_period_at_the_jobs_price():
    task = running("alice", "a photo of sks dog", 10)
    period = GpuPeriod(hardware="h200", requested_at=100.0, released_at=100.0 + 360, claims=[Claim(task.id, 110.0)],
                       closed_by="job j1")  # fmt: skip
    assert cost_usd(task, 1000.0, False, [period]) == pytest.approx(0.1 * 5.00)  # list price: 6 min of an H200
    assert cost_usd(task, 1000.0, False, [period], {"h200": 6.0}) == pytest.approx(0.1 * 6.0)


# ---------------------------------------------------------------------------------------- over real HTTP


@pytest.fixture
def jobs_app(hub, tmp_path):
    """The real app in Jobs mode on the emulator (worker not started); its status filled as the worker fills it."""
    repo = f"alice/jobsui-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "ALLOWED_USERS": "alice,bob", "DATA_DIR": str(tmp_path / "data"), "RETRY_BASE_S": "0.01",
                              "TRAINING_BACKEND": "jobs"})  # fmt: skip
    app = create_app(settings)
    assert not app.problems
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, **{**app.launch_options(), "server_port": port})
    try:
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.mark.slow
def test_strangers_get_no_task_log_or_job_over_http_and_the_owner_gets_the_panels(jobs_app):
    app, url = jobs_app
    status, (dog, cat, waiting) = two_running_and_one_waiting()
    dog.instance_prompt, cat.instance_prompt = "a photo of sks secret-dog", "a photo of zwx secret-cat"
    secret_log = ("secret-log-line of the Job",)
    held = Task(instance_prompt="a photo of sks bobs-held-dog", submitted_by="bob", hardware="h200", params={"steps": 4},
                note="Job for h200 refused: Jobs need a positive credit balance (HTTP 402). Fix: add credits.")  # fmt: skip
    app.worker.status.update(tasks=[*status.tasks, held], jobs=[job_of(dog, log=secret_log), job_of(cat, "SCHEDULING")],
                             job_prices=status.job_prices, job_prices_source=status.job_prices_source)  # fmt: skip
    for visitor in (None, "carol"):  # anonymous, and signed in but not allowed
        out = call(url, "on_tick", [None, [], {}], user=visitor)
        assert "event: complete" in out, out[-500:]
        for hidden in (dog.id, cat.id, waiting.id, "secret-", "job-", "SCHEDULING", "Job slots"):
            assert hidden not in out, (visitor, hidden)
        assert "Hardware" in out and "training runs on Hugging Face Jobs" in out  # the public header
    owner = call(url, "on_tick", [None, [], {}], user="alice")
    assert dog.id in owner and cat.id in owner and "secret-log-line" in owner and "Job slots busy" in owner
    assert "waits: all 2 Job slots are busy" in owner and "positive credit balance" in owner  # why each task waits
    bob = call(url, "on_tick", [None, [], {}], user="bob")  # bob submitted the cat task and the held one
    assert cat.id in bob and held.id in bob and dog.id not in bob and "secret-log-line" not in bob
    assert "waits:" not in bob and "credit" not in bob and escape(HELD_FOR_OWNER) in bob  # the owner's billing


@pytest.mark.slow
def test_cancel_in_the_ui_of_a_running_task_cancels_its_job(hub, tmp_path, tiny_sd):
    """Queue tab → Cancel (the real handler, over HTTP, as the owner) → task CANCELLED → the worker cancels the Job;
    the emulator's ledger stops billing it."""
    repo = f"alice/jobscancel-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    hub.configure_jobs(scheduling_s=0.3, flavor_env={"t4-small": {"DATA_DIR": str(tmp_path / "job-data")}})
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "DATA_DIR": str(tmp_path / "data"), "RETRY_BASE_S": "0.01", "POLL_INTERVAL_S": "0.5",
                              "LEASE_S": "30", "TRAINING_BACKEND": "jobs", "BASE_MODELS": str(tiny_sd),
                              "TRAINING_RECIPES_MODULES": "tests.test_worker_recipes"})  # fmt: skip
    app = create_app(settings)
    assert not app.problems
    task = Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model=str(tiny_sd), recipe="test-slow",
                hardware="t4-small", params={"steps": 2000, "resolution": 64}, output_repo="alice/out-cancel")  # fmt: skip
    task = app.worker.queue.enqueue(task, make_images(tmp_path / "photos", 3, size=64))
    port = free_port()
    url = app.launch(block=False, server_port=port)
    try:

        def training_job() -> dict | None:
            jobs = [j for j in hub.jobs("alice") if (j.get("labels") or {}).get("dreambooth-task") == task.id]
            running_task = app.worker.queue.get(task.id)
            ok = jobs and jobs[-1]["status"]["stage"] == "RUNNING" and running_task.status is TaskStatus.RUNNING
            return jobs[-1] if ok and (running_task.progress or {}).get("step") else None

        job = wait_for(training_job, 120, "the task to train in its Job")
        shown = call(url, "on_tick", [None, [], {}], user="alice")
        assert job["id"] in shown and "stage <b>RUNNING</b>" in shown  # the Run panel follows the Job
        out = call(url, "cancel", [task.id], user="alice", origin=url.rstrip("/"), site="same-origin")
        assert "CANCELLED" in out, out[-400:]

        def cancelled() -> dict | None:
            found = next(j for j in hub.jobs("alice") if j["id"] == job["id"])
            return found if found["status"]["stage"] == "CANCELED" else None

        wait_for(cancelled, 30, "the Job to be cancelled")
    finally:
        app.close()
    assert app.worker.queue.get(task.id).status is TaskStatus.CANCELLED
    [period] = [p for p in hub.jobs_ledger("alice") if p["job_id"] == job["id"]]
    assert period["ended_at"] is not None and period["stage"] == "CANCELED"
    assert len([j for j in hub.jobs("alice") if (j.get("labels") or {}).get("dreambooth-task") == task.id]) == 1
    assert hub.requests("POST", rf"^/api/spaces/{repo}/hardware$") == []  # the Space never asked for hardware
