"""A Hub dataset named in the browser's "Or a Hub dataset" field (local mode, the emulator as the Hub): a missing
one refused before anything is queued, a private one of the token's account queued with no photo and trained here
by the trainer reading it with ``datasets``.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.conftest import ALICE_TOKEN
from tests.e2e.harness import DESKTOP, local_app, shot
from tests.test_dataset_submit import imagefolder_repo

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_a_private_hub_dataset_typed_in_the_form_trains_locally(hub, tmp_path, tiny_sd):
    from playwright.sync_api import expect

    repo = imagefolder_repo(hub, tmp_path, {0: "a dog on a red sofa"}, size=128)  # the form trains at 256 px
    with local_app(tmp_path, BASE_MODELS=str(tiny_sd), HF_TOKEN=ALICE_TOKEN, HF_ENDPOINT=hub.url) as app:
        page = app.browser.new_page(viewport=DESKTOP)
        page.goto(app.url)
        expect(page.get_by_text("Local mode: training runs on this machine.")).to_be_visible(timeout=30_000)
        field = page.get_by_label("Or a Hub dataset")
        field.fill("alice/no-such-dataset")
        page.get_by_label("Instance prompt").fill("a photo of sks dog")
        page.get_by_label("Instance prompt").blur()
        # the output name follows the prompt; then the account is named (a bare name does not upload to the emulator)
        output = page.get_by_label("Output name (uploaded only when HF_TOKEN is set)")
        expect(output).to_have_value("dreambooth-sks-dog", timeout=30_000)
        output.fill(f"alice/sks-{uuid.uuid4().hex[:6]}")
        steps = page.get_by_label("Steps (auto from the photo count; editable)")
        steps.fill("2")
        steps.blur()
        page.get_by_text("Advanced").click()
        page.get_by_label("Resolution (px)").click()
        page.get_by_role("option", name="256", exact=True).click()
        page.get_by_label("Score checkpoints").uncheck()
        page.get_by_role("button", name="Train").click()
        expect(page.get_by_text("alice/no-such-dataset was not found on the Hub")).to_be_visible(timeout=30_000)
        shot(page, "dataset-form-refused")

        field.fill(repo)
        field.blur()
        page.get_by_role("button", name="Train").click()
        queued = re.compile(rf"Task \w+ queued with the 3 images of dataset {re.escape(repo)} \(split train\)")
        expect(page.get_by_text(queued).first).to_be_visible(timeout=30_000)
        shot(page, "dataset-form-queued")
        page.get_by_role("tab", name="Queue").click()
        expect(page.get_by_role("cell", name="DONE", exact=True)).to_be_visible(timeout=400_000)
        shot(page, "dataset-queue-done")

    [task] = json.loads((app.workdir / "data" / "queue" / "queue.json").read_text())["tasks"]
    assert task["status"] == "DONE" and task["dataset"]["dataset"] == repo and task["images"]["count"] == 0
    run = app.workdir / "data" / "runs" / task["id"]
    assert "3 images written to" in next(run.glob("train-*.log")).read_text()  # the trainer read it with datasets
    assert (run / "work" / "output" / "README.md").is_file() and not (run / "work" / "inputs").exists()
