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
    mixed-precision dtype; the adapters train in fp32. No base component trains in place
    (``trainable_components`` is empty), so every one loads from its fp16 variant where the repo has it."""

    checkpoint_family = "dreambooth-lora"
    label = "DreamBooth LoRA (small adapter file; the default)"
    default_learning_rate = 1e-4
    steps_per_image, min_steps, max_steps = 150, 500, 2400
    form_fields = ("rank",)

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
                cfg = LoraConfig(r=p.rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT_TARGETS)
                add_text_encoder_adapter(te, cfg)
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


def add_text_encoder_adapter(text_encoder: torch.nn.Module, config) -> None:
    """Inject LoRA layers into a transformers text encoder with peft directly.

    (``PreTrainedModel.add_adapter`` of transformers 5 insists on peft >= 0.22; this works with older peft too.)
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, text_encoder, adapter_name="default")
    text_encoder.peft_config = {"default": config}


def write_kohya_copy(diffusers_file: Path, kohya_file: Path) -> None:
    """Convert a diffusers-format LoRA file to the kohya/A1111 layout (``lora_unet_...lora_down.weight``, alphas)."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    sd = load_file(str(diffusers_file))
    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(sd))
    sdxl = any(k.startswith("lora_te2_") for k in kohya)
    save_file({_a1111_text_key(k, sdxl): v.contiguous() for k, v in kohya.items()}, str(kohya_file))


def _a1111_text_key(key: str, sdxl: bool) -> str:
    """A1111/ComfyUI text-encoder names: ``lora_te_text_model_...`` (SD 1.x/2.x), ``lora_te1_/lora_te2_text_model_``
    (SDXL). transformers 5 dropped the ``text_model`` level from CLIPTextModel's parameter names; put it back."""
    for prefix in ("lora_te1_", "lora_te2_"):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if not rest.startswith("text_model_"):
                rest = "text_model_" + rest
            return f"{prefix if sdxl else 'lora_te_'}{rest}"
    return key
