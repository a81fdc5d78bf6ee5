"""DreamBooth runs in which the subject-fidelity score must move (issue 22, "Honest tests"): the real
``python -m training`` trains a tiny model (tests/colour_model.py: the demo model with a VAE that keeps colours) on
three photos of one solid red, and the record (``output/scores.json``), the shipped weights and the model card must
show the samples turning red.

The score is ``dino`` measured by ``builtin:pixels`` (``training.scoring.pixel_embeddings``, set for every test by
tests/conftest.py): each image box-filtered to 8 x 8 cells, each cell's mean RGB in [0, 1] less mid-grey 0.5, the 192
numbers L2-normalised. The subject fidelity is the mean cosine between the sampled images and the photos. Every cell
of a photo is (220, 30, 30) / 255 - 0.5 = (0.36, -0.38, -0.38), so the photos' embedding is one direction p; a
sample's cell is its mean colour less grey, d, plus its own noise n. Then the cosine is about
d.p / (|p| sqrt(|d|^2 + |n|^2)):

- the base model's samples are saturated colour noise around grey (d about 0; n about 0.2 to 0.25 per cell, the
  latent noise of 16 independent 2 x 2 blocks per cell): its cosine is the chance tint of that noise, measured
  0.05 to 0.14 over eight seeds;
- samples that have turned red (d along p, |d| up to 0.64) approach 1: the cosine saturates fast, 0.55 already
  needs |d| of about 0.15 along p with that noise, a fifth of the way from grey to the photos' red, and a
  noise-free image scores by the direction of its tint alone (the demo model's flat (138, 127, 125) scores 0.54
  and stays there when trained); hence the redness check beside it, in colour levels. A full fine-tune reaches 0.79 to 0.90 after 60 steps (five seeds:
  a gain of 0.64 to 0.77 over the base), so ``FULL_MARGIN`` is 0.4; a LoRA (attention layers only) moves less,
  0.24 to 0.82 for its best checkpoint (eight seeds: a gain of 0.11 to 0.76), so ``LORA_MARGIN`` = 0.05 only says
  that it moved past the base's chance tint.

The subprocesses run with one CPU thread (OMP_NUM_THREADS=1, as the e2e loops): this tiny model's operations are
too small for two, and on a shared CPU the second thread's waits made a run ten times slower.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from contract.scores import SCORES_NAME, ScoreRecord
from contract.scoring_models import PIXELS
from tests.colour_model import build_colour_sd

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the photos' colour, a saturated red far from the grey of noise
RED = (220, 30, 30)
INSTANCE_PROMPT = "a photo of sks toy"
#: what both runs share: three sampling points (and the base model) of one image per scoring prompt
COMMON = {"steps": 60, "validation_every": 20, "validation_prompts": [INSTANCE_PROMPT], "sample_inference_steps": 5,
          "checkpoint_every": None, "score": True}  # fmt: skip
#: measured (see the module docstring): a full fine-tune at this rate turns the samples red in 60 steps
FULL = {**COMMON, "learning_rate": 1e-3}
#: the largest rate the form allows; rank 16 of the UNet's 64-wide attention
LORA = {**COMMON, "learning_rate": 1e-1, "rank": 16}
FULL_MARGIN = 0.4
LORA_MARGIN = 0.05
#: the picked images' redness (R less the mean of G and B, 0-255) must rise at least this much over the base's
FULL_REDDER = 40


@pytest.fixture(scope="session")
def colour_sd(tmp_path_factory) -> Path:
    return build_colour_sd(tmp_path_factory.mktemp("colour-sd") / "model")


@pytest.fixture(scope="module")
def red_photos(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("red-photos")
    for i in range(3):
        Image.new("RGB", (64, 64), RED).save(folder / f"red{i}.png")
    return folder


def train(tmp_path: Path, model: Path, photos: Path, recipe: str, params: dict) -> tuple[Path, ScoreRecord]:
    """Run one task through ``python -m training``; its output folder and score record."""
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"task_id": "red", "base_model": str(model), "instance_prompt": INSTANCE_PROMPT,
                                "images": str(photos), "recipe": recipe, "params": params}))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCORING_DINO_MODEL": PIXELS, "SCORING_CLIP_MODEL": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--task", str(task), "--workdir", str(tmp_path / "w"), "--progress-bar",
         "off"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "w" / "output"
    return out, ScoreRecord.model_validate_json((out / SCORES_NAME).read_text())


def redness(out: Path, images: list[str]) -> float:
    """R less the mean of G and B over every pixel of ``images`` (0-255 levels; about 0 for grey noise)."""
    import numpy as np
    from PIL import Image

    pixels = np.concatenate(
        [np.asarray(Image.open(out / i).convert("RGB"), dtype=float).reshape(-1, 3) for i in images]
    )
    r, g, b = pixels.mean(axis=0)
    return float(r - (g + b) / 2)


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's header (parsed) and its tensor bytes. The header is compared parsed: safetensors writes
    the ``__metadata__`` keys in no fixed order, so two saves of the same weights can differ in those bytes."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def assert_scored(record: ScoreRecord) -> None:
    """The base model and every sampling point carry the pixel subject fidelity; the pick is one of the points."""
    assert record.models == {"dino": PIXELS} and record.note is None
    assert record.base is not None and record.base.step == 0 and record.base.dino is not None
    assert [p.step for p in record.points] == [20, 40, 60]
    assert all(p.dino is not None and p.val_loss is not None for p in record.points)
    assert record.picked is not None and record.point(record.picked.step) is not None


def assert_card_shows(out: Path, record: ScoreRecord) -> None:
    """The model card's scores: the table's base and picked values and the ``model-index`` metric."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    picked = record.point(record.picked.step)
    assert "## Scores" in card.text and f"| base model | {record.base.dino:.3f} |" in card.text
    assert f"| step {picked.step} | {picked.dino:.3f} |" in card.text
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} >= {("dino", round(picked.dino, 3))}


