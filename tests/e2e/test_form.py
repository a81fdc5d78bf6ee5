"""The Train form in a real browser (local mode, no GPU): the demo model by default, a base model that cannot be used
refused with its cause, Train disabled after a queued submit, a repeat of the same task asked about first, and an
estimate from the earlier runs in the queue once there are some.

The app gets no token; its Hub endpoint is the emulator (so a missing base model is a real 404 of the Hub API).

And as the owner of an emulated Space: the form follows the chosen base model's family (a tiny FLUX.1 repo brings
the L4 and rank 16, with the family's note beside the GPU), keeps a steps value typed while the Hub was slow to
answer, and the owner is told about an offered base model that cannot be used.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from scheduler.queue.local import LocalQueue
from scheduler.task import LOCAL_CPU, RunRecord, Task
from tests.e2e.harness import (
    DESKTOP,
    app_env,
    browser,
    create_app_space,
    free_port,
    open_page,
    open_phone_form,
    run_app,
    shot,
    sign_in_owner,
    upload_photos,
    wait_http,
)
from tests.tiny_flux import build_tiny_flux1
from tests.tiny_models import make_images
from tests.tiny_qwen_image import build_tiny_qwen_image, build_tiny_qwen_image_edit
from tests.tiny_zimage import build_tiny_zimage
from training.demo import DEMO_LABEL, DEMO_MODEL, DEMO_RESOLUTION, DEMO_STEPS

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def queued(workdir) -> list[dict]:
    """The tasks of the app's local queue (none before the first enqueue writes the file)."""
    path = workdir / "data" / "queue" / "queue.json"
    return json.loads(path.read_text())["tasks"] if path.exists() else []


def add_earlier_runs(queue_dir, images, speeds: tuple[float, ...]) -> None:
    """Finished demo-model tasks at 256 px with their run records, as an earlier app would have left them (claimed
    and completed through the queue; each is held back by a note until claimed, so the running app never takes one)."""
    queue = LocalQueue(queue_dir)
    for i, speed in enumerate(speeds):
        task = queue.enqueue(Task(instance_prompt=f"a photo of zwx{i} cat", submitted_by="earlier", base_model=DEMO_MODEL,
                                  params={"steps": 100, "resolution": 256}, note="seeded by the test"), images)  # fmt: skip
        queue.claim(task.id, "earlier-worker", 60)
        run = RunRecord(flavor=LOCAL_CPU, recipe="dreambooth-lora", base_model=DEMO_MODEL, resolution=256, steps=100,
                        steps_per_s=speed, startup_s=60.0)  # fmt: skip
        queue.complete(task.id, "earlier-worker", "/earlier/output", run=run)


def set_steps(page, steps: int) -> None:
    box = page.get_by_label("Steps (auto from the photo count; editable)")
    box.fill(str(steps))
    box.blur()


