"""Hardware flavors the template knows (Spaces and Jobs), with their price, GPU count, GPU memory and host RAM.

Prices are the Hub's public list prices in USD per hour (they change; the UI labels them as estimates).
Host RAM (``ram_gib``) is each flavor's "Memory" in the Hub's hardware table (huggingface.co/docs/hub/spaces-gpus,
checked for every flavor below; the Hub writes GB). A trainer that needs more host RAM than that is killed (SIGKILL),
so ``scheduler.host_ram`` compares it with the measured peak of a model's loading.

Jobs cost the same per hour as Spaces on the shared flavors; ``jobs_only`` flavors (H200, RTX PRO 6000) exist for
Jobs alone (hub-docs ``jobs-pricing.md``, 2026-08; their host RAM is not published there, hence None). At run time
the Jobs backend reads the prices from ``list_jobs_hardware`` and falls back to this table (``jobs_prices``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flavor:
    """One hardware flavor of a Space."""

    name: str
    label: str
    usd_per_hour: float
    gpus: int
    gpu_memory_gib: int
    #: host RAM; ``None`` where unknown (a flavor added without it)
    ram_gib: int | None = None
    #: a Hugging Face Jobs flavor that a Space cannot run on
    jobs_only: bool = False


FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor("cpu-basic", "CPU basic", 0.0, 0, 0, 16),
        Flavor("cpu-upgrade", "CPU upgrade", 0.03, 0, 0, 32),
        Flavor("t4-small", "Nvidia T4 small", 0.40, 1, 16, 15),
        Flavor("t4-medium", "Nvidia T4 medium", 0.60, 1, 16, 30),
        Flavor("l4x1", "Nvidia 1xL4", 0.80, 1, 24, 30),
        Flavor("l4x4", "Nvidia 4xL4", 3.80, 4, 96, 186),
        Flavor("a10g-small", "Nvidia A10G small", 1.00, 1, 24, 15),
        Flavor("a10g-large", "Nvidia A10G large", 1.50, 1, 24, 46),
        Flavor("a10g-largex2", "Nvidia 2xA10G large", 3.00, 2, 48, 92),
        Flavor("a10g-largex4", "Nvidia 4xA10G large", 5.00, 4, 96, 184),
        Flavor("l40sx1", "Nvidia 1xL40S", 1.80, 1, 48, 62),
        Flavor("a100-large", "Nvidia A100 large", 2.50, 1, 80, 142),
        Flavor("h200", "Nvidia H200", 5.00, 1, 141, jobs_only=True),
        Flavor("rtx-pro-6000", "Nvidia RTX PRO 6000", 2.75, 1, 96, jobs_only=True),
    )
}

IDLE_FLAVORS = frozenset({"cpu-basic", "cpu-upgrade"})
#: the GPU flavors a Space can be moved to (the self-upgrade backend and its form)
GPU_FLAVORS = frozenset(name for name, f in FLAVORS.items() if f.gpus > 0 and not f.jobs_only)
#: the GPU flavors a Job can run on (the Jobs backend)
JOBS_GPU_FLAVORS = frozenset(name for name, f in FLAVORS.items() if f.gpus > 0)


#: CUDA compute capability of each flavor's GPU (what fp8 and bf16 need: shared/reference/modern-models.md)
_CAPABILITY = {"t4": (7, 5), "a10g": (8, 6), "a100": (8, 0), "l4": (8, 9), "l40s": (8, 9), "h200": (9, 0),
               "rtx-pro-6000": (12, 0)}  # fmt: skip


def compute_capability(flavor: str) -> tuple[int, int] | None:
    """The compute capability of ``flavor``'s GPU (None: a CPU or unknown flavor)."""
    for gpu in sorted(_CAPABILITY, key=len, reverse=True):  # "l40s" before "l4"
        if flavor.startswith(gpu):
            return _CAPABILITY[gpu]
    return None


def is_gpu(flavor: str | None) -> bool:
    """True when ``flavor`` is a known GPU flavor (paid: a Space on it must be released, a Job on it is billed)."""
    return flavor in JOBS_GPU_FLAVORS


def is_jobs_only(flavor: str | None) -> bool:
    """True for a flavor that only Jobs offer (a Space cannot be moved to it)."""
    known = FLAVORS.get(flavor or "")
    return known is not None and known.jobs_only


def jobs_prices(hardware: list[dict[str, object]] | None) -> tuple[dict[str, float], str]:
    """USD per hour of each flavor for Jobs, and where the figures come from.

    ``hardware`` holds ``list_jobs_hardware`` rows as ``{"name", "unit_cost_usd", "unit_label"}``; a flavor the
    Hub does not price (or no answer at all: None) keeps this module's list price, and the source says "fallback"."""
    prices = {name: f.usd_per_hour for name, f in FLAVORS.items()}
    per_hour = {"second": 3600.0, "minute": 60.0, "hour": 1.0}
    priced: set[str] = set()
    for row in hardware or []:
        name, cost, unit = row.get("name"), row.get("unit_cost_usd"), str(row.get("unit_label") or "minute").lower()
        if isinstance(name, str) and isinstance(cost, int | float) and not isinstance(cost, bool) and unit in per_hour:
            if 0 <= cost < 1e6:
                prices[name] = round(float(cost) * per_hour[unit], 6)
                priced.add(name)
    source = "list_jobs_hardware" if priced else "fallback table (contract/flavors.py)"
    if priced and not priced >= set(FLAVORS):
        source += " + fallback table for the rest"
    return prices, source
