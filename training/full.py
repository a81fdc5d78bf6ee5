"""``dreambooth-full``: fine-tune all UNet weights (and optionally the text encoders); saves a pipeline folder."""

from __future__ import annotations

import torch

from training.files import TEXT_ENCODER_COMPONENTS
from training.models import Components, build_pipeline
from training.recipe_base import RunContext
from training.recipes import register_recipe
from training.spec import TrainParams
from training.trainer import DreamBoothRecipe


@register_recipe("dreambooth-full")
class DreamBoothFull(DreamBoothRecipe):
    """Classic DreamBooth: every UNet weight trains (fp32 master weights under mixed precision)."""

    checkpoint_family = "dreambooth-full"
    label = "DreamBooth full fine-tune (all UNet weights; a whole pipeline, several GB)"
    form_fields = ()
    default_learning_rate = 5e-6
    steps_per_image, min_steps, max_steps = 200, 400, 4000
    hub_checkpoints = False  # GBs of weights and optimizer state: too big for the queue repo
    max_checkpoints_kept = 1

    @classmethod
    def trainable_components(cls, params: TrainParams) -> frozenset[str]:
        """The UNet, and the text encoders when ``train_text_encoder`` (names a pipeline lacks are ignored)."""
        return frozenset({"unet", *(TEXT_ENCODER_COMPONENTS if params.train_text_encoder else ())})

    def configure_trainable(self, comps: Components, ctx: RunContext) -> dict[str, torch.nn.Module]:
        comps.unet.requires_grad_(True)
        modules: dict[str, torch.nn.Module] = {"unet": comps.unet}
        if ctx.spec.params.train_text_encoder:
            for name, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True):
                te.to(torch.float32).requires_grad_(True)
                modules[name] = te
        return modules

    def save_outputs(self, comps: Components, modules: dict[str, torch.nn.Module], ctx: RunContext) -> list[str]:
        tes = [modules.get(n, te) for n, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True)]
        pipe = build_pipeline(comps, unet=modules["unet"], text_encoders=tes)
        pipe.save_pretrained(str(ctx.output_dir), safe_serialization=True)
        return ["model_index.json"]

    def output_files_hint(self) -> list[str]:
        return ["model_index.json"]
