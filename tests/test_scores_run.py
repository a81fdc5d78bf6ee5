"""Scores in a real (tiny) training run: what the record holds, and a scoring model that fails never fails the run.
The tiny model's samples are noise, so these check the plumbing; tests/test_scores_move.py checks that a score moves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.scores import SCORES_NAME, ScoreRecord
from tests.test_training import run_task
from tests.tiny_models import make_images


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    make_images(folder, 3, size=48)
    return folder


PARAMS = {"steps": 4, "validation_prompts": ["a photo of sks dog"], "validation_every": 2, "sample_inference_steps": 2}


def test_a_run_scores_the_base_model_and_each_sampling_point(tiny_sd, images, tmp_path, pixel_scoring):
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(images), params=PARAMS)
    assert rc == 0, events[-3:]
    out = tmp_path / "w" / "output"
    record = ScoreRecord.model_validate_json((out / SCORES_NAME).read_text())
    assert record.prompts == ["a photo of sks dog", "a photo of sks dog on the beach", "a photo of sks dog in the snow"]
    assert record.models == {"dino": "builtin:pixels"} and record.note is None  # the pixel_scoring fixture's
    assert record.base.step == 0 and record.base.dino is not None and record.base.val_loss is not None
    assert [p.step for p in record.points] == [2, 4] and all(p.dino is not None for p in record.points)
    # each point's images exist; only the validation prompt's are samples, the rest feed the scores
    for point in (record.base, *record.points):
        assert len(point.images) == 3 and all((out / image).is_file() for image in point.images)
    assert record.points[0].images[0] == "samples/step2_0.png" and record.base.images[0] == "scores/step0_0.png"
    assert all((out / p.checkpoint / "pytorch_lora_weights.safetensors").is_file() for p in record.points)
    assert record.picked.step in (2, 4)
    scores = [e for e in events if e["event"] == "scores"]
    assert [e["step"] for e in scores] == [0, 2, 4] and scores[0]["dino"] == record.base.dino
    samples = [e for e in events if e["event"] == "sample"]
    assert [len(e["paths"]) for e in samples] == [1, 1]  # the base model's images are not announced as samples


def test_a_scoring_model_that_does_not_load_leaves_a_note_and_the_run_succeeds(tiny_sd, images, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    monkeypatch.setenv("SCORING_DINO_MODEL", str(tmp_path / "no-such-model"))
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(images), params=PARAMS)
    assert rc == 0, events[-3:]
    out = tmp_path / "w" / "output"
    record = ScoreRecord.model_validate_json((out / SCORES_NAME).read_text())
    assert "no-such-model" in record.note and record.base.dino is None
    assert all(p.val_loss is not None for p in record.points)  # the validation loss needs no scoring model
    assert record.picked.step == 4  # unscored: the last checkpoint
    assert "no-such-model" in (out / "README.md").read_text()


def test_with_no_scoring_model_a_run_scores_its_validation_loss_and_makes_no_scoring_images(tiny_sd, images, tmp_path):
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(images), params=PARAMS)  # conftest: none
    assert rc == 0, events[-3:]
    out = tmp_path / "w" / "output"
    record = ScoreRecord.model_validate_json((out / SCORES_NAME).read_text())
    assert record.prompts == ["a photo of sks dog"] and "no scoring model is set" in record.note
    assert not (out / "scores").exists()  # no image is made only for the scores
    assert record.base.images == [] and record.base.val_loss is not None  # the base model: its loss, no sample
    assert [p.step for p in record.points] == [2, 4] and all(p.val_loss is not None and p.dino is None
                                                             for p in record.points)  # fmt: skip
    assert all((out / p.checkpoint / "pytorch_lora_weights.safetensors").is_file() for p in record.points)
    assert record.picked.step == 4  # unscored: the last checkpoint
    assert sorted(f.name for f in (out / "samples").iterdir()) == ["step2_0.png", "step4_0.png"]


def test_scoring_off_writes_no_record_and_takes_only_the_validation_samples(tiny_sd, images, tmp_path):
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(images), params={**PARAMS, "score": False})
    assert rc == 0, events[-3:]
    out = tmp_path / "w" / "output"
    assert not (out / SCORES_NAME).exists() and not (out / "checkpoints").exists() and not (out / "scores").exists()
    assert not [e for e in events if e["event"] == "scores"]
    assert sorted(f.name for f in (out / "samples").iterdir()) == ["step2_0.png", "step4_0.png"]
    assert "model-index" not in (out / "README.md").read_text()
    assert json.loads((out / "training_metrics.json").read_text())["steps"] == 4
