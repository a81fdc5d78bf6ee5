"""The Queue tab in a real browser: long results and notes are readable (not clipped) on a desktop and on a phone,
Hub results are links that open, and a prompt with markup stays text.

The app runs in local mode on a queue prepared before it starts: a DONE task whose result is a long Hub URL and a
FAILED task with a long note and a prompt carrying an ``<img onerror>``. The Hub page the link opens is answered by
the browser's own route (this machine has no network).
"""

from __future__ import annotations

import pytest

from scheduler.queue.local import LocalQueue
from scheduler.task import Task
from tests.e2e.harness import DESKTOP, PHONE, app_env, browser, free_port, run_app, shot, wait_http
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = "alice/dreambooth-a-photo-of-sks-dog-on-the-beach-at-sunset-with-a-very-long-name-v2"
URL = f"https://huggingface.co/{REPO}"
NOTE = ("Hardware request refused: the account alice has no payment method on file, so the Hub will not start "
        "Nvidia T4 small; add one at https://huggingface.co/settings/billing and press Retry task.")  # fmt: skip
HOSTILE = 'a photo of zwx cat <img src=x onerror="window.__xss = 1">'


def prepare_queue(folder, photos) -> tuple[Task, Task]:
    """A DONE task with a long Hub URL result and a FAILED task with a long note, as the worker leaves them."""
    queue = LocalQueue(folder)
    done = queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="local", base_model="some/model",
                              created_at=1_700_000_000.0), photos)  # fmt: skip
    queue.claim(done.id, "w", 60)
    queue.complete(done.id, "w", URL)
    failed = queue.enqueue(Task(instance_prompt=HOSTILE, submitted_by="local", base_model="some/model",
                                created_at=1_700_000_100.0), photos)  # fmt: skip
    queue.claim(failed.id, "w", 60)
    queue.fail(failed.id, "w", NOTE)
    return done, failed


def assert_fully_visible(page, locator, text: str, width: int) -> None:
    """``locator`` shows ``text`` whole: not clipped by its box, and its box inside the viewport's width."""
    from playwright.sync_api import expect

    expect(locator).to_be_visible()
    assert text in locator.inner_text()
    overflow = locator.evaluate("el => [el.scrollWidth, el.clientWidth]")
    assert overflow[0] <= overflow[1], f"clipped: scrollWidth {overflow[0]} > clientWidth {overflow[1]}"
    box = locator.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, box


def test_queue_table_is_readable_and_clickable_on_desktop_and_phone(tmp_path):
    from playwright.sync_api import expect

    port = free_port()
    workdir = tmp_path / "app"
    done, failed = prepare_queue(workdir / "data" / "queue", make_images(tmp_path / "photos", 3, size=128))
    url = f"http://127.0.0.1:{port}/"
    with run_app(workdir, app_env(GRADIO_SERVER_PORT=str(port)), tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app.log")
        for name, viewport in (("desktop", {**DESKTOP, "width": 1100}), ("phone", PHONE)):
            context = b.new_context(viewport=viewport)
            context.route("https://huggingface.co/**", lambda route: route.fulfill(body="<h1>the model page</h1>", content_type="text/html"))
            page = context.new_page()
            page.goto(url)
            page.get_by_role("tab", name="Queue").click()
            row = page.locator(f'#queue-table tr[data-task="{failed.id}"]')
            expect(row).to_be_visible(timeout=30_000)

            note = row.locator("td.q-note")
            assert_fully_visible(page, note, NOTE, viewport["width"])
            prompt = row.locator("td.q-prompt")
            assert_fully_visible(page, prompt, HOSTILE, viewport["width"])  # the markup is text
            assert page.evaluate("window.__xss") is None
            link = page.locator(f'#queue-table tr[data-task="{done.id}"] a')
            expect(link).to_have_text(REPO)
            assert_fully_visible(page, link.locator("xpath=.."), REPO, viewport["width"])
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]  # no sideways scroll
            for cell in ("this machine", "free"):
                expect(row.get_by_text(cell, exact=True)).to_be_visible()
            if name == "phone":  # a card per task: labels beside the values, no header row
                expect(page.locator("#queue-table thead")).to_be_hidden()
            else:
                expect(page.locator("#queue-table thead")).to_be_visible()
                # Cells are table cells to assistive technology (and to tests: role "cell", not a grid's "gridcell").
                expect(page.get_by_role("cell", name="DONE", exact=True)).to_have_count(1)
                expect(page.get_by_role("columnheader", name="Note", exact=True)).to_be_visible()
            shot(page, f"queue-table-{name}")

            with page.expect_popup() as popup_info:
                link.click()
            popup = popup_info.value
            popup.wait_for_load_state()
            assert popup.url == URL
            expect(popup.get_by_text("the model page")).to_be_visible()
            assert page.url == url  # the app's page stays
            context.close()
