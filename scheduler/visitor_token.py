"""What a signed-in visitor's token allows (visitor-pays mode, issue 25): who it is, its scopes, when it expires.

Read from Gradio's ``gr.OAuthToken`` (``.token``, ``.scope``, ``.expires_at``) and verified with the Hub's
``whoami-v2``: a non-None ``OAuthToken`` proves nothing by itself (``gradio_client`` can inject any string, with
``scope=""`` and ``expires_at=0``), so the username always comes from whoami. Scopes and expiry are taken from
both sources where both say something, the narrower one winning (fewer scopes, the earlier expiry).

The token string is used for that one whoami call and never kept: ``VisitorToken`` has no field for it, and no
message of this module holds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from huggingface_hub import HfApi

from scheduler.retry import http_status
from scheduler.spending import start_worst_s

REQUIRED_SCOPES = ("jobs", "contribute-repos")
WHY = {
    "jobs": "to run your training as a Hugging Face Job billed to your own account",
    "contribute-repos": "to create the private repos that hold your photos and your model in your account",
}
MAX_EXPIRATION_MINUTES = 43200  # hub-docs spaces-oauth.md: hf_oauth_expiration_minutes, default 480


@dataclass(frozen=True)
class VisitorToken:
    """A visitor's sign-in as the app may use it: no token string, only what it allows and until when
    (``expires_at``: unix seconds; None when neither Gradio nor the Hub said)."""

    username: str
    scopes: frozenset[str]
    expires_at: float | None


class VisitorTokenError(Exception):
    """The Hub refused to say who the token is (``status``: its HTTP status, None without an answer). The message
    says why and what to do; it never holds the token."""

    def __init__(self, reason: str, fix: str, status: int | None = None) -> None:
        super().__init__(f"{reason} {fix}")
        self.reason, self.fix, self.status = reason, fix, status


def parse_scopes(scope: str | Iterable[str] | None) -> frozenset[str]:
    """Scopes from the OAuth form (one string, space-separated; commas tolerated) or a list."""
    if not scope:
        return frozenset()
    items = re.split(r"[\s,]+", scope) if isinstance(scope, str) else scope
    return frozenset(s.strip() for s in items if s and s.strip())


def _timestamp(value: Any) -> float | None:
    """Unix seconds from a number (0 and below: unknown) or an ISO-8601 date; None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def from_whoami(info: Mapping[str, Any], *, scope: str | Iterable[str] | None = None,
                expires_at: Any = None) -> VisitorToken:  # fmt: skip
    """A ``VisitorToken`` from a whoami-v2 answer and, when known, the sign-in's own ``scope`` and ``expires_at``.

    whoami's ``auth.scope``/``auth.expiresAt`` for an OAuth token are the emulator's reading of an undocumented
    answer (tests/fakehub/auth.py); the sign-in's values (Gradio's ``OAuthToken``) are the documented ones."""
    username = info.get("name")
    if not isinstance(username, str) or not username or info.get("type", "user") != "user":
        raise ValueError("whoami did not describe a user account")
    auth = info.get("auth") or {}
    known = [s for s in (parse_scopes(scope), parse_scopes(auth.get("scope"))) if s]
    scopes = frozenset.intersection(*known) if known else frozenset()
    ends = [t for t in (_timestamp(expires_at), _timestamp(auth.get("expiresAt"))) if t is not None]
    return VisitorToken(username, scopes, min(ends) if ends else None)


def read_visitor_token(oauth_token: Any, *, endpoint: str | None = None, api: HfApi | None = None) -> VisitorToken:
    """Verify a ``gr.OAuthToken`` (anything with ``.token``, ``.scope``, ``.expires_at``) with whoami-v2 and read
    it. Raises ``VisitorTokenError`` when the Hub refuses the token (401: expired or revoked; 403) or cannot be
    asked."""
    token = getattr(oauth_token, "token", None)
    if not token:
        raise VisitorTokenError("You are not signed in.", "Sign in with Hugging Face, then try again.")
    client = api or HfApi(endpoint=endpoint)
    try:
        info = client.whoami(token=token)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason; the token never goes into it
        status = http_status(exc)
        if status in (401, 403):
            raise VisitorTokenError(f"The Hub refused your sign-in (HTTP {status}): it has expired or was revoked.",
                                    "Sign out and sign in again.", status) from None  # fmt: skip
        raise VisitorTokenError(f"The Hub could not be asked who you are ({type(exc).__name__}, HTTP {status}).",
                                "Wait a minute and try again.", status) from None  # fmt: skip
    return from_whoami(info, scope=getattr(oauth_token, "scope", None),
                       expires_at=getattr(oauth_token, "expires_at", None))  # fmt: skip


