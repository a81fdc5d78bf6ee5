"""Peak GPU memory of one training configuration, estimated on the CPU with fake CUDA tensors (no weights, no GPU).

A developer tool: ``python -m tools.memory_estimate [--model sd15 ...]`` estimates one configuration;
``python -m tools.memory_estimate --write-table`` re-estimates every configuration the form offers into
``training/memory_table.json``, which product code reads without torch (``training.memory``). Product code never
imports this module.

How: the pipeline's modules are built on the meta device from their configs (the built-in full-size SD 1.5 / SDXL shapes
of ``benchmarks/full_size.py``, the FLUX, Z-Image and Qwen-Image ones of ``benchmarks/full_size_flux.py``, or a
diffusers folder's ``config.json`` files), the recipe's own ``configure_trainable`` wraps them (LoRA through peft with
its targets and rank), and then, inside ``torch._subclasses.fake_tensor.FakeTensorMode``, every module the training
script keeps on the GPU gets empty ``cuda`` tensors in its dtypes (frozen in the mixed-precision dtype, trainable in
fp32, the VAE in fp32). The script's phases run on them with its own public functions (``family.encode_images``,
``utils.batches.text_cond`` / ``make_batch`` / ``conditioning``, ``train.compute_loss``, ``train.make_optimizer``,
``train.optimizer_step``, GradScaler, autocast): class-image generation (prior preservation), latent caching, ONE
training step (forward under autocast, loss, backward, clipping, optimizer step, ``zero_grad(set_to_none=True)``) and
one validation sample. A small ``TorchDispatchMode`` (``_Tracker``) counts the bytes of live fake-CUDA storages (by
storage identity, freed when the storage is finalised), each rounded up to the CUDA caching allocator's 512-byte
granularity, and keeps the peak: the estimate of ``torch.cuda.max_memory_allocated``. No allocator overhead factor is
added here (the fit check in ``scheduler.memory_fit`` adds its headroom for reserved-but-unallocated memory and the CUDA
context).

What a CUDA run does differently, and how it is modelled:

- Attention: PyTorch's SDPA on CUDA runs flash / memory-efficient kernels that keep only the output and a
  logsumexp (fp32, one per query row) for backward; on fake tensors it would take the math path and keep the
  whole attention matrix. While estimating, ``scaled_dot_product_attention`` calls the kernel CUDA would pick
  (``_cuda_sdpa``: aten's flash or memory-efficient op, whose fake implementations allocate what the kernels
  allocate), and the tracker adds their backward's fp32 workspace.
- Token masks: the stand-in tokenizer pads no prompt (``_FixedTokenizer``: every token real, the worst case), so
  indexing with a boolean mask (Z-Image keeps a prompt's real tokens: ``embeds[mask]``), whose result size depends
  on the mask's values, which fake tensors have none of, is counted as with an all-True mask (``_all_true``); a
  scalar read of such a mask (Qwen-Image cuts a batch to its longest prompt, ``int(mask.sum(1).max())``, and passes
  no mask when ``mask.all()``) is answered from the tensors' known fill values (``tools.fake_fill``).
- A CPU-only torch has no CUDA device guard or CUDA hooks, which autograd needs for fake CUDA tensors. A 20-line
  C++ shim (``_SHIM_SOURCE``: c10's ``FakeGuardImpl`` for CUDA and CUDA hooks answering "built") is compiled once
  with the system C++ compiler (about 3 s, cached) and loaded before torch is imported; this is why estimates run
  in a fresh process (``python -m tools.memory_estimate``, or ``estimate_many`` which starts one). With a CUDA
  build of torch on a GPU machine no shim is needed. While estimating, ``torch.cuda.is_available`` (and the few
  ``torch.cuda`` calls of autocast, GradScaler and bitsandbytes) answer as on a GPU.
- Values: fake tensors have none, so GradScaler never sees an overflow (every step is taken); the step's only
  data-dependent reads are of the token masks above.
- 8-bit Adam runs for real: bitsandbytes registers fake implementations of its optimizer kernels (state: 2 bytes
  per parameter, fp32 for tensors under 4096 elements); without bitsandbytes the script's Adafactor fallback runs.
- Order: ``configure_trainable`` runs on the meta modules before they get GPU tensors (peft moves its adapters
  with ``.to()``, which fake parameters refuse); class-image generation then sees the trainable weights as
  frozen, as it does in the training script, where they are made trainable later.
- The step is the training script's own sequence (``_training_step``): ``batches.make_batch`` (the family's
  ``draw_time``), the batch moved to the device, ``batches.conditioning`` under autocast, ``train.compute_loss``
  (the family's ``noisy_and_target``, ``predict``, ``loss_weights``), ``train.optimizer_step``, then
  ``zero_grad(set_to_none=True)``. accelerate's wrapping of the denoiser (fp32 copies of its outputs) is left out:
  a prediction-sized tensor.
- Not counted: cuBLAS/cuDNN workspaces (tens of MB) and anything outside PyTorch's allocator.
- Accuracy: run in the layout of diffusers' example scripts (``layout="diffusers-script"``) on SD 1.5 at 512 px,
  the step estimates 4.17 / 4.23 GiB against their measured 4.28 / 4.33 GiB (LoRA + prior preservation, + text
  encoder LoRA); see tests/test_memory_estimate.py for the LoRA-only figure and the tolerances.
- A CUDA build of torch on a machine without a working GPU is not supported (its real CUDA guard is asked for
  streams); a CPU build with a C++ compiler, or a GPU machine, is.

Staleness: the table's ``fingerprint`` covers this file's source (with ``tools/fake_fill.py``) and the table's
configurations only (it changes when the estimator or its configurations change); the table also records the
training script's digest (``script_digest``), and ``training.memory.stale_reason`` warns when ``training/train.py``
has changed since (the figures may then be stale; re-estimating is a decision, not a test failure). This module
imports no torch at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.memory import BF16_SHAPES, NATIVE_RESOLUTION, ROW_KEYS, SHAPES, TABLE_PATH, TABLE_QUANTIZED, script_digest

ROOT = Path(__file__).resolve().parents[1]
#: the estimator's helper that answers scalar reads of fake tensors (its source is part of the fingerprint)
FAKE_FILL_PATH = Path(__file__).with_name("fake_fill.py")
RESULTS_DIR = ROOT / "benchmarks" / "results"
GIB = 2**30
#: the CUDA caching allocator hands out blocks in multiples of 512 bytes (what max_memory_allocated counts)
ALLOC_GRANULE = 512
PHASES = ("class_images", "caching", "training", "sampling")
DEVICE_LABEL = "cpu (fake CUDA)"


# ================================================================================================ configuration
@dataclass(frozen=True)
class MemoryConfig:
    """One training configuration to estimate. ``model``: a built-in shape (``training.memory.SHAPES``) or a local
    diffusers folder (configs only)."""

    model: str = "sd15"
    recipe: str = "dreambooth-lora"
    resolution: int | None = None  # None: the model's native resolution
    batch_size: int = 1
    precision: str = "fp16"  # fp16 | bf16 | fp32
    prior_preservation: bool = False
    train_text_encoder: bool = False
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    rank: int = 4
    #: validation samples during training (the form always asks for one): the "sampling" phase
    samples: bool = True
    #: "trainer": this project's trainer; "diffusers-script": frozen VAE and text encoder(s) stay on the GPU in the
    #: mixed-precision dtype during the step and only the step is estimated, as diffusers' example scripts run (to
    #: compare with their published peaks)
    layout: str = "trainer"
    #: the frozen denoiser stored quantized (QLoRA: "nf4", "int8", "fp8"; None: in the mixed-precision dtype). Fake
    #: tensors cannot run bitsandbytes: such a configuration is derived from its unquantized twin (``_quantized``)
    quantized_base: str | None = None

    @property
    def model_shape(self) -> str:
        return self.model if self.model in SHAPES else Path(self.model).name

    def native_resolution(self) -> int:
        """``NATIVE_RESOLUTION`` for the built-in shapes; a folder's UNet sample size times its VAE's scale factor."""
        if self.model in NATIVE_RESOLUTION:
            return NATIVE_RESOLUTION[self.model]
        folder = Path(self.model)
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return int(unet.get("sample_size", 64)) * 2 ** (len(vae.get("block_out_channels", [1, 1, 1, 1])) - 1)

    @property
    def effective_resolution(self) -> int:
        return self.resolution or self.native_resolution()

    def row_key(self) -> tuple:
        """The values of ``ROW_KEYS`` for this configuration (how its table row is found)."""
        return (self.model_shape, self.recipe, self.effective_resolution, self.batch_size, self.precision,
                self.prior_preservation, self.train_text_encoder, self.gradient_checkpointing, self.use_8bit_adam,
                self.quantized_base)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown memory config key(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass
class MemoryEstimate:
    """The estimate for one configuration. Sizes in GiB unless named ``*_bytes``."""

    config: MemoryConfig
    peak_gib: float
    phases_gib: dict[str, float]
    #: bytes on the GPU during the training step that do not depend on resolution or batch: module weights, the
    #: optimizer state after the step, GradScaler and cached prompt embeddings
    fixed_gib: float
    trainable_params: int
    param_bytes: int  # trainable parameters (fp32 master weights), as allocated
    grad_bytes: int  # their gradients after backward, as allocated
    optimizer_bytes: int  # optimizer state after one step, as allocated
    frozen_bytes: int  # frozen weights and buffers on the GPU during the step
    optimizer: str
    seconds: float
    versions: dict[str, str] = field(default_factory=dict)
    #: the frozen denoiser's parameters, the bytes of its frozen Linear weights (what a quantized base stores in
    #: fewer bits) and of the largest of them (dequantized for each matmul)
    denoiser_params: int = 0
    denoiser_linear_bytes: int = 0
    largest_linear_bytes: int = 0
    #: how a quantized configuration was derived from its unquantized twin (None: estimated itself)
    derived: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryEstimate:
        data = dict(data)
        data["config"] = MemoryConfig.from_dict(data["config"])
        return cls(**data)

    def record(self, date: str | None = None, measured_peak_gib: float | None = None) -> dict[str, Any]:
        """The ``memory_estimate`` benchmark record (format: ../shared/benchmarks/README.md)."""
        c = self.config
        return {
            "benchmark": "memory_estimate",
            "model_shape": c.model_shape,
            "recipe": c.recipe,
            "resolution": c.effective_resolution,
            "batch_size": c.batch_size,
            "precision": c.precision,
            "prior_preservation": c.prior_preservation,
            "train_text_encoder": c.train_text_encoder,
            "gradient_checkpointing": c.gradient_checkpointing,
            "use_8bit_adam": c.use_8bit_adam,
            "quantized_base": c.quantized_base,
            "estimated_peak_gib": round(self.peak_gib, 3),
            "measured_peak_gib": measured_peak_gib,
            "device": DEVICE_LABEL,
            "date": date or dt.date.today().isoformat(),
        }


# ========================================================================================= the table's configurations
FLUX_RANK = 16  # the FLUX, Z-Image and Qwen-Image families' default LoRA rank (``FamilyDefaults.rank``)


def _grid() -> list[MemoryConfig]:
    """The configurations the form offers (its resolutions, recipes, prior on/off; fp16 as on a T4; rank 4), each
    with and without gradient checkpointing, plus 8-bit Adam for full fine-tunes and the text-encoder variants of
    the T4 configurations."""
    rows: list[MemoryConfig] = []
    for model, resolutions in (("sd15", (512, 768)), ("sdxl", (1024,))):
        for recipe in ("dreambooth-lora", "dreambooth-full"):
            for res in resolutions:
                for prior in (False, True):
                    for gc in (False, True):
                        adam8s = (False, True) if recipe == "dreambooth-full" else (False,)
                        for adam8 in adam8s:
                            rows.append(MemoryConfig(model, recipe, res, 1, "fp16", prior, False, gc, adam8))
    for gc in (False, True):  # T4: SD 1.5 LoRA + text encoder + prior preservation (and without prior)
        for prior in (False, True):
            rows.append(MemoryConfig("sd15", "dreambooth-lora", 512, 1, "fp16", prior, True, gc, False))
    for model in BF16_SHAPES:  # FLUX, Z-Image, Qwen-Image LoRA in bf16 at rank 16, unquantized and quantized bases
        for res in (512, 1024):
            for gc in (False, True):
                for quant in (None, *TABLE_QUANTIZED):
                    rows.append(MemoryConfig(model, "dreambooth-lora", res, 1, "bf16", False, False, gc, False,
                                             FLUX_RANK, quantized_base=quant))  # fmt: skip
    return rows


TABLE_CONFIGS: tuple[MemoryConfig, ...] = tuple(_grid())
#: the rows CI re-estimates (the rest is checked by the fingerprint): each built-in recipe's default on its default
#: flavor, and one prior + text-encoder + gradient-checkpointing row; FLUX.2 [klein] 4B and Z-Image (at 1024 px with
#: checkpointing, which the trainer's plan turns on for it on its default L40S)
CI_SUBSET: tuple[MemoryConfig, ...] = (
    MemoryConfig("sd15", "dreambooth-lora", 512),
    MemoryConfig("sd15", "dreambooth-full", 512),
    MemoryConfig("sdxl", "dreambooth-lora", 1024),
    MemoryConfig("sd15", "dreambooth-lora", 512, 1, "fp16", True, True, True, False),
    MemoryConfig("klein4b", "dreambooth-lora", 512, 1, "bf16", rank=FLUX_RANK),
    MemoryConfig("zimage", "dreambooth-lora", 1024, 1, "bf16", gradient_checkpointing=True, rank=FLUX_RANK),
)


def row_of(estimate: MemoryEstimate) -> dict[str, Any]:
    """A table row: the lookup keys, the estimate and its breakdown."""
    c = estimate.config
    return {
        **{k: v for k, v in estimate.record().items() if k in ROW_KEYS},
        "rank": c.rank,
        "estimated_peak_gib": round(estimate.peak_gib, 3),
        "phases_gib": {k: round(v, 3) for k, v in estimate.phases_gib.items()},
        "fixed_gib": round(estimate.fixed_gib, 3),
        "floor_gib": round(estimate.fixed_gib + estimate.grad_bytes / GIB, 3),
        "trainable_params": estimate.trainable_params,
        "optimizer": estimate.optimizer,
        **({"derived": estimate.derived} if estimate.derived else {}),
    }


# ================================================================================================ fingerprint
def fingerprint() -> str:
    """What the estimates depend on that this tool owns: this file's source text, its fake tensors' fill values
    (``tools/fake_fill.py``) and the table's configurations. (The training script's changes are tracked apart, as a
    warning: the table's ``script_digest``.)"""
    h = hashlib.sha256()
    for source in (Path(__file__), FAKE_FILL_PATH):
        h.update(source.read_text(encoding="utf-8").encode("utf-8") + b"\0")
    h.update(json.dumps([c.to_dict() for c in TABLE_CONFIGS], sort_keys=True).encode())
    return h.hexdigest()[:16]


