"""The Queue tab's "Your tasks" in the visitor-pays mode (``BILLING=visitor``, issue 25).

A signed-in visitor sees their own tasks and this Space's Jobs in their account, read with their token from their
queue repo (``visitor_queue_repo``) and their Jobs namespace: nobody else, the Space's owner included, sees them.
Refresh follows them up (``scheduler.visitor_follow.follow_up``: a Job that ended requeues or fails its task); Cancel
cancels the task and its Job; Retry starts a new Job that resumes from the mirrored checkpoints. Every handler checks
the request's site and the sign-in (anonymous: a sign-in prompt, no request to the Hub); the username comes from
whoami, never from the caller, and the token lives only for the request. The page load fills the list once; the
page's timer never asks the Hub for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from contract.text import html_text, md_code, md_text
from scheduler import visitor_queue as vq
from scheduler.queue.base import InvalidTransition, TaskNotFound
from scheduler.task import TaskStatus
from scheduler.visitor_follow import follow_up, retry
from scheduler.visitor_token import VisitorToken, VisitorTokenError, read_visitor_token
from ui.auth import access_for, require_same_site
from ui.context import AppContext
from ui.jobs_view import progress_line
from ui.queue_view import QUEUE_CSS, table_html
from ui.visitor_submit import _why

SIGN_IN = "Sign in with Hugging Face (top right) to see, cancel and retry your own tasks."
NO_TASKS = "You have no tasks yet: press Train to start one."
#: the events read and write the visitor's repos with their token: never queued behind another visitor's
EVENT = {"api_visibility": "private", "show_progress": "minimal", "concurrency_limit": None}


def _html(text: str) -> str:
    return f'<p class="queue-empty queue-sign-in">{html_text(text)}</p>'


@dataclass
class VisitorTasks:
    table: gr.HTML
    pick: gr.Dropdown
    message: gr.Markdown


def job_cells(view: vq.VisitorView) -> dict[str, str]:
    """Each task's newest Job as the table shows it: its id and stage, and while it trains the progress of the
    task's last heartbeat in their queue (``12 / 24 steps · loss 0.1234 · ETA 2 min``)."""
    tasks = {t.id: t for t in view.tasks}
    cells = {}
    for job in sorted(view.jobs, key=lambda j: (j.created_at or 0.0, j.job_id)):
        cells[job.task_id] = f"{job.job_id} {job.stage}"
        task = tasks.get(job.task_id)
        if job.alive and task is not None and task.status is TaskStatus.RUNNING and task.progress:
            p = task.progress
            steps = f"{p.get('step', 0)} / {p.get('total') or task.params.get('steps') or '?'} steps"
            cells[job.task_id] += " · " + " · ".join(x for x in (steps, progress_line(task)) if x)
    return cells


def tasks_html(ctx: AppContext, view: vq.VisitorView) -> str:
    """The visitor's tasks (newest first) with their Job, every value escaped; a line when there is none."""
    if not view.tasks:
        return _html(NO_TASKS)
    prices = ctx.worker.status.view().job_prices if ctx.worker is not None else None  # read only: no request
    return table_html(list(view.tasks), False, ctx.settings.hf_endpoint, prices=prices or None,
                      jobs=job_cells(view), caption="Your tasks (newest first)")  # fmt: skip


def signed_in(ctx: AppContext, profile: gr.OAuthProfile | None, oauth: gr.OAuthToken | None,
              request: gr.Request | None) -> tuple[str, VisitorToken] | str:  # fmt: skip
    """The request's token and the visitor whoami says it is; else what to tell them (anonymous: no request)."""
    require_same_site(ctx.settings, request)
    access = access_for(ctx.settings, profile)
    token = getattr(oauth, "token", None)
    if access.user is None or not token:
        return SIGN_IN
    try:
        visitor = read_visitor_token(oauth, endpoint=ctx.settings.hf_endpoint)
    except VisitorTokenError as exc:
        return f"{exc.reason} {exc.fix}"
    if visitor.username != access.user:
        return "Your sign-in's token belongs to another account. Sign out and sign in again."
    return token, visitor


def _values(ctx: AppContext, view: vq.VisitorView | None, pick: str | None, message: str) -> list[Any]:
    """[table, picker, message]; ``view`` None keeps the table and picker as they are."""
    if view is None:
        return [gr.skip(), gr.skip(), message]
    ids = [t.id for t in sorted(view.tasks, key=lambda t: t.created_at, reverse=True)]
    return [tasks_html(ctx, view), gr.Dropdown(choices=ids, value=pick if pick in ids else None), message]


def summary(view: vq.VisitorView, visitor: VisitorToken) -> str:
    alive = sum(1 for j in view.jobs if j.alive)
    repo = md_code(vq.visitor_queue_repo(visitor.username))
    return f"{len(view.tasks)} task(s) in your repo {repo}; {alive} Job(s) alive in your account."


