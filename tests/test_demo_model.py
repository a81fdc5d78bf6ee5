"""The built-in demo model (``training.demo``): built on first use, atomically, and trainable end to end by the real
``python -m training`` command with no download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract.settings import DEMO_DIR_VAR
from tests.tiny_models import make_images
from training import demo

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_module_imports_no_torch():
    code = "import sys, training.demo; print({'torch', 'diffusers', 'transformers'} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


def test_the_demo_dir_comes_from_the_environment_or_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(DEMO_DIR_VAR, str(tmp_path / "d"))
    assert demo.demo_model_dir() == tmp_path / "d"
    monkeypatch.delenv(DEMO_DIR_VAR)
    assert demo.demo_model_dir() == Path.home() / ".cache" / "dreambooth-trainer" / "demo-sd"


def test_resolve_demo_builds_once_and_leaves_other_models_alone(monkeypatch, tmp_path):
    target = tmp_path / "demo-sd"
    monkeypatch.setenv(DEMO_DIR_VAR, str(target))
    assert demo.resolve_demo("alice/tiny-sd") == "alice/tiny-sd" and not target.exists()
    assert demo.resolve_demo(demo.DEMO_MODEL) == str(target)
    index = json.loads((target / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert list(target.glob("unet/*.safetensors")) and not list(target.rglob("*.bin"))
    stamp = (target / "model_index.json").stat().st_mtime_ns
    assert demo.resolve_demo(demo.DEMO_MODEL) == str(target)  # idempotent: not rebuilt
    assert (target / "model_index.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-sd"]  # no temporary folder left beside it
    from training.base_check import check_base_model
    from training.models import inspect_base_model

    assert check_base_model(str(target)) is None
    assert inspect_base_model(str(target)).native_resolution == demo.DEMO_RESOLUTION


def test_a_crash_while_building_leaves_no_half_model(monkeypatch, tmp_path):
    # Fault injection: the real builder writes part of the model, then the process "crashes".
    def crash_midway(path, seed=0):
        Path(path).mkdir(parents=True)
        (Path(path) / "model_index.json").write_text("{}")
        raise RuntimeError("killed while building")

    monkeypatch.setattr(demo, "build_tiny_sd", crash_midway)
    with pytest.raises(RuntimeError, match="killed"):
        demo.build_demo_model(tmp_path / "demo-sd")
    assert list(tmp_path.iterdir()) == []


def test_a_demo_task_trains_end_to_end_through_the_cli(tmp_path):
    images = tmp_path / "photos"
    make_images(images, 3, size=64)
    task = tmp_path / "task.json"
    task.write_text(json.dumps({
        "task_id": "demo", "base_model": demo.DEMO_MODEL, "instance_prompt": "a photo of sks dog", "images": str(images),
        "params": {"steps": 4, "validation_prompts": ["a photo of sks dog"], "sample_inference_steps": 2},
    }))  # fmt: skip
    env = {**os.environ, DEMO_DIR_VAR: str(tmp_path / "demo-sd")}
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--task", str(task), "--workdir", str(tmp_path / "w"), "--progress",
         str(tmp_path / "events.jsonl"), "--progress-bar", "off"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is outdated" not in proc.stderr  # the log tail the app shows is about training, not a scheduler config
    out = tmp_path / "w" / "output"
    assert (out / "pytorch_lora_weights.safetensors").stat().st_size > 0
    assert (tmp_path / "demo-sd" / "model_index.json").exists()  # built on first use, where DEMO_DIR says
    card = (out / "README.md").read_text()
    assert "Demo model" in card and "produces noise" in card and "builtin:demo" in card
    assert "base_model:" not in card.split("---")[1]  # no Hub base_model metadata for the demo
    assert (out / "samples" / "step4_0.png").exists()
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["resolution"] == demo.DEMO_RESOLUTION == 64 and metrics["base_model"] == demo.DEMO_MODEL
