"""A run's scores (``contract.scores``) where people look: the Results tab's scores block and the Run tab's line.

Results tab: ``scores.json`` is read from the local output folder, or downloaded from the model repo with the rest
of the result, and with it only the images of the base model and of the picked step (at most
``2 × MAX_SCORING_PROMPTS`` files). It shows as one HTML block: the picked step and why (or the record's note), the
charts of ``ui.scores_chart``, and a grid of images, one row per scoring prompt, the base model and the picked
checkpoint side by side. Images go inline as small JPEG data URIs (the data dir is never served); the record's
texts (prompts, reason, note, model names) are HTML text (``contract.text.html_text``). No record: nothing shows.

Run tab: ``scores_line`` says the latest scores as the trainer's ``Scores`` events bring them, next to the base
model's.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from contract.scores import MAX_SCORING_PROMPTS, PICK_RULE, SCORES_NAME, PointScores, ScoreRecord
from contract.text import html_text
from ui.scores_chart import scores_chart_html

MAX_SCORES_BYTES = 2 * 1024**2  # the trainer's record is a few kB; a bigger (edited) file is not read
THUMB_PX = 320  # the grid's images, longest side (shown at most ``CELL_PX`` wide: sharp on a dense screen)
CELL_PX = 200
BORDER = "border:1px solid var(--border-color-primary, #e5e7eb)"
JPEG_QUALITY = 88
#: (attribute, label, decimals) of the measures a scores line names, in this order
MEASURES = (("dino", "DINO", 3), ("clip_i", "CLIP-I", 3), ("clip_t", "CLIP-T", 3), ("val_loss", "validation loss", 4))


@dataclass
class RunScores:
    """What the Results tab shows of a run's scores: the record and the grid's images as data URIs (by their
    output-relative path; an image that could not be read is absent)."""

    record: ScoreRecord
    images: dict[str, str] = field(default_factory=dict)

    @property
    def picked_point(self) -> PointScores | None:
        """The scores of the picked step, when the record has them."""
        return self.record.point(self.record.picked.step) if self.record.picked is not None else None


# ----------------------------------------------------------------------------------------------- reading
def is_relative_name(name: str) -> bool:
    """Whether ``name`` is a plain relative path inside the output folder (no ``..``, no drive, no backslash)."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts and "\\" not in name and ":" not in name


def shown_images(record: ScoreRecord) -> list[str]:
    """The images the grid shows: the base model's and the picked step's, one per prompt at most."""
    picked = record.point(record.picked.step) if record.picked is not None else None
    count = min(len(record.prompts), MAX_SCORING_PROMPTS)
    names = [n for p in (record.base, picked) if p is not None for n in p.images[:count] if is_relative_name(n)]
    return list(dict.fromkeys(names))


def parse_scores(raw: bytes) -> tuple[ScoreRecord | None, str | None]:
    """The record in ``raw`` (checked: it may come from a model repo anyone with write access edited), or a problem."""
    if len(raw) > MAX_SCORES_BYTES:
        return None, f"{SCORES_NAME} is too big to read ({len(raw)} bytes): the scores are not shown."
    try:
        return ScoreRecord.model_validate_json(raw), None
    except ValidationError as exc:
        return None, f"{SCORES_NAME} could not be read ({exc.error_count()} problem(s)): the scores are not shown."


def thumbnail_uri(path: Path) -> str | None:
    """The image in ``path`` as a JPEG data URI at most ``THUMB_PX`` on its longest side, or None when unreadable."""
    try:
        with Image.open(path) as img:
            img.thumbnail((THUMB_PX, THUMB_PX))
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _read_record(path: Path, problems: list[str]) -> ScoreRecord | None:
    try:
        if path.stat().st_size > MAX_SCORES_BYTES:
            problems.append(f"{SCORES_NAME} is too big to read: the scores are not shown.")
            return None
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(f"{SCORES_NAME} could not be read ({type(exc).__name__}).")
        return None
    record, problem = parse_scores(raw)
    if problem:
        problems.append(problem)
    return record


def scores_from_folder(output_dir: Path, problems: list[str]) -> RunScores | None:
    """The scores in a local output folder (None without ``scores.json``); what cannot be read goes to ``problems``."""
    path = output_dir / SCORES_NAME
    if not path.is_file():
        return None
    record = _read_record(path, problems)
    if record is None:
        return None
    root, images = output_dir.resolve(), {}
    for name in shown_images(record):
        target = (output_dir / name).resolve()
        if target.is_relative_to(root) and (uri := thumbnail_uri(target)) is not None:
            images[name] = uri
    return RunScores(record, images)


def scores_from_repo(names: list[str], download: Callable[[str], Path | None], problems: list[str]) -> RunScores | None:
    """The scores in a model repo whose files are ``names``: ``scores.json`` and the grid's images, each fetched with
    ``download`` (a repo file name -> a local path, or None when it failed: it says so itself)."""
    if SCORES_NAME not in names:
        return None
    path = download(SCORES_NAME)
    record = _read_record(path, problems) if path is not None else None
    if record is None:
        return None
    listed, images = set(names), {}
    for name in shown_images(record):
        if name in listed and (local := download(name)) is not None and (uri := thumbnail_uri(local)) is not None:
            images[name] = uri
    return RunScores(record, images)


