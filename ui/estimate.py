"""Rough training duration and cost before submitting (labelled as estimates in the UI).

Speeds are steps per second of a DreamBooth LoRA on SD 1.5 at 512 px, batch 1, fp16 (the T4 figure is the
published ~1 step/s; bigger GPUs scaled from the project's H100 benchmark). Full fine-tunes, prior
preservation, the text encoder and higher resolutions slow it down by the factors below. In local mode the
estimate is for "this machine": its CPU, or its GPU (at the T4 figure, a conservative guess for an unknown GPU), and
the built-in demo model has its own measured speed. The "auto" steps come from the recipe catalog. A model family
with a published speed (``FAMILY_SPEED_VS_SD``, keyed by the catalog's family id: FLUX.1, FLUX.2 [klein], Z-Image, Qwen-Image) scales
those figures by it, and the estimate says it is the family's reference figure.

Once this Space (or this machine) has finished runs like the one asked for, their measurements replace the table:
the runs that match (same flavor, model family or, when the family is unknown, the same base model, recipe,
resolution, batch size, prior preservation and text encoder) give the median steady steps/s (training time = steps
/ that speed) and the median of each measured overhead (GPU switch, start-up, wrap-up, release). The estimate says
which it used (``Estimate.source``, ``Estimate.runs``).

A task that scores its run (``contract.scores``) adds ``Estimate.scoring_s``: at each of ``SCORED_POINTS`` sampling
points, one image per scoring prompt and the scoring models' own seconds (``contract.scoring_models``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from contract.flavors import FLAVORS
from contract.scoring_models import SCORED_POINTS, SCORERS_CPU_S, SCORERS_GPU_S, scoring_seconds
from scheduler.task import LOCAL_CPU as LOCAL_CPU  # ``estimate`` hardware names of local mode (run records use them)
from scheduler.task import LOCAL_GPU as LOCAL_GPU
from scheduler.task import RunRecord
from training.base_check import DEMO_MODEL
from ui.local_device import LocalDevice

if TYPE_CHECKING:
    from contract.catalog import RecipeInfo

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
    # Jobs-only flavors: guesses scaled from the H100 benchmark (unmeasured: a finished run's figures replace them)
    "h200": 5.0,
    "rtx-pro-6000": 4.0,
}
CPU_STEPS_PER_S = 0.05
LOCAL_GPU_STEPS_PER_S = LORA_STEPS_PER_S["t4-small"]  # a GPU of this machine whose speed is unknown
DEMO_STEPS_PER_S = 5.0  # the demo model on a laptop CPU (training/demo.py measured about 7 on two shared cores)
FULL_FACTOR = 0.5
PRIOR_FACTOR = 0.55
TEXT_ENCODER_FACTOR = 0.8
MULTI_GPU_EFFICIENCY = 0.85
OVERHEAD_S = 6 * 60  # hardware switch, start-up, model download, samples, upload, switch back
CLASS_IMAGE_S = 2.0  # per generated class image (prior preservation)
#: A family's LoRA steps/s as a fraction of the SD 1.5 figures above on the same GPU, until this Space has runs of its
#: own (keyed by the catalog's family id; the SD family and a customizer's family have none: SD's figures, said so).
#: flux1: the flux-qlora blog (../shared/reference/modern-models.md, "Memory and speed figures") trained FLUX.1 [dev]
#: 700 steps x 4 accumulated in ~4 h on a Colab T4 (0.19 samples/s, against SD's 1.1 steps/s on a T4: 0.18) and in
#: ~20 min on an H100 with fp8 (2.3 samples/s, against diffusers' 4.4 SD steps/s on an H100 in
#: ../shared/benchmarks/README.md: 0.53); the slow end is taken (0.2), the L4 the form proposes having no fp8 recipe.
#: flux2-klein: no published speed; FLUX.1's scaled by transformer size (12 B / 9 B), the 9 B being the slower (a 4 B
#: trains about twice as fast).
#: zimage: SimpleTuner's ZIMAGE.md (../shared/reference/modern-models.md) gives ~1.1 s/step on an H100 and ~1.0 on an
#: L40S at 1024 px: 0.21 and 0.29 of SD's 4.4 and 3.5 steps/s there; the slow end is taken.
#: qwen-image: the only published figure is Qwen-Image-Edit's (musubi-tuner #694): 14.7-22.4 s per step of 2 on an
#: A100, 0.09 to 0.14 samples/s against SD's 3.8 steps/s there; the edit model's source-image tokens make it slower
#: than text-to-image, so the slow end (0.024) is an upper bound of the time.
#: qwen-image-edit: that figure is its own (the slow end again: 0.024).
FAMILY_SPEED_VS_SD = {"flux1": 0.2, "flux2-klein": 0.27, "zimage": 0.2, "qwen-image": 0.024, "qwen-image-edit": 0.024}
BUILT_IN, FAMILY, HISTORY = "built-in", "family", "history"  # where an estimate's figures come from


def auto_steps(image_count: int, recipe: RecipeInfo | None = None) -> int:
    """The recipe's "auto" steps for ``image_count`` photos (``steps_per_image`` within its min/max); the default
    recipe is the form's (the built-in LoRA)."""
    if recipe is None:
        from contract.catalog import load_catalog
        from ui.context import default_recipe

        catalog = load_catalog()
        recipe = catalog[default_recipe(catalog)]
    return recipe.auto_steps(image_count)