# ================================================================================================ fake CUDA shim
_SHIM_SOURCE = r"""
// Lets a CPU-only PyTorch run autograd on fake CUDA tensors (tools.memory_estimate): a no-op CUDA device guard
// (c10's FakeGuardImpl) and CUDA hooks that say "built", so the autograd engine finds a stream for them.
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

namespace {
C10_REGISTER_GUARD_IMPL(CUDA, c10::impl::FakeGuardImpl<c10::DeviceType::CUDA>);

struct CUDAHooks final : at::CUDAHooksInterface {  // the name the hooks registry is asked for
  explicit CUDAHooks(at::CUDAHooksArgs) {}
  void init() const override {}
  bool isBuilt() const override { return true; }
  bool hasCUDA() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex current_device() const override { return 0; }
  int getNumGPUs() const override { return 1; }
};
}  // namespace

namespace at {
REGISTER_CUDA_HOOKS(CUDAHooks);
}
"""


class FakeCudaUnavailable(RuntimeError):
    """The CPU estimator cannot run here (no C++ compiler for the shim, or torch was imported before it)."""


def _torch_dir() -> Path:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise FakeCudaUnavailable("torch is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def torch_has_cuda_build() -> bool:
    """True for a CUDA build of torch, read from ``torch/version.py`` (without importing torch)."""
    text = (_torch_dir() / "version.py").read_text()
    m = re.search(r"^cuda[^=\n]*=\s*(.+)$", text, re.M)
    return bool(m) and m.group(1).strip() not in ("None", "''", '""')


def _shim_path() -> Path:
    from importlib.metadata import version

    key = hashlib.sha256(f"{version('torch')}|{_torch_dir()}|{_SHIM_SOURCE}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dreambooth-trainer"
    return cache / f"fake_cuda_{key}.so"


def build_shim() -> Path:
    """Compile the shim (once per torch install; about 3 s) and return the shared library's path."""
    out = _shim_path()
    if out.is_file():
        return out
    tdir = _torch_dir()
    cxx = os.environ.get("CXX", "g++")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fake_cuda.cpp"
        src.write_text(_SHIM_SOURCE)
        part = Path(tmp) / out.name
        cmd = [cxx, "-shared", "-fPIC", "-O1", "-std=c++17", f"-I{tdir / 'include'}", str(src), f"-L{tdir / 'lib'}",
               "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{tdir / 'lib'}", "-o", str(part)]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FakeCudaUnavailable(f"cannot compile the fake-CUDA shim with {cxx!r}: {e}") from e
        if proc.returncode != 0:
            raise FakeCudaUnavailable(f"compiling the fake-CUDA shim failed:\n{proc.stderr[-2000:]}")
        os.replace(part, out)
    return out


def ensure_fake_cuda() -> None:
    """Make fake CUDA tensors trainable in this process: nothing to do with a CUDA build of torch; with a CPU build,
    load the shim, which must happen before torch is imported (``FakeCudaUnavailable`` otherwise)."""
    if torch_has_cuda_build():
        return
    if "torch" in sys.modules:
        import torch

        if torch._C._accelerator_getAccelerator() is not None:  # loaded earlier in this process
            return
        raise FakeCudaUnavailable("torch was imported before the fake-CUDA shim; run the estimate in a new process")
    import ctypes

    ctypes.CDLL(str(build_shim()), mode=ctypes.RTLD_GLOBAL)


# ================================================================================================ estimating (torch)
def _round(nbytes: int) -> int:
    return -(-int(nbytes) // ALLOC_GRANULE) * ALLOC_GRANULE


def _tensor_bytes(tensors: Iterable[Any]) -> int:
    """Allocated bytes of the distinct CUDA storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None and t.device.type == "cuda":
            st = t.untyped_storage()
            seen[id(st)] = _round(st.nbytes())
    return sum(seen.values())


def _ceil(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _all_true(indices: list[Any]) -> list[Any]:
    """``aten.index.Tensor``'s indices with each boolean mask (of one dimension or more) read as all True: the
    integer indices of every position it covers. Fake tensors hold no values, so the size of a masked selection is
    unknown to them; the stand-in tokenizer pads nothing, so every token mask is all True anyway."""
    import torch

    out: list[Any] = []
    for index in indices:
        if index is None or index.dtype != torch.bool or index.dim() == 0:
            out.append(index)
            continue
        axes = [torch.arange(n, device=index.device) for n in index.shape]
        out.extend(grid.reshape(-1) for grid in torch.meshgrid(*axes, indexing="ij"))
    return out


def _make_tracker():
    """The tracker class (defined lazily: it subclasses torch's TorchDispatchMode)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from tools.fake_fill import FillValues

    aten = torch.ops.aten
    attention_backward = (aten._scaled_dot_product_flash_attention_backward.default,
                          aten._scaled_dot_product_efficient_attention_backward.default)  # fmt: skip

    class _Tracker(TorchDispatchMode):
        """Bytes of live fake-CUDA storages: each counted once (by storage identity) when an op first returns it,
        released when the storage is finalised; ``peak`` is the maximum (per phase: ``phase_peak``). While an
        attention kernel's backward runs it also counts the kernel's fp32 workspace (query-gradient accumulator and
        softmax row sums, which its fake implementation does not allocate). A boolean-mask index is read as all True
        (``_all_true``); a scalar read of a tensor of one known value (the stand-in tokens' masks) is answered
        (``tools.fake_fill``)."""

        def __init__(self) -> None:
            super().__init__()
            self.fills = FillValues()
            self.live: dict[int, int] = {}
            self.current = 0
            self.peak = 0
            self.phase_peak = 0

        def _add(self, t: Any) -> None:
            if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
                return
            st = t.untyped_storage()
            key, size = id(st), _round(st.nbytes())
            old = self.live.get(key)
            if old == size:
                return
            if old is None:
                weakref.finalize(st, self._release, key)
            self.live[key] = size
            self.current += size - (old or 0)
            self.peak = max(self.peak, self.current)
            self.phase_peak = max(self.phase_peak, self.current)

        def _release(self, key: int) -> None:
            self.current -= self.live.pop(key, 0)

        def begin_phase(self) -> None:
            self.phase_peak = self.current

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            known, value = self.fills.read(func, args)
            if known:
                return value
            if func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
                args = (args[0], _all_true(args[1]), *args[2:])
            workspace = None
            if func in attention_backward:
                b, h, n, d = args[1].shape
                workspace = torch.empty(b * h * _ceil(n, 128) * (_ceil(d, 32) + 1), dtype=torch.float32,
                                        device=args[1].device)  # fmt: skip
                self._add(workspace)
            out = func(*args, **kwargs)
            self.fills.follow(func, args, kwargs, out)
            for t in tree_leaves(out):
                self._add(t)
            del workspace
            return out

    return _Tracker


def _cuda_sdpa(original):
    """``scaled_dot_product_attention`` as CUDA runs it: on fake tensors torch would take the math path (the whole
    attention matrix kept for backward); this calls the kernel CUDA picks instead, flash attention for fp16/bf16
    without a mask, else memory-efficient attention, whose fake implementations allocate what the kernels do
    (output, logsumexp; the gradients in backward). Inputs are cast to the autocast dtype first, as CUDA autocast
    does for SDPA."""
    import torch

    aten = torch.ops.aten

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != "cuda" or query.dim() != 4:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        half = query.dtype in (torch.float16, torch.bfloat16)
        d = query.shape[-1]
        if half and attn_mask is None and d % 8 == 0 and d <= 256 and value.shape[-1] == d:
            return aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, scale=scale)[0]
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~attn_mask, float("-inf")
            )
        elif attn_mask is not None:
            attn_mask = attn_mask.to(query.dtype)
        return aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale
        )[0]

    return sdpa


@contextlib.contextmanager
def _gpu_answers() -> Iterator[None]:
    """While estimating on a CPU build, ``torch.cuda`` answers as on a GPU for what the step asks: available,
    bf16-capable, and a no-op synchronize (bitsandbytes). Restored afterwards."""
    import torch

    if torch_has_cuda_build() and torch.cuda.is_available():
        yield
        return
    saved = {n: getattr(torch.cuda, n) for n in ("is_available", "is_bf16_supported", "synchronize")}
    torch.cuda.is_available = lambda: True
    torch.cuda.is_bf16_supported = lambda *a, **k: True
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.cuda, n, f)


