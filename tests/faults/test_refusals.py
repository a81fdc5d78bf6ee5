"""Scenarios 6 and 12 of issue 6: the Hub refuses the GPU (402, 403 "add a payment method", no capacity), and the
app is given someone else's Space id. The app runs as a Space on the emulator (tests/faults/space.py)."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import HfApi

from scheduler.task import TaskStatus
from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.e2e.harness import wait_http
from tests.faults.space import space, wait_for
from tests.tiny_models import make_images

pytestmark = pytest.mark.slow

REFUSALS = [
    (402, '{"error": "Payment Required"}', "requires a payment method", "settings/billing"),
    (403, '{"error": "You must add a payment method to your account to upgrade your space\'s hardware."}',
     "requires a payment method", "Add a payment method"),
    (400, '{"error": "Scheduling failure: not enough hardware capacity"}', "no Nvidia T4 small capacity",
     "Choose another GPU flavor"),
]  # fmt: skip


def test_6_refused_gpu_keeps_the_task_pending_with_reason_and_fix_and_sends_one_request(hub, tmp_path, tiny_sd):
    images = make_images(tmp_path / "photos", 3)
    with space(hub, tmp_path, tiny_sd) as run:
        for n, (status, body, reason, fix) in enumerate(REFUSALS, start=1):
            hub.inject_fault("POST", rf"^/api/spaces/{run.repo}/hardware$", status=status, count=10, body=body)
            task = run.enqueue(images)
            held = wait_for(lambda t=task: (got := run.get(t.id)).note and got, 30, f"the refusal note ({status})")
            assert held.status is TaskStatus.PENDING and held.attempts == 0
            assert reason in held.note and fix in held.note, held.note
            # The UI shows the reason and the fix (the refresh handler's queue table and run view).
            text = run.ui_text(fix)
            assert reason in text
            # No loop: one request per submission, none more while the worker keeps polling.
            time.sleep(3 * 0.5 * 2)
            assert len(run.hardware_posts()) == n
            hub.clear_faults()
        assert run.runtime()["hardware"]["current"] == "cpu-basic"
    assert [t.status for t in run.tasks()] == [TaskStatus.PENDING] * 3
    assert not run.gpu_containers() and not run.open_paid_periods()


def test_12_someone_elses_space_id_shows_a_setup_page_and_touches_nothing(hub, tmp_path, tiny_sd):
    # A Space owned by bob whose HF_TOKEN secret is alice's (a duplicate that kept the original's id, in effect).
    with space(hub, tmp_path, tiny_sd, owner_token=BOB_TOKEN, hf_token=ALICE_TOKEN) as run:
        wait_http(run.url, 60)
        page = run.get_page("config")
        time.sleep(2)  # a few poll intervals: a worker, if any, would have acted
        log = run.log_text()
    assert "The token does not belong to this Space's owner" in page
    assert "Save a write token of the account (or organization) that owns this Space" in page
    assert not run.hardware_posts()
    assert not hub.requests("POST", rf"^/api/spaces/{run.repo}/(pause|restart|sleeptime)$")
    assert "scheduler.worker" not in log  # no worker started
    assert not HfApi(endpoint=hub.url, token=BOB_TOKEN).repo_exists(f"{run.repo}-queue", repo_type="dataset")
    assert not HfApi(endpoint=hub.url, token=ALICE_TOKEN).repo_exists(f"alice/{run.repo.split('/')[1]}-queue", repo_type="dataset")
