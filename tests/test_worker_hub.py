"""The worker with HubQueue + SpaceHardware on the emulator: refused GPU requests and the idle request budget."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

from huggingface_hub import HfApi

from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN
from tests.polling import wait_for
from tests.tiny_models import make_images


def space_worker(hub, poll_s: float = 0.3):
    repo = f"alice/worker-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN, switch_delay_s=0.2)
    hub.wait_for_stage(repo, "RUNNING", timeout_s=10)
    settings = load_settings({"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "POLL_INTERVAL_S": str(poll_s), "RETRY_BASE_S": "0.01"})  # fmt: skip
    queue = make_queue(settings)
    return repo, queue, Worker(settings, queue, make_hardware(settings))


def test_refused_gpu_request_is_stored_on_the_task_and_not_retried_in_a_loop(hub, tmp_path):
    repo, queue, worker = space_worker(hub)
    task = queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model="m"),
                         make_images(tmp_path, 3, size=128))  # fmt: skip
    hub.inject_fault("POST", rf"^/api/spaces/{repo}/hardware$", status=402, count=5,
                     body='{"error": "You must add a payment method to your account to upgrade your space"}')  # fmt: skip

    action, _ = worker.step()
    assert action.kind.value == "request_hardware"
    for _ in range(3):
        worker.step()

    held = queue.get(task.id)
    assert held.status is TaskStatus.PENDING
    assert "refused" in (held.note or "") and "payment" in held.note.lower()
    assert "payment" in worker.status.snapshot().message.lower()  # the run view shows why nothing happens
    assert len(hub.requests("POST", rf"^/api/spaces/{repo}/hardware$")) == 1
    assert hub.space_runtime(repo)["hardware"]["current"] == "cpu-basic"
    assert queue.list_with_billing()[1] == []  # nothing is billed: no GPU period was opened


def test_a_granted_gpu_request_opens_a_period_and_a_later_cpu_container_closes_one_left_open(hub, tmp_path):
    repo, queue, worker = space_worker(hub)
    task = queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model="m"),
                         make_images(tmp_path, 3, size=128))  # fmt: skip
    action, _ = worker.step()
    assert action.kind.value == "request_hardware"
    [post] = hub.requests("POST", rf"^/api/spaces/{repo}/hardware$")
    [period] = queue.list_with_billing()[1]
    assert period.hardware == "t4-small" and period.is_open and period.claims == []
    assert post.time - 1.0 < period.requested_at <= post.time  # taken just before the request was sent
    worker.step()  # the switch is under way: this container waits and leaves the period open
    assert queue.list_with_billing()[1][0].is_open

    # The GPU container dies before it closes the period, and the Space ends up on cpu-basic again.
    wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == "t4-small", 10, "the switch to t4-small")
    HfApi(endpoint=hub.url, token=ALICE_TOKEN).request_space_hardware(repo, "cpu-basic")
    wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == "cpu-basic", 10, "the switch back")
    queue.cancel(task.id)
    found_at = time.time()
    fresh = Worker(worker.settings, make_queue(worker.settings), make_hardware(worker.settings))  # the new container
    fresh.step()
    [closed] = queue.list_with_billing()[1]
    assert closed.closed_by == "recovered" and found_at <= closed.released_at <= time.time()
    fresh.step()
    assert queue.list_with_billing()[1] == [closed]  # closed once


def test_the_header_shows_a_granted_request_with_the_hubs_answer_at_once(hub, tmp_path):
    """The header says "moving to" with the stage the Hub answered the request with (issue 21, item 11), without
    waiting for the worker's next runtime read (a poll later)."""
    from ui.layout import header_text

    repo, queue, worker = space_worker(hub)
    queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model="m"),
                  make_images(tmp_path, 3, size=128))  # fmt: skip
    hub.clear_requests()

    action, _ = worker.step()

    assert action.kind.value == "request_hardware"
    hw = worker.status.snapshot().hardware
    assert (hw.current, hw.requested, hw.stage) == ("cpu-basic", "t4-small", "RUNNING_BUILDING")
    [post] = hub.requests("POST", rf"^/api/spaces/{repo}/hardware$")
    reads_after = [r for r in hub.requests("GET", rf"^/api/spaces/{repo}/runtime$") if r.time > post.time]
    assert reads_after == []  # the request's own answer: no extra runtime read
    ctx = SimpleNamespace(settings=worker.settings, local=False)
    assert header_text(ctx, hw) == "**Hardware:** CPU basic → **moving to Nvidia T4 small** · stage RUNNING_BUILDING"


