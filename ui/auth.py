"""Who is using the app and what they may do. Checked server-side in every handler that writes or spends.

Identity comes only from ``gr.OAuthProfile`` (the signed session cookie). ``gr.OAuthToken`` is never used as
identity: an API client can inject any token string. In local mode there is no sign-in: the person at the
machine owns it.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

LOCAL_USER = "local"


@dataclass(frozen=True)
class Access:
    """The caller's identity and rights."""

    user: str | None
    allowed: bool  # may submit, cancel, retry and see the settings
    owner: bool  # may change the Space's variables

    def banner(self) -> str:
        """One line for the top of the page."""
        if self.user is None:
            return "Sign in with Hugging Face to submit training tasks."
        if self.user == LOCAL_USER:
            return "Local mode: training runs on this machine."
        if self.allowed:
            return f"Signed in as **{self.user}**" + (" (owner)." if self.owner else " (allowed user).")
        return f"Signed in as **{self.user}**, who is not on this Space's allowed users: you can watch, not submit."


def access_for(settings, profile: gr.OAuthProfile | None) -> Access:
    """The rights of the signed-in ``profile`` (None = anonymous) under ``settings``."""
    if settings.local:
        return Access(user=LOCAL_USER, allowed=True, owner=True)
    if profile is None or not getattr(profile, "username", None):
        return Access(user=None, allowed=False, owner=False)
    user = profile.username
    owner = bool(settings.space_author) and user == settings.space_author
    return Access(user=user, allowed=user in settings.allowed_users, owner=owner)


def require_allowed(settings, profile: gr.OAuthProfile | None) -> Access:
    """The caller's access, or a ``gr.Error`` shown to the caller when they may not write or spend."""
    access = access_for(settings, profile)
    if access.user is None:
        raise gr.Error("Sign in with Hugging Face first.", title="Not signed in")
    if not access.allowed:
        raise gr.Error(
            f"{access.user} is not on this Space's allowed users. Ask the owner to add you to ALLOWED_USERS.",
            title="Not allowed",
        )
    return access


def require_owner(settings, profile: gr.OAuthProfile | None) -> Access:
    """Like ``require_allowed`` but only the Space owner passes."""
    access = access_for(settings, profile)
    if not access.owner:
        raise gr.Error("Only the owner of this Space can change its settings.", title="Not allowed")
    return access
