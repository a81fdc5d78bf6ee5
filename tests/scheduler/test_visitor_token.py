"""scheduler/visitor_token.py: a visitor's Gradio ``OAuthToken`` read and verified against the emulator with the real
huggingface_hub client (whoami-v2), the scopes the visitor-pays mode needs, and whether a task fits the token's life."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from gradio.oauth import OAuthToken
from huggingface_hub import HfApi

from scheduler.spending import start_worst_s
from scheduler.visitor_token import (
    MIN_FITTED_DEADLINE_S,
    REQUIRED_SCOPES,
    VisitorToken,
    VisitorTokenError,
    fitted_deadline,
    fix_for,
    from_whoami,
    longest_deadline_s,
    missing_scopes,
    read_visitor_token,
    task_fits_token,
)
from tests.conftest import ALICE_TOKEN

SIGNED_IN = "openid profile jobs contribute-repos"
SCOPES = tuple(SIGNED_IN.split())
HOUR = 3600.0


def signed_in(hub, scopes=SCOPES, expires_in: float | None = 8 * HOUR):
    """A fresh visitor registered in the emulator: (name, token string, expires_at)."""
    name = f"vt{uuid.uuid4().hex[:8]}"
    token = f"hf_oauth_fake_{uuid.uuid4().hex}"
    return name, token, hub.add_oauth_user(name, token, scopes=scopes, expires_in=expires_in)


def read(hub, oauth: OAuthToken) -> VisitorToken:
    return read_visitor_token(oauth, api=HfApi(endpoint=hub.url))


def test_a_signed_in_visitor_is_read_from_the_sign_in_and_verified_by_whoami(hub, caplog):
    name, token, expires_at = signed_in(hub)
    caplog.set_level(logging.DEBUG)
    vt = read(hub, OAuthToken(token=token, scope=SIGNED_IN, expires_at=int(expires_at)))
    assert vt.username == name and vt.scopes == frozenset(SIGNED_IN.split())
    assert vt.expires_at == int(expires_at)  # the earlier of the two: Gradio's whole seconds
    assert missing_scopes(vt) == [] and fix_for(missing_scopes(vt)) == ""
    for text in (repr(vt), str(vt), caplog.text):
        assert token not in text and "hf_oauth_fake" not in text


def test_gradio_clients_injected_token_falls_back_to_whoamis_scope_and_expiry(hub):
    name, token, expires_at = signed_in(hub, expires_in=2 * HOUR)
    vt = read(hub, OAuthToken(token=token, scope="", expires_at=0))  # what Client(oauth_token=...) injects
    assert vt.username == name and vt.scopes == frozenset(SIGNED_IN.split())
    assert vt.expires_at == pytest.approx(expires_at, abs=0.01)


def test_the_narrower_of_sign_in_and_whoami_wins(hub):
    _, token, expires_at = signed_in(hub, scopes=("openid", "profile", "contribute-repos"), expires_in=HOUR)
    claimed = OAuthToken(token=token, scope=SIGNED_IN, expires_at=int(expires_at + 5 * HOUR))  # claims more
    vt = read(hub, claimed)
    assert "jobs" not in vt.scopes and missing_scopes(vt) == ["jobs"]
    assert vt.expires_at == pytest.approx(expires_at, abs=0.01)


def test_the_username_comes_from_whoami_not_from_the_caller(hub):
    name, token, _ = signed_in(hub)
    vt = from_whoami(HfApi(endpoint=hub.url).whoami(token=token), scope=SIGNED_IN)
    assert vt.username == name
    with pytest.raises(ValueError):
        from_whoami({"type": "org", "name": "alice-org", "auth": {"type": "oauth"}})


@pytest.mark.parametrize("case", ["expired", "unknown", "empty"])
def test_a_refused_token_gives_a_reason_without_the_token(hub, case):
    _, token, _ = signed_in(hub, expires_in=-1)
    if case == "unknown":
        token = f"hf_oauth_fake_{uuid.uuid4().hex}"
    elif case == "empty":
        token = ""
    with pytest.raises(VisitorTokenError) as err:
        read(hub, OAuthToken(token=token, scope=SIGNED_IN, expires_at=int(time.time()) + 60))
    assert err.value.status == (None if case == "empty" else 401)
    assert "sign in" in err.value.fix.lower()
    assert err.value.__cause__ is None  # the client's error (its request) is not chained on
    assert err.value.__context__ is None or err.value.__suppress_context__
    if token:
        assert token not in str(err.value) and token not in repr(err.value)


def test_a_classic_token_through_the_sign_in_lacks_both_scopes_and_the_fix_says_what_to_do(hub):
    vt = read(hub, OAuthToken(token=ALICE_TOKEN, scope="", expires_at=0))
    assert vt.username == "alice" and vt.scopes == frozenset() and vt.expires_at is None
    missing = missing_scopes(vt)
    assert missing == list(REQUIRED_SCOPES)
    fix = fix_for(missing)
    assert "hf_oauth_scopes: [jobs, contribute-repos]" in fix and "README" in fix and "sign in again" in fix
    assert "`jobs`" in fix and "`contribute-repos`" in fix
    only = fix_for(["contribute-repos"])
    assert "`jobs` " not in only and "hf_oauth_scopes: [jobs, contribute-repos]" in only
    assert missing_scopes(vt, required=("openid",)) == ["openid"]


def test_a_task_must_end_before_the_token_expires():
    now = 1_000_000.0
    vt = VisitorToken("v", frozenset(REQUIRED_SCOPES), now + 2 * HOUR)
    assert task_fits_token(HOUR, vt, now) is None
    reason = task_fits_token(2 * HOUR, vt, now)
    assert reason is not None and "hf_oauth_expiration_minutes" in reason and "2 h 00 min" in reason
    exact = VisitorToken("v", vt.scopes, now + start_worst_s(HOUR, jobs=True))  # ends on the second it expires
    assert task_fits_token(HOUR, exact, now) is None
    assert task_fits_token(HOUR, VisitorToken("v", vt.scopes, exact.expires_at - 1), now) is not None
    unknown = task_fits_token(60, VisitorToken("v", vt.scopes, None), now)
    assert unknown is not None and "cannot tell" in unknown


def test_the_longest_deadline_that_fits():
    now = 5_000.0
    vt = VisitorToken("v", frozenset(REQUIRED_SCOPES), now + 3 * HOUR)
    best = longest_deadline_s(vt, now)
    assert best > HOUR
    assert task_fits_token(best, vt, now) is None and task_fits_token(best + 60, vt, now) is not None
    assert longest_deadline_s(VisitorToken("v", vt.scopes, now + 30), now) == 0.0
    assert longest_deadline_s(VisitorToken("v", vt.scopes, None), now) == 0.0


def test_a_deadline_too_long_for_the_sign_in_is_shortened_only_when_the_run_still_has_room():
    now = 7_000.0
    hour = VisitorToken("v", frozenset(REQUIRED_SCOPES), now + HOUR)
    assert fitted_deadline(10 * 60, hour, now, needed_s=60) == 10 * 60  # fits: unchanged
    shorter = fitted_deadline(3 * HOUR, hour, now, needed_s=6 * 60)
    assert shorter == longest_deadline_s(hour, now) and MIN_FITTED_DEADLINE_S <= shorter < 3 * HOUR
    assert fitted_deadline(3 * HOUR, hour, now, needed_s=shorter / 2 + 1) is None  # less than twice the run
    twenty = VisitorToken("v", hour.scopes, now + 20 * 60)  # what fits is under the 15-min floor
    assert fitted_deadline(3 * HOUR, twenty, now, needed_s=60) is None
    assert fitted_deadline(3 * HOUR, VisitorToken("v", hour.scopes, None), now, needed_s=60) is None
