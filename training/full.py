"""``dreambooth-full``: fine-tune every weight of the model family's denoiser (the UNet, or a transformer) and
optionally the text encoders; saves a pipeline folder."""

from __future__ import annotations

import torch

from training.families.base import Components, ModelFamily
from training.recipe_base import DreamBoothRecipe, RunContext
from training.recipes import register_recipe
from training.spec import TrainParams


@register_recipe("dreambooth-full")
class DreamBoothFull(DreamBoothRecipe):
    """Classic DreamBooth: every denoiser weight trains (fp32 master weights under mixed precision)."""

    checkpoint_family = "dreambooth-full"
    label = "DreamBooth full fine-tune (all UNet weights; a whole pipeline, several GB)"
    form_fields = ()
    default_learning_rate = 5e-6
    steps_per_image, min_steps, max_steps = 200, 400, 4000
    hub_checkpoints = False  # GBs of weights and optimizer state: too big for the queue repo
    max_checkpoints_kept = 1
    keeps_scored_weights = False  # each scored point would keep a whole model

    @classmethod
    def trainable_components(cls, params: TrainParams, family: type[ModelFamily] | None = None) -> frozenset[str]:
        """The family's denoiser, and its text encoders when ``train_text_encoder`` (names a pipeline lacks are
        ignored). ``family`` None: Stable Diffusion's names."""
        if family is None:
            from training.families.sd import StableDiffusion as family
        encoders = family.text_encoder_components if params.train_text_encoder else ()
        return frozenset({family.denoiser_name, *encoders})

    def configure_trainable(self, comps: Components, ctx: RunContext) -> dict[str, torch.nn.Module]:
        comps.denoiser.requires_grad_(True)
        modules: dict[str, torch.nn.Module] = {comps.family.denoiser_name: comps.denoiser}
        if ctx.spec.params.train_text_encoder:
            for name, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True):
                te.to(torch.float32).requires_grad_(True)
                modules[name] = te
        return modules

    def save_outputs(self, comps: Components, modules: dict[str, torch.nn.Module], ctx: RunContext) -> list[str]:
        tes = [modules.get(n, te) for n, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True)]
        pipe = comps.family.build_pipeline(comps, denoiser=modules[comps.family.denoiser_name], text_encoders=tes)
        pipe.save_pretrained(str(ctx.output_dir), safe_serialization=True)
        return ["model_index.json"]
