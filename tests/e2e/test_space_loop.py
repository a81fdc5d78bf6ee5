"""The whole self-upgrading loop on the emulator, driven by a real browser.

The emulator runs ``app.py`` as the Space ``alice/...`` on cpu-basic (HF_TOKEN secret = alice's token). The browser
signs in (Gradio's local OAuth mock resolves the user through the emulator's whoami), uploads 3 photos and submits
two tasks while the Space is still on the CPU. The app asks for t4-small once; the emulator restarts it there
(CUDA is absent, ALLOW_CPU_TRAINING=1 lets the tiny model train on the CPU); both tasks train in that one GPU
period, upload their LoRA, card and samples; the app asks for cpu-basic once and the emulator moves it back. The
queue's cost of the two tasks is the GPU time the emulator billed, and each task has its run record.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from contract.flavors import FLAVORS
from contract.scores import SCORES_NAME, ScoreRecord
from contract.settings import load_settings
from scheduler.queue import make_queue
from scheduler.task import TaskStatus
from tests.conftest import ALICE_TOKEN
from tests.e2e.harness import (
    DESKTOP,
    browser,
    create_app_space,
    fill_form,
    free_port,
    shot,
    upload_photos,
    wait_for,
    wait_http,
)
from tests.tiny_models import make_images
from ui.estimate import auto_steps
from ui.queue_view import cost_usd

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SWITCH_DELAY_S = 8.0


def hardware_sequence(ledger: list[dict]) -> list[str]:
    """Flavors of the ledger's periods, consecutive repeats and unknown (None) collapsed."""
    seq: list[str] = []
    for period in ledger:
        hw = period["hardware"]
        if hw and (not seq or seq[-1] != hw):
            seq.append(hw)
    return seq


def open_served_by(page, url: str, hardware: str, timeout: float) -> None:
    """Load ``url`` until the page comes from the container on ``hardware`` (its header names it).

    During a switch the old container keeps serving until the emulator stops it, and a page it served stops
    updating when it goes; a real Space's front end reloads the app the same way once the new one is up.
    """
    from playwright.sync_api import expect

    deadline = time.monotonic() + timeout
    while True:
        wait_http(url, max(1.0, deadline - time.monotonic()))
        try:
            page.goto(url)
            # "CPU basic → moving to Nvidia T4 small" is the old container; the new one starts with the new flavor.
            expect(page.locator("#hardware")).to_have_text(re.compile(rf"Hardware:\s*{re.escape(hardware)}"), timeout=10_000)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def space_log_tail(hub, repo: str, n: int = 60) -> str:
    logs = hub.space_logs(repo)
    return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-n:]) if logs else "(no log)"


