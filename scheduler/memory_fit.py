"""Will a training configuration fit a GPU? Torch-free: the form asks before anything is enqueued.

The estimates come from ``training/memory_table.json``, which the developer tool
``python -m tools.memory_estimate --write-table`` fills by running the training script's GPU phases on fake CUDA
tensors on the CPU; ``training.memory`` reads it (torch-free, and says when the training script changed since:
``stale_reason``). ``lookup`` reads a configuration's estimated peak allocated memory; ``fit`` says whether it fits a GPU of a given size as it is,
with gradient checkpointing, with 8-bit Adam too, or not at all, with the reason as a sentence.

Usable memory: a flavor's GPU memory is sold in GB (a T4: "16 GB"), of which torch sees
``GIB_PER_NOMINAL_GB`` GiB per GB (a T4 reports 15.0 GiB); ``training.memory.usable_allocated_gib`` then takes
the CUDA context off and divides by the allocator's reserved-per-allocated headroom (a T4: about 12.1 GiB of
allocated tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contract.flavors import FLAVORS
from training.memory import NATIVE_RESOLUTION, usable_allocated_gib
from training.memory import lookup as _table_lookup

#: GiB that torch reports per nominal GB of a flavor (a T4 sold as 16 GB reports 15.0 GiB; bigger cards a little
#: more, so this is on the safe side for them)
GIB_PER_NOMINAL_GB = 15 / 16

FITS = "fits"
WITH_CHECKPOINTING = "fits_with_gradient_checkpointing"
WITH_8BIT_ADAM = "fits_with_8bit_adam"
DOES_NOT_FIT = "does_not_fit"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class MemoryFit:
    """The verdict for one configuration on one GPU size, and the settings it needs."""

    verdict: str  # FITS | WITH_CHECKPOINTING | WITH_8BIT_ADAM | DOES_NOT_FIT | UNKNOWN
    reason: str
    estimate_gib: float | None  # with the settings below (None: no estimate)
    usable_gib: float
    gradient_checkpointing: bool
    use_8bit_adam: bool

    @property
    def fits(self) -> bool:
        """True when it fits, possibly with the savings above turned on."""
        return self.verdict in (FITS, WITH_CHECKPOINTING, WITH_8BIT_ADAM)

    @property
    def adjusted(self) -> bool:
        """True when it fits only with gradient checkpointing or 8-bit Adam turned on."""
        return self.verdict in (WITH_CHECKPOINTING, WITH_8BIT_ADAM)


def lookup(
    model_shape: str,
    recipe: str,
    resolution: int,
    batch: int = 1,
    prior: bool = False,
    text_encoder: bool = False,
    gradient_checkpointing: bool = False,
    use_8bit_adam: bool = False,
    *,
    table: dict[str, Any] | None = None,
) -> float | None:
    """Estimated peak GPU memory (GiB) of a configuration; None when the table has nothing close (another model
    shape or recipe). Between the tabled resolutions and batch sizes it is scaled (``training.memory.lookup``)."""
    return _table_lookup(model_shape, recipe, resolution, batch, prior, text_encoder, gradient_checkpointing,
                         use_8bit_adam, table=table)  # fmt: skip


def usable_gib(flavor_gpu_gib: float) -> float:
    """Allocated memory a training run may peak at on a GPU sold as ``flavor_gpu_gib`` GB."""
    return usable_allocated_gib(flavor_gpu_gib * GIB_PER_NOMINAL_GB)


def fit(
    model_shape: str,
    recipe: str,
    resolution: int | None,
    batch: int,
    prior: bool,
    text_encoder: bool,
    gradient_checkpointing: bool | str,
    use_8bit_adam: bool | str,
    flavor_gpu_gib: float,
    *,
    table: dict[str, Any] | None = None,
) -> MemoryFit:
    """Whether the configuration fits a GPU of ``flavor_gpu_gib`` GB: as asked, else with gradient checkpointing,
    else with 8-bit Adam too (the order the trainer's memory plan turns them on). ``True`` settings stay on;
    ``False`` or "auto" ones may be turned on."""
    res = int(resolution or NATIVE_RESOLUTION.get(model_shape, 512))
    usable = usable_gib(flavor_gpu_gib)
    gc0, adam0 = gradient_checkpointing is True, use_8bit_adam is True
    tries = [(gc0, adam0), (True, adam0), (True, True)]
    seen: list[tuple[bool, bool, float | None]] = []
    for gc, adam8 in dict.fromkeys(tries):
        gib = lookup(model_shape, recipe, res, batch, prior, text_encoder, gc, adam8, table=table)
        seen.append((gc, adam8, gib))
    first = seen[0][2]
    what = _describe(model_shape, recipe, res, batch, prior, text_encoder)
    gpu = f"a GPU of {flavor_gpu_gib:g} GB"
    room = f"the {usable:.1f} GiB usable for training on {gpu}"
    if first is None:
        return MemoryFit(UNKNOWN, f"No memory estimate for {what}: not checked.", None, usable, gc0, adam0)
    for gc, adam8, gib in seen:
        if gib is not None and gib <= usable:
            if (gc, adam8) == (gc0, adam0):
                reason = f"{what} fits {gpu}: about {gib:.1f} of the {usable:.1f} GiB usable for training."
                return MemoryFit(FITS, reason, gib, usable, gc, adam8)
            verdict, savings = (WITH_CHECKPOINTING, "gradient checkpointing") if adam8 == adam0 else (
                WITH_8BIT_ADAM, "gradient checkpointing and 8-bit Adam")  # fmt: skip
            reason = f"{what} needs about {first:.1f} GiB, more than {room}; with {savings}, about {gib:.1f} GiB."
            return MemoryFit(verdict, reason, gib, usable, gc, adam8)
    best_gib, gc, adam8 = min((gib, gc, adam8) for gc, adam8, gib in seen if gib is not None)
    tried = "gradient checkpointing and 8-bit Adam" if seen[-1][2] is not None else "gradient checkpointing"
    advice = ["a GPU with more memory", "a lower resolution"]
    if prior:
        advice.append("no prior preservation")
    if recipe != "dreambooth-lora":
        advice.append("the LoRA recipe")
    choose = ", ".join(advice[:-1]) + " or " + advice[-1]
    reason = f"{what} needs about {best_gib:.1f} GiB even with {tried}, more than {room}. Choose {choose}."
    return MemoryFit(DOES_NOT_FIT, reason, best_gib, usable, gc, adam8)


def fit_flavor(flavor: str, model_shape: str, recipe: str, resolution: int | None, batch: int = 1,
               prior: bool = False, text_encoder: bool = False, gradient_checkpointing: bool | str = "auto",
               use_8bit_adam: bool | str = "auto", *, table: dict[str, Any] | None = None) -> MemoryFit:  # fmt: skip
    """``fit`` on one GPU of a known flavor (each GPU of a multi-GPU flavor holds a whole copy of the training
    state); a flavor without a GPU gets ``UNKNOWN``."""
    f = FLAVORS.get(flavor)
    if f is None or not f.gpus:
        return MemoryFit(UNKNOWN, f"{flavor} has no GPU: memory is not checked.", None, 0.0, False, False)
    return fit(model_shape, recipe, resolution, batch, prior, text_encoder, gradient_checkpointing, use_8bit_adam,
               f.gpu_memory_gib / f.gpus, table=table)  # fmt: skip


def _describe(model_shape: str, recipe: str, res: int, batch: int, prior: bool, text_encoder: bool) -> str:
    kind = "LoRA" if recipe == "dreambooth-lora" else "full fine-tune" if recipe == "dreambooth-full" else recipe
    extras = [x for x, on in (("prior preservation", prior), ("text encoder", text_encoder)) if on]
    model = {"sd15": "SD 1.5", "sdxl": "SDXL"}.get(model_shape, model_shape)
    more = f" with {' and '.join(extras)}" if extras else ""
    return f"{model} {kind} at {res} px, batch {batch}{more}"
