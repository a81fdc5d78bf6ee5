"""How Gradio 6.31 hands a visitor's sign-in to a handler typed ``gr.OAuthToken | None``, and what
``scheduler.visitor_token`` reads from each way it arrives (the session of a sign-in, Gradio's mocked local sign-in,
a ``gradio_client`` caller's token), verified against the emulator with the real huggingface_hub client.

Gradio's own injection code runs (``helpers.special_args``, ``route_utils.oauth_token_from_body``,
``oauth._get_mocked_oauth_info``); the HTTP sign-in itself is not driven here (the browser tests do that): the
session a sign-in leaves is built as Gradio's callback stores it (``oauth.py``: ``request.session["oauth_info"]``)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from types import SimpleNamespace

import gradio as gr
import itsdangerous
import pytest
from gradio import oauth as gr_oauth
from gradio.helpers import special_args
from gradio.route_utils import oauth_token_from_body
from huggingface_hub import HfApi
from starlette.requests import Request as StarletteRequest

from scheduler.visitor_token import VisitorTokenError, missing_scopes, read_visitor_token
from tests.signin import session_cookie

SCOPE = "openid profile jobs contribute-repos"


def handler(token: gr.OAuthToken | None) -> None:  # only its signature matters: Gradio injects by type hint
    return None


def injected(session: dict) -> gr.OAuthToken | None:
    """What Gradio passes ``handler`` for a request carrying ``session`` (the decoded session cookie)."""
    request = gr.Request(StarletteRequest({"type": "http", "headers": [], "session": session}))
    inputs, *_ = special_args(handler, [], request)
    return inputs[0]


def sign_in_session(token: str, scope: str, expires_at: float) -> dict:
    """The session Gradio's OAuth callback leaves: authlib's token answer plus the userinfo."""
    return {"oauth_info": {"access_token": token, "token_type": "bearer", "scope": scope, "expires_at": expires_at,
                           "userinfo": {"preferred_username": "x", "name": "x", "profile": "", "picture": ""}}}  # fmt: skip


def test_a_sign_in_reaches_the_handler_with_its_scope_and_expiry(hub):
    name, token = f"gs{uuid.uuid4().hex[:8]}", f"hf_oauth_fake_{uuid.uuid4().hex}"
    expires_at = hub.add_oauth_user(name, token, scopes=SCOPE.split(), expires_in=3600)
    got = injected(sign_in_session(token, SCOPE, int(expires_at)))
    assert isinstance(got, gr.OAuthToken)
    assert got.token == token and got.scope == SCOPE and got.expires_at == int(expires_at)
    vt = read_visitor_token(got, api=HfApi(endpoint=hub.url))
    assert vt.username == name and missing_scopes(vt) == []


def test_an_expired_session_reaches_the_handler_as_signed_out():
    assert injected(sign_in_session("hf_oauth_fake_old", SCOPE, time.time() - 1)) is None
    assert injected({}) is None


def test_a_gradio_client_callers_token_has_no_scope_nor_expiry_and_whoami_decides(hub):
    name, token = f"gc{uuid.uuid4().hex[:8]}", f"hf_oauth_fake_{uuid.uuid4().hex}"
    hub.add_oauth_user(name, token, scopes=("openid", "profile", "jobs"), expires_in=600)
    got = oauth_token_from_body(SimpleNamespace(oauth_token=token))
    assert got is not None and got.scope == "" and got.expires_at == 0
    vt = read_visitor_token(got, api=HfApi(endpoint=hub.url))
    assert vt.username == name and missing_scopes(vt) == ["contribute-repos"]
    assert vt.expires_at is not None and vt.expires_at > time.time()


def test_the_mocked_local_sign_in_asks_for_no_extra_scope_and_its_token_is_refused_by_the_hub(hub):
    info = gr_oauth._get_mocked_oauth_info()  # the local HF_TOKEN's user (alice, on the emulator)
    assert info["userinfo"]["preferred_username"] == "alice" and info["scope"] == "openid profile"
    got = injected({"oauth_info": info})
    assert got is not None and got.token == "mock-oauth-token-for-local-dev"
    with pytest.raises(VisitorTokenError) as err:  # since Gradio 6.6 the mocked token is not the local token
        read_visitor_token(got, api=HfApi(endpoint=hub.url))
    assert err.value.status == 401


def test_the_test_session_cookie_gives_handlers_the_visitors_token(hub):
    name, token = f"ck{uuid.uuid4().hex[:8]}", f"hf_oauth_fake_{uuid.uuid4().hex}"
    hub.add_oauth_user(name, token, scopes=SCOPE.split(), expires_in=3600)
    cookie = session_cookie(name, token=token, scope=SCOPE, expires_in=1800)
    key = hashlib.sha256(b"-v4").hexdigest()  # as Gradio's SessionMiddleware reads it (mocked sign-in: no secret)
    session = json.loads(base64.b64decode(itsdangerous.TimestampSigner(key).unsign(cookie)))
    got = injected(session)
    assert got is not None and got.token == token and got.scope == SCOPE
    vt = read_visitor_token(got, api=HfApi(endpoint=hub.url))
    assert vt.username == name and vt.expires_at == pytest.approx(time.time() + 1800, abs=5)
