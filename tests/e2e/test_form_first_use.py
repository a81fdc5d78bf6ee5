"""The Train form in a real browser, as a newcomer meets it (local mode, ``HF_HUB_OFFLINE=1`` as a user sets it, the
Hub emulator as the endpoint it never reaches): zero steps is answered once, by the form's own message (no Gradio
error toast, no error badge on the upload box); the Base model help names the model families; a base model in the
Hugging Face cache (put there from the emulator by ``snapshot_download``) is queued with the offline note, and one
that is not cached is refused saying that offline mode is on.
"""

from __future__ import annotations

import re
import uuid

import pytest
from huggingface_hub import HfApi, snapshot_download

from contract.params import PARAMS
from tests.e2e.harness import (
    DESKTOP,
    app_env,
    browser,
    free_port,
    run_app,
    shot,
    upload_photos,
    wait_http,
)
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]
STEPS = "Steps (auto from the photo count; editable)"


def set_steps(page, steps: int) -> None:
    box = page.get_by_label(STEPS)
    box.fill(str(steps))
    box.blur()


def choose_model(page, repo: str) -> None:
    """Type ``repo`` into the Base model field; wait for the form to follow it (a real model's 512 px)."""
    from playwright.sync_api import expect

    model = page.get_by_label("Base model")
    model.click()
    model.fill(repo)
    model.press("Enter")
    expect(page.get_by_label("Resolution (px)")).to_have_value("512", timeout=30_000)


def test_zero_steps_the_family_help_and_an_offline_cached_model(hub, tiny_sd, tmp_path):
    from playwright.sync_api import expect

    api = HfApi()
    repo = f"alice/offline-form-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=str(tiny_sd))
    snapshot_download(repo)  # into the test session's HF cache (HF_HOME), which the app shares
    sha = api.model_info(repo).sha
    port = free_port()
    env = app_env(GRADIO_SERVER_PORT=str(port), POLL_INTERVAL_S="0.5", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="1",
                  DREAMBOOTH_DEMO_DIR=str(tmp_path / "demo-model"))  # fmt: skip
    images = make_images(tmp_path / "photos", 3, size=128)
    workdir = tmp_path / "app"
    workdir.mkdir()
    url = f"http://127.0.0.1:{port}/"
    with run_app(workdir, env, tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 120, proc, tmp_path / "app.log")
        hub.clear_requests()
        page = b.new_page(viewport=DESKTOP)
        page.goto(url)
        expect(page.get_by_label("Base model")).to_be_visible(timeout=60_000)
        for label in ("Stable Diffusion 1.x / 2.x / SDXL", "FLUX.1", "FLUX.2 [klein]"):
            expect(page.get_by_text(label, exact=False).first).to_be_visible()

        # Zero steps: the form's own message, once; nothing from Gradio's number check.
        upload_photos(page, images)
        page.get_by_label("Instance prompt").fill("a photo of sks dog")
        page.get_by_label("Instance prompt").blur()
        set_steps(page, 0)
        page.get_by_role("button", name="Train").click()
        steps = PARAMS["steps"]
        wanted = f"{steps.label}: 0 is out of range; use {steps.span()}."
        expect(page.get_by_text(wanted)).to_be_visible(timeout=30_000)
        expect(page.get_by_text(wanted)).to_have_count(1)
        expect(page.get_by_text("minimum value", exact=False)).to_have_count(0)
        expect(page.get_by_text(re.compile(r"^Error$"))).to_have_count(0)  # no error badge, no error toast
        shot(page, "form-zero-steps")

        # Offline, a base model in the cache: queued, and the answer says which copy is used.
        page.get_by_text("Advanced").click()
        choose_model(page, repo)
        set_steps(page, 4)
        page.get_by_role("button", name="Train").click()
        note = f"offline mode: using the cached copy of {repo} at {sha[:12]}"
        expect(page.get_by_text(note, exact=False)).to_be_visible(timeout=60_000)
        expect(page.get_by_text(re.compile(r"Task \w+ queued with 3 photos"))).to_be_visible()
        shot(page, "form-offline-cached-model")

        # One that is not cached: refused, saying offline mode is on.
        missing = f"alice/never-downloaded-{uuid.uuid4().hex[:6]}"
        choose_model(page, missing)
        upload_photos(page, images)
        set_steps(page, 4)
        page.get_by_role("button", name="Train").click()
        expect(page.get_by_text("Offline mode is on (HF_HUB_OFFLINE=1)", exact=False)).to_be_visible(timeout=60_000)
        expect(page.get_by_text("cannot be reached", exact=False)).to_have_count(0)
        shot(page, "form-offline-not-cached")
    assert hub.requests() == []  # offline: the app never asked the Hub
