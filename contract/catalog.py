"""The catalog of training recipes and model families, for the form: asked of ``python -m training --list-recipes``
(one line of JSON holding both), with the records both sides share.

The control plane never imports the trainer (torch); it runs the trainer's CLI once per set of recipe / family
modules and caches the answer. ``clamp_steps`` is the one steps policy (the trainer's default and the form's
"auto": ``RecipeInfo.auto_steps``); ``FamilyDefaults`` is what a model family proposes to the form (hardware,
resolution, steps, learning rate, rank), declared by the family (``training.families.base.ModelFamily.defaults``)
and read back in ``FamilyInfo``, so the form can follow the chosen base model. Standard library only.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LIST_TIMEOUT_S = 300


class RecipeCatalogError(RuntimeError):
    """``python -m training --list-recipes`` failed; the message ends with its stderr tail."""


def clamp_steps(image_count: int, steps_per_image: int, min_steps: int, max_steps: int) -> int:
    """Training steps for ``image_count`` photos: ``steps_per_image`` each (at least one photo), clamped. The one
    steps policy: the trainer's default and the form's "auto" (``RecipeInfo.auto_steps``) both use it."""
    return int(min(max_steps, max(min_steps, steps_per_image * max(int(image_count), 1))))


@dataclass(frozen=True)
class FamilyDefaults:
    """What the form proposes for a base model of this family (read from the catalog, no torch). ``None``: the
    recipe's / the model's own default (``resolution`` None: the model's native resolution)."""

    hardware: str = "t4-small"
    resolution: int | None = None
    steps_per_image: int | None = None
    learning_rate: float | None = None
    rank: int | None = None
    #: shown beside the hardware choice (e.g. "Flux on a T4 runs only in NF4, about 4x slower than an L4")
    hardware_note: str = ""


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


@dataclass(frozen=True)
class FamilyInfo:
    """One registered model family as the form sees it (``training.families.base.ModelFamily.catalog_entry``)."""

    name: str
    label: str
    pipelines: tuple[str, ...]
    denoiser: str = "unet"
    denoiser_params: int = 0
    supports_text_encoder_training: bool = True
    #: an edit model, trained on before/after pairs (``training.pairs``)
    edits: bool = False
    defaults: FamilyDefaults = field(default_factory=FamilyDefaults)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FamilyInfo:
        d = data.get("defaults") or {}

        def opt(key: str, typ: type) -> Any:
            return None if d.get(key) is None else typ(d[key])

        return cls(
            name=str(data["name"]),
            label=str(data.get("label") or data["name"]),
            pipelines=tuple(str(p) for p in data.get("pipelines") or ()),
            denoiser=str(data.get("denoiser") or "unet"),
            denoiser_params=int(data.get("denoiser_params") or 0),
            supports_text_encoder_training=bool(data.get("supports_text_encoder_training", True)),
            edits=bool(data.get("edits", False)),
            defaults=FamilyDefaults(
                hardware=str(d.get("hardware") or "t4-small"),
                resolution=opt("resolution", int),
                steps_per_image=opt("steps_per_image", int),
                learning_rate=opt("learning_rate", float),
                rank=opt("rank", int),
                hardware_note=str(d.get("hardware_note") or ""),
            ),
        )


def family_for_pipeline(families: dict[str, FamilyInfo], pipeline: str | None) -> FamilyInfo | None:
    """The family whose pipelines include ``pipeline`` (a model_index.json ``_class_name``), or None."""
    return next((f for f in families.values() if pipeline in f.pipelines), None)


@functools.cache
def _listing(modules: tuple[str, ...], family_modules: tuple[str, ...], python: str) -> dict[str, Any]:
    """The parsed ``python -m training --list-recipes`` line for these modules (cached)."""
    cmd = [python, "-m", "training", "--list-recipes"]
    for module in modules:
        cmd += ["--recipes-module", module]
    for module in family_modules:
        cmd += ["--families-module", module]
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
        listing = json.loads(proc.stdout.strip().splitlines()[-1])
        if not isinstance(listing, dict) or not isinstance(listing["recipes"], list):
            raise TypeError("no recipes list")
        return listing
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise RecipeCatalogError(f"the recipe list is not readable: {e}: {proc.stdout[-500:]!r}") from e


@functools.cache
def load_catalog(
    modules: tuple[str, ...] = (), python: str = sys.executable, family_modules: tuple[str, ...] = ()
) -> dict[str, RecipeInfo]:
    """Name -> ``RecipeInfo`` of the built-in recipes and those registered by ``modules`` (run from the project
    root, cached per ``modules``); ``RecipeCatalogError`` with the stderr tail if the listing fails."""
    recipes = _listing(tuple(modules), tuple(family_modules), python)["recipes"]
    try:
        return {r["name"]: RecipeInfo.from_dict(r) for r in recipes}
    except (KeyError, TypeError, ValueError) as e:
        raise RecipeCatalogError(f"the recipe list is not readable: {e}") from e


@functools.cache
def load_families(
    modules: tuple[str, ...] = (), python: str = sys.executable, family_modules: tuple[str, ...] = ()
) -> dict[str, FamilyInfo]:
    """Name -> ``FamilyInfo`` of the built-in model families and those of ``family_modules`` (or registered by the
    recipe ``modules``), from the same cached listing as ``load_catalog``."""
    families = _listing(tuple(modules), tuple(family_modules), python).get("families") or []
    try:
        return {f["name"]: FamilyInfo.from_dict(f) for f in families}
    except (KeyError, TypeError, ValueError) as e:
        raise RecipeCatalogError(f"the model family list is not readable: {e}") from e
