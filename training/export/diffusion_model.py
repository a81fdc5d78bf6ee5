"""The ComfyUI copy of a LoRA whose ComfyUI loader reads diffusers' own module names (Z-Image, Qwen-Image): the
diffusers LoRA (``transformer.<module>.lora_A/lora_B.weight``) under ``diffusion_model.`` with each module's trained
``.alpha``, so the strength is right whatever the rank and alpha (diffusers' loaders convert it back)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from training.export import COMFY_NAME

if TYPE_CHECKING:
    import torch


def comfy_layout(diffusers_sd: dict[str, torch.Tensor], diffusers_file: Path) -> dict[str, torch.Tensor]:
    """``diffusers_sd`` under ``diffusion_model.`` with each module's trained alpha (``lora_alpha / r`` from the
    file's adapter metadata, times its rank) as ``.alpha``."""
    import torch

    from training.export.bfl import lora_scales

    scale = lora_scales(diffusers_file)
    out: dict[str, torch.Tensor] = {}
    for key, value in diffusers_sd.items():
        module, part = key.removeprefix("transformer.").rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        out[f"diffusion_model.{module}.{part}.weight"] = value.contiguous()
        if part == "lora_A":
            out[f"diffusion_model.{module}.alpha"] = torch.tensor(scale(module) * value.shape[0])
    return out


def write_comfy_copy(out_dir: str | Path, written: list[str]) -> list[str]:
    """Write the copy of the diffusers LoRA ``written[0]`` in ``out_dir`` as ``COMFY_NAME``; its name, in a list."""
    from safetensors.torch import load_file, save_file

    source = Path(out_dir) / written[0]
    save_file(comfy_layout(load_file(str(source)), source), str(Path(out_dir) / COMFY_NAME))
    return [COMFY_NAME]
