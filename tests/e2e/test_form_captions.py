"""Captions in a real browser, local mode: "Write captions now" captions the upload on this machine and the table
edits a caption before anything is queued; the "Write captions" box puts its cost in the estimate and reaches the
task; the run writes the captions of the photos without one, and the Run and Results tabs show them.

The app has no token; its base model is the tiny SD model and its captioning model a tiny random Florence-2 built
here (``CAPTION_MODEL``), so the captions are random words: what is checked is where they go, not what they say.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.harness import DESKTOP, fill_form, local_app, open_page, shot
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]

EDITED = "sks dog asleep on a red sofa"


def edit_cell(page, cell, text: str, tries: int = 3) -> None:
    """Type ``text`` over a table cell's caption and commit it (Enter). Under load the cell's editor may open after
    the first keys: the edit is tried again until the cell shows ``text`` (an empty one: until its old words are gone)."""
    from playwright.sync_api import expect

    old = cell.inner_text().split("\n")[0].strip()[:12]
    for attempt in range(tries):
        cell.dblclick()
        page.keyboard.press("ControlOrMeta+a")
        page.keyboard.press("Backspace")
        if text:
            page.keyboard.type(text)
        page.keyboard.press("Enter")
        try:
            if text:
                expect(cell).to_contain_text(text, timeout=10_000)
            else:
                expect(cell).not_to_contain_text(old, timeout=10_000)
            return
        except AssertionError:  # what expect raises
            if attempt == tries - 1:
                raise


def test_captions_written_now_edited_and_by_the_run(tmp_path, tiny_sd, tiny_captioner):
    from playwright.sync_api import expect

    images = make_images(tmp_path / "photos", 3, size=128)
    with local_app(tmp_path, BASE_MODELS=str(tiny_sd), CAPTION_MODEL=str(tiny_captioner)) as app:
        page = open_page(app.browser, app.url, DESKTOP)
        expect(page.get_by_role("button", name="Train")).to_be_visible(timeout=30_000)
        fill_form(page, images, "a photo of sks dog", steps=2)

        # the box: the estimate names the captioning of the 3 photos
        page.get_by_label("Write captions", exact=True).check()
        expect(page.locator("#estimate")).to_contain_text("captions", timeout=15_000)
        shot(page, "form-captions-box")

        # captions written now, on this machine: a table of the three photos
        page.get_by_role("button", name="Write captions now").click()
        expect(page.locator("#captions-note")).to_contain_text("Wrote captions for 3 photo(s)", timeout=60_000)
        table = page.locator("#caption-table")
        for row, image in enumerate(images):
            expect(table.get_by_test_id(f"cell-{row}-0")).to_contain_text(image.name)
        # every photo has its .txt now: nothing left for the run to caption, and the estimate says so
        expect(page.locator("#estimate")).not_to_contain_text("captions", timeout=15_000)

        # an edit in the table rewrites that photo's caption; an emptied cell leaves its photo to the run
        for row, text in ((1, EDITED), (2, "")):
            edit_cell(page, table.get_by_test_id(f"cell-{row}-1"), text)
        # the emptied photo's .txt leaves the upload, and the estimate counts one photo to caption
        listed = page.locator("#photos")  # the upload's list shows a file's stem and suffix apart: "img01 .txt"
        expect(listed).not_to_contain_text(re.compile(rf"{images[2].stem}\s*\.txt"), timeout=30_000)
        expect(listed).to_contain_text(re.compile(rf"{images[1].stem}\s*\.txt"))
        expect(page.locator("#estimate")).to_contain_text("captions", timeout=30_000)
        shot(page, "form-captions-table")

        page.get_by_role("button", name="Train").click()
        expect(page.get_by_text(re.compile(r"Task \w+ queued with 3 photos")).first).to_be_visible(timeout=30_000)
        page.get_by_role("tab", name="Queue").click()
        expect(page.get_by_role("cell", name="DONE", exact=True)).to_be_visible(timeout=150_000)

        [task] = json.loads((app.workdir / "data" / "queue" / "queue.json").read_text())["tasks"]
        assert task["params"]["auto_captions"] is True
        output = app.workdir / "data" / "runs" / task["id"] / "work" / "output"
        saved = {p.stem: p.read_text(encoding="utf-8").strip() for p in (output / "captions").glob("*.txt")}
        assert saved["001"] == EDITED and len(saved) == 3  # the edited caption trained; the emptied one written
        assert "## Captions" in (output / "README.md").read_text()

        page.get_by_role("tab", name="Run").click()
        expect(page.locator("#run-phase")).to_contain_text(EDITED, timeout=15_000)
        expect(page.locator("#run-phase")).to_contain_text("1 written by the captioning model")
        page.get_by_role("tab", name="Results").click()
        expect(page.locator("#results-summary")).to_contain_text(EDITED, timeout=30_000)
        expect(page.locator("#results-summary")).to_contain_text("Their .txt files are among the output files")
        shot(page, "results-captions")