@dataclass(frozen=True)
class Estimate:
    """Seconds of training and of overhead on ``hardware``, and the price of both; ``source`` is ``BUILT_IN`` (the
    table above), ``FAMILY`` (the table at the family's ``FAMILY_SPEED_VS_SD``) or ``HISTORY`` (the median of
    ``runs`` earlier matching runs)."""

    hardware: str
    train_s: float
    overhead_s: float
    usd: float
    source: str = BUILT_IN
    runs: int = 0
    #: seconds of scoring (images generated for the scoring prompts, the scoring models), included in ``usd``
    scoring_s: float = 0.0
    #: seconds of captioning the photos before training (``params.auto_captions``), included in ``usd``
    caption_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.train_s + self.overhead_s + self.scoring_s + self.caption_s


def model_family(base_model: str | None, history: Sequence[RunRecord]) -> str | None:
    """The family the trainer reported for ``base_model`` in an earlier run (None when no run told)."""
    return next((r.family for r in reversed(history) if r.base_model == base_model and r.family), None)


def matching_runs(
    history: Sequence[RunRecord],
    *,
    hardware: str,
    recipe: str,
    resolution: int,
    batch_size: int = 1,
    prior_preservation: bool = False,
    train_text_encoder: bool = False,
    base_model: str | None = None,
    family: str | None = None,
) -> list[RunRecord]:
    """The runs of ``history`` with a measured speed and the same settings; the model matches by family when it is
    known (given, or told by an earlier run of ``base_model``), else by base model id."""
    family = family or model_family(base_model, history)

    def same_model(run: RunRecord) -> bool:
        return run.base_model == base_model or (family is not None and run.family == family)

    return [
        r
        for r in history
        if r.steps_per_s is not None and r.steps_per_s > 0 and r.flavor == hardware and r.recipe == recipe
        and r.resolution == resolution and r.batch_size == batch_size and r.prior_preservation == prior_preservation
        and r.train_text_encoder == train_text_encoder and same_model(r)
    ]  # fmt: skip


def _median(values: Sequence[float | None], fallback: Sequence[float | None] = ()) -> float:
    """The median of the known ``values`` (of ``fallback`` when none is known; 0 when neither has any)."""
    known = [v for v in values if v is not None] or [v for v in fallback if v is not None]
    return float(statistics.median(known)) if known else 0.0


def jobs_price(hardware: str, prices: dict[str, float] | None = None) -> float:
    """USD per hour of ``hardware`` as a Job: the Hub's price (``list_jobs_hardware``, via the worker's status) when
    known, else the list price of ``contract.flavors``."""
    if prices and hardware in prices:
        return prices[hardware]
    flavor = FLAVORS.get(hardware)
    return flavor.usd_per_hour if flavor else 0.0


def price_source_text(source: str) -> str:
    """Where the Jobs prices come from, in words (``StatusData.job_prices_source``)."""
    if source.startswith("list_jobs_hardware"):
        return "the Hub's Jobs prices (list_jobs_hardware)" + (", the list price for the rest" if "fallback" in source else "")  # fmt: skip
    return "the built-in fallback price table (the Hub's Jobs prices could not be read yet)"


def hourly_price(hardware: str, usd_per_hour: float | None) -> float:
    """``usd_per_hour`` when given (the Jobs price), else ``hardware``'s list price (0 for this machine)."""
    if usd_per_hour is not None:
        return usd_per_hour
    flavor = FLAVORS.get(hardware)
    return flavor.usd_per_hour if flavor else 0.0


def on_cpu(hardware: str) -> bool:
    """Whether a task on ``hardware`` runs on a CPU: this machine's CPU, or a flavor without a GPU."""
    flavor = FLAVORS.get(hardware)
    return hardware == LOCAL_CPU or (flavor is not None and flavor.gpus == 0)


