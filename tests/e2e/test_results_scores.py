"""The scores in the Results tab, in the browser (issue 22, point 3): ``python app.py`` in local mode with two
finished tasks in its queue, one whose output folder holds a ``scores.json`` and its images (written by
``tests.results_fixtures``, as a scored run leaves them) and one without. The first shows the pick, the charts and
the base-vs-picked grid; the second shows none of it. Screenshots: tests/artifacts/screenshots/results-scores*.png.
"""

from __future__ import annotations

import json
import re

import pytest

from contract.settings import load_settings
from scheduler.queue import make_queue
from scheduler.task import Task
from tests.e2e.harness import DESKTOP, PHONE, app_env, browser, free_port, run_app, shot, wait_http
from tests.e2e.test_results_view import open_tab, wait_for_images
from tests.results_fixtures import SCORED_PROMPTS, write_scored_output
from tests.tiny_models import make_images
from training.metrics import METRICS_NAME

pytestmark = [pytest.mark.slow, pytest.mark.browser]

#: every text of each chart in the scores block, with its box relative to its SVG's
SCORE_TEXTS = """() => [...document.querySelectorAll('#results-scores svg')].map(svg => {
  const box = svg.getBoundingClientRect();
  return {width: box.width, height: box.height, texts: [...svg.querySelectorAll('text')].map(t => {
    const b = t.getBoundingClientRect(); return [t.textContent, b.left - box.left, b.right - box.left]; })}; })"""


def finished(queue, images, prompt: str, created_at: float) -> Task:
    """A task taken through the queue to DONE, as the worker leaves it (its outputs are written by the caller)."""
    task = queue.enqueue(Task(instance_prompt=prompt, submitted_by="local", base_model="some/model",
                              params={"steps": 750}, created_at=created_at), images)  # fmt: skip
    queue.claim(task.id, "w", 60)
    return task


def all_texts_inside(page) -> None:
    charts = page.evaluate(SCORE_TEXTS)
    assert len(charts) == 2, charts  # the scores and the validation loss
    for chart in charts:
        assert chart["width"] > 100 and chart["height"] > 50
        for text, left, right in chart["texts"]:
            assert left >= -0.5 and right <= chart["width"] + 0.5, (text, left, right, chart["width"])


def test_the_results_tab_shows_the_scores_chart_and_the_base_vs_picked_grid(tmp_path):
    from playwright.sync_api import expect

    port = free_port()
    workdir = tmp_path / "app"
    settings = load_settings({"DATA_DIR": str(workdir / "data")})
    queue = make_queue(settings)
    images = make_images(tmp_path / "photos", 1)
    plain = finished(queue, images, "a photo of sks cat", 1_700_000_000.0)
    scored = finished(queue, images, "a photo of sks dog", 1_700_000_100.0)
    for task in (plain, scored):
        output = workdir / "data" / "runs" / task.id / "work" / "output"  # where the app's worker leaves it
        output.mkdir(parents=True)
        curve = [[s, 0.3 - 0.0002 * s] for s in range(0, 751, 50)]
        (output / METRICS_NAME).write_text(json.dumps({"loss_curve": curve, "steps": 750}))
        if task is scored:
            write_scored_output(output, size=192)
        queue.complete(task.id, "w", str(output))
    url = f"http://127.0.0.1:{port}/"
    with run_app(workdir, app_env(GRADIO_SERVER_PORT=str(port)), tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app.log")
        page = b.new_page(viewport=DESKTOP)
        page.goto(url)
        page.get_by_role("tab", name="Results").click()
        scores = page.locator("#results-scores")
        # the picker follows the newest finished task once the worker has read the queue (slow on a busy machine)
        expect(page.locator("#results-summary").get_by_text(f"Task {scored.id}: DONE")).to_be_visible(timeout=120_000)
        expect(scores.get_by_text("Picked checkpoint: step 500")).to_be_visible(timeout=30_000)
        expect(scores.locator("svg.scores-chart")).to_be_visible()
        expect(scores.locator("svg.scores-chart polyline")).to_have_count(3)
        expect(scores.locator("svg.scores-loss-chart polyline")).to_have_count(1)
        expect(scores.locator(".scores-legend").first.locator(".legend-label")).to_have_text(
            ["DINO", "CLIP-I", "CLIP-T", "base model (step 0)", "picked: step 500"])
        grid = scores.locator("table.scores-grid")
        expect(grid.get_by_role("columnheader")).to_have_text(["prompt", "base model", "picked checkpoint (step 500)"])
        expect(grid.locator("tbody tr")).to_have_count(len(SCORED_PROMPTS))
        expect(grid.get_by_role("rowheader")).to_have_text(SCORED_PROMPTS)  # the prompt with markup as typed
        expect(grid.locator("img")).to_have_count(2 * len(SCORED_PROMPTS))
        wait_for_images(page, "#results-scores")
        all_texts_inside(page)
        scores.scroll_into_view_if_needed()
        shot(page, "results-scores")

        # A run without scores.json: nothing of it shows.
        page.get_by_label("Finished task").click()
        page.get_by_role("option", name=re.compile(plain.id)).click()
        expect(page.locator("#results-summary").get_by_text(f"Task {plain.id}: DONE")).to_be_visible(timeout=30_000)
        expect(scores).to_be_hidden()
        expect(page.get_by_text("Picked checkpoint")).to_have_count(0)

        phone = b.new_page(viewport=PHONE)
        phone.goto(url)
        expect(phone.get_by_role("tab", name="Train")).to_be_visible(timeout=30_000)
        open_tab(phone, "Results")
        expect(phone.locator("#results-scores table.scores-grid img")).to_have_count(2 * len(SCORED_PROMPTS),
                                                                                  timeout=30_000)  # fmt: skip
        wait_for_images(phone, "#results-scores")
        all_texts_inside(phone)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, width  # nothing wider than the phone
        shot(phone, "results-scores-phone")