def test_the_form_for_a_newcomer_demo_model_checks_and_repeats(hub, tmp_path):
    from playwright.sync_api import expect

    port = free_port()
    env = app_env(GRADIO_SERVER_PORT=str(port), POLL_INTERVAL_S="0.5", HF_ENDPOINT=hub.url,
                  DREAMBOOTH_DEMO_DIR=str(tmp_path / "demo-model"))  # fmt: skip
    images = [str(p) for p in make_images(tmp_path / "photos", 3, size=128)]
    workdir = tmp_path / "app"
    workdir.mkdir()
    url = f"http://127.0.0.1:{port}/"
    with run_app(workdir, env, tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app.log")
        open_phone_form(b, url, "form-phone-demo",
                        lambda phone: expect(phone.get_by_label("Base model")).to_have_value(DEMO_LABEL))

        page = b.new_page(viewport=DESKTOP)
        page.goto(url)
        model = page.get_by_label("Base model")
        expect(model).to_have_value(DEMO_LABEL, timeout=30_000)
        expect(page.get_by_text("a Hub model repo id (namespace/name", exact=False)).to_be_visible()
        steps = page.get_by_label("Steps (auto from the photo count; editable)")
        expect(steps).to_have_value(str(DEMO_STEPS))
        built_in = "of training and scoring on this machine (CPU), from the built-in figures"  # no run finished yet
        expect(page.locator("#estimate")).to_contain_text(built_in)
        page.locator("input[type=file]").first.set_input_files(images)
        expect(page.locator("#photo-preview")).to_be_visible(timeout=30_000)
        page.get_by_label("Instance prompt").fill("a photo of sks dog")
        page.get_by_label("Instance prompt").blur()
        expect(page.get_by_label("Output name (uploaded only when HF_TOKEN is set)")).to_have_value("dreambooth-sks-dog")
        page.get_by_text("Advanced").click()
        expect(page.get_by_label("Resolution (px)")).to_have_value(f"{DEMO_RESOLUTION} (demo model only)")
        shot(page, "form-demo-model")

        # A base model that is not on the Hub: refused with its cause, nothing queued.
        model.click()
        model.fill("nobody/missing-model")
        model.press("Enter")
        expect(page.get_by_label("Resolution (px)")).to_have_value("512", timeout=10_000)  # back to a real model's size
        page.get_by_role("button", name="Train").click()
        expect(page.get_by_text("Nothing was queued.", exact=False)).to_be_visible(timeout=30_000)
        expect(page.get_by_text("nobody/missing-model' was not found", exact=False)).to_be_visible()
        shot(page, "form-base-model-problem")
        assert queued(workdir) == []

        # Back to the demo model: queued at once; Train then waits for a change.
        model.click()
        page.get_by_role("option", name=DEMO_LABEL).click()
        expect(steps).to_have_value(str(DEMO_STEPS), timeout=10_000)
        set_steps(page, 4)
        train = page.get_by_role("button", name="Train")
        train.click()
        expect(page.get_by_text(re.compile(r"Task \w+ queued with 3 photos"))).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Training runs on this machine (CPU)", exact=False)).to_be_visible()
        expect(train).to_be_disabled()

        # The same photos, prompt and settings again: Train asks first.
        page.locator("input[type=file]").first.set_input_files(images)
        expect(train).to_be_enabled(timeout=30_000)
        # The upload handler answered (its preview and auto steps come together) before the steps are typed.
        expect(page.locator("#photo-preview img")).to_have_count(len(images), timeout=30_000)
        expect(steps).to_have_value(str(DEMO_STEPS), timeout=10_000)
        set_steps(page, 4)
        train.click()
        expect(page.get_by_text("this is the same task as", exact=False)).to_be_visible(timeout=30_000)
        again = page.get_by_role("button", name="Queue it again")
        expect(again).to_be_visible()
        assert len(queued(workdir)) == 1
        # Under a loaded CPU the page may send the steps' edit after Train's answer: the edit hides the button (the
        # form changed, as far as the server knows). Pressing Train again then asks again, as a user would see.
        page.wait_for_timeout(1000)  # an edit still in flight lands within this; none: the button stays
        if not again.is_visible():
            train.click()
            expect(again).to_be_visible(timeout=30_000)
        shot(page, "form-duplicate-confirm")
        assert len(queued(workdir)) == 1
        again.click()
        expect(again).to_be_hidden(timeout=30_000)
        expect(page.get_by_text(re.compile(r"Task \w+ queued with 3 photos"))).to_be_visible(timeout=30_000)
        shot(page, "form-queued-again")

        # Three finished runs like this one in the queue: the estimate is their median, and says so.
        add_earlier_runs(workdir / "data" / "queue", images, speeds=(2.0, 4.0, 8.0))
        page.get_by_label("Resolution (px)").click()
        page.get_by_role("option", name="256", exact=True).click()
        estimate = page.locator("#estimate")
        deadline = time.monotonic() + 60
        while True:  # the worker's next read of the queue brings the runs; each edit recomputes the estimate
            set_steps(page, 481)
            set_steps(page, 480)
            try:
                expect(estimate).to_contain_text("from 3 earlier runs on this machine", timeout=3_000)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        # 480 steps at the median 4 steps/s, the scoring images (3 prompts at 5 points, no scoring model: the demo
        # model scores by its pixels), plus the median 60 s of start-up.
        expected = "about 3 min on this machine (CPU) (2 min training + under a minute scoring + 1 min loading and saving)"
        expect(estimate).to_contain_text(expected)
        shot(page, "estimate-from-earlier-runs")

    tasks = [t for t in queued(workdir) if t["submitted_by"] != "earlier"]
    assert len(tasks) == 2 and {t["base_model"] for t in tasks} == {"builtin:demo"}
    assert all(t["params"]["resolution"] == DEMO_RESOLUTION and t["params"]["steps"] == 4 for t in tasks)
    assert {t["output_repo"] for t in tasks} == {"dreambooth-sks-dog"}


def test_the_same_photos_submitted_from_two_tabs_are_queued_twice(hub, tmp_path):
    """Gradio stores an upload by its content, so two tabs (or two users) that upload the same photos share one copy:
    the first submit must not remove it from under the second form, which still shows the photos. Once both are
    queued, the copy is gone (the queue holds the photos)."""
    from playwright.sync_api import expect

    port = free_port()
    uploads = tmp_path / "gradio-cache"
    env = app_env(GRADIO_SERVER_PORT=str(port), POLL_INTERVAL_S="0.5", HF_ENDPOINT=hub.url, GRADIO_TEMP_DIR=str(uploads),
                  DREAMBOOTH_DEMO_DIR=str(tmp_path / "demo-model"))  # fmt: skip
    images = make_images(tmp_path / "photos", 3, size=128)
    workdir = tmp_path / "app"
    workdir.mkdir()
    url = f"http://127.0.0.1:{port}/"

    def copies() -> list[str]:
        return sorted(p.name for p in uploads.rglob("*") if p.is_file() and p.name in {i.name for i in images})

    with run_app(workdir, env, tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app.log")
        tabs = [open_page(b, url) for _ in range(2)]  # two browser contexts: two sessions
        for tab, prompt in zip(tabs, ("a photo of sks dog", "a photo of zwx dog"), strict=True):
            expect(tab.get_by_label("Base model")).to_have_value(DEMO_LABEL, timeout=30_000)
            upload_photos(tab, images)
            tab.get_by_label("Instance prompt").fill(prompt)
            tab.get_by_label("Instance prompt").blur()
            set_steps(tab, 4)
        assert copies() == sorted(i.name for i in images)  # one shared copy of each photo

        first, second = tabs
        first.get_by_role("button", name="Train").click()
        expect(first.get_by_text(re.compile(r"Task \w+ queued with 3 photos"))).to_be_visible(timeout=30_000)
        second.get_by_role("button", name="Train").click()
        expect(second.get_by_text(re.compile(r"Task \w+ queued with 3 photos"))).to_be_visible(timeout=30_000)
        expect(second.get_by_text("file not found", exact=False)).to_have_count(0)
        expect(second.locator("#photo-preview")).to_be_hidden(timeout=30_000)  # the form let go of the photos
        shot(second, "form-same-photos-second-tab")
        assert copies() == []  # both queued: nobody shows them any more

    tasks = queued(workdir)
    assert sorted(t["instance_prompt"] for t in tasks) == ["a photo of sks dog", "a photo of zwx dog"]
    assert all(t["images"]["count"] == 3 for t in tasks)


def test_the_form_follows_a_flux_base_model_and_keeps_typed_steps(hub, tmp_path, tiny_sd):
    from huggingface_hub import HfApi
    from playwright.sync_api import expect

    from tests.conftest import ALICE_TOKEN

    suffix = uuid.uuid4().hex[:6]
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    sd_repo, flux_repo, missing = f"alice/form-sd-{suffix}", f"alice/form-flux-{suffix}", f"alice/form-gone-{suffix}"
    zimage_repo, qwen_repo = f"alice/form-zimage-{suffix}", f"alice/form-qwen-{suffix}"
    edit_repo = f"alice/form-qwen-edit-{suffix}"
    for repo, folder in ((sd_repo, tiny_sd), (flux_repo, build_tiny_flux1(tmp_path / "tiny-flux1")),
                         (zimage_repo, build_tiny_zimage(tmp_path / "tiny-zimage")),
                         (qwen_repo, build_tiny_qwen_image(tmp_path / "tiny-qwen")),
                         (edit_repo, build_tiny_qwen_image_edit(tmp_path / "tiny-qwen-edit"))):  # fmt: skip
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    space = f"alice/form-space-{suffix}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cwd = tmp_path / "space"
    cwd.mkdir()
    create_app_space(hub, space, cwd, port, switch_delay_s=1.0,
                     variables={"BASE_MODELS": f"{sd_repo},{flux_repo},{zimage_repo},{qwen_repo},{edit_repo},{missing}"})  # fmt: skip
    try:
        hub.wait_for_stage(space, "RUNNING", timeout_s=60)
        wait_http(url, 90)
        with browser() as b:
            page = open_page(b, url)
            sign_in_owner(page)
            # The set-up diagnostics: the owner is told which offered model this token cannot use.
            expect(page.locator("#base-model-check")).to_contain_text(f"{missing} cannot be used", timeout=30_000)
            gpu = page.locator("#hardware-choice input")
            expect(gpu).to_have_value(re.compile(r"^Nvidia T4 small"))
            page.get_by_text("Advanced").click()
            rank = page.get_by_label("LoRA rank")
            expect(rank).to_have_value("4")

            # The Hub answers slowly about the Flux repo: the user types the steps while the form waits for it.
            hub.inject_fault("GET", rf"^/api/models/{flux_repo}$", delay_s=4.0, count=1)
            page.get_by_label("Base model").click()
            page.get_by_role("option", name=flux_repo).click()
            steps = page.get_by_label("Steps (auto from the photo count; editable)")
            steps.fill("123")
            steps.blur()
            expect(gpu).to_have_value(re.compile(r"^Nvidia 1xL4"), timeout=30_000)
            expect(rank).to_have_value("16")
            expect(steps).to_have_value("123")  # typed before the defaults arrived: kept
            note = page.locator("#hardware-note")
            expect(note).to_be_hidden()  # on the family's own GPU: nothing to warn about
            gpu.click()
            page.get_by_role("option", name=re.compile(r"^Nvidia T4 small")).click()
            expect(note).to_contain_text("NF4", timeout=10_000)  # smaller than the family's L4: its hardware note
            expect(note).to_contain_text("Its default GPU is Nvidia 1xL4")
            expect(page.locator("#estimate")).to_contain_text("FLUX.1 ([dev] / [schnell]) family's reference figure")
            shot(page, "form-flux-defaults")

            # Z-Image (issue 23): its rank and resolution, the typed steps kept; on a T4 the note names Z-Image's GPU.
            page.get_by_label("Base model").click()
            page.get_by_role("option", name=zimage_repo).click()
            expect(page.get_by_label("Resolution (px)")).to_have_value("1024", timeout=30_000)
            expect(rank).to_have_value("16")
            expect(steps).to_have_value("123")
            gpu.click()
            page.get_by_role("option", name=re.compile(r"^Nvidia T4 small")).click()
            expect(note).to_contain_text("Its default GPU is Nvidia 1xL40S", timeout=10_000)
            expect(note).to_contain_text("a T4 has no bf16 hardware")
            expect(page.locator("#estimate")).to_contain_text("on Nvidia T4 small", timeout=10_000)
            expect(page.locator("#estimate")).to_contain_text("Z-Image family's reference figure")
            shot(page, "form-zimage-on-t4")

            # Qwen-Image on an L4: its note says what it takes there (a 4-bit base at 512 px).
            page.get_by_label("Base model").click()
            page.get_by_role("option", name=qwen_repo).click()
            expect(page.locator("#estimate")).to_contain_text("Qwen-Image family's reference figure", timeout=30_000)
            gpu.click()
            page.get_by_role("option", name=re.compile(r"^Nvidia 1xL4 ")).click()
            expect(note).to_contain_text("only for a 4-bit base at 512 px", timeout=10_000)
            expect(note).to_contain_text("Its default GPU is Nvidia 1xL40S")
            expect(page.locator("#estimate")).to_contain_text("on Nvidia 1xL4 ", timeout=10_000)
            shot(page, "form-qwen-image-on-l4")

            # Qwen-Image-Edit: the upload box asks for before/after pairs, and for photos again once SD is back.
            upload = page.locator("#photos")
            expect(upload).to_contain_text("Photos of your subject")
            page.get_by_label("Base model").click()
            page.get_by_role("option", name=edit_repo).click()
            expect(upload).to_contain_text("Before/after pairs: <name>_before and <name>_after", timeout=30_000)
            expect(page.locator("#estimate")).to_contain_text("Qwen-Image-Edit family's reference figure")
            expect(page.locator("#estimate")).not_to_contain_text("scoring")  # an edit: its validation loss only
            shot(page, "form-qwen-image-edit-pairs")

            # Back to SD: SD's rank; the user's steps and GPU pick stay; no note.
            page.get_by_label("Base model").click()
            page.get_by_role("option", name=sd_repo).click()
            expect(rank).to_have_value("4", timeout=30_000)
            expect(note).to_be_hidden()
            expect(steps).to_have_value("123")
            expect(gpu).to_have_value(re.compile(r"^Nvidia 1xL4 "))  # the user's last pick
            expect(upload).to_contain_text("Photos of your subject")
    finally:
        hub.stop_space(space)
