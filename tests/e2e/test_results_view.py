"""The Run tab per task and the Results tab, in the browser: ``python app.py`` in local mode on a tiny model.

Three tasks go through the real app (queued into its on-disk queue from the test, as ``python -m scheduler submit``
would): one that fails, one that trains and succeeds, one that is cancelled while it trains (the stand-in slow
recipe of tests/test_worker_recipes.py: a tiny model trains too fast to be cancelled half-way). Each leaves a clean
run view. Then the app is restarted on the same data dir and the Results tab still shows the finished task's samples,
loss curve, settings and download links.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from contract.settings import load_settings
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from tests.e2e.harness import DESKTOP, PHONE, app_env, browser, free_port, run_app, shot, wait_for, wait_http
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def lora_task(base_model: str, **params) -> Task:
    params = {"steps": 4, "resolution": 64, "learning_rate": 1e-4, "rank": 4, "validation_every": 2,
              "validation_prompts": ["a photo of sks dog"], "sample_inference_steps": 2, **params}  # fmt: skip
    return Task(instance_prompt="a photo of sks dog", submitted_by="local", base_model=base_model, params=params,
                hardware="cpu-basic")  # fmt: skip


def open_tab(page, name: str) -> None:
    """Click a tab, through Gradio's "More tabs" menu where a narrow page folded it in there."""
    tab = page.get_by_role("tab", name=name)
    if not tab.is_visible():
        page.get_by_role("button", name="More tabs").click()
        tab = page.locator(".overflow-dropdown").get_by_text(name, exact=True)
    tab.click()


def wait_for_images(page, selector: str) -> None:
    """Until every image under ``selector`` has loaded and decoded (before a screenshot).

    Gradio's gallery marks its images ``loading="lazy"``: one below the fold of a phone-sized page is never
    fetched, so each image not loaded yet is scrolled into view while waiting.
    """
    page.wait_for_function(
        f"() => {{ const imgs = [...document.querySelectorAll({selector!r} + ' img')];"
        " const waiting = imgs.filter(i => !(i.complete && i.naturalWidth > 0));"
        " if (waiting.length) waiting[0].scrollIntoView({block: 'center'});"
        " return imgs.length > 0 && waiting.length === 0; }",
        timeout=30_000,
    )


