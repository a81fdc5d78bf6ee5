"""Scoring a run as it trains (``contract.scores``): each sampling point's images are scored against the photos and
their prompts, the LoRA of each scored point is kept in ``output/checkpoints/step-NNNNNN/``, and at the end the
picked checkpoint becomes the main weights. ``ScoreBook`` keeps the record; the scoring models are
``training.scoring``'s, loaded for each point and freed before training resumes.

A scoring model that does not load, or a scoring pass that runs out of memory, never fails the run: the record says
why (``ScoreRecord.note``) and training goes on without that point's image scores.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from contract.events import Scores
from contract.scores import (
    SCORED_CHECKPOINTS_DIR,
    SCORES_NAME,
    PointScores,
    ScoreRecord,
    pick,
    scoring_prompts,
    shows_subject,
)
from training.utils.runtime import free_memory

log = logging.getLogger(__name__)


def run_scorer_ids(spec) -> tuple[str | None, str | None]:
    """The run's scoring models (``training.scoring.scorer_ids`` from the trainer's SCORING_* settings)."""
    from contract.settings import load_trainer_settings
    from training.scoring import scorer_ids

    variables = ("SCORING_DINO_MODEL", "SCORING_CLIP_MODEL")
    return scorer_ids(spec.base_model, load_trainer_settings(variables=variables))


def point_prompts(spec) -> list[str]:
    """What each sampling point generates: the validation prompts, and when the task scores with a scoring model the
    built-in scoring prompts too (``contract.scores.scoring_prompts``; with none set, only the validation loss is
    scored and no image is made for it)."""
    p = spec.params
    if scores_images(spec):
        return scoring_prompts(spec.instance_prompt, spec.class_prompt, p.validation_prompts)
    return list(p.validation_prompts)


def scores_images(spec) -> bool:
    """Whether the run scores images: the task scores and a scoring model is set."""
    return spec.params.score and any(run_scorer_ids(spec))


def scoring_gib(spec, device: torch.device) -> float | None:
    """The scoring models' memory while a point is scored (None: the task does not score), for the memory plan."""
    from contract.scoring_models import scoring_memory_gib

    if not spec.params.score:
        return None
    return round(scoring_memory_gib(*run_scorer_ids(spec), 2 if device.type == "cuda" else 4), 2)


def checkpoint_folder(step: int) -> str:
    """The output-relative folder that keeps the weights of ``step``."""
    return f"{SCORED_CHECKPOINTS_DIR}/step-{step:06d}"


