"""Training on Hugging Face Jobs (``TRAINING_BACKEND=jobs``) on the emulator, driven by a real browser.

The emulator runs ``app.py`` as the Space ``alice/...`` on cpu-basic. Three tasks are submitted at once: two through
the queue (the real HubQueue, as a second browser tab or the CLI would) and one through the owner's form in the
browser. The Space stays on cpu-basic and runs them as Jobs, two at a time (MAX_PARALLEL_JOBS=2): each Job runs
``python -m scheduler run-task`` from this checkout (the emulator's stand-in for the Space's image), claims its task,
trains the tiny model with the real LoRA recipe, uploads it and completes the task. The Run tab shows the two running
tasks side by side; an anonymous visitor sees none of it. The Space never asks for hardware, the Jobs ledger has
one period per task, and the queue's billing records each Job's period.
"""

from __future__ import annotations

import re
import uuid

import pytest
from huggingface_hub import HfApi

from scheduler.queue.hub import HubQueue
from scheduler.retry import RetryPolicy
from scheduler.task import Task, TaskStatus
from tests.conftest import ALICE_TOKEN
from tests.e2e.harness import (
    APP,
    browser,
    create_app_space,
    fill_form,
    free_port,
    open_page,
    shot,
    sign_in_owner,
    wait_for,
    wait_http,
)
from tests.faults.space import tiny_params
from tests.test_jobs_backend import max_concurrency
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]

FLAVOR = "t4-small"  # a GPU flavor: the emulator runs its Jobs on this machine's CPU


def diagnosis(hub, repo: str, queue: HubQueue) -> str:
    """The tasks, the Space's Jobs and the tails of their logs and of the Space's (printed when the test fails)."""
    lines = [f"task {t.id} {t.status.value} attempts={t.attempts} error={(t.last_error or '')[:300]!r}" for t in queue.list()]
    for job in hub.jobs("alice"):
        if (job.get("labels") or {}).get("dreambooth-space") == repo:
            lines.append(f"job {job['id']} {job['labels']['dreambooth-task']} {job['status']}")
            lines += ["    " + line for line in hub.job_log(job["id"]).splitlines()[-15:]]
    logs = hub.space_logs(repo)
    lines += ["space: " + line for line in (logs[-1].read_text(errors="replace").splitlines()[-30:] if logs else [])]
    return "\n".join(lines)


