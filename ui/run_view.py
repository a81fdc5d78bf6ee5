"""The run view: what the worker does right now, refreshed by a ``gr.Timer`` from ``WorkerStatus``.

Phase, a progress bar, steps/s and ETA, a loss plot, the newest sample images, the tail of the trainer's log and
the hardware state (current / requested / stage). With ``TRAINING_BACKEND=jobs`` the tab shows one panel per
running task instead (``ui.jobs_view``): the Space itself does not train.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from contract.flavors import FLAVORS
from scheduler.hardware.base import HardwareState
from scheduler.status import ENDED_PHASES, StatusData
from scheduler.task import Task
from ui.auth import Access
from ui.estimate import format_duration
from ui.jobs_view import JOBS_CSS, SIGN_IN_PROMPT, jobs_panels
from ui.results_view import loss_table, open_image, results_pointer


@dataclass
class RunParts:
    phase: gr.Markdown
    bar: gr.HTML
    loss: gr.LinePlot
    samples: gr.Gallery
    log: gr.Textbox
    panels: gr.HTML  # Jobs mode: one panel per running task (hidden in the other modes)

    def outputs(self) -> list[Any]:
        return [self.phase, self.bar, self.loss, self.samples, self.log, self.panels]


def hardware_text(hw: HardwareState | None, local: bool) -> str:
    """``Hardware: Nvidia T4 small (requested: CPU basic) · stage RUNNING``."""
    if local:
        gpu = "a GPU" if hw is not None and hw.gpu_visible else "the CPU"
        return f"**Hardware:** this machine ({gpu})"
    if hw is None:
        return "**Hardware:** unknown yet"

    def label(name: str | None) -> str:
        return FLAVORS[name].label if name in FLAVORS else (name or "unknown")

    if hw.current is None:
        return f"**Hardware:** starting on {label(hw.requested)} · stage {hw.stage or '?'}"
    text = f"**Hardware:** {label(hw.current)}"
    if hw.requested and hw.requested != hw.current:
        text += f" → **moving to {label(hw.requested)}**"
    return text + f" · stage {hw.stage or '?'}"


def progress_html(step: int, total: int) -> str:
    """An accessible progress bar (works at any width)."""
    pct = 0 if not total else max(0, min(100, round(100 * step / total)))
    return (
        f'<div class="run-progress" role="progressbar" aria-valuenow="{pct}" aria-valuemin="0" aria-valuemax="100" '
        f'style="height:12px;background:var(--neutral-200);border-radius:6px;overflow:hidden">'
        f'<div style="background:var(--color-accent);width:{pct}%;height:100%;border-radius:6px"></div></div>'
        f'<div style="font-size:0.9em">{html.escape(f"{step} / {total} steps ({pct}%)" if total else "no training step yet")}</div>'
    )


def phase_text(s: StatusData) -> str:
    lines = [f"**Phase:** {s.phase}" + (f" · task `{s.task_id}`" if s.task_id else "")]
    if s.message:
        lines.append(s.message)
    if s.steps_per_s:
        speed = f"**Speed:** {s.steps_per_s:.2f} steps/s"
        # No ETA once the last step is done (sampling and upload remain) nor once the run ended.
        if s.total and s.step < s.total and s.phase not in ENDED_PHASES:
            speed += f" · **ETA:** {format_duration(s.eta_s)}"
        if s.loss is not None:
            speed += f" · **loss:** {s.loss:.4f}"
        lines.append(speed)
    if s.last_error:
        lines.append(f"**Last error:** {s.last_error.splitlines()[0][:300]}")
    return "\n\n".join(lines)


def loss_frame(s: StatusData) -> pd.DataFrame:
    return loss_table(s.loss_history or [])


def render(s: StatusData) -> list[Any]:
    """Values for ``RunParts.outputs()`` (samples as file paths: ``load_samples`` turns them into images)."""
    samples = [p for p in s.samples if Path(p).is_file()]
    return [
        phase_text(s),
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
        values = render(s)
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
    with gr.Row(visible=not jobs):
        loss = gr.LinePlot(pd.DataFrame(columns=["step", "loss"]), x="step", y="loss", title="Training loss", min_width=280)
        samples = gr.Gallery(label="Latest samples", columns=2, height=280, interactive=False, min_width=280)
    log = gr.Textbox(label="Trainer log (tail)", lines=8, max_lines=12, interactive=False, autoscroll=True, visible=not jobs)
    panels = gr.HTML("", css_template=JOBS_CSS, visible=jobs, elem_id="jobs-panels", padding=False)
    return RunParts(phase=phase, bar=bar, loss=loss, samples=samples, log=log, panels=panels)
