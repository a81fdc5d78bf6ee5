"""The trainer's peak host RAM per model shape, and whether a flavor's host RAM holds it.

The figures are the committed ``host_ram`` records of ``benchmarks/host_ram.py`` (``benchmarks/results/host_ram-*.jsonl``:
the trainer's own loading, caching and training start at full size). A flavor whose host RAM cannot hold them gets the
trainer SIGKILLed while it loads, on paid hardware: the form can refuse it up front. A shape too big to measure on the
benchmark's machine (Qwen-Image: a 41 GB transformer) has a figure derived instead (``DERIVATIONS``: its file sizes
and a measured shape with the same staged loading), labelled ``derived``. Standard library only (no torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from contract.flavors import FLAVORS, Flavor

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: a flavor holds a model when the measured peak is at most this share of its host RAM (room for CUDA's own host
#: memory, the data loader, Python's garbage and the difference between the Hub's GB and GiB)
MARGIN = 0.85
DEFAULT_RECIPE = "dreambooth-lora"
#: the loading path of a repo that ships fp16 variant files (the trainer reads frozen components from them)
PREFERRED_WEIGHTS = "fp16 variant"
#: the loading path of a base that bitsandbytes quantizes (8-bit or 4-bit): diffusers then loads the transformer onto
#: the current CUDA device shard by shard (its bitsandbytes quantizers' ``update_device_map``), so the host maps one
#: shard at a time, not the whole transformer. torchao's fp8 quantizes on the host: the unquantized path.
GPU_QUANTIZED = "bitsandbytes base"
#: the plan's quantization kinds (``training.memory_plan``) that load that way
GPU_QUANTIZED_KINDS = frozenset({"int8", "nf4"})
MEASURED, DERIVED = "measured", "derived"
GIB = 2**30


@dataclass(frozen=True)
class HostRamRecord:
    """One measured phase of one model shape."""

    model_shape: str
    recipe: str
    phase: str
    peak_rss_gib: float
    weights: str | None
    date: str


def read_records(results_dir: Path | None = None) -> list[HostRamRecord]:
    """The full-size ``host_ram`` records in ``results_dir`` (default: the committed results), file order kept.

    Tiny-model checks, failed runs and malformed lines are skipped."""
    folder = RESULTS_DIR if results_dir is None else Path(results_dir)
    out: list[HostRamRecord] = []
    for path in sorted(folder.glob("host_ram-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or rec.get("benchmark") != "host_ram" or rec.get("error"):
                continue
            shape, peak = rec.get("model_shape"), rec.get("peak_rss_gib")
            if not isinstance(shape, str) or shape.startswith("tiny") or not isinstance(peak, int | float) or peak <= 0:
                continue
            out.append(
                HostRamRecord(
                    shape,
                    str(rec.get("recipe", DEFAULT_RECIPE)),
                    str(rec.get("phase", "")),
                    float(peak),
                    rec.get("weights"),
                    str(rec.get("date", "")),
                )
            )
    return out


@dataclass(frozen=True)
class HostRamFigure:
    """A shape's peak host RAM (GiB) and where it comes from: ``MEASURED`` or ``DERIVED`` (``basis`` says how)."""

    gib: float
    source: str
    basis: str = ""


@dataclass(frozen=True)
class Derivation:
    """A shape's peak derived from a measured ``reference_shape`` with the same staged loading (the text side first,
    its encoders then freed; then the transformer, mapped from its files until it moves to the GPU): each phase's
    measured peak minus the weight bytes the reference maps in it, plus the target's. ``*_bytes``: (reference,
    target) file bytes of the text encoders (mapped while caching) and of the transformer; ``largest_shard_bytes``:
    the target transformer's largest shard (what a bitsandbytes base maps at a time)."""

    reference_shape: str
    reference_weights: str
    text_bytes: tuple[int, int]
    denoiser_bytes: tuple[int, int]
    largest_shard_bytes: int
    basis: str


DERIVATIONS: dict[str, Derivation] = {
    # Z-Image (measured, bf16 files) -> Qwen-Image: Qwen3-4B (4,022,468,096 parameters) -> the whole Qwen2.5-VL-7B
    # (8,292,166,656), 6,154,908,736 -> 20,430,401,088 transformer parameters, all stored in bf16; Qwen/Qwen-Image's
    # largest transformer shard (benchmarks/layouts/qwen-image.json).
    "qwen-image": Derivation(
        "zimage", "bf16 files", text_bytes=(2 * 4_022_468_096, 2 * 8_292_166_656),
        denoiser_bytes=(2 * 6_154_908_736, 2 * 20_430_401_088), largest_shard_bytes=4_989_364_312,
        basis="derived from Qwen-Image's bf16 file sizes and Z-Image's measured phases (its 41 GB transformer does "
        "not fit the benchmark machine's RAM)",
    ),  # fmt: skip
}