def test_a_full_fine_tune_on_red_photos_turns_its_samples_red_and_the_score_follows(colour_sd, red_photos,
                                                                                    tmp_path):  # fmt: skip
    out, record = train(tmp_path, colour_sd, red_photos, "dreambooth-full", FULL)
    assert_scored(record)
    # a full fine-tune keeps no weights per point: the model is the last checkpoint
    assert record.picked.step == 60 and all(p.checkpoint is None for p in record.points)
    picked = record.point(record.picked.step)
    assert picked.dino > record.base.dino + FULL_MARGIN, (record.base.dino, [p.dino for p in record.points])
    # what the embedding saw is what happened: the picked point's images are redder than the base model's
    assert redness(out, picked.images) > redness(out, record.base.images) + FULL_REDDER
    assert_card_shows(out, record)


def test_a_lora_on_red_photos_ships_its_best_scored_checkpoint(colour_sd, red_photos, tmp_path):
    out, record = train(tmp_path, colour_sd, red_photos, "dreambooth-lora", LORA)
    assert_scored(record)
    picked = record.point(record.picked.step)
    assert picked.dino > record.base.dino + LORA_MARGIN, (record.base.dino, [p.dino for p in record.points])
    # the LoRA of every scored point is kept; the main weights are the picked point's
    names = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors")
    for point in record.points:
        assert point.checkpoint == f"checkpoints/step-{point.step:06d}"
        assert all((out / point.checkpoint / name).stat().st_size > 0 for name in names)
    for name in names:
        assert safetensors_parts(out / name) == safetensors_parts(out / picked.checkpoint / name), name
    others = [p for p in record.points if p.step != picked.step]
    assert all(safetensors_parts(out / names[0])[1] != safetensors_parts(out / p.checkpoint / names[0])[1]
               for p in others)  # fmt: skip
    assert_card_shows(out, record)