@contextlib.contextmanager
def _cuda_attention() -> Iterator[None]:
    """``torch.nn.functional.scaled_dot_product_attention`` is ``_cuda_sdpa`` while estimating (a module attribute,
    so it also holds in the autograd threads that recompute checkpointed blocks)."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _cuda_sdpa(original)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _place(modules: Iterable[Any], device: str) -> None:
    """Give every parameter and buffer of ``modules`` a new empty tensor on ``device`` (same shape, dtype and
    requires_grad): "move to the GPU" (fake CUDA) or "move off it" (meta) without copying values."""
    import torch

    memo: dict[int, Any] = {}
    for module in modules:
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None:
                    if id(p) not in memo:
                        new = torch.empty(p.shape, dtype=p.dtype, device=device)
                        memo[id(p)] = torch.nn.Parameter(new, requires_grad=p.requires_grad)
                    m._parameters[name] = memo[id(p)]
            for name, b in list(m._buffers.items()):
                if b is not None:
                    if id(b) not in memo:
                        memo[id(b)] = torch.empty(b.shape, dtype=b.dtype, device=device)
                    m._buffers[name] = memo[id(b)]


class _Tokens(dict):
    """A tokenizer's answer: ``input_ids`` as an attribute and as a key."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


class _FixedTokenizer:
    """Stands in for a tokenizer: every prompt is ``max_length`` (default ``model_max_length``) token ids, none of
    them padding (shapes are what matter; attention covers every token, the worst case)."""

    pad_token_id = -1

    def __init__(self, model_max_length: int = 77):
        self.model_max_length = model_max_length

    def __call__(self, prompt: Any, max_length: int | None = None, **kwargs: Any) -> Any:
        import torch

        n = len(prompt) if isinstance(prompt, list) else 1
        return _Tokens(input_ids=torch.zeros(n, max_length or self.model_max_length, dtype=torch.long))

    def apply_chat_template(self, messages: list[dict], **kwargs: Any) -> str:
        return " ".join(m["content"] for m in messages)


