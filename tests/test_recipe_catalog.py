"""The recipe catalog the form reads (``contract.catalog`` over ``python -m training --list-recipes``), and a
recipe's own settings (``fixed_params``, ``steps_per_image``) taking effect in a real tiny training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from contract.catalog import RecipeCatalogError, RecipeInfo, clamp_steps, load_catalog
from tests.test_training import run_task
from tests.tiny_models import make_images

REPO_ROOT = Path(__file__).resolve().parents[1]
FACES = "tests.lora_faces_recipe"


def test_the_catalog_lists_the_builtin_recipes_with_their_steps_policy():
    catalog = load_catalog()
    assert set(catalog) >= {"dreambooth-lora", "dreambooth-full"}
    lora, full = catalog["dreambooth-lora"], catalog["dreambooth-full"]
    assert (lora.steps_per_image, lora.min_steps, lora.max_steps) == (150, 500, 2400)
    assert lora.form_fields == ("rank",) and full.form_fields == ()
    assert lora.default_learning_rate == 1e-4 and full.default_learning_rate == 5e-6
    assert lora.label and full.label and lora.fixed_params == {}
    assert full.auto_steps(3) == 600 and full.auto_steps(0) == 400 and full.auto_steps(100) == 4000
    assert load_catalog() is catalog  # cached per modules tuple


def test_the_readme_custom_recipe_shows_its_label_fixed_rank_and_120_steps_per_photo():
    faces = load_catalog((FACES,))["lora-faces"]
    assert faces == RecipeInfo(name="lora-faces", label="LoRA for faces (rank 16)", steps_per_image=120, min_steps=500,
                               max_steps=2400, fixed_params={"rank": 16}, form_fields=("rank",),
                               default_learning_rate=1e-4)  # fmt: skip
    assert [faces.auto_steps(n) for n in (1, 5, 10, 30)] == [500, 600, 1200, 2400]


def test_the_trainer_and_the_form_share_one_steps_function():
    from training import train

    assert train.clamp_steps is clamp_steps


def test_list_recipes_honours_the_environment_and_needs_no_task():
    env = {**os.environ, "TRAINING_RECIPES_MODULES": FACES}
    out = subprocess.run([sys.executable, "-m", "training", "--list-recipes"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    names = [r["name"] for r in json.loads(out.stdout.strip().splitlines()[-1])["recipes"]]
    assert "lora-faces" in names and "dreambooth-lora" in names


def test_a_broken_recipe_module_is_a_catalog_error_with_the_cause():
    with pytest.raises(RecipeCatalogError, match="no_such_recipes_module"):
        load_catalog(("no_such_recipes_module",))


def test_fixed_params_are_applied_over_the_tasks_params_in_a_real_run(tiny_sd, tmp_path):
    images = tmp_path / "images"
    make_images(images, 2, size=32)
    rc, events = run_task(tmp_path / "w", "--recipes-module", FACES, recipe="lora-faces", base_model=str(tiny_sd),
                          images=str(images), params={"steps": 2, "rank": 4})  # fmt: skip
    assert rc == 0, events[-3:]
    kohya = load_file(str(tmp_path / "w" / "output" / "pytorch_lora_weights_kohya.safetensors"))
    downs = [v for k, v in kohya.items() if k.endswith("lora_down.weight")]
    assert downs and all(v.shape[0] == 16 for v in downs)  # the recipe's rank, not the task's 4
    assert "| LoRA rank | 16 |" in (tmp_path / "w" / "output" / "README.md").read_text()
