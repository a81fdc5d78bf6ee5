"""The Run tab per task and the Results tab, in the browser: ``python app.py`` in local mode on a tiny model.

Three tasks go through the real app (queued into its on-disk queue from the test, as ``python -m scheduler submit``
would): one that fails, one that trains and succeeds, one that is cancelled while it trains (the stand-in slow
recipe of tests/test_worker_recipes.py: a tiny model trains too fast to be cancelled half-way). Each leaves a clean
run view. Then the app is restarted on the same data dir and the Results tab still shows the finished task's samples,
loss curve, settings and download links.
"""

from __future__ import annotations

import re
import time
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


#: the images under a selector that have not loaded yet ([src, complete, naturalWidth]), the first scrolled into view
IMAGES_WAITING = """sel => { const imgs = [...document.querySelectorAll(sel + ' img')];
  const waiting = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
  if (waiting.length) waiting[0].scrollIntoView({block: 'center'});
  return imgs.length ? waiting.map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth]) : null; }"""


def wait_for_images(page, selector: str, timeout_s: float = 90) -> None:
    """Until every image under ``selector`` has loaded and decoded (before a screenshot); on timeout, the error names
    the images still waiting (a broken one is complete with no width: its URL did not answer with an image).

    Gradio's gallery marks its images ``loading="lazy"``: one below the fold of a phone-sized page is never
    fetched, so each image not loaded yet is scrolled into view while waiting.
    """
    waiting = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        waiting = page.evaluate(IMAGES_WAITING, selector)
        if waiting == []:
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"images under {selector} still not loaded after {timeout_s:.0f} s: "
                         f"{waiting if waiting is not None else 'no image at all'}")  # fmt: skip


#: the texts of the chart in ``selector`` as drawn (Gradio's plot or this app's SVG): text, left, right, top
CHART_TEXTS = """sel => { const svg = document.querySelector(`${sel} svg.loss-chart, ${sel} svg.marks`);
  if (!svg) return null;
  const box = svg.getBoundingClientRect();
  return {width: box.width, texts: [...svg.querySelectorAll('text')].map(t => { const b = t.getBoundingClientRect();
    return [t.textContent, b.left - box.left, b.right - box.left, b.top - box.top]; })}; }"""


def chart_labels(page, selector: str) -> list[float]:
    """The loss chart's y-axis labels, top to bottom, after checking that every text of the chart is drawn inside it
    (issue 21, item 15: ".120" was shown for "1.120")."""
    drawn = page.evaluate(CHART_TEXTS, selector)
    assert drawn is not None, f"no chart in {selector}"
    for text, left, right, _ in drawn["texts"]:
        assert left >= -0.5 and right <= drawn["width"] + 0.5, (selector, text, left, right, drawn["width"])
    numbers = [t for t in drawn["texts"] if re.fullmatch(r"-?\d+(\.\d+)?", t[0])]
    right_edge = min(t[2] for t in numbers)  # the y labels end where the plot starts; the x labels further right
    labels = [float(t[0]) for t in sorted((t for t in numbers if abs(t[2] - right_edge) < 2), key=lambda t: t[3])]
    assert len(labels) >= 2 and labels == sorted(labels, reverse=True), labels  # a numeric axis, highest on top
    return labels


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
        chart_labels(page, "#run-loss")  # drawn while the curve grew, every label whole
        shot(page, "local-run-done-after-a-failed-task")

        # 3. A task cancelled while it trains says so, with no ETA left behind.
        slow = queue.enqueue(Task(instance_prompt="a photo of sks cat", submitted_by="local", base_model="unused",
                                  recipe="test-slow", params={"steps": 300}, hardware="cpu-basic"), images)  # fmt: skip
        expect(page.get_by_text("ETA:")).to_be_visible(timeout=60_000)
        # Cancelled from the Queue tab: its row says so at once (issue 21, item 6), not RUNNING under the message.
        page.get_by_role("tab", name="Queue").click()
        page.locator("#queue-pick input").click()
        page.get_by_role("option", name=slow.id, exact=True).click()
        page.get_by_role("button", name="Cancel task").click()
        expect(page.get_by_text(f"Task {slow.id} is CANCELLED.")).to_be_visible(timeout=20_000)
        expect(page.locator(f'#queue-table tr[data-task="{slow.id}"] td.q-status')).to_have_text("CANCELLED")
        shot(page, "local-queue-cancelled")
        page.get_by_role("tab", name="Run").click()
        expect(page.get_by_text(f"Task {slow.id} was cancelled; its trainer was stopped.")).to_be_visible(timeout=20_000)
        expect(page.get_by_text("Phase: cancelled")).to_be_visible()
        expect(page.get_by_text("ETA:")).to_have_count(0)
        expect(page.get_by_text("Last error:")).to_have_count(0)
        expect(page.get_by_text(f"Last finished: task {good.id} (DONE")).to_be_visible()
        shot(page, "local-run-cancelled")
        # The Results tab opens on the task that finished last, not on the first one this page saw end (item 9).
        page.get_by_role("tab", name="Results").click()
        expect(page.locator("#results-summary").get_by_text(f"Task {good.id}: DONE")).to_be_visible(timeout=30_000)
        chart_labels(page, "#results-loss")
        shot(page, "local-results-follow-the-newest")

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