def missing_scopes(token: VisitorToken, required: Sequence[str] = REQUIRED_SCOPES) -> list[str]:
    """The ``required`` scopes the token lacks, in ``required``'s order."""
    return [s for s in required if s not in token.scopes]


def fix_for(missing: Sequence[str]) -> str:
    """What the visitor and the Space's owner do when the sign-in lacks ``missing`` scopes ("" when none)."""
    if not missing:
        return ""
    names = " and ".join(f"`{s}`" for s in missing)
    why = "; ".join(f"`{s}` {WHY.get(s, 'for this Space')}" for s in missing)
    listed = ", ".join(dict.fromkeys([*REQUIRED_SCOPES, *missing]))
    return (f"Your sign-in does not allow {names} ({why}). The Space's owner adds `hf_oauth_scopes: [{listed}]` to "
            "the front matter of the Space's README.md; then sign out, sign in again and allow them.")  # fmt: skip


def _span(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def task_fits_token(deadline_s: float, token: VisitorToken, now: float) -> str | None:
    """None when a task with ``deadline_s`` started now ends before the token expires, else why it is refused.

    The task's Job may be billed and use the token for up to ``start_worst_s(deadline_s, jobs=True)`` (its platform
    timeout and a minute of scheduling), and it writes the model with the token at the end, so the whole of that
    must fit. An unknown expiry is refused: a visitor's OAuth token always expires, and a Job whose token dies
    before the upload loses the model (what the platform does to a running Job then is not known)."""
    worst = start_worst_s(deadline_s, jobs=True)
    if token.expires_at is None:
        return (f"This task may run for up to {_span(worst)}, and the app cannot tell when your sign-in expires. "
                "Sign out and sign in again; if it persists, the Space's owner sets `hf_oauth_expiration_minutes` "
                "in the README front matter.")  # fmt: skip
    left = token.expires_at - now
    if worst <= left:
        return None
    return (f"This task may run for up to {_span(worst)}, but your sign-in expires in {_span(left)}: a Job still "
            "running then could not save your model. Sign out and in again for a fresh sign-in, or choose fewer "
            "steps; the Space's owner can lengthen sign-ins with `hf_oauth_expiration_minutes` in the README front "
            f"matter (at most {MAX_EXPIRATION_MINUTES}).")  # fmt: skip


def longest_deadline_s(token: VisitorToken, now: float, step_s: float = 60.0) -> float:
    """The longest deadline (a multiple of ``step_s``) whose task still fits the token; 0 when none does."""
    if token.expires_at is None:
        return 0.0
    best, deadline = 0.0, step_s
    while task_fits_token(deadline, token, now) is None:
        best, deadline = deadline, deadline + step_s
    return best


#: a deadline shortened to fit a sign-in leaves at least this long, and twice the run's expected time
MIN_FITTED_DEADLINE_S = 15 * 60.0


def fitted_deadline(deadline_s: float, token: VisitorToken, now: float, needed_s: float) -> float | None:
    """The deadline a visitor's task gets: ``deadline_s`` when it fits the token (``task_fits_token``); else the
    longest that does, when that still leaves the run twice its expected ``needed_s`` seconds (and at least
    ``MIN_FITTED_DEADLINE_S``): a short run should not be refused for a long default deadline. None: it cannot fit."""
    if task_fits_token(deadline_s, token, now) is None:
        return deadline_s
    longest = longest_deadline_s(token, now)
    return longest if longest >= max(2.0 * needed_s, MIN_FITTED_DEADLINE_S) else None