def test_idle_worker_stays_under_one_hub_request_per_poll_interval(hub, tmp_path):
    repo, queue, worker = space_worker(hub, poll_s=0.3)
    # The steady state of a used Space: a queue file whose tasks are all finished.
    task = queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model="m"),
                         make_images(tmp_path, 3, size=128))  # fmt: skip
    queue.cancel(task.id)
    hub.clear_requests()
    worker.start()
    time.sleep(3.0)
    worker.stop()
    loops = worker.status.snapshot().loops
    # Only this worker's traffic: the session's emulator also serves other tests' Spaces.
    served = [r for r in hub.requests() if repo in r.path]  # the Space and its "<repo>-queue" dataset
    assert loops >= 3
    # One request per poll interval at most (plus one for the loop in flight when stopped).
    assert len(served) <= 3.0 / 0.3 + 1, [(r.method, r.path) for r in served]


def test_an_idle_worker_follows_the_space_until_its_stage_settles(hub):
    repo = f"alice/worker-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN, switch_delay_s=1.0, app_start_s=1.0)  # BUILDING, APP_STARTING...
    settings = load_settings({"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "POLL_INTERVAL_S": "0.3", "RETRY_BASE_S": "0.01"})  # fmt: skip
    queue = make_queue(settings)
    worker = Worker(settings, queue, make_hardware(settings))
    worker.start()
    try:
        first = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            hw = worker.status.snapshot().hardware
            first = first or (hw.stage if hw else None)
            if hw is not None and hw.stage == "RUNNING":
                break
            time.sleep(0.2)
        # No task at all: still, the header must not keep showing a stage the Space has left.
        assert first in ("BUILDING", "APP_STARTING") and hw is not None and hw.stage == "RUNNING", (first, hw)
    finally:
        worker.stop()


def test_the_stage_shown_while_training_follows_the_space(hub, tmp_path, tiny_sd):
    """Training starts while the Space is still APP_STARTING; the header must show RUNNING once it is."""
    repo = f"alice/worker-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN, switch_delay_s=0.2, app_start_s=3.0)
    hub.wait_for_stage(repo, "APP_STARTING", timeout_s=10)
    settings = load_settings({"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "POLL_INTERVAL_S": "0.3",
                              "RETRY_BASE_S": "0.01", "ALLOW_CPU_TRAINING": "1", "BASE_MODELS": str(tiny_sd)})  # fmt: skip
    queue = make_queue(settings)
    # A CPU task (this container is cpu-basic) whose stand-in trainer never ends: training outlasts APP_STARTING.
    task = queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model=str(tiny_sd),
                              recipe="test-hang", hardware="cpu-basic", params={"steps": 4, "resolution": 64}),
                         make_images(tmp_path / "photos", 3, size=64))  # fmt: skip
    worker = Worker(settings, queue, make_hardware(settings), recipes_modules=("tests.test_worker_recipes",),
                    kill_grace_s=2.0)  # fmt: skip
    worker.start()
    try:
        started = wait_for(
            lambda: worker.status.snapshot().task_id == task.id and worker.status.snapshot(), 30, "the claim"
        )
        assert started.hardware is not None and started.hardware.stage == "APP_STARTING"
        wait_for(lambda: worker.status.snapshot().phase == "training", 60, "the trainer's training phase")
        shown = wait_for(lambda: (s := worker.status.snapshot()).hardware.stage == "RUNNING" and s, 15, "RUNNING shown")
        assert shown.phase == "training" and queue.get(task.id).status is TaskStatus.RUNNING
    finally:
        worker.stop()
