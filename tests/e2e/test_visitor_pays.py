"""The visitor-pays mode (``BILLING=visitor``, issue 25) in a real browser: two visitors, each signed in through
OAuth with the ``jobs`` and ``contribute-repos`` scopes, open alice's public Space, upload photos and press Train.

The app runs in-process as the Space ``alice/...`` with her token as its ``HF_TOKEN``. Each visitor is a browser
context holding the session cookie the sign-in leaves (``tests.signin``, their emulated OAuth token inside). Their
tasks go to their own private queue repos and run as Jobs in their own namespaces: ``python -m scheduler run-task``
from this checkout trains the tiny model with the real LoRA recipe and uploads it to the visitor's private model repo.
The owner's Jobs ledger stays as it was, no visitor's token reaches a page, and each page shows only its own visitor.
"""

from __future__ import annotations

import re
import uuid

import pytest
from huggingface_hub import HfApi

from app import create_app
from contract.settings import load_settings
from scheduler.task import TaskStatus
from scheduler.visitor_queue import visitor_queue_repo
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.e2e.harness import DESKTOP, browser, fill_form, free_port, shot, wait_for
from tests.signin import session_cookie
from tests.tiny_models import make_images

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SCOPES = "openid profile jobs contribute-repos"
FLAVOR = "t4-small"


def test_two_visitors_train_on_their_own_credit_and_each_page_shows_only_its_visitor(hub, tmp_path, tiny_sd):
    from playwright.sync_api import expect

    repo = f"alice/open-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    hub.configure_jobs(scheduling_s=0.5, flavor_env={FLAVOR: {"DATA_DIR": str(tmp_path / "job-data"),
                                                              "OMP_NUM_THREADS": "1"}})  # fmt: skip
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "BILLING": "visitor", "BASE_MODELS": str(tiny_sd), "DATA_DIR": str(tmp_path / "data"),
                              "RETRY_BASE_S": "0.01"})  # fmt: skip
    app = create_app(settings)
    assert not app.problems, app.problems
    owner_jobs = len(hub.jobs("alice"))
    visitors = {}
    for who in ("dana", "erin"):
        name, token = f"{who}{uuid.uuid4().hex[:6]}", f"hf_oauth_fake_{uuid.uuid4().hex}"
        hub.add_oauth_user(name, token, scopes=SCOPES.split(), expires_in=8 * 3600)
        visitors[who] = (name, token)
    url = app.launch(block=False, server_name="127.0.0.1", server_port=free_port())
    try:
        with browser() as b:
            pages = {}
            for who, (name, token) in visitors.items():
                context = b.new_context(viewport=DESKTOP)
                context.add_cookies([{"name": "session", "url": url,
                                      "value": session_cookie(name, token=token, scope=SCOPES)}])  # fmt: skip
                page = context.new_page()
                page.set_default_navigation_timeout(60_000)
                page.goto(url)
                expect(page.get_by_text(f"Signed in as {name}.")).to_be_visible(timeout=30_000)
                expect(page.get_by_text("on their own Hugging Face Jobs credit")).to_be_visible()
                expect(page.locator("#hardware")).to_contain_text("each visitor trains as a Hugging Face Job")
                expect(page.locator("#estimate")).to_contain_text("as a Hugging Face Job", timeout=30_000)
                fill_form(page, make_images(tmp_path / who, 3, size=96), f"a photo of sks {who}", steps=2)
                pages[who] = page
            for page in pages.values():  # both press Train before either Job ends: two trainings at once
                page.get_by_role("button", name="Train").click()
            for who, page in pages.items():
                name, _ = visitors[who]
                answer = page.get_by_text(re.compile(r"It trains as Hugging Face Job \w+ in your account"))
                expect(answer).to_be_visible(timeout=60_000)
                expect(page.get_by_text(visitor_queue_repo(name))).to_be_visible()
                shot(page, f"visitor-{who}-queued")

            def done(name: str, token: str):
                tasks = [t for t in _visitor_tasks(hub.url, name, token) if t.status.terminal]
                return tasks or None

            for who, (name, token) in visitors.items():
                (task,) = wait_for(lambda n=name, t=token: done(n, t), 240, f"{who}'s Job to end")
                assert task.status is TaskStatus.DONE, task.last_error
                api = HfApi(endpoint=hub.url, token=token)
                assert task.output_repo.startswith(f"{name}/") and api.model_info(task.output_repo).private
                assert [p["namespace"] for p in hub.jobs_ledger(name)] == [name]
                other = next(n for n in visitors.values() if n[0] != name)
                page = pages[who]
                page.get_by_role("tab", name="Queue").click()  # "Your tasks": read with this visitor's token
                page.get_by_role("button", name="Refresh", exact=True).click()
                mine = page.locator("#visitor-tasks")
                expect(mine).to_contain_text(task.id, timeout=30_000)
                expect(mine).to_contain_text("DONE")
                expect(mine).to_contain_text(hub.jobs(name)[0]["id"])  # its Job, read from the visitor's namespace
                expect(mine.get_by_role("link", name=task.output_repo)).to_be_visible()
                shot(page, f"visitor-{who}-your-tasks")
                for tab, box in (("Run", "#run-phase"), ("Results", "#results-summary")):  # where their runs are
                    page.get_by_role("tab", name=tab).click()
                    expect(page.locator(box)).to_contain_text("Your runs train as Hugging Face Jobs in your own account",
                                                              timeout=30_000)  # fmt: skip
                for text in (other[0], other[1], token, ALICE_TOKEN):  # neither the other visitor nor any token
                    assert text not in page.content(), text
            assert len(hub.jobs("alice")) == owner_jobs  # the owner paid nothing
            assert not [r for r in hub.requests() if r.method != "GET" and f"/{repo}" in r.path and "hardware" in r.path]
    finally:
        app.close()


def _visitor_tasks(endpoint: str, name: str, token: str):
    """The visitor's tasks, read with their own token (the queue repo is private to them)."""
    from scheduler.queue.hub import HubQueue

    return HubQueue(HfApi(endpoint=endpoint, token=token), visitor_queue_repo(name)).list()