_META_CACHE: dict[str, dict[str, Any]] = {}
#: the FLUX repos' FlowMatchEulerDiscreteScheduler config (dynamic shift)
FLOW_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                  "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}  # fmt: skip
#: Z-Image's (static shift 3)
ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
#: Qwen-Image's (dynamic exponential shift 0.5 .. 0.9 over 256 .. 8192 tokens, terminal sigma 0.02)
QWEN_IMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                        "max_shift": 0.9, "base_image_seq_len": 256, "max_image_seq_len": 8192, "shift_terminal": 0.02,
                        "time_shift_type": "exponential"}  # fmt: skip
#: the built-in bf16 shapes whose scheduler is not FLUX's
SHAPE_SCHEDULERS = {"zimage": ZIMAGE_SCHEDULER, "qwen-image": QWEN_IMAGE_SCHEDULER}


def _meta_modules(model: str) -> dict[str, Any]:
    """Fresh meta-device modules (unet, vae, text_encoder[, text_encoder_2]) and the pipeline index and scheduler
    config for a built-in shape or a diffusers folder (its config.json files only)."""
    import copy

    import torch

    if model not in _META_CACHE:
        if model in SHAPES and str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        if model in BF16_SHAPES:
            from benchmarks.full_size_flux import flux_modules, model_index

            with torch.device("meta"):
                mods = flux_modules(model)
            index = model_index(model)
            sched = dict(SHAPE_SCHEDULERS.get(model, FLOW_SCHEDULER))
        elif model in SHAPES:
            from benchmarks.full_size import full_size_modules

            with torch.device("meta"):
                mods = full_size_modules(model)
            sdxl = model == "sdxl"
            index = {"_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
                     "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                     "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"] if sdxl else [None, None]}  # fmt: skip
            # the scheduler of benchmarks/full_size.py
            sched = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                     "num_train_timesteps": 1000, "clip_sample": False}  # fmt: skip
        else:
            mods, index, sched = _meta_modules_from_folder(Path(model))
        _META_CACHE[model] = {"modules": mods, "index": index, "scheduler": sched}
    entry = _META_CACHE[model]
    return {"modules": copy.deepcopy(entry["modules"]), "index": entry["index"], "scheduler": entry["scheduler"]}


def _meta_modules_from_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from training.families import family_for
    from training.families.classes import component_class

    index = json.loads((folder / "model_index.json").read_text())
    names = family_for(index).text_encoder_names(index)
    with torch.device("meta"):
        mods: dict[str, Any] = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
        }
        for name in names:
            cls = component_class(index[name][1])
            mods[name] = cls(cls.config_class.from_pretrained(folder / name))
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    sched = {k: v for k, v in sched.items() if not k.startswith("_")}
    return mods, index, sched


