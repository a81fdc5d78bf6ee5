"""The training-loss chart of the Run and Results tabs: an SVG drawn here, shown in a ``gr.HTML``.

Gradio's ``LinePlot`` lays its axes out once, for the data it has when first drawn (Vega's autosize does not
resize), and both tabs show the chart before its curve arrives: the y labels were then cut at the left (".120" for
"1.120"), and a chart first drawn empty kept categorical axes. Here the margins are computed from the labels
themselves, and the picture scales with its box, so every label stays inside it at any width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from training.metrics import downsample  # torch-free

WIDTH, HEIGHT = 400, 220
FONT_PX = 11
CHAR_PX = 0.62 * FONT_PX  # at least a digit's width in the page's sans-serif fonts
MAX_POINTS = 600  # a longer curve is thinned (it is drawn into 400 units anyway)
TITLE = "Training loss"
NO_LOSS = "no loss recorded yet"


def nice_step(span: float, count: int, minimum: float = 0.0) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten, at least ``minimum``) giving about ``count`` intervals."""
    raw = max(span / max(1, count), minimum, 1e-12)
    power = 10 ** math.floor(math.log10(raw))
    return max(minimum, next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9)))


def ticks(lo: float, hi: float, count: int = 4, minimum: float = 0.0) -> tuple[list[float], float]:
    """Round tick values covering [lo, hi] (a single value gets a band around it), and their step."""
    if hi - lo <= abs(hi) * 1e-9:
        pad = max(abs(hi) * 0.05, minimum / 2, 1e-6)
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, count, minimum)
    start, stop = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(start, stop + 1)], step


def tick_label(value: float, step: float) -> str:
    """``value`` with as many decimals as ``step`` needs (``0.25`` -> 2, ``5`` -> 0)."""
    decimals = 0
    while decimals < 12 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def svg_text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{FONT_PX}" fill="currentColor"{extra}>'
            f"{escape(text)}</text>")  # fmt: skip


@dataclass(frozen=True)
class Frame:
    """A chart's plot area in SVG units and the ticks its axes span: ``px`` / ``py`` place a step and a value."""

    left: float
    top: float
    width: float
    height: float
    x_ticks: list[float]
    y_ticks: list[float]

    def px(self, step: float) -> float:
        return self.left + (step - self.x_ticks[0]) / ((self.x_ticks[-1] - self.x_ticks[0]) or 1) * self.width

    def py(self, value: float) -> float:
        span = (self.y_ticks[-1] - self.y_ticks[0]) or 1
        return self.top + self.height - (value - self.y_ticks[0]) / span * self.height


def axes(x_range: tuple[float, float], y_range: tuple[float, float], *, width: int, height: int, top: float,
         y_title: str) -> tuple[Frame, list[str]]:  # fmt: skip
    """The frame for data spanning ``x_range`` (steps) and ``y_range``, and its SVG: grid lines, round tick labels
    and the axis titles ("step", ``y_title``), the margins computed from the labels so that all stay inside."""
    y_ticks, y_step = ticks(*y_range)
    x_ticks, x_step = ticks(*x_range, count=5, minimum=1.0)
    y_labels = [tick_label(v, y_step) for v in y_ticks]
    x_labels = [tick_label(v, x_step) for v in x_ticks]
    left = 8 + FONT_PX + 8 + max(map(len, y_labels)) * CHAR_PX + 6  # axis title, labels, gap: all inside
    right = 8 + len(x_labels[-1]) * CHAR_PX / 2
    bottom = 8 + 2 * FONT_PX + 10
    f = Frame(left, top, width - left - right, height - top - bottom, x_ticks, y_ticks)
    grid = 'stroke="currentColor" stroke-opacity="0.15" stroke-width="1"'
    parts = []
    for value, label in zip(y_ticks, y_labels, strict=True):
        y = f.py(value)
        parts.append(f'<line x1="{left:.1f}" x2="{left + f.width:.1f}" y1="{y:.1f}" y2="{y:.1f}" {grid}/>')
        parts.append(svg_text(left - 6, y + FONT_PX / 3, label, "end", ' class="y-tick"'))
    for value, label in zip(x_ticks, x_labels, strict=True):
        x = f.px(value)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{top + f.height:.1f}" {grid}/>')
        parts.append(svg_text(x, top + f.height + FONT_PX + 4, label, extra=' class="x-tick"'))
    parts.append(svg_text(left + f.width / 2, height - 8, "step"))
    mid = top + f.height / 2
    parts.append(svg_text(8 + FONT_PX, mid, y_title, extra=f' transform="rotate(-90 {8 + FONT_PX} {mid:.1f})"'))
    return f, parts


def loss_chart_html(points: Sequence[tuple[int, float]], title: str = TITLE) -> str:
    """The curve of ``points`` ((step, loss) pairs) as an inline SVG with a title, axes, round ticks and a grid;
    a frame saying that nothing was recorded when there is no finite point."""
    curve = [(int(s), float(v)) for s, v in downsample(list(points), MAX_POINTS) if math.isfinite(float(v))]
    label = f"{title}: {len(points)} point{'' if len(points) == 1 else 's'}"
    head = (f'<svg class="loss-chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
            f'aria-label="{escape(label)}" style="display:block;max-width:100%;height:auto;'
            'color:var(--body-text-color, #1f2937);font-family:var(--font, sans-serif)">')  # fmt: skip
    parts = [head, svg_text(WIDTH / 2, 16, title, extra=' font-weight="600"')]
    if not curve:
        parts.append(svg_text(WIDTH / 2, HEIGHT / 2, NO_LOSS, extra=' opacity="0.7"'))
        return "".join(parts) + "</svg>"
    losses, steps = [v for _, v in curve], [s for s, _ in curve]
    f, frame = axes((min(steps), max(steps)), (min(losses), max(losses)), width=WIDTH, height=HEIGHT, top=28,
                    y_title="loss")  # fmt: skip
    parts += frame
    line = " ".join(f"{f.px(s):.1f},{f.py(v):.1f}" for s, v in curve)
    accent = "stroke:var(--color-accent, #f97316)"
    parts.append(f'<polyline points="{line}" fill="none" style="{accent}" stroke-width="2" stroke-linejoin="round"/>')
    s, v = curve[-1]
    parts.append(f'<circle cx="{f.px(s):.1f}" cy="{f.py(v):.1f}" r="3" style="fill:var(--color-accent, #f97316)"/>')
    return "".join(parts) + "</svg>"