# ----------------------------------------------------------------------------------------------- presenting
def compare_text(point: Any, base: Any | None) -> str:
    """``DINO 0.612 (base 0.420) · CLIP-I ...`` for a ``Scores`` event or ``PointScores`` (measures it lacks left
    out), each with the base model's value where ``base`` has it; plain text (numbers and fixed labels only)."""
    items = []
    for attr, label, decimals in MEASURES:
        value = getattr(point, attr, None)
        if value is None or not math.isfinite(value):
            continue
        text = f"{label} {value:.{decimals}f}"
        reference = getattr(base, attr, None) if base is not None else None
        if reference is not None and math.isfinite(reference):
            text += f" (base {reference:.{decimals}f})"
        items.append(text)
    return " · ".join(items)


def latest_scores(latest: Any | None, base: Any | None) -> tuple[str, str] | None:
    """(heading, text): the latest scored step's scores next to the base model's (or the base model's alone, before
    the first checkpoint is scored); None before any. Plain text."""
    if latest is not None and (text := compare_text(latest, base)):
        return f"Scores at step {latest.step}", text
    if base is not None and (text := compare_text(base, None)):
        return "Scores of the base model", text
    return None


def scores_line(latest: Any | None, base: Any | None) -> str:
    """The Run tab's Markdown line of ``latest_scores``; empty before any."""
    found = latest_scores(latest, base)
    return f"**{found[0]}:** {found[1]}" if found else ""


def _cell(scores: RunScores, point: PointScores | None, index: int, column: str, prompt: str) -> str:
    name = point.images[index] if point is not None and index < len(point.images) else None
    uri = scores.images.get(name) if name else None
    if uri is None:
        return f'<td class="scores-missing" style="{BORDER};opacity:0.7;text-align:center">no image</td>'
    return (f'<td style="{BORDER};padding:4px;text-align:center"><img src="{uri}" '
            f'alt="{html_text(f"{column}: {prompt}")}" style="width:100%;max-width:{CELL_PX}px;height:auto;'
            'border-radius:4px;display:block;margin:auto"></td>')  # fmt: skip


def grid_html(scores: RunScores) -> str:
    """One row per scoring prompt (the prompt as its label), the base model's image and the picked checkpoint's."""
    record, picked = scores.record, scores.picked_point
    prompts = record.prompts[:MAX_SCORING_PROMPTS]
    if not prompts or (record.base is None and picked is None):
        return ""
    base_head = "base model" if record.base is not None else "base model (not scored)"
    picked_head = f"picked checkpoint (step {picked.step})" if picked is not None else "picked checkpoint (none)"
    head = "".join(f'<th scope="col" style="{BORDER};text-align:{a};padding:4px">{html_text(h)}</th>'
                   for a, h in (("left", "prompt"), ("center", base_head), ("center", picked_head)))  # fmt: skip
    rows = []
    for i, prompt in enumerate(prompts):
        label = (f'<th scope="row" class="scores-prompt" style="{BORDER};text-align:left;font-weight:normal;padding:4px;'
                 f'overflow-wrap:anywhere">{html_text(prompt)}</th>')  # fmt: skip
        cells = _cell(scores, record.base, i, "base model", prompt) + _cell(scores, picked, i, picked_head, prompt)
        rows.append(f"<tr>{label}{cells}</tr>")
    return (f'<table class="scores-grid" style="border-collapse:collapse;width:100%;max-width:{2 * CELL_PX + 260}px;'
            f'table-layout:fixed;margin-top:12px"><colgroup><col style="width:28%"><col><col></colgroup>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")  # fmt: skip


def scores_html(scores: RunScores | None) -> str:
    """The Results tab's scores block (empty without a record): the pick and why, the record's note, the charts,
    the image grid, and how the pick is made."""
    if scores is None:
        return ""
    record, picked = scores.record, scores.picked_point
    parts = ['<div class="scores-title" style="font-weight:600;font-size:1.15em;margin-bottom:6px">Model scores</div>']
    if record.picked is not None:
        parts.append(f'<p class="scores-pick" style="margin:4px 0"><b>Picked checkpoint: step {record.picked.step}</b>'
                     f" ({html_text(record.picked.reason)}).</p>")  # fmt: skip
    if picked is not None and (text := compare_text(picked, record.base)):
        parts.append(f'<p class="scores-values" style="margin:4px 0">{html_text(text)}</p>')
    if record.note:
        parts.append(f'<p class="scores-note" style="margin:4px 0;font-style:italic">{html_text(record.note)}</p>')
    if record.points or record.base is not None:
        parts.append(scores_chart_html(record))
    parts.append(grid_html(scores))
    if record.points:
        models = ", ".join(f"{html_text(v)} ({html_text(k)})" for k, v in sorted(record.models.items()))
        used = f"<p>Scoring models: {models}.</p>" if models else ""
        parts.append(f'<details style="margin-top:8px"><summary>How the checkpoint is picked</summary>'
                     f"<p>{html_text(PICK_RULE)}</p>{used}</details>")  # fmt: skip
    return f'<div class="run-scores">{"".join(parts)}</div>'


def scores_update(scores: RunScores | None) -> Any:
    """The Results tab's scores component: the block, hidden when the run has no record."""
    html = scores_html(scores)
    return gr.HTML(value=html, visible=bool(html))
