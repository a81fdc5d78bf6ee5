"""The queue view: every task with its status, attempts, hardware, times, cost so far and result; cancel, retry,
delete.

The table is HTML built from the worker's last read of the queue (no Hub request per browser refresh), every value
escaped, with what this page's buttons changed since (``RecentWrites``). Cancel, retry and delete write to the queue
and are checked server-side. Visitors who may not act see a sign-in prompt instead of the table and the buttons.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

import gradio as gr

from contract.flavors import FLAVORS
from contract.settings import DEFAULT_ENDPOINT
from contract.text import html_text, md_code, md_text
from scheduler.billing import GpuPeriod, shares, task_cost_usd
from scheduler.queue.base import QueueError
from scheduler.spending import CAP_NOTE_PREFIX
from scheduler.task import Task, TaskStatus
from scheduler.visitor_queue import visitor_queue_repo
from ui.auth import Access, may_act_on, require_allowed_or_owner
from ui.context import AppContext
from ui.estimate import format_duration
from ui.limits import user_limit_problem

MAX_NOTE_CHARS = 1000

HEADERS = ["Task", "Status", "Prompt", "Tries", "Submitted (UTC)", "Hardware", "Time", "Cost", "Result", "Note"]
EMPTY_HTML = '<p class="queue-empty">No tasks to show.</p>'
# The table wraps every cell (long URLs and notes break anywhere instead of being clipped); under 640 px each task
# is a card of "label: value" lines. Scoped to the component by Gradio (``css_template``).
QUEUE_CSS = """
.queue-table { width: 100%; border-collapse: collapse; font-size: 0.9em; margin: 0; }
.queue-table caption { text-align: left; font-weight: 600; padding: 4px 0; }
.queue-table th, .queue-table td { text-align: left; vertical-align: top; padding: 6px 8px; white-space: normal;
  border-bottom: 1px solid var(--border-color-primary, #ddd); }
.queue-table th { font-weight: 600; background: var(--background-fill-secondary, #f5f5f5); }
.queue-table td.q-prompt, .queue-table td.q-result, .queue-table td.q-note { overflow-wrap: anywhere; min-width: 9em; }
.queue-table td.q-id, .queue-table td.q-status, .queue-table td.q-tries, .queue-table td.q-cost { white-space: nowrap; }
.queue-table a { display: inline; padding: 0; text-align: left; color: var(--link-text-color, #2563eb);
  text-decoration: underline; }
.queue-table code { overflow-wrap: anywhere; white-space: normal; }
@media (max-width: 640px) {
  .queue-table thead { display: none; }
  .queue-table, .queue-table caption, .queue-table tbody, .queue-table tr, .queue-table td {
    display: block; width: 100%; box-sizing: border-box; }
  .queue-table { border: none; padding: 0; }
  .queue-table tr { border: 1px solid var(--border-color-primary, #ddd); border-radius: 8px; margin-bottom: 10px; padding: 4px 0; }
  .queue-table td, .queue-table td.q-prompt, .queue-table td.q-result, .queue-table td.q-note {
    display: grid; grid-template-columns: 7.5em minmax(0, 1fr); gap: 6px; border: none; padding: 3px 10px;
    margin: 0; min-width: 0; white-space: normal; overflow-wrap: anywhere; }
  .queue-table td::before { content: attr(data-label); font-weight: 600; }
  .queue-table td:empty { display: none; }
}
"""


class RecentWrites:
    """The tasks this page's handlers just changed (cancel, retry, delete), shown as changed until the worker's
    next read of the queue has them: the views read the worker's last read (no Hub request per refresh), which is
    seconds old, and a task just cancelled must not be shown RUNNING meanwhile."""

    KEEP_S = 120.0  # a backstop: the worker reads the queue every few seconds

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writes: dict[str, tuple[float, Task | None, float]] = {}  # id -> (read version, after or None, when)

    def note(self, before: Task, after: Task | None) -> None:
        """``before`` (as read just before the change) became ``after`` (None: deleted)."""
        with self._lock:
            self._writes[before.id] = (before.updated_at, after, time.monotonic())

    def apply(self, tasks: list[Task]) -> list[Task]:
        """``tasks`` (the worker's last read) with the changes it does not have yet: a task whose version there is
        not newer than the one changed is replaced (or left out, when deleted). A newer version, or none at all,
        means the worker has read the queue since: the change is forgotten."""
        now = time.monotonic()
        out = []
        with self._lock:
            for task_id in [i for i, (_, _, at) in self._writes.items() if now - at > self.KEEP_S]:
                del self._writes[task_id]
            seen = {t.id for t in tasks}
            for task_id in [i for i in self._writes if i not in seen]:
                del self._writes[task_id]
            for task in tasks:
                write = self._writes.get(task.id)
                if write is None or task.updated_at > write[0]:
                    self._writes.pop(task.id, None)
                    out.append(task)
                elif write[1] is not None:
                    out.append(write[1])
        return out


def visitor_html(access: Access, visitors_pay: bool = False) -> str:
    """What the Queue tab shows a visitor who may not act on tasks (anonymous, or not on the allowed users); when
    visitors pay (``BILLING=visitor``), where a signed-in visitor's own tasks and Jobs are."""
    if visitors_pay and access.user is not None:
        text = (f"Your tasks and their Jobs are in your own account: the private dataset repo "
                f"{visitor_queue_repo(access.user)} and your Jobs page on Hugging Face. They are listed under "
                "\"Your tasks\" below (Refresh updates them).")  # fmt: skip
    elif access.user is None:
        text = "Sign in with Hugging Face (top right) as an allowed user to see, cancel and retry your tasks."
    else:
        text = (f"You are signed in as {access.user}, who is not on this Space's allowed users: the Space's owner can "
                "add you (ALLOWED_USERS) to let you submit and follow tasks.")  # fmt: skip
    return f'<p class="queue-empty queue-sign-in">{html_text(text)}</p>'


def may_act(access: Access) -> bool:
    """Whether the Queue tab's controls (and the Run tab's run) are for ``access``: the owner and allowed users."""
    return access.owner or access.allowed


@dataclass
class QueueParts:
    table: gr.HTML  # receives ``tick_values``' queue value (an HTML string)
    pick: gr.Dropdown
    controls: gr.Row  # the picker and the buttons, hidden for visitors who may not act (``may_act``)
    recent: RecentWrites  # what cancel, retry and delete changed, until the worker's next read has it
    actions: list[Any]  # the buttons' events: ``ui.layout`` refreshes the views right after each


def duration_s(task: Task, now: float) -> float | None:
    """Seconds the task has been (or was) training; None before it started."""
    if task.started_at is None:
        return None
    end = task.finished_at if task.status.terminal and task.finished_at else now
    return max(0.0, end - task.started_at)


def cost_usd(task: Task, now: float, local: bool, periods: Sequence[GpuPeriod] = (),
             prices: dict[str, float] | None = None) -> float:  # fmt: skip
    """The task's share of the GPU time billed in the periods it was trained in (``scheduler.billing``: from the GPU
    request to the release, shared in proportion to the time each task held the GPU; a running task's open period
    counts up to ``now``). A task that no period names (trained before periods were recorded, or the record was
    lost): its training time times the hourly price of its hardware. 0 in local mode. ``prices`` (USD/h per
    flavor: the Jobs prices of the Jobs backend) replace the list prices."""
    if local:
        return 0.0
    share = task_cost_usd(task.id, periods, now) if prices is None else _share_at(task.id, periods, now, prices)
    if share is not None:
        return share
    seconds = duration_s(task, now)
    flavor = FLAVORS.get(task.hardware)
    if local or seconds is None or flavor is None:
        return 0.0
    return seconds / 3600 * (prices or {}).get(task.hardware, flavor.usd_per_hour)


def _share_at(task_id: str, periods: Sequence[GpuPeriod], now: float, prices: dict[str, float]) -> float | None:
    """``task_cost_usd`` at ``prices`` (a flavor they do not name keeps its list price)."""
    found = [p for p in periods if any(c.task_id == task_id for c in p.claims)]
    if not found:
        return None
    total = 0.0
    for p in found:
        flavor = FLAVORS.get(p.hardware)
        price = prices.get(p.hardware, flavor.usd_per_hour if flavor else 0.0)
        total += p.seconds(now) / 3600 * price * shares(p, now).get(task_id, 0.0)
    return total


def is_hub_url(url: str, endpoint: str) -> bool:
    """Whether ``url`` is a page of the configured Hub (``endpoint``) or of https://huggingface.co."""
    return any(url.startswith(base.rstrip("/") + "/") for base in {endpoint, DEFAULT_ENDPOINT} if base)


def result_cell(task: Task, endpoint: str = DEFAULT_ENDPOINT) -> str:
    """HTML of the result: a link that opens a new tab for a Hub URL, else the text (a local folder)."""
    url = task.result_url
    if not url:
        return ""
    if is_hub_url(url, endpoint):
        label = url.rstrip("/").split("/", 3)[-1]
        return f'<a href="{escape(url)}" target="_blank" rel="noopener noreferrer">{html_text(label)}</a>'
    return f"<code>{html_text(url)}</code>"


def status_cell(task: Task) -> str:
    if task.status is TaskStatus.RUNNING and task.progress.get("total"):
        return f"RUNNING {task.progress.get('step', 0)}/{task.progress['total']}"
    return task.status.value


def hardware_cell(task: Task, local: bool) -> str:
    """In local mode "this machine" (``python app.py`` trains where it runs), else the flavor's name."""
    if local:
        return "this machine"
    flavor = FLAVORS.get(task.hardware)
    return flavor.label if flavor else task.hardware


HELD_FOR_OWNER = "Waiting for the Space's owner: its Job could not be started yet."


def note_text(task: Task, hide_hold: bool = False) -> str:
    """The task's note, else the first line of its last error (whole, up to ``MAX_NOTE_CHARS``). ``hide_hold``: a
    note that holds the task (a refused Job: the owner's credit, token or flavor) reads ``HELD_FOR_OWNER``."""
    if hide_hold and task.note and not task.note.startswith(CAP_NOTE_PREFIX):  # a cap's note says nothing secret
        return HELD_FOR_OWNER
    note = task.note or ((task.last_error or "").strip().splitlines() or [""])[0]
    return note if len(note) <= MAX_NOTE_CHARS else note[: MAX_NOTE_CHARS - 1] + "…"


def rows(
    tasks: list[Task], local: bool, now: float | None = None, periods: Sequence[GpuPeriod] = (),
    prices: dict[str, float] | None = None,
    hide_holds: bool = False,
) -> list[list[str]]:
    """Plain-text cells of each task (the Result cell as its URL or folder), newest first; the cost from the GPU
    ``periods`` (see ``cost_usd``); ``hide_holds``: see ``note_text``."""
    now = time.time() if now is None else now
    out = []
    for t in sorted(tasks, key=lambda t: t.created_at, reverse=True):
        submitted = datetime.fromtimestamp(t.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        out.append([
            t.id, status_cell(t), t.instance_prompt, f"{t.attempts}/{t.max_attempts}", submitted, hardware_cell(t, local),
            format_duration(duration_s(t, now)) if t.started_at else "-",
            "free" if local else f"${cost_usd(t, now, local, periods, prices):.2f}",
            t.result_url or "", note_text(t, hide_holds),
        ])  # fmt: skip
    return out


CELL_CLASSES = ["q-id", "q-status", "q-prompt", "q-tries", "q-submitted", "q-hardware", "q-time", "q-cost", "q-result", "q-note"]
RESULT = HEADERS.index("Result")


def table_html(tasks: list[Task], local: bool, endpoint: str = DEFAULT_ENDPOINT, now: float | None = None,
               periods: Sequence[GpuPeriod] = (), prices: dict[str, float] | None = None,
               hide_holds: bool = False, jobs: Mapping[str, str] | None = None,
               caption: str = "Tasks (newest first)") -> str:  # fmt: skip
    """The queue as an HTML table, newest first. Every value is escaped (prompts and notes are user input); only
    Hub URLs become links. Costs come from the GPU ``periods`` (see ``cost_usd``). ``jobs``: a Job column before
    the note (task id -> its text; "-" for a task it does not name)."""
    if not tasks:
        return EMPTY_HTML
    ordered = sorted(tasks, key=lambda t: t.created_at, reverse=True)
    headers, classes = HEADERS, CELL_CLASSES
    if jobs is not None:
        headers, classes = [*HEADERS[:-1], "Job", HEADERS[-1]], [*CELL_CLASSES[:-1], "q-job", CELL_CLASSES[-1]]
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = []
    for task, cells in zip(ordered, rows(tasks, local, now, periods, prices, hide_holds), strict=True):
        if jobs is not None:
            cells = [*cells[:-1], jobs.get(task.id, "-"), cells[-1]]
        tds = []
        for i, (header, cls, value) in enumerate(zip(headers, classes, cells, strict=True)):
            html = result_cell(task, endpoint) if i == RESULT else html_text(value)  # controls made visible
            tds.append(f'<td class="{cls}" data-label="{escape(header)}">{html}</td>')
        body.append(f'<tr data-task="{escape(task.id)}">{"".join(tds)}</tr>')
    return (f'<table class="queue-table"><caption>{html_text(caption)}</caption><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')  # fmt: skip


def build_queue_view(ctx: AppContext) -> QueueParts:
    """Render the queue table and the cancel/retry controls inside the current Blocks."""
    # Built server-side (``table_html``): wrapped cells, real links, a card per task on a phone.
    table = gr.HTML(EMPTY_HTML, css_template=QUEUE_CSS, js_on_load=None, elem_id="queue-table", padding=False)
    recent = RecentWrites()
    with gr.Row() as controls:
        # Custom values: the handlers check the id themselves (an API call has no session that saw the choices).
        pick = gr.Dropdown(label="Task", choices=[], min_width=200, allow_custom_value=True, elem_id="queue-pick")
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
            shown = md_code(task_id[:64])  # typed by the caller: an id in the queue is letters, digits, - and _
            try:
                before = ctx.queue.get(task_id)
                if not may_act_on(access, before):
                    return f"Could not {verb} {shown}: only its submitter or the Space owner can."
                task = change(before)
            except QueueError as exc:
                return f"Could not {verb} {shown}: {md_text(exc)}"
            recent.note(before, None if verb == "delete" else task)
            message = done(task)
            ctx.worker.wake()
            return message

        return handle

    def retry_within_limits(task: Task) -> Task:
        """Retry spends again: its submitter's caps apply (none to the owner's tasks)."""
        status = ctx.worker.status.snapshot()  # the caps count what was billed: the queue's periods and Jobs
        problem = user_limit_problem(ctx.settings, task.submitted_by, status.tasks, periods=status.billing,
                                     jobs=status.jobs, retry=task, prices=status.job_prices or None)  # fmt: skip
        if problem:
            raise QueueError(problem)
        return ctx.queue.retry(task.id)

    def retried(task: Task) -> str:
        ctx.worker.forget_refusal(task.id)
        return f"Task {md_code(task.id)} is {task.status.value} again."

    def deleted(task: Task) -> str:
        with contextlib.suppress(ValueError):  # a forged id names no folder of this machine
            ctx.worker.remove_photos(task.id)  # its copy on this machine too; the run's outputs (a local model) stay
        where = f" The model stays in {md_text(task.result_url)}." if task.result_url else ""
        return f"Task {md_code(task.id)} was deleted with its photos and checkpoints.{where}"

    on_cancel = task_action("cancel", lambda task: ctx.queue.cancel(task.id), lambda task: f"Task {md_code(task.id)} is {task.status.value}.")
    on_retry = task_action("retry", retry_within_limits, retried)
    on_delete = task_action("delete", lambda task: ctx.queue.delete(task.id), deleted)

    actions = [button.click(handler, pick, message, api_name=name, api_visibility="private")
               for button, handler, name in ((cancel, on_cancel, "cancel"), (retry, on_retry, "retry"),
                                             (delete, on_delete, "delete"))]  # fmt: skip
    return QueueParts(table=table, pick=pick, controls=controls, recent=recent, actions=actions)


def refresh(ctx: AppContext, tasks: list[Task], current_pick: str | None, known_ids: list[str],
            job_prices: dict[str, float] | None = None, owner: bool = True) -> tuple[Any, Any]:  # fmt: skip
    """New table value, and new task choices only when the set of tasks changed (keeps an open dropdown still).
    ``job_prices``: the worker's Jobs prices (the Jobs backend prices its tasks with them); in Jobs mode why a Job
    was refused is for the ``owner`` only."""
    ids = [t.id for t in sorted(tasks, key=lambda t: t.created_at, reverse=True)]
    periods = ctx.worker.status.view().billing if ctx.worker is not None and not ctx.local else []  # read only
    jobs = bool(getattr(ctx.settings, "uses_jobs", False))
    prices = (job_prices or None) if jobs else None  # a Job costs its flavor's Jobs price
    table = table_html(tasks, ctx.local, ctx.settings.hf_endpoint, periods=periods, prices=prices,
                       hide_holds=jobs and not owner)  # fmt: skip
    if ids == known_ids:
        return table, gr.skip()
    return table, gr.Dropdown(choices=ids, value=current_pick if current_pick in ids else None)
