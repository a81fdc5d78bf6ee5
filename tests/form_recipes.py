"""A customized recipe for the form tests: the README's "Customize" example (loaded with ``--recipes-module``).

Importing this module only registers it; it holds no tests.
"""

from __future__ import annotations

from training.lora import DreamBoothLoRA
from training.recipes import register_recipe


@register_recipe("lora-faces")
class LoRAFaces(DreamBoothLoRA):
    """DreamBooth LoRA for faces: rank 16 and 120 steps per photo."""

    label = "LoRA for faces (rank 16)"
    steps_per_image = 120
    fixed_params = {"rank": 16}  # noqa: RUF012 - the recipe base declares it a ClassVar
