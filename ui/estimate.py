"""Rough training duration and cost before submitting (labelled as estimates in the UI).

Speeds are steps per second of a DreamBooth LoRA on SD 1.5 at 512 px, batch 1, fp16 (the T4 figure is the
published ~1 step/s; bigger GPUs scaled from the project's H100 benchmark). Full fine-tunes, prior
preservation, the text encoder and higher resolutions slow it down by the factors below. In local mode the
estimate is for "this machine": its CPU, or its GPU (at the T4 figure, a conservative guess for an unknown GPU), and
the built-in demo model has its own measured speed. The "auto" steps come from the recipe catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from scheduler.flavors import FLAVORS
from training.base_check import DEMO_MODEL
from ui.local_device import LocalDevice

if TYPE_CHECKING:
    from scheduler.recipes_catalog import RecipeInfo

LORA_STEPS_PER_S = {
    "t4-small": 1.1,
    "t4-medium": 1.1,
    "l4x1": 1.8,
    "l4x4": 1.8,
    "a10g-small": 2.2,
    "a10g-large": 2.2,
    "a10g-largex2": 2.2,
    "a10g-largex4": 2.2,
    "l40sx1": 3.5,
    "a100-large": 3.8,
}
CPU_STEPS_PER_S = 0.05
LOCAL_GPU_STEPS_PER_S = LORA_STEPS_PER_S["t4-small"]  # a GPU of this machine whose speed is unknown
DEMO_STEPS_PER_S = 5.0  # the demo model on a laptop CPU (training/demo.py measured about 7 on two shared cores)
LOCAL_CPU = "local-cpu"  # ``estimate`` hardware names of local mode
LOCAL_GPU = "local-gpu"
FULL_FACTOR = 0.5
PRIOR_FACTOR = 0.55
TEXT_ENCODER_FACTOR = 0.8
MULTI_GPU_EFFICIENCY = 0.85
OVERHEAD_S = 6 * 60  # hardware switch, start-up, model download, samples, upload, switch back
CLASS_IMAGE_S = 2.0  # per generated class image (prior preservation)


def auto_steps(image_count: int, recipe: RecipeInfo | None = None) -> int:
    """The recipe's "auto" steps for ``image_count`` photos (``steps_per_image`` within its min/max); the default
    recipe is the form's (the built-in LoRA)."""
    if recipe is None:
        from scheduler.recipes_catalog import load_catalog
        from ui.context import default_recipe

        catalog = load_catalog()
        recipe = catalog[default_recipe(catalog)]
    return recipe.auto_steps(image_count)


@dataclass(frozen=True)
class Estimate:
    """Seconds of training and of overhead on ``hardware``, and the price of both."""

    hardware: str
    train_s: float
    overhead_s: float
    usd: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.overhead_s


def estimate(
    steps: int,
    hardware: str,
    *,
    recipe: str = "dreambooth-lora",
    resolution: int = 512,
    prior_preservation: bool = False,
    train_text_encoder: bool = False,
    num_class_images: int = 50,
    base_model: str | None = None,
) -> Estimate:
    """Estimated duration and cost of one task (``LOCAL_CPU``/``LOCAL_GPU`` for this machine, free)."""
    flavor = FLAVORS.get(hardware)
    if base_model == DEMO_MODEL:  # tiny: its speed is its own, whatever the resolution
        train_s = max(steps, 0) / DEMO_STEPS_PER_S
        return Estimate(hardware, train_s, 0.0, 0.0)
    speed = LOCAL_GPU_STEPS_PER_S if hardware == LOCAL_GPU else LORA_STEPS_PER_S.get(hardware, CPU_STEPS_PER_S)
    if flavor is not None and flavor.gpus > 1:
        speed *= flavor.gpus * MULTI_GPU_EFFICIENCY
    if recipe != "dreambooth-lora":
        speed *= FULL_FACTOR
    if prior_preservation:
        speed *= PRIOR_FACTOR
    if train_text_encoder:
        speed *= TEXT_ENCODER_FACTOR
    speed *= (512 / max(resolution, 64)) ** 2
    train_s = max(steps, 0) / speed
    overhead_s = OVERHEAD_S + (num_class_images * CLASS_IMAGE_S if prior_preservation else 0)
    price = flavor.usd_per_hour if flavor else 0.0
    return Estimate(hardware, train_s, overhead_s, (train_s + overhead_s) / 3600 * price)


def format_duration(seconds: float | None) -> str:
    """``1 h 05 min`` / ``12 min`` / ``under a minute``."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return "under a minute"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def approx_duration(seconds: float) -> str:
    """``about 12 min`` / ``about 1 h 05 min`` / ``under a minute`` (never "about under a minute")."""
    text = format_duration(seconds)
    return text if text.startswith("under") else f"about {text}"


def local_hardware(device: LocalDevice) -> str:
    """The ``estimate`` hardware name for this machine."""
    return LOCAL_GPU if device.gpu else LOCAL_CPU


def hardware_label(name: str) -> str:
    """``Nvidia T4 small ($0.40/h)``."""
    flavor = FLAVORS.get(name)
    if flavor is None:
        return name
    return f"{flavor.label} (${flavor.usd_per_hour:.2f}/h)"


def describe(est: Estimate, local: bool, device: LocalDevice | None = None) -> str:
    """Markdown shown under the form; in local mode about ``device`` (this machine)."""
    if local:
        where = f"this machine ({device.name if device else 'CPU'})"
        return f"**Estimate:** {approx_duration(est.train_s)} of training on {where}; free, nothing is rented."
    return (
        f"**Estimate:** {approx_duration(est.total_s)} on {hardware_label(est.hardware)}"
        f" ({format_duration(est.train_s)} training + {format_duration(est.overhead_s)} start-up and upload),"
        f" about **${est.usd:.2f}**. The GPU is released when the queue is empty."
    )
