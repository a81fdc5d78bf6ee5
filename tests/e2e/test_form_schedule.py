"""The schedule settings of the form's Advanced settings in a real browser (local mode, no GPU): offered with the
recipe's values, read-only where the recipe fixes them, and what the user sets reaches the queued task's params.

The app runs with ``TRAINING_RECIPES_MODULES=tests.schedule_recipe`` (a recipe fixing a cosine schedule and min-SNR
gamma 5); its Hub endpoint is the emulator and it has no token.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.harness import DESKTOP, local_app, open_page, shot, upload_photos
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]

FIXING_LABEL = "LoRA, cosine schedule, min-SNR 5"


def test_the_advanced_settings_offer_the_schedule_with_the_recipes_values(hub, tmp_path):
    from playwright.sync_api import expect

    images = make_images(tmp_path / "photos", 3, size=128)
    with local_app(tmp_path, HF_ENDPOINT=hub.url, TRAINING_RECIPES_MODULES="tests.schedule_recipe",
                   DREAMBOOTH_DEMO_DIR=str(tmp_path / "demo-model")) as app:  # fmt: skip
        page = open_page(app.browser, app.url, DESKTOP)
        expect(page.get_by_role("button", name="Train")).to_be_visible(timeout=30_000)
        page.get_by_text("Advanced").click()
        schedule, warmup, gamma = (
            page.get_by_label(x) for x in ("Learning-rate schedule", "Warm-up steps", "SNR gamma")
        )
        expect(schedule).to_have_value("constant")  # the LoRA recipe fixes none: the trainer's defaults
        expect(warmup).to_have_value("0")
        expect(gamma).to_have_value("0")  # off
        for field in (schedule, warmup, gamma):
            expect(field).to_be_enabled()
        expect(page.get_by_text("Min-SNR loss weighting, e.g. 5; 0: off.", exact=False)).to_be_visible()
        shot(page, "form-advanced-schedule")

        # A recipe that fixes the schedule and the SNR gamma: its values, read-only and marked; warm-up stays free.
        page.get_by_label(FIXING_LABEL).check()
        expect(schedule).to_have_value("cosine", timeout=15_000)
        expect(gamma).to_have_value("5")
        expect(schedule).to_be_disabled()
        expect(gamma).to_be_disabled()
        expect(warmup).to_be_enabled()
        expect(
            page.get_by_text(re.compile(r"Set by this recipe: lr scheduler = cosine, snr gamma = 5\.0"))
        ).to_be_visible()
        shot(page, "form-advanced-schedule-fixed-by-recipe")

        # Back to LoRA: the defaults again, editable; the user's values reach the queued task.
        page.get_by_label("DreamBooth LoRA", exact=False).first.check()
        expect(schedule).to_have_value("constant", timeout=15_000)
        expect(schedule).to_be_enabled()
        schedule.click()
        page.get_by_role("option", name="linear", exact=True).click()
        warmup.fill("20")
        warmup.blur()
        gamma.fill("5")
        gamma.blur()
        upload_photos(page, images)
        page.get_by_label("Instance prompt").fill("a photo of sks dog")
        steps = page.get_by_label("Steps (auto from the photo count; editable)")
        steps.fill("4")
        steps.blur()
        expect(schedule).to_have_value("linear")
        shot(page, "form-advanced-schedule-set")
        page.get_by_role("button", name="Train").click()
        expect(page.get_by_text(re.compile(r"Task \w+ queued with 3 photos"))).to_be_visible(timeout=30_000)

    [task] = json.loads((app.workdir / "data" / "queue" / "queue.json").read_text())["tasks"]
    assert task["recipe"] == "dreambooth-lora"
    assert {k: task["params"].get(k) for k in ("lr_scheduler", "lr_warmup_steps", "snr_gamma")} == {
        "lr_scheduler": "linear", "lr_warmup_steps": 20, "snr_gamma": 5.0}  # fmt: skip
