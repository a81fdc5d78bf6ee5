"""Set-up diagnostics for the Space: is the token usable, and does its user own this Space?

Both return None when all is well and a problem (with the fix spelled out) otherwise, so the app can show a setup
page instead of crashing. Token values never appear in the messages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import LocalTokenNotFoundError

from scheduler.retry import RetryPolicy, call_with_retries, http_status, is_transient
from scheduler.settings import Settings

log = logging.getLogger(__name__)
TOKENS_URL = "https://huggingface.co/settings/tokens"
TOKEN_FIX = (
    f"Create a fine-grained token with write access to your repos (or a classic write token) at {TOKENS_URL} "
    "and save it as the HF_TOKEN secret in the Space's settings."
)
OAUTH_PREFIX = "hf_oauth_"


@dataclass(frozen=True)
class TokenProblem:
    """Why the token cannot be used. ``kind``: missing, invalid, read_only, oauth or unreachable."""

    kind: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message} {self.fix}"


def _whoami(api: HfApi, retry: RetryPolicy) -> dict:
    return call_with_retries(lambda: api.whoami(), retry)


def diagnose_token(api: HfApi, retry: RetryPolicy | None = None) -> TokenProblem | None:
    """Classify the token of ``api``: None when it is a usable write token, else a TokenProblem."""
    token = api.token or get_token()
    if not token:
        return TokenProblem("missing", "No Hugging Face token is configured (HF_TOKEN is not set).", TOKEN_FIX)
    if token.startswith(OAUTH_PREFIX):
        return TokenProblem(
            "oauth",
            "HF_TOKEN holds an OAuth token; the Hub refuses those for Space hardware changes.",
            TOKEN_FIX,
        )
    try:
        info = _whoami(api, retry or RetryPolicy(attempts=3))
    except LocalTokenNotFoundError:
        return TokenProblem("missing", "No Hugging Face token is configured (HF_TOKEN is not set).", TOKEN_FIX)
    except Exception as exc:
        status = http_status(exc)
        if status == 401:
            return TokenProblem("invalid", "The Hub rejected HF_TOKEN (HTTP 401): it is wrong, expired or revoked.", TOKEN_FIX)
        if is_transient(exc):
            return TokenProblem(
                "unreachable",
                f"The Hub could not be reached to check HF_TOKEN ({type(exc).__name__}, HTTP {status}).",
                "Wait a minute and restart the Space; check https://status.huggingface.co if it persists.",
            )
        raise
    auth = info.get("auth") or {}
    if auth.get("type") == "oauth":
        return TokenProblem(
            "oauth",
            "HF_TOKEN is an OAuth token; the Hub refuses those for Space hardware changes.",
            TOKEN_FIX,
        )
    role = (auth.get("accessToken") or {}).get("role")
    if role == "read":
        return TokenProblem(
            "read_only",
            "HF_TOKEN is a read-only token; the app must write the queue, the models and the Space's hardware.",
            TOKEN_FIX,
        )
    return None


PUBLIC_SPACE_WARNING = (
    "**This Space is public.** It holds photos of real people and a write token: make it private in its "
    "settings (Settings → Change Space visibility)."
)


def space_is_public(api: HfApi, space_id: str | None) -> bool:
    """Whether the Space can be seen by anyone (False when unknown: the warning is advice, not a gate)."""
    if not space_id:
        return False
    try:
        return api.space_info(space_id).private is False
    except Exception as exc:  # noqa: BLE001
        log.warning("could not read whether %s is private: %s", space_id, exc)
        return False


def token_owner(api: HfApi) -> tuple[str, tuple[str, ...]]:
    """(user name, organisation names) of the token."""
    info = _whoami(api, RetryPolicy(attempts=3))
    return info.get("name", ""), tuple(org.get("name", "") for org in info.get("orgs") or ())


def check_space_ownership(api: HfApi, space: Settings | str) -> str | None:
    """None when the token's user (or one of its organisations) owns the Space; else a clear message.

    Protects a duplicated Space that kept the original's id from acting on someone else's Space. The message is
    shown on the public setup page, so it names no account; the accounts go to the container's log (owner only).
    """
    space_id = space.space_id if isinstance(space, Settings) else space
    if not space_id:
        return None
    namespace = space_id.split("/")[0]
    user, orgs = token_owner(api)
    if namespace == user or namespace in orgs:
        return None
    owned = ", ".join((user, *orgs)) if user else "nobody"
    log.warning("HF_TOKEN belongs to %r (who can act for: %s), not to %r, the owner of %s", user, owned, namespace, space_id)
    return (
        "HF_TOKEN belongs to an account that does not own this Space (the Space's logs say which). The app will not "
        "queue work on or change the hardware of a Space it does not own. If you duplicated this Space, make sure "
        "no variable overrides SPACE_ID, and save your own write token as HF_TOKEN."
    )