def _trainable_components(recipe: Any, params: Any, text_encoder_names: list[str], family: Any = None) -> set[str]:
    """The components the recipe trains in place (``trainable_components``; older recipes: ``trains_unet_fully``)."""
    fn = getattr(recipe, "trainable_components", None)
    if callable(fn):
        return set(fn(params, family))
    if getattr(recipe, "trains_unet_fully", False):
        return {"unet", *(text_encoder_names if params.train_text_encoder else [])}
    return set()


def _meta_components(cfg: MemoryConfig, recipe: Any, params: Any, wdtype: Any) -> tuple[Any, set[str]]:
    """``training.models.Components`` on the meta device, in the dtypes the trainer loads them in."""
    import diffusers
    import torch

    from training.families import family_for
    from training.families.base import Components, ModelInfo

    built = _meta_modules(cfg.model)
    mods, index = built["modules"], built["index"]
    den = family_for(index).denoiser_name
    info = ModelInfo(cfg.model, index, dict(mods[den].config), dict(mods["vae"].config))
    family = info.family
    trainable = _trainable_components(recipe, params, info.text_encoder_names, type(family))
    diffusers_script = cfg.layout == "diffusers-script"
    unet_dtype = torch.float32 if den in trainable else wdtype
    text_dtype = torch.float32 if trainable & set(info.text_encoder_names) else wdtype
    if family.name == "sd":
        vae_dtype = wdtype if diffusers_script and not info.is_sdxl else torch.float32  # the trainer: VAE fp32
    else:
        vae_dtype = family.vae_dtype(wdtype)
    unet = mods[den].to(unet_dtype)
    vae = mods["vae"].to(vae_dtype)
    encoders = [mods[n].to(text_dtype) for n in info.text_encoder_names]
    for m in (unet, vae, *encoders):
        m.requires_grad_(False)
    # token lengths: CLIP's 77 (SD's encoders, FLUX.1's first), the family's sequence length for T5 / Qwen3
    seq = getattr(family, "max_sequence_length", 77)
    lengths = {"sd": [77] * len(encoders), "flux1": [77, seq]}.get(family.name, [seq] * len(encoders))
    scheduler_cls = getattr(diffusers, index["scheduler"][1]) if "scheduler" in index else diffusers.DDPMScheduler
    comps = Components(
        info, unet, vae, encoders, [_FixedTokenizer(n) for n in lengths], scheduler_cls(**built["scheduler"])
    )
    comps.extra["weight_dtype"] = wdtype
    _vae_loaded(comps)
    return comps, trainable


def _vae_loaded(comps: Any) -> None:
    """The family's ``on_vae_loaded`` where it has one (what it keeps of the VAE for the step), with the VAE's
    buffers given real CPU values first (a meta tensor has none to copy): FLUX.2's batch-norm statistics."""
    import torch

    hook = getattr(comps.family, "on_vae_loaded", None)
    if hook is None:
        return
    for m in comps.vae.modules():
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                fill = torch.ones if "var" in name else torch.zeros
                m._buffers[name] = fill(b.shape, dtype=b.dtype)
    hook(comps)


def estimate(config: MemoryConfig) -> MemoryEstimate:
    """Estimate ``config`` (in this process when fake CUDA works here, else in a new one)."""
    return estimate_many([config])[0]


