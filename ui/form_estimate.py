"""The Train form's estimate for its values (``ui.estimate`` does the arithmetic): this Space's own finished runs
when any match, the Jobs price with the Jobs backend, and the captions the run writes before training."""

from __future__ import annotations

import dataclasses
from typing import Any

from contract.caption_models import caption_seconds
from scheduler.stored import past_runs
from scheduler.validation import uncaptioned_images
from ui.context import AppContext
from ui.estimate import Estimate, estimate, hourly_price, jobs_price, on_cpu
from ui.submission import uploaded_paths


def uses_jobs(ctx: AppContext) -> bool:
    """Whether this app trains on Hugging Face Jobs (``TRAINING_BACKEND=jobs``, or each visitor's own Jobs with
    ``BILLING=visitor``) instead of upgrading its Space."""
    s = ctx.settings
    return bool(getattr(s, "uses_jobs", False) or getattr(s, "visitor_pays", False))


def form_estimate(ctx: AppContext, steps: int, hardware: str, recipe: str, resolution: int, prior: bool,
                  base_model: str | None, family: str | None = None, scoring_images: int = 0,
                  captioned_photos: int = 0) -> Estimate:  # fmt: skip
    """The estimate for the form's values, from this Space's (this machine's) finished runs that match when there
    are any (``scheduler.stored.past_runs`` of the worker's last read of the queue: no request; runs of the same
    model ``family`` count too), else the built-in figures. Batch size and text encoder are the recipe's fixed
    values, else the trainer's defaults. ``captioned_photos``: the photos the run captions first (``with_captions``)."""
    info = ctx.recipes.get(recipe)
    fixed = dict(info.fixed_params) if info else {}
    batch, text_encoder = fixed.get("batch_size", 1), fixed.get("train_text_encoder", False)
    status = ctx.worker.status.snapshot()
    history = past_runs(status.tasks)
    price = jobs_price(hardware, status.job_prices) if uses_jobs(ctx) else None
    est = estimate(steps, hardware, recipe=recipe, resolution=resolution, prior_preservation=prior,
                   train_text_encoder=bool(text_encoder), base_model=base_model, family=family,
                   batch_size=batch if isinstance(batch, int) and not isinstance(batch, bool) else 1,
                   history=history, usd_per_hour=price, scoring_images=scoring_images)  # fmt: skip
    return with_captions(est, captioned_photos, price)


def with_captions(est: Estimate, photos: int, usd_per_hour: float | None = None) -> Estimate:
    """``est`` with the captioning of ``photos`` photos before training (``contract.caption_models.caption_seconds``
    on the task's device: the CPU for a CPU flavor or this machine's CPU) in ``caption_s`` and in the price."""
    if photos <= 0:
        return est
    seconds = caption_seconds(photos, "cpu" if on_cpu(est.hardware) else "cuda")
    return dataclasses.replace(est, caption_s=seconds,
                               usd=est.usd + seconds / 3600 * hourly_price(est.hardware, usd_per_hour))  # fmt: skip


def photos_to_caption(captions: Any, files: Any) -> int:
    """The uploaded photos a run captions when "Write captions" (``captions``) is on: those without a ``.txt`` of
    their name in the upload; 0 when it is off."""
    return len(uncaptioned_images(uploaded_paths(files))) if captions is True else 0
