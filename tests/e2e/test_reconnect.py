"""A page open during a hardware switch says what is happening and reloads into the new app by itself.

The emulator runs ``app.py`` as a Space on cpu-basic and restarts it on every hardware change. The test opens the
page, asks the emulator for t4-small (as the owner's app would after a submit) and never reloads the page itself:
the page shows the restart banner while no app answers, then reloads into the app on t4-small; that app, with
nothing to train, releases the Space, and the page follows it back to cpu-basic the same way.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
from huggingface_hub import HfApi

from tests.conftest import ALICE_TOKEN
from tests.e2e.harness import (
    DESKTOP,
    app_env,
    browser,
    create_app_space,
    free_port,
    run_app,
    shot,
    stop_group,
    wait_for,
    wait_http,
)
from ui.reconnect import BANNER_TEXT, LOCAL_BANNER_TEXT

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SWITCH_DELAY_S = 8.0  # the app on t4-small serves that long after it asks to go back: time to reload into it


def boot_id(page) -> str | None:
    """The boot id the page was served with; None while it is (re)loading."""
    try:
        return page.evaluate("window.__appReconnect ? window.__appReconnect.boot : null")
    except Exception:  # noqa: BLE001 - the page is navigating
        return None


def follow_switch(page, hub, repo: str, before: str, hardware: str, name: str) -> str:
    """Wait for the banner (screenshot ``name``), then for the page to reload by itself into a new app on
    ``hardware``; returns the new boot id."""
    from playwright.sync_api import expect

    banner = page.locator("#restart-banner")
    expect(banner).to_be_visible(timeout=90_000)
    expect(banner).to_have_text(BANNER_TEXT)
    shot(page, name, timeout_s=30)
    wait_for(lambda: boot_id(page) not in (None, before), 120, f"the page to reload into the app on {hardware}")
    after = boot_id(page)
    expect(page.locator("#hardware")).to_have_text(re.compile(rf"Hardware:\s*{re.escape(hardware)}"), timeout=30_000)
    expect(banner).to_have_count(0)  # a new page, no banner
    return after


def test_page_shows_the_restart_banner_and_reloads_into_the_new_app(hub, tmp_path):
    from playwright.sync_api import expect

    repo = f"alice/reconnect-{uuid.uuid4().hex[:6]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cwd = tmp_path / "space"
    cwd.mkdir()
    create_app_space(hub, repo, cwd, port, switch_delay_s=SWITCH_DELAY_S, variables={"POLL_INTERVAL_S": "1"})
    try:
        hub.wait_for_stage(repo, "RUNNING", timeout_s=60)
        wait_http(url, 90)
        with browser() as b:
            page = b.new_page(viewport=DESKTOP)
            page.set_default_navigation_timeout(60_000)
            loads: list[float] = []
            page.on("load", lambda _: loads.append(time.monotonic()))
            page.goto(url)
            expect(page.locator("#hardware")).to_have_text(re.compile(r"Hardware:\s*CPU basic"), timeout=30_000)
            first = boot_id(page)
            assert first and page.locator("#restart-banner").count() == 0
            page.wait_for_timeout(6_000)  # a poll or two while the app answers: no banner
            expect(page.locator("#restart-banner")).to_have_count(0)

            HfApi(endpoint=hub.url, token=ALICE_TOKEN).request_space_hardware(repo, "t4-small")
            on_gpu = follow_switch(page, hub, repo, first, "Nvidia T4 small", "reconnect-banner")
            shot(page, "reconnect-reloaded-on-t4", timeout_s=30)
            # The app on t4-small has nothing to train and moves the Space back; the page follows again.
            back = follow_switch(page, hub, repo, on_gpu, "CPU basic", "reconnect-banner-back-to-cpu")
            assert len({first, on_gpu, back}) == 3
            assert len(loads) == 3  # the test's own goto, then two reloads by the page itself
            shot(page, "reconnect-reloaded-on-cpu", timeout_s=30)
    finally:
        hub.stop_space(repo)


def test_gradios_connection_lost_toast_is_hidden_while_the_banner_shows(tmp_path):
    """Issue 21, item 11: the app's banner alone says what happens, not Gradio's "Connection Lost" toast beside it.
    The app (local mode) is stopped under an open page: Gradio's toast comes (its timer's call fails) and stays in
    the page, hidden while the banner shows."""
    from playwright.sync_api import expect

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    workdir = tmp_path / "app"
    workdir.mkdir()
    with run_app(workdir, app_env(GRADIO_SERVER_PORT=str(port)), tmp_path / "app.log") as proc, browser() as b:
        wait_http(url, 90, proc, tmp_path / "app.log")
        page = b.new_page(viewport=DESKTOP)
        page.set_default_navigation_timeout(60_000)
        page.goto(url)
        expect(page.locator("#hardware")).to_have_text(re.compile(r"Hardware:\s*this machine"), timeout=30_000)
        assert page.locator("#restart-banner").count() == 0

        stop_group(proc)  # the app goes away under the open page

        toast = page.locator(".toast-wrap .toast-body.error")
        expect(toast.first).to_be_attached(timeout=30_000)  # Gradio did raise its toast...
        expect(toast.first).to_contain_text("Connection to the server was lost")
        banner = page.locator("#restart-banner")
        expect(banner).to_be_visible(timeout=30_000)
        expect(banner).to_have_text(LOCAL_BANNER_TEXT)
        expect(toast.first).to_be_hidden()  # ...and the banner alone shows
        shot(page, "reconnect-banner-without-gradio-toast", timeout_s=30)
