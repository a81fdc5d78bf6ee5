"""What the installed training recipes are, for the form: asked of ``python -m training --list-recipes``.

The control plane never imports the trainer (torch); it runs the trainer's CLI once per set of recipe modules and
caches the answer. ``RecipeInfo.auto_steps`` is the trainer's own steps policy (``training.recipe_base.clamp_steps``).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.recipe_base import clamp_steps  # torch-free; the trainer's own steps policy

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LIST_TIMEOUT_S = 300


class RecipeCatalogError(RuntimeError):
    """``python -m training --list-recipes`` failed; the message ends with its stderr tail."""


@dataclass(frozen=True)
class RecipeInfo:
    """One registered recipe as the form sees it."""

    name: str
    label: str
    steps_per_image: int
    min_steps: int
    max_steps: int
    fixed_params: dict[str, Any] = field(default_factory=dict)
    form_fields: tuple[str, ...] = ()
    default_learning_rate: float = 1e-4

    def auto_steps(self, image_count: int) -> int:
        """The steps this recipe trains for ``image_count`` photos when the task leaves ``steps`` to it."""
        return clamp_steps(image_count, self.steps_per_image, self.min_steps, self.max_steps)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeInfo:
        return cls(
            name=str(data["name"]),
            label=str(data.get("label") or data["name"]),
            steps_per_image=int(data["steps_per_image"]),
            min_steps=int(data["min_steps"]),
            max_steps=int(data["max_steps"]),
            fixed_params=dict(data.get("fixed_params") or {}),
            form_fields=tuple(data.get("form_fields") or ()),
            default_learning_rate=float(data["default_learning_rate"]),
        )


@functools.cache
def load_catalog(modules: tuple[str, ...] = (), python: str = sys.executable) -> dict[str, RecipeInfo]:
    """Name -> ``RecipeInfo`` of the built-in recipes and those registered by ``modules`` (run from the project
    root, cached per ``modules``); ``RecipeCatalogError`` with the stderr tail if the listing fails."""
    cmd = [python, "-m", "training", "--list-recipes"]
    for module in modules:
        cmd += ["--recipes-module", module]
    try:
        proc = subprocess.run(
            cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=LIST_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RecipeCatalogError(f"could not list the training recipes ({' '.join(cmd)}): {e}") from e
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RecipeCatalogError(f"listing the training recipes failed (exit code {proc.returncode}):\n{tail}")
    try:
        recipes = json.loads(proc.stdout.strip().splitlines()[-1])["recipes"]
        return {r["name"]: RecipeInfo.from_dict(r) for r in recipes}
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise RecipeCatalogError(f"the recipe list is not readable: {e}: {proc.stdout[-500:]!r}") from e
