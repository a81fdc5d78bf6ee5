"""Validation of a training submission: one clear message per problem, and no side effects.

The UI and the CLI call ``validate_submission`` before anything is uploaded or enqueued; an empty list means the
submission is acceptable. ``submission_warnings`` gives advice that does not block (e.g. very few images).

An upload may hold per-image captions besides its images: a ``.txt`` with the stem of an image of the same upload
(``dog1.jpg`` + ``dog1.txt``; the rules are ``training.data``'s), passed as ``captions`` (``split_captions`` sorts an
upload). The image limits count images only.

The numbers' bounds are ``contract.params.PARAMS``, the very table the trainer (``training.spec``) checks, so the
form, the CLI and the trainer accept the same values. One policy is narrower, and says so: ``Limits.resolution``,
the resolutions offered for real models (the demo model gets the whole shared bound).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image, UnidentifiedImageError

from contract.flavors import FLAVORS, is_gpu
from contract.params import (
    FULL_RECIPES,
    LR_SCHEDULER_CHOICES,
    LR_SCHEDULER_LABEL,
    MAX_PROMPT_CHARS,
    PARAMS,
    QUANTIZE_BASE_CHOICES,
    Bound,
    text_problem,
    validation_prompts_problem,
)
from scheduler.task import Task
from training.data import MAX_CAPTION_BYTES, MAX_CAPTION_CHARS, caption_files, decode_caption  # torch-free
from training.demo import DEMO_MODEL  # torch-free constants
from training.pairs import caption_names


@dataclass(frozen=True)
class Limits:
    """Bounds a submission must respect besides the params' own (``contract.params.PARAMS``)."""

    max_prompt_chars: int = MAX_PROMPT_CHARS
    min_images: int = 1
    recommended_min_images: int = 3
    max_images: int = 100
    max_image_bytes: int = 20 * 1024 * 1024
    min_image_side: int = 64
    max_image_pixels: int = 64_000_000
    #: policy for every model but the demo model: the resolutions a real model is worth training at (the form
    #: offers 256 to 1024); a narrowing of the shared bound, so whatever it admits the trainer admits too
    resolution: Bound = PARAMS["resolution"].narrowed(low=256, high=1024, multiple=64)


LIMITS = Limits()
#: ``params.score`` in the form (``ui.advanced``) and in the messages: score each sampling point, pick the best
SCORE_LABEL = "Score checkpoints"
#: ``params.auto_captions`` in the form and the messages: a captioning model describes the photos without a ``.txt``
CAPTIONS_LABEL = "Write captions"


def check_prompt(label: str, prompt: str | None, limits: Limits = LIMITS, required: bool = True) -> list[str]:
    """The problem with a prompt (empty when required, too long, not one line of visible text: see
    ``contract.params.text_problem``), as a list of at most one message."""
    if prompt is None or not prompt.strip():
        return [f"{label}: must not be empty."] if required else []
    if len(prompt) > limits.max_prompt_chars:
        return [f"{label}: {len(prompt)} characters; at most {limits.max_prompt_chars} are allowed."]
    return check_text(label, prompt)


def check_text(label: str, text: str | None) -> list[str]:
    """The problem with a one-line text field (a control character, a bidi override), as a list of at most one."""
    problem = text_problem(text) if isinstance(text, str) else None
    return [f"{label}: {problem}."] if problem else []


def check_image(path: Path, limits: Limits = LIMITS) -> str | None:
    """The problem with one image file, or None when it is a usable image."""
    name = path.name
    if not path.is_file():
        return f"Image {name}: file not found."
    size = path.stat().st_size
    if size > limits.max_image_bytes:
        return f"Image {name}: {size / 2**20:.1f} MB; at most {limits.max_image_bytes / 2**20:.0f} MB per image."
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            return f"Image {name}: too many pixels."
        return f"Image {name}: not a readable image file (PNG, JPEG, WebP, ...)."
    if width * height > limits.max_image_pixels:
        return f"Image {name}: {width}x{height} has too many pixels (at most {limits.max_image_pixels:,})."
    if min(width, height) < limits.min_image_side:
        return f"Image {name}: {width}x{height} is too small; each side needs at least {limits.min_image_side} px."
    if not decodes(path, width, height):  # within the pixel limit: decoding it is bounded
        return f"Image {name}: the file is incomplete or damaged (it cannot be decoded); save or copy it again."
    return None


