"""Mixed precision and memory policy: which dtype, whether the frozen denoiser loads quantized (QLoRA), and whether
gradient checkpointing / 8-bit Adam are needed.

The memory policy reads the committed table of the fake-CUDA estimator (``tools/memory_estimate.py``) through the
torch-free lookup ``training.memory``. The optimizer is the training script's (``training.train.make_optimizer``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def has_real_bf16(device: torch.device) -> bool:
    """bf16 in hardware (compute capability >= 8). ``is_bf16_supported()`` also says True for emulation (T4)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """ "no", "fp16" or "bf16" for this device: fp32 on CPU, bf16 where it is real, fp16 otherwise."""
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
    #: where ``estimate_gib`` comes from: "table" (``training/memory_table.json``, the fake-CUDA estimator's) or
    #: "formula" (the rough scaling below, for configurations the table does not cover)
    source: str = "formula"
    #: how the frozen denoiser is stored: "none" (the mixed-precision dtype), "nf4", "int8" or "fp8"
    quantized_base: str = "none"
    #: why (``plan_quantization``'s sentence), for the log and the model card
    quantization_reason: str = ""


# ============================================================================================== quantized base (QLoRA)
# the plan is torch-free (the form's fit check asks it too): training/quantization_plan.py
from training.quantization_plan import (  # noqa: E402, F401  (re-exported: the trainer's and tests' names)
    FP8_MIN_CAPABILITY,
    QUANT_BYTES,
    QUANTIZED_KINDS,
    QuantizationChoice,
    lora_peak_gib,
    plan_quantization,
)


def quantization_config(kind: str, compute_dtype: torch.dtype):
    """The diffusers quantization config for ``from_pretrained(quantization_config=...)`` of the frozen denoiser:
    bitsandbytes NF4 (double-quantized, computing in ``compute_dtype``) or LLM.int8, or torchao fp8 weights
    (``Float8WeightOnlyConfig``); None for "none"."""
    if kind == "none":
        return None
    if kind in ("nf4", "int8"):
        from diffusers import BitsAndBytesConfig

        if kind == "nf4":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute_dtype)  # fmt: skip
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "fp8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig

        return TorchAoConfig(Float8WeightOnlyConfig())
    raise ValueError(f"unknown quantization {kind!r}")


def logical_numel(t: torch.Tensor) -> int:
    """The weights a parameter stands for: a bitsandbytes 4-bit parameter packs two in a byte (its
    ``quant_state`` keeps the original shape); others are their ``numel``."""
    state = getattr(t, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else t.numel()


def torchao_available() -> bool:
    """Whether torchao (the fp8 path) is importable."""
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def device_budget_gib(device: torch.device, requested: float | None) -> float | None:
    """Memory the run may use: the task's ``memory_budget_gib`` or the GPU's total; ``None`` on CPU."""
    if requested:
        return requested
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


#: bytes per trainable parameter beyond the table's rank-4 rows: fp32 weight + fp32 gradient + Adam state
_TRAIN_BYTES = {False: 4 + 4 + 8, True: 4 + 4 + 2}


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
    model_shape: str | None = None,
    recipe: str | None = None,
    prior_preservation: bool | None = None,
    train_text_encoder: bool | None = None,
    batch_size: int | None = None,
    quantized_base: str = "none",
    quantization_reason: str = "",
) -> MemoryPlan:
    """Decide "auto" gradient checkpointing and 8-bit Adam from the peak-memory estimate: the first of (as asked,
    + gradient checkpointing, + 8-bit Adam) whose estimate fits ``training.memory.usable_allocated_gib(budget)``.

    The estimate is the table's (``training.memory.lookup``: the training script's phases run on fake CUDA tensors
    by ``tools/memory_estimate.py``, an instant lookup) when the configuration has a row: the model shape is
    recognised by its UNet size, the recipe (full fine-tune when every UNet weight trains) and the text encoder (its
    weights among the trained modules') from the parameter counts, unless given. With ``samples_per_step`` and no
    ``batch_size``/``prior_preservation`` the larger of "batch of that many" and "half as many with prior
    preservation" is used. Extra trainable parameters over the table's rank-4 LoRA are added at their weight +
    gradient + optimizer bytes. A live fake estimate at trainer start (``python -m tools.memory_estimate --model
    DIR``) would cost 10-40 s of GPU-machine time per task, so it is not run here. Otherwise (another shape, a custom recipe, fp32, a quantized base) the rough
    formula below, with the frozen weights at ``QUANT_BYTES`` per parameter when ``quantized_base`` is one of
    ``QUANTIZED_KINDS`` (``frozen_params`` / ``unet_params`` then count logical weights: ``logical_numel``).
    The plan records ``quantized_base`` and ``quantization_reason``."""
    import dataclasses

    plan = _plan_memory(frozen_params=frozen_params, trainable_params=trainable_params, unet_params=unet_params,
                        latent_size=latent_size, samples_per_step=samples_per_step, weight_bytes=weight_bytes,
                        gradient_checkpointing=gradient_checkpointing, use_8bit_adam=use_8bit_adam,
                        budget_gib=budget_gib, model_shape=model_shape, recipe=recipe,
                        prior_preservation=prior_preservation, train_text_encoder=train_text_encoder,
                        batch_size=batch_size, quantized_base=quantized_base)  # fmt: skip
    return dataclasses.replace(plan, quantized_base=quantized_base, quantization_reason=quantization_reason)


