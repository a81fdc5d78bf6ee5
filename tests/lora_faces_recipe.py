"""The README's custom recipe, exactly as the README shows it (loaded by tests with ``--recipes-module``)."""

from training.lora import DreamBoothLoRA
from training.recipes import register_recipe


@register_recipe("lora-faces")
class LoRAFaces(DreamBoothLoRA):
    label = "LoRA for faces (rank 16)"
    steps_per_image = 120
    fixed_params = {"rank": 16}