def scoring_s(hardware: str, images: int, steps_per_s: float, *, demo: bool = False) -> float:
    """Seconds that scoring adds to a task on ``hardware`` training at ``steps_per_s``: ``images`` per sampling point
    (``len(contract.scores.scoring_prompts(...))``; 0: scoring off) at ``SCORED_POINTS`` points, and the scoring
    models (none for the demo model, scored by its pixels)."""
    scorers = 0.0 if demo else SCORERS_CPU_S if on_cpu(hardware) else SCORERS_GPU_S
    return scoring_seconds(SCORED_POINTS, images, steps_per_s, scorers_s=scorers)


def from_history(steps: int, hardware: str, runs: Sequence[RunRecord], usd_per_hour: float | None = None,
                 scoring_images: int = 0, *, demo: bool = False) -> Estimate:  # fmt: skip
    """The estimate from matching ``runs``: steps / their median speed, and each overhead's median, for a task that
    starts a GPU period of its own (switch there, start-up of the container, wrap-up, release). Start-up is taken
    from the runs that started a period when there are any (a later task of a period starts faster)."""
    speed = statistics.median(r.steps_per_s for r in runs if r.steps_per_s)
    starters = [r for r in runs if r.switch_s is not None]
    overhead = (
        _median([r.switch_s for r in runs])
        + _median([r.startup_s for r in starters], [r.startup_s for r in runs])
        + _median([r.wrapup_s for r in runs])
        + _median([r.release_s for r in runs])
    )
    train_s, scoring = max(steps, 0) / speed, scoring_s(hardware, scoring_images, speed, demo=demo)
    price = hourly_price(hardware, usd_per_hour)
    usd = (train_s + overhead + scoring) / 3600 * price
    return Estimate(hardware, train_s, overhead, usd, HISTORY, len(runs), scoring)


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
    batch_size: int = 1,
    family: str | None = None,
    history: Sequence[RunRecord] = (),
    usd_per_hour: float | None = None,
    scoring_images: int = 0,
) -> Estimate:
    """Estimated duration and cost of one task (``LOCAL_CPU``/``LOCAL_GPU`` for this machine, free): from the
    matching runs of ``history`` (earlier runs of this Space or machine) when there are any, else from the table (at
    the speed of ``family`` when it has a reference figure). ``usd_per_hour`` overrides the flavor's list price (the
    Jobs price of the Jobs backend). ``scoring_images``: the images each scoring point generates (``scoring_s``; 0: the
    task does not score)."""
    runs = matching_runs(
        history, hardware=hardware, recipe=recipe, resolution=resolution, batch_size=batch_size,
        prior_preservation=prior_preservation, train_text_encoder=train_text_encoder, base_model=base_model,
        family=family,
    )  # fmt: skip
    if runs:
        return from_history(steps, hardware, runs, usd_per_hour, scoring_images, demo=base_model == DEMO_MODEL)
    flavor = FLAVORS.get(hardware)
    if base_model == DEMO_MODEL:  # tiny: its speed is its own, whatever the resolution
        train_s = max(steps, 0) / DEMO_STEPS_PER_S
        return Estimate(hardware, train_s, 0.0, 0.0, scoring_s=scoring_s(hardware, scoring_images, DEMO_STEPS_PER_S,
                                                                          demo=True))  # fmt: skip
    speed = LOCAL_GPU_STEPS_PER_S if hardware == LOCAL_GPU else LORA_STEPS_PER_S.get(hardware, CPU_STEPS_PER_S)
    speed *= (512 / max(resolution, 64)) ** 2 * FAMILY_SPEED_VS_SD.get(family or "", 1.0)
    scoring = scoring_s(hardware, scoring_images, speed)  # sampling: one GPU, no backward (no recipe factors)
    if flavor is not None and flavor.gpus > 1:
        speed *= flavor.gpus * MULTI_GPU_EFFICIENCY
    if recipe != "dreambooth-lora":
        speed *= FULL_FACTOR
    if prior_preservation:
        speed *= PRIOR_FACTOR
    if train_text_encoder:
        speed *= TEXT_ENCODER_FACTOR
    train_s = max(steps, 0) / speed
    overhead_s = OVERHEAD_S + (num_class_images * CLASS_IMAGE_S if prior_preservation else 0)
    price = hourly_price(hardware, usd_per_hour)
    source = FAMILY if family in FAMILY_SPEED_VS_SD else BUILT_IN
    usd = (train_s + overhead_s + scoring) / 3600 * price
    return Estimate(hardware, train_s, overhead_s, usd, source, scoring_s=scoring)


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


