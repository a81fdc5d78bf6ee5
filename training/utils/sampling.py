"""Images the run generates: validation samples during and after training, and class images for prior
preservation (generated once, cached in the work folder)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from contract.events import Sample
from contract.scores import SCORING_IMAGES_DIR
from training import data
from training.families.base import Components, TextCond
from training.utils.runtime import free_memory

#: with validation prompts and no ``validation_every``, samples are taken this many times per run (the last at the end)
SAMPLES_PER_RUN = 4
#: no sample before the end of a run shorter than SAMPLES_PER_RUN times this (a few-step test or smoke run pays for
#: one sampling pass, not one per step)
MIN_STEPS_BETWEEN_SAMPLES = 25
#: images per class-image batch
CLASS_IMAGE_BATCH = 4


def sample_every(steps: int, validation_every: int | None) -> int | None:
    """Steps between samples during training: ``validation_every`` if set (0: only at the end), else a quarter of
    the run (``SAMPLES_PER_RUN`` samples in all, at least ``MIN_STEPS_BETWEEN_SAMPLES`` apart); None when no
    sample is taken before the end."""
    if validation_every is not None:
        return validation_every or None
    every = steps // SAMPLES_PER_RUN
    return every if every >= MIN_STEPS_BETWEEN_SAMPLES else None


def take_samples(comps: Components, wrapped: dict, ctx, step: int, acc, *, resolution: int,
                 cached: dict[str, TextCond] | None = None, prompts: list[str] | None = None,
                 shown: int | None = None) -> dict[str, str]:  # fmt: skip
    """One image per prompt (``prompts``, else the validation prompts) from the live (trained) modules ``wrapped``:
    the first ``shown`` (default: all) are the run's samples, saved as ``output/samples/step{step}_{i}.png`` and
    announced by a "sample" event, the others only feed the scores (``output/scores/step{step}_{i}.png``); returns
    {prompt: path} (empty on other processes than the main one). ``cached``: each prompt's conditioning, for a family
    that freed its text encoders. Frozen modules go back to the CPU afterwards."""
    p, family = ctx.spec.params, comps.family
    ctx.progress.phase("sampling")
    written: dict[str, str] = {}
    if acc.is_main_process:
        comps.vae.to(acc.device)
        for te in comps.text_encoders:
            if te is not None:  # None: freed after caching (the family samples from cached conditioning)
                te.to(acc.device)
        denoiser = acc.unwrap_model(wrapped[family.denoiser_name])
        tes = [te if te is None else acc.unwrap_model(wrapped.get(n, te))
               for n, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True)]  # fmt: skip
        pipe = family.build_pipeline(comps, denoiser=denoiser, text_encoders=tes)
        prompts = p.validation_prompts if prompts is None else prompts
        shown = len(prompts) if shown is None else shown
        denoiser.eval()
        for i, prompt in enumerate(prompts):
            g = torch.Generator().manual_seed(p.seed + i)
            conds = [cached[prompt]] if cached else None
            (img,) = family.generate(pipe, comps, [prompt], resolution, p, g, acc, conds=conds)
            path = ctx.output_dir / ("samples" if i < shown else SCORING_IMAGES_DIR) / f"step{step}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
            written[prompt] = str(path.resolve())
        denoiser.train()
        del pipe
        if not p.train_text_encoder:
            for te in comps.text_encoders:
                if te is not None:
                    te.to("cpu")
        comps.vae.to("cpu")
        free_memory()
        if shown:
            ctx.progress.emit(Sample(step=step, paths=list(written.values())[:shown]))
    acc.wait_for_everyone()
    return written


def class_images(comps: Components, ctx, resolution: int, acc) -> list[data.PreparedImage]:
    """The class images for prior preservation: generated once with the base model (cached in
    ``work/class_images/<key>``, the key from base model, class prompt and resolution), then read back."""
    spec, p = ctx.spec, ctx.spec.params
    key = hashlib.sha256(f"{spec.base_model}|{spec.class_prompt}|{resolution}".encode()).hexdigest()[:16]
    folder = ctx.class_images_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    have = len(data.list_image_files(folder))
    if have < p.num_class_images:
        ctx.progress.phase("generating_class_images")
        if acc.is_main_process:
            pipe = comps.family.build_pipeline(comps)
            for start in range(have, p.num_class_images, CLASS_IMAGE_BATCH):
                n = min(CLASS_IMAGE_BATCH, p.num_class_images - start)
                g = torch.Generator().manual_seed(p.seed + 7 + start)
                imgs = comps.family.generate(pipe, comps, [spec.class_prompt] * n, resolution, p, g, acc)
                for j, im in enumerate(imgs):
                    im.save(folder / f"class_{start + j:05d}.png")
            del pipe
            free_memory()
        acc.wait_for_everyone()
    files = data.list_image_files(folder)[: p.num_class_images]
    return [data._resize_crop(_open_rgb(f), resolution, f) for f in files]


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
