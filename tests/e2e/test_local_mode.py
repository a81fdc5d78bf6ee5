"""Local mode end to end: ``python app.py`` in an empty folder, a task submitted in the browser, trained here.

No Hub is involved: the app gets no token, its queue is ``./data/queue`` and the base model is a local folder.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.harness import DESKTOP, app_env, browser, fill_form, free_port, open_phone_form, run_app, shot, wait_http
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_local_mode_trains_a_task_submitted_in_the_browser(tmp_path, tiny_sd):
    from playwright.sync_api import expect

    port = free_port()
    env = app_env(GRADIO_SERVER_PORT=str(port), BASE_MODELS=str(tiny_sd), POLL_INTERVAL_S="0.5")
    images = make_images(tmp_path / "photos", 3, size=128)
    workdir = tmp_path / "app"
    workdir.mkdir()
    url = f"http://127.0.0.1:{port}/"
    with run_app(workdir, env, tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app.log")
        open_phone_form(b, url, "local-form-phone")

        page = b.new_page(viewport=DESKTOP)
        page.goto(url)
        expect(page.get_by_text("Local mode: training runs on this machine.")).to_be_visible(timeout=30_000)
        # The idle Run tab settles: its empty loss plot once re-laid the page out forever (a busy browser core, and
        # a screenshot that never completed).
        page.get_by_role("tab", name="Run").click()
        expect(page.get_by_text("no training step yet")).to_be_visible(timeout=10_000)
        shot(page, "local-run-idle", timeout_s=20)
        page.get_by_role("tab", name="Train").click()
        # Nothing is queued when the form is incomplete.
        page.get_by_role("button", name="Train").click()
        expect(page.get_by_text("Nothing was queued")).to_be_visible(timeout=30_000)
        shot(page, "local-form-errors")

        fill_form(page, images, "a photo of sks dog", steps=4)
        expect(page.get_by_text("Estimate:")).to_be_visible()
        shot(page, "local-form-filled")
        page.get_by_role("button", name="Train").click()
        expect(page.get_by_text(re.compile(r"Task \w+ queued with 3 photos")).first).to_be_visible(timeout=30_000)
        shot(page, "local-submitted")

        page.get_by_role("tab", name="Queue").click()
        expect(page.get_by_role("cell", name="DONE", exact=True)).to_be_visible(timeout=150_000)
        shot(page, "local-queue-done")
        page.get_by_role("tab", name="Run").click()
        expect(page.get_by_text("4 / 4 steps (100%)")).to_be_visible(timeout=10_000)
        shot(page, "local-run-done")

        tasks = json.loads((workdir / "data" / "queue" / "queue.json").read_text())["tasks"]
        assert [t["status"] for t in tasks] == ["DONE"]
        task = tasks[0]
        assert task["params"]["steps"] == 4 and task["params"]["resolution"] == 256
        assert task["images"]["count"] == 3
        output = workdir / "data" / "runs" / task["id"] / "work" / "output"
        assert task["result_url"] == str(output)
        assert any(output.glob("*.safetensors")) and (output / "README.md").is_file()
        # Its photos went with the DONE commit (KEEP_PHOTOS is off), and so did the worker's copy of them.
        assert not (workdir / "data" / "queue" / "images" / task["id"]).exists()
        assert not (workdir / "data" / "runs" / task["id"] / "images").exists()

        # The owner deletes the finished task: its photos go, the model stays.
        page.get_by_role("tab", name="Queue").click()
        page.get_by_label("Task", exact=True).click()
        page.get_by_role("option", name=task["id"]).click()
        page.get_by_role("button", name="Delete task and photos").click()
        expect(page.get_by_text(re.compile(rf"Task {task['id']} was deleted with its photos"))).to_be_visible(timeout=30_000)
        expect(page.get_by_role("cell", name="DONE", exact=True)).to_have_count(0, timeout=30_000)
        shot(page, "local-queue-deleted")

    assert json.loads((workdir / "data" / "queue" / "queue.json").read_text())["tasks"] == []
    assert not (workdir / "data" / "queue" / "images" / task["id"]).exists()
    assert not (workdir / "data" / "runs" / task["id"] / "images").exists()
    assert any(output.glob("*.safetensors")) and (output / "README.md").is_file()
