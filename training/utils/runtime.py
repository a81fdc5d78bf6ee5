"""Device, precision and memory set-up of a run, and what it reads back: stateless helpers."""

from __future__ import annotations

import gc

import torch

from training import memory
from training.precision import QuantizationChoice, device_budget_gib, plan_quantization, torchao_available


def training_device() -> torch.device:
    """The GPU this process trains on (under torchrun / accelerate launch: its local rank's), else the CPU. On a GPU
    the shapes are fixed, so cuDNN may pick the fastest kernels, and fp32 matmuls may use TF32."""
    from accelerate import PartialState

    device = PartialState(cpu=not torch.cuda.is_available()).device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def trainable_named_parameters(modules: dict[str, torch.nn.Module]) -> list[tuple[str, torch.Tensor]]:
    """(prefixed name, parameter) for every parameter that requires grad, in a stable order."""
    return [(f"{mn}.{pn}", t) for mn, m in modules.items() for pn, t in m.named_parameters() if t.requires_grad]


def denoiser_param_count(info) -> int:
    """The family's denoiser size: its ``denoiser_params`` class attribute, or, where that is 0 (a family whose
    size varies, e.g. FLUX.2 [klein] 4B / 9B), the parameters of the denoiser built from the model's config on the
    meta device (no memory, no weights read)."""
    family = info.family
    if family.denoiser_params:
        return int(family.denoiser_params)
    from accelerate import init_empty_weights

    cls = family.component_class(family.denoiser_name, info.index[family.denoiser_name][1])
    with init_empty_weights():
        model = cls.from_config(info.denoiser_config)
    return sum(t.numel() for t in model.parameters())


def choose_quantization(info, p, trainable: frozenset[str], device: torch.device, wdtype: torch.dtype,
                        resolution: int) -> QuantizationChoice:  # fmt: skip
    """``plan_quantization`` for this run: a LoRA run when no denoiser weight trains in place, the device budget
    (the task's ``memory_budget_gib`` or the GPU's memory; none without a GPU, where diffusers cannot quantize, so
    "auto" stays unquantized), the GPU's compute capability and the family's denoiser size."""
    family = info.family
    cuda = device.type == "cuda"
    denoiser_params = denoiser_param_count(info)  # once: a family whose size varies builds its denoiser to count
    return plan_quantization(
        p.quantize_base,
        lora=family.denoiser_name not in trainable,
        denoiser_params=denoiser_params,
        budget_gib=device_budget_gib(device, p.memory_budget_gib) if cuda else None,
        compute_capability=tuple(torch.cuda.get_device_capability(device)) if cuda else None,
        fp8_available=torchao_available(),
        weight_bytes=torch.finfo(wdtype).bits // 8,
        resolution=resolution,
        samples_per_step=p.batch_size * (2 if p.prior_preservation else 1),
        gradient_checkpointing=p.gradient_checkpointing,
        model_shape=memory.shape_for_unet_params(denoiser_params),  # the memory table's, if any
    )  # fmt: skip


def peak_mem_gib(device: torch.device) -> float:
    """Peak GPU memory allocated so far (GiB); on the CPU, the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    except Exception:  # noqa: BLE001
        return 0.0


def free_memory() -> None:
    """Collect garbage and return cached GPU blocks (after a phase that held big temporaries)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
