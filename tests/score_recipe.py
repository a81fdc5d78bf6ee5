"""A recipe that fixes scoring off (``params.score``: the form's "Score checkpoints", ``ui.advanced``), loaded with
``--recipes-module``.

Importing this module only registers it; it holds no tests.
"""

from __future__ import annotations

from training.lora import DreamBoothLoRA
from training.recipes import register_recipe


@register_recipe("lora-unscored")
class LoRAUnscored(DreamBoothLoRA):
    """DreamBooth LoRA that never scores its checkpoints."""

    label = "LoRA, unscored"
    fixed_params = {"score": False}  # noqa: RUF012 - the recipe base declares it a ClassVar
