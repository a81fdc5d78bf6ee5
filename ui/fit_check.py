"""Will a submitted task fit the GPU flavor it asks for? Checked on the CPU Space before anything is enqueued.

Two limits, both from committed measurements and no GPU: the GPU memory of the task's configuration
(``scheduler.memory_fit``, the fake-CUDA estimator's table) and the host RAM the trainer's loading needs
(``scheduler.host_ram``, the full-size ``host_ram`` benchmark records). A configuration that fits only with gradient
checkpointing or 8-bit Adam is queued: the trainer's memory plan turns them on by itself ("auto"), and the answer says
so. One that cannot fit is refused with the reason. Models the tables do not know (a custom or tiny model) are not
checked. The model's family (``training.families``) says how: its full-size shape in the tables
(``ModelFamily.memory_shape``) and ``ModelFamily.memory_fit``. Stable Diffusion's (``LADDER``) is the table as asked,
then with gradient checkpointing, then 8-bit Adam. A family checked by its quantized base (FLUX.1, FLUX.2 [klein]) is
checked the way its trainer will run it: the quantized base the trainer's own plan (``training.quantization_plan``)
picks for the flavor's GPU, that estimate against the GPU, the host RAM of loading it; on a flavor with less GPU
memory than the family's default one the answer adds the family's ``hardware_note`` (a FLUX task on a T4: its
speed). Such a family without tabled shapes is only warned about. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.flavors import FLAVORS, compute_capability, is_gpu
from scheduler.host_ram import DERIVED, GPU_QUANTIZED, GPU_QUANTIZED_KINDS, MARGIN, fits_host_ram, host_ram_figure
from scheduler.memory_fit import GIB_PER_NOMINAL_GB, fit_flavor, usable_gib
from scheduler.task import Task
from training.base_check import Probe
from training.exitcodes import BadInputError
from training.families import family_or_default, find_family
from training.families.base import LADDER
from training.memory import load_table, stale_reason
from training.quantization_plan import plan_quantization

FP16_WEIGHTS, FP32_WEIGHTS = "fp16 variant", "fp32 files"  # the ``weights`` labels of the host_ram records
LORA = "dreambooth-lora"
#: how the frozen base is held (``training.quantization_plan``'s kinds), in words
BASE_WORDS = {"none": "its base in bf16", "nf4": "a 4-bit base (NF4)", "int8": "an 8-bit base (int8)",
              "fp8": "an 8-bit base (fp8)"}  # fmt: skip


@dataclass
class FitCheck:
    """``problem``: why the task cannot run on its flavor (nothing is queued); ``notes``: what the trainer will
    turn on to fit, for the answer."""

    problem: str | None = None
    notes: list[str] = field(default_factory=list)


def index_of(probe: Probe | None) -> dict | None:
    """The probed ``model_index.json``, if any."""
    return probe.index if probe is not None and probe.index else None


def model_shape(base_model: str, probe: Probe | None) -> str | None:
    """The memory tables' shape of ``base_model`` for the ``LADDER`` check ("sd15" / "sdxl", by the family's
    ``memory_shape``: its name, or its ``model_index.json``; a model no family claims is taken for the default
    family's); None for anything else (not checked), and for a family checked by its quantized base."""
    family = family_or_default(index_of(probe))
    return family.memory_shape(base_model, index_of(probe)) if family.memory_fit() == LADDER else None


def weights_read(probe: Probe | None) -> str | None:
    """Which loading path the trainer will take for a LoRA: the UNet's fp16 variant when the repo has it."""
    if probe is None or not probe.files:
        return None
    has_fp16 = any(f.startswith("unet/") and ".fp16." in f for f in probe.files)
    return FP16_WEIGHTS if has_fp16 else FP32_WEIGHTS


def per_gpu_memory(flavor: str) -> float:
    """GPU memory (GB) of one GPU of ``flavor`` (0 for an unknown or CPU flavor)."""
    f = FLAVORS.get(flavor)
    return f.gpu_memory_gib / f.gpus if f is not None and f.gpus else 0.0


def memory_note(text: str) -> str:
    """A note that quotes the memory table's estimate, with the table's staleness warning when the training script
    changed after it was estimated (``training.memory.stale_reason``: a warning, the check still runs)."""
    stale = stale_reason()
    return f"{text} *Memory table {stale}.*" if stale else text


def family_notes(task: Task, probe: Probe | None) -> list[str] | None:
    """The answer's notes for a base model of a family the memory tables do not cover (one not checked by the
    ``LADDER``): no estimate, and the family's hardware note on a flavor smaller than its default; None for a
    ``LADDER`` family or an unknown pipeline (nothing to say)."""
    family = find_family(index_of(probe)) if index_of(probe) else None
    if family is None or family.memory_fit() == LADDER:
        return None
    return [f"**Memory:** no estimate for the {family.label or family.name} family yet: not checked.",
            *hardware_warning(family, task.hardware)]  # fmt: skip


def hardware_warning(family, flavor: str) -> list[str]:
    """The family's hardware note, as a warning, on a flavor with less GPU memory than the family's default."""
    default, note = family.defaults.hardware, family.defaults.hardware_note
    if note and per_gpu_memory(flavor) < per_gpu_memory(default):
        return [f"**Warning:** {note.rstrip('.')}. Its default GPU is {FLAVORS[default].label}."]
    return []