def test_each_task_gets_a_clean_run_view_and_results_survive_a_restart(tmp_path, tiny_sd):
    from playwright.sync_api import expect

    port = free_port()
    env = app_env(GRADIO_SERVER_PORT=str(port), BASE_MODELS=str(tiny_sd), POLL_INTERVAL_S="0.5",
                  TRAINING_RECIPES_MODULES="tests.test_worker_recipes")  # fmt: skip
    workdir = tmp_path / "app"
    workdir.mkdir()
    queue = make_queue(load_settings({"DATA_DIR": str(workdir / "data")}))  # the app's queue folder (file-locked)
    images = make_images(tmp_path / "photos", 3)
    url = f"http://127.0.0.1:{port}/"

    def status(task: Task) -> TaskStatus:
        return queue.get(task.id).status

    with run_app(workdir, env, tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app.log")
        page = b.new_page(viewport=DESKTOP)
        page.goto(url)
        page.get_by_role("tab", name="Run").click()

        # 1. A task that fails: its error is shown for it.
        failing = queue.enqueue(lora_task(str(tmp_path / "no-such-model")), images)
        wait_for(lambda: status(failing).terminal, 90, "the failing task to end")
        expect(page.get_by_text("Phase: failed")).to_be_visible(timeout=15_000)
        expect(page.get_by_text("Last error:")).to_be_visible()

        # 2. The next task trains with a clean view, and ends "done" with no stale error or ETA.
        good = queue.enqueue(lora_task(str(tiny_sd)), images)
        expect(page.get_by_text(f"task {good.id}").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Last error:")).to_have_count(0)
        wait_for(lambda: status(good).terminal, 180, "the tiny model to train")
        assert status(good) is TaskStatus.DONE, queue.get(good.id).last_error
        expect(page.get_by_text("Phase: done")).to_be_visible(timeout=15_000)
        expect(page.get_by_text("4 / 4 steps (100%)")).to_be_visible()
        expect(page.get_by_text("Last error:")).to_have_count(0)
        expect(page.get_by_text("ETA:")).to_have_count(0)
        shot(page, "local-run-done-after-a-failed-task")

        # 3. A task cancelled while it trains says so, with no ETA left behind.
        slow = queue.enqueue(Task(instance_prompt="a photo of sks cat", submitted_by="local", base_model="unused",
                                  recipe="test-slow", params={"steps": 300}, hardware="cpu-basic"), images)  # fmt: skip
        expect(page.get_by_text("ETA:")).to_be_visible(timeout=60_000)
        queue.cancel(slow.id)
        expect(page.get_by_text(f"Task {slow.id} was cancelled; its trainer was stopped.")).to_be_visible(timeout=20_000)
        expect(page.get_by_text("Phase: cancelled")).to_be_visible()
        expect(page.get_by_text("ETA:")).to_have_count(0)
        expect(page.get_by_text("Last error:")).to_have_count(0)
        expect(page.get_by_text(f"Last finished: task {good.id} (DONE")).to_be_visible()
        shot(page, "local-run-cancelled")

    # 4. A new app process on the same data dir: the Results tab still has everything.
    port = free_port()
    env["GRADIO_SERVER_PORT"] = str(port)
    url = f"http://127.0.0.1:{port}/"
    with run_app(workdir, env, tmp_path / "app2.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app2.log")
        page = b.new_page(viewport=DESKTOP)
        page.goto(url)
        page.get_by_role("tab", name="Run").click()
        expect(page.get_by_text(f"Last finished: task {good.id} (DONE")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="See the last finished task's results").click()
        summary = page.locator("#results-summary")
        expect(summary.get_by_text(f"Task {good.id}: DONE")).to_be_visible(timeout=30_000)
        expect(summary.get_by_text(str(Path(queue.get(good.id).result_url)))).to_be_visible()
        gallery = page.locator("#results-samples")
        expect(gallery.locator("img")).to_have_count(2, timeout=30_000)  # step 4 and step 2, one prompt each
        expect(page.locator("#results-loss").get_by_text("Training loss")).to_be_visible()
        expect(page.locator("#results-loss canvas, #results-loss svg").first).to_be_visible()
        settings = page.locator("#results-settings")
        expect(settings.get_by_role("cell", name="resolution", exact=True)).to_be_visible()
        expect(settings.get_by_role("cell", name="validation_every", exact=True)).to_be_visible()
        files = page.locator("#results-files")
        readme = files.get_by_role("row", name=re.compile(r"README\.md")).get_by_role("link")
        expect(readme).to_be_visible(timeout=30_000)
        expect(files.get_by_role("row", name=re.compile(r"\.safetensors")).get_by_role("link").first).to_be_visible()
        wait_for_images(page, "#results-samples")
        shot(page, "local-results")
        href = readme.get_attribute("href")
        assert href and "/data/" not in href
        with urllib.request.urlopen(urllib.parse.urljoin(url, href), timeout=30) as reply:
            body = reply.read()
        output = Path(queue.get(good.id).result_url)
        assert body == (output / "README.md").read_bytes()

        # The other finished tasks are there too, newest first; a failed one shows its error.
        page.get_by_label("Finished task").click()
        options = page.get_by_role("option")
        expect(options).to_have_count(3)
        expect(options.first).to_contain_text(slow.id)
        page.get_by_role("option", name=re.compile(failing.id)).click()
        expect(summary.get_by_text(f"Task {failing.id}: FAILED")).to_be_visible(timeout=30_000)
        expect(summary.get_by_text("Error:")).to_be_visible()
        expect(gallery.locator("img")).to_have_count(0)

        phone = b.new_page(viewport=PHONE)
        phone.goto(url)
        expect(phone.get_by_role("tab", name="Train")).to_be_visible(timeout=30_000)
        open_tab(phone, "Results")
        expect(phone.locator("#results-summary").get_by_text(f"Task {good.id}: DONE")).to_be_visible(timeout=30_000)
        expect(phone.locator("#results-samples img")).to_have_count(2, timeout=30_000)
        wait_for_images(phone, "#results-samples")
        shot(phone, "local-results-phone")
