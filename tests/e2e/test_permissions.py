"""Who may enqueue: an anonymous visitor and a signed-in user who is not on ALLOWED_USERS cannot, neither through
the page (even with the disabled button forced on) nor by calling the endpoint directly.

The app runs in-process as the Space ``alice/...`` with ALLOWED_USERS=bob: carol (a session cookie of the mocked
sign-in, ``tests.signin``) is signed in but not allowed to spend; alice, the owner (who the local OAuth mock signs in,
through the emulator's whoami), may always submit although ALLOWED_USERS leaves her out (issue 26).
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

import pytest
from gradio_client import Client

from app import create_app
from contract.settings import load_settings
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.e2e.harness import DESKTOP, PHONE, browser, free_port, shot
from tests.signin import session_cookie
from ui.jobs_view import SIGN_IN_PROMPT

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def call_submit_directly(url: str) -> str:
    """POST to the (private, undocumented) submit endpoint like a script would; returns the event stream text."""
    data = [None, "", "a photo of sks dog", "", "m",  # no photos, no dataset, the prompts, the base model
            "dreambooth-lora", 4, "t4-small", 1e-4, 4, 256, "alice/x", True, "constant", 0, 0, True, False]  # fmt: skip
    req = urllib.request.Request(url + "gradio_api/call/submit", data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        event_id = json.loads(resp.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/submit/{event_id}", timeout=60) as resp:
        return resp.read().decode()


def test_anonymous_and_non_allowed_users_cannot_enqueue(hub, tmp_path):
    from playwright.sync_api import expect

    repo = f"alice/perm-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "ALLOWED_USERS": "bob",
                              "DATA_DIR": str(tmp_path / "data"), "POLL_INTERVAL_S": "5"})  # fmt: skip
    app = create_app(settings)
    assert not app.problems
    url = app.launch(block=False, server_name="127.0.0.1", server_port=free_port())
    try:
        # A script: the endpoint is hidden from API clients, and a raw call is refused by the handler.
        assert "/submit" not in json.dumps(Client(url, verbose=False).view_api(print_info=False, return_format="dict"))
        stream = call_submit_directly(url)
        assert "event: error" in stream and "Sign in with Hugging Face first" in stream

        with browser() as b:
            page = b.new_page(viewport=PHONE)
            page.goto(url)
            expect(page.get_by_text("Sign in with Hugging Face to submit training tasks.")).to_be_visible(timeout=30_000)
            expect(page.get_by_role("button", name="Train")).to_be_disabled()
            shot(page, "perm-anonymous-phone")

            page.set_viewport_size(DESKTOP)
            # No empty controls for a visitor who may not act: a sign-in prompt instead (issue 21, item 12).
            page.get_by_role("tab", name="Queue").click()
            prompt = page.get_by_text("Sign in with Hugging Face (top right) as an allowed user")
            expect(prompt).to_be_visible(timeout=30_000)
            expect(page.get_by_text("No tasks to show.")).to_have_count(0)
            for button in ("Cancel task", "Retry task", "Delete task and photos"):
                expect(page.get_by_role("button", name=button)).to_be_hidden()
            shot(page, "perm-anonymous-queue")
            page.get_by_role("tab", name="Run").click()
            expect(page.get_by_text(SIGN_IN_PROMPT)).to_be_visible()
            expect(page.locator("#run-loss")).to_be_hidden()
            expect(page.get_by_label("Trainer log (tail)")).to_be_hidden()
            shot(page, "perm-anonymous-run")
            page.close()
            # carol, signed in but not on the allowed users: the button is off, and the server refuses anyway.
            context = b.new_context(viewport=DESKTOP)
            context.add_cookies([{"name": "session", "value": session_cookie("carol"), "url": url}])
            page = context.new_page()
            page.goto(url)
            expect(page.get_by_text("who is not on this Space's allowed users", exact=False)).to_be_visible(timeout=30_000)
            expect(page.get_by_role("button", name="Train")).to_be_disabled()
            # Bypass the disabled button: the server still refuses (her photo uploads are refused already:
            # ``ui.http_guard``, tests/test_http_guard.py).
            page.get_by_label("Instance prompt").fill("a photo of sks dog")
            page.get_by_role("button", name="Train").evaluate("b => { b.disabled = false; b.click(); }")
            expect(page.get_by_text("not on this Space's allowed users. Ask the owner", exact=False).first).to_be_visible(
                timeout=30_000)  # fmt: skip
            shot(page, "perm-not-allowed-refused")
            context.close()
            # The owner, whom ALLOWED_USERS leaves out, may still submit and reach the settings (to add users), and
            # sees no secret.
            page = b.new_page(viewport=DESKTOP)
            page.goto(url)
            page.get_by_role("button", name=re.compile("Sign in with Hugging Face")).click()
            expect(page.get_by_text("Signed in as alice (owner).")).to_be_visible(timeout=30_000)
            expect(page.get_by_role("button", name="Train")).to_be_enabled()
            page.get_by_role("tab", name="Settings").click()
            expect(page.get_by_text("Change this Space's variables")).to_be_visible()
            expect(page.get_by_text("set (hidden)")).to_be_visible()
            shot(page, "perm-owner-settings")
            assert ALICE_TOKEN not in page.content()
            page.get_by_role("tab", name="Queue").click()  # the owner may act on tasks: the controls stay
            expect(page.get_by_role("button", name="Cancel task")).to_be_visible()
            expect(page.get_by_text("No tasks to show.")).to_be_visible()
    finally:
        app.close()
    assert app.worker.queue.list() == []
    assert hub.requests("POST", rf"^/api/spaces/{repo}/hardware$") == []
