"""Who is using the app and what they may do. Checked server-side in every handler that writes or spends.

Identity comes only from ``gr.OAuthProfile`` (the signed session cookie). ``gr.OAuthToken`` is never used as
identity: an API client can inject any token string. In local mode there is no sign-in: the person at the
machine owns it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gradio as gr

from scheduler.output_names import LOCAL_USER  # the CLI's local submitter too
from scheduler.task import Task

EXPOSED_WARNING = (
    "**This app listens on the network (`LOCAL_EXPOSE_TO_NETWORK`) and local mode has no sign-in: everyone who can "
    "reach this port owns it**: they can train on this machine, see every task with its photos, and delete them. "
    "Unset `LOCAL_EXPOSE_TO_NETWORK` to keep it on this machine (127.0.0.1) only."
)


@dataclass(frozen=True)
class Access:
    """The caller's identity and rights."""

    user: str | None
    allowed: bool  # may submit, cancel, retry and see the settings
    owner: bool  # may change the Space's variables
    exposed: bool = False  # local mode listening on the network (LOCAL_EXPOSE_TO_NETWORK): the banner warns

    def banner(self) -> str:
        """One line for the top of the page."""
        if self.user is None:
            return "Sign in with Hugging Face to submit training tasks."
        if self.user == LOCAL_USER:
            return "Local mode: training runs on this machine." + (f"\n\n{EXPOSED_WARNING}" if self.exposed else "")
        if self.allowed:
            return f"Signed in as **{self.user}**" + (" (owner)." if self.owner else " (allowed user).")
        return f"Signed in as **{self.user}**, who is not on this Space's allowed users: you can watch, not submit."


def is_owner(settings, user: str | None) -> bool:
    """The person at the machine (local mode), or the signed-in owner of the Space."""
    return bool(settings.local) or (bool(user) and user == settings.space_author)


def access_for(settings, profile: gr.OAuthProfile | None) -> Access:
    """The rights of the signed-in ``profile`` (None = anonymous) under ``settings``."""
    if settings.local:
        exposed = bool(getattr(settings, "local_expose_to_network", False))
        return Access(user=LOCAL_USER, allowed=True, owner=True, exposed=exposed)
    if profile is None or not getattr(profile, "username", None):
        return Access(user=None, allowed=False, owner=False)
    user = profile.username
    owner = is_owner(settings, user)  # the Space's owner may always submit, whoever ALLOWED_USERS names
    return Access(user=user, allowed=owner or user in settings.allowed_users, owner=owner)


#: what the Run and Results tabs tell a signed-in visitor when visitors pay: their runs are theirs, not this Space's
VISITOR_RUNS_ELSEWHERE = ("Your runs train as Hugging Face Jobs in your own account: see **Queue → Your tasks** for "
                          "their state and model repo, and your Jobs page on Hugging Face for their logs.")  # fmt: skip


def not_allowed_prompt(settings, access: Access, prompt: str) -> str:
    """``prompt`` (sign in as an allowed user ...), or where a signed-in visitor's own runs are when visitors pay."""
    return VISITOR_RUNS_ELSEWHERE if access.user and getattr(settings, "visitor_pays", False) else prompt


def may_submit(settings, access: Access) -> bool:
    """Whether ``access`` may upload photos and press Train: any signed-in visitor when visitors pay for their own
    training (``BILLING=visitor``), else the owner and the allowed users."""
    return access.user is not None if getattr(settings, "visitor_pays", False) else access.allowed


def session_profile(session: Mapping[str, Any] | None) -> gr.OAuthProfile | None:
    """The ``gr.OAuthProfile`` Gradio injects for a request with this (decoded, signed) ``session`` cookie, derived
    as Gradio 6 derives it (``helpers.special_args``): its ``oauth_info`` unless expired; None when signed out."""
    info = (session or {}).get("oauth_info")
    if not isinstance(info, Mapping) or not isinstance(info.get("userinfo"), Mapping):
        return None
    expires_at = info.get("expires_at")
    if expires_at is not None and expires_at < time.time():
        return None
    try:
        return gr.OAuthProfile(dict(info["userinfo"]))
    except KeyError:  # a profile without the fields Gradio reads: not a sign-in Gradio would accept either
        return None


def require_allowed(settings, profile: gr.OAuthProfile | None, request: gr.Request | None = None) -> Access:
    """The caller's access, or a ``gr.Error`` shown to the caller when they may not write or spend (not signed in,
    not allowed, or a cross-site request)."""
    require_same_site(settings, request)
    access = access_for(settings, profile)
    if access.user is None:
        raise gr.Error("Sign in with Hugging Face first.", title="Not signed in")
    if not access.allowed:
        raise gr.Error(
            f"{access.user} is not on this Space's allowed users. Ask the owner to add you to ALLOWED_USERS.",
            title="Not allowed",
        )
    return access


def require_owner(settings, profile: gr.OAuthProfile | None, request: gr.Request | None = None) -> Access:
    """Like ``require_allowed`` but only the Space owner passes."""
    require_same_site(settings, request)
    access = access_for(settings, profile)
    if not access.owner:
        raise gr.Error("Only the owner of this Space can change its settings.", title="Not allowed")
    return access


def visible_tasks(access: Access, tasks: Iterable[Task]) -> list[Task]:
    """The tasks ``access`` may see: all for the owner, their own for allowed users, none for anyone else."""
    if access.owner:
        return list(tasks)
    if not access.allowed or access.user is None:
        return []
    return [t for t in tasks if t.submitted_by == access.user]


def may_act_on(access: Access, task: Task) -> bool:
    """Whether ``access`` may cancel, retry or delete ``task`` (the owner: any; an allowed user: their own)."""
    return access.owner or (access.allowed and access.user is not None and task.submitted_by == access.user)


def cross_site_problem(settings, headers: Mapping[str, str]) -> str | None:
    """Why a request that writes or spends looks cross-site (None when it comes from this app's own page).

    Refused: ``Sec-Fetch-Site: cross-site``, and an ``Origin`` that is neither ``https://SPACE_HOST`` nor the host
    the request was sent to (a page elsewhere calling the app with the owner's session cookie)."""
    headers = {k.lower(): v for k, v in headers.items()}
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "the request came from another site (Sec-Fetch-Site: cross-site)"
    origin = (headers.get("origin") or "").strip()
    if not origin:
        return None  # not sent by a browser page (a script holds no session cookie of the owner)
    allowed = {f"https://{settings.space_host}"} if getattr(settings, "space_host", None) else set()
    host = headers.get("host") or ""  # set by the browser itself; a page cannot forge it
    if origin in allowed or (host and urlsplit(origin).netloc == host):
        return None
    return f"the request came from another site (Origin: {origin[:100]})"


def require_same_site(settings, request: gr.Request | None) -> None:
    """A ``gr.Error`` for a cross-site request to a handler that writes or spends."""
    headers = dict(request.headers) if request is not None and request.headers is not None else {}
    problem = cross_site_problem(settings, headers)
    if problem:
        raise gr.Error(f"Refused: {problem}. Use this Space's own page.", title="Cross-site request refused")


def require_allowed_or_owner(settings, profile: gr.OAuthProfile | None, request: gr.Request | None = None) -> Access:
    """Like ``require_allowed``, but the Space owner passes even when not on ALLOWED_USERS (to manage the queue)."""
    access = access_for(settings, profile)
    if not access.owner:
        return require_allowed(settings, profile, request)
    require_same_site(settings, request)
    return access
