"""``output/training_metrics.json``: the loss curve and speed of a run, for the app's results view.

Written before the upload, so it lands in the model repo's root and stays in the local output folder:
``{"loss_curve": [[step, loss], ...] (at most MAX_POINTS), "steps": int, "steps_per_s": float | null,
"resolution": int, "recipe": str, "base_model": str}``. ``steps_per_s`` is the steady rate: from the first logged
step to the last, not counting time spent on samples and checkpoints; null when the run logged fewer than two points.

``RunMetrics.timing`` is what the trainer's "done" event reports of the run for the app's run records: the steady
rate and the wall-clock times (unix seconds) of the first and the last logged step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

METRICS_NAME = "training_metrics.json"
MAX_POINTS = 500


def downsample(points: list[tuple[int, float]], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    """At most ``limit`` points, evenly spread, always keeping the first and the last."""
    if len(points) <= limit:
        return list(points)
    last = len(points) - 1
    picks = sorted({round(i * last / (limit - 1)) for i in range(limit)})
    return [points[i] for i in picks]


@dataclass
class RunMetrics:
    """Collects (step, loss) at the logging steps and the time the loop spent training."""

    points: list[tuple[int, float]] = field(default_factory=list)
    _first: tuple[int, float] | None = None  # (step, time) of the first logged step
    _last: tuple[int, float] | None = None
    _paused_s: float = 0.0  # sampling / checkpoint time after the first logged step
    _first_wall: float | None = None  # unix time of the first logged step (``now`` may be a perf_counter value)
    _last_wall: float | None = None

    def log(self, step: int, loss: float, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        wall = time.time()
        self.points.append((int(step), float(loss)))
        if self._first is None:
            self._first = (step, now)
            self._first_wall = wall
        self._last = (step, now)
        self._last_wall = wall

    def paused(self, seconds: float) -> None:
        """Time not spent training (samples, checkpoints), left out of the steady rate."""
        if self._first is not None:
            self._paused_s += seconds

    @property
    def steady_steps_per_s(self) -> float | None:
        if self._first is None or self._last is None or self._last[0] <= self._first[0]:
            return None
        elapsed = self._last[1] - self._first[1] - self._paused_s
        return round((self._last[0] - self._first[0]) / max(elapsed, 1e-9), 4)

    def timing(self) -> dict[str, float | int | None]:
        """``steps_per_s`` (steady), ``first_step``/``last_step`` (the logged step numbers) and ``first_step_at``/
        ``last_step_at`` (their unix times); all None before the first logged step."""
        first, last = self._first, self._last
        return {
            "steps_per_s": self.steady_steps_per_s,
            "first_step": first[0] if first else None,
            "first_step_at": round(self._first_wall, 3) if self._first_wall is not None else None,
            "last_step": last[0] if last else None,
            "last_step_at": round(self._last_wall, 3) if self._last_wall is not None else None,
        }

    def write(self, output_dir: Path, *, steps: int, resolution: int, recipe: str, base_model: str) -> Path:
        record = {
            "loss_curve": [[s, round(v, 6)] for s, v in downsample(self.points)],
            "steps": int(steps),
            "steps_per_s": self.steady_steps_per_s,
            "resolution": int(resolution),
            "recipe": recipe,
            "base_model": base_model,
        }
        path = Path(output_dir) / METRICS_NAME
        path.write_text(json.dumps(record, indent=1))
        return path
