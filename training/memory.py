"""Peak GPU memory per training configuration, from the committed table (torch-free lookup; product code reads it).

The table (``training/memory_table.json``) holds the estimated peak GPU memory (``torch.cuda.max_memory_allocated``)
of the configurations the form offers. It is written by a developer tool, the CPU estimator with fake CUDA tensors
(``python -m tools.memory_estimate --write-table``, see ``tools/memory_estimate.py``), which takes long; the table is
committed and product code only reads it: the control plane's fit check (``scheduler.memory_fit``,
``ui.fit_check``), the trainer's memory plan (``training.precision``) and quantization plan
(``training.quantization_plan``).

The table records a digest of the training script (``training/train.py``) at the time it was estimated
(``script_digest``). ``stale_reason`` says when the script has changed since: the figures may then be stale. That is
a warning to show (the fit check adds it to its memory note), never a failure.

This module imports nothing from torch or the rest of the project.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("memory_table.json")
#: the training script whose digest the table records (``script_digest``)
SCRIPT_PATH = Path(__file__).with_name("train.py")
SD_SHAPES = ("sd15", "sdxl")
#: full-size shapes trained in bf16 (their rows are bf16, with quantized-base variants): FLUX.1 [dev], FLUX.2
#: [klein] 4B and 9B, Z-Image (6.2 B), Qwen-Image (20.4 B)
BF16_SHAPES = ("flux1", "klein4b", "klein9b", "zimage", "qwen-image")
SHAPES = SD_SHAPES + BF16_SHAPES
#: the resolution a configuration of a built-in shape defaults to (SD: native; the others: their family's default)
NATIVE_RESOLUTION = {"sd15": 512, "sdxl": 1024, "flux1": 512, "klein4b": 512, "klein9b": 512, "zimage": 1024,
                     "qwen-image": 1024}  # fmt: skip
#: the keys a table row is matched on (``lookup``)
ROW_KEYS = ("model_shape", "recipe", "resolution", "batch_size", "precision", "prior_preservation",
            "train_text_encoder", "gradient_checkpointing", "use_8bit_adam", "quantized_base")  # fmt: skip
#: the quantized storages the table holds rows for; fp8 stores a byte per weight as int8 does (its row is int8's)
TABLE_QUANTIZED = ("int8", "nf4")
#: what ``stale_reason`` says when the training script changed after the table was estimated
STALE_WARNING = "estimated before training/train.py last changed: the figures may be stale"


# ================================================================================================ the table
def row_key(row: dict[str, Any]) -> tuple:
    """The values of ``ROW_KEYS`` of a table row or a ``memory_estimate`` record (no ``quantized_base``: None)."""
    return tuple(row.get(k) for k in ROW_KEYS)


def _table_quantized(kind: str | None) -> str | None:
    """The table's storage for a quantized base: fp8 is looked up as int8 (a byte per weight too); "none" is None."""
    return None if kind in (None, "none") else "int8" if kind == "fp8" else kind


