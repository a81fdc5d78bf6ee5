"""Model families (training.families): detection from model_index.json, the clear error for an unknown pipeline,
the torch-free catalog, and a family added from a user's module the way the README shows (real training runs on
the tiny SD model; nothing mocked)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from contract.events import ExitCode
from tests.tiny_models import make_images
from training.cli import main
from training.exitcodes import BadInputError

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = {"resolution": 32, "checkpoint_every": 0, "sample_inference_steps": 2, "steps": 3}


def _readme_family() -> str:
    """The family module of README.md's "Add a model family" (step 1), exactly as the README shows it."""
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("1. Create `my_family.py`")
    return textwrap.dedent(re.search(r"```python\n(.*?)```", readme[start:], re.S).group(1))


TOY_FAMILY = _readme_family()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("instance")
    make_images(folder, 2, size=40)
    return folder


def _with_class_name(tiny_sd: Path, folder: Path, class_name: str) -> Path:
    shutil.copytree(tiny_sd, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
    return folder


def _run(workdir: Path, base_model: str, images: Path, *extra: str) -> tuple[int, list[dict]]:
    workdir.mkdir(parents=True, exist_ok=True)
    task = workdir.parent / f"{workdir.name}-task.json"
    task.write_text(json.dumps({"task_id": "t", "base_model": base_model, "instance_prompt": "a photo of sks dog",
                                "images": str(images), "params": FAST, "output": None}))  # fmt: skip
    events = workdir / "events.jsonl"
    rc = main(
        ["--task", str(task), "--workdir", str(workdir), "--progress", str(events), "--progress-bar", "off", *extra]
    )
    return rc, [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []


def test_the_sd_family_is_detected_from_model_index(tiny_sd, tiny_sdxl):
    from training.families import family_for
    from training.families.sd import StableDiffusion
    from training.models import inspect_base_model

    for model in (tiny_sd, tiny_sdxl):
        index = json.loads((model / "model_index.json").read_text())
        assert family_for(index) is StableDiffusion
        info = inspect_base_model(str(model))
        assert info.family.name == "sd" and info.family.denoiser_name == "unet"
    assert inspect_base_model(str(tiny_sdxl)).text_encoder_names == ["text_encoder", "text_encoder_2"]


def test_an_unknown_pipeline_class_is_a_clear_bad_input_error_naming_the_supported_families(tiny_sd, tmp_path, images):
    from training.families import family_for
    from training.models import inspect_base_model

    with pytest.raises(BadInputError) as err:
        family_for({"_class_name": "HunyuanDiTPipeline"}, "someone/model")
    message = str(err.value)
    assert "HunyuanDiTPipeline" in message and "sd: " in message and "StableDiffusionPipeline" in message
    model = _with_class_name(tiny_sd, tmp_path / "unknown", "MysteryPipeline")
    with pytest.raises(BadInputError, match="not allowed") as err:
        inspect_base_model(str(model))
    assert "MysteryPipeline" in str(err.value) and "supported model families" in str(err.value)
    rc, events = _run(tmp_path / "w", str(model), images)  # the trainer: exit 2 before any weight is loaded
    assert rc == ExitCode.BAD_INPUT == 2
    assert events[-1]["event"] == "error" and "StableDiffusionXLPipeline" in events[-1]["message"]
    assert "training" not in [e.get("phase") for e in events]


def test_a_family_added_from_a_user_module_is_detected_and_trains(tiny_sd, tmp_path, monkeypatch, images):
    """README's "Add a model family": its module, named in TRAINING_FAMILY_MODULES (step 2)."""
    from diffusers import StableDiffusionPipeline
    from huggingface_hub import ModelCard

    (tmp_path / "toy_family_module.py").write_text(TOY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = _with_class_name(tiny_sd, tmp_path / "toy-model", "ToyDiffusionPipeline")

    # without the module the pipeline is unknown; with it, it is detected and trained
    monkeypatch.delenv("TRAINING_FAMILY_MODULES", raising=False)
    if "toy_family_module" not in sys.modules:
        rc, events = _run(tmp_path / "before", str(model), images)
        assert rc == ExitCode.BAD_INPUT and "ToyDiffusionPipeline" in events[-1]["message"]
    monkeypatch.setenv("TRAINING_FAMILY_MODULES", "toy_family_module")
    rc, events = _run(tmp_path / "w", str(model), images)
    assert rc == 0, events[-1]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3] and all(e["loss"] > 0 for e in steps)
    done = events[-1]
    assert done["event"] == "done" and done["run"]["family"] == "toy-sd"

    out = tmp_path / "w" / "output"
    from safetensors.torch import load_file

    keys = list(load_file(str(out / "pytorch_lora_weights.safetensors")))
    assert keys and all(".to_q." in k for k in keys)  # the toy family's targets, not SD's four
    assert (out / "pytorch_lora_weights_kohya.safetensors").exists()  # SD's extra output, inherited
    card = ModelCard.load(out / "README.md")
    assert "toy-family" in card.data.tags and card.data.license == "creativeml-openrail-m"

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def image():
        g = torch.Generator().manual_seed(0)
        return pipe(
            "a photo of sks dog", num_inference_steps=2, height=32, width=32, generator=g, output_type="pt"
        ).images

    before = image()
    pipe.load_lora_weights(str(out))  # the LoRA loads into the SD pipeline it was trained for, and changes it
    assert not torch.equal(before, image())


def test_families_list_without_torch_and_reach_the_form_catalog(tmp_path):
    code = ("import sys, json; from training.families import registered_families; "
            "print(json.dumps([c.catalog_entry() for c in registered_families()])); print('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False", out.stderr
    sd = next(f for f in json.loads(lines[0]) if f["name"] == "sd")
    assert "StableDiffusionXLPipeline" in sd["pipelines"] and sd["defaults"]["hardware"] == "t4-small"

    from contract.catalog import family_for_pipeline, load_catalog, load_families

    (tmp_path / "toy_family_catalog.py").write_text(TOY_FAMILY)
    listed = subprocess.run(
        [sys.executable, "-m", "training", "--list-families", "--families-module", "toy_family_catalog"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = {f["name"] for f in json.loads(listed.stdout.strip().splitlines()[-1])["families"]}
    assert {"sd", "toy-sd"} <= names
    families = load_families()
    assert family_for_pipeline(families, "StableDiffusionPipeline").name == "sd"
    assert family_for_pipeline(families, "ToyDiffusionPipeline") is None  # not loaded here
    assert "dreambooth-lora" in load_catalog()