EVIL = "evil.example"
#: a prompt (and class prompt, validation prompt, error) as an allowed user could write it: a tracking pixel, a
#: phishing link, raw HTML with a script, a bare URL and Gradio's maths (issue 20, finding 7)
HOSTILE = (f'![x](https://{EVIL}/p.png) [click](https://{EVIL}/login) <img src=x onerror="window.__xss = 1"> '
           f"https://{EVIL}/bare www.{EVIL} **bold** $$\\href{{https://{EVIL}}}{{x}}$$")  # fmt: skip


def test_a_hostile_prompt_is_text_in_the_results_and_run_tabs(tmp_path):
    """The owner opens the Run and Results tabs of tasks whose prompt, settings, error and result link were written
    by another user: Gradio's Markdown shows them as text, with no image or link to evil.example and no request
    to it."""
    from playwright.sync_api import expect

    from scheduler.queue.local import LocalQueue

    port = free_port()
    workdir = tmp_path / "app"
    queue = LocalQueue(workdir / "data" / "queue")
    photos = make_images(tmp_path / "photos", 1, size=128)
    params = {"validation_prompts": [HOSTILE], "steps": 10}
    failed = queue.enqueue(Task(instance_prompt=HOSTILE, class_prompt=HOSTILE, submitted_by="bob", base_model="some/model",
                                params=params, created_at=1_700_000_000.0), photos)  # fmt: skip
    queue.claim(failed.id, "w", 60)
    queue.fail(failed.id, "w", HOSTILE)
    done = queue.enqueue(Task(instance_prompt=HOSTILE, submitted_by="bob", base_model="some/model", output_repo="bob/m",
                              created_at=1_700_000_100.0), photos)  # fmt: skip
    queue.claim(done.id, "w", 60)
    queue.complete(done.id, "w", f"https://{EVIL}/bob/m")  # not a Hub page: never a link
    url = f"http://127.0.0.1:{port}/"
    with run_app(workdir, app_env(GRADIO_SERVER_PORT=str(port)), tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app.log")
        context = b.new_context(viewport=DESKTOP)
        asked: list[str] = []

        def pixel(route) -> None:
            asked.append(route.request.url)
            route.fulfill(status=204)

        context.route(re.compile(rf"^https?://([^/]*\.)?{re.escape(EVIL)}(/|$)"), pixel)
        page = context.new_page()
        page.goto(url)

        def nothing_hostile() -> None:
            assert page.locator(f'img[src*="{EVIL}"], a[href*="{EVIL}"], .katex, .katex-error').count() == 0
            assert page.evaluate("window.__xss") is None and asked == [], asked

        page.get_by_role("tab", name="Run").click()
        expect(page.get_by_text(f"Last finished: task {done.id} (DONE")).to_be_visible(timeout=30_000)
        nothing_hostile()
        expect(page.locator("#run-phase").get_by_text(HOSTILE[:60], exact=False)).to_be_visible()  # text, as typed

        page.get_by_role("button", name="See the last finished task's results").click()
        summary = page.locator("#results-summary")
        expect(summary.get_by_text(f"Task {done.id}: DONE")).to_be_visible(timeout=30_000)
        expect(summary.get_by_text(f"https://{EVIL}/bob/m")).to_be_visible()  # said, not linked
        nothing_hostile()

        page.get_by_label("Finished task").click()
        page.get_by_role("option", name=re.compile(failed.id)).click()
        expect(summary.get_by_text(f"Task {failed.id}: FAILED")).to_be_visible(timeout=30_000)
        expect(summary.get_by_text(HOSTILE).first).to_be_visible()  # the prompt and the error, whole
        settings = page.locator("#results-settings")
        expect(settings.get_by_role("cell", name=HOSTILE, exact=True)).to_have_count(1)  # the class prompt
        expect(settings.get_by_role("cell", name="validation_prompts", exact=True)).to_be_visible()
        assert page.locator("#results-summary img, #results-settings img").count() == 0
        nothing_hostile()
        shot(page, "results-hostile-prompt")
        context.close()
