"""``dreambooth-lora``: LoRA adapters on the model family's denoiser (and optionally its text encoders), at the
family's target modules; the default recipe."""

from __future__ import annotations

import torch

from training.families.base import Components
from training.recipe_base import DreamBoothRecipe, RunContext
from training.recipes import register_recipe


@register_recipe("dreambooth-lora")
class DreamBoothLoRA(DreamBoothRecipe):
    """DreamBooth with LoRA (rank ``params.rank``, alpha ``params.alpha`` or the rank) on the family's
    ``lora_targets``. Frozen weights stay in the mixed-precision dtype; the adapters train in fp32. No base
    component trains in place (``trainable_components`` is empty), so every one loads from its fp16 variant where
    the repo has it."""

    checkpoint_family = "dreambooth-lora"
    label = "DreamBooth LoRA (small adapter file; the default)"
    default_learning_rate = 1e-4
    steps_per_image, min_steps, max_steps = 150, 500, 2400
    form_fields = ("rank",)

    def configure_trainable(self, comps: Components, ctx: RunContext) -> dict[str, torch.nn.Module]:
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        p, family = ctx.spec.params, comps.family
        alpha = p.alpha or p.rank
        den = family.denoiser_name
        comps.denoiser.add_adapter(
            LoraConfig(r=p.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=family.lora_targets(den))
        )
        modules: dict[str, torch.nn.Module] = {den: comps.denoiser}
        if p.train_text_encoder:
            for name, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True):
                cfg = LoraConfig(r=p.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                 target_modules=family.lora_targets(name))  # fmt: skip
                add_text_encoder_adapter(te, cfg)
                modules[name] = te
        cast_training_params(list(modules.values()), dtype=torch.float32)
        return modules

    def save_outputs(self, comps: Components, modules: dict[str, torch.nn.Module], ctx: RunContext) -> list[str]:
        """The LoRA in diffusers format through the family's pipeline, plus the family's other layouts."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        rename = convert_state_dict_to_diffusers if comps.family.lora_file_uses_diffusers_names else dict
        layers = {name: rename(get_peft_model_state_dict(m)) for name, m in modules.items()}
        meta = {name: m.peft_config["default"].to_dict() for name, m in modules.items()}
        written = comps.family.save_lora(comps, layers, meta, ctx.output_dir)
        return written + comps.family.extra_lora_outputs(ctx.output_dir, written)


def add_text_encoder_adapter(text_encoder: torch.nn.Module, config) -> None:
    """Inject LoRA layers into a transformers text encoder with peft directly.

    (``PreTrainedModel.add_adapter`` of transformers 5 insists on peft >= 0.22; this works with older peft too.)
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, text_encoder, adapter_name="default")
    text_encoder.peft_config = {"default": config}

