"""Helpers of the browser tests: Debian's Chromium through Playwright, the app as a subprocess, screenshots."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import need
from tests.polling import free_port, wait_for, wait_http  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app.py"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def app_env(**extra: str) -> dict[str, str]:
    """The test process's environment without Hub identity or Space variables, plus ``extra``."""
    drop = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "SYSTEM", "ACCELERATOR")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("SPACE_", "PYTEST_"))}
    env.update(PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
    env.update(extra)
    return env


@contextlib.contextmanager
def run_app(cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``python app.py`` in ``cwd`` (its own process group), stopped afterwards. Its uploads go to a folder of its
    own (``GRADIO_TEMP_DIR``) unless ``env`` names one: Gradio names an upload by its content, so two apps sharing
    the default folder (tests run side by side) would remove each other's copies of the same test photos."""
    env = {"GRADIO_TEMP_DIR": str(cwd / "gradio-uploads"), **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, str(APP)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        stop_group(proc)


@dataclass
class LocalApp:
    """A running local-mode app (``local_app``): its URL, working folder, process and a headless browser."""

    url: str
    workdir: Path
    proc: subprocess.Popen
    browser: Any


@contextlib.contextmanager
def local_app(tmp_path: Path, *, wait_s: float = 90, **env: str) -> Iterator[LocalApp]:
    """``python app.py`` in local mode in ``tmp_path/app`` on a free port, polling its queue every half second, with
    ``env`` added to ``app_env``'s, once it serves; and a browser. Its log is ``tmp_path/app.log``."""
    port = free_port()
    workdir = tmp_path / "app"
    workdir.mkdir()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "app.log"
    with run_app(workdir, app_env(GRADIO_SERVER_PORT=str(port), POLL_INTERVAL_S="0.5", **env), log) as proc, \
            browser() as b:  # fmt: skip
        wait_http(url, wait_s, proc, log)
        yield LocalApp(url, workdir, proc, b)


def stop_group(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def browser() -> Iterator[object]:
    """A headless Debian Chromium (skips, or fails under CI, when it or Playwright is missing)."""
    need(CHROMIUM.exists(), "Debian's Chromium (/usr/bin/chromium) is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "playwright is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def create_app_space(hub, repo: str, cwd: Path, port: int, *, switch_delay_s: float, variables: dict[str, str],
                     env: dict[str, str] | None = None) -> None:
    """An emulated Space of alice's that runs this project's ``app.py`` in ``cwd`` on ``port`` with her token."""
    from tests.conftest import ALICE_TOKEN

    hub.create_space(
        repo,
        owner_token=ALICE_TOKEN,
        command=[sys.executable, str(APP)],
        cwd=cwd,
        env={"GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
             "GRADIO_TEMP_DIR": str(cwd / "gradio-uploads"), **(env or {})},  # its own uploads (see ``run_app``)
        switch_delay_s=switch_delay_s,
        secrets={"HF_TOKEN": ALICE_TOKEN},
        variables=variables,
    )


def open_page(b, url: str, viewport: dict[str, int] = DESKTOP):
    """A new page (a fresh browser context) at ``url``; navigations may take a minute on two busy cores."""
    page = b.new_page(viewport=viewport)
    page.set_default_navigation_timeout(60_000)
    page.goto(url)
    return page


def sign_in_owner(page) -> None:
    """Sign in through the (emulated) Hugging Face button and wait until the page greets alice as the owner."""
    import re

    from playwright.sync_api import expect

    page.get_by_role("button", name=re.compile("Sign in with Hugging Face")).click()
    expect(page.get_by_text("Signed in as alice (owner).")).to_be_visible(timeout=30_000)


def open_phone_form(b, url: str, name: str, check=None) -> None:
    """Open the app at phone width, wait for the Train button, run ``check(page)``, screenshot ``name``, close."""
    from playwright.sync_api import expect

    phone = b.new_page(viewport=PHONE)
    phone.goto(url)
    expect(phone.get_by_role("button", name="Train")).to_be_visible(timeout=30_000)
    if check is not None:
        check(phone)
    shot(phone, name)
    phone.close()


def shot(page, name: str, timeout_s: float = 90.0) -> Path:
    """Save a full-page screenshot under tests/artifacts/screenshots/ (it waits for the page to settle)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # Generous default: the "GPU" trains on the same two CPU cores that render the page.
    page.screenshot(path=str(path), full_page=True, animations="disabled", timeout=timeout_s * 1000)
    return path


def upload_photos(page, images: list[Path]) -> None:
    """Upload photos and wait until the upload handler has answered (its preview shows them all): the steps it sets
    may equal the ones already shown, so the steps box alone cannot tell."""
    from playwright.sync_api import expect

    page.locator("input[type=file]").first.set_input_files([str(p) for p in images])
    expect(page.locator("#photo-preview img")).to_have_count(len(images), timeout=30_000)


def fill_form(page, images: list[Path], prompt: str, steps: int, resolution: int = 256, score: bool = False) -> None:
    """Upload photos and fill the training form (waits for the upload handler before editing the steps). ``score``:
    leave "Score checkpoints" on (the form's default); off here by default, since sampling the base model and the
    built-in prompts at 256 px costs minutes on these CPUs and only the tests about scores need it."""
    from playwright.sync_api import expect

    from ui.estimate import auto_steps

    upload_photos(page, images)
    steps_box = page.get_by_label("Steps (auto from the photo count; editable)")
    expect(steps_box).to_have_value(str(auto_steps(len(images))), timeout=30_000)
    page.get_by_label("Instance prompt").fill(prompt)
    page.get_by_label("Instance prompt").blur()
    steps_box.fill(str(steps))
    steps_box.blur()
    page.get_by_text("Advanced").click()
    page.get_by_label("Resolution (px)").click()
    page.get_by_role("option", name=str(resolution), exact=True).click()
    if not score:
        page.get_by_label("Score checkpoints").uncheck()
