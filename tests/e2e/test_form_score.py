""""Score checkpoints" in the form's Advanced settings in a real browser (local mode, no GPU): on by default with its
help, read-only where the recipe fixes it, and the user's choice reaches the queued task's ``params.score``.

The app runs with ``TRAINING_RECIPES_MODULES=tests.score_recipe`` (a recipe fixing scoring off); its Hub endpoint
is the emulator and it has no token.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.harness import DESKTOP, local_app, open_page, shot, upload_photos
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]

FIXING_LABEL = "LoRA, unscored"  # tests/score_recipe.py


def test_the_score_box_is_on_by_default_follows_the_recipe_and_reaches_the_task(hub, tmp_path):
    from playwright.sync_api import expect

    images = make_images(tmp_path / "photos", 3, size=128)
    with local_app(tmp_path, HF_ENDPOINT=hub.url, TRAINING_RECIPES_MODULES="tests.score_recipe",
                   DREAMBOOTH_DEMO_DIR=str(tmp_path / "demo-model")) as app:  # fmt: skip
        page = open_page(app.browser, app.url, DESKTOP)
        expect(page.get_by_role("button", name="Train")).to_be_visible(timeout=30_000)
        page.get_by_text("Advanced").click()
        score = page.get_by_label("Score checkpoints")
        expect(score).to_be_checked()
        expect(score).to_be_enabled()
        expect(page.get_by_text("and gives you the best checkpoint. Adds a few images per sample point.",
                                exact=False)).to_be_visible()  # fmt: skip
        shot(page, "form-advanced-score")

        # A recipe that fixes scoring off: unticked, read-only, marked.
        page.get_by_label(FIXING_LABEL).check()
        expect(score).not_to_be_checked(timeout=15_000)
        expect(score).to_be_disabled()
        expect(page.get_by_text(re.compile(r"Set by this recipe: score = False"))).to_be_visible()
        shot(page, "form-advanced-score-fixed-by-recipe")

        # Back to LoRA: on again and editable; the user unticks it and the queued task says so.
        page.get_by_label("DreamBooth LoRA", exact=False).first.check()
        expect(score).to_be_checked(timeout=15_000)
        expect(score).to_be_enabled()
        score.uncheck()
        upload_photos(page, images)
        page.get_by_label("Instance prompt").fill("a photo of sks dog")
        steps = page.get_by_label("Steps (auto from the photo count; editable)")
        steps.fill("4")
        steps.blur()
        expect(score).not_to_be_checked()
        page.get_by_role("button", name="Train").click()
        expect(page.get_by_text(re.compile(r"Task \w+ queued with 3 photos"))).to_be_visible(timeout=30_000)

    [task] = json.loads((app.workdir / "data" / "queue" / "queue.json").read_text())["tasks"]
    assert task["recipe"] == "dreambooth-lora" and task["params"]["score"] is False