def _plan_memory(*, frozen_params, trainable_params, unet_params, latent_size, samples_per_step, weight_bytes,
                 gradient_checkpointing, use_8bit_adam, budget_gib, model_shape, recipe, prior_preservation,
                 train_text_encoder, batch_size, quantized_base) -> MemoryPlan:  # fmt: skip
    """``plan_memory``'s decision, before the quantization fields are filled in."""
    from training import memory

    gc, adam8 = gradient_checkpointing, use_8bit_adam
    # the table holds half-precision runs (fp16 and bf16 take the same memory; SD rows are fp16, FLUX and
    # Z-Image rows bf16, with quantized-base rows); fp32 runs use the formula
    table_ok = weight_bytes == 2
    shape = (model_shape or memory.shape_for_unet_params(unet_params)) if table_ok else None
    precision = "bf16" if shape in memory.BF16_SHAPES else "fp16"
    quant = None if quantized_base in (None, "none") else quantized_base
    full = trainable_params >= 0.9 * unet_params
    recipe = recipe or ("dreambooth-full" if full else "dreambooth-lora")
    if train_text_encoder is None:
        train_text_encoder = frozen_params + trainable_params > 1.02 * unet_params
    resolution = latent_size * 8  # both SD VAEs scale by 8
    table = memory.load_table() if shape else {"rows": []}

    def table_gib(with_gc: bool, with_adam8: bool) -> float | None:
        if not shape:
            return None
        layouts = [(batch_size or samples_per_step, bool(prior_preservation))]
        if batch_size is None and prior_preservation is None and samples_per_step % 2 == 0:
            layouts.append((samples_per_step // 2, True))
        found = [memory.lookup(shape, recipe, resolution, b, pr, train_text_encoder, with_gc, with_adam8, precision,
                               quant, table=table) for b, pr in layouts]  # fmt: skip
        if any(g is None for g in found):
            return None
        row = memory.table_row(shape, recipe, table=table, train_text_encoder=train_text_encoder, precision=precision,
                               quantized_base=quant)  # fmt: skip
        extra = (trainable_params - row["trainable_params"]) * _TRAIN_BYTES[with_adam8] / 2**30 if row else 0.0
        return max(found) + max(extra, 0.0)  # type: ignore[type-var]

    if table_gib(False, False) is None:
        return _formula_plan(frozen_params, trainable_params, unet_params, latent_size, samples_per_step,
                             weight_bytes, gc, adam8, budget_gib, QUANT_BYTES.get(quantized_base))  # fmt: skip
    if budget_gib is None:  # CPU: nothing to save
        return MemoryPlan(gc is True, adam8 is True, table_gib(gc is True, adam8 is True), None, "table")  # type: ignore[arg-type]
    usable = memory.usable_allocated_gib(budget_gib)
    tries = [(gc is True, adam8 is True)]
    if gc == "auto":
        tries.append((True, tries[-1][1]))
    if adam8 == "auto":
        tries.append((tries[-1][0], True))
    for with_gc, with_adam8 in tries:
        gib = table_gib(with_gc, with_adam8)
        if gib is not None and gib <= usable:
            return MemoryPlan(with_gc, with_adam8, gib, budget_gib, "table")
    # the lightest try the table has (FLUX rows have no 8-bit-Adam variant: its LoRA optimizer state is small)
    with_gc, with_adam8, gib = [(g, a, table_gib(g, a)) for g, a in tries if table_gib(g, a) is not None][-1]
    log.warning("the estimated peak GPU memory (%.1f GiB) exceeds what %.1f GiB leaves for training (%.1f GiB)",
                gib, budget_gib, usable)  # fmt: skip
    return MemoryPlan(with_gc, with_adam8, gib, budget_gib, "table")  # type: ignore[arg-type]


def _formula_plan(frozen_params, trainable_params, unet_params, latent_size, samples_per_step, weight_bytes, gc,
                  adam8, budget_gib, frozen_bytes: float | None = None) -> MemoryPlan:  # fmt: skip
    """The rough estimate for configurations the table does not cover: activations scaled from SD 1.5 at 512 px
    (about 2 GiB per sample in half precision), proportional to UNet size and latent area; gradient checkpointing
    keeps about a quarter of them. ``frozen_bytes``: bytes per frozen weight when quantized (else
    ``weight_bytes``)."""
    gib = 2**30
    act_per_sample = 2.0 * (unet_params / 860e6) * (latent_size / 64) ** 2 * (weight_bytes / 2)
    weights = frozen_params * (frozen_bytes or weight_bytes) / gib
    train_state_adam = trainable_params * (4 + 4 + 8) / gib
    train_state_8bit = trainable_params * (4 + 4 + 2) / gib
    activations = act_per_sample * samples_per_step
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
