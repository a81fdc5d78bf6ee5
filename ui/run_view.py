"""The run view: what the worker does right now, refreshed by a ``gr.Timer`` from ``WorkerStatus``.

Phase, a progress bar, steps/s and ETA, the latest scores (``ui.scores_view``), the loss chart (``ui.loss_chart``), the newest sample images, the tail of
the trainer's log and the hardware state (current / requested / stage). With ``TRAINING_BACKEND=jobs`` the tab
shows one panel per running task instead (``ui.jobs_view``): the Space itself does not train. A visitor who may not
follow runs gets a sign-in prompt, and the bar, chart and log are hidden (``RunParts.shown_to``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from contract.flavors import FLAVORS
from contract.text import md_code, md_text
from scheduler.hardware.base import HardwareState
from scheduler.status import ENDED_PHASES, StatusData
from scheduler.task import Task, TaskStatus
from ui.auth import Access
from ui.captions_view import captions_markdown
from ui.estimate import format_duration
from ui.jobs_view import JOBS_CSS, SIGN_IN_PROMPT, jobs_panels
from ui.loss_chart import loss_chart_html
from ui.results_view import open_image, results_pointer
from ui.scores_view import scores_line


@dataclass
class RunParts:
    phase: gr.Markdown
    bar: gr.HTML
    loss: gr.HTML  # ``ui.loss_chart``
    samples: gr.Gallery
    log: gr.Textbox
    panels: gr.HTML  # Jobs mode: one panel per running task (hidden in the other modes)
    charts: gr.Row  # the loss chart and the samples
    jobs: bool = False

    def shown_to(self, may_see: bool) -> list[Any]:
        """Visibility of the single-run parts (bar, charts, log) for a visitor who may (not) follow runs: hidden
        for one who may not (the phase line says to sign in instead), and always in Jobs mode (the panels show)."""
        visible = may_see and not self.jobs
        return [gr.HTML(visible=visible), gr.Row(visible=visible), gr.Textbox(visible=visible)]

    def visibility_outputs(self) -> list[Any]:
        return [self.bar, self.charts, self.log]

    def outputs(self) -> list[Any]:
        return [self.phase, self.bar, self.loss, self.samples, self.log, self.panels]


def hardware_text(hw: HardwareState | None, local: bool) -> str:
    """``Hardware: Nvidia T4 small (requested: CPU basic) · stage RUNNING``."""
    if local:
        gpu = "a GPU" if hw is not None and hw.gpu_visible else "the CPU"
        return f"**Hardware:** this machine ({gpu})"
    if hw is None:
        return "**Hardware:** unknown yet"

    def label(name: str | None) -> str:  # an unknown flavor or stage as the Hub says it, as text
        return FLAVORS[name].label if name in FLAVORS else md_text(name or "unknown")

    stage = md_text(hw.stage or "?")
    if hw.current is None:
        return f"**Hardware:** starting on {label(hw.requested)} · stage {stage}"
    text = f"**Hardware:** {label(hw.current)}"
    if hw.requested and hw.requested != hw.current:
        text += f" → **moving to {label(hw.requested)}**"
    return text + f" · stage {stage}"


def progress_html(step: int, total: int) -> str:
    """An accessible progress bar (works at any width)."""
    pct = 0 if not total else max(0, min(100, round(100 * step / total)))
    return (
        f'<div class="run-progress" role="progressbar" aria-valuenow="{pct}" aria-valuemin="0" aria-valuemax="100" '
        f'style="height:12px;background:var(--neutral-200);border-radius:6px;overflow:hidden">'
        f'<div style="background:var(--color-accent);width:{pct}%;height:100%;border-radius:6px"></div></div>'
        f'<div style="font-size:0.9em">{html.escape(f"{step} / {total} steps ({pct}%)" if total else "no training step yet")}</div>'
    )


def phase_text(s: StatusData, ended: Task | None = None) -> str:
    """The phase, task, message, speed, latest scores and last error as Markdown; the message and the error as inert text (they
    quote tasks, Hub answers and trainer output: ``contract.text.md_text``). ``ended``: the run's task as the queue
    says it is now, when it no longer runs there (cancelled, say) while the worker has not stopped it yet."""
    phase = "stopping" if ended is not None and s.phase not in ENDED_PHASES else s.phase
    lines = [f"**Phase:** {md_text(phase)}" + (f" · task {md_code(s.task_id)}" if s.task_id else "")]
    if phase == "stopping" and ended is not None:
        lines.append(f"Task {md_code(ended.id)} is {ended.status.value}: its trainer is being stopped.")
    elif s.message:
        lines.append(md_text(s.message))
    if s.steps_per_s:
        speed = f"**Speed:** {s.steps_per_s:.2f} steps/s"
        # No ETA once the last step is done (sampling and upload remain), once the run ended, nor for a task that
        # no longer runs in the queue.
        if s.total and s.step < s.total and s.phase not in ENDED_PHASES and ended is None:
            speed += f" · **ETA:** {format_duration(s.eta_s)}"
        if s.loss is not None:
            speed += f" · **loss:** {s.loss:.4f}"
        lines.append(speed)
    if scores := scores_line(s.scores, s.base_scores):  # the latest checkpoint's, next to the base model's
        lines.append(scores)
    if s.captions:  # the photos' captions of a run that writes them, as it trains with them
        rows = [(stem, text) for stem, text, _ in s.captions]
        lines.append(captions_markdown(rows, {stem for stem, _, by_model in s.captions if by_model}))
    if s.last_error:
        lines.append(f"**Last error:** {md_text(s.last_error.splitlines()[0][:300])}")
    return "\n\n".join(lines)


def loss_frame(s: StatusData) -> str:
    """The run's loss curve as the chart's HTML (``ui.loss_chart``)."""
    return loss_chart_html(s.loss_history or [])


def no_longer_running(s: StatusData, visible: list[Task]) -> Task | None:
    """The run's task when the queue (as the page knows it) says it ended while the worker still runs it: cancelled
    from the Queue tab a moment ago, before the worker's next read of the queue."""
    task = next((t for t in visible if t.id == s.task_id), None) if s.task_id else None
    return task if task is not None and task.status.terminal and task.status is not TaskStatus.DONE else None


