"""Helpers of the results-view tests: the trainer's own ``training_metrics.json`` of a finished run, and an output
folder with a ``scores.json`` (``contract.scores``) and its images, built by hand for the scores view."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from contract.scores import SCORES_NAME, PointScores, ScoreRecord, pick
from training.metrics import METRICS_NAME

#: the scoring prompts of ``write_scored_output`` (one with markup, shown as text)
SCORED_PROMPTS = ["a photo of sks dog", "a photo of sks dog on the beach", "sks dog <b>in the snow</b> & more",
                  "a photo of dog"]  # fmt: skip
#: the colour of every image of a step: the grid's cells can be told apart by their pixels
STEP_COLORS = {0: (220, 30, 30), 250: (30, 200, 30), 500: (30, 30, 220), 750: (230, 220, 30)}
#: (step, dino, clip_i, clip_t, val_loss): learns the subject, then overfits at 750 (prompt fidelity falls, the
#: validation loss rises), so the rule of ``contract.scores.pick`` picks 500
SCORED_STEPS = [(0, 0.30, 0.60, 0.31, 0.20), (250, 0.45, 0.70, 0.305, 0.15), (500, 0.62, 0.80, 0.30, 0.14),
                (750, 0.64, 0.81, 0.27, 0.17)]  # fmt: skip


def read_metrics(run_dir: Path) -> dict:
    """The metrics file the trainer wrote into the output folder of the run in ``run_dir`` (data/runs/<id>)."""
    return json.loads((run_dir / "work" / "output" / METRICS_NAME).read_text())


def step_images(step: int) -> list[str]:
    """The output-relative paths of the images of ``step`` in ``write_scored_output``, in prompt order."""
    return [f"scores/step-{step:06d}/{i}.png" for i in range(len(SCORED_PROMPTS))]


def write_scored_output(output_dir: Path, size: int = 48) -> ScoreRecord:
    """An output folder as a scored LoRA run leaves it: ``scores.json`` (base model and three checkpoints, the pick
    made by the real rule) and one plain ``size``-pixel image per prompt and step in ``STEP_COLORS``."""
    points = []
    for step, dino, clip_i, clip_t, val_loss in SCORED_STEPS:
        for name in step_images(step):
            (output_dir / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size, size), STEP_COLORS[step]).save(output_dir / name)
        points.append(PointScores(step=step, dino=dino, clip_i=clip_i, clip_t=clip_t, val_loss=val_loss,
                                  images=step_images(step), checkpoint=f"checkpoints/step-{step:06d}" if step else None))  # fmt: skip
    base, scored = points[0], points[1:]
    record = ScoreRecord(prompts=SCORED_PROMPTS, models={"dino": "facebook/dinov2-small", "clip": "openai/clip-vit-base-patch32"},
                         base=base, points=scored, picked=pick(base, scored))  # fmt: skip
    (output_dir / SCORES_NAME).write_text(record.model_dump_json(indent=1))
    return record