def load_table(path: Path = TABLE_PATH) -> dict[str, Any]:
    """The committed table ({"rows": [...], "fingerprint": ..., "script_digest": ..., ...}); an empty one when the
    file is missing."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"rows": []}


def _scaled(row: dict[str, Any], resolution: int, batch_size: int) -> float:
    """A row's peak moved to another resolution / batch: the fixed part (``fixed_gib``) as is, the rest (mostly
    activations, which with flash / memory-efficient attention grow with the number of latent pixels) by area and
    by batch; never below ``floor_gib`` (weights, gradients and optimizer state right after the optimizer step,
    the same at any resolution)."""
    fixed = float(row["fixed_gib"])
    variable = max(float(row["estimated_peak_gib"]) - fixed, 0.0)
    scaled = fixed + variable * (resolution / row["resolution"]) ** 2 * (batch_size / row["batch_size"])
    return max(scaled, float(row.get("floor_gib", fixed)))


def lookup(
    model_shape: str,
    recipe: str,
    resolution: int,
    batch_size: int = 1,
    prior_preservation: bool = False,
    train_text_encoder: bool = False,
    gradient_checkpointing: bool = False,
    use_8bit_adam: bool = False,
    precision: str = "fp16",
    quantized_base: str | None = None,
    *,
    table: dict[str, Any] | None = None,
) -> float | None:
    """Estimated peak GPU memory (GiB) of a configuration from the table; None when the table has no row for its
    model shape, recipe, precision, prior, text-encoder, checkpointing and 8-bit-Adam settings.

    An exact row is returned as is. Otherwise the row of the nearest resolution (then batch size) with the same
    other settings is scaled (``_scaled``): exact at the tabled points, an approximation in between (the share of
    activations that does not grow with the area, e.g. text-encoder activations, is small)."""
    rows = (table if table is not None else load_table())["rows"]
    want = {"model_shape": model_shape, "recipe": recipe, "resolution": int(resolution), "batch_size": int(batch_size),
            "precision": precision, "prior_preservation": bool(prior_preservation),
            "train_text_encoder": bool(train_text_encoder), "gradient_checkpointing": bool(gradient_checkpointing),
            "use_8bit_adam": bool(use_8bit_adam), "quantized_base": _table_quantized(quantized_base)}  # fmt: skip
    same = [r for r in rows if all(r.get(k) == want[k] for k in ROW_KEYS if k not in ("resolution", "batch_size"))]
    if not same:
        return None
    for r in same:
        if r["resolution"] == want["resolution"] and r["batch_size"] == want["batch_size"]:
            return float(r["estimated_peak_gib"])
    best = min(same, key=lambda r: (abs(r["resolution"] - want["resolution"]), abs(r["batch_size"] - batch_size)))
    return _scaled(best, want["resolution"], want["batch_size"])


def table_row(model_shape: str, recipe: str, *, table: dict[str, Any] | None = None, **keys: Any) -> dict | None:
    """The exact table row with these keys (defaults: 512/1024 px native, batch 1, fp16, everything off)."""
    want = {"resolution": NATIVE_RESOLUTION.get(model_shape, 512), "batch_size": 1,
            "precision": "bf16" if model_shape in BF16_SHAPES else "fp16", "prior_preservation": False,
            "train_text_encoder": False, "gradient_checkpointing": False, "use_8bit_adam": False,
            "quantized_base": None, **keys, "model_shape": model_shape, "recipe": recipe}  # fmt: skip
    for r in (table if table is not None else load_table())["rows"]:
        if all(r.get(k) == want[k] for k in ROW_KEYS):
            return r
    return None


def shape_for_unet_params(unet_params: int) -> str | None:
    """The built-in shape whose UNet has this many parameters (within 2%), from the table; None if none does."""
    sizes = load_table().get("unet_params", {})
    for shape, n in sizes.items():
        if abs(unet_params - n) <= 0.02 * n:
            return shape
    return None


# ================================================================================================ staleness (a warning)
def script_digest(path: Path | None = None) -> str:
    """A digest of the training script's text (``training/train.py``), as the table records it."""
    text = Path(path or SCRIPT_PATH).read_text(encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def stale_reason(table: dict[str, Any] | None = None, script: Path | None = None) -> str | None:
    """``STALE_WARNING`` when the training script (``script``: ``training/train.py``) differs from the one the table
    (``table``: the committed one) was estimated with, else None. A warning, never an error: the figures are
    re-estimated with ``python -m tools.memory_estimate --write-table`` (long) when someone decides to."""
    recorded = (table if table is not None else load_table()).get("script_digest")
    try:
        current = script_digest(script)
    except OSError:
        return None  # no script to compare with (e.g. an installed copy without it): nothing to say
    if recorded is None or recorded != current:
        return STALE_WARNING
    return None


# ================================================================================================ usable memory
#: a CUDA context (driver, cuBLAS/cuDNN handles, kernels) lives outside PyTorch's allocator
CUDA_CONTEXT_GIB = 0.5
#: reserved / allocated: the caching allocator keeps freed blocks and splits them (diffusion training runs at
#: 1.05-1.3), and cuBLAS/cuDNN workspaces are not in the estimate
RESERVED_PER_ALLOCATED = 1.2


def usable_allocated_gib(device_gib: float) -> float:
    """The peak allocated memory (what the estimate predicts) that still fits a GPU whose total memory, as torch
    reports it, is ``device_gib``: minus the CUDA context, divided by the reserved-per-allocated headroom."""
    return max(device_gib - CUDA_CONTEXT_GIB, 0.0) / RESERVED_PER_ALLOCATED
