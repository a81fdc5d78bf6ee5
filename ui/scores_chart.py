"""The Results tab's score charts: DINO, CLIP-I and CLIP-T over the scored steps in one SVG, the validation loss in
a second, smaller one; the base model's values (step 0) as dashed reference lines, the picked step marked.

Drawn like ``ui.loss_chart`` (its ticks, labels and margins, computed from the labels; the picture scales with its
box). Each chart's title and legend are HTML above it, so the page wraps them at any width and they stay readable
on a phone (text inside the SVG shrinks with it). The measures are those of ``contract.scores``; a measure no
point has is left out, legend included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from contract.scores import ScoreRecord
from training.metrics import downsample  # torch-free
from ui.loss_chart import axes, svg_text

WIDTH = 440
SCORES_HEIGHT, LOSS_HEIGHT = 220, 160
MAX_POINTS = 200  # a run samples a handful of times; a longer (edited) record is thinned
NO_SCORES = "no scores recorded"
BASE_DASH = "5 4"
#: (attribute of PointScores, legend label, colour): distinct in the light and the dark theme
SCORE_MEASURES = (("dino", "DINO", "#2563eb"), ("clip_i", "CLIP-I", "#059669"), ("clip_t", "CLIP-T", "#d97706"))
LOSS_MEASURE = ("val_loss", "validation loss", "#9333ea")


@dataclass(frozen=True)
class Series:
    """One measure over the steps, with the base model's value (None: not scored)."""

    name: str
    color: str
    points: list[tuple[int, float]] = field(default_factory=list)
    base: float | None = None


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def series_of(record: ScoreRecord, measure: tuple[str, str, str]) -> Series | None:
    """One measure of ``record`` as a series (its non-finite values dropped), None when no point or base has it."""
    attr, name, color = measure
    points = [(p.step, v) for p in record.points if p.step > 0 and (v := _finite(getattr(p, attr))) is not None]
    base = _finite(getattr(record.base, attr)) if record.base is not None else None
    if not points and base is None:
        return None
    return Series(name, color, downsample(sorted(points), MAX_POINTS), base)


def _swatch(color: str, dashed: bool = False, vertical: bool = False) -> str:
    """A legend's mark: a short line (a measure; dashed: the base model) or a vertical bar (the picked step)."""
    if vertical:
        return f'<span style="display:inline-block;height:12px;border-left:2px solid {color};margin:0 8px"></span>'
    style = "dashed" if dashed else "solid"
    return f'<span style="display:inline-block;width:18px;border-top:2px {style} {color};vertical-align:middle"></span>'


def legend_html(series: Sequence[Series], picked: int | None) -> str:
    """The chart's legend in HTML (the page wraps it at any width): each measure drawn, the base model's dashed
    line, the picked step's bar."""
    drawn = [s for s in series if s.points or s.base is not None]
    entries = [(_swatch(s.color), s.name) for s in drawn]
    if any(s.base is not None for s in drawn):
        entries.append((_swatch("currentColor", dashed=True), "base model (step 0)"))
    if picked is not None and drawn:
        entries.append((_swatch("currentColor", vertical=True), f"picked: step {picked}"))
    items = "".join(f'<span class="legend-entry" style="white-space:nowrap">{mark} <span class="legend-label">'
                    f"{escape(label)}</span></span>" for mark, label in entries)  # fmt: skip
    return (f'<div class="scores-legend" style="display:flex;flex-wrap:wrap;justify-content:center;gap:2px 14px;'
            f'font-size:0.85em;margin:2px 0 4px">{items}</div>')  # fmt: skip


