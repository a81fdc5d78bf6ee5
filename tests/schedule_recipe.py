"""A recipe that fixes two of the schedule settings the form offers (``ui.advanced``): a cosine schedule with
min-SNR weighting at 5, the warm-up left to the user (loaded with ``--recipes-module``).

Importing this module only registers it; it holds no tests.
"""

from __future__ import annotations

from training.lora import DreamBoothLoRA
from training.recipes import register_recipe


@register_recipe("lora-cosine-snr")
class LoRACosineSNR(DreamBoothLoRA):
    """DreamBooth LoRA on a cosine schedule with min-SNR gamma 5."""

    label = "LoRA, cosine schedule, min-SNR 5"
    fixed_params = {"lr_scheduler": "cosine", "snr_gamma": 5.0}  # noqa: RUF012 - the recipe base declares it a ClassVar
