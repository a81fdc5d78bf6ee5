"""The model card (README.md in the output folder), built with huggingface_hub's ModelCard. Never holds a token.

The card is Markdown on the Hub, and the task's text (prompts, the base model) was typed by whoever submitted it:
each goes in as text that renders as typed and makes no link or image (``contract.text``: a code span, or escaped
text), and as a JSON string in the Python snippet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

from contract.text import md_code, md_text
from training.base_check import DEMO_MODEL
from training.card_scores import eval_results, scored, scores_section

if TYPE_CHECKING:
    from training.families.base import Components
    from training.recipe_base import RunContext
    from training.utils.results import RunResult


def _is_hub_id(base_model: str) -> bool:
    return not Path(base_model).exists() and base_model.count("/") == 1 and not base_model.startswith(("/", "."))


def _file_notes(notes: dict[str, str]) -> str:
    """``a.safetensors`` is in diffusers format; ``b.safetensors`` is ...: one sentence per weights file."""
    return "; ".join(f"`{name}` is {what}" for name, what in notes.items()) + ("." if notes else "")


def write_model_card(ctx: RunContext, result: RunResult, comps: Components) -> Path:
    """Write ``ctx.output_dir/README.md`` describing the base model, trigger prompt, settings and samples, and the
    scores with the picked checkpoint when the run was scored (``training.card_scores``)."""
    spec, p = ctx.spec, ctx.spec.params
    lora = spec.recipe.endswith("lora") or "lora" in result.recipe
    card_info = comps.family.card_info(comps)  # the model family's licence, tags and file notes
    kind = "image-to-image" if card_info.edits else "text-to-image"
    tags = [kind, "diffusers", "dreambooth", *card_info.tags, "diffusers-training"] + (["lora"] if lora else [])
    samples = result.sample_paths
    record = scored(result.scores)  # the scores of the sampling points and the pick (None: unscored)
    widget = [
        {"text": prompt, "output": {"url": Path(path).relative_to(ctx.output_dir.resolve()).as_posix()}}
        for prompt, path in samples.items()
    ]
    data = ModelCardData(
        base_model=spec.base_model if _is_hub_id(spec.base_model) else None,
        library_name="diffusers",
        license=card_info.license,
        **{k: v for k, v in (("license_name", card_info.license_name), ("license_link", card_info.license_link)) if v},
        tags=tags,
        instance_prompt=spec.instance_prompt,
        widget=widget or None,
        **_model_index(spec, record),
    )
    plan = result.memory_plan
    captions = _captions_note(result.captioned)
    captions_line = "" if captions == "no" else (
        " It was trained with per-image captions (each image's own `.txt` description, the trigger word added where "
        "it was missing)." if result.captions is None else
        " It was trained with per-image captions (listed below), written by a vision-language model for the photos "
        "without their own `.txt`, the trigger word kept."
    )  # fmt: skip
    klass = md_code(spec.class_prompt or "", in_table=True)
    settings = {
        "recipe": result.recipe,
        "base model": md_code(spec.base_model, in_table=True),
        "steps": result.steps,
        "learning rate": result.learning_rate,
        "lr scheduler": f"{p.lr_scheduler} (warm-up {result.warmup_steps} steps)",
        "resolution": result.resolution,
        "batch size": p.batch_size,
        "seed": p.seed,
        "mixed precision": result.mixed_precision,
        "prior preservation": f"yes ({klass}, {p.num_class_images} images)" if p.prior_preservation else "no",
        "text encoder trained": "yes" if p.train_text_encoder else "no",
        "SNR gamma": p.snr_gamma,
        "noise offset": p.noise_offset,
        "random flip": p.random_flip,
        "gradient checkpointing": plan.gradient_checkpointing if plan else None,
        "8-bit Adam": plan.use_8bit_adam if plan else None,
        "base weights while training": _quantized_note(plan),
    }
    if ctx.script:  # the file's name only: a path could tell where the owner keeps their files
        settings["training script"] = f"`{Path(ctx.script).name}` (a customized copy of `training/train.py`)"
    if captions_line:  # an edit model's captions are its pairs' instructions
        settings["pair instructions" if card_info.edits else "per-image captions"] = captions
    if lora:
        settings.update({"LoRA rank": p.rank, "LoRA alpha": p.alpha or p.rank})
    rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    call = "prompt=" if card_info.prompt_keyword else ""
    base, prompt = _py(spec.base_model), _py(spec.instance_prompt)
    # a model that is not uploaded loads from its output folder (this card's own folder) on this machine
    repo = _py(spec.output.repo_id if spec.output else str(ctx.output_dir.resolve()))
    if card_info.edits:  # an edit model: a source image and an instruction
        call = 'image=[load_image("source.png")], prompt='
    if lora:
        usage = (
            f"```python\nfrom diffusers import {card_info.pipeline_class}\n"
            + ("from diffusers.utils import load_image\n" if card_info.edits else "")
            + f"\npipe = {card_info.pipeline_class}.from_pretrained({base})\n"
            f"pipe.load_lora_weights({repo})\n"
            f"image = pipe({call}{prompt}).images[0]\n```\n\n"
            + _file_notes(card_info.weight_notes)
        )
    else:
        usage = (
            f"```python\nfrom diffusers import {card_info.pipeline_class}\n\n"
            f"pipe = {card_info.pipeline_class}.from_pretrained({repo})\n"
            f"image = pipe({call}{prompt}).images[0]\n```"
        )
    scores = f"\n{scores_section(record, repo=repo, lora=lora)}" if record is not None else ""
    demo_note = ""
    if spec.base_model == DEMO_MODEL:
        demo_note = (
            "> **Demo model.** This was trained on the built-in demo model (`builtin:demo`): a tiny pipeline with "
            "random weights that trains in about a minute on a CPU to try the whole loop. It produces noise, not "
            "pictures of the subject; train on a real base model (a Hub id such as "
            "`stable-diffusion-v1-5/stable-diffusion-v1-5`, or a local folder) for real results.\n"
        )
    intro = f"Trained with DreamBooth on a few images of a subject. Use the trigger prompt **{md_code(spec.instance_prompt)}**."
    if card_info.edits:
        intro = (f"Trained on before/after pairs to learn an edit: give it a source image and the instruction "
                 f"(**{md_code(spec.instance_prompt)}**, or the pairs' own). Each sample below is a held-out source "
                 "(left) and the model's edit of it (right).")  # fmt: skip
        captions_line = ""
    gallery = "\n".join(f"![{md_text(text)}]({w['output']['url']})" for w, text in zip(widget, samples, strict=True))
    body = f"""