def test_three_tasks_train_as_two_parallel_jobs_then_one_while_the_space_stays_on_cpu(hub, tiny_sd, tmp_path):
    from playwright.sync_api import expect

    repo = f"alice/jobs-{uuid.uuid4().hex[:6]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cwd = tmp_path / "space"
    cwd.mkdir()
    # The Jobs' disk, and one torch thread per Job: two trainers and the browser share this machine's cores.
    hub.configure_jobs(scheduling_s=1.0, flavor_env={FLAVOR: {"DATA_DIR": str(tmp_path / "job-data"), "OMP_NUM_THREADS": "1"}})
    create_app_space(
        hub, repo, cwd, port, switch_delay_s=2.0,
        variables={"TRAINING_BACKEND": "jobs", "MAX_PARALLEL_JOBS": "2", "BASE_MODELS": str(tiny_sd),
                   "POLL_INTERVAL_S": "1", "LEASE_S": "20", "TRAINING_RECIPES_MODULES": "tests.faults.recipes"},
        env={"PYTHONPATH": str(APP.parent), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    queue = HubQueue(api, f"{repo}-queue", retry=RetryPolicy(attempts=8, base_s=0.05, max_s=0.5))
    images = make_images(tmp_path / "photos", 3, size=128)

    def queued_task(prompt: str) -> Task:
        # The real LoRA recipe, pausing after each step, so that the two Jobs are seen training side by side.
        task = Task(instance_prompt=prompt, submitted_by="alice", base_model=str(tiny_sd), recipe="faults-slow-lora",
                    params=tiny_params(steps=24), hardware=FLAVOR)  # fmt: skip
        task.output_repo = f"alice/jobs-e2e-{task.id}"
        return task

    try:
        hub.wait_for_stage(repo, "RUNNING", timeout_s=60)
        wait_http(url, 90)
        with browser() as b:
            page = open_page(b, url)
            sign_in_owner(page)
            # The form offers the Jobs flavors (an H200 too) and says where training runs.
            hardware = page.locator("#hardware-choice")
            expect(hardware).to_contain_text("trains on Hugging Face Jobs, 2 at once")
            expect(page.locator("#estimate")).to_contain_text("as a Hugging Face Job on Nvidia T4 small", timeout=30_000)
            fill_form(page, images, "a photo of sks dog", steps=4)

            # Three tasks at once: two through the queue, then the form's.
            queued = [queue.enqueue(queued_task(p), images) for p in ("a photo of zwx cat", "a photo of qpx toy")]
            page.get_by_role("button", name="Train").click()
            message = page.locator("#submit-message")
            expect(message).to_have_text(re.compile(r"Task \w+ queued with 3 photos\. It trains as a Hugging Face Job"),
                                         timeout=30_000)  # fmt: skip
            form_id = re.search(r"Task (\w+) queued", message.inner_text()).group(1)
            ids = [t.id for t in queued] + [form_id]

            page.get_by_role("tab", name="Run").click()
            cards = page.locator("#jobs-panels .job-card")
            expect(cards).to_have_count(2, timeout=120_000)  # the two oldest train at once, each in its own Job
            for task in queued:
                expect(page.locator(f'#jobs-panels .job-card[data-task="{task.id}"]')).to_be_visible()
            expect(page.locator("#jobs-panels")).to_contain_text("stage RUNNING", timeout=60_000)
            for task in queued:  # each panel follows its task's heartbeats (every 10 s with LEASE_S=20)
                card = page.locator(f'#jobs-panels .job-card[data-task="{task.id}"]')
                expect(card).to_contain_text(re.compile(r"[1-9]\d* / 24 steps"), timeout=90_000)
            expect(page.locator("#jobs-panels")).to_contain_text(f"{form_id}")  # the third one waits, and says why
            expect(page.locator("#jobs-panels")).to_contain_text("Job slots are busy")
            expect(page.locator("#run-phase")).to_contain_text("2 of 2")
            shot(page, "jobs-two-running")
            print("Run tab at the screenshot:\n" + page.locator("#jobs-panels").inner_text())
            page.close(run_before_unload=False)  # leave the cores to the Jobs

            def all_ended() -> list[Task] | None:
                tasks = [queue.get(i) for i in ids]
                return tasks if all(t.status.terminal for t in tasks) else None

            done = wait_for(all_ended, 480, "the three tasks to end", every=1.0)

            # An anonymous visitor (a fresh browser context) sees the public header, and nothing of the tasks or Jobs.
            page = open_page(b, url)
            expect(page.locator("#hardware")).to_contain_text("training runs on Hugging Face Jobs", timeout=30_000)
            page.get_by_role("tab", name="Run").click()
            expect(page.get_by_text("Sign in as an allowed user to follow training runs.")).to_be_visible()
            page.wait_for_timeout(3_000)  # a few refreshes of the timer
            expect(page.locator("#jobs-panels .job-card")).to_have_count(0)
            content = page.content()
            assert not [i for i in ids if i in content] and "zwx cat" not in content and "Job slots" not in content
            shot(page, "jobs-anonymous")

        def job_periods() -> list | None:  # recorded by the Space once it saw each Job end
            found = [p for p in queue.list_with_billing()[1] if (p.closed_by or "").startswith("job ")]
            return found if len(found) >= 3 else None

        periods = wait_for(job_periods, 30, "the Job periods in the queue's billing")
    except Exception:
        print(diagnosis(hub, repo, queue))
        raise
    finally:
        hub.stop_space(repo)

    # All DONE, each trained once, with its model uploaded.
    assert [t.status for t in done] == [TaskStatus.DONE] * 3, [t.last_error for t in done]
    assert all(t.attempts == 1 and t.result_url for t in done)
    for task in done:
        files = api.list_repo_files(task.output_repo)
        assert any(f.endswith(".safetensors") for f in files), files
    # The Jobs: one per task, two at once then one, on the task's flavor, this Space's image.
    jobs = [j for j in hub.jobs("alice") if (j.get("labels") or {}).get("dreambooth-space") == repo]
    assert sorted(j["labels"]["dreambooth-task"] for j in jobs) == sorted(ids)
    assert all(j["spaceId"] == repo and j["flavor"] == FLAVOR for j in jobs)
    ledger = [p for p in hub.jobs_ledger("alice") if p["labels"].get("dreambooth-space") == repo]
    assert len(ledger) == 3 and max_concurrency(ledger) == 2
    third = next(p for p in ledger if p["labels"]["dreambooth-task"] == form_id)
    firsts = [p for p in ledger if p is not third]
    assert max(p["started_at"] for p in firsts) < min(p["ended_at"] for p in firsts)  # the first two overlapped
    assert third["started_at"] >= min(p["ended_at"] for p in firsts) - 0.5  # the third waited for a free slot
    # The Space never left cpu-basic: no hardware request, no paid period in its ledger.
    assert hub.requests("POST", rf"^/api/spaces/{repo}/hardware$") == []
    assert {p["hardware"] for p in hub.ledger(repo)} - {None} == {"cpu-basic"}  # (None: stopped at the end)
    assert set(hub.billed_seconds(repo)) <= {"cpu-basic"}
    # The queue's billing holds each Job's period (its task's cost), recorded once each.
    assert sorted(p.claims[0].task_id for p in periods) == sorted(ids)