def estimate_many(configs: list[MemoryConfig], timeout: float = 1800) -> list[MemoryEstimate]:
    """Estimate each configuration: in this process if fake CUDA tensors train here (a CUDA build, or the shim
    loaded before torch), else all of them in one new ``python -m tools.memory_estimate`` process."""
    try:
        ensure_fake_cuda()
        in_process = True
    except FakeCudaUnavailable:
        in_process = False
    if in_process:
        return [_estimate_here(c) for c in configs]
    cmd = [sys.executable, "-m", "tools.memory_estimate", "--configs-json", json.dumps([c.to_dict() for c in configs])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    results = [json.loads(x[9:]) for x in proc.stdout.splitlines() if x.startswith("ESTIMATE ")]
    if proc.returncode != 0 or len(results) != len(configs):
        raise RuntimeError(f"the memory estimate failed (exit code {proc.returncode}):\n{proc.stderr[-3000:]}")
    return [MemoryEstimate.from_dict(r) for r in results]


_ESTIMATED: dict[MemoryConfig, MemoryEstimate] = {}


def _estimate_here(cfg: MemoryConfig) -> MemoryEstimate:
    """Estimate ``cfg`` in this process (fake CUDA must work here); a quantized base is derived from its twin."""
    if cfg.quantized_base:
        twin = dataclasses.replace(cfg, quantized_base=None)
        if twin not in _ESTIMATED:
            _ESTIMATED[twin] = _estimate_fake(twin)
        return _quantized(_ESTIMATED[twin], cfg)
    return _estimate_fake(cfg)


def _quantized(e: MemoryEstimate, cfg: MemoryConfig) -> MemoryEstimate:
    """``cfg`` (a quantized base) from ``e``, the estimate of the same configuration unquantized: the frozen
    denoiser's Linear weights (what bitsandbytes / torchao quantize) take ``QUANT_BYTES`` a weight instead of the
    mixed-precision dtype's bytes in every phase that holds the denoiser, and one dequantized copy of the largest
    weight is live during each matmul. Activations, adapters and optimizer state are those of the twin."""
    from training.families import family_for
    from training.precision import QUANT_BYTES

    per = QUANT_BYTES[cfg.quantized_base]
    wbytes = 4 if cfg.precision == "fp32" else 2
    saved = e.denoiser_linear_bytes * (1.0 - per / wbytes)
    family = family_for(_meta_modules(cfg.model)["index"])
    staged = family.staged_loading and not cfg.train_text_encoder and not cfg.prior_preservation
    holding = [k for k in e.phases_gib if not (staged and k == "caching")]
    delta = (e.largest_linear_bytes - saved) / GIB
    phases = {k: (v + delta if k in holding else v) for k, v in e.phases_gib.items()}
    how = (f"derived from the unquantized estimate: the frozen denoiser's Linear weights "
           f"({e.denoiser_linear_bytes / GIB:.2f} GiB) at {per} bytes a weight instead of {wbytes}, plus one "
           f"dequantized {e.largest_linear_bytes / 2**20:.0f} MiB weight")  # fmt: skip
    return dataclasses.replace(
        e, config=cfg, peak_gib=max(phases.values()), phases_gib=phases, fixed_gib=e.fixed_gib - saved / GIB,
        frozen_bytes=int(e.frozen_bytes - saved), derived=how, seconds=0.0,
    )  # fmt: skip


def _estimate_fake(cfg: MemoryConfig) -> MemoryEstimate:
    import torch
    from diffusers.utils import logging as diffusers_logging
    from torch._subclasses.fake_tensor import FakeTensorMode

    from training.precision import weight_dtype_for
    from training.recipe_base import RunContext
    from training.recipes import get_recipe, load_recipe_modules
    from training.spec import TrainParams, TrainSpec

    ensure_fake_cuda()
    t0 = time.perf_counter()
    diffusers_logging.set_verbosity_error()  # casting meta modules with .to() warns about fp32 modules; none here
    load_recipe_modules()
    recipe = get_recipe(cfg.recipe)
    mp = {"fp16": "fp16", "bf16": "bf16", "fp32": "no"}[cfg.precision]
    params = TrainParams(
        rank=cfg.rank, resolution=cfg.effective_resolution, batch_size=cfg.batch_size, mixed_precision=mp,
        train_text_encoder=cfg.train_text_encoder, prior_preservation=cfg.prior_preservation,
        gradient_checkpointing=cfg.gradient_checkpointing, use_8bit_adam=cfg.use_8bit_adam,
        validation_prompts=["a photo of sks dog"] if cfg.samples else [],
    )  # fmt: skip
    spec = TrainSpec(task_id="memory-estimate", base_model=cfg.model, instance_prompt="a photo of sks dog",
                     images="/nonexistent", recipe=cfg.recipe,
                     class_prompt="a photo of a dog" if cfg.prior_preservation else None, params=params)  # fmt: skip
    ctx = RunContext(spec, Path(tempfile.gettempdir()) / "memory-estimate", progress=None)  # type: ignore[arg-type]
    wdtype = weight_dtype_for(mp)
    comps, _ = _meta_components(cfg, recipe, params, wdtype)
    modules = recipe.configure_trainable(comps, ctx)  # the recipe's own wrapping (LoRA targets, rank, fp32 casts)
    base = [(n, t) for n, t in comps.denoiser.named_parameters() if "lora_" not in n]
    frozen_linear = [m.weight for m in comps.denoiser.modules()
                     if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]  # fmt: skip
    sizes = {
        "denoiser_params": sum(t.numel() for _, t in base),
        "denoiser_linear_bytes": sum(w.numel() * w.element_size() for w in frozen_linear),
        "largest_linear_bytes": max((w.numel() * w.element_size() for w in frozen_linear), default=0),
    }
    tracker = _make_tracker()()

    class _FakeCuda(FakeTensorMode):
        avoid_device_init = True  # as with no GPU, whatever torch.cuda answers: never fold a constant onto a device

    with _gpu_answers(), _cuda_attention(), _FakeCuda(allow_non_fake_inputs=True), tracker:
        result = _run_phases(cfg, comps, modules, params, mp, wdtype, tracker)
    import diffusers

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    return MemoryEstimate(config=cfg, seconds=round(time.perf_counter() - t0, 1), versions=versions, **result, **sizes)


def _run_phases(cfg, comps, modules, params, mp, wdtype, tracker) -> dict[str, Any]:
    """The training script's GPU phases on fake CUDA, in its order; returns the fields of ``MemoryEstimate``."""
    import torch
    from PIL import Image

    from training.data import PreparedImage
    from training.train import make_optimizer
    from training.utils.batches import text_cond
    from training.utils.runtime import trainable_named_parameters
    from training.utils.sampling import CLASS_IMAGE_BATCH

    device = torch.device("cuda")
    diffusers_script = cfg.layout == "diffusers-script"
    train_te = cfg.train_text_encoder
    res = cfg.effective_resolution
    phases: dict[str, float] = {}
    encoders = comps.text_encoders
    family = comps.family
    # a staged family (FLUX) caches with its text side on the GPU and loads the denoiser only after that
    staged = family.staged_loading and not train_te and not cfg.prior_preservation
    # encoders the family frees after caching (samples then use cached conditioning): not back for samples
    freed = family.free_text_encoders_after_caching and not train_te

    _place([comps.vae, *encoders] if staged else [comps.denoiser, comps.vae, *encoders], "cuda")  # load
    if cfg.prior_preservation and not diffusers_script:  # generate class images (a batch of 4, CFG doubles it)
        tracker.begin_phase()
        trains = [t for m in modules.values() for t in m.parameters() if t.requires_grad]
        for t in trains:  # not yet trainable in the script at this point (autocast caches casts of trainable ones)
            t.requires_grad_(False)
        _generate_like(comps, CLASS_IMAGE_BATCH, res, mp, wdtype)
        for t in trains:
            t.requires_grad_(True)
        phases["class_images"] = tracker.phase_peak / GIB

    tracker.begin_phase()  # cache latents (one image at a time, with its flip) and prompt embeddings
    image = PreparedImage(Image.new("RGB", (res, res)), Path("x.png"), (res, res), (0, 0))
    if not diffusers_script:
        family.encode_images(comps, [image], res, params.random_flip)
    inst_cond = text_cond(comps, "a photo of sks dog", frozen=not train_te)
    cls_cond = text_cond(comps, "a photo of a dog", frozen=not train_te) if cfg.prior_preservation else None
    if freed:
        family.cache_before_release(comps)  # e.g. FLUX.2 [klein]'s empty negative prompt
    if not diffusers_script:
        phases["caching"] = tracker.phase_peak / GIB
        _place([comps.vae, *([] if train_te else encoders)], "meta")  # the training script moves them to the CPU
    if staged:
        _place([comps.denoiser], "cuda")  # load(parts=("denoiser",)).denoiser.to(device)

    named = trainable_named_parameters(modules)
    params_list = [t for _, t in named]
    if cfg.gradient_checkpointing:
        comps.denoiser.enable_gradient_checkpointing()
        if train_te:
            for te in encoders:
                te.gradient_checkpointing_enable()
    with torch._subclasses.fake_tensor.unset_fake_temporarily():  # bitsandbytes computes its quantization maps here
        optimizer = make_optimizer([{"params": params_list}], 1e-4, use_8bit=cfg.use_8bit_adam, device=device)
    scaler = torch.amp.GradScaler("cuda") if mp == "fp16" else None
    if scaler is not None:
        scaler._enabled = True
        # fake tensors have no value to test for inf: take every step (what a step without overflow does)
        scaler._maybe_opt_step = lambda opt, state, *a, **k: opt.step(*a, **k)

    tracker.begin_phase()
    sizes = _training_step(cfg, comps, modules, params, params_list, optimizer, scaler, inst_cond, cls_cond, mp,
                           wdtype)  # fmt: skip
    phases["training"] = tracker.phase_peak / GIB
    resident = [t for m in (comps.denoiser, comps.vae, *encoders) for t in (*m.parameters(), *m.buffers())]
    frozen_bytes = _tensor_bytes(t for t in resident if not t.requires_grad)
    fixed = tracker.current  # after zero_grad: weights, optimizer state, scaler, cached embeddings

    if cfg.samples and not diffusers_script:  # a validation sample with the training state on the GPU
        tracker.begin_phase()
        back = [comps.vae, *([] if train_te or freed else encoders)]
        _place(back, "cuda")
        comps.denoiser.eval()
        if family.name == "sd":
            _generate_like(comps, 1, res, mp, wdtype)
        else:
            _generate_like_flow(comps, inst_cond, res, mp, wdtype)
        comps.denoiser.train()
        phases["sampling"] = tracker.phase_peak / GIB
        _place(back, "meta")

    return {
        "peak_gib": max(phases.values()),
        "phases_gib": phases,
        "fixed_gib": fixed / GIB,
        "trainable_params": sum(t.numel() for t in params_list),
        "param_bytes": _tensor_bytes(params_list),
        "grad_bytes": sizes["grad_bytes"],
        "optimizer_bytes": sizes["optimizer_bytes"],
        "frozen_bytes": frozen_bytes,
        "optimizer": type(optimizer).__name__ + ("(fused)" if optimizer.defaults.get("fused") else ""),
    }


def _latent_channels(vae: Any) -> int:
    """The channels of the VAE's latents: ``latent_channels`` of an image VAE, ``z_dim`` of a video VAE
    (Qwen-Image's ``AutoencoderKLQwenImage``)."""
    cfg = vae.config
    return cfg["latent_channels"] if "latent_channels" in cfg else cfg["z_dim"]


def _training_step(cfg, comps, modules, p, params_list, optimizer, scaler, inst_cond, cls_cond, mp, wdtype):
    """One step as ``training.train.train`` runs it, with its public functions: ``batches.make_batch``, the batch
    moved to the device, ``batches.conditioning`` under autocast, ``compute_loss``, ``optimizer_step``, then
    ``zero_grad(set_to_none=True)``."""
    import functools

    import torch

    from training.families.base import LatentSet
    from training.train import compute_loss, optimizer_step
    from training.utils import batches

    device = torch.device("cuda")
    bs, h = cfg.batch_size, cfg.effective_resolution // comps.info.vae_scale_factor
    prior = cls_cond is not None
    train_te = cfg.train_text_encoder
    with torch._subclasses.fake_tensor.unset_fake_temporarily():  # the batch is drawn on the CPU from real latents
        zeros = torch.zeros(1, _latent_channels(comps.vae), h, h)
        tids = torch.zeros(1, 6)
        inst = LatentSet(zeros, zeros, zeros, zeros, tids)
        draw_time = functools.partial(comps.family.draw_time, comps=comps, params=p)
        batch = batches.make_batch(0, bs, inst, inst if prior else None, p, draw_time)
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    autocast = torch.autocast(device.type, dtype=wdtype, enabled=mp != "no")
    denoiser = modules[comps.family.denoiser_name]
    denoiser.train()
    with autocast:
        cond = batches.conditioning(comps, modules, inst_cond, cls_cond, bs, device, train_te)
    loss = compute_loss(comps, denoiser, batch, cond, p, prior=prior, autocast=autocast)
    optimizer_step(loss, optimizer, params_list, scaler, device)
    del loss
    grad_bytes = _tensor_bytes(t.grad for t in params_list)
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    optimizer_bytes = _tensor_bytes(state)
    optimizer.zero_grad(set_to_none=True)
    return {"grad_bytes": grad_bytes, "optimizer_bytes": optimizer_bytes}


def _generate_like(comps, n_images: int, res: int, mp: str, wdtype) -> None:
    """What SD's pipeline (``family.generate``, from ``training.utils.sampling``) keeps on the GPU for ``n_images``
    prompts: one denoising step (text encoders, the UNet on the classifier-free-guidance batch of 2n under autocast
    and no_grad), then the fp32 VAE decode of the n latents outside autocast."""
    import torch

    from training.models import encode_tokens, tokenize

    device = torch.device("cuda")
    h = res // comps.info.vae_scale_factor
    with torch.no_grad():
        with torch.autocast("cuda", dtype=wdtype, enabled=mp != "no"):
            ids = [torch.cat([t] * 2 * n_images) for t in tokenize(comps, "a prompt")]
            embeds, pooled = encode_tokens(comps, ids)
            latents = torch.empty(n_images, comps.denoiser.config.in_channels, h, h, device=device, dtype=embeds.dtype)
            kwargs = {}
            if comps.is_sdxl:
                time_ids = torch.zeros(2 * n_images, 6, device=device, dtype=embeds.dtype)
                kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
            t = torch.zeros((), dtype=torch.long, device=device)
            noise_pred = comps.denoiser(torch.cat([latents] * 2), t, embeds, **kwargs).sample
            uncond, text = noise_pred.chunk(2)
            latents = latents + (uncond + 7.5 * (text - uncond))  # guidance and the scheduler step (latent-sized)
            del noise_pred, uncond, text
        with torch.autocast("cuda", enabled=False):
            z = latents.to(device, torch.float32) / comps.vae.config.scaling_factor
            img = comps.vae.decode(z).sample
            del img


def _generate_like_flow(comps, cond, res: int, mp: str, wdtype) -> None:
    """What a FLUX pipeline keeps on the GPU for one sample from cached conditioning: one transformer step on a
    batch of one (``family.predict`` under no_grad; the base models' true CFG runs its two passes one after the
    other), then the VAE decode of the latents in the VAE's dtype (a video VAE's, Qwen-Image's: as one frame)."""
    import torch

    device = torch.device("cuda")
    family = comps.family
    h = res // comps.info.vae_scale_factor
    with torch.no_grad():
        with torch.autocast("cuda", dtype=wdtype, enabled=mp != "no"):
            raw = torch.zeros(1, _latent_channels(comps.vae), h, h, device=device)
            x = family.to_model_space(comps, raw)
            t = torch.zeros(1, device=device)
            tensors = {k: v.to(device) for k, v in cond.tensors.items() if v is not None}
            velocity = family.predict(comps, comps.denoiser, x, t, tensors, None)
            del velocity, x
        with torch.autocast("cuda", enabled=False):
            z = raw.to(comps.vae.dtype)
            img = comps.vae.decode(z.unsqueeze(2) if "temperal_downsample" in comps.vae.config else z).sample
            del img


# ================================================================================================ writing the table
ABOUT = (
    "Estimated peak GPU memory (GiB, max_memory_allocated) per configuration, from "
    "python -m tools.memory_estimate --write-table (fake CUDA tensors on the CPU; see tools/memory_estimate.py). "
    "LoRA rank 4 (SD) / 16 (FLUX, Z-Image); phases_gib: per trainer phase; fixed_gib: the part that does not grow with "
    "resolution; fingerprint: the estimator's code and configurations; script_digest: training/train.py when "
    "estimated (training.memory.stale_reason warns when it has changed since)."
)


def write_table(estimates: list[MemoryEstimate], path: Path = TABLE_PATH) -> dict[str, Any]:
    from importlib.metadata import version

    def v(name: str) -> str:
        try:
            return version(name)
        except Exception:  # noqa: BLE001
            return "not installed"

    unet_params = {}  # the denoiser's parameters per built-in shape (``shape_for_unet_params``)
    for e in estimates:
        c = e.config
        if c.model in SHAPES and e.denoiser_params:
            unet_params[c.model] = e.denoiser_params
    table = {
        "about": ABOUT,
        "fingerprint": fingerprint(),
        "script_digest": script_digest(),
        "versions": {n: v(n) for n in ("torch", "diffusers", "transformers", "peft", "bitsandbytes")},
        "unet_params": unet_params,
        "rows": [row_of(e) for e in estimates],
    }
    Path(path).write_text(json.dumps(table, indent=1) + "\n")
    return table


def write_records(estimates: list[MemoryEstimate], path: Path | None = None) -> Path:
    date = dt.date.today().isoformat()
    out = Path(path or RESULTS_DIR / f"memory_estimate-{date}-cpu.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for e in estimates:
            f.write(json.dumps(e.record(date)) + "\n")
    return out


# ================================================================================================ CLI
def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.memory_estimate", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sd15",
                    help=f"a built-in shape ({', '.join(SHAPES)}) or a local diffusers folder (configs only)")  # fmt: skip
    ap.add_argument("--recipe", default="dreambooth-lora")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    ap.add_argument("--prior", action="store_true", help="prior preservation (class images generated)")
    ap.add_argument("--text-encoder", action="store_true", help="train the text encoder(s) too")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--8bit-adam", dest="adam8", action="store_true")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--no-samples", action="store_true", help="no validation sample during training")
    ap.add_argument("--layout", choices=("trainer", "diffusers-script"), default="trainer")
    ap.add_argument(
        "--quantized-base",
        choices=("nf4", "int8", "fp8"),
        default=None,
        help="the frozen denoiser quantized (derived from the unquantized estimate)",
    )
    ap.add_argument("--json", action="store_true", help="print the whole estimate as JSON")
    ap.add_argument("--write-table", action="store_true", help=f"re-estimate every table row into {TABLE_PATH.name}")
    ap.add_argument("--records", default=None, help="with --write-table: the memory_estimate records file")
    ap.add_argument("--restamp", action="store_true",
                    help="re-estimate the CI subset; if every row is within 1%% of the table, stamp the table with this "
                         "estimator's fingerprint and training/train.py's digest (no other row re-estimated)")  # fmt: skip
    ap.add_argument("--add-missing", action="store_true",
                    help="estimate only the table's configurations that have no row yet and append their rows (the "
                         "other rows stay as they are); then --restamp")  # fmt: skip
    ap.add_argument("--configs-json", default=None, help=argparse.SUPPRESS)  # estimate_many's child mode
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        ensure_fake_cuda()
    except FakeCudaUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.configs_json:
        for data in json.loads(args.configs_json):
            print("ESTIMATE " + json.dumps(_estimate_here(MemoryConfig.from_dict(data)).to_dict()), flush=True)
        return 0
    if args.restamp:
        return restamp()
    if args.add_missing:
        return add_missing()
    if args.write_table:
        estimates = []
        for cfg in TABLE_CONFIGS:
            e = _estimate_here(cfg)
            estimates.append(e)
            print(json.dumps(row_of(e) | {"seconds": e.seconds}), flush=True)
        write_table(estimates)
        out = write_records([e for e in estimates if e.config in RECORD_CONFIGS], args.records)
        print(f"wrote {TABLE_PATH} and {out}")
        return 0
    cfg = MemoryConfig(args.model, args.recipe, args.resolution, args.batch_size, args.precision, args.prior,
                       args.text_encoder, args.gradient_checkpointing, args.adam8, args.rank, not args.no_samples,
                       args.layout, args.quantized_base)  # fmt: skip
    e = _estimate_here(cfg)
    if args.json:
        print(json.dumps(e.to_dict(), indent=1))
    else:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in e.phases_gib.items())
        print(f"estimated peak GPU memory: {e.peak_gib:.2f} GiB ({phases}); optimizer {e.optimizer}; "
              f"{e.trainable_params:,} trainable parameters; {e.seconds:.0f} s")  # fmt: skip
    return 0