@contextlib.contextmanager
def adapters_off(modules) -> Iterator[bool]:
    """Turn off every peft adapter layer in ``modules`` (the base model's behaviour), back on afterwards; yields
    whether there was any (no adapter: the modules are the trained weights themselves)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield bool(layers)
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class ScoreBook:
    """The run's ``ScoreRecord``, written to ``output/scores.json`` after every point (main process only)."""

    def __init__(self, ctx, photos: list, prompts: list[str], *, keep_weights: bool, start: int,
                 device: torch.device, images_scored: bool = True) -> None:  # fmt: skip
        """``prompts``: what each point generates (``contract.scores.scoring_prompts``, or only the validation
        prompts when no scoring model is set). ``images_scored`` False: the validation loss only (an edit model's
        results are not compared with photos of a subject)."""
        spec = ctx.spec
        self.ctx, self.photos, self.keep_weights, self.device = ctx, photos, keep_weights, device
        self.prompts = list(prompts)
        self.subject = [shows_subject(q, spec.class_prompt) for q in self.prompts]
        self.ids = run_scorer_ids(spec) if images_scored else (None, None)
        self.unscored_note = None if images_scored else "an edit model is scored by its validation loss only"
        self.path = ctx.output_dir / SCORES_NAME
        self.record = self._resumed(start) or ScoreRecord(prompts=self.prompts)
        self._photo_emb: dict[str, torch.Tensor] | None = None
        self._dead = False  # a scoring model failed: no more image scores this run

    def _resumed(self, start: int) -> ScoreRecord | None:
        """The record of the run this one resumes (same prompts), its points up to ``start``; None for a new run."""
        if start == 0 or not self.path.is_file():
            return None
        try:
            old = ScoreRecord.model_validate_json(self.path.read_text())
        except ValueError:
            return None
        if old.prompts != self.prompts:
            return None
        return old.model_copy(update={"points": [q for q in old.points if q.step <= start], "picked": None})

    @property
    def has_base(self) -> bool:
        return self.record.base is not None

    def score(self, step: int, images: dict[str, str], val_loss: float | None, *, base: bool = False) -> PointScores:
        """Score the point's ``images`` ({prompt: path}), record it (``base``: as the baseline) and announce it."""
        out = self.ctx.output_dir.resolve()
        paths = [images.get(q) for q in self.prompts]
        rel = [Path(q).resolve().relative_to(out).as_posix() for q in paths if q]
        values = self._image_scores(paths) if all(paths) else {}
        point = PointScores(step=step, val_loss=val_loss, images=rel, **values)
        if base:
            self.record.base = point
        else:
            self.record.points = [q for q in self.record.points if q.step != step] + [point]
        self.write()
        self.ctx.progress.emit(Scores(step=step, dino=point.dino, clip_i=point.clip_i, clip_t=point.clip_t,
                                      val_loss=point.val_loss))  # fmt: skip
        return point

    def _image_scores(self, paths: list[str]) -> dict[str, float | None]:
        if self._dead or not any(self.ids):
            if not any(self.ids) and self.record.note is None:
                self.record.note = self.unscored_note or ("no scoring model is set (SCORING_DINO_MODEL and "
                                                          "SCORING_CLIP_MODEL are empty)")  # fmt: skip
            return {}
        from PIL import Image

        from training.scoring import Scorers, ScoringUnavailable

        self.ctx.progress.phase("scoring")
        scorers = None
        try:
            scorers = Scorers.load(*self.ids, self.device, torch.float16 if self.device.type == "cuda" else torch.float32)
            self.record.models = dict(scorers.models)
            if self._photo_emb is None:
                self._photo_emb = scorers.photo_embeddings([im.image for im in self.photos])
            images = []
            for q in paths:
                with Image.open(q) as im:
                    images.append(im.convert("RGB"))
            return scorers.score(images, self.prompts, self.subject, self._photo_emb)
        except (ScoringUnavailable, torch.OutOfMemoryError) as e:
            self._dead = True
            self.record.note = f"images not scored: {e}"
            log.warning("scoring turned off for this run: %s", e)
            return {}
        except Exception as e:  # a scoring bug must not cost the user the model: say it, train on
            self._dead = True
            self.record.note = f"images not scored: {type(e).__name__}: {e}"
            log.exception("scoring failed; turned off for this run")
            return {}
        finally:
            if scorers is not None:
                scorers.close()
            free_memory()

    def keep(self, step: int, save: Callable[[Path], list[str]]) -> None:
        """Keep the weights of ``step`` in its checkpoint folder (``save(folder)`` writes them) when the recipe's
        outputs are small enough to keep (``keep_weights``)."""
        if not self.keep_weights:
            return
        folder = checkpoint_folder(step)
        save(self.ctx.output_dir / folder)
        point = self.record.point(step)
        if point is not None:
            point.checkpoint = folder
        self.write()

    def finish(self, saved_files: list[str]) -> ScoreRecord:
        """Pick the checkpoint (``contract.scores.pick``) and, when it is not the last one and its weights were
        kept, copy them over the main weights ``saved_files`` (output-relative names)."""
        rec = self.record
        rec.points.sort(key=lambda q: q.step)
        rec.picked = pick(rec.base, rec.points)
        last = rec.points[-1].step if rec.points else None
        chosen = rec.point(rec.picked.step) if rec.picked else None
        if chosen is not None and chosen.checkpoint:  # the last one too: the main files are then its exact bytes
            src = self.ctx.output_dir / chosen.checkpoint
            for name in saved_files:
                if (src / name).is_file():
                    shutil.copyfile(src / name, self.ctx.output_dir / name)
        elif chosen is not None and chosen.step != last:
            rec.picked = rec.picked.model_copy(update={
                "step": last, "reason": f"{rec.picked.reason}; its weights were not kept (a full fine-tune keeps "
                                        f"only the last), so the last checkpoint is the model"})  # fmt: skip
        self.write()
        return rec

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.record.model_dump_json(indent=1))
        tmp.replace(self.path)
