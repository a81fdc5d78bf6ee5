"""The trainer's measured peak host RAM per model shape, and whether a flavor's host RAM holds it.

The figures are the committed ``host_ram`` records of ``benchmarks/host_ram.py`` (``benchmarks/results/host_ram-*.jsonl``:
the trainer's own loading, caching and training start at full size). A flavor whose host RAM cannot hold them gets the
trainer SIGKILLed while it loads, on paid hardware: the form can refuse it up front. Standard library only (no torch).
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


def host_ram_gib(
    model_shape: str,
    *,
    recipe: str = DEFAULT_RECIPE,
    weights: str | None = None,
    results_dir: Path | None = None,
) -> float | None:
    """The trainer's peak host RAM (GiB) for ``model_shape`` ("sd15", "sdxl"): the highest phase of its newest
    measurement day; None when never measured.

    ``weights`` picks the loading path: "fp16 variant" (a repo with ``*.fp16.safetensors`` files, as the SD 1.5 and
    SDXL base repos have: the trainer loads its frozen components from them) or "fp32 files" (a repo without them).
    By default the "fp16 variant" figures where measured, else any."""
    recs = [r for r in read_records(results_dir) if r.model_shape == model_shape and r.recipe == recipe]
    if weights is None and any(r.weights == PREFERRED_WEIGHTS for r in recs):
        weights = PREFERRED_WEIGHTS
    recs = [r for r in recs if weights is None or r.weights == weights]
    if not recs:
        return None
    newest = max(r.date for r in recs)
    return max(r.peak_rss_gib for r in recs if r.date == newest)


def fits_host_ram(
    model_shape: str,
    flavor: str | Flavor,
    *,
    recipe: str = DEFAULT_RECIPE,
    weights: str | None = None,
    margin: float = MARGIN,
    results_dir: Path | None = None,
) -> bool | None:
    """Whether ``flavor``'s host RAM holds the trainer's measured peak for ``model_shape`` with ``margin`` to spare.

    None when that cannot be told: an unknown flavor, a flavor without a known RAM size, or no measurement."""
    f = FLAVORS.get(flavor) if isinstance(flavor, str) else flavor
    if f is None or not f.ram_gib:
        return None
    peak = host_ram_gib(model_shape, recipe=recipe, weights=weights, results_dir=results_dir)
    if peak is None:
        return None
    return peak <= margin * f.ram_gib