def line_chart_svg(title: str, series: Sequence[Series], y_title: str, picked: int | None = None,
                   height: int = SCORES_HEIGHT, css_class: str = "scores-chart") -> str:  # fmt: skip
    """``series`` over the steps as an inline SVG (``title`` names it to screen readers; the page shows it and the
    legend above: ``chart_html``): one polyline (and a dot per point) each, its base value as a dashed line across
    the plot, ``picked`` as a vertical line; a frame saying so when there is nothing to draw."""
    drawn = [s for s in series if s.points or s.base is not None]
    label = f"{title}: " + (", ".join(f"{s.name} {len(s.points)} points" for s in drawn) or NO_SCORES)
    head = (f'<svg class="{css_class}" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
            f'aria-label="{escape(label)}" style="display:block;max-width:100%;height:auto;'
            'color:var(--body-text-color, #1f2937);font-family:var(--font, sans-serif)">')  # fmt: skip
    parts = [head]
    if not drawn:
        parts.append(svg_text(WIDTH / 2, height / 2, NO_SCORES, extra=' opacity="0.7"'))
        return "".join(parts) + "</svg>"
    values = [v for s in drawn for _, v in s.points] + [s.base for s in drawn if s.base is not None]
    steps = [st for s in drawn for st, _ in s.points] + ([picked] if picked else [])
    f, frame = axes((0, max([*steps, 1])), (min(values), max(values)), width=WIDTH, height=height, top=10,
                    y_title=y_title)  # step 0: the base model  # fmt: skip
    parts += frame
    left, top, plot_w, plot_h, px, py = f.left, f.top, f.width, f.height, f.px, f.py
    if picked is not None:
        parts.append(f'<line class="picked-step" x1="{px(picked):.1f}" x2="{px(picked):.1f}" y1="{top:.1f}" '
                     f'y2="{top + plot_h:.1f}" stroke="currentColor" stroke-opacity="0.7" stroke-width="1.5"/>')  # fmt: skip
    for s in drawn:
        name = escape(s.name)
        if s.base is not None:
            parts.append(f'<line class="base-ref" data-series="{name}" x1="{left:.1f}" x2="{left + plot_w:.1f}" '
                         f'y1="{py(s.base):.1f}" y2="{py(s.base):.1f}" stroke="{s.color}" stroke-width="1.5" '
                         f'stroke-dasharray="{BASE_DASH}" stroke-opacity="0.8"/>')  # fmt: skip
        if s.points:
            line = " ".join(f"{px(st):.1f},{py(v):.1f}" for st, v in s.points)
            parts.append(f'<polyline class="series" data-series="{name}" points="{line}" fill="none" '
                         f'stroke="{s.color}" stroke-width="2" stroke-linejoin="round"/>')  # fmt: skip
        for st, v in s.points:
            r, mark = (4.5, ' class="picked-point"') if st == picked else (2.5, "")
            parts.append(f'<circle{mark} data-series="{name}" cx="{px(st):.1f}" cy="{py(v):.1f}" r="{r}" '
                         f'fill="{s.color}"/>')  # fmt: skip
    return "".join(parts) + "</svg>"


def chart_html(title: str, series: Sequence[Series], y_title: str, picked: int | None = None,
               height: int = SCORES_HEIGHT, css_class: str = "scores-chart") -> str:  # fmt: skip
    """One chart's box: its title and legend (HTML) over its SVG (``line_chart_svg``)."""
    return (f'<div class="scores-chart-box" style="flex:1 1 300px;max-width:560px">'
            f'<div style="font-weight:600;text-align:center">{escape(title)}</div>{legend_html(series, picked)}'
            f"{line_chart_svg(title, series, y_title, picked, height, css_class)}</div>")  # fmt: skip


def scores_chart_html(record: ScoreRecord) -> str:
    """The record's charts: the three scores (one SVG) and, when any point has one, the validation loss (a second,
    smaller SVG), side by side where the page is wide enough."""
    picked = record.picked.step if record.picked is not None else None
    scores = [s for m in SCORE_MEASURES if (s := series_of(record, m)) is not None]
    boxes = chart_html("Scores over steps (higher is better)", scores, "score", picked)
    if (loss := series_of(record, LOSS_MEASURE)) is not None:
        boxes += chart_html("Validation loss (lower is better)", [loss], "loss", picked, LOSS_HEIGHT,
                            "scores-loss-chart")  # fmt: skip
    return f'<div class="scores-charts" style="display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start">{boxes}</div>'

