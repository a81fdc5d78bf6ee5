"""Space hardware flavors the template knows, with their price, GPU count, GPU memory and host RAM.

Prices are the Hub's public list prices in USD per hour (they change; the UI labels them as estimates).
Host RAM (``ram_gib``) is each flavor's "Memory" in the Hub's hardware table (huggingface.co/docs/hub/spaces-gpus,
checked for every flavor below; the Hub writes GB). A trainer that needs more host RAM than that is killed (SIGKILL),
so ``scheduler.host_ram`` compares it with the measured peak of a model's loading.
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
    )
}

IDLE_FLAVORS = frozenset({"cpu-basic", "cpu-upgrade"})
GPU_FLAVORS = frozenset(name for name, f in FLAVORS.items() if f.gpus > 0)


def is_gpu(flavor: str | None) -> bool:
    """True when ``flavor`` is a known GPU flavor (paid, must be released)."""
    return flavor in GPU_FLAVORS