def test_space_upgrades_trains_two_tasks_in_one_gpu_period_and_goes_back(hub, tiny_sd, tiny_captioner, tmp_path):
    from playwright.sync_api import expect

    repo = f"alice/trainer-{uuid.uuid4().hex[:6]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cwd = tmp_path / "space"
    cwd.mkdir()
    create_app_space(
        hub, repo, cwd, port, switch_delay_s=SWITCH_DELAY_S,
        # No scoring model: the scored task records its validation loss per checkpoint and makes no image for the
        # scores (sampling at 256 px on one CPU thread costs minutes); image scores: tests/test_scores_run.py.
        variables={"ALLOW_CPU_TRAINING": "1", "BASE_MODELS": str(tiny_sd), "POLL_INTERVAL_S": "1", "LEASE_S": "120",
                   "SCORING_DINO_MODEL": "none", "SCORING_CLIP_MODEL": "none", "CAPTION_MODEL": str(tiny_captioner)},
        # One torch thread: the CPU-trained "GPU" then leaves a core to the browser (screenshots while training).
        env={"OMP_NUM_THREADS": "1"},
    )
    images = make_images(tmp_path / "photos", 3, size=128)
    hub_requests_before = len(hub.requests("POST", rf"^/api/spaces/{repo}/hardware$"))
    try:
        hub.wait_for_stage(repo, "RUNNING", timeout_s=60)
        wait_http(url, 90)
        with browser() as b:
            page = b.new_page(viewport=DESKTOP)
            page.set_default_navigation_timeout(60_000)  # two cores: the app, a trainer and the browser share them
            page.goto(url)
            expect(page.get_by_text("Sign in with Hugging Face to submit training tasks.")).to_be_visible(timeout=30_000)
            expect(page.get_by_role("button", name="Train")).to_be_disabled()
            shot(page, "space-anonymous")

            page.get_by_role("button", name=re.compile("Sign in with Hugging Face")).click()
            expect(page.get_by_role("button", name=re.compile(r"Logout \(alice\)"))).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Signed in as alice (owner).")).to_be_visible(timeout=30_000)
            expect(page.get_by_role("button", name="Train")).to_be_enabled()

            fill_form(page, images, "a photo of sks dog", steps=4, score=True)  # the model repo's scores below
            expect(page.get_by_label("Output model repo")).to_have_value("alice/dreambooth-sks-dog")
            shot(page, "space-form-filled")
            page.get_by_role("button", name="Train").click()
            message = page.locator("#submit-message")
            expect(message).to_have_text(re.compile(r"Task \w+ queued with 3 photos\. The Space is moving to Nvidia T4 small"),
                                         timeout=30_000)  # fmt: skip
            first_message = message.inner_text()
            shot(page, "space-submitted-moving-to-gpu")

            # The queue holds the first task's photos now and the app removed its upload copies (the picker is
            # empty): upload them again for the second task.
            expect(page.get_by_text("Drop File Here", exact=False).first).to_be_visible(timeout=20_000)
            upload_photos(page, images)
            steps_box = page.get_by_label("Steps (auto from the photo count; editable)")
            expect(steps_box).to_have_value(str(auto_steps(len(images))), timeout=30_000)
            steps_box.fill("4")
            steps_box.blur()
            page.get_by_label("Instance prompt").fill("a photo of zwx cat")
            page.get_by_label("Instance prompt").blur()
            expect(page.get_by_label("Output model repo")).to_have_value("alice/dreambooth-zwx-cat")
            page.get_by_label("Score checkpoints").uncheck()  # the first task is scored, this one not
            page.get_by_label("Write captions", exact=True).check()  # and this one's photos are captioned on the GPU
            page.get_by_role("button", name="Train").click()
            expect(message).not_to_have_text(first_message, timeout=20_000)
            expect(message).to_have_text(re.compile(r"Task \w+ queued with 3 photos"), timeout=20_000)

            # The emulator moves the Space to t4-small and restarts the app there.
            wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == "t4-small", 60, "the switch to t4-small")
            open_served_by(page, url, "Nvidia T4 small", 120)  # the old CPU container may still answer a moment
            page.get_by_role("tab", name="Run").click()
            expect(page.get_by_text(re.compile(r"[1-4] / 4 steps"))).to_be_visible(timeout=300_000)
            # The header follows the Space while it trains (the app claimed the task while still APP_STARTING).
            expect(page.locator("#hardware")).to_have_text(re.compile(r"Nvidia T4 small · stage RUNNING"), timeout=30_000)
            shot(page, "space-training-on-t4")
            # The Run tab's log tail tells about training, not about each Hub request the trainer makes.
            assert "HTTP Request:" not in page.get_by_label("Trainer log (tail)").input_value()
            # Close the page while waiting, so a rendering browser does not slow the CPU "GPU" down. (Navigating it
            # to about:blank instead could wait 30 s on a renderer starved by the trainer; closing does not wait.)
            page.close(run_before_unload=False)

            # Both tasks done, then back on cpu-basic.
            wait_for(lambda: hardware_sequence(hub.ledger(repo))[-1:] == ["cpu-basic"]
                     and hub.space_runtime(repo)["stage"] == "RUNNING", 420, "the release to cpu-basic")  # fmt: skip
            wait_http(url, 90)
            page = b.new_page(viewport=DESKTOP)
            page.set_default_navigation_timeout(60_000)
            page.goto(url)
            # A new visitor (a fresh browser context) sees the hardware line and a sign-in prompt, no task.
            expect(page.get_by_text("CPU basic", exact=False).first).to_be_visible(timeout=30_000)
            page.get_by_role("tab", name="Queue").click()
            page.wait_for_timeout(3_000)  # a few refreshes of the timer
            expect(page.get_by_role("cell", name="DONE", exact=True)).to_have_count(0)
            shot(page, "space-anonymous-with-tasks")
            content = page.content()  # (the form's own help mentions "sks dog"; the tasks' second prompt does not)
            assert "zwx cat" not in content and "alice/dreambooth-a-photo-of" not in content
            page.get_by_role("tab", name="Run").click()
            expect(page.get_by_text("Sign in as an allowed user to follow training runs.")).to_be_visible()
            page.get_by_role("button", name=re.compile("Sign in with Hugging Face")).click()
            expect(page.get_by_role("button", name=re.compile(r"Logout \(alice\)"))).to_be_visible(timeout=30_000)
            page.get_by_role("tab", name="Queue").click()
            expect(page.get_by_role("cell", name="DONE", exact=True)).to_have_count(2, timeout=30_000)
            expect(page.get_by_role("link", name="alice/dreambooth-sks-dog")).to_be_visible()
            expect(page.get_by_text("CPU basic", exact=False).first).to_be_visible()
            shot(page, "space-queue-done")
            page.get_by_role("tab", name="Results").click()  # the newest: the captioned task, read from its repo
            summary = page.locator("#results-summary")
            expect(summary).to_contain_text("Their .txt files are in the model repo's captions/ folder", timeout=30_000)
            shot(page, "space-results-captions")
    except Exception:
        print(space_log_tail(hub, repo))
        raise
    finally:
        hub.stop_space(repo)

    # The token never lands in the app's logs or in the files it wrote for the trainer.
    for log in hub.space_logs(repo):
        assert ALICE_TOKEN not in log.read_text(errors="replace")
    for written in (cwd / "data").rglob("*"):
        if written.is_file() and written.suffix in (".json", ".jsonl", ".log", ".md"):
            assert ALICE_TOKEN not in written.read_text(errors="replace"), written
    # Each finished task's run folder (photos, checkpoints, uploaded outputs) is gone from the container.
    assert not [p for p in (cwd / "data" / "runs").glob("*/*")], list((cwd / "data" / "runs").rglob("*"))[:5]
    # The queue on the Hub: both tasks DONE, trained in the same container.
    settings = load_settings({"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url})
    tasks = make_queue(settings).list()
    assert [t.status for t in tasks] == [TaskStatus.DONE, TaskStatus.DONE]
    # The model repos: LoRA weights, model card and samples.
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    assert [t.params.get("score") for t in tasks] == [True, False]
    assert [t.params.get("auto_captions") for t in tasks] == [None, True]
    for task in tasks:
        assert task.result_url and task.result_url.endswith(task.output_repo)
        files = api.list_repo_files(task.output_repo)
        assert any(f.endswith(".safetensors") for f in files), files
        assert "README.md" in files and any(f.startswith("samples/") and f.endswith(".png") for f in files), files
        if task.params.get("score") is False:  # the second task (its box unticked): no scores
            # its photos captioned before training, saved with the model and listed on its card
            assert sorted(f for f in files if f.startswith("captions/")) == [f"captions/{i:03d}.txt" for i in range(3)]
            assert "## Captions" in Path(api.hf_hub_download(task.output_repo, "README.md")).read_text()
            assert SCORES_NAME not in files and not any(f.startswith("checkpoints/") for f in files), files
            continue
        # Scored (issue 22): the record, each scored point's LoRA kept, the picked one's scores in the card's metadata
        record = ScoreRecord.model_validate_json(Path(api.hf_hub_download(task.output_repo, SCORES_NAME)).read_text())
        assert record.base is not None and record.picked is not None and record.points, record
        picked = record.point(record.picked.step)
        assert f"{picked.checkpoint}/pytorch_lora_weights.safetensors" in files, files
        card = ModelCard.load(api.hf_hub_download(task.output_repo, "README.md"))
        assert picked.step == record.points[-1].step and record.base.val_loss is not None  # unscored images: the last
        assert any(r.metric_value == round(picked.val_loss, 3) for r in card.data.eval_results), card.data.eval_results
    # Hardware: cpu-basic -> t4-small -> cpu-basic, one upgrade and one release request, one GPU container.
    ledger = hub.ledger(repo)
    assert hardware_sequence(ledger) == ["cpu-basic", "t4-small", "cpu-basic"]
    assert len(hub.requests("POST", rf"^/api/spaces/{repo}/hardware$")) - hub_requests_before == 2
    gpu_periods = [p for p in ledger if p["hardware"] == "t4-small"]
    assert len({p["container"] for p in gpu_periods}) == 1
    gpu_start = gpu_periods[0]["started_at"]
    gpu_end = gpu_periods[-1]["ended_at"]
    for task in tasks:
        assert gpu_start <= task.started_at and task.finished_at <= gpu_end

    # The queue recorded that one GPU period, from the upgrade request to the release request, with both claims.
    tasks, periods = make_queue(settings).list_with_billing()
    [period] = periods
    assert (period.hardware, period.closed_by) == ("t4-small", "release")
    assert [c.task_id for c in period.claims] == [t.id for t in sorted(tasks, key=lambda t: t.started_at)]
    # The queue's cost of the two tasks is what the Hub billed for the GPU. The ledger bills t4-small from the
    # switch (request + SWITCH_DELAY_S) to the end of the switch back (release request + SWITCH_DELAY_S: the old
    # flavor is billed while a switch is under way), so the two delays cancel and the period's length is the billed
    # time up to how far each recorded time lies from its request: one runtime read before the upgrade request, one
    # queue commit and a runtime read before the release request (well under a second on the emulator; 2 s allows
    # for two loaded cores).
    billed_s = hub.billed_seconds(repo)["t4-small"]
    price_per_s = FLAVORS["t4-small"].usd_per_hour / 3600
    costs = [cost_usd(t, time.time(), False, periods) for t in tasks]
    assert sum(costs) == pytest.approx(period.seconds(time.time()) * price_per_s)
    assert sum(costs) == pytest.approx(billed_s * price_per_s, abs=2.0 * price_per_s), (period, billed_s)
    assert all(c > 0 for c in costs)
    # Each task's run record: the speed it measured, its start-up and wrap-up; the first one also the switch to the
    # GPU, the last one the wait for the release.
    first, last = sorted(tasks, key=lambda t: t.started_at)
    for task in (first, last):
        run = task.run
        assert run is not None and run.flavor == "t4-small" and run.steps_per_s and run.steps == 4
        assert run.startup_s is not None and run.startup_s >= 0 and run.wrapup_s is not None and run.wrapup_s > 0
    assert SWITCH_DELAY_S - 1 <= first.run.switch_s <= SWITCH_DELAY_S + 30 and last.run.switch_s is None
    assert last.run.release_s is not None and first.run.release_s is None
