"""The built app in the visitor-pays mode (``BILLING=visitor``, issue 25) and visitors signed in through OAuth on
the emulator, for the tests that drive its real Gradio handlers (tests/test_visitor_mode.py, tests/test_visitor_
tasks.py).

``run_handler`` calls a handler as Gradio does for a request of a visitor's session: Gradio's own injection
(``gradio.helpers.special_args``) gives it the ``gr.OAuthProfile`` and ``gr.OAuthToken`` that session carries (as
tests/test_visitor_signin_gradio.py does); the HTTP sign-in itself is not driven here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio.helpers import special_args
from starlette.requests import Request as StarletteRequest

from app import App, create_app
from contract.settings import load_settings
from scheduler.visitor_token import VisitorToken, read_visitor_token
from tests.conftest import ALICE_TOKEN, MOCK_SIGNIN
from tests.tiny_models import make_images

FULL = ("openid", "profile", "jobs", "contribute-repos")


@dataclass
class Visitor:
    name: str
    token: str
    scope: str
    expires_at: float


def visitor(hub, scopes=FULL, expires_in: float = 8 * 3600) -> Visitor:
    name, token = f"vm{uuid.uuid4().hex[:8]}", f"hf_oauth_fake_{uuid.uuid4().hex}"
    expires_at = hub.add_oauth_user(name, token, scopes=scopes, expires_in=expires_in)
    return Visitor(name, token, " ".join(scopes), expires_at)


def read_token(hub, v: Visitor) -> VisitorToken:
    """``v``'s sign-in as the app reads it (scopes and expiry checked with whoami)."""
    return read_visitor_token(SimpleNamespace(token=v.token, scope=v.scope, expires_at=v.expires_at), endpoint=hub.url)


def session_of(v: Visitor | None) -> dict:
    """The session a sign-in leaves (Gradio's OAuth callback stores ``oauth_info``); {} when anonymous."""
    if v is None:
        return {}
    return {"oauth_info": {"access_token": v.token, "token_type": "bearer", "scope": v.scope,
                           "expires_at": int(v.expires_at), "userinfo": {"preferred_username": v.name, "name": v.name,
                                                                         "profile": "", "picture": ""}}}  # fmt: skip


def run_handler(demo: gr.Blocks, api_name: str | None, data: list, v: Visitor | None, fn=None,
                origin: str | None = None) -> list:  # fmt: skip
    """Call the handler of event ``api_name`` (or ``fn``) as Gradio does for a request of ``v``'s session (sent by
    a page at ``origin``, when given)."""
    if fn is None:
        fn = next(f.fn for f in demo.fns.values() if f.api_name == api_name)
    headers = [(b"origin", origin.encode()), (b"host", b"127.0.0.1:7860")] if origin else []
    request = gr.Request(StarletteRequest({"type": "http", "headers": headers, "session": session_of(v)}))
    inputs, *_ = special_args(fn, list(data), request)
    return list(fn(*inputs))


@contextmanager
def open_space_app(hub, tmp_path: Path, tiny_sd: Path, **env: str) -> Iterator[App]:
    """alice's Space with BILLING=visitor (her token is its HF_TOKEN: it must never be used for a visitor), built
    and closed; ``env`` adds settings."""
    repo = f"alice/open-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    settings = load_settings({**MOCK_SIGNIN, "SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url,
                              "BILLING": "visitor", "BASE_MODELS": str(tiny_sd), "DATA_DIR": str(tmp_path / "data"),
                              "RETRY_BASE_S": "0.01", **env})  # fmt: skip
    app = create_app(settings)
    assert not app.problems, app.problems
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def open_space(hub, tmp_path, tiny_sd):
    """``open_space_app`` with its Jobs held in SCHEDULING: nothing trains, nothing is billed yet."""
    hub.configure_jobs(scheduling_s=600)
    with open_space_app(hub, tmp_path, tiny_sd) as app:
        yield app


def train(app: App, tmp: Path, v: Visitor | None, prompt: str = "a photo of sks dog", origin: str | None = None) -> str:
    """Press Train as ``v`` with two photos; the answer's Markdown."""
    photos = [str(p) for p in make_images(tmp / f"photos-{uuid.uuid4().hex[:6]}", 3, size=128)]
    model = app.settings.base_models[0]
    out = f"{v.name}/dreambooth-sks-dog" if v else ""
    data = [photos, "", prompt, "", model, "dreambooth-lora", 4, "t4-small", 1e-4, 4, 512, out, True, "constant", 0,
            0, True, False]  # fmt: skip
    return run_handler(app.demo, "submit", data, v, origin=origin)[0]


def alices_jobs(hub) -> tuple[int, int]:
    """alice's Jobs and billed periods so far (the emulator keeps earlier tests' Jobs)."""
    return len(hub.jobs("alice")), len(hub.jobs_ledger("alice"))


def owner_untouched(hub, app: App, before: tuple[int, int]) -> None:
    """Nothing of alice's was written (since the last ``clear_requests``) or billed, and her queue holds nothing."""
    assert alices_jobs(hub) == before
    writes = [r.path for r in hub.requests() if r.method in ("POST", "PUT", "DELETE") and "alice" in r.path]
    assert writes == [], writes
    assert app.worker.queue.list() == []


def load_handler(app: App):
    """The page load's handler that fills the banner (``ui.layout.on_load``)."""
    return next(f.fn for f in app.demo.fns.values() if getattr(f.fn, "__name__", "") == "on_load")