def restamp(tolerance: float = 0.01) -> int:
    """After a change that should not move the estimates (a refactor of this file or of ``training/train.py``):
    re-estimate ``CI_SUBSET`` and, when every row is within ``tolerance`` of the committed table, write the new
    fingerprint and script digest into it. Prints each row; exit code 1 (table untouched) when one moved."""
    from training import memory

    digest = memory.script_digest()
    table = memory.load_table()
    worst = 0.0
    for cfg, e in zip(CI_SUBSET, estimate_many(list(CI_SUBSET)), strict=True):
        row = next(r for r in table["rows"] if memory.row_key(r) == cfg.row_key())
        gap = abs(e.peak_gib - row["estimated_peak_gib"]) / row["estimated_peak_gib"]
        worst = max(worst, gap)
        print(f"{cfg.row_key()}: fresh {e.peak_gib:.3f} GiB, table {row['estimated_peak_gib']:.3f} GiB ({gap:.2%})")
    if worst > tolerance or memory.script_digest() != digest:
        print("not restamped: an estimate moved (run --write-table) or training/train.py changed meanwhile")
        return 1
    table["fingerprint"], table["script_digest"] = fingerprint(), digest
    TABLE_PATH.write_text(json.dumps(table, indent=1) + "\n")
    print(f"restamped {TABLE_PATH}")
    return 0