def _measured(recs: list[HostRamRecord], weights: str | None) -> list[HostRamRecord]:
    """The records of the newest measurement day on the loading path ``weights`` (None: "fp16 variant" where
    measured, else any)."""
    if weights is None and any(r.weights == PREFERRED_WEIGHTS for r in recs):
        weights = PREFERRED_WEIGHTS
    recs = [r for r in recs if weights is None or r.weights == weights]
    if not recs:
        return []
    newest = max(r.date for r in recs)
    return [r for r in recs if r.date == newest]


def derived_figure(model_shape: str, weights: str | None = None, *, recipe: str = DEFAULT_RECIPE,
                   results_dir: Path | None = None) -> HostRamFigure | None:  # fmt: skip
    """``model_shape``'s peak by its ``Derivation`` (None without one, or without the reference's ``cache`` and
    ``load_denoiser`` measurements): the highest of the text side (``cache``), the transformer's loading (the whole
    transformer; with ``weights`` ``GPU_QUANTIZED`` its largest shard) and the reference's other phases."""
    d = DERIVATIONS.get(model_shape)
    if d is None:
        return None
    recs = [r for r in read_records(results_dir) if r.model_shape == d.reference_shape and r.recipe == recipe]
    phases: dict[str, float] = {}
    for r in _measured(recs, d.reference_weights):
        phases[r.phase] = max(phases.get(r.phase, 0.0), r.peak_rss_gib)
    if "cache" not in phases or "load_denoiser" not in phases:
        return None
    text = phases["cache"] + (d.text_bytes[1] - d.text_bytes[0]) / GIB
    mapped = d.largest_shard_bytes if weights == GPU_QUANTIZED else d.denoiser_bytes[1]
    denoiser = phases["load_denoiser"] + (mapped - d.denoiser_bytes[0]) / GIB
    rest = [v for k, v in phases.items() if k not in ("cache", "load_denoiser")]
    return HostRamFigure(round(max(text, denoiser, *rest), 3), DERIVED, d.basis)


def host_ram_figure(
    model_shape: str,
    *,
    recipe: str = DEFAULT_RECIPE,
    weights: str | None = None,
    results_dir: Path | None = None,
) -> HostRamFigure | None:
    """The trainer's peak host RAM for ``model_shape``: the highest phase of its newest measurement day, else its
    derived figure (``derived_figure``); None when neither exists.

    ``weights`` picks the loading path: "fp16 variant" (a repo with ``*.fp16.safetensors`` files, as the SD 1.5 and
    SDXL base repos have: the trainer loads its frozen components from them), "fp32 files" (a repo without them) or
    ``GPU_QUANTIZED`` (never measured: derived where a derivation exists, else the unquantized figure, an upper
    bound). By default the "fp16 variant" figures where measured, else any (the highest)."""
    recs = [r for r in read_records(results_dir) if r.model_shape == model_shape and r.recipe == recipe]
    measured = _measured(recs, weights)
    if measured:
        return HostRamFigure(max(r.peak_rss_gib for r in measured), MEASURED)
    figure = derived_figure(model_shape, weights, recipe=recipe, results_dir=results_dir)
    if figure is None and weights == GPU_QUANTIZED:
        return host_ram_figure(model_shape, recipe=recipe, results_dir=results_dir)
    return figure


def host_ram_gib(
    model_shape: str,
    *,
    recipe: str = DEFAULT_RECIPE,
    weights: str | None = None,
    results_dir: Path | None = None,
) -> float | None:
    """``host_ram_figure``'s GiB (measured, else derived); None when there is neither."""
    figure = host_ram_figure(model_shape, recipe=recipe, weights=weights, results_dir=results_dir)
    return None if figure is None else figure.gib


def fits_host_ram(
    model_shape: str,
    flavor: str | Flavor,
    *,
    recipe: str = DEFAULT_RECIPE,
    weights: str | None = None,
    margin: float = MARGIN,
    results_dir: Path | None = None,
) -> bool | None:
    """Whether ``flavor``'s host RAM holds the trainer's peak for ``model_shape`` (``host_ram_gib``: measured, else
    derived) with ``margin`` to spare.

    None when that cannot be told: an unknown flavor, a flavor without a known RAM size, or no figure."""
    f = FLAVORS.get(flavor) if isinstance(flavor, str) else flavor
    if f is None or not f.ram_gib:
        return None
    peak = host_ram_gib(model_shape, recipe=recipe, weights=weights, results_dir=results_dir)
    if peak is None:
        return None
    return peak <= margin * f.ram_gib
