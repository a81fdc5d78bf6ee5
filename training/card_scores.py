"""The model card's scores (``contract.scores``): the picked checkpoint's measures as ``model-index`` metadata
(huggingface_hub's ``EvalResult``) and a section of text with every scored point, the pick and its reason.

The measures are computed by the trainer itself on the run's own photos and prompts, not on a public benchmark:
the metadata says so (its dataset is the run's own, each metric is named self-reported). Prompts and notes are
shown through ``contract.text``.
"""

from __future__ import annotations

from huggingface_hub import EvalResult, constants

from contract.scores import SCORED_CHECKPOINTS_DIR, SCORES_NAME, PointScores, ScoreRecord
from contract.scoring_models import PIXELS
from contract.text import md_code, md_text

#: (PointScores field, how the card names it)
MEASURES = (("dino", "DINO"), ("clip_i", "CLIP-I"), ("clip_t", "CLIP-T"), ("val_loss", "validation loss"))
#: the scoring model of each measure, by ``ScoreRecord.models`` key
_MODEL_KEY = {"dino": "dino", "clip_i": "clip", "clip_t": "clip"}
_MODEL_MEASURES = {"dino": "DINO", "clip": "CLIP-I and CLIP-T"}
TASK_TYPE = "text-to-image"
DATASET_TYPE = "dreambooth-subject"
DATASET_NAME = "the training photos and scoring prompts"
SOURCE_NAME = "self-reported by the DreamBooth training Space that trained this model"


def scored(record: object) -> ScoreRecord | None:
    """``record`` when it is a score record (``RunResult.scores``), else None (the card then has no scores)."""
    return record if isinstance(record, ScoreRecord) else None


def picked_point(record: ScoreRecord) -> PointScores | None:
    return record.point(record.picked.step) if record.picked else None


def eval_results(record: ScoreRecord, repo_id: str | None) -> list[EvalResult]:
    """One ``EvalResult`` per measure the picked checkpoint has; ``repo_id`` (the model's repo, when uploaded)
    makes its ``scores.json`` the results' source."""
    point = picked_point(record)
    if point is None:
        return []
    source = {}
    if repo_id:
        source = {"source_name": SOURCE_NAME, "source_url": f"{constants.ENDPOINT}/{repo_id}/blob/main/{SCORES_NAME}"}
    results = []
    for field, label in MEASURES:
        value = getattr(point, field)
        if value is None:
            continue
        results.append(EvalResult(
            task_type=TASK_TYPE, task_name="DreamBooth subject and prompt fidelity", dataset_type=DATASET_TYPE,
            dataset_name=DATASET_NAME, metric_type=field, metric_value=round(value, 3),
            metric_name=f"{label} (step {point.step}, self-reported)",
            metric_config=record.models.get(_MODEL_KEY.get(field, "")), **source,
        ))  # fmt: skip
    return results


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _row(label: str, point: PointScores, picked: bool) -> str:
    cells = [label, *(_number(getattr(point, field)) for field, _ in MEASURES), "**picked**" if picked else ""]
    return "| " + " | ".join(cells) + " |"


def _models_sentence(models: dict[str, str]) -> str:
    if not models:
        return "No scoring model ran: only the validation loss was computed."
    parts = []
    for key, model in models.items():
        what = _MODEL_MEASURES.get(key, md_text(key))
        pixels = " (a fixed pixel embedding: how close the images' colours are to the photos', not a model of the subject)" if model == PIXELS else ""
        parts.append(f"{md_code(model)}{pixels} for {what}")
    return "Scored with " + ", ".join(parts) + "."


def scores_section(record: ScoreRecord, *, repo: str, lora: bool) -> str:
    """The card's "Scores" section (Markdown). ``repo`` is the model's repo as a Python string literal (the usage
    snippet's), for the line that loads another checkpoint."""
    if not record.points:
        why = md_text(record.note.rstrip(".")) if record.note else "no sampling point was reached"
        return f"## Scores\n\nThis run was not scored: {why}.\n"
    picked = record.picked.step if record.picked else None
    header = "| checkpoint | " + " | ".join(label for _, label in MEASURES) + " | picked |"
    rows = [header, "|---" * (len(MEASURES) + 2) + "|"]
    if record.base is not None:
        rows.append(_row("base model", record.base, False))
    rows += [_row(f"step {p.step}", p, p.step == picked) for p in record.points]
    lines = [
        "## Scores",
        "",
        "Each scored step generated one image per prompt (the same seeds each time, and the base model without the "
        "fine-tune as the baseline). DINO and CLIP-I: how much the images look like the training photos (subject "
        "fidelity); CLIP-T: how well they follow their prompts (prompt fidelity); validation loss: the training "
        "objective on fixed noise over the photos. For scale, the DreamBooth paper reports DINO 0.668, CLIP-I 0.803 "
        "and CLIP-T 0.305 for DreamBooth on Stable Diffusion.",
        "",
        *rows,
        "",
    ]
    if record.picked is not None:
        model = "The main LoRA" if lora else "The model"
        lines.append(f"{model} is step {record.picked.step}'s: {md_text(record.picked.reason)}.")
    lines.append(_models_sentence(record.models))
    others = [p.checkpoint for p in record.points if p.checkpoint and p.step != picked]
    if lora and others:
        load = md_code(f'pipe.load_lora_weights({repo}, subfolder="{others[0]}")')
        lines.append(f"The other scored checkpoints are in the `{SCORED_CHECKPOINTS_DIR}/` folder: load one instead "
                     f"with {load}.")  # fmt: skip
    if record.note:
        lines.append(f"Note: {md_text(record.note.rstrip('.'))}.")
    if record.prompts:
        lines += ["", "The scoring prompts:", "", *(f"- {md_code(q)}" for q in record.prompts)]
    return "\n".join(lines) + "\n"