#: a change of the picked task: ``act(ctx, token, visitor, task_id)`` does it and says what happened
Act = Callable[[AppContext, str, VisitorToken, str], str]


def handler(ctx: AppContext, act: Act | None) -> Callable[..., list[Any]]:
    """A handler of the list: ``act`` (None: Refresh) changes the picked task; then the list is followed up
    (Refresh) or read again (one listing). The Hub's failures are told by kind, never by message."""

    def handle(task_id: str | None, profile: gr.OAuthProfile | None, oauth: gr.OAuthToken | None,
               request: gr.Request | None = None) -> list[Any]:  # fmt: skip
        signed = signed_in(ctx, profile, oauth, request)
        if signed == SIGN_IN:
            return [_html(SIGN_IN), gr.Dropdown(choices=[], value=None), SIGN_IN]
        if isinstance(signed, str):
            return _values(ctx, None, None, md_text(signed))
        token, visitor = signed
        message = ""
        if act is not None:
            if not task_id:
                return _values(ctx, None, None, "Pick one of your tasks first.")
            message = act(ctx, token, visitor, task_id)
        try:
            view = (follow_up if act is None else vq.list_visitor)(token, visitor, ctx.settings)
        except vq.VisitorRefused as exc:
            return _values(ctx, None, None, f"{message} {md_text(exc.reason)} {md_text(exc.fix)}".strip())
        except Exception as exc:  # noqa: BLE001 - told by kind and HTTP status: the message could quote a request
            return _values(ctx, None, None, f"{message} Your tasks could not be read ({_why(exc)}); try again.".strip())
        return _values(ctx, view, task_id, message or summary(view, visitor))

    return handle


def guarded(verb: str, change: Act) -> Act:
    """``change``, with what went wrong told in the queue's own words or by kind (never the Hub's messages)."""

    def act(ctx: AppContext, token: str, visitor: VisitorToken, task_id: str) -> str:
        shown = md_code(task_id[:64])  # typed by the caller
        try:
            return change(ctx, token, visitor, task_id)
        except TaskNotFound:
            return f"Task {shown} is not one of your tasks: nothing was changed."
        except InvalidTransition as exc:  # the queue's words: the task id and its state
            return f"Could not {verb} {shown}: {md_text(exc)}"
        except vq.VisitorRefused as exc:
            return f"Could not {verb} {shown}: {md_text(exc.reason)} {md_text(exc.fix)}"
        except Exception as exc:  # noqa: BLE001 - told by kind and HTTP status only
            return f"Could not {verb} {shown} ({_why(exc)}); try again."

    return act


def cancel_task(ctx: AppContext, token: str, visitor: VisitorToken, task_id: str) -> str:
    task = vq.cancel(token, visitor, ctx.settings, task_id)
    return f"Task {md_code(task.id)} is {task.status.value}; its Job in your account was cancelled."


def retry_task(ctx: AppContext, token: str, visitor: VisitorToken, task_id: str) -> str:
    sent = retry(token, visitor, ctx.settings, task_id)
    if sent.job_id:
        how = "started" if sent.created else "already running"
        return (f"Task {md_code(sent.task_id)} runs again as Hugging Face Job {md_code(sent.job_id)} ({how}) in your "
                "account, from its last saved checkpoint.")  # fmt: skip
    return f"**Task {md_code(sent.task_id)}: its Job was not started.** {md_text(sent.note or '')}"


def build_visitor_tasks(ctx: AppContext, demo: gr.Blocks, after: Sequence[gr.Markdown] = ()) -> VisitorTasks:
    """"Your tasks" inside the current Blocks: the list, a picker, Refresh / Cancel / Retry; filled at the page load
    and after each change of the ``after`` components (the Train button's answer)."""
    gr.Markdown("### Your tasks")
    table = gr.HTML(_html(SIGN_IN), css_template=QUEUE_CSS, js_on_load=None, elem_id="visitor-tasks", padding=False)
    with gr.Row():
        pick = gr.Dropdown(label="Your task", choices=[], min_width=200, allow_custom_value=True, elem_id="visitor-pick")
        refresh = gr.Button("Refresh", min_width=100)
        cancel = gr.Button("Cancel task", variant="stop", min_width=120)
        again = gr.Button("Retry task", min_width=120)
    message = gr.Markdown(elem_id="visitor-tasks-message")
    outputs = [table, pick, message]
    on_refresh = handler(ctx, None)
    refresh.click(on_refresh, pick, outputs, api_name="my_tasks", **EVENT)
    cancel.click(handler(ctx, guarded("cancel", cancel_task)), pick, outputs, api_name="my_cancel", **EVENT)
    again.click(handler(ctx, guarded("retry", retry_task)), pick, outputs, api_name="my_retry", **EVENT)
    demo.load(on_refresh, pick, outputs, **EVENT)
    for component in after:
        component.change(on_refresh, pick, outputs, **EVENT)
    return VisitorTasks(table=table, pick=pick, message=message)