def add_missing(path: Path = TABLE_PATH) -> int:
    """After configurations were added to ``TABLE_CONFIGS`` (a new shape): estimate only those without a row in the
    table at ``path`` and append their rows (and their shape's ``unet_params``); the other rows are left byte for
    byte. The fingerprint is not touched: ``--restamp`` then checks the CI subset and stamps the table."""
    from training import memory

    table = memory.load_table(path)
    have = {memory.row_key(r) for r in table["rows"]}
    missing = [c for c in TABLE_CONFIGS if c.row_key() not in have]
    for cfg in missing:
        e = _estimate_here(cfg)
        table["rows"].append(row_of(e))
        if cfg.model in SHAPES and e.denoiser_params:
            table.setdefault("unet_params", {})[cfg.model] = e.denoiser_params
        print(json.dumps(row_of(e) | {"seconds": e.seconds}), flush=True)
    table["about"] = ABOUT
    Path(path).write_text(json.dumps(table, indent=1) + "\n")
    print(f"added {len(missing)} row(s) to {path}; now run python -m tools.memory_estimate --restamp")
    return 0


#: the configurations written as ``memory_estimate`` records: each built-in recipe's default and the T4 ones
RECORD_CONFIGS: tuple[MemoryConfig, ...] = (
    MemoryConfig("sd15", "dreambooth-lora", 512),
    MemoryConfig("sd15", "dreambooth-full", 512),
    MemoryConfig("sdxl", "dreambooth-lora", 1024),
    MemoryConfig("sd15", "dreambooth-full", 512, gradient_checkpointing=True),
    MemoryConfig("sd15", "dreambooth-full", 512, gradient_checkpointing=True, use_8bit_adam=True),
    MemoryConfig("sd15", "dreambooth-lora", 512, prior_preservation=True, train_text_encoder=True),
    MemoryConfig("sd15", "dreambooth-lora", 512, prior_preservation=True, train_text_encoder=True,
                 gradient_checkpointing=True),
    MemoryConfig("sdxl", "dreambooth-lora", 1024, gradient_checkpointing=True),
    *(MemoryConfig("flux1", "dreambooth-lora", 512, precision="bf16", gradient_checkpointing=True, rank=FLUX_RANK,
                   quantized_base=q) for q in (None, *TABLE_QUANTIZED)),
    MemoryConfig("klein4b", "dreambooth-lora", 512, precision="bf16", rank=FLUX_RANK),
    *(MemoryConfig("klein9b", "dreambooth-lora", 512, precision="bf16", gradient_checkpointing=True, rank=FLUX_RANK,
                   quantized_base=q) for q in (None, "int8")),
)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
