"""Helpers of the results-view tests: the trainer's own ``training_metrics.json`` of a finished run."""

from __future__ import annotations

import json
from pathlib import Path

from training.metrics import METRICS_NAME


def read_metrics(run_dir: Path) -> dict:
    """The metrics file the trainer wrote into the output folder of the run in ``run_dir`` (data/runs/<id>)."""
    return json.loads((run_dir / "work" / "output" / METRICS_NAME).read_text())