def decodes(path: Path, width: int, height: int) -> bool:
    """Whether the image's data decodes to the end (``verify()`` reads no JPEG data: a truncated JPEG passes it). Run
    only within the pixel limit; a JPEG is decoded at 1/8 scale (every byte is still read, in 1/64 of the memory)."""
    try:
        with Image.open(path) as img:
            img.draft(None, (max(1, width // 8), max(1, height // 8)))
            img.load()
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        return False
    return True


def split_captions(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(images, captions) of an upload: the ``.txt`` files are captions, everything else is an image."""
    captions = caption_files(Path(p) for p in paths)
    return [Path(p) for p in paths if Path(p) not in captions], captions


def uncaptioned_images(paths: Sequence[Path]) -> list[Path]:
    """The images of an upload without a ``.txt`` caption of their name (``split_captions``)."""
    images, captions = split_captions(paths)
    own = {c.stem for c in captions}
    return [image for image in images if image.stem not in own]


def check_captions(images: Sequence[Path], captions: Sequence[Path]) -> list[str]:
    """The problems of an upload's captions: each is UTF-8 text of at most ``MAX_CAPTION_CHARS`` characters, names
    an image of the upload (or a before/after pair of it: ``training.pairs``) by its stem, and is its only caption."""
    stems = caption_names(images)
    problems, seen = [], set()
    for path in map(Path, captions):
        name = path.name
        if path.stem not in stems:
            problems.append(f"Caption {name}: no photo named {path.stem}.* in this upload; a caption goes with its "
                            "photo (same name, .txt), so add the photo or remove the caption.")  # fmt: skip
        elif path.stem in seen:
            problems.append(f"Caption {name}: a second caption for {path.stem}.*; keep one.")
        elif not path.is_file():
            problems.append(f"Caption {name}: file not found.")
        elif path.stat().st_size > MAX_CAPTION_BYTES:
            problems.append(f"Caption {name}: {path.stat().st_size:,} bytes; a caption has at most "
                            f"{MAX_CAPTION_CHARS} characters.")  # fmt: skip
        else:
            try:
                decode_caption(path.read_bytes(), name)
            except ValueError as exc:
                problems.append(f"{str(exc)[:1].upper()}{str(exc)[1:]}.")
        seen.add(path.stem)
    return problems


def check_param(bound: Bound, value: object) -> list[str]:
    """The problem with one param's value under ``bound`` (the form's wording), as a list of at most one message.
    A whole float (2.0, from a number field) counts as an int."""
    if bound.kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
            return [f"{bound.label}: must be a whole number from {bound.span()}."]
        value = int(value)
    if bound.admits(value):
        return []
    if bound.multiple > 1 and dataclasses.replace(bound, multiple=1).admits(value):
        return [f"{bound.label}: {value} must be a multiple of {bound.multiple}."]
    return [f"{bound.label}: {value!r} is out of range; use {bound.span()}."]


def check_params(params: Mapping[str, object], skip: Collection[str] = ()) -> list[str]:
    """The problems of a task's ``params`` under the shared bounds (the keys it holds, but ``skip``; null is
    "auto"), and of its ``validation_prompts``."""
    problems: list[str] = []
    for key, bound in PARAMS.items():
        if key not in skip and params.get(key) is not None:
            problems += check_param(bound, params[key])
    if "validation_prompts" not in skip and params.get("validation_prompts") is not None:
        problem = validation_prompts_problem(params["validation_prompts"])
        if problem:
            problems.append(f"Validation prompts: {problem}.")
    return problems


def validate_submission(
    *,
    instance_prompt: str | None,
    images: Sequence[Path],
    hardware: str,
    output_repo: str,
    class_prompt: str | None = None,
    steps: int | None = None,
    learning_rate: float | None = None,
    rank: int | None = None,
    resolution: int | None = None,
    base_model: str | None = None,
    base_models: Collection[str] | None = None,
    recipe: str | None = None,
    recipes: Collection[str] | None = None,
    allow_cpu_training: bool = False,
    quantize_base: str | None = None,
    limits: Limits = LIMITS,
    captions: Sequence[Path] = (),
    lr_scheduler: str | None = None,
    lr_warmup_steps: int | None = None,
    snr_gamma: float | None = None,
    score: object = None,
    auto_captions: object = None,
) -> list[str]:
    """Every problem with a submission, one message each; empty when it can be enqueued. Touches nothing.

    ``captions``: the ``.txt`` captions uploaded with ``images`` (``check_captions``). Numbers left as None are not
    checked (the recipe's defaults apply), nor are ``score`` and ``auto_captions`` (true or false when given). ``base_models``/``recipes``,
    when given, are the allowed choices.
    """
    problems = check_prompt("Instance prompt", instance_prompt, limits, required=True)
    problems += check_prompt("Class prompt", class_prompt, limits, required=False)

    if len(images) < limits.min_images:
        problems.append(f"Images: at least {limits.min_images} needed, got {len(images)}.")
    elif len(images) > limits.max_images:
        problems.append(f"Images: at most {limits.max_images} allowed, got {len(images)}.")
    else:
        problems += [p for p in (check_image(Path(image), limits) for image in images) if p]
    problems += check_captions(images, captions)

    if hardware not in FLAVORS:
        problems.append(f"Hardware: unknown flavor {hardware!r}; choose one of {', '.join(FLAVORS)}.")
    elif not is_gpu(hardware) and not allow_cpu_training:
        problems.append(f"Hardware: {hardware!r} has no GPU; choose a GPU flavor such as t4-small.")

    if not output_repo or not output_repo.strip():
        problems.append("Output repo: must not be empty.")
    else:
        try:
            validate_repo_id(output_repo)
        except HFValidationError as exc:
            problems.append(f"Output repo: {output_repo!r} is not a valid repo id ({exc}).")

    problems += check_params({"steps": steps, "learning_rate": learning_rate, "rank": rank,
                              "lr_warmup_steps": lr_warmup_steps, "snr_gamma": snr_gamma})  # fmt: skip
    if lr_scheduler is not None and lr_scheduler not in LR_SCHEDULER_CHOICES:
        problems.append(f"{LR_SCHEDULER_LABEL}: {lr_scheduler!r} is not a choice; use one of "
                        f"{', '.join(LR_SCHEDULER_CHOICES)}.")  # fmt: skip
    if score is not None and not isinstance(score, bool):
        problems.append(f"{SCORE_LABEL}: {score!r} is not on or off; use true or false.")
    if auto_captions is not None and not isinstance(auto_captions, bool):
        problems.append(f"{CAPTIONS_LABEL}: {auto_captions!r} is not on or off; use true or false.")
    if resolution is not None:
        # the tiny demo model trains at its own native size (DEMO_RESOLUTION): it gets the whole shared bound
        bound = PARAMS["resolution"] if base_model == DEMO_MODEL else limits.resolution
        problems += check_param(bound, resolution)

    if quantize_base is not None:
        if quantize_base not in QUANTIZE_BASE_CHOICES:
            choices = ", ".join(QUANTIZE_BASE_CHOICES)
            problems.append(f"Quantized base: {quantize_base!r} is not a choice; use one of {choices}.")
        elif recipe in FULL_RECIPES and quantize_base not in ("auto", "none"):
            problems.append(f"Quantized base: {quantize_base} is for LoRA; a full fine-tune trains the base weights "
                            "themselves, which cannot be quantized. Choose the LoRA recipe or 'none'.")  # fmt: skip

    problems += check_text("Base model", base_model) + check_text("Recipe", recipe)
    if base_models is not None and base_model not in base_models:
        problems.append(f"Base model: {base_model!r} is not offered here; choose one of {', '.join(base_models)}.")
    if recipes is not None and recipe not in recipes:
        problems.append(f"Recipe: unknown recipe {recipe!r}; choose one of {', '.join(recipes)}.")
    return problems


def validate_task(
    task: Task,
    images: Sequence[Path],
    *,
    base_models: Collection[str] | None = None,
    recipes: Collection[str] | None = None,
    allow_cpu_training: bool = False,
    limits: Limits = LIMITS,
    captions: Sequence[Path] = (),
) -> list[str]:
    """``validate_submission`` for a built Task; numbers are read from ``task.params`` keys
    ``steps``, ``learning_rate``, ``rank``, ``resolution`` and the schedule's (``lr_scheduler``, ``lr_warmup_steps``,
    ``snr_gamma``) when present, ``quantize_base`` and ``score``; every other
    param it holds is checked against the shared bounds too (``check_params``). ``captions``: the ``.txt``
    captions sent with ``images`` (``split_captions``). A task that trains on a dataset (``task.dataset``, checked by
    ``scheduler.dataset_check``) comes with no images."""
    params = task.params
    if task.dataset is not None:
        limits = dataclasses.replace(limits, min_images=0)
    named = ("steps", "learning_rate", "rank", "resolution", "lr_scheduler", "lr_warmup_steps", "snr_gamma")
    problems = validate_submission(
        instance_prompt=task.instance_prompt,
        class_prompt=task.class_prompt,
        images=images,
        hardware=task.hardware,
        output_repo=task.output_repo,
        steps=params.get("steps"),
        learning_rate=params.get("learning_rate"),
        rank=params.get("rank"),
        resolution=params.get("resolution"),
        base_model=task.base_model,
        base_models=base_models,
        recipe=task.recipe,
        recipes=recipes,
        allow_cpu_training=allow_cpu_training,
        quantize_base=params.get("quantize_base"),
        limits=limits,
        captions=captions,
        lr_scheduler=params.get("lr_scheduler"),
        lr_warmup_steps=params.get("lr_warmup_steps"),
        snr_gamma=params.get("snr_gamma"),
        score=params.get("score"),
        auto_captions=params.get("auto_captions"),
    )
    return problems + check_params(params, skip=named)


def submission_warnings(image_count: int, limits: Limits = LIMITS) -> list[str]:
    """Advice that does not block a submission (plain text, for the UI and the CLI)."""
    if 0 < image_count < limits.recommended_min_images:
        photos = "1 photo" if image_count == 1 else f"{image_count} photos"
        return [f"only {photos}: DreamBooth needs {limits.recommended_min_images} to 20 photos of the subject "
                "(varied backgrounds and angles); with fewer, the model tends to copy the photo, background included. "
                "Add more photos for a better model."]  # fmt: skip
    return []
