"""Whether the frozen denoiser of a LoRA run loads quantized (QLoRA), chosen from the GPU memory. Torch-free: the
trainer asks it before loading any weight and the form's fit check asks it before anything is queued, so both
answer alike. ``training.precision`` re-exports these names and holds the diffusers quantization configs."""

from __future__ import annotations

from dataclasses import dataclass

#: the quantized storages of a frozen denoiser: the ``quantize_base`` values that name one, i.e. all but "auto" and
#: "none" (``contract.params.QUANTIZE_BASE_CHOICES`` lists all five; "auto" tries none, 8-bit, then nf4)
QUANTIZED_KINDS = ("nf4", "int8", "fp8")
#: bytes per frozen denoiser parameter in each storage: NF4 packs two weights a byte, plus its double-quantized
#: block scales (about 0.13 bit a weight); LLM.int8 and fp8 one byte plus per-row scales
QUANT_BYTES = {"nf4": 0.52, "int8": 1.01, "fp8": 1.01}
#: fp8 matmuls need Ada / Hopper (compute capability 8.9): L4, L40S, H100/H200; not a T4 (7.5) or an A10G (8.6)
FP8_MIN_CAPABILITY = (8, 9)
#: transformer activations per sample with gradient checkpointing, GiB per (billion denoiser parameters x
#: megapixel): anchored on FLUX.1 [dev] LoRA at 512x768, batch 1 (blog ``flux-qlora``: ~9 GB peak with an NF4
#: base, 26 GB in bf16, i.e. about 2.5 GiB beyond the weights for 11.9 B parameters at 0.39 MP)
ACT_GIB_PER_BPARAM_MP = 2.5 / (11.9 * 0.393)
#: without gradient checkpointing the blocks keep about four times as much (``_formula_plan``'s ratio)
NO_CHECKPOINTING_FACTOR = 4.0
#: what a run holds besides the frozen weights and the activations: the adapters with their gradients and Adam
#: state, the cached conditioning, cuBLAS workspaces. Set so the choices agree with the trainers' published
#: figures per flavor (shared/reference/modern-models.md): FLUX.1 on a T4 only in NF4, on an L4 / A10G in
#: 8-bit, on an L40S in bf16; FLUX.2 [klein] 4B in bf16 on an L4, 9B 8-bit there
FIXED_OVERHEAD_GIB = 1.5


@dataclass(frozen=True)
class QuantizationChoice:
    """How the frozen denoiser loads ("none" or one of ``QUANTIZED_KINDS``), the peak estimate it was chosen on
    (GiB; None when no budget was known) and the sentence the trainer logs."""

    kind: str
    estimate_gib: float | None
    reason: str


def lora_peak_gib(denoiser_params: int, kind: str, *, weight_bytes: int, megapixels: float, samples_per_step: int,
                  gradient_checkpointing: bool = True) -> float:  # fmt: skip
    """Rough peak GPU memory of a LoRA run on a denoiser of ``denoiser_params`` stored as ``kind``: its frozen
    weights, activations (``ACT_GIB_PER_BPARAM_MP``) and ``FIXED_OVERHEAD_GIB``."""
    per_param = QUANT_BYTES.get(kind, weight_bytes)
    weights = denoiser_params * per_param / 2**30
    act = ACT_GIB_PER_BPARAM_MP * denoiser_params / 1e9 * megapixels * samples_per_step
    return weights + act * (1.0 if gradient_checkpointing else NO_CHECKPOINTING_FACTOR) + FIXED_OVERHEAD_GIB


