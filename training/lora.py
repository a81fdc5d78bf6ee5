"""``dreambooth-lora``: LoRA adapters on the UNet attention (and optionally the text encoders); the default recipe."""

from __future__ import annotations

from pathlib import Path

import torch

from training.models import Components, pipeline_class
from training.recipe_base import RunContext
from training.recipes import register_recipe
from training.trainer import DreamBoothRecipe

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_NAME = "pytorch_lora_weights_kohya.safetensors"


@register_recipe("dreambooth-lora")
class DreamBoothLoRA(DreamBoothRecipe):
    """DreamBooth with LoRA (rank ``params.rank``, alpha ``params.alpha`` or the rank). Frozen weights stay in the
    mixed-precision dtype; the adapters train in fp32."""

    default_learning_rate = 1e-4
    steps_per_image, min_steps, max_steps = 150, 500, 2400

    def configure_trainable(self, comps: Components, ctx: RunContext) -> dict[str, torch.nn.Module]:
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        p = ctx.spec.params
        alpha = p.alpha or p.rank
        comps.unet.add_adapter(
            LoraConfig(r=p.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=UNET_TARGETS)
        )
        modules: dict[str, torch.nn.Module] = {"unet": comps.unet}
        if p.train_text_encoder:
            for name, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True):
                te.add_adapter(
                    LoraConfig(r=p.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT_TARGETS)
                )
                modules[name] = te
        cast_training_params(list(modules.values()), dtype=torch.float32)
        return modules

    def save_outputs(self, comps: Components, modules: dict[str, torch.nn.Module], ctx: RunContext) -> list[str]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        out = ctx.output_dir
        layers = {
            f"{name}_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
            for name, module in modules.items()
        }
        meta = {
            f"{name}_lora_adapter_metadata": module.peft_config["default"].to_dict() for name, module in modules.items()
        }
        pipeline_class(comps).save_lora_weights(str(out), **layers, **meta, safe_serialization=True)
        write_kohya_copy(out / WEIGHTS_NAME, out / KOHYA_NAME)
        return [WEIGHTS_NAME, KOHYA_NAME]

    def output_files_hint(self) -> list[str]:
        return [WEIGHTS_NAME, KOHYA_NAME]


def write_kohya_copy(diffusers_file: Path, kohya_file: Path) -> None:
    """Convert a diffusers-format LoRA file to the kohya/A1111 layout (``lora_unet_...lora_down.weight``, alphas)."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    sd = load_file(str(diffusers_file))
    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(sd))
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(kohya_file))
