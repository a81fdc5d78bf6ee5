"""Mixed precision and memory policy: which dtype, and whether gradient checkpointing / 8-bit Adam are needed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def has_real_bf16(device: torch.device) -> bool:
    """bf16 in hardware (compute capability >= 8). ``is_bf16_supported()`` also says True for emulation (T4)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """"no", "fp16" or "bf16" for this device: fp32 on CPU, bf16 where it is real, fp16 otherwise."""
    if device.type != "cuda":
        return "no"
    if requested == "auto":
        return "bf16" if has_real_bf16(device) else "fp16"
    if requested == "bf16" and not has_real_bf16(device):
        log.warning("bf16 requested but this GPU has no bf16 hardware (compute capability < 8); using fp16")
        return "fp16"
    return requested


def weight_dtype_for(mixed_precision: str) -> torch.dtype:
    """The dtype frozen weights are kept in (trainable parameters always stay fp32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


@dataclass
class MemoryPlan:
    gradient_checkpointing: bool
    use_8bit_adam: bool
    estimate_gib: float
    budget_gib: float | None


def device_budget_gib(device: torch.device, requested: float | None) -> float | None:
    """Memory the run may use: the task's ``memory_budget_gib`` or the GPU's total; ``None`` on CPU."""
    if requested:
        return requested
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def plan_memory(
    *,
    device: torch.device,
    frozen_params: int,
    trainable_params: int,
    unet_params: int,
    latent_size: int,
    samples_per_step: int,
    weight_bytes: int,
    gradient_checkpointing: bool | str,
    use_8bit_adam: bool | str,
    budget_gib: float | None,
) -> MemoryPlan:
    """Decide "auto" gradient checkpointing and 8-bit Adam from a rough peak-memory estimate.

    Activation memory is scaled from measurements of SD 1.5 at 512 px (about 2 GiB per sample in half precision),
    proportional to UNet size and latent area; gradient checkpointing keeps about a quarter of it.
    """
    gib = 2**30
    act_per_sample = 2.0 * (unet_params / 860e6) * (latent_size / 64) ** 2 * (weight_bytes / 2)
    weights = frozen_params * weight_bytes / gib
    train_state_adam = trainable_params * (4 + 4 + 8) / gib
    train_state_8bit = trainable_params * (4 + 4 + 2) / gib
    activations = act_per_sample * samples_per_step

    gc = gradient_checkpointing
    adam8 = use_8bit_adam
    if budget_gib is None:  # CPU: nothing to save, keep it simple and fast
        return MemoryPlan(gc is True, adam8 is True, weights + train_state_adam + activations, None)
    usable = 0.85 * budget_gib
    if gc == "auto":
        gc = weights + train_state_adam + activations > usable
    act = activations * (0.25 if gc else 1.0)
    if adam8 == "auto":
        adam8 = weights + train_state_adam + act > usable
    total = weights + (train_state_8bit if adam8 else train_state_adam) + act
    return MemoryPlan(bool(gc), bool(adam8), total, budget_gib)


def make_optimizer(params: list[dict], lr: float, *, use_8bit: bool, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA), or bitsandbytes' 8-bit AdamW when asked and available (CUDA only).

    Without bitsandbytes a memory-bound run falls back to transformers' Adafactor (factored second moments).
    """
    kwargs = dict(lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if use_8bit and device.type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        except ImportError:
            log.warning("bitsandbytes is not installed; using Adafactor to save optimizer memory instead of 8-bit Adam")
            from transformers.optimization import Adafactor

            return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    if device.type == "cuda":
        return torch.optim.AdamW(params, fused=True, **kwargs)
    return torch.optim.AdamW(params, foreach=True, **kwargs)
