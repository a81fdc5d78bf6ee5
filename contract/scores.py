"""How good a run's model is: the scores of each sampling point, the file that records them, and the rule that picks
the checkpoint the user gets. Torch-free: the trainer writes the record, the card, the app and tests read it.

The measures (the DreamBooth paper, arXiv 2208.12242, Table 1):

- ``dino``: subject fidelity, the mean pairwise cosine similarity of DINOv2 image embeddings between the images
  generated from the prompts that show the subject and the training photos;
- ``clip_i``: the same with CLIP image embeddings;
- ``clip_t``: prompt fidelity, the mean cosine similarity of the CLIP embeddings of each generated image and its
  prompt (every scoring prompt);
- ``val_loss``: the training objective on fixed noise and timesteps over the cached latents of the photos (no
  sampling), computed by ``training/train.py``'s own ``compute_loss``.

The base model (the same prompts and seeds without the fine-tune: step 0) is the baseline. ``pick`` chooses among
the scored checkpoints (``PICK_RULE`` says it in words; the README quotes it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: the record's file name in the output folder (uploaded with the model)
SCORES_NAME = "scores.json"
#: the output subfolder that keeps each scored checkpoint's weights (``checkpoints/step-000500/``)
SCORED_CHECKPOINTS_DIR = "checkpoints"
#: the output subfolder of the images that only feed the scores (the base model's, the built-in prompts')
SCORING_IMAGES_DIR = "scores"
#: built-in recontextualization prompts in the style of DreamBench, filled with the instance prompt
RECONTEXT_TEMPLATES = ("{instance} on the beach", "{instance} in the snow")
#: the most prompts a sampling point generates for scoring (validation prompts first, then the built-in ones)
MAX_SCORING_PROMPTS = 8
#: prompt fidelity (CLIP-T) may fall at most this far below the base model's for a checkpoint to be picked
CLIP_T_MARGIN = 0.02
#: a checkpoint whose validation loss is more than this fraction above the lowest one at or before it is passed over
VAL_LOSS_RISE = 0.15
#: subject scores this close to the best count as equal: the earliest of them is picked (fewer steps, less drift)
SUBJECT_TIE = 0.005

PICK_RULE = (
    f"Among the scored checkpoints, keep those whose prompt fidelity (CLIP-T) is at most {CLIP_T_MARGIN} below "
    f"the base model's and whose validation loss is at most {VAL_LOSS_RISE:.0%} above the lowest one so far; pick "
    f"the one with the highest subject fidelity (DINO, else CLIP-I), the earliest when several are within "
    f"{SUBJECT_TIE}. When none is kept, pick the checkpoint with the best prompt fidelity. Unscored: the last one."
)


def scoring_prompts(instance_prompt: str, class_prompt: str | None, validation_prompts: list[str]) -> list[str]:
    """The prompts each sampling point generates one image for: the validation prompts, the built-in
    recontextualizations of the instance prompt, and the class prompt (prior preservation's "a <class>"); no
    duplicates, at most ``MAX_SCORING_PROMPTS``, in that order (a validation prompt keeps its index)."""
    prompts = [*validation_prompts, *(t.format(instance=instance_prompt) for t in RECONTEXT_TEMPLATES)]
    if class_prompt:
        prompts.append(class_prompt)
    return list(dict.fromkeys(p for p in prompts if p.strip()))[:MAX_SCORING_PROMPTS]


def shows_subject(prompt: str, class_prompt: str | None) -> bool:
    """Whether images of ``prompt`` should look like the subject (every scoring prompt but the class prompt)."""
    return prompt != class_prompt


class PointScores(BaseModel):
    """The scores of one sampling point (``step`` 0: the base model). A measure that was not computed is None."""

    model_config = ConfigDict(extra="ignore")

    step: int
    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    val_loss: float | None = None
    #: the generated images, output-relative paths in the record's prompt order
    images: list[str] = Field(default_factory=list)
    #: the output-relative folder that keeps this step's weights (None: not kept, e.g. a full fine-tune)
    checkpoint: str | None = None

    @property
    def subject(self) -> float | None:
        """Subject fidelity: DINO, else CLIP-I."""
        return self.dino if self.dino is not None else self.clip_i


class Pick(BaseModel):
    step: int
    reason: str


class ScoreRecord(BaseModel):
    """``output/scores.json``."""

    model_config = ConfigDict(extra="ignore")

    prompts: list[str] = Field(default_factory=list)
    #: the scoring models by measure ({"dino": "facebook/dinov2-small", "clip": ...}); empty when unscored
    models: dict[str, str] = Field(default_factory=dict)
    base: PointScores | None = None
    points: list[PointScores] = Field(default_factory=list)
    picked: Pick | None = None
    #: why the run has no scores or fewer than asked (scoring off, a scoring model that did not load, ...)
    note: str | None = None

    def point(self, step: int) -> PointScores | None:
        return next((p for p in self.points if p.step == step), None)


def pick(base: PointScores | None, points: list[PointScores]) -> Pick | None:
    """The checkpoint to give the user (``PICK_RULE``); None when there is no point at all."""
    if not points:
        return None
    scored = [p for p in points if p.subject is not None]
    if not scored:
        return Pick(step=points[-1].step, reason="not scored: the last checkpoint")
    floor = base.clip_t - CLIP_T_MARGIN if base is not None and base.clip_t is not None else None
    eligible = []
    for p in scored:
        if floor is not None and p.clip_t is not None and p.clip_t < floor:
            continue
        losses = [q.val_loss for q in points if q.step <= p.step and q.val_loss is not None]
        if p.val_loss is not None and p.val_loss > (1 + VAL_LOSS_RISE) * min(losses):
            continue
        eligible.append(p)
    if not eligible:
        best = max(scored, key=lambda p: (p.clip_t if p.clip_t is not None else float("-inf"), -p.step))
        return Pick(step=best.step, reason="no checkpoint kept the base model's prompt fidelity and a steady "
                                           "validation loss: the one with the best prompt fidelity")  # fmt: skip
    top = max(p.subject for p in eligible)
    first = min((p for p in eligible if p.subject >= top - SUBJECT_TIE), key=lambda p: p.step)
    return Pick(step=first.step, reason="the highest subject fidelity that kept prompt fidelity and a steady "
                                        "validation loss")  # fmt: skip
