"""The Run tab when training runs on Hugging Face Jobs (``TRAINING_BACKEND=jobs``): one panel per running task.

The Space stays on CPU and follows several Jobs at once. Each panel shows the task (id and prompt), its Job (id,
stage, flavor and its Jobs price), the progress from the task's last heartbeat in the queue (step / total, loss,
speed, ETA) and the tail of the Job's log (masked of the token by the worker, and again here). Everything comes from
the worker's last read (``StatusData.tasks`` and ``StatusData.jobs``): a browser refresh makes no Hub request.

Who sees what is the run view's rule: the owner sees every task and why each waiting task waits (Job slots full,
the daily GPU-hours cap, a refused Job's reason and fix); an allowed user sees only their own tasks' panels and no
reasons; anonymous and non-allowed visitors see a sign-in prompt and nothing of any task, log or Job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from contract.events import Scores
from contract.flavors import FLAVORS
from contract.text import html_text, md_text
from scheduler.backends.jobs_runner import gpu_seconds_in_day
from scheduler.redact import redact
from scheduler.status import StatusData
from scheduler.task import Task, TaskStatus
from ui.auth import Access, not_allowed_prompt
from ui.estimate import format_duration, jobs_price, price_source_text
from ui.results_view import results_pointer
from ui.scores_view import latest_scores

LOG_LINES_SHOWN = 12
EMPTY_PANELS = ""
#: what the Run tab (single run or Jobs panels) shows a visitor who is not signed in as an allowed user
SIGN_IN_PROMPT = "Sign in as an allowed user to follow training runs."
JOBS_CSS = """
.jobs-run { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px; }
.job-card { border: 1px solid var(--border-color-primary, #ddd); border-radius: 8px; padding: 10px 12px;
  min-width: 0; background: var(--background-fill-primary, #fff); }
.job-card h3 { font-size: 1em; margin: 0 0 4px 0; overflow-wrap: anywhere; }
.job-card .job-line { font-size: 0.9em; margin: 4px 0; overflow-wrap: anywhere; }
/* The newest lines show: a reversed column scrolls from its end, so the box opens (and stays) on the tail. */
.job-card .job-log { display: flex; flex-direction: column-reverse; max-height: 11em; overflow: auto;
  background: var(--background-fill-secondary, #f5f5f5); padding: 6px; border-radius: 6px; margin: 6px 0 0 0; }
.job-card .job-log pre { font-size: 0.78em; white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
.jobs-waiting { margin-top: 10px; font-size: 0.9em; }
.jobs-waiting li { overflow-wrap: anywhere; }
"""


def _alive_jobs(status: StatusData) -> dict[str, Any]:
    """The newest alive Job of each task (``JobView``), by task id."""
    found: dict[str, Any] = {}
    for job in sorted(status.jobs, key=lambda j: (j.created_at or 0.0, j.job_id)):
        if job.alive:
            found[job.task_id] = job
    return found


def running_tasks(status: StatusData, visible: Sequence[Task]) -> list[tuple[Task, Any]]:
    """The tasks of ``visible`` that train now (RUNNING, or PENDING with a Job already started for them), with
    their alive Job (None when none was seen: a listing that lags), oldest first."""
    jobs = _alive_jobs(status)
    out = [(t, jobs.get(t.id)) for t in visible if t.status is TaskStatus.RUNNING or (t.status is TaskStatus.PENDING and t.id in jobs)]  # fmt: skip
    return sorted(out, key=lambda pair: (pair[0].started_at or pair[0].created_at, pair[0].id))


def progress_bar(step: int, total: int) -> str:
    """An accessible progress bar of one panel."""
    pct = 0 if not total else max(0, min(100, round(100 * step / total)))
    label = f"{step} / {total} steps ({pct}%)" if total else "no training step yet"
    return (
        f'<div class="run-progress" role="progressbar" aria-valuenow="{pct}" aria-valuemin="0" aria-valuemax="100" '
        'style="height:10px;background:var(--neutral-200);border-radius:5px;overflow:hidden">'
        f'<div style="background:var(--color-accent);width:{pct}%;height:100%"></div></div>'
        f'<div class="job-line">{html_text(label)}</div>'
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def progress_line(task: Task) -> str:
    """``loss 0.1234 · 1.10 steps/s · ETA 2 min`` from the task's last heartbeat (plain text)."""
    p = task.progress or {}
    parts = []
    if (loss := _number(p.get("loss"))) is not None:
        parts.append(f"loss {loss:.4f}")
    if (speed := _number(p.get("steps_per_s"))) is not None:
        parts.append(f"{speed:.2f} steps/s")
    step, total = _number(p.get("step")) or 0, _number(p.get("total")) or 0
    if (eta := _number(p.get("eta_s"))) is not None and total and step < total:
        parts.append(f"ETA {format_duration(eta)}")
    if isinstance(p.get("phase"), str) and p["phase"]:
        parts.insert(0, f"trainer: {p['phase']}")
    return " · ".join(parts)


def progress_scores(task: Task) -> str:
    """``Scores at step 500: DINO 0.612 (base 0.420) · ...`` from the task's last heartbeat (plain text; empty before
    the first scores, or when what the heartbeat holds is not scores)."""
    p = task.progress or {}
    try:
        latest, base = (Scores.model_validate(p[k]) if isinstance(p.get(k), dict) else None
                        for k in ("scores", "base_scores"))  # fmt: skip
    except ValueError:
        return ""
    found = latest_scores(latest, base)
    return f"{found[0]}: {found[1]}" if found else ""


def flavor_text(flavor: str | None, prices: dict[str, float]) -> str:
    """``Nvidia T4 small ($0.40/h)`` at the Jobs price."""
    known = FLAVORS.get(flavor or "")
    if known is None:
        return flavor or "unknown flavor"
    return f"{known.label} (${jobs_price(known.name, prices):.2f}/h)"


def heartbeat_time(task: Task) -> str:
    """``progress as of 05:42:10 UTC``: the progress is as old as the task's last heartbeat in the queue (a clock
    time, not an age, so that the panel changes only when a heartbeat does)."""
    at = _number((task.progress or {}).get("at"))
    if at is None:
        return "no heartbeat yet"
    return f"progress as of {datetime.fromtimestamp(at, UTC).strftime('%H:%M:%S')} UTC"


def panel_html(task: Task, job: Any, status: StatusData, token: str | None) -> str:
    """One running task: its id and prompt, its Job's stage and flavor, its progress and its Job's log tail."""
    p = task.progress or {}
    step = int(_number(p.get("step")) or 0)
    total = int(_number(p.get("total")) or _number(task.params.get("steps")) or 0)
    flavor = flavor_text(job.flavor if job is not None and job.flavor else task.hardware, status.job_prices)
    if job is None:
        job_line = f"Job: none seen yet (the listing may lag) · {html_text(flavor)}"
    else:
        job_id, stage = html_text(job.job_id), html_text(job.stage)
        job_line = f"Job <code>{job_id}</code> · stage <b>{stage}</b> · {html_text(flavor)}"
    claimed = f"attempt {task.attempts} of {task.max_attempts}" if task.attempts else "waiting for its Job to claim it"
    state = f"Task {task.status.value}, {claimed}"
    if task.status is TaskStatus.RUNNING:
        state += f" · {heartbeat_time(task)}"
    lines = [redact(line, [token]) for line in (job.log_tail if job is not None else ())][-LOG_LINES_SHOWN:]
    shown = "\n".join(map(html_text, lines))  # each line escaped, control characters made visible
    log = ""
    if lines:
        log = f'<div class="job-log" role="log" aria-label="Job log (tail)" tabindex="0"><pre>{shown}</pre></div>'
    details = progress_line(task)
    scores = progress_scores(task)
    return (
        f'<div class="job-card" data-task="{html_text(task.id)}">'
        f"<h3>Task <code>{html_text(task.id)}</code> · {html_text(task.instance_prompt)}</h3>"
        f'<div class="job-line">{job_line}</div><div class="job-line">{html_text(state)}</div>'
        f"{progress_bar(step, total)}"
        + (f'<div class="job-line">{html_text(details)}</div>' if details else "")
        + (f'<div class="job-line job-scores">{html_text(scores)}</div>' if scores else "")
        + f"{log}</div>"
    )


def wait_reasons(status: StatusData, settings: Any, now: float) -> list[tuple[Task, str]]:
    """Why each PENDING task without a Job waits (the owner's view): a refused Job's reason and fix (its note), the
    daily GPU-hours cap, the Job slots, or "starts shortly"."""
    jobs = _alive_jobs(status)
    alive = len(jobs)
    cap_h = settings.jobs_gpu_hours_per_day
    used_h = gpu_seconds_in_day(list(status.jobs), now) / 3600
    out = []
    for task in sorted(status.tasks, key=lambda t: t.created_at):
        if task.status is not TaskStatus.PENDING or task.id in jobs:
            continue
        if task.note:
            why = task.note
        elif task.attempts >= task.max_attempts:
            why = "out of attempts: it is marked FAILED on the next loop"
        elif cap_h is not None and used_h >= cap_h:
            why = (f"the daily cap of {cap_h:g} GPU hours of Jobs is reached ({used_h:.2f} h in the last 24 h); "
                   "raise JOBS_GPU_HOURS_PER_DAY or wait")  # fmt: skip
        elif alive >= settings.max_parallel_jobs:
            why = f"all {settings.max_parallel_jobs} Job slots are busy (MAX_PARALLEL_JOBS); it starts when one is free"
        else:
            why = "its Job starts on the next loop"
        out.append((task, why))
    return out


def summary_text(status: StatusData, settings: Any, running: int, now: float, owner: bool) -> str:
    """The Run tab's first line in Jobs mode; the owner also sees slots, the GPU hours of today and errors."""
    head = "**Training on Hugging Face Jobs:** this Space stays on CPU"
    if not owner:
        return f"{head}. {running} task{'' if running == 1 else 's'} of yours training now."
    cap = settings.jobs_gpu_hours_per_day
    used_h = gpu_seconds_in_day(list(status.jobs), now) / 3600
    cap_text = f"{used_h:.2f} of {cap:g} GPU hours in the last 24 h" if cap is not None else f"{used_h:.2f} GPU hours in the last 24 h (no cap)"
    lines = [f"{head}; **{running} of {settings.max_parallel_jobs}** Job slots busy · {cap_text}."]
    if status.job_prices_source:
        lines.append(f"Prices: {price_source_text(status.job_prices_source)}.")
    if status.last_error:
        lines.append(f"**Last error:** {md_text(redact(status.last_error.splitlines()[0][:300], [settings.hf_token]))}")
    return "\n\n".join(lines)


def jobs_panels(access: Access, status: StatusData, visible: Sequence[Task], settings: Any,
                now: float | None = None) -> tuple[str, str]:  # fmt: skip
    """(Markdown summary, HTML panels) of the Run tab in Jobs mode as ``access`` may see it."""
    if not (access.owner or access.allowed):
        return not_allowed_prompt(settings, access, SIGN_IN_PROMPT), EMPTY_PANELS
    now = time.time() if now is None else now
    running = running_tasks(status, visible)
    summary = summary_text(status, settings, len(running), now, access.owner)
    cards = "".join(panel_html(task, job, status, settings.hf_token) for task, job in running)
    html = f'<div class="jobs-run">{cards}</div>' if cards else ""
    if access.owner:
        waiting = wait_reasons(status, settings, now)
        if waiting:
            items = "".join(f"<li>Task <code>{html_text(t.id)}</code> ({html_text(t.instance_prompt)}) waits: {html_text(why)}</li>"
                            for t, why in waiting)  # fmt: skip
            html += f'<div class="jobs-waiting"><b>Waiting</b><ul>{items}</ul></div>'
    if not running:
        summary += "\n\nNo task is training right now."
        if pointer := results_pointer(list(visible)):
            summary += "\n\n" + pointer
    return summary, html