def render(s: StatusData, visible: list[Task] | None = None) -> list[Any]:
    """Values for ``RunParts.outputs()`` (samples as file paths: ``load_samples`` turns them into images)."""
    samples = [p for p in s.samples if Path(p).is_file()]
    return [
        phase_text(s, no_longer_running(s, visible or [])),
        progress_html(s.step, s.total),
        loss_frame(s),
        samples or None,
        "\n".join(s.log_tail),
        "",
    ]


#: nothing is training: the Run tab points to the Results tab of the last finished task
POINTER_PHASES = (ENDED_PHASES - {"done"}) | {"starting", "idle", "waiting"}
NOT_YOURS = "No task of yours is training right now."


def run_values_for(access: Access, s: StatusData, visible: list[Task]) -> list[Any]:
    """The run view as ``access`` may see it: the whole run for the owner, a run of their own task for an allowed
    user, and only the worker's phase otherwise (no task id, message, log, loss or sample). While nothing trains,
    it points to the Results tab of the newest finished task ``access`` may see."""
    if access.owner or (s.task_id is not None and any(t.id == s.task_id for t in visible)):
        values = render(s, visible)
    else:
        text = SIGN_IN_PROMPT if not access.allowed else f"**Phase:** {s.phase if s.task_id is None else 'busy'}\n\n{NOT_YOURS}"
        values = [text, progress_html(0, 0), loss_frame(StatusData()), None, "", ""]
    # Not while a run that just finished is shown ("done": its own samples are on screen, and the task list the
    # worker last read may still call it RUNNING); never the task on screen itself.
    others = [t for t in visible if t.id != s.task_id]
    if (access.allowed or access.owner) and s.phase in POINTER_PHASES and (pointer := results_pointer(others)):
        values[0] += "\n\n" + pointer
    return values


def load_samples(paths: list[str] | None) -> list[Image.Image] | None:
    """Sample files read into images: the browser gets them as event output (copied to Gradio's cache under a
    hashed name), never as a URL into the data folder."""
    images = [open_image(path) for path in paths or []]  # None: removed with its run folder meanwhile
    return [image for image in images if image is not None] or None


def jobs_run_values(access: Access, s: StatusData, visible: list[Task], settings: Any) -> list[Any]:
    """``RunParts.outputs()`` values in Jobs mode: the summary and one panel per running task (``ui.jobs_view``),
    the single-run components left empty (hidden)."""
    summary, panels = jobs_panels(access, s, visible, settings)
    return [summary, progress_html(0, 0), loss_frame(StatusData()), None, "", panels]


def build_run_view(jobs: bool = False) -> RunParts:
    """Render the run view's components inside the current Blocks (``jobs``: the panels of ``ui.jobs_view``)."""
    phase = gr.Markdown("**Phase:** starting", elem_id="run-phase")
    bar = gr.HTML(progress_html(0, 0), visible=not jobs)
    with gr.Row(visible=not jobs) as charts:
        loss = gr.HTML(loss_chart_html([]), min_width=280, elem_id="run-loss", container=True, js_on_load=None)
        samples = gr.Gallery(label="Latest samples", columns=2, height=280, interactive=False, min_width=280)
    log = gr.Textbox(label="Trainer log (tail)", lines=8, max_lines=12, interactive=False, autoscroll=True, visible=not jobs)
    panels = gr.HTML("", css_template=JOBS_CSS, visible=jobs, elem_id="jobs-panels", padding=False)
    return RunParts(phase=phase, bar=bar, loss=loss, samples=samples, log=log, panels=panels, charts=charts, jobs=jobs)
