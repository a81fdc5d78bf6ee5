"""Batches and conditioning for the DreamBooth loop.

All per-sample randomness (which image, flip, time, noise) comes from ``sample_generator(seed, index)`` of the
sample's global index, so a resumed run (or another number of processes) draws the same samples. Latents and
frozen text conditioning are cached once; a batch is drawn from the cache.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from training import data
from training.families.base import Components, LatentSet, TextCond
from training.families.sd import uniform_timestep


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator for global sample ``index`` (independent of process count and of resume)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1))


def make_batch(base_index: int, bs: int, inst: LatentSet, cls: LatentSet | None, params,
               draw_time: Callable[[torch.Generator], float | int] | int) -> dict[str, torch.Tensor]:  # fmt: skip
    """``bs`` samples from global index ``base_index`` on: instance samples first, then as many class samples
    (prior preservation; ``compute_loss`` splits the batch in halves). ``draw_time(g)`` draws a sample's time (the
    family's ``draw_time``); an int n draws uniform DDPM timesteps in [0, n)."""
    if isinstance(draw_time, int):
        draw_time = functools.partial(uniform_timestep, n_timesteps=draw_time)
    groups = [inst] + ([cls] if cls is not None else [])
    draws = []
    for i in range(bs):
        g = sample_generator(params.seed, base_index + i)
        draws.append([_draw(g, s, params, draw_time) for s in groups])
    blocks = [d[gi] for gi in range(len(groups)) for d in draws]  # instance block, then class block
    return {
        "latents": torch.stack([b[0] for b in blocks]),
        "noise": torch.stack([b[1] for b in blocks]),
        "timesteps": torch.tensor([b[2] for b in blocks]),  # int64 for integer timesteps, float32 for sigmas
        "time_ids": torch.stack([b[3] for b in blocks]),
        "image_index": torch.tensor([d[0][4] for d in draws]),  # each instance sample's image (its caption)
    }


def _draw(g: torch.Generator, s: LatentSet, params, draw_time):
    """One sample from the latent set ``s``: (latent, noise, time, time ids, image index)."""
    idx = int(torch.randint(len(s), (1,), generator=g))
    flip = params.random_flip and s.flip_mean is not None and bool(torch.rand((), generator=g) < 0.5)
    mean, std = (s.flip_mean, s.flip_std) if flip else (s.mean, s.std)
    t = draw_time(g)
    eps = torch.randn(mean.shape[1:], generator=g)
    latent = mean[idx] + std[idx] * eps
    noise = torch.randn(mean.shape[1:], generator=g)
    if params.noise_offset:
        noise = noise + params.noise_offset * torch.randn((mean.shape[1], 1, 1), generator=g)
    return latent, noise, t, s.time_ids[idx], idx


@torch.no_grad()
def text_cond(comps: Components, prompt: str, *, frozen: bool) -> TextCond:
    """A prompt's token ids and, when the text encoders are frozen, its encoded conditioning (cached once)."""
    family = comps.family
    ids = family.tokenize(comps, prompt)
    if not frozen:
        return TextCond(ids)
    out = family.encode_prompt(comps, comps.text_encoders, ids)
    return TextCond(ids, {k: v.detach() for k, v in out.items() if v is not None})


@dataclass
class CaptionConds:
    """Each instance image's conditioning (None: no image has a caption, every sample uses the instance prompt's),
    how many images have a caption out of how many, and a digest of their prompts (for the resume fingerprint)."""

    conds: list[TextCond] | None
    captioned: tuple[int, int]
    digest: str | None


def caption_conds(comps: Components, images: list[data.PreparedImage], spec, inst: TextCond, *,
                  frozen: bool) -> CaptionConds:  # fmt: skip
    """One ``text_cond`` per distinct prompt of the images (``data.caption_prompt``; the instance prompt's is
    ``inst``) when any image has a caption; an edit model's targets: each pair's instruction read with its source
    (the family's ``pair_conds``)."""
    captioned = (sum(im.caption is not None for im in images), len(images))
    if images and images[0].control is not None:  # an edit model's pairs: each read with its source image
        prompts = [im.caption or spec.instance_prompt for im in images]
        digest = hashlib.sha256("\0".join(prompts).encode())
        for im in images:
            digest.update(im.control.image.tobytes())
        pairs = [(prompt, im.control) for prompt, im in zip(prompts, images, strict=True)]
        return CaptionConds(comps.family.pair_conds(comps, pairs), captioned, digest.hexdigest()[:16])
    if not captioned[0]:
        return CaptionConds(None, captioned, None)
    prompts = [data.caption_prompt(im.caption, spec.instance_prompt, spec.class_prompt) for im in images]
    digest = hashlib.sha256("\0".join(prompts).encode()).hexdigest()[:16]
    conds = {spec.instance_prompt: inst}
    for prompt in prompts:
        if prompt not in conds:
            conds[prompt] = text_cond(comps, prompt, frozen=frozen)
    return CaptionConds([conds[prompt] for prompt in prompts], captioned, digest)


def conditioning(comps: Components, modules: dict, inst: TextCond | list[TextCond], cls: TextCond | None, bs: int,
                 device: torch.device, train_te: bool) -> dict[str, torch.Tensor]:  # fmt: skip
    """The batch's conditioning tensors: instance block then class block, each repeated ``bs`` times; ``inst`` may
    instead be one TextCond per instance sample (per-image captions). With ``train_te`` the (wrapped) text encoders
    in ``modules`` encode all prompts in one forward each (a DDP module may run only once per step)."""
    conds = [inst] + ([cls] if cls is not None else [])
    if isinstance(inst, list):  # one per instance sample, then the class prompt once per class sample
        conds, bs = inst + [cls] * len(inst) * (cls is not None), 1
    if train_te:
        encs = [modules.get(n, te) for n, te in zip(comps.info.text_encoder_names, comps.text_encoders, strict=True)]
        ids = [torch.cat([c.token_ids[i] for c in conds]) for i in range(len(encs))]
        tensors = {k: v for k, v in comps.family.encode_prompt(comps, encs, ids).items() if v is not None}
    else:
        tensors = {k: torch.cat([c.tensors[k] for c in conds]) for k in conds[0].tensors}
    return {k: v.repeat_interleave(bs, dim=0).to(device) for k, v in tensors.items()}
