"""Helpers of the results-view tests: the trainer's ``training_metrics.json`` when this tree's trainer does not
write it yet (the contract: ``{"loss_curve": [[step, loss], ...], "steps", "steps_per_s", "resolution", "recipe",
"base_model"}``, in the output folder and the model repo's root), written from the run's own progress events."""

from __future__ import annotations

import json
from pathlib import Path

from scheduler.task import Task

METRICS_FILE = "training_metrics.json"


def ensure_metrics(task: Task, run_dir: Path) -> dict:
    """The metrics file of ``task``'s run (``run_dir`` = data/runs/<id>): the trainer's own when it wrote one, else
    one written here from the step events of the run's last attempt (until the trainer writes it itself)."""
    path = run_dir / "work" / "output" / METRICS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    events = sorted(run_dir.glob("events-*.jsonl"))[-1]
    steps = [json.loads(line) for line in events.read_text().splitlines() if '"step"' in line]
    steps = [e for e in steps if e.get("event") == "step"]
    metrics = {
        "loss_curve": [[e["step"], e["loss"]] for e in steps],
        "steps": steps[-1]["step"],
        "steps_per_s": steps[-1].get("steps_per_s"),
        "resolution": task.params.get("resolution"),
        "recipe": task.recipe,
        "base_model": task.base_model,
    }
    path.write_text(json.dumps(metrics))
    return metrics
