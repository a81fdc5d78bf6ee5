"""The settings view (allowed users only): effective settings and their source; the owner edits Space variables.

Saving writes the Space's variables through the Hub API with the Space's own ``HF_TOKEN``; the Hub restarts the
Space to apply them. Secrets are never displayed (the token shows only as set / not set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from contract.settings import SettingsError, load_settings
from scheduler.queue.base import QueueError
from ui.auth import Access, require_owner
from ui.context import AppContext

# Space variables the owner may change here: (variable, settings field, label).
EDITABLE = (
    ("QUEUE_REPO", "queue_repo", "Queue dataset repo"),
    ("ALLOWED_USERS", "allowed_users", "Allowed users (comma separated)"),
    ("TRAIN_HARDWARE", "train_hardware", "Default training hardware"),
    ("TASK_DEADLINE_S", "deadline_s", "Per-task deadline (seconds)"),
)
SQUASH_HELP = (
    "The Hub keeps every commit: photos removed from the queue repo (when a task is done or deleted) stay in its "
    "earlier commits until the history is squashed into one commit. Possible while no task runs."
)
RESTART_WARNING = "Saving **restarts the Space** (the Hub applies variables on restart); a running training is interrupted and retried (from its last checkpoint when there is one)."


@dataclass
class SettingsParts:
    panel: gr.Column
    owner_box: gr.Group
    table: gr.Dataframe
    fields: list[gr.Textbox]


def current_value(settings: Any, field: str) -> str:
    value = getattr(settings, field)
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def changed_variables(settings: Any, values: list[str]) -> dict[str, str]:
    """Variables whose submitted value differs from the effective setting."""
    changes = {}
    for (var, field, _), value in zip(EDITABLE, values, strict=True):
        value = (value or "").strip()
        if value != current_value(settings, field):
            changes[var] = value
    return changes


def check_variables(settings: Any, changes: dict[str, str]) -> str | None:
    """The problem with the new values (parsed exactly as at start-up), or None."""
    env = {"SPACE_ID": settings.space_id or "owner/space", "HF_TOKEN": "x"}
    env.update({var: current_value(settings, field) for var, field, _ in EDITABLE})
    env.update(changes)
    try:
        load_settings({k: v for k, v in env.items() if v})
    except SettingsError as exc:
        return str(exc)
    return None


def save_variables(settings: Any, changes: dict[str, str], api: HfApi | None = None) -> None:
    """Write the changed variables to the Space (empty value: delete it, back to the default)."""
    api = api or HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token)
    for var, value in changes.items():
        if value:
            api.add_space_variable(settings.space_id, var, value)
        else:
            api.delete_space_variable(settings.space_id, var)


def build_settings_view(ctx: AppContext) -> SettingsParts:
    """Render the settings panel (hidden until the owner is signed in)."""
    s = ctx.settings
    with gr.Column(visible=False) as panel:
        # Values are filled in by the page's load event for the owner only (``owner_values``): a component's
        # initial value is in the /config that every visitor fetches.
        table = gr.Dataframe(headers=["Setting", "Value", "Source"], value=[], interactive=False, wrap=True)
        if s.local:
            gr.Markdown("Local mode: change settings with environment variables (e.g. `DATA_DIR`, `BASE_MODELS`) and restart.")
        with gr.Group(visible=False) as owner_box:
            gr.Markdown("### Change this Space's variables\n" + RESTART_WARNING)
            fields = [gr.Textbox(label=label, value="") for _, _, label in EDITABLE]
            save = gr.Button("Save and restart the Space", variant="stop")
            message = gr.Markdown()
            gr.Markdown("### The queue's history\n" + SQUASH_HELP)
            squash = gr.Button("Squash the queue's history")
            squash_message = gr.Markdown()

    def on_save(queue_repo: str, allowed_users: str, train_hardware: str, deadline: str,
                profile: gr.OAuthProfile | None, request: gr.Request) -> str:  # fmt: skip
        require_owner(s, profile, request)
        changes = changed_variables(s, [queue_repo, allowed_users, train_hardware, deadline])
        if not changes:
            return "Nothing changed."
        problem = check_variables(s, changes)
        if problem:
            return f"Not saved: {problem}"
        try:
            save_variables(s, changes)
        except HfHubHTTPError as exc:
            return f"Not saved: the Hub refused ({exc}). The token needs write access to this Space."
        return f"Saved {', '.join(changes)}. The Space restarts now; this page will reconnect."

    save.click(on_save, fields, message, api_name="save_settings", api_visibility="private")

    def on_squash(profile: gr.OAuthProfile | None, request: gr.Request) -> str:
        require_owner(s, profile, request)
        try:
            return ctx.queue.squash_history()
        except QueueError as exc:
            return f"Not squashed: {exc}"

    squash.click(on_squash, None, squash_message, api_name="squash_history", api_visibility="private")
    return SettingsParts(panel=panel, owner_box=owner_box, table=table, fields=fields)


def visibility(ctx: AppContext, access: Access) -> tuple[Any, Any]:
    """Panel and edit box: shown to the owner only (in local mode the person at the machine owns it)."""
    return gr.Column(visible=access.owner), gr.Group(visible=access.owner and not ctx.local)


def owner_values(ctx: AppContext, access: Access) -> list[Any]:
    """Values of the settings table and the edit fields: the real ones for the owner, empty for anyone else."""
    s = ctx.settings
    if not access.owner:
        return [[], *("" for _ in EDITABLE)]
    return [[list(r) for r in s.describe()], *(current_value(s, field) for _, field, _ in EDITABLE)]
