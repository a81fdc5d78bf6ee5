"""Samples during training by default, and ``output/training_metrics.json`` for the results view (tiny runs)."""

from __future__ import annotations

import json

import pytest

from tests.test_training import run_task
from tests.tiny_models import make_images
from training.metrics import MAX_POINTS, downsample
from training.utils.sampling import SAMPLES_PER_RUN, sample_every


@pytest.fixture(scope="module")
def default_run(tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("first-use")
    make_images(root / "images", 2, size=32)
    rc, events = run_task(root / "w", base_model=str(tiny_sd), images=str(root / "images"),
                          params={"steps": 100, "resolution": 32, "validation_prompts": ["a photo of sks dog"]})  # fmt: skip
    assert rc == 0, events[-3:]
    return root / "w", events


def test_samples_appear_before_the_last_step_without_validation_every(default_run):
    _, events = default_run
    samples = [e["step"] for e in events if e["event"] == "sample"]
    assert samples == [25, 50, 75, 100]  # a quarter of the run apart, and the final one
    order = [(e["event"], e.get("step")) for e in events if e["event"] in ("sample", "step")]
    assert order.index(("sample", 25)) < order.index(("step", 100))


@pytest.mark.parametrize(
    ("steps", "every", "expected"), [(1000, None, 250), (100, None, 25), (99, None, None), (3, None, None), (100, 0, None), (100, 30, 30)]
)
def test_sample_every(steps, every, expected):
    assert sample_every(steps, every) == expected
    assert SAMPLES_PER_RUN == 4


def test_the_run_writes_its_metrics_file_into_the_output(default_run, tiny_sd):
    workdir, events = default_run
    metrics = json.loads((workdir / "output" / "training_metrics.json").read_text())
    assert set(metrics) == {"loss_curve", "steps", "steps_per_s", "resolution", "recipe", "base_model"}
    assert metrics["steps"] == 100 and metrics["resolution"] == 32
    assert metrics["recipe"] == "dreambooth-lora" and metrics["base_model"] == str(tiny_sd)
    logged = {e["step"]: e["loss"] for e in events if e["event"] == "step"}
    assert [s for s, _ in metrics["loss_curve"]] == sorted(logged)
    assert all(abs(loss - logged[s]) < 1e-5 for s, loss in metrics["loss_curve"])
    assert isinstance(metrics["steps_per_s"], float) and metrics["steps_per_s"] > 0


def test_the_loss_curve_is_downsampled_keeping_both_ends():
    points = [(i, float(i)) for i in range(1, 2401)]
    kept = downsample(points)
    assert len(kept) <= MAX_POINTS and kept[0] == (1, 1.0) and kept[-1] == (2400, 2400.0)
    assert [s for s, _ in kept] == sorted({s for s, _ in kept})
    assert downsample(points[:10]) == points[:10]
