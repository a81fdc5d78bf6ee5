"""The queue view: every task with its status, attempts, times, cost so far and result; cancel, retry, delete.

The table is built from the worker's last read of the queue (no Hub request per browser refresh). Cancel, retry
and delete write to the queue and are checked server-side.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import gradio as gr

from scheduler.flavors import FLAVORS
from scheduler.queue.base import QueueError
from scheduler.task import Task, TaskStatus
from ui.auth import may_act_on, require_allowed_or_owner
from ui.context import AppContext
from ui.estimate import format_duration
from ui.limits import user_limit_problem

HEADERS = ["Task", "Status", "Prompt", "Tries", "Submitted (UTC)", "Time", "Cost", "Result", "Note"]
WIDTHS = ["110px", "90px", "160px", "60px", "130px", "90px", "70px", "200px", "200px"]
DATATYPES = ["str", "str", "str", "number", "str", "str", "str", "markdown", "str"]


@dataclass
class QueueParts:
    table: gr.Dataframe
    pick: gr.Dropdown


def duration_s(task: Task, now: float) -> float | None:
    """Seconds the task has been (or was) training; None before it started."""
    if task.started_at is None:
        return None
    end = task.finished_at if task.status.terminal and task.finished_at else now
    return max(0.0, end - task.started_at)


def cost_usd(task: Task, now: float, local: bool) -> float:
    """Training time times the hourly price of the task's hardware (0 in local mode)."""
    seconds = duration_s(task, now)
    flavor = FLAVORS.get(task.hardware)
    if local or seconds is None or flavor is None:
        return 0.0
    return seconds / 3600 * flavor.usd_per_hour


def result_cell(task: Task) -> str:
    """Markdown link to the result (a Hub URL, or a local folder)."""
    url = task.result_url
    if not url:
        return ""
    if url.startswith("http"):
        return f"[{url.rstrip('/').split('/', 3)[-1]}]({url})"
    return f"`{url}`"


def status_cell(task: Task) -> str:
    if task.status is TaskStatus.RUNNING and task.progress.get("total"):
        return f"RUNNING {task.progress.get('step', 0)}/{task.progress['total']}"
    return task.status.value


def rows(tasks: list[Task], local: bool, now: float | None = None) -> list[list[Any]]:
    """Table rows, newest first."""
    now = time.time() if now is None else now
    out = []
    for t in sorted(tasks, key=lambda t: t.created_at, reverse=True):
        submitted = datetime.fromtimestamp(t.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        note = t.note or ((t.last_error or "").strip().splitlines() or [""])[0]
        out.append([
            t.id, status_cell(t), t.instance_prompt[:60], t.attempts, submitted,
            format_duration(duration_s(t, now)) if t.started_at else "-",
            "free" if local else f"${cost_usd(t, now, local):.2f}",
            result_cell(t), note[:160],
        ])  # fmt: skip
    return out


def build_queue_view(ctx: AppContext) -> QueueParts:
    """Render the queue table and the cancel/retry controls inside the current Blocks."""
    table = gr.Dataframe(headers=HEADERS, datatype=DATATYPES, interactive=False, wrap=True, value=[],
                         column_widths=WIDTHS, label="Tasks (newest first)")  # fmt: skip
    with gr.Row():
        # Custom values: the handlers check the id themselves (an API call has no session that saw the choices).
        pick = gr.Dropdown(label="Task", choices=[], min_width=200, allow_custom_value=True)
        cancel = gr.Button("Cancel task", variant="stop", min_width=120)
        retry = gr.Button("Retry task", min_width=120)
        delete = gr.Button("Delete task and photos", min_width=120)
    message = gr.Markdown()

    def task_action(verb: str, change: Callable[[Task], Task], done: Callable[[Task], str]) -> Callable[..., str]:
        """A handler that checks the caller, applies ``change`` to the picked task (read once, to check that the
        caller may act on it) and says what happened."""

        def handle(task_id: str | None, profile: gr.OAuthProfile | None, request: gr.Request) -> str:
            access = require_allowed_or_owner(ctx.settings, profile, request)
            if not task_id:
                return "Pick a task first."
            try:
                task = ctx.queue.get(task_id)
                if not may_act_on(access, task):
                    return f"Could not {verb} `{task_id}`: only its submitter or the Space owner can."
                task = change(task)
            except QueueError as exc:
                return f"Could not {verb} `{task_id}`: {exc}"
            message = done(task)
            ctx.worker.wake()
            return message

        return handle

    def retry_within_limits(task: Task) -> Task:
        """Retry spends again: its submitter's caps apply (none to the owner's tasks)."""
        problem = user_limit_problem(ctx.settings, task.submitted_by, ctx.worker.status.snapshot().tasks, retry=task)
        if problem:
            raise QueueError(problem)
        return ctx.queue.retry(task.id)

    def retried(task: Task) -> str:
        ctx.worker.forget_refusal(task.id)
        return f"Task `{task.id}` is {task.status.value} again."

    def deleted(task: Task) -> str:
        with contextlib.suppress(ValueError):  # a forged id names no folder of this machine
            ctx.worker.remove_photos(task.id)  # its copy on this machine too; the run's outputs (a local model) stay
        where = f" The model stays in {task.result_url}." if task.result_url else ""
        return f"Task `{task.id}` was deleted with its photos and checkpoints.{where}"

    on_cancel = task_action("cancel", lambda task: ctx.queue.cancel(task.id), lambda task: f"Task `{task.id}` is {task.status.value}.")
    on_retry = task_action("retry", retry_within_limits, retried)
    on_delete = task_action("delete", lambda task: ctx.queue.delete(task.id), deleted)

    cancel.click(on_cancel, pick, message, api_name="cancel", api_visibility="private")
    retry.click(on_retry, pick, message, api_name="retry", api_visibility="private")
    delete.click(on_delete, pick, message, api_name="delete", api_visibility="private")
    return QueueParts(table=table, pick=pick)


def refresh(ctx: AppContext, tasks: list[Task], current_pick: str | None, known_ids: list[str]) -> tuple[Any, Any]:
    """New table value, and new task choices only when the set of tasks changed (keeps an open dropdown still)."""
    ids = [t.id for t in sorted(tasks, key=lambda t: t.created_at, reverse=True)]
    table = rows(tasks, ctx.local)
    if ids == known_ids:
        return table, gr.skip()
    return table, gr.Dropdown(choices=ids, value=current_pick if current_pick in ids else None)
