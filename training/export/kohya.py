"""The kohya / A1111 / ComfyUI layout of a Stable Diffusion (1.x/2.x, SDXL) LoRA, converted from the diffusers file.

Layout written: one module per LoRA'd linear layer, named ``lora_unet_<diffusers module path, "." -> "_">`` for the
UNet and ``lora_te_text_model_...`` (SD 1.x/2.x) or ``lora_te1_text_model_...`` / ``lora_te2_text_model_...`` (SDXL)
for the text encoders, each with ``.lora_down.weight`` (rank x in), ``.lora_up.weight`` (out x rank) and ``.alpha``
(a scalar: readers apply ``up @ down * alpha / rank``). ``alpha`` is the trained adapter's ``lora_alpha`` (or its
``alpha_pattern`` entry), taken from the adapter configs that ``save_lora_weights`` stores in the diffusers file.

Key renaming goes through diffusers' own converters, one component at a time (the diffusers -> peft conversion of a
file that mixes UNet and text-encoder keys converts only the text-encoder ones, so it is never given a mixed file).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

#: diffusers' component prefixes in a LoRA file, in the order kohya files list them
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def write_kohya_file(
    diffusers_file: Path, kohya_file: Path, adapter_configs: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Write the kohya/A1111/ComfyUI copy of a diffusers-format SD LoRA file.

    ``adapter_configs``: per component (``"unet"``, ``"text_encoder"``, ...), the peft ``LoraConfig`` as a dict
    (``r``, ``lora_alpha``, ``alpha_pattern``, ``use_rslora``, ...); by default read from the file's
    ``lora_adapter_metadata``. A file without either is refused: guessing ``alpha = rank`` would silently change the
    strength of a LoRA trained with another alpha.
    """
    from safetensors.torch import load_file, save_file

    configs = adapter_configs if adapter_configs is not None else adapter_configs_of(diffusers_file)
    kohya = diffusers_to_kohya(load_file(str(diffusers_file)), configs)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(kohya_file), metadata={"format": "pt"})


def adapter_configs_of(diffusers_file: Path) -> dict[str, dict[str, Any]]:
    """The per-component adapter configs that diffusers' ``save_lora_weights`` stored in a LoRA file's metadata."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors import safe_open

    with safe_open(str(diffusers_file), framework="pt") as f:
        raw = (f.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        raise ValueError(f"{diffusers_file.name} has no {LORA_ADAPTER_METADATA_KEY}: the LoRA alpha is unknown")
    configs: dict[str, dict[str, Any]] = {}
    for key, value in json.loads(raw).items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def diffusers_to_kohya(
    state_dict: Mapping[str, torch.Tensor], adapter_configs: Mapping[str, Mapping[str, Any]]
) -> dict[str, torch.Tensor]:
    """Rename a diffusers-format SD LoRA state dict (``unet.…lora.down.weight``, ``text_encoder.…lora_linear_layer
    .down.weight``) to kohya keys, with each module's true ``.alpha``."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya

    by_component = _split_by_component(state_dict)
    sdxl = "text_encoder_2" in by_component
    kohya: dict[str, torch.Tensor] = {}
    for component, weights in by_component.items():
        config = adapter_configs.get(component)
        if config is None:
            raise ValueError(f"no adapter config for the {component} LoRA: its alpha is unknown")
        if config.get("use_dora"):
            raise ValueError("a DoRA adapter has no kohya LoRA equivalent here")
        peft = convert_all_state_dict_to_peft(weights)  # one component at a time: see the module docstring
        renamed = convert_state_dict_to_kohya({f"{component}.{k}": v for k, v in peft.items()})
        peft_modules = _peft_modules_by_kohya_name(peft, component, sdxl)
        for key, value in renamed.items():
            module, _, suffix = key.partition(".")
            module = _a1111_name(module, sdxl)
            if suffix == "alpha":  # diffusers writes the rank here; the trained alpha goes in its place below
                continue
            kohya[f"{module}.{suffix}"] = value
            if suffix == "lora_down.weight":
                alpha = kohya_alpha(config, peft_modules[module], rank=value.shape[0])
                kohya[f"{module}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return kohya


def kohya_alpha(config: Mapping[str, Any], module: str, rank: int) -> float:
    """The kohya ``alpha`` that gives a module the strength it was trained with (peft scales by ``alpha / r``, or by
    ``alpha / sqrt(r)`` with rsLoRA; kohya readers always by ``alpha / r``)."""
    from peft.utils.other import get_pattern_key

    patterns = config.get("alpha_pattern") or {}
    alpha = float(patterns.get(get_pattern_key(list(patterns), module), config["lora_alpha"]))
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _split_by_component(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        component, _, rest = key.partition(".")
        if component not in COMPONENTS or not rest:
            raise ValueError(f"not an SD LoRA key: {key!r} (expected one of {', '.join(COMPONENTS)} as its prefix)")
        parts.setdefault(component, {})[rest] = value
    return {c: parts[c] for c in COMPONENTS if c in parts}


def _peft_modules_by_kohya_name(peft: Mapping[str, torch.Tensor], component: str, sdxl: bool) -> dict[str, str]:
    """kohya module name -> peft module path (the name ``alpha_pattern`` entries match)."""
    prefix = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}[component]
    names = (k.removesuffix(".lora_A.weight") for k in peft if k.endswith(".lora_A.weight"))
    return {_a1111_name(f"{prefix}_{name.replace('.', '_')}", sdxl): name for name in names}


def _a1111_name(module: str, sdxl: bool) -> str:
    """A1111/ComfyUI text-encoder names: ``lora_te_text_model_...`` (SD 1.x/2.x), ``lora_te1_/lora_te2_text_model_``
    (SDXL). diffusers' converter says ``lora_te1_`` for every first text encoder, and transformers 5 dropped the
    ``text_model`` level from CLIPTextModel's parameter names: both are put right here."""
    for prefix in ("lora_te1_", "lora_te2_"):
        if module.startswith(prefix):
            rest = module[len(prefix) :]
            if not rest.startswith("text_model_"):
                rest = "text_model_" + rest
            return f"{prefix if sdxl else 'lora_te_'}{rest}"
    return module