# DreamBooth {"LoRA" if lora else "fine-tune"} of {md_code(spec.base_model)}

{intro}{captions_line}

{demo_note}
{gallery}

## Use it

{usage}
{scores}{_captions_section(result)}
## Training settings

| setting | value |
|---|---|
{rows}
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = ctx.output_dir / "README.md"
    card.save(str(path))
    return path


def _model_index(spec, record) -> dict:
    """``model_name`` and ``eval_results`` (the ``model-index``) for the picked checkpoint's scores, or nothing."""
    repo_id = spec.output.repo_id if spec.output else None
    results = eval_results(record, repo_id) if record is not None else []
    return {"model_name": repo_id or f"dreambooth-{spec.task_id}", "eval_results": results} if results else {}


def _py(text: str) -> str:
    """``text`` as a Python string literal on one line (a JSON string is one), for the usage snippet."""
    return json.dumps(text, ensure_ascii=False)


def _quantized_note(plan) -> str | None:
    """How the frozen base model was held while training (QLoRA: NF4 / int8 / fp8; the LoRA itself trains and is
    saved in full precision and applies to the unquantized base)."""
    kind = getattr(plan, "quantized_base", None)
    if kind is None:
        return None
    if kind == "none":
        return "not quantized"
    return f"quantized to {kind} (QLoRA); the LoRA is full precision and loads into the unquantized base model"


def _captions_note(captioned: tuple[int, int] | None) -> str:
    """"yes (2 of 3 images; the others: the instance prompt)" when some images had a ``.txt`` caption, else "no"."""
    if not captioned or not captioned[0]:
        return "no"
    with_caption, total = captioned
    rest = "" if with_caption == total else "; the others: the instance prompt"
    return f"yes ({with_caption} of {total} images{rest})"


def _captions_section(result: RunResult) -> str:
    """The "Captions" section of a run that wrote captions (``params.auto_captions``): each photo's caption as it
    trained, as inert text, the written ones marked; the files are in the repo's ``captions/`` folder."""
    written = result.captions
    if written is None or not written.captions:
        return ""
    mine = set(written.written)
    rows = "\n".join(f"| {md_code(stem, in_table=True)} | {md_text(text)} | "
                     f"{'captioning model' if stem in mine else 'its own .txt'} |"
                     for stem, text in sorted(written.captions.items()))  # fmt: skip
    return ("\n## Captions\n\nEach photo trained with this caption (by its number in the upload). The captions are "
            "in `captions/` as `.txt` files: to change a word, edit them and submit them again with the photos, "
            f"each named like its photo.\n\n| photo | caption | written by |\n|---|---|---|\n{rows}\n")
