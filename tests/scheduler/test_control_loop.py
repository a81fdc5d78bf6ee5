"""decide() + HubQueue + SpaceHardware together against the emulator, executed by a minimal loop written here
(the product's worker lives in scheduler/worker.py; this checks the scheduler's pieces fit, request by request)."""

from __future__ import annotations

import time
import uuid

import pytest
from huggingface_hub import HfApi

from scheduler.hardware import HardwareRefused, SpaceHardware
from scheduler.lifecycle import ActionKind, Snapshot, decide
from scheduler.retry import RetryPolicy
from scheduler.task import TaskStatus
from tests.conftest import ALICE_TOKEN
from tests.scheduler.helpers import make_images, make_task
from tests.scheduler.queues import make_hub_queue

pytestmark = pytest.mark.timeout(120)


def loop_once(queue, hardware, worker_id="w"):
    """One loop: snapshot, decide, execute the hardware/queue parts of the action. Returns the action."""
    state = hardware.state()
    snap = Snapshot(
        tasks=tuple(queue.list()), now=time.time(), worker_id=worker_id, local=False,
        current_hardware=state.current, requested_hardware=state.requested,
        accelerator=state.accelerator, gpu_visible=state.gpu_visible,
    )
    action = decide(snap)
    if action.kind is ActionKind.REQUEST_HARDWARE:
        try:
            hardware.request(action.hardware)
        except HardwareRefused as refused:
            queue.set_note(action.task_id, f"GPU request refused: {refused}")
    elif action.kind is ActionKind.RELEASE_HARDWARE:
        hardware.release()
    return action


@pytest.fixture
def setup(hub, tmp_path):
    space_id = f"alice/loop-{uuid.uuid4().hex[:8]}"
    hub.create_space(space_id, owner_token=ALICE_TOKEN, hardware="cpu-basic", switch_delay_s=30)
    hardware = SpaceHardware(HfApi(endpoint=hub.url, token=ALICE_TOKEN), space_id, retry=RetryPolicy(attempts=3, base_s=0.01), gpu_probe=lambda: False)
    queue = make_hub_queue(hub, ALICE_TOKEN)
    task = queue.enqueue(make_task(), make_images(tmp_path, 1))
    hub.clear_requests()
    return space_id, hardware, queue, task


def hardware_posts(hub, space_id):
    return hub.requests("POST", rf"^/api/spaces/{space_id}/hardware$")


def test_pending_upgrade_is_requested_once(hub, setup):
    space_id, hardware, queue, task = setup
    kinds = [loop_once(queue, hardware).kind for _ in range(5)]
    assert kinds == [ActionKind.REQUEST_HARDWARE] + [ActionKind.WAIT] * 4
    assert len(hardware_posts(hub, space_id)) == 1
    assert hub.space_runtime(space_id)["hardware"]["requested"] == "t4-small"
    assert queue.get(task.id).status is TaskStatus.PENDING


@pytest.mark.parametrize(("status", "words"), [(402, "payment method"), (403, "write token")])
def test_refused_upgrade_keeps_task_pending_with_reason_and_no_loop(hub, setup, status, words):
    space_id, hardware, queue, task = setup
    hub.inject_fault("POST", rf"^/api/spaces/{space_id}/hardware$", status=status, count=100)
    kinds = [loop_once(queue, hardware).kind for _ in range(4)]
    assert kinds == [ActionKind.REQUEST_HARDWARE] + [ActionKind.WAIT] * 3
    assert len(hardware_posts(hub, space_id)) == 1
    stored = queue.get(task.id)
    assert stored.status is TaskStatus.PENDING and stored.attempts == 0
    assert words in stored.note and stored.note == stored.last_error
    assert ALICE_TOKEN not in stored.note
    hub.clear_faults()
    queue.retry(task.id)  # the owner fixed it and presses Retry
    assert loop_once(queue, hardware).kind is ActionKind.REQUEST_HARDWARE
    assert hub.space_runtime(space_id)["hardware"]["requested"] == "t4-small"


def test_drained_gpu_is_released_once(hub, tmp_path):
    space_id = f"alice/loop-{uuid.uuid4().hex[:8]}"
    hub.create_space(space_id, owner_token=ALICE_TOKEN, hardware="t4-small", switch_delay_s=0.3)
    hub.wait_for_stage(space_id, "RUNNING", 10)
    hardware = SpaceHardware(HfApi(endpoint=hub.url, token=ALICE_TOKEN), space_id, accelerator="t4-small", retry=RetryPolicy(attempts=3, base_s=0.01), gpu_probe=lambda: True)
    queue = make_hub_queue(hub, ALICE_TOKEN)
    done = queue.enqueue(make_task(), make_images(tmp_path, 1))
    assert loop_once(queue, hardware).kind is ActionKind.CLAIM_AND_TRAIN
    queue.claim(done.id, "w", 300)
    queue.complete(done.id, "w", "https://example/m")
    hub.clear_requests()
    kinds = [loop_once(queue, hardware).kind for _ in range(3)]
    assert kinds == [ActionKind.RELEASE_HARDWARE, ActionKind.WAIT, ActionKind.WAIT]
    assert len(hardware_posts(hub, space_id)) == 1
    assert hub.space_runtime(space_id)["hardware"]["requested"] == "cpu-basic"
