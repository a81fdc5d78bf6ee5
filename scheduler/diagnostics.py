"""Set-up diagnostics for the Space: is the token usable, does its user own this Space, and can it use the offered
base models?

The first two return None when all is well and a problem (with the fix spelled out) otherwise, so the app can show a
setup page instead of crashing. The base-model check (``check_offered_base_models``) does not stop the app: it
tells the owner which offered models this token cannot train on (gated with a licence its account has not accepted,
private, missing...) and where to accept a licence. Token values never appear in the messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import LocalTokenNotFoundError

from contract.settings import Settings
from scheduler.retry import RetryPolicy, call_with_retries, http_status, is_transient

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


# ---------------------------------------------------------------- the offered base models
UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class OfferedModelProblem:
    """An offered base model this token cannot train on: ``kind`` is ``training.base_check``'s (gated, private,
    missing, not_allowed, ...), or ``UNREACHABLE`` when it could not be checked now (not an error). ``url``: its
    page on the Hub, where a gated model's licence is accepted (empty for a local folder)."""

    base_model: str
    kind: str
    message: str
    url: str = ""

    @property
    def checked(self) -> bool:
        return self.kind != UNREACHABLE


def offered_base_models(settings: Settings) -> list[str]:
    """The form's base models: the default first, then the rest of ``BASE_MODELS``."""
    return list(dict.fromkeys((settings.default_base_model, *settings.base_models)))


def check_offered_base_models(settings: Settings) -> list[OfferedModelProblem]:
    """What stops this token from training on each offered base model (at most two Hub calls per model, no weights
    downloaded; ``training.base_check``, torch-free, imported here so the control plane loads it only when asked)."""
    from training.base_check import endpoint_of, probe_base_model

    problems = []
    for model in offered_base_models(settings):
        url = "" if Path(model).is_dir() else f"{endpoint_of(settings.hf_endpoint)}/{model}"
        try:
            problem = probe_base_model(model, token=settings.hf_token, endpoint=settings.hf_endpoint).problem
        except Exception as exc:  # noqa: BLE001 - an answer the check does not know: not a verdict on the model
            problems.append(OfferedModelProblem(model, UNREACHABLE, f"{type(exc).__name__}: {exc}", url))
            continue
        if problem is not None:
            kind = UNREACHABLE if problem.retryable else problem.kind
            problems.append(OfferedModelProblem(model, kind, problem.message, url))
    for p in problems:
        log.warning("offered base model %s: %s: %s", p.base_model, p.kind, p.message)
    return problems


def offered_models_markdown(problems: list[OfferedModelProblem], default_model: str | None = None) -> str:
    """The owner's notice about ``problems`` (empty when there are none)."""
    if not problems:
        return ""
    lines = []
    for p in problems:
        name = f"**{p.base_model}**" + (" (the form's default)" if p.base_model == default_model else "")
        if p.kind == "gated":
            lines.append(f"- {name} is gated and this Space's token (HF_TOKEN) may not download it yet: open "
                         f"[{p.url}]({p.url}), sign in with the token's account and accept the licence there.")  # fmt: skip
        elif not p.checked:
            lines.append(f"- Could not check {name} now (it is checked again at submit): {p.message}")
        else:
            lines.append(f"- {name} cannot be used with this token: {p.message}")
    refused = any(p.checked for p in problems)
    head = ("**Offered base models:** tasks on these are refused at submit, before any GPU is requested."
            if refused else "**Offered base models:**")  # fmt: skip
    return "\n".join([head, *lines])


class OfferedModelsCheck:
    """``check_offered_base_models`` of ``settings`` at most once per ``ttl_s`` (the owner's page asks at each load);
    an answer with a model that could not be checked is not kept."""

    def __init__(self, settings: Settings, ttl_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.ttl_s, self.clock = settings, ttl_s, clock
        self._lock = threading.Lock()
        self._kept: tuple[float, list[OfferedModelProblem]] | None = None

    def problems(self) -> list[OfferedModelProblem]:
        with self._lock:
            if self._kept is not None and self.clock() - self._kept[0] < self.ttl_s:
                return self._kept[1]
            problems = check_offered_base_models(self.settings)
            self._kept = (self.clock(), problems) if all(p.checked for p in problems) else None
            return problems

    def markdown(self) -> str:
        return offered_models_markdown(self.problems(), self.settings.default_base_model)