def hardware_label(name: str, usd_per_hour: float | None = None) -> str:
    """``Nvidia T4 small ($0.40/h)`` (at ``usd_per_hour`` when given: the Jobs price)."""
    flavor = FLAVORS.get(name)
    if flavor is None:
        return name
    return f"{flavor.label} (${hourly_price(name, usd_per_hour):.2f}/h)"


def source_text(est: Estimate, local: bool, family_label: str | None = None) -> str:
    """``from 3 earlier runs on this Space`` (``on this machine`` locally), ``from the FLUX.1 family's reference
    figure (published runs, not yet measured on this Space)``, or ``from the built-in figures``."""
    where = "this machine" if local else "this Space"
    if est.source == FAMILY:
        return f"from the {family_label or 'model'} family's reference figure (published runs, not yet measured on {where})"
    if est.source != HISTORY:
        return "from the built-in figures"
    return f"from {est.runs} earlier run{'' if est.runs == 1 else 's'} on {where}"


def family_caveat(est: Estimate, family_label: str | None) -> str:
    """For a base model of another family than Stable Diffusion (``family_label``) estimated from the built-in
    figures (the family has no reference figure): that they are Stable Diffusion's; empty otherwise."""
    if not family_label or est.source != BUILT_IN:
        return ""
    return (f" These built-in figures are Stable Diffusion's: a {family_label} task trains slower; this Space's own"
            f" finished {family_label} runs replace them.")  # fmt: skip


def describe(est: Estimate, local: bool, device: LocalDevice | None = None, *, job_usd_per_hour: float | None = None,
             jobs_prices_source: str = "", family_label: str | None = None) -> str:  # fmt: skip
    """Markdown shown under the form; in local mode about ``device`` (this machine). It says where the figures come
    from: this Space's (this machine's) earlier runs, the family's reference figure (``family_label``), or the
    built-in table (for a base model of another family without one, with ``family_caveat``). ``job_usd_per_hour`` (not None): the task trains as a Hugging Face
    Job at that price, read from ``jobs_prices_source`` (``price_source_text``)."""
    text = _describe(est, local, device, job_usd_per_hour, jobs_prices_source, family_label)
    return text + family_caveat(est, family_label)


def _parts(est: Estimate, rest: str) -> str:
    """``12 min training + 3 min scoring + 6 min {rest}`` (no scoring part when the task does not score)."""
    scoring = f" + {format_duration(est.scoring_s)} scoring" if est.scoring_s else ""
    captions = f" + {format_duration(est.caption_s)} captions" if est.caption_s else ""
    return f"{format_duration(est.train_s)} training{scoring}{captions} + {format_duration(est.overhead_s)} {rest}"


def _describe(est: Estimate, local: bool, device: LocalDevice | None, job_usd_per_hour: float | None,
              jobs_prices_source: str, family_label: str | None = None) -> str:  # fmt: skip
    source = source_text(est, local, family_label)
    if job_usd_per_hour is not None and not local:
        label = hardware_label(est.hardware, job_usd_per_hour)
        return (
            f"**Estimate:** {approx_duration(est.total_s)} as a Hugging Face Job on {label}"
            f" ({_parts(est, 'start-up and upload')}),"
            f" about **${est.usd:.2f}**, {source}; price from {price_source_text(jobs_prices_source)}. Billed per"
            " minute while the Job runs, never past its timeout (the task deadline plus start-up); this Space stays"
            " on CPU."
        )
    if local:
        where = f"this machine ({device.name if device else 'CPU'})"
        if est.source == HISTORY:
            return (
                f"**Estimate:** {approx_duration(est.total_s)} on {where} ({_parts(est, 'loading and saving')}),"
                f" {source}; free, nothing is rented."
            )
        kinds = [w for w, s in (("training", 1), ("scoring", est.scoring_s), ("captions", est.caption_s)) if s]
        what = " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
        work_s = est.train_s + est.scoring_s + est.caption_s
        return (f"**Estimate:** {approx_duration(work_s)} of {what} on {where}, {source}; free,"
                " nothing is rented.")  # fmt: skip
    return (
        f"**Estimate:** {approx_duration(est.total_s)} on {hardware_label(est.hardware)}"
        f" ({_parts(est, 'start-up and upload')}),"
        f" about **${est.usd:.2f}**, {source}. The GPU is released when the queue is empty."
    )