def plan_quantization(
    requested: str,
    *,
    lora: bool,
    denoiser_params: int,
    budget_gib: float | None,
    compute_capability: tuple[int, int] | None,
    fp8_available: bool,
    weight_bytes: int,
    resolution: int,
    samples_per_step: int,
    gradient_checkpointing: bool | str = "auto",
    model_shape: str | None = None,
) -> QuantizationChoice:
    """Whether the frozen denoiser loads quantized (pure; the trainer calls it before loading).

    An explicit ``requested`` kind is kept (``BadInputError`` for a full fine-tune, which trains those very
    weights, and for fp8 without a GPU of compute capability >= 8.9 or without torchao). "auto" keeps a full
    fine-tune and a run without a GPU budget unquantized, and otherwise takes the first of none, 8-bit (fp8 where
    the GPU and torchao allow it, else bitsandbytes' int8), NF4 whose estimate fits
    ``training.memory.usable_allocated_gib(budget_gib)``; NF4 when none fits (the memory plan then warns).

    The estimate of each storage is the memory table's (``training.memory.lookup``: the fake-CUDA estimator's,
    for a built-in ``model_shape`` such as "flux1", "klein4b", "klein9b", "zimage") where it has the configuration,
    else ``lora_peak_gib``'s rough formula."""
    from training import memory
    from training.exitcodes import BadInputError

    if requested not in ("auto", "none", *QUANTIZED_KINDS):
        raise BadInputError(f"params.quantize_base must be one of auto, none, {', '.join(QUANTIZED_KINDS)}")
    fp8_gpu = compute_capability is not None and tuple(compute_capability) >= FP8_MIN_CAPABILITY
    if requested in QUANTIZED_KINDS and not lora:
        raise BadInputError(f"quantize_base={requested!r}: a full fine-tune trains the base weights themselves, "
                            "which cannot be quantized; use the LoRA recipe or quantize_base 'none'")  # fmt: skip
    if requested == "fp8" and not fp8_gpu:
        cc = compute_capability
        where = "no GPU" if cc is None else f"a GPU of compute capability {cc[0]}.{cc[1]}"
        raise BadInputError(f"quantize_base='fp8' needs a GPU of compute capability >= 8.9 (L4, L40S, H100/H200); "
                            f"this run has {where}. Use 'int8' or 'nf4' instead")  # fmt: skip
    if requested == "fp8" and not fp8_available:
        raise BadInputError("quantize_base='fp8' loads the base through torchao, which is not installed here; "
                            "use 'int8' or 'nf4', or install torchao>=0.15")  # fmt: skip
    gc_on = gradient_checkpointing is not False
    mp = (resolution / 1024) ** 2 * 1.048576  # megapixels of a square image
    table = memory.load_table() if model_shape is not None else None  # read once for every storage tried

    def estimate(kind: str) -> float:
        tabled = table_estimate(model_shape, kind, resolution, samples_per_step, gc_on, table=table)
        if tabled is not None:
            return tabled
        return lora_peak_gib(denoiser_params, kind, weight_bytes=weight_bytes, megapixels=mp,
                             samples_per_step=samples_per_step, gradient_checkpointing=gc_on)  # fmt: skip

    if requested != "auto":
        est = estimate(requested) if budget_gib else None
        return QuantizationChoice(requested, est, f"quantize_base={requested!r} as the task asks")
    if not lora:
        return QuantizationChoice("none", None, "a full fine-tune trains the base weights: not quantized")
    if budget_gib is None:
        return QuantizationChoice("none", None, "no GPU memory budget (CPU run): not quantized")
    usable = memory.usable_allocated_gib(budget_gib)
    eight_bit = "fp8" if fp8_gpu and fp8_available else "int8"
    size = f"{denoiser_params / 1e9:.1f} B-parameter denoiser at {resolution} px"
    for kind in ("none", eight_bit, "nf4"):
        est = estimate(kind)
        if est <= usable:
            how = "unquantized" if kind == "none" else kind
            return QuantizationChoice(kind, est, f"{size}: about {est:.1f} GiB {how}, within the {usable:.1f} GiB "
                                                 f"that {budget_gib:.1f} GiB of GPU memory leave")  # fmt: skip
    # the loop's last estimate is NF4's
    return QuantizationChoice("nf4", est, f"{size}: about {est:.1f} GiB even in nf4 (the smallest), more than the "
                                          f"{usable:.1f} GiB that {budget_gib:.1f} GiB of GPU memory leave")  # fmt: skip


def table_estimate(model_shape: str | None, kind: str, resolution: int, samples_per_step: int,
                   gradient_checkpointing: bool, *, table: dict | None = None) -> float | None:  # fmt: skip
    """The memory table's peak (GiB) of a LoRA run of ``model_shape`` with its denoiser stored as ``kind``; None
    when the shape or the configuration is not in the table (``table``: the committed one when None)."""
    if model_shape is None:
        return None
    from training import memory

    precision = "bf16" if model_shape in memory.BF16_SHAPES else "fp16"
    return memory.lookup(model_shape, "dreambooth-lora", resolution, samples_per_step,
                         gradient_checkpointing=gradient_checkpointing, precision=precision,
                         quantized_base=None if kind == "none" else kind, table=table)  # fmt: skip