def family_fit(task: Task, family, shape: str) -> FitCheck:
    """A LoRA task of a family checked by its quantized base with a tabled ``shape`` on ``task.hardware``: the
    quantized base the trainer's plan picks for that GPU (``plan_quantization`` with the memory table), refused when
    even that does not fit, and the host RAM of loading the model; a full fine-tune of such a family is not
    estimated."""
    flavor, p = FLAVORS[task.hardware], task.params
    name = family.label or family.name
    if task.recipe != LORA:
        return FitCheck(notes=[f"**Memory:** no estimate for a {name} full fine-tune: not checked.",
                               *hardware_warning(family, task.hardware)])  # fmt: skip
    gpu_gb = per_gpu_memory(task.hardware)
    res = int(p.get("resolution") or family.defaults.resolution or 512)
    samples = int(p.get("batch_size", 1) or 1) * (2 if p.get("prior_preservation") else 1)
    try:
        choice = plan_quantization(
            str(p.get("quantize_base") or "auto"), lora=True,
            denoiser_params=int(load_table().get("unet_params", {}).get(shape) or family.denoiser_params or 0),
            budget_gib=gpu_gb * GIB_PER_NOMINAL_GB, compute_capability=compute_capability(task.hardware),
            fp8_available=False, weight_bytes=2, resolution=res, samples_per_step=samples,
            gradient_checkpointing=p.get("gradient_checkpointing", "auto"), model_shape=shape,
        )  # fmt: skip
    except BadInputError as e:
        return FitCheck(problem=f"It cannot run on {flavor.label}: {e}.")
    usable = usable_gib(gpu_gb)
    base = BASE_WORDS.get(choice.kind, f"a {choice.kind} base")
    est = choice.estimate_gib or 0.0
    if est > usable:
        return FitCheck(problem=f"It would not fit {flavor.label}: a {name} LoRA at {res} px with {base} needs about "
                                f"{est:.1f} GiB, more than the {usable:.1f} GiB usable for training on its {gpu_gb:g} "
                                "GB GPU. Choose a GPU with more memory or a lower resolution.")  # fmt: skip
    fits = f"fits {flavor.label} with {base}: about {est:.1f} of the {usable:.1f} GiB usable for training"
    result = FitCheck(notes=[memory_note(f"**Memory:** {fits} ({name} LoRA at {res} px)."),
                             *hardware_warning(family, task.hardware)])  # fmt: skip
    weights = GPU_QUANTIZED if choice.kind in GPU_QUANTIZED_KINDS else None  # loaded shard by shard to the GPU
    if fits_host_ram(shape, flavor, weights=weights) is False:
        result.problem = host_ram_problem(shape, flavor, weights)
    return result


def host_ram_problem(shape: str, flavor, weights: str | None) -> str:
    """Why ``flavor``'s host RAM cannot load ``shape`` (the measured or derived peak), with a flavor that can."""
    figure = host_ram_figure(shape, weights=weights)
    peak = figure.gib if figure is not None else 0.0
    how = "derived from its file sizes" if figure is not None and figure.source == DERIVED else "measured"
    bigger = [f.label for f in FLAVORS.values() if f.gpus and f.ram_gib and peak <= MARGIN * f.ram_gib]
    advice = f" Choose a flavor with more RAM, e.g. {bigger[0]}." if bigger else ""
    return (f"It would not fit {flavor.label}: loading this model takes about {peak:.1f} GiB of host RAM "
            f"({how}), more than {MARGIN:.0%} of the {flavor.ram_gib} GB it has.{advice}")  # fmt: skip


def check_fit(task: Task, probe: Probe | None = None) -> FitCheck:
    """GPU memory and host RAM of ``task`` on ``task.hardware`` (CPU flavors and unknown models: not checked; a
    family without estimates: notes only, see ``family_notes``), after the base check's own note (offline mode: the
    cached copy it used)."""
    result = _check_fit(task, probe)
    if probe is not None and probe.note:
        result.notes.insert(0, f"**Base model:** {probe.note}.")
    return result


def _check_fit(task: Task, probe: Probe | None) -> FitCheck:
    if not is_gpu(task.hardware):
        return FitCheck()
    index = index_of(probe)
    family = find_family(index) if index else None
    if family is not None and family.memory_fit() != LADDER and (tabled := family.memory_shape(task.base_model, index)):
        return family_fit(task, family, tabled)
    shape = model_shape(task.base_model, probe)
    if shape is None:
        return FitCheck(notes=family_notes(task, probe) or [])
    p = task.params
    memory = fit_flavor(
        task.hardware,
        shape,
        task.recipe,
        p.get("resolution"),
        int(p.get("batch_size", 1) or 1),
        bool(p.get("prior_preservation")),
        bool(p.get("train_text_encoder")),
        p.get("gradient_checkpointing", "auto"),
        p.get("use_8bit_adam", "auto"),
    )
    flavor = FLAVORS[task.hardware]
    if memory.verdict == "does_not_fit":
        return FitCheck(problem=f"It would not fit {flavor.label}: {memory.reason}")
    result = FitCheck()
    if memory.adjusted:
        result.notes.append(
            memory_note(f"**Memory:** {memory.reason} The trainer turns that on by itself (a little slower).")
        )
    if task.recipe == LORA:
        weights = weights_read(probe)
        if fits_host_ram(shape, flavor, weights=weights) is False:
            result.problem = host_ram_problem(shape, flavor, weights)
    return result
