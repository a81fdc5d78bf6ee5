"""Will a submitted task fit the GPU flavor it asks for? Checked on the CPU Space before anything is enqueued.

Two limits, both from committed measurements and no GPU: the GPU memory of the task's configuration
(``scheduler.memory_fit``, the fake-CUDA estimator's table) and the host RAM the trainer's loading needs
(``scheduler.host_ram``, the full-size ``host_ram`` benchmark records). A configuration that fits only with gradient
checkpointing or 8-bit Adam is queued: the trainer's memory plan turns them on by itself ("auto"), and the answer says
so. One that cannot fit is refused with the reason. Models the tables do not know (a custom or tiny model) are not
checked; a model of another family (``training.families``: Flux.1, Flux.2 [klein]) is not refused either: the answer
says that there is no estimate for the family yet and, on a flavor with less GPU memory than the family's default
one, gives the family's ``hardware_note`` (a Flux task on a T4: its speed and the 4-bit base it needs). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.flavors import FLAVORS, is_gpu
from scheduler.host_ram import MARGIN, fits_host_ram, host_ram_gib
from scheduler.memory_fit import fit_flavor, shape_for_base_model
from scheduler.task import Task
from training.base_check import Probe, is_sdxl_index
from training.families import find_family

FP16_WEIGHTS, FP32_WEIGHTS = "fp16 variant", "fp32 files"  # the ``weights`` labels of the host_ram records
LORA = "dreambooth-lora"


@dataclass
class FitCheck:
    """``problem``: why the task cannot run on its flavor (nothing is queued); ``notes``: what the trainer will
    turn on to fit, for the answer."""

    problem: str | None = None
    notes: list[str] = field(default_factory=list)


def model_shape(base_model: str, probe: Probe | None) -> str | None:
    """The memory tables' shape of ``base_model``, "sd15" / "sdxl": by its name, or SDXL by its
    ``model_index.json``; None for anything else (not checked), and for a pipeline of another family whatever
    its name says."""
    family = find_family(probe.index) if probe is not None and probe.index else None
    if family is not None and family.name != "sd":
        return None
    shape = shape_for_base_model(base_model)
    if shape is None and probe is not None and probe.index and is_sdxl_index(probe.index):
        return "sdxl"
    return shape


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


def family_notes(task: Task, probe: Probe | None) -> list[str] | None:
    """The answer's notes for a base model of a family the memory tables do not cover (not the SD family): no
    estimate, and the family's hardware note on a flavor smaller than its default; None for the SD family or an
    unknown pipeline (nothing to say)."""
    family = find_family(probe.index) if probe is not None and probe.index else None
    if family is None or family.name == "sd":
        return None
    notes = [f"**Memory:** no estimate for the {family.label or family.name} family yet: not checked."]
    default, note = family.defaults.hardware, family.defaults.hardware_note
    if note and per_gpu_memory(task.hardware) < per_gpu_memory(default):
        notes.append(f"**Warning:** {note.rstrip('.')}. Its default GPU is {FLAVORS[default].label}.")
    return notes


def check_fit(task: Task, probe: Probe | None = None) -> FitCheck:
    """GPU memory and host RAM of ``task`` on ``task.hardware`` (CPU flavors and unknown models: not checked; a
    family without estimates: notes only, see ``family_notes``)."""
    if not is_gpu(task.hardware):
        return FitCheck()
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
        result.notes.append(f"**Memory:** {memory.reason} The trainer turns that on by itself (a little slower).")
    if task.recipe == LORA:
        weights = weights_read(probe)
        if fits_host_ram(shape, flavor, weights=weights) is False:
            peak = host_ram_gib(shape, weights=weights) or 0.0
            bigger = [f.label for f in FLAVORS.values() if f.gpus and f.ram_gib and peak <= MARGIN * f.ram_gib]
            advice = f" Choose a flavor with more RAM, e.g. {bigger[0]}." if bigger else ""
            result.problem = (
                f"It would not fit {flavor.label}: loading this model takes about {peak:.1f} GiB of host RAM "
                f"(measured), more than {MARGIN:.0%} of the {flavor.ram_gib} GB it has.{advice}"
            )
    return result
